//! `lpworker attach`: work for an existing go-livepeer orchestrator.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tracing::info;

use lpworker::attach::{ai_worker, capabilities, transcoder, AttachConfig};
use lpworker::video::probe::{self, BackendChoice, GpuSelection};
use lpworker::video::Transcoder;
use lpworker::worker::service::RequestLimits;
use lpworker::worker::{AiServing, BoundWorker, WorkerConfig};

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Orchestrator address, host:port (go-livepeer's -orchAddr).
    #[arg(long, alias = "orchAddr", env = "LP_ORCHADDR")]
    pub orch_addr: String,
    /// Secret shared with the orchestrator (go-livepeer's -orchSecret).
    #[arg(
        long,
        alias = "orchSecret",
        env = "LP_ORCHSECRET",
        hide_env_values = true
    )]
    pub orch_secret: String,
    /// Segments transcoded at once; registered as this worker's capacity.
    #[arg(
        long,
        alias = "maxSessions",
        default_value_t = 10,
        env = "LP_MAXSESSIONS"
    )]
    pub max_sessions: u32,
    /// Work as a remote transcoder (the default unless --ai is given).
    #[arg(long)]
    pub transcode: bool,
    /// Work as a remote AI worker with the models in --ai-models (implied by
    /// --ai-models; add --transcode to do both).
    #[arg(long)]
    pub ai: bool,
    #[command(flatten)]
    pub models: super::serve::AiArgs,
    /// Also serve the lpworker gRPC Worker API on this address.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<SocketAddr>,
    /// go-livepeer version whose protocol is spoken, sent in capabilities so
    /// orchestrators and gateways with a minimum version accept this worker.
    #[arg(long, default_value = "0.9.1")]
    pub livepeer_version: String,
    /// Which backend transcodes.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "LPWORKER_BACKEND")]
    pub backend: BackendChoice,
    /// NVIDIA GPUs to transcode on, like go-livepeer's `-nvidia`: `all` or
    /// indices such as `0,1`. Implies the NVIDIA backend.
    #[arg(long, env = "LPWORKER_NVIDIA")]
    pub nvidia: Option<GpuSelection>,
    /// x264/x265 preset (go-livepeer uses medium).
    #[arg(long, default_value = "medium")]
    pub preset: String,
    /// Seconds a shutdown waits for jobs in flight.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Join as a go-livepeer 0.9 Live Runner: each model in --ai-models is
    /// a single-shot app registered with the orchestrator by heartbeat.
    #[arg(long, requires = "runner_url")]
    pub live_runner: bool,
    /// The URL the orchestrator reaches this runner's HTTP server at.
    #[arg(long)]
    pub runner_url: Option<String>,
    /// Where the runner's HTTP server listens (default: all interfaces, the
    /// --runner-url port).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// A session's price in US dollars per hour (on-chain orchestrators
    /// require one).
    #[arg(long)]
    pub price_usd_per_hour: Option<String>,
    /// With --live-runner: the renditions of the live transcoding app
    /// (`transcode/LADDER`), go-livepeer profile names or a JSON file.
    #[arg(long, default_value = "P720p30fps16x9,P480p30fps16x9,P360p30fps16x9")]
    pub transcode_ladder: String,
}

