//! Bad input never panics or hangs: each case ends in a typed error with a
//! clear message (or, where the damage is survivable, a valid output).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clip, ffmpeg, tempdir, Clip};
use lpworker::video::cpu::CpuBackend;
use lpworker::video::{TranscodeOptions, Transcoder, VideoError, VideoProfile};

fn opts() -> TranscodeOptions {
    TranscodeOptions {
        profiles: VideoProfile::parse_list("P240p30fps16x9,P144p30fps16x9").unwrap(),
        timeout: Some(Duration::from_secs(5)),
        preset: "ultrafast".into(),
        ..Default::default()
    }
}

fn transcode(
    bytes: Vec<u8>,
    options: &TranscodeOptions,
) -> Result<lpworker::video::TranscodeOutput, VideoError> {
    let started = Instant::now();
    let result = Transcoder::new(Arc::new(CpuBackend)).transcode(bytes, options, &mut |_| {});
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    result
}

/// Asserts `bytes` fails with an input error whose kind is one of `kinds`.
fn expect_err(case: &str, bytes: Vec<u8>, kinds: &[&str]) -> VideoError {
    let err = match transcode(bytes, &opts()) {
        Ok(out) => panic!(
            "{case}: expected an error, got {} renditions",
            out.renditions.len()
        ),
        Err(e) => e,
    };
    assert!(
        kinds.contains(&err.kind()),
        "{case}: unexpected error kind {} ({err})",
        err.kind()
    );
    assert!(
        err.is_bad_input(),
        "{case}: {err} should be classed as bad input"
    );
    assert!(
        err.to_string().len() > 10,
        "{case}: message too terse: {err}"
    );
    err
}

/// Asserts `bytes` either transcodes into non-empty renditions or fails with an input error.
fn expect_survivable(case: &str, bytes: Vec<u8>) {
    match transcode(bytes, &opts()) {
        Ok(out) => {
            assert!(
                out.renditions
                    .iter()
                    .all(|r| !r.data.is_empty() && r.encoded.frames > 0),
                "{case}"
            );
        }
        Err(e) => assert!(e.is_bad_input(), "{case}: {e}"),
    }
}

fn base_clip(dir: &std::path::Path) -> Vec<u8> {
    clip(
        dir,
        "base",
        &Clip {
            width: 320,
            height: 180,
            ..Default::default()
        },
    )
    .1
}

#[test]
fn empty_and_tiny_inputs() {
    expect_err("empty", vec![], &["empty_input"]);
    expect_err("one byte", vec![0x47], &["demux", "no_video"]);
    expect_err(
        "one TS packet of zeros",
        {
            let mut p = vec![0u8; 188];
            p[0] = 0x47;
            p
        },
        &["demux", "no_video"],
    );
    expect_err(
        "text",
        b"#EXTM3U\n#EXT-X-VERSION:3\nsegment0.ts\n".to_vec(),
        &["demux", "no_video"],
    );
}

#[test]
fn garbage_inputs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let small: Vec<u8> = (0..1024).map(|_| rng.gen()).collect();
    expect_err("1 KiB random", small, &["demux", "no_video"]);
    let large: Vec<u8> = (0..1 << 20).map(|_| rng.gen()).collect();
    expect_err("1 MiB random", large, &["demux", "no_video"]);
    expect_err("64 KiB zeros", vec![0; 65536], &["demux", "no_video"]);
    // TS sync bytes every 188 bytes with random payloads: looks like TS, holds nothing.
    let fake_ts: Vec<u8> = (0..188 * 500)
        .map(|i| if i % 188 == 0 { 0x47 } else { rng.gen() })
        .collect();
    expect_err(
        "TS-shaped noise",
        fake_ts,
        &[
            "demux",
            "no_video",
            "no_frames",
            "unsupported_codec",
            "bad_resolution",
        ],
    );
}

#[test]
fn truncated_inputs() {
    let dir = tempdir();
    let bytes = base_clip(dir.path());
    expect_err(
        "first 100 bytes",
        bytes[..100].to_vec(),
        &["demux", "no_video"],
    );
    expect_err(
        "first 3 TS packets",
        bytes[..188 * 3].to_vec(),
        &["demux", "no_video", "bad_resolution", "no_frames"],
    );
    expect_survivable("first half", bytes[..bytes.len() / 2].to_vec());
    expect_survivable("last half", bytes[bytes.len() / 2..].to_vec());
    expect_survivable("odd cut", bytes[..bytes.len() - 1000].to_vec());

    // An MP4 cut before its moov box (written at the end) cannot be read.
    let (_, mp4) = clip(
        dir.path(),
        "mp4",
        &Clip {
            ext: "mp4",
            ..Default::default()
        },
    );
    let moov = mp4.windows(4).position(|w| w == b"moov").expect("moov box");
    expect_err(
        "MP4 without moov",
        mp4[..moov - 4].to_vec(),
        &["demux", "no_video", "no_frames"],
    );
}

