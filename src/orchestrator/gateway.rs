//! What gateways talk to: the `net.Orchestrator` gRPC service and the HTTP
//! endpoints (`POST /segment`, `GET /stream/...`), both on one TLS port as
//! go-livepeer serves them.

use std::sync::Arc;

use alloy_primitives::{keccak256, Address};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use tonic::{Request, Status};
use tracing::{info, warn};

use super::auth::AuthTokens;
use super::media::MediaStore;
use super::payments::{Payments, Reservation, Work};
use super::workers::WorkerPool;
use crate::lp_rpc::segment::job_from_seg_data;
use crate::proto::{lp_rpc as net, worker as pb};
use crate::video::{Gop, H264Profile, OutputContainer, VideoCodec};

/// The shim's gateway-facing state.
pub struct Gateway {
    /// Public URI gateways reach this node at (`https://host:port`).
    pub service_uri: String,
    /// This orchestrator's other instances (`-nodes`), in every
    /// OrchestratorInfo.
    pub nodes: Vec<String>,
    pub auth: Arc<AuthTokens>,
    pub workers: Arc<WorkerPool>,
    pub media: MediaStore,
    /// What the workers behind the shim can do, in go-livepeer's encoding.
    pub capabilities: net::Capabilities,
    pub price: net::PriceInfo,
    pub max_segment_bytes: usize,
    /// Memory and time allowed to request bodies being read.
    pub bodies: crate::listener::BodyBudget,
    /// Ticket payments; `None` off chain.
    pub payments: Option<Arc<Payments>>,
    /// Trickle channels served at `/ai/trickle/`.
    pub trickle: Arc<crate::trickle::TrickleServer>,
    /// Live Runners hosted here; `None` when not enabled.
    pub runners: Option<Arc<super::runners::LiveRunners>>,
    /// go-livepeer remote transcoders; `None` without `-orchSecret`.
    pub transcoders: Option<Arc<super::transcoders::RemoteTranscoders>>,
}

impl Gateway {
    /// What this node offers now: the workers' capabilities and those of
    /// the remote transcoders registered at the moment.
    fn capabilities_now(&self) -> net::Capabilities {
        let mut capabilities = self.capabilities.clone();
        if let Some(pool) = &self.transcoders {
            pool.add_capabilities(&mut capabilities);
        }
        capabilities
    }

    /// go-livepeer's `orchId` in task notifications: the node's address,
    /// or "offchain".
    pub fn orch_id(&self) -> String {
        self.payments
            .as_ref()
            .map_or_else(|| "offchain".into(), |p| p.address().to_string())
    }

    /// OrchestratorInfo for a gateway: with a chain, fresh ticket params for
    /// `sender` at this node's price and the node's address.
    async fn info(
        &self,
        auth_token: Option<net::AuthToken>,
        sender: Option<Address>,
    ) -> net::OrchestratorInfo {
        self.info_for(auth_token, sender, Work::Video).await
    }

    /// OrchestratorInfo priced for `work` (an AI model's own price, a
    /// gateway's override, or the base price), with the per-model list.
    async fn info_for(
        &self,
        auth_token: Option<net::AuthToken>,
        sender: Option<Address>,
        work: Work<'_>,
    ) -> net::OrchestratorInfo {
        let mut capabilities = self.capabilities_now();
        if let Some(runners) = &self.runners {
            // Live video: what the Live Runners registered now can take.
            super::runners::lv2v::add_capability(&mut capabilities, &runners.registry);
        }
        let mut info = net::OrchestratorInfo {
            transcoder: self.service_uri.clone(),
            nodes: self.nodes.clone(),
            price_info: Some(self.price.clone()),
            capabilities: Some(capabilities),
            auth_token: Some(auth_token.unwrap_or_else(|| self.auth.issue(sender))),
            ..Default::default()
        };
        if let Some(p) = &self.payments {
            info.address = p.address().to_vec();
            let price = p.quote(sender, work).await;
            info.price_info = Some(net::PriceInfo {
                price_per_unit: i64::try_from(price.num).unwrap_or(i64::MAX),
                pixels_per_unit: i64::try_from(price.den).unwrap_or(i64::MAX),
                ..Default::default()
            });
            info.capabilities_prices = p.model_prices();
            match p
                .ticket_params(sender.unwrap_or(Address::ZERO), price)
                .await
            {
                Ok(params) => info.ticket_params = params,
                Err(e) => {
                    // Any fresh key can ask: an unfunded sender is common.
                    if let Some(suppressed) = super::credentials::refusal_log(&e).check() {
                        warn!(error = %e, ?sender, suppressed, "no ticket params for gateway (suppressed: like lines since the last)");
                    }
                }
            }
        }
        info
    }
}

