//! The resize kernels' binary interface as NVRTC builds them, against what
//! the Rust launcher pushes, and their register use, from the very cubin
//! the GPU loads (`kernels::compile`):
//!
//! - every entry point's parameters (ordinal, offset, size) in the cubin's
//!   `.nv.info.<kernel>` section (EIATTR_KPARAM_INFO, EIATTR_CBANK_PARAM_SIZE,
//!   read with cuobjdump) and in the PTX `.entry` the driver would load
//!   instead, against `launch::LADDER_KERNEL_PARAMS` laid out by
//!   `launch::param_layout`. A mismatch is a launch that reads garbage on
//!   the GPU and passes every CPU test;
//! - registers, stack frame and local memory (cuobjdump -res-usage) and the
//!   local-memory stores and loads in the SASS (STL/LDL, through nvdisasm):
//!   spills are local memory, and the test fails on any.
//!
//! Needs no GPU: NVRTC, cuobjdump and nvdisasm come from PyPI wheels
//! (scripts/install-deps; scripts/test puts them on the paths).
#![cfg(feature = "nvidia")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lpworker::video::nvidia::launch::{param_layout, KernelParam, LADDER_KERNEL_PARAMS};
use lpworker::video::nvidia::{kernels, KERNELS};

/// The architectures lpworker ships (A100 sm_80, L4/L40 sm_89, H100/H200
/// sm_90), as tests/nvrtc_kernels.rs compiles them.
const ARCHS: [&str; 3] = ["sm_80", "sm_89", "sm_90"];

/// A CUDA binary tool: on PATH, else in the project's virtualenv, where
/// the nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels put them.
fn cuda_tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    let in_venv = || {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
        std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
            let tool = python
                .path()
                .join("site-packages/nvidia/cu13/bin")
                .join(name);
            tool.is_file().then_some(tool)
        })
    };
    on_path.or_else(in_venv).unwrap_or_else(|| {
        panic!("{name} not found on PATH or in .venv: run scripts/install-deps (nvidia-cuda-{name} wheel)")
    })
}

/// Runs cuobjdump with `args` on `cubin`, nvdisasm on its PATH for -sass.
fn cuobjdump(args: &[&str], cubin: &Path) -> String {
    let nvdisasm = cuda_tool("nvdisasm");
    let tools = nvdisasm.parent().expect("nvdisasm's folder");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(tools.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .expect("PATH joins");
    let output = Command::new(cuda_tool("cuobjdump"))
        .args(args)
        .arg(cubin)
        .env("PATH", path)
        .output()
        .expect("cuobjdump runs");
    assert!(
        output.status.success(),
        "cuobjdump {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cuobjdump prints text")
}

fn hex(token: &str) -> usize {
    usize::from_str_radix(token.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a hex number: {token:?}"))
}

/// The token after `key` and its ":" in a line of cuobjdump's output.
fn field<'a>(tokens: &[&'a str], key: &str) -> Option<&'a str> {
    let at = tokens.iter().position(|t| *t == key)?;
    tokens.get(at + 2).copied()
}

/// What the cubin says about one entry point.
#[derive(Debug, Default, Clone)]
struct KernelReport {
    /// (offset, size) by ordinal.
    params: BTreeMap<usize, (usize, usize)>,
    /// EIATTR_CBANK_PARAM_SIZE: the parameter buffer's size.
    param_bytes: usize,
    registers: usize,
    stack: usize,
    local: usize,
    /// STL and LDL instructions: spill stores and loads, or local arrays.
    local_stores: usize,
    local_loads: usize,
}

