// Per-pixel arithmetic of lpworker's resize kernels, shared by the CUDA
// kernels (resize.cu, compiled by NVRTC) and the CPU harness (harness.cpp,
// compiled by the cc crate for tests), so that the very same source is checked
// against the Rust reference in src/video/nvidia/reference.rs.
//
// Exactness: both sides evaluate the same float operations in the same order;
// the GPU build disables FMA contraction (--fmad=false) and the CPU build uses
// -ffp-contract=off, so results agree to the last bit in practice (the tests
// allow a difference of 1).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define LPW_HD __host__ __device__
#else
#define LPW_HD
#endif

// A plane of `T` samples (uint8 for NV12, uint16 for P010 with SHIFT = 6:
// 10-bit values in the high bits). `step` is the distance between pixels in
// samples (1 for luma, 2 for interleaved chroma) and `channel` the sample
// within a pixel.
template <typename T, int SHIFT>
LPW_HD inline float lpw_load(const unsigned char* plane, int pitch, int x, int y, int step, int channel) {
    const T* row = (const T*)(plane + (long long)y * pitch);
    return (float)(row[x * step + channel] >> SHIFT);
}

template <typename T, int SHIFT, int MAXV>
LPW_HD inline T lpw_quantize(float v) {
    int i = (int)(v + 0.5f);
    i = i < 0 ? 0 : (i > MAXV ? MAXV : i);
    return (T)(i << SHIFT);
}

// Bilinear with pixel centres at +0.5 (FFmpeg's and NPP's convention), edges clamped.
template <typename T, int SHIFT>
LPW_HD inline float lpw_bilinear(const unsigned char* src, int pitch, int sw, int sh, int step, int channel,
                                 int dx, int dy, int dw, int dh) {
    float sx = ((float)dx + 0.5f) * ((float)sw / (float)dw) - 0.5f;
    float sy = ((float)dy + 0.5f) * ((float)sh / (float)dh) - 0.5f;
    sx = sx < 0.0f ? 0.0f : (sx > (float)(sw - 1) ? (float)(sw - 1) : sx);
    sy = sy < 0.0f ? 0.0f : (sy > (float)(sh - 1) ? (float)(sh - 1) : sy);
    int x0 = (int)sx;
    int y0 = (int)sy;
    int x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
    int y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
    float fx = sx - (float)x0;
    float fy = sy - (float)y0;
    float p00 = lpw_load<T, SHIFT>(src, pitch, x0, y0, step, channel);
    float p01 = lpw_load<T, SHIFT>(src, pitch, x1, y0, step, channel);
    float p10 = lpw_load<T, SHIFT>(src, pitch, x0, y1, step, channel);
    float p11 = lpw_load<T, SHIFT>(src, pitch, x1, y1, step, channel);
    float top = p00 * (1.0f - fx) + p01 * fx;
    float bottom = p10 * (1.0f - fx) + p11 * fx;
    return top * (1.0f - fy) + bottom * fy;
}

// Area (box) average over the output pixel's footprint in the source, with
// fractional coverage at the edges: the right filter for downscaling. For an
// upscaled axis it falls back to bilinear.
template <typename T, int SHIFT>
LPW_HD inline float lpw_area(const unsigned char* src, int pitch, int sw, int sh, int step, int channel,
                             int dx, int dy, int dw, int dh) {
    if (sw < dw || sh < dh) {
        return lpw_bilinear<T, SHIFT>(src, pitch, sw, sh, step, channel, dx, dy, dw, dh);
    }
    float scale_x = (float)sw / (float)dw;
    float scale_y = (float)sh / (float)dh;
    float ax = (float)dx * scale_x;
    float bx = (float)(dx + 1) * scale_x;
    float ay = (float)dy * scale_y;
    float by = (float)(dy + 1) * scale_y;
    int x_first = (int)ax;
    int y_first = (int)ay;
    int x_last = (int)bx;
    int y_last = (int)by;
    if (x_last >= sw) x_last = sw - 1;
    if (y_last >= sh) y_last = sh - 1;
    float total = 0.0f;
    float weight = 0.0f;
    for (int y = y_first; y <= y_last; y++) {
        float top = (float)y > ay ? (float)y : ay;
        float bottom = (float)(y + 1) < by ? (float)(y + 1) : by;
        float wy = bottom - top;
        if (wy <= 0.0f) continue;
        float row = 0.0f;
        float row_weight = 0.0f;
        for (int x = x_first; x <= x_last; x++) {
            float left = (float)x > ax ? (float)x : ax;
            float right = (float)(x + 1) < bx ? (float)(x + 1) : bx;
            float wx = right - left;
            if (wx <= 0.0f) continue;
            row += wx * lpw_load<T, SHIFT>(src, pitch, x, y, step, channel);
            row_weight += wx;
        }
        total += wy * row;
        weight += wy * row_weight;
    }
    return total / weight;
}
