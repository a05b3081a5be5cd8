//! `POST /ocr`: the text an image shows, read by RapidOCR's PP-OCR ONNX
//! models, answered in the shape of ai-runner's ImageToTextResponse
//! (`{"text": ...}`). Lines read in one row are joined by spaces, rows by new
//! lines. lpworker's own pipeline: ai-runner's `image-to-text` is captioning
//! (see `image_to_text.rs`).

use std::path::Path;

use tracing::debug;

use super::image::DEFAULT_MAX_INPUT_PIXELS;
use super::{Pipeline, PipelineKind};
use crate::ai::ocr::{joined_text, TextReader};
use crate::ai::{media, AiError, PipelineOutput, PipelineRequest};

pub struct OcrPipeline {
    model_id: String,
    reader: TextReader,
    max_input_pixels: u64,
}

impl OcrPipeline {
    pub fn new(model_id: &str, reader: TextReader, max_input_pixels: u64) -> Self {
        OcrPipeline {
            model_id: model_id.to_string(),
            reader,
            max_input_pixels,
        }
    }

    /// Loads the OCR models of `dir`: `det.onnx` and `rec.onnx` (optionally
    /// `cls.onnx`), or RapidOCR's files by their names.
    pub fn load(model_id: &str, dir: &Path, threads: usize) -> Result<Self, AiError> {
        Ok(OcrPipeline::new(
            model_id,
            TextReader::load(dir, threads)?,
            DEFAULT_MAX_INPUT_PIXELS,
        ))
    }
}

impl Pipeline for OcrPipeline {
    fn kind(&self) -> PipelineKind {
        PipelineKind::Ocr
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "onnx"
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        // Accepted as image-to-text's form has it; OCR reads what is there,
        // so the prompt is validated and otherwise unused.
        request.string("prompt")?;
        let image = media::decode_rgb(request.required_file("image")?, self.max_input_pixels)?;
        let lines = self.reader.read(&image)?;
        debug!(model = %self.model_id, lines = lines.len(), "image read");
        let (w, h) = image.dimensions();
        Ok(PipelineOutput {
            body: serde_json::json!({ "text": joined_text(&lines) }),
            files: Vec::new(),
            units: u64::from(w) * u64::from(h),
            unit_kind: "pixels",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use image::{Rgb, RgbImage};

    use super::*;
    use crate::ai::ocr::test_support::{rapidocr_models, render};

    fn pipeline() -> &'static OcrPipeline {
        static PIPELINE: OnceLock<OcrPipeline> = OnceLock::new();
        PIPELINE.get_or_init(|| {
            OcrPipeline::load("rapidai/RapidOCR", &rapidocr_models(), 0)
                .expect("RapidOCR models load")
        })
    }

    fn request(image: Vec<u8>) -> PipelineRequest {
        let mut r = PipelineRequest::default();
        r.params.insert("prompt".into(), "".into());
        r.params
            .insert("model_id".into(), "rapidai/RapidOCR".into());
        r.files.insert("image".into(), image);
        r
    }

    #[test]
    fn reads_rendered_text_and_bills_input_pixels() {
        let image = render(&["LIVEPEER 2026", "hello world"], 64.0, 1024, 320);
        let out = pipeline()
            .run(&request(media::encode_png(&image).unwrap()))
            .unwrap();
        assert_eq!(
            out.body,
            serde_json::json!({"text": "LIVEPEER 2026\nhello world"})
        );
        assert!(out.files.is_empty());
        assert_eq!((out.units, out.unit_kind), (1024 * 320, "pixels"));
        assert_eq!(pipeline().kind(), PipelineKind::Ocr);
        assert_eq!(pipeline().model_id(), "rapidai/RapidOCR");
    }

    #[test]
    fn an_image_without_text_reads_as_empty_text() {
        let white = RgbImage::from_pixel(320, 240, Rgb([255, 255, 255]));
        let out = pipeline()
            .run(&request(media::encode_png(&white).unwrap()))
            .unwrap();
        assert_eq!(out.body, serde_json::json!({"text": ""}));
        assert_eq!(out.units, 320 * 240);
    }

    #[test]
    fn bad_input_is_refused_with_the_right_error() {
        let run = |r: &PipelineRequest| pipeline().run(r).unwrap_err();
        let e = run(&request(b"not an image".to_vec()));
        assert!(matches!(e, AiError::BadRequest(_)), "{e:?}");
        let e = run(&request(b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec()));
        assert!(matches!(e, AiError::UnsupportedMedia(_)), "{e:?}");
        let mut no_image = request(Vec::new());
        no_image.files.clear();
        let e = run(&no_image);
        assert!(matches!(e, AiError::Validation { .. }), "{e:?}");
        let mut bad_prompt = request(Vec::new());
        bad_prompt
            .params
            .insert("prompt".into(), serde_json::json!(7));
        let e = run(&bad_prompt);
        assert!(matches!(e, AiError::Validation { .. }), "{e:?}");

        let small = OcrPipeline::new(
            "rapidai/RapidOCR",
            TextReader::load(&rapidocr_models(), 1).unwrap(),
            100 * 100,
        );
        let big = media::encode_png(&RgbImage::new(101, 100)).unwrap();
        let e = small.run(&request(big)).unwrap_err();
        assert!(matches!(e, AiError::TooLarge(_)), "{e:?}");
    }
}