/// The gRPC `net.Orchestrator` service.
pub struct OrchestratorService(pub Arc<Gateway>);

#[tonic::async_trait]
impl net::orchestrator_server::Orchestrator for OrchestratorService {
    async fn get_orchestrator(
        &self,
        request: Request<net::OrchestratorRequest>,
    ) -> Result<tonic::Response<net::OrchestratorInfo>, Status> {
        let req = request.into_inner();
        let sender = match &self.0.payments {
            // Off chain there is no identity to check, as in go-livepeer.
            None => None,
            Some(p) => Some(p.verify_gateway(&req.address, &req.sig).map_err(|e| {
                Status::permission_denied(format!("Invalid orchestrator request: {e}"))
            })?),
        };
        // A gateway asking for one AI model gets params at that model's price.
        let requested =
            req.capabilities
                .as_ref()
                .and_then(|c| c.constraints.as_ref())
                .and_then(|c| {
                    let mut models = c.per_capability.iter().flat_map(|(cap, m)| {
                        m.models.keys().map(move |model| (*cap, model.as_str()))
                    });
                    let first = models.next()?;
                    models.next().is_none().then_some(first)
                });
        let work = requested.map_or(Work::Video, |(capability, model)| Work::Ai {
            capability,
            model,
        });
        Ok(tonic::Response::new(
            self.0.info_for(None, sender, work).await,
        ))
    }

    async fn end_transcoding_session(
        &self,
        request: Request<net::EndTranscodingSessionRequest>,
    ) -> Result<tonic::Response<net::EndTranscodingSessionResponse>, Status> {
        // Workers are stateless: ending a session only needs a valid token;
        // a remote transcoder that served it is told, as go-livepeer tells it.
        let token = request.into_inner().auth_token;
        let session = self
            .0
            .auth
            .verify(token.as_ref())
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        if let Some(pool) = &self.0.transcoders {
            pool.end_session(session);
        }
        Ok(tonic::Response::new(net::EndTranscodingSessionResponse {}))
    }

