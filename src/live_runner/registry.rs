//! The runners an orchestrator hosts and the sessions it holds on them.
//!
//! One lock guards runners, sessions and proxies together, so capacity,
//! expiry and release never see each other half done; nothing waits on I/O
//! under it (trickle writes are in memory; the snapshot is written by a
//! task outside it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::Url;
use tokio_util::sync::CancellationToken;

use super::capacity::{self, Load};
use super::proxy_url::ProxyTemplate;
use super::secrets::{random_id, secret_eq, Seed};
use super::snapshot::{ChannelRecord, ProxyRecord, RunnerRecord, SessionRecord, Snapshot};
use super::spec::{self, Mode, Routing, Rules, RunnerSpec, SpecError};
use super::wire::{
    ChannelInfo, ChannelRequest, DiscoveredRunner, HeartbeatResponse, O2rMessage, RegisteredRunner,
    RunnerDecl, SessionResponse, WeiPriceInfo,
};
use crate::trickle::{TrickleError, TrickleServer, BASE_PATH};

/// Most channels a session may have (go-livepeer caps a request at 25 and
/// a session not at all: a runner could fill the trickle server).
pub const MAX_CHANNELS_PER_SESSION: usize = 25;
/// Most proxies a session may have.
pub const MAX_PROXIES_PER_SESSION: usize = 16;
/// Most requests proxied at once on one session.
pub const MAX_IN_FLIGHT_PER_SESSION: usize = 32;
/// Most trickle channels one runner's sessions hold in all, so no runner
/// can take the trickle server's every channel.
pub const MAX_CHANNELS_PER_RUNNER: usize = 256;
/// O2R messages are small; a channel name the same way as go-livepeer's.
const O2R_MIME: &str = "application/json";

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// What runners are told to beat at (go-livepeer: 5 s).
    pub heartbeat_interval: Duration,
    /// A dynamic runner silent this long is removed (go-livepeer: 20 s).
    pub heartbeat_ttl: Duration,
    /// O2R keepalive period (go-livepeer: 10 s).
    pub keepalive_interval: Duration,
    /// Dynamic registration's bootstrap secret; `None` disables it.
    pub orch_secret: Option<String>,
    /// Prices are required (and charged) only on chain.
    pub on_chain: bool,
    /// Public base URL: discovery, `/apps/…`, public trickle URLs.
    pub service_uri: String,
    /// Runner-facing base URL (`-liveRunnerAddr`, default the service URI).
    pub runner_base: String,
    pub proxy_template: ProxyTemplate,
    /// Most dynamic runners registered at once.
    pub max_dynamic_runners: usize,
    /// The orchestrator's own listeners: no dynamic runner may be reached
    /// at one (see [`spec::forbidden_target`]).
    pub own_addrs: Vec<std::net::SocketAddr>,
}

impl RegistryConfig {
    pub fn new(service_uri: &str) -> RegistryConfig {
        let service_uri = service_uri.trim_end_matches('/').to_string();
        RegistryConfig {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(20),
            keepalive_interval: Duration::from_secs(10),
            orch_secret: None,
            on_chain: false,
            runner_base: service_uri.clone(),
            proxy_template: ProxyTemplate::parse("{serviceURI}/run/{proxy}", &service_uri)
                .expect("the default template is valid"),
            service_uri,
            max_dynamic_runners: 1024,
            own_addrs: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("runner not found")]
    UnknownRunner,
    #[error("runner session not found")]
    UnknownSession,
    #[error("only persistent runners have sessions")]
    SingleShotRunner,
    #[error("runner is not single-shot")]
    PersistentRunner,
    #[error("session already exists")]
    SessionExists,
    #[error("no capacity available for runner")]
    Full,
    #[error("dynamic live runner registration is disabled")]
    DynamicDisabled,
    #[error("invalid registration authorization")]
    BadBootstrapSecret,
    #[error("invalid heartbeat authorization")]
    BadHeartbeatSecret,
    #[error("invalid authorization")]
    Unauthorized,
    #[error("static runner cannot heartbeat")]
    StaticHeartbeat,
    #[error("static runner cannot unregister with heartbeat credentials")]
    StaticRunner,
    #[error("trickle channel not found")]
    UnknownChannel,
    #[error("runner_id must be 1-64 letters, digits, '-' or '_'")]
    BadRunnerId,
    #[error("{0} dynamic runners are registered, the most allowed")]
    TooManyRunners(usize),
    #[error("runners[{index}]: {error}")]
    InvalidBatch { index: usize, error: SpecError },
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("{0}")]
    BadChannels(String),
    #[error("{0}")]
    BadTarget(String),
    #[error("a session has at most {0} proxies")]
    TooManyProxies(usize),
    #[error(transparent)]
    Trickle(#[from] TrickleError),
}

enum Kind {
    Static,
    Dynamic {
        last_heartbeat: Instant,
        o2r: String,
    },
}

struct Runner {
    id: String,
    spec: RunnerSpec,
    /// As declared: what a snapshot keeps, checked again when restored.
    decl: RunnerDecl,
    seed: Seed,
    kind: Kind,
    /// Static runners: the last health check passed.
    healthy: bool,
    /// Oldest first.
    sessions: Vec<String>,
}

impl Runner {
    fn route(&self) -> &str {
        match self.spec.routing {
            Routing::Label => &self.spec.label,
            Routing::RunnerId => &self.id,
        }
    }

    fn expired(&self, ttl: Duration, now: Instant) -> bool {
        matches!(self.kind, Kind::Dynamic { last_heartbeat, .. } if now.duration_since(last_heartbeat) > ttl)
    }

    fn gpu_key(&self) -> Option<(String, String)> {
        self.spec
            .gpu
            .as_ref()
            .map(|g| (self.spec.host(), g.id.clone()))
    }

    fn load(&self) -> Load {
        Load {
            capacity: self.spec.capacity,
            sessions: self.sessions.len() as u32,
        }
    }
}

struct Session {
    runner_id: String,
    created: SystemTime,
    /// Backing trickle channel per name the runner asked for.
    channels: BTreeMap<String, ChannelInfo>,
    proxies: Vec<String>,
    /// Cancelled when the session is released: in-flight requests and
    /// metering stop with it.
    cancel: CancellationToken,
    /// Requests proxied at once on this session.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Restored after a restart and not yet reported by its runner.
    unconfirmed: bool,
    /// Left out of snapshots: a session whose state lives elsewhere and
    /// does not survive a restart (a live stream's trickle channels).
    transient: bool,
}

struct ProxyEntry {
    target: Url,
    sid: String,
}

#[derive(Default)]
struct State {
    runners: HashMap<String, Runner>,
    sessions: HashMap<String, Session>,
    proxies: HashMap<String, ProxyEntry>,
}

impl State {
    fn by_route(&self, route: &str) -> Option<&Runner> {
        self.runners
            .get(route)
            .filter(|r| r.route() == route)
            .or_else(|| {
                self.runners
                    .values()
                    .find(|r| r.spec.routing == Routing::Label && r.spec.label == route)
            })
    }

