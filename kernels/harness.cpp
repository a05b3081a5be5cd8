// CPU harness for the kernels' per-pixel arithmetic: the same header the CUDA
// kernels include, run over every output sample of a plane. Built by build.rs
// (cc crate) and called from the Rust reference tests.
#include <stddef.h>

#include "ladder.cuh"
#include "resize_math.cuh"

template <typename T, int SHIFT, int MAXV>
static void scale_plane(int area, const unsigned char* src, int src_pitch, int sw, int sh, int step, int channel,
                        unsigned char* dst, int dst_pitch, int dw, int dh) {
    for (int y = 0; y < dh; y++) {
        T* row = (T*)(dst + (long long)y * dst_pitch);
        for (int x = 0; x < dw; x++) {
            float v = area ? lpw_area<T, SHIFT>(src, src_pitch, sw, sh, step, channel, x, y, dw, dh)
                           : lpw_bilinear<T, SHIFT>(src, src_pitch, sw, sh, step, channel, x, y, dw, dh);
            row[x * step + channel] = lpw_quantize<T, SHIFT, MAXV>(v);
        }
    }
}

// depth 8: NV12 samples (uint8); depth 10: P010 samples (uint16, high bits).
extern "C" void lpw_harness_scale_plane(int area, int depth, const unsigned char* src, int src_pitch, int sw, int sh,
                                        int step, int channel, unsigned char* dst, int dst_pitch, int dw, int dh) {
    if (depth == 10) {
        scale_plane<unsigned short, 6, 1023>(area, src, src_pitch, sw, sh, step, channel, dst, dst_pitch, dw, dh);
    } else {
        scale_plane<unsigned char, 0, 255>(area, src, src_pitch, sw, sh, step, channel, dst, dst_pitch, dw, dh);
    }
}

// The layout of the ladder struct as this C++ compiler lays it out, for the
// test that the Rust mirror (src/video/nvidia/ladder.rs) matches it. Writes
// LPW_HARNESS_LAYOUT_FIELDS values in the order the Rust test reads them.
#define LPW_HARNESS_LAYOUT_FIELDS 12
extern "C" int lpw_harness_ladder_layout(unsigned long long* out, int len) {
    if (len < LPW_HARNESS_LAYOUT_FIELDS) return -1;
    unsigned long long values[LPW_HARNESS_LAYOUT_FIELDS] = {
        LPW_MAX_RENDITIONS,
        sizeof(LpwPlane),
        alignof(LpwPlane),
        offsetof(LpwPlane, ptr),
        offsetof(LpwPlane, pitch),
        offsetof(LpwPlane, width),
        offsetof(LpwPlane, height),
        sizeof(LpwLadder),
        alignof(LpwLadder),
        offsetof(LpwLadder, count),
        offsetof(LpwLadder, luma),
        offsetof(LpwLadder, chroma),
    };
    for (int i = 0; i < LPW_HARNESS_LAYOUT_FIELDS; i++) out[i] = values[i];
    return LPW_HARNESS_LAYOUT_FIELDS;
}
