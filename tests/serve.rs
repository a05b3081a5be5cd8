//! `lpworker serve` end to end: a real server process, real sockets, a tonic client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{clip, ffprobe, tempdir, Clip, ServeProcess};
use lpworker::proto::worker as pb;
use pb::worker_client::WorkerClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A transcode response put back together.
#[derive(Debug, Default)]
struct Assembled {
    renditions: Vec<(pb::RenditionHeader, Vec<u8>, usize)>,
    summary: Option<pb::TranscodeSummary>,
}

async fn client(server: &ServeProcess) -> WorkerClient<Channel> {
    WorkerClient::connect(server.endpoint())
        .await
        .expect("connects")
}

async fn transcode(
    client: &mut WorkerClient<Channel>,
    req: pb::TranscodeRequest,
) -> Result<Assembled, Status> {
    use pb::transcode_response::Event;
    let mut stream = client.transcode(req).await?.into_inner();
    let mut out = Assembled::default();
    while let Some(msg) = stream.message().await? {
        match msg.event.expect("every message has an event") {
            Event::Rendition(h) => out.renditions.push((h, Vec::new(), 0)),
            Event::Chunk(c) => {
                let r = &mut out.renditions[c.index as usize];
                assert!(c.data.len() <= 1 << 20, "chunk of {} bytes", c.data.len());
                r.1.extend_from_slice(&c.data);
                r.2 += 1;
            }
            Event::Summary(s) => out.summary = Some(s),
        }
    }
    Ok(out)
}