    fn available(&self, runner: &Runner) -> u32 {
        let others: Option<Vec<Load>> = runner.gpu_key().map(|key| {
            self.runners
                .values()
                .filter(|o| o.id != runner.id && o.gpu_key().as_ref() == Some(&key))
                .map(Runner::load)
                .collect()
        });
        capacity::available(runner.load(), others.as_deref())
    }
}

/// Where a request on a session goes, and what the proxy tells the runner.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    pub sid: String,
    pub route: String,
    pub runner_url: Url,
    pub token: String,
    /// `Livepeer-Session-Control`: the session's callback base.
    pub control: String,
    pub cancel: CancellationToken,
    /// Permits for requests proxied at once (a session cannot take every
    /// socket the node has).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// A reservation: the session's grant and the client's answer.
#[derive(Debug, Clone)]
pub struct Reserved {
    pub grant: SessionGrant,
    pub response: SessionResponse,
}

/// A proxy URL's target and the session it belongs to.
#[derive(Debug, Clone)]
pub enum ProxyTarget {
    Session {
        target: Url,
        grant: Box<SessionGrant>,
    },
    /// A single-shot `proxy` runner: dispatched as `/apps/{route}/app/…`.
    SingleShot { route: String },
}

/// A heartbeat's declaration as kept: its session list is the runner's
/// view at one moment, not part of what it is.
fn stored_decl(decl: &RunnerDecl) -> RunnerDecl {
    RunnerDecl {
        session_ids: None,
        ..decl.clone()
    }
}

fn check_count(n: usize) -> Result<(), RegistryError> {
    match n {
        0 => Err(RegistryError::BadChannels("channels is required".into())),
        n if n > MAX_CHANNELS_PER_SESSION => Err(RegistryError::BadChannels(format!(
            "channels cannot contain more than {MAX_CHANNELS_PER_SESSION} entries"
        ))),
        _ => Ok(()),
    }
}

/// A channel name as go-livepeer normalises it: trimmed, `/` made `-`.
fn channel_name(given: &str) -> Result<String, RegistryError> {
    let name = given.trim().replace('/', "-");
    if name.is_empty() {
        return Err(RegistryError::BadChannels(
            "trickle channel name is required".into(),
        ));
    }
    // Bounded so that `{sid}-{name}` stays a short trickle channel name.
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(RegistryError::BadChannels(
            "trickle channel name may only contain alphanumerics, underscores, or hyphens".into(),
        ));
    }
    Ok(name)
}

/// Why a session ended, for logs and the O2R event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Stopped,
    RunnerStopped,
    Finished,
    Unhealthy,
    Expired,
    Unregistered,
    NotReported,
    Unpaid,
}

