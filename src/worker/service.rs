//! The `lpworker.v1.Worker` gRPC service: a thin adapter from requests to the
//! video service (admission, deadlines, cancellation and metrics live there)
//! and the AI pipelines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn, Instrument};

use super::fetch::{FetchError, Fetcher};
use super::metrics::Metrics;
use crate::ai::{AiError, PipelineKind, PipelineRequest, Registry};
use crate::proto::worker as pb;
use crate::video::probe::Capabilities;
use crate::video::profile::ProfileSpec;
use crate::video::{
    Admission, OutputContainer, Refusal, Slot, TranscodeOptions, TranscodeOutput, Transcoder,
    VideoError, VideoProfile, VideoService,
};

/// Rendition bytes per response message: well under gRPC's customary 4 MiB.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Per-request limits.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Longest a request may run when the caller sets no shorter deadline.
    pub timeout: Duration,
    /// Largest segment accepted, inline or fetched.
    pub max_segment_bytes: usize,
    /// Most renditions per request.
    pub max_profiles: usize,
    /// x264/x265 preset.
    pub preset: String,
}

pub struct WorkerService {
    registry: Arc<Registry>,
    /// Transcodes; its admission is the worker's, shared with `Infer`.
    video: VideoService,
    capabilities: Capabilities,
    metrics: Metrics,
    fetcher: Fetcher,
    limits: RequestLimits,
}

impl WorkerService {
    pub fn new(
        transcoder: Transcoder,
        capabilities: Capabilities,
        admission: Arc<Admission>,
        metrics: Metrics,
        fetcher: Fetcher,
        limits: RequestLimits,
        registry: Arc<Registry>,
    ) -> Self {
        metrics.capacity.set(i64::from(admission.capacity()));
        let video =
            VideoService::new(transcoder, admission).with_metrics(Arc::new(metrics.clone()));
        WorkerService {
            registry,
            video,
            capabilities,
            metrics,
            fetcher,
            limits,
        }
    }

    /// A slot of the worker's capacity (the video service counts it, the
    /// metrics hooks see it), or the refusal as a gRPC status.
    fn admit(&self, method: &str) -> Result<Slot, Status> {
        self.video.try_admit().map_err(|refusal| {
            let status = match refusal {
                Refusal::Full { capacity } => Status::resource_exhausted(format!(
                    "worker is at capacity ({capacity} sessions); retry on another worker"
                )),
                Refusal::Draining => Status::unavailable("worker is draining for shutdown"),
            };
            self.count(method, &status);
            status
        })
    }

    fn count(&self, method: &str, status: &Status) {
        self.metrics
            .requests
            .with_label_values(&[method, &format!("{:?}", status.code())])
            .inc();
    }

