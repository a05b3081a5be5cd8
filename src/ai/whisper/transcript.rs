//! Tokens to text and timestamped chunks, as the Hugging Face ASR pipeline
//! decodes Whisper's output (its `_decode_asr`): a timestamp opens a chunk, the
//! next different one closes it, special tokens are skipped, and text left
//! without a closing timestamp ends the transcript with an open end.

use tokenizers::Tokenizer;

use crate::ai::AiError;

/// One piece of the transcript, times in seconds. Text after the last
/// timestamp has neither start nor end, as the ASR pipeline reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chunk {
    pub timestamp: (Option<f64>, Option<f64>),
    pub text: String,
}

/// Seconds per timestamp step.
pub const TIME_PRECISION: f64 = 0.02;

pub struct TextDecoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub timestamp_begin: u32,
    /// transformers' `clean_up_tokenization_spaces`.
    pub clean_up_spaces: bool,
}

impl TextDecoder<'_> {
    fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    pub fn text(&self, ids: &[u32]) -> Result<String, AiError> {
        let text = self
            .tokenizer
            .decode(ids, false)
            .map_err(|e| AiError::Internal(format!("decoding tokens: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The chunks of one window's tokens, `offset` seconds into the audio.
    /// A chunk whose start has no text is dropped; the last may lack an end.
    pub fn chunks(&self, ids: &[u32], offset: f64) -> Result<Vec<Chunk>, AiError> {
        let mut chunks = Vec::new();
        let mut start: Option<f64> = None;
        let mut text_ids: Vec<u32> = Vec::new();
        for &id in ids {
            if self.is_special(id) {
                continue;
            }
            if id >= self.timestamp_begin {
                let time = round2(f64::from(id - self.timestamp_begin) * TIME_PRECISION + offset);
                match start {
                    None => start = Some(time),
                    Some(s) if s == time => {}
                    Some(s) => {
                        chunks.push(Chunk {
                            timestamp: (Some(s), Some(time)),
                            text: self.text(&text_ids)?,
                        });
                        text_ids.clear();
                        start = None;
                    }
                }
            } else {
                text_ids.push(id);
            }
        }
        if !text_ids.is_empty() {
            chunks.push(Chunk {
                timestamp: (start, None),
                text: self.text(&text_ids)?,
            });
        }
        Ok(chunks)
    }
}

fn round2(seconds: f64) -> f64 {
    (seconds * 100.0).round() / 100.0
}

/// transformers' `clean_up_tokenization`: no space before punctuation and
/// English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("Hi , I 'm here . Do n't go ! Really ?"),
            "Hi, I'm here. Don't go! Really?"
        );
    }
}
