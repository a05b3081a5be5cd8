//! Voice activity detection with Silero VAD (v5/v6, `silero_vad.onnx`) on
//! ONNX Runtime: a speech probability for every 32 ms chunk of 16 kHz audio,
//! and speech segments drawn from them as silero-vad's
//! `get_speech_timestamps` draws them.
//!
//! The chunk loop mirrors silero-vad's `OnnxWrapper`: the model sees each
//! 512-sample chunk after the last 64 samples of the previous one (zeros
//! before the first), and its recurrent state is carried from chunk to chunk.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayD};

use super::onnx::{self, OnnxInput, OnnxSession};
use super::AiError;

/// The only rate this detector runs at (silero-vad's 8 kHz mode is not used).
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per model call at 16 kHz.
pub const CHUNK_SAMPLES: usize = 512;
/// Samples of the previous chunk the v5+ model sees before each chunk.
const CONTEXT_SAMPLES: usize = 64;
/// The recurrent state: [2, batch, 128].
const STATE_SHAPE: (usize, usize, usize) = (2, 1, 128);
/// Where the silero-vad wheel keeps the model, under site-packages.
pub const PACKAGE_MODEL_PATH: &str = "silero_vad/data/silero_vad.onnx";

/// `get_speech_timestamps`' defaults for the settings callers rarely change.
pub const DEFAULT_THRESHOLD: f64 = 0.5;
pub const DEFAULT_MIN_SPEECH_MS: u32 = 250;
pub const DEFAULT_MIN_SILENCE_MS: u32 = 100;
const SPEECH_PAD_MS: u32 = 30;

pub struct VoiceActivityDetector {
    model: OnnxSession,
}

impl VoiceActivityDetector {
    /// Finds `silero_vad.onnx` in an installed silero-vad wheel (the project
    /// `.venv` first), where ONNX Runtime's library is looked for.
    pub fn find_model() -> Option<PathBuf> {
        onnx::find_package_file(Path::new(PACKAGE_MODEL_PATH))
    }

    /// Loads the model at `path`. silero-vad runs it on one thread: a call
    /// is too small to gain from more.
    pub fn load(path: &Path) -> Result<Self, AiError> {
        let model = OnnxSession::load(path, 1)?;
        for name in ["input", "state", "sr"] {
            if !model.input_names().iter().any(|n| n == name) {
                return Err(AiError::Internal(format!(
                    "{}: not a Silero VAD v5+ model (no input {name:?}, has {:?})",
                    path.display(),
                    model.input_names()
                )));
            }
        }
        if model.output_names().len() != 2 {
            return Err(AiError::Internal(format!(
                "{}: expected outputs (probability, state), got {:?}",
                path.display(),
                model.output_names()
            )));
        }
        Ok(VoiceActivityDetector { model })
    }

    /// A fresh stream: zero state and context.
    pub fn stream(&self) -> VadStream<'_> {
        VadStream {
            detector: self,
            state: Array3::zeros(STATE_SHAPE).into_dyn(),
            context: [0.0; CONTEXT_SAMPLES],
        }
    }

    /// The speech probability of each 512-sample chunk of 16 kHz `samples`,
    /// the last chunk zero-padded.
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>, AiError> {
        let mut stream = self.stream();
        samples
            .chunks(CHUNK_SAMPLES)
            .map(|chunk| stream.push(chunk))
            .collect()
    }

    /// Speech segments of 16 kHz `samples` as `(start, end)` seconds, with
    /// `get_speech_timestamps`' other defaults (30 ms padding, no maximum
    /// length, exit threshold 0.15 below `threshold`). Seconds are exact,
    /// not rounded to silero's 0.1 s `time_resolution`.
    pub fn speech_segments(
        &self,
        samples: &[f32],
        threshold: f64,
        min_speech_ms: u32,
        min_silence_ms: u32,
    ) -> Result<Vec<(f64, f64)>, AiError> {
        let probabilities = self.probabilities(samples)?;
        let settings = SegmentSettings {
            threshold,
            min_speech_ms,
            min_silence_ms,
            speech_pad_ms: SPEECH_PAD_MS,
        };
        let seconds = |s: usize| s as f64 / f64::from(SAMPLE_RATE);
        Ok(
            segments_from_probabilities(&probabilities, samples.len(), &settings)
                .into_iter()
                .map(|(start, end)| (seconds(start), seconds(end)))
                .collect(),
        )
    }
}

/// One audio stream through the detector: carries the model's recurrent
/// state and the context samples between chunks.
pub struct VadStream<'a> {
    detector: &'a VoiceActivityDetector,
    state: ArrayD<f32>,
    context: [f32; CONTEXT_SAMPLES],
}

