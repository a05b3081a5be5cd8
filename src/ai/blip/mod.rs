//! BLIP image captioning on Candle: transformers' BlipForConditionalGeneration
//! (Salesforce/blip-image-captioning-large and models of its layout), the
//! model ai-runner's image-to-text runs, with candle-transformers' network
//! and transformers' preprocessing and greedy `generate` around it.

pub mod preprocess;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{blip, blip_text};
use tokenizers::Tokenizer;

use crate::ai::candle::{load_guarded, model_error, read_json, safetensors_files, weights};
use crate::ai::{tokenizer, AiError};
pub use preprocess::ImageProcessor;

/// transformers' default length of a generation: 20 new tokens (the
/// published BLIP checkpoints ship no generation_config.json, and ai-runner
/// calls `generate` without length arguments).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 20;

/// BlipTextConfig as config.json writes it, with transformers' defaults for
/// what it leaves out.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
struct TextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    projection_dim: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: candle_nn::Activation,
    layer_norm_eps: f64,
    bos_token_id: u32,
    sep_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 30524,
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: candle_nn::Activation::Gelu,
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            sep_token_id: 102,
        }
    }
}

/// BlipVisionConfig, likewise.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
struct VisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    projection_dim: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: candle_nn::Activation,
    layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: candle_nn::Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    text_config: TextConfig,
    #[serde(default)]
    vision_config: VisionConfig,
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default = "default_image_text_hidden_size")]
    image_text_hidden_size: usize,
}

fn default_projection_dim() -> usize {
    512
}

fn default_image_text_hidden_size() -> usize {
    256
}

/// Whether `config.json` describes a BLIP model: `model_type` "blip", or
/// a config with both a vision and a text part and no other model type.
pub fn is_blip_config(config: &serde_json::Value) -> bool {
    match config.get("model_type").and_then(|t| t.as_str()) {
        Some(t) => t == "blip",
        None => config.get("vision_config").is_some() && config.get("text_config").is_some(),
    }
}

/// Whether `dir` holds a BLIP model (its config.json, by [`is_blip_config`]).
pub fn is_blip_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|config| is_blip_config(&config))
}

/// preprocessor_config.json's fields that matter, read leniently: what is
/// missing takes BlipImageProcessor's default.
fn image_processor(dir: &Path, image_size: usize) -> Result<ImageProcessor, AiError> {
    let mut p = ImageProcessor::new(image_size as u32);
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok(p);
    }
    let json: serde_json::Value = read_json(&path)?;
    let size = &json["size"];
    let (h, w) = (size["height"].as_u64(), size["width"].as_u64());
    if let (Some(h), Some(w)) = (h, w) {
        if h != w || h as usize != image_size {
            return Err(AiError::UnknownModel(format!(
                "{}: size {w}x{h} is not the vision model's {image_size}x{image_size}",
                path.display()
            )));
        }
    }
    if json["do_resize"].as_bool() == Some(false) {
        return Err(AiError::UnknownModel(format!(
            "{}: do_resize false is not supported",
            path.display()
        )));
    }
    if let Some(r) = json["resample"].as_u64() {
        if r != 3 {
            return Err(AiError::UnknownModel(format!(
                "{}: resample {r} is not supported (3, bicubic)",
                path.display()
            )));
        }
    }
    if let Some(f) = json["rescale_factor"].as_f64() {
        p.rescale_factor = f;
    }
    let triple = |v: &serde_json::Value| -> Option<[f32; 3]> {
        let a = v.as_array()?;
        (a.len() == 3).then(|| std::array::from_fn(|i| a[i].as_f64().unwrap_or(0.0) as f32))
    };
    if let Some(m) = triple(&json["image_mean"]) {
        p.mean = m;
    }
    if let Some(s) = triple(&json["image_std"]) {
        if s.iter().any(|&v| v <= 0.0) {
            return Err(AiError::UnknownModel(format!(
                "{}: image_std must be positive",
                path.display()
            )));
        }
        p.std = s;
    }
    Ok(p)
}

