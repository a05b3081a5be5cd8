//! `POST /audio-to-text`: speech to text with Whisper on Candle, answered as
//! ai-runner's TextResponse (`text` and timestamped `chunks`).
//!
//! Audio up to 30 s is one window, decoded as transformers decodes it. Longer
//! audio is transcribed window after window, each starting where the previous
//! one's last complete timestamped chunk ended (Whisper's own sequential
//! long-form algorithm), so no words are cut at window edges.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{Pipeline, PipelineKind};
use crate::ai::candle::{self as rt, read_json};
use crate::ai::whisper::decode::{detect_language, greedy, prompt};
use crate::ai::whisper::features::{LogMel, HOP_LENGTH, WINDOW_FRAMES, WINDOW_SAMPLES};
use crate::ai::whisper::{Chunk, GenerationConfig, TextDecoder, WhisperNet};
use crate::ai::{audio, tokenizer, AiError, PipelineOutput, PipelineRequest};

/// Tokens generated per window at most (ai-runner's `max_new_tokens`).
pub const MAX_NEW_TOKENS: usize = 128;
/// Longest audio accepted (ai-runner refuses word timestamps past an hour).
pub const MAX_AUDIO_SECONDS: f64 = 3600.0;
/// Largest upload (ai-runner's limit).
pub const MAX_AUDIO_BYTES: usize = 50 << 20;

pub struct AudioToTextPipeline {
    model_id: String,
    net: WhisperNet,
    generation: GenerationConfig,
    tokenizer: Tokenizer,
    clean_up_spaces: bool,
    log_mel: LogMel,
}

/// What a transcription produced.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub text: String,
    pub chunks: Vec<Chunk>,
    /// The tokens of every window, prompt included (for tests and logs).
    pub windows: Vec<Vec<u32>>,
}

/// ai-runner's `return_timestamps` form field: "true"/"1"/"sentence" or
/// "false"/"0"; word-level timestamps need cross-attention alignment heads
/// that this build does not compute, so "word" is refused.
fn parse_return_timestamps(value: Option<String>) -> Result<bool, AiError> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) => match v.as_str() {
            "" | "true" | "1" | "sentence" => Ok(true),
            "false" | "0" => Ok(false),
            "word" => Err(AiError::BadRequest(
                "word-level timestamps are not supported; use return_timestamps=true".into(),
            )),
            other => Err(AiError::BadRequest(format!(
                "return_timestamps must be true, false or sentence, got {other:?}"
            ))),
        },
    }
}

impl AudioToTextPipeline {
    pub fn load(model_id: &str, dir: &Path) -> Result<Self, AiError> {
        let device = rt::device();
        let net = WhisperNet::load(dir, &device)?;
        let generation: GenerationConfig = read_json(&dir.join("generation_config.json"))?;
        let tokenizer = tokenizer::load(&dir.join("tokenizer.json"))?;
        let tokenizer_config: serde_json::Value =
            read_json(&dir.join("tokenizer_config.json")).unwrap_or_default();
        if generation.timestamp_begin() as usize >= net.vocab_size {
            return Err(AiError::UnknownModel(format!(
                "{}: no timestamp tokens after <|notimestamps|>",
                dir.display()
            )));
        }
        Ok(AudioToTextPipeline {
            model_id: model_id.to_string(),
            log_mel: LogMel::new(net.n_mels),
            net,
            generation,
            tokenizer,
            clean_up_spaces: tokenizer_config["clean_up_tokenization_spaces"]
                .as_bool()
                .unwrap_or(false),
        })
    }

    /// Transcribes 16 kHz mono samples.
    pub fn transcribe(&self, samples: &[f32], timestamps: bool) -> Result<Transcript, AiError> {
        self.transcribe_with(samples, timestamps, MAX_NEW_TOKENS)
    }

    /// [`Self::transcribe`] with at most `max_new_tokens` per window.
    pub fn transcribe_with(
        &self,
        samples: &[f32],
        timestamps: bool,
        max_new_tokens: usize,
    ) -> Result<Transcript, AiError> {
        let net = &self.net;
        let text_decoder = TextDecoder {
            tokenizer: &self.tokenizer,
            timestamp_begin: self.generation.timestamp_begin(),
            clean_up_spaces: self.clean_up_spaces,
        };
        let total_frames = samples.len().div_ceil(HOP_LENGTH);
        let mut seek = 0usize; // in mel frames
        let mut transcript = Transcript {
            text: String::new(),
            chunks: Vec::new(),
            windows: Vec::new(),
        };
        let mut language = None;
        while seek < total_frames.max(1) {
            let start = seek * HOP_LENGTH;
            let end = (start + WINDOW_SAMPLES).min(samples.len());
            let window_frames = (total_frames - seek).min(WINDOW_FRAMES);
            let mel = self.log_mel.window(&samples[start..end]);
            let audio = net.encode(&mel)?;
            // The language is detected once, on the first window.
            let prompt = prompt(&self.generation, timestamps, || {
                if let Some(l) = language {
                    return Ok(l);
                }
                let l = detect_language(net, &self.generation, &audio)?;
                language = Some(l);
                Ok(l)
            })?;
            let max_new = max_new_tokens.min(net.max_target_positions.saturating_sub(prompt.len()));
            let generated = greedy(net, &self.generation, &audio, &prompt, timestamps, max_new)?;
            let offset = (seek * HOP_LENGTH) as f64 / f64::from(audio::SAMPLE_RATE);
            let last_window = seek + window_frames >= total_frames;
            let (kept, advance) =
                self.split_window(&generated, timestamps, window_frames, last_window);
            for chunk in text_decoder.chunks(kept, offset)? {
                transcript.text.push_str(&chunk.text);
                transcript.chunks.push(chunk);
            }
            transcript.windows.push([prompt, generated].concat());
            seek += advance.max(1);
        }
        Ok(transcript)
    }

