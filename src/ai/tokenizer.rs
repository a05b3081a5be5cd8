//! Hugging Face tokenizer files as every generative pipeline reads them.

use std::path::Path;

use tokenizers::Tokenizer;

use super::AiError;

/// Loads a `tokenizer.json`; a missing or unreadable file is the model
/// folder's fault (400 on the request that named it, a load error at start).
pub fn load(path: &Path) -> Result<Tokenizer, AiError> {
    Tokenizer::from_file(path)
        .map_err(|e| AiError::UnknownModel(format!("{}: {e}", path.display())))
}

/// A special token as `tokenizer_config.json` writes it: a string or
/// `{"content": ...}`.
pub fn special_token(value: &serde_json::Value) -> Option<&str> {
    value.as_str().or_else(|| value["content"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_in_both_forms() {
        let config = serde_json::json!({"eos_token": "</s>", "pad_token": {"content": "!", "special": true}});
        assert_eq!(special_token(&config["eos_token"]), Some("</s>"));
        assert_eq!(special_token(&config["pad_token"]), Some("!"));
        assert_eq!(special_token(&config["bos_token"]), None);
    }
}