impl VadStream<'_> {
    /// The speech probability of the next chunk of at most 512 samples
    /// (a shorter one is zero-padded, as silero-vad pads the last chunk).
    pub fn push(&mut self, chunk: &[f32]) -> Result<f32, AiError> {
        if chunk.len() > CHUNK_SAMPLES {
            return Err(AiError::Internal(format!(
                "VAD chunk of {} samples; at most {CHUNK_SAMPLES}",
                chunk.len()
            )));
        }
        let mut input = Array2::<f32>::zeros((1, CONTEXT_SAMPLES + CHUNK_SAMPLES));
        {
            let row = input.as_slice_mut().expect("a new array is contiguous");
            row[..CONTEXT_SAMPLES].copy_from_slice(&self.context);
            row[CONTEXT_SAMPLES..CONTEXT_SAMPLES + chunk.len()].copy_from_slice(chunk);
            // The next context is the tail of this input (padding included).
            self.context.copy_from_slice(&row[CHUNK_SAMPLES..]);
        }
        let input = input.into_dyn();
        let rate = ndarray::arr0(i64::from(SAMPLE_RATE)).into_dyn();
        let mut outputs = self.detector.model.run(&[
            ("input", OnnxInput::F32(input.view())),
            ("state", OnnxInput::F32(self.state.view())),
            ("sr", OnnxInput::I64(rate.view())),
        ])?;
        let state = outputs.pop().expect("two outputs checked at load");
        let probability = outputs.pop().expect("two outputs checked at load");
        if state.shape() != [STATE_SHAPE.0, STATE_SHAPE.1, STATE_SHAPE.2] {
            return Err(AiError::Internal(format!(
                "VAD state has shape {:?}",
                state.shape()
            )));
        }
        self.state = state;
        probability
            .iter()
            .next()
            .copied()
            .ok_or_else(|| AiError::Internal("VAD produced no probability".into()))
    }
}

/// `get_speech_timestamps`' settings (silero-vad's names, in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentSettings {
    pub threshold: f64,
    pub min_speech_ms: u32,
    pub min_silence_ms: u32,
    pub speech_pad_ms: u32,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings {
            threshold: DEFAULT_THRESHOLD,
            min_speech_ms: DEFAULT_MIN_SPEECH_MS,
            min_silence_ms: DEFAULT_MIN_SILENCE_MS,
            speech_pad_ms: SPEECH_PAD_MS,
        }
    }
}

/// Speech segments, in samples, from per-chunk probabilities of
/// `audio_samples` samples at 16 kHz: silero-vad's
/// `get_speech_timestamps_from_probs` with no maximum speech duration (its
/// default), which never takes the max-duration branches.
///
/// Speech starts at a chunk at or above `threshold` and ends once chunks stay
/// below the exit threshold (`threshold - 0.15`, at least 0.01) for
/// `min_silence_ms`; segments not longer than `min_speech_ms` are dropped,
/// and each is padded by `speech_pad_ms` (half the gap where two are closer).
pub fn segments_from_probabilities(
    probabilities: &[f32],
    audio_samples: usize,
    settings: &SegmentSettings,
) -> Vec<(usize, usize)> {
    let rate = f64::from(SAMPLE_RATE);
    let min_speech_samples = rate * f64::from(settings.min_speech_ms) / 1000.0;
    let speech_pad_samples = rate * f64::from(settings.speech_pad_ms) / 1000.0;
    let min_silence_samples = rate * f64::from(settings.min_silence_ms) / 1000.0;
    let threshold = settings.threshold;
    let exit_threshold = (threshold - 0.15).max(0.01);

    let mut speeches: Vec<(usize, usize)> = Vec::new();
    // The start of the segment in progress, and where its trailing silence began.
    let mut start: Option<usize> = None;
    let mut silence_since: Option<usize> = None;
    for (i, &p) in probabilities.iter().enumerate() {
        let p = f64::from(p);
        let sample = CHUNK_SAMPLES * i;
        if p >= threshold {
            silence_since = None;
            if start.is_none() {
                start = Some(sample);
                continue;
            }
        }
        if let (Some(begin), true) = (start, p < exit_threshold) {
            let since = *silence_since.get_or_insert(sample);
            if ((sample - since) as f64) < min_silence_samples {
                continue;
            }
            if ((since - begin) as f64) > min_speech_samples {
                speeches.push((begin, since));
            }
            start = None;
            silence_since = None;
        }
    }
    if let Some(begin) = start {
        if (audio_samples.saturating_sub(begin) as f64) > min_speech_samples {
            speeches.push((begin, audio_samples));
        }
    }

    // Padding, in silero's float-then-truncate arithmetic.
    let pad = speech_pad_samples;
    let last = speeches.len().saturating_sub(1);
    for i in 0..speeches.len() {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - pad).max(0.0) as usize;
        }
        if i != last {
            let gap = speeches[i + 1].0 - speeches[i].1;
            if (gap as f64) < 2.0 * pad {
                speeches[i].1 += gap / 2;
                speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(gap / 2);
            } else {
                speeches[i].1 = (speeches[i].1 as f64 + pad).min(audio_samples as f64) as usize;
                speeches[i + 1].0 = (speeches[i + 1].0 as f64 - pad).max(0.0) as usize;
            }
        } else {
            speeches[i].1 = (speeches[i].1 as f64 + pad).min(audio_samples as f64) as usize;
        }
    }
    speeches
}

