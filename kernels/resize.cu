// NV12 and P010 resize kernels: bilinear and area, each writing every
// rendition of a ladder in one launch (blockIdx.z = rendition * 2 + plane), so
// the source is read while hot in L2 instead of once per rendition.
#include "ladder.cuh"
#include "resize_math.cuh"

template <typename T, int SHIFT, int MAXV, bool AREA>
__device__ inline void lpw_resize_ladder(const unsigned char* src_y, int src_y_pitch,
                                         const unsigned char* src_uv, int src_uv_pitch,
                                         int sw, int sh, const LpwLadder& ladder) {
    int rendition = blockIdx.z >> 1;
    bool chroma = (blockIdx.z & 1) != 0;
    if (rendition >= ladder.count) return;
    LpwPlane out = chroma ? ladder.chroma[rendition] : ladder.luma[rendition];
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out.width || y >= out.height) return;
    T* row = (T*)(out.ptr + (long long)y * out.pitch);
    if (!chroma) {
        float v = AREA ? lpw_area<T, SHIFT>(src_y, src_y_pitch, sw, sh, 1, 0, x, y, out.width, out.height)
                       : lpw_bilinear<T, SHIFT>(src_y, src_y_pitch, sw, sh, 1, 0, x, y, out.width, out.height);
        row[x] = lpw_quantize<T, SHIFT, MAXV>(v);
        return;
    }
    for (int c = 0; c < 2; c++) {
        float v = AREA ? lpw_area<T, SHIFT>(src_uv, src_uv_pitch, sw / 2, sh / 2, 2, c, x, y, out.width, out.height)
                       : lpw_bilinear<T, SHIFT>(src_uv, src_uv_pitch, sw / 2, sh / 2, 2, c, x, y, out.width, out.height);
        row[x * 2 + c] = lpw_quantize<T, SHIFT, MAXV>(v);
    }
}

extern "C" __global__ void lpw_nv12_bilinear(const unsigned char* src_y, int src_y_pitch, const unsigned char* src_uv,
                                             int src_uv_pitch, int sw, int sh, LpwLadder ladder) {
    lpw_resize_ladder<unsigned char, 0, 255, false>(src_y, src_y_pitch, src_uv, src_uv_pitch, sw, sh, ladder);
}

extern "C" __global__ void lpw_nv12_area(const unsigned char* src_y, int src_y_pitch, const unsigned char* src_uv,
                                         int src_uv_pitch, int sw, int sh, LpwLadder ladder) {
    lpw_resize_ladder<unsigned char, 0, 255, true>(src_y, src_y_pitch, src_uv, src_uv_pitch, sw, sh, ladder);
}

extern "C" __global__ void lpw_p010_bilinear(const unsigned char* src_y, int src_y_pitch, const unsigned char* src_uv,
                                             int src_uv_pitch, int sw, int sh, LpwLadder ladder) {
    lpw_resize_ladder<unsigned short, 6, 1023, false>(src_y, src_y_pitch, src_uv, src_uv_pitch, sw, sh, ladder);
}

extern "C" __global__ void lpw_p010_area(const unsigned char* src_y, int src_y_pitch, const unsigned char* src_uv,
                                         int src_uv_pitch, int sw, int sh, LpwLadder ladder) {
    lpw_resize_ladder<unsigned short, 6, 1023, true>(src_y, src_y_pitch, src_uv, src_uv_pitch, sw, sh, ladder);
}
