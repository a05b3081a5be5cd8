//! Greedy decoding of one window as transformers' `generate` does it for
//! Whisper: the prompt (start, language, task, optional no-timestamps), the
//! language detected when the checkpoint is multilingual and none is forced,
//! and the logits processors in transformers' order (suppress at the first
//! step, suppress always, the timestamp rules).

use candle_core::Tensor;

use super::model::{feed, GenerationConfig, WhisperNet};
use crate::ai::AiError;

/// The start-of-transcript prompt for a window. `detect` is asked for the
/// language id when the checkpoint needs one and none is configured.
pub fn prompt(
    config: &GenerationConfig,
    timestamps: bool,
    detect: impl FnOnce() -> Result<u32, AiError>,
) -> Result<Vec<u32>, AiError> {
    let mut slots: Vec<Option<u32>> = vec![Some(config.decoder_start_token_id)];
    let mut forced = config.forced_decoder_ids.clone();
    forced.sort_by_key(|(position, _)| *position);
    for (i, (position, token)) in forced.into_iter().enumerate() {
        if position != i + 1 {
            break;
        }
        slots.push(token);
    }
    let language_undefined = slots.len() <= 1 || slots[1].is_none();
    if !config.lang_to_id.is_empty() && language_undefined {
        let language = detect()?;
        if slots.len() > 1 {
            slots[1] = Some(language);
        } else {
            slots.push(Some(language));
        }
    }
    let mut tokens: Vec<u32> = slots.into_iter().flatten().collect();
    let no_ts = config.no_timestamps_token_id;
    match (timestamps, tokens.last() == Some(&no_ts)) {
        (false, false) => tokens.push(no_ts),
        (true, true) => {
            tokens.pop();
        }
        _ => {}
    }
    Ok(tokens)
}

/// The most likely language token after the start token alone.
pub fn detect_language(
    net: &WhisperNet,
    config: &GenerationConfig,
    audio: &Tensor,
) -> Result<u32, AiError> {
    let mut decoder = net.decoder(audio)?;
    let logits = feed(&mut decoder, &[config.decoder_start_token_id])?;
    config
        .lang_to_id
        .values()
        .copied()
        .filter(|&id| (id as usize) < logits.len())
        .max_by(|&a, &b| {
            logits[a as usize]
                .total_cmp(&logits[b as usize])
                .then(b.cmp(&a))
        })
        .ok_or_else(|| AiError::Internal("language tokens outside the vocabulary".into()))
}

/// transformers' WhisperTimeStampLogitsProcessor: timestamps come in pairs
/// (except right before the end), never go back, the first token is a
/// timestamp no later than `max_initial_timestamp_index`, and a timestamp is
/// forced when all timestamps together are likelier than any text token.
fn timestamp_rules(config: &GenerationConfig, generated: &[u32], scores: &mut [f32]) {
    let tb = config.timestamp_begin() as usize;
    let eos = config.eos_token_id as usize;
    let is_ts = |t: u32| t as usize >= tb;
    scores[config.no_timestamps_token_id as usize] = f32::NEG_INFINITY;
    let last_was_ts = generated.last().is_some_and(|&t| is_ts(t));
    let penultimate_was_ts = generated.len() < 2 || is_ts(generated[generated.len() - 2]);
    if last_was_ts {
        if penultimate_was_ts {
            scores[tb..].fill(f32::NEG_INFINITY);
        } else {
            scores[..eos].fill(f32::NEG_INFINITY);
        }
    }
    if let Some(&last_ts) = generated.iter().rev().find(|&&t| is_ts(t)) {
        let last_allowed = if last_was_ts && !penultimate_was_ts {
            last_ts as usize
        } else {
            last_ts as usize + 1
        };
        let end = last_allowed.min(scores.len());
        scores[tb..end].fill(f32::NEG_INFINITY);
    }
    if generated.is_empty() {
        scores[..tb].fill(f32::NEG_INFINITY);
        if let Some(max_initial) = config.max_initial_timestamp_index {
            let last_allowed = tb + max_initial as usize;
            if last_allowed + 1 < scores.len() {
                scores[last_allowed + 1..].fill(f32::NEG_INFINITY);
            }
        }
    }
    // log-softmax, then compare all timestamps against the best text token.
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let log_sum: f64 = scores
        .iter()
        .map(|&s| f64::from(s - max).exp())
        .sum::<f64>()
        .ln();
    let logprob = |s: f32| f64::from(s - max) - log_sum;
    let ts_max = scores[tb..]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let ts_logprob = if ts_max.is_finite() {
        let sum: f64 = scores[tb..]
            .iter()
            .map(|&s| f64::from(s - ts_max).exp())
            .sum();
        logprob(ts_max) + sum.ln()
    } else {
        f64::NEG_INFINITY
    };
    let text_max = scores[..tb]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    if ts_logprob > logprob(text_max) {
        scores[..tb].fill(f32::NEG_INFINITY);
    }
}

/// Greedily decodes one window after `prompt`, at most `max_new` tokens.
/// Returns the generated tokens (without the prompt, with the end token if
/// reached).
pub fn greedy(
    net: &WhisperNet,
    config: &GenerationConfig,
    audio: &Tensor,
    prompt: &[u32],
    timestamps: bool,
    max_new: usize,
) -> Result<Vec<u32>, AiError> {
    let limit = config
        .max_length
        .unwrap_or(net.max_target_positions)
        .min(net.max_target_positions);
    let mut decoder = net.decoder(audio)?;
    let mut generated = Vec::new();
    if prompt.len() >= limit {
        return Ok(generated);
    }
    let mut scores = feed(&mut decoder, prompt)?;
    loop {
        let vocab = scores.len();
        if generated.is_empty() {
            for &t in &config.begin_suppress_tokens {
                if (t as usize) < vocab {
                    scores[t as usize] = f32::NEG_INFINITY;
                }
            }
        }
        for &t in &config.suppress_tokens {
            if (t as usize) < vocab {
                scores[t as usize] = f32::NEG_INFINITY;
            }
        }
        if timestamps {
            timestamp_rules(config, &generated, &mut scores);
        }
        // The first maximum, as torch's argmax.
        let next = scores
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &s)| {
                if s > best.1 {
                    (i, s)
                } else {
                    best
                }
            })
            .0 as u32;
        generated.push(next);
        if next == config.eos_token_id
            || generated.len() >= max_new
            || prompt.len() + generated.len() >= limit
        {
            return Ok(generated);
        }
        scores = feed(&mut decoder, &[next])?;
    }
}
