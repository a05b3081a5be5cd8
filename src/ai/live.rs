//! Models for live video-to-video: one picture in, one picture out, many
//! times a second, with parameters a viewer changes while the stream runs
//! (ai-runner's `live-video-to-video` pipelines). Listed in aiModels as
//! go-livepeer lists them: `{"pipeline": "live-video-to-video",
//! "model_id": "noop"}`.
//!
//! - `noop` passes frames through: what it costs is the pipeline's own.
//! - A folder with `model.onnx` is a per-frame image model (NCHW float RGB
//!   in [0, 1] in and out; style transfer, segmentation masks, restoration).
//! - A folder in diffusers layout is StreamDiffusion-style img2img: the
//!   camera frame is encoded by the VAE, noised to one late timestep and
//!   denoised in one step (or the few `num_inference_steps × strength`
//!   keeps) with the prompt's embeddings computed once, and the same noise
//!   on every frame so that the picture holds still where the camera does.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use image::RgbImage;

use super::candle::{self as rt, model_error};
use super::diffusion::{img2img_start, PromptContext, Request, StableDiffusion};
use super::onnx::OnnxModel;
use super::pipelines::image_to_image::preprocess;
use super::pipelines::text_to_image::{initial_latents, to_rgb};
use super::{media, AiError};

/// The pipeline name in aiModels and in Live Runner app names.
pub const PIPELINE: &str = "live-video-to-video";

/// A model applied to every frame of live streams. Each stream has its own
/// parameters: [`FrameModel::stream`] makes its handle.
pub trait FrameModel: Send + Sync {
    fn model_id(&self) -> &str;

    /// "noop", "onnx" or "candle".
    fn runtime(&self) -> &'static str;

    /// A new stream with `params` (see [`FrameStream::update`]).
    fn stream(
        self: Arc<Self>,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<dyn FrameStream>, AiError>;
}

/// One stream on a model.
pub trait FrameStream: Send + Sync {
    /// Frames pass through untouched (the video engine then skips the
    /// picture conversions).
    fn is_identity(&self) -> bool {
        false
    }

    /// Parameters from the stream's start request or its control channel:
    /// a JSON object, applied from the next frame on. Unknown keys are
    /// ignored (gateways send their own); a known key of the wrong type or
    /// range is refused and nothing changes.
    fn update(&self, params: &serde_json::Map<String, serde_json::Value>) -> Result<(), AiError>;

    fn apply(&self, frame: RgbImage) -> Result<RgbImage, AiError>;
}

/// Loads the live model `model_id` from `models_dir` (`noop` needs none).
pub fn load(
    model_id: &str,
    models_dir: &Path,
    threads: usize,
) -> Result<Arc<dyn FrameModel>, AiError> {
    // The ID becomes part of the app's URL path: plain characters only.
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/');
    if model_id.is_empty() || !model_id.bytes().all(plain) {
        return Err(AiError::UnknownModel(format!(
            "live-video-to-video model {model_id:?}: an ID of letters, digits, '-', '_', '.' and '/' is expected"
        )));
    }
    if model_id == "noop" {
        return Ok(Arc::new(Noop));
    }
    let dir = super::registry::model_dir(models_dir, model_id).ok_or_else(|| {
        AiError::UnknownModel(format!(
            "live-video-to-video model {model_id:?} is not in {}",
            models_dir.display()
        ))
    })?;
    if dir.join("model.onnx").is_file() {
        return Ok(Arc::new(OnnxFrames::load(model_id, &dir, threads)?));
    }
    if dir.join("model_index.json").is_file() {
        return Ok(Arc::new(Img2ImgFrames::load(model_id, &dir)?));
    }
    Err(AiError::UnknownModel(format!(
        "{}: neither model.onnx nor a diffusers model_index.json",
        dir.display()
    )))
}

/// Frames passed through.
pub struct Noop;

impl FrameModel for Noop {
    fn model_id(&self) -> &str {
        "noop"
    }

    fn runtime(&self) -> &'static str {
        "noop"
    }

    fn stream(
        self: Arc<Self>,
        _: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<dyn FrameStream>, AiError> {
        Ok(self)
    }
}

impl FrameStream for Noop {
    fn is_identity(&self) -> bool {
        true
    }

    fn update(&self, _: &serde_json::Map<String, serde_json::Value>) -> Result<(), AiError> {
        Ok(())
    }

