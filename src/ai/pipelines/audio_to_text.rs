//! `POST /audio-to-text`: speech to text with Whisper on Candle, answered as
//! ai-runner's TextResponse (`text` and timestamped `chunks`).
//!
//! Audio up to 30 s is one window, decoded as transformers decodes it. Longer
//! audio is transcribed window after window, each starting where the previous
//! one's last complete timestamped chunk ended (Whisper's own sequential
//! long-form algorithm), so no words are cut at window edges.
//!
//! Silence is skipped when Silero VAD is at hand (the silero-vad wheel's
//! `silero_vad.onnx`, see `ai::vad`); silence is audio both quiet (under
//! [`QUIET_RMS`]) and not speech to Silero. Audio with none at all answers an
//! empty transcript without running Whisper, which on silence makes up text;
//! silent stretches of [`MIN_SKIPPED_SILENCE`] seconds or more between
//! speech (kept with [`SPEECH_PAD`] seconds of margin) are cut out, and each
//! remaining span is transcribed on its own with its chunks' timestamps
//! offset to where it starts, so they stay times in the uploaded audio.
//! Audio without such a stretch is transcribed whole, as before.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{Pipeline, PipelineKind};
use crate::ai::candle::{self as rt, read_json};
use crate::ai::vad::VoiceActivityDetector;
use crate::ai::whisper::decode::{detect_language, greedy, prompt};
use crate::ai::whisper::features::{LogMel, HOP_LENGTH, WINDOW_FRAMES, WINDOW_SAMPLES};
use crate::ai::whisper::{Chunk, GenerationConfig, TextDecoder, WhisperNet};
use crate::ai::{audio, tokenizer, vad, AiError, PipelineOutput, PipelineRequest};

/// Tokens generated per window at most (ai-runner's `max_new_tokens`).
pub const MAX_NEW_TOKENS: usize = 128;
/// Longest audio accepted (ai-runner refuses word timestamps past an hour).
pub const MAX_AUDIO_SECONDS: f64 = 3600.0;
/// Largest upload (ai-runner's limit).
pub const MAX_AUDIO_BYTES: usize = 50 << 20;
/// Silence shorter than this (seconds) is transcribed as it is.
pub const MIN_SKIPPED_SILENCE: f64 = 2.0;
/// RMS (full scale 1) above which a chunk is never silence: -40 dBFS.
pub const QUIET_RMS: f32 = 0.01;
/// Audio kept on each side of detected speech (seconds).
pub const SPEECH_PAD: f64 = 0.5;
/// Span starts are cut on Whisper's 20 ms timestamp grid, so offset
/// timestamps stay on it.
const SPAN_GRID: usize = audio::SAMPLE_RATE as usize / 50;

