//! Text generation for the `llm` pipeline: causal language models on Candle,
//! chat templates, and streamed text.

pub mod chat;
pub mod model;
pub mod stream;

pub use chat::{ChatTemplate, Message};
pub use model::CausalLm;
pub use stream::TextStream;
