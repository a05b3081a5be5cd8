//! A test remote signer: go-livepeer's remote signer node
//! (`server/remote_signer.go` at 176aa415) on a test gateway's key, for
//! clients such as the official Python SDK that take a `signer_url`.
//!
//! `POST /sign-orchestrator-info` answers the gateway's address and its
//! signature over that address (`SignOrchestratorInfo`, :42-77).
//! `POST /generate-live-payment` signs tickets against the posted
//! `OrchestratorInfo`'s ticket params and segment credentials for the
//! request's manifest ID, carrying the session in a signed state blob the
//! client sends back (`GenerateLivePayment`, :358-774): type `live` bills
//! ⌈seconds since the last payment⌉ (10 s the first time), `lv2v`
//! 1280×720×30 pixels a second (60 s the first time), `fixed` one unit;
//! the balance the client holds with the orchestrator is kept in the
//! state, so each call sends just enough tickets to cover the bill.
//! 480 asks for fresh payment params, 481 refuses a price over a ceiling,
//! 482 says no tickets are needed yet.
//!
//! Left out: the auth webhook (none configured), the configured max price
//! (none), and the sender checks that read the chain (deposit, reserve,
//! withdraw round); ticket params expire against the chain's latest block
//! when the signer is given the chain's RPC URL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use alloy_primitives::ruint::Uint;
use alloy_primitives::{Address, U256};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lpworker::pm::ticket::from_be_bytes;
use lpworker::pm::Ticket;
use lpworker::proto::lp_rpc as net;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::chain::GatewaySigner;

/// go-livepeer's status codes (remote_signer.go:31-34).
pub const REFRESH_SESSION: u16 = 480;
pub const PRICE_EXCEEDED: u16 = 481;
pub const NO_TICKETS: u16 = 482;

/// A gateway's defaults (cmd/livepeer/starter/starter.go:281-282):
/// -maxTicketEV 3000 gwei, -maxTotalEV 20000 gwei.
const MAX_TICKET_EV: u128 = 3_000_000_000_000;
const MAX_TOTAL_EV: u128 = 20_000_000_000_000;
/// Auth tokens last 30 minutes and are refreshed in their last 10%
/// (server/rpc.go:47; server/broadcast.go:1637-1644).
const AUTH_TOKEN_REFRESH_BUFFER_S: i64 = 180;
/// pm/recipient.go:29.
const PARAMS_EXPIRY_BUFFER: i64 = 1;
/// lv2v's pixels a second: 1280×720 at 30 fps (live_payment_processor.go:12-16).
const LV2V_PIXELS_PER_SECOND: f64 = 1280.0 * 720.0 * 30.0;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

// ---------------------------------------------------------------------------
// Rationals, as go-livepeer's big.Rat amounts.

type Big = Uint<1024, 16>;

/// A non-negative rational in lowest terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rat {
    num: Big,
    den: Big,
}

impl Rat {
    fn new(num: Big, den: Big) -> Rat {
        assert!(!den.is_zero(), "zero denominator");
        let g = num.gcd(den);
        if g.is_zero() || g == Big::from(1u8) {
            return Rat { num, den };
        }
        Rat {
            num: num / g,
            den: den / g,
        }
    }

    fn int(n: u128) -> Rat {
        Rat::new(Big::from(n), Big::from(1u8))
    }

    fn from_u256(n: U256) -> Big {
        Big::from_limbs_slice(n.as_limbs())
    }

    fn is_zero(&self) -> bool {
        self.num.is_zero()
    }

    fn add(self, o: Rat) -> Rat {
        Rat::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }

    /// `self − o`; the callers only subtract what is smaller.
    fn sub(self, o: Rat) -> Rat {
        let (a, b) = (self.num * o.den, o.num * self.den);
        assert!(a >= b, "negative amount");
        Rat::new(a - b, self.den * o.den)
    }

    fn mul(self, o: Rat) -> Rat {
        Rat::new(self.num * o.num, self.den * o.den)
    }

    fn max(self, o: Rat) -> Rat {
        if self >= o {
            self
        } else {
            o
        }
    }

