//! What the benchmark ran on.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: String,
    pub memory_mib: u64,
    pub driver: String,
    /// NVDEC / NVENC as the capability probe found them (None: this build has
    /// no NVIDIA probe).
    pub nvdec: Option<bool>,
    pub nvenc: Option<bool>,
    /// Codecs each engine handles, and why one is unusable (the probe's
    /// findings; empty without it).
    pub nvdec_codecs: Vec<String>,
    pub nvenc_codecs: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    pub cpu_model: String,
    pub cpu_cores: usize,
    pub memory_mib: u64,
    pub os: String,
    pub gpus: Vec<Gpu>,
    /// Backends the capability probe found, best first.
    pub backends: Vec<String>,
    pub encoders: Vec<String>,
}

fn meminfo_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// GPUs as `nvidia-smi` reports them, when it is installed.
fn nvidia_gpus() -> Vec<Gpu> {
    let Ok(out) = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<_> = l.split(',').map(str::trim).collect();
            (f.len() == 3).then(|| Gpu {
                name: f[0].to_string(),
                memory_mib: f[1].parse().unwrap_or(0),
                driver: f[2].to_string(),
                nvdec: None,
                nvenc: None,
                nvdec_codecs: Vec::new(),
                nvenc_codecs: Vec::new(),
                problems: Vec::new(),
            })
        })
        .collect()
}

pub fn detect() -> Hardware {
    let probe = crate::video::probe::probe();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    Hardware {
        cpu_model: probe.cpu_model,
        cpu_cores: probe.cpu_cores,
        memory_mib: meminfo_mib(),
        os,
        gpus: nvidia_gpus()
            .into_iter()
            .enumerate()
            .map(|(i, mut g)| {
                if let Some(p) = probe.gpus.iter().find(|p| p.index as usize == i) {
                    g.nvdec = Some(p.nvdec);
                    g.nvenc = Some(p.nvenc);
                    g.nvdec_codecs = p.nvdec_codecs.clone();
                    g.nvenc_codecs = p.nvenc_codecs.clone();
                    g.problems = p.problems.clone();
                }
                g
            })
            .collect(),
        backends: probe.backends,
        encoders: probe.encoders,
    }
}
