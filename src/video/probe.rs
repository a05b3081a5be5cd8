//! The capability probe: what this machine can decode, scale and encode with,
//! and which backend the engine should use. Run once at start-up.

use std::sync::Arc;

use serde::Serialize;

use super::backend::VideoBackend;
use super::cpu::CpuBackend;
use super::nvidia::selection::GpuSelection;
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
    /// NVDEC usable: its decoder caps list H.264 or HEVC.
    pub nvdec: bool,
    /// NVENC usable: an encode session opens (H100/H200-class GPUs have no
    /// NVENC: their renditions are encoded on the CPU).
    pub nvenc: bool,
    /// Codecs NVDEC decodes ("h264", "hevc").
    pub nvdec_codecs: Vec<String>,
    /// Codecs NVENC encodes.
    pub nvenc_codecs: Vec<String>,
    /// Why the GPU or an engine is unusable, when one is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
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
    let gpus = gpus();
    Capabilities {
        cpu_model: cpu_model(),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        decoders,
        encoders,
        backends: gpus
            .iter()
            .any(|g| g.nvdec)
            .then(|| "nvidia".to_string())
            .into_iter()
            .chain(["cpu".to_string()])
            .collect(),
        gpus,
    }
}

/// Every GPU the driver reports, each opened once (shared with the backend)
/// to ask its video engines what they do.
#[cfg(feature = "nvidia")]
fn gpus() -> Vec<Gpu> {
    super::nvidia::probe::probe()
        .into_iter()
        .map(|g| {
            let mut gpu = Gpu {
                index: g.index,
                name: g.name.clone(),
                memory_bytes: g.memory_bytes,
                nvdec: false,
                nvenc: false,
                nvdec_codecs: Vec::new(),
                nvenc_codecs: Vec::new(),
                problems: Vec::new(),
            };
            match super::nvidia::device::open_shared(&g) {
                Ok(device) => {
                    let engines = device.engines();
                    gpu.nvdec_codecs = engines
                        .decode
                        .iter()
                        .map(|(c, ..)| c.name().to_string())
                        .collect();
                    gpu.nvenc_codecs = engines
                        .encode
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect();
                    gpu.problems
                        .extend(engines.decode_error.iter().map(|e| format!("NVDEC: {e}")));
                    gpu.problems
                        .extend(engines.encode_error.iter().map(|e| format!("NVENC: {e}")));
                }
                Err(e) => gpu.problems.push(e.to_string()),
            }
            gpu.nvdec = !gpu.nvdec_codecs.is_empty();
            gpu.nvenc = !gpu.nvenc_codecs.is_empty();
            gpu
        })
        .collect()
}

#[cfg(not(feature = "nvidia"))]
fn gpus() -> Vec<Gpu> {
    Vec::new()
}

/// Picks the backend for `choice` from what `caps` found. `nvidia` is
/// `--nvidia`: naming GPUs asks for the NVIDIA backend on them, as
/// go-livepeer's `-nvidia` does. `auto` takes the GPUs when a usable one is
/// present and the CPU otherwise.
pub fn select_backend(
    choice: BackendChoice,
    nvidia: Option<&GpuSelection>,
    caps: &Capabilities,
) -> Result<Arc<dyn VideoBackend>, VideoError> {
    let cpu = || -> Result<Arc<dyn VideoBackend>, VideoError> {
        if caps.decoders.is_empty() || caps.encoders.is_empty() {
            return Err(VideoError::BackendUnavailable(
                "cpu (FFmpeg lacks the H.264/HEVC decoders or libx264)".into(),
            ));
        }
        Ok(Arc::new(CpuBackend))
    };
    let wants_gpu = match choice {
        BackendChoice::Cpu if nvidia.is_some() => {
            return Err(VideoError::BackendUnavailable(
                "cpu was chosen but --nvidia names GPUs: choose one".into(),
            ))
        }
        BackendChoice::Cpu => return cpu(),
        BackendChoice::Nvidia => true,
        BackendChoice::Auto => nvidia.is_some(),
    };
    match nvidia_backend(nvidia.unwrap_or(&GpuSelection::All)) {
        Ok(backend) => Ok(backend),
        Err(e) if wants_gpu => Err(e),
        Err(e) => {
            if !caps.gpus.is_empty() {
                tracing::warn!(error = %e, "GPUs found but not usable: transcoding on the CPU");
            }
            cpu()
        }
    }
}

#[cfg(feature = "nvidia")]
fn nvidia_backend(selection: &GpuSelection) -> Result<Arc<dyn VideoBackend>, VideoError> {
    let found = super::nvidia::probe::probe();
    Ok(Arc::new(super::nvidia::backend::NvidiaBackend::open(
        selection, &found,
    )?))
}

#[cfg(not(feature = "nvidia"))]
fn nvidia_backend(_selection: &GpuSelection) -> Result<Arc<dyn VideoBackend>, VideoError> {
    Err(VideoError::BackendUnavailable(
        "nvidia (this lpworker was built without the `nvidia` feature: --no-default-features)"
            .into(),
    ))
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
        if !caps.gpus.is_empty() {
            // A GPU machine: the rest is about machines without one.
            return;
        }
        // No GPU: auto is the CPU, asking for the GPU fails with a reason
        // instead of quietly using the CPU.
        assert_eq!(caps.backends, vec!["cpu".to_string()]);
        assert_eq!(
            select_backend(BackendChoice::Auto, None, &caps)
                .unwrap()
                .name(),
            "cpu"
        );
        let err = |r: Result<Arc<dyn VideoBackend>, VideoError>| match r {
            Ok(b) => panic!("expected an error, got the {} backend", b.name()),
            Err(e) => e.to_string(),
        };
        let nvidia = err(select_backend(BackendChoice::Nvidia, None, &caps));
        assert!(nvidia.contains("nvidia"), "{nvidia}");
        let gpus: GpuSelection = "0,1".parse().unwrap();
        let named = err(select_backend(BackendChoice::Auto, Some(&gpus), &caps));
        assert!(named.contains("nvidia"), "{named}");
        let both = err(select_backend(BackendChoice::Cpu, Some(&gpus), &caps));
        assert!(both.contains("--nvidia"), "{both}");
    }
}
