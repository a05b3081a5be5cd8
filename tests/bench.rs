//! `lpworker bench` on a tiny clip: the report's numbers are consistent and the
//! summary and plots are valid files.

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn short_bench_writes_a_consistent_report_summary_and_plots() {
    let dir = common::tempdir();
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "bench",
            "--generate",
            "320x180p30:4s",
            "--profiles",
            "P240p30fps16x9,P144p30fps16x9",
        ])
        .args([
            "--concurrency",
            "1,2",
            "--preset",
            "ultrafast",
            "--compare-ffmpeg",
        ])
        .args([
            "--ai",
            "upscale:lpworker/nearest-2x",
            "--models-dir",
            "models",
            "--ai-requests",
            "2",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();

    assert_eq!(report["backend"], "cpu");
    assert!(report["hardware"]["cpu_cores"].as_u64().unwrap() >= 1);
    assert!(report["hardware"]["memory_mib"].as_u64().unwrap() > 0);
    let media = report["media_seconds"].as_f64().unwrap();
    assert!((media - 4.0).abs() < 0.2, "media {media}");
    let segments = report["segments"].as_u64().unwrap();
    assert_eq!(segments, 2, "4 s cut into 2 s segments");
    let levels = report["video"].as_array().unwrap();
    assert_eq!(
        levels
            .iter()
            .map(|l| l["concurrency"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for l in levels {
        let c = l["concurrency"].as_f64().unwrap();
        let wall = l["wall_seconds"].as_f64().unwrap();
        let ratio = l["realtime_ratio"].as_f64().unwrap();
        assert!(
            (ratio - media / wall).abs() < 1e-9,
            "real-time ratio = duration / wall time"
        );
        assert!((l["aggregate_realtime_ratio"].as_f64().unwrap() - c * media / wall).abs() < 1e-9);
        assert_eq!(l["segments"].as_u64().unwrap(), segments * c as u64);
        // Encoded pixels are the sum over renditions, and each rendition's are frames x size.
        let renditions = l["renditions"].as_array().unwrap();
        let sum: u64 = renditions
            .iter()
            .map(|r| r["pixels"].as_u64().unwrap())
            .sum();
        assert_eq!(l["encoded_pixels"].as_u64().unwrap(), sum);
        for r in renditions {
            let (w, h, frames) = (
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap(),
                r["frames"].as_u64().unwrap(),
            );
            assert_eq!(r["pixels"].as_u64().unwrap(), frames * w * h);
            assert!(
                frames.abs_diff(120 * c as u64) <= 2 * c as u64,
                "{frames} frames"
            );
            assert!((r["fps"].as_f64().unwrap() - frames as f64 / wall).abs() < 1e-6);
        }
        assert_eq!(
            l["decoded_pixels"].as_u64().unwrap(),
            120 * c as u64 * 320 * 180
        );
        assert!((l["pixels_per_second"].as_f64().unwrap() - sum as f64 / wall).abs() < 1e-3);
        let lat = &l["segment_latency_ms"];
        assert!(lat["p50"].as_f64().unwrap() <= lat["p95"].as_f64().unwrap());
        assert!(lat["p95"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
        // Measured where a GPU answers nvidia-smi; absent (null) otherwise.
        let gpus = report["hardware"]["gpus"].as_array().unwrap();
        assert_eq!(
            l["gpu_utilisation"].is_null(),
            gpus.is_empty(),
            "{}",
            l["gpu_utilisation"]
        );
        assert!(l["cpu_utilisation"].as_f64().unwrap() > 0.0);
        let ff = &l["ffmpeg"];
        let ff_wall = ff["wall_seconds"].as_f64().unwrap();
        assert!((ff["lpworker_speedup"].as_f64().unwrap() - ff_wall / wall).abs() < 1e-9);
    }
    let max = report["max_realtime_concurrency"].as_u64();
    let expected = levels
        .iter()
        .filter(|l| l["realtime_ratio"].as_f64().unwrap() >= 1.0)
        .map(|l| l["concurrency"].as_u64().unwrap())
        .max();
    assert_eq!(max, expected);

    let ai = &report["ai"][0];
    assert_eq!(
        (ai["pipeline"].as_str(), ai["runtime"].as_str()),
        (Some("upscale"), Some("onnx"))
    );
    for l in ai["levels"].as_array().unwrap() {
        let n = l["requests"].as_f64().unwrap();
        assert_eq!(n, 2.0 * l["concurrency"].as_f64().unwrap());
        assert!(
            (l["requests_per_second"].as_f64().unwrap() - n / l["wall_seconds"].as_f64().unwrap())
                .abs()
                < 1e-9
        );
    }

    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(summary.starts_with("# lpworker bench"));
    assert!(summary.contains("concurrent stream"), "{summary}");
    assert!(summary.contains("## AI: upscale"), "{summary}");

    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "SVG has no lines"
    );
    let png = image::open(dir.path().join("bench.png"))
        .expect("valid PNG")
        .to_rgb8();
    assert_eq!(png.dimensions(), (900, 900));
    assert!(
        png.pixels().any(|p| p.0 == [0, 0, 255]),
        "the real-time curve is drawn in blue"
    );
}

/// `lpworker bench --live` on two tiny segments at their real cadence: the
/// transcoding app's session over an in-process trickle server, every
/// rendition's latency beside the offline transcode. Speed is not asserted.
#[test]
fn live_bench_reports_latency_per_rendition_beside_the_offline_transcode() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "bench",
            "--live",
            "--segments",
            "2",
            "--live-size",
            "320x180",
        ])
        .args(["--ladder", "P240p30fps16x9,P480p30fps16x9"])
        .args(["--live-preset", "ultrafast", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "cpu");
    assert_eq!(report["segments"], 2);
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(320), Some(180))
    );
    assert_eq!(report["real_time_cadence"], true);
    assert_eq!(report["preset"], "ultrafast");
    let offline = &report["offline_ms"];
    assert_eq!(report["offline_samples_ms"].as_array().unwrap().len(), 2);
    assert!(offline["p50"].as_f64().unwrap() > 0.0);
    assert!(offline["p50"].as_f64().unwrap() <= offline["p99"].as_f64().unwrap());
    let renditions = report["renditions"].as_array().unwrap();
    assert_eq!(
        renditions
            .iter()
            .map(|r| (
                r["profile"].as_str().unwrap(),
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        // 854x480 from a 16:9 input of 320x180: lpms' sizing keeps the aspect.
        [("P240p30fps16x9", 426, 240), ("P480p30fps16x9", 854, 480)]
    );
    for r in renditions {
        assert_eq!(r["segments"], 2, "{r}");
        let first = &r["first_byte_ms"];
        let complete = &r["complete_ms"];
        assert!(first["p50"].as_f64().unwrap() > 0.0, "{r}");
        assert!(first["p50"].as_f64().unwrap() <= first["p99"].as_f64().unwrap());
        assert!(complete["p99"].as_f64().unwrap() >= first["p99"].as_f64().unwrap());
        let ratio = r["ratio_p99"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r}");
        assert!(
            (ratio - first["p99"].as_f64().unwrap() / offline["p99"].as_f64().unwrap()).abs()
                < 1e-9
        );
        let samples = r["first_byte_samples_ms"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        assert!(samples.iter().all(|s| s.as_f64().is_some_and(|s| s > 0.0)));
    }
    let worst = renditions
        .iter()
        .map(|r| r["ratio_p99"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(report["ratio_p99"].as_f64().unwrap(), worst);
    assert_eq!(
        report["within_target"].as_bool().unwrap(),
        worst <= report["target_ratio"].as_f64().unwrap()
    );
    let rt = &report["realtime"];
    assert_eq!(rt["segments"], 2);
    let kept = rt["kept"].as_u64().unwrap();
    assert!(kept <= 2);
    assert!((rt["fraction"].as_f64().unwrap() - kept as f64 / 2.0).abs() < 1e-9);
    let busy = report["mean_busy_fraction"].as_f64().unwrap();
    assert!(busy > 0.0 && busy.is_finite(), "{busy}");
    // Two segments at their 2 s cadence take at least one period.
    assert!(report["live_seconds"].as_f64().unwrap() >= 2.0);
}

/// `lpworker bench --live-v2v` on three tiny 1 s segments at their real
/// cadence, both models: the live video-to-video app's session over an
/// in-process trickle server, added latency and frame rate beside the
/// floor. Speed is not asserted.
#[test]
fn live_v2v_bench_reports_added_latency_and_fps_beside_the_floor() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "bench",
            "--live-v2v",
            "--segments",
            "3",
            "--segment-seconds",
            "1",
        ])
        .args(["--live-size", "160x96", "--model", "noop,lpworker/sepia"])
        .args([
            "--models-dir",
            "models",
            "--live-preset",
            "ultrafast",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "cpu");
    assert_eq!(report["segments"], 3);
    assert_eq!(report["fps"], 30);
    assert_eq!(report["preset"], "ultrafast");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (
                r["model"].as_str().unwrap(),
                r["runtime"].as_str().unwrap(),
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [
            ("noop", "noop", 160, 96),
            ("lpworker/sepia", "onnx", 160, 96)
        ]
    );
    for r in runs {
        assert_eq!(r["segments_out"], 3, "{r}");
        let (added, floor) = (&r["added_latency_ms"], &r["floor_ms"]);
        for l in [added, floor] {
            assert!(l["p50"].as_f64().unwrap() > 0.0, "{r}");
            assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
        }
        let samples = r["added_latency_samples_ms"].as_array().unwrap();
        assert_eq!(samples.len(), 3);
        assert!(samples.iter().all(|s| s.as_f64().is_some_and(|s| s > 0.0)));
        assert_eq!(r["floor_samples_ms"].as_array().unwrap().len(), 3);
        // Three 1 s segments of 30 fps in; the pipeline keeps every frame
        // (a slow model repeats pictures, it does not drop frames).
        let input = r["input_frames"].as_u64().unwrap();
        let output = r["output_frames"].as_u64().unwrap();
        assert!(input.abs_diff(90) <= 2, "{input} frames");
        assert!(output.abs_diff(input) <= 3, "{r}");
        assert_eq!(r["lost_frames"], input.saturating_sub(output));
        assert!(r["repeated_frames"].as_u64().is_some(), "{r}");
        let fps = r["fps"].as_f64().unwrap();
        assert!(fps > 0.0 && fps.is_finite(), "{r}");
        assert_eq!(r["input_fps"], 30.0);
        assert!(r["live_seconds"].as_f64().unwrap() >= 2.0);
        assert!(r.get("other_load").is_some(), "{r}");
    }
    // The floor is shared by the models at one size.
    assert_eq!(runs[0]["floor_samples_ms"], runs[1]["floor_samples_ms"]);
    // Only a model that changes pictures has an offline figure with it, and
    // only noop has the target.
    assert!(runs[0]["offline_model_ms"].is_null());
    assert!(runs[1]["offline_model_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(runs[1]["target"].is_null());
    let target = &runs[0]["target"];
    let limit = runs[0]["floor_ms"]["p99"].as_f64().unwrap() + 100.0;
    assert!((target["latency_p99_limit_ms"].as_f64().unwrap() - limit).abs() < 1e-9);
    assert_eq!(
        target["latency_met"].as_bool().unwrap(),
        runs[0]["added_latency_ms"]["p99"].as_f64().unwrap() <= limit
    );
    assert!((target["fps_min"].as_f64().unwrap() - 29.7).abs() < 1e-9);
    assert_eq!(
        target["fps_met"].as_bool().unwrap(),
        runs[0]["fps"].as_f64().unwrap() >= 29.7
    );
    assert_eq!(
        report["within_target"], target["met"],
        "the report's verdict is noop's"
    );
}

#[test]
fn compare_backends_reports_pixels_per_plane_and_fails_on_a_bad_clip() {
    let dir = common::tempdir();
    let clip = dir.path().join("clip.ts");
    common::ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=192x108:rate=30",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-bf",
            "2",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ],
        &clip,
    );
    let run = |clip: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args(["bench", "--compare-backends"])
            .arg(clip)
            .args([
                "--backend",
                "cpu",
                "--profiles",
                "P144p30fps16x9",
                "--preset",
                "ultrafast",
            ])
            .output()
            .expect("lpworker runs")
    };
    let out = run(&clip);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["backend"], "cpu");
    assert_eq!(report["reference"], "cpu");
    assert_eq!(report["decode"]["frames"], 30);
    assert_eq!(
        (
            report["decode"]["width"].as_u64(),
            report["decode"]["height"].as_u64()
        ),
        (Some(192), Some(108))
    );
    for plane in ["y", "u", "v"] {
        assert_eq!(report["decode"][plane]["max_abs"], 0, "{report}");
    }
    let renditions = report["renditions"].as_array().expect("renditions");
    assert_eq!(renditions.len(), 1);
    assert_eq!(renditions[0]["profile"], "P144p30fps16x9");
    assert_eq!(renditions[0]["frames"], 30);
    assert_eq!(report["min_luma_psnr_db"], 40.0);
    assert_eq!(report["failures"], serde_json::json!([]));

    // Not a video: a clear error and a failing exit, no JSON claiming a pass.
    let junk = dir.path().join("junk.ts");
    std::fs::write(&junk, b"not a transport stream").unwrap();
    let out = run(&junk);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a readable media container") || stderr.contains("no video"),
        "{stderr}"
    );
}
