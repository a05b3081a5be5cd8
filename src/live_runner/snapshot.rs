//! The registry kept across restarts (beyond go-livepeer, whose registry is
//! memory only, so a restart drops every live stream: go-livepeer #3209,
//! #2169). Runners with their seeds (so secrets and tokens stay valid) and
//! sessions with their channels and proxies are written to one JSON file
//! after every change, atomically; a dynamic runner's restored sessions are
//! kept if it still reports them in its first heartbeat after the restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::{ChannelInfo, RunnerDecl};
use super::Registry;

pub const FILE_NAME: &str = "live_runners.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub runners: Vec<RunnerRecord>,
    pub sessions: Vec<SessionRecord>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            version: VERSION,
            runners: Vec::new(),
            sessions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub id: String,
    pub dynamic: bool,
    /// Hex of the runner's 32-byte seed.
    pub seed: String,
    pub decl: RunnerDecl,
    pub healthy: bool,
    /// The O2R channel's next sequence number (dynamic runners).
    #[serde(default)]
    pub o2r_next: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub info: ChannelInfo,
    pub next: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub id: String,
    pub target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub sid: String,
    pub runner_id: String,
    pub created_unix_ms: u64,
    pub channels: Vec<ChannelRecord>,
    pub proxies: Vec<ProxyRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("live runner snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("live runner snapshot {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("live runner snapshot {path}: version {found}, expected {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// The snapshot at `path`; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let snap: Snapshot = serde_json::from_slice(&text).map_err(|source| SnapshotError::Json {
        path: path.into(),
        source,
    })?;
    if snap.version != VERSION {
        return Err(SnapshotError::Version {
            path: path.into(),
            found: snap.version,
        });
    }
    Ok(Some(snap))
}

/// Writes `snap` to `path` atomically (a temporary file renamed over it),
/// readable by the owner only: it holds the runners' secrets.
pub fn save(path: &Path, snap: &Snapshot) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    let json = serde_json::to_vec(snap).expect("serializable");
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Saves the registry after every change (changes within 100 ms are
/// written once), until the registry is dropped.
pub fn spawn_persister(registry: &Arc<Registry>, path: PathBuf) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(registry);
    let mut changes = registry.subscribe_changes();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            changes.borrow_and_update();
            let Some(registry) = weak.upgrade() else {
                return;
            };
            let snap = registry.snapshot();
            drop(registry);
            let path = path.clone();
            let saved = tokio::task::spawn_blocking(move || save(&path, &snap)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "live runner snapshot not saved");
            }
        }
    })
}
