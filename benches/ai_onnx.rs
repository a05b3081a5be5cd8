//! lpworker's in-process ONNX Runtime (`OnnxModel`, the `ort` crate loading
//! the onnxruntime wheel's `libonnxruntime`) against Python onnxruntime on the
//! same model, input and thread count, in one run; then the ai-runner HTTP
//! API's overhead per request beyond the model.
//!
//! `cargo bench --bench ai_onnx`
//!
//! Part 1 alternates short rounds (lpworker `N` `infer` calls and `N`
//! `InferenceSession.run`s in one `benches/ai_onnx_python.py --stdin`
//! process that keeps its session loaded, each side going first every other
//! round) so that load on the machine hits both sides alike, checks that both produce the same output, and prints
//! median/p90 over all rounds per side and the ratio of the medians,
//! lpworker/Python, against the 1.05 target. Models: RapidOCR's PP-OCRv4
//! text detector (from the rapidocr-onnxruntime wheel in `.venv`) and the
//! generated nearest-neighbour 2x upscaler.
//!
//! Part 2 starts `lpworker serve` with the upscaler and times, in alternating
//! blocks, the model alone in process, the whole upscale pipeline in process
//! (PNG decode, tensor conversion, model, PNG encode; same session) and full
//! `POST /upscale` round trips on loopback; it prints p50/p99 of each and the
//! overheads (round trip minus pipeline: HTTP, multipart, base64 and JSON,
//! scheduling; round trip minus model: everything beyond the model).
//!
//! Settings (environment): `LPW_BENCH_THREADS` (ONNX Runtime intra-op
//! threads on both sides and for the server, default 2; 0 leaves ONNX
//! Runtime's default), `LPW_BENCH_ITERS` (per side per round, 10),
//! `LPW_BENCH_ROUNDS` (10),
//! `LPW_BENCH_WARMUP` (3), `LPW_BENCH_SHAPE` (the detector's input,
//! 1x3x640x640), `LPW_BENCH_HTTP_ITERS` (200), `LPW_BENCH_PYTHON`
//! (`.venv/bin/python`), `LPW_BENCH_MODEL` (the detector's path),
//! `LPW_BENCH_STRICT` (exit 1 when a ratio misses the target).
//! Under `cargo test --all-targets` (no `--bench`) it runs a few iterations
//! as a smoke test and skips what is not installed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use lpworker::ai::onnx::OnnxModel;
use lpworker::ai::pipelines::image::{ImagePipeline, DEFAULT_MAX_INPUT_PIXELS};
use lpworker::ai::{media, Pipeline, PipelineKind, PipelineRequest};
use ndarray::{ArrayD, IxDyn};

const TARGET_RATIO: f64 = 1.05;
/// Largest |lpworker − Python| accepted on any output element.
const MAX_ABS_DIFF: f32 = 1e-4;

