//! lpworker: a GPU transcoding and AI inference worker for the Livepeer network.
//!
//! `video` and `ai` hold the engines and their backends; the transports
//! (CLI, gRPC worker, go-livepeer attach, orchestrator shim, Live Runner
//! apps) sit on top, the HTTP-speaking ones sharing ai-runner's wire in
//! `ai_runner_api`.

pub mod ai;
pub mod ai_runner_api;
pub mod attach;
pub mod bench;
pub mod chain;
pub mod listener;
pub mod live_runner;
pub mod log_limit;
pub mod lp_rpc;
pub mod orchestrator;
pub mod peer_tls;
pub mod pm;
pub mod proto;
pub mod runner;
pub mod trickle;
pub mod video;
pub mod worker;