pub struct Registry {
    config: RegistryConfig,
    trickle: Arc<TrickleServer>,
    state: Mutex<State>,
    /// Bumped on every change worth persisting.
    changed: tokio::sync::watch::Sender<u64>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn valid_runner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

impl Registry {
    pub fn new(config: RegistryConfig, trickle: Arc<TrickleServer>) -> Arc<Registry> {
        Arc::new(Registry {
            config,
            trickle,
            state: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn trickle(&self) -> &Arc<TrickleServer> {
        &self.trickle
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock must not take every route down with it:
        // each operation leaves the state consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Wakes on every change worth persisting.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn o2r_event(&self, runner: &Runner, event: &str, sid: &str) {
        if let Kind::Dynamic { o2r, .. } = &runner.kind {
            let msg = O2rMessage::Session {
                event: event.into(),
                session: sid.into(),
                timestamp: now_rfc3339(),
            };
            let json = serde_json::to_vec(&msg).expect("serializable");
            self.trickle.publish_local(o2r, Bytes::from(json));
        }
    }

    fn control_url(&self, route: &str, sid: &str) -> String {
        format!("{}/runner/{route}/session/{sid}", self.config.runner_base)
    }

    fn grant(&self, runner: &Runner, sid: &str, session: &Session) -> SessionGrant {
        SessionGrant {
            sid: sid.to_string(),
            route: runner.route().to_string(),
            runner_url: runner.spec.runner_url.clone(),
            token: runner.seed.session_token(sid),
            control: self.control_url(runner.route(), sid),
            cancel: session.cancel.clone(),
            in_flight: session.in_flight.clone(),
        }
    }

    fn ready(&self, runner: &Runner, now: Instant) -> bool {
        runner.healthy && runner.spec.is_ready() && !runner.expired(self.config.heartbeat_ttl, now)
    }

    /// A ready runner by route; 404 otherwise (unknown, expired or not ready).
    fn ready_runner<'a>(&self, state: &'a State, route: &str) -> Result<&'a Runner, RegistryError> {
        state
            .by_route(route)
            .filter(|r| self.ready(r, Instant::now()))
            .ok_or(RegistryError::UnknownRunner)
    }

    // ---- static runners ----

    /// Registers or updates static runners, all or none. An entry whose
    /// label is already registered keeps its ID and sessions.
    pub fn register_static(
        &self,
        decls: &[RunnerDecl],
    ) -> Result<Vec<RegisteredRunner>, RegistryError> {
        let rules = Rules {
            dynamic: false,
            on_chain: self.config.on_chain,
        };
        let mut specs = Vec::with_capacity(decls.len());
        let mut labels = std::collections::HashSet::new();
        for (index, decl) in decls.iter().enumerate() {
            let spec = spec::check(decl, rules)
                .map_err(|error| RegistryError::InvalidBatch { index, error })?;
            if !labels.insert(spec.label.clone()) {
                return Err(RegistryError::InvalidBatch {
                    index,
                    error: SpecError::DuplicateLabel(spec.label),
                });
            }
            specs.push(spec);
        }
        let mut state = self.lock();
        // A label route must not shadow another runner's route.
        for (index, spec) in specs.iter().enumerate() {
            if spec.routing == Routing::Label {
                let clash = state.runners.values().any(|r| {
                    r.spec.label != spec.label && (r.route() == spec.label || (r.id == spec.label))
                });
                if clash {
                    return Err(RegistryError::InvalidBatch {
                        index,
                        error: SpecError::DuplicateLabel(spec.label.clone()),
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(specs.len());
        for (spec, decl) in specs.into_iter().zip(decls) {
            let existing = state
                .runners
                .values()
                .find(|r| matches!(r.kind, Kind::Static) && r.spec.label == spec.label)
                .map(|r| r.id.clone());
            let id = match existing {
                Some(id) => {
                    let r = state.runners.get_mut(&id).expect("found above");
                    r.spec = spec;
                    r.decl = decl.clone();
                    id
                }
                None => {
                    let id = random_id("runner_", 8);
                    state.runners.insert(
                        id.clone(),
                        Runner {
                            id: id.clone(),
                            spec,
                            decl: decl.clone(),
                            seed: Seed::random(),
                            kind: Kind::Static,
                            // Checked right after registration.
                            healthy: false,
                            sessions: Vec::new(),
                        },
                    );
                    id
                }
            };
            let r = &state.runners[&id];
            let health = r.spec.health.as_ref().expect("static runners have one");
            out.push(RegisteredRunner {
                runner_id: id.clone(),
                label: r.spec.label.clone(),
                app: r.spec.app.clone(),
                proxy: (r.spec.proxy && r.spec.mode == Mode::SingleShot)
                    .then(|| self.config.proxy_template.url(r.route())),
                runner_url: r.spec.runner_url.to_string(),
                mode: r.spec.mode.as_str().into(),
                health_url: health.url.to_string(),
                healthy_status_code: health.status,
                healthy: r.healthy,
            });
        }
        drop(state);
        self.touch();
        Ok(out)
    }

    /// Static runners' health checks to make: (runner ID, URL, expected status).
    pub fn health_checks(&self) -> Vec<(String, Url, u16)> {
        self.lock()
            .runners
            .values()
            .filter_map(|r| {
                let h = r.spec.health.as_ref()?;
                Some((r.id.clone(), h.url.clone(), h.status))
            })
            .collect()
    }

    /// Runners whose last health check passed (dynamic ones always).
    pub fn healthy_ids(&self) -> std::collections::HashSet<String> {
        self.lock()
            .runners
            .values()
            .filter(|r| r.healthy)
            .map(|r| r.id.clone())
            .collect()
    }

    /// Records a health check; an unhealthy runner is hidden and its
    /// sessions are released. Returns whether the state changed.
    pub fn set_health(&self, id: &str, healthy: bool) -> bool {
        let sessions = {
            let mut state = self.lock();
            let Some(r) = state.runners.get_mut(id) else {
                return false;
            };
            if r.healthy == healthy {
                return false;
            }
            r.healthy = healthy;
            if healthy {
                Vec::new()
            } else {
                r.sessions.clone()
            }
        };
        if healthy {
            tracing::info!(runner = id, "live runner healthy");
        } else {
            tracing::warn!(
                runner = id,
                sessions = sessions.len(),
                "live runner unhealthy: hidden, its sessions released"
            );
        }
        for sid in sessions {
            self.release(&sid, Release::Unhealthy);
        }
        true
    }

    // ---- dynamic runners ----

    /// `POST /runners/heartbeat`. As go-livepeer, the declaration is
    /// checked before the secret (a bad body is 400 whoever sends it).
    pub fn heartbeat(
        &self,
        authorization: &str,
        decl: &RunnerDecl,
    ) -> Result<HeartbeatResponse, RegistryError> {
        let spec = spec::check(
            decl,
            Rules {
                dynamic: true,
                on_chain: self.config.on_chain,
            },
        )?;
        if let Some(why) = spec::forbidden_target(&spec.runner_url, &self.config.own_addrs) {
            return Err(SpecError::RunnerUrlTarget(why).into());
        }
        let id = decl.runner_id.trim();
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(runner) = state.runners.get(id) {
            let Kind::Dynamic { .. } = runner.kind else {
                // A static runner has no heartbeat secret: go-livepeer
                // compares with "" first, then refuses.
                return Err(if authorization.is_empty() {
                    RegistryError::StaticHeartbeat
                } else {
                    RegistryError::BadHeartbeatSecret
                });
            };
            if runner.expired(self.config.heartbeat_ttl, now) {
                return Err(RegistryError::UnknownRunner);
            }
            if !secret_eq(authorization, &runner.seed.heartbeat_secret()) {
                return Err(RegistryError::BadHeartbeatSecret);
            }
            let runner = state.runners.get_mut(id).expect("found above");
            let changed = runner.spec != spec;
            runner.spec = spec;
            runner.decl = stored_decl(decl);
            if let Kind::Dynamic { last_heartbeat, .. } = &mut runner.kind {
                *last_heartbeat = now;
            }
            // Sessions restored after a restart stay only if the runner
            // still tracks them (go-livepeer keeps no sessions over a restart).
            let sessions = state.runners[id].sessions.clone();
            let mut forgotten = Vec::new();
            for sid in &sessions {
                if let Some(s) = state.sessions.get_mut(sid) {
                    if s.unconfirmed {
                        match &decl.session_ids {
                            Some(reported) if !reported.contains(sid) => {
                                forgotten.push(sid.clone())
                            }
                            _ => s.unconfirmed = false,
                        }
                    }
                }
            }
            drop(state);
            for sid in &forgotten {
                self.release(sid, Release::NotReported);
            }
            if changed {
                self.touch();
            }
            return Ok(self.heartbeat_response(id, None));
        }
        // An unknown runner registers with the bootstrap secret.
        let Some(secret) = &self.config.orch_secret else {
            return Err(RegistryError::DynamicDisabled);
        };
        if !secret_eq(authorization, secret) {
            return Err(RegistryError::BadBootstrapSecret);
        }
        // go-livepeer takes any runner ID; it names URLs and channels here,
        // so it is held to ID characters.
        let id = if id.is_empty() {
            loop {
                let id = random_id("runner_", 8);
                if state.by_route(&id).is_none() {
                    break id;
                }
            }
        } else if valid_runner_id(id) && state.by_route(id).is_none() {
            id.to_string()
        } else {
            return Err(RegistryError::BadRunnerId);
        };
        let dynamic = state
            .runners
            .values()
            .filter(|r| matches!(r.kind, Kind::Dynamic { .. }))
            .count();
        if dynamic >= self.config.max_dynamic_runners {
            return Err(RegistryError::TooManyRunners(dynamic));
        }
        let seed = Seed::random();
        let o2r = seed.o2r_channel(&id);
        let secret = seed.heartbeat_secret();
        self.trickle.create_channel(&o2r, O2R_MIME)?;
        state.runners.insert(
            id.clone(),
            Runner {
                id: id.clone(),
                spec,
                decl: stored_decl(decl),
                seed,
                kind: Kind::Dynamic {
                    last_heartbeat: now,
                    o2r: o2r.clone(),
                },
                healthy: true,
                sessions: Vec::new(),
            },
        );
        drop(state);
        tracing::info!(runner = %id, "dynamic live runner registered");
        self.touch();
        Ok(self.heartbeat_response(&id, Some((secret, o2r))))
    }

    fn channel_info(&self, name: &str, channel_name: &str, mime: &str) -> ChannelInfo {
        ChannelInfo {
            name: name.to_string(),
            channel_name: channel_name.to_string(),
            url: format!("{}{BASE_PATH}/{channel_name}", self.config.service_uri),
            internal_url: format!("{}{BASE_PATH}/{channel_name}", self.config.runner_base),
            mime_type: mime.to_string(),
        }
    }

    fn heartbeat_response(&self, id: &str, first: Option<(String, String)>) -> HeartbeatResponse {
        let state = self.lock();
        let session_ids = state
            .runners
            .get(id)
            .map(|r| r.sessions.clone())
            .unwrap_or_default();
        let (heartbeat_secret, o2r) = match first {
            Some((secret, o2r)) => {
                // The runner reads it: at the runner-facing address only.
                let mut info = self.channel_info("o2r", &o2r, O2R_MIME);
                info.url = std::mem::take(&mut info.internal_url);
                (Some(secret), Some(info))
            }
            None => (None, None),
        };
        HeartbeatResponse {
            runner_id: id.to_string(),
            orchestrator: self.config.runner_base.clone(),
            heartbeat_interval: format!("{}s", self.config.heartbeat_interval.as_secs()),
            heartbeat_ttl: format!("{}s", self.config.heartbeat_ttl.as_secs()),
            heartbeat_secret,
            o2r,
            session_ids,
        }
    }

    /// `POST /runners/{id}/unregister`.
    pub fn unregister(&self, id: &str, authorization: &str) -> Result<(), RegistryError> {
        {
            let state = self.lock();
            let runner = state.runners.get(id).ok_or(RegistryError::UnknownRunner)?;
            if !matches!(runner.kind, Kind::Dynamic { .. }) {
                return Err(RegistryError::StaticRunner);
            }
            if runner.expired(self.config.heartbeat_ttl, Instant::now()) {
                return Err(RegistryError::UnknownRunner);
            }
            if !secret_eq(authorization, &runner.seed.heartbeat_secret()) {
                return Err(RegistryError::Unauthorized);
            }
        }
        self.remove_runner(id, Release::Unregistered);
        Ok(())
    }

    fn remove_runner(&self, id: &str, why: Release) {
        let sessions = match self.lock().runners.get(id) {
            Some(r) => r.sessions.clone(),
            None => return,
        };
        for sid in sessions {
            self.release(&sid, why);
        }
        let removed = self.lock().runners.remove(id);
        if let Some(Runner {
            kind: Kind::Dynamic { o2r, .. },
            ..
        }) = removed
        {
            self.trickle.close_channel(&o2r);
        }
        self.touch();
    }

    /// Removes dynamic runners past their TTL; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<String> = self
            .lock()
            .runners
            .values()
            .filter(|r| r.expired(self.config.heartbeat_ttl, now))
            .map(|r| r.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(runner = %id, "live runner stopped heartbeating: removed, its sessions released");
            self.remove_runner(id, Release::Expired);
        }
        expired.len()
    }

    /// Sends every dynamic runner a keepalive on its O2R channel.
    pub fn keepalive(&self) {
        let channels: Vec<String> = self
            .lock()
            .runners
            .values()
            .filter_map(|r| match &r.kind {
                Kind::Dynamic { o2r, .. } => Some(o2r.clone()),
                Kind::Static => None,
            })
            .collect();
        let msg = serde_json::to_vec(&O2rMessage::Keepalive {
            keep: "alive".into(),
        })
        .expect("serializable");
        let msg = Bytes::from(msg);
        for ch in channels {
            self.trickle.publish_local(&ch, msg.clone());
        }
    }

    // ---- discovery ----

    /// Ready runners, optionally of one app and GPU (name or ID), with
    /// `wei_price` converting a runner's USD price (`None`: not advertised).
    pub fn discover(
        &self,
        app: Option<&str>,
        gpu: Option<&str>,
        wei_price: impl Fn(&RunnerSpec) -> Option<WeiPriceInfo>,
    ) -> Vec<DiscoveredRunner> {
        let now = Instant::now();
        let state = self.lock();
        let mut runners: Vec<&Runner> = state
            .runners
            .values()
            .filter(|r| self.ready(r, now))
            .filter(|r| app.is_none_or(|a| a.is_empty() || r.spec.app == a))
            .filter(|r| {
                gpu.is_none_or(|g| {
                    g.is_empty()
                        || r.spec
                            .gpu
                            .as_ref()
                            .is_some_and(|info| info.id == g || info.name.eq_ignore_ascii_case(g))
                })
            })
            .collect();
        runners.sort_by(|a, b| a.route().cmp(b.route()));
        runners
            .into_iter()
            .map(|r| {
                let route = r.route();
                let url = match r.spec.mode {
                    Mode::Persistent => format!("{}/apps/{route}/session", self.config.service_uri),
                    Mode::SingleShot if r.spec.proxy => self.config.proxy_template.url(route),
                    Mode::SingleShot => format!("{}/apps/{route}/app", self.config.service_uri),
                };
                let used = r.sessions.len() as u32;
                DiscoveredRunner {
                    url,
                    gpu: r.spec.gpu.clone(),
                    app: r.spec.app.clone(),
                    version: r.spec.version.clone(),
                    metadata: r.spec.metadata.clone(),
                    mode: r.spec.mode.as_str().into(),
                    capacity: r.spec.capacity,
                    capacity_used: used,
                    capacity_available: state.available(r),
                    price_info: if self.config.on_chain {
                        wei_price(&r.spec)
                    } else {
                        None
                    },
                }
            })
            .collect()
    }

    /// The spec of a ready runner (its price, its mode), by route.
    pub fn runner_spec(&self, route: &str) -> Result<RunnerSpec, RegistryError> {
        let state = self.lock();
        Ok(self.ready_runner(&state, route)?.spec.clone())
    }

    // ---- sessions ----

    /// Reserves a session on a ready runner of `mode`. `sid` is given on
    /// chain (the payment challenge's manifest ID); off chain one is made.
    pub fn reserve(
        &self,
        route: &str,
        mode: Mode,
        sid: Option<&str>,
    ) -> Result<Reserved, RegistryError> {
        self.reserve_on(route, mode, sid, false)
    }

    /// Reserves session `sid` on a ready runner of `app` with room (the
    /// one with the most room first): a legacy live-video-to-video stream,
    /// counted against the runner's capacity and listed in its heartbeats
    /// like any session, but not kept over a restart (its channels are
    /// not). [`RegistryError::Full`] when no such runner has room.
    pub fn reserve_app(&self, app: &str, sid: &str) -> Result<Reserved, RegistryError> {
        let now = Instant::now();
        let mut candidates: Vec<(u32, String, Mode)> = {
            let state = self.lock();
            state
                .runners
                .values()
                .filter(|r| r.spec.app == app && self.ready(r, now))
                .map(|r| (state.available(r), r.route().to_string(), r.spec.mode))
                .filter(|(room, _, _)| *room > 0)
                .collect()
        };
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, route, mode) in candidates {
            // Another reservation may have taken the room meanwhile.
            match self.reserve_on(&route, mode, Some(sid), true) {
                Err(RegistryError::Full | RegistryError::UnknownRunner) => continue,
                other => return other,
            }
        }
        Err(RegistryError::Full)
    }

    fn reserve_on(
        &self,
        route: &str,
        mode: Mode,
        sid: Option<&str>,
        transient: bool,
    ) -> Result<Reserved, RegistryError> {
        let mut state = self.lock();
        let runner = self.ready_runner(&state, route)?;
        match (runner.spec.mode, mode) {
            (Mode::SingleShot, Mode::Persistent) => return Err(RegistryError::SingleShotRunner),
            (Mode::Persistent, Mode::SingleShot) => return Err(RegistryError::PersistentRunner),
            _ => {}
        }
        let sid = match sid {
            Some(s) if state.sessions.contains_key(s) => return Err(RegistryError::SessionExists),
            Some(s) => s.to_string(),
            None => loop {
                let s = random_id("session_", 8);
                if !state.sessions.contains_key(&s) {
                    break s;
                }
            },
        };
        if state.available(runner) == 0 {
            return Err(RegistryError::Full);
        }
        let id = runner.id.clone();
        let session = Session {
            runner_id: id.clone(),
            created: SystemTime::now(),
            channels: BTreeMap::new(),
            proxies: Vec::new(),
            cancel: CancellationToken::new(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_SESSION)),
            unconfirmed: false,
            transient,
        };
        let mut session = session;
        let runner = state.runners.get_mut(&id).expect("found above");
        runner.sessions.push(sid.clone());
        let runner = &state.runners[&id];
        let route = runner.route().to_string();
        // A `proxy` runner's sessions are each published at a URL of their own.
        let app_url = if runner.spec.proxy && mode == Mode::Persistent {
            let proxy = random_id("", 26);
            session.proxies.push(proxy.clone());
            let target = runner.spec.runner_url.clone();
            state.proxies.insert(
                proxy.clone(),
                ProxyEntry {
                    target,
                    sid: sid.clone(),
                },
            );
            self.config.proxy_template.url(&proxy)
        } else {
            format!("{}/apps/{route}/session/{sid}/app", self.config.service_uri)
        };
        let runner = &state.runners[&id];
        let grant = self.grant(runner, &sid, &session);
        self.o2r_event(runner, "reserved", &sid);
        state.sessions.insert(sid.clone(), session);
        drop(state);
        tracing::info!(runner = %id, session = %sid, "live runner session reserved");
        self.touch();
        Ok(Reserved {
            response: SessionResponse {
                session_id: sid.clone(),
                app_url,
                control_url: format!("{}/apps/{route}/session/{sid}", self.config.service_uri),
            },
            grant,
        })
    }

    /// Releases a session: its requests are cancelled, its channels and
    /// proxies closed, and its runner told. Returns whether it existed.
    pub fn release(&self, sid: &str, why: Release) -> bool {
        let mut state = self.lock();
        let Some(session) = state.sessions.remove(sid) else {
            return false;
        };
        for p in &session.proxies {
            state.proxies.remove(p);
        }
        if let Some(runner) = state.runners.get_mut(&session.runner_id) {
            runner.sessions.retain(|s| s != sid);
            let runner = &state.runners[&session.runner_id];
            self.o2r_event(runner, "released", sid);
        }
        drop(state);
        session.cancel.cancel();
        for c in session.channels.values() {
            self.trickle.close_channel(&c.channel_name);
        }
        tracing::info!(session = %sid, reason = ?why, "live runner session released");
        self.touch();
        true
    }

    /// `POST /apps/{route}/session/{sid}/stop`: 404 only for an unknown runner.
    pub fn stop(&self, route: &str, sid: &str) -> Result<(), RegistryError> {
        let owned = {
            let state = self.lock();
            let runner = state
                .by_route(route)
                .filter(|r| !r.expired(self.config.heartbeat_ttl, Instant::now()))
                .ok_or(RegistryError::UnknownRunner)?;
            runner.sessions.iter().any(|s| s == sid)
        };
        if owned {
            self.release(sid, Release::Stopped);
        }
        Ok(())
    }

    /// A session on a ready runner, for requests proxied to it.
    pub fn session(&self, route: &str, sid: &str) -> Result<SessionGrant, RegistryError> {
        let state = self.lock();
        let runner = self.ready_runner(&state, route)?;
        let session = state
            .sessions
            .get(sid)
            .filter(|s| s.runner_id == runner.id)
            .ok_or(RegistryError::UnknownSession)?;
        Ok(self.grant(runner, sid, session))
    }

    /// Checks a runner callback's `Livepeer-Session-Token`: 404 for an
    /// unknown or not ready runner or session, 401 for a wrong token.
    fn authorize<'a>(
        &self,
        state: &'a State,
        route: &str,
        sid: &str,
        token: &str,
    ) -> Result<&'a Runner, RegistryError> {
        let runner = self.ready_runner(state, route)?;
        if state
            .sessions
            .get(sid)
            .is_none_or(|s| s.runner_id != runner.id)
        {
            return Err(RegistryError::UnknownSession);
        }
        if !secret_eq(token, &runner.seed.session_token(sid)) {
            return Err(RegistryError::Unauthorized);
        }
        Ok(runner)
    }

    /// `POST /runner/{route}/session/{sid}/channels`.
    pub fn create_channels(
        &self,
        route: &str,
        sid: &str,
        token: &str,
        wanted: &[ChannelRequest],
    ) -> Result<Vec<ChannelInfo>, RegistryError> {
        check_count(wanted.len())?;
        let mut names = Vec::with_capacity(wanted.len());
        for c in wanted {
            let name = channel_name(&c.name)?;
            let mime = if c.mime_type.trim().is_empty() {
                "application/octet-stream".to_string()
            } else {
                c.mime_type.trim().to_string()
            };
            names.push((name, mime));
        }
        let mut state = self.lock();
        let runner = self.authorize(&state, route, sid, token)?;
        let runner_channels: usize = runner
            .sessions
            .iter()
            .filter_map(|s| state.sessions.get(s))
            .map(|s| s.channels.len())
            .sum();
        let session = state.sessions.get_mut(sid).expect("authorized");
        let new = names
            .iter()
            .filter(|(n, _)| !session.channels.contains_key(n))
            .map(|(n, _)| n)
            .collect::<std::collections::HashSet<_>>()
            .len();
        if runner_channels + new > MAX_CHANNELS_PER_RUNNER {
            return Err(RegistryError::BadChannels(format!(
                "a runner's sessions cannot have more than {MAX_CHANNELS_PER_RUNNER} channels"
            )));
        }
        if session.channels.len() + new > MAX_CHANNELS_PER_SESSION {
            return Err(RegistryError::BadChannels(format!(
                "a session cannot have more than {MAX_CHANNELS_PER_SESSION} channels"
            )));
        }
        let mut out = Vec::with_capacity(names.len());
        for (name, mime) in names {
            if let Some(existing) = session.channels.get(&name) {
                out.push(existing.clone());
                continue;
            }
            let channel_name = format!("{sid}-{name}");
            self.trickle.create_channel(&channel_name, &mime)?;
            let info = self.channel_info(&name, &channel_name, &mime);
            session.channels.insert(name, info.clone());
            out.push(info);
        }
        drop(state);
        self.touch();
        Ok(out)
    }

    /// `DELETE /runner/{route}/session/{sid}/channels`: the names deleted.
    pub fn delete_channels(
        &self,
        route: &str,
        sid: &str,
        token: &str,
        names: &[String],
    ) -> Result<Vec<String>, RegistryError> {
        check_count(names.len())?;
        let normalized = names
            .iter()
            .map(|n| channel_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.lock();
        self.authorize(&state, route, sid, token)?;
        let session = state.sessions.get_mut(sid).expect("authorized");
        // All or nothing: an unknown name deletes none.
        if normalized.iter().any(|n| !session.channels.contains_key(n)) {
            return Err(RegistryError::UnknownChannel);
        }
        let mut deleted = Vec::new();
        for (name, given) in normalized.iter().zip(names) {
            if let Some(info) = session.channels.remove(name) {
                self.trickle.close_channel(&info.channel_name);
                deleted.push(given.clone());
            }
        }
        drop(state);
        self.touch();
        Ok(deleted)
    }

    /// `POST /runner/{route}/session/{sid}/proxy`: a public URL that
    /// forwards to `target` (default the runner's URL), which must be on
    /// the runner's own host. Returns (proxy ID, URL).
    pub fn create_proxy(
        &self,
        route: &str,
        sid: &str,
        token: &str,
        target: &str,
    ) -> Result<(String, String), RegistryError> {
        let mut state = self.lock();
        let runner = self.authorize(&state, route, sid, token)?;
        let target = if target.trim().is_empty() {
            runner.spec.runner_url.clone()
        } else {
            let bad = |m: &str| RegistryError::BadTarget(m.to_string());
            let url =
                Url::parse(target.trim()).map_err(|_| bad("target_url must be an absolute URL"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("target_url scheme must be http or https"));
            }
            if url.fragment().is_some() {
                return Err(bad("target_url must not have a fragment"));
            }
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            if host.is_empty() || host != runner.spec.host() {
                return Err(bad(
                    "target_url hostname must match registered runner_url hostname",
                ));
            }
            url
        };
        let session = state.sessions.get_mut(sid).expect("authorized");
        if session.proxies.len() >= MAX_PROXIES_PER_SESSION {
            return Err(RegistryError::TooManyProxies(MAX_PROXIES_PER_SESSION));
        }
        let id = random_id("", 26);
        session.proxies.push(id.clone());
        state.proxies.insert(
            id.clone(),
            ProxyEntry {
                target,
                sid: sid.to_string(),
            },
        );
        drop(state);
        self.touch();
        let url = self.config.proxy_template.url(&id);
        Ok((id, url))
    }

    /// `POST /runner/{route}/session/{sid}/stop`: the runner ends its session.
    pub fn runner_stop(&self, route: &str, sid: &str, token: &str) -> Result<(), RegistryError> {
        {
            let state = self.lock();
            self.authorize(&state, route, sid, token)?;
        }
        self.release(sid, Release::RunnerStopped);
        Ok(())
    }

    /// What a proxy URL leads to: a session proxy, or a single-shot runner
    /// published at its route.
    pub fn proxy(&self, id: &str) -> Option<ProxyTarget> {
        let state = self.lock();
        if let Some(p) = state.proxies.get(id) {
            let session = state.sessions.get(&p.sid)?;
            let runner = state.runners.get(&session.runner_id)?;
            if !self.ready(runner, Instant::now()) {
                return None;
            }
            return Some(ProxyTarget::Session {
                target: p.target.clone(),
                grant: Box::new(self.grant(runner, &p.sid, session)),
            });
        }
        let runner = state.by_route(id)?;
        (runner.spec.mode == Mode::SingleShot && runner.spec.proxy).then(|| {
            ProxyTarget::SingleShot {
                route: runner.route().to_string(),
            }
        })
    }

    /// Everything a restart must keep.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let mut runners: Vec<RunnerRecord> = state
            .runners
            .values()
            .map(|r| RunnerRecord {
                id: r.id.clone(),
                dynamic: matches!(r.kind, Kind::Dynamic { .. }),
                seed: alloy_primitives::hex::encode(r.seed.as_bytes()),
                decl: r.decl.clone(),
                healthy: r.healthy,
                o2r_next: match &r.kind {
                    Kind::Dynamic { o2r, .. } => self.trickle.next_write(o2r).unwrap_or(0),
                    Kind::Static => 0,
                },
            })
            .collect();
        runners.sort_by(|a, b| a.id.cmp(&b.id));
        let mut sessions: Vec<SessionRecord> = state
            .sessions
            .iter()
            .filter(|(_, s)| !s.transient)
            .map(|(sid, s)| SessionRecord {
                sid: sid.clone(),
                runner_id: s.runner_id.clone(),
                created_unix_ms: s
                    .created
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                channels: s
                    .channels
                    .values()
                    .map(|info| ChannelRecord {
                        info: info.clone(),
                        next: self.trickle.next_write(&info.channel_name).unwrap_or(0),
                    })
                    .collect(),
                proxies: s
                    .proxies
                    .iter()
                    .filter_map(|p| {
                        Some(ProxyRecord {
                            id: p.clone(),
                            target: state.proxies.get(p)?.target.to_string(),
                        })
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|s| (s.created_unix_ms, s.sid.clone()));
        Snapshot {
            runners,
            sessions,
            ..Snapshot::default()
        }
    }

    /// Takes back a snapshot into an empty registry. Runners whose
    /// declaration no longer passes (the rules changed, say on chain now)
    /// are dropped with their sessions. Dynamic runners get a full TTL to
    /// beat again; their sessions stay only if they report them.
    pub fn restore(&self, snap: Snapshot) -> (usize, usize) {
        let now = Instant::now();
        let mut state = self.lock();
        for rec in snap.runners {
            let rules = Rules {
                dynamic: rec.dynamic,
                on_chain: self.config.on_chain,
            };
            let spec = match spec::check(&rec.decl, rules) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(runner = %rec.id, error = %e, "restored live runner dropped");
                    continue;
                }
            };
            let mut seed = [0u8; 32];
            if alloy_primitives::hex::decode_to_slice(&rec.seed, &mut seed).is_err() {
                continue;
            }
            let seed = Seed::from_bytes(seed);
            let kind = if rec.dynamic {
                let o2r = seed.o2r_channel(&rec.id);
                if self
                    .trickle
                    .create_channel_at(&o2r, O2R_MIME, rec.o2r_next)
                    .is_err()
                {
                    continue;
                }
                Kind::Dynamic {
                    last_heartbeat: now,
                    o2r,
                }
            } else {
                Kind::Static
            };
            state.runners.insert(
                rec.id.clone(),
                Runner {
                    id: rec.id,
                    spec,
                    decl: rec.decl,
                    seed,
                    kind,
                    healthy: rec.healthy,
                    sessions: Vec::new(),
                },
            );
        }
        let mut kept = 0;
        for rec in snap.sessions {
            let Some(runner) = state.runners.get_mut(&rec.runner_id) else {
                continue;
            };
            runner.sessions.push(rec.sid.clone());
            let unconfirmed = matches!(runner.kind, Kind::Dynamic { .. });
            let mut channels = BTreeMap::new();
            for c in rec.channels {
                let mime = c.info.mime_type.clone();
                if self
                    .trickle
                    .create_channel_at(&c.info.channel_name, &mime, c.next)
                    .is_ok()
                {
                    channels.insert(c.info.name.clone(), c.info);
                }
            }
            let mut proxies = Vec::new();
            for p in rec.proxies {
                if let Ok(target) = Url::parse(&p.target) {
                    state.proxies.insert(
                        p.id.clone(),
                        ProxyEntry {
                            target,
                            sid: rec.sid.clone(),
                        },
                    );
                    proxies.push(p.id);
                }
            }
            state.sessions.insert(
                rec.sid,
                Session {
                    runner_id: rec.runner_id,
                    created: SystemTime::UNIX_EPOCH + Duration::from_millis(rec.created_unix_ms),
                    channels,
                    proxies,
                    cancel: CancellationToken::new(),
                    in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_PER_SESSION)),
                    unconfirmed,
                    transient: false,
                },
            );
            kept += 1;
        }
        (state.runners.len(), kept)
    }

