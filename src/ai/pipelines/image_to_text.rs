//! `POST /image-to-text`: image captioning with BLIP on Candle, as ai-runner
//! runs it (BlipForConditionalGeneration with BlipProcessor, greedy
//! `generate` with transformers' default length, `decode` without special
//! tokens), answered as ImageToTextResponse (`{"text": ...}`). A `prompt`
//! makes it conditional captioning: the caption continues the prompt, and
//! the answer starts with it, as ai-runner's does. Billing unit: input
//! pixels, as the orchestrator shim estimates image-to-text up front.

use std::path::Path;

use tracing::debug;

use super::image::DEFAULT_MAX_INPUT_PIXELS;
use super::{Pipeline, PipelineKind};
use crate::ai::blip::Blip;
use crate::ai::candle as rt;
use crate::ai::{media, AiError, PipelineOutput, PipelineRequest};

pub struct ImageToTextPipeline {
    model_id: String,
    model: Blip,
    max_input_pixels: u64,
}

impl ImageToTextPipeline {
    /// Loads a BLIP captioning folder (see [`Blip::load`]).
    pub fn load(model_id: &str, dir: &Path) -> Result<Self, AiError> {
        Ok(ImageToTextPipeline {
            model_id: model_id.to_string(),
            model: Blip::load(dir, &rt::device())?,
            max_input_pixels: DEFAULT_MAX_INPUT_PIXELS,
        })
    }

    pub fn model(&self) -> &Blip {
        &self.model
    }
}

