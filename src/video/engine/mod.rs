//! The transcode engine: one decode, then per rendition frame-rate conversion,
//! scaling and encoding on its own thread, then muxing with the audio copied
//! through. A backend with a ladder scaler (one GPU launch for every
//! rendition) scales once per decoded frame on a stage of its own between
//! the decoder and the rendition threads instead. Backends are reached only
//! through the traits in [`super::backend`].

mod fan_out;
mod ladder;
mod rendition;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use serde::Serialize;

use super::backend::{Frame, VideoBackend};
use super::container::{self, DemuxLimits, DemuxedSegment};
use super::profile::{OutputContainer, VideoProfile};
use super::transform::{TransformCount, TransformStage};
use super::VideoError;
use fan_out::{Inboxes, Picture};
use rendition::RenditionJob;

/// Frames buffered between the decoder and each rendition thread: enough to
/// ride out encoder stalls, small enough to bound memory.
const FRAME_QUEUE: usize = 8;

/// How to transcode one segment.
#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    pub profiles: Vec<VideoProfile>,
    /// Container of renditions whose profile does not name one.
    pub container: OutputContainer,
    /// Give up (with [`VideoError::Timeout`]) after this long.
    pub timeout: Option<Duration>,
    /// Refuse inputs larger than this many bytes.
    pub max_input_bytes: usize,
    pub limits: DemuxLimits,
    /// x264/x265 preset; lpms uses `medium`.
    pub preset: String,
    /// Encoder threads per rendition; 0 lets the encoder decide.
    pub encoder_threads: usize,
    /// Set to abort the transcode from another thread.
    pub cancel: Option<Arc<AtomicBool>>,
    /// A per-frame picture stage before each rendition's scaling (live AI
    /// video).
    pub transform: Option<TransformStage>,
    /// Scale every rendition in one step when the backend can (the NVIDIA
    /// backend's one-launch ladder). Off, each rendition scales on its own
    /// thread: only worth it to measure the difference.
    pub ladder_stage: bool,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            profiles: Vec::new(),
            container: OutputContainer::Mpegts,
            timeout: None,
            max_input_bytes: 256 << 20,
            limits: DemuxLimits::default(),
            preset: "medium".into(),
            encoder_threads: 0,
            cancel: None,
            transform: None,
            ladder_stage: true,
        }
    }
}

/// Frames and pixels, as go-livepeer counts them for billing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PixelCount {
    pub frames: u64,
    pub pixels: u64,
}

/// What the input turned out to be.
#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    pub duration_seconds: f64,
    pub start_seconds: f64,
    pub has_audio: bool,
    pub video_packets: usize,
}

/// One encoded rendition.
#[derive(Debug, Clone, Serialize)]
pub struct Rendition {
    pub profile: String,
    pub width: u32,
    pub height: u32,
    pub container: OutputContainer,
    /// Frames and pixels sent to the encoder (what the gateway pays for).
    pub encoded: PixelCount,
    /// What the transform stage did, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformCount>,
    #[serde(skip)]
    pub data: Vec<u8>,
    pub bytes: usize,
}

/// The result of transcoding one segment.
#[derive(Debug, Clone, Serialize)]
pub struct TranscodeOutput {
    pub backend: &'static str,
    pub input: InputInfo,
    pub decoded: PixelCount,
    /// Packets the decoder rejected (damaged input that was skipped).
    pub decode_errors: usize,
    pub renditions: Vec<Rendition>,
    #[serde(serialize_with = "serialize_seconds")]
    pub elapsed: Duration,
}

fn serialize_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Progress of one transcode, reported after each decoded packet.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub packets_done: usize,
    pub packets_total: usize,
}

/// Runs transcodes on one backend. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct Transcoder {
    backend: Arc<dyn VideoBackend>,
}

/// Shared stop signal for the decode loop and the rendition threads.
struct Stop<'a> {
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    cancel: Option<&'a AtomicBool>,
    failed: AtomicBool,
}

impl Stop<'_> {
    fn check(&self) -> Result<(), VideoError> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(VideoError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(VideoError::Timeout(self.timeout.unwrap_or_default()));
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err(VideoError::Cancelled);
        }
        Ok(())
    }

    /// Tells every other stage to stop when `result` is a failure.
    fn fail_if<T>(&self, result: &Result<T, VideoError>) {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `error` is only a stage stopping because another one failed
    /// (not the caller's cancel, which is the story itself).
    fn is_echo(&self, error: &VideoError) -> bool {
        matches!(error, VideoError::Cancelled)
            && self.cancel.is_none_or(|c| !c.load(Ordering::Relaxed))
    }
}

