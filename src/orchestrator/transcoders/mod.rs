//! go-livepeer remote transcoders registered with the shim, as go-livepeer's
//! orchestrator keeps them (core/orchestrator.go `RemoteTranscoderManager`):
//! each holds a `RegisterTranscoder` stream open, declares a capacity and its
//! capabilities, gets segments as `NotifySegment` tasks, fetches the input
//! from a URL on this node and posts the renditions to `/transcodeResults`.
//!
//! Unlike go-livepeer, a transcoder whose stream drops mid-segment does not
//! fail the segment: the task is handed to another transcoder or worker
//! (go-livepeer issues #2605, #2079), and one leaving touches no other's tasks.

pub mod results;
pub mod service;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use crate::lp_rpc::results::PostedRendition;
use crate::lp_rpc::segment::compatible;
use crate::proto::lp_rpc as net;

/// Transcoders registered at once: each is authenticated by the shared
/// secret, but a leaked secret must not grow the table without bound.
pub const MAX_TRANSCODERS: usize = 256;
/// A declared capacity above this counts as this (go-livepeer takes any).
pub const MAX_CAPACITY: i64 = 256;
/// Capability words a registration may carry (go-livepeer's 38 fit in one).
pub const MAX_CAPABILITY_WORDS: usize = 16;
/// Sessions whose transcoder is remembered; past this the least recently
/// used is forgotten (off chain anyone can open sessions).
pub const MAX_SESSIONS: usize = 16_384;
/// Job stream room beyond the capacity, for session teardown notices.
const NOTICE_SLACK: usize = 64;
/// go-livepeer's `common.HTTPTimeout`: the least a task is given.
const MIN_TASK_TIMEOUT: Duration = Duration::from_secs(8);
/// Smallest rendition go-livepeer accepts ("ZeroSegments").
const MIN_RENDITION_BYTES: usize = 25;

/// What a transcoder said of one task.
#[derive(Debug)]
pub enum Outcome {
    /// Renditions in profile order, and the decoded pixels.
    Done {
        renditions: Vec<PostedRendition>,
        decoded_pixels: i64,
    },
    /// The error text it posted (or why its post could not be read).
    Failed(String),
}

/// Where one attempt at a remote transcode ended.
#[derive(Debug)]
pub enum Attempt {
    /// No live transcoder with room that can take the segment.
    NoneFree,
    /// The transcoder answered.
    Answered(Outcome),
    /// It left (its stream dropped) before answering: try elsewhere.
    Gone,
    /// It did not answer in time; it is dropped, as go-livepeer drops it.
    TimedOut,
}

/// The two ends of a transcoder's job stream.
type JobSender = mpsc::Sender<Result<net::NotifySegment, Status>>;
type JobReceiver = mpsc::Receiver<Result<net::NotifySegment, Status>>;

/// One registered transcoder.
struct Transcoder {
    id: u64,
    /// Where its stream came from; results for its tasks must come from
    /// the same host.
    peer: Option<IpAddr>,
    capacity: i64,
    load: i64,
    capabilities: net::Capabilities,
    /// Its job stream; dropped to end the registration.
    jobs: JobSender,
    /// Cancelled when it leaves, waking the tasks it holds.
    gone: CancellationToken,
}

