//! `lpworker serve`: run the stateless gRPC worker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use lpworker::worker::fetch::Cidr;
use lpworker::worker::service::RequestLimits;
use lpworker::worker::{AiServing, BoundWorker, TlsFiles, WorkerConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address (Worker, grpc.health.v1 and reflection). Loopback
    /// by default; any other address needs --auth-secret or mTLS
    /// (--tls-client-ca), or --insecure-public.
    #[arg(long, default_value = "127.0.0.1:50051", env = "LPWORKER_ADDR")]
    pub addr: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, default_value = "0.0.0.0:9095", env = "LPWORKER_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Concurrent transcode sessions admitted; more are refused with
    /// RESOURCE_EXHAUSTED. `auto`: the streams this machine keeps in real
    /// time, measured at start.
    #[arg(
        long,
        alias = "maxSessions",
        default_value = "10",
        env = "LP_MAXSESSIONS",
        value_parser = super::max_sessions::parse
    )]
    pub max_sessions: super::max_sessions::MaxSessions,
    #[command(flatten)]
    pub calibration: super::max_sessions::CalibrationArgs,
    /// Seconds a shutdown (SIGTERM) waits for in-flight work.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
    /// Longest a request may run, in seconds (a shorter gRPC deadline wins).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub request_timeout: f64,
    /// Largest segment accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_segment_bytes: usize,
    /// Most renditions per segment.
    #[arg(long, default_value_t = 16)]
    pub max_profiles: usize,
    /// PEM certificate for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: callers must present a certificate it signed (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Shared secret callers send as `authorization: Bearer <secret>`.
    #[arg(long, env = "LPWORKER_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Serve work on a non-loopback --addr (or --http-addr) with no secret
    /// or client certificate: anyone who reaches it can run work for free.
    #[arg(long)]
    pub insecure_public: bool,
    #[command(flatten)]
    pub video: super::video_backend::VideoBackendArgs,
    /// Accept self-signed certificates when fetching segment URLs.
    #[arg(long)]
    pub fetch_insecure: bool,
    /// Non-public addresses segment URLs may be fetched from, as CIDRs
    /// (repeatable or comma-separated). Only public addresses are by default.
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        env = "LPWORKER_FETCH_ALLOW"
    )]
    pub fetch_allow: Vec<Cidr>,
    #[command(flatten)]
    pub ai: AiArgs,
    /// Serve the ai-runner HTTP API for the loaded models on this address
    /// (a non-loopback one needs --ai-auth-token, or --insecure-public).
    #[arg(long, value_name = "HOST:PORT", requires = "ai_models")]
    pub http_addr: Option<SocketAddr>,
    /// Bearer token required on ai-runner pipeline routes (ai-runner's AUTH_TOKEN).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub ai_auth_token: Option<String>,
}

/// Live video-to-video models with their aiModels entries.
pub type LiveModels = Vec<(
    lpworker::ai::config::AiModelConfig,
    std::sync::Arc<dyn lpworker::ai::live::FrameModel>,
)>;

/// The AI models to load, shared by `serve` and `attach`.
#[derive(Debug, clap::Args)]
pub struct AiArgs {
    /// aiModels.json (go-livepeer's format) or `pipeline:model_id[:warm],...`.
    #[arg(long, alias = "aiModels", env = "LP_AIMODELS")]
    pub ai_models: Option<String>,
    /// Directory of model folders in Hugging Face layout (`<org>/<name>/...`).
    #[arg(
        long,
        alias = "aiModelsDir",
        env = "LP_AIMODELSDIR",
        default_value = "models"
    )]
    pub models_dir: PathBuf,
    /// libonnxruntime to load (default: found next to the binary, in a Python
    /// onnxruntime wheel, or in the system library directories).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// Threads per model for ONNX Runtime (0: its default).
    #[arg(long, default_value_t = 0)]
    pub ai_threads: usize,
}

impl AiArgs {
    /// Loads every listed model, or None when no models are configured.
    pub fn load(&self) -> Result<Option<std::sync::Arc<lpworker::ai::Registry>>> {
        let (registry, live) = self.load_with_live()?;
        if let Some((config, _)) = live.first() {
            bail!(
                "{}/{}: live video-to-video runs as a Live Runner app (lpworker attach --live-runner)",
                config.pipeline,
                config.model_id
            );
        }
        Ok(registry)
    }

