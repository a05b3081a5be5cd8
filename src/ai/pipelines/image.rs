//! `POST /upscale` and lpworker's own `POST /image-transform` with ONNX image
//! models (upscalers, style transfer, restoration): an image in, an image
//! out, as ai-runner's ImageResponse. ai-runner's `image-to-image` is
//! prompt-guided diffusion (see `image_to_image`); image-transform keeps its
//! form (a prompt required and unused) and reply.

use std::path::Path;
use std::sync::Arc;

use rand::Rng;

use super::{Pipeline, PipelineKind};
use crate::ai::{media, onnx::OnnxModel, AiError, PipelineOutput, PipelineRequest};

/// Largest input accepted by default: 2048×2048.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 2048 * 2048;
/// ai-runner's image-to-image cap on images per request, which
/// image-transform keeps.
const MAX_IMAGES_PER_PROMPT: i64 = 8;

/// An image model: NCHW float [0, 1] RGB in and out. The model is shared so
/// that a caller (the ONNX benchmark) can run the same session directly.
pub struct ImagePipeline {
    kind: PipelineKind,
    model_id: String,
    model: Arc<OnnxModel>,
    max_input_pixels: u64,
}

/// `config.json` beside an ONNX image model: tensor names (optional).
#[derive(Debug, Default, serde::Deserialize)]
struct OnnxImageConfig {
    input: Option<String>,
    output: Option<String>,
}

impl ImagePipeline {
    pub fn new(
        kind: PipelineKind,
        model_id: &str,
        model: Arc<OnnxModel>,
        max_input_pixels: u64,
    ) -> Self {
        assert!(matches!(
            kind,
            PipelineKind::Upscale | PipelineKind::ImageTransform
        ));
        ImagePipeline {
            kind,
            model_id: model_id.to_string(),
            model,
            max_input_pixels,
        }
    }

    /// Loads `<dir>/model.onnx` (tensor names from `<dir>/config.json` if present).
    pub fn load_onnx(
        kind: PipelineKind,
        model_id: &str,
        dir: &Path,
        threads: usize,
    ) -> Result<Self, AiError> {
        let config: OnnxImageConfig = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                AiError::Internal(format!("{}: {e}", dir.join("config.json").display()))
            })?,
            Err(_) => OnnxImageConfig::default(),
        };
        let model = OnnxModel::load(
            &dir.join("model.onnx"),
            config.input.as_deref(),
            config.output.as_deref(),
            threads,
        )?;
        Ok(ImagePipeline::new(
            kind,
            model_id,
            Arc::new(model),
            DEFAULT_MAX_INPUT_PIXELS,
        ))
    }
}