    async fn ping(
        &self,
        request: Request<net::PingPong>,
    ) -> Result<tonic::Response<net::PingPong>, Status> {
        // go-livepeer answers with its signature of the value; off chain that is empty.
        let value = match &self.0.payments {
            Some(p) => p.sign(&request.into_inner().value),
            None => Vec::new(),
        };
        Ok(tonic::Response::new(net::PingPong { value }))
    }
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An engine profile in the worker API's terms.
fn worker_profile(p: &crate::video::VideoProfile) -> pb::VideoProfile {
    pb::VideoProfile {
        name: p.name.clone(),
        width: p.width,
        height: p.height,
        bitrate: p.bitrate,
        fps: p.fps,
        fps_den: p.fps_den,
        profile: match p.h264_profile {
            None => "",
            Some(H264Profile::Baseline) => "H264Baseline",
            Some(H264Profile::Main) => "H264Main",
            Some(H264Profile::High) => "H264High",
            Some(H264Profile::ConstrainedHigh) => "H264ConstrainedHigh",
        }
        .into(),
        gop: match p.gop {
            Gop::Default => String::new(),
            Gop::Intra => "intra".into(),
            Gop::Seconds(s) => s.to_string(),
        },
        encoder: match p.codec {
            VideoCodec::H264 => "H.264".into(),
            VideoCodec::Hevc => "HEVC".into(),
        },
        quality: p.quality.unwrap_or(0),
        container: p.format.map(|f| match f {
            OutputContainer::Mpegts => pb::Container::Mpegts as i32,
            OutputContainer::Mp4 => pb::Container::Mp4 as i32,
        }),
    }
}

/// `POST /segment`: go-livepeer's segment submission. Credentials and payment
/// problems are refused before any work (402/403/400); once accepted the
/// answer is 200 with a protobuf `TranscodeResult` holding either rendition
/// URLs on this node or the error.
pub async fn segment(State(gw): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    // Credentials from the headers alone: a stranger announcing a large
    // body is refused before any of it is read or buffered.
    let (session, seg, payment) = match credentials(&gw, request.headers()).await {
        Ok(c) => c,
        Err((status, msg)) => return text(status, msg),
    };
    let job = match job_from_seg_data(&seg, &gw.capabilities_now()) {
        Ok(j) => j,
        Err(e @ crate::lp_rpc::segment::SegmentError::Incompatible) => {
            return text(StatusCode::FORBIDDEN, e.to_string())
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let _room = match gw.bodies.reserve(request.headers(), gw.max_segment_bytes) {
        Ok(room) => room,
        Err(e) => return text(e.status(), e.to_string()),
    };
    let read = axum::body::to_bytes(request.into_body(), gw.max_segment_bytes);
    let body = match gw.bodies.within_deadline(read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return text(StatusCode::PAYLOAD_TOO_LARGE, "segment too large"),
        Err(e) => return text(e.status(), e.to_string()),
    };
    let estimate = estimated_pixels(&job.profiles, job.duration_ms);
    let (sender, reservation) = match pay(&gw, &payment, &session, Work::Video, estimate).await {
        Ok(s) => s,
        Err((status, msg)) => return text(status, msg),
    };
    if keccak256(&body).as_slice() != seg.hash.as_slice() {
        return text(StatusCode::FORBIDDEN, "Forbidden");
    }

    let request = pb::TranscodeRequest {
        request_id: format!("{session}-{}", seg.seq),
        source: Some(pb::transcode_request::Source::Segment(body.to_vec())),
        profiles: job.profiles.iter().map(worker_profile).collect(),
        timeout_ms: (u64::from(job.duration_ms) * 4).max(8000) as u32,
        ..Default::default()
    };
    let result = match super::routing::transcode(&gw, &seg, job.duration_ms, body, request).await {
        Ok(t) => {
            let mut segments = Vec::new();
            let mut hashes = Vec::new();
            for ((h, data), profile) in t.renditions.into_iter().zip(&job.profiles) {
                hashes.extend_from_slice(keccak256(&data).as_slice());
                let container = profile.format.unwrap_or(OutputContainer::Mpegts);
                let path = format!(
                    "stream/{session}/{}/{}.{}",
                    profile.name,
                    seg.seq,
                    container.extension()
                );
                gw.media.put(
                    path.clone(),
                    Bytes::from(data),
                    crate::lp_rpc::results::mime(container),
                );
                segments.push(net::TranscodedSegmentData {
                    url: format!("{}/{path}", gw.service_uri),
                    pixels: h.pixels as i64,
                    ..Default::default()
                });
            }
            let pixels: i64 = segments.iter().map(|s| s.pixels).sum();
            let mut sig = Vec::new();
            if let (Some(p), Some(reservation)) = (&gw.payments, reservation) {
                let fee = reservation.settle(pixels.max(0) as u64);
                // go-livepeer's TranscodeData.sig: personal-sign over
                // keccak256 of the renditions' keccak256 hashes.
                sig = p.sign_hash(keccak256(&hashes));
                info!(session = %session, seq = seg.seq, fee_wei = %fee, "fees debited");
            }
            info!(session = %session, seq = seg.seq, renditions = segments.len(), pixels, "segment transcoded");
            net::transcode_result::Result::Data(net::TranscodeData { segments, sig })
        }
        Err(status) => {
            warn!(session = %session, seq = seg.seq, code = ?status.code(), error = status.message(), "segment failed");
            net::transcode_result::Result::Error(status.message().to_string())
        }
    };
    let reply = net::TranscodeResult {
        seq: seg.seq,
        result: Some(result),
        info: Some(gw.info(seg.auth_token.clone(), sender).await),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        reply.encode_to_vec(),
    )
        .into_response()
}

/// `GET /stream/<session>/<profile>/<seq>.<ext>`: a stored rendition.
pub async fn stream(State(gw): State<Arc<Gateway>>, Path(path): Path<String>) -> Response {
    // A remote transcoder fetching the input of its task.
    if let Some(input) = gw
        .transcoders
        .as_ref()
        .and_then(|pool| pool.input(&format!("stream/{path}")))
    {
        return ([(axum::http::header::CONTENT_TYPE, "video/mp2t")], input).into_response();
    }
    match gw.media.get(&format!("stream/{path}")) {
        Some((data, mime)) => ([(axum::http::header::CONTENT_TYPE, mime)], data).into_response(),
        None => text(StatusCode::NOT_FOUND, "not found"),
    }
}

pub(crate) async fn credentials(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<(String, net::SegData, net::Payment), (StatusCode, String)> {
    super::credentials::check(&gw.auth, gw.payments.as_deref(), headers).await
}

/// Processes a payment for `manifest` and reserves the work's estimated
/// cost (`units` at the session's price) from the balance, as go-livepeer
/// checks the balance before any work: payment errors are 400 (503 when
/// the node itself cannot check), a short balance 400 "Insufficient
/// balance". Returns the paying sender (`None` off chain) and the
/// reservation to settle once the work's real size is known.
pub(crate) async fn pay(
    gw: &Gateway,
    payment: &net::Payment,
    manifest: &str,
    work: Work<'_>,
    units: u64,
) -> Result<(Option<Address>, Option<Reservation>), (StatusCode, String)> {
    let Some(p) = &gw.payments else {
        return Ok((None, None));
    };
    let sender = (payment.sender.len() == 20).then(|| Address::from_slice(&payment.sender));
    if let Err(e) = p.process(payment, manifest, work).await {
        // Never the manifest itself: for AI it comes from the request.
        if let Some(suppressed) = super::credentials::refusal_log(&e).check() {
            warn!(manifest_len = manifest.len(), ?sender, error = %e, suppressed, "payment refused (suppressed: like lines since the last)");
        }
        return Err(super::credentials::refusal(&e));
    }
    match p.reserve(sender, manifest, work, units) {
        Ok(r) => Ok((sender, Some(r))),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// Output pixels a segment will be billed, estimated before it runs:
/// each rendition's width × height × frames over the segment's duration
/// (go-livepeer's default of 2 s when the gateway sent none; the source
/// rate, unknown here, is taken as 30 fps where a profile keeps it).
fn estimated_pixels(profiles: &[crate::video::VideoProfile], duration_ms: u32) -> u64 {
    let seconds = if duration_ms == 0 {
        2.0
    } else {
        f64::from(duration_ms) / 1000.0
    };
    profiles
        .iter()
        .map(|p| {
            let fps = if p.fps == 0 {
                30.0
            } else {
                f64::from(p.fps) / f64::from(p.fps_den.max(1))
            };
            let frames = (seconds * fps).ceil() as u64;
            u64::from(p.width) * u64::from(p.height) * frames
        })
        .sum()
}

/// Longest `SegData.ManifestID` a `/payment` may credit: it becomes a
/// balance key, and the header could otherwise make it ~400 KiB.
const MAX_MANIFEST_ID: usize = 256;

/// The balance a `/payment` credits: the segment credentials' manifest
/// ID (UTF-8, at most [`MAX_MANIFEST_ID`] bytes), whatever session the
/// auth token names.
fn credited_manifest(seg: &net::SegData) -> Option<&str> {
    std::str::from_utf8(&seg.manifest_id)
        .ok()
        .filter(|m| m.len() <= MAX_MANIFEST_ID)
}

/// `POST /payment`: credit without work (go-livepeer's payment endpoint,
/// `server/segment_rpc.go`): the balance credited is (sender,
/// `SegData.ManifestID`), not the auth token's session, so a live stream's
/// gateway tops up the stream it names. The auth token is checked all the
/// same. Answers a protobuf `PaymentResult` with fresh params.
pub async fn payment(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let (_, seg, payment) = match credentials(&gw, &headers).await {
        Ok(c) => c,
        Err((status, msg)) => return text(status, msg),
    };
    let Some(manifest) = credited_manifest(&seg) else {
        return text(StatusCode::BAD_REQUEST, "invalid manifest ID");
    };
    let sender = (payment.sender.len() == 20).then(|| Address::from_slice(&payment.sender));
    if let Some(p) = &gw.payments {
        if let Err(e) = p.process(&payment, manifest, Work::Credit).await {
            if let Some(suppressed) = super::credentials::refusal_log(&e).check() {
                warn!(?sender, error = %e, suppressed, "payment refused (suppressed: like lines since the last)");
            }
            let (status, msg) = super::credentials::refusal(&e);
            return text(status, msg);
        }
    }
    let reply = net::PaymentResult {
        info: Some(gw.info(seg.auth_token.clone(), sender).await),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
        reply.encode_to_vec(),
    )
        .into_response()
}

/// `POST /<pipeline>`: an ai-runner request, paid (off chain: credentialed)
/// like a segment, run on a worker serving the model. Gateways that announce
/// `Authorization: Livepeer-AI-Worker-1.0` get media URLs on this node, older
/// ones data URLs, as go-livepeer answers them.
pub async fn ai(
    State(gw): State<Arc<Gateway>>,
    Path(route): Path<String>,
    request: axum::extract::Request,
) -> Response {
    use crate::ai::{AiError, PipelineKind};
    use crate::ai_runner_api::error::{error_response, respond};
    // lpworker's own pipelines have no capability to pay for: not routed here.
    let Some((kind, capability)) =
        PipelineKind::from_name(&route).and_then(|k| Some((k, k.capability()?)))
    else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let (session, _, payment) = match credentials(&gw, request.headers()).await {
        Ok(c) => c,
        Err((status, msg)) => return text(status, msg),
    };
    let store_urls =
        header(request.headers(), "Authorization") == crate::lp_rpc::results::AI_WORKER_AUTH;
    let _room = match gw.bodies.reserve(request.headers(), gw.max_segment_bytes) {
        Ok(room) => room,
        Err(e) => return respond(e.status(), &AiError::Busy(e.to_string())),
    };
    let read = crate::ai_runner_api::read_request(kind, request);
    let req = match gw.bodies.within_deadline(read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return e.response(kind),
        Err(e) => return respond(e.status(), &AiError::Busy(e.to_string())),
    };
    let model_id = match req.string(kind.model_field()) {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return error_response(kind, &e),
    };
    // The work must be a model the workers serve, priced as itself: an
    // unnamed model is the one a worker would run (the pipeline's first),
    // and an unknown one is refused before any payment or state.
    let served: Vec<String> = gw
        .workers
        .pipelines()
        .into_iter()
        .filter(|(p, _)| p == kind.name())
        .map(|(_, m)| m)
        .collect();
    let model_id = if model_id.is_empty() {
        match served.first() {
            Some(m) => m.clone(),
            None => {
                return error_response(
                    kind,
                    &AiError::BadRequest(format!("no model is served for {}", kind.name())),
                )
            }
        }
    } else if served.contains(&model_id) {
        model_id
    } else {
        // Named back, but never at the length a stranger chose.
        let shown: String = model_id.chars().take(64).collect();
        let more = if shown.len() < model_id.len() {
            "…"
        } else {
            ""
        };
        return error_response(
            kind,
            &AiError::BadRequest(format!(
                "model {shown:?}{more} is not served by this orchestrator for {}",
                kind.name()
            )),
        );
    };
    // go-livepeer's AI balance key: "<capability>_<model id>". AI work is
    // paid like video but never gated by stake.
    let manifest = format!("{capability}_{model_id}");
    let work = Work::Ai {
        capability,
        model: &model_id,
    };
    let estimate = estimated_ai_units(kind, &req);
    let (sender, reservation) = match pay(&gw, &payment, &manifest, work, estimate).await {
        Ok(s) => s,
        Err((status, msg)) => return text(status, msg),
    };
    let infer = pb::InferRequest {
        request_id: format!("{session}-{}", uuid::Uuid::new_v4()),
        pipeline: kind.name().to_string(),
        model_id,
        params_json: serde_json::to_vec(&req.params).expect("JSON values serialize"),
        files: req.files.into_iter().collect(),
        timeout_ms: 15 * 60 * 1000,
    };
    let request_id = infer.request_id.clone();
    let result = match gw.workers.infer(infer).await {
        Ok(r) => r,
        Err(s) => {
            let e = match s.code() {
                tonic::Code::NotFound | tonic::Code::InvalidArgument => {
                    AiError::BadRequest(s.message().to_string())
                }
                tonic::Code::ResourceExhausted => {
                    // go-livepeer's orchestrator answers 503 when no worker
                    // has capacity.
                    let e = AiError::Busy(format!("insufficient capacity: {}", s.message()));
                    return respond(StatusCode::SERVICE_UNAVAILABLE, &e);
                }
                _ => AiError::Internal(s.message().to_string()),
            };
            return error_response(kind, &e);
        }
    };
    let mut body: serde_json::Value = match serde_json::from_slice(&result.result_json) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                kind,
                &AiError::Internal(format!("worker sent invalid JSON: {e}")),
            )
        }
    };
    let files: Vec<crate::ai::OutputFile> = result
        .files
        .into_iter()
        .map(|(name, data)| {
            let mime = if name.ends_with(".png") {
                "image/png"
            } else {
                "application/octet-stream"
            };
            crate::ai::OutputFile { name, mime, data }
        })
        .collect();
    crate::ai_runner_api::resolve_urls(&mut body, &files, &|f| {
        if store_urls {
            let path = format!("stream/{request_id}/{}", f.name);
            gw.media
                .put(path.clone(), Bytes::from(f.data.clone()), f.mime);
            format!("{}/{path}", gw.service_uri)
        } else {
            crate::ai::media::data_url(f.mime, &f.data)
        }
    });
    if let Some(r) = reservation {
        let fee = r.settle(result.units);
        info!(session = %session, ?sender, fee_wei = %fee, "fees debited");
    }
    info!(session = %session, pipeline = kind.name(), units = result.units, "ai request served");
    axum::Json(body).into_response()
}

/// Billing units an AI request will come to, estimated before it runs
/// from what the request says (go-livepeer computes its output pixels up
/// front too): output pixels for the image pipelines, input pixels for
/// image-to-text. 0 where the request does not tell (audio length, tokens
/// generated): such work is admitted on one ticket's EV of credit.
fn estimated_ai_units(kind: crate::ai::PipelineKind, req: &crate::ai::PipelineRequest) -> u64 {
    use crate::ai::PipelineKind as K;
    let number = |name: &str, default: u64| {
        req.params
            .get(name)
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(default)
    };
    let image_pixels = || {
        req.files
            .get("image")
            .and_then(|data| {
                image::ImageReader::new(std::io::Cursor::new(data))
                    .with_guessed_format()
                    .ok()?
                    .into_dimensions()
                    .ok()
            })
            .map_or(0, |(w, h)| u64::from(w) * u64::from(h))
    };
    match kind {
        // 2x upscalers give four times the input's pixels.
        K::Upscale => image_pixels().saturating_mul(4),
        K::ImageToImage => image_pixels().saturating_mul(number("num_images_per_prompt", 1)),
        K::ImageToText => image_pixels(),
        K::TextToImage => number("width", 512)
            .saturating_mul(number("height", 512))
            .saturating_mul(number("num_images_per_prompt", 1)),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_credits_the_manifest_it_names_not_the_tokens_session() {
        let seg = net::SegData {
            manifest_id: b"0a1b2c3d".to_vec(),
            auth_token: Some(net::AuthToken {
                session_id: "ffffffff".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(credited_manifest(&seg), Some("0a1b2c3d"));
        let long = net::SegData {
            manifest_id: vec![b'a'; MAX_MANIFEST_ID + 1],
            ..Default::default()
        };
        assert_eq!(credited_manifest(&long), None);
        let binary = net::SegData {
            manifest_id: vec![0xff, 0xfe],
            ..Default::default()
        };
        assert_eq!(credited_manifest(&binary), None);
    }
}
