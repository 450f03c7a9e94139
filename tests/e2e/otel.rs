//! OpenTelemetry GenAI export against a test collector (an OTLP/HTTP JSON receiver on port 0 in
//! this process): one span per call with the GenAI attributes, token-usage metrics that add up to
//! the store's totals, and, with the collector down, calls answered and recorded as usual.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::common::*;
use crate::gateway_support::*;
use axum::extract::State;
use axum::routing::post as route_post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the collector received: every span, and the newest metrics export.
#[derive(Default)]
struct Received {
    spans: Vec<Value>,
    metrics: Option<Value>,
    trace_exports: usize,
}

type Shared = Arc<Mutex<Received>>;

/// An OTLP/HTTP JSON receiver on port 0; returns its base URL and what it received.
async fn collector() -> (String, Shared) {
    async fn traces(State(seen): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
        let mut seen = seen.lock().unwrap();
        seen.trace_exports += 1;
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                seen.spans
                    .extend(scope["spans"].as_array().into_iter().flatten().cloned());
            }
        }
        Json(json!({}))
    }
    async fn metrics(State(seen): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
        seen.lock().unwrap().metrics = Some(body);
        Json(json!({}))
    }
    let seen = Shared::default();
    let app = Router::new()
        .route("/v1/traces", route_post(traces))
        .route("/v1/metrics", route_post(metrics))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// `otel:` section sending to `endpoint` every 100 ms.
fn otel_yaml(endpoint: &str) -> String {
    format!("otel:\n  endpoint: {endpoint}\n  export_interval_ms: 100\n  headers: {{x-collector-key: test}}\n")
}

/// An attribute of a span or data point as a plain JSON value (OTLP JSON wraps each value in
/// `stringValue`, `intValue` (a string or a number), `boolValue`, `doubleValue`).
fn attributes(item: &Value) -> BTreeMap<String, Value> {
    item["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (kv["key"].as_str().unwrap().to_owned(), plain(&kv["value"])))
        .collect()
}

/// An OTLP JSON `AnyValue` as a plain JSON value (an `arrayValue` as an array).
fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        s.clone()
    } else if let Some(i) = v.get("intValue") {
        json!(i
            .as_i64()
            .or_else(|| i.as_str().and_then(|s| s.parse().ok()))
            .unwrap())
    } else if let Some(b) = v.get("boolValue") {
        b.clone()
    } else if let Some(array) = v.get("arrayValue") {
        Value::Array(
            array["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(plain)
                .collect(),
        )
    } else {
        v.clone()
    }
}

