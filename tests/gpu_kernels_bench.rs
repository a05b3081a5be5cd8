//! `lpworker bench --gpu-kernels` on a machine without a usable GPU (CI)
//! fails with a clear message, not a panic; on a GPU machine it prints the
//! kernels' report as JSON.

use std::process::Command;

#[test]
fn gpu_kernels_bench_fails_clearly_without_a_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args(["bench", "--gpu-kernels"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["accuracy_ok"], true, "{report}");
        return;
    }
    let expected = if cfg!(feature = "nvidia") {
        "no NVIDIA GPU usable"
    } else {
        "built without the `nvidia` feature"
    };
    assert!(stderr.contains(expected), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}
