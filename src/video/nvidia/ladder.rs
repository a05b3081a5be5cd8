//! The Rust mirror of the kernels' ladder argument (kernels/ladder.cuh): the
//! resize kernels take an `LpwLadder` by value, so its bytes must be laid out
//! exactly as the CUDA compiler lays out the C struct. Tests compare the
//! layout with the C++ harness here and with NVRTC in tests/nvrtc_kernels.rs.

/// `LPW_MAX_RENDITIONS`: the most renditions one launch writes.
pub const MAX_RENDITIONS: usize = 8;

/// One output plane (`LpwPlane`): `width` x `height` pixels, rows `pitch`
/// bytes apart, at device address `ptr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LpwPlane {
    /// A `CUdeviceptr` (64-bit device address), the C struct's `unsigned char*`.
    pub ptr: u64,
    pub pitch: i32,
    pub width: i32,
    pub height: i32,
}

/// Every rendition of one launch (`LpwLadder`): the first `count` entries of
/// `luma` and `chroma` are used.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LpwLadder {
    pub count: i32,
    pub luma: [LpwPlane; MAX_RENDITIONS],
    pub chroma: [LpwPlane; MAX_RENDITIONS],
}

// SAFETY: both structs are #[repr(C)] plain data (integers and device
// addresses) whose layout is checked against the C structs the kernels
// declare (tests below and in tests/nvrtc_kernels.rs), so passing their bytes
// as a kernel parameter is what the kernel expects.
#[cfg(feature = "nvidia")]
unsafe impl cudarc::driver::DeviceRepr for LpwPlane {}
// SAFETY: as above.
#[cfg(feature = "nvidia")]
unsafe impl cudarc::driver::DeviceRepr for LpwLadder {}

/// The layout facts the tests compare, in the order the C++ harness writes
/// them (kernels/harness.cpp, `lpw_harness_ladder_layout`).
pub fn rust_layout() -> [u64; 12] {
    use std::mem::{align_of, offset_of, size_of};
    [
        MAX_RENDITIONS,
        size_of::<LpwPlane>(),
        align_of::<LpwPlane>(),
        offset_of!(LpwPlane, ptr),
        offset_of!(LpwPlane, pitch),
        offset_of!(LpwPlane, width),
        offset_of!(LpwPlane, height),
        size_of::<LpwLadder>(),
        align_of::<LpwLadder>(),
        offset_of!(LpwLadder, count),
        offset_of!(LpwLadder, luma),
        offset_of!(LpwLadder, chroma),
    ]
    .map(|v| v as u64)
}

/// C++ `static_assert`s that hold only if a CUDA or C++ compiler lays out the
/// ladder as Rust does; appended to the kernels' source, a compile checks the
/// device compiler's layout (tests/nvrtc_kernels.rs).
pub fn layout_assertions() -> String {
    let names = [
        "LPW_MAX_RENDITIONS",
        "sizeof(LpwPlane)",
        "alignof(LpwPlane)",
        "offsetof(LpwPlane, ptr)",
        "offsetof(LpwPlane, pitch)",
        "offsetof(LpwPlane, width)",
        "offsetof(LpwPlane, height)",
        "sizeof(LpwLadder)",
        "alignof(LpwLadder)",
        "offsetof(LpwLadder, count)",
        "offsetof(LpwLadder, luma)",
        "offsetof(LpwLadder, chroma)",
    ];
    // NVRTC has no <stddef.h> and no __builtin_offsetof; its front end's
    // __INTADDR__ evaluates a member's address off a null pointer as a
    // constant, which is offsetof (a planted wrong value fails the test).
    let prelude = "#if defined(__CUDACC_RTC__) && !defined(offsetof)\n\
                   #define offsetof(type, field) __INTADDR__(&(((type*)0)->field))\n\
                   #endif\n";
    names
        .iter()
        .zip(rust_layout())
        .fold(prelude.to_string(), |mut text, (name, value)| {
            text +=
                &format!("static_assert({name} == {value}, \"Rust mirror differs: {name}\");\n");
            text
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        // kernels/harness.cpp, built by build.rs.
        fn lpw_harness_ladder_layout(out: *mut u64, len: i32) -> i32;
    }

    #[test]
    fn ladder_layout_matches_the_c_struct() {
        let mut theirs = [0u64; 12];
        // SAFETY: the buffer holds `len` values, as many as the harness writes.
        let written = unsafe { lpw_harness_ladder_layout(theirs.as_mut_ptr(), 12) };
        assert_eq!(written, 12, "the harness reports another number of fields");
        assert_eq!(
            rust_layout(),
            theirs,
            "Rust LpwLadder/LpwPlane layout differs from kernels/ladder.cuh (order: {})",
            "max, plane size/align/ptr/pitch/width/height, ladder size/align/count/luma/chroma"
        );
        // 8 + 3 * 4 padded to 24; 4 + 4 padding + 2 * 8 * 24.
        assert_eq!(std::mem::size_of::<LpwLadder>(), 392);
    }

    #[test]
    fn layout_assertions_name_every_field() {
        let text = layout_assertions();
        assert_eq!(text.matches("static_assert(").count(), 12);
        assert!(text.contains("static_assert(offsetof(LpwLadder, chroma) == 200,"));
    }
}
