// Just enough of CUDA for the kernels' own source to compile as plain C++
// and run on the CPU: the qualifiers, the built-in index variables and a
// launcher that runs an entry point once per thread of a grid, as a GPU
// launch would. Tests build the kernels this way with AddressSanitizer and
// UBSan (kernels/cpu_run.cpp), so an out-of-bounds access or undefined
// arithmetic in a `.cu` file is caught on any machine, GPU or not.
//
// Include this before a `.cu` file; nothing in the `.cu` file changes.
// resize.cu calls no CUDA intrinsics (__ldg, atomics, warp functions); a
// kernel that does needs a CPU version of each here.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cpu_shim.h is for the CPU build of the kernels, not for a CUDA compiler"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x = 1, unsigned int y = 1, unsigned int z = 1) : x(x), y(y), z(z) {}
};

// The thread a kernel body runs as; thread-local, so that kernel code on
// another host thread sees its own, as each GPU thread does.
inline thread_local uint3 blockIdx;
inline thread_local uint3 threadIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Names a type without letting a template deduce it.
template <typename T>
struct lpw_cpu_exactly {
    using type = T;
};

// Runs `kernel(args...)` once for every thread of `grid` x `block`, one
// thread after another. The arguments take the kernel's parameter types
// (not deduced from the caller's), so each converts once, here, and every
// thread gets a copy of the same by-value parameters, as on a GPU. Kernels
// that use shared memory or __syncthreads() would need a block's threads to
// run concurrently; the resize kernels use neither.
template <typename... Params>
void lpw_cpu_launch(void (*kernel)(Params...), dim3 grid, dim3 block,
                    typename lpw_cpu_exactly<Params>::type... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int bz = 0; bz < grid.z; bz++)
        for (unsigned int by = 0; by < grid.y; by++)
            for (unsigned int bx = 0; bx < grid.x; bx++)
                for (unsigned int tz = 0; tz < block.z; tz++)
                    for (unsigned int ty = 0; ty < block.y; ty++)
                        for (unsigned int tx = 0; tx < block.x; tx++) {
                            blockIdx = {bx, by, bz};
                            threadIdx = {tx, ty, tz};
                            kernel(args...);
                        }
}