    /// The route of the runner session `sid` is on.
    pub fn session_route(&self, sid: &str) -> Option<String> {
        let state = self.lock();
        let runner = state.runners.get(&state.sessions.get(sid)?.runner_id)?;
        Some(runner.route().to_string())
    }

    /// Every session's ID.
    pub fn session_ids(&self) -> Vec<String> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// What ends with session `sid` (its cancellation), if it is held.
    pub fn session_cancel(&self, sid: &str) -> Option<CancellationToken> {
        self.lock().sessions.get(sid).map(|s| s.cancel.clone())
    }

    /// Sessions held, in all.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trickle::TrickleConfig;

    const SECRET: &str = "bootstrap";

    fn registry(ttl: Duration) -> Arc<Registry> {
        let mut config = RegistryConfig::new("https://o.example:8935");
        config.orch_secret = Some(SECRET.into());
        config.heartbeat_ttl = ttl;
        config.runner_base = "http://10.0.0.1:8935".into();
        Registry::new(config, TrickleServer::new(TrickleConfig::default()))
    }

    fn decl(json: serde_json::Value) -> RunnerDecl {
        serde_json::from_value(json).unwrap()
    }

    fn dynamic(capacity: i64, gpu: serde_json::Value) -> RunnerDecl {
        decl(serde_json::json!({
            "runner_url": "http://runner.lan:9000/base", "app": "live/scope",
            "capacity": capacity, "gpu": gpu
        }))
    }