/// The LM head's weight is tied to the word embeddings; checkpoints saved by
/// recent transformers leave it out. Candle's decoder reads it by name, so
/// such weights are loaded into memory with the tied name filled in.
const LM_HEAD: &str = "text_decoder.cls.predictions.decoder.weight";
const WORD_EMBEDDINGS: &str = "text_decoder.bert.embeddings.word_embeddings.weight";

fn blip_weights(dir: &Path, device: &Device) -> Result<VarBuilder<'static>, AiError> {
    let vb = weights(dir, DType::F32, device)?;
    if vb.contains_tensor(LM_HEAD) {
        return Ok(vb);
    }
    let mut tensors = std::collections::HashMap::new();
    for file in safetensors_files(dir)? {
        tensors.extend(
            candle_core::safetensors::load(&file, device)
                .map_err(|e| model_error(&file.display().to_string(), e))?,
        );
    }
    let tied = tensors.get(WORD_EMBEDDINGS).cloned().ok_or_else(|| {
        AiError::UnknownModel(format!(
            "{}: neither {LM_HEAD} nor {WORD_EMBEDDINGS} in the weights",
            dir.display()
        ))
    })?;
    tensors.insert(LM_HEAD.to_string(), tied);
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// A loaded BLIP captioner. The text decoder keeps a KV cache, so each
/// caption runs on a clone (the weights are shared).
pub struct Blip {
    model: blip::BlipForConditionalGeneration,
    tokenizer: Tokenizer,
    device: Device,
    pub processor: ImageProcessor,
    pub bos_token_id: u32,
    pub sep_token_id: u32,
    pub max_positions: usize,
    pub length: Length,
}

/// How long a generation may run (generation_config.json's `max_new_tokens`
/// or `max_length`; transformers' default without either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// This many tokens after the prompt.
    New(usize),
    /// This many tokens in all, the start token and the prompt included.
    Total(usize),
}