pub fn run(args: AttachArgs) -> Result<()> {
    if args.max_sessions == 0 {
        bail!("--max-sessions must be at least 1 (the orchestrator refuses zero capacity)");
    }
    if args.orch_secret.is_empty() {
        bail!("--orch-secret must not be empty");
    }
    if !(args.drain_timeout > 0.0 && args.drain_timeout.is_finite()) {
        bail!("--drain-timeout must be a positive number of seconds");
    }
    if args.live_runner {
        return live_runner(args);
    }
    let ai_role = args.ai || args.models.ai_models.is_some();
    let transcode_role = args.transcode || !ai_role;
    let registry = args.models.load()?;
    if ai_role && registry.is_none() {
        bail!("--ai needs --ai-models (aiModels.json or pipeline:model_id[:warm],...)");
    }
    let probe = probe::probe();
    let backend = probe::select_backend(args.backend, args.nvidia.as_ref(), &probe)?;
    let transcoder = Transcoder::new(backend);
    let net_caps = capabilities::to_net(
        &capabilities::transcoder_capabilities(&probe),
        &args.livepeer_version,
    );
    let config = AttachConfig {
        orch_addr: args.orch_addr.clone(),
        orch_secret: args.orch_secret.clone(),
        max_sessions: args.max_sessions,
        livepeer_version: args.livepeer_version.clone(),
        preset: args.preset.clone(),
        max_segment_bytes: 300_000_000,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = match args.serve {
            Some(addr) => {
                let worker = BoundWorker::bind(WorkerConfig {
                    addr,
                    metrics_addr: None,
                    max_sessions: args.max_sessions,
                    drain_timeout: config.drain_timeout,
                    limits: RequestLimits {
                        timeout: Duration::from_secs(60),
                        max_segment_bytes: 64 << 20,
                        max_profiles: 16,
                        preset: args.preset.clone(),
                    },
                    backend: args.backend,
                    nvidia: args.nvidia.clone(),
                    tls: None,
                    auth_secret: None,
                    fetch_insecure: false,
                    ai: registry.as_ref().map(|r| AiServing {
                        registry: std::sync::Arc::clone(r),
                        http_addr: None,
                        auth_token: None,
                        max_body: lpworker::ai::http::DEFAULT_MAX_BODY,
                    }),
                })
                .await?;
                println!("lpworker attach serving grpc={}", worker.grpc_addr());
                let mut rx = stop_rx.clone();
                Some(tokio::spawn(worker.run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })))
            }
            None => None,
        };
        let mut roles = Vec::new();
        if transcode_role {
            info!(orch = %config.orch_addr, "attaching as remote transcoder");
            roles.push(tokio::spawn(transcoder::run(config.clone(), transcoder, net_caps, stop_rx.clone())));
        }
        if let Some(registry) = registry {
            info!(orch = %config.orch_addr, models = registry.entries().len(), "attaching as remote AI worker");
            roles.push(tokio::spawn(ai_worker::run(config.clone(), registry, stop_rx.clone())));
        }
        super::serve::shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        for role in roles {
            role.await.context("attach loop")?;
        }
        if let Some(w) = worker {
            w.await.context("worker task")??;
        }
        Ok(())
    })
}

/// `--live-runner`: the AI models as single-shot Live Runner apps, and
/// with --transcode the live transcoding app.
fn live_runner(args: AttachArgs) -> Result<()> {
    let models = args.models.load()?;
    if models.is_none() && !args.transcode {
        bail!("--live-runner serves --ai-models (each model an app) and/or --transcode");
    }
    let transcoding = if args.transcode {
        let probe = probe::probe();
        let backend = probe::select_backend(args.backend, args.nvidia.as_ref(), &probe)?;
        let ladder = lpworker::video::VideoProfile::from_spec(&args.transcode_ladder)
            .with_context(|| format!("--transcode-ladder {:?}", args.transcode_ladder))?;
        Some(lpworker::runner::Transcoding {
            app: lpworker::runner::transcode::TranscodeApp::new(
                std::sync::Arc::new(Transcoder::new(backend)),
                ladder,
                args.preset.clone(),
            ),
            capacity: args.max_sessions,
        })
    } else {
        None
    };
    let runner_url = args
        .runner_url
        .clone()
        .context("--runner-url is required")?;
    let url =
        reqwest::Url::parse(&runner_url).with_context(|| format!("--runner-url {runner_url:?}"))?;
    let http_addr = match args.http_addr {
        Some(a) => a,
        None => SocketAddr::from((
            [0, 0, 0, 0],
            url.port_or_known_default()
                .context("--runner-url has no port")?,
        )),
    };
    let probe = probe::probe();
    let gpu = probe
        .gpus
        .first()
        .map(|g| lpworker::live_runner::wire::GpuInfo {
            id: g.index.to_string(),
            name: g.name.clone(),
            vram_mb: (g.memory_bytes >> 20) as i64,
        });
    let config = lpworker::runner::RunnerConfig {
        orchestrator: args.orch_addr.clone(),
        secret: args.orch_secret.clone(),
        runner_url,
        http_addr,
        price_usd_per_hour: args.price_usd_per_hour.clone(),
        gpu,
        max_body: lpworker::ai::http::DEFAULT_MAX_BODY,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let runner = lpworker::runner::BoundRunner::bind(&config, models, transcoding)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        println!(
            "lpworker attach live runner listening http={} apps={}",
            runner.local_addr(),
            runner.registrations.len()
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            super::serve::shutdown_signal().await;
            info!("shutting down: unregistering");
            signal.cancel();
        });
        runner.run(stop).await.context("serving the runner")?;
        Ok(())
    })
}
