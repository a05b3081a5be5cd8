//! Every CUDA kernel compiles with NVRTC, without warnings, for the GPU
//! architectures lpworker ships (A100 sm_80, L4/L40 sm_89, H100/H200 sm_90),
//! to PTX and to a cubin. Needs no GPU: NVRTC from the nvidia-cuda-nvrtc
//! wheel, on LD_LIBRARY_PATH (scripts/test sets it).
#![cfg(feature = "nvidia")]

use lpworker::video::nvidia::{kernels, ladder, KERNELS};

#[test]
fn kernels_compile_cleanly_for_every_shipped_architecture() {
    let (major, minor) = kernels::nvrtc_version().expect("libnvrtc is loadable");
    assert!(major >= 12, "NVRTC {major}.{minor}");
    for arch in ["sm_80", "sm_89", "sm_90"] {
        let compiled = kernels::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            compiled.log.is_empty(),
            "{arch}: NVRTC warnings:\n{}",
            compiled.log
        );
        assert!(
            compiled.ptx.contains(&format!(".target {arch}")),
            "{arch}: PTX target"
        );
        for kernel in KERNELS {
            assert!(
                compiled.ptx.contains(&format!(".entry {kernel}(")),
                "{arch}: no entry {kernel}"
            );
        }
        // An ELF cubin.
        assert!(
            compiled.cubin.len() > 1000 && compiled.cubin.starts_with(b"\x7fELF"),
            "{arch}: cubin"
        );
        // The PTX's ISA needs a driver of NVRTC's own CUDA version (12.9
        // writes ISA 8.8: CUDA 12.9, driver 575; 12.6 kept 12.5's 8.5),
        // which the fallback names.
        let isa = kernels::ptx_isa(&compiled.ptx).expect("a .version line");
        let floor = kernels::ptx_driver_floor(isa)
            .unwrap_or_else(|| panic!("{arch}: PTX ISA {isa:?} not in the table"));
        let nvrtc = major * 1000 + minor * 10;
        assert!(
            floor.cuda_version <= nvrtc && floor.cuda_version / 1000 == major,
            "{arch}: PTX ISA {isa:?} needs CUDA {}, from NVRTC {major}.{minor}",
            floor.cuda_version
        );
    }
}

#[test]
fn errors_and_warnings_are_caught() {
    // An error fails with the compiler's log.
    let err = kernels::compile_source(
        "extern \"C\" __global__ void k() { undefined_thing(); }",
        "sm_90",
    )
    .unwrap_err();
    assert!(err.to_string().contains("undefined_thing"), "{err}");
    // A warning compiles but leaves a log, which the clean-build test refuses.
    let warned = kernels::compile_source(
        "extern \"C\" __global__ void k(int* p) { int unused = 1; p[0] = 0; }",
        "sm_90",
    )
    .unwrap();
    assert!(
        !warned.log.is_empty(),
        "NVRTC reported no warning for an unused variable"
    );
}

/// The device compiler lays out the kernels' `LpwLadder` argument exactly as
/// the Rust mirror (video::nvidia::ladder): static_asserts built from Rust's
/// offsets fail the compile otherwise.
#[test]
fn ladder_layout_matches_the_kernels_under_nvrtc() {
    let source = format!(
        "{}\n{}",
        kernels::kernel_source(),
        ladder::layout_assertions()
    );
    for arch in ["sm_80", "sm_90"] {
        let compiled = kernels::compile_source(&source, arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.log.is_empty(), "{arch}: {}", compiled.log);
    }
    // A planted wrong offset is caught (so offsetof really is evaluated).
    let wrong = source.replace(
        "offsetof(LpwLadder, chroma) == 200",
        "offsetof(LpwLadder, chroma) == 199",
    );
    assert_ne!(wrong, source);
    let err = kernels::compile_source(&wrong, "sm_90").unwrap_err();
    assert!(
        err.to_string()
            .contains("Rust mirror differs: offsetof(LpwLadder, chroma)"),
        "{err}"
    );
    // The scaler falls back to the newest of these for a GPU NVRTC predates.
    let archs = kernels::supported_archs().unwrap();
    assert!([80, 89, 90].iter().all(|a| archs.contains(a)), "{archs:?}");
}
