//! The transcode engine: one decode, then per rendition frame-rate conversion,
//! scaling and encoding on its own thread, then muxing with the audio copied
//! through. Backends are reached only through the traits in [`super::backend`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use serde::Serialize;

use super::backend::{Encoder, EncoderSettings, Frame, Scaler, VideoBackend};
use super::container::{self, DemuxLimits, DemuxedSegment, MuxTrack};
use super::fps::FpsConverter;
use super::profile::{OutputContainer, VideoProfile};
use super::transform::{StageRun, TransformCount, TransformStage};
use super::VideoError;

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

        let (decoded, decode_errors, renditions) = std::thread::scope(|scope| {
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            for profile in &options.profiles {
                let (tx, rx) = sync_channel::<Arc<Frame>>(FRAME_QUEUE);
                senders.push(Some(tx));
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
                    if result.is_err() {
                        job.stop.failed.store(true, Ordering::Relaxed);
                    }
                    result
                }));
            }

            let decode_result = decode_all(&mut *decoder, &segment, &mut senders, &stop, progress);
            if decode_result.is_err() {
                stop.failed.store(true, Ordering::Relaxed);
            }
            drop(senders);
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("rendition thread panicked"))
                .collect();
            let (decoded, errors) = decode_result?;
            // A rendition's own failure is the story; "cancelled" echoes are not.
            let mut renditions = Vec::new();
            let mut first_err = None;
            for (profile, r) in options.profiles.iter().zip(results) {
                match r {
                    Ok(r) => renditions.push(r),
                    Err(e) => {
                        let cancelled = matches!(e, VideoError::Cancelled)
                            && stop.cancel.is_none_or(|c| !c.load(Ordering::Relaxed));
                        if first_err.is_none() || !cancelled {
                            let wrapped = VideoError::Rendition {
                                profile: profile.name.clone(),
                                source: Box::new(e),
                            };
                            if first_err.as_ref().is_none_or(|(was_cancel, _)| *was_cancel) {
                                first_err = Some((cancelled, wrapped));
                            }
                        }
                    }
                }
            }
            if let Some((_, e)) = first_err {
                return Err(e);
            }
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
        let (decoded, decode_errors) =
            decode_all(&mut *decoder, &segment, &mut [], &stop, &mut |_| {})?;
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

