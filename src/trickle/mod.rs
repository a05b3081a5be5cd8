//! Trickle: go-livepeer's protocol for live media over plain HTTP. A channel
//! is a sequence of segments; a publisher POSTs each segment as a streamed
//! body, and subscribers GET a segment while it is still being written, so a
//! segment's first bytes reach readers as soon as they arrive. Only the last
//! few segments of a channel are kept.
//!
//! `server` is the orchestrator side (go-livepeer `trickle/trickle_server.go`,
//! served at `/ai/trickle/`), wire compatible with go-livepeer's own clients
//! and the official Python SDK's `TricklePublisher`/`TrickleSubscriber`.
//! `client` is the other side: a publisher and a subscriber.

pub mod client;
pub mod server;

pub use client::{
    Gap, PublisherConfig, RetryPolicy, SegmentReader, SegmentWriter, SubscriberConfig,
    TrickleClientError, TricklePublisher, TrickleSubscriber,
};
pub use server::{LocalReader, TrickleConfig, TrickleError, TrickleServer};

/// Where go-livepeer serves trickle channels.
pub const BASE_PATH: &str = "/ai/trickle";

/// Response and request headers of the protocol.
pub mod headers {
    /// The segment a response is about (the resolved sequence number).
    pub const SEQ: &str = "Lp-Trickle-Seq";
    /// The channel's next write sequence number.
    pub const LATEST: &str = "Lp-Trickle-Latest";
    /// Present (`terminated`) once the channel is closed.
    pub const CLOSED: &str = "Lp-Trickle-Closed";
    /// On a publish: close every retained segment below this one.
    pub const RESET: &str = "Lp-Trickle-Reset";
    /// On a create: the channel's MIME type.
    pub const EXPECT_CONTENT: &str = "Expect-Content";
}
