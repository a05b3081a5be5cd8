//! The gRPC `net.Transcoder` service: go-livepeer's `RegisterTranscoder`
//! (server/ot_rpc.go). The secret and capacity are checked as go-livepeer
//! checks them, with its error texts (its transcoders stop on "invalid
//! secret" and "zero capacity"); the stream then stays open for tasks.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::{Registration, RemoteTranscoders, MAX_CAPABILITY_WORDS};
use crate::lp_rpc::capabilities;
use crate::proto::lp_rpc as net;

/// go-livepeer's `errSecret`.
pub const INVALID_SECRET: &str = "invalid secret";
/// go-livepeer's `errZeroCapacity`.
pub const ZERO_CAPACITY: &str = "zero capacity";

pub struct TranscoderService(pub Arc<RemoteTranscoders>);

/// A transcoder's job stream; its registration ends when tonic drops it
/// (the peer went away or the call ended).
pub struct Jobs {
    rx: super::JobReceiver,
    _registration: Registration,
}

impl Stream for Jobs {
    type Item = Result<net::NotifySegment, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// go-livepeer's default capabilities, assumed for a legacy transcoder
/// that sends none (`core.DefaultCapabilities()`).
fn default_capabilities() -> net::Capabilities {
    let default = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 26];
    net::Capabilities {
        bitstring: capabilities::bitstring(default),
        capacities: default.iter().map(|c| (*c, 1)).collect(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl net::transcoder_server::Transcoder for TranscoderService {
    type RegisterTranscoderStream = Jobs;

    async fn register_transcoder(
        &self,
        request: Request<net::RegisterRequest>,
    ) -> Result<Response<Jobs>, Status> {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let req = request.into_inner();
        // go-livepeer returns plain errors: gRPC code Unknown, its text.
        if !self.0.secret_matches(&req.secret) {
            // Anyone reaching the port can repeat this at will.
            static REFUSED: crate::log_limit::SharedRateLimitedLog =
                crate::log_limit::SharedRateLimitedLog::new(crate::log_limit::REFUSAL_LOG_INTERVAL);
            if let Some(suppressed) = REFUSED.check() {
                warn!(?peer, suppressed, "transcoder registration refused: invalid secret (suppressed: like lines since the last)");
            }
            return Err(Status::unknown(INVALID_SECRET));
        }
        if req.capacity <= 0 {
            return Err(Status::unknown(ZERO_CAPACITY));
        }
        let caps = req.capabilities.unwrap_or_else(default_capabilities);
        if caps.bitstring.len() > MAX_CAPABILITY_WORDS
            || caps.mandatories.len() > MAX_CAPABILITY_WORDS
            || caps.capacities.len() > 64 * MAX_CAPABILITY_WORDS
        {
            return Err(Status::invalid_argument("capabilities too large"));
        }
        let (registration, rx) = self.0.register(peer, req.capacity, caps)?;
        Ok(Response::new(Jobs {
            rx,
            _registration: registration,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_transcoders_get_go_livepeers_defaults() {
        let caps = default_capabilities();
        assert_eq!(caps.bitstring, vec![0x0400_5FFF]);
        assert_eq!(caps.capacities.len(), 15);
    }
}
