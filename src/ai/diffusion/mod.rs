//! Stable Diffusion on Candle from a diffusers model folder: CLIP text
//! encoder, UNet, VAE (decoder, and encoder for image-to-image) and an Euler
//! sampler, with classifier-free guidance. The UNet and VAE decoder are
//! Candle's; the text encoder, the VAE encoder and the sampler are
//! lpworker's (see their modules for why).

pub mod clip;
pub mod scheduler;
pub mod vae_encoder;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::{
    unet_2d::{BlockConfig, UNet2DConditionModel, UNet2DConditionModelConfig},
    vae::{AutoEncoderKL, AutoEncoderKLConfig},
};
use tokenizers::Tokenizer;

use self::clip::{ClipTextConfig, ClipTextEncoder};
use self::scheduler::{EulerConfig, EulerSchedule};
use self::vae_encoder::VaeEncoder;
use super::candle::{load_guarded, model_error, read_json, weights};
use super::tokenizer::{self, special_token};
use super::AiError;

/// An int or a per-block list, as diffusers configs write head counts.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.get(i).copied().unwrap_or(v[v.len() - 1]),
        }
    }
}

/// unet/config.json (UNet2DConditionModel).
#[derive(Debug, Clone, serde::Deserialize)]
struct UnetJson {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    layers_per_block: usize,
    cross_attention_dim: usize,
    attention_head_dim: PerBlock,
    #[serde(default)]
    transformer_layers_per_block: Option<PerBlock>,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default = "d_groups")]
    norm_num_groups: usize,
    #[serde(default = "d_eps")]
    norm_eps: f64,
    #[serde(default = "d_true")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "d_one")]
    downsample_padding: usize,
    #[serde(default = "d_one_f")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
}

/// vae/config.json (AutoencoderKL).
#[derive(Debug, Clone, serde::Deserialize)]
struct VaeJson {
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    #[serde(default = "d_groups")]
    norm_num_groups: usize,
    #[serde(default = "d_true")]
    use_quant_conv: bool,
    #[serde(default = "d_true")]
    use_post_quant_conv: bool,
    #[serde(default = "d_scaling")]
    scaling_factor: f64,
}

fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_one() -> usize {
    1
}
fn d_one_f() -> f64 {
    1.0
}
fn d_scaling() -> f64 {
    0.18215
}

/// The index of the first step image-to-image runs for `strength`: diffusers'
/// `get_timesteps`, which keeps the last `int(steps * strength)` steps.
/// `steps` when none is kept.
pub fn img2img_start(steps: usize, strength: f64) -> usize {
    let kept = ((steps as f64 * strength) as usize).min(steps);
    steps - kept
}

/// A prompt's embeddings as the UNet attends to them (see
/// [`StableDiffusion::prompt_context`]).
pub struct PromptContext {
    context: Tensor,
    guided: bool,
}

/// The VAE encoder's latent distribution of an image.
pub struct Posterior {
    mean: Tensor,
    std: Tensor,
    scaling_factor: f64,
}

impl Posterior {
    /// Scaled latents: `(mean + std * noise) * scaling_factor`, diffusers'
    /// `latent_dist.sample(generator)` with `noise` the standard normal draw.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor, AiError> {
        ((&self.mean + (&self.std * noise).map_err(|e| model_error("VAE sample", e))?)
            .and_then(|t| t * self.scaling_factor))
        .map_err(|e| model_error("VAE sample", e))
    }
}

/// What [`StableDiffusion::img2img`] computed.
pub struct Img2Img {
    pub noised_latents: Tensor,
    pub final_latents: Tensor,
    /// `[3, height, width]` in [0, 1].
    pub image: Tensor,
}

/// What one generation asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance_scale: f64,
    pub height: usize,
    pub width: usize,
}

pub struct StableDiffusion {
    /// Attention heads of each UNet block that has attention (the mid block too).
    attention_heads: Vec<(usize, usize)>,
    tokenizer: Tokenizer,
    pad_id: u32,
    max_tokens: usize,
    text_encoder: ClipTextEncoder,
    unet: UNet2DConditionModel,
    unet_in_channels: usize,
    vae: AutoEncoderKL,
    /// Loaded by [`StableDiffusion::load_image_encoder`] (image-to-image only).
    vae_encoder: Option<VaeEncoder>,
    vae_scale: usize,
    scaling_factor: f64,
    latent_channels: usize,
    scheduler: EulerConfig,
    device: Device,
}

