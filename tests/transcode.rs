//! End-to-end transcodes of generated media through the CPU engine, each
//! rendition verified with ffprobe and PSNR against the scaled source.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{clip, ffprobe, psnr, tempdir, Clip};
use lpworker::video::cpu::CpuBackend;
use lpworker::video::{
    OutputContainer, TranscodeOptions, TranscodeOutput, Transcoder, VideoProfile,
};

fn transcoder() -> Transcoder {
    Transcoder::new(Arc::new(CpuBackend))
}

fn options(profiles: &str) -> TranscodeOptions {
    TranscodeOptions {
        profiles: VideoProfile::from_spec(profiles).unwrap(),
        ..Default::default()
    }
}

fn run(bytes: &[u8], options: &TranscodeOptions) -> TranscodeOutput {
    transcoder()
        .transcode(bytes.to_vec(), options, &mut |_| {})
        .expect("transcode succeeds")
}

/// Writes each rendition into `dir` and returns the paths.
fn write_all(dir: &Path, out: &TranscodeOutput) -> Vec<std::path::PathBuf> {
    out.renditions
        .iter()
        .map(|r| {
            let p = dir.join(format!("{}.{}", r.profile, r.container.extension()));
            std::fs::write(&p, &r.data).unwrap();
            p
        })
        .collect()
}

#[test]
fn ladder_from_1080p_h264_ts() {
    let dir = tempdir();
    let src = Clip {
        width: 1920,
        height: 1080,
        fps: 30,
        seconds: 2.0,
        ..Default::default()
    };
    let (src_path, bytes) = clip(dir.path(), "src", &src);
    let source = ffprobe(&src_path);
    let opts = options("P720p30fps16x9,P576p30fps16x9,P360p30fps16x9,P240p30fps16x9");
    let out = run(&bytes, &opts);

    assert_eq!(out.backend, "cpu");
    assert_eq!(out.decoded.frames, 60);
    assert_eq!(out.decoded.pixels, 60 * 1920 * 1080);
    assert_eq!(out.decode_errors, 0);
    assert!(out.input.has_audio);
    let expected = [(1280, 720), (1024, 576), (640, 360), (426, 240)];
    let paths = write_all(dir.path(), &out);
    for ((r, path), (w, h)) in out.renditions.iter().zip(&paths).zip(expected) {
        let p = ffprobe(path);
        assert_eq!(p.codec, "h264", "{}", r.profile);
        assert_eq!((p.width, p.height), (w, h), "{}", r.profile);
        assert_eq!((r.width, r.height), (w, h));
        assert!((p.fps - 30.0).abs() < 0.01, "{} fps {}", r.profile, p.fps);
        assert!(
            p.frames.abs_diff(60) <= 1,
            "{} has {} frames",
            r.profile,
            p.frames
        );
        assert!(
            (p.duration - source.duration).abs() < 0.1,
            "{} lasts {}",
            r.profile,
            p.duration
        );
        // Timestamps preserved: the rendition starts where the source starts.
        assert!(
            (p.start - source.start).abs() < 0.034,
            "{} starts {} vs {}",
            r.profile,
            p.start,
            source.start
        );
        assert_eq!(
            p.audio_codec.as_deref(),
            Some("aac"),
            "audio copied through"
        );
        assert!(p.format.contains("mpegts"));
        // Billing: every encoded frame at the rendition's size.
        assert_eq!(r.encoded.frames, p.frames);
        assert_eq!(r.encoded.pixels, r.encoded.frames * u64::from(w * h));
        let db = psnr(path, &src_path, w, h, 30.0);
        assert!(db >= 35.0, "{} PSNR {db:.2} dB < 35", r.profile);
    }
}

#[test]
fn hevc_input_and_hevc_output() {
    let dir = tempdir();
    let src = Clip {
        width: 640,
        height: 360,
        codec: "libx265",
        ..Default::default()
    };
    let (src_path, bytes) = clip(dir.path(), "src", &src);
    let profiles = dir.path().join("profiles.json");
    std::fs::write(
        &profiles,
        r#"[{"name":"h264_240","width":426,"height":240,"bitrate":600000,"fps":30},
            {"name":"hevc_360","width":640,"height":360,"bitrate":1000000,"fps":30,"encoder":"HEVC","gop":"intra"}]"#,
    )
    .unwrap();
    let out = run(&bytes, &options(profiles.to_str().unwrap()));
    assert_eq!(out.input.codec, "hevc");
    let paths = write_all(dir.path(), &out);
    let h264 = ffprobe(&paths[0]);
    assert_eq!(
        (h264.codec.as_str(), h264.width, h264.height),
        ("h264", 426, 240)
    );
    let hevc = ffprobe(&paths[1]);
    assert_eq!(
        (hevc.codec.as_str(), hevc.width, hevc.height),
        ("hevc", 640, 360)
    );
    assert!(hevc.frames.abs_diff(30) <= 1);
    assert!(psnr(&paths[1], &src_path, 640, 360, 30.0) >= 35.0);
    // gop "intra": every frame is a keyframe.
    let keyframes = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=key_frame",
            "-of",
            "csv=p=0",
        ])
        .arg(&paths[1])
        .output()
        .unwrap();
    let flags = String::from_utf8(keyframes.stdout).unwrap();
    let flags: Vec<_> = flags
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        flags.len() >= 29 && flags.iter().all(|f| *f == "1"),
        "{flags:?}"
    );
}

