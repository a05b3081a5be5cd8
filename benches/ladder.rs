//! The 4-rendition ladder (1080p source → 720p, 576p, 360p, 240p) through
//! lpworker and through the `ffmpeg` CLI with the same settings (one decode,
//! `split`, bicubic scale, same x264 preset and rate control), in one run.
//!
//! `cargo bench --bench ladder` prints criterion's timings and, at the end, the
//! throughput ratio (ffmpeg time / lpworker time; > 1 means lpworker is faster).
//! `LPWORKER_BENCH_PRESET` picks the x264 preset (default `veryfast`),
//! `LPWORKER_BENCH_SECONDS` the clip length (default 4).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use lpworker::video::cpu::CpuBackend;
use lpworker::video::{TranscodeOptions, Transcoder, VideoProfile};

const LADDER: [&str; 4] = [
    "P720p30fps16x9",
    "P576p30fps16x9",
    "P360p30fps16x9",
    "P240p30fps16x9",
];

struct Setup {
    _dir: tempfile::TempDir,
    source: PathBuf,
    bytes: Vec<u8>,
    preset: String,
    out_dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let seconds = std::env::var("LPWORKER_BENCH_SECONDS").unwrap_or_else(|_| "4".into());
    let source = dir.path().join("source.ts");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &seconds,
        ])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-c:a", "aac", "-f", "mpegts",
        ])
        .arg(&source)
        .status()
        .expect("ffmpeg CLI");
    assert!(status.success());
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    Setup {
        bytes: std::fs::read(&source).unwrap(),
        source,
        preset: std::env::var("LPWORKER_BENCH_PRESET").unwrap_or_else(|_| "veryfast".into()),
        out_dir,
        _dir: dir,
    }
}

fn lpworker_ladder(transcoder: &Transcoder, s: &Setup) {
    let options = TranscodeOptions {
        profiles: VideoProfile::parse_list(&LADDER.join(",")).unwrap(),
        preset: s.preset.clone(),
        ..Default::default()
    };
    let out = transcoder
        .transcode(s.bytes.clone(), &options, &mut |_| {})
        .expect("lpworker transcode");
    assert_eq!(out.renditions.len(), 4);
}

/// The same job with the FFmpeg CLI: lpms' x264 settings (min = max = average
/// rate = VBV buffer, 3 B-frames, forced IDR), audio copied into every output.
fn ffmpeg_ladder(s: &Setup) {
    let sizes = LADDER.map(|n| {
        let p = VideoProfile::by_name(n).unwrap();
        let (w, h) = p.output_size(1920, 1080);
        (w, h, p.bitrate / 1000)
    });
    let split: String = (0..4).map(|i| format!("[s{i}]")).collect();
    let mut graph = format!("[0:v]split=4{split}");
    for (i, (w, h, _)) in sizes.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale={w}:{h}:flags=bicubic[o{i}]"));
    }
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&s.source);
    cmd.args(["-filter_complex", &graph]);
    for (i, (_, _, kbps)) in sizes.iter().enumerate() {
        let rate = format!("{kbps}k");
        cmd.args([
            "-map",
            &format!("[o{i}]"),
            "-map",
            "0:a",
            "-c:v",
            "libx264",
            "-preset",
            &s.preset,
        ]);
        cmd.args([
            "-b:v", &rate, "-minrate", &rate, "-maxrate", &rate, "-bufsize", &rate,
        ]);
        cmd.args([
            "-bf",
            "3",
            "-forced-idr",
            "1",
            "-c:a",
            "copy",
            "-f",
            "mpegts",
        ]);
        cmd.arg(s.out_dir.join(format!("{i}.ts")));
    }
    assert!(cmd.status().expect("ffmpeg CLI").success());
}

fn bench_ladder(c: &mut Criterion) {
    let s = setup();
    let transcoder = Transcoder::new(Arc::new(CpuBackend));
    let mut group = c.benchmark_group("ladder_1080p_4_renditions");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function("lpworker", |b| b.iter(|| lpworker_ladder(&transcoder, &s)));
    group.bench_function("ffmpeg_cli", |b| b.iter(|| ffmpeg_ladder(&s)));
    group.finish();
}

/// Interleaved runs of both, so load on the machine hits both alike.
fn print_ratio(runs: usize) {
    let s = setup();
    let transcoder = Transcoder::new(Arc::new(CpuBackend));
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(time(&|| lpworker_ladder(&transcoder, &s)));
        theirs.push(time(&|| ffmpeg_ladder(&s)));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, t) = (median(&mut ours), median(&mut theirs));
    let media = std::env::var("LPWORKER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    println!(
        "ladder ({} preset, {media} s of 1080p30, {runs} interleaved runs): lpworker {o:.3} s ({:.2}x real time), ffmpeg CLI {t:.3} s ({:.2}x real time); throughput ratio lpworker/ffmpeg = {:.3}",
        s.preset,
        media / o,
        media / t,
        t / o
    );
}

criterion_group!(benches, bench_ladder);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only when benchmarking for real, not under `cargo test --all-targets`.
    if std::env::args().any(|a| a == "--bench") {
        print_ratio(5);
    }
}