fn unsupported(dir: &Path, what: impl std::fmt::Display) -> AiError {
    AiError::UnknownModel(format!("{}: {what}", dir.display()))
}

impl StableDiffusion {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, AiError> {
        let tokenizer = tokenizer::load(&dir.join("tokenizer/tokenizer.json")).map_err(|e| {
            AiError::UnknownModel(format!("{e} (see models/README.md to create it)"))
        })?;
        let tokenizer_config: serde_json::Value =
            read_json(&dir.join("tokenizer/tokenizer_config.json")).unwrap_or_default();
        let pad_token = special_token(&tokenizer_config["pad_token"]).unwrap_or("<|endoftext|>");
        let pad_id = tokenizer.token_to_id(pad_token).ok_or_else(|| {
            unsupported(dir, format!("pad token {pad_token:?} not in the tokenizer"))
        })?;

        let clip_config: ClipTextConfig = read_json(&dir.join("text_encoder/config.json"))?;
        let max_tokens = tokenizer_config["model_max_length"]
            .as_u64()
            .map(|m| m as usize)
            .unwrap_or(clip_config.max_position_embeddings)
            .min(clip_config.max_position_embeddings);
        let vb = weights(&dir.join("text_encoder"), DType::F32, device)?;
        let text_encoder = load_guarded("loading the text encoder", || {
            ClipTextEncoder::load(&clip_config, vb)
        })?;

        let u: UnetJson = read_json(&dir.join("unet/config.json"))?;
        if u.addition_embed_type.is_some() {
            return Err(unsupported(
                dir,
                "SDXL-style UNets (added embeddings) are not supported",
            ));
        }
        let blocks = u
            .block_out_channels
            .iter()
            .enumerate()
            .map(|(i, &out_channels)| {
                let cross = u
                    .down_block_types
                    .get(i)
                    .is_some_and(|t| t.starts_with("CrossAttn"));
                BlockConfig {
                    out_channels,
                    use_cross_attn: cross.then(|| {
                        u.transformer_layers_per_block
                            .as_ref()
                            .map_or(1, |t| t.get(i))
                    }),
                    attention_head_dim: u.attention_head_dim.get(i),
                }
            })
            .collect();
        let unet_config = UNet2DConditionModelConfig {
            center_input_sample: u.center_input_sample,
            flip_sin_to_cos: u.flip_sin_to_cos,
            freq_shift: u.freq_shift,
            blocks,
            layers_per_block: u.layers_per_block,
            downsample_padding: u.downsample_padding,
            mid_block_scale_factor: u.mid_block_scale_factor,
            norm_num_groups: u.norm_num_groups,
            norm_eps: u.norm_eps,
            cross_attention_dim: u.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: u.use_linear_projection,
        };
        let vb = weights(&dir.join("unet"), DType::F32, device)?;
        let unet = load_guarded("loading the UNet", || {
            UNet2DConditionModel::new(vb, u.in_channels, u.out_channels, false, unet_config)
        })?;

        let v: VaeJson = read_json(&dir.join("vae/config.json"))?;
        let vae_config = AutoEncoderKLConfig {
            block_out_channels: v.block_out_channels.clone(),
            layers_per_block: v.layers_per_block,
            latent_channels: v.latent_channels,
            norm_num_groups: v.norm_num_groups,
            use_quant_conv: v.use_quant_conv,
            use_post_quant_conv: v.use_post_quant_conv,
        };
        let vb = weights(&dir.join("vae"), DType::F32, device)?;
        let vae = load_guarded("loading the VAE", || {
            AutoEncoderKL::new(vb, 3, 3, vae_config)
        })?;