    /// ⌈self / o⌉ (`Balance.StageUpdate`, core/accounting.go:55-61).
    fn ceil_div(self, o: Rat) -> Big {
        let (n, d) = (self.num * o.den, self.den * o.num);
        n.div_ceil(d)
    }

    /// go-livepeer's `RatString`: "a" or "a/b".
    pub fn rat_string(&self) -> String {
        if self.den == Big::from(1u8) {
            self.num.to_string()
        } else {
            format!("{}/{}", self.num, self.den)
        }
    }

    /// A `big.Rat.SetString` of what this signer writes or is sent: "a/b",
    /// or a decimal with an optional exponent ("1012000.0", "1.5e-3").
    /// Negative values are `None`.
    pub fn parse(s: &str) -> Option<Rat> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('/') {
            let (a, b) = (a.parse::<Big>().ok()?, b.parse::<Big>().ok()?);
            return (!b.is_zero()).then(|| Rat::new(a, b));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s.starts_with('-') {
            return None;
        }
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let digits = format!("{int}{frac}");
        let num: Big = if digits.is_empty() {
            Big::ZERO
        } else {
            digits.parse().ok()?
        };
        let scale = exp - frac.len() as i32;
        if scale.unsigned_abs() > 200 {
            return None;
        }
        let ten = Big::from(10u8).pow(Big::from(scale.unsigned_abs()));
        Some(if scale >= 0 {
            Rat::new(num * ten, Big::from(1u8))
        } else {
            Rat::new(num, ten)
        })
    }

    /// Approximately, for logs and reports.
    pub fn to_f64(self) -> f64 {
        let f = |b: Big| b.to_string().parse::<f64>().unwrap_or(f64::INFINITY);
        f(self.num) / f(self.den)
    }
}

