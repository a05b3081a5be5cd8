//! `POST /upscale` and `POST /image-to-image` with ONNX image models: an image
//! in, an image out, as ai-runner's ImageResponse.

use std::path::Path;

use rand::Rng;

use super::{Pipeline, PipelineKind};
use crate::ai::{
    media, onnx::OnnxModel, AiError, Infer, OutputFile, PipelineOutput, PipelineRequest,
};

/// Largest input accepted by default: 2048×2048.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 2048 * 2048;
/// ai-runner caps images per request for image-to-image.
const MAX_IMAGES_PER_PROMPT: i64 = 8;

/// An image model: NCHW float [0, 1] RGB in and out.
pub struct ImagePipeline {
    kind: PipelineKind,
    model_id: String,
    model: Box<dyn Infer>,
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
        model: Box<dyn Infer>,
        max_input_pixels: u64,
    ) -> Self {
        assert!(matches!(
            kind,
            PipelineKind::Upscale | PipelineKind::ImageToImage
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
            Box::new(model),
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
        self.model.runtime()
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        // ai-runner requires a prompt on both routes (its diffusion models use
        // it); image-to-image ONNX models ignore it.
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
            PipelineKind::ImageToImage => request.integer("num_images_per_prompt")?.unwrap_or(1),
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
        let (w, h) = output.dimensions();
        let png = media::encode_png(&output)?;
        let mut images = Vec::new();
        let mut files = Vec::new();
        for i in 0..count {
            let name = format!("image_{i}.png");
            images.push(serde_json::json!({"url": name, "seed": seed + i, "nsfw": false}));
            files.push(OutputFile {
                name,
                mime: "image/png",
                data: png.clone(),
            });
        }
        Ok(PipelineOutput {
            body: serde_json::json!({ "images": images }),
            files,
            units: u64::from(w) * u64::from(h) * count as u64,
            unit_kind: "pixels",
        })
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
        assert_eq!(pipeline.run(&no_prompt).unwrap_err().http_status(), 422);
        let mut no_image = request(png.clone());
        no_image.files.clear();
        assert_eq!(pipeline.run(&no_image).unwrap_err().http_status(), 422);
        let mut bad_seed = request(png.clone());
        bad_seed.params.insert("seed".into(), "many".into());
        assert_eq!(pipeline.run(&bad_seed).unwrap_err().http_status(), 422);
        assert_eq!(
            pipeline
                .run(&request(b"garbage".to_vec()))
                .unwrap_err()
                .http_status(),
            400
        );
    }
}