    /// Turns the request's profile names and custom profiles into one list.
    fn profiles(&self, req: &pb::TranscodeRequest) -> Result<Vec<VideoProfile>, Status> {
        let mut profiles = Vec::new();
        if !req.profile_names.is_empty() {
            profiles = VideoProfile::parse_list(&req.profile_names.join(","))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        for p in &req.profiles {
            let spec = ProfileSpec {
                name: p.name.clone(),
                width: p.width,
                height: p.height,
                bitrate: p.bitrate,
                fps: p.fps,
                fps_den: p.fps_den,
                profile: p.profile.clone(),
                gop: p.gop.clone(),
                encoder: p.encoder.clone(),
                quality: p.quality,
                ..Default::default()
            };
            let mut profile = spec
                .into_profile()
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            profile.format = match p.container.map(pb::Container::try_from) {
                None => None,
                Some(Ok(pb::Container::Mpegts)) => Some(OutputContainer::Mpegts),
                Some(Ok(pb::Container::Mp4)) => Some(OutputContainer::Mp4),
                Some(Err(_)) => {
                    return Err(Status::invalid_argument(format!(
                        "profile {}: unknown container",
                        profile.name
                    )))
                }
            };
            profiles.push(profile);
        }
        if profiles.is_empty() {
            return Err(Status::invalid_argument("no profiles requested"));
        }
        if profiles.len() > self.limits.max_profiles {
            return Err(Status::invalid_argument(format!(
                "{} profiles requested; at most {} per segment",
                profiles.len(),
                self.limits.max_profiles
            )));
        }
        Ok(profiles)
    }

    async fn segment(
        &self,
        source: Option<pb::transcode_request::Source>,
    ) -> Result<Vec<u8>, Status> {
        match source {
            Some(pb::transcode_request::Source::Segment(bytes)) => Ok(bytes),
            Some(pb::transcode_request::Source::Url(url)) => {
                self.fetcher.get(&url).await.map_err(|e| match e {
                    FetchError::BadUrl | FetchError::Refused | FetchError::TooLarge { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    // A 3xx (redirects are not followed) or 4xx: the URL is bad.
                    FetchError::Failed {
                        status: Some(300..=499),
                    } => Status::invalid_argument(e.to_string()),
                    FetchError::Failed { .. } => Status::unavailable(e.to_string()),
                })
            }
            None => Err(Status::invalid_argument(
                "request has neither segment bytes nor a URL",
            )),
        }
    }
}

/// The gRPC status for an engine error.
pub fn status_for(e: &VideoError) -> Status {
    let message = e.to_string();
    if e.is_bad_input() {
        return Status::invalid_argument(message);
    }
    match e {
        VideoError::Timeout(_) => Status::deadline_exceeded(message),
        VideoError::Cancelled => Status::cancelled(message),
        VideoError::BackendUnavailable(_) | VideoError::EncoderUnavailable(_) => {
            Status::failed_precondition(message)
        }
        _ => Status::internal(message),
    }
}

/// The gRPC status for an AI engine error: what the caller sent is an
/// invalid argument, a model not served is not found, a model at capacity
/// is exhausted, and a failing model is internal.
pub fn ai_status(e: &AiError) -> Status {
    match e {
        AiError::UnknownModel(m) => Status::not_found(m.clone()),
        AiError::Busy(m) => Status::resource_exhausted(m.clone()),
        AiError::Internal(m) => Status::internal(m.clone()),
        AiError::Validation { .. }
        | AiError::BadRequest(_)
        | AiError::TooLarge(_)
        | AiError::UnsupportedMedia(_) => Status::invalid_argument(e.to_string()),
    }
}

/// The caller's deadline from the `grpc-timeout` header ("100m", "5S", ...).
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn request_id<T>(request: &Request<T>, given: &str) -> String {
    if !given.is_empty() {
        return given.chars().take(128).collect();
    }
    request
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn response_messages(
    output: TranscodeOutput,
    request_id: String,
    queue: Duration,
) -> Vec<pb::TranscodeResponse> {
    use pb::transcode_response::Event;
    let container = |c: OutputContainer| match c {
        OutputContainer::Mpegts => pb::Container::Mpegts as i32,
        OutputContainer::Mp4 => pb::Container::Mp4 as i32,
    };
    let mut messages = Vec::new();
    let summary = pb::TranscodeSummary {
        request_id,
        backend: output.backend.to_string(),
        decoded_frames: output.decoded.frames,
        decoded_pixels: output.decoded.pixels,
        input_width: output.input.width,
        input_height: output.input.height,
        input_codec: output.input.codec.clone(),
        input_duration_seconds: output.input.duration_seconds,
        decode_errors: output.decode_errors as u32,
        queue_seconds: queue.as_secs_f64(),
        compute_seconds: output.elapsed.as_secs_f64(),
    };
    for (index, r) in output.renditions.into_iter().enumerate() {
        let index = index as u32;
        messages.push(pb::TranscodeResponse {
            event: Some(Event::Rendition(pb::RenditionHeader {
                index,
                profile: r.profile,
                width: r.width,
                height: r.height,
                frames: r.encoded.frames,
                pixels: r.encoded.pixels,
                size: r.data.len() as u64,
                container: container(r.container),
            })),
        });
        for chunk in r.data.chunks(CHUNK_BYTES) {
            messages.push(pb::TranscodeResponse {
                event: Some(Event::Chunk(pb::RenditionChunk {
                    index,
                    data: chunk.to_vec(),
                })),
            });
        }
    }
    messages.push(pb::TranscodeResponse {
        event: Some(Event::Summary(summary)),
    });
    messages
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    type TranscodeStream = ReceiverStream<Result<pb::TranscodeResponse, Status>>;

    async fn transcode(
        &self,
        request: Request<pb::TranscodeRequest>,
    ) -> Result<Response<Self::TranscodeStream>, Status> {
        let arrived = Instant::now();
        let caller_deadline = grpc_timeout(&request);
        let request_id = request_id(&request, &request.get_ref().request_id);
        let span = tracing::info_span!("transcode", request_id = %request_id);
        let slot = self.admit("Transcode")?;
        let result = async {
            let req = request.into_inner();
            let profiles = self.profiles(&req)?;
            let mut timeout = self.limits.timeout;
            if req.timeout_ms > 0 {
                timeout = timeout.min(Duration::from_millis(u64::from(req.timeout_ms)));
            }
            if let Some(d) = caller_deadline {
                timeout = timeout.min(d);
            }
            let container = match pb::Container::try_from(req.container) {
                Ok(pb::Container::Mpegts) => OutputContainer::Mpegts,
                Ok(pb::Container::Mp4) => OutputContainer::Mp4,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown container {}",
                        req.container
                    )))
                }
            };
            let segment = self.segment(req.source).await?;
            let options = TranscodeOptions {
                profiles,
                container,
                timeout: Some(timeout.saturating_sub(arrived.elapsed())),
                max_input_bytes: self.limits.max_segment_bytes,
                preset: self.limits.preset.clone(),
                ..Default::default()
            };
            let queued = arrived.elapsed();
            // The client going away drops this future: the service cancels the job.
            let output = self
                .video
                .transcode(&slot, segment, options)
                .await
                .map_err(|e| {
                    let status = status_for(&e);
                    warn!(error = %e, code = ?status.code(), "transcode failed");
                    status
                })?;
            info!(
                renditions = output.renditions.len(),
                decoded_pixels = output.decoded.pixels,
                compute_ms = output.elapsed.as_millis() as u64,
                queue_ms = queued.as_millis() as u64,
                "transcoded"
            );
            Ok((output, queued))
        }
        .instrument(span)
        .await;

