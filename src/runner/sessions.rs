//! What every persistent app shares: the session a request belongs to (the
//! orchestrator's session headers, checked against its callback base), the
//! sessions being worked on, and the session callbacks (channels, stop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_util::sync::CancellationToken;

use crate::live_runner::wire::{
    headers as lr, ChannelInfo, ChannelRequest, CreateChannels, CreatedChannels,
};

/// The orchestrator bases whose session callbacks an app follows: a
/// session's `Livepeer-Session-Control` must be
/// `{base}/runner/{route}/session/{sid}` for one of them. Anyone who reaches
/// the runner's port can send the session headers; without this check they
/// would point the app at any URL (the runner would call it, read what it
/// serves and work for free). With it, the orchestrator's own token check
/// on the callback decides.
pub type ControlBases = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// A session younger than this is never stopped for missing from a
/// heartbeat answer: that answer may predate its reservation.
const RECONCILE_GRACE: Duration = Duration::from_secs(15);

/// A route or session ID as orchestrators make them: a plain path segment
/// that no URL parser reads as anything else (no `/`, `?`, `#`, `%`, `@`,
/// no dot segment).
pub(crate) fn plain_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `control` is a session callback under one of `bases` for session `sid`.
pub(crate) fn control_allowed(bases: &[String], control: &str, sid: &str) -> bool {
    if !plain_segment(sid) {
        return false;
    }
    let tail = format!("/session/{sid}");
    bases.iter().any(|base| {
        control
            .strip_prefix(base.trim_end_matches('/'))
            .and_then(|rest| rest.strip_prefix("/runner/"))
            .and_then(|rest| rest.strip_suffix(&tail))
            .is_some_and(plain_segment)
    })
}

/// `url` is a trickle channel of one of `bases` (`{base}/ai/trickle/{name}`).
pub(crate) fn trickle_allowed(bases: &[String], url: &str) -> bool {
    bases.iter().any(|base| {
        url.strip_prefix(base.trim_end_matches('/'))
            .and_then(|rest| rest.strip_prefix("/ai/trickle/"))
            .is_some_and(plain_segment)
    })
}

/// A refused request: its status and ai-runner's message.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// ai-runner's error body.
pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({"detail": {"msg": msg.to_string()}})),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The runner-facing URL of a channel (where the app reads and writes it).
pub(crate) fn runner_side(c: &ChannelInfo) -> String {
    if c.internal_url.is_empty() {
        c.url.clone()
    } else {
        c.internal_url.clone()
    }
}

/// The HTTP client apps reach their orchestrator with. Orchestrators use
/// self-signed certificates (as the SDK and go-livepeer's clients: no
/// verification).
pub(crate) fn orchestrator_client() -> reqwest::Client {
    crate::trickle::client::http_client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("HTTP client")
}

/// The sessions an app works on and whose callbacks it follows.
#[derive(Default)]
pub struct Sessions {
    running: Mutex<HashMap<String, (CancellationToken, Instant)>>,
    control_bases: OnceLock<ControlBases>,
}

/// One session as its start request names it.
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub sid: String,
    pub token: String,
    /// The session's callback base (`…/runner/{route}/session/{sid}`).
    pub control: String,
}

impl Sessions {
    /// Follows session callbacks under these bases only (set once; until
    /// then every session is refused).
    pub fn follow_controls_of(&self, bases: ControlBases) {
        let _ = self.control_bases.set(bases);
    }

    /// The orchestrator's bases now (empty before the first registration).
    pub fn bases(&self) -> Vec<String> {
        self.control_bases.get().map(|b| b()).unwrap_or_default()
    }

    /// The session a start request belongs to, or the answer refusing it.
    pub fn session_of(&self, headers: &HeaderMap) -> Result<SessionRef, Refused> {
        let (Some(sid), Some(token), Some(control)) = (
            header(headers, lr::SESSION_ID),
            header(headers, lr::SESSION_TOKEN),
            header(headers, lr::SESSION_CONTROL),
        ) else {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "not a Live Runner session: the orchestrator's session headers are missing".into(),
            ));
        };
        if !control_allowed(&self.bases(), control, sid) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "the session's control URL is not this runner's orchestrator".into(),
            ));
        }
        Ok(SessionRef {
            sid: sid.to_string(),
            token: token.to_string(),
            control: control.to_string(),
        })
    }

    /// Starts tracking `sid`: its cancellation, or None when it runs already.
    pub fn begin(&self, sid: &str) -> Option<CancellationToken> {
        let mut running = self.running.lock().expect("sessions");
        if running.contains_key(sid) {
            return None;
        }
        let cancel = CancellationToken::new();
        running.insert(sid.to_string(), (cancel.clone(), Instant::now()));
        Some(cancel)
    }

    pub fn contains(&self, sid: &str) -> bool {
        self.running.lock().expect("sessions").contains_key(sid)
    }

    /// Forgets a session that ended on its own.
    pub fn end(&self, sid: &str) {
        self.running.lock().expect("sessions").remove(sid);
    }

    pub fn ids(&self) -> Vec<String> {
        self.running
            .lock()
            .expect("sessions")
            .keys()
            .cloned()
            .collect()
    }

    /// Stops a session the orchestrator released.
    pub fn stop(&self, sid: &str) {
        if let Some((cancel, _)) = self.running.lock().expect("sessions").remove(sid) {
            tracing::info!(session = %sid, "session released by the orchestrator: stopped");
            cancel.cancel();
        }
    }

    /// Stops local work on sessions the orchestrator no longer holds.
    pub fn retain(&self, held: &[String]) {
        let mut running = self.running.lock().expect("sessions");
        running.retain(|sid, (cancel, started)| {
            let keep = held.contains(sid) || started.elapsed() < RECONCILE_GRACE;
            if !keep {
                tracing::info!(session = %sid, "session no longer held by the orchestrator: stopped");
                cancel.cancel();
            }
            keep
        });
    }
}