    #[test]
    fn a_runner_registers_with_the_bootstrap_secret_then_beats_with_its_own() {
        let reg = registry(Duration::from_secs(20));
        let d = dynamic(1, serde_json::Value::Null);
        assert_eq!(
            reg.heartbeat("wrong", &d).unwrap_err(),
            RegistryError::BadBootstrapSecret
        );
        let first = reg.heartbeat(SECRET, &d).unwrap();
        let secret = first.heartbeat_secret.clone().unwrap();
        assert!(first.runner_id.starts_with("runner_"));
        assert_eq!(first.orchestrator, "http://10.0.0.1:8935");
        assert_eq!(
            (
                first.heartbeat_interval.as_str(),
                first.heartbeat_ttl.as_str()
            ),
            ("5s", "20s")
        );
        let o2r = first.o2r.unwrap();
        assert!(o2r.url.starts_with("http://10.0.0.1:8935/ai/trickle/"));
        assert!(o2r.internal_url.is_empty());
        assert!(reg.trickle().has_channel(&o2r.channel_name));

        let mut again = d.clone();
        again.runner_id = first.runner_id.clone();
        // The bootstrap secret does not stand for a registered runner.
        assert_eq!(
            reg.heartbeat(SECRET, &again).unwrap_err(),
            RegistryError::BadHeartbeatSecret
        );
        let beat = reg.heartbeat(&secret, &again).unwrap();
        assert!(beat.heartbeat_secret.is_none() && beat.o2r.is_none());
        let r = reg
            .reserve(&first.runner_id, Mode::Persistent, None)
            .unwrap();
        let beat = reg.heartbeat(&secret, &again).unwrap();
        assert_eq!(beat.session_ids, vec![r.grant.sid.clone()]);
        // O2R: the reservation is the channel's first segment.
        assert_eq!(reg.trickle().next_write(&o2r.channel_name), Some(1));

        assert_eq!(
            reg.unregister(&first.runner_id, "nope").unwrap_err(),
            RegistryError::Unauthorized
        );
        reg.unregister(&first.runner_id, &secret).unwrap();
        assert!(r.grant.cancel.is_cancelled());
        assert!(!reg.trickle().has_channel(&o2r.channel_name));
        assert_eq!(
            reg.unregister(&first.runner_id, &secret).unwrap_err(),
            RegistryError::UnknownRunner
        );
    }