/// A task sent and not yet answered.
struct Task {
    peer: Option<IpAddr>,
    /// Path of its input under `/stream/`, and the input.
    input_path: String,
    input: Bytes,
    /// Renditions it must come back with.
    renditions: usize,
    answer: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Inner {
    transcoders: HashMap<u64, Transcoder>,
    tasks: HashMap<i64, Task>,
    /// Task by its input's path (the input GET is unauthenticated: no scan).
    inputs: HashMap<String, i64>,
    /// Which transcoder a gateway session's segments last went to, and
    /// when (a use counter): its next segments go there while it has room,
    /// as go-livepeer keeps a session on one transcoder (its decoder and
    /// encoder sessions stay warm there).
    sessions: HashMap<String, (u64, u64)>,
    uses: u64,
}

impl Inner {
    fn remember(&mut self, session: &str, transcoder: u64) {
        self.uses += 1;
        let stamp = self.uses;
        if let Some(entry) = self.sessions.get_mut(session) {
            *entry = (transcoder, stamp);
            return;
        }
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions
            .insert(session.to_string(), (transcoder, stamp));
    }
}

/// The registered transcoders and their tasks in flight.
pub struct RemoteTranscoders {
    secret: String,
    inner: Mutex<Inner>,
    next_task: AtomicI64,
    next_transcoder: AtomicU64,
}

/// A task claimed by a result post: what the post may carry, and where
/// the answer goes.
pub struct Claimed {
    pub renditions: usize,
    answer: oneshot::Sender<Outcome>,
}

impl Claimed {
    /// Hands the task its outcome; the waiting segment takes it from there.
    pub fn answer(self, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Done { renditions, .. } if renditions.len() != self.renditions => {
                Outcome::Failed(format!(
                    "MismatchedSegments: {} renditions for {} profiles",
                    renditions.len(),
                    self.renditions
                ))
            }
            Outcome::Done { renditions, .. }
                if renditions
                    .iter()
                    .any(|r| r.data.len() < MIN_RENDITION_BYTES) =>
            {
                Outcome::Failed("ZeroSegments: a rendition is empty".into())
            }
            o => o,
        };
        let _ = self.answer.send(outcome);
    }
}

/// Why a result post names no task it may answer.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownTask;

/// A segment to hand to a transcoder.
pub struct Segment<'a> {
    /// The gateway's segment data (profiles, capabilities, token).
    pub seg: &'a net::SegData,
    pub data: Bytes,
    /// Renditions expected back.
    pub renditions: usize,
    pub duration_ms: u32,
}