impl SessionRef {
    /// Asks the orchestrator for the session's trickle channels.
    pub async fn create_channels(
        &self,
        http: &reqwest::Client,
        wanted: Vec<ChannelRequest>,
    ) -> Result<Vec<ChannelInfo>, String> {
        let r = http
            .post(format!("{}/channels", self.control))
            .header(lr::SESSION_TOKEN, &self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&CreateChannels { channels: wanted }).expect("serializable"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("session callback: {}", e.without_url()))?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("the orchestrator refused the channels: {status}"));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| format!("channels answer: {}", e.without_url()))?;
        let created: CreatedChannels =
            serde_json::from_slice(&body).map_err(|e| format!("channels answer: {e}"))?;
        Ok(created.channels)
    }

    /// The runner's own stop (`POST {control}/stop` with the session token):
    /// the session's slot goes back to the orchestrator now rather than when
    /// the gateway thinks of stopping it.
    pub async fn stop_at_orchestrator(&self, http: &reqwest::Client) {
        let sent = http
            .post(format!("{}/stop", self.control))
            .header(lr::SESSION_TOKEN, &self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                tracing::warn!(session = %self.sid, status = %r.status(), "session stop refused")
            }
            Err(e) => {
                tracing::debug!(session = %self.sid, error = %e.without_url(), "session stop not sent")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{control_allowed, trickle_allowed};

    #[test]
    fn session_callbacks_are_followed_only_under_the_orchestrator() {
        let bases = vec!["https://orch.example:8935/".to_string()];
        let ok = "https://orch.example:8935/runner/r1/session/s1";
        assert!(control_allowed(&bases, ok, "s1"));
        for (control, sid) in [
            // Another session's callback.
            (ok, "s2"),
            // Another host, or the orchestrator's name as a prefix of one.
            ("https://evil.example/runner/r1/session/s1", "s1"),
            ("https://orch.example:89351/runner/r1/session/s1", "s1"),
            ("https://orch.example:8935.evil/runner/r1/session/s1", "s1"),
            // Not a runner callback, or one that walks elsewhere.
            ("https://orch.example:8935/apps/r1/session/s1", "s1"),
            ("https://orch.example:8935/runner//session/s1", "s1"),
            (
                "https://orch.example:8935/runner/a/../../x/session/s1",
                "s1",
            ),
            ("https://orch.example:8935/runner/a?x=/session/s1", "s1"),
            ("https://orch.example:8935/runner/a@evil/session/s1", "s1"),
            ("https://orch.example:8935/runner/../session/s1", "s1"),
            // A session ID that walks elsewhere on the orchestrator's host.
            (
                "https://orch.example:8935/runner/r1/session/../../x",
                "../../x",
            ),
            ("https://orch.example:8935/runner/r1/session/a#b", "a#b"),
            (
                "https://orch.example:8935/runner/r1/session/a%2F..",
                "a%2F..",
            ),
        ] {
            assert!(!control_allowed(&bases, control, sid), "{control}");
        }
        assert!(!control_allowed(&[], ok, "s1"), "no orchestrator yet");
    }

    #[test]
    fn trickle_urls_are_followed_only_on_the_orchestrator() {
        let bases = vec!["https://orch.example:8935".to_string()];
        assert!(trickle_allowed(
            &bases,
            "https://orch.example:8935/ai/trickle/ab12-out"
        ));
        for url in [
            "https://evil.example/ai/trickle/ab12",
            "https://orch.example:8935.evil/ai/trickle/ab12",
            "https://orch.example:8935/ai/trickle/",
            "https://orch.example:8935/ai/trickle/a/../../x",
            "https://orch.example:8935/ai/trickle/a?x=1",
            "https://orch.example:8935/runner/r/session/s",
        ] {
            assert!(!trickle_allowed(&bases, url), "{url}");
        }
    }
}
