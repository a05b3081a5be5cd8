//! Live Runner test fixtures: `lpworker orchestrator` hosting Live Runners,
//! its discovery, and the official SDK's Python.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{line_field, ready_line, tempdir};

pub const SECRET: &str = "bootstrap-secret";

/// `lpworker orchestrator` hosting Live Runners only (no workers), with a
/// 1 s heartbeat and a 3 s TTL so expiry is quick to see.
pub struct Shim {
    pub child: Child,
    pub uri: String,
    pub cli: String,
    _dir: Option<tempfile::TempDir>,
}

impl Shim {
    pub fn start(extra: &[&str]) -> Shim {
        let dir = tempdir();
        let mut shim = Shim::start_in(dir.path(), 0, extra);
        shim._dir = Some(dir);
        shim
    }

    /// In `datadir`, on `port` (0: any), so a restart finds its state and
    /// keeps its URLs.
    pub fn start_in(datadir: &Path, port: u16, extra: &[&str]) -> Shim {
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .args([
                "orchestrator",
                "--service-addr",
                &addr,
                "--http-addr",
                &addr,
                "--cli-addr",
                "127.0.0.1:0",
                "--use-live-runners",
                "--orch-secret",
                SECRET,
                "--live-runner-heartbeat-interval",
                "1",
                "--live-runner-heartbeat-ttl",
                "3",
                "--datadir",
            ])
            .arg(datadir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lpworker orchestrator starts");
        let line = ready_line(&mut child);
        if !line.starts_with("lpworker orchestrator listening") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the shim did not start: {line:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("LPWORKER_TEST_LOGS").is_some() {
                    eprintln!("[shim] {l}");
                }
            }
        });
        Shim {
            uri: line_field(&line, "uri=").unwrap().to_string(),
            cli: format!("http://{}", line_field(&line, "cli=").unwrap()),
            child,
            _dir: None,
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when the test ends, passed or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (for a process started later).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn python() -> std::path::PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-sdk/bin/python");
    assert!(
        python.exists(),
        ".venv-sdk is missing: run `bash scripts/install-deps`"
    );
    python
}

pub fn sdk_script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

pub async fn discovery(http: &reqwest::Client, shim: &Shim) -> Vec<Value> {
    let v: Value = http
        .get(format!("{}/discovery", shim.uri))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["address"], shim.uri.as_str());
    v[0]["runners"].as_array().cloned().unwrap_or_default()
}

/// The repository's models folder.
pub fn models_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .to_str()
        .unwrap()
        .to_string()
}

/// A runner process, killed when the test ends.
pub struct Runner {
    pub process: KillOnDrop,
    pub url: String,
    /// Its log, kept after the test for post-mortems.
    pub log: std::path::PathBuf,
    /// How many apps it registers (from its ready line).
    pub apps: usize,
}

/// `lpworker attach --live-runner` registering with `orch` from a free
/// loopback port, with `extra` flags; returned once it listens.
pub fn start_runner(orch: &str, extra: &[&str]) -> Runner {
    let port = free_port();
    // A secret path, as an operator gives a runner on a shared network: the
    // orchestrator's proxy joins every app path onto it.
    let url = format!("http://127.0.0.1:{port}/{}", uuid::Uuid::new_v4().simple());
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("runner-{port}.log"));
    let mut runner = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .env("LPWORKER_LOG", "lpworker=debug")
        .args([
            "attach",
            "--live-runner",
            "-orchAddr",
            orch,
            "-orchSecret",
            SECRET,
        ])
        .args([
            "--runner-url",
            &url,
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let line = ready_line(&mut runner);
    assert!(
        line.starts_with("lpworker attach live runner listening"),
        "{line}; see {}",
        log.display()
    );
    let apps = line_field(&line, "apps=").unwrap().parse().unwrap();
    Runner {
        process: KillOnDrop(runner),
        url,
        log,
        apps,
    }
}

/// The presentation times of a file's video frames, in seconds.
pub fn frame_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=best_effort_timestamp_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}