impl RemoteTranscoders {
    pub fn new(secret: String) -> Self {
        RemoteTranscoders {
            secret,
            inner: Mutex::default(),
            next_task: AtomicI64::new(0),
            next_transcoder: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("transcoders lock")
    }

    /// The shared secret, compared in constant time.
    pub fn secret_matches(&self, given: &str) -> bool {
        crate::worker::constant_time_eq(given.as_bytes(), self.secret.as_bytes())
    }

    /// Transcoders registered now.
    pub fn count(&self) -> usize {
        self.lock().transcoders.len()
    }

    /// Adds the live transcoders' capabilities and capacities to `caps`
    /// (go-livepeer's node capabilities grow with each registration).
    pub fn add_capabilities(&self, caps: &mut net::Capabilities) {
        let inner = self.lock();
        for t in inner.transcoders.values() {
            let offered = &t.capabilities.bitstring;
            if caps.bitstring.len() < offered.len() {
                caps.bitstring.resize(offered.len(), 0);
            }
            for (word, bits) in caps.bitstring.iter_mut().zip(offered) {
                *word |= bits;
            }
            for (c, n) in &t.capabilities.capacities {
                let slot = caps.capacities.entry(*c).or_default();
                *slot = slot.saturating_add(*n);
            }
            if caps.version.is_empty() {
                caps.version.clone_from(&t.capabilities.version);
            }
        }
    }

    /// Registers a transcoder; its jobs come on the returned receiver, and
    /// it leaves when the [`Registration`] drops (its stream ended).
    fn register(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        capacity: i64,
        capabilities: net::Capabilities,
    ) -> Result<(Registration, JobReceiver), Status> {
        let capacity = capacity.min(MAX_CAPACITY);
        // Room for teardown notices besides the tasks, so a notice never
        // makes a task look undeliverable.
        let (jobs, rx) = mpsc::channel(capacity as usize + NOTICE_SLACK);
        let id = self.next_transcoder.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.transcoders.len() >= MAX_TRANSCODERS {
            return Err(Status::resource_exhausted("too many transcoders"));
        }
        inner.transcoders.insert(
            id,
            Transcoder {
                id,
                peer,
                capacity,
                load: 0,
                capabilities,
                jobs,
                gone: CancellationToken::new(),
            },
        );
        info!(
            transcoder = id,
            ?peer,
            capacity,
            "remote transcoder registered"
        );
        Ok((
            Registration {
                pool: Arc::clone(self),
                id,
            },
            rx,
        ))
    }

    /// Removes a transcoder: its tasks wake as gone, its stream ends.
    fn remove(&self, id: u64, why: &str) {
        let removed = {
            let mut inner = self.lock();
            inner.sessions.retain(|_, (t, _)| *t != id);
            inner.transcoders.remove(&id)
        };
        if let Some(t) = removed {
            t.gone.cancel();
            info!(transcoder = id, why, "remote transcoder removed");
        }
    }

    /// The transcoder `session` last used if it still has room, else the
    /// compatible one with room and the least load for its capacity; its
    /// load is taken.
    fn select(
        &self,
        session: &str,
        wanted: Option<&net::Capabilities>,
    ) -> Option<(u64, JobSender, CancellationToken)> {
        let mut inner = self.lock();
        let usable = |t: &Transcoder| {
            t.load < t.capacity && wanted.is_none_or(|w| compatible(w, &t.capabilities))
        };
        let last = inner
            .sessions
            .get(session)
            .map(|(t, _)| *t)
            .filter(|t| inner.transcoders.get(t).is_some_and(usable));
        let id = match last {
            Some(id) => id,
            None => {
                inner
                    .transcoders
                    .values()
                    .filter(|t| usable(t))
                    .min_by(|a, b| {
                        // load/capacity, compared without division.
                        (i128::from(a.load) * i128::from(b.capacity))
                            .cmp(&(i128::from(b.load) * i128::from(a.capacity)))
                            .then(a.id.cmp(&b.id))
                    })?
                    .id
            }
        };
        if !session.is_empty() {
            inner.remember(session, id);
        }
        let chosen = inner.transcoders.get_mut(&id)?;
        chosen.load += 1;
        Some((chosen.id, chosen.jobs.clone(), chosen.gone.clone()))
    }

    /// A gateway ended `session`: its transcoder gets go-livepeer's
    /// teardown notice (no URL, only the session ID) and forgets it.
    pub fn end_session(&self, session: &str) {
        let mut inner = self.lock();
        let Some((id, _)) = inner.sessions.remove(session) else {
            return;
        };
        if let Some(t) = inner.transcoders.get(&id) {
            let notice = net::NotifySegment {
                seg_data: Some(net::SegData {
                    auth_token: Some(net::AuthToken {
                        session_id: session.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            // Best effort, as go-livepeer's: a full stream skips it.
            let _ = t.jobs.try_send(Ok(notice));
        }
    }

    fn release(&self, transcoder: u64, task: i64) {
        let mut inner = self.lock();
        if let Some(t) = inner.tasks.remove(&task) {
            inner.inputs.remove(&t.input_path);
        }
        if let Some(t) = inner.transcoders.get_mut(&transcoder) {
            t.load = (t.load - 1).max(0);
        }
    }

    /// The input of a task in flight, by its path under `/stream/`.
    pub fn input(&self, path: &str) -> Option<Bytes> {
        let inner = self.lock();
        let id = inner.inputs.get(path)?;
        inner.tasks.get(id).map(|t| t.input.clone())
    }

    /// Takes task `id` for a result post from `from`: only once, and only
    /// from the host its transcoder registered from.
    pub fn claim(&self, id: i64, from: Option<IpAddr>) -> Result<Claimed, UnknownTask> {
        let mut inner = self.lock();
        let task = inner.tasks.get(&id).ok_or(UnknownTask)?;
        if task.peer.is_some() && from.is_some() && task.peer != from {
            return Err(UnknownTask);
        }
        let task = inner.tasks.remove(&id).ok_or(UnknownTask)?;
        inner.inputs.remove(&task.input_path);
        Ok(Claimed {
            renditions: task.renditions,
            answer: task.answer,
        })
    }

    /// Sends `segment` to one transcoder and waits for its answer, at most
    /// max(8 s, 4 × duration) as go-livepeer waits.
    pub async fn transcode(
        &self,
        segment: &Segment<'_>,
        service_uri: &str,
        orch_id: &str,
    ) -> Attempt {
        let session = segment
            .seg
            .auth_token
            .as_ref()
            .map_or("", |t| t.session_id.as_str());
        let Some((transcoder, jobs, gone)) =
            self.select(session, segment.seg.capabilities.as_ref())
        else {
            return Attempt::NoneFree;
        };
        let task_id = self.next_task.fetch_add(1, Ordering::Relaxed);
        // Frees the task, its input and the load however this ends, the
        // gateway hanging up (this future dropped) included.
        let _in_flight = InFlight {
            pool: self,
            transcoder,
            task: task_id,
        };
        // An unguessable name: go-livepeer serves inputs to anyone holding
        // the URL, so the URL is the credential.
        let token: String = (0..32)
            .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
            .collect();
        let input_path = format!("stream/{session}/{}-{token}.tempfile", segment.seg.seq);
        let (answer, answered) = oneshot::channel();
        {
            let mut inner = self.lock();
            let peer = inner.transcoders.get(&transcoder).and_then(|t| t.peer);
            inner.inputs.insert(input_path.clone(), task_id);
            inner.tasks.insert(
                task_id,
                Task {
                    peer,
                    input_path: input_path.clone(),
                    input: segment.data.clone(),
                    renditions: segment.renditions,
                    answer,
                },
            );
        }
        let notify = net::NotifySegment {
            url: format!("{service_uri}/{input_path}"),
            seg_data: Some(notify_seg_data(segment.seg)),
            task_id,
            // As go-livepeer: breaks transcoders that read the legacy field.
            profiles: b"invalid".to_vec(),
            orch_id: orch_id.to_string(),
        };
        if jobs.try_send(Ok(notify)).is_err() {
            // Its stream is closed, or so far behind it holds more than
            // its capacity: either way it takes no more.
            self.remove(transcoder, "job stream closed or stalled");
            return Attempt::Gone;
        }
        info!(
            transcoder,
            task_id,
            seq = segment.seg.seq,
            "segment sent to remote transcoder"
        );
        let timeout =
            Duration::from_millis(u64::from(segment.duration_ms) * 4).max(MIN_TASK_TIMEOUT);
        tokio::select! {
            outcome = answered => match outcome {
                Ok(o) => Attempt::Answered(o),
                // Its result post broke off after claiming the task: the
                // segment goes elsewhere, the transcoder stays.
                Err(_) => {
                    warn!(transcoder, task_id, "remote transcoder's result post broke off");
                    Attempt::Gone
                }
            },
            _ = gone.cancelled() => {
                warn!(transcoder, task_id, "remote transcoder left mid-segment");
                Attempt::Gone
            }
            _ = tokio::time::sleep(timeout) => {
                warn!(transcoder, task_id, "remote transcoder took too long; dropping it");
                self.remove(transcoder, "Remote transcoder took too long");
                Attempt::TimedOut
            }
        }
    }
}

/// A task in flight; dropped, it is released.
struct InFlight<'a> {
    pool: &'a RemoteTranscoders,
    transcoder: u64,
    task: i64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.release(self.transcoder, self.task);
    }
}

/// The gateway's segment data as go-livepeer forwards it (`NetSegData` of
/// a copy with storage and hash cleared): the profile lists as the gateway
/// chose them, and the legacy `profiles` field poisoned.
fn notify_seg_data(seg: &net::SegData) -> net::SegData {
    net::SegData {
        manifest_id: seg.manifest_id.clone(),
        seq: seg.seq,
        hash: vec![0; 32],
        storage: Vec::new(),
        duration: seg.duration,
        capabilities: seg.capabilities.clone(),
        auth_token: seg.auth_token.clone(),
        calc_perceptual_hash: seg.calc_perceptual_hash,
        profiles: b"invalid".to_vec(),
        full_profiles: seg.full_profiles.clone(),
        full_profiles2: seg.full_profiles2.clone(),
        full_profiles3: seg.full_profiles3.clone(),
        segment_parameters: seg.segment_parameters,
        force_session_reinit: seg.force_session_reinit,
        ..Default::default()
    }
}

/// A registration: while held the transcoder takes tasks; dropped (its
/// stream ended: the peer left or was dropped), it leaves.
pub struct Registration {
    pool: Arc<RemoteTranscoders>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pool.remove(self.id, "stream closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "https://orch:8935";

    fn seg() -> net::SegData {
        net::SegData {
            seq: 3,
            duration: 2000,
            auth_token: Some(net::AuthToken {
                session_id: "abcd".into(),
                ..Default::default()
            }),
            full_profiles: vec![net::VideoProfile {
                name: "P240p".into(),
                ..Default::default()
            }],
            sig: vec![1; 65],
            hash: vec![2; 32],
            ..Default::default()
        }
    }

    fn caps(bits: &[u32]) -> net::Capabilities {
        net::Capabilities {
            bitstring: crate::lp_rpc::capabilities::bitstring(bits.iter().copied()),
            version: "0.9.1".into(),
            ..Default::default()
        }
    }

    fn rendition(n: usize) -> PostedRendition {
        PostedRendition {
            data: Bytes::from(vec![7; n]),
            pixels: 100,
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[tokio::test]
    async fn a_result_is_taken_once_from_the_transcoders_host() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_reg, mut jobs) = pool.register(ip(1), 2, caps(&[0, 1])).unwrap();
        let seg = seg();
        let segment = Segment {
            seg: &seg,
            data: Bytes::from_static(b"input"),
            renditions: 1,
            duration_ms: 2000,
        };
        let waiting = pool.transcode(&segment, URI, "offchain");
        tokio::pin!(waiting);
        let notify = tokio::select! {
            _ = &mut waiting => panic!("answered before any result"),
            n = jobs.recv() => n.unwrap().unwrap(),
        };
        // What go-livepeer sends: hash cleared, legacy fields poisoned.
        let data = notify.seg_data.as_ref().unwrap();
        assert_eq!(data.hash, vec![0; 32]);
        assert!(data.sig.is_empty());
        assert_eq!(data.profiles, b"invalid");
        assert_eq!(notify.profiles, b"invalid");
        assert_eq!(data.full_profiles[0].name, "P240p");
        assert_eq!(notify.orch_id, "offchain");
        // The input is served at the URL while the task is in flight.
        let path = notify.url.strip_prefix(&format!("{URI}/")).unwrap();
        assert!(path.starts_with("stream/abcd/3-") && path.ends_with(".tempfile"));
        assert_eq!(pool.input(path).unwrap(), Bytes::from_static(b"input"));
        assert!(pool.input("stream/abcd/3.tempfile").is_none());
        // Another host, or a task never sent: refused.
        assert!(pool.claim(notify.task_id, ip(2)).is_err());
        assert!(pool.claim(notify.task_id + 1, ip(1)).is_err());
        let claimed = pool.claim(notify.task_id, ip(1)).unwrap();
        // A replay while the first is read, or after: refused.
        assert!(pool.claim(notify.task_id, ip(1)).is_err());
        claimed.answer(Outcome::Done {
            renditions: vec![rendition(100)],
            decoded_pixels: 42,
        });
        match waiting.await {
            Attempt::Answered(Outcome::Done {
                renditions,
                decoded_pixels,
            }) => {
                assert_eq!(renditions.len(), 1);
                assert_eq!(decoded_pixels, 42);
            }
            other => panic!("{other:?}"),
        }
        assert!(pool.claim(notify.task_id, ip(1)).is_err());
        assert!(pool.input(path).is_none(), "input dropped with the task");
    }

    #[tokio::test]
    async fn results_that_do_not_fit_the_profiles_fail_the_segment() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_reg, mut jobs) = pool.register(None, 1, caps(&[0])).unwrap();
        let seg = seg();
        let segment = Segment {
            seg: &seg,
            data: Bytes::new(),
            renditions: 1,
            duration_ms: 2000,
        };
        for (renditions, why) in [
            (vec![rendition(100), rendition(100)], "MismatchedSegments"),
            (vec![rendition(3)], "ZeroSegments"),
        ] {
            let waiting = pool.transcode(&segment, URI, "offchain");
            tokio::pin!(waiting);
            let notify = tokio::select! {
                _ = &mut waiting => panic!("answered before any result"),
                n = jobs.recv() => n.unwrap().unwrap(),
            };
            pool.claim(notify.task_id, None)
                .unwrap()
                .answer(Outcome::Done {
                    renditions,
                    decoded_pixels: 0,
                });
            match waiting.await {
                Attempt::Answered(Outcome::Failed(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn one_leaving_mid_segment_frees_its_task_and_no_other() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (leaving, mut jobs_a) = pool.register(ip(1), 1, caps(&[0, 1])).unwrap();
        let (_staying, mut jobs_b) = pool.register(ip(2), 1, caps(&[0, 1])).unwrap();
        let seg = seg();
        let segment = Segment {
            seg: &seg,
            data: Bytes::new(),
            renditions: 1,
            duration_ms: 2000,
        };
        let first = pool.transcode(&segment, URI, "offchain");
        let second = pool.transcode(&segment, URI, "offchain");
        tokio::pin!(first, second);
        // Polled in order: the first segment goes to the first transcoder.
        let (a, b) = tokio::select! {
            biased;
            _ = &mut first => panic!("answered early"),
            _ = &mut second => panic!("answered early"),
            pair = async { (jobs_a.recv().await, jobs_b.recv().await) } => pair,
        };
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        // Both are busy: a third segment finds no room.
        assert!(matches!(
            pool.transcode(&segment, URI, "offchain").await,
            Attempt::NoneFree
        ));
        drop(leaving);
        assert_eq!(pool.count(), 1);
        assert!(matches!(first.await, Attempt::Gone));
        assert!(pool.claim(a.task_id, ip(1)).is_err(), "its task is gone");
        pool.claim(b.task_id, ip(2))
            .unwrap()
            .answer(Outcome::Failed("boom".into()));
        assert!(matches!(
            second.await,
            Attempt::Answered(Outcome::Failed(_))
        ));
    }

    #[tokio::test]
    async fn segments_go_only_where_the_capabilities_are() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_reg, _jobs) = pool.register(None, 1, caps(&[0, 1])).unwrap();
        let mut wants_hevc = seg();
        wants_hevc.capabilities = Some(caps(&[0, 1, 15]));
        let segment = Segment {
            seg: &wants_hevc,
            data: Bytes::new(),
            renditions: 1,
            duration_ms: 2000,
        };
        assert!(matches!(
            pool.transcode(&segment, URI, "offchain").await,
            Attempt::NoneFree
        ));
        let mut node = net::Capabilities::default();
        pool.add_capabilities(&mut node);
        assert_eq!(node.bitstring, vec![0b11]);
        assert!(pool.secret_matches("s") && !pool.secret_matches("S"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_transcoder_is_dropped_after_its_deadline() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_reg, _jobs) = pool.register(None, 4, caps(&[0])).unwrap();
        let seg = seg();
        let segment = Segment {
            seg: &seg,
            data: Bytes::new(),
            renditions: 1,
            duration_ms: 3000,
        };
        let started = tokio::time::Instant::now();
        assert!(matches!(
            pool.transcode(&segment, URI, "offchain").await,
            Attempt::TimedOut
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(12), "4 × duration");
        assert_eq!(pool.count(), 0);
    }
    #[tokio::test]
    async fn a_session_stays_on_its_transcoder_and_its_end_is_announced() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_a, mut jobs_a) = pool.register(None, 4, caps(&[0])).unwrap();
        let (_b, mut jobs_b) = pool.register(None, 1, caps(&[0])).unwrap();
        let of_session = |id: &str| {
            let mut seg = seg();
            seg.auth_token.as_mut().unwrap().session_id = id.into();
            seg
        };
        let (mine, other, fresh) = (of_session("abcd"), of_session("other"), of_session("new"));
        let segment = |seg| Segment {
            seg,
            data: Bytes::new(),
            renditions: 1,
            duration_ms: 2000,
        };
        // Which transcoder a segment goes to, answered at once; `holding`
        // is a segment left in flight meanwhile.
        async fn sent_to_a(
            pool: &RemoteTranscoders,
            segment: &Segment<'_>,
            jobs: (&mut JobReceiver, &mut JobReceiver),
            holding: &mut (impl std::future::Future<Output = Attempt> + Unpin),
        ) -> bool {
            let waiting = pool.transcode(segment, URI, "offchain");
            tokio::pin!(waiting);
            let (to_a, notify) = tokio::select! {
                _ = &mut waiting => panic!("answered early"),
                _ = holding => panic!("answered early"),
                n = jobs.0.recv() => (true, n.unwrap().unwrap()),
                n = jobs.1.recv() => (false, n.unwrap().unwrap()),
            };
            pool.claim(notify.task_id, None)
                .unwrap()
                .answer(Outcome::Failed("x".into()));
            assert!(matches!(waiting.await, Attempt::Answered(_)));
            to_a
        }
        let mut idle = std::future::pending::<Attempt>();
        let first = sent_to_a(
            &pool,
            &segment(&mine),
            (&mut jobs_a, &mut jobs_b),
            &mut idle,
        )
        .await;
        assert!(first, "both idle: the first registered");
        // Another session's segment in flight on a: a is now the busier.
        let other = segment(&other);
        let held = pool.transcode(&other, URI, "offchain");
        tokio::pin!(held);
        tokio::select! {
            _ = &mut held => panic!("answered early"),
            n = jobs_a.recv() => assert!(n.is_some()),
        }
        let jobs = (&mut jobs_a, &mut jobs_b);
        assert!(
            sent_to_a(&pool, &segment(&mine), jobs, &mut held).await,
            "kept on a"
        );
        let jobs = (&mut jobs_a, &mut jobs_b);
        assert!(
            !sent_to_a(&pool, &segment(&fresh), jobs, &mut held).await,
            "new: the idler b"
        );

        pool.end_session("abcd");
        let notice = jobs_a.try_recv().unwrap().unwrap();
        assert!(crate::lp_rpc::segment::is_session_end(&notice));
        assert_eq!(
            notice.seg_data.unwrap().auth_token.unwrap().session_id,
            "abcd"
        );
        // Said once, to that transcoder only.
        pool.end_session("abcd");
        assert!(jobs_a.try_recv().is_err() && jobs_b.try_recv().is_err());
    }
    #[tokio::test]
    async fn a_gateway_hanging_up_frees_the_task_and_the_room() {
        let pool = Arc::new(RemoteTranscoders::new("s".into()));
        let (_reg, mut jobs) = pool.register(None, 1, caps(&[0])).unwrap();
        let seg = seg();
        let segment = Segment {
            seg: &seg,
            data: Bytes::from_static(b"input"),
            renditions: 1,
            duration_ms: 2000,
        };
        let notify = {
            let waiting = pool.transcode(&segment, URI, "offchain");
            tokio::pin!(waiting);
            tokio::select! {
                _ = &mut waiting => panic!("answered early"),
                n = jobs.recv() => n.unwrap().unwrap(),
            }
            // The segment's future is dropped here, unanswered.
        };
        let path = notify.url.strip_prefix(&format!("{URI}/")).unwrap();
        assert!(pool.input(path).is_none());
        assert!(pool.claim(notify.task_id, None).is_err());
        // Its one slot is free again.
        let waiting = pool.transcode(&segment, URI, "offchain");
        tokio::pin!(waiting);
        tokio::select! {
            a = &mut waiting => panic!("not sent: {a:?}"),
            n = jobs.recv() => assert!(n.is_some()),
        }
    }
}
