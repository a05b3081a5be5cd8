//! `lpworker attach`: join an existing go-livepeer orchestrator as a remote
//! transcoder and/or AI worker, speaking its `lp_rpc` protocol (see
//! proto/net/lp_rpc.proto).

pub mod ai_worker;
pub mod backoff;
pub mod insecure_tls;
pub mod results;
pub mod session;
pub mod transcoder;

use std::time::Duration;

/// What `lpworker attach` needs to know.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// The orchestrator's `host:port` (go-livepeer's `-orchAddr`, no scheme).
    pub orch_addr: String,
    /// Shared secret (go-livepeer's `-orchSecret`).
    pub orch_secret: String,
    /// Segments transcoded at once, registered as capacity (`-maxSessions`).
    pub max_sessions: u32,
    /// Version string sent in capabilities; orchestrators and gateways
    /// compare it with their minimum go-livepeer version.
    pub livepeer_version: String,
    pub preset: String,
    pub max_segment_bytes: usize,
    /// Non-public addresses segment and input URLs may be fetched from: the
    /// orchestrator's own, which serves its segments, and `--fetch-allow`.
    pub fetch_allow: Vec<crate::worker::fetch::Cidr>,
    /// How long a shutdown waits for jobs in flight.
    pub drain_timeout: Duration,
}
