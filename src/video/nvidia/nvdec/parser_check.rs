//! NVIDIA's own bitstream parser (libnvcuvid, which is software) driving our
//! callbacks on a machine without a GPU: real H.264 and HEVC streams go
//! through the same [`Feed`] the decoder uses, with an engine that records
//! what the hardware would be asked for instead of asking it. What the
//! sequence, decode and display callbacks produce (the decoder's coded size,
//! crop, target size and surfaces; pictures in decode order; timestamps in
//! display order) is checked against FFmpeg's decoding of the same stream.
//!
//! The library comes from `.nvidia-driver/` (Debian's driver 535 user-space
//! libraries, unpacked by `scripts/install-deps`), which `scripts/test` puts
//! on `LD_LIBRARY_PATH` and announces with `LPW_NVIDIA_DRIVER_LIBS`: there a
//! missing library fails the tests; elsewhere they say why they skip.

use std::ffi::c_int;

use ffmpeg_next as ff;
use nvidia_video_codec_sdk::sys::cuviddec::CUVIDPICPARAMS;
use nvidia_video_codec_sdk::sys::nvcuvid::CUVIDPARSERDISPINFO;

use super::api::{self, CuStatus, NvdecError, CUDA_SUCCESS};
use super::config::DecoderConfig;
use super::parser::{Parser, PictureEngine, Shown};
use super::{AnnexB, Feed, ParserClock};
use crate::video::container::{demux, DemuxLimits, DemuxedSegment};
use crate::video::nvidia::engines::DecodeLimits;
use crate::video::profile::VideoCodec;

/// One picture the decode callback submitted.
#[derive(Debug, Clone, Copy)]
struct Submitted {
    index: c_int,
    field: bool,
    second_field: bool,
}

/// One picture the display callback asked for.
#[derive(Debug, Clone, Copy)]
struct Displayed {
    index: c_int,
    progressive: bool,
    top_field_first: bool,
    width: u32,
    height: u32,
}

/// Stands where the GPU would: records every request and answers as a
/// decoder that decodes everything would.
#[derive(Default)]
struct Recorder {
    open: bool,
    configs: Vec<DecoderConfig>,
    submitted: Vec<Submitted>,
}

impl PictureEngine for Recorder {
    type Picture = Displayed;

    fn open(&mut self, config: &DecoderConfig) -> Result<(), NvdecError> {
        self.open = true;
        self.configs.push(*config);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.open
    }

    fn close(&mut self) {
        self.open = false;
    }

    fn abandon(&mut self) {
        self.open = false;
    }

    fn bind(&self) -> Result<(), NvdecError> {
        Ok(())
    }

    unsafe fn decode(&mut self, picture: *mut CUVIDPICPARAMS) -> CuStatus {
        // SAFETY: the parser's parameters, valid for the call (the caller's
        // contract); only integers are read.
        let p = unsafe { &*picture };
        self.submitted.push(Submitted {
            index: p.CurrPicIdx,
            field: p.field_pic_flag != 0,
            second_field: p.second_field != 0,
        });
        CUDA_SUCCESS
    }

    fn show(
        &mut self,
        info: &CUVIDPARSERDISPINFO,
        config: &DecoderConfig,
    ) -> Result<Shown<Displayed>, NvdecError> {
        Ok(Shown::Picture(Displayed {
            index: info.picture_index,
            progressive: info.progressive_frame != 0,
            top_field_first: info.top_field_first != 0,
            width: config.target_width,
            height: config.target_height,
        }))
    }
}

/// The size range of a recent GPU's NVDEC (an Ampere's, from
/// cuvidGetDecoderCaps), which every stream here is inside.
const LIMITS: DecodeLimits = DecodeLimits {
    min_width: 48,
    min_height: 16,
    max_width: 8192,
    max_height: 8192,
    max_macroblocks: 262_144,
};

/// What our callbacks made of one stream.
struct ParserRun {
    configs: Vec<DecoderConfig>,
    submitted: Vec<Submitted>,
    /// (presentation time in the stream's time base, picture).
    shown: Vec<(i64, Displayed)>,
    fatal: Option<String>,
    damaged: usize,
}

