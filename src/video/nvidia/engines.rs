//! What a GPU's video engines can do, found by asking them (not by model
//! name): NVDEC's decoder caps and whether an NVENC session opens. Asked
//! through the two libraries' `api` layers only, so the device can hold the
//! answer without depending on the decoder or the encoder.

use cudarc::driver::CudaContext;
use nvidia_video_codec_sdk::sys::cuviddec::{cudaVideoChromaFormat, CUVIDDECODECAPS};

use super::nvdec::api::{self as nvdec, NvdecError};
use super::nvenc::api::{self as nvenc, NvencError};
use super::probe::GpuInfo;
use crate::video::profile::VideoCodec;

/// What NVDEC accepts for one codec at 8-bit 4:2:0 (coded sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub min_width: u32,
    pub min_height: u32,
    pub max_width: u32,
    pub max_height: u32,
    /// Largest `(coded_width / 16) * (coded_height / 16)`.
    pub max_macroblocks: u32,
}

/// NVDEC's and NVENC's abilities on one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Engines {
    /// Codecs NVDEC decodes (8-bit 4:2:0), with their size limits.
    pub decode: Vec<(VideoCodec, DecodeLimits)>,
    /// Why NVDEC is unusable, when `decode` is empty.
    pub decode_error: Option<String>,
    /// Codecs NVENC encodes; empty on GPUs without NVENC (H100, H200).
    pub encode: Vec<VideoCodec>,
    /// Why NVENC is unusable, when `encode` is empty.
    pub encode_error: Option<String>,
}

impl Engines {
    /// Asks the engines of the GPU whose context is `ctx`.
    pub fn probe(gpu: &GpuInfo, ctx: &CudaContext) -> Engines {
        let mut engines = Engines::default();
        match decode_codecs(ctx) {
            Ok(codecs) if !codecs.is_empty() => engines.decode = codecs,
            Ok(_) => engines.decode_error = Some("NVDEC decodes neither H.264 nor HEVC".into()),
            Err(e) => engines.decode_error = Some(e.to_string()),
        }
        match encode_codecs(ctx) {
            Ok(codecs) if !codecs.is_empty() => engines.encode = codecs,
            Ok(_) => engines.encode_error = Some("NVENC encodes neither H.264 nor HEVC".into()),
            Err(e) => engines.encode_error = Some(e.to_string()),
        }
        tracing::info!(gpu = gpu.index, name = %gpu.name, ?engines, "GPU video engines");
        engines
    }

    /// NVDEC's limits for `codec`; `None` when it does not decode it.
    pub fn decode_limits(&self, codec: VideoCodec) -> Option<DecodeLimits> {
        self.decode
            .iter()
            .find_map(|(c, limits)| (*c == codec).then_some(*limits))
    }

    pub fn encodes(&self, codec: VideoCodec) -> bool {
        self.encode.contains(&codec)
    }
}

/// cuvidGetDecoderCaps for 8-bit 4:2:0 H.264 and HEVC: the codecs the GPU
/// decodes, with their size limits.
pub fn decode_codecs(ctx: &CudaContext) -> Result<Vec<(VideoCodec, DecodeLimits)>, NvdecError> {
    let api = nvdec::api()?;
    nvdec::guarded(|| {
        nvdec::bind(ctx)?;
        let mut codecs = Vec::new();
        for codec in [VideoCodec::H264, VideoCodec::Hevc] {
            let mut caps = CUVIDDECODECAPS {
                eCodecType: nvdec::cuvid_codec(codec),
                eChromaFormat: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
                nBitDepthMinus8: 0,
                ..Default::default()
            };
            api.decoder_caps(&mut caps)?;
            if caps.bIsSupported != 0 {
                let limits = DecodeLimits {
                    min_width: u32::from(caps.nMinWidth),
                    min_height: u32::from(caps.nMinHeight),
                    max_width: caps.nMaxWidth,
                    max_height: caps.nMaxHeight,
                    max_macroblocks: caps.nMaxMBCount,
                };
                codecs.push((codec, limits));
            }
        }
        Ok(codecs)
    })
}

/// Opens a throwaway NVENC session and lists which of H.264 and HEVC it
/// encodes. Fails on GPUs without NVENC (H100, H200: the session does not
/// open) and when the library is absent or too old.
pub fn encode_codecs(ctx: &CudaContext) -> Result<Vec<VideoCodec>, NvencError> {
    let api = nvenc::api()?;
    let (major, minor) = api.driver_api_version();
    tracing::debug!(api = %format!("{major}.{minor}"), "NVENC API version the driver speaks");
    nvenc::guarded(|| {
        nvenc::bind(ctx)?;
        let guids = nvenc::Session::open(api, ctx.cu_ctx())?.encode_guids()?;
        Ok([VideoCodec::H264, VideoCodec::Hevc]
            .into_iter()
            .filter(|codec| guids.contains(&nvenc::codec_guid(*codec)))
            .collect())
    })
}
