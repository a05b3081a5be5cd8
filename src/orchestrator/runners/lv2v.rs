//! go-livepeer's legacy live-video-to-video (capability 35; `server/ai_http.go`
//! 996-1186 and `server/live_payment_processor.go` at 176aa415;
//! `../shared/specs/live_runner.md` §6, §7) over Live Runners: a gateway's
//! `POST /live-video-to-video` takes room on a ready runner whose app is
//! `live-video-to-video/{model_id}`, gets four trickle channels on this
//! node, and the runner is handed the job as ai-runner takes it. The input
//! channel is followed here: each new segment is metered (on chain), and
//! the stream ends, all four channels with it, when the input ends or
//! idles out, the credit runs short, or the runner's session is released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live_runner::{Registry, RegistryError, Release, SessionGrant};
use crate::log_limit::{SharedRateLimitedLog, REFUSAL_LOG_INTERVAL};
use crate::orchestrator::gateway::{self, Gateway};
use crate::orchestrator::payments::{Payments, Work};
use crate::proto::lp_rpc as net;
use crate::trickle::{TrickleServer, BASE_PATH};

/// go-livepeer's `LiveVideoToVideo` capability.
pub const CAPABILITY: u32 = 35;
/// The pipeline's name: runner apps are `live-video-to-video/{model_id}`.
pub const PIPELINE: &str = "live-video-to-video";
/// Largest start request (go-livepeer's cap on the live routes).
pub const MAX_BODY: usize = 1 << 20;
/// How long the runner has to take the job (the gateway gives the whole
/// request 5 s; a runner slower than this is not taking it).
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Live video is billed as 720p at 30 fps: pixels per second of input.
pub const PIXELS_PER_SECOND: u64 = 1280 * 720 * 30;

/// The start request (ai-runner's `LiveVideoToVideoParams`; the URLs a
/// gateway may send are ignored, as go-livepeer ignores them).
#[derive(Debug, Default, Deserialize)]
pub struct StartRequest {
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub gateway_request_id: Option<String>,
    #[serde(default)]
    pub stream_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("invalid request body: {0}")]
    Json(String),
    #[error("model_id is required")]
    NoModel,
}

/// The start request, or why not (a 400).
pub fn parse_start(body: &[u8]) -> Result<StartRequest, BodyError> {
    let req: StartRequest =
        serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    match &req.model_id {
        Some(m) if !m.trim().is_empty() => Ok(req),
        _ => Err(BodyError::NoModel),
    }
}

/// What the runner is sent (ai-runner's `live-video-to-video` body): it
/// reads the input at `subscribe_url` and writes its output to
/// `publish_url`.
#[derive(Debug, Serialize)]
struct RunnerJob<'a> {
    subscribe_url: String,
    publish_url: String,
    control_url: String,
    events_url: String,
    model_id: &'a str,
    params: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_request_id: Option<&'a str>,
    manifest_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<&'a str>,
}

