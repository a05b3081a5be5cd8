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
use std::time::{Duration, Instant};

use alloy_primitives::Address;
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

/// A metered session's payer.
#[derive(Debug, Clone)]
struct Billing {
    sender: Address,
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
                tracing::warn!(error = %e, "no ticket params for a live runner payer");
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

    /// Processes the reservation's payment and starts billing the session
    /// reserved for it; on any refusal the caller releases the session.
    pub async fn pay(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        admitted: &Admitted,
        wei: WeiPrice,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), Response> {
        if let Err(e) = self
            .payments
            .process(
                &admitted.payment,
                &admitted.sid,
                Work::LiveRunner(wei_as_price(wei)),
            )
            .await
        {
            tracing::warn!(session = %admitted.sid, sender = %admitted.sender, error = %e, "live runner payment refused");
            let (status, msg) = credentials::refusal(&e);
            return Err(text(status, msg));
        }
        if wei.unit == BillingUnit::Fixed {
            // Paid once, at once.
            return self
                .payments
                .try_debit(admitted.sender, &admitted.sid, 1)
                .map(|_| ())
                .map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()));
        }
        {
            let mut billing = self.billing.lock().expect("billing");
            if billing.len() >= MAX_BILLED {
                return Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many live runner sessions",
                ));
            }
            billing.insert(
                admitted.sid.clone(),
                Billing {
                    sender: admitted.sender,
                },
            );
        }
        self.spawn_metering(
            registry.clone(),
            admitted.sid.clone(),
            admitted.sender,
            wei.unit,
            cancel,
        );
        Ok(())
    }

    /// Bills the session every interval for the time since it was last
    /// billed (the billed time advancing only by what was billed, so
    /// rounding never loses a unit), until it ends; releases it when its
    /// credit is short (go-livepeer's LivePaymentProcessor).
    fn spawn_metering(
        self: &Arc<Self>,
        registry: Arc<Registry>,
        sid: String,
        sender: Address,
        unit: BillingUnit,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let me = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            let per_second = unit.units_per_second() as f64;
            let mut billed_until = Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(me) = me.upgrade() else { return };
                let elapsed = billed_until.elapsed().as_secs_f64();
                let units = (per_second * elapsed) as u64;
                billed_until += Duration::from_secs_f64(units as f64 / per_second);
                if let Err(e) = me.payments.try_debit(sender, &sid, units) {
                    tracing::info!(session = %sid, %sender, units, error = %e, "live runner session out of credit: released");
                    registry.release(&sid, Release::Unpaid);
                    break;
                }
            }
            if let Some(me) = me.upgrade() {
                me.billing.lock().expect("billing").remove(&sid);
            }
        });
    }

    /// `POST /apps/{route}/session/{sid}/payment`: more credit for a
    /// metered session; answers a protobuf `PaymentResult`.
    pub async fn top_up(&self, sid: &str, headers: &HeaderMap) -> Response {
        let billing = self.billing.lock().expect("billing").get(sid).cloned();
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
        let price = self
            .payments
            .session_price_of(billing.sender, sid)
            .unwrap_or_else(|| Price::new(0, 1).expect("denominator 1"));
        if let Err(e) = self
            .payments
            .process(&payment, sid, Work::LiveRunner(price))
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