struct Settings {
    /// A real benchmark run (`--bench`), not the smoke test.
    bench: bool,
    threads: usize,
    iters: usize,
    rounds: usize,
    warmup: usize,
    http_iters: usize,
    det_shape: Vec<usize>,
    python: PathBuf,
    root: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

fn parse_shape(text: &str) -> Vec<usize> {
    text.split(['x', ','])
        .filter(|d| !d.is_empty())
        .map(|d| d.trim().parse().expect("shape dimension"))
        .collect()
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

impl Settings {
    fn from_env() -> Settings {
        let bench = std::env::args().any(|a| a == "--bench");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let (iters, rounds, warmup, http_iters) = if bench {
            (10, 10, 3, 200)
        } else {
            (2, 1, 1, 3)
        };
        Settings {
            bench,
            threads: env_or("LPW_BENCH_THREADS", 2),
            iters: env_or("LPW_BENCH_ITERS", iters).max(1),
            rounds: env_or("LPW_BENCH_ROUNDS", rounds).max(1),
            warmup: env_or("LPW_BENCH_WARMUP", warmup),
            http_iters: env_or("LPW_BENCH_HTTP_ITERS", http_iters).max(1),
            det_shape: parse_shape(
                &std::env::var("LPW_BENCH_SHAPE").unwrap_or_else(|_| "1x3x640x640".into()),
            ),
            python: std::env::var_os("LPW_BENCH_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join(".venv/bin/python")),
            root,
        }
    }

    /// Stops a smoke test quietly where a prerequisite is missing; a real
    /// run fails loudly.
    fn missing(&self, what: &str) {
        if self.bench {
            panic!("{what} (run `bash scripts/install-deps`)");
        }
        println!("ai_onnx: skipped: {what}");
    }
}

/// Percentiles by nearest rank (the Python side uses the same rule).
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    p90: f64,
    p99: f64,
}

fn stats(ms: &[f64]) -> Stats {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[k]
    };
    Stats {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The deterministic input both sides use: element i is
/// ((i·7919) mod 1000)/1000 − 0.5, as `ai_onnx_python.py`'s synthetic_input.
fn synthetic_input(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let data = (0..n as u64)
        .map(|i| (((i * 7919) % 1000) as f64 / 1000.0 - 0.5) as f32)
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches")
}

fn write_f32(path: &Path, a: &ArrayD<f32>) {
    let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("writes the input file");
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("reads Python's output")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// One model compared on both sides.
struct Case {
    label: &'static str,
    model: PathBuf,
    input_name: &'static str,
    output_name: &'static str,
    shape: Vec<usize>,
}

struct CaseResult {
    label: &'static str,
    shape: Vec<usize>,
    ours: Stats,
    python: Stats,
    round_medians: Vec<(f64, f64)>,
    max_abs_diff: f32,
    providers: String,
    onnxruntime: String,
}

impl CaseResult {
    fn ratio(&self) -> f64 {
        self.ours.median / self.python.median
    }
}

/// `iters` timed `infer` calls on the same borrowed input (as Python feeds
/// the same array); returns the times and the last output. Outside the timed
/// region each output is copied out and ONNX Runtime's buffer released, as
/// Python's `run` does when it converts outputs to NumPy arrays: holding ONNX
/// Runtime's own output across the next run measured up to 10% slower on the
/// detector.
fn time_lpworker(model: &OnnxModel, input: &ArrayD<f32>, iters: usize) -> (Vec<f64>, ArrayD<f32>) {
    let mut times = Vec::with_capacity(iters);
    let mut last = None;
    for _ in 0..iters {
        let t = Instant::now();
        let y = model.infer(input.view()).expect("lpworker inference");
        times.push(ms_since(t));
        last = Some(y.into_array().expect("an f32 output"));
    }
    (times, last.expect("at least one iteration"))
}

/// One round's worth of Python timings.
struct PythonRound {
    times: Vec<f64>,
    output_shape: Vec<usize>,
    providers: String,
    onnxruntime: String,
}

/// `benches/ai_onnx_python.py --stdin`: one Python process with the session
/// loaded and warmed up, timing `iters` more runs per round on request.
struct PythonSide {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonSide {
    fn start(s: &Settings, case: &Case, input_file: &Path, save_output: &Path) -> PythonSide {
        let mut child = Command::new(&s.python)
            .current_dir(&s.root)
            .arg(s.root.join("benches/ai_onnx_python.py"))
            .arg("--model")
            .arg(&case.model)
            .args(["--threads", &s.threads.to_string()])
            .args(["--iters", &s.iters.to_string()])
            .args(["--warmup", &s.warmup.to_string()])
            .args(["--shape", &shape_text(&case.shape)])
            .arg("--input")
            .arg(input_file)
            .args(["--input-name", case.input_name])
            .args(["--output-name", case.output_name])
            .arg("--save-output")
            .arg(save_output)
            .arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("runs benches/ai_onnx_python.py");
        let stdin = child.stdin.take().expect("stdin piped");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
        // Wait until it has loaded and warmed up, so that its start-up does
        // not overlap the first lpworker round.
        let mut ready = String::new();
        stdout
            .read_line(&mut ready)
            .expect("reads benches/ai_onnx_python.py");
        assert!(
            ready.contains("\"ready\""),
            "benches/ai_onnx_python.py did not start: {ready:?}"
        );
        PythonSide {
            child,
            stdin,
            stdout,
        }
    }

    fn round(&mut self, iters: usize) -> PythonRound {
        use std::io::Write;
        writeln!(self.stdin, "{iters}").expect("benches/ai_onnx_python.py is running");
        self.stdin
            .flush()
            .expect("benches/ai_onnx_python.py is running");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reads benches/ai_onnx_python.py");
        assert!(!line.is_empty(), "benches/ai_onnx_python.py exited early");
        let v: serde_json::Value =
            serde_json::from_str(&line).expect("the Python side prints JSON");
        let times = v["times_ms"]
            .as_array()
            .expect("times_ms")
            .iter()
            .map(|t| t.as_f64().expect("a time"))
            .collect();
        let output_shape = v["output_shape"]
            .as_array()
            .expect("output_shape")
            .iter()
            .map(|d| d.as_u64().expect("a dimension") as usize)
            .collect();
        PythonRound {
            times,
            output_shape,
            providers: v["providers"].to_string(),
            onnxruntime: v["onnxruntime"].as_str().unwrap_or("?").to_string(),
        }
    }

    fn finish(self) {
        let PythonSide {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let status = child.wait().expect("waits for Python");
        assert!(
            status.success(),
            "benches/ai_onnx_python.py failed: {status}"
        );
    }
}

fn compare(s: &Settings, case: &Case) -> CaseResult {
    let model = OnnxModel::load(
        &case.model,
        Some(case.input_name),
        Some(case.output_name),
        s.threads,
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", case.model.display()));
    let input = synthetic_input(&case.shape);
    let dir = tempfile::tempdir().expect("temp dir");
    let input_file = dir.path().join("input.f32");
    let output_file = dir.path().join("python-output.f32");
    write_f32(&input_file, &input);

    time_lpworker(&model, &input, s.warmup.max(1));
    let mut python = PythonSide::start(s, case, &input_file, &output_file);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut round_medians = Vec::new();
    let mut ours_out = None;
    let mut py_meta = None;
    for round in 0..s.rounds {
        // One untimed run first, on both sides: the other side's ONNX Runtime
        // workers may still be spinning right after its round. Who goes first
        // alternates, so neither side always follows the other.
        let ours_first = round % 2 == 0;
        let py_before = (!ours_first).then(|| python.round(s.iters));
        time_lpworker(&model, &input, 1);
        let (t, out) = time_lpworker(&model, &input, s.iters);
        let py = py_before.unwrap_or_else(|| python.round(s.iters));
        round_medians.push((stats(&t).median, stats(&py.times).median));
        ours.extend(t);
        theirs.extend_from_slice(&py.times);
        ours_out = Some(out);
        py_meta = Some(py);
    }
    python.finish();
    let ours_out = ours_out.expect("one round");
    let py = py_meta.expect("one round");

    assert_eq!(
        ours_out.shape(),
        py.output_shape.as_slice(),
        "{}: output shapes differ",
        case.label
    );
    let theirs_out = read_f32(&output_file);
    assert_eq!(ours_out.len(), theirs_out.len());
    let max_abs_diff = ours_out
        .iter()
        .zip(&theirs_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_abs_diff < MAX_ABS_DIFF,
        "{}: lpworker and Python outputs differ by up to {max_abs_diff}",
        case.label
    );
    CaseResult {
        label: case.label,
        shape: case.shape.clone(),
        ours: stats(&ours),
        python: stats(&theirs),
        round_medians,
        max_abs_diff,
        providers: py.providers,
        onnxruntime: py.onnxruntime,
    }
}

/// RapidOCR's text detector, as the rapidocr-onnxruntime wheel ships it.
fn detector_model(s: &Settings) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LPW_BENCH_MODEL") {
        return Some(PathBuf::from(p));
    }
    let lib = s.root.join(".venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|py| {
        let p = py
            .path()
            .join("site-packages/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx");
        p.is_file().then_some(p)
    })
}

fn print_comparison(s: &Settings, results: &[CaseResult]) -> bool {
    let Some(first) = results.first() else {
        return true;
    };
    println!();
    println!(
        "ONNX Runtime inference: lpworker (ort in process, {}) vs Python onnxruntime {} ({}); \
         {} intra-op thread(s), {} alternating round(s) x {} iterations per side",
        lpworker::ai::onnx::find_library()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "?".into()),
        first.onnxruntime,
        first.providers,
        s.threads,
        s.rounds,
        s.iters
    );
    println!(
        "{:<24} {:<13} {:>7} {:>12} {:>9} {:>12} {:>9} {:>7} {:>10}  result",
        "model",
        "input",
        "threads",
        "lpw med ms",
        "lpw p90",
        "py med ms",
        "py p90",
        "ratio",
        "max|diff|"
    );
    let mut all_pass = true;
    for r in results {
        let pass = r.ratio() <= TARGET_RATIO;
        all_pass &= pass;
        println!(
            "{:<24} {:<13} {:>7} {:>12.3} {:>9.3} {:>12.3} {:>9.3} {:>7.3} {:>10.2e}  {} (target <= {TARGET_RATIO})",
            r.label,
            shape_text(&r.shape),
            s.threads,
            r.ours.median,
            r.ours.p90,
            r.python.median,
            r.python.p90,
            r.ratio(),
            r.max_abs_diff,
            if pass { "PASS" } else { "FAIL" }
        );
    }
    for r in results {
        let rounds: Vec<String> = r
            .round_medians
            .iter()
            .map(|(o, p)| format!("{o:.3}/{p:.3}"))
            .collect();
        let ratios: Vec<f64> = r.round_medians.iter().map(|(o, p)| o / p).collect();
        println!(
            "  {}: per-round medians lpworker/python ms: {}; median of per-round ratios {:.3}",
            r.label,
            rounds.join("  "),
            stats(&ratios).median
        );
    }
    all_pass
}

/// A `lpworker serve` child with the ai-runner HTTP API, killed when dropped.
struct Server {
    child: std::process::Child,
    http: std::net::SocketAddr,
}

impl Server {
    fn start(s: &Settings, models: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lpworker"))
            .current_dir(&s.root)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(["--ai-models", models, "--models-dir", "models"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--ai-threads", &s.threads.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lpworker serve starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
            .read_line(&mut line)
            .expect("reads the ready line");
        let http = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("http="))
            .and_then(|a| a.parse().ok());
        let Some(http) = http else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("waits for serve");
            panic!(
                "lpworker serve did not start: {line:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Keep stderr drained so the server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if std::env::var_os("LPW_BENCH_SERVER_LOGS").is_some() {
                    eprintln!("[serve] {l}");
                }
            }
        });
        Server { child, http }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn test_image(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x ^ y) * 3) as u8])
    })
}