#[cfg(test)]
mod tests {
    use super::test_signals::{noise, voiced_syllables};
    use super::*;

    fn detector() -> VoiceActivityDetector {
        let path = VoiceActivityDetector::find_model()
            .expect("silero_vad.onnx: run scripts/install-deps to install the silero-vad wheel");
        VoiceActivityDetector::load(&path).expect("Silero VAD loads")
    }

    /// Segments silero-vad 6.2.3's `get_speech_timestamps_from_probs` draws
    /// (threshold 0.5, 250 ms speech, 100 ms silence, 30 ms padding) from
    /// the same probabilities.
    #[test]
    fn segments_match_silero_on_fixed_probabilities() {
        let run = |parts: &[(f32, usize)]| {
            let probabilities: Vec<f32> = parts
                .iter()
                .flat_map(|&(p, n)| std::iter::repeat_n(p, n))
                .collect();
            let samples = probabilities.len() * CHUNK_SAMPLES;
            segments_from_probabilities(&probabilities, samples, &SegmentSettings::default())
        };
        assert_eq!(run(&[(0.0, 10), (0.9, 20), (0.0, 10)]), [(4640, 15840)]);
        // A dip shorter than 100 ms does not split speech...
        assert_eq!(
            run(&[(0.0, 5), (0.9, 12), (0.2, 2), (0.9, 12), (0.0, 10)]),
            [(2080, 16352)]
        );
        // ...a longer one does.
        assert_eq!(
            run(&[(0.0, 5), (0.9, 12), (0.1, 6), (0.9, 12), (0.0, 10)]),
            [(2080, 9184), (11296, 18400)]
        );
        // Between the exit and entry thresholds speech goes on.
        assert_eq!(
            run(&[(0.0, 3), (0.6, 10), (0.4, 10), (0.3, 5), (0.0, 8)]),
            [(1056, 12256)]
        );
        assert_eq!(run(&[(0.0, 5), (0.9, 7), (0.0, 10)]), []);
        assert_eq!(run(&[(0.0, 5), (0.9, 15)]), [(2080, 10240)]);
        assert_eq!(run(&[(0.9, 10), (0.0, 4), (0.9, 10)]), [(0, 12288)]);
    }

    #[test]
    fn silence_and_low_noise_hold_no_speech() {
        let vad = detector();
        let silence = vec![0.0f32; 2 * SAMPLE_RATE as usize];
        assert_eq!(vad.speech_segments(&silence, 0.5, 250, 100).unwrap(), []);
        let hiss = noise(2 * SAMPLE_RATE as usize, 0.005, 0x2545_F491_4F6C_DD1D);
        let probabilities = vad.probabilities(&hiss).unwrap();
        assert_eq!(probabilities.len(), 63);
        assert!(probabilities.iter().all(|&p| p < 0.3), "{probabilities:?}");
        assert_eq!(vad.speech_segments(&hiss, 0.5, 250, 100).unwrap(), []);
    }