/// NVIDIA's parser over every packet of `segment`, as the decoder feeds it.
fn parse(segment: &DemuxedSegment, codec: VideoCodec) -> ParserRun {
    let api = api::api().expect("libnvcuvid loads with every symbol");
    let clock = ParserClock::for_time_base(segment.video.time_base);
    let parser = Parser::new(api, Recorder::default(), codec, LIMITS, clock.rate)
        .expect("cuvidCreateVideoParser succeeds without a GPU");
    let mut feed = Feed {
        parser,
        annexb: AnnexB::new(&segment.video).expect("the Annex B filter opens"),
        clock,
        flushed: false,
    };
    let mut shown = Vec::new();
    for packet in segment.video_packets.iter().map(Some).chain([None]) {
        feed.packet(packet);
        shown.extend(feed.shown());
    }
    let state = feed.parser.state();
    let (fatal, damaged) = (state.fatal.as_ref().map(|e| e.to_string()), state.damaged);
    let recorder = feed.parser.engine();
    ParserRun {
        configs: recorder.configs.clone(),
        submitted: recorder.submitted.clone(),
        shown,
        fatal,
        damaged,
    }
}

/// FFmpeg's view of the same stream, from libavcodec decoding it.
struct FfmpegView {
    /// Presentation times in display order.
    pts: Vec<i64>,
    interlaced: Vec<bool>,
    /// Whether the top field is shown first, from the stream's field order
    /// (libavcodec 5.1's per-frame flag is unset for x264's MBAFF frames).
    top_field_first: Option<bool>,
    width: u32,
    height: u32,
    coded_width: u32,
    coded_height: u32,
    format: ff::format::Pixel,
    /// Frames the decoder may hold back for reordering.
    reorder_depth: i32,
}

fn ffmpeg_view(segment: &DemuxedSegment) -> FfmpegView {
    let context = ff::codec::context::Context::from_parameters(segment.video.parameters.clone())
        .expect("codec parameters");
    let mut decoder = context
        .decoder()
        .video()
        .expect("libavcodec opens the decoder");
    let mut view = FfmpegView {
        pts: Vec::new(),
        interlaced: Vec::new(),
        top_field_first: None,
        width: 0,
        height: 0,
        coded_width: 0,
        coded_height: 0,
        format: ff::format::Pixel::None,
        reorder_depth: 0,
    };
    let mut frame = ff::frame::Video::empty();
    let mut drain = |decoder: &mut ff::decoder::Video, view: &mut FfmpegView| {
        while decoder.receive_frame(&mut frame).is_ok() {
            view.pts
                .push(frame.timestamp().or(frame.pts()).expect("a timestamp"));
            view.interlaced.push(frame.is_interlaced());
            (view.width, view.height) = (frame.width(), frame.height());
        }
    };
    for packet in &segment.video_packets {
        decoder
            .send_packet(packet)
            .expect("libavcodec takes the packet");
        drain(&mut decoder, &mut view);
    }
    decoder.send_eof().expect("end of stream");
    drain(&mut decoder, &mut view);
    // SAFETY: a live, opened decoder context; plain integers are read.
    let raw = unsafe { &*decoder.as_ptr() };
    view.coded_width = raw.coded_width as u32;
    view.coded_height = raw.coded_height as u32;
    view.format = decoder.format();
    use ff::ffi::AVFieldOrder::*;
    // SAFETY: live codec parameters; one enum the demuxer set is read.
    view.top_field_first = match unsafe { (*segment.video.parameters.as_ptr()).field_order } {
        AV_FIELD_TT | AV_FIELD_BT => Some(true),
        AV_FIELD_BB | AV_FIELD_TB => Some(false),
        _ => None,
    };
    view.reorder_depth = raw.has_b_frames;
    view
}

/// A stream the FFmpeg CLI encodes from its test pattern, demuxed.
fn stream(source: &str, args: &[&str], ext: &str) -> DemuxedSegment {
    let bytes = crate::video::test_stream(source, args, ext);
    demux(bytes.into(), &DemuxLimits::default(), None).expect("the stream demuxes")
}

/// Whether libnvcuvid is here; on the test machines (`LPW_NVIDIA_DRIVER_LIBS`
/// set) it must be.
fn parser_library() -> bool {
    let expected = std::env::var_os("LPW_NVIDIA_DRIVER_LIBS").is_some();
    match api::api() {
        Ok(_) => true,
        Err(e) if expected => panic!("LPW_NVIDIA_DRIVER_LIBS is set but libnvcuvid fails: {e}"),
        Err(e) => {
            eprintln!("skipped: {e} (bash scripts/test unpacks NVIDIA's libraries)");
            false
        }
    }
}