    /// The tokens of a window to keep and how many frames it consumed: up to
    /// its last complete timestamped chunk (the rest is decoded again in the
    /// next window), or all of it when it ends with a lone timestamp, has no
    /// timestamps, or is the last window.
    fn split_window<'a>(
        &self,
        generated: &'a [u32],
        timestamps: bool,
        window_frames: usize,
        last_window: bool,
    ) -> (&'a [u32], usize) {
        let tb = self.generation.timestamp_begin();
        let tokens = match generated.last() {
            Some(&t) if t == self.generation.eos_token_id => &generated[..generated.len() - 1],
            _ => generated,
        };
        if !timestamps || last_window {
            return (generated, window_frames);
        }
        let is_ts = |t: &u32| *t >= tb;
        let single_ending = tokens.len() >= 2
            && !is_ts(&tokens[tokens.len() - 2])
            && is_ts(&tokens[tokens.len() - 1]);
        let last_pair = (1..tokens.len())
            .rev()
            .find(|&i| is_ts(&tokens[i]) && is_ts(&tokens[i - 1]));
        match last_pair {
            Some(i) if !single_ending => {
                // Frames are two per timestamp step (20 ms per step, 10 ms per frame).
                let frames = (tokens[i] - tb) as usize * 2;
                (&tokens[..i], frames.min(window_frames))
            }
            _ => (generated, window_frames),
        }
    }
}

