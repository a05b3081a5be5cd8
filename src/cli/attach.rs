//! `lpworker attach`: work for an existing go-livepeer orchestrator.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use lpworker::attach::{ai_worker, transcoder, AttachConfig};
use lpworker::lp_rpc::capabilities;
use lpworker::video::probe::{self, Capabilities};
use lpworker::video::Transcoder;
use lpworker::worker::fetch::Cidr;
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
    /// `auto`: the streams this machine keeps in real time, measured at start.
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
    /// Work as a remote transcoder (the default unless --ai is given).
    #[arg(long)]
    pub transcode: bool,
    /// Work as a remote AI worker with the models in --ai-models (implied by
    /// --ai-models; add --transcode to do both).
    #[arg(long)]
    pub ai: bool,
    #[command(flatten)]
    pub models: super::serve::AiArgs,
    /// Also serve the lpworker gRPC Worker API on this address. A
    /// non-loopback one needs --auth-secret, or --insecure-public.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<SocketAddr>,
    /// With --serve: the secret callers send as `authorization: Bearer <secret>`.
    #[arg(long, env = "LPWORKER_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// With --serve (or --live-runner): serve a non-loopback address with no
    /// secret (for a runner: no secret path in --runner-url), open to anyone
    /// who reaches it.
    #[arg(long)]
    pub insecure_public: bool,
    /// go-livepeer version whose protocol is spoken, sent in capabilities so
    /// orchestrators and gateways with a minimum version accept this worker.
    #[arg(long, default_value = "0.9.1")]
    pub livepeer_version: String,
    /// Non-public addresses segment and input URLs may be fetched from, as
    /// CIDRs (repeatable or comma-separated); the orchestrator's own address
    /// always may. Only public addresses are by default.
    #[arg(
        long,
        value_name = "CIDR",
        value_delimiter = ',',
        env = "LPWORKER_FETCH_ALLOW"
    )]
    pub fetch_allow: Vec<Cidr>,
    #[command(flatten)]
    pub video: super::video_backend::VideoBackendArgs,
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
    /// Where the runner's HTTP server listens (default: the --runner-url
    /// port, on loopback when that URL is, else on every interface; a
    /// non-loopback address needs a secret path in --runner-url, or
    /// --insecure-public).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// A session's price in US dollars per hour (on-chain orchestrators
    /// require one).
    #[arg(long)]
    pub price_usd_per_hour: Option<String>,
    /// With --live-runner: the GPU (its index, as nvidia-smi numbers them)
    /// reported in registrations; the first one found by default.
    #[arg(long, value_name = "ID")]
    pub gpu: Option<u32>,
    /// With --live-runner --transcode: the x264/x265 preset of live
    /// sessions. A live stream must keep real time: at `medium` a 1080p30
    /// stream to three renditions takes ~1.6 s per second of video on two
    /// cores (`lpworker bench --live`), at `veryfast` ~0.8 s.
    #[arg(long, default_value = "veryfast")]
    pub live_preset: String,
    /// With --live-runner: seconds without input after which a live
    /// video-to-video stream is stopped (ai-runner's minute).
    #[arg(long, default_value_t = 60.0)]
    pub live_input_timeout: f64,
    /// With --live-runner: the renditions of the live transcoding app
    /// (`transcode/LADDER`), go-livepeer profile names or a JSON file (the
    /// default: lpms-named rungs only, so any gateway can name them).
    #[arg(long, default_value = "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9")]
    pub transcode_ladder: String,
}

