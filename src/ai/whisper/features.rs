//! Whisper's input: the log-mel spectrogram of a 30 s window, computed as
//! Hugging Face's WhisperFeatureExtractor computes it (centred STFT with
//! reflect padding, periodic Hann window, power spectrum, Slaney mel filters,
//! log10, clamped to 8 below the maximum, scaled by (x + 4) / 4). Candle's own
//! whisper.cpp-style spectrogram frames the audio differently, and a model's
//! tokens depend on these numbers.

use rustfft::{num_complex::Complex, FftPlanner};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Samples in one window (30 s).
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one window.
pub const WINDOW_FRAMES: usize = WINDOW_SAMPLES / HOP_LENGTH;

fn hertz_to_mel(freq: f64) -> f64 {
    // Slaney's scale: linear below 1 kHz, logarithmic above.
    let (min_log_hertz, min_log_mel, logstep) = (1000.0, 15.0, 27.0 / 6.4f64.ln());
    if freq >= min_log_hertz {
        min_log_mel + (freq / min_log_hertz).ln() * logstep
    } else {
        3.0 * freq / 200.0
    }
}

fn mel_to_hertz(mel: f64) -> f64 {
    let (min_log_hertz, min_log_mel, logstep) = (1000.0, 15.0, 6.4f64.ln() / 27.0);
    if mel >= min_log_mel {
        min_log_hertz * (logstep * (mel - min_log_mel)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Triangular Slaney-normalised mel filters over 0..8 kHz, laid out
/// `[frequency bin][mel]` (201 × n_mels) like transformers' `mel_filter_bank`.
pub fn mel_filters(n_mels: usize) -> Vec<f64> {
    let bins = N_FFT / 2 + 1;
    let (mel_min, mel_max) = (hertz_to_mel(0.0), hertz_to_mel(8000.0));
    let filter_freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hertz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let nyquist = (SAMPLE_RATE / 2) as f64;
    let mut filters = vec![0.0; bins * n_mels];
    for bin in 0..bins {
        let freq = nyquist * bin as f64 / (bins - 1) as f64;
        for m in 0..n_mels {
            let down = (freq - filter_freqs[m]) / (filter_freqs[m + 1] - filter_freqs[m]);
            let up = (filter_freqs[m + 2] - freq) / (filter_freqs[m + 2] - filter_freqs[m + 1]);
            let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            filters[bin * n_mels + m] = down.min(up).max(0.0) * enorm;
        }
    }
    filters
}

/// Computes log-mel windows; holds the FFT plan and filters.
pub struct LogMel {
    n_mels: usize,
    filters: Vec<f64>,
    window: Vec<f64>,
    fft: std::sync::Arc<dyn rustfft::Fft<f64>>,
}

impl LogMel {
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos())
            .collect();
        LogMel {
            n_mels,
            filters: mel_filters(n_mels),
            window,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    /// The `[n_mels][3000]` features of one 30 s window: `samples` (16 kHz
    /// mono) zero-padded or cut to 30 s.
    pub fn window(&self, samples: &[f32]) -> Vec<f32> {
        let mut audio: Vec<f64> = samples
            .iter()
            .take(WINDOW_SAMPLES)
            .map(|&s| f64::from(s))
            .collect();
        audio.resize(WINDOW_SAMPLES, 0.0);
        // Centre frames on their hop: reflect-pad by half a frame each side.
        let pad = N_FFT / 2;
        let n = audio.len();
        let mut padded = Vec::with_capacity(n + 2 * pad);
        padded.extend((1..=pad).rev().map(|i| audio[i]));
        padded.extend_from_slice(&audio);
        padded.extend((n - pad - 1..n - 1).rev().map(|i| audio[i]));

        let bins = N_FFT / 2 + 1;
        let mut mel = vec![0f64; self.n_mels * WINDOW_FRAMES];
        let mut buf = vec![Complex::new(0.0, 0.0); N_FFT];
        let mut power = vec![0f64; bins];
        // transformers computes one frame more and drops it.
        for frame in 0..WINDOW_FRAMES {
            let start = frame * HOP_LENGTH;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = Complex::new(padded[start + i] * self.window[i], 0.0);
            }
            self.fft.process(&mut buf);
            for (p, b) in power.iter_mut().zip(&buf) {
                *p = b.norm_sqr();
            }
            for m in 0..self.n_mels {
                let energy: f64 = (0..bins)
                    .map(|k| self.filters[k * self.n_mels + m] * power[k])
                    .sum();
                mel[m * WINDOW_FRAMES + frame] = energy.max(1e-10).log10();
            }
        }
        let floor = mel.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
        mel.iter()
            .map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32)
            .collect()
    }
}
