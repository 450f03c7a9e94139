//! The attacks of issue 13 against the real binary: DNS rebinding on the console (HTTP/1.1 and
//! HTTP/2), connections that never speak, admin lock-out, headers the client should not choose,
//! proxies in disguise, live-log stream floods, cacheable console answers, provider URLs in
//! errors, and the overhead header on answers the gateway makes itself.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::gateway_support::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-for-security-tests-0123";

/// The server's socket address, from its gateway URL.
fn addr_of(server: &Server) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway URL is http://IP:PORT")
}

/// A client that resolves the given names to the server (as a rebinding DNS answer would).
fn client(server: &Server, names: &[&str], http2: bool) -> reqwest::Client {
    let addr = addr_of(server);
    let mut builder = reqwest::Client::builder().no_proxy();
    for name in names {
        builder = builder.resolve(name, addr);
    }
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    builder.build().unwrap()
}

/// A request's status, headers and body text.
async fn answer(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Sends raw bytes on a new connection and returns everything the server answers until it closes.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

struct Case {
    what: &'static str,
    host: &'static str,
    origin: Option<String>,
    fetch_site: Option<&'static str>,
    served: bool,
}

/// Without an admin key, only requests addressed to a loopback name, the configured host or an
/// allowed host are served, whatever `Origin` and `Sec-Fetch-Site` say; over HTTP/1.1 (`Host`)
/// and HTTP/2 (`:authority`), for key creation, the key list, the page and `/metrics`.
#[tokio::test]
async fn without_an_admin_key_only_requests_addressed_to_this_machine_are_served() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "console: {allowed_hosts: [tc.internal]}\n");
    let port = addr_of(&server).port();
    let names = [
        "attacker.example",
        "localhost",
        "app.localhost",
        "tc.internal",
        "localhost.attacker.example",
    ];
    let origin = |host: &str| Some(format!("http://{host}:{port}"));
    let cases = vec![
        Case {
            what: "the issue's rebinding request",
            host: "attacker.example",
            origin: origin("attacker.example"),
            fetch_site: Some("same-origin"),
            served: false,
        },
        Case {
            what: "a foreign host without Origin",
            host: "attacker.example",
            origin: None,
            fetch_site: None,
            served: false,
        },
        Case {
            what: "a name that only starts with localhost",
            host: "localhost.attacker.example",
            origin: None,
            fetch_site: None,
            served: false,
        },
        Case {
            what: "a loopback address with a foreign Origin",
            host: "127.0.0.1",
            origin: origin("attacker.example"),
            fetch_site: None,
            served: false,
        },
        Case {
            what: "a null Origin",
            host: "127.0.0.1",
            origin: Some("null".into()),
            fetch_site: None,
            served: false,
        },
        Case {
            what: "a cross-site fetch",
            host: "localhost",
            origin: None,
            fetch_site: Some("cross-site"),
            served: false,
        },
        Case {
            what: "localhost",
            host: "localhost",
            origin: origin("localhost"),
            fetch_site: Some("same-origin"),
            served: true,
        },
        Case {
            what: "127.0.0.1 from its own page",
            host: "127.0.0.1",
            origin: origin("127.0.0.1"),
            fetch_site: Some("same-origin"),
            served: true,
        },
        Case {
            what: "a *.localhost name",
            host: "app.localhost",
            origin: None,
            fetch_site: None,
            served: true,
        },
        Case {
            what: "a name from console.allowed_hosts",
            host: "tc.internal",
            origin: origin("tc.internal"),
            fetch_site: None,
            served: true,
        },
    ];
    let mut created = 0;
    for http2 in [false, true] {
        let http = client(&server, &names, http2);
        let probe = http
            .get(format!("http://localhost:{port}/healthz"))
            .send()
            .await
            .unwrap();
        let version = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(probe.version(), version);
        for (n, case) in cases.iter().enumerate() {
            let base = format!("http://{}:{port}", case.host);
            let with = |mut request: reqwest::RequestBuilder| {
                if let Some(origin) = &case.origin {
                    request = request.header("origin", origin);
                }
                if let Some(site) = case.fetch_site {
                    request = request.header("sec-fetch-site", site);
                }
                request
            };
            let label = format!("{} (HTTP/{})", case.what, if http2 { "2" } else { "1.1" });
            let (status, headers, body) = answer(with(
                http.post(format!("{base}/api/console/keys"))
                    .json(&json!({"name": format!("k{http2}{n}")})),
            ))
            .await;
            let _ = headers;
            if case.served {
                assert_eq!(status, 200, "{label}: POST /keys: {body}");
                created += 1;
            } else {
                assert_eq!(status, 403, "{label}: POST /keys: {body}");
                assert!(
                    !body.contains("sk-tc-"),
                    "{label}: no key value given away: {body}"
                );
                assert!(
                    body.contains("localhost") && body.contains("CONSOLE_ADMIN_KEY"),
                    "{label}: the refusal says what to do: {body}"
                );
            }
            for path in ["/api/console/keys", "/console/", "/metrics"] {
                let (status, _, body) = answer(with(http.get(format!("{base}{path}")))).await;
                let want = if case.served { 200 } else { 403 };
                assert_eq!(status, want, "{label}: GET {path}: {body}");
            }
        }
    }
    assert_eq!(created, 8);
    let keys = server.data("/api/console/keys").await;
    assert_eq!(
        keys.as_array().unwrap().len(),
        created,
        "refused requests created nothing"
    );

    // HTTP/1.1 with a spoofed Host header to 127.0.0.1, a request naming no host at all, and an
    // absolute-form target naming another host than its Host header.
    let http = client(&server, &[], false);
    let (status, _, body) = answer(
        http.post(format!("{}/api/console/keys", server.url))
            .header("host", "attacker.example")
            .header("origin", "http://attacker.example")
            .header("sec-fetch-site", "same-origin")
            .json(&json!({"name": "spoofed"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let addr = addr_of(&server);
    for raw in [
        "GET /api/console/keys HTTP/1.0\r\n\r\n",
        "GET /api/console/keys HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET http://attacker.example/api/console/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ] {
        let got = raw_exchange(addr, raw.as_bytes());
        let status = got.split_whitespace().nth(1);
        assert_eq!(status, Some("403"), "{raw:?}: {got}");
    }
}

/// With an admin key the address is not checked (the key is), but a state-changing call from a
/// foreign page is refused even with the right key.
#[tokio::test]
async fn with_an_admin_key_foreign_origins_cannot_change_anything() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &format!("console: {{admin_key: {ADMIN}}}\n"));
    let http = reqwest::Client::new();
    let keys = format!("{}/api/console/keys", server.url);
    let (status, _, body) = answer(
        http.post(&keys)
            .bearer_auth(ADMIN)
            .header("origin", "http://attacker.example")
            .json(&json!({"name": "csrf"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("sk-tc-"), "{body}");
    let (status, _, body) = answer(
        http.post(&keys)
            .bearer_auth(ADMIN)
            .header("origin", &server.url)
            .json(&json!({"name": "own-page"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = answer(http.get(&keys).bearer_auth(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
}

/// Many wrong admin keys from one address (every client behind nginx is 127.0.0.1) get 429, but
/// the right key keeps working, on the API and on `/metrics`.
#[tokio::test]
async fn wrong_admin_keys_never_lock_the_admin_out() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &format!("console: {{admin_key: {ADMIN}}}\n"));
    let http = reqwest::Client::new();
    let stats = format!("{}/api/console/stats", server.url);
    let metrics = format!("{}/metrics", server.url);
    let mut statuses = Vec::new();
    for n in 0..15 {
        let wrong = format!("wrong-admin-key-guess-{n:04}");
        statuses.push(answer(http.get(&stats).bearer_auth(&wrong)).await.0);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    for url in [&stats, &metrics] {
        let (status, _, body) = answer(http.get(url).bearer_auth(ADMIN)).await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    let (status, _, body) = answer(http.get(&metrics).bearer_auth("still-a-wrong-key-xyz")).await;
    assert_eq!(status, 429, "{body}");
}

/// Reads from a connection until the server closes it, or fails after the deadline; returns when.
fn closed_after(mut stream: TcpStream) -> Duration {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the connection was still open after {DEADLINE:?}"
        );
    }
}

/// Connections that send nothing, one byte, or the HTTP/2 preface and then nothing, are closed
/// after `client_header_timeout_ms`; a kept-alive connection after `client_idle_timeout_ms` (set
/// shorter here so that hyper's own header timeout, which also bounds HTTP/1.1 keep-alive, cannot
/// be what closes it).
#[test]
fn connections_that_never_speak_are_closed() {
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        "client_header_timeout_ms: 400\nclient_idle_timeout_ms: 150\n",
    );
    let addr = addr_of(&server);
    let bound = Duration::from_millis(400 + 2000);
    let mut h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for (what, bytes) in [
        ("nothing", Vec::new()),
        ("one byte", b"G".to_vec()),
        ("the HTTP/2 preface", h2_preface),
    ] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&bytes).unwrap();
        let after = closed_after(stream);
        eprintln!("{what}: closed after {after:?}");
        assert!(after < bound, "{what}: closed after {after:?}");
        assert!(
            after >= Duration::from_millis(350),
            "{what}: closed only once the timeout ran out, after {after:?}"
        );
    }
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let after = closed_after(stream);
    eprintln!("idle keep-alive: closed after {after:?}");
    assert!(
        after >= Duration::from_millis(100) && after < Duration::from_millis(350),
        "idle keep-alive closed by client_idle_timeout_ms (150 ms), not only by the header timeout (400 ms): after {after:?}"
    );
}

/// Only an allow-list of request headers reaches the provider: never the client's organisation,
/// project, cookies, Azure key or proxy headers; the protocol's own and SDK telemetry do.
#[tokio::test]
async fn only_allowed_request_headers_reach_the_provider() {
    let mock = Mock::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &providers_yaml(&mock.url));
    let (_, key) = server.create_key("headers").await;
    let forbidden = [
        ("openai-organization", "org-attacker"),
        ("openai-project", "proj-attacker"),
        ("cookie", "session=1"),
        ("api-key", "azure-key"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=203.0.113.9"),
        ("via", "1.1 evil"),
        ("x-real-ip", "203.0.113.9"),
        ("x-custom-anything", "1"),
    ];
    let allowed = [
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.50.0"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("openai-beta", "assistants=v2"),
        ("idempotency-key", "stainless-retry-1"),
        ("x-stainless-os", "Linux"),
    ];
    for proto in BOTH {
        let mut request = reqwest::Client::new()
            .post(format!("{}{}", server.url, proto.path()))
            .bearer_auth(&key)
            .json(&proto.body("gpt-4o", "hello", 5, false));
        for (name, value) in forbidden.iter().chain(allowed.iter()) {
            request = request.header(*name, *value);
        }
        if proto == Proto::Anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{proto:?}");
    }
    let requests: Vec<Value> = mock
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions" || r["path"] == "/v1/messages")
        .collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for seen in &requests {
        let headers = seen["headers"].as_object().unwrap();
        for (name, _) in forbidden {
            assert!(
                !headers.contains_key(name),
                "{name} reached the provider: {headers:?}"
            );
        }
        for (name, value) in allowed {
            assert_eq!(headers[name], value, "{name}: {headers:?}");
        }
        assert!(!headers.contains_key("x-api-key") || headers["x-api-key"] == PROVIDER_KEY);
        assert!(
            !headers.contains_key("authorization")
                || headers["authorization"] == format!("Bearer {PROVIDER_KEY}")
        );
    }
}

/// Every proxy or CDN client header marks a request as proxied, which the console (without an
/// admin key) refuses although its peer is loopback.
#[tokio::test]
async fn every_kind_of_proxied_request_is_refused_without_an_admin_key() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "");
    let http = reqwest::Client::new();
    for header in [
        "forwarded",
        "x-forwarded-for",
        "x-real-ip",
        "via",
        "cf-connecting-ip",
        "true-client-ip",
        "x-client-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
    ] {
        let (status, _, body) = answer(
            http.get(format!("{}/api/console/stats", server.url))
                .header(header, "203.0.113.9"),
        )
        .await;
        assert_eq!(status, 403, "{header}: {body}");
    }
    let (status, _, _) = answer(http.get(format!("{}/api/console/stats", server.url))).await;
    assert_eq!(status, 200);
}

/// On a dual-stack listener an IPv4 client arrives as `::ffff:127.0.0.1`, which is loopback.
#[tokio::test]
async fn an_ipv4_mapped_loopback_peer_is_this_machine() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("no IPv6 on this machine; nothing to test");
        return;
    }
    let dir = tempdir();
    let server = Server::start(dir.path(), "host: \"::\"\n");
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let (status, _, body) =
        answer(reqwest::Client::new().get(format!("http://127.0.0.1:{port}/api/console/stats")))
            .await;
    assert_eq!(status, 200, "{body}");
}

/// An admin key shorter than 16 characters stops start-up with exit code 2, naming the key.
#[tokio::test]
async fn a_short_admin_key_stops_start_up() {
    let dir = tempdir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_token-console"))
        .args(["--port", "0"])
        .current_dir(dir.path())
        .env("CONSOLE_ADMIN_KEY", "only-15-chars!!")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until("a 15-character admin key to stop start-up", || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CONSOLE_ADMIN_KEY") && stderr.contains("16"),
        "{stderr}"
    );
}

/// Live-log streams are capped per client address (8) and in all (64); a closed stream frees its
/// place.
#[tokio::test]
async fn live_log_streams_are_capped_per_client_and_in_total() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "");
    let port = addr_of(&server).port();
    let open = |from: u8| {
        let http = reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, from]))
            .build()
            .unwrap();
        async move {
            http.get(format!("http://127.0.0.1:{port}/api/console/logs/stream"))
                .send()
                .await
                .unwrap()
        }
    };
    let mut streams = Vec::new();
    for _ in 0..8 {
        let r = open(1).await;
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let refused = open(1).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let text = refused.text().await.unwrap();
    assert!(text.contains("live-log streams"), "{text}");
    streams.pop();
    let again = wait_until("a freed place", || async {
        let r = open(1).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    streams.push(again);
    for from in 2..=8 {
        for _ in 0..8 {
            let r = open(from).await;
            assert_eq!(r.status(), 200, "from 127.0.0.{from}");
            streams.push(r);
        }
    }
    let refused = open(9).await;
    assert_eq!(refused.status(), 429);
    let text = refused.text().await.unwrap();
    assert!(text.contains("64"), "{text}");
}

/// Every console API answer, refusals included, and `/metrics` say `Cache-Control: no-store`.
#[tokio::test]
async fn console_answers_are_never_cached() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "");
    let http = client(&server, &["attacker.example"], false);
    let port = addr_of(&server).port();
    let base = &server.url;
    let requests = [
        http.get(format!("{base}/api/console/stats")),
        http.get(format!("{base}/api/console/keys")),
        http.post(format!("{base}/api/console/keys"))
            .json(&json!({"name": "cached"})),
        http.get(format!("{base}/api/console/logs?limit=abc")),
        http.get(format!("{base}/api/console/nothing")),
        http.get(format!("{base}/api/console/export")),
        http.get(format!("{base}/api/console/openapi.json")),
        http.get(format!("http://attacker.example:{port}/api/console/stats")),
        http.get(format!("{base}/metrics")),
        http.get(format!("http://attacker.example:{port}/metrics")),
    ];
    for request in requests {
        let r = request.send().await.unwrap();
        let what = format!("{} {}", r.status(), r.url());
        assert_eq!(r.headers()["cache-control"], "no-store", "{what}");
    }
}

