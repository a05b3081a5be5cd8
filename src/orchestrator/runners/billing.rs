//! Paying for Live Runner sessions on chain, as go-livepeer 0.9 does
//! (`server/ai_http.go` 264-591, `server/live_payment_processor.go` at
//! 176aa415): a reservation without payment is answered `402` with ticket
//! params for the payer; the retry carries the payment, the session is
//! reserved under the challenge's manifest ID and metered every interval
//! in its unit (or debited once for `fixed`); a session whose credit runs
//! short is released. Tickets go through the shim's one payment path
//! (validation, the crash-safe winner store, redemption).
//!
//! Beyond go-livepeer, the manifest ID is an auth-token session ID bound
//! to the payer named in the challenge, so no one else's tickets or
//! signature can pay for (or spend the credit of) that session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, U256};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use prost::Message;

use super::text;
use crate::live_runner::price::{BillingUnit, EthUsdSource, WeiPrice};
use crate::live_runner::spec::RunnerSpec;
use crate::live_runner::wire::WeiPriceInfo;
use crate::live_runner::{Registry, Release};
use crate::orchestrator::auth::AuthTokens;
use crate::orchestrator::credentials;
use crate::orchestrator::payments::{Payments, Work};
use crate::pm::recipient::Price;
use crate::proto::lp_rpc as net;

/// Most sessions metered at once (a bound on tasks and state).
const MAX_BILLED: usize = 100_000;

/// A metered session's payer and the price it was reserved at.
#[derive(Debug, Clone)]
struct Billing {
    sender: Address,
    wei: WeiPrice,
}

/// A metered session as kept over a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BillingRecord {
    pub sid: String,
    pub sender: Address,
    pub wei: WeiPrice,
    /// Credit left, in wei (decimal).
    pub balance: String,
}

/// The balance a Live Runner session's payments go to: a key of its own,
/// so credit bought elsewhere (`/payment`, segments, AI) at another price
/// can neither pay for it nor be spent by it.
fn balance_key(sid: &str) -> String {
    format!("live-runner:{sid}")
}

pub struct LivePayments {
    payments: Arc<Payments>,
    auth: Arc<AuthTokens>,
    prices: Arc<dyn EthUsdSource>,
    /// go-livepeer's -livePaymentInterval.
    interval: Duration,
    service_uri: String,
    billing: Mutex<HashMap<String, Billing>>,
}

/// A payment checked but not yet processed: who pays, for which session.
pub struct Admitted {
    pub sid: String,
    pub sender: Address,
    payment: net::Payment,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message}})),
    )
        .into_response()
}

fn wei_as_price(wei: WeiPrice) -> Price {
    Price::new(u128::from(wei.wei), 1).expect("denominator 1")
}

impl LivePayments {
    pub fn new(
        payments: Arc<Payments>,
        auth: Arc<AuthTokens>,
        prices: Arc<dyn EthUsdSource>,
        interval: Duration,
        service_uri: &str,
    ) -> Arc<LivePayments> {
        Arc::new(LivePayments {
            payments,
            auth,
            prices,
            interval: interval.max(Duration::from_millis(100)),
            service_uri: service_uri.trim_end_matches('/').to_string(),
            billing: Mutex::default(),
        })
    }

    /// A runner's price in wei now; `Err` when it has none or no fresh
    /// ETH/USD reading is at hand (new sessions are then refused).
    pub fn wei_price(&self, spec: &RunnerSpec) -> Result<WeiPrice, String> {
        let usd = spec.price.as_ref().ok_or("the runner has no price")?;
        let eth = self.prices.eth_usd()?;
        usd.to_wei(&eth).map_err(|e| e.to_string())
    }

    /// How often live work is billed (-livePaymentInterval).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Discovery's `price_info`, or nothing when there is no price now.
    pub fn advertised(&self, spec: &RunnerSpec) -> Option<WeiPriceInfo> {
        self.wei_price(spec).ok().map(|w| WeiPriceInfo {
            price: w.wei,
            currency: "wei".into(),
            unit: w.unit.as_str().into(),
        })
    }

