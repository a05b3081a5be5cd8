// The resize kernels' entry points (resize.cu, as NVRTC compiles it) built
// for the CPU through cpu_shim.h and run over a whole launch grid.
// tests/kernels_cpu.rs builds this file with AddressSanitizer and UBSan,
// sends jobs on stdin and compares what comes back on stdout with the Rust
// reference (src/video/nvidia/reference.rs).
//
// A job, little-endian, every number a u32 unless marked:
//   magic "LPWJ"
//   kernel name: length, bytes
//   grid x, y, z; block x, y, z         (what the Rust launcher computes)
//   src_y_pitch, src_uv_pitch, sw, sh   (the kernel's int parameters, i32)
//   source luma buffer, source chroma buffer
//   ladder: sizeof(LpwLadder) bytes as the Rust mirror lays it out, plane
//           pointers left 0: they are set to the buffers that follow
//   per rendition (ladder.count of them): luma buffer, chroma buffer
// A buffer: offset, length (u64), `length` bytes. Each is allocated with
// exactly offset + length bytes and the kernel gets base + offset, so that
// AddressSanitizer reports any access past either end (offset is 0 except
// where a test misaligns a plane on purpose).
// The reply to a job: every rendition's luma then chroma buffer as the
// kernel left it, then the launch's run time in nanoseconds (u64).
//
// `cpu_run --list` prints the entry points it knows, one a line.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu_shim.h"

#include "resize.cu"

namespace {

using ResizeKernel = void (*)(const unsigned char*, int, const unsigned char*, int, int, int, LpwLadder);

struct EntryPoint {
    const char* name;
    ResizeKernel kernel;
};

// Every `extern "C" __global__` function of resize.cu; the test checks this
// list against the Rust side's KERNELS.
const EntryPoint kEntryPoints[] = {
    {"lpw_nv12_bilinear", lpw_nv12_bilinear},
    {"lpw_nv12_area", lpw_nv12_area},
    {"lpw_p010_bilinear", lpw_p010_bilinear},
    {"lpw_p010_area", lpw_p010_area},
};

[[noreturn]] void fail(const char* what) {
    fprintf(stderr, "cpu_run: %s\n", what);
    exit(2);
}

// Reads exactly `len` bytes; false only at a clean end of input before the first byte.
bool read_exact(void* out, size_t len, bool eof_ok = false) {
    size_t got = fread(out, 1, len, stdin);
    if (got == len) return true;
    if (got == 0 && eof_ok && feof(stdin)) return false;
    fail("truncated job");
}

uint32_t read_u32() {
    uint32_t v;
    read_exact(&v, sizeof v);
    return v;
}

int32_t read_i32() {
    int32_t v;
    read_exact(&v, sizeof v);
    return v;
}

void write_exact(const void* data, size_t len) {
    if (len > 0 && fwrite(data, 1, len, stdout) != len) fail("cannot write the reply");
}

// A plane buffer of exactly the size the job states.
struct Buffer {
    unsigned char* base = nullptr;
    unsigned char* data = nullptr;
    uint64_t len = 0;

    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { free(base); }

    void read() {
        uint32_t offset = read_u32();
        read_exact(&len, sizeof len);
        // malloc(0) may return null; one byte keeps `data` a real address
        // whose every access is still out of bounds.
        base = static_cast<unsigned char*>(malloc(offset + len > 0 ? offset + len : 1));
        if (!base) fail("out of memory");
        data = base + offset;
        read_exact(data, len);
    }
};

ResizeKernel find_kernel(const std::vector<char>& name) {
    for (const EntryPoint& entry : kEntryPoints) {
        if (strlen(entry.name) == name.size() && memcmp(entry.name, name.data(), name.size()) == 0)
            return entry.kernel;
    }
    fail("unknown kernel");
}

// Runs one job; false at the end of input.
bool run_job() {
    char magic[4];
    if (!read_exact(magic, sizeof magic, true)) return false;
    if (memcmp(magic, "LPWJ", 4) != 0) fail("bad job magic");
    std::vector<char> name(read_u32());
    read_exact(name.data(), name.size());
    ResizeKernel kernel = find_kernel(name);
    dim3 grid, block;
    grid.x = read_u32(), grid.y = read_u32(), grid.z = read_u32();
    block.x = read_u32(), block.y = read_u32(), block.z = read_u32();
    int src_y_pitch = read_i32(), src_uv_pitch = read_i32(), sw = read_i32(), sh = read_i32();
    Buffer src_y, src_uv;
    src_y.read();
    src_uv.read();
    LpwLadder ladder;
    read_exact(&ladder, sizeof ladder);
    if (ladder.count < 0 || ladder.count > LPW_MAX_RENDITIONS) fail("bad rendition count");
    std::vector<Buffer> outputs(2 * ladder.count);
    for (int i = 0; i < ladder.count; i++) {
        outputs[2 * i].read();
        outputs[2 * i + 1].read();
        ladder.luma[i].ptr = outputs[2 * i].data;
        ladder.chroma[i].ptr = outputs[2 * i + 1].data;
    }
    auto start = std::chrono::steady_clock::now();
    lpw_cpu_launch(kernel, grid, block, src_y.data, src_y_pitch, src_uv.data, src_uv_pitch, sw, sh, ladder);
    auto elapsed = std::chrono::steady_clock::now() - start;
    for (const Buffer& out : outputs) write_exact(out.data, out.len);
    uint64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count();
    write_exact(&nanos, sizeof nanos);
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (const EntryPoint& entry : kEntryPoints) printf("%s\n", entry.name);
        return 0;
    }
    if (argc != 1) fail("usage: cpu_run [--list] < jobs > replies");
    while (run_job()) {
    }
    if (fflush(stdout) != 0) fail("cannot write the reply");
    return 0;
}