    /// Loads the listed models: request-response ones into a registry (None
    /// when there are none), live-video-to-video ones apart (they are Live
    /// Runner apps).
    pub fn load_with_live(
        &self,
    ) -> Result<(Option<std::sync::Arc<lpworker::ai::Registry>>, LiveModels)> {
        let Some(spec) = &self.ai_models else {
            return Ok((None, Vec::new()));
        };
        let (live, configs): (Vec<_>, Vec<_>) = lpworker::ai::config::load(spec)?
            .into_iter()
            .partition(|c| c.pipeline == lpworker::ai::live::PIPELINE);
        // Live `noop` alone runs no model: no runtime needed.
        if !configs.is_empty() || live.iter().any(|c| c.model_id != "noop") {
            lpworker::ai::onnx::init(self.onnxruntime.as_deref())
                .context("starting ONNX Runtime")?;
        }
        let registry = if configs.is_empty() {
            None
        } else {
            let registry =
                lpworker::ai::Registry::load(&configs, &self.models_dir, self.ai_threads)
                    .with_context(|| format!("loading the models in {spec}"))?;
            Some(std::sync::Arc::new(registry))
        };
        let live = live
            .into_iter()
            .map(|c| {
                let model =
                    lpworker::ai::live::load(&c.model_id, &self.models_dir, self.ai_threads)
                        .with_context(|| format!("loading {}/{}", c.pipeline, c.model_id))?;
                Ok((c, model))
            })
            .collect::<Result<_>>()?;
        Ok((registry, live))
    }
}

/// Refuses to serve work on a non-loopback address without protection,
/// unless the operator said `--insecure-public`.
pub fn check_exposure(
    flag: &str,
    addr: SocketAddr,
    protected: bool,
    protection: &str,
    insecure_public: bool,
) -> Result<()> {
    if addr.ip().is_loopback() || protected || insecure_public {
        return Ok(());
    }
    bail!(
        "refusing to serve work on {flag} {addr}, which is not a loopback address, without {protection}: \
         anyone who can reach it could run work for free. Give {protection}, bind 127.0.0.1, \
         or pass --insecure-public to serve it open anyway"
    )
}

pub fn seconds(name: &str, v: f64) -> Result<Duration> {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 => Ok(d),
        _ => bail!("--{name} must be a positive number of seconds"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.auth_secret.as_deref() == Some("") {
        bail!("--auth-secret must not be empty");
    }
    let mtls = args.tls_cert.is_some() && args.tls_client_ca.is_some();
    check_exposure(
        "--addr",
        args.addr,
        args.auth_secret.is_some() || mtls,
        "--auth-secret (LPWORKER_AUTH_SECRET) or mTLS (--tls-cert, --tls-key, --tls-client-ca)",
        args.insecure_public,
    )?;
    if let (Some(addr), Some(_)) = (args.http_addr, &args.ai.ai_models) {
        check_exposure(
            "--http-addr",
            addr,
            args.ai_auth_token.as_deref().is_some_and(|t| !t.is_empty()),
            "--ai-auth-token (AUTH_TOKEN)",
            args.insecure_public,
        )?;
    }
    let max_sessions = args.max_sessions.resolve(
        &args.video,
        &args.calibration,
        lpworker::video::probe::probe,
    )?;
    let config = WorkerConfig {
        addr: args.addr,
        metrics_addr: (!args.no_metrics).then_some(args.metrics_addr),
        max_sessions,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        limits: RequestLimits {
            timeout: seconds("request-timeout", args.request_timeout)?,
            max_segment_bytes: args.max_segment_bytes,
            max_profiles: args.max_profiles.max(1),
            preset: args.video.preset,
        },
        backend: args.video.backend,
        nvidia: args.video.nvidia.clone(),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
        auth_secret: args.auth_secret,
        fetch_insecure: args.fetch_insecure,
        fetch_allow: args.fetch_allow,
        ai: args.ai.load()?.map(|registry| AiServing {
            registry,
            http_addr: args.http_addr,
            auth_token: args.ai_auth_token,
            max_body: lpworker::ai_runner_api::DEFAULT_MAX_BODY,
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let worker = BoundWorker::bind(config).await?;
        // One machine-readable line for supervisors and tests.
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        println!(
            "lpworker serve listening grpc={} metrics={} http={} capacity={max_sessions}",
            worker.grpc_addr(),
            show(worker.metrics_addr()),
            show(worker.ai_http_addr()),
        );
        worker.run(shutdown_signal()).await?;
        Ok(())
    })
}
