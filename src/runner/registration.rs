//! A runner's side of dynamic registration (go-livepeer 0.9
//! `ai/runner/live_runner.go`; the official SDK's `register_runner`):
//! register with the bootstrap secret, then beat with the derived secret at
//! the interval the orchestrator names, register again under the same ID
//! when the orchestrator no longer knows the runner (go-livepeer answers
//! 401 after a sweep, its documentation says 404: both are taken), and
//! unregister when told to stop. The orchestrator-to-runner (O2R) channel
//! each registration opens is read from its first segment, so that a
//! session the orchestrator releases stops here at once instead of at the
//! next heartbeat answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::live_runner::wire::{ChannelInfo, HeartbeatResponse, O2rMessage, RunnerDecl};
use crate::trickle::client::TrickleSubscriber;

/// Largest O2R message read: go-livepeer's are under 200 bytes.
const MAX_O2R_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("the orchestrator refused the bootstrap secret (401)")]
    Refused,
    #[error("the orchestrator has dynamic registration disabled (404)")]
    Disabled,
    #[error("the orchestrator refused the runner: {status} {body}")]
    Invalid { status: u16, body: String },
    #[error("orchestrator unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the orchestrator's answer is not a heartbeat response: {0}")]
    Answer(String),
}

/// A session event the orchestrator sent on the O2R channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Reserved(String),
    Released(String),
    /// No heartbeat has succeeded for longer than the TTL: the orchestrator
    /// has swept this runner and released every session it held, or is gone.
    Lost,
}

/// What the orchestrator last said about this runner.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub runner_id: String,
    /// The base URL the orchestrator wants callbacks and beats at.
    pub orchestrator: String,
    /// Sessions the orchestrator holds for this runner (authoritative).
    pub session_ids: Vec<String>,
}

pub struct Registration {
    http: reqwest::Client,
    /// Where the first registration goes (`https://host:port`).
    bootstrap_url: String,
    secret: String,
    decl: Mutex<RunnerDecl>,
    state: watch::Sender<Option<Registered>>,
    /// The heartbeat secret, once registered.
    heartbeat_secret: Mutex<Option<String>>,
    interval: Mutex<Duration>,
    /// The orchestrator's TTL, and when a beat last succeeded.
    ttl: Mutex<Duration>,
    last_ok: Mutex<Option<std::time::Instant>>,
    /// Sessions this runner is working on, reported in each beat.
    local_sessions: Mutex<BTreeSet<String>>,
    /// Session events read from the O2R channel.
    events: broadcast::Sender<SessionEvent>,
    /// The reader of the current registration's O2R channel.
    o2r_reader: Mutex<Option<CancellationToken>>,
}

fn go_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