/// Decodes every video packet and fans the frames out to the rendition threads.
fn decode_all(
    decoder: &mut dyn super::Decoder,
    segment: &DemuxedSegment,
    senders: &mut [Option<SyncSender<Arc<Frame>>>],
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
        decoded.frames += 1;
        decoded.pixels += frame.pixels();
        let frame = Arc::new(frame);
        for slot in senders.iter_mut() {
            if let Some(tx) = slot {
                // A closed channel means that rendition gave up; its error is
                // collected when the thread is joined.
                if tx.send(Arc::clone(&frame)).is_err() {
                    *slot = None;
                }
            }
        }
        // Every rendition gave up (a decode-only run has none to begin with).
        if !senders.is_empty() && senders.iter().all(Option::is_none) {
            return Err(VideoError::Cancelled);
        }
        Ok(())
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

/// Everything one rendition thread needs.
struct RenditionJob<'a> {
    backend: &'a dyn VideoBackend,
    profile: &'a VideoProfile,
    options: &'a TranscodeOptions,
    time_base: ff::Rational,
    input_fps: ff::Rational,
    /// The audio track to copy: its own parameters, the shared packets.
    audio: Option<(ff::codec::Parameters, ff::Rational, &'a [ff::Packet])>,
    stop: &'a Stop<'a>,
}

/// The per-rendition pipeline, built when the first frame shows the input size.
struct Pipeline {
    scaler: Box<dyn Scaler>,
    encoder: Box<dyn Encoder>,
    width: u32,
    height: u32,
    /// The last source frame scaled and its result, reused when the frame-rate
    /// converter repeats a frame (or the transform stage drops one).
    last: Option<(Arc<Frame>, Frame)>,
    stage: Option<StageRun>,
}

impl RenditionJob<'_> {
    fn run(&self, frames: Receiver<Arc<Frame>>) -> Result<Rendition, VideoError> {
        let time_base = self.time_base;
        let out_rate = self
            .profile
            .frame_rate()
            .map(|(n, d)| ff::Rational(n as i32, d as i32))
            .unwrap_or(self.input_fps);
        let mut converter = FpsConverter::new(
            (time_base.numerator(), time_base.denominator()),
            (out_rate.numerator() as u32, out_rate.denominator() as u32),
        );
        // One input frame's duration in the input time base.
        let frame_ticks =
            ((f64::from(time_base).recip() / f64::from(self.input_fps)).round() as i64).max(1);

        let mut pipeline: Option<Pipeline> = None;
        let mut packets = Vec::new();
        let mut encoded = PixelCount::default();
        let mut last_pts = None;
        let mut emit = |src: &Arc<Frame>, pts: i64| -> Result<(), VideoError> {
            self.stop.check()?;
            let p = match pipeline.as_mut() {
                Some(p) => p,
                None => pipeline.insert(self.pipeline(src.width, src.height, out_rate)?),
            };
            let reuse = matches!(&p.last, Some((prev, _)) if Arc::ptr_eq(prev, src));
            if !reuse {
                let have_output = p.last.is_some();
                let scaled = match p.stage.as_mut() {
                    Some(stage) => {
                        if stage.behind(src.pts, have_output) {
                            // Behind real time: the frame is dropped at the
                            // input and the last output shown again.
                            stage.count.dropped += 1;
                            None
                        } else {
                            Some(stage.apply(src, &mut *p.scaler, p.width, p.height)?)
                        }
                    }
                    None => Some(p.scaler.scale(src)?),
                };
                match (scaled, p.last.as_mut()) {
                    (Some(scaled), _) => p.last = Some((Arc::clone(src), scaled)),
                    (None, Some(last)) => last.0 = Arc::clone(src),
                    (None, None) => unreachable!("a frame is dropped only after an output"),
                }
            }
            let (_, scaled) = p.last.as_mut().expect("scaled frame was just stored");
            scaled.pts = pts;
            p.encoder
                .encode(Some(scaled), &mut |pkt| packets.push(pkt))?;
            encoded.frames += 1;
            encoded.pixels += u64::from(p.width) * u64::from(p.height);
            Ok(())
        };
        for frame in frames {
            last_pts = Some(frame.pts);
            let pts = frame.pts;
            converter.push(frame, pts, &mut emit)?;
        }
        self.stop.check()?;
        converter.finish(last_pts.map(|p| p + frame_ticks), &mut emit)?;
        let Some(mut pipeline) = pipeline else {
            return Err(VideoError::NoFrames {
                errors: 0,
                last: None,
            });
        };
        pipeline.last = None;
        pipeline
            .encoder
            .encode(None, &mut |pkt| packets.push(pkt))?;

        let mut tracks = vec![MuxTrack {
            parameters: pipeline.encoder.parameters(),
            time_base,
            packets: &packets,
        }];
        if let Some((parameters, time_base, packets)) = &self.audio {
            tracks.push(MuxTrack {
                parameters: parameters.clone(),
                time_base: *time_base,
                packets,
            });
        }
        let format = self.profile.format.unwrap_or(self.options.container);
        let data = container::mux(format.muxer(), &tracks)?;
        Ok(Rendition {
            profile: self.profile.name.clone(),
            width: pipeline.width,
            height: pipeline.height,
            container: format,
            encoded,
            transform: pipeline.stage.map(|s| s.count),
            bytes: data.len(),
            data,
        })
    }

    fn pipeline(
        &self,
        in_w: u32,
        in_h: u32,
        out_rate: ff::Rational,
    ) -> Result<Pipeline, VideoError> {
        let (width, height) = self.profile.output_size(in_w, in_h);
        let settings = EncoderSettings {
            profile: self.profile.clone(),
            width,
            height,
            time_base: self.time_base,
            frame_rate: out_rate,
            global_header: self.profile.format.unwrap_or(self.options.container)
                == OutputContainer::Mp4,
            preset: self.options.preset.clone(),
            threads: self.options.encoder_threads,
        };
        Ok(Pipeline {
            scaler: self.backend.scaler(width, height)?,
            encoder: self.backend.encoder(&settings)?,
            width,
            height,
            last: None,
            stage: self.options.transform.clone().map(|stage| {
                let tick = f64::from(self.time_base);
                StageRun::new(stage, tick, 1.0 / f64::from(out_rate).max(1.0))
            }),
        })
    }
}