pub fn run(args: AttachArgs) -> Result<()> {
    if args.orch_secret.is_empty() {
        bail!("--orch-secret must not be empty");
    }
    if !(args.drain_timeout > 0.0 && args.drain_timeout.is_finite()) {
        bail!("--drain-timeout must be a positive number of seconds");
    }
    if args.auth_secret.as_deref() == Some("") {
        bail!("--auth-secret must not be empty");
    }
    if let Some(addr) = args.serve {
        super::serve::check_exposure(
            "--serve",
            addr,
            args.auth_secret.is_some(),
            "--auth-secret (LPWORKER_AUTH_SECRET)",
            args.insecure_public,
        )?;
    }
    let ai_role = args.ai || args.models.ai_models.is_some();
    // A Live Runner transcodes only with --transcode; a worker unless it
    // only does AI.
    let transcode_role = args.transcode || !(ai_role || args.live_runner);
    // Once, for the capacity measurement, the backend and the capabilities
    // registered (every role needs it).
    let probe = probe::probe();
    // Measured (with `auto`) only where transcoding is registered.
    let max_sessions = match transcode_role {
        true => args
            .max_sessions
            .resolve(&args.video, &args.calibration, || probe.clone())?,
        false => args.max_sessions.resolve_without_measuring(),
    };
    if args.live_runner {
        return live_runner(args, &probe, max_sessions);
    }
    let registry = args.models.load()?;
    if ai_role && registry.is_none() {
        bail!("--ai needs --ai-models (aiModels.json or pipeline:model_id[:warm],...)");
    }
    let backend = args.video.select(&probe)?;
    let transcoder = Transcoder::new(backend);
    let net_caps = capabilities::to_net(
        &capabilities::transcoder_capabilities(&probe),
        &args.livepeer_version,
    );
    let config = AttachConfig {
        orch_addr: args.orch_addr.clone(),
        orch_secret: args.orch_secret.clone(),
        max_sessions,
        livepeer_version: args.livepeer_version.clone(),
        preset: args.video.preset.clone(),
        max_segment_bytes: 300_000_000,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        fetch_allow: with_orchestrator(&args.orch_addr, &args.fetch_allow),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = match args.serve {
            Some(addr) => {
                let worker = BoundWorker::bind(WorkerConfig {
                    addr,
                    metrics_addr: None,
                    max_sessions,
                    drain_timeout: config.drain_timeout,
                    limits: RequestLimits {
                        timeout: Duration::from_secs(60),
                        max_segment_bytes: 64 << 20,
                        max_profiles: 16,
                        preset: args.video.preset.clone(),
                    },
                    backend: args.video.backend,
                    nvidia: args.video.nvidia.clone(),
                    tls: None,
                    auth_secret: args.auth_secret.clone(),
                    fetch_insecure: false,
                    fetch_allow: args.fetch_allow.clone(),
                    ai: registry.as_ref().map(|r| AiServing {
                        registry: std::sync::Arc::clone(r),
                        http_addr: None,
                        auth_token: None,
                        max_body: lpworker::ai_runner_api::DEFAULT_MAX_BODY,
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

/// `--fetch-allow` plus the orchestrator's own addresses: go-livepeer
/// orchestrators hand out segment URLs on their own host, which may well be a
/// private one. Resolved once, at start.
fn with_orchestrator(orch_addr: &str, allow: &[Cidr]) -> Vec<Cidr> {
    use std::net::ToSocketAddrs;
    let mut allow = allow.to_vec();
    let host_port = if orch_addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        orch_addr.to_string()
    } else {
        format!("{orch_addr}:0")
    };
    match host_port.to_socket_addrs() {
        Ok(addrs) => {
            for a in addrs {
                let cidr = Cidr::host(a.ip());
                if !allow.contains(&cidr) {
                    allow.push(cidr);
                }
            }
        }
        Err(e) => warn!(
            orch = orch_addr,
            error = %e,
            "cannot resolve the orchestrator's address: segment URLs on its host are fetched only if public"
        ),
    }
    allow
}

/// The shortest runner URL path taken as a secret (16 random base32
/// characters are 80 bits).
const MIN_SECRET_PATH: usize = 16;

/// `--live-runner`: the AI models as single-shot Live Runner apps, and
/// with --transcode the live transcoding app.
fn live_runner(args: AttachArgs, probe: &Capabilities, max_sessions: u32) -> Result<()> {
    let (models, live_models) = args.models.load_with_live()?;
    if models.is_none() && live_models.is_empty() && !args.transcode {
        bail!("--live-runner serves --ai-models (each model an app) and/or --transcode");
    }
    let mut persistent = Vec::new();
    let live_backend = if live_models.is_empty() {
        None
    } else {
        // NVDEC decodes when there is one (frames go to host memory for the
        // model); NVENC encodes when the GPU has it, else x264.
        Some(args.video.select(probe)?)
    };
    for (config, model) in live_models {
        let backend = live_backend.clone().expect("a backend for live models");
        let transcoder = Transcoder::new(backend);
        persistent.push(lpworker::runner::Persistent {
            app: lpworker::runner::live_video::LiveVideoApp::new(
                model,
                transcoder,
                args.live_preset.clone(),
                super::serve::seconds("live-input-timeout", args.live_input_timeout)?,
            ),
            capacity: config.capacity.max(1),
        });
    }
    if args.transcode {
        let backend = args.video.select(probe)?;
        let ladder = lpworker::video::VideoProfile::from_spec(&args.transcode_ladder)
            .with_context(|| format!("--transcode-ladder {:?}", args.transcode_ladder))?;
        persistent.push(lpworker::runner::Persistent {
            app: lpworker::runner::transcode::TranscodeApp::new(
                std::sync::Arc::new(Transcoder::new(backend)),
                ladder,
                args.live_preset.clone(),
            ),
            capacity: max_sessions,
        });
    }
    let runner_url = args
        .runner_url
        .clone()
        .context("--runner-url is required")?;
    let url =
        reqwest::Url::parse(&runner_url).with_context(|| format!("--runner-url {runner_url:?}"))?;
    let http_addr = match args.http_addr {
        Some(a) => a,
        None => {
            let port = url
                .port_or_known_default()
                .context("--runner-url has no port")?;
            // A runner the orchestrator reaches on loopback listens there
            // only; any other URL needs every interface.
            let host = url.host_str().unwrap_or_default();
            let ip = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>();
            match ip {
                Ok(ip) if ip.is_loopback() => SocketAddr::new(ip, port),
                _ if host == "localhost" => SocketAddr::from(([127, 0, 0, 1], port)),
                _ => SocketAddr::from(([0, 0, 0, 0], port)),
            }
        }
    };
    // The runner cannot check who pays (see lpworker::runner): open on a
    // public address, it needs a secret path only its orchestrator knows.
    let secret_path = url.path().trim_matches('/').len() >= MIN_SECRET_PATH;
    super::serve::check_exposure(
        "--http-addr",
        http_addr,
        secret_path,
        &format!(
            "a secret path of at least {MIN_SECRET_PATH} random characters in --runner-url \
             (e.g. http://HOST:PORT/$(head -c 15 /dev/urandom | base32))"
        ),
        args.insecure_public,
    )?;
    let gpu = match args.gpu {
        Some(id) => Some(probe.gpus.iter().find(|g| g.index == id).with_context(|| {
            format!(
                "--gpu {id}: no such GPU (found: {:?})",
                probe.gpus.iter().map(|g| g.index).collect::<Vec<_>>()
            )
        })?),
        None => probe.gpus.first(),
    };
    let gpu = gpu.map(|g| lpworker::live_runner::wire::GpuInfo {
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
        max_body: lpworker::ai_runner_api::DEFAULT_MAX_BODY,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let runner = lpworker::runner::BoundRunner::bind(&config, models, persistent)
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
