//! The async video layer every adapter calls (`serve`'s gRPC service,
//! `attach`'s remote transcoder, the Live Runner transcoding app), as
//! text-embeddings-inference's `core/infer.rs` serves its routers: one
//! [`VideoService`] owns admission, the deadline of each job, cancellation,
//! running the blocking engine off the async runtime, and the metrics hooks.
//! Adapters only translate their wire formats to [`TranscodeOptions`] and
//! [`VideoError`]s back; nothing here knows of a transport or of Prometheus.
//!
//! A job's life: [`VideoService::try_admit`] (refused at once when full) or
//! [`VideoService::admit`] (waits for a slot) gives a [`Slot`]; the adapter may
//! do its own work under it (fetch the segment, stream the answer back) and
//! calls [`VideoService::transcode`] once or more while holding it; the slot
//! frees when the [`Slot`] drops. [`VideoService::run`] does both for callers
//! with nothing to do around the engine.
//!
//! What stops, and when, if a job ends early (its deadline passes, or the
//! caller's future is dropped, e.g. a gRPC client going away): the caller gets
//! [`VideoError::Timeout`] at the deadline (or nothing, when dropped) and the
//! slot frees as soon as the caller lets go of its [`Slot`]; the job's cancel
//! flag is set at that moment. The engine thread notices the flag (and its own
//! copy of the deadline) at its next check: before each input packet is
//! decoded, before each decoded frame is handed to the renditions, and before
//! each frame is scaled and encoded. A backend call already running (one
//! packet's decode, one frame's scale or encode, the final mux) finishes
//! first, and the demux at the start honours only the deadline. So the
//! blocking thread outlives the slot by at most one such call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admission, Permit, Refusal};
use super::{TranscodeOptions, TranscodeOutput, Transcoder, VideoError};

/// The blocking engine the service drives: [`Transcoder`], or a stand-in in
/// tests. Called on a blocking thread; must stop soon after
/// `options.cancel` is set or `options.timeout` passes.
pub trait TranscodeEngine: Send + Sync + 'static {
    /// Short name for logs and metrics ("cpu", "nvidia").
    fn backend_name(&self) -> &'static str;
    fn transcode(
        &self,
        input: Arc<[u8]>,
        options: &TranscodeOptions,
    ) -> Result<TranscodeOutput, VideoError>;
}

impl TranscodeEngine for Transcoder {
    fn backend_name(&self) -> &'static str {
        Transcoder::backend_name(self)
    }

    fn transcode(
        &self,
        input: Arc<[u8]>,
        options: &TranscodeOptions,
    ) -> Result<TranscodeOutput, VideoError> {
        Transcoder::transcode(self, input, options, &mut |_| {})
    }
}

/// What the service reports as jobs come and go; the worker plugs its
/// Prometheus metrics in here. Every method does nothing unless overridden.
pub trait VideoMetrics: Send + Sync + 'static {
    /// Jobs holding a slot, after one was admitted or let go.
    fn in_flight(&self, _in_flight: u32) {}
    /// A job was refused admission.
    fn refused(&self, _refusal: Refusal) {}
    /// The engine is starting a job `queued` after its slot was taken.
    fn started(&self, _backend: &'static str, _queued: Duration) {}
    fn finished(&self, _backend: &'static str, _output: &TranscodeOutput) {}
    /// A job failed, timed out, or was dropped by its caller
    /// ([`VideoError::Cancelled`]).
    fn failed(&self, _backend: &'static str, _error: &VideoError) {}
}

/// No metrics.
pub struct NoMetrics;

impl VideoMetrics for NoMetrics {}

/// Why [`VideoService::run`] produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("not admitted: {0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Video(#[from] VideoError),
}

/// The video core: cheap to clone, one per worker, shared by its adapters.
#[derive(Clone)]
pub struct VideoService {
    engine: Arc<dyn TranscodeEngine>,
    admission: Arc<Admission>,
    metrics: Arc<dyn VideoMetrics>,
}

/// One admitted job. The slot frees when this drops.
pub struct Slot {
    permit: Option<Permit>,
    admitted: Instant,
    admission: Arc<Admission>,
    metrics: Arc<dyn VideoMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.metrics.in_flight(self.admission.in_flight());
    }
}

