//! `POST /llm`: OpenAI-style chat completions as ai-runner answers them, on a
//! Candle causal language model, with server-sent-event streaming.

use std::path::Path;

use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use super::{Pipeline, PipelineKind};
use crate::ai::candle::{self as rt, read_json};
use crate::ai::llm::{model::token_ids, CausalLm, ChatTemplate, Message, TextStream};
use crate::ai::{tokenizer, AiError, PipelineOutput, PipelineRequest};

const ROLES: [&str; 3] = ["system", "user", "assistant"];

pub struct LlmPipeline {
    model_id: String,
    model: CausalLm,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
}

/// A request's generation settings (ai-runner's LLMRequest).
#[derive(Debug, Clone)]
pub struct LlmParams {
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub max_tokens: usize,
    pub top_p: f64,
    pub top_k: i64,
    pub stream: bool,
    /// Not in ai-runner's schema: makes sampling repeatable when given.
    pub seed: Option<u64>,
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub text: String,
    /// "stop" (end of sequence) or "length" (max_tokens or the context filled).
    pub finish_reason: &'static str,
}

impl LlmParams {
    pub fn parse(request: &PipelineRequest) -> Result<Self, AiError> {
        let messages = match request.params.get("messages") {
            None | Some(serde_json::Value::Null) => return Err(AiError::missing("messages")),
            Some(value) => serde_json::from_value::<Vec<Message>>(value.clone()).map_err(|e| {
                AiError::invalid(
                    "messages",
                    format!("Input should be a list of messages: {e}"),
                )
            })?,
        };
        if messages.is_empty() {
            return Err(AiError::BadRequest("messages must not be empty".into()));
        }
        if let Some(m) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
            return Err(AiError::BadRequest(format!(
                "invalid message role {:?}: expected one of {ROLES:?}",
                m.role
            )));
        }
        let temperature = request.number("temperature")?.unwrap_or(0.7);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(AiError::BadRequest(format!(
                "temperature must be between 0 and 2, got {temperature}"
            )));
        }
        let top_p = request.number("top_p")?.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(AiError::BadRequest(format!(
                "top_p must be between 0 and 1, got {top_p}"
            )));
        }
        let max_tokens = request.integer("max_tokens")?.unwrap_or(256);
        if max_tokens < 1 {
            return Err(AiError::BadRequest(format!(
                "max_tokens must be at least 1, got {max_tokens}"
            )));
        }
        let seed = match request.integer("seed")? {
            Some(s) if s < 0 => {
                return Err(AiError::BadRequest("seed must not be negative".into()))
            }
            other => other.map(|s| s as u64),
        };
        Ok(LlmParams {
            messages,
            temperature,
            max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
            top_p,
            top_k: request.integer("top_k")?.unwrap_or(-1),
            stream: request.boolean("stream")?.unwrap_or(false),
            seed,
        })
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        let k = usize::try_from(self.top_k).ok().filter(|&k| k > 0);
        let p = Some(self.top_p).filter(|&p| p < 1.0);
        // No temperature, or a nucleus of nothing: greedy.
        match (temperature < 1e-5 || self.top_p <= 0.0, k, p) {
            (true, _, _) => Sampling::ArgMax,
            (false, Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            (false, Some(k), None) => Sampling::TopK { k, temperature },
            (false, None, Some(p)) => Sampling::TopP { p, temperature },
            (false, None, None) => Sampling::All { temperature },
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LlmPipeline {
    /// Loads config.json, the safetensors weights, tokenizer.json and the
    /// chat template from `dir`.
    pub fn load(model_id: &str, dir: &Path) -> Result<Self, AiError> {
        let device = rt::device();
        let model = CausalLm::load(dir, &device)?;
        let tokenizer = tokenizer::load(&dir.join("tokenizer.json"))?;
        let template = ChatTemplate::load(dir)?;
        // Generation stops at any end-of-sequence id that config.json,
        // generation_config.json or the tokenizer's eos token names.
        let mut stop_ids = model.eos_token_ids.clone();
        if let Ok(gen) = read_json::<serde_json::Value>(&dir.join("generation_config.json")) {
            stop_ids.extend(token_ids(gen.get("eos_token_id")));
        }
        stop_ids.extend(tokenizer.token_to_id(template.eos_token()));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        if stop_ids.is_empty() {
            return Err(AiError::UnknownModel(format!(
                "{}: no end-of-sequence token configured",
                dir.display()
            )));
        }
        Ok(LlmPipeline {
            model_id: model_id.to_string(),
            model,
            tokenizer,
            template,
            stop_ids,
        })
    }

    /// The prompt's token ids: the chat template rendered with the assistant
    /// turn opened, tokenized without adding special tokens again (the
    /// template writes them).
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, AiError> {
        let text = self.template.render(messages, true)?;
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| AiError::Internal(format!("tokenizing the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Generates a reply; `on_text` gets each complete piece of new text and
    /// returns false to stop early (the client went away).
    pub fn generate(
        &self,
        params: &LlmParams,
        on_text: &mut dyn FnMut(&str, &Generation) -> bool,
    ) -> Result<Generation, AiError> {
        let prompt_ids = self.prompt_ids(&params.messages)?;
        let room = self.model.max_positions.saturating_sub(prompt_ids.len());
        if room == 0 {
            return Err(AiError::BadRequest(format!(
                "Input sequence length ({}) exceeds maximum allowed ({})",
                prompt_ids.len(),
                self.model.max_positions
            )));
        }
        let max_tokens = params.max_tokens.min(room);
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut sampler = LogitsProcessor::from_sampling(seed, params.sampling());
        let mut sequence = self.model.sequence();
        let mut stream = TextStream::new();
        let mut generation = Generation {
            prompt_ids,
            output_ids: Vec::new(),
            text: String::new(),
            finish_reason: "length",
        };
        let mut logits = sequence.feed(&generation.prompt_ids)?;
        while generation.output_ids.len() < max_tokens {
            let next = sampler
                .sample(&logits)
                .map_err(|e| rt::model_error("sampling", e))?;
            generation.output_ids.push(next);
            if self.stop_ids.contains(&next) {
                generation.finish_reason = "stop";
                break;
            }
            if let Some(piece) = stream.push(&self.tokenizer, next)? {
                generation.text.push_str(&piece);
                if !on_text(&piece, &generation) {
                    return Ok(generation);
                }
            }
            if generation.output_ids.len() < max_tokens {
                logits = sequence.feed(&[next])?;
            }
        }
        if let Some(rest) = stream.finish(&self.tokenizer)? {
            generation.text.push_str(&rest);
            on_text(&rest, &generation);
        }
        Ok(generation)
    }

    fn usage(generation: &Generation) -> serde_json::Value {
        let prompt = generation.prompt_ids.len();
        let completion = generation.output_ids.len();
        serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn output(&self, body: serde_json::Value, generation: &Generation) -> PipelineOutput {
        PipelineOutput {
            body,
            files: Vec::new(),
            units: (generation.prompt_ids.len() + generation.output_ids.len()) as u64,
            unit_kind: "tokens",
        }
    }
}

impl Pipeline for LlmPipeline {
    fn kind(&self) -> PipelineKind {
        PipelineKind::Llm
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn runtime(&self) -> &'static str {
        "candle"
    }

    fn run(&self, request: &PipelineRequest) -> Result<PipelineOutput, AiError> {
        let params = LlmParams::parse(request)?;
        let generation = self.generate(&params, &mut |_, _| true)?;
        let body = serde_json::json!({
            "id": format!("chatcmpl-{}", uuid::Uuid::new_v4()),
            "model": self.model_id,
            "created": unix_now(),
            "usage": Self::usage(&generation),
            "choices": [{
                "index": 0,
                "finish_reason": generation.finish_reason,
                "message": {"role": "assistant", "content": generation.text},
            }],
        });
        Ok(self.output(body, &generation))
    }

    fn run_streaming(
        &self,
        request: &PipelineRequest,
        emit: &mut dyn FnMut(serde_json::Value) -> bool,
    ) -> Result<PipelineOutput, AiError> {
        let params = LlmParams::parse(request)?;
        let id = format!("chatcmpl-{}", uuid::Uuid::new_v4());
        let created = unix_now();
        let chunk = |generation: &Generation, content: &str, finish_reason: &str| {
            serde_json::json!({
                "id": id,
                "model": self.model_id,
                "created": created,
                "usage": Self::usage(generation),
                "choices": [{
                    "index": 0,
                    "finish_reason": finish_reason,
                    "delta": {"role": "assistant", "content": content},
                }],
            })
        };
        let generation = self.generate(&params, &mut |piece, generation| {
            emit(chunk(generation, piece, ""))
        })?;
        let last = chunk(&generation, "", generation.finish_reason);
        emit(last.clone());
        Ok(self.output(last, &generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_llama() -> LlmPipeline {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-llama");
        LlmPipeline::load("lpworker/tiny-llama", &dir).expect("tiny-llama loads")
    }

    fn request(body: serde_json::Value) -> PipelineRequest {
        PipelineRequest {
            params: body.as_object().unwrap().clone(),
            ..Default::default()
        }
    }

    /// The reference (transformers, greedy) wrote golden.json from the same
    /// weights; the chat template, tokenizer and every generated token must agree.
    #[test]
    fn tiny_llama_matches_transformers_token_for_token() {
        let pipeline = tiny_llama();
        let golden: serde_json::Value = read_json(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-llama/golden.json"),
        )
        .unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let params = LlmParams::parse(&request(serde_json::json!({
                "messages": case["messages"],
                "max_tokens": case["max_tokens"],
                "temperature": 0,
            })))
            .unwrap();
            let mut streamed = String::new();
            let generation = pipeline
                .generate(&params, &mut |piece, _| {
                    streamed.push_str(piece);
                    true
                })
                .unwrap();
            let ids = |v: &serde_json::Value| -> Vec<u32> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            assert_eq!(generation.prompt_ids, ids(&case["prompt_ids"]), "prompt");
            assert_eq!(
                generation.output_ids,
                ids(&case["output_ids"]),
                "generated ids"
            );
            assert_eq!(generation.text, case["text"].as_str().unwrap());
            assert_eq!(
                streamed, generation.text,
                "streamed pieces add up to the text"
            );
            assert_eq!(generation.finish_reason, "length");
        }
    }

    #[test]
    fn responses_and_stream_chunks_have_ai_runners_shape() {
        let pipeline = tiny_llama();
        let req = request(serde_json::json!({
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 5, "temperature": 0,
        }));
        let out = pipeline.run(&req).unwrap();
        assert_eq!(out.unit_kind, "tokens");
        let usage = &out.body["usage"];
        assert_eq!(usage["completion_tokens"], 5);
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + 5
        );
        assert_eq!(out.units, usage["total_tokens"].as_u64().unwrap());
        assert!(out.body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(out.body["choices"][0]["finish_reason"], "length");
        let text = out.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();

        let mut chunks = Vec::new();
        let last = pipeline
            .run_streaming(&req, &mut |c| {
                chunks.push(c);
                true
            })
            .unwrap();
        let joined: String = chunks
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(joined, text, "greedy: the stream says what the reply said");
        assert_eq!(chunks.last().unwrap(), &last.body);
        assert_eq!(last.body["choices"][0]["finish_reason"], "length");
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"] == "" && c["id"] == last.body["id"]));

        // A listener that goes away stops the generation.
        let mut seen = 0;
        let req = request(serde_json::json!({
            "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50, "temperature": 0,
        }));
        pipeline
            .run_streaming(&req, &mut |_| {
                seen += 1;
                false
            })
            .unwrap();
        assert!(seen <= 2, "stopped after the first refusal, saw {seen}");
    }

    #[test]
    fn sampling_is_repeatable_with_a_seed_and_respects_the_limits() {
        let pipeline = tiny_llama();
        let req = |seed: u64| {
            request(serde_json::json!({
                "messages": [{"role": "user", "content": "Tell me a story"}],
                "max_tokens": 12, "temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": seed,
            }))
        };
        let run = |seed| {
            let params = LlmParams::parse(&req(seed)).unwrap();
            pipeline
                .generate(&params, &mut |_, _| true)
                .unwrap()
                .output_ids
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2), "different seeds sample differently");
    }

    #[test]
    fn bad_requests_are_refused_with_the_right_errors() {
        let pipeline = tiny_llama();
        let validation: fn(&AiError) -> bool = |e| matches!(e, AiError::Validation { .. });
        let bad_request: fn(&AiError) -> bool = |e| matches!(e, AiError::BadRequest(_));
        let cases = [
            (serde_json::json!({}), validation),
            (serde_json::json!({"messages": "hi"}), validation),
            (
                serde_json::json!({"messages": [{"role": "user"}]}),
                validation,
            ),
            (serde_json::json!({"messages": []}), bad_request),
            (
                serde_json::json!({"messages": [{"role": "robot", "content": "x"}]}),
                bad_request,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                bad_request,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}),
                validation,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}),
                bad_request,
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                bad_request,
            ),
            // Longer than the model's 512 positions.
            (
                serde_json::json!({"messages": [{"role": "user", "content": "word ".repeat(600)}]}),
                bad_request,
            ),
        ];
        for (body, expected) in cases {
            let e = pipeline.run(&request(body.clone())).unwrap_err();
            assert!(expected(&e), "{body}: {e:?}");
        }
    }

    #[test]
    fn a_model_folder_with_broken_weights_fails_to_load_without_a_panic() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker/tiny-llama");
        let dir = std::env::temp_dir().join(format!("lpw-broken-llama-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
        let e = LlmPipeline::load("x/broken", &dir).err().expect("refused");
        assert!(matches!(e, AiError::Internal(_)), "{e:?}");
        // Valid safetensors that lack the layers: Candle's loader would panic.
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let mut config: serde_json::Value = read_json(&dir.join("config.json")).unwrap();
        config["num_hidden_layers"] = 3.into();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let e = LlmPipeline::load("x/broken", &dir).err().expect("refused");
        assert!(e.to_string().contains("weights"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