impl Transcoder {
    pub fn new(backend: Arc<dyn VideoBackend>) -> Self {
        super::init_ffmpeg();
        Transcoder { backend }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Transcodes one segment held in memory into every profile of `options`.
    pub fn transcode(
        &self,
        input: impl Into<Arc<[u8]>>,
        options: &TranscodeOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<TranscodeOutput, VideoError> {
        let started = Instant::now();
        if options.profiles.is_empty() {
            return Err(VideoError::InvalidProfile("no profiles requested".into()));
        }
        let (stop, segment) = admit(input.into(), options, started)?;
        let input_fps = segment
            .video
            .frame_rate
            .filter(|r| f64::from(*r) > 0.5 && f64::from(*r) <= 240.0)
            .unwrap_or(ff::Rational(30, 1));
        let info = InputInfo {
            codec: format!("{:?}", segment.codec).to_lowercase(),
            width: segment.width,
            height: segment.height,
            frame_rate: f64::from(input_fps),
            duration_seconds: segment.duration_seconds,
            start_seconds: segment.start_seconds,
            has_audio: segment.audio.is_some(),
            video_packets: segment.video_packets.len(),
        };
        let mut decoder = self.backend.decoder(&segment.video)?;
        // One scaling step for the whole ladder pays with two renditions or
        // more; a transform stage works on the decoded frame, so it keeps
        // the per-rendition scalers.
        let ladder_scaler = match (&options.transform, options.profiles.len()) {
            (None, 2..) if options.ladder_stage => self.backend.ladder_scaler(),
            _ => None,
        };

        let (decoded, decode_errors, renditions) = std::thread::scope(|scope| {
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            for profile in &options.profiles {
                let (tx, rx) = sync_channel::<Picture>(FRAME_QUEUE);
                senders.push(tx);
                let job = RenditionJob {
                    backend: self.backend.as_ref(),
                    profile,
                    options,
                    time_base: segment.video.time_base,
                    input_fps,
                    audio: segment
                        .audio
                        .as_ref()
                        .map(|a| (a.parameters.clone(), a.time_base, a.packets.as_slice())),
                    stop: &stop,
                };
                handles.push(scope.spawn(move || {
                    let result = job.run(rx);
                    job.stop.fail_if(&result);
                    result
                }));
            }
            let mut inboxes = Inboxes::new(senders);

            let (decode_result, ladder_result) = match ladder_scaler {
                None => {
                    let decoded = decode_all(
                        &mut *decoder,
                        &segment,
                        &mut |index, frame| inboxes.share(index, frame),
                        &stop,
                        progress,
                    );
                    stop.fail_if(&decoded);
                    drop(inboxes);
                    (decoded, Ok(()))
                }
                Some(scaler) => {
                    let (tx, rx) = sync_channel(ladder::LADDER_QUEUE);
                    let (stop, profiles) = (&stop, &options.profiles);
                    let ladder =
                        scope.spawn(move || ladder::run(scaler, profiles, rx, inboxes, stop));
                    let decoded = decode_all(
                        &mut *decoder,
                        &segment,
                        // A closed queue is a ladder stage that failed: its
                        // error is the story, collected when it is joined.
                        &mut |index, frame| {
                            tx.send((index, frame)).map_err(|_| VideoError::Cancelled)
                        },
                        stop,
                        progress,
                    );
                    // Before the queue closes, so that the ladder stage and
                    // the renditions stop at once rather than finish a
                    // segment cut short by a failed decode for nothing.
                    stop.fail_if(&decoded);
                    drop(tx);
                    (decoded, ladder.join().expect("ladder thread panicked"))
                }
            };
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("rendition thread panicked"))
                .collect();

            // In pipeline order: decode, ladder, then the renditions.
            let mut failures = Vec::new();
            let decoded = decode_result.map_err(|e| failures.push(e)).ok();
            if let Err(e) = ladder_result {
                failures.push(e);
            }
            let mut renditions = Vec::new();
            for (profile, result) in options.profiles.iter().zip(results) {
                match result {
                    Ok(r) => renditions.push(r),
                    Err(e) if stop.is_echo(&e) => failures.push(e),
                    Err(e) => failures.push(VideoError::Rendition {
                        profile: profile.name.clone(),
                        source: Box::new(e),
                    }),
                }
            }
            // A stage that stopped because another failed answers
            // "cancelled"; the failure that caused it is the story.
            if !failures.is_empty() {
                let story = failures.iter().position(|e| !stop.is_echo(e)).unwrap_or(0);
                return Err(failures.swap_remove(story));
            }
            let (decoded, errors) = decoded.expect("a decode failure is among the failures");
            Ok((decoded, errors, renditions))
        })?;
        // Inside the clock, as in `decode_only`: closing the decoder joins
        // its frame threads, and freeing the demuxed input is the engine's
        // work too (outside, it showed up as the caller's overhead).
        drop(decoder);
        drop(segment);
        Ok(TranscodeOutput {
            backend: self.backend.name(),
            input: info,
            decoded,
            decode_errors,
            renditions,
            elapsed: started.elapsed(),
        })
    }

    /// Demuxes and decodes one segment without scaling or encoding: the
    /// decoder's own speed, against which a ladder's cost shows.
    pub fn decode_only(
        &self,
        input: impl Into<Arc<[u8]>>,
        options: &TranscodeOptions,
    ) -> Result<DecodeOutput, VideoError> {
        let started = Instant::now();
        let (stop, segment) = admit(input.into(), options, started)?;
        let mut decoder = self.backend.decoder(&segment.video)?;
        let (decoded, decode_errors) = decode_all(
            &mut *decoder,
            &segment,
            &mut |_, _| Ok(()),
            &stop,
            &mut |_| {},
        )?;
        // Drop the decoder inside the clock: its last frames' release is work too.
        drop(decoder);
        Ok(DecodeOutput {
            backend: self.backend.name(),
            decoded,
            decode_errors,
            elapsed: started.elapsed(),
        })
    }
}

/// Checks the input's size, sets up the stop signal for `options`' deadline
/// and cancel flag, and demuxes the segment: the start of every run.
fn admit(
    input: Arc<[u8]>,
    options: &TranscodeOptions,
    started: Instant,
) -> Result<(Stop<'_>, DemuxedSegment), VideoError> {
    if input.len() > options.max_input_bytes {
        return Err(VideoError::InputTooLarge {
            size: input.len(),
            limit: options.max_input_bytes,
        });
    }
    let stop = Stop {
        deadline: options.timeout.map(|t| started + t),
        timeout: options.timeout,
        cancel: options.cancel.as_deref(),
        failed: AtomicBool::new(false),
    };
    let segment = container::demux(input, &options.limits, stop.deadline).map_err(|e| match e {
        VideoError::Timeout(_) => VideoError::Timeout(options.timeout.unwrap_or_default()),
        e => e,
    })?;
    Ok((stop, segment))
}

/// The result of [`Transcoder::decode_only`].
#[derive(Debug, Clone, Serialize)]
pub struct DecodeOutput {
    pub backend: &'static str,
    pub decoded: PixelCount,
    pub decode_errors: usize,
    #[serde(serialize_with = "serialize_seconds")]
    pub elapsed: Duration,
}

/// Decodes every video packet and hands each frame, numbered in display
/// order, to `deliver` (the rendition threads' inboxes or the ladder stage).
fn decode_all(
    decoder: &mut dyn super::Decoder,
    segment: &DemuxedSegment,
    deliver: &mut dyn FnMut(u64, Frame) -> Result<(), VideoError>,
    stop: &Stop<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(PixelCount, usize), VideoError> {
    let mut decoded = PixelCount::default();
    let mut errors = 0usize;
    let mut last_error = None;
    let total = segment.video_packets.len();
    let mut fan_out = |frame: Frame| -> Result<(), VideoError> {
        stop.check()?;
        if frame.width == 0 || frame.height == 0 {
            return Ok(());
        }
        let index = decoded.frames;
        decoded.frames += 1;
        decoded.pixels += frame.pixels();
        deliver(index, frame)
    };
    for (i, packet) in segment
        .video_packets
        .iter()
        .map(Some)
        .chain(std::iter::once(None))
        .enumerate()
    {
        stop.check()?;
        match decoder.decode(packet, &mut fan_out) {
            Ok(()) => {}
            Err(VideoError::Decode(e)) => {
                errors += 1;
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
        progress(Progress {
            packets_done: (i + 1).min(total),
            packets_total: total,
        });
    }
    if decoded.frames == 0 {
        return Err(VideoError::NoFrames {
            errors,
            last: last_error,
        });
    }
    Ok((decoded, errors))
}