impl Blip {
    /// Loads a Hugging Face BLIP folder: config.json, model.safetensors (or
    /// shards), tokenizer.json and, optionally, preprocessor_config.json
    /// and generation_config.json (`max_new_tokens` or `max_length`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, AiError> {
        let raw: serde_json::Value = read_json(&dir.join("config.json"))?;
        if !is_blip_config(&raw) {
            return Err(AiError::UnknownModel(format!(
                "{}: not a BLIP model (model_type {})",
                dir.display(),
                raw["model_type"]
            )));
        }
        let file: ConfigFile = serde_json::from_value(raw)
            .map_err(|e| model_error(&dir.join("config.json").display().to_string(), e))?;
        let (t, v) = (&file.text_config, &file.vision_config);
        if v.patch_size == 0
            || v.image_size % v.patch_size != 0
            || t.num_attention_heads == 0
            || v.num_attention_heads == 0
            || t.bos_token_id as usize >= t.vocab_size
        {
            return Err(AiError::UnknownModel(format!(
                "{}: inconsistent BLIP config",
                dir.display()
            )));
        }
        let config = blip::Config {
            text_config: blip_text::Config {
                vocab_size: t.vocab_size,
                hidden_size: t.hidden_size,
                // transformers sets it from the vision model, whatever the
                // file says.
                encoder_hidden_size: v.hidden_size,
                intermediate_size: t.intermediate_size,
                projection_dim: t.projection_dim,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                max_position_embeddings: t.max_position_embeddings,
                hidden_act: t.hidden_act,
                layer_norm_eps: t.layer_norm_eps,
                is_decoder: true,
            },
            vision_config: blip::VisionConfig {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                projection_dim: v.projection_dim,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                image_size: v.image_size,
                patch_size: v.patch_size,
                hidden_act: v.hidden_act,
                layer_norm_eps: v.layer_norm_eps,
            },
            projection_dim: file.projection_dim,
            image_text_hidden_size: file.image_text_hidden_size,
        };
        let vb = blip_weights(dir, device)?;
        let model = load_guarded(&format!("BLIP model in {}", dir.display()), || {
            blip::BlipForConditionalGeneration::new(&config, vb)
        })?;
        let generation = dir.join("generation_config.json");
        let length = if generation.is_file() {
            let g: serde_json::Value = read_json(&generation)?;
            match (g["max_new_tokens"].as_u64(), g["max_length"].as_u64()) {
                (Some(n), _) => Length::New(n as usize),
                (None, Some(n)) => Length::Total(n as usize),
                _ => Length::New(DEFAULT_MAX_NEW_TOKENS),
            }
        } else {
            Length::New(DEFAULT_MAX_NEW_TOKENS)
        };
        Ok(Blip {
            model,
            tokenizer: tokenizer::load(&dir.join("tokenizer.json"))?,
            device: device.clone(),
            processor: image_processor(dir, v.image_size)?,
            bos_token_id: t.bos_token_id,
            sep_token_id: t.sep_token_id,
            max_positions: t.max_position_embeddings,
            length,
        })
    }

    /// The model input for an image: `[1, 3, size, size]`.
    pub fn pixel_values(&self, image: &image::RgbImage) -> Result<Tensor, AiError> {
        let side = self.processor.size as usize;
        Tensor::from_vec(
            self.processor.pixel_values(image),
            (1, 3, side, side),
            &self.device,
        )
        .map_err(|e| model_error("pixel values", e))
    }

    /// The vision model's last hidden state (after its final layer norm),
    /// `[1, 1 + patches, hidden]`: what the text decoder attends to.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor, AiError> {
        self.model
            .vision_model()
            .forward(pixel_values)
            .map_err(|e| model_error("vision model", e))
    }

    /// The decoder's input for a prompt: the start token, then the prompt's
    /// tokens (transformers tokenizes `[CLS] prompt [SEP]`, puts the start
    /// token in the place of `[CLS]` and drops the `[SEP]`).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, AiError> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| AiError::BadRequest(format!("prompt does not tokenize: {e}")))?;
        let mut ids = vec![self.bos_token_id];
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The decoder's logits for `ids` over a fresh cache, `[len, vocab]`.
    pub fn logits(&self, ids: &[u32], image_embeds: &Tensor) -> Result<Tensor, AiError> {
        let mut model = self.model.clone();
        model.reset_kv_cache();
        self.step(&mut model, ids, image_embeds)
    }

    fn step(
        &self,
        model: &mut blip::BlipForConditionalGeneration,
        ids: &[u32],
        image_embeds: &Tensor,
    ) -> Result<Tensor, AiError> {
        let input = Tensor::new(ids, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| model_error("decoder input", e))?;
        model
            .text_decoder()
            .forward(&input, image_embeds)
            .and_then(|l| l.squeeze(0))
            .map_err(|e| model_error("text decoder", e))
    }

    /// Greedy decoding as transformers' `generate` does it: from `ids` (the
    /// start token and the prompt), the most likely token at each step,
    /// until `[SEP]` or the [`Length`], and never past the model's
    /// positions. Returns every id, the prompt's included.
    pub fn generate(&self, mut ids: Vec<u32>, image_embeds: &Tensor) -> Result<Vec<u32>, AiError> {
        let limit = match self.length {
            Length::New(n) => ids.len() + n,
            Length::Total(n) => n,
        }
        .min(self.max_positions);
        if ids.len() >= limit {
            return Err(AiError::BadRequest(format!(
                "the prompt is {} tokens; this model captions after at most {}",
                ids.len() - 1,
                limit.saturating_sub(2)
            )));
        }
        let mut model = self.model.clone();
        model.reset_kv_cache();
        let mut input = ids.clone();
        while ids.len() < limit {
            let logits = self.step(&mut model, &input, image_embeds)?;
            let next = logits
                .get(input.len() - 1)
                .and_then(|l| l.argmax(0))
                .and_then(|t| t.to_scalar::<u32>())
                .map_err(|e| model_error("text decoder", e))?;
            ids.push(next);
            if next == self.sep_token_id {
                break;
            }
            input = vec![next];
        }
        Ok(ids)
    }

    /// The text of `ids` without special tokens, as
    /// `processor.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, AiError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| AiError::Internal(format!("caption does not decode: {e}")))
    }
}