/// Reads every entry point's parameters, resources and local-memory
/// traffic out of `cubin`.
fn inspect(cubin: &[u8], dir: &Path, name: &str) -> BTreeMap<String, KernelReport> {
    let path = dir.join(format!("{name}.cubin"));
    std::fs::write(&path, cubin).expect("write the cubin");
    let mut kernels: BTreeMap<String, KernelReport> = BTreeMap::new();

    // .nv.info.<kernel> sections: "Attribute: EIATTR_..." then its "Value: ...".
    let (mut kernel, mut attribute) = (None::<String>, String::new());
    for line in cuobjdump(&["-elf"], &path).lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            kernel = line.strip_prefix(".nv.info.").map(str::to_string);
            continue;
        }
        let Some(kernel) = &kernel else { continue };
        let tokens: Vec<_> = line.split_whitespace().collect();
        match tokens.first() {
            Some(&"Attribute:") => attribute = tokens.get(1).unwrap_or(&"").to_string(),
            Some(&"Value:") => {
                let report = kernels.entry(kernel.clone()).or_default();
                match attribute.as_str() {
                    "EIATTR_KPARAM_INFO" => {
                        let get = |key| hex(field(&tokens, key).expect("KPARAM_INFO field"));
                        report
                            .params
                            .insert(get("Ordinal"), (get("Offset"), get("Size")));
                    }
                    "EIATTR_CBANK_PARAM_SIZE" => report.param_bytes = hex(tokens[1]),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    // " Function lpw_x:" then "  REG:48 STACK:0 SHARED:0 LOCAL:0 ...".
    let mut function = None::<String>;
    for line in cuobjdump(&["-res-usage"], &path).lines() {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("Function ")
            .and_then(|n| n.strip_suffix(':'))
        {
            function = Some(name.to_string());
        } else if let (Some(name), true) = (&function, line.starts_with("REG:")) {
            let report = kernels.entry(name.clone()).or_default();
            for pair in line.split_whitespace() {
                let (key, value) = pair.split_once(':').expect("KEY:value");
                let value = || value.parse::<usize>().expect("a count");
                match key {
                    "REG" => report.registers = value(),
                    "STACK" => report.stack = value(),
                    "LOCAL" => report.local = value(),
                    _ => {}
                }
            }
        }
    }

    // SASS per kernel (its helpers are in its section): "Function : name",
    // then "/*0040*/ @P0 STL.64 [R1], R2 ;".
    let mut function = None::<String>;
    for line in cuobjdump(&["-sass"], &path).lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("Function : ") {
            function = Some(name.to_string());
            continue;
        }
        let (Some(name), Some(code)) = (&function, line.strip_prefix("/*")) else {
            continue;
        };
        let Some((_, instruction)) = code.split_once("*/") else {
            continue;
        };
        let opcode = instruction
            .split_whitespace()
            .find(|t| !t.starts_with('@'))
            .unwrap_or("")
            .split('.')
            .next()
            .unwrap_or("");
        let report = kernels.entry(name.clone()).or_default();
        match opcode {
            "STL" => report.local_stores += 1,
            "LDL" => report.local_loads += 1,
            _ => {}
        }
    }
    kernels
}

/// The PTX `.entry` parameters of `kernel` as (size, alignment): what the
/// driver lays out when it loads the PTX instead of the cubin.
fn ptx_params(ptx: &str, kernel: &str) -> Vec<(usize, usize)> {
    let start = ptx
        .find(&format!(".entry {kernel}("))
        .unwrap_or_else(|| panic!("no .entry {kernel} in the PTX"));
    let list = &ptx[start..];
    let list = &list[list.find('(').unwrap() + 1..list.find(')').unwrap()];
    list.split(',')
        .map(|param| {
            let tokens: Vec<_> = param.split_whitespace().collect();
            assert_eq!(tokens.first(), Some(&".param"), "{param}");
            let type_size = |t: &str| match t.trim_start_matches(['.', 'u', 's', 'b', 'f']) {
                "8" => Some(1),
                "16" => Some(2),
                "32" => Some(4),
                "64" => Some(8),
                _ => None,
            };
            let element = tokens
                .iter()
                .find_map(|t| type_size(t))
                .expect("a parameter type");
            let name = tokens.last().unwrap();
            let count = name.split_once('[').map_or(1, |(_, n)| {
                n.trim_end_matches(']').parse().expect("array length")
            });
            // ".align" of an array; a pointer's ".ptr .align N" is its pointee's.
            let align = match tokens.iter().position(|t| *t == ".align") {
                Some(at) if count > 1 => tokens[at + 1].parse().expect("alignment"),
                _ => element,
            };
            (element * count, align)
        })
        .collect()
}

/// Differences between what `kernels` declare and what the launcher
/// pushes (`pushed`), one line each; empty when they agree.
fn layout_mismatches(
    kernels: &BTreeMap<String, KernelReport>,
    ptx: &str,
    names: &[&str],
    pushed: &[KernelParam],
) -> Vec<String> {
    let (layout, total) = param_layout(pushed);
    let expected: BTreeMap<_, _> = layout.iter().copied().enumerate().collect();
    let mut mismatches = Vec::new();
    for &name in names {
        let Some(report) = kernels.get(name) else {
            mismatches.push(format!("{name}: not in the cubin"));
            continue;
        };
        if report.params != expected {
            mismatches.push(format!(
                "{name}: cubin parameters (ordinal: (offset, size)) {:?}, the launcher pushes {expected:?} ({})",
                report.params,
                pushed.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ));
        }
        if report.param_bytes != total {
            mismatches.push(format!(
                "{name}: cubin parameter buffer {} bytes, the launcher pushes {total}",
                report.param_bytes
            ));
        }
        let from_ptx = ptx_params(ptx, name);
        let pushed_sizes: Vec<_> = pushed.iter().map(|p| (p.size, p.align)).collect();
        if from_ptx != pushed_sizes {
            mismatches.push(format!(
                "{name}: PTX parameters (size, align) {from_ptx:?}, the launcher pushes {pushed_sizes:?}"
            ));
        }
    }
    mismatches
}

/// Kernels that use local memory (spills or local arrays), one line each.
fn local_memory_users(kernels: &BTreeMap<String, KernelReport>) -> Vec<String> {
    kernels
        .iter()
        .filter(|(_, r)| r.stack + r.local + r.local_stores + r.local_loads > 0)
        .map(|(name, r)| {
            format!(
                "{name}: stack frame {} B, local {} B, {} STL, {} LDL",
                r.stack, r.local, r.local_stores, r.local_loads
            )
        })
        .collect()
}

#[test]
fn kernels_abi_matches_the_launcher_and_nothing_spills() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for arch in ARCHS {
        let compiled = kernels::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        let kernels = inspect(&compiled.cubin, dir, &format!("resize_{arch}"));
        let mismatches = layout_mismatches(&kernels, &compiled.ptx, KERNELS, &LADDER_KERNEL_PARAMS);
        assert!(mismatches.is_empty(), "{arch}:\n{}", mismatches.join("\n"));
        for name in KERNELS {
            let r = &kernels[*name];
            // Past the test harness's capture: the figures show in every run.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "kernel_abi: {arch} {name}: {} registers, stack {} B, local {} B, \
                     spill stores {} / loads {} (STL/LDL), {} parameter bytes\n",
                    r.registers, r.stack, r.local, r.local_stores, r.local_loads, r.param_bytes
                )
                .as_bytes(),
            );
            assert!(r.registers > 0, "{arch} {name}: no register count read");
        }
        let spilling = local_memory_users(&kernels);
        assert!(spilling.is_empty(), "{arch}:\n{}", spilling.join("\n"));
    }
}

