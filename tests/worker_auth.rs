//! Workers protected behind the shim: `lpworker serve --auth-secret` with
//! TLS (and mTLS) reached by `lpworker orchestrator --workers https://...`
//! with the matching secret and trust; refusals when the secret or the
//! certificate does not match; and `serve`/`attach` refusing to open a
//! non-loopback work port without protection.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::keccak256;
use common::shim::{offchain_shim_command, OffChainShim as Shim};
use common::{b64, clip, insecure_http as http, tempdir, Clip, ServeProcess};
use lpworker::proto::lp_rpc as net;
use lpworker::proto::worker as pb;
use prost::Message;

/// A CA, a worker certificate it signed (for 127.0.0.1 and localhost) and a
/// client certificate it signed, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// SHA-256 of the worker certificate's DER, hex.
    pin: String,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use sha2::Digest;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |eku| {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert, key)
    };
    let (server, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("worker.pem", server.pem()),
        key: write("worker.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        pin: alloy_primitives::hex::encode(sha2::Sha256::digest(server.der())),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command expected to exit on its own, killing it after `limit`.
fn run_to_exit(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shim must refuse to start: no worker it can use.
fn assert_shim_finds_no_worker(workers: &str, datadir: &Path, extra: &[&str]) -> String {
    let out = run_to_exit(
        offchain_shim_command(workers, datadir, extra),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no worker answered"), "{stderr}");
    stderr
}

/// Sends one segment through the shim and checks that renditions came back.
async fn transcode_one(shim: &Shim, dir: &Path) {
    let info = shim.info().await;
    let (_, body) = clip(
        dir,
        "seg",
        &Clip {
            width: 320,
            height: 180,
            ..Default::default()
        },
    );
    let seg = net::SegData {
        manifest_id: b"manifest".to_vec(),
        seq: 3,
        hash: keccak256(&body).to_vec(),
        duration: 1000,
        auth_token: info.auth_token.clone(),
        full_profiles2: vec![net::VideoProfile {
            name: "P144p".into(),
            width: 256,
            height: 144,
            bitrate: 200_000,
            fps: 30,
            format: net::video_profile::Format::Mpegts as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = http()
        .post(format!("{}/segment", info.transcoder))
        .header("Livepeer-Segment", b64(&seg.encode_to_vec()))
        .header("Livepeer-Payment", "")
        .header("Content-Type", "video/MP2T")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let result = net::TranscodeResult::decode(r.bytes().await.unwrap().as_ref()).unwrap();
    let Some(net::transcode_result::Result::Data(data)) = result.result else {
        panic!("{:?}", result.result)
    };
    assert_eq!(data.segments.len(), 1);
    let bytes = http()
        .get(&data.segments[0].url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.len() > 1000, "a rendition came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_tls_worker_transcodes_and_infers_behind_the_shim() {
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let worker = ServeProcess::start(&[
        "--auth-secret",
        "s3cret",
        "--tls-cert",
        s(&pki.cert),
        "--tls-key",
        s(&pki.key),
        "--ai-models",
        "upscale:lpworker/nearest-2x:true",
        "--models-dir",
        "models",
    ]);
    let target = format!("https://127.0.0.1:{}", worker.grpc.port());
    let shim = Shim::start(
        &target,
        &dir.path().join("data"),
        &["--worker-secret", "s3cret", "--worker-ca", s(&pki.ca)],
    );
    transcode_one(&shim, dir.path()).await;

    // AI requests go to the worker too, with the same secret and TLS.
    let info = shim.info().await;
    let input =
        image::RgbImage::from_fn(6, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 60) as u8, 9]));
    let png = lpworker::ai::media::encode_png(&input).unwrap();
    let creds = b64(&net::SegData {
        auth_token: info.auth_token.clone(),
        ..Default::default()
    }
    .encode_to_vec());
    let form = reqwest::multipart::Form::new()
        .text("prompt", "x")
        .text("model_id", "lpworker/nearest-2x")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png).file_name("in.png"),
        );
    let r = http()
        .post(format!("{}/upscale", info.transcoder))
        .header("Livepeer-Segment", &creds)
        .header("Livepeer-Payment", "")
        .header("Authorization", "Livepeer-AI-Worker-1.0")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let url = body["images"][0]["url"].as_str().unwrap();
    let bytes = http().get(url).send().await.unwrap().bytes().await.unwrap();
    let out = image::load_from_memory(&bytes).unwrap();
    assert_eq!((out.width(), out.height()), (12, 8));

    // The same worker pinned by its certificate instead of the CA.
    let pinned = Shim::start(
        &target,
        &dir.path().join("data2"),
        &["--worker-secret", "s3cret", "--worker-cert-pin", &pki.pin],
    );
    transcode_one(&pinned, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_callers_without_its_secret() {
    let dir = tempdir();
    let worker = ServeProcess::start(&["--auth-secret", "s3cret"]);

    // A plain client without the secret, and with a wrong one.
    let mut client = pb::worker_client::WorkerClient::connect(worker.endpoint())
        .await
        .unwrap();
    let refused = client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(pb::CapabilitiesRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    let refused = client.capabilities(wrong).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The shim without the secret, or with the wrong one: no usable worker,
    // and the log says why.
    let target = worker.grpc.to_string();
    let stderr = assert_shim_finds_no_worker(&target, &dir.path().join("a"), &[]);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert_shim_finds_no_worker(
        &target,
        &dir.path().join("b"),
        &["--worker-secret", "wrong"],
    );

    // With it, the shim starts and transcodes (plain `host:port` is http).
    let shim = Shim::start(
        &target,
        &dir.path().join("c"),
        &["--worker-secret", "s3cret"],
    );
    transcode_one(&shim, dir.path()).await;
}

#[test]
fn a_wrong_certificate_pin_or_an_untrusted_worker_is_refused() {
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let worker = ServeProcess::start(&[
        "--auth-secret",
        "s3cret",
        "--tls-cert",
        s(&pki.cert),
        "--tls-key",
        s(&pki.key),
    ]);
    let target = format!("https://127.0.0.1:{}", worker.grpc.port());
    let wrong_pin = "00".repeat(32);
    assert_shim_finds_no_worker(
        &target,
        &dir.path().join("a"),
        &["--worker-secret", "s3cret", "--worker-cert-pin", &wrong_pin],
    );
    // A CA that did not sign the worker's certificate.
    let other = tempdir();
    let other_pki = make_pki(other.path());
    assert_shim_finds_no_worker(
        &target,
        &dir.path().join("b"),
        &["--worker-secret", "s3cret", "--worker-ca", s(&other_pki.ca)],
    );
    // https:// without any way to verify the worker is refused at once.
    let out = run_to_exit(
        offchain_shim_command(&target, &dir.path().join("c"), &[]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--worker-ca"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_worker_requires_the_shims_client_certificate() {
    let dir = tempdir();
    let pki = make_pki(dir.path());
    let worker = ServeProcess::start(&[
        "--tls-cert",
        s(&pki.cert),
        "--tls-key",
        s(&pki.key),
        "--tls-client-ca",
        s(&pki.ca),
    ]);
    let target = format!("https://127.0.0.1:{}", worker.grpc.port());
    assert_shim_finds_no_worker(&target, &dir.path().join("a"), &["--worker-ca", s(&pki.ca)]);
    let shim = Shim::start(
        &target,
        &dir.path().join("b"),
        &[
            "--worker-ca",
            s(&pki.ca),
            "--worker-client-cert",
            s(&pki.client_cert),
            "--worker-client-key",
            s(&pki.client_key),
        ],
    );
    transcode_one(&shim, dir.path()).await;
}

fn serve_on(addr: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
    cmd.args(["serve", "--addr", addr, "--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .env_remove("LPWORKER_AUTH_SECRET")
        .env_remove("LPWORKER_ADDR");
    cmd
}

/// Starts `cmd` and waits for its ready line; kills it after.
fn starts(mut cmd: Command) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::ready_line(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn serve_refuses_an_open_public_work_port() {
    let out = run_to_exit(serve_on("0.0.0.0:0", &[]), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not a loopback address")
            && stderr.contains("--auth-secret")
            && stderr.contains("--insecure-public"),
        "{stderr}"
    );

    let line = starts(serve_on("0.0.0.0:0", &["--auth-secret", "s3cret"]));
    assert!(
        line.starts_with("lpworker serve listening grpc=0.0.0.0:"),
        "{line:?}"
    );
    let line = starts(serve_on("0.0.0.0:0", &["--insecure-public"]));
    assert!(
        line.starts_with("lpworker serve listening grpc=0.0.0.0:"),
        "{line:?}"
    );
    let line = starts(serve_on("127.0.0.1:0", &[]));
    assert!(
        line.starts_with("lpworker serve listening grpc=127.0.0.1:"),
        "{line:?}"
    );
}

#[test]
fn serve_listens_on_loopback_by_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:50051]"), "{help}");
    assert!(help.contains("--insecure-public"), "{help}");
}

#[test]
fn attach_refuses_an_open_public_serve_port() {
    let out = run_to_exit(
        {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpworker"));
            cmd.args([
                "attach",
                "--orch-addr",
                "127.0.0.1:1",
                "--orch-secret",
                "x",
                "--serve",
                "0.0.0.0:0",
            ])
            .env_remove("LPWORKER_AUTH_SECRET");
            cmd
        },
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--serve 0.0.0.0:0") && stderr.contains("--insecure-public"),
        "{stderr}"
    );
}

/// A TCP proxy to `upstream` that can turn into a black hole: connections stay
/// open but nothing more gets through either way (a worker host that
/// vanished without a reset).
async fn black_hole_proxy(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gone = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&gone);
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)].map(|(r, w)| {
                (
                    Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    w,
                )
            }) {
                let gone = Arc::clone(&flag);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            // Hold the other side open: no FIN, no reset.
                            std::future::pending::<()>().await;
                        }
                        if !gone.load(Ordering::Relaxed) && to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, gone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_vanishes_is_given_up_on_and_the_next_one_used() {
    let dir = tempdir();
    let first = ServeProcess::start(&["--auth-secret", "s3cret"]);
    let second = ServeProcess::start(&["--auth-secret", "s3cret"]);
    let (proxy, gone) = black_hole_proxy(first.grpc).await;
    let shim = Shim::start(
        &format!("{proxy},{}", second.grpc),
        &dir.path().join("data"),
        &["--worker-secret", "s3cret"],
    );
    // Both work; then the first one's host vanishes mid-connection. The next
    // segments go to it first (listed first, equally free), so they finish
    // only because keepalives (10 s + 10 s) give it up and the second worker
    // is tried; without them they would wait for --worker-timeout (120 s).
    transcode_one(&shim, dir.path()).await;
    gone.store(true, std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..2 {
        transcode_one(&shim, dir.path()).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "keepalives gave up on the vanished worker: {:?}",
        start.elapsed()
    );
}