    #[test]
    fn a_stream_takes_room_on_a_runner_of_its_app_and_is_not_kept_over_a_restart() {
        let reg = registry(Duration::from_secs(20));
        let app = |name: &str, capacity: i64| {
            decl(serde_json::json!({
                "runner_url": "http://runner.lan:9000", "app": name, "capacity": capacity
            }))
        };
        let a = reg
            .heartbeat(SECRET, &app("live-video-to-video/noop", 1))
            .unwrap();
        let b = reg
            .heartbeat(SECRET, &app("live-video-to-video/noop", 2))
            .unwrap();
        reg.heartbeat(SECRET, &app("live-video-to-video/other", 1))
            .unwrap();
        // The runner with the most room first, then the other.
        let first = reg
            .reserve_app("live-video-to-video/noop", "00000001")
            .unwrap();
        assert_eq!(first.grant.route, b.runner_id);
        assert_eq!(first.grant.sid, "00000001");
        assert_eq!(
            reg.reserve_app("live-video-to-video/noop", "00000001")
                .unwrap_err(),
            RegistryError::SessionExists
        );
        let second = reg
            .reserve_app("live-video-to-video/noop", "00000002")
            .unwrap();
        let third = reg
            .reserve_app("live-video-to-video/noop", "00000003")
            .unwrap();
        let mut routes = [second.grant.route.clone(), third.grant.route.clone()];
        routes.sort();
        let mut want = [a.runner_id.clone(), b.runner_id.clone()];
        want.sort();
        assert_eq!(routes, want);
        assert_eq!(
            reg.reserve_app("live-video-to-video/noop", "00000004")
                .unwrap_err(),
            RegistryError::Full
        );
        assert_eq!(
            reg.reserve_app("live-video-to-video/none", "00000004")
                .unwrap_err(),
            RegistryError::Full
        );
        // Listed to its runner like any session, left out of snapshots.
        let mut beat = app("live-video-to-video/noop", 1);
        beat.runner_id = a.runner_id.clone();
        let listed = reg
            .heartbeat(a.heartbeat_secret.as_deref().unwrap(), &beat)
            .unwrap()
            .session_ids;
        assert_eq!(listed.len(), 1);
        assert!(reg.snapshot().sessions.is_empty());
        // Released, its room is free again.
        assert!(reg.release("00000002", Release::Finished));
        reg.reserve_app("live-video-to-video/noop", "00000005")
            .unwrap();
    }