/// The checks can fail: a kernel whose parameters changed, and one that
/// uses local memory, are both reported.
#[test]
fn kernels_abi_check_catches_a_changed_parameter_and_local_memory() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let source = kernels::kernel_source();
    // `sw` widened to 64 bits in every entry point: every later offset moves.
    let widened = source.replace(
        "int sw, int sh, LpwLadder ladder)",
        "long long sw, int sh, LpwLadder ladder)",
    );
    assert_eq!(widened.matches("long long sw").count(), KERNELS.len());
    // A dynamically indexed local array lives in local memory, as spills do.
    let local = format!(
        "{source}\nextern \"C\" __global__ void lpw_uses_local(float* out, int i) {{\n\
         float a[64];\n\
         for (int k = 0; k < 64; k++) a[k] = out[k];\n\
         for (int k = 0; k < 64; k++) a[(k * i) & 63] += a[k];\n\
         out[0] = a[i & 63];\n\
         }}\n"
    );
    for (source, name) in [(widened, "widened"), (local, "local")] {
        let compiled = kernels::compile_source(&source, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let kernels = inspect(&compiled.cubin, dir, &format!("planted_{name}"));
        let mismatches = layout_mismatches(&kernels, &compiled.ptx, KERNELS, &LADDER_KERNEL_PARAMS);
        let spilling = local_memory_users(&kernels);
        if name == "widened" {
            assert_eq!(mismatches.len(), 3 * KERNELS.len(), "{mismatches:#?}");
            // `sh` (ordinal 5) moves from offset 32 to 40.
            assert!(mismatches[0].contains("5: (40, 4)"), "{}", mismatches[0]);
            assert!(spilling.is_empty(), "{spilling:?}");
        } else {
            assert!(mismatches.is_empty(), "{mismatches:?}");
            assert_eq!(spilling.len(), 1, "{spilling:?}");
            assert!(spilling[0].starts_with("lpw_uses_local:"), "{spilling:?}");
        }
    }
}