/// The four channels of stream `mid`: input, output, control, events.
fn channels(mid: &str) -> [(String, &'static str); 4] {
    [
        (mid.to_string(), "video/MP2T"),
        (format!("{mid}-out"), "video/MP2T"),
        (format!("{mid}-control"), "application/json"),
        (format!("{mid}-events"), "application/json"),
    ]
}

/// The four channels' URLs at `base` (the service URI for the gateway,
/// the runner-facing address for the runner).
fn urls(base: &str, mid: &str) -> [String; 4] {
    channels(mid).map(|(name, _)| format!("{base}{BASE_PATH}/{name}"))
}

fn close_channels(trickle: &TrickleServer, mid: &str) {
    for (name, _) in channels(mid) {
        trickle.close_channel(&name);
    }
}

/// Bills input time as go-livepeer's live payment processor does: at
/// most once per interval, `int64(units/s × seconds since last billed)`
/// units, the billed time advancing only by what those units cover (the
/// fraction of a unit left over is billed next time).
#[derive(Debug, Clone)]
pub struct Meter {
    units_per_second: u64,
    interval: Duration,
    billed_to: Instant,
}

impl Meter {
    pub fn new(units_per_second: u64, interval: Duration, start: Instant) -> Meter {
        Meter {
            units_per_second: units_per_second.max(1),
            interval,
            billed_to: start,
        }
    }

    /// Units due at `now`, or `None` within an interval of the last bill.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.billed_to);
        if elapsed < self.interval {
            return None;
        }
        Some(self.bill(now))
    }

    /// Units for all the time since the last bill (the stream's end).
    pub fn rest(&mut self, now: Instant) -> u64 {
        self.bill(now)
    }

    /// Units for the time from the last bill to `now`, which the billed
    /// time advances by.
    fn bill(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.billed_to);
        let per_second = u128::from(self.units_per_second);
        let units = elapsed.as_nanos() * per_second / 1_000_000_000;
        let covered = units * 1_000_000_000 / per_second;
        self.billed_to += Duration::from_nanos(u64::try_from(covered).unwrap_or(u64::MAX));
        u64::try_from(units).unwrap_or(u64::MAX)
    }
}

/// A stream's payer, metered at the price its first payment recorded.
struct Metering {
    payments: Arc<Payments>,
    sender: Address,
    meter: Meter,
}

impl Metering {
    /// The stream's credit covers one interval's bill.
    fn covers_an_interval(&self, mid: &str) -> bool {
        let units =
            u128::from(self.meter.units_per_second) * self.meter.interval.as_millis() / 1000;
        let units = u64::try_from(units).unwrap_or(u64::MAX);
        let Some(price) = self.payments.recorded_price(self.sender, mid) else {
            return false;
        };
        let fee = alloy_primitives::I256::try_from(price.cost(units))
            .unwrap_or(alloy_primitives::I256::MAX);
        self.payments.balance(self.sender, mid) >= fee
    }
}

/// Refusals and runner failures anyone can cause at will, logged at most
/// once per interval.
static REFUSALS: SharedRateLimitedLog = SharedRateLimitedLog::new(REFUSAL_LOG_INTERVAL);

/// go-livepeer's answer when no runner has room.
fn no_capacity() -> Response {
    gateway::text(StatusCode::SERVICE_UNAVAILABLE, "insufficient capacity")
}

/// A stream being set up: released, its channels closed, if the start
/// does not get as far as following its input (the gateway hung up, the
/// runner refused).
struct Starting {
    registry: Arc<Registry>,
    mid: String,
    armed: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.armed {
            close_channels(self.registry.trickle(), &self.mid);
            self.registry.release(&self.mid, Release::Finished);
        }
    }
}

