//! The capability probe: what this machine can decode, scale and encode with,
//! and which backend the engine should use. Run once at start-up.

use std::sync::Arc;

use serde::Serialize;

use super::backend::VideoBackend;
use super::cpu::CpuBackend;
use super::VideoError;

/// Which backend the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The best backend found on this machine.
    #[default]
    Auto,
    /// Always the CPU (FFmpeg) backend.
    Cpu,
    /// The NVIDIA backend; fails if no usable GPU is found.
    Nvidia,
}

/// One GPU and its video engines.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
    /// NVDEC usable (the driver's decode library loads).
    pub nvdec: bool,
    /// NVENC usable: the encode library loads and the model has the engine
    /// (H100/H200-class GPUs do not: encoding falls back to the CPU).
    pub nvenc: bool,
}

/// What the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub cpu_model: String,
    pub cpu_cores: usize,
    pub decoders: Vec<String>,
    pub encoders: Vec<String>,
    /// NVIDIA GPUs the driver reports; empty without the `nvidia` feature.
    pub gpus: Vec<Gpu>,
    /// Backend names available, best first.
    pub backends: Vec<String>,
}

fn has_decoder(id: ffmpeg_next::codec::Id) -> bool {
    ffmpeg_next::decoder::find(id).is_some()
}

fn has_encoder(name: &str) -> bool {
    ffmpeg_next::encoder::find_by_name(name).is_some()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Probes the machine.
pub fn probe() -> Capabilities {
    super::init_ffmpeg();
    use ffmpeg_next::codec::Id;
    let decoders = [(Id::H264, "h264"), (Id::HEVC, "hevc")]
        .into_iter()
        .filter(|(id, _)| has_decoder(*id))
        .map(|(_, n)| n.to_string())
        .collect();
    let encoders = ["libx264", "libx265"]
        .into_iter()
        .filter(|n| has_encoder(n))
        .map(String::from)
        .collect();
    Capabilities {
        cpu_model: cpu_model(),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        decoders,
        encoders,
        gpus: gpus(),
        backends: vec!["cpu".to_string()],
    }
}

#[cfg(feature = "nvidia")]
fn gpus() -> Vec<Gpu> {
    super::nvidia::probe::probe()
        .into_iter()
        .map(|g| Gpu {
            index: g.index,
            name: g.name,
            memory_bytes: g.memory_bytes,
            nvdec: g.nvdec_library,
            nvenc: g.nvenc_library && g.nvenc_hardware,
        })
        .collect()
}

#[cfg(not(feature = "nvidia"))]
fn gpus() -> Vec<Gpu> {
    Vec::new()
}

/// Picks the backend for `choice` from what `caps` found.
pub fn select_backend(
    choice: BackendChoice,
    caps: &Capabilities,
) -> Result<Arc<dyn VideoBackend>, VideoError> {
    match choice {
        BackendChoice::Auto | BackendChoice::Cpu => {
            if caps.decoders.is_empty() || caps.encoders.is_empty() {
                return Err(VideoError::BackendUnavailable(
                    "cpu (FFmpeg lacks the H.264/HEVC decoders or libx264)".into(),
                ));
            }
            Ok(Arc::new(CpuBackend))
        }
        BackendChoice::Nvidia => Err(VideoError::BackendUnavailable(if caps.gpus.is_empty() {
            "nvidia (no usable NVIDIA GPU found)".into()
        } else {
            "nvidia (this build has no NVIDIA backend yet)".into()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_the_cpu_path() {
        let caps = probe();
        assert!(caps.cpu_cores >= 1);
        assert!(caps.decoders.contains(&"h264".to_string()), "{caps:?}");
        assert!(caps.encoders.contains(&"libx264".to_string()), "{caps:?}");
        assert_eq!(
            select_backend(BackendChoice::Auto, &caps).unwrap().name(),
            "cpu"
        );
        assert!(select_backend(BackendChoice::Nvidia, &caps).is_err());
    }
}