        let (output, queued) = match result {
            Ok(ok) => ok,
            Err(status) => {
                self.count("Transcode", &status);
                return Err(status);
            }
        };
        self.count("Transcode", &Status::ok(""));
        // The slot travels with the sender, so it stays taken (and a drain
        // waits) until the last byte is handed to the transport.
        let (tx, rx) = mpsc::channel(4);
        let messages = response_messages(output, request_id.clone(), queued);
        tokio::spawn(async move {
            for m in messages {
                if tx.send(Ok(m)).await.is_err() {
                    break;
                }
            }
            drop(slot);
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Ok(v) = request_id.parse() {
            response.metadata_mut().insert("x-request-id", v);
        }
        Ok(response)
    }

    async fn infer(
        &self,
        request: Request<pb::InferRequest>,
    ) -> Result<Response<pb::InferResponse>, Status> {
        let request_id = request_id(&request, &request.get_ref().request_id);
        let _slot = self.admit("Infer")?;
        let req = request.into_inner();
        let started = Instant::now();
        let result = async {
            let kind = PipelineKind::from_name(&req.pipeline).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown pipeline {:?}",
                    crate::log_limit::clip(&req.pipeline, 64)
                ))
            })?;
            let params = match req.params_json.as_slice() {
                [] => serde_json::Map::new(),
                bytes => match serde_json::from_slice(bytes) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => {
                        return Err(Status::invalid_argument(
                            "params_json must be a JSON object",
                        ))
                    }
                },
            };
            let mut request = PipelineRequest {
                params,
                files: req.files.into_iter().collect(),
            };
            if !req.model_id.is_empty() {
                request
                    .params
                    .insert(kind.model_field().into(), req.model_id.clone().into());
            }
            let run = self.registry.run(kind, request);
            let output = match req.timeout_ms {
                0 => run.await,
                ms => tokio::time::timeout(Duration::from_millis(u64::from(ms)), run)
                    .await
                    .map_err(|_| Status::deadline_exceeded("inference did not finish in time"))?,
            }
            .map_err(|e| ai_status(&e))?;
            Ok(pb::InferResponse {
                request_id: request_id.clone(),
                result_json: serde_json::to_vec(&output.body).expect("JSON values serialize"),
                files: output.files.into_iter().map(|f| (f.name, f.data)).collect(),
                units: output.units,
                unit_kind: output.unit_kind.to_string(),
                compute_seconds: started.elapsed().as_secs_f64(),
            })
        }
        .await;
        match result {
            Ok(r) => {
                self.count("Infer", &Status::ok(""));
                Ok(Response::new(r))
            }
            Err(status) => {
                self.count("Infer", &status);
                Err(status)
            }
        }
    }

    async fn capabilities(
        &self,
        _request: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let caps = &self.capabilities;
        let admission = self.video.admission();
        let in_flight = admission.in_flight();
        let response = pb::CapabilitiesResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.video.backend_name().to_string(),
            backends: caps.backends.clone(),
            cpu_model: caps.cpu_model.clone(),
            cpu_cores: caps.cpu_cores as u32,
            gpus: caps
                .gpus
                .iter()
                .map(|g| pb::Gpu {
                    index: g.index,
                    name: g.name.clone(),
                    memory_bytes: g.memory_bytes,
                    nvdec: g.nvdec,
                    nvenc: g.nvenc,
                })
                .collect(),
            decoders: caps.decoders.clone(),
            encoders: caps.encoders.clone(),
            pipelines: self
                .registry
                .entries()
                .iter()
                .map(|e| pb::Pipeline {
                    pipeline: e.pipeline.kind().name().to_string(),
                    model_id: e.pipeline.model_id().to_string(),
                    warm: e.config.warm,
                })
                .collect(),
            capacity: admission.capacity(),
            free_slots: admission.capacity().saturating_sub(in_flight),
            draining: admission.is_draining(),
        };
        self.count("Capabilities", &Status::ok(""));
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&r)
        };
        assert_eq!(with("5S"), Some(Duration::from_secs(5)));
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("x"), None);
        assert_eq!(with("10Q"), None);
    }

    #[test]
    fn engine_errors_map_to_grpc_codes() {
        use tonic::Code;
        assert_eq!(
            status_for(&VideoError::EmptyInput).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status_for(&VideoError::Timeout(Duration::from_secs(1))).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(status_for(&VideoError::Cancelled).code(), Code::Cancelled);
        let internal = VideoError::Internal {
            stage: "encode",
            source: ffmpeg_next::Error::Bug,
        };
        assert_eq!(status_for(&internal).code(), Code::Internal);
    }

    #[test]
    fn ai_errors_map_to_grpc_codes() {
        use tonic::Code;
        let code = |e: AiError| ai_status(&e).code();
        assert_eq!(code(AiError::missing("image")), Code::InvalidArgument);
        assert_eq!(code(AiError::BadRequest("x".into())), Code::InvalidArgument);
        assert_eq!(code(AiError::TooLarge("x".into())), Code::InvalidArgument);
        assert_eq!(
            code(AiError::UnsupportedMedia("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(code(AiError::UnknownModel("x".into())), Code::NotFound);
        assert_eq!(code(AiError::Busy("x".into())), Code::ResourceExhausted);
        assert_eq!(code(AiError::Internal("x".into())), Code::Internal);
        let status = ai_status(&AiError::invalid("seed", "Input should be a valid integer"));
        assert_eq!(status.message(), "seed: Input should be a valid integer");
    }
}