pub struct AudioToTextPipeline {
    model_id: String,
    net: WhisperNet,
    generation: GenerationConfig,
    tokenizer: Tokenizer,
    clean_up_spaces: bool,
    log_mel: LogMel,
    /// Skips silence when present (see the module doc).
    vad: Option<VoiceActivityDetector>,
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
        let vad = match VoiceActivityDetector::find_model() {
            None => {
                tracing::info!(
                    "silero_vad.onnx not found (pip install silero-vad): audio-to-text transcribes silence too"
                );
                None
            }
            Some(path) => match VoiceActivityDetector::load(&path) {
                Ok(vad) => Some(vad),
                Err(e) => {
                    tracing::warn!(error = %e, "Silero VAD did not load: audio-to-text transcribes silence too");
                    None
                }
            },
        };
        Ok(AudioToTextPipeline {
            model_id: model_id.to_string(),
            vad,
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

    /// Whether silence is skipped (Silero VAD loaded).
    pub fn skips_silence(&self) -> bool {
        self.vad.is_some()
    }

    /// The sample ranges to transcribe: all of it without a VAD; none when
    /// there is no speech; else the audio less its silent stretches of
    /// [`MIN_SKIPPED_SILENCE`] or more outside [`SPEECH_PAD`] of speech.
    pub fn speech_spans(&self, samples: &[f32]) -> Result<Vec<(usize, usize)>, AiError> {
        let Some(vad) = &self.vad else {
            return Ok(vec![(0, samples.len())]);
        };
        let rate = f64::from(audio::SAMPLE_RATE);
        let pad = (SPEECH_PAD * rate) as usize;
        let min_gap = (MIN_SKIPPED_SILENCE * rate) as usize;
        // Silence is quiet and not speech: Silero alone misses sound that
        // Whisper transcribes (it finds no speech in tiny-whisper's
        // synthetic test clip), so any 32 ms chunk louder than
        // QUIET_RMS counts as speech whatever Silero says.
        let mut probabilities = vad.probabilities(samples)?;
        for (p, chunk) in probabilities
            .iter_mut()
            .zip(samples.chunks(vad::CHUNK_SAMPLES))
        {
            let power = chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32;
            if power.sqrt() > QUIET_RMS {
                *p = 1.0;
            }
        }
        let segments = vad::segments_from_probabilities(
            &probabilities,
            samples.len(),
            &vad::SegmentSettings::default(),
        );
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (start, end) in segments {
            let (start, end) = (start.saturating_sub(pad), (end + pad).min(samples.len()));
            if let Some(last) = spans.last_mut() {
                if start < last.1 + min_gap {
                    last.1 = last.1.max(end);
                    continue;
                }
            } else if start < min_gap {
                // Short leading silence stays.
                spans.push((0, end));
                continue;
            }
            spans.push((start - start % SPAN_GRID, end));
        }
        if let Some(last) = spans.last_mut() {
            if samples.len() - last.1 < min_gap {
                last.1 = samples.len();
            }
        }
        Ok(spans)
    }

    /// [`Self::transcribe`] of the speech spans only (see the module doc):
    /// their transcripts in order, timestamps in the whole audio's time.
    pub fn transcribe_speech(
        &self,
        samples: &[f32],
        timestamps: bool,
    ) -> Result<Transcript, AiError> {
        let mut transcript = Transcript {
            text: String::new(),
            chunks: Vec::new(),
            windows: Vec::new(),
        };
        for (start, end) in self.speech_spans(samples)? {
            let part = self.transcribe(&samples[start..end], timestamps)?;
            let offset = start as f64 / f64::from(audio::SAMPLE_RATE);
            let shift = |t: Option<f64>| t.map(|t| ((t + offset) * 100.0).round() / 100.0);
            transcript.text.push_str(&part.text);
            transcript
                .chunks
                .extend(part.chunks.into_iter().map(|c| Chunk {
                    timestamp: (shift(c.timestamp.0), shift(c.timestamp.1)),
                    text: c.text,
                }));
            transcript.windows.extend(part.windows);
        }
        Ok(transcript)
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
        let transcript = self.transcribe_speech(&samples, timestamps)?;
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
        let validation: fn(&AiError) -> bool = |e| matches!(e, AiError::Validation { .. });
        let bad_request: fn(&AiError) -> bool = |e| matches!(e, AiError::BadRequest(_));
        let unsupported: fn(&AiError) -> bool = |e| matches!(e, AiError::UnsupportedMedia(_));
        for (req, expected) in [
            (request(None, None), validation),
            (
                request(Some(b"not audio at all".to_vec()), None),
                unsupported,
            ),
            (request(Some(Vec::new()), None), unsupported),
            (request(Some(wav.clone()), Some("word")), bad_request),
            (request(Some(wav.clone()), Some("maybe")), bad_request),
        ] {
            let e = pipeline.run(&req).unwrap_err();
            assert!(expected(&e), "{e:?}");
        }
    }

    /// 16-bit PCM WAV of 16 kHz mono samples.
    fn wav(samples: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = samples
            .iter()
            .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
            .collect();
        let mut out = Vec::with_capacity(44 + data.len());
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&16_000u32.to_le_bytes());
        out.extend_from_slice(&32_000u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn silence_answers_empty_without_running_whisper() {
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        assert!(
            pipeline.skips_silence(),
            "silero_vad.onnx: run scripts/install-deps to install the silero-vad wheel"
        );
        // 40 s of faint hiss: two Whisper windows without the VAD.
        let hiss = crate::ai::vad::test_signals::noise(40 * 16_000, 0.005, 11);
        let started = std::time::Instant::now();
        let t = pipeline.transcribe_speech(&hiss, true).unwrap();
        let with_vad = started.elapsed();
        assert!(t.windows.is_empty(), "Whisper ran: {:?}", t.windows);
        assert_eq!(t.text, "");
        assert!(t.chunks.is_empty());
        let started = std::time::Instant::now();
        let whole = pipeline.transcribe(&hiss, true).unwrap();
        let without = started.elapsed();
        assert!(!whole.windows.is_empty());
        eprintln!("40 s of silence: {with_vad:?} with the VAD, {without:?} through Whisper");
        // Through run(): ai-runner's reply shape with nothing in it.
        let mut r = PipelineRequest::default();
        r.files.insert("audio".into(), wav(&hiss));
        let out = pipeline.run(&r).unwrap();
        assert_eq!(out.body, serde_json::json!({"text": "", "chunks": []}));
        assert_eq!(out.units, 40_000);
    }

    #[test]
    fn speech_after_long_silence_keeps_its_timestamps() {
        use crate::ai::vad::test_signals::{noise, voiced_syllables};
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        assert!(pipeline.skips_silence());
        let rate = 16_000usize;
        let hiss = |seconds: usize, seed| noise(seconds * rate, 0.005, seed);
        let voice = |seconds: usize, seed| -> Vec<f32> {
            voiced_syllables(seconds as f64)
                .into_iter()
                .zip(noise(seconds * rate, 0.005, seed))
                .map(|(v, n)| v + n)
                .collect()
        };
        // Speech at 1-3 s and 13-15 s, 10 s of silence between.
        let samples = [
            hiss(1, 1),
            voice(2, 2),
            hiss(10, 3),
            voice(2, 4),
            hiss(1, 5),
        ]
        .concat();
        let spans = pipeline.speech_spans(&samples).unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let seconds = |s: usize| s as f64 / rate as f64;
        // The short lead-in stays; the long silence goes, but for the padding.
        assert_eq!(spans[0].0, 0);
        assert!((seconds(spans[0].1) - 3.5).abs() < 0.3, "{spans:?}");
        assert!((seconds(spans[1].0) - 12.5).abs() < 0.3, "{spans:?}");
        assert_eq!(spans[1].1, samples.len(), "short trailing silence stays");
        assert_eq!(spans[1].0 % 320, 0, "span starts on the 20 ms grid");

        let t = pipeline.transcribe_speech(&samples, true).unwrap();
        assert_eq!(t.windows.len(), 2, "one Whisper window per span");
        // Each span's chunks are its own transcription's, moved to where the
        // span starts in the upload.
        let mut expected = Vec::new();
        for &(start, end) in &spans {
            let part = pipeline.transcribe(&samples[start..end], true).unwrap();
            for c in part.chunks {
                let shift =
                    |x: Option<f64>| x.map(|x| ((x + seconds(start)) * 100.0).round() / 100.0);
                expected.push((shift(c.timestamp.0), shift(c.timestamp.1), c.text));
            }
        }
        let got: Vec<_> = t
            .chunks
            .iter()
            .map(|c| (c.timestamp.0, c.timestamp.1, c.text.clone()))
            .collect();
        assert_eq!(got, expected);
        let late: Vec<f64> = t
            .chunks
            .iter()
            .filter_map(|c| c.timestamp.0)
            .filter(|&s| s >= seconds(spans[1].0))
            .collect();
        assert!(
            !late.is_empty(),
            "chunks of the second span start after the silence: {:?}",
            t.chunks
        );
        for c in &t.chunks {
            if let Some(s) = c.timestamp.0 {
                assert!(
                    s <= seconds(spans[0].1) || s >= seconds(spans[1].0),
                    "a chunk starts in the skipped silence: {c:?}"
                );
            }
        }
    }

    /// The test clip has no long silence: transcribed whole, exactly as
    /// without a VAD (the goldens hold through run()).
    #[test]
    fn audio_without_long_silence_is_transcribed_whole() {
        let pipeline = AudioToTextPipeline::load("lpworker/tiny-whisper", &dir()).unwrap();
        let samples = test_audio();
        assert_eq!(
            pipeline.speech_spans(&samples).unwrap(),
            [(0, samples.len())]
        );
        let whole = pipeline.transcribe(&samples, true).unwrap();
        let speech = pipeline.transcribe_speech(&samples, true).unwrap();
        assert_eq!(speech.windows, whole.windows);
        assert_eq!(speech.text, whole.text);
    }
}
