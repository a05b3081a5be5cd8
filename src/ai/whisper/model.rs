//! The Whisper network on Candle, and what `generation_config.json` says about
//! decoding with it.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::net::{Decoder, Net, NetConfig};

use crate::ai::candle::{load_guarded, model_error, read_json, weights};
use crate::ai::AiError;

/// The decoding settings of a Whisper checkpoint (generation_config.json).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GenerationConfig {
    pub decoder_start_token_id: u32,
    pub eos_token_id: u32,
    /// `[[position, token or null], ...]`: the prompt after the start token
    /// (null marks the language, to be detected).
    #[serde(default)]
    pub forced_decoder_ids: Vec<(usize, Option<u32>)>,
    #[serde(default)]
    pub lang_to_id: BTreeMap<String, u32>,
    #[serde(default)]
    pub task_to_id: BTreeMap<String, u32>,
    pub no_timestamps_token_id: u32,
    #[serde(default)]
    pub max_initial_timestamp_index: Option<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub max_length: Option<usize>,
}

impl GenerationConfig {
    /// The first timestamp token (`<|0.00|>`).
    pub fn timestamp_begin(&self) -> u32 {
        self.no_timestamps_token_id + 1
    }
}

/// A loaded Whisper; cheap to clone (weights are shared).
#[derive(Clone)]
pub struct WhisperNet {
    net: Net,
    device: Device,
    pub n_mels: usize,
    pub max_target_positions: usize,
    pub vocab_size: usize,
}

impl WhisperNet {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, AiError> {
        let config: NetConfig = read_json(&dir.join("config.json"))?;
        let vb = weights(dir, DType::F32, device)?;
        let (n_mels, max_target_positions, vocab_size) = (
            config.num_mel_bins,
            config.max_target_positions,
            config.vocab_size,
        );
        let net = load_guarded("loading Whisper weights", || Net::load(config, vb))?;
        Ok(WhisperNet {
            net,
            device: device.clone(),
            n_mels,
            max_target_positions,
            vocab_size,
        })
    }

    /// Encodes one window's `[n_mels][3000]` features.
    pub fn encode(&self, mel: &[f32]) -> Result<Tensor, AiError> {
        let frames = mel.len() / self.n_mels;
        Tensor::from_slice(mel, (1, self.n_mels, frames), &self.device)
            .and_then(|m| self.net.encode(&m))
            .map_err(|e| model_error("Whisper encoder", e))
    }

    /// A decoder over one window's encoded audio.
    pub fn decoder(&self, audio: &Tensor) -> Result<Decoder, AiError> {
        self.net
            .decoder(audio)
            .map_err(|e| model_error("Whisper decoder", e))
    }
}

/// Next-token logits after feeding `tokens` to `decoder`.
pub fn feed(decoder: &mut Decoder, tokens: &[u32]) -> Result<Vec<f32>, AiError> {
    decoder
        .feed(tokens)
        .map_err(|e| model_error("Whisper decoder", e))
}