        let scheduler: EulerConfig = read_json(&dir.join("scheduler/scheduler_config.json"))?;
        scheduler.check().map_err(|e| unsupported(dir, e))?;
        // (downsampling level, heads) of every block with attention; the mid
        // block sits at the deepest level with the last block's heads.
        let mut attention_heads: Vec<(usize, usize)> = u
            .down_block_types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.starts_with("CrossAttn"))
            .map(|(i, _)| (i, u.attention_head_dim.get(i)))
            .collect();
        let levels = u.block_out_channels.len();
        attention_heads.push((levels - 1, u.attention_head_dim.get(levels - 1)));
        Ok(StableDiffusion {
            attention_heads,
            tokenizer,
            pad_id,
            max_tokens,
            text_encoder,
            unet,
            unet_in_channels: u.in_channels,
            vae,
            vae_encoder: None,
            vae_scale: 1 << (v.block_out_channels.len().saturating_sub(1)),
            scaling_factor: v.scaling_factor,
            latent_channels: v.latent_channels,
            scheduler,
            device: device.clone(),
        })
    }

    /// Output sizes must be multiples of this (the VAE's downscale × 8 would
    /// also do; diffusers asks for multiples of 8).
    pub fn size_multiple(&self) -> usize {
        self.vae_scale.max(8)
    }

    /// Bytes the largest self-attention score matrix of one UNet call takes
    /// for an image (batch of two with guidance): the part of the memory that
    /// grows with the square of the pixel count, checked before running so an
    /// oversize request is refused instead of aborting the process.
    pub fn attention_bytes(&self, height: usize, width: usize, guided: bool) -> u128 {
        let batch: u128 = if guided { 2 } else { 1 };
        let latent_tokens = ((height / self.vae_scale) * (width / self.vae_scale)) as u128;
        self.attention_heads
            .iter()
            .map(|&(level, heads)| {
                let tokens = latent_tokens >> (2 * level as u32);
                // Scores and their softmax exist at once, f32.
                batch * heads as u128 * tokens * tokens * 4 * 2
            })
            .max()
            .unwrap_or(0)
    }

    /// The latent tensor shape for an image.
    pub fn latent_shape(&self, height: usize, width: usize) -> (usize, usize, usize, usize) {
        (
            1,
            self.latent_channels,
            height / self.vae_scale,
            width / self.vae_scale,
        )
    }

    /// Token ids of `text` padded (or cut) to the encoder's length.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, AiError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| AiError::Internal(format!("tokenizing the prompt: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_tokens {
            // Keep the end-of-text token as the tokenizer's truncation would.
            let last = *ids.last().expect("non-empty");
            ids.truncate(self.max_tokens);
            ids[self.max_tokens - 1] = last;
        }
        ids.resize(self.max_tokens, self.pad_id);
        Ok(ids)
    }

    /// The text encoder's hidden states for a prompt, `[1, tokens, dim]`.
    pub fn embed(&self, text: &str) -> Result<Tensor, AiError> {
        let ids = self.prompt_ids(text)?;
        self.text_encoder
            .forward(&ids, &self.device)
            .map_err(|e| model_error("text encoder", e))
    }

    /// Denoises `initial` (unit-variance noise of [`Self::latent_shape`]) and
    /// returns the final latents and the image `[3, height, width]` in [0, 1].
    pub fn generate(
        &self,
        request: &Request,
        initial: &Tensor,
    ) -> Result<(Tensor, Tensor), AiError> {
        let (context, guided) = self.context(request)?;
        let schedule = self.scheduler.schedule(request.steps);
        let run = || -> candle_core::Result<(Tensor, Tensor)> {
            let latents = (initial * schedule.init_noise_sigma)?;
            let latents = self.denoise(latents, &schedule, 0, &context, guided, request)?;
            let image = self.decode(&latents)?;
            Ok((latents, image))
        };
        run().map_err(|e| model_error("diffusion", e))
    }

    /// Loads the VAE's encoder, which image-to-image needs and text-to-image
    /// does not.
    pub fn load_image_encoder(&mut self, dir: &Path) -> Result<(), AiError> {
        let v: VaeJson = read_json(&dir.join("vae/config.json"))?;
        let vb = weights(&dir.join("vae"), DType::F32, &self.device)?;
        self.vae_encoder = Some(load_guarded("loading the VAE encoder", || {
            VaeEncoder::new(
                vb,
                &v.block_out_channels,
                v.layers_per_block,
                v.norm_num_groups,
                v.latent_channels,
                v.use_quant_conv,
            )
        })?);
        Ok(())
    }

    /// The VAE's posterior for `image` (`[1, 3, h, w]` in [-1, 1]).
    pub fn encode_image(&self, image: &Tensor) -> Result<Posterior, AiError> {
        let encoder = self
            .vae_encoder
            .as_ref()
            .ok_or_else(|| AiError::Internal("the VAE encoder is not loaded".into()))?;
        let (mean, std) = encoder
            .encode(image)
            .map_err(|e| model_error("VAE encoder", e))?;
        Ok(Posterior {
            mean,
            std,
            scaling_factor: self.scaling_factor,
        })
    }

    /// Image-to-image from `init_latents` (see [`Posterior::sample`]):
    /// `noise` (unit variance) is added at the first timestep that `strength`
    /// keeps (diffusers' `get_timesteps` and Euler `add_noise`), the kept
    /// steps denoise it. Returns the noised latents, the final latents and
    /// the image `[3, height, width]` in [0, 1]. With no step kept (diffusers
    /// then fails), a `BadRequest`.
    pub fn img2img(
        &self,
        request: &Request,
        init_latents: &Tensor,
        noise: &Tensor,
        strength: f64,
    ) -> Result<Img2Img, AiError> {
        let prompt = self.prompt_context(request)?;
        self.img2img_with(&prompt, request, init_latents, noise, strength)
    }

    /// [`Self::img2img`] with the prompt's embeddings computed beforehand
    /// (live video runs the same prompt on every frame).
    pub fn img2img_with(
        &self,
        prompt: &PromptContext,
        request: &Request,
        init_latents: &Tensor,
        noise: &Tensor,
        strength: f64,
    ) -> Result<Img2Img, AiError> {
        let start = img2img_start(request.steps, strength);
        if start >= request.steps {
            return Err(AiError::BadRequest(format!(
                "strength {strength} with {} inference steps keeps no denoising step \
                 (int(steps * strength) must be at least 1)",
                request.steps
            )));
        }
        let (context, guided) = (&prompt.context, prompt.guided);
        let schedule = self.scheduler.schedule(request.steps);
        let run = || -> candle_core::Result<Img2Img> {
            let noised = (init_latents + (noise * schedule.sigmas[start])?)?;
            let latents =
                self.denoise(noised.clone(), &schedule, start, context, guided, request)?;
            let image = self.decode(&latents)?;
            Ok(Img2Img {
                noised_latents: noised,
                final_latents: latents,
                image,
            })
        };
        run().map_err(|e| model_error("diffusion", e))
    }

    /// `request`'s prompt embeddings, to reuse across calls.
    pub fn prompt_context(&self, request: &Request) -> Result<PromptContext, AiError> {
        let (context, guided) = self.context(request)?;
        Ok(PromptContext { context, guided })
    }

    /// The prompt embeddings the UNet attends to (the negative prompt's
    /// first with guidance), and whether guidance runs.
    fn context(&self, request: &Request) -> Result<(Tensor, bool), AiError> {
        let guided = request.guidance_scale > 1.0;
        let cond = self.embed(&request.prompt)?;
        let context = if guided {
            let uncond = self.embed(&request.negative_prompt)?;
            Tensor::cat(&[&uncond, &cond], 0).map_err(|e| model_error("prompt embeddings", e))?
        } else {
            cond
        };
        Ok((context, guided))
    }

    /// The Euler loop over the schedule's steps from `start`.
    fn denoise(
        &self,
        mut latents: Tensor,
        schedule: &EulerSchedule,
        start: usize,
        context: &Tensor,
        guided: bool,
        request: &Request,
    ) -> candle_core::Result<Tensor> {
        for (i, &t) in schedule.timesteps.iter().enumerate().skip(start) {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = (input * schedule.input_scale(i))?;
            let noise = self.unet.forward(&input, t, context)?;
            let noise = if guided {
                let parts = noise.chunk(2, 0)?;
                (&parts[0] + ((&parts[1] - &parts[0])? * request.guidance_scale)?)?
            } else {
                noise
            };
            let (a, b) = schedule.step_coefficients(i);
            latents = ((latents * a)? + (noise * b)?)?;
        }
        Ok(latents)
    }

    /// Latents to the image `[3, height, width]` in [0, 1].
    fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let image = self.vae.decode(&(latents / self.scaling_factor)?)?;
        ((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.squeeze(0)
    }

    pub fn unet_in_channels(&self) -> usize {
        self.unet_in_channels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
