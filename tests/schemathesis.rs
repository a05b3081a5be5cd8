//! Property-based fuzzing of the ai-runner HTTP API from ai-runner's own
//! OpenAPI document (tests/ai-runner-openapi.yaml) with schemathesis
//! (installed in .venv by scripts/install-deps): no request may get a 5xx, and
//! every response of a served route must match its schema.

mod common;

use std::process::Command;

fn schemathesis(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.venv/bin/schemathesis"
    ))
    .args([
        "run",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ai-runner-openapi.yaml"),
        "--url",
        url,
        "--seed",
        "7",
    ])
    .args(args)
    .env("NO_COLOR", "1")
    .output()
    .expect("schemathesis is installed in .venv (bash scripts/install-deps)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn generated_requests_never_get_a_server_error_and_responses_match_the_schema() {
    let dir = common::tempdir();
    let models = common::models_dir_with_ocr(dir.path());
    let server = common::ServeProcess::start(&[
        "--ai-models",
        "upscale:lpworker/nearest-2x:true,llm:lpworker/tiny-llama:true,audio-to-text:lpworker/tiny-whisper:true,text-to-image:lpworker/tiny-sd:true,image-to-image:lpworker/tiny-sd:true,image-to-text:lpworker/tiny-blip:true,ocr:rapidocr/PP-OCRv4:true",
        "--models-dir",
        models.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let url = format!("http://{}", server.http.expect("AI HTTP served"));
    // Every route in ai-runner's API: unserved ones must answer 404, never 5xx.
    let (ok, log) = schemathesis(
        &url,
        &["--checks", "not_a_server_error", "--max-examples", "20"],
    );
    assert!(ok, "schemathesis found server errors:\n{log}");
    assert!(log.contains("passed"), "{log}");
    // The served routes: responses conform to their declared schemas.
    let served = [
        "--include-path",
        "/upscale",
        "--include-path",
        "/llm",
        "--include-path",
        "/audio-to-text",
        "--include-path",
        "/text-to-image",
        "--include-path",
        "/image-to-image",
        "--include-path",
        "/image-to-text",
        "--include-path",
        "/health",
        "--include-path",
        "/version",
        "--include-path",
        "/hardware/info",
    ];
    let (ok, log) = schemathesis(
        &url,
        &[
            &[
                "--checks",
                "response_schema_conformance,not_a_server_error",
                "--max-examples",
                "30",
            ][..],
            &served,
        ]
        .concat(),
    );
    assert!(ok, "responses do not match ai-runner's schemas:\n{log}");
    // The server survived all of it.
    let health = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args(["health", "--addr", &server.grpc.to_string()])
        .output()
        .unwrap();
    assert!(health.status.success());
}
