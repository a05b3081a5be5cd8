//! One module per ai-runner route.

pub mod audio_to_text;
pub mod image;
pub mod image_to_image;
pub mod image_to_text;
pub mod llm;
pub mod ocr;
pub mod text_to_image;

use super::{media, AiError, OutputFile, PipelineOutput, PipelineRequest};

/// ai-runner's ImageResponse (`{"images": [{"url", "seed", "nsfw"}]}`),
/// built one PNG at a time and billed in output pixels. No safety checker
/// runs in process, so `nsfw` is always false.
#[derive(Default)]
pub(crate) struct ImageResponse {
    images: Vec<serde_json::Value>,
    files: Vec<OutputFile>,
    pixels: u64,
}

impl ImageResponse {
    /// Adds one image, encoded as PNG.
    pub(crate) fn push(
        &mut self,
        image: &::image::RgbImage,
        seed: impl serde::Serialize,
    ) -> Result<(), AiError> {
        let png = media::encode_png(image)?;
        self.push_png(png, image.dimensions(), seed);
        Ok(())
    }

    /// Adds one image already encoded as PNG, of `(width, height)`.
    pub(crate) fn push_png(
        &mut self,
        png: Vec<u8>,
        (w, h): (u32, u32),
        seed: impl serde::Serialize,
    ) {
        let name = format!("image_{}.png", self.files.len());
        self.images
            .push(serde_json::json!({"url": name, "seed": seed, "nsfw": false}));
        self.files.push(OutputFile {
            name,
            mime: "image/png",
            data: png,
        });
        self.pixels += u64::from(w) * u64::from(h);
    }

    pub(crate) fn finish(self) -> PipelineOutput {
        PipelineOutput {
            body: serde_json::json!({ "images": self.images }),
            files: self.files,
            units: self.pixels,
            unit_kind: "pixels",
        }
    }
}

/// ai-runner's pipelines, with go-livepeer's capability numbers, and
/// lpworker's own (no capability: served by lpworker's HTTP and gRPC APIs
/// and as Live Runner apps, never advertised to go-livepeer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PipelineKind {
    TextToImage,
    ImageToImage,
    ImageToVideo,
    Upscale,
    AudioToText,
    SegmentAnything2,
    Llm,
    ImageToText,
    TextToSpeech,
    /// The text an image shows (OCR): ai-runner's image-to-text is captioning.
    Ocr,
    /// An image model without a prompt (style transfer, restoration):
    /// ai-runner's image-to-image is prompt-guided diffusion.
    ImageTransform,
}

impl PipelineKind {
    pub const ALL: [PipelineKind; 11] = [
        PipelineKind::TextToImage,
        PipelineKind::ImageToImage,
        PipelineKind::ImageToVideo,
        PipelineKind::Upscale,
        PipelineKind::AudioToText,
        PipelineKind::SegmentAnything2,
        PipelineKind::Llm,
        PipelineKind::ImageToText,
        PipelineKind::TextToSpeech,
        PipelineKind::Ocr,
        PipelineKind::ImageTransform,
    ];

    /// The route / pipeline name ("upscale", "text-to-image", ...).
    pub fn name(self) -> &'static str {
        match self {
            PipelineKind::TextToImage => "text-to-image",
            PipelineKind::ImageToImage => "image-to-image",
            PipelineKind::ImageToVideo => "image-to-video",
            PipelineKind::Upscale => "upscale",
            PipelineKind::AudioToText => "audio-to-text",
            PipelineKind::SegmentAnything2 => "segment-anything-2",
            PipelineKind::Llm => "llm",
            PipelineKind::ImageToText => "image-to-text",
            PipelineKind::TextToSpeech => "text-to-speech",
            PipelineKind::Ocr => "ocr",
            PipelineKind::ImageTransform => "image-transform",
        }
    }

    pub fn from_name(name: &str) -> Option<PipelineKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// go-livepeer's capability number (core/capabilities.go); none for
    /// lpworker's own pipelines.
    pub fn capability(self) -> Option<u32> {
        Some(match self {
            PipelineKind::TextToImage => 27,
            PipelineKind::ImageToImage => 28,
            PipelineKind::ImageToVideo => 29,
            PipelineKind::Upscale => 30,
            PipelineKind::AudioToText => 31,
            PipelineKind::SegmentAnything2 => 32,
            PipelineKind::Llm => 33,
            PipelineKind::ImageToText => 34,
            PipelineKind::TextToSpeech => 36,
            PipelineKind::Ocr | PipelineKind::ImageTransform => return None,
        })
    }

    /// The multipart file field carrying this pipeline's input, if any.
    pub fn file_field(self) -> Option<&'static str> {
        match self {
            PipelineKind::ImageToImage
            | PipelineKind::ImageToVideo
            | PipelineKind::Upscale
            | PipelineKind::SegmentAnything2
            | PipelineKind::ImageToText
            | PipelineKind::Ocr
            | PipelineKind::ImageTransform => Some("image"),
            PipelineKind::AudioToText => Some("audio"),
            PipelineKind::TextToImage | PipelineKind::Llm | PipelineKind::TextToSpeech => None,
        }
    }

    /// The request field naming the model (`model` for the LLM, as ai-runner).
    pub fn model_field(self) -> &'static str {
        if self == PipelineKind::Llm {
            "model"
        } else {
            "model_id"
        }
    }
}

/// A loaded model serving one pipeline.
pub trait Pipeline: Send + Sync {
    fn kind(&self) -> PipelineKind;
    fn model_id(&self) -> &str;
    /// "onnx" or "candle".
    fn runtime(&self) -> &'static str;
    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError>;

    /// Runs, handing partial results to `emit` as they come (server-sent
    /// events); `emit` returns false once nobody listens, which stops the
    /// work. The returned output is the final event. Pipelines without
    /// partial results emit nothing and return their output.
    fn run_streaming(
        &self,
        request: &PipelineRequest,
        emit: &mut dyn FnMut(serde_json::Value) -> bool,
    ) -> Result<PipelineOutput, AiError> {
        let _ = emit;
        self.run(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_capabilities() {
        for k in PipelineKind::ALL {
            assert_eq!(PipelineKind::from_name(k.name()), Some(k));
        }
        assert_eq!(PipelineKind::Upscale.capability(), Some(30));
        assert_eq!(PipelineKind::Ocr.capability(), None);
        assert_eq!(PipelineKind::Llm.model_field(), "model");
        assert_eq!(PipelineKind::from_name("nope"), None);
    }
}