    #[test]
    fn voiced_syllables_between_noise_are_one_speech_segment() {
        let vad = detector();
        let rate = SAMPLE_RATE as usize;
        let lead = rate * 3 / 2;
        let hiss = noise(lead, 0.005, 0x2545_F491_4F6C_DD1D);
        let voice: Vec<f32> = voiced_syllables(3.0)
            .into_iter()
            .zip(noise(3 * rate, 0.005, 7))
            .map(|(v, n)| v + n)
            .collect();
        let audio: Vec<f32> = [&hiss[..], &voice, &hiss].concat();

        let probabilities = vad.probabilities(&audio).unwrap();
        // Python's silero-vad OnnxWrapper gives these on the same audio (the
        // first chunk and the onset depend on the 64-sample context).
        for (chunk, expected) in [(0, 0.1079), (46, 0.2088), (47, 0.9238), (100, 0.8404)] {
            assert!(
                (probabilities[chunk] - expected).abs() < 0.01,
                "chunk {chunk}: {} vs {expected}",
                probabilities[chunk]
            );
        }
        let onset_chunk = lead / CHUNK_SAMPLES;
        assert!(probabilities[..onset_chunk - 4].iter().all(|&p| p < 0.3));

        let segments = vad.speech_segments(&audio, 0.5, 250, 100).unwrap();
        assert_eq!(segments.len(), 1, "{segments:?}");
        let (start, end) = segments[0];
        assert!((start - 1.5).abs() < 0.3, "speech starts at {start} s");
        assert!((end - 4.5).abs() < 0.3, "speech ends at {end} s");
    }
}

/// Test audio Silero judges: silence-like noise and speech-like sound.
#[cfg(test)]
pub(crate) mod test_signals {
    use super::SAMPLE_RATE;

    /// A deterministic xorshift64 noise source, uniform in [-amplitude, amplitude).
    pub(crate) fn noise(samples: usize, amplitude: f32, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..samples)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                amplitude * ((s >> 40) as f32 / (1u32 << 23) as f32 - 1.0)
            })
            .collect()
    }

    /// A two-pole resonator: one formant of the vocal tract.
    struct Resonator {
        a: f64,
        b: f64,
        c: f64,
        y1: f64,
        y2: f64,
    }

    impl Resonator {
        fn new(frequency: f64, bandwidth: f64) -> Self {
            let rate = f64::from(SAMPLE_RATE);
            let r = (-std::f64::consts::PI * bandwidth / rate).exp();
            let b = 2.0 * r * (2.0 * std::f64::consts::PI * frequency / rate).cos();
            let c = -r * r;
            Resonator {
                a: 1.0 - b - c,
                b,
                c,
                y1: 0.0,
                y2: 0.0,
            }
        }

        fn filter(&mut self, x: f64) -> f64 {
            let y = self.a * x + self.b * self.y1 + self.c * self.y2;
            self.y2 = self.y1;
            self.y1 = y;
            y
        }
    }

    /// Speech-like sound Silero accepts: a glottal pulse train at 95-155 Hz
    /// with slow intonation, through F1/F2/F3 formant resonators of a new
    /// vowel every syllable, at four syllables a second.
    pub(crate) fn voiced_syllables(seconds: f64) -> Vec<f32> {
        // (F1, F2, F3) of /a/, /i/, /e/, /o/, /u/, /ae/ (Peterson & Barney).
        const VOWELS: [(f64, f64, f64); 6] = [
            (730.0, 1090.0, 2440.0),
            (270.0, 2290.0, 3010.0),
            (530.0, 1840.0, 2480.0),
            (570.0, 840.0, 2410.0),
            (300.0, 870.0, 2240.0),
            (660.0, 1720.0, 2410.0),
        ];
        let rate = f64::from(SAMPLE_RATE);
        let syllable = SAMPLE_RATE as usize / 4;
        let samples = (seconds * rate) as usize;
        let tau = 2.0 * std::f64::consts::PI;
        let mut out = Vec::with_capacity(samples);
        let mut formants = Vec::new();
        let (mut phase, mut previous_pulse) = (0.0f64, 0.0f64);
        for i in 0..samples {
            if i % syllable == 0 {
                let (f1, f2, f3) = VOWELS[(i / syllable) % VOWELS.len()];
                formants = vec![
                    Resonator::new(f1, 80.0),
                    Resonator::new(f2, 100.0),
                    Resonator::new(f3, 120.0),
                ];
            }
            let t = i as f64 / rate;
            let f0 = 120.0 + 25.0 * (tau * 0.7 * t).sin() + 10.0 * (tau * 2.3 * t).sin();
            phase = (phase + f0 / rate) % 1.0;
            // Open phase 60% of the period; its derivative excites the tract.
            let pulse = if phase < 0.6 {
                (std::f64::consts::PI * phase / 0.6).sin().powi(2)
            } else {
                0.0
            };
            let mut x = pulse - previous_pulse;
            previous_pulse = pulse;
            for formant in &mut formants {
                x = formant.filter(x);
            }
            let envelope = (std::f64::consts::PI * (i % syllable) as f64 / syllable as f64)
                .sin()
                .powf(0.7);
            out.push(x * envelope);
        }
        let peak = out.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        out.into_iter().map(|x| (0.5 * x / peak) as f32).collect()
    }
}