    fn apply(&self, frame: RgbImage) -> Result<RgbImage, AiError> {
        Ok(frame)
    }
}

/// An ONNX image model on every frame; it takes no parameters.
pub struct OnnxFrames {
    model_id: String,
    model: OnnxModel,
}

/// `config.json` beside the model: tensor names (optional).
#[derive(Debug, Default, serde::Deserialize)]
struct OnnxConfig {
    input: Option<String>,
    output: Option<String>,
}

impl OnnxFrames {
    pub fn load(model_id: &str, dir: &Path, threads: usize) -> Result<Self, AiError> {
        let config: OnnxConfig = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                AiError::Internal(format!("{}: {e}", dir.join("config.json").display()))
            })?,
            Err(_) => OnnxConfig::default(),
        };
        let model = OnnxModel::load(
            &dir.join("model.onnx"),
            config.input.as_deref(),
            config.output.as_deref(),
            threads,
        )?;
        Ok(OnnxFrames {
            model_id: model_id.to_string(),
            model,
        })
    }
}

impl FrameModel for OnnxFrames {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "onnx"
    }

    fn stream(
        self: Arc<Self>,
        _: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<dyn FrameStream>, AiError> {
        Ok(self)
    }
}

impl FrameStream for OnnxFrames {
    fn update(&self, _: &serde_json::Map<String, serde_json::Value>) -> Result<(), AiError> {
        Ok(())
    }

    fn apply(&self, frame: RgbImage) -> Result<RgbImage, AiError> {
        media::from_tensor(self.model.infer(media::to_tensor(&frame).view())?.view()?)
    }
}

/// StreamDiffusion's defaults: a 512×512 picture, one denoising step of two
/// (strength 0.5: the frame noised halfway), a fixed seed.
const DEFAULT_SIDE: usize = 512;
const DEFAULT_STEPS: usize = 2;
const DEFAULT_STRENGTH: f64 = 0.5;
const DEFAULT_SEED: u64 = 42;
/// Live frames get at most this many denoising steps: more cannot keep
/// real time on any GPU we know of.
const MAX_LIVE_DENOISING_STEPS: usize = 4;
/// Largest picture side the model is run at.
const MAX_SIDE: usize = 1024;

/// The parameters a stream runs with.
#[derive(Debug, Clone, PartialEq)]
struct DiffusionParams {
    prompt: String,
    negative_prompt: String,
    steps: usize,
    strength: f64,
    seed: u64,
    width: usize,
    height: usize,
}

impl Default for DiffusionParams {
    fn default() -> Self {
        DiffusionParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: DEFAULT_STEPS,
            strength: DEFAULT_STRENGTH,
            seed: DEFAULT_SEED,
            width: DEFAULT_SIDE,
            height: DEFAULT_SIDE,
        }
    }
}

impl DiffusionParams {
    /// `self` with `update` applied, or why it is refused.
    fn with(
        &self,
        update: &serde_json::Map<String, serde_json::Value>,
        multiple: usize,
    ) -> Result<Self, AiError> {
        let mut p = self.clone();
        let text = |k: &str| -> Result<Option<String>, AiError> {
            match update.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(AiError::invalid(k, "must be a string")),
            }
        };
        let int = |k: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>, AiError> {
            match update.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if range.contains(&n) => Ok(Some(n)),
                    _ => Err(AiError::invalid(
                        k,
                        format!(
                            "must be an integer from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )),
                },
            }
        };
        if let Some(prompt) = text("prompt")? {
            p.prompt = prompt;
        }
        if let Some(negative) = text("negative_prompt")? {
            p.negative_prompt = negative;
        }
        if let Some(steps) = int("num_inference_steps", 1..=50)? {
            p.steps = steps as usize;
        }
        if let Some(seed) = int("seed", 0..=u64::from(u32::MAX))? {
            p.seed = seed;
        }
        let side = (multiple as u64)..=(MAX_SIDE as u64);
        if let Some(w) = int("width", side.clone())? {
            p.width = w as usize;
        }
        if let Some(h) = int("height", side)? {
            p.height = h as usize;
        }
        match update.get("strength") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(s) if s > 0.0 && s <= 1.0 => p.strength = s,
                _ => return Err(AiError::invalid("strength", "must be a number in (0, 1]")),
            },
        }
        p.width -= p.width % multiple;
        p.height -= p.height % multiple;
        let start = img2img_start(p.steps, p.strength);
        if start >= p.steps {
            return Err(AiError::BadRequest(format!(
                "strength {} with {} steps keeps no denoising step",
                p.strength, p.steps
            )));
        }
        if p.steps - start > MAX_LIVE_DENOISING_STEPS {
            return Err(AiError::BadRequest(format!(
                "strength {} with {} steps denoises {} times; live video allows at most {MAX_LIVE_DENOISING_STEPS}",
                p.strength,
                p.steps,
                p.steps - start
            )));
        }
        Ok(p)
    }
}

