//! The engine's two ways of scaling (per rendition, or the ladder stage),
//! and which failure a run reports when one stage fails and the others stop
//! because of it. The CPU backend's stages, wrapped to count calls and to
//! plant failures.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ffmpeg_next as ff;

use super::*;
use crate::video::backend::{
    Decoder, Encoder, EncoderSettings, Ladder, LadderScaler, Scaler, VideoStreamInfo,
};
use crate::video::cpu::{CpuBackend, CpuScaler};
use crate::video::transform::FrameTransform;

/// Failures planted in a [`TestBackend`].
#[derive(Clone, Default)]
struct Plan {
    /// Offer a ladder scaler (the CPU's, one scaler per size).
    ladder: bool,
    /// The ladder scaler fails on this frame (0-based).
    ladder_fails_at: Option<usize>,
    /// The ladder scaler leaves out its last rendition.
    ladder_short: bool,
    /// The ladder scaler hands every frame back (as a GPU ladder does with
    /// a frame the CPU decoded).
    ladder_declines: bool,
    /// This profile's encoder fails on this frame.
    encoder_fails_at: Option<(&'static str, usize)>,
    /// The decoder fails (not a damaged packet: the device) after this many
    /// frames out.
    decoder_fails_after: Option<usize>,
}

/// The CPU backend with counters and planted failures.
#[derive(Clone, Default)]
struct TestBackend {
    plan: Plan,
    ladder_frames: Arc<AtomicUsize>,
    rendition_scales: Arc<AtomicUsize>,
}

impl TestBackend {
    fn with(plan: Plan) -> TestBackend {
        TestBackend {
            plan,
            ..TestBackend::default()
        }
    }

    fn with_ladder() -> TestBackend {
        TestBackend::with(Plan {
            ladder: true,
            ..Plan::default()
        })
    }
}

fn planted(stage: &'static str) -> VideoError {
    VideoError::Gpu {
        stage,
        message: "planted failure".into(),
    }
}

struct CountingScaler(Box<dyn Scaler>, Arc<AtomicUsize>);

impl Scaler for CountingScaler {
    fn scale(&mut self, frame: &Frame) -> Result<Frame, VideoError> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.scale(frame)
    }
}

/// A ladder of CPU scalers, one per size.
struct TestLadder {
    scalers: Vec<CpuScaler>,
    plan: Plan,
    frames: Arc<AtomicUsize>,
}

impl LadderScaler for TestLadder {
    fn scale(&mut self, frame: Frame, sizes: &[(u32, u32)]) -> Result<Ladder, VideoError> {
        let n = self.frames.fetch_add(1, Ordering::Relaxed);
        if self.plan.ladder_fails_at == Some(n) {
            return Err(planted("ladder scale"));
        }
        if self.plan.ladder_declines {
            return Ok(Ladder::Declined(frame));
        }
        if self.scalers.is_empty() {
            self.scalers = sizes.iter().map(|&(w, h)| CpuScaler::new(w, h)).collect();
        }
        let mut out = self
            .scalers
            .iter_mut()
            .map(|scaler| scaler.scale(&frame))
            .collect::<Result<Vec<_>, _>>()?;
        if self.plan.ladder_short {
            out.pop();
        }
        Ok(Ladder::Scaled(out))
    }
}

struct FailingEncoder {
    inner: Box<dyn Encoder>,
    fails_at: usize,
    frames: usize,
}

impl Encoder for FailingEncoder {
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError> {
        if frame.is_some() {
            if self.frames == self.fails_at {
                return Err(planted("encode"));
            }
            self.frames += 1;
        }
        self.inner.encode(frame, emit)
    }

    fn parameters(&self) -> ff::codec::Parameters {
        self.inner.parameters()
    }
}

struct FailingDecoder {
    inner: Box<dyn Decoder>,
    fails_after: usize,
    frames: usize,
}

impl Decoder for FailingDecoder {
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        if self.frames >= self.fails_after {
            return Err(planted("decode"));
        }
        let frames = &mut self.frames;
        self.inner.decode(packet, &mut |frame| {
            *frames += 1;
            emit(frame)
        })
    }
}

impl VideoBackend for TestBackend {
    fn name(&self) -> &'static str {
        "test"
    }

    fn decoder(&self, stream: &VideoStreamInfo) -> Result<Box<dyn Decoder>, VideoError> {
        let inner = CpuBackend.decoder(stream)?;
        Ok(match self.plan.decoder_fails_after {
            Some(fails_after) => Box::new(FailingDecoder {
                inner,
                fails_after,
                frames: 0,
            }),
            None => inner,
        })
    }

    fn scaler(&self, width: u32, height: u32) -> Result<Box<dyn Scaler>, VideoError> {
        Ok(Box::new(CountingScaler(
            CpuBackend.scaler(width, height)?,
            Arc::clone(&self.rendition_scales),
        )))
    }

    fn encoder(&self, settings: &EncoderSettings) -> Result<Box<dyn Encoder>, VideoError> {
        let inner = CpuBackend.encoder(settings)?;
        Ok(match self.plan.encoder_fails_at {
            Some((name, fails_at)) if name == settings.profile.name => Box::new(FailingEncoder {
                inner,
                fails_at,
                frames: 0,
            }),
            _ => inner,
        })
    }

    fn ladder_scaler(&self) -> Option<Box<dyn LadderScaler>> {
        self.plan.ladder.then(|| {
            Box::new(TestLadder {
                scalers: Vec::new(),
                plan: self.plan.clone(),
                frames: Arc::clone(&self.ladder_frames),
            }) as Box<dyn LadderScaler>
        })
    }
}

