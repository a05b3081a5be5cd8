//! The `lpworker transcode` command, run as a real process.

mod common;

use std::process::Command;

use common::{clip, ffprobe, tempdir, Clip};

fn lpworker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lpworker"))
}

#[test]
fn transcode_writes_renditions_and_a_json_summary() {
    let dir = tempdir();
    let (src, _) = clip(
        dir.path(),
        "in",
        &Clip {
            width: 640,
            height: 360,
            ..Default::default()
        },
    );
    let out_dir = dir.path().join("renditions");
    let out = lpworker()
        .arg("transcode")
        .arg(&src)
        // go-livepeer's spelling of the profiles flag.
        .args([
            "-transcodingOptions",
            "P360p30fps16x9,P240p30fps16x9",
            "--preset",
            "veryfast",
            "--json",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["backend"], "cpu");
    assert_eq!(summary["decoded"]["frames"], 30);
    assert_eq!(summary["decoded"]["pixels"], 30 * 640 * 360);
    let renditions = summary["renditions"].as_array().unwrap();
    assert_eq!(renditions.len(), 2);
    for (r, (w, h)) in renditions.iter().zip([(640, 360), (426, 240)]) {
        assert_eq!(
            (r["width"].as_u64().unwrap(), r["height"].as_u64().unwrap()),
            (w, h)
        );
        let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
        assert!(path.starts_with(&out_dir));
        let p = ffprobe(&path);
        assert_eq!((u64::from(p.width), u64::from(p.height)), (w, h));
        assert_eq!(r["encoded"]["frames"].as_u64().unwrap(), p.frames);
        assert_eq!(r["encoded"]["pixels"].as_u64().unwrap(), p.frames * w * h);
        assert_eq!(
            r["bytes"].as_u64().unwrap(),
            std::fs::metadata(&path).unwrap().len()
        );
    }
}

#[test]
fn transcode_reads_stdin_and_prints_a_table() {
    let dir = tempdir();
    let (src, _) = clip(dir.path(), "in", &Clip::default());
    let out = lpworker()
        .args([
            "transcode",
            "-",
            "--profiles",
            "P144p30fps16x9",
            "--preset",
            "ultrafast",
            "--out",
        ])
        .arg(dir.path().join("o"))
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("P144p30fps16x9") && table.contains("256x144"),
        "{table}"
    );
    assert!(dir.path().join("o/P144p30fps16x9.ts").is_file());
}

#[test]
fn decode_only_and_repeated_runs_report_speed() {
    let dir = tempdir();
    let (src, _) = clip(
        dir.path(),
        "in",
        &Clip {
            width: 320,
            height: 240,
            ..Default::default()
        },
    );
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = lpworker()
            .arg("transcode")
            .arg(&src)
            .args([
                "--profiles",
                "P144p30fps16x9",
                "--preset",
                "ultrafast",
                "--json",
            ])
            .args(extra)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON summary")
    };
    let decoded = run(&["--decode-only", "--repeat", "3"]);
    assert_eq!(decoded["backend"], "cpu");
    assert_eq!(decoded["decoded"]["frames"], 30);
    assert_eq!(decoded["decoded"]["pixels"], 30 * 320 * 240);
    assert!(decoded.get("renditions").is_none(), "{decoded}");
    // No GPU here: the probe's list is empty but present.
    assert_eq!(decoded["gpus"], serde_json::json!([]));
    let runs = decoded["runs_seconds"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let median = decoded["median_seconds"].as_f64().unwrap();
    assert!(runs.iter().any(|r| r.as_f64() == Some(median)), "{decoded}");
    let fps = decoded["median_fps"].as_f64().unwrap();
    assert!((fps - 30.0 / median).abs() < 1e-6 * fps, "{decoded}");

    let ladder = run(&["--repeat", "2"]);
    assert_eq!(ladder["runs_seconds"].as_array().unwrap().len(), 2);
    assert_eq!(ladder["renditions"].as_array().unwrap().len(), 1);
    let ratio = ladder["realtime_ratio"].as_f64().unwrap();
    let expected = ladder["input"]["duration_seconds"].as_f64().unwrap()
        / ladder["median_seconds"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && (ratio - expected).abs() < 1e-9 * ratio,
        "{ladder}"
    );
    assert!(
        std::fs::metadata(dir.path().join("out/P144p30fps16x9.ts"))
            .unwrap()
            .len()
            > 0
    );

    // A nonsensical repeat count is refused by the parser, not run.
    let out = lpworker()
        .args(["transcode", src.to_str().unwrap(), "--repeat", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeat"));
}

#[test]
fn transcode_errors_are_clear() {
    let dir = tempdir();
    let garbage = dir.path().join("garbage.ts");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["transcode", "/nonexistent.ts"], "reading /nonexistent.ts"),
        (
            &["transcode", garbage.to_str().unwrap()],
            "not a readable media container",
        ),
        (
            &[
                "transcode",
                garbage.to_str().unwrap(),
                "--profiles",
                "P721p",
            ],
            "unknown profile",
        ),
        (
            &["transcode", garbage.to_str().unwrap(), "--timeout", "0"],
            "--timeout",
        ),
    ];
    for (args, expected) in cases {
        let out = lpworker()
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr lacks {expected:?}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