fn request(segment: Vec<u8>, names: &[&str]) -> pb::TranscodeRequest {
    pb::TranscodeRequest {
        source: Some(pb::transcode_request::Source::Segment(segment)),
        profile_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn metrics_text(server: &ServeProcess) -> String {
    let url = format!(
        "http://{}/metrics",
        server.metrics.expect("metrics enabled")
    );
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcode_round_trip_health_reflection_metrics() {
    let dir = tempdir();
    let (src_path, bytes) = clip(
        dir.path(),
        "src",
        &Clip {
            width: 1280,
            height: 720,
            seconds: 1.5,
            ..Default::default()
        },
    );
    let server = ServeProcess::start(&["--max-sessions", "2"]);
    let mut c = client(&server).await;

    let mut req = request(bytes, &["P360p30fps16x9", "P240p30fps16x9"]);
    req.request_id = "req-42".into();
    // A high-bitrate custom rendition, large enough to arrive in several chunks.
    req.profiles.push(pb::VideoProfile {
        name: "hi720".into(),
        width: 1280,
        height: 720,
        bitrate: 12_000_000,
        fps: 30,
        ..Default::default()
    });
    let out = transcode(&mut c, req).await.expect("transcode");
    let summary = out.summary.expect("summary");
    assert_eq!(summary.request_id, "req-42");
    assert_eq!(summary.backend, "cpu");
    assert_eq!(summary.decoded_frames, 45);
    assert_eq!(summary.decoded_pixels, 45 * 1280 * 720);
    assert!(summary.compute_seconds > 0.0);
    assert_eq!(out.renditions.len(), 3);
    for (i, ((h, data, chunks), (w, hgt))) in out
        .renditions
        .iter()
        .zip([(640, 360), (426, 240), (1280, 720)])
        .enumerate()
    {
        assert_eq!(h.index as usize, i);
        assert_eq!((h.width, h.height), (w, hgt));
        assert_eq!(h.size as usize, data.len());
        assert_eq!(*chunks, data.len().div_ceil(1 << 20));
        let path = dir.path().join(format!("{}.ts", h.profile));
        std::fs::write(&path, data).unwrap();
        let p = ffprobe(&path);
        assert_eq!((p.width, p.height), (w, hgt));
        assert!(p.frames.abs_diff(45) <= 1);
        assert_eq!(h.frames, p.frames);
        assert_eq!(h.pixels, p.frames * u64::from(w * hgt));
        assert!(
            common::psnr(&path, &src_path, w, hgt, 30.0) >= 35.0,
            "{}",
            h.profile
        );
    }
    assert!(
        out.renditions[2].2 >= 2,
        "the 12 Mbit/s rendition spans several chunks"
    );

    // Capabilities reflect the probe and the capacity.
    let caps = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (caps.capacity, caps.free_slots, caps.draining),
        (2, 2, false)
    );
    assert!(caps.encoders.contains(&"libx264".to_string()));
    assert!(caps.cpu_cores >= 1);

    // Standard health service.
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "lpworker.v1.Worker"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Server reflection lists the worker service.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"lpworker.v1.Worker"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // ... and so does the older v1alpha reflection service.
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut reflection = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("v1alpha reflection is served")
            .into_inner();
        let listed = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
            panic!("no v1alpha service list")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"lpworker.v1.Worker"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }

    // Prometheus metrics count the work.
    let text = metrics_text(&server).await;
    assert!(
        text.contains("lpworker_segments_total{backend=\"cpu\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "lpworker_pixels_total{{backend=\"cpu\",stage=\"decoded\"}} {}",
            45 * 1280 * 720
        )),
        "{text}"
    );
    assert!(text.contains("lpworker_compute_seconds_bucket"), "{text}");
    assert!(
        text.contains("lpworker_requests_total{code=\"Ok\",method=\"Transcode\"} 1"),
        "{text}"
    );
    assert!(text.contains("lpworker_capacity_sessions 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_enforced_and_admitted_requests_succeed() {
    let dir = tempdir();
    let (_, bytes) = clip(
        dir.path(),
        "src",
        &Clip {
            width: 1280,
            height: 720,
            seconds: 2.0,
            ..Default::default()
        },
    );
    let server = ServeProcess::start(&["--max-sessions", "2", "--preset", "medium"]);
    let profiles = ["P720p30fps16x9", "P360p30fps16x9"];

    // At capacity: every request succeeds.
    let at_capacity: Vec<_> = (0..2)
        .map(|_| {
            let (endpoint, bytes) = (server.endpoint(), bytes.clone());
            tokio::spawn(async move {
                let mut c = WorkerClient::connect(endpoint).await.unwrap();
                transcode(&mut c, request(bytes, &profiles)).await
            })
        })
        .collect();
    for h in at_capacity {
        let out = h.await.unwrap().expect("request at capacity succeeds");
        assert_eq!(out.renditions.len(), 2);
    }

    // At twice capacity, all at once: the excess is refused at once.
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let (endpoint, bytes) = (server.endpoint(), bytes.clone());
            tokio::spawn(async move {
                let mut c = WorkerClient::connect(endpoint).await.unwrap();
                let started = std::time::Instant::now();
                (
                    transcode(&mut c, request(bytes, &profiles)).await,
                    started.elapsed(),
                )
            })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for h in burst {
        match h.await.unwrap() {
            (Ok(out), _) => {
                assert_eq!(out.renditions.len(), 2);
                assert!(out
                    .renditions
                    .iter()
                    .all(|(h, d, _)| h.size as usize == d.len() && !d.is_empty()));
                ok += 1;
            }
            (Err(s), took) if s.code() == Code::ResourceExhausted => {
                assert!(
                    took < Duration::from_secs(1),
                    "refusal took {took:?}: it must not queue"
                );
                assert!(s.message().contains("capacity"), "{}", s.message());
                exhausted += 1;
            }
            (Err(s), _) => panic!("unexpected status {s:?}"),
        }
    }
    assert!(
        ok >= 2 && exhausted >= 1 && ok + exhausted == 4,
        "ok {ok}, exhausted {exhausted}"
    );
    let (rss, peak) = server.rss_kib();
    eprintln!(
        "server RSS after burst {} MiB, peak {} MiB",
        rss / 1024,
        peak / 1024
    );
    assert!(peak < 1536 * 1024, "peak RSS {} MiB", peak / 1024);
    let text = metrics_text(&server).await;
    assert!(
        text.contains("lpworker_rejected_total{reason=\"full\"}"),
        "{text}"
    );
    // The worker still serves afterwards.
    let mut c = client(&server).await;
    assert!(transcode(&mut c, request(bytes, &["P240p30fps16x9"]))
        .await
        .is_ok());
}

/// `--max-sessions auto`: capacity measured at start (on a small clip and
/// ladder here), admitted as measured and within the cap, and the levels
/// tried are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_auto_is_measured_at_start() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--no-metrics",
            "--preset",
            "veryfast",
            "--max-sessions",
            "auto",
            "--max-sessions-clip",
            "320x180p30:2s",
            "--max-sessions-ladder",
            "P144p30fps16x9",
            "--max-sessions-cap",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::ready_line(&mut child);
    let capacity: u32 = common::line_field(&line, "capacity=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((1..=3).contains(&capacity), "{line}");
    let grpc = common::line_field(&line, "grpc=").unwrap().to_string();
    let mut c = WorkerClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let caps = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capacity, capacity);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!log.contains('\x1b'), "no colour codes in a piped log");
    assert!(
        log.contains("--max-sessions auto: measured")
            && log.contains(&format!("sessions={capacity}"))
            || log.contains("even one stream falls behind"),
        "{log}"
    );
    assert!(log.contains("levels=1:"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits_zero() {
    let dir = tempdir();
    let (_, bytes) = clip(
        dir.path(),
        "src",
        &Clip {
            width: 1280,
            height: 720,
            seconds: 2.0,
            ..Default::default()
        },
    );
    let mut server = ServeProcess::start(&[
        "--max-sessions",
        "4",
        "--drain-timeout",
        "60",
        "--preset",
        "medium",
    ]);
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (endpoint, bytes) = (server.endpoint(), bytes.clone());
            tokio::spawn(async move {
                let mut c = WorkerClient::connect(endpoint).await.unwrap();
                transcode(
                    &mut c,
                    request(bytes, &["P720p30fps16x9", "P360p30fps16x9"]),
                )
                .await
            })
        })
        .collect();
    // Wait until both are admitted.
    let mut c = client(&server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .free_slots
        > 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // New work is refused while draining, and health says NOT_SERVING.
    let refused = transcode(&mut c, request(bytes.clone(), &["P240p30fps16x9"])).await;
    let status = refused.expect_err("new work during drain must be refused");
    assert!(matches!(status.code(), Code::Unavailable), "{status:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    if let Ok(r) = check {
        assert_eq!(
            r.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        );
    }

    // In-flight requests complete in full.
    for h in in_flight {
        let out = h
            .await
            .unwrap()
            .expect("in-flight request completes during drain");
        assert_eq!(out.renditions.len(), 2);
        assert!(out.summary.is_some());
    }
    // Then the process exits 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code.code(), Some(0), "exit status {code:?}");
}

/// Serves `body` once over plain HTTP on loopback and returns the URL.
fn serve_once(body: Vec<u8>, status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/seg.ts", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_and_the_worker_keeps_serving() {
    let dir = tempdir();
    let (_, bytes) = clip(dir.path(), "src", &Clip::default());
    // Its segments are served from loopback, refused unless allowed.
    let server = ServeProcess::start(&[
        "--max-segment-bytes",
        "2000000",
        "--fetch-allow",
        "127.0.0.1/32",
    ]);
    let mut c = client(&server).await;
    let names = ["P240p30fps16x9"];

    let mut cases: Vec<(&str, pb::TranscodeRequest)> = vec![
        ("garbage", request(vec![0x47; 188 * 20], &names)),
        ("empty segment", request(vec![], &names)),
        ("truncated", request(bytes[..300].to_vec(), &names)),
        (
            "random",
            request(
                (0..50_000u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect(),
                &names,
            ),
        ),
        (
            "no source",
            pb::TranscodeRequest {
                profile_names: vec!["P240p30fps16x9".into()],
                ..Default::default()
            },
        ),
        ("unknown profile", request(bytes.clone(), &["P9999p"])),
        ("no profiles", request(bytes.clone(), &[])),
        (
            "bad custom profile",
            pb::TranscodeRequest {
                profiles: vec![pb::VideoProfile {
                    name: "x".into(),
                    width: 0,
                    height: 10,
                    bitrate: 1,
                    ..Default::default()
                }],
                ..request(bytes.clone(), &[])
            },
        ),
        (
            "bad container",
            pb::TranscodeRequest {
                container: 9,
                ..request(bytes.clone(), &names)
            },
        ),
        (
            "bad URL",
            pb::TranscodeRequest {
                source: Some(pb::transcode_request::Source::Url("ftp://x/y".into())),
                ..request(vec![], &names)
            },
        ),
        (
            "URL 404",
            pb::TranscodeRequest {
                source: Some(pb::transcode_request::Source::Url(serve_once(
                    vec![],
                    "404 Not Found",
                ))),
                ..request(vec![], &names)
            },
        ),
        (
            "URL garbage",
            pb::TranscodeRequest {
                source: Some(pb::transcode_request::Source::Url(serve_once(
                    vec![1; 5000],
                    "200 OK",
                ))),
                ..request(vec![], &names)
            },
        ),
        (
            "URL too large",
            pb::TranscodeRequest {
                source: Some(pb::transcode_request::Source::Url(serve_once(
                    vec![0; 2_500_000],
                    "200 OK",
                ))),
                ..request(vec![], &names)
            },
        ),
    ];
    // Too many renditions.
    cases.push((
        "17 profiles",
        request(bytes.clone(), &["P144p30fps16x9"; 17]),
    ));
    for (case, req) in cases {
        let status = transcode(&mut c, req).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().len() > 10,
            "{case}: terse message {:?}",
            status.message()
        );
    }
    // Over the gRPC message limit: refused by the transport, with a clear message.
    let status = transcode(&mut c, request(vec![0; 3_000_000], &names))
        .await
        .expect_err("oversize");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );

    // A good segment, inline and by URL, still works.
    let out = transcode(&mut c, request(bytes.clone(), &names))
        .await
        .expect("good segment after bad ones");
    assert_eq!(out.renditions.len(), 1);
    let by_url = pb::TranscodeRequest {
        source: Some(pb::transcode_request::Source::Url(serve_once(
            bytes, "200 OK",
        ))),
        ..request(vec![], &names)
    };
    assert_eq!(
        transcode(&mut c, by_url)
            .await
            .expect("URL segment")
            .renditions
            .len(),
        1
    );
    let text = metrics_text(&server).await;
    assert!(
        text.contains("lpworker_errors_total{backend=\"cpu\",kind=\"demux\"}"),
        "{text}"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_shared_secret() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let dir = tempdir();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // A CA, a server certificate for localhost and a client certificate, all signed by it.
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=test-ca",
                "-days",
                "1",
            ],
        ]
        .concat(),
        d,
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        d,
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
        d,
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "client.key",
                "-out",
                "client.csr",
                "-subj",
                "/CN=client",
            ],
        ]
        .concat(),
        d,
    );
    std::fs::write(
        d.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "1",
            "-extfile",
            "client.ext",
        ],
        d,
    );
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let server = ServeProcess::start(&[
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
        "--auth-secret",
        "s3cret",
    ]);
    let ca = Certificate::from_pem(std::fs::read(d.join("ca.pem")).unwrap());
    let identity = Identity::from_pem(
        std::fs::read(d.join("client.pem")).unwrap(),
        std::fs::read(d.join("client.key")).unwrap(),
    );
    let url = format!("https://localhost:{}", server.grpc.port());

    // Without a client certificate the TLS handshake is refused.
    let no_cert = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        )
        .unwrap();
    let refused = match no_cert.connect().await {
        Err(_) => true,
        Ok(ch) => WorkerClient::new(ch)
            .capabilities(pb::CapabilitiesRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "mTLS must refuse a client without a certificate");

    let channel = Channel::from_shared(url)
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("mTLS connect");
    let mut c = WorkerClient::new(channel.clone());
    let status = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .expect_err("no secret");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(pb::CapabilitiesRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        c.capabilities(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(pb::CapabilitiesRequest {});
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(
        c.capabilities(right)
            .await
            .expect("right secret")
            .into_inner()
            .capacity,
        10
    );
    // Health stays open to probes without the secret.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok());
}

#[test]
fn health_subcommand_reports_serving_and_failure() {
    let server = ServeProcess::start(&[]);
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args(["health", "--addr", &server.grpc.to_string()])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    drop(server);
    let dead = std::process::Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args(["health", "--addr", "127.0.0.1:1", "--timeout", "1"])
        .output()
        .unwrap();
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("cannot reach"));
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// At the descriptor limit every accept fails at once. The worker neither
/// spins on the listener nor writes a line per failure, and it serves again
/// once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_at_the_descriptor_limit_are_paused_and_rate_limited() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let mut child = std::process::Command::new("bash")
        .args([
            "-c",
            r#"ulimit -n 64 && exec "$0" serve --addr 127.0.0.1:0 --preset veryfast"#,
            env!("CARGO_BIN_EXE_lpworker"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::ready_line(&mut child);
    let grpc: std::net::SocketAddr = common::line_field(&line, "grpc=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no grpc address in {line:?}"));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    {
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                stderr.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let pid = child.0.id();

    // More connections than descriptors: the rest wait in the backlog.
    let conns: Vec<_> = (0..70)
        .map(|_| std::net::TcpStream::connect(grpc).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bytes0, ticks0) = (stderr.lock().unwrap().len(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (bytes1, ticks1) = (stderr.lock().unwrap().len(), cpu_ticks(pid));
    let text = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    assert!(
        text.contains("accept failed"),
        "the failure is reported: {text}"
    );
    assert!(
        text.matches("accept failed").count() <= 2,
        "one line per interval: {text}"
    );
    assert!(
        bytes1 - bytes0 < 2048,
        "{} bytes in 3 s: {text}",
        bytes1 - bytes0
    );
    // Clock ticks are 1/100 s: under a third of a core over 3 s (a spinning
    // accept loop takes a whole one).
    assert!(ticks1 - ticks0 < 100, "{} ticks in 3 s", ticks1 - ticks0);

    // Descriptors freed: the worker accepts and serves again.
    drop(conns);
    let mut health = None;
    for _ in 0..50 {
        let connected = async {
            let channel = Channel::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
                .ok()?;
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()
        };
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), connected).await {
            health = Some(r.into_inner().status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        health,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32),
        "{text}"
    );
    drop(child);
}