/// Checks our callbacks' view of an 8-bit stream against FFmpeg's.
fn check_against_ffmpeg(name: &str, segment: &DemuxedSegment, codec: VideoCodec) {
    let run = parse(segment, codec);
    let ff = ffmpeg_view(segment);
    assert_eq!(run.fatal, None, "{name}");
    assert_eq!(run.damaged, 0, "{name}");
    assert!(!ff.pts.is_empty(), "{name}: FFmpeg decoded nothing");

    // The sequence callback: one decoder, for FFmpeg's coded size, cropped
    // to its picture size.
    assert_eq!(run.configs.len(), 1, "{name}: {:?}", run.configs);
    let config = run.configs[0];
    assert_eq!(config.codec, codec, "{name}");
    assert_eq!(
        (config.coded_width, config.coded_height),
        (ff.coded_width, ff.coded_height),
        "{name}: coded size"
    );
    let [left, top, right, bottom] = config.display.map(i32::from);
    assert_eq!(
        ((right - left) as u32, (bottom - top) as u32),
        (ff.width, ff.height),
        "{name}: display area {:?}",
        config.display
    );
    let even = |v: u32| (v + 1) & !1;
    assert_eq!(
        (config.target_width, config.target_height),
        (even(ff.width), even(ff.height)),
        "{name}: target size"
    );
    assert_eq!(
        config.progressive,
        !ff.interlaced.iter().any(|&i| i),
        "{name}: progressive"
    );

    // Surfaces: the parser took the count the callback returned (no picture
    // index reaches past it) and it covers FFmpeg's reordering depth.
    let surfaces = config.surfaces as c_int;
    assert!(
        surfaces > ff.reorder_depth,
        "{name}: {surfaces} surfaces for a reorder depth of {}",
        ff.reorder_depth
    );
    for s in &run.submitted {
        assert!(
            (0..surfaces).contains(&s.index),
            "{name}: picture index {} outside {surfaces} surfaces",
            s.index
        );
    }

    // The decode callback: every frame (a field pair counts once).
    let frames_submitted = run
        .submitted
        .iter()
        .filter(|s| !s.field || !s.second_field)
        .count();
    assert_eq!(frames_submitted, ff.pts.len(), "{name}: pictures submitted");

    // The display callback: every frame, in display order, with FFmpeg's
    // timestamps, at the target size.
    let shown_pts: Vec<i64> = run.shown.iter().map(|(pts, _)| *pts).collect();
    assert_eq!(shown_pts, ff.pts, "{name}: display-order timestamps");
    for (i, (_, shown)) in run.shown.iter().enumerate() {
        assert_eq!(
            (shown.width, shown.height),
            (config.target_width, config.target_height),
            "{name}"
        );
        assert!((0..surfaces).contains(&shown.index), "{name}");
        if ff.interlaced[i] {
            assert!(!shown.progressive, "{name}: frame {i} is interlaced");
        }
    }
}

const PATTERN: &str = "testsrc2=size=330x186:rate=30";

#[test]
fn h264_with_b_frames_and_a_cropped_size_parses_as_ffmpeg_decodes_it() {
    if !parser_library() {
        return;
    }
    // 330x186 is coded as 336x192 and cropped in the SPS.
    let x264 = [
        "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p",
    ];
    let ts = stream(PATTERN, &[&x264[..], &["-bf", "3"]].concat(), "ts");
    check_against_ffmpeg("h264 B-frames, MPEG-TS", &ts, VideoCodec::H264);
    // MP4: length-prefixed NAL units through the Annex B filter, and a
    // 1/15360 time base rather than 90 kHz.
    let mp4 = stream(PATTERN, &[&x264[..], &["-bf", "2"]].concat(), "mp4");
    assert_ne!(mp4.video.time_base, ff::Rational(1, 90_000));
    check_against_ffmpeg("h264 B-frames, MP4", &mp4, VideoCodec::H264);
}

#[test]
fn hevc_with_b_frames_and_a_cropped_size_parses_as_ffmpeg_decodes_it() {
    if !parser_library() {
        return;
    }
    let x265 = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-x265-params",
        "bframes=4:keyint=30:log-level=none",
    ];
    let ts = stream(PATTERN, &x265, "ts");
    check_against_ffmpeg("hevc B-frames, MPEG-TS", &ts, VideoCodec::Hevc);
    let mp4 = stream(PATTERN, &x265, "mp4");
    check_against_ffmpeg("hevc B-frames, MP4", &mp4, VideoCodec::Hevc);
}