/// What a stream's parameters cost to prepare, kept until they change.
struct Prepared {
    params: DiffusionParams,
    prompt: Arc<PromptContext>,
    /// The posterior's and the added noise's draws, fixed per seed and size.
    draws: Tensor,
}

/// StreamDiffusion-style img2img on every frame.
pub struct Img2ImgFrames {
    model_id: String,
    model: StableDiffusion,
}

/// One stream's parameters on an [`Img2ImgFrames`] model.
struct DiffusionStream {
    frames: Arc<Img2ImgFrames>,
    current: Mutex<Arc<Prepared>>,
}

impl Img2ImgFrames {
    pub fn load(model_id: &str, dir: &Path) -> Result<Self, AiError> {
        let mut model = StableDiffusion::load(dir, &rt::device())?;
        if model.unet_in_channels() != 4 {
            return Err(AiError::UnknownModel(format!(
                "{model_id}: a UNet with {} input channels is not an image-to-image model",
                model.unet_in_channels()
            )));
        }
        model.load_image_encoder(dir)?;
        Ok(Img2ImgFrames {
            model_id: model_id.to_string(),
            model,
        })
    }

    fn request(params: &DiffusionParams) -> Request {
        Request {
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            steps: params.steps,
            // SD-Turbo, as StreamDiffusion runs it: no guidance.
            guidance_scale: 0.0,
            height: params.height,
            width: params.width,
        }
    }

    fn prepare(&self, params: DiffusionParams) -> Result<Prepared, AiError> {
        let model = &self.model;
        let prompt = model.prompt_context(&Self::request(&params))?;
        let (_, channels, lh, lw) = model.latent_shape(params.height, params.width);
        let draws = initial_latents(params.seed, (2, channels, lh, lw), model.device())
            .map_err(|e| model_error("latents", e))?;
        Ok(Prepared {
            params,
            prompt: Arc::new(prompt),
            draws,
        })
    }
}

impl FrameModel for Img2ImgFrames {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "candle"
    }

    fn stream(
        self: Arc<Self>,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<dyn FrameStream>, AiError> {
        let params = DiffusionParams::default().with(params, self.model.size_multiple())?;
        let prepared = self.prepare(params)?;
        Ok(Arc::new(DiffusionStream {
            frames: self,
            current: Mutex::new(Arc::new(prepared)),
        }))
    }
}

impl DiffusionStream {
    fn prepared(&self) -> Arc<Prepared> {
        self.current.lock().expect("live params").clone()
    }
}

impl FrameStream for DiffusionStream {
    fn update(&self, update: &serde_json::Map<String, serde_json::Value>) -> Result<(), AiError> {
        let now = self.prepared();
        let params = now.params.with(update, self.frames.model.size_multiple())?;
        if params == now.params {
            return Ok(());
        }
        // Prepared outside the lock: frames go on with the old prompt
        // meanwhile.
        let prepared = self.frames.prepare(params)?;
        *self.current.lock().expect("live params") = Arc::new(prepared);
        Ok(())
    }