/// A listener that accepts connections and closes them at once (a provider that breaks).
fn breaking_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// Answers the gateway makes itself (401 403 404 405 400 413 429 502 504) carry
/// `x-token-console-overhead-ms`, and a 502 never shows the provider's URL.
#[tokio::test]
async fn gateway_made_errors_carry_the_overhead_header_and_no_provider_url() {
    let mock = Mock::start();
    let broken = breaking_upstream();
    let dir = tempdir();
    let yaml = format!(
        "max_body_bytes: 4000\nproviders:\n  - {{ name: mock-openai, kind: openai, base_url: \"{0}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"gpt-*\", \"mock-*\"], first_byte_timeout_ms: 300 }}\n  - {{ name: mock-anthropic, kind: anthropic, base_url: \"{0}\", api_key: \"{PROVIDER_KEY}\", models: [\"claude-*\"] }}\n  - {{ name: broken, kind: openai, base_url: \"http://{broken}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"broken-*\"] }}\n",
        mock.url
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("errors").await;
    let (limited_id, limited) = server.create_key("limited").await;
    patch_key(
        &server,
        limited_id,
        json!({"rpm_limit": 1, "allowed_models": ["gpt-*"]}),
    )
    .await;
    let http = reqwest::Client::new();
    let chat = format!("{}/v1/chat/completions", server.url);
    let body =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let first = http
        .post(&chat)
        .bearer_auth(&limited)
        .json(&body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("no key", http.post(&chat).json(&body("gpt-4o")), 401),
        (
            "unknown key",
            http.post(&chat)
                .bearer_auth("sk-tc-unknown")
                .json(&body("gpt-4o")),
            401,
        ),
        (
            "model not allowed",
            http.post(&chat)
                .bearer_auth(&limited)
                .json(&body("claude-x")),
            403,
        ),
        (
            "no provider",
            http.post(&chat)
                .bearer_auth(&key)
                .json(&body("nobody-serves")),
            404,
        ),
        (
            "unknown route",
            http.post(format!("{}/v1/nope", server.url))
                .bearer_auth(&key),
            404,
        ),
        ("wrong method", http.get(&chat).bearer_auth(&key), 405),
        (
            "malformed JSON",
            http.post(&chat)
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (
            "too large",
            http.post(&chat)
                .bearer_auth(&key)
                .json(&body(&"x".repeat(5000))),
            413,
        ),
        (
            "rpm limit",
            http.post(&chat).bearer_auth(&limited).json(&body("gpt-4o")),
            429,
        ),
        (
            "broken provider",
            http.post(&chat).bearer_auth(&key).json(&body("broken-1")),
            502,
        ),
        (
            "slow provider",
            http.post(&chat)
                .bearer_auth(&key)
                .json(&body("mock-latency-5000")),
            504,
        ),
        (
            "unknown key on /v1/models",
            http.get(format!("{}/v1/models", server.url))
                .bearer_auth("sk-tc-unknown"),
            401,
        ),
    ];
    for (what, request, want) in cases {
        let (status, headers, text) = answer(request).await;
        assert_eq!(status, want, "{what}: {text}");
        let overhead = headers
            .get("x-token-console-overhead-ms")
            .unwrap_or_else(|| panic!("{what}: no overhead header"))
            .to_str()
            .unwrap();
        assert!(
            overhead.parse::<f64>().is_ok_and(|ms| ms >= 0.0),
            "{what}: {overhead}"
        );
        if want == 502 {
            let port = broken.port().to_string();
            assert!(
                !text.contains(&port) && !text.contains("http://"),
                "{what}: the provider's URL is not shown: {text}"
            );
            assert!(text.contains("broken"), "the provider is named: {text}");
        }
    }
    // The record is written in the recorder's next batch: wait for it, not for a time.
    let broken_row = wait_until("the 502 call recorded", || async {
        let rows = server.logs("limit=100").await;
        rows.into_iter().find(|r| r["status"] == 502)
    })
    .await;
    let error = broken_row["error"].as_str().unwrap();
    assert!(
        !error.contains(&broken.port().to_string()) && !error.contains("http://"),
        "{error}"
    );
    let (_, headers, _) = answer(
        http.get(format!("{}/v1/models", server.url))
            .bearer_auth(&key),
    )
    .await;
    assert!(headers.contains_key("x-token-console-overhead-ms"));
}