#[test]
fn interlaced_h264_keeps_its_field_order() {
    if !parser_library() {
        return;
    }
    for (name, order, top_first) in [
        ("h264 interlaced, top field first", "tff=1", true),
        ("h264 interlaced, bottom field first", "bff=1", false),
    ] {
        let x264 = format!("interlaced=1:{order}:pic-struct=1");
        let segment = stream(
            "testsrc2=size=320x240:rate=30",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                "-bf",
                "2",
                "-x264-params",
                &x264,
            ],
            "ts",
        );
        let ff = ffmpeg_view(&segment);
        assert!(
            ff.interlaced.iter().all(|&i| i),
            "{name}: interlaced frames"
        );
        assert_eq!(ff.top_field_first, Some(top_first), "{name}");
        check_against_ffmpeg(name, &segment, VideoCodec::H264);
        let run = parse(&segment, VideoCodec::H264);
        // Interlaced content gets the adaptive deinterlacer, not weave.
        assert!(!run.configs[0].progressive, "{name}");
        // The first picture's field order is the stream's. NVIDIA's parser
        // 535 reports later pictures of x264's top-field-first MBAFF stream
        // as bottom first (from frame 15 on), which libavcodec's stream-level
        // field order does not: counted, not asserted, since the deinterlacer
        // is given the parser's per-picture flag as FFmpeg's cuviddec does.
        assert_eq!(run.shown[0].1.top_field_first, top_first, "{name}");
        let disagree = run
            .shown
            .iter()
            .filter(|(_, p)| p.top_field_first != top_first)
            .count();
        eprintln!(
            "{name}: the parser's field order differs from the stream's on {disagree} of {} pictures",
            run.shown.len()
        );
    }
}

#[test]
fn a_timestamp_gap_comes_out_where_ffmpeg_puts_it() {
    if !parser_library() {
        return;
    }
    // Half a second missing after frame 15, with B-frames around it.
    let segment = stream(
        PATTERN,
        &[
            "-vf",
            "setpts=N/(30*TB)+gte(N\\,15)*0.5/TB",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-bf",
            "2",
            "-pix_fmt",
            "yuv420p",
        ],
        "ts",
    );
    let ff = ffmpeg_view(&segment);
    let steps: Vec<i64> = ff.pts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps.contains(&(3000 + 45_000)),
        "the stream has the gap: {steps:?}"
    );
    check_against_ffmpeg("h264 timestamp gap", &segment, VideoCodec::H264);
}

#[test]
fn ten_bit_streams_are_refused_at_the_sequence_header_naming_the_depth() {
    if !parser_library() {
        return;
    }
    for (name, codec, args) in [
        (
            "h264-10",
            VideoCodec::H264,
            &[
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p10le",
            ][..],
        ),
        (
            "hevc-10",
            VideoCodec::Hevc,
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p10le",
                "-x265-params",
                "log-level=none",
            ][..],
        ),
    ] {
        let segment = stream(PATTERN, args, "ts");
        assert_eq!(
            ffmpeg_view(&segment).format,
            ff::format::Pixel::YUV420P10LE,
            "{name}"
        );
        let run = parse(&segment, codec);
        let fatal = run
            .fatal
            .unwrap_or_else(|| panic!("{name}: 10-bit accepted"));
        assert!(fatal.contains("10-bit video"), "{name}: {fatal}");
        // Refused before any decoder or picture.
        assert!(run.configs.is_empty() && run.submitted.is_empty() && run.shown.is_empty());
    }
}

#[test]
fn a_stream_of_the_other_codec_is_refused_not_misdecoded() {
    if !parser_library() {
        return;
    }
    // HEVC bytes through an H.264 parser find no sequence header it takes:
    // nothing is shown and no decoder is created for a wrong format.
    let segment = stream(
        PATTERN,
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=none",
        ],
        "ts",
    );
    let run = parse(&segment, VideoCodec::H264);
    assert!(run.shown.is_empty(), "{} pictures shown", run.shown.len());
    assert!(run.configs.iter().all(|c| c.codec == VideoCodec::H264));
}