impl Registration {
    /// `orchestrator` is `host:port` or a URL; go-livepeer orchestrators
    /// use self-signed certificates, so they are not verified (as the SDK
    /// and go-livepeer's own clients do).
    pub fn new(orchestrator: &str, secret: &str, decl: RunnerDecl) -> Arc<Registration> {
        let bootstrap_url = if orchestrator.contains("://") {
            orchestrator.trim_end_matches('/').to_string()
        } else {
            format!("https://{}", orchestrator.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Arc::new(Registration {
            http,
            bootstrap_url,
            secret: secret.to_string(),
            decl: Mutex::new(decl),
            state: watch::channel(None).0,
            heartbeat_secret: Mutex::new(None),
            interval: Mutex::new(Duration::from_secs(5)),
            ttl: Mutex::new(Duration::from_secs(20)),
            last_ok: Mutex::default(),
            local_sessions: Mutex::default(),
            events: broadcast::channel(64).0,
            o2r_reader: Mutex::default(),
        })
    }

    /// Session events from the orchestrator's O2R channel.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// Reads a new registration's O2R channel from its first segment (the
    /// previous registration's reader stops: its channel closed with it).
    fn follow_o2r(&self, channel: &ChannelInfo) {
        let url = if channel.internal_url.is_empty() {
            channel.url.clone()
        } else {
            channel.internal_url.clone()
        };
        let stop = CancellationToken::new();
        if let Some(old) = self
            .o2r_reader
            .lock()
            .expect("o2r reader")
            .replace(stop.clone())
        {
            old.cancel();
        }
        let http = crate::trickle::client::http_client_builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("HTTP client");
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = read_o2r(TrickleSubscriber::new(http, &url, 0), events) => {}
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Registered>> {
        self.state.subscribe()
    }

    pub fn runner_id(&self) -> Option<String> {
        self.state.borrow().as_ref().map(|s| s.runner_id.clone())
    }

    /// Reports `status` at once (anything but `ready` hides the runner from
    /// discovery and reservations; sessions it holds are kept).
    pub async fn announce_status(&self, status: &str) -> Result<Registered, RegistrationError> {
        self.decl.lock().expect("decl").status = status.to_string();
        self.beat().await
    }

    /// Sessions reported as this runner's in the next beat.
    pub fn set_local_sessions(&self, sessions: impl IntoIterator<Item = String>) {
        *self.local_sessions.lock().expect("sessions") = sessions.into_iter().collect();
    }

    /// Where this runner's session callbacks may point: the runner-facing
    /// base the orchestrator last named (go-livepeer's -liveRunnerAddr, or
    /// its service URI) and the address this runner registers at.
    pub fn control_bases(&self) -> Vec<String> {
        let named = self
            .state
            .borrow()
            .as_ref()
            .map(|s| s.orchestrator.trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty());
        named
            .into_iter()
            .chain(std::iter::once(self.bootstrap_url.clone()))
            .collect()
    }

    fn base(&self) -> String {
        self.state
            .borrow()
            .as_ref()
            .map(|s| s.orchestrator.clone())
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| self.bootstrap_url.clone())
    }

    async fn post(&self, url: &str, auth: &str) -> Result<reqwest::Response, RegistrationError> {
        let mut decl = self.decl.lock().expect("decl").clone();
        if let Some(id) = self.runner_id() {
            decl.runner_id = id;
        }
        decl.session_ids = Some(
            self.local_sessions
                .lock()
                .expect("sessions")
                .iter()
                .cloned()
                .collect(),
        );
        Ok(self
            .http
            .post(url)
            .header("Authorization", auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&decl).expect("serializable"))
            .send()
            .await?)
    }

    fn accept(&self, answer: HeartbeatResponse) {
        if let Some(channel) = &answer.o2r {
            self.follow_o2r(channel);
        }
        if let Some(secret) = answer.heartbeat_secret {
            *self.heartbeat_secret.lock().expect("secret") = Some(secret);
        }
        if let Some(every) = go_duration(&answer.heartbeat_interval) {
            // Never slower than a third of the TTL, never a busy loop.
            let ttl = go_duration(&answer.heartbeat_ttl).unwrap_or(every * 4);
            *self.interval.lock().expect("interval") =
                every.min(ttl / 3).max(Duration::from_millis(200));
            *self.ttl.lock().expect("ttl") = ttl;
        }
        *self.last_ok.lock().expect("last ok") = Some(std::time::Instant::now());
        self.state.send_replace(Some(Registered {
            runner_id: answer.runner_id,
            orchestrator: answer.orchestrator,
            session_ids: answer.session_ids,
        }));
    }

    async fn answer(r: reqwest::Response) -> Result<HeartbeatResponse, RegistrationError> {
        let status = r.status().as_u16();
        let body = r.text().await?;
        match status {
            200 => {
                serde_json::from_str(&body).map_err(|e| RegistrationError::Answer(e.to_string()))
            }
            401 => Err(RegistrationError::Refused),
            404 => Err(RegistrationError::Disabled),
            _ => Err(RegistrationError::Invalid {
                status,
                body: body.trim().chars().take(200).collect(),
            }),
        }
    }

    /// Registers with the bootstrap secret (keeping the runner's ID if it
    /// had one).
    pub async fn register(&self) -> Result<Registered, RegistrationError> {
        let url = format!("{}/runners/heartbeat", self.bootstrap_url);
        let answer = Self::answer(self.post(&url, &self.secret).await?).await?;
        if answer.heartbeat_secret.is_none() {
            return Err(RegistrationError::Answer(
                "no heartbeat_secret in the registration answer".into(),
            ));
        }
        self.accept(answer);
        tracing::info!(runner = ?self.runner_id(), "registered as a Live Runner");
        Ok(self.state.borrow().clone().expect("just set"))
    }

    /// One heartbeat; a runner the orchestrator forgot registers again.
    pub async fn beat(&self) -> Result<Registered, RegistrationError> {
        let secret = self.heartbeat_secret.lock().expect("secret").clone();
        let Some(secret) = secret else {
            return self.register().await;
        };
        let url = format!("{}/runners/heartbeat", self.base());
        match Self::answer(self.post(&url, &secret).await?).await {
            Ok(answer) => {
                self.accept(answer);
                Ok(self.state.borrow().clone().expect("just set"))
            }
            Err(RegistrationError::Refused | RegistrationError::Disabled) => {
                tracing::warn!(runner = ?self.runner_id(), "the orchestrator no longer knows this runner: registering again");
                *self.heartbeat_secret.lock().expect("secret") = None;
                self.register().await
            }
            Err(e) => Err(e),
        }
    }

    /// Beats until `stop` resolves, then unregisters. Failures are retried
    /// at the heartbeat interval (the orchestrator's TTL allows several).
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let every = *self.interval.lock().expect("interval");
            if let Err(e) = self.beat().await {
                tracing::warn!(error = %e, "Live Runner heartbeat failed");
                let ttl = *self.ttl.lock().expect("ttl");
                let lost = self
                    .last_ok
                    .lock()
                    .expect("last ok")
                    .is_some_and(|t| t.elapsed() > ttl);
                if lost {
                    // Once per outage: the next success sets it again.
                    *self.last_ok.lock().expect("last ok") = None;
                    tracing::warn!(
                        ?ttl,
                        "no heartbeat answered within the TTL: every session is released"
                    );
                    let _ = self.events.send(SessionEvent::Lost);
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        self.unregister().await;
        if let Some(reader) = self.o2r_reader.lock().expect("o2r reader").take() {
            reader.cancel();
        }
    }

    /// `POST /runners/{id}/unregister` with the heartbeat secret.
    pub async fn unregister(&self) {
        let (Some(id), Some(secret)) = (
            self.runner_id(),
            self.heartbeat_secret.lock().expect("secret").clone(),
        ) else {
            return;
        };
        let url = format!("{}/runners/{id}/unregister", self.base());
        match self
            .http
            .post(&url)
            .header("Authorization", secret)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::info!(runner = %id, "Live Runner unregistered")
            }
            Ok(r) => tracing::warn!(runner = %id, status = %r.status(), "unregister refused"),
            Err(e) => tracing::warn!(runner = %id, error = %e, "unregister failed"),
        }
    }
}