#[test]
fn mp4_input_and_fragmented_mp4_output() {
    let dir = tempdir();
    let src = Clip {
        width: 640,
        height: 480,
        ext: "mp4",
        ..Default::default()
    };
    let (_, bytes) = clip(dir.path(), "src", &src);
    let mut opts = options("P360p30fps4x3,P240p30fps16x9");
    opts.container = OutputContainer::Mp4;
    let out = run(&bytes, &opts);
    let paths = write_all(dir.path(), &out);
    let a = ffprobe(&paths[0]);
    assert!(a.format.contains("mp4"), "{}", a.format);
    assert_eq!((a.width, a.height), (480, 360));
    assert!(a.frames.abs_diff(30) <= 1);
    assert_eq!(a.audio_codec.as_deref(), Some("aac"));
    // A 4:3 source keeps 4:3 in a 16:9 profile: 426 wide, 320 high.
    let b = ffprobe(&paths[1]);
    assert_eq!((b.width, b.height), (426, 320));
    // Fragmented: a movie fragment box is present.
    assert!(out.renditions[0].data.windows(4).any(|w| w == b"moof"));
}

#[test]
fn frame_rate_conversion_both_ways() {
    let dir = tempdir();
    let src = Clip {
        width: 640,
        height: 360,
        fps: 60,
        seconds: 2.0,
        audio: false,
        ..Default::default()
    };
    let (src_path, bytes) = clip(dir.path(), "src60", &src);
    let out = run(&bytes, &options("P360p30fps16x9,P720p60fps16x9"));
    let paths = write_all(dir.path(), &out);
    let half = ffprobe(&paths[0]);
    assert!((half.fps - 30.0).abs() < 0.01);
    assert!(
        half.frames.abs_diff(60) <= 1,
        "60→30 fps gives {} frames",
        half.frames
    );
    assert!(psnr(&paths[0], &src_path, 640, 360, 30.0) >= 35.0);
    let same = ffprobe(&paths[1]);
    assert!(same.frames.abs_diff(120) <= 1);

    let src30 = Clip {
        width: 640,
        height: 360,
        fps: 30,
        seconds: 1.0,
        audio: false,
        ..Default::default()
    };
    let (_, bytes) = clip(dir.path(), "src30", &src30);
    let out = run(&bytes, &options("P720p60fps16x9"));
    let paths = write_all(dir.path(), &out);
    let up = ffprobe(&paths[0]);
    assert!((up.fps - 60.0).abs() < 0.01);
    assert!(
        up.frames.abs_diff(60) <= 1,
        "30→60 fps gives {} frames",
        up.frames
    );
    assert_eq!(out.renditions[0].encoded.frames, up.frames);
}

#[test]
fn portrait_input_gives_portrait_renditions() {
    let dir = tempdir();
    let src = Clip {
        width: 360,
        height: 640,
        audio: false,
        ..Default::default()
    };
    let (_, bytes) = clip(dir.path(), "portrait", &src);
    let out = run(&bytes, &options("P360p30fps16x9,P240p30fps16x9"));
    assert_eq!(
        (out.renditions[0].width, out.renditions[0].height),
        (360, 640)
    );
    assert_eq!(
        (out.renditions[1].width, out.renditions[1].height),
        (240, 426)
    );
    let paths = write_all(dir.path(), &out);
    let p = ffprobe(&paths[1]);
    assert_eq!((p.width, p.height), (240, 426));
}

#[test]
fn profile_json_fields_are_honoured() {
    let dir = tempdir();
    let (_, bytes) = clip(dir.path(), "src", &Clip::default());
    let json = r#"[{"name":"base","width":320,"height":180,"bitrate":400000,"fps":15,
                    "profile":"H264Baseline","gop":"0.5"}]"#;
    let out = run(
        &bytes,
        &TranscodeOptions {
            profiles: VideoProfile::parse_json(json).unwrap(),
            ..Default::default()
        },
    );
    let path = dir.path().join("base.ts");
    std::fs::write(&path, &out.renditions[0].data).unwrap();
    let p = ffprobe(&path);
    assert!((p.fps - 15.0).abs() < 0.01);
    assert!(p.frames.abs_diff(15) <= 1);
    let info = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=profile,has_b_frames",
            "-show_entries",
            "frame=key_frame",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let profile = json["streams"][0]["profile"].as_str().unwrap();
    assert!(profile.contains("Baseline"), "{profile}");
    // gop 0.5 s at 15 fps: a keyframe at least every 7 frames.
    let keys = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["key_frame"] == 1)
        .count();
    assert!(keys >= 2, "{keys} keyframes");
}

#[test]
fn ts_with_adts_audio_into_fragmented_mp4() {
    let dir = tempdir();
    let (_, bytes) = clip(dir.path(), "src", &Clip::default());
    let mut opts = options("P240p30fps16x9");
    opts.container = OutputContainer::Mp4;
    let out = run(&bytes, &opts);
    let paths = write_all(dir.path(), &out);
    let p = ffprobe(&paths[0]);
    assert!(p.format.contains("mp4"), "{}", p.format);
    assert_eq!(p.audio_codec.as_deref(), Some("aac"));
    assert!(p.frames.abs_diff(30) <= 1);
    // The same source still gives an MPEG-TS rendition with ADTS audio.
    let ts = run(&bytes, &options("P240p30fps16x9"));
    let paths = write_all(dir.path(), &ts);
    assert_eq!(ffprobe(&paths[0]).audio_codec.as_deref(), Some("aac"));
}
