//! Live Runners: external HTTP, SSE, WebSocket or trickle apps an
//! orchestrator hosts, as go-livepeer 0.9 does (`doc/live-runner.md`).
//! Runners register statically (config file, `/registerLiveRunners`) or
//! dynamically by heartbeat; clients reserve sessions on them and reach
//! them through the orchestrator's proxy. This module is the registry and
//! its wire types; the HTTP routes are `orchestrator::runners`.
//!
//! Beyond go-livepeer: capacity is admitted per GPU across runners
//! ([`capacity`]), sessions and channels per session are capped, and the
//! registry survives a restart ([`snapshot`]).

pub mod capacity;
pub mod price;
pub mod proxy_url;
pub mod registry;
pub mod secrets;
pub mod snapshot;
pub mod spec;
pub mod wire;

pub use registry::{Registry, RegistryConfig, RegistryError, Release, SessionGrant};