fn upscale_form(png: &[u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("prompt", "a sharper picture")
        .text("seed", "7")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.to_vec())
                .file_name("in.png")
                .mime_str("image/png")
                .expect("a MIME type"),
        )
}

fn decode_data_url(url: &str) -> image::RgbImage {
    use base64::Engine;
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    image::load_from_memory(&bytes).expect("a PNG").to_rgb8()
}

/// Requests per block in part 2 (see `http_overhead`).
const HTTP_BLOCK: usize = 20;

fn http_overhead(s: &Settings) {
    const MODEL_ID: &str = "lpworker/nearest-2x";
    let (w, h) = (256u32, 256u32);
    let dir = s.root.join("models").join(MODEL_ID);
    let model = Arc::new(
        OnnxModel::load(
            &dir.join("model.onnx"),
            Some("image"),
            Some("upscaled"),
            s.threads,
        )
        .expect("loads the upscaler model"),
    );
    let pipeline = ImagePipeline::new(
        PipelineKind::Upscale,
        MODEL_ID,
        // The same session as the in-process model measurement.
        Arc::clone(&model),
        DEFAULT_MAX_INPUT_PIXELS,
    );
    let input = test_image(w, h);
    let png = media::encode_png(&input).expect("encodes the input");
    let tensor = media::to_tensor(&input);
    let mut request = PipelineRequest::default();
    request
        .params
        .insert("prompt".into(), "a sharper picture".into());
    request.params.insert("seed".into(), "7".into());
    request.files.insert("image".into(), png.clone());
    let output = model.infer(tensor.view()).expect("infers");
    let expected = media::from_tensor(output.view().expect("f32")).expect("an image");
    assert_eq!(expected.dimensions(), (2 * w, 2 * h));

    let server = Server::start(s, &format!("upscale:{MODEL_ID}:true"));
    let url = format!("http://{}/upscale", server.http);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime");
    let client = reqwest::Client::new();
    let post = |png: &[u8]| {
        let form = upscale_form(png);
        let req = client.post(&url).multipart(form);
        rt.block_on(async {
            let t = Instant::now();
            let resp = req.send().await.expect("POST /upscale");
            let status = resp.status();
            let body = resp.bytes().await.expect("response body");
            (ms_since(t), status, body)
        })
    };

    // Warm up both, and check the server computes what the pipeline does.
    for _ in 0..s.warmup.max(1) {
        let (_, status, body) = post(&png);
        assert!(status.is_success(), "POST /upscale: {status}");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let url = v["images"][0]["url"].as_str().expect("an image URL");
        assert!(decode_data_url(url) == expected, "server output differs");
        pipeline.run(&request).expect("pipeline runs");
    }

    // Blocks of in-process runs alternate with blocks of requests rather than
    // interleaving them one by one: an ONNX Runtime session's intra-op
    // workers spin for a while after each run, and on a small machine that
    // slows the *other* session (the server's, or this one) right after it.
    let (mut infer_ms, mut pipe_ms, mut rtt_ms) = (Vec::new(), Vec::new(), Vec::new());
    while rtt_ms.len() < s.http_iters {
        let n = HTTP_BLOCK.min(s.http_iters - rtt_ms.len());
        for _ in 0..n {
            let t = Instant::now();
            let y = model.infer(tensor.view()).expect("infers");
            infer_ms.push(ms_since(t));
            drop(y);
            let t = Instant::now();
            let out = pipeline.run(&request).expect("pipeline runs");
            pipe_ms.push(ms_since(t));
            drop(out);
        }
        for _ in 0..n {
            let (rtt, status, body) = post(&png);
            assert!(status.is_success(), "POST /upscale: {status}");
            drop(body);
            rtt_ms.push(rtt);
        }
    }
    drop(server);

    let (infer, pipe, rtt) = (stats(&infer_ms), stats(&pipe_ms), stats(&rtt_ms));
    println!();
    println!(
        "ai-runner HTTP API: POST /upscale, {w}x{h} PNG ({} bytes) -> {}x{} PNG, {MODEL_ID}, \
         {} intra-op thread(s), {} sequential requests on loopback \
         (in blocks of {HTTP_BLOCK} alternating with as many in-process runs)",
        png.len(),
        2 * w,
        2 * h,
        s.threads,
        s.http_iters
    );
    println!("{:<58} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    let row = |name: &str, p50: f64, p99: f64| println!("{name:<58} {p50:>9.3} {p99:>9.3}");
    row(
        "model alone, in process (OnnxModel::infer)",
        infer.median,
        infer.p99,
    );
    row(
        "pipeline in process (PNG decode + model + PNG encode)",
        pipe.median,
        pipe.p99,
    );
    row("full HTTP round trip (lpworker serve)", rtt.median, rtt.p99);
    row(
        "overhead: round trip - in-process pipeline",
        rtt.median - pipe.median,
        rtt.p99 - pipe.p99,
    );
    row(
        "overhead: round trip - model alone",
        rtt.median - infer.median,
        rtt.p99 - infer.p99,
    );
}

fn main() {
    let s = Settings::from_env();
    if !s.python.is_file() {
        return s.missing(&format!("no Python at {}", s.python.display()));
    }
    if lpworker::ai::onnx::init(None).is_err() {
        return s.missing("libonnxruntime not found");
    }
    let Some(det) = detector_model(&s) else {
        return s.missing("rapidocr-onnxruntime's ch_PP-OCRv4_det_infer.onnx not found in .venv");
    };
    let cases = [
        Case {
            label: "PP-OCRv4 det (RapidOCR)",
            model: det,
            input_name: "x",
            output_name: "sigmoid_0.tmp_0",
            shape: s.det_shape.clone(),
        },
        Case {
            label: "lpworker/nearest-2x",
            model: s.root.join("models/lpworker/nearest-2x/model.onnx"),
            input_name: "image",
            output_name: "upscaled",
            shape: vec![1, 3, 256, 256],
        },
    ];
    if !s.bench {
        println!(
            "ai_onnx: smoke test (a few iterations, test profile): figures are not meaningful; \
             run `cargo bench --bench ai_onnx`"
        );
    }
    let results: Vec<CaseResult> = cases.iter().map(|c| compare(&s, c)).collect();
    let pass = print_comparison(&s, &results);
    http_overhead(&s);
    if !pass && s.bench && std::env::var_os("LPW_BENCH_STRICT").is_some() {
        std::process::exit(1);
    }
}