/// The data points of the histogram `name` in a metrics export.
fn points(export: &Value, name: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for resource in export["resourceMetrics"].as_array().into_iter().flatten() {
        for scope in resource["scopeMetrics"].as_array().into_iter().flatten() {
            for metric in scope["metrics"].as_array().into_iter().flatten() {
                if metric["name"] == name {
                    found.extend(
                        metric["histogram"]["dataPoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
        }
    }
    found
}

/// The sum of the `gen_ai.client.token.usage` points whose token type is `kind`.
fn token_sum(export: &Value, kind: &str) -> u64 {
    points(export, "gen_ai.client.token.usage")
        .iter()
        .filter(|p| attributes(p)["gen_ai.token.type"] == kind)
        .map(|p| p["sum"].as_f64().unwrap() as u64)
        .sum()
}

fn u(row: &Value, field: &str) -> u64 {
    row[field].as_u64().unwrap()
}

/// Makes one call of each kind (chat, chat stream, messages, messages stream, responses,
/// embeddings, an upstream 500) and returns how many.
async fn make_calls(server: &Server, key: &str) -> u64 {
    let mut made = 0;
    for proto in BOTH {
        for stream in [false, true] {
            let body = proto.body("gpt-4o-mini", "tell the collector", 6, stream);
            let r = post(&server.url, proto.path(), proto.auth(key), &body).await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            made += 1;
        }
    }
    let r = call(
        &server.url,
        "/v1/responses",
        key,
        &json!({"model": "gpt-4o", "input": "the responses api", "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        &server.url,
        "/v1/embeddings",
        key,
        &json!({"model": "text-embedding-3-small", "input": "embed me"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        &server.url,
        "/v1/chat/completions",
        key,
        &json!({"model": "mock-error-500", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 500);
    made + 3
}

#[tokio::test(flavor = "multi_thread")]
async fn a_span_per_call_with_genai_attributes_and_token_metrics_matching_the_store() {
    let mock = Mock::start();
    let (endpoint, seen) = collector().await;
    let dir = tempdir();
    let yaml = format!("{}{}", providers_yaml(&mock.url), otel_yaml(&endpoint));
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("otel").await;

    let mut made = make_calls(&server, &key).await;
    // A stream the provider breaks off: recorded (502) with the tokens it had used.
    let body = Proto::OpenAi.body("mock-drop-mid-stream", "cut me short", 20, true);
    let r = post(
        &server.url,
        "/v1/chat/completions",
        Auth::Bearer(&key),
        &body,
    )
    .await;
    assert_eq!(r.status(), 200, "the stream had started");
    let _ = r.bytes().await;
    made += 1;
    server.wait_for_calls(made).await;
    let rows = server.logs("limit=100").await;
    assert_eq!(rows.len() as u64, made);

    let spans = wait_until("one span per call", || {
        let seen = seen.clone();
        async move {
            let spans = seen.lock().unwrap().spans.clone();
            (spans.len() as u64 >= made).then_some(spans)
        }
    })
    .await;
    assert_eq!(spans.len() as u64, made, "exactly one span per call");

    // Each log row has its span: same model, endpoint and token figures.
    for row in &rows {
        let span = spans
            .iter()
            .find(|s| {
                let a = attributes(s);
                a["token_console.endpoint"] == row["endpoint"]
                    && a["gen_ai.request.model"] == row["model"]
                    && a["token_console.stream"] == row["stream"]
            })
            .unwrap_or_else(|| panic!("no span for {row}"));
        let a = attributes(span);
        let model = row["model"].as_str().unwrap();
        let operation = a["gen_ai.operation.name"].as_str().unwrap();
        assert_eq!(span["name"], format!("{operation} {model}"));
        assert_eq!(span["kind"], json!(3), "a client span");
        assert_eq!(
            a["gen_ai.usage.input_tokens"], row["prompt_tokens"],
            "{row}"
        );
        assert_eq!(a["gen_ai.usage.output_tokens"], row["completion_tokens"]);
        assert_eq!(
            a["gen_ai.usage.cache_read.input_tokens"],
            row["cache_read_tokens"]
        );
        assert_eq!(
            a["gen_ai.usage.cache_creation.input_tokens"],
            row["cache_creation_tokens"]
        );
        assert_eq!(
            a["gen_ai.usage.reasoning.output_tokens"],
            row["reasoning_tokens"]
        );
        assert_eq!(a["http.response.status_code"], row["status"]);
        assert_eq!(a["token_console.key.name"], "otel");
        assert_eq!(a["server.address"], "127.0.0.1");
        let mock_port: i64 = mock.url.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(a["server.port"], json!(mock_port));
        let (provider, protocol) = if row["endpoint"] == "/v1/messages" {
            ("mock-anthropic", "anthropic")
        } else {
            ("mock-openai", "openai")
        };
        assert_eq!(a["gen_ai.provider.name"], protocol, "{row}");
        assert_eq!(a["token_console.provider"], provider);
        let expected_operation = match row["endpoint"].as_str().unwrap() {
            "/v1/embeddings" => "embeddings",
            _ => "chat",
        };
        assert_eq!(operation, expected_operation);
        if row["status"] != 200 {
            assert_eq!(a["error.type"], row["status"].to_string());
            assert_eq!(span["status"]["code"], json!(2), "an error status");
        } else {
            assert!(!a.contains_key("error.type"), "{a:?}");
        }
    }

    // The token-usage histograms add up to the store's totals (cumulative: the newest export).
    let prompt: u64 = rows.iter().map(|r| u(r, "prompt_tokens")).sum();
    let completion: u64 = rows.iter().map(|r| u(r, "completion_tokens")).sum();
    let total: u64 = rows.iter().map(|r| u(r, "tokens")).sum();
    assert!(prompt > 0 && completion > 0);
    assert!(
        rows.iter()
            .any(|r| r["status"] == 502 && u(r, "tokens") > 0),
        "the broken stream counts its tokens: {rows:#?}"
    );
    let export = wait_until("token metrics matching the store", || {
        let seen = seen.clone();
        async move {
            let export = seen.lock().unwrap().metrics.clone()?;
            (token_sum(&export, "input") == prompt && token_sum(&export, "output") == completion)
                .then_some(export)
        }
    })
    .await;
    assert_eq!(
        token_sum(&export, "input") + token_sum(&export, "output"),
        total
    );
    let durations = points(&export, "gen_ai.client.operation.duration");
    let counted: u64 = durations
        .iter()
        .map(|p| {
            p["count"]
                .as_u64()
                .or_else(|| p["count"].as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        })
        .sum();
    assert_eq!(counted, made, "one duration per call");
    assert!(durations
        .iter()
        .any(|p| attributes(p).get("error.type") == Some(&json!("500"))));
    // Spans leave in batches, not one request per call.
    assert!(seen.lock().unwrap().trace_exports < made as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_collector_down_calls_are_answered_and_recorded() {
    let mock = Mock::start();
    // A collector that is down: it accepts each connection and drops it unanswered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let dir = tempdir();
    let yaml = format!("{}{}", providers_yaml(&mock.url), otel_yaml(&down));
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("no-collector").await;

    let mut made = 0;
    for round in 1..=3 {
        made += make_calls(&server, &key).await;
        // The gateway tried to export (and failed) before the next round of calls.
        wait_until("failed export attempts", || {
            let attempts = attempts.clone();
            async move { (attempts.load(std::sync::atomic::Ordering::SeqCst) >= round).then_some(()) }
        })
        .await;
    }
    let stats = server.wait_for_calls(made).await;
    assert_eq!(stats["api_call_count"].as_u64().unwrap(), made);
    let rows = server.logs("limit=100").await;
    assert_eq!(rows.len() as u64, made);
    let answered = rows.iter().filter(|r| r["status"] == 200).count() as u64;
    assert_eq!(answered, made - 3, "every call but the three upstream 500s");
    assert!(rows
        .iter()
        .filter(|r| r["status"] == 200 && r["endpoint"] != "/v1/embeddings")
        .all(|r| u(r, "completion_tokens") > 0 && r["estimated"] == false));
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_still_queued_are_sent_when_the_gateway_stops() {
    let mock = Mock::start();
    let (endpoint, seen) = collector().await;
    let dir = tempdir();
    // Batches every 10 minutes: only the shutdown can send this span.
    let yaml = format!(
        "{}otel:\n  endpoint: {endpoint}\n  export_interval_ms: 600000\n",
        providers_yaml(&mock.url)
    );
    let mut server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("shutdown").await;
    let body = Proto::OpenAi.body("gpt-4o-mini", "flush me", 3, false);
    let r = call(&server.url, "/v1/chat/completions", &key, &body).await;
    assert_eq!(r.status(), 200);
    server.wait_for_calls(1).await;
    assert!(seen.lock().unwrap().spans.is_empty());

    assert!(server.terminate().success());
    let spans = seen.lock().unwrap().spans.clone();
    assert_eq!(spans.len(), 1, "the queued span was sent at shutdown");
    assert_eq!(spans[0]["name"], "chat gpt-4o-mini");
    let export = seen
        .lock()
        .unwrap()
        .metrics
        .clone()
        .expect("metrics sent at shutdown");
    assert_eq!(token_sum(&export, "output"), 3);
}

/// The model and finish reasons an answer (a JSON body, or the JSON data of each SSE event) told
/// the client, read the way a client would: the first model named, and every finish reason.
fn answered(documents: &[Value]) -> (Value, Value) {
    let mut model = Value::Null;
    let mut reasons = Vec::new();
    for d in documents {
        for m in [&d["model"], &d["message"]["model"], &d["response"]["model"]] {
            if model.is_null() && m.as_str().is_some_and(|m| !m.is_empty()) {
                model = m.clone();
            }
        }
        for choice in d["choices"].as_array().into_iter().flatten() {
            if choice["finish_reason"].is_string() {
                reasons.push(choice["finish_reason"].clone());
            }
        }
        for r in [&d["stop_reason"], &d["delta"]["stop_reason"]] {
            if r.is_string() {
                reasons.push(r.clone());
            }
        }
        // The Responses API: the reason it is incomplete, else its final status.
        let response = if d["object"] == "response" {
            d
        } else {
            &d["response"]
        };
        if response["status"].is_string() && response["status"] != "in_progress" {
            let reason = &response["incomplete_details"]["reason"];
            reasons.push(if reason.is_string() {
                reason.clone()
            } else {
                response["status"].clone()
            });
        }
    }
    (model, Value::Array(reasons))
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_carry_the_response_model_and_finish_reasons_the_provider_answered() {
    let mock = Mock::start();
    let (endpoint, seen) = collector().await;
    let dir = tempdir();
    let yaml = format!("{}{}", providers_yaml(&mock.url), otel_yaml(&endpoint));
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("finish").await;

    // (endpoint, stream, what the client was answered); a tight token limit for the non-stream
    // calls, so they stop for their length rather than at the answer's end.
    let mut answers = Vec::new();
    for proto in BOTH {
        for stream in [false, true] {
            let limit = if stream { 400 } else { 2 };
            let body = proto.body("gpt-4o-mini", "why did you stop", limit, stream);
            let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            let documents: Vec<Value> = if stream {
                sse_events(&text).iter().map(SseEvent::json).collect()
            } else {
                vec![serde_json::from_str(&text).unwrap()]
            };
            answers.push((proto.path(), stream, answered(&documents)));
        }
    }
    let r = call(
        &server.url,
        "/v1/responses",
        &key,
        &json!({"model": "gpt-4o", "input": "the responses api", "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    answers.push(("/v1/responses", false, answered(&[body])));
    let made = answers.len() as u64;
    server.wait_for_calls(made).await;

    let spans = wait_until("one span per call", || {
        let seen = seen.clone();
        async move {
            let spans = seen.lock().unwrap().spans.clone();
            (spans.len() as u64 >= made).then_some(spans)
        }
    })
    .await;
    for (path, stream, (model, reasons)) in &answers {
        let a = spans
            .iter()
            .map(attributes)
            .find(|a| a["token_console.endpoint"] == *path && a["token_console.stream"] == *stream)
            .unwrap_or_else(|| panic!("no span for {path} (stream: {stream})"));
        assert!(
            model.is_string(),
            "the mock named its model: {path} {stream}"
        );
        assert!(
            !reasons.as_array().unwrap().is_empty(),
            "the mock said why it stopped: {path} {stream}"
        );
        assert_eq!(
            a["gen_ai.response.model"], *model,
            "{path} (stream: {stream})"
        );
        assert_eq!(
            a["gen_ai.response.finish_reasons"], *reasons,
            "{path} (stream: {stream})"
        );
    }
    // Both kinds of ending were seen: at the answer's end and at the token limit.
    let all: Vec<&Value> = answers
        .iter()
        .flat_map(|(_, _, (_, r))| r.as_array().unwrap())
        .collect();
    for reason in ["stop", "length", "end_turn", "max_tokens"] {
        assert!(all.iter().any(|r| *r == reason), "{reason} in {all:?}");
    }
}
