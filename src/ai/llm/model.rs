//! Decoder-only language models on Candle, by the architecture their
//! `config.json` names: Llama (Llama 2/3.x, and models sharing its layout)
//! and Qwen2 (Qwen2/2.5).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, qwen2};

use crate::ai::candle::{load_guarded, model_error, read_json, weights};
use crate::ai::AiError;

#[derive(Clone)]
enum Arch {
    Llama {
        model: llama::Llama,
        /// A fresh cache (rotary tables computed once); cloned per sequence.
        cache: llama::Cache,
    },
    Qwen2(qwen2::ModelForCausalLM),
}

/// A loaded causal language model.
pub struct CausalLm {
    arch: Arch,
    device: Device,
    /// Longest sequence (prompt and generated tokens) the model takes.
    pub max_positions: usize,
    /// End-of-sequence ids from config.json.
    pub eos_token_ids: Vec<u32>,
}

/// The fields every supported config.json shares.
#[derive(serde::Deserialize)]
struct CommonConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: String,
    max_position_embeddings: usize,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

/// An id or a list of ids, as config.json and generation_config.json write them.
pub fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl CausalLm {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, AiError> {
        let config_path = dir.join("config.json");
        let common: CommonConfig = read_json(&config_path)?;
        let vb = weights(dir, DType::F32, device)?;
        let is = |arch: &str, model_type: &str| {
            common.architectures.iter().any(|a| a == arch) || common.model_type == model_type
        };
        let arch = if is("LlamaForCausalLM", "llama") {
            let config: llama::LlamaConfig = read_json(&config_path)?;
            let config = config.into_config(false);
            let model = load_guarded("loading Llama weights", || llama::Llama::load(vb, &config))?;
            let cache = llama::Cache::new(true, DType::F32, &config, device)
                .map_err(|e| model_error("rotary tables", e))?;
            Arch::Llama { model, cache }
        } else if is("Qwen2ForCausalLM", "qwen2") {
            let config: qwen2::Config = read_json(&config_path)?;
            Arch::Qwen2(load_guarded("loading Qwen2 weights", || {
                qwen2::ModelForCausalLM::new(&config, vb)
            })?)
        } else {
            return Err(AiError::UnknownModel(format!(
                "{}: architecture {:?} (model_type {:?}) is not supported for llm; supported: LlamaForCausalLM, Qwen2ForCausalLM",
                config_path.display(),
                common.architectures,
                common.model_type
            )));
        };
        Ok(CausalLm {
            arch,
            device: device.clone(),
            max_positions: common.max_position_embeddings,
            eos_token_ids: token_ids(common.eos_token_id.as_ref()),
        })
    }

    /// A new sequence with its own key/value cache.
    pub fn sequence(&self) -> Sequence {
        let mut arch = self.arch.clone();
        if let Arch::Qwen2(model) = &mut arch {
            model.clear_kv_cache();
        }
        Sequence {
            arch,
            device: self.device.clone(),
            position: 0,
        }
    }
}

/// One generation in progress: the tokens fed so far live in its cache.
pub struct Sequence {
    arch: Arch,
    device: Device,
    position: usize,
}

impl Sequence {
    /// Feeds `tokens` (the prompt, then one token at a time) and returns the
    /// next-token logits.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor, AiError> {
        let input = Tensor::new(tokens, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| model_error("input tokens", e))?;
        let logits = match &mut self.arch {
            Arch::Llama { model, cache } => model.forward(&input, self.position, cache),
            Arch::Qwen2(model) => model.forward(&input, self.position),
        }
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_dtype(DType::F32))
        .map_err(|e| model_error("forward pass", e))?;
        self.position += tokens.len();
        Ok(logits)
    }
}