impl Pipeline for AudioToTextPipeline {
    fn kind(&self) -> PipelineKind {
        PipelineKind::AudioToText
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "candle"
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        let data = request.required_file("audio")?;
        if data.len() > MAX_AUDIO_BYTES {
            return Err(AiError::TooLarge("File size exceeds limit.".into()));
        }
        let timestamps = parse_return_timestamps(request.string("return_timestamps")?)?;
        let samples = audio::decode_mono_16k(data, MAX_AUDIO_SECONDS)?;
        let transcript = self.transcribe(&samples, timestamps)?;
        let chunks: Vec<serde_json::Value> = if timestamps {
            transcript
                .chunks
                .iter()
                .map(|c| serde_json::json!({"timestamp": [c.timestamp.0, c.timestamp.1], "text": c.text}))
                .collect()
        } else {
            Vec::new()
        };
        // go-livepeer prices audio by whole seconds, in milliseconds.
        let seconds = samples.len() as u64 / u64::from(audio::SAMPLE_RATE);
        Ok(PipelineOutput {
            body: serde_json::json!({"text": transcript.text, "chunks": chunks}),
            files: Vec::new(),
            units: seconds * 1000,
            unit_kind: "ms",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::whisper::features::mel_filters;

    fn dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-whisper")
    }

    fn golden() -> serde_json::Value {
        read_json(&dir().join("golden.json")).unwrap()
    }

    fn golden_tensor(name: &str) -> Vec<f32> {
        let tensors = candle_core::safetensors::load(
            dir().join("golden.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        tensors[name].flatten_all().unwrap().to_vec1().unwrap()
    }

    fn test_audio() -> Vec<f32> {
        let wav = std::fs::read(dir().join("test.wav")).unwrap();
        audio::decode_mono_16k(&wav, 60.0).unwrap()
    }

    fn ids(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn features_match_transformers() {
        let filters = mel_filters(80);
        let reference = golden_tensor("mel_filters");
        assert_eq!(filters.len(), reference.len());
        let worst = filters
            .iter()
            .zip(&reference)
            .map(|(a, b)| (*a as f32 - b).abs())
            .fold(0f32, f32::max);
        let at = filters
            .iter()
            .zip(&reference)
            .position(|(a, b)| (*a as f32 - b).abs() == worst)
            .unwrap();
        assert!(
            worst < 1e-7,
            "mel filters differ by {worst} at {at}: {} vs {}",
            filters[at],
            reference[at]
        );

        // The WAV decodes to exactly its 16-bit samples / 32768.
        let wav = std::fs::read(dir().join("test.wav")).unwrap();
        let samples = test_audio();
        assert_eq!(samples.len(), (wav.len() - 44) / 2);
        assert!(samples
            .iter()
            .zip(wav[44..].chunks_exact(2))
            .all(|(s, b)| *s == f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0));

        let mel = LogMel::new(80).window(&samples);
        let reference = golden_tensor("log_mel_first_frames"); // [80][200]
        let mut worst = 0f32;
        for m in 0..80 {
            for f in 0..200 {
                worst = worst.max((mel[m * WINDOW_FRAMES + f] - reference[m * 200 + f]).abs());
            }
        }
        assert!(worst < 1e-4, "log-mel differs by {worst}");
    }

    /// golden.json was written by transformers from the same weights and
    /// audio: the detected language, every generated token, the text and the
    /// timestamped chunks must agree.
    #[test]
    fn tiny_whisper_matches_transformers_token_for_token() {
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        let golden = golden();
        let samples = test_audio();
        let max_new = golden["max_new_tokens"].as_u64().unwrap() as usize;

        let with_ts = pipeline.transcribe_with(&samples, true, max_new).unwrap();
        assert_eq!(with_ts.windows.len(), 1);
        assert_eq!(
            with_ts.windows[0][1],
            golden["language_token_id"].as_u64().unwrap() as u32
        );
        assert_eq!(with_ts.windows[0], ids(&golden["timestamps"]["ids"]));
        assert_eq!(with_ts.text, golden["timestamps"]["text"].as_str().unwrap());
        let chunks: Vec<serde_json::Value> = with_ts
            .chunks
            .iter()
            .map(|c| serde_json::json!({"timestamp": [c.timestamp.0, c.timestamp.1], "text": c.text}))
            .collect();
        assert_eq!(
            serde_json::Value::from(chunks),
            golden["timestamps"]["chunks"]
        );

        let plain = pipeline.transcribe_with(&samples, false, max_new).unwrap();
        assert_eq!(plain.windows[0], ids(&golden["no_timestamps"]["ids"]));
        assert_eq!(
            plain.text,
            golden["no_timestamps"]["text"].as_str().unwrap()
        );
    }

    #[test]
    fn long_audio_is_transcribed_window_after_window() {
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        // 70 s: the test clip repeated, so at least three windows.
        let clip = test_audio();
        let samples: Vec<f32> = clip.iter().cycle().take(70 * 16_000).copied().collect();
        let t = pipeline.transcribe_with(&samples, true, 24).unwrap();
        assert!(t.windows.len() >= 3, "{} windows", t.windows.len());
        let mut previous_start = -1.0;
        let starts: Vec<f64> = t.chunks.iter().filter_map(|c| c.timestamp.0).collect();
        assert!(starts.len() >= 3, "{:?}", t.chunks);
        for c in &t.chunks {
            let Some(start) = c.timestamp.0 else { continue };
            assert!(
                start >= previous_start,
                "chunks in time order: {:?}",
                t.chunks
            );
            // A window's timestamps lie within its 30 s (the model may place
            // one past the end of the audio in the last window, as in transformers).
            assert!(start < 100.0);
            if let Some(end) = c.timestamp.1 {
                assert!(end >= start && end <= 100.0, "{c:?}");
            }
            previous_start = start;
        }
        assert!(
            *starts.last().unwrap() >= 30.0,
            "later windows carry their offset: {starts:?}"
        );
        assert_eq!(
            t.text,
            t.chunks.iter().map(|c| c.text.as_str()).collect::<String>()
        );
        // The language is detected once and kept for every window.
        assert!(t.windows.iter().all(|w| w[1] == t.windows[0][1]));
    }

    #[test]
    fn requests_are_checked_like_ai_runner() {
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        let wav = std::fs::read(dir().join("test.wav")).unwrap();
        let request = |audio: Option<Vec<u8>>, ts: Option<&str>| {
            let mut r = PipelineRequest::default();
            if let Some(a) = audio {
                r.files.insert("audio".into(), a);
            }
            if let Some(t) = ts {
                r.params.insert("return_timestamps".into(), t.into());
            }
            r
        };
        let out = pipeline.run(&request(Some(wav.clone()), None)).unwrap();
        assert_eq!(out.unit_kind, "ms");
        assert_eq!(
            out.units, 4000,
            "4.3 s bills as 4 whole seconds, as go-livepeer"
        );
        assert!(!out.body["chunks"].as_array().unwrap().is_empty());
        let out = pipeline
            .run(&request(Some(wav.clone()), Some("false")))
            .unwrap();
        assert_eq!(out.body["chunks"], serde_json::json!([]));
        for (req, status) in [
            (request(None, None), 422),
            (request(Some(b"not audio at all".to_vec()), None), 415),
            (request(Some(Vec::new()), None), 415),
            (request(Some(wav.clone()), Some("word")), 400),
            (request(Some(wav.clone()), Some("maybe")), 400),
        ] {
            let e = pipeline.run(&req).unwrap_err();
            assert_eq!(e.http_status(), status, "{e}");
        }
    }
}