    #[test]
    fn keepalives_go_to_every_dynamic_runners_o2r_channel() {
        let reg = registry(Duration::from_secs(20));
        let a = reg
            .heartbeat(SECRET, &dynamic(1, serde_json::Value::Null))
            .unwrap();
        let o2r = a.o2r.unwrap().channel_name;
        reg.keepalive();
        reg.keepalive();
        assert_eq!(reg.trickle().next_write(&o2r), Some(2));
    }

    #[test]
    fn without_a_bootstrap_secret_dynamic_registration_is_off() {
        let reg = Registry::new(
            RegistryConfig::new("https://o:1"),
            TrickleServer::new(TrickleConfig::default()),
        );
        assert_eq!(
            reg.heartbeat("", &dynamic(1, serde_json::Value::Null))
                .unwrap_err(),
            RegistryError::DynamicDisabled
        );
    }

    #[test]
    fn a_silent_runner_expires_and_its_sessions_are_released() {
        let reg = registry(Duration::from_millis(50));
        let first = reg
            .heartbeat(SECRET, &dynamic(2, serde_json::Value::Null))
            .unwrap();
        let r = reg
            .reserve(&first.runner_id, Mode::Persistent, None)
            .unwrap();
        std::thread::sleep(Duration::from_millis(80));
        // Expired before the sweep: not found, and not reservable.
        assert_eq!(
            reg.reserve(&first.runner_id, Mode::Persistent, None)
                .unwrap_err(),
            RegistryError::UnknownRunner
        );
        assert!(reg.discover(None, None, |_| None).is_empty());
        let mut again = dynamic(2, serde_json::Value::Null);
        again.runner_id = first.runner_id.clone();
        assert_eq!(
            reg.heartbeat(&first.heartbeat_secret.clone().unwrap(), &again)
                .unwrap_err(),
            RegistryError::UnknownRunner
        );
        assert_eq!(reg.sweep(), 1);
        assert!(r.grant.cancel.is_cancelled());
        assert_eq!(reg.session_count(), 0);
        // Swept: the old secret now meets the unknown-runner rule (401),
        // and the runner registers again with the bootstrap secret.
        assert_eq!(
            reg.heartbeat(&first.heartbeat_secret.unwrap(), &again)
                .unwrap_err(),
            RegistryError::BadBootstrapSecret
        );
        assert!(reg.heartbeat(SECRET, &again).is_ok());
    }

