//! The AI engine served by `lpworker serve`: ai-runner's HTTP API and the gRPC
//! `Infer` call, with the generated nearest-neighbour 2x ONNX upscaler.

mod common;

use common::ServeProcess;
use image::RgbImage;
use lpworker::proto::worker as pb;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const MODEL: &str = "lpworker/nearest-2x";

fn start(extra: &[&str]) -> ServeProcess {
    let mut args = vec![
        "--ai-models",
        "upscale:lpworker/nearest-2x:true",
        "--models-dir",
        "models",
        "--http-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    ServeProcess::start(&args)
}

fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x ^ y) * 3) as u8])
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    lpworker::ai::media::encode_png(img).unwrap()
}

fn form(image: Vec<u8>) -> Form {
    Form::new()
        .text("prompt", "a sharper picture")
        .text("seed", "7")
        .part(
            "image",
            Part::bytes(image)
                .file_name("in.png")
                .mime_str("image/png")
                .unwrap(),
        )
}

async fn post(server: &ServeProcess, route: &str, form: Form, token: Option<&str>) -> (u16, Value) {
    let url = format!("http://{}/{route}", server.http.expect("http API served"));
    let mut req = reqwest::Client::new().post(url).multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn decode_data_url(url: &str) -> RgbImage {
    use base64::Engine;
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {}", &url[..40.min(url.len())]));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upscale_over_http_matches_ai_runner_and_is_correct() {
    let server = start(&[]);
    let input = test_image(33, 17);
    let (status, body) = post(&server, "upscale", form(png(&input)), None).await;
    assert_eq!(status, 200, "{body}");
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["seed"], 7);
    assert_eq!(images[0]["nsfw"], false);
    let out = decode_data_url(images[0]["url"].as_str().unwrap());
    assert_eq!(
        out,
        image::imageops::resize(&input, 66, 34, image::imageops::FilterType::Nearest)
    );

    // The model can be named explicitly, and a JPEG input works too.
    let mut jpeg = std::io::Cursor::new(Vec::new());
    input.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let (status, body) = post(
        &server,
        "upscale",
        form(jpeg.into_inner()).text("model_id", MODEL),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decode_data_url(body["images"][0]["url"].as_str().unwrap()).dimensions(),
        (66, 34)
    );

    let http = |path: &str| format!("http://{}{path}", server.http.unwrap());
    let health: Value = reqwest::get(http("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"status": "OK"}));
    let info: Value = reqwest::get(http("/hardware/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (info["pipeline"].as_str(), info["model_id"].as_str()),
        (Some("upscale"), Some(MODEL))
    );
    assert!(info["gpu_info"].is_object());
    let version: Value = reqwest::get(http("/version"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["pipeline"], "upscale");
    assert_eq!(
        reqwest::get(http("/text-to-image"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        404,
        "pipelines not loaded have no route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ai_requests_get_ai_runner_errors() {
    let server = start(&[]);
    let good = png(&test_image(8, 8));
    // Missing prompt: FastAPI-style 422 with the field location.
    let no_prompt = Form::new().part("image", Part::bytes(good.clone()).file_name("a.png"));
    let (status, body) = post(&server, "upscale", no_prompt, None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["detail"][0]["loc"],
        serde_json::json!(["body", "prompt"])
    );
    let (status, body) = post(&server, "upscale", Form::new().text("prompt", "x"), None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"][1], "image");
    // Not an image, a truncated image, a GIF: bad requests (ai-runner's
    // upscale lists no 415).
    for (bytes, want) in [
        (b"plain text".to_vec(), 400),
        (good[..good.len() / 2].to_vec(), 400),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec(), 400),
    ] {
        let (status, body) = post(&server, "upscale", form(bytes), None).await;
        assert_eq!(status, want, "{body}");
        assert!(
            body["detail"]["msg"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Oversize: 3000x2000 is above the 2048x2048 input limit, a bad request
    // (ai-runner's upscale lists no 413).
    let (status, body) = post(
        &server,
        "upscale",
        form(png(&RgbImage::new(3000, 2000))),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Unknown model, wrong field types.
    let (status, body) = post(
        &server,
        "upscale",
        form(good.clone()).text("model_id", "nope/none"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"]["msg"]
        .as_str()
        .unwrap()
        .contains("nope/none"));
    let (status, _) = post(
        &server,
        "upscale",
        form(good.clone()).text("safety_check", "maybe"),
        None,
    )
    .await;
    assert_eq!(status, 422);
    // Still serving.
    let (status, _) = post(&server, "upscale", form(good), None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let server = start(&["--ai-auth-token", "tok"]);
    let img = png(&test_image(4, 4));
    let (status, body) = post(&server, "upscale", form(img.clone()), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["detail"]["msg"], "Invalid bearer token.");
    assert_eq!(
        post(&server, "upscale", form(img.clone()), Some("wrong"))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&server, "upscale", form(img), Some("tok")).await.0,
        200
    );
}

/// Credentials are checked on the request's head: a wrong or missing token
/// gets 401 while the 64 MiB body it announces is still unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_refused_before_the_body_is_sent() {
    let server = start(&["--ai-auth-token", "tok"]);
    let url = format!("http://{}/upscale", server.http.unwrap());
    let client = reqwest::Client::new();
    for token in [None, Some("wrong")] {
        // A body that never comes.
        let body = reqwest::Body::wrap_stream(futures::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >());
        let mut req = client
            .post(&url)
            .header("content-type", "multipart/form-data; boundary=x")
            .header("content-length", (64u64 << 20).to_string())
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = tokio::time::timeout(std::time::Duration::from_secs(1), req.send())
            .await
            .unwrap_or_else(|_| panic!("no answer before the body ({token:?})"))
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{token:?}");
    }
}

/// A connection that sends nothing is closed after the header deadline
/// (10 s), while the listener goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(&[]);
    let addr = server.http.unwrap();
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A header begun and never finished.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"POST /upscale HTTP/1.1\r\n")
        .await
        .unwrap();
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, body) = post(&server, "upscale", form(png(&test_image(4, 4))), None).await;
    assert_eq!(status, 200, "{body}");
    for conn in [&mut silent, &mut partial] {
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(15),
            conn.read_to_end(&mut rest),
        )
        .await
        .expect("closed by the server")
        .ok();
    }
    let waited = started.elapsed();
    assert!(
        (std::time::Duration::from_secs(9)..std::time::Duration::from_secs(14)).contains(&waited),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_over_grpc() {
    let server = start(&[]);
    let mut client = pb::worker_client::WorkerClient::connect(server.endpoint())
        .await
        .unwrap();
    let caps = client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.pipelines.len(), 1);
    assert_eq!(
        (
            caps.pipelines[0].pipeline.as_str(),
            caps.pipelines[0].model_id.as_str(),
            caps.pipelines[0].warm
        ),
        ("upscale", MODEL, true)
    );

    let input = test_image(10, 6);
    let request = pb::InferRequest {
        pipeline: "upscale".into(),
        model_id: MODEL.into(),
        params_json: br#"{"prompt": "x", "seed": 3}"#.to_vec(),
        files: [("image".to_string(), png(&input))].into(),
        ..Default::default()
    };
    let r = client.infer(request.clone()).await.unwrap().into_inner();
    assert_eq!((r.units, r.unit_kind.as_str()), (20 * 12, "pixels"));
    let body: Value = serde_json::from_slice(&r.result_json).unwrap();
    let name = body["images"][0]["url"].as_str().unwrap();
    let out = image::load_from_memory(&r.files[name]).unwrap().to_rgb8();
    assert_eq!(
        out,
        image::imageops::resize(&input, 20, 12, image::imageops::FilterType::Nearest)
    );

    let unknown = pb::InferRequest {
        pipeline: "text-to-video".into(),
        ..request.clone()
    };
    assert_eq!(
        client.infer(unknown).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let not_loaded = pb::InferRequest {
        model_id: "other/model".into(),
        ..request.clone()
    };
    assert_eq!(
        client.infer(not_loaded).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let bad_image = pb::InferRequest {
        files: [("image".to_string(), b"junk".to_vec())].into(),
        ..request
    };
    assert_eq!(
        client.infer(bad_image).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

/// ai-runner's OpenAPI document (a copy, with its upstream commit noted).
fn openapi() -> serde_json::Value {
    let text = include_str!("ai-runner-openapi.yaml");
    serde_yaml::from_str(text).expect("OpenAPI YAML")
}

/// Validates `body` against the schema ai-runner declares for `path`,
/// `method` and `status` (HTTPError for error statuses it does not list).
fn assert_conforms(
    api: &serde_json::Value,
    path: &str,
    method: &str,
    status: u16,
    body: &serde_json::Value,
) {
    let responses = &api["paths"][path][method]["responses"];
    let declared = &responses[status.to_string()]["content"]["application/json"]["schema"];
    let schema_ref = if declared.is_null() {
        assert!(
            status >= 400,
            "{method} {path}: status {status} is not in ai-runner's API"
        );
        serde_json::json!({"$ref": "#/components/schemas/HTTPError"})
    } else {
        declared.clone()
    };
    let mut schema = schema_ref;
    schema["components"] = api["components"].clone();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?}\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_conform_to_ai_runner_openapi() {
    let api = openapi();
    assert_eq!(api["info"]["title"], "Livepeer AI Runner");
    // The check can fail: a Media without its seed is not an ImageResponse.
    let bad = serde_json::json!({"images": [{"url": "x", "nsfw": false}]});
    assert!(
        std::panic::catch_unwind(|| assert_conforms(&api, "/upscale", "post", 200, &bad)).is_err()
    );
    let server = start(&["--ai-auth-token", "tok"]);
    let img = png(&test_image(6, 6));
    let cases: Vec<(Form, Option<&str>, u16)> = vec![
        (form(img.clone()), Some("tok"), 200),
        (form(img.clone()), None, 401),
        (Form::new().text("prompt", "x"), Some("tok"), 422),
        (form(b"junk".to_vec()), Some("tok"), 400),
        (form(png(&RgbImage::new(3000, 2000))), Some("tok"), 400),
        (
            form(b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec()),
            Some("tok"),
            400,
        ),
        (
            form(img.clone()).text("model_id", "other/model"),
            Some("tok"),
            400,
        ),
    ];
    for (form, token, want) in cases {
        let (status, body) = post(&server, "upscale", form, token).await;
        assert_eq!(status, want, "{body}");
        assert_conforms(&api, "/upscale", "post", status, &body);
    }
    let base = format!("http://{}", server.http.unwrap());
    for path in ["/health", "/hardware/info", "/version"] {
        let body: Value = reqwest::get(format!("{base}{path}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_conforms(&api, path, "get", 200, &body);
    }
}

/// A body that is not a multipart form on a form route is FastAPI's 422, the
/// file field missing, whatever the content type or without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_route_answers_422_to_a_body_of_another_type() {
    let api = openapi();
    let server = start(&[]);
    let url = format!("http://{}/upscale", server.http.unwrap());
    let client = reqwest::Client::new();
    let requests = [
        client
            .post(&url)
            .json(&serde_json::json!({"prompt": "x", "image": "x"})),
        client
            .post(&url)
            .header("content-type", "text/plain")
            .body("prompt=x"),
        client.post(&url).body("prompt=x"),
    ];
    for request in requests {
        let resp = request.send().await.unwrap();
        let content_type = format!("{:?}", resp.headers().get("content-type"));
        assert_eq!(resp.status(), 422);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["detail"][0],
            serde_json::json!({"type": "missing", "loc": ["body", "image"], "msg": "Field required"}),
            "{content_type}"
        );
        assert_conforms(&api, "/upscale", "post", 422, &body);
    }
}

/// A body announced over the size limit is refused with 413 before it is
/// sent: the request's head alone gets the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = openapi();
    let server = start(&[]);
    let addr = server.http.unwrap();
    let length = lpworker::ai_runner_api::DEFAULT_MAX_BODY + 1;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /upscale HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=x\r\ncontent-length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["detail"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("limit")),
        "{body}"
    );
    assert_conforms(&api, "/upscale", "post", 413, &body);
}

/// Reads a `text/event-stream` body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Several pipelines in one process: the ONNX upscaler and the Candle LLM,
/// each answering on its own route; the LLM's replies in ai-runner's shapes,
/// plain and as server-sent events, and the two agree under greedy decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_chat_completions_plain_and_streamed() {
    let api = openapi();
    let server = ServeProcess::start(&[
        "--ai-models",
        "upscale:lpworker/nearest-2x:true,llm:lpworker/tiny-llama:true",
        "--models-dir",
        "models",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let url = format!("http://{}/llm", server.http.unwrap());
    let client = reqwest::Client::new();
    let chat = serde_json::json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "model": "lpworker/tiny-llama", "max_tokens": 24, "temperature": 0,
    });

    let resp = client.post(&url).json(&chat).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_conforms(&api, "/llm", "post", 200, &body);
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string("models/lpworker/tiny-llama/golden.json").unwrap(),
    )
    .unwrap();
    let case = &golden["cases"][0];
    assert_eq!(body["choices"][0]["message"]["content"], case["text"]);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["model"], "lpworker/tiny-llama");
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        case["prompt_ids"].as_array().unwrap().len()
    );
    assert_eq!(body["usage"]["completion_tokens"], 24);

    let mut streamed = chat.clone();
    streamed["stream"] = true.into();
    let resp = client.post(&url).json(&streamed).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 2, "several deltas then the final chunk");
    for c in &chunks {
        assert_conforms(&api, "/llm", "post", 200, c);
    }
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, case["text"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"], body["usage"]);

    // Bad requests get their status before any event is sent, streamed or not.
    for (bad, status) in [
        (serde_json::json!({"messages": [], "stream": true}), 400),
        (serde_json::json!({"stream": true}), 422),
        (
            serde_json::json!({"messages": [{"role": "user", "content": "x"}], "model": "other/model", "stream": true}),
            400,
        ),
        (
            serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": 9}),
            400,
        ),
    ] {
        let resp = client.post(&url).json(&bad).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_conforms(&api, "/llm", "post", status, &body);
    }
    // A multipart body is not what /llm takes: FastAPI's 422 at the body.
    let resp = client
        .post(&url)
        .multipart(Form::new().text("messages", "[]"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], serde_json::json!(["body"]));
    assert_conforms(&api, "/llm", "post", 422, &body);

    // A client that leaves mid-stream frees the model for the next request.
    let mut long = streamed.clone();
    long["max_tokens"] = 400.into();
    let resp = client.post(&url).json(&long).send().await.unwrap();
    drop(resp);
    let mut ok = false;
    for _ in 0..50 {
        let resp = client.post(&url).json(&chat).send().await.unwrap();
        if resp.status() == 200 {
            ok = true;
            break;
        }
        // ai-runner's API has no status for a busy model: a server error.
        assert_eq!(
            resp.status(),
            500,
            "busy at most, while the abandoned stream stops"
        );
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"]["msg"]
                .as_str()
                .is_some_and(|m| m.contains("at capacity")),
            "{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the abandoned stream released its slot");

    // The upscaler still answers beside it.
    let (status, _) = post(&server, "upscale", form(png(&test_image(4, 4))), None).await;
    assert_eq!(status, 200);
}

/// audio-to-text over HTTP (multipart, as ai-runner takes it) and gRPC: the
/// transcript of the generated clip is transformers' (golden.json), and bad
/// uploads get ai-runner's statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_to_text_over_http_and_grpc() {
    let api = openapi();
    let server = ServeProcess::start(&[
        "--ai-models",
        "audio-to-text:lpworker/tiny-whisper:true",
        "--models-dir",
        "models",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let wav = std::fs::read("models/lpworker/tiny-whisper/test.wav").unwrap();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string("models/lpworker/tiny-whisper/golden.json").unwrap(),
    )
    .unwrap();
    let audio_form = |data: Vec<u8>, name: &str| {
        Form::new().part(
            "audio",
            Part::bytes(data)
                .file_name(name.to_string())
                .mime_str("audio/wav")
                .unwrap(),
        )
    };
    let (status, body) = post(
        &server,
        "audio-to-text",
        audio_form(wav.clone(), "clip.wav"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(&api, "/audio-to-text", "post", 200, &body);
    // The server generates up to 128 tokens per window where the reference
    // stopped at 48: the transcript starts with the reference's chunks.
    let chunks = body["chunks"].as_array().unwrap();
    let reference = golden["timestamps"]["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 2);
    assert_eq!(chunks[0], reference[0]);
    assert_eq!(chunks[1], reference[1]);
    assert!(body["text"].as_str().unwrap().starts_with(&format!(
        "{}{}",
        reference[0]["text"].as_str().unwrap(),
        reference[1]["text"].as_str().unwrap()
    )));

    // The same clip as MP3 (any format FFmpeg reads) transcribes too.
    let mp3 = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            "models/lpworker/tiny-whisper/test.wav",
            "-f",
            "mp3",
            "-",
        ])
        .output()
        .unwrap();
    assert!(mp3.status.success());
    let (status, body) = post(
        &server,
        "audio-to-text",
        audio_form(mp3.stdout, "clip.mp3").text("return_timestamps", "false"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunks"], serde_json::json!([]));
    assert_conforms(&api, "/audio-to-text", "post", 200, &body);

    for (form, status) in [
        (audio_form(b"definitely not audio".to_vec(), "x.wav"), 415),
        (Form::new().text("model_id", ""), 422),
        (
            audio_form(wav.clone(), "clip.wav").text("return_timestamps", "word"),
            400,
        ),
        (
            audio_form(wav.clone(), "clip.wav").text("model_id", "openai/whisper-large-v3"),
            400,
        ),
    ] {
        let (got, body) = post(&server, "audio-to-text", form, None).await;
        assert_eq!(got, status, "{body}");
        assert_conforms(&api, "/audio-to-text", "post", got, &body);
    }

    // gRPC Infer: the same pipeline, with the billing units.
    let mut client = pb::worker_client::WorkerClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let reply = client
        .infer(pb::InferRequest {
            pipeline: "audio-to-text".into(),
            files: [("audio".to_string(), wav)].into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.unit_kind, "ms");
    assert_eq!(reply.units, 4000);
    let result: Value = serde_json::from_slice(&reply.result_json).unwrap();
    assert_eq!(result["chunks"][0], reference[0]);
}

/// text-to-image over HTTP with JSON bodies, as ai-runner takes them: PNG
/// data URLs of the asked size, seeds per image, and ai-runner's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_to_image_over_http() {
    let api = openapi();
    let server = ServeProcess::start(&[
        "--ai-models",
        "text-to-image:lpworker/tiny-sd:true",
        "--models-dir",
        "models",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let url = format!("http://{}/text-to-image", server.http.unwrap());
    let client = reqwest::Client::new();
    let resp = client
        .post(&url)
        .json(
            &serde_json::json!({"prompt": "a quick brown fox", "height": 64, "width": 96,
            "num_inference_steps": 2, "seed": 11, "num_images_per_prompt": 2}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_conforms(&api, "/text-to-image", "post", 200, &body);
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[1]["seed"], 12);
    let img = decode_data_url(images[0]["url"].as_str().unwrap());
    assert_eq!(img.dimensions(), (96, 64));
    // Not a flat picture: the model drew something.
    let (min, max) = img
        .pixels()
        .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p[0]), hi.max(p[0])));
    assert!(max - min > 20, "{min}..{max}");

    for (body, status) in [
        (serde_json::json!({"prompt": ""}), 400),
        (serde_json::json!({"height": 64}), 422),
        (
            serde_json::json!({"prompt": "x", "width": 100, "height": 64}),
            400,
        ),
        (
            serde_json::json!({"prompt": "x", "model_id": "stabilityai/sd-turbo"}),
            400,
        ),
    ] {
        let resp = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let body: Value = resp.json().await.unwrap();
        assert_conforms(&api, "/text-to-image", "post", status, &body);
    }
}

/// Black text on white, rendered with DejaVu Sans (fonts-dejavu-core).
fn render_text(text: &str, size: f32, width: u32, height: u32) -> RgbImage {
    use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
    let data = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").unwrap();
    let font = FontRef::try_from_slice(&data).unwrap();
    let scaled = font.as_scaled(PxScale::from(size));
    let mut image = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let (mut x, baseline) = (size, size + scaled.ascent());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        let glyph = id.with_scale_and_position(size, ab_glyph::point(x, baseline));
        x += scaled.h_advance(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (b.min.x as u32 + gx, b.min.y as u32 + gy);
                if px < width && py < height {
                    let ink = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                    let v = image.get_pixel(px, py)[0].min(ink);
                    image.put_pixel(px, py, image::Rgb([v, v, v]));
                }
            });
        }
    }
    image
}

/// ocr (lpworker's own route) with the RapidOCR models a PyPI package ships:
/// a served worker reads text rendered into a generated image, answering in
/// the shape of ai-runner's image-to-text (ImageToTextResponse, its errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocr_reads_rendered_text() {
    let api = openapi();
    let dir = common::tempdir();
    let models = common::models_dir_with_ocr(dir.path());
    let server = ServeProcess::start(&[
        "--ai-models",
        "ocr:rapidocr/PP-OCRv4:true",
        "--models-dir",
        models.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let image = render_text("LIVEPEER 2026", 64.0, 720, 200);
    let rendered = Form::new().part(
        "image",
        Part::bytes(png(&image))
            .file_name("t.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let (status, body) = post(&server, "ocr", rendered, None).await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(&api, "/image-to-text", "post", 200, &body);
    assert_eq!(body["text"], "LIVEPEER 2026");
    let (status, body) = post(&server, "ocr", form(b"junk".to_vec()), None).await;
    assert_eq!(status, 400, "{body}");
    assert_conforms(&api, "/image-to-text", "post", 400, &body);
}

/// image-to-text as ai-runner means it, BLIP captioning, with the generated
/// tiny BLIP: the caption transformers wrote for its test image, with and
/// without a prompt, and ai-runner's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_to_text_captions_with_blip() {
    let api = openapi();
    let server = ServeProcess::start(&[
        "--ai-models",
        "image-to-text:lpworker/tiny-blip:true",
        "--models-dir",
        "models",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string("models/lpworker/tiny-blip/golden.json").unwrap(),
    )
    .unwrap();
    let test_png = std::fs::read("models/lpworker/tiny-blip/test.png").unwrap();
    for case in ["unconditional", "prompted"] {
        let case = &golden["cases"][case];
        let captioned = Form::new()
            .text("prompt", case["prompt"].as_str().unwrap().to_string())
            .text("model_id", "lpworker/tiny-blip")
            .part(
                "image",
                Part::bytes(test_png.clone())
                    .file_name("test.png")
                    .mime_str("image/png")
                    .unwrap(),
            );
        let (status, body) = post(&server, "image-to-text", captioned, None).await;
        assert_eq!(status, 200, "{body}");
        assert_conforms(&api, "/image-to-text", "post", 200, &body);
        assert_eq!(body, serde_json::json!({"text": case["text"]}));
    }
    let (status, body) = post(&server, "image-to-text", form(b"junk".to_vec()), None).await;
    assert_eq!(status, 400, "{body}");
    assert_conforms(&api, "/image-to-text", "post", 400, &body);
    let no_image = Form::new().text("prompt", "a picture of");
    let (status, body) = post(&server, "image-to-text", no_image, None).await;
    assert_eq!(status, 422, "{body}");
    assert_conforms(&api, "/image-to-text", "post", 422, &body);
}