/// Three renditions of a 30 fps input: one at half its rate (frames
/// dropped), one at double (frames repeated), one at its own.
fn options() -> TranscodeOptions {
    let mut profiles =
        VideoProfile::parse_list("P360p30fps16x9,P240p30fps16x9,P144p30fps16x9").unwrap();
    profiles[0].fps = 15;
    profiles[1].fps = 60;
    profiles[2].fps = 0;
    TranscodeOptions {
        profiles,
        preset: "ultrafast".into(),
        // One encoder thread: x264's output is then the same run to run.
        encoder_threads: 1,
        ..Default::default()
    }
}

fn clip() -> Vec<u8> {
    crate::video::test_clip(640, 360, "libx264", "yuv420p", "ts")
}

fn run(backend: &TestBackend, options: &TranscodeOptions) -> Result<TranscodeOutput, VideoError> {
    Transcoder::new(Arc::new(backend.clone())).transcode(clip(), options, &mut |_| {})
}

#[test]
fn the_ladder_stage_makes_the_same_renditions_as_per_rendition_scaling() {
    let options = options();
    let per_rendition = TestBackend::default();
    let a = run(&per_rendition, &options).expect("per-rendition run");
    let ladder = TestBackend::with_ladder();
    let b = run(&ladder, &options).expect("ladder run");

    // Which way each run scaled: every decoded frame once through the
    // ladder, or each rendition scaling the frames it shows.
    assert_eq!(a.decoded.frames, 30);
    assert_eq!(ladder.ladder_frames.load(Ordering::Relaxed), 30);
    assert_eq!(ladder.rendition_scales.load(Ordering::Relaxed), 0);
    assert_eq!(per_rendition.ladder_frames.load(Ordering::Relaxed), 0);
    // 15 fps shows every other frame; 60 fps repeats without rescaling.
    assert_eq!(
        per_rendition.rendition_scales.load(Ordering::Relaxed),
        15 + 30 + 30
    );

    assert_eq!(a.renditions.len(), 3);
    for (x, y) in a.renditions.iter().zip(&b.renditions) {
        assert_eq!((x.width, x.height), (y.width, y.height), "{}", x.profile);
        assert_eq!(x.encoded, y.encoded, "{}", x.profile);
        assert!(x.data == y.data, "{}: the bytes differ", x.profile);
    }
    let frames: Vec<_> = b.renditions.iter().map(|r| r.encoded.frames).collect();
    assert_eq!(frames, [15, 60, 30]);

    // A ladder that hands every frame back (a GPU ladder given frames the
    // CPU decoded): the renditions scale them, and nothing changes.
    let declining = TestBackend::with(Plan {
        ladder: true,
        ladder_declines: true,
        ..Plan::default()
    });
    let c = run(&declining, &options).expect("declined run");
    assert_eq!(declining.ladder_frames.load(Ordering::Relaxed), 30);
    assert_eq!(
        declining.rendition_scales.load(Ordering::Relaxed),
        15 + 30 + 30
    );
    for (x, z) in a.renditions.iter().zip(&c.renditions) {
        assert_eq!(x.encoded, z.encoded, "{}", x.profile);
        assert!(x.data == z.data, "{}: the bytes differ", x.profile);
    }
}

/// One frame at 640x360 (16:9), then 29 at 480x360 (4:3), in one MPEG-TS
/// segment.
fn clip_changing_size_after_one_frame() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for (size, frames, offset) in [("640x360", "1", "0"), ("480x360", "29", "0.0333333")] {
        let out = dir.path().join(format!("{size}.ts"));
        let source = format!("testsrc2=size={size}:rate=30");
        let out_arg = out.to_string_lossy();
        crate::bench::input::ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                &source,
                "-frames:v",
                frames,
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                // No B-frames: the second part starts one frame after the
                // first, not two.
                "-bf",
                "0",
                "-output_ts_offset",
                offset,
                &out_arg,
            ],
            "encode a part of the test clip",
        )
        .unwrap();
        bytes.extend(std::fs::read(&out).unwrap());
    }
    bytes
}