/// Reads O2R messages until the channel ends or fails for good: one JSON
/// object per segment; keepalives and anything unknown are skipped.
async fn read_o2r(mut channel: TrickleSubscriber, events: broadcast::Sender<SessionEvent>) {
    loop {
        let mut segment = match channel.next_segment().await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) if e.is_terminal() => {
                tracing::debug!(error = %e, "O2R channel closed");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "O2R channel unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(bytes) = segment.read_all(MAX_O2R_MESSAGE).await else {
            continue;
        };
        if let Some(event) = session_event(&bytes) {
            tracing::debug!(?event, "O2R session event");
            let _ = events.send(event);
        }
    }
}

fn session_event(bytes: &[u8]) -> Option<SessionEvent> {
    match serde_json::from_slice(bytes).ok()? {
        O2rMessage::Session { event, session, .. } => match event.as_str() {
            "reserved" => Some(SessionEvent::Reserved(session)),
            "released" => Some(SessionEvent::Released(session)),
            _ => None,
        },
        O2rMessage::Keepalive { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(go_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("soon"), None);
    }

    #[test]
    fn o2r_messages_as_go_livepeer_writes_them() {
        let released =
            br#"{"event":"released","session":"s1","timestamp":"2026-12-06T08:00:00.123456789Z"}"#;
        assert_eq!(
            session_event(released),
            Some(SessionEvent::Released("s1".into()))
        );
        let reserved = br#"{"event":"reserved","session":"s2","timestamp":"2026-12-06T08:00:00Z"}"#;
        assert_eq!(
            session_event(reserved),
            Some(SessionEvent::Reserved("s2".into()))
        );
        assert_eq!(session_event(br#"{"keep":"alive"}"#), None);
        assert_eq!(session_event(b"not json"), None);
        assert_eq!(
            session_event(br#"{"event":"other","session":"s","timestamp":""}"#),
            None
        );
    }
}
