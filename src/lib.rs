//! lpworker: a GPU transcoding and AI inference worker for the Livepeer network.
//!
//! `video` holds the transcode engine and its backends; the transports
//! (CLI, gRPC worker, go-livepeer attach, orchestrator shim) sit on top.

pub mod ai;
pub mod attach;
pub mod bench;
pub mod chain;
pub mod live_runner;
pub mod lp_rpc;
pub mod orchestrator;
pub mod pm;
pub mod proto;
pub mod runner;
pub mod trickle;
pub mod video;
pub mod worker;
