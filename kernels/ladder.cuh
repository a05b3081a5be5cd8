// The ladder a resize launch writes: one output plane pair per rendition,
// passed to the kernels by value. Shared by resize.cu (device side) and
// harness.cpp (host side), so that tests can check that the Rust mirror in
// src/video/nvidia/ladder.rs has the very same layout.
#pragma once

#define LPW_MAX_RENDITIONS 8

// One output plane: `width` x `height` pixels (for NV12/P010 chroma, pixels of
// two interleaved samples), rows `pitch` bytes apart.
struct LpwPlane {
    unsigned char* ptr;
    int pitch;
    int width;
    int height;
};

struct LpwLadder {
    int count;
    LpwPlane luma[LPW_MAX_RENDITIONS];
    LpwPlane chroma[LPW_MAX_RENDITIONS];
};
