//! Test media and verification helpers: media is generated with the FFmpeg CLI's
//! lavfi sources (no downloads) and checked with ffprobe and FFmpeg's psnr filter.
#![allow(dead_code)]

pub mod chain;
pub mod live;
pub mod orch;
pub mod remote_signer;
pub mod shim;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs the `ffmpeg` CLI with `args` and returns the file it wrote to `out`.
pub fn ffmpeg(args: &[&str], out: &Path) -> Vec<u8> {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg CLI runs (scripts/install-deps installs it)");
    assert!(status.success(), "ffmpeg {args:?} failed");
    std::fs::read(out).expect("ffmpeg wrote its output")
}

/// A test clip description for [`clip`].
pub struct Clip<'a> {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: f64,
    /// FFmpeg encoder for the video ("libx264", "libx265", "mpeg2video", ...).
    pub codec: &'a str,
    pub audio: bool,
    /// Output container by extension ("ts", "mp4", "mkv").
    pub ext: &'a str,
}

impl Default for Clip<'_> {
    fn default() -> Self {
        Clip {
            width: 320,
            height: 180,
            fps: 30,
            seconds: 1.0,
            codec: "libx264",
            audio: true,
            ext: "ts",
        }
    }
}

/// Generates a clip from FFmpeg's `testsrc2` (moving, textured: a fair test
/// for an encoder) and a sine tone, and returns its path and bytes.
pub fn clip(dir: &Path, name: &str, c: &Clip) -> (PathBuf, Vec<u8>) {
    let out = dir.join(format!("{name}.{}", c.ext));
    let video = format!("testsrc2=size={}x{}:rate={}", c.width, c.height, c.fps);
    let t = format!("{}", c.seconds);
    let gop = format!("{}", c.fps * 2);
    let mut args: Vec<&str> = vec!["-f", "lavfi", "-i", &video];
    if c.audio {
        args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    }
    args.extend(["-t", &t, "-pix_fmt", "yuv420p", "-c:v", c.codec, "-g", &gop]);
    match c.codec {
        "libx264" => args.extend(["-preset", "veryfast", "-crf", "18"]),
        "libx265" => args.extend([
            "-preset",
            "ultrafast",
            "-crf",
            "18",
            "-x265-params",
            "log-level=none",
        ]),
        _ => args.extend(["-q:v", "2"]),
    }
    if c.audio {
        args.extend(["-c:a", "aac", "-b:a", "96k"]);
    }
    let bytes = ffmpeg(&args, &out);
    (out, bytes)
}

/// What ffprobe says about a file's first video stream (frames counted by decoding).
#[derive(Debug)]
pub struct Probed {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub frames: u64,
    pub start: f64,
    pub duration: f64,
    pub audio_codec: Option<String>,
    pub format: String,
}