#[test]
fn wrong_codecs_and_containers() {
    let dir = tempdir();
    let mpeg2 = clip(
        dir.path(),
        "mpeg2",
        &Clip {
            codec: "mpeg2video",
            ..Default::default()
        },
    )
    .1;
    let e = expect_err("MPEG-2 video", mpeg2, &["unsupported_codec"]);
    assert!(e.to_string().contains("mpeg2"), "{e}");
    let vp9 = clip(
        dir.path(),
        "vp9",
        &Clip {
            codec: "libvpx-vp9",
            ext: "webm",
            audio: false,
            ..Default::default()
        },
    )
    .1;
    expect_err("VP9 in WebM", vp9, &["unsupported_codec"]);
    let png = ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1"],
        &dir.path().join("x.png"),
    );
    expect_err("PNG image", png, &["unsupported_codec"]);
    let audio_only = ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
        &dir.path().join("a.ts"),
    );
    expect_err("audio-only TS", audio_only, &["no_video"]);
    let mjpeg = clip(
        dir.path(),
        "mjpeg",
        &Clip {
            codec: "mjpeg",
            ext: "mkv",
            audio: false,
            ..Default::default()
        },
    )
    .1;
    expect_err("MJPEG in Matroska", mjpeg, &["unsupported_codec"]);
}

#[test]
fn huge_resolution_is_refused_before_decoding() {
    let dir = tempdir();
    // 8192x64 is within H.264's limits but beyond 8K UHD's 7680 width.
    let wide = clip(
        dir.path(),
        "wide",
        &Clip {
            width: 8192,
            height: 64,
            seconds: 0.2,
            audio: false,
            ..Default::default()
        },
    )
    .1;
    let e = expect_err("8192 wide", wide, &["bad_resolution"]);
    assert!(e.to_string().contains("8192x64"), "{e}");
}

#[test]
fn damaged_video_payloads() {
    let dir = tempdir();
    let bytes = base_clip(dir.path());
    // Zero every TS payload byte of the video PID (0x100 in FFmpeg's muxer) but keep headers.
    let mut zeroed = bytes.clone();
    for pkt in zeroed.chunks_mut(188) {
        let pid = (u16::from(pkt[1] & 0x1f) << 8) | u16::from(pkt[2]);
        if pid == 0x100 {
            pkt[4..].fill(0);
        }
    }
    expect_err(
        "video payload zeroed",
        zeroed,
        &[
            "no_video",
            "no_frames",
            "bad_resolution",
            "demux",
            "unsupported_codec",
        ],
    );
    // Flip a run of bytes in the middle: the damaged part is skipped.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 2000] {
        *b ^= 0xA5;
    }
    expect_survivable("middle scrambled", flipped);
    // Duplicate the stream back to back: timestamps jump backwards.
    let mut doubled = bytes.clone();
    doubled.extend_from_slice(&bytes);
    expect_survivable("stream repeated", doubled);
}

#[test]
fn request_limits() {
    let dir = tempdir();
    let bytes = base_clip(dir.path());
    let mut small_limit = opts();
    small_limit.max_input_bytes = 1000;
    let e = transcode(bytes.clone(), &small_limit).unwrap_err();
    assert_eq!(e.kind(), "input_too_large", "{e}");
    assert!(e.is_bad_input());

    let mut none = opts();
    none.profiles.clear();
    assert_eq!(
        transcode(bytes.clone(), &none).unwrap_err().kind(),
        "invalid_profile"
    );

    let mut instant = opts();
    instant.timeout = Some(Duration::from_nanos(1));
    let e = transcode(bytes.clone(), &instant).unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(!e.is_bad_input(), "a timeout is the worker's problem");

    let mut cancelled = opts();
    cancelled.cancel = Some(Arc::new(AtomicBool::new(true)));
    let e = transcode(bytes, &cancelled).unwrap_err();
    assert_eq!(e.kind(), "cancelled", "{e}");
}

#[test]
fn bad_profiles_are_refused() {
    assert!(VideoProfile::from_spec("P720p30fps16x9,P9999p").is_err());
    assert!(VideoProfile::from_spec("/nonexistent/profiles.json").is_err());
    let dir = tempdir();
    let path = dir.path().join("p.json");
    std::fs::write(&path, "{not json").unwrap();
    let e = VideoProfile::from_spec(path.to_str().unwrap()).unwrap_err();
    assert!(e.to_string().contains("JSON"), "{e}");
}