#[test]
fn a_resolution_change_keeps_every_renditions_first_size_on_both_paths() {
    // At 10 fps from 30, the first frame's slot goes to the second: that
    // rendition's first shown picture already has the new size, while
    // the ladder sized itself at the first frame.
    let mut options = options();
    options.profiles[0].fps = 10;
    let input = clip_changing_size_after_one_frame();
    let mut counts = Vec::new();
    for backend in [TestBackend::default(), TestBackend::with_ladder()] {
        let ladder = backend.plan.ladder;
        let out = Transcoder::new(Arc::new(backend))
            .transcode(input.clone(), &options, &mut |_| {})
            .unwrap_or_else(|e| panic!("ladder {ladder}: {e}"));
        assert_eq!(out.decoded.frames, 30);
        if ladder {
            // Every rendition sized from the first frame (640x360).
            let sizes: Vec<_> = out.renditions.iter().map(|r| (r.width, r.height)).collect();
            let first: Vec<_> = options
                .profiles
                .iter()
                .map(|p| p.output_size(640, 360))
                .collect();
            assert_eq!(sizes, first);
        }
        counts.push(out.renditions.iter().map(|r| r.encoded).collect::<Vec<_>>());
    }
    assert_eq!(counts[0].len(), 3);
    assert_eq!(
        counts[0].iter().map(|c| c.frames).collect::<Vec<_>>(),
        counts[1].iter().map(|c| c.frames).collect::<Vec<_>>()
    );
}

#[test]
fn one_rendition_a_transform_stage_or_the_stage_turned_off_keeps_the_per_rendition_scalers() {
    struct Identity;
    impl FrameTransform for Identity {
        fn is_identity(&self) -> bool {
            true
        }
        fn apply(&self, picture: image::RgbImage) -> Result<image::RgbImage, VideoError> {
            Ok(picture)
        }
    }
    let backend = TestBackend::with_ladder();
    let mut single = options();
    single.profiles.truncate(1);
    let out = run(&backend, &single).unwrap();
    assert_eq!(out.renditions[0].encoded.frames, 15);

    let mut off = options();
    off.ladder_stage = false;
    let out = run(&backend, &off).unwrap();
    assert_eq!(out.renditions.len(), 3);

    let mut transformed = options();
    transformed.transform = Some(TransformStage {
        transform: Arc::new(Identity),
        realtime: false,
    });
    let out = run(&backend, &transformed).unwrap();
    assert_eq!(out.renditions.len(), 3);
    assert_eq!(out.renditions[1].transform.unwrap().transformed, 30);
    assert_eq!(backend.ladder_frames.load(Ordering::Relaxed), 0);
    assert_eq!(
        backend.rendition_scales.load(Ordering::Relaxed),
        15 + 2 * (15 + 30 + 30)
    );
}

/// The error a run reports, and that it reports no renditions.
fn failure(plan: Plan) -> VideoError {
    run(&TestBackend::with(plan), &options()).expect_err("the run fails")
}

#[test]
fn a_rendition_that_fails_mid_segment_is_the_story_not_cancelled() {
    for ladder in [false, true] {
        let err = failure(Plan {
            ladder,
            encoder_fails_at: Some(("P240p30fps16x9", 5)),
            ..Plan::default()
        });
        match &err {
            VideoError::Rendition { profile, source } => {
                assert_eq!(profile, "P240p30fps16x9");
                assert!(
                    matches!(
                        **source,
                        VideoError::Gpu {
                            stage: "encode",
                            ..
                        }
                    ),
                    "{err}"
                );
            }
            other => panic!("ladder {ladder}: {other}"),
        }
        assert!(!err.is_bad_input());
    }
}

#[test]
fn a_ladder_stage_that_fails_mid_segment_fails_the_run() {
    let err = failure(Plan {
        ladder: true,
        ladder_fails_at: Some(7),
        ..Plan::default()
    });
    assert!(
        matches!(
            err,
            VideoError::Gpu {
                stage: "ladder scale",
                ..
            }
        ),
        "{err}"
    );

    let err = failure(Plan {
        ladder: true,
        ladder_short: true,
        ..Plan::default()
    });
    assert!(matches!(err, VideoError::Contract(_)), "{err}");
    assert_eq!(err.kind(), "internal");
}

/// The decoder's own error, not a rendition's "cancelled" or a run that
/// ends early as if the segment ended there.
#[test]
fn a_decoder_that_fails_mid_segment_fails_the_run_whole() {
    for ladder in [false, true] {
        let err = failure(Plan {
            ladder,
            decoder_fails_after: Some(10),
            ..Plan::default()
        });
        assert!(
            matches!(
                err,
                VideoError::Gpu {
                    stage: "decode",
                    ..
                }
            ),
            "ladder {ladder}: {err}"
        );
    }
}

/// A cancel mid-segment stops the decoder, the ladder stage and the
/// renditions (the run returns) and is reported as such.
#[test]
fn a_cancel_is_reported_as_one_on_the_ladder_path() {
    let backend = TestBackend::with_ladder();
    let cancel = Arc::new(AtomicBool::new(false));
    let options = TranscodeOptions {
        cancel: Some(Arc::clone(&cancel)),
        ..options()
    };
    let err = Transcoder::new(Arc::new(backend))
        .transcode(clip(), &options, &mut |p| {
            if p.packets_done == 5 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    assert!(matches!(err, VideoError::Cancelled), "{err}");
}