/// A fresh manifest ID no session or channel uses.
fn new_mid(registry: &Registry) -> String {
    loop {
        // go-livepeer's are 8 hex digits; the channels are open to whoever
        // names them (watch the output, publish into a stream paid by
        // another), so the name is a 128-bit secret here.
        let mid = format!("{:032x}", rand::random::<u128>());
        let trickle = registry.trickle();
        if registry.session_route(&mid).is_none()
            && channels(&mid).iter().all(|(n, _)| !trickle.has_channel(n))
        {
            return mid;
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// `POST /live-video-to-video`.
pub async fn start(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let Some(lr) = gw.runners.clone() else {
        return gateway::text(StatusCode::NOT_FOUND, "not found");
    };
    // Credentials from the headers first: a stranger's body is not read.
    let (_, _, payment) = match gateway::credentials(&gw, request.headers()).await {
        Ok(c) => c,
        Err((status, msg)) => return gateway::text(status, msg),
    };
    let headers = request.headers().clone();
    let room = match gw.bodies.reserve(&headers, MAX_BODY) {
        Ok(room) => room,
        Err(e) => return gateway::text(e.status(), e.to_string()),
    };
    let read = axum::body::to_bytes(request.into_body(), MAX_BODY);
    let body = match gw.bodies.within_deadline(read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return gateway::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        Err(e) => return gateway::text(e.status(), e.to_string()),
    };
    let req = match parse_start(&body) {
        Ok(r) => r,
        Err(e) => return gateway::text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    drop((body, room));
    let model = req.model_id.as_deref().unwrap_or_default();
    let app = format!("{PIPELINE}/{model}");
    // Capacity before payment, as go-livepeer checks it: nobody pays for
    // a stream that cannot start.
    let room = lr
        .registry
        .discover(Some(&app), None, |_| None)
        .iter()
        .any(|r| r.capacity_available > 0);
    if !room {
        return no_capacity();
    }
    let mid = new_mid(&lr.registry);
    // The room is taken before the payment, so a race lost to another
    // stream leaves no credit stranded under a stream that never ran; a
    // payment refused gives the room back (the guard below).
    let reserved = match lr.registry.reserve_app(&app, &mid) {
        Ok(r) => r,
        Err(RegistryError::Full) => return no_capacity(),
        Err(e) => return gateway::text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut starting = Starting {
        registry: lr.registry.clone(),
        mid: mid.clone(),
        armed: true,
    };
    let work = Work::Ai {
        capability: CAPABILITY,
        model,
    };
    // The opening payment credits (sender, mid); a balance short of one
    // ticket's EV at a price above 0 is refused.
    let sender = match gateway::pay(&gw, &payment, &mid, work, 0).await {
        Ok((sender, _check_only)) => sender,
        Err((status, msg)) => return gateway::text(status, msg),
    };
    let metering = match (&gw.payments, &lr.paid, sender) {
        (Some(p), Some(paid), Some(sender)) => p
            .recorded_price(sender, &mid)
            .filter(|price| price.num > 0)
            .map(|_| Metering {
                payments: p.clone(),
                sender,
                meter: Meter::new(PIXELS_PER_SECOND, paid.interval(), Instant::now()),
            }),
        _ => None,
    };
    // The first bill comes an interval in: the opening credit must cover
    // it (go-livepeer's gateways pay for 60 s up front).
    if let Some(m) = &metering {
        if !m.covers_an_interval(&mid) {
            return gateway::text(StatusCode::BAD_REQUEST, "Insufficient balance");
        }
    }
    let trickle = lr.registry.trickle().clone();
    for (name, mime) in channels(&mid) {
        if let Err(e) = trickle.create_channel(&name, mime) {
            if let Some(suppressed) = REFUSALS.check() {
                tracing::warn!(error = %e, suppressed, "live video stream refused: no trickle channel (suppressed: like lines since the last)");
            }
            return gateway::text(StatusCode::SERVICE_UNAVAILABLE, "insufficient capacity");
        }
    }
    // Follow the input before the runner is told, so not one segment
    // goes unmetered.
    let Some(input) = trickle.read_local(&mid, -1) else {
        return gateway::text(StatusCode::INTERNAL_SERVER_ERROR, "stream channels closed");
    };
    let config = lr.registry.config();
    let [subscribe, publish, control, events] = urls(&config.runner_base, &mid);
    let params = req.params.clone().unwrap_or_default();
    let job = RunnerJob {
        subscribe_url: subscribe,
        publish_url: publish,
        control_url: control,
        events_url: events,
        model_id: model,
        params: &params,
        gateway_request_id: req
            .gateway_request_id
            .as_deref()
            .or_else(|| header(&headers, "requestID")),
        manifest_id: &mid,
        stream_id: req
            .stream_id
            .as_deref()
            .or_else(|| header(&headers, "streamID")),
    };
    if let Err(e) = hand_off(&lr.client, &reserved.grant, &job).await {
        if let Some(suppressed) = REFUSALS.check() {
            tracing::warn!(runner = %reserved.grant.route, stream = %mid, error = %e, suppressed, "live video runner did not take the stream (suppressed: like lines since the last)");
        }
        return gateway::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("live video runner failed: {e}"),
        );
    }
    starting.armed = false;
    tracing::info!(stream = %mid, runner = %reserved.grant.route, model = %crate::log_limit::clip(model, 64), metered = metering.is_some(), "live video stream started");
    tokio::spawn(follow(
        lr.registry.clone(),
        mid.clone(),
        input,
        reserved.grant.cancel.clone(),
        metering,
    ));
    let [publish_url, subscribe_url, control_url, events_url] = urls(&gw.service_uri, &mid);
    Json(serde_json::json!({
        "publish_url": publish_url,
        "subscribe_url": subscribe_url,
        "control_url": control_url,
        "events_url": events_url,
        "manifest_id": mid,
    }))
    .into_response()
}

#[derive(Debug, thiserror::Error)]
enum HandOffError {
    #[error("unreachable")]
    Unreachable,
    #[error("status {0}")]
    Status(u16),
}

/// `POST {runner_url}/live-video-to-video` with the session's headers.
async fn hand_off(
    client: &reqwest::Client,
    grant: &SessionGrant,
    job: &RunnerJob<'_>,
) -> Result<(), HandOffError> {
    let url = super::proxy::target_url(&grant.runner_url, &format!("/{PIPELINE}"), None);
    let mut headers = HeaderMap::new();
    super::proxy::set_session_headers(&mut headers, grant);
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let response = client
        .post(url)
        .headers(headers)
        .body(serde_json::to_vec(job).expect("JSON values serialize"))
        .timeout(HANDOFF_TIMEOUT)
        .send()
        .await
        // Never the error's URL: it is the runner's private address.
        .map_err(|_| HandOffError::Unreachable)?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(HandOffError::Status(s.as_u16())),
    }
}

/// Follows a stream's input until it ends (closed, or swept after 5
/// minutes without a segment), its credit runs short, or its session is
/// released (runner stop, expiry, unregister); then closes its four
/// channels and releases the session.
async fn follow(
    registry: Arc<Registry>,
    mid: String,
    mut input: crate::trickle::LocalReader,
    released: CancellationToken,
    mut metering: Option<Metering>,
) {
    let mut last_input = None;
    // Billed on a clock, not only when a segment starts: a stream that
    // holds its runner with a stalled or endless segment pays for the time.
    let mut tick = tokio::time::interval(
        metering
            .as_ref()
            .map_or(Duration::from_secs(3600), |m| m.meter.interval),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            _ = released.cancelled() => break None,
            seq = input.next_segment() => match seq {
                None => break Some(Release::Finished),
                seq => last_input = seq,
            },
            _ = tick.tick() => {}
        }
        let Some(m) = &mut metering else { continue };
        let Some(units) = m.meter.due(Instant::now()) else {
            continue;
        };
        if let Err(e) = m.payments.try_debit_units(m.sender, &mid, units) {
            // Once per stream: its end.
            tracing::info!(stream = %mid, sender = %m.sender, units, error = %e, "live video stream out of credit: closed");
            break Some(Release::Unpaid);
        }
    };
    if let (Some(Release::Finished), Some(last)) = (&why, last_input) {
        drain_output(registry.trickle(), &mid, last, &released).await;
    }
    close_channels(registry.trickle(), &mid);
    if let Some(why) = why {
        registry.release(&mid, why);
    }
    // The time since the last bill, however short, is billed too (a
    // stream shorter than an interval is not free). Whatever the credit
    // does not cover is lost to the node, as go-livepeer loses it.
    if let Some(m) = &mut metering {
        if !matches!(why, Some(Release::Unpaid)) {
            let units = m.meter.rest(Instant::now());
            if units > 0 {
                if let Err(e) = m.payments.try_debit_units(m.sender, &mid, units) {
                    tracing::info!(stream = %mid, sender = %m.sender, units, error = %e, "live video stream's last bill not covered");
                }
            }
        }
    }
    tracing::info!(stream = %mid, "live video stream ended");
}

/// The longest an ended input's output is waited for.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// Once the last input segment's output has begun, the time it is given
/// to finish.
const OUTPUT_TAIL: Duration = Duration::from_secs(1);

/// When the gateway ends its input, the runner is still working on the
/// last segments: the output stays open until the runner closes it, its
/// output for the last input segment is in (then a moment to finish), or
/// [`OUTPUT_DRAIN`] passes. (go-livepeer closes every channel at once,
/// which cuts the stream's last seconds from what the viewer sees.)
async fn drain_output(trickle: &TrickleServer, mid: &str, last: i64, released: &CancellationToken) {
    let out = format!("{mid}-out");
    let deadline = tokio::time::Instant::now() + OUTPUT_DRAIN;
    loop {
        if !trickle.has_channel(&out) || released.is_cancelled() {
            return;
        }
        if trickle.next_write(&out).is_some_and(|next| next > last) {
            tokio::select! {
                _ = released.cancelled() => {}
                _ = tokio::time::sleep(OUTPUT_TAIL) => {}
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds capability 35 with the models of ready `live-video-to-video/*`
/// runners (their capacity summed, the first one's version, else this
/// build's) to what `GetOrchestrator` answers.
pub fn add_capability(caps: &mut net::Capabilities, registry: &Registry) {
    use net::capabilities::{capability_constraints::ModelConstraint, Constraints};
    let mut models: BTreeMap<String, ModelConstraint> = BTreeMap::new();
    for r in registry.discover(None, None, |_| None) {
        let Some(model) = r
            .app
            .strip_prefix(PIPELINE)
            .and_then(|m| m.strip_prefix('/'))
        else {
            continue;
        };
        if model.is_empty() {
            continue;
        }
        let m = models
            .entry(model.to_string())
            .or_insert_with(|| ModelConstraint {
                warm: true,
                capacity: 0,
                runner_version: if r.version.is_empty() {
                    env!("CARGO_PKG_VERSION").to_string()
                } else {
                    r.version.clone()
                },
                capacity_in_use: 0,
            });
        m.capacity = m.capacity.saturating_add(r.capacity);
        m.capacity_in_use = m.capacity_in_use.saturating_add(r.capacity_used);
    }
    if models.is_empty() {
        return;
    }
    crate::lp_rpc::capabilities::add(&mut caps.bitstring, CAPABILITY);
    let total = models
        .values()
        .map(|m| m.capacity)
        .fold(0u32, u32::saturating_add);
    caps.capacities.insert(CAPABILITY, total);
    caps.constraints
        .get_or_insert_with(Constraints::default)
        .per_capability
        .entry(CAPABILITY)
        .or_default()
        .models
        .extend(models);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_needs_json_with_a_model() {
        let ok = parse_start(
            br#"{"model_id":"noop","params":{"a":1},"stream_id":"s","publish_url":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(ok.model_id.as_deref(), Some("noop"));
        assert_eq!(ok.params.unwrap()["a"], 1);
        assert_eq!(ok.stream_id.as_deref(), Some("s"));
        assert_eq!(
            parse_start(br#"{"params":{}}"#).unwrap_err(),
            BodyError::NoModel
        );
        assert_eq!(
            parse_start(br#"{"model_id":" "}"#).unwrap_err(),
            BodyError::NoModel
        );
        assert!(matches!(parse_start(b"{nope"), Err(BodyError::Json(_))));
        assert!(matches!(
            parse_start(br#"{"model_id":"m","params":[1]}"#),
            Err(BodyError::Json(_))
        ));
    }

    #[test]
    fn the_runner_is_sent_ai_runners_body() {
        let params = serde_json::Map::new();
        let [subscribe_url, publish_url, control_url, events_url] =
            urls("http://10.0.0.1:8935", "0a1b2c3d");
        let job = RunnerJob {
            subscribe_url,
            publish_url,
            control_url,
            events_url,
            model_id: "noop",
            params: &params,
            gateway_request_id: None,
            manifest_id: "0a1b2c3d",
            stream_id: Some("s1"),
        };
        assert_eq!(
            serde_json::to_value(&job).unwrap(),
            serde_json::json!({
                "subscribe_url": "http://10.0.0.1:8935/ai/trickle/0a1b2c3d",
                "publish_url": "http://10.0.0.1:8935/ai/trickle/0a1b2c3d-out",
                "control_url": "http://10.0.0.1:8935/ai/trickle/0a1b2c3d-control",
                "events_url": "http://10.0.0.1:8935/ai/trickle/0a1b2c3d-events",
                "model_id": "noop", "params": {}, "manifest_id": "0a1b2c3d", "stream_id": "s1"
            })
        );
    }

    /// A registry with one `live-video-to-video/noop` runner, a stream
    /// `mid` reserved on it and its four channels made.
    fn stream_on_a_runner(
        trickle: &Arc<TrickleServer>,
        mid: &str,
    ) -> (Arc<Registry>, crate::live_runner::registry::Reserved) {
        use crate::live_runner::RegistryConfig;
        let mut config = RegistryConfig::new("https://o.example:8935");
        config.orch_secret = Some("s".into());
        let registry = Registry::new(config, trickle.clone());
        let decl = serde_json::from_value(serde_json::json!({
            "runner_url": "http://runner.lan:9000", "app": "live-video-to-video/noop"
        }))
        .unwrap();
        registry.heartbeat("s", &decl).unwrap();
        let reserved = registry
            .reserve_app("live-video-to-video/noop", mid)
            .unwrap();
        for (name, mime) in channels(mid) {
            trickle.create_channel(&name, mime).unwrap();
        }
        (registry, reserved)
    }

    #[tokio::test]
    async fn a_stream_whose_input_idles_out_gives_its_room_and_channels_back() {
        use crate::trickle::TrickleConfig;
        let trickle = TrickleServer::new(TrickleConfig {
            idle_timeout: Duration::from_millis(100),
            ..Default::default()
        });
        let (registry, reserved) = stream_on_a_runner(&trickle, "0a1b2c3d");
        let input = trickle.read_local("0a1b2c3d", -1).unwrap();
        let task = tokio::spawn(follow(
            registry.clone(),
            "0a1b2c3d".into(),
            input,
            reserved.grant.cancel.clone(),
            None,
        ));
        // A segment keeps it; then nothing for longer than the idle
        // timeout, and the sweep ends the stream.
        trickle.publish_local("0a1b2c3d", bytes::Bytes::from_static(b"ts"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        trickle.publish_local("0a1b2c3d-out", bytes::Bytes::from_static(b"ts"));
        assert!(trickle.sweep() >= 1);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(registry.session_route("0a1b2c3d").is_none());
        assert!(reserved.grant.cancel.is_cancelled());
        for (name, _) in channels("0a1b2c3d") {
            assert!(!trickle.has_channel(&name), "{name} outlived its stream");
        }
        registry
            .reserve_app("live-video-to-video/noop", "0a1b2c3e")
            .unwrap();
    }

    /// A paid stream set up by hand: registry, channels, a session priced
    /// 1 wei per pixel with `credit` wei, and its follower.
    async fn paid_stream(
        credit: u64,
        interval: Duration,
    ) -> (
        Arc<Registry>,
        Arc<TrickleServer>,
        Arc<Payments>,
        Address,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    ) {
        use crate::pm::recipient::Price;
        let trickle = TrickleServer::new(Default::default());
        let (registry, reserved) = stream_on_a_runner(&trickle, "m1");
        let (payments, dir) = crate::orchestrator::payments::offline_payments(
            Price::new(1, 1).unwrap(),
            Default::default(),
        );
        let sender = Address::repeat_byte(3);
        payments
            .restore_credit(
                sender,
                "m1",
                Price::new(1, 1).unwrap(),
                alloy_primitives::U256::from(credit),
            )
            .unwrap();
        let metering = Metering {
            payments: payments.clone(),
            sender,
            meter: Meter::new(PIXELS_PER_SECOND, interval, Instant::now()),
        };
        let input = trickle.read_local("m1", -1).unwrap();
        let task = tokio::spawn(follow(
            registry.clone(),
            "m1".into(),
            input,
            reserved.grant.cancel.clone(),
            Some(metering),
        ));
        (registry, trickle, payments, sender, task, dir)
    }

    /// A stream that sends nothing still pays for the time it holds its
    /// runner, and is cut when that runs past its credit.
    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_billed_on_the_clock_and_cut_when_unpaid() {
        let interval = Duration::from_secs(1);
        // Credit for 2.5 s of 720p30 at 1 wei per pixel.
        let credit = PIXELS_PER_SECOND * 5 / 2;
        let (registry, trickle, payments, sender, task, _dir) = paid_stream(credit, interval).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let left = payments.balance(sender, "m1");
        assert_eq!(
            left,
            alloy_primitives::I256::try_from(credit - PIXELS_PER_SECOND).unwrap()
        );
        // The third second is not covered: the stream is ended, unpaid.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(registry.session_route("m1").is_none());
        for (name, _) in channels("m1") {
            assert!(!trickle.has_channel(&name), "{name} outlived its stream");
        }
        assert_eq!(
            payments.balance(sender, "m1"),
            alloy_primitives::I256::try_from(credit - 2 * PIXELS_PER_SECOND).unwrap()
        );
    }

    /// A stream ending between two bills pays for the part interval too.
    #[tokio::test(start_paused = true)]
    async fn the_time_since_the_last_bill_is_billed_at_the_end() {
        let credit = PIXELS_PER_SECOND * 100;
        let (registry, trickle, payments, sender, task, _dir) =
            paid_stream(credit, Duration::from_secs(5)).await;
        trickle.publish_local("m1", bytes::Bytes::from_static(b"ts"));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // The gateway closes its input (and the runner its output).
        trickle.close_channel("m1-out");
        trickle.close_channel("m1");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        assert!(registry.session_route("m1").is_none());
        let paid = credit - u64::try_from(payments.balance(sender, "m1")).unwrap();
        assert_eq!(paid, PIXELS_PER_SECOND * 5 / 2, "2.5 s billed");
    }

    #[test]
    fn metering_bills_whole_units_per_interval_and_carries_the_rest() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // 720p30 pixels: 5 s since the start is 5 × 27,648,000.
        let mut m = Meter::new(PIXELS_PER_SECOND, s(5), t0);
        assert_eq!(m.due(t0 + Duration::from_millis(4999)), None);
        assert_eq!(m.due(t0 + s(5)), Some(5 * PIXELS_PER_SECOND));
        // Within an interval of the last bill: nothing.
        assert_eq!(m.due(t0 + s(7)), None);
        assert_eq!(
            m.due(t0 + Duration::from_millis(12_500)),
            Some(PIXELS_PER_SECOND * 15 / 2)
        );
        // In seconds: 7.5 s bills 7; the half second left is billed next.
        // In seconds: 7.5 s bills 7; the half second left counts towards
        // the next interval, which it completes at 12 s.
        let mut m = Meter::new(1, s(5), t0);
        assert_eq!(m.due(t0 + Duration::from_millis(7500)), Some(7));
        assert_eq!(m.due(t0 + s(12)), Some(5));
        assert_eq!(m.due(t0 + Duration::from_millis(16_900)), None);
        assert_eq!(m.due(t0 + s(17)), Some(5));
        assert_eq!(m.due(t0 + s(17)), None);
    }
}