impl Pipeline for ImageToTextPipeline {
    fn kind(&self) -> PipelineKind {
        PipelineKind::ImageToText
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "candle"
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        let prompt = request.string("prompt")?.unwrap_or_default();
        // The prompt is checked before the image costs anything.
        let ids = self.model.prompt_ids(&prompt)?;
        let image = media::decode_rgb(request.required_file("image")?, self.max_input_pixels)?;
        let pixel_values = self.model.pixel_values(&image)?;
        let embeds = self.model.image_embeds(&pixel_values)?;
        let prompt_len = ids.len();
        let ids = self.model.generate(ids, &embeds)?;
        let text = self.model.decode(&ids)?;
        debug!(model = %self.model_id, prompt_tokens = prompt_len - 1, new_tokens = ids.len() - prompt_len, "image captioned");
        let (w, h) = image.dimensions();
        Ok(PipelineOutput {
            body: serde_json::json!({ "text": text }),
            files: Vec::new(),
            units: u64::from(w) * u64::from(h),
            unit_kind: "pixels",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use candle_core::Tensor;

    use super::*;
    use crate::ai::golden_diff::max_diff;

    fn dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-blip")
    }

    fn pipeline() -> &'static ImageToTextPipeline {
        static PIPELINE: OnceLock<ImageToTextPipeline> = OnceLock::new();
        PIPELINE.get_or_init(|| {
            ImageToTextPipeline::load("lpworker/tiny-blip", &dir()).expect("tiny BLIP loads")
        })
    }

    fn golden() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(dir().join("golden.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    }

    fn golden_json() -> serde_json::Value {
        rt::read_json(&dir().join("golden.json")).unwrap()
    }

    fn test_png() -> Vec<u8> {
        std::fs::read(dir().join("test.png")).unwrap()
    }

    fn magnitude(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    fn request(image: Vec<u8>, prompt: &str) -> PipelineRequest {
        let mut r = PipelineRequest::default();
        r.params.insert("prompt".into(), prompt.into());
        r.params
            .insert("model_id".into(), "lpworker/tiny-blip".into());
        r.files.insert("image".into(), image);
        r
    }

    /// golden.safetensors and golden.json hold what transformers computed
    /// from the same weights and image (models/lpworker/tiny-blip/make_model.py).
    #[test]
    fn tiny_blip_matches_transformers() {
        let blip = pipeline().model();
        let golden = golden();
        let image = media::decode_rgb(&test_png(), u64::MAX).unwrap();

        // Pillow's fixed-point bicubic, reproduced: the same bytes, so only
        // float rounding of the normalisation remains.
        let pixel_values = blip.pixel_values(&image).unwrap();
        let d = max_diff(&pixel_values.squeeze(0).unwrap(), &golden["pixel_values"]);
        eprintln!("pixel values: max abs difference {d}");
        assert!(d < 1e-5, "pixel values differ by {d}");

        // Same arithmetic in another order: float32 rounding, relative to
        // the values' size (measured 1.4e-6).
        let embeds = blip.image_embeds(&pixel_values).unwrap();
        let reference = &golden["image_embeds"];
        let d = max_diff(&embeds.squeeze(0).unwrap(), reference);
        eprintln!(
            "image embeds: max abs difference {d} (largest value {})",
            magnitude(reference)
        );
        assert!(
            d < 1e-4 * magnitude(reference),
            "image embeds differ by {d}"
        );

        let cases = golden_json()["cases"].clone();
        for name in ["unconditional", "prompted"] {
            let case = &cases[name];
            let ids = blip.prompt_ids(case["prompt"].as_str().unwrap()).unwrap();
            let logits = blip.logits(&ids, &embeds).unwrap();
            let reference = &golden[&format!("{name}.first_logits")];
            let d = max_diff(&logits, reference);
            eprintln!(
                "{name}: first logits max abs difference {d} (largest {})",
                magnitude(reference)
            );
            // Measured 3.3e-6 (unconditional) and 4.5e-5 (prompted: ten
            // tokens of causal attention) of the largest logit; the large
            // random weights amplify float32 rounding (erf, softmax, sums).
            assert!(
                d < 5e-4 * magnitude(reference),
                "{name}: first logits differ by {d} (largest {})",
                magnitude(reference)
            );
            // Greedy tokens exactly: the reference's smallest margin between
            // the best and second-best logit is far above these differences.
            assert!(case["min_margin"].as_f64().unwrap() > 10.0 * f64::from(d));
            let expected: Vec<u32> = golden[&format!("{name}.ids")]
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(expected[..ids.len()], ids[..], "{name}: prompt tokens");
            let generated = blip.generate(ids, &embeds).unwrap();
            assert_eq!(generated, expected, "{name}: generated tokens");
            assert_eq!(
                blip.decode(&generated).unwrap(),
                case["text"].as_str().unwrap(),
                "{name}: text"
            );
        }
    }

    #[test]
    fn captions_through_run_and_bills_input_pixels() {
        let cases = golden_json()["cases"].clone();
        for name in ["unconditional", "prompted"] {
            let case = &cases[name];
            let out = pipeline()
                .run(&request(test_png(), case["prompt"].as_str().unwrap()))
                .unwrap();
            assert_eq!(out.body, serde_json::json!({"text": case["text"]}));
            assert!(out.files.is_empty());
            assert_eq!((out.units, out.unit_kind), (50 * 37, "pixels"));
        }
        // No prompt at all is the unconditional caption.
        let mut no_prompt = request(test_png(), "");
        no_prompt.params.remove("prompt");
        let out = pipeline().run(&no_prompt).unwrap();
        assert_eq!(out.body["text"], cases["unconditional"]["text"]);
        assert_eq!(pipeline().kind(), PipelineKind::ImageToText);
        assert_eq!(pipeline().model_id(), "lpworker/tiny-blip");
        assert_eq!(pipeline().runtime(), "candle");
    }

    #[test]
    fn bad_input_is_a_clear_error_never_a_panic() {
        let run = |r: &PipelineRequest| pipeline().run(r).unwrap_err();
        let e = run(&request(b"not an image".to_vec(), ""));
        assert!(matches!(e, AiError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("not a PNG, JPEG or WebP"), "{e}");
        let e = run(&request(Vec::new(), ""));
        assert!(matches!(e, AiError::BadRequest(_)), "{e}");
        // A PNG whose header says 0x0.
        let mut zero = media::encode_png(&image::RgbImage::new(1, 1)).unwrap();
        zero[16..24].copy_from_slice(&[0; 8]);
        let e = run(&request(zero, ""));
        assert!(
            matches!(e, AiError::BadRequest(_) | AiError::TooLarge(_)),
            "{e}"
        );
        // A truncated PNG: the header reads, the pixels do not.
        let whole = test_png();
        let e = run(&request(whole[..whole.len() / 2].to_vec(), ""));
        assert!(matches!(e, AiError::BadRequest(_)), "{e}");
        let e = run(&request(b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec(), ""));
        assert!(matches!(e, AiError::UnsupportedMedia(_)), "{e}");
        let mut no_image = request(Vec::new(), "");
        no_image.files.clear();
        let e = run(&no_image);
        assert!(
            matches!(&e, AiError::Validation { field, .. } if field == "image"),
            "{e}"
        );
        let mut bad_prompt = request(test_png(), "");
        bad_prompt
            .params
            .insert("prompt".into(), serde_json::json!(7));
        let e = run(&bad_prompt);
        assert!(
            matches!(&e, AiError::Validation { field, .. } if field == "prompt"),
            "{e}"
        );
        // A prompt longer than the model's positions leave room for.
        let e = run(&request(test_png(), &"a ".repeat(80)));
        assert!(matches!(e, AiError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("prompt is 80 tokens"), "{e}");

        let mut small = ImageToTextPipeline::load("lpworker/tiny-blip", &dir()).unwrap();
        small.max_input_pixels = 100 * 100;
        let big = media::encode_png(&image::RgbImage::new(101, 100)).unwrap();
        let e = small.run(&request(big, "")).unwrap_err();
        assert!(matches!(e, AiError::TooLarge(_)), "{e}");
    }

    #[test]
    fn the_registry_serves_only_blip_folders_as_image_to_text() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let load = |spec: &str| {
            crate::ai::Registry::load(&crate::ai::config::load(spec).unwrap(), &models, 1)
        };
        let registry = load("image-to-text:lpworker/tiny-blip:true").unwrap();
        let entry = registry
            .find(PipelineKind::ImageToText, "lpworker/tiny-blip")
            .unwrap();
        assert_eq!(entry.pipeline.runtime(), "candle");
        for other in ["lpworker/tiny-llama", "lpworker/nearest-2x"] {
            let e = load(&format!("image-to-text:{other}:true")).unwrap_err();
            assert!(matches!(e, AiError::UnknownModel(_)), "{e}");
            assert!(e.to_string().contains("BLIP"), "{e}");
        }
        assert!(crate::ai::blip::is_blip_config(
            &serde_json::json!({"model_type": "blip"})
        ));
        assert!(crate::ai::blip::is_blip_config(
            &serde_json::json!({"vision_config": {}, "text_config": {}})
        ));
        assert!(!crate::ai::blip::is_blip_config(
            &serde_json::json!({"model_type": "blip-2", "vision_config": {}, "text_config": {}})
        ));
        assert!(!crate::ai::blip::is_blip_config(
            &serde_json::json!({"model_type": "llama"})
        ));
    }

    #[test]
    fn any_image_size_captions() {
        for (w, h) in [(1, 1), (1, 300), (300, 2), (48, 48), (97, 61)] {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 7) as u8])
            });
            let out = pipeline()
                .run(&request(media::encode_png(&img).unwrap(), "a picture of"))
                .unwrap();
            let text = out.body["text"].as_str().unwrap();
            assert!(text.starts_with("a pict"), "{w}x{h}: {text}");
            assert_eq!(out.units, u64::from(w * h));
        }
    }
}
