//! The Live Runner protocol's JSON, as go-livepeer 0.9 speaks it
//! (`ai/runner/live_runner.go`, `server/ai_http.go` at 176aa415). The host
//! (`orchestrator::runners`) and a runner use the same types.

use serde::{Deserialize, Serialize};

/// A runner as declared: one entry of `runners.json` or `POST
/// /registerLiveRunners`, or the body of a heartbeat. Unknown fields are
/// ignored; loosely typed fields (`gpu`, `price_info.price`) are kept as
/// JSON and checked by [`super::spec`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerDecl {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runner_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub routing: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proxy: bool,
    pub runner_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub health_url: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub healthy_status_code: i64,
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    pub capacity: i64,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub gpu: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_info: Option<PriceInfoDecl>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Heartbeats: the sessions the runner tracks (from its O2R channel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ids: Option<Vec<String>>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PriceInfoDecl {
    /// A JSON number or a numeric string.
    pub price: serde_json::Value,
    pub currency: String,
    pub unit: String,
}

/// `runners.json` and the body of `POST /registerLiveRunners`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunnersFile {
    #[serde(default)]
    pub runners: Vec<RunnerDecl>,
}

/// `{id, name, vram_mb}` of the GPU a runner uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuInfo {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub vram_mb: i64,
}

/// One registered static runner, as `POST /registerLiveRunners` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredRunner {
    pub runner_id: String,
    pub label: String,
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    pub runner_url: String,
    pub mode: String,
    pub health_url: String,
    pub healthy_status_code: u16,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredRunners {
    pub runners: Vec<RegisteredRunner>,
}

/// A trickle channel given to a runner or a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    pub channel_name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub internal_url: String,
    pub mime_type: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub runner_id: String,
    /// Go's `omitempty`: absent when the orchestrator has no runner-facing
    /// address configured.
    #[serde(default)]
    pub orchestrator: String,
    /// Go durations (`5s`, `20s`).
    pub heartbeat_interval: String,
    pub heartbeat_ttl: String,
    /// Only in the answer that registers the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o2r: Option<ChannelInfo>,
    /// The sessions the orchestrator holds for this runner, oldest first
    /// (a Go nil slice arrives as `null`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub session_ids: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One O2R message: a keepalive or a session event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum O2rMessage {
    Keepalive {
        keep: String,
    },
    Session {
        event: String,
        session: String,
        timestamp: String,
    },
}

/// `price_info` in discovery: wei per billing unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeiPriceInfo {
    pub price: u64,
    pub currency: String,
    pub unit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveredRunner {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuInfo>,
    pub app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    pub mode: String,
    pub capacity: u32,
    pub capacity_used: u32,
    pub capacity_available: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_info: Option<WeiPriceInfo>,
}

/// `GET /discovery` answers a list of these (one: this orchestrator).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveredOrchestrator {
    pub address: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<DiscoveredRunner>,
}

/// A reserved persistent session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    pub session_id: String,
    pub app_url: String,
    pub control_url: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelRequest {
    pub name: String,
    #[serde(default)]
    pub mime_type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateChannels {
    #[serde(default)]
    pub channels: Vec<ChannelRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedChannels {
    pub channels: Vec<ChannelInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeleteChannels {
    #[serde(default)]
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedChannels {
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyRequest {
    #[serde(default)]
    pub target_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyResponse {
    pub proxy_id: String,
    pub url: String,
}

/// Headers the proxy sets on every request it passes to a runner.
pub mod headers {
    pub const ROUTE: &str = "Livepeer-Runner-Route";
    pub const SESSION_ID: &str = "Livepeer-Session-Id";
    pub const SESSION_TOKEN: &str = "Livepeer-Session-Token";
    pub const SESSION_CONTROL: &str = "Livepeer-Session-Control";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What go-livepeer's `LiveRunnerHeartbeatResponse` marshals to with
    /// no `-liveRunnerAddr` and a nil session list.
    #[test]
    fn heartbeat_answers_with_go_omissions_parse() {
        let answer: HeartbeatResponse = serde_json::from_str(
            r#"{"runner_id":"r1","heartbeat_interval":"5s","heartbeat_ttl":"20s","session_ids":null}"#,
        )
        .unwrap();
        assert_eq!(answer.orchestrator, "");
        assert!(answer.session_ids.is_empty());
        assert!(answer.heartbeat_secret.is_none() && answer.o2r.is_none());
    }

    #[test]
    fn o2r_messages_are_go_livepeers_json() {
        let keep = O2rMessage::Keepalive {
            keep: "alive".into(),
        };
        assert_eq!(serde_json::to_string(&keep).unwrap(), r#"{"keep":"alive"}"#);
        let event = O2rMessage::Session {
            event: "reserved".into(),
            session: "session_abcdefgh".into(),
            timestamp: "2026-12-06T00:00:00.000000001Z".into(),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event":"reserved","session":"session_abcdefgh","timestamp":"2026-12-06T00:00:00.000000001Z"}"#
        );
        // Both parse back as themselves.
        let back: O2rMessage = serde_json::from_str(r#"{"keep":"alive"}"#).unwrap();
        assert_eq!(back, keep);
    }

    #[test]
    fn a_heartbeat_takes_a_gpu_index_or_object_and_a_price_as_number_or_string() {
        let d: RunnerDecl = serde_json::from_str(
            r#"{"runner_url":"http://r:1","app":"a","gpu":0,"price_info":{"price":"0.5"},"session_ids":[],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(d.gpu, serde_json::json!(0));
        assert_eq!(d.price_info.unwrap().price, serde_json::json!("0.5"));
        let d: RunnerDecl = serde_json::from_str(
            r#"{"runner_url":"http://r:1","app":"a","gpu":{"id":"GPU-1","name":"L40S","vram_mb":46068},"price_info":{"price":10}}"#,
        )
        .unwrap();
        assert_eq!(d.gpu["vram_mb"], 46068);
    }
}