    async fn info(
        &self,
        payer: Address,
        price: Price,
        auth_token: net::AuthToken,
    ) -> Result<net::OrchestratorInfo, Response> {
        let params = self
            .payments
            .ticket_params(payer, price)
            .await
            .map_err(|e| {
                if let Some(suppressed) = credentials::refusal_log(&e).check() {
                    tracing::warn!(error = %e, %payer, suppressed, "no ticket params for a live runner payer (suppressed: like lines since the last)");
                }
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "payments are unavailable, try again",
                )
            })?;
        Ok(net::OrchestratorInfo {
            transcoder: self.service_uri.clone(),
            ticket_params: params,
            price_info: Some(net::PriceInfo {
                price_per_unit: i64::try_from(price.num).unwrap_or(i64::MAX),
                pixels_per_unit: i64::try_from(price.den).unwrap_or(i64::MAX),
                ..Default::default()
            }),
            address: self.payments.address().to_vec(),
            auth_token: Some(auth_token),
            ..Default::default()
        })
    }

    /// The `402` answer: ticket params for `Livepeer-Payer-Address` and a
    /// manifest ID that only that payer's tickets can pay for.
    pub async fn challenge(&self, route: &str, headers: &HeaderMap, wei: WeiPrice) -> Response {
        let payer = headers
            .get("Livepeer-Payer-Address")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Address>().ok())
            .filter(|a| !a.is_zero());
        let Some(payer) = payer else {
            return json_error(
                StatusCode::PAYMENT_REQUIRED,
                "invalid live runner payment signer address",
            );
        };
        // 96 random bits: the session ID is its URLs' only secret.
        let token = self.auth.issue_random(Some(payer), 24);
        let manifest = token.session_id.clone();
        let info = match self.info(payer, wei_as_price(wei), token).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        (
            StatusCode::PAYMENT_REQUIRED,
            Json(serde_json::json!({
                "payment_params": b64().encode(info.encode_to_vec()),
                "orchestrator": self.service_uri,
                "manifest_id": manifest,
                "payment_url": format!("{}/apps/{route}/session/{manifest}/payment", self.service_uri),
            })),
        )
            .into_response()
    }

    /// Checks a paid retry's credentials: the payment decodes (402), the
    /// segment credentials are the challenge's, signed by the payer (403).
    /// `fixed` prices must be paid exactly (400).
    pub async fn admit(&self, headers: &HeaderMap, wei: WeiPrice) -> Result<Admitted, Response> {
        let (sid, seg, payment) = credentials::check(&self.auth, Some(&self.payments), headers)
            .await
            .map_err(|(status, msg)| text(status, msg))?;
        if seg.manifest_id != sid.as_bytes() {
            return Err(text(
                StatusCode::FORBIDDEN,
                "mismatched manifest and auth token",
            ));
        }
        if payment.sender.len() != 20 {
            return Err(text(StatusCode::BAD_REQUEST, "payment has no sender"));
        }
        if wei.unit == BillingUnit::Fixed {
            let exact = payment.expected_price.as_ref().is_some_and(|p| {
                p.pixels_per_unit == 1 && u64::try_from(p.price_per_unit) == Ok(wei.wei)
            });
            if !exact {
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    "payment price does not match live runner price",
                ));
            }
        }
        Ok(Admitted {
            sender: Address::from_slice(&payment.sender),
            sid,
            payment,
        })
    }

    /// Processes the reservation's payment into the session's own balance.
    /// Nothing is reserved yet: a client that hangs up here leaves credit,
    /// never a session.
    pub async fn process(&self, admitted: &Admitted, wei: WeiPrice) -> Result<(), Response> {
        if let Err(e) = self
            .payments
            .process(
                &admitted.payment,
                &balance_key(&admitted.sid),
                Work::LiveRunner(wei_as_price(wei)),
            )
            .await
        {
            if let Some(suppressed) = credentials::refusal_log(&e).check() {
                tracing::warn!(session = %admitted.sid, sender = %admitted.sender, error = %e, suppressed, "live runner payment refused (suppressed: like lines since the last)");
            }
            let (status, msg) = credentials::refusal(&e);
            return Err(text(status, msg));
        }
        Ok(())
    }

    /// Starts billing a session just reserved (no await: reservation and
    /// billing cannot be separated by a client hanging up). Billing is
    /// prepaid: `fixed` is debited once, a metered session its first
    /// interval, now; a credit short of that refuses the session.
    pub fn start(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        sid: &str,
        sender: Address,
        wei: WeiPrice,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), (StatusCode, &'static str)> {
        let key = balance_key(sid);
        let first = match wei.unit {
            BillingUnit::Fixed => U256::from(wei.wei),
            _ => self.interval_fee(wei),
        };
        if self.payments.try_debit_wei(sender, &key, first).is_err() {
            return Err((StatusCode::BAD_REQUEST, "Insufficient balance"));
        }
        {
            let mut billing = self.billing.lock().expect("billing");
            if billing.len() >= MAX_BILLED {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many live runner sessions",
                ));
            }
            billing.insert(sid.to_string(), Billing { sender, wei });
        }
        if wei.unit != BillingUnit::Fixed {
            self.spawn_metering(registry.clone(), sid.to_string(), cancel);
        } else {
            self.forget_when_done(sid.to_string(), cancel);
        }
        Ok(())
    }

    /// A fixed-price session is paid; its record goes when it ends.
    fn forget_when_done(
        self: &Arc<Self>,
        sid: String,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            cancel.cancelled().await;
            if let Some(me) = me.upgrade() {
                me.billing.lock().expect("billing").remove(&sid);
            }
        });
    }

    /// One interval of a metered session, in wei (whole units, rounded up).
    fn interval_fee(&self, wei: WeiPrice) -> U256 {
        let units = (wei.unit.units_per_second() as f64 * self.interval.as_secs_f64()).ceil();
        U256::from(units as u64) * U256::from(wei.wei)
    }

    /// Debits each interval ahead, at the runner's price the session was
    /// reserved at, until the session ends; releases it when its credit
    /// cannot cover the next interval.
    fn spawn_metering(
        self: &Arc<Self>,
        registry: Arc<Registry>,
        sid: String,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let me = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(me) = me.upgrade() else { return };
                let Some(b) = me.billing.lock().expect("billing").get(&sid).cloned() else {
                    break;
                };
                let fee = me.interval_fee(b.wei);
                if let Err(e) = me.payments.try_debit_wei(b.sender, &balance_key(&sid), fee) {
                    tracing::info!(session = %sid, sender = %b.sender, %fee, error = %e, "live runner session out of credit: released");
                    registry.release(&sid, Release::Unpaid);
                    break;
                }
            }
            if let Some(me) = me.upgrade() {
                me.billing.lock().expect("billing").remove(&sid);
            }
        });
    }

    /// Metered sessions' payers, prices and credit, for a restart.
    pub fn records(&self) -> Vec<BillingRecord> {
        let billing = self.billing.lock().expect("billing").clone();
        let mut out: Vec<BillingRecord> = billing
            .into_iter()
            .map(|(sid, b)| BillingRecord {
                balance: self
                    .payments
                    .balance(b.sender, &balance_key(&sid))
                    .max(alloy_primitives::I256::ZERO)
                    .to_string(),
                sid,
                sender: b.sender,
                wei: b.wei,
            })
            .collect();
        out.sort_by(|a, b| a.sid.cmp(&b.sid));
        out
    }

    /// Takes back metered sessions after a restart: their credit and their
    /// metering. Returns the sessions it billed again.
    pub fn restore(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        records: Vec<BillingRecord>,
        grants: impl Fn(&str) -> Option<tokio_util::sync::CancellationToken>,
    ) -> Vec<String> {
        let mut restored = Vec::new();
        for r in records {
            let Some(cancel) = grants(&r.sid) else {
                continue;
            };
            let amount: U256 = r.balance.parse().unwrap_or_default();
            if self
                .payments
                .restore_credit(r.sender, &balance_key(&r.sid), wei_as_price(r.wei), amount)
                .is_err()
            {
                continue;
            }
            self.billing.lock().expect("billing").insert(
                r.sid.clone(),
                Billing {
                    sender: r.sender,
                    wei: r.wei,
                },
            );
            if r.wei.unit == BillingUnit::Fixed {
                self.forget_when_done(r.sid.clone(), cancel);
            } else {
                self.spawn_metering(registry.clone(), r.sid.clone(), cancel);
            }
            restored.push(r.sid);
        }
        restored
    }

    /// `POST /refresh-payment` (go-livepeer `server/rpc.go`): new ticket
    /// params and a new auth token for a metered session whose params or
    /// token are about to expire, in the challenge's shape. The payment
    /// URL is the session's own (go-livepeer answers `/payment`, which
    /// here credits no Live Runner session).
    pub async fn refresh(&self, registry: &Registry, body: &[u8]) -> Response {
        #[derive(serde::Deserialize)]
        struct Refresh {
            #[serde(default)]
            sender: String,
            #[serde(default)]
            manifest_id: String,
        }
        let Ok(req) = serde_json::from_slice::<Refresh>(body) else {
            return json_error(StatusCode::BAD_REQUEST, "invalid request body");
        };
        let Ok(sender) = req.sender.trim().parse::<Address>() else {
            return json_error(StatusCode::BAD_REQUEST, "invalid sender address");
        };
        if req.manifest_id.is_empty() {
            return json_error(StatusCode::BAD_REQUEST, "missing manifest_id");
        }
        let billing = self
            .billing
            .lock()
            .expect("billing")
            .get(&req.manifest_id)
            .cloned()
            .filter(|b| b.sender == sender);
        let (Some(billing), Some(route)) = (billing, registry.session_route(&req.manifest_id))
        else {
            return self.refresh_paid_at_payment(sender, &req.manifest_id).await;
        };
        let token = self.auth.reissue(&req.manifest_id);
        let info = match self.info(sender, wei_as_price(billing.wei), token).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        Json(serde_json::json!({
            "payment_params": b64().encode(info.encode_to_vec()),
            "orchestrator": self.service_uri,
            "manifest_id": req.manifest_id,
            "payment_url": format!("{}/apps/{route}/session/{}/payment", self.service_uri, req.manifest_id),
        }))
        .into_response()
    }

    /// `/refresh-payment` for credit paid at `/payment` (a legacy
    /// live-video-to-video stream's manifest ID), as go-livepeer answers
    /// it: the price recorded at the first payment for (sender,
    /// manifest), `payment_url` = `/payment`; 409 without one. The token
    /// is a new session bound to the sender: `/payment` credits the
    /// manifest the segment credentials name, not the token's session.
    async fn refresh_paid_at_payment(&self, sender: Address, manifest: &str) -> Response {
        let Some(price) = self.payments.recorded_price(sender, manifest) else {
            return text(StatusCode::CONFLICT, "fixed price not found for session");
        };
        let token = self.auth.issue(Some(sender));
        let info = match self.info(sender, price, token).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        Json(serde_json::json!({
            "payment_params": b64().encode(info.encode_to_vec()),
            "orchestrator": self.service_uri,
            "manifest_id": manifest,
            "payment_url": format!("{}/payment", self.service_uri),
        }))
        .into_response()
    }

    /// `POST /apps/{route}/session/{sid}/payment`: more credit for a
    /// metered session; answers a protobuf `PaymentResult`.
    pub async fn top_up(&self, sid: &str, headers: &HeaderMap) -> Response {
        let billing = self
            .billing
            .lock()
            .expect("billing")
            .get(sid)
            .cloned()
            .filter(|b| b.wei.unit != BillingUnit::Fixed);
        let Some(billing) = billing else {
            // Reserved but not metered: a fixed-price session.
            return text(
                StatusCode::CONFLICT,
                "fixed-price live runner sessions take no further payment",
            );
        };
        let (token_sid, seg, payment) =
            match credentials::check(&self.auth, Some(&self.payments), headers).await {
                Ok(c) => c,
                Err((status, msg)) => return text(status, msg),
            };
        if seg.manifest_id != sid.as_bytes() || token_sid != sid {
            return text(
                StatusCode::FORBIDDEN,
                "mismatched session and payment manifest",
            );
        }
        if payment.sender.as_slice() != billing.sender.as_slice() {
            return text(
                StatusCode::FORBIDDEN,
                "payment sender is not the session's payer",
            );
        }
        let price = wei_as_price(billing.wei);
        if let Err(e) = self
            .payments
            .process(&payment, &balance_key(sid), Work::LiveRunner(price))
            .await
        {
            let (status, msg) = credentials::refusal(&e);
            return text(status, msg);
        }
        let token = seg.auth_token.clone().unwrap_or_default();
        let info = match self.info(billing.sender, price, token).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        (
            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
            net::PaymentResult { info: Some(info) }.encode_to_vec(),
        )
            .into_response()
    }
}

/// Where billing is kept over a restart, beside the registry's snapshot.
pub fn billing_file(state_file: &std::path::Path) -> std::path::PathBuf {
    state_file.with_file_name("live_billing.json")
}

/// Writes the billing records (owner-only, atomically).
pub fn save_records(path: &std::path::Path, records: &[BillingRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&serde_json::to_vec(records).expect("serializable"))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The records saved before a restart (none when there is no file).
pub fn load_records(path: &std::path::Path) -> std::io::Result<Vec<BillingRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