    fn apply(&self, frame: RgbImage) -> Result<RgbImage, AiError> {
        let p = self.prepared();
        let model = &self.frames.model;
        let (w, h) = (p.params.width as u32, p.params.height as u32);
        let resized;
        let frame = if frame.dimensions() == (w, h) {
            &frame
        } else {
            resized = image::imageops::resize(&frame, w, h, image::imageops::FilterType::Triangle);
            &resized
        };
        let pixels = preprocess(frame, model.size_multiple() as u32, model.device())?;
        let posterior = model.encode_image(&pixels)?;
        let draw = |k: usize| {
            p.draws
                .narrow(0, k, 1)
                .map_err(|e| model_error("latents", e))
        };
        let init = posterior.sample(&draw(0)?)?;
        let out = model.img2img_with(
            &p.prompt,
            &Img2ImgFrames::request(&p.params),
            &init,
            &draw(1)?,
            p.params.strength,
        )?;
        to_rgb(&out.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
    }

    fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]))
    }

    #[test]
    fn noop_passes_frames_through() {
        let noop = load("noop", &models(), 1).unwrap();
        let noop = noop.stream(&Default::default()).unwrap();
        assert!(noop.is_identity());
        let frame = gradient(8, 6);
        assert_eq!(noop.apply(frame.clone()).unwrap(), frame);
        assert!(load("lpworker/absent", &models(), 1).is_err());
        assert!(load("../etc", &models(), 1).is_err());
        assert!(load("a?b", &models(), 1).is_err());
    }

    /// The sepia model's answer, computed here (see its make_model.py).
    pub(crate) fn sepia(p: image::Rgb<u8>) -> image::Rgb<u8> {
        const M: [[f32; 3]; 3] = [
            [0.393, 0.769, 0.189],
            [0.349, 0.686, 0.168],
            [0.272, 0.534, 0.131],
        ];
        let c = |row: [f32; 3]| {
            let v: f32 = (0..3).map(|i| row[i] * f32::from(p[i]) / 255.0).sum();
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        image::Rgb([c(M[0]), c(M[1]), c(M[2])])
    }

    #[test]
    fn an_onnx_model_runs_on_each_frame() {
        let model = load("lpworker/sepia", &models(), 1).unwrap();
        assert_eq!(model.runtime(), "onnx");
        let model = model.stream(&Default::default()).unwrap();
        let frame = gradient(37, 21);
        let out = model.apply(frame.clone()).unwrap();
        assert_eq!(out.dimensions(), frame.dimensions());
        for (a, b) in out.pixels().zip(frame.pixels()) {
            let want = sepia(*b);
            for c in 0..3 {
                assert!(a[c].abs_diff(want[c]) <= 1, "{a:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn parameters_are_checked_before_they_apply() {
        let p = DiffusionParams::default();
        let q = p
            .with(
                &object(serde_json::json!({"prompt": "a cat", "seed": 7, "width": 70, "extra": 1})),
                8,
            )
            .unwrap();
        assert_eq!(
            (q.prompt.as_str(), q.seed, q.width, q.height),
            ("a cat", 7, 64, 512)
        );
        for bad in [
            serde_json::json!({"prompt": 3}),
            serde_json::json!({"strength": 0}),
            serde_json::json!({"strength": "high"}),
            serde_json::json!({"num_inference_steps": 0}),
            serde_json::json!({"width": 100000}),
            // 50 steps at strength 1 denoises 50 times.
            serde_json::json!({"num_inference_steps": 50, "strength": 1.0}),
        ] {
            assert!(p.with(&object(bad.clone()), 8).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiny_sd_follows_the_prompt_from_the_next_frame() {
        let model = load("lpworker/tiny-sd", &models(), 1).unwrap();
        assert_eq!(model.runtime(), "candle");
        let bad = object(serde_json::json!({"strength": "x"}));
        assert!(model.clone().stream(&bad).is_err());
        let start = object(serde_json::json!({"width": 32, "height": 32, "prompt": "a red fox"}));
        let stream = model.clone().stream(&start).unwrap();
        // Another stream on the same model keeps its own parameters.
        let other = model
            .stream(&object(serde_json::json!({"width": 16, "height": 16})))
            .unwrap();
        let frame = gradient(40, 30);
        let a = stream.apply(frame.clone()).unwrap();
        assert_eq!(a.dimensions(), (32, 32));
        // Same prompt, seed and frame: the same picture (no fresh noise per
        // frame, so a still camera gives a still picture).
        assert_eq!(stream.apply(frame.clone()).unwrap(), a);
        stream
            .update(&object(serde_json::json!({"prompt": "a blue whale"})))
            .unwrap();
        let b = stream.apply(frame.clone()).unwrap();
        let differing = a.pixels().zip(b.pixels()).filter(|(x, y)| x != y).count();
        assert!(differing > 0, "a new prompt changed nothing");
        // A refused update leaves the stream as it was.
        assert!(stream
            .update(&object(serde_json::json!({"strength": 7})))
            .is_err());
        assert_eq!(stream.apply(frame.clone()).unwrap(), b);
        assert_eq!(other.apply(frame).unwrap().dimensions(), (16, 16));
    }
}