pub fn ffprobe(path: &Path) -> Probed {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    let json: Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let streams = json["streams"].as_array().expect("streams");
    let v = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap_or_else(|| panic!("no video stream in {}", path.display()));
    let num = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let rate = v["r_frame_rate"].as_str().unwrap_or("0/1");
    let (n, d) = rate.split_once('/').unwrap_or((rate, "1"));
    Probed {
        codec: v["codec_name"].as_str().unwrap_or_default().to_string(),
        width: v["width"].as_u64().unwrap_or(0) as u32,
        height: v["height"].as_u64().unwrap_or(0) as u32,
        fps: n.parse::<f64>().unwrap_or(0.0) / d.parse::<f64>().unwrap_or(1.0),
        frames: num(&v["nb_read_frames"]) as u64,
        start: num(&v["start_time"]),
        duration: num(&json["format"]["duration"]),
        audio_codec: streams
            .iter()
            .find(|s| s["codec_type"] == "audio")
            .map(|a| a["codec_name"].as_str().unwrap_or_default().to_string()),
        format: json["format"]["format_name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Average PSNR (dB, over Y, U and V) of `rendition` against `source` scaled to
/// the rendition's size with the same (bicubic) filter and frame rate.
pub fn psnr(rendition: &Path, source: &Path, width: u32, height: u32, fps: f64) -> f64 {
    let graph = format!(
        "[1:v]scale={width}:{height}:flags=bicubic,fps={fps}[ref];[0:v][ref]psnr=shortest=1"
    );
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-copyts", "-i"])
        .arg(rendition)
        .arg("-copyts")
        .arg("-i")
        .arg(source)
        .args(["-filter_complex", &graph, "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let log = String::from_utf8_lossy(&out.stderr);
    let avg = log
        .lines()
        .filter_map(|l| l.split("average:").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .filter_map(|v| {
            if v == "inf" {
                Some(f64::INFINITY)
            } else {
                v.parse().ok()
            }
        })
        .next_back();
    avg.unwrap_or_else(|| panic!("no PSNR in ffmpeg output:\n{log}"))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A running `lpworker serve` child process, killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub grpc: std::net::SocketAddr,
    pub metrics: Option<std::net::SocketAddr>,
    /// The ai-runner HTTP API, when served.
    pub http: Option<std::net::SocketAddr>,
}

impl ServeProcess {
    /// Starts `lpworker serve` on loopback ports chosen by the OS, with `extra` args.
    pub fn start(extra: &[&str]) -> ServeProcess {
        use std::io::BufRead;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
        if !extra.contains(&"--preset") {
            cmd.args(["--preset", "veryfast"]);
        }
        let mut child = cmd
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("lpworker serve starts");
        let line = ready_line(&mut child);
        if !line.starts_with("lpworker serve listening") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "lpworker serve did not start: {line:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let field = |name: &str| line_field(&line, name).and_then(|v| v.parse().ok());
        // Keep stderr drained so the child never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if std::env::var_os("LPWORKER_TEST_LOGS").is_some() {
                    eprintln!("[serve] {l}");
                }
            }
        });
        ServeProcess {
            grpc: field("grpc=").expect("grpc address"),
            metrics: field("metrics="),
            http: field("http="),
            child,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, and its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let get = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (get("VmRSS:"), get("VmHWM:"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64, as go-livepeer's headers carry protobufs.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An HTTPS client that accepts the shim's self-signed certificate, as
/// go-livepeer's gateway does.
pub fn insecure_http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// The first line a started `lpworker` process prints on stdout: its ready
/// line (`... addr=H:P grpc=H:P ...`).
pub fn ready_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// The value of `name` (e.g. "addr=") in a ready line.
pub fn line_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|f| f.strip_prefix(name))
}

/// A models directory for serving tests: the repository's generated models
/// (`lpworker/...`) and, as `rapidocr/PP-OCRv4`, the RapidOCR ONNX models the
/// PyPI package in .venv ships (linked, not copied).
pub fn models_dir_with_ocr(dir: &Path) -> PathBuf {
    let root = dir.join("models");
    let ocr = root.join("rapidocr/PP-OCRv4");
    std::fs::create_dir_all(&ocr).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lpworker"),
        root.join("lpworker"),
    )
    .unwrap();
    for (file, link) in [
        ("ch_PP-OCRv4_det_infer.onnx", "det.onnx"),
        ("ch_PP-OCRv4_rec_infer.onnx", "rec.onnx"),
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "cls.onnx"),
    ] {
        let source = lpworker::ai::onnx::find_package_file(
            &Path::new("rapidocr_onnxruntime/models").join(file),
        )
        .expect("rapidocr-onnxruntime is installed in .venv (bash scripts/install-deps)");
        let source = std::fs::canonicalize(source).unwrap();
        std::os::unix::fs::symlink(source, ocr.join(link)).unwrap();
    }
    root
}

/// A child process (lpworker attach, a shim) with its stderr lines
/// collected, killed when dropped. `LPWORKER_TEST_LOGS` echoes them,
/// prefixed with `tag`.
pub struct Logged {
    pub child: std::process::Child,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Takes `child`'s piped stderr and collects it on a thread.
    pub fn collect(mut child: std::process::Child, tag: &'static str) -> Logged {
        use std::io::BufRead;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stderr, sink) = (
            child.stderr.take().expect("stderr piped"),
            std::sync::Arc::clone(&log),
        );
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if std::env::var_os("LPWORKER_TEST_LOGS").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Logged { child, log }
    }

    /// Starts `command` at info level, its stdout dropped, its stderr
    /// collected.
    pub fn spawn(command: &mut std::process::Command, tag: &'static str) -> Logged {
        let child = command
            .env("LPWORKER_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Logged::collect(child, tag)
    }

    /// `lpworker attach` registered with the shim at `addr` with `secret`,
    /// one segment at once.
    pub fn attach(addr: &str, secret: &str) -> Logged {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lpworker"));
        command
            .args(["attach", "-orchAddr", addr, "-orchSecret", secret])
            .args(["-maxSessions", "1", "--preset", "veryfast"]);
        Logged::spawn(&mut command, "attach")
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until a line contains `needle`; fails the test after `limit`.
    pub async fn wait_for(&self, needle: &str, limit: std::time::Duration) {
        let start = std::time::Instant::now();
        while !self.logged(needle) {
            assert!(start.elapsed() < limit, "never logged {needle:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