impl VideoService {
    /// A service over `engine` admitting what `admission` allows (shared with
    /// whatever else counts against the same capacity and drain).
    pub fn new(engine: impl TranscodeEngine, admission: Arc<Admission>) -> Self {
        VideoService {
            engine: Arc::new(engine),
            admission,
            metrics: Arc::new(NoMetrics),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<dyn VideoMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn backend_name(&self) -> &'static str {
        self.engine.backend_name()
    }

    /// Capacity, jobs in flight and the drain.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    fn slot(&self, admitted: Result<Permit, Refusal>) -> Result<Slot, Refusal> {
        match admitted {
            Ok(permit) => {
                self.metrics.in_flight(self.admission.in_flight());
                Ok(Slot {
                    permit: Some(permit),
                    admitted: Instant::now(),
                    admission: Arc::clone(&self.admission),
                    metrics: Arc::clone(&self.metrics),
                })
            }
            Err(refusal) => {
                self.metrics.refused(refusal);
                Err(refusal)
            }
        }
    }

    /// A slot now, or [`Refusal::Full`] / [`Refusal::Draining`] at once.
    pub fn try_admit(&self) -> Result<Slot, Refusal> {
        self.slot(self.admission.try_admit())
    }

    /// A slot as soon as one frees; refused only by a drain.
    pub async fn admit(&self) -> Result<Slot, Refusal> {
        self.slot(self.admission.admit().await)
    }

    /// Transcodes `input` under an admitted `slot` on a blocking thread.
    /// `options.timeout` is the job's deadline, counted from this call: at
    /// that point the answer is [`VideoError::Timeout`] whatever the engine is
    /// doing. Dropping the returned future cancels the job. A cancel flag in
    /// `options` is used (and set on drop or timeout) if given.
    pub async fn transcode(
        &self,
        slot: &Slot,
        input: impl Into<Arc<[u8]>>,
        mut options: TranscodeOptions,
    ) -> Result<TranscodeOutput, VideoError> {
        let backend = self.engine.backend_name();
        let cancel = Arc::clone(options.cancel.get_or_insert_with(Default::default));
        let deadline = options.timeout;
        let mut job = RunningJob {
            cancel,
            backend,
            metrics: Arc::clone(&self.metrics),
            done: false,
        };
        self.metrics.started(backend, slot.admitted.elapsed());
        let engine = Arc::clone(&self.engine);
        let input = input.into();
        let task = tokio::task::spawn_blocking(move || engine.transcode(input, &options));
        let joined = match deadline {
            Some(limit) => tokio::time::timeout(limit, task)
                .await
                .map_err(|_| VideoError::Timeout(limit)),
            None => Ok(task.await),
        };
        let result = match joined {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(VideoError::Task(join.to_string())),
            Err(timeout) => Err(timeout),
        };
        job.finish(&result);
        result
    }

    /// Waits for a slot, then transcodes under it: for adapters with no work
    /// of their own around the engine.
    pub async fn run(
        &self,
        input: impl Into<Arc<[u8]>>,
        options: TranscodeOptions,
    ) -> Result<TranscodeOutput, JobError> {
        let slot = self.admit().await?;
        Ok(self.transcode(&slot, input, options).await?)
    }
}

/// A job handed to the engine: on an early end (timeout, or its future
/// dropped) it raises the cancel flag, and it reports the outcome once.
struct RunningJob {
    cancel: Arc<AtomicBool>,
    backend: &'static str,
    metrics: Arc<dyn VideoMetrics>,
    done: bool,
}

