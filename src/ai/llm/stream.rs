//! Text deltas while tokens are generated. Decoding token by token would
//! split multi-byte characters and drop the spaces some tokenizers add in
//! context, so each step decodes a short window of recent tokens and emits
//! only complete new text (the method of Hugging Face's text-generation-inference).

use tokenizers::Tokenizer;

use crate::ai::AiError;

pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    pub fn new() -> Self {
        TextStream {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, AiError> {
        tokenizer
            .decode(ids, true)
            .map_err(|e| AiError::Internal(format!("decoding tokens: {e}")))
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, AiError> {
        self.ids.push(id);
        let before = Self::decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let now = Self::decode(tokenizer, &self.ids[self.prefix_offset..])?;
        // A trailing U+FFFD is an incomplete UTF-8 sequence: wait for more.
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let delta = now[before.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// Whatever text is still held back at the end of generation.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, AiError> {
        let before = Self::decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let now = Self::decode(tokenizer, &self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(now
            .strip_prefix(&before)
            .filter(|rest| !rest.is_empty())
            .map(str::to_string))
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}
