//! Chat prompts: a model's own Jinja chat template (from
//! `tokenizer_config.json` or `chat_template.jinja`) rendered with minijinja
//! configured as Hugging Face transformers configures Jinja2 (trim_blocks,
//! lstrip_blocks, loop controls, Python string methods, `raise_exception`).

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::ai::candle::read_json;
use crate::ai::tokenizer::special_token;
use crate::ai::AiError;

/// One chat message as the API carries it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, AiError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| AiError::Internal(format!("chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template of a model folder: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named
    /// templates of which "default" is used).
    pub fn load(dir: &Path) -> Result<Self, AiError> {
        let config: serde_json::Value = read_json(&dir.join("tokenizer_config.json"))?;
        let source = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(text) => text,
            Err(_) => match &config["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            },
        };
        if source.is_empty() {
            return Err(AiError::UnknownModel(format!(
                "{} has no chat template (tokenizer_config.json chat_template or chat_template.jinja)",
                dir.display()
            )));
        }
        Self::new(
            &source,
            special_token(&config["bos_token"]).unwrap_or_default(),
            special_token(&config["eos_token"]).unwrap_or_default(),
        )
    }

    /// The tokenizer's end-of-sequence token ("" when it names none).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The prompt text for `messages`, ending with the assistant's turn header
    /// when `add_generation_prompt` (as OpenAI-style servers render it).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, AiError> {
        let template = self
            .env
            .get_template("chat")
            .expect("added at construction");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| match e.kind() {
                // The template itself refused the conversation (e.g. roles
                // that do not alternate): the caller's mistake.
                ErrorKind::InvalidOperation => AiError::BadRequest(format!("chat template: {e}")),
                _ => AiError::Internal(format!("chat template: {e}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_like_transformers_with_trimmed_blocks_and_python_methods() {
        // Block tags on their own lines leave no newlines behind (trim_blocks
        // and lstrip_blocks), and `.strip()` works as in Python. Expected
        // strings are Jinja2's output with transformers' settings.
        let source = "{{ bos_token }}\n{% for m in messages %}\n  <{{ m['role'] }}>{{ m['content'].strip() }}\n{% endfor %}\n{% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let text = t
            .render(&[msg("user", "  hi  "), msg("assistant", "yo")], true)
            .unwrap();
        assert_eq!(text, "<s>\n  <user>hi\n  <assistant>yo\n<assistant>");
        let text = t.render(&[msg("user", "hi")], false).unwrap();
        assert_eq!(text, "<s>\n  <user>hi\n");
    }

    #[test]
    fn a_template_refusal_is_the_callers_error() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}ok";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let e = t.render(&[msg("assistant", "x")], true).unwrap_err();
        assert!(matches!(e, AiError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("must start with the user"), "{e}");
        assert_eq!(t.render(&[msg("user", "x")], true).unwrap(), "ok");
    }

    #[test]
    fn a_broken_template_is_refused_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