impl RunningJob {
    fn finish(&mut self, result: &Result<TranscodeOutput, VideoError>) {
        self.done = true;
        match result {
            Ok(output) => self.metrics.finished(self.backend, output),
            Err(e) => {
                // The engine may still be running (a timeout seen here first).
                self.cancel.store(true, Ordering::Relaxed);
                self.metrics.failed(self.backend, e);
            }
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.store(true, Ordering::Relaxed);
            self.metrics.failed(self.backend, &VideoError::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::engine::{InputInfo, PixelCount};
    use std::sync::Mutex;

    /// An engine that succeeds at once, fails at once, or works until it is
    /// cancelled or its deadline passes (checking between "frames", as the
    /// real engine does), and tells when its thread has stopped.
    struct FakeEngine {
        mode: Mode,
        stopped: Arc<AtomicBool>,
    }

    #[derive(Clone, Copy)]
    enum Mode {
        Ok,
        Fail,
        UntilStopped,
    }

    fn output() -> TranscodeOutput {
        TranscodeOutput {
            backend: "fake",
            input: InputInfo {
                codec: "h264".into(),
                width: 64,
                height: 36,
                frame_rate: 30.0,
                duration_seconds: 1.0,
                start_seconds: 0.0,
                has_audio: false,
                video_packets: 30,
            },
            decoded: PixelCount {
                frames: 30,
                pixels: 30 * 64 * 36,
            },
            decode_errors: 0,
            renditions: Vec::new(),
            elapsed: Duration::from_millis(1),
        }
    }

    impl TranscodeEngine for FakeEngine {
        fn backend_name(&self) -> &'static str {
            "fake"
        }

        fn transcode(
            &self,
            _input: Arc<[u8]>,
            options: &TranscodeOptions,
        ) -> Result<TranscodeOutput, VideoError> {
            let result = match self.mode {
                Mode::Ok => Ok(output()),
                Mode::Fail => Err(VideoError::EmptyInput),
                Mode::UntilStopped => {
                    let cancel = options.cancel.as_ref().expect("the service sets a flag");
                    // A long job: 30 s unless stopped. The service's own
                    // deadline must answer before this engine's.
                    let give_up = Instant::now() + Duration::from_secs(30);
                    loop {
                        if cancel.load(Ordering::Relaxed) {
                            break Err(VideoError::Cancelled);
                        }
                        if Instant::now() > give_up {
                            break Err(VideoError::Timeout(Duration::from_secs(30)));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            };
            self.stopped.store(true, Ordering::SeqCst);
            result
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl VideoMetrics for Recorder {
        fn in_flight(&self, n: u32) {
            self.0.lock().unwrap().push(format!("in_flight {n}"));
        }
        fn refused(&self, refusal: Refusal) {
            self.0.lock().unwrap().push(format!("refused {refusal}"));
        }
        fn started(&self, backend: &'static str, _queued: Duration) {
            self.0.lock().unwrap().push(format!("started {backend}"));
        }
        fn finished(&self, backend: &'static str, output: &TranscodeOutput) {
            self.0
                .lock()
                .unwrap()
                .push(format!("finished {backend} {}", output.decoded.frames));
        }
        fn failed(&self, backend: &'static str, error: &VideoError) {
            self.0
                .lock()
                .unwrap()
                .push(format!("failed {backend} {}", error.kind()));
        }
    }

    fn service(mode: Mode, capacity: u32) -> (VideoService, Arc<AtomicBool>, Arc<Recorder>) {
        let stopped = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Recorder::default());
        let engine = FakeEngine {
            mode,
            stopped: Arc::clone(&stopped),
        };
        let service = VideoService::new(engine, Admission::new(capacity))
            .with_metrics(Arc::clone(&recorder) as Arc<dyn VideoMetrics>);
        (service, stopped, recorder)
    }

    fn options(timeout: Duration) -> TranscodeOptions {
        TranscodeOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < give_up, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn admission_refuses_over_capacity_with_a_clear_error() {
        let (svc, _, recorder) = service(Mode::Ok, 2);
        let a = svc.try_admit().unwrap();
        let _b = svc.try_admit().unwrap();
        let refused = svc.try_admit().err().expect("a third job is refused");
        assert_eq!(refused, Refusal::Full { capacity: 2 });
        assert_eq!(refused.to_string(), "at capacity (2 concurrent jobs)");
        drop(a);
        assert_eq!(svc.admission().in_flight(), 1);
        let _c = svc.try_admit().expect("a freed slot is taken again");
        svc.admission().start_drain();
        assert_eq!(svc.try_admit().err(), Some(Refusal::Draining));
        let events = recorder.0.lock().unwrap().clone();
        assert!(events.contains(&"refused at capacity (2 concurrent jobs)".to_string()));
        assert!(events.contains(&"refused draining for shutdown".to_string()));
    }

    #[tokio::test]
    async fn a_deadline_expiring_times_out_stops_the_engine_and_frees_the_slot() {
        let (svc, stopped, recorder) = service(Mode::UntilStopped, 1);
        let started = Instant::now();
        let err = svc
            .run(vec![0u8; 8], options(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, JobError::Video(VideoError::Timeout(t)) if t == Duration::from_millis(100)),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(svc.admission().in_flight(), 0, "the slot is free");
        svc.try_admit().expect("and can be taken again");
        eventually("the engine thread stops after the deadline", || {
            stopped.load(Ordering::SeqCst)
        })
        .await;
        let events = recorder.0.lock().unwrap().clone();
        assert!(
            events.contains(&"failed fake timeout".to_string()),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_caller_frees_the_slot_and_cancels_the_engine() {
        let (svc, stopped, recorder) = service(Mode::UntilStopped, 1);
        let job = tokio::spawn({
            let svc = svc.clone();
            async move {
                svc.run(vec![0u8; 8], options(Duration::from_secs(60)))
                    .await
            }
        });
        eventually("the job is admitted", || svc.admission().in_flight() == 1).await;
        assert_eq!(svc.try_admit().err(), Some(Refusal::Full { capacity: 1 }));
        job.abort();
        assert!(job.await.unwrap_err().is_cancelled());
        assert_eq!(svc.admission().in_flight(), 0, "the slot is free");
        eventually("the engine sees the cancel flag", || {
            stopped.load(Ordering::SeqCst)
        })
        .await;
        let events = recorder.0.lock().unwrap().clone();
        assert!(
            events.contains(&"failed fake cancelled".to_string()),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn metrics_hooks_see_start_finish_and_failure() {
        let (svc, _, recorder) = service(Mode::Ok, 1);
        let out = svc
            .run(vec![0u8; 8], options(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(out.decoded.frames, 30);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "in_flight 1",
                "started fake",
                "finished fake 30",
                "in_flight 0"
            ]
        );

        let (svc, _, recorder) = service(Mode::Fail, 1);
        let slot = svc.try_admit().unwrap();
        let err = svc
            .transcode(&slot, vec![0u8; 8], options(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, VideoError::EmptyInput));
        assert_eq!(
            svc.admission().in_flight(),
            1,
            "the caller still holds its slot"
        );
        drop(slot);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "in_flight 1",
                "started fake",
                "failed fake empty_input",
                "in_flight 0"
            ]
        );
    }

    #[tokio::test]
    async fn waiting_admission_runs_jobs_in_turn() {
        let (svc, _, _) = service(Mode::Ok, 1);
        let held = svc.try_admit().unwrap();
        let queued = tokio::spawn({
            let svc = svc.clone();
            async move { svc.run(vec![0u8; 8], options(Duration::from_secs(5))).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!queued.is_finished(), "waits while the only slot is held");
        drop(held);
        let out = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(out.backend, "fake");
    }
}
