//! Whisper speech recognition on Candle: features, window decoding and
//! transcripts, checked token for token against transformers.

pub mod decode;
pub mod features;
pub mod model;
pub mod net;
pub mod transcript;

pub use model::{GenerationConfig, WhisperNet};
pub use transcript::{Chunk, TextDecoder};