    #[test]
    fn capacity_is_counted_in_sessions_and_shared_per_gpu() {
        let reg = registry(Duration::from_secs(20));
        let a = reg
            .heartbeat(SECRET, &dynamic(2, serde_json::json!(0)))
            .unwrap();
        let b = reg
            .heartbeat(SECRET, &dynamic(2, serde_json::json!({"id": "0"})))
            .unwrap();
        reg.reserve(&a.runner_id, Mode::Persistent, None).unwrap();
        let s2 = reg.reserve(&b.runner_id, Mode::Persistent, None).unwrap();
        // GPU 0 on runner.lan holds two sessions in all.
        assert_eq!(
            reg.reserve(&a.runner_id, Mode::Persistent, None)
                .unwrap_err(),
            RegistryError::Full
        );
        let listed = reg.discover(Some("live/scope"), None, |_| None);
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|r| r.capacity_available == 0));
        reg.stop(&b.runner_id, &s2.grant.sid).unwrap();
        assert!(reg.reserve(&a.runner_id, Mode::Persistent, None).is_ok());
        // A session ID given twice (on chain, the manifest ID) is a conflict.
        let c = reg
            .heartbeat(SECRET, &dynamic(3, serde_json::Value::Null))
            .unwrap();
        reg.reserve(&c.runner_id, Mode::Persistent, Some("abcd0123"))
            .unwrap();
        assert_eq!(
            reg.reserve(&c.runner_id, Mode::Persistent, Some("abcd0123"))
                .unwrap_err(),
            RegistryError::SessionExists
        );
        assert_eq!(
            reg.reserve(&c.runner_id, Mode::SingleShot, None)
                .unwrap_err(),
            RegistryError::PersistentRunner
        );
    }

    #[test]
    fn callbacks_need_the_sessions_token_and_stay_within_their_limits() {
        let reg = registry(Duration::from_secs(20));
        let a = reg
            .heartbeat(SECRET, &dynamic(2, serde_json::Value::Null))
            .unwrap();
        let s1 = reg.reserve(&a.runner_id, Mode::Persistent, None).unwrap();
        let s2 = reg.reserve(&a.runner_id, Mode::Persistent, None).unwrap();
        let (route, sid, token) = (&s1.grant.route, &s1.grant.sid, &s1.grant.token);
        let ch = |name: &str| ChannelRequest {
            name: name.into(),
            mime_type: String::new(),
        };
        // Another session's token is not this session's.
        assert_eq!(
            reg.create_channels(route, sid, &s2.grant.token, &[ch("out")])
                .unwrap_err(),
            RegistryError::Unauthorized
        );
        assert_eq!(
            reg.create_channels(route, "session_nope", token, &[ch("out")])
                .unwrap_err(),
            RegistryError::UnknownSession
        );
        let made = reg
            .create_channels(route, sid, token, &[ch("foo/bar")])
            .unwrap();
        assert_eq!(made[0].name, "foo-bar");
        assert_eq!(made[0].channel_name, format!("{sid}-foo-bar"));
        assert_eq!(
            made[0].url,
            format!("https://o.example:8935/ai/trickle/{sid}-foo-bar")
        );
        assert_eq!(
            made[0].internal_url,
            format!("http://10.0.0.1:8935/ai/trickle/{sid}-foo-bar")
        );
        assert_eq!(made[0].mime_type, "application/octet-stream");
        assert!(matches!(
            reg.create_channels(route, sid, token, &[ch("bad.name")]),
            Err(RegistryError::BadChannels(_))
        ));
        // 25 per session in all, not only per request.
        let many: Vec<ChannelRequest> = (0..24).map(|i| ch(&format!("c{i}"))).collect();
        assert_eq!(
            reg.create_channels(route, sid, token, &many).unwrap().len(),
            24
        );
        assert!(matches!(
            reg.create_channels(route, sid, token, &[ch("one-more")]),
            Err(RegistryError::BadChannels(_))
        ));
        // A repeated name is the channel made before.
        assert_eq!(
            reg.create_channels(route, sid, token, &[ch("foo/bar")])
                .unwrap(),
            made
        );
        assert_eq!(
            reg.delete_channels(route, sid, token, &["nope".into()])
                .unwrap_err(),
            RegistryError::UnknownChannel
        );

        // Proxies only to the runner's own host.
        assert!(matches!(
            reg.create_proxy(route, sid, token, "http://169.254.169.254/latest"),
            Err(RegistryError::BadTarget(_))
        ));
        let (id, url) = reg
            .create_proxy(route, sid, token, "http://RUNNER.lan:9001/ws")
            .unwrap();
        assert_eq!(url, format!("https://o.example:8935/run/{id}"));
        assert!(matches!(reg.proxy(&id), Some(ProxyTarget::Session { .. })));

        // The runner stops its session: channels and proxies go with it.
        reg.runner_stop(route, sid, token).unwrap();
        assert!(!reg.trickle().has_channel(&made[0].channel_name));
        assert!(reg.proxy(&id).is_none());
        assert!(s1.grant.cancel.is_cancelled());
        assert!(!s2.grant.cancel.is_cancelled());
    }

    #[test]
    fn static_runners_upsert_by_label_and_hide_while_unhealthy() {
        let reg = registry(Duration::from_secs(20));
        let entry = serde_json::json!({
            "label": "scope", "routing": "label", "runner_url": "http://r:1",
            "health_url": "/health", "app": "live/scope", "capacity": 1
        });
        let out = reg.register_static(&[decl(entry.clone())]).unwrap();
        let id = out[0].runner_id.clone();
        assert!(!out[0].healthy);
        assert!(reg.discover(None, None, |_| None).is_empty());
        reg.set_health(&id, true);
        let r = reg.reserve("scope", Mode::Persistent, None).unwrap();
        assert!(r
            .response
            .app_url
            .ends_with(&format!("/apps/scope/session/{}/app", r.grant.sid)));
        // The same label again keeps the ID and the session.
        let out = reg.register_static(&[decl(entry.clone())]).unwrap();
        assert_eq!(out[0].runner_id, id);
        assert_eq!(reg.session_count(), 1);
        // A batch with one bad entry changes nothing.
        let mut bad = entry.clone();
        bad["label"] = serde_json::json!("other");
        bad["metadata"] = serde_json::json!("x".repeat(1025));
        assert!(matches!(
            reg.register_static(&[decl(entry), decl(bad)]),
            Err(RegistryError::InvalidBatch { index: 1, .. })
        ));
        // Static runners do not heartbeat.
        let mut hb = dynamic(1, serde_json::Value::Null);
        hb.runner_id = id.clone();
        assert_eq!(
            reg.heartbeat("", &hb).unwrap_err(),
            RegistryError::StaticHeartbeat
        );
        assert_eq!(
            reg.unregister(&id, "x").unwrap_err(),
            RegistryError::StaticRunner
        );
        // Unhealthy: hidden, its sessions released.
        reg.set_health(&id, false);
        assert!(r.grant.cancel.is_cancelled());
        assert_eq!(
            reg.reserve("scope", Mode::Persistent, None).unwrap_err(),
            RegistryError::UnknownRunner
        );
    }

    #[test]
    fn a_restart_keeps_runners_secrets_and_the_sessions_their_runners_still_report() {
        let reg = registry(Duration::from_secs(20));
        let first = reg
            .heartbeat(SECRET, &dynamic(3, serde_json::Value::Null))
            .unwrap();
        let secret = first.heartbeat_secret.unwrap();
        let o2r = first.o2r.unwrap().channel_name;
        let kept = reg
            .reserve(&first.runner_id, Mode::Persistent, None)
            .unwrap();
        let dropped = reg
            .reserve(&first.runner_id, Mode::Persistent, None)
            .unwrap();
        let (route, sid, token) = (&kept.grant.route, &kept.grant.sid, &kept.grant.token);
        let ch = reg
            .create_channels(
                route,
                sid,
                token,
                &[ChannelRequest {
                    name: "out".into(),
                    mime_type: "video/MP2T".into(),
                }],
            )
            .unwrap();
        reg.trickle()
            .publish_local(&ch[0].channel_name, Bytes::from_static(b"seg"));
        let (proxy, _) = reg.create_proxy(route, sid, token, "").unwrap();
        let snap = reg.snapshot();
        let json = serde_json::to_string(&snap).unwrap();

        // A new process: a new registry and trickle server from the file.
        let again = registry(Duration::from_secs(20));
        let snap: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(again.restore(snap), (1, 2));
        // Channels continue their sequence (O2R: two reservations sent).
        assert_eq!(again.trickle().next_write(&o2r), Some(2));
        assert_eq!(again.trickle().next_write(&ch[0].channel_name), Some(1));
        // The same token works for callbacks, the same proxy leads on.
        assert!(again.create_proxy(route, sid, token, "").is_ok());
        assert!(matches!(
            again.proxy(&proxy),
            Some(ProxyTarget::Session { .. })
        ));
        // The runner beats with its old secret and reports one session:
        // the other is released.
        let mut beat = dynamic(3, serde_json::Value::Null);
        beat.runner_id = first.runner_id.clone();
        beat.session_ids = Some(vec![sid.clone()]);
        let answer = again.heartbeat(&secret, &beat).unwrap();
        assert_eq!(answer.session_ids, vec![sid.clone()]);
        assert!(again.session(route, &dropped.grant.sid).is_err());
        // Once confirmed, a session is not released by a later heartbeat
        // that races its reservation.
        beat.session_ids = Some(Vec::new());
        again.heartbeat(&secret, &beat).unwrap();
        assert!(again.session(route, sid).is_ok());
    }
}