impl Pipeline for ImagePipeline {
    fn kind(&self) -> PipelineKind {
        self.kind
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "onnx"
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        // ai-runner requires a prompt on upscale (its diffusion upscaler uses
        // it), and image-transform keeps image-to-image's form; ONNX models
        // ignore it.
        request.required_string("prompt")?;
        let image = request.required_file("image")?;
        // Validated for ai-runner compatibility; no safety checker runs in
        // process, so `nsfw` is always false.
        request.boolean("safety_check")?;
        let seed = request
            .integer("seed")?
            .unwrap_or_else(|| i64::from(rand::thread_rng().gen::<u32>()));
        if request
            .integer("num_inference_steps")?
            .is_some_and(|s| s < 1)
        {
            return Err(AiError::invalid(
                "num_inference_steps",
                "Input should be greater than 0",
            ));
        }
        let count = match self.kind {
            PipelineKind::ImageTransform => request.integer("num_images_per_prompt")?.unwrap_or(1),
            _ => 1,
        };
        if !(1..=MAX_IMAGES_PER_PROMPT).contains(&count) {
            return Err(AiError::invalid(
                "num_images_per_prompt",
                format!("must be between 1 and {MAX_IMAGES_PER_PROMPT}"),
            ));
        }
        let input = media::decode_rgb(image, self.max_input_pixels)?;
        let output =
            media::from_tensor(self.model.infer(media::to_tensor(&input).view())?.view()?)?;
        let png = media::encode_png(&output)?;
        let mut response = super::ImageResponse::default();
        for i in 0..count {
            response.push_png(png.clone(), output.dimensions(), seed + i);
        }
        Ok(response.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nearest_2x() -> ImagePipeline {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/nearest-2x");
        ImagePipeline::load_onnx(PipelineKind::Upscale, "lpworker/nearest-2x", &dir, 1)
            .expect("ONNX model loads")
    }

    fn request(image: Vec<u8>) -> PipelineRequest {
        let mut r = PipelineRequest::default();
        r.params.insert("prompt".into(), "sharper".into());
        r.params.insert("seed".into(), "42".into());
        r.files.insert("image".into(), image);
        r
    }

    #[test]
    fn onnx_upscaler_equals_nearest_neighbour() {
        let pipeline = nearest_2x();
        assert_eq!(pipeline.runtime(), "onnx");
        let input = image::RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 50) as u8, ((x + y) * 9) as u8])
        });
        let out = pipeline
            .run(&request(media::encode_png(&input).unwrap()))
            .unwrap();
        assert_eq!(out.units, 14 * 10);
        assert_eq!(out.body["images"][0]["seed"], 42);
        assert_eq!(out.body["images"][0]["nsfw"], false);
        assert_eq!(out.body["images"][0]["url"], out.files[0].name);
        let upscaled = media::decode_rgb(&out.files[0].data, 1000).unwrap();
        let expected =
            image::imageops::resize(&input, 14, 10, image::imageops::FilterType::Nearest);
        assert_eq!(upscaled, expected);
    }

    #[test]
    fn request_validation() {
        let pipeline = nearest_2x();
        let png = media::encode_png(&image::RgbImage::new(4, 4)).unwrap();
        let mut no_prompt = request(png.clone());
        no_prompt.params.remove("prompt");
        let mut no_image = request(png.clone());
        no_image.files.clear();
        let mut bad_seed = request(png.clone());
        bad_seed.params.insert("seed".into(), "many".into());
        for invalid in [no_prompt, no_image, bad_seed] {
            let e = pipeline.run(&invalid).unwrap_err();
            assert!(matches!(e, AiError::Validation { .. }), "{e:?}");
        }
        let e = pipeline.run(&request(b"garbage".to_vec())).unwrap_err();
        assert!(matches!(e, AiError::BadRequest(_)), "{e:?}");
    }
}

#[cfg(test)]
mod registry_tests {
    use crate::ai::config::AiModelConfig;
    use crate::ai::registry::Registry;
    use crate::ai::PipelineKind;
    use std::path::Path;

    fn config(pipeline: &str, model_id: &str) -> AiModelConfig {
        serde_json::from_value(serde_json::json!({"pipeline": pipeline, "model_id": model_id}))
            .unwrap()
    }

    /// ONNX image models are served as image-transform; image-to-image is
    /// Stable Diffusion, and an ONNX model there is refused with the name to
    /// use instead.
    #[test]
    fn onnx_image_models_are_image_transform() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let registry = Registry::load(
            &[
                config("image-transform", "lpworker/nearest-2x"),
                config("image-to-image", "lpworker/tiny-sd"),
            ],
            &models,
            1,
        )
        .unwrap();
        let transform = registry
            .find(PipelineKind::ImageTransform, "lpworker/nearest-2x")
            .unwrap();
        assert_eq!(transform.pipeline.runtime(), "onnx");
        let sd = registry.find(PipelineKind::ImageToImage, "").unwrap();
        assert_eq!(sd.pipeline.model_id(), "lpworker/tiny-sd");
        assert_eq!(sd.pipeline.runtime(), "candle");
        let e = Registry::load(
            &[config("image-to-image", "lpworker/nearest-2x")],
            &models,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("image-transform"), "{e}");
        // image-transform is not Stable Diffusion.
        assert!(
            Registry::load(&[config("image-transform", "lpworker/tiny-sd")], &models, 1).is_err()
        );
    }
}