impl PartialOrd for Rat {
    fn partial_cmp(&self, o: &Rat) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Rat {
    fn cmp(&self, o: &Rat) -> std::cmp::Ordering {
        (self.num * o.den).cmp(&(o.num * self.den))
    }
}

/// pm/ticket.go:222-224: faceValue × winProb / (2^256 − 1).
fn ticket_ev(face_value: U256, win_prob: U256) -> Rat {
    Rat::new(
        Rat::from_u256(face_value) * Rat::from_u256(win_prob),
        Rat::from_u256(U256::MAX),
    )
}

// ---------------------------------------------------------------------------
// The state blob (remote_signer.go:146-167), JSON with Go's field names.

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemotePaymentState {
    #[serde(rename = "StateID")]
    pub state_id: String,
    #[serde(rename = "PMSessionID")]
    pub pm_session_id: String,
    /// RFC 3339; Go's zero time when never billed.
    #[serde(rename = "LastUpdate")]
    pub last_update: String,
    #[serde(rename = "OrchestratorAddress")]
    pub orchestrator_address: String,
    #[serde(rename = "App")]
    pub app: String,
    #[serde(rename = "AuthExpiry")]
    pub auth_expiry: i64,
    #[serde(rename = "SenderNonce")]
    pub sender_nonce: u32,
    /// The credit the client holds with the orchestrator (a `RatString`).
    #[serde(rename = "Balance")]
    pub balance: String,
    #[serde(rename = "InitialPricePerUnit")]
    pub initial_price_per_unit: i64,
    #[serde(rename = "InitialPixelsPerUnit")]
    pub initial_pixels_per_unit: i64,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "SequenceNumber")]
    pub sequence_number: u64,
    #[serde(rename = "AuthID")]
    pub auth_id: String,
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_time(s: &str) -> Option<SystemTime> {
    if s.is_empty() || s == GO_ZERO_TIME {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

// ---------------------------------------------------------------------------
// What the test reads back.

/// One `POST /generate-live-payment`, answered or refused.
#[derive(Debug, Clone)]
pub struct SignerCall {
    pub at: SystemTime,
    /// 200, or the refusal's status.
    pub status: u16,
    /// The refusal's reason (the real one for a 500).
    pub error: Option<String>,
    /// The request's `type`.
    pub kind: String,
    pub manifest_id: String,
    pub app: String,
    /// Whether the client sent a state back (every call after its first).
    pub had_state: bool,
    pub sequence_number: u64,
    /// Seconds (`live`), pixels (`lv2v`) or 1 (`fixed`) billed.
    pub billable_units: i64,
    /// The fee billed, in wei.
    pub fee: Option<Rat>,
    /// One ticket's expected value, in wei.
    pub ev: Option<Rat>,
    /// The balance before and after the call.
    pub balance_before: Option<Rat>,
    pub balance_after: Option<Rat>,
    /// The tickets sent, as the orchestrator hashes them.
    pub tickets: Vec<Ticket>,
    pub payment: Option<net::Payment>,
    pub seg_data: Option<net::SegData>,
    /// The request as posted (JSON), to post again.
    pub request: Value,
}

struct Shared {
    gateway: Mutex<GatewaySigner>,
    address: Address,
    calls: Mutex<Vec<SignerCall>>,
    sign_requests: AtomicUsize,
    /// For `LastSeenL1Block`: ticket params expire against it.
    chain_rpc: Option<String>,
    http: reqwest::Client,
}

/// The signer, serving on loopback until dropped.
pub struct RemoteSigner {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RemoteSigner {
    /// Serves `gateway`'s signatures on `http://127.0.0.1:<port>`. With
    /// `chain_rpc`, ticket params within a block of their expiration block
    /// are answered 480 (refresh), as go-livepeer's sender does.
    pub async fn start(gateway: GatewaySigner, chain_rpc: Option<String>) -> RemoteSigner {
        let shared = Arc::new(Shared {
            address: gateway.address,
            gateway: Mutex::new(gateway),
            calls: Mutex::default(),
            sign_requests: AtomicUsize::new(0),
            chain_rpc,
            http: reqwest::Client::new(),
        });
        let app = axum::Router::new()
            .route(
                "/sign-orchestrator-info",
                axum::routing::post(sign_orchestrator_info),
            )
            .route(
                "/generate-live-payment",
                axum::routing::post(generate_live_payment),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RemoteSigner {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    pub fn address(&self) -> Address {
        self.shared.address
    }

    /// Every generate-live-payment call so far, in order.
    pub fn calls(&self) -> Vec<SignerCall> {
        lock(&self.shared.calls).clone()
    }

    /// The calls answered with a payment.
    pub fn payments(&self) -> Vec<SignerCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 200)
            .collect()
    }

    pub fn sign_requests(&self) -> usize {
        self.shared.sign_requests.load(Ordering::SeqCst)
    }
}

impl Drop for RemoteSigner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// go-livepeer's `respondJsonError` (server/handlers.go:1717-1739): the
/// message, or generic text for 500 and 503.
fn json_error(status: u16, message: &str, orchestrator_url: Option<&str>) -> Response {
    let message = match status {
        500 => "Internal Server Error",
        503 => "Service Unavailable Error",
        _ => message,
    };
    let mut r = (
        StatusCode::from_u16(status).expect("status code"),
        axum::Json(json!({"error": {"message": message}})),
    )
        .into_response();
    if let Some(url) = orchestrator_url.and_then(|u| HeaderValue::from_str(u).ok()) {
        r.headers_mut().insert("Livepeer-Orchestrator-URL", url);
    }
    r
}

/// remote_signer.go:42-77: the broadcaster's address (EIP-55) and its
/// `OrchInfoSig`, a signature over that address string (:97-102).
async fn sign_orchestrator_info(State(shared): State<Arc<Shared>>) -> Response {
    shared.sign_requests.fetch_add(1, Ordering::SeqCst);
    let request = lock(&shared.gateway).orchestrator_request();
    axum::Json(json!({
        "address": shared.address.to_checksum(None),
        "signature": format!("0x{}", alloy_primitives::hex::encode(&request.sig)),
    }))
    .into_response()
}

/// A refusal: status, reason, and for 480 the orchestrator to refresh.
struct Refusal {
    status: u16,
    reason: String,
    refresh_url: Option<String>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        refresh_url: None,
    }
}

/// A JSON member by Go's rules: the exact name, else case-insensitively.
fn member<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A Go `[]byte` member: base64 (std) or null.
fn bytes_member(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    match member(obj, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => b64().decode(s).map_err(|e| e.to_string()),
        Some(v) => Err(format!("json: cannot unmarshal {v} into []byte")),
    }
}

fn string_member(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, String> {
    match member(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("json: cannot unmarshal {v} into string")),
    }
}

/// `runner.LiveRunnerPriceInfo` (ai/runner/live_runner.go:82-86) checked
/// by `parseRemotePaymentMaxPrice` (remote_signer.go:228-257).
fn parse_max_price(v: Option<&Value>, kind: &str) -> Result<Option<Rat>, Refusal> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(refuse(400, "json: cannot unmarshal maxPrice")),
    };
    // json.Number: a JSON number, or a string holding one.
    let price = match member(obj, "price") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let price = Rat::parse(&price)
        .filter(|p| !p.is_zero())
        .ok_or_else(|| refuse(400, "maxPrice.price must be a positive decimal"))?;
    let field = |k: &str| {
        member(obj, k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_lowercase()
    };
    if field("currency") != "wei" {
        return Err(refuse(400, "maxPrice.currency must be wei"));
    }
    let unit = match kind {
        "live" => "seconds",
        "lv2v" => "720p-pixel-seconds",
        "fixed" => "fixed",
        _ => {
            return Err(refuse(
                400,
                "maxPrice requires payment type live, lv2v, or fixed",
            ))
        }
    };
    if field("unit") != unit {
        return Err(refuse(
            400,
            format!("maxPrice.unit must be {unit} for payment type {kind}"),
        ));
    }
    Ok(Some(price))
}

async fn generate_live_payment(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut call = SignerCall {
        at: SystemTime::now(),
        status: 200,
        error: None,
        kind: String::new(),
        manifest_id: String::new(),
        app: String::new(),
        had_state: false,
        sequence_number: 0,
        billable_units: 0,
        fee: None,
        ev: None,
        balance_before: None,
        balance_after: None,
        tickets: Vec::new(),
        payment: None,
        seg_data: None,
        request: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let result = generate(&shared, &headers, &body, &mut call).await;
    let response = match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => {
            call.status = r.status;
            call.error = Some(r.reason.clone());
            json_error(r.status, &r.reason, r.refresh_url.as_deref())
        }
    };
    lock(&shared.calls).push(call);
    response
}

/// The latest block, as go-livepeer's `LastSeenL1Block` (on the local
/// chain L1 and L2 are one).
async fn latest_block(shared: &Shared) -> Option<u64> {
    let rpc = shared.chain_rpc.as_ref()?;
    let v: Value = shared
        .http
        .post(rpc)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    u64::from_str_radix(v["result"].as_str()?.trim_start_matches("0x"), 16).ok()
}

/// `sender.validateTicketParams` (pm/sender.go:182-230) without the
/// sender's on-chain info: `Err(None)` when the params expired (refresh),
/// `Err(Some(reason))` when they are unacceptable.
fn validate_ticket_params(
    params: &net::TicketParams,
    latest: Option<u64>,
    num_tickets: u128,
) -> Result<(), Option<String>> {
    let expiration = from_be_bytes(&params.expiration_block).unwrap_or_default();
    if expiration.is_zero() {
        return Err(Some("ticketParams expiration block is 0".into()));
    }
    if let Some(latest) = latest {
        let buffer = i128::try_from(expiration).unwrap_or(i128::MAX) - i128::from(latest);
        if buffer <= i128::from(PARAMS_EXPIRY_BUFFER) {
            return Err(None);
        }
    }
    let face_value = from_be_bytes(&params.face_value).unwrap_or_default();
    let ev = ticket_ev(
        face_value,
        from_be_bytes(&params.win_prob).unwrap_or_default(),
    );
    if ev.is_zero() {
        return Ok(());
    }
    if ev >= Rat::new(Rat::from_u256(face_value), Big::from(1u8)) {
        return Err(Some(format!(
            "ticket faceValue too low faceValue={face_value}"
        )));
    }
    if ev > Rat::int(MAX_TICKET_EV) {
        return Err(Some(format!(
            "ticket EV {:.5} > max ticket EV {MAX_TICKET_EV}",
            ev.to_f64()
        )));
    }
    if ev.mul(Rat::int(num_tickets)) > Rat::int(MAX_TOTAL_EV) {
        return Err(Some(format!(
            "total ticket EV for {num_tickets} tickets > max total ticket EV {MAX_TOTAL_EV}"
        )));
    }
    Ok(())
}

/// `GenerateLivePayment` (remote_signer.go:358-774), without the webhook.
async fn generate(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    call: &mut SignerCall,
) -> Result<Value, Refusal> {
    // :372-377
    let req: Value = serde_json::from_slice(body).map_err(|e| refuse(400, e.to_string()))?;
    let req = req
        .as_object()
        .ok_or_else(|| refuse(400, "json: cannot unmarshal the request"))?;
    let orchestrator = bytes_member(req, "orchestrator").map_err(|e| refuse(400, e))?;
    let manifest_req = string_member(req, "ManifestID").map_err(|e| refuse(400, e))?;
    let app = string_member(req, "app").map_err(|e| refuse(400, e))?;
    let kind = string_member(req, "type").map_err(|e| refuse(400, e))?;
    let in_pixels = match member(req, "inPixels") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| refuse(400, "json: cannot unmarshal inPixels into int64"))?,
    };
    let capabilities = bytes_member(req, "capabilities").map_err(|e| refuse(400, e))?;
    let (state_bytes, state_sig) = match member(req, "state") {
        None | Some(Value::Null) => (Vec::new(), Vec::new()),
        Some(Value::Object(s)) => (
            bytes_member(s, "State").map_err(|e| refuse(400, e))?,
            bytes_member(s, "Sig").map_err(|e| refuse(400, e))?,
        ),
        Some(_) => return Err(refuse(400, "json: cannot unmarshal state")),
    };
    call.kind = kind.clone();
    call.app = app.clone();

    // :379-401
    if orchestrator.is_empty() {
        return Err(refuse(400, "missing orchestrator"));
    }
    let info = net::OrchestratorInfo::decode(orchestrator.as_slice())
        .map_err(|e| refuse(400, e.to_string()))?;
    let price = info
        .price_info
        .clone()
        .filter(|p| p.price_per_unit != 0 && p.pixels_per_unit != 0)
        .ok_or_else(|| refuse(400, "missing or zero priceInfo"))?;
    let params = info
        .ticket_params
        .clone()
        .ok_or_else(|| refuse(400, "missing ticketParams in OrchestratorInfo"))?;
    let orch_addr = format!("{:#x}", go_address(&info.address));

    // :405-449: the state, verified, or a new one.
    let has_state = !state_bytes.is_empty() || !state_sig.is_empty();
    call.had_state = has_state;
    let mut state = if has_state {
        let signer = lpworker::pm::signature::recover(&state_bytes, &state_sig);
        if signer.ok() != Some(shared.address) {
            return Err(refuse(400, "invalid sig"));
        }
        let mut state: RemotePaymentState =
            serde_json::from_slice(&state_bytes).map_err(|_| refuse(400, "invalid state"))?;
        if !state.orchestrator_address.eq_ignore_ascii_case(&orch_addr) {
            return Err(refuse(400, "orchestratorAddress mismatch"));
        }
        if state.app != app {
            return Err(refuse(400, "app mismatch"));
        }
        if !state.kind.is_empty() && state.kind != kind {
            return Err(refuse(400, "job type mismatch"));
        }
        state.kind = kind.clone();
        state.sequence_number += 1;
        state
    } else {
        RemotePaymentState {
            state_id: random_id(),
            last_update: GO_ZERO_TIME.into(),
            orchestrator_address: orch_addr,
            app: app.clone(),
            initial_price_per_unit: price.price_per_unit,
            initial_pixels_per_unit: price.pixels_per_unit,
            kind: kind.clone(),
            ..Default::default()
        }
    };
    call.sequence_number = state.sequence_number;

    // :455-464
    let manifest_id = if manifest_req.is_empty() {
        if has_state {
            return Err(refuse(400, "missing manifestID"));
        }
        random_id()
    } else {
        manifest_req
    };
    call.manifest_id = manifest_id.clone();
    // :471-479
    let capabilities = if capabilities.is_empty() {
        None
    } else {
        Some(
            net::Capabilities::decode(capabilities.as_slice())
                .map_err(|e| refuse(400, e.to_string()))?,
        )
    };

    // :487-497: the balance carried in the state.
    let old_balance = Rat::parse(&state.balance).unwrap_or(Rat::int(0));
    call.balance_before = Some(old_balance);
    // :499-504: the nonce restarts on new params.
    let pm_session_id = format!(
        "0x{}",
        alloy_primitives::hex::encode(&params.recipient_rand_hash)
    );
    let nonce = if state.pm_session_id == pm_session_id {
        state.sender_nonce
    } else {
        0
    };

    // :525-534 `shouldRefreshSession` (broadcast.go:1629-1659).
    let auth_token = info.auth_token.clone().ok_or_else(|| {
        refuse(
            400,
            "remote signer could not check whether to refresh session: missing auth token",
        )
    })?;
    let now = SystemTime::now();
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let refresh = || Refusal {
        status: REFRESH_SESSION,
        reason: "refresh session for remote signer".into(),
        refresh_url: Some(info.transcoder.clone()),
    };
    if now_unix > auth_token.expiration - AUTH_TOKEN_REFRESH_BUFFER_S {
        return Err(refresh());
    }
    let latest = latest_block(shared).await;
    match validate_ticket_params(&params, latest, 1) {
        Ok(()) => {}
        Err(None) => return Err(refresh()),
        Err(Some(e)) => {
            return Err(refuse(
                400,
                format!("remote signer could not check whether to refresh session: {e}"),
            ))
        }
    }

    // :536-569: the units to bill.
    let last_update = parse_time(&state.last_update).unwrap_or(now);
    let mut billable_secs = now
        .duration_since(last_update)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let billable_units: i64 = match kind.as_str() {
        "lv2v" => {
            if billable_secs <= 0.0 {
                billable_secs = 60.0;
            }
            (LV2V_PIXELS_PER_SECOND * billable_secs) as i64
        }
        "live" => {
            if billable_secs <= 0.0 {
                billable_secs = 10.0;
            }
            billable_secs.ceil() as i64
        }
        "fixed" => 1,
        "" => in_pixels,
        _ => return Err(refuse(400, "invalid job type")),
    };
    call.billable_units = billable_units;
    if billable_units <= 0 {
        return Err(refuse(400, "missing billable unit or job type"));
    }

    // :571-594: price ceilings; the lowest applies.
    let orch_price = Rat::new(
        Big::from(price.price_per_unit.max(0) as u64),
        Big::from(price.pixels_per_unit.max(1) as u64),
    );
    let request_max = parse_max_price(member(req, "maxPrice"), &kind)?;
    let initial_max = if has_state {
        if state.initial_price_per_unit <= 0 || state.initial_pixels_per_unit <= 0 {
            return Err(refuse(400, "invalid initial price in state"));
        }
        Some(Rat::new(
            Big::from(state.initial_price_per_unit as u64),
            Big::from(state.initial_pixels_per_unit as u64),
        ))
    } else {
        None
    };
    let ceiling = [
        ("request maxPrice", request_max),
        ("initial session price", initial_max),
    ]
    .into_iter()
    .filter_map(|(source, p)| p.map(|p| (source, p)))
    .min_by(|a, b| a.1.cmp(&b.1));
    if let Some((source, ceiling)) = ceiling {
        if orch_price > ceiling {
            return Err(refuse(
                PRICE_EXCEEDED,
                format!(
                    "orchestrator price {:.3} exceeds {source} ceiling {:.3}",
                    orch_price.to_f64(),
                    ceiling.to_f64()
                ),
            ));
        }
    }

    // :596-626: the fee at the initial price; tickets to cover it with the
    // balance, one ticket's EV at the least (segment_rpc.go:762-789;
    // core/accounting.go:41-66).
    let initial_price = Rat::new(
        Big::from(state.initial_price_per_unit.max(0) as u64),
        Big::from(state.initial_pixels_per_unit.max(1) as u64),
    );
    let fee = Rat::int(billable_units as u128).mul(initial_price);
    call.fee = Some(fee);
    let ev = ticket_ev(
        from_be_bytes(&params.face_value).unwrap_or_default(),
        from_be_bytes(&params.win_prob).unwrap_or_default(),
    );
    call.ev = Some(ev);
    let min_credit = fee.max(ev);
    let num_tickets: u128 = if old_balance >= min_credit || ev.is_zero() {
        0
    } else {
        u128::try_from(min_credit.sub(old_balance).ceil_div(ev)).unwrap_or(u128::MAX)
    };
    if num_tickets == 0 {
        return Err(refuse(NO_TICKETS, "no tickets"));
    }
    if num_tickets > 100 {
        return Err(refuse(
            400,
            format!("numTickets {num_tickets} exceeds maximum of 100"),
        ));
    }

    // :631-648 `genPayment` (segment_rpc.go:817-900): `validatePrice`
    // (:902-926), then `CreateTicketBatch` (pm/sender.go:135-173), which
    // validates the params for the whole batch.
    if orch_price > initial_price.mul(Rat::int(2)) {
        return Err(refuse(
            PRICE_EXCEEDED,
            format!(
                "Orchestrator price has more than doubled, Orchestrator price: {}, Orchestrator initial price: {}",
                orch_price.rat_string(),
                initial_price.rat_string()
            ),
        ));
    }
    if let Err(e) = validate_ticket_params(&params, latest, num_tickets) {
        return Err(refuse(
            500,
            e.unwrap_or_else(|| "ticket params expired".into()),
        ));
    }
    let (payment, seg) = {
        let mut gateway = lock(&shared.gateway);
        let payment = gateway.payment_after_nonce(&info, num_tickets as usize, nonce);
        // :651 `genSegCreds` with an empty segment (segment_rpc.go:681-722;
        // core/streamdata.go:85-107): the manifest ID, seq 0, the hash of
        // no data, no profiles, the info's auth token.
        let seg = gateway.signed(net::SegData {
            manifest_id: manifest_id.clone().into_bytes(),
            seq: 0,
            hash: alloy_primitives::keccak256(b"").to_vec(),
            profiles: b"invalid".to_vec(),
            capabilities,
            auth_token: Some(auth_token.clone()),
            ..Default::default()
        });
        call.tickets = gateway.tickets(&payment);
        (payment, seg)
    };

    // :657-673: the new balance and state.
    let new_balance = old_balance.add(ev.mul(Rat::int(num_tickets))).sub(fee);
    call.balance_after = Some(new_balance);
    state.balance = new_balance.rat_string();
    state.last_update = rfc3339(now);
    state.pm_session_id = pm_session_id;
    state.sender_nonce = payment
        .ticket_sender_params
        .last()
        .map_or(nonce, |t| t.sender_nonce);

    // :695-706: no webhook; the client's auth ID sticks to the state.
    let auth_id = headers
        .get("Signer-Auth-Id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth_id.is_empty() && state.auth_id != auth_id {
        if !state.auth_id.is_empty() {
            return Err(refuse(500, "remote signer auth ID changed"));
        }
        state.auth_id = auth_id.to_string();
    }

    // :709-773: the signed state, the payment and the credentials.
    let state_bytes = serde_json::to_vec(&state).expect("state JSON");
    let state_sig = lock(&shared.gateway).eth_sign(&state_bytes);
    call.payment = Some(payment.clone());
    call.seg_data = Some(seg.clone());
    Ok(json!({
        "payment": b64().encode(payment.encode_to_vec()),
        "segCreds": b64().encode(seg.encode_to_vec()),
        "state": {"State": b64().encode(&state_bytes), "Sig": b64().encode(&state_sig)},
    }))
}

/// go-ethereum's `BytesToAddress`: the last 20 bytes, left-padded.
fn go_address(b: &[u8]) -> Address {
    let mut a = [0u8; 20];
    let tail = &b[b.len().saturating_sub(20)..];
    a[20 - tail.len()..].copy_from_slice(tail);
    Address::from(a)
}

/// `core.RandomManifestID()`: 4 random bytes in hex.
fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}
