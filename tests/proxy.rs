//! The data plane end to end: the real server on port 0 in front of a scripted upstream.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy_for(
    up: &TestUpstream,
    url_path: &str,
    upstream_extra: &str,
    http_client: &str,
) -> llmproxy::server::Server {
    start(&single_upstream_config(&up.url(url_path), upstream_extra, http_client)).await
}

#[tokio::test]
async fn non_streaming_json_is_relayed_with_status_and_headers() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let (status, headers, body) = post(addr, "/v1/echo", r#"{"model":"x"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let v = json_of(&body);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_len"], 13);
    // Upstream statuses pass through untouched, body included.
    let (status, _, body) = get(addr, "/v1/status?code=418").await;
    assert_eq!(status.as_u16(), 418);
    assert_eq!(json_of(&body)["error"]["message"], "scripted");
}

#[tokio::test]
async fn sse_frames_arrive_as_the_upstream_sends_them() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let started = Instant::now();
    let resp = client()
        .request(Request::get(format!("http://{addr}/v1/stream?n=6&gap_ms=150")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(started.elapsed());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let expected: String = (1..=6).map(|n| format!("data: {{\"n\":{n}}}\n\n")).collect();
    assert_eq!(text, expected, "byte-for-byte relay");
    // The upstream needs 750 ms to finish; the first event must not wait for that.
    assert!(arrivals[0] < Duration::from_millis(500), "first chunk at {:?}", arrivals[0]);
    assert!(*arrivals.last().unwrap() >= Duration::from_millis(700));
    assert!(arrivals.len() >= 4, "events were coalesced into {} frames", arrivals.len());
}

#[tokio::test]
async fn paths_join_for_base_and_full_endpoint_urls_with_query() {
    let up = TestUpstream::start().await;
    for (url_path, client_path, want) in [
        ("/v1", "/v1/echo?a=1&b=2", "/v1/echo?a=1&b=2"),
        ("/v1/echo", "/v1/echo?a=1", "/v1/echo?a=1"),
        ("/v1/echo", "/echo", "/v1/echo"),
        ("/prefix/v1", "/v1/echo", "/prefix/v1/echo"),
        ("", "/v1/echo", "/v1/echo"),
        ("/v1?api-version=7", "/v1/echo?x=y", "/v1/echo?api-version=7&x=y"),
    ] {
        let server = proxy_for(&up, url_path, "", "").await;
        let (status, _, body) = get(server.forward_addr("main").unwrap(), client_path).await;
        assert_eq!(status, 200, "{url_path} + {client_path}");
        assert_eq!(json_of(&body)["path"], want, "{url_path} + {client_path}");
    }
}

fn header<'a>(v: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    v["headers"][name].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn header_rules_and_bearer_injection() {
    let up = TestUpstream::start().await;
    let extra = r#"    auth: {type: bearer, token: sk-upstream}
    headers:
      - {op: insert, key: x-insert, value: proxy}
      - {op: insert, key: x-present, value: proxy}
      - {op: replace, key: x-replace, value: proxy}
      - {op: remove, key: x-remove}"#;
    let server = proxy_for(&up, "/v1", extra, "").await;
    let addr = server.forward_addr("main").unwrap();
    let req = Request::post(format!("http://{addr}/v1/echo"))
        .header("authorization", "Bearer client-key")
        .header("connection", "x-hop")
        .header("x-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("user-agent", "client-agent")
        .header("x-present", "client")
        .header("x-replace", "client")
        .header("x-remove", "client")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (status, _, body) = send(addr, req).await;
    assert_eq!(status, 200);
    let v = json_of(&body);
    assert_eq!(header(&v, "authorization"), vec!["Bearer sk-upstream"], "exactly one Authorization, the upstream's");
    assert_eq!(header(&v, "host"), vec![up.addr.to_string()]);
    assert_eq!(header(&v, "x-forwarded-for"), vec!["203.0.113.9, 127.0.0.1"]);
    assert_eq!(header(&v, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(header(&v, "user-agent"), vec!["test-agent/1"]);
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization", "x-remove"] {
        assert!(header(&v, gone).is_empty(), "{gone} reached the upstream");
    }
    assert_eq!(header(&v, "x-insert"), vec!["proxy"]);
    assert_eq!(header(&v, "x-present"), vec!["proxy"], "insert overwrites, as LLMProxy's did");
    assert_eq!(header(&v, "x-replace"), vec!["proxy"]);
    assert_eq!(header(&v, "x-custom"), vec!["kept"]);
}

#[tokio::test]
async fn basic_auth_replaces_client_authorization() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "    auth: {type: basic, username: alice, password: s3cret}", "").await;
    let addr = server.forward_addr("main").unwrap();
    let req = Request::get(format!("http://{addr}/v1/echo"))
        .header("authorization", "Bearer client")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = send(addr, req).await;
    assert_eq!(header(&json_of(&body), "authorization"), vec!["Basic YWxpY2U6czNjcmV0"]);
}

#[tokio::test]
async fn three_mib_body_arrives_byte_exact() {
    let up = TestUpstream::start().await;
    let yaml = single_upstream_config(&up.url("/v1"), "", "").replace("max_body_size: 1MiB", "max_body_size: 4MiB");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let mut x: u32 = 12345;
    let payload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let (status, _, body) = post(addr, "/v1/echo-body", payload.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), payload.len());
    assert!(body[..] == payload[..], "body changed in transit");
}

#[tokio::test]
async fn bodies_held_at_once_stay_within_the_forward_budget() {
    let up = TestUpstream::start().await;
    let yaml = single_upstream_config(&up.url("/v1"), "", "")
        .replace("max_body_size: 1MiB", "max_body_size: 1MiB\n      max_buffered_bodies: 1MiB");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    // The first request holds 700 KiB while its upstream takes a second to answer.
    let first = tokio::spawn(post(addr, "/v1/slow-head?ms=1000", vec![b'a'; 700 * 1024]));
    assert!(eventually(Duration::from_secs(5), || up.log.requests() == 1).await);
    let (status, headers, body) = post(addr, "/v1/echo", vec![b'b'; 700 * 1024]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert!(error_message(&body).contains("max_buffered_bodies"), "{}", error_message(&body));
    assert_eq!(up.log.requests(), 1, "the refused request reached no upstream");
    let metrics = String::from_utf8(get(server.admin_addr(), "/metrics").await.2.to_vec()).unwrap();
    for line in [
        "llmproxy_buffered_body_bytes{forward=\"main\"} 716800",
        "llmproxy_http_request_errors_total{forward=\"main\",error=\"server_busy\",status=\"503\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing:\n{metrics}");
    }
    assert_eq!(first.await.unwrap().0, 200);
    // Its body given back, the budget holds the next one.
    assert_eq!(post(addr, "/v1/echo", vec![b'c'; 700 * 1024]).await.0, 200);
}

#[tokio::test]
async fn oversized_body_gets_413_without_touching_the_upstream() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let (status, _, body) = post(addr, "/v1/echo", vec![b'x'; 2 * 1024 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_message(&body).contains("1048576"));
    // Without a Content-Length (chunked upload) the limit holds while reading.
    let chunked = Chunks((0..20).map(|_| Bytes::from(vec![b'y'; 100 * 1024])).collect());
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = c.request(Request::post(format!("http://{addr}/v1/echo")).body(chunked).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.log.requests.load(Ordering::SeqCst), 0, "the upstream must not be contacted");
}

#[tokio::test]
async fn chunked_upload_arrives_whole() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let pieces: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![b'a' + i; 3000 + usize::from(i)])).collect();
    let whole: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/v1/echo-body")).body(Chunks(pieces.into_iter().collect())).unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), whole, "frames joined in order");
}

/// A request body of several frames and no declared length (sent chunked).
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test]
async fn slowloris_head_is_cut_after_timeout_connect() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 before closing is fine too
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client that never finishes its head must be disconnected");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut too early: {:?}", started.elapsed());
    // Other clients are unaffected.
    let (status, _, _) = get(addr, "/v1/echo").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_timeout_connect() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let mut c = tokio::net::TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = c.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection must be closed");
    assert!(answered.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", answered.elapsed());
}

#[tokio::test]
async fn slow_model_is_not_cut_by_the_header_timeout() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let (status, _, _) = get(server.forward_addr("main").unwrap(), "/v1/slow-head?ms=1600").await;
    assert_eq!(status, 200, "timeout.connect (1 s) must only guard the request head");
}

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let closed = closed_port_url();
    let server = start(&single_upstream_config(&format!("{closed}/v1"), "", "")).await;
    let (status, headers, body) = get(server.forward_addr("main").unwrap(), "/v1/models").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    let msg = error_message(&body);
    assert!(msg.contains("cannot connect to upstream up"), "names the upstream: {msg}");
    let port = closed.rsplit(':').next().unwrap();
    assert!(!msg.contains("127.0.0.1") && !msg.contains(port), "not its address: {msg}");
}

#[tokio::test]
async fn slow_head_past_timeout_request_is_504_json() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "      timeout: {request: 1}").await;
    let started = Instant::now();
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/slow-head?ms=3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(error_message(&body).contains("did not answer within 1s"));
    assert!(started.elapsed() < Duration::from_millis(2500));
}

async fn read_stream(addr: std::net::SocketAddr, path: &str) -> (String, Result<(), String>) {
    let resp =
        client().request(Request::get(format!("http://{addr}{path}")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    loop {
        match body.frame().await {
            None => return (text, Ok(())),
            Some(Err(e)) => return (text, Err(e.to_string())),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(std::str::from_utf8(&d).unwrap());
                }
            }
        }
    }
}

#[tokio::test]
async fn long_stream_survives_a_short_timeout_request() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "      timeout: {request: 1}").await;
    // 25 events 100 ms apart: 2.5 s in all, more than twice timeout.request.
    let (text, end) = read_stream(server.forward_addr("main").unwrap(), "/v1/stream?n=25&gap_ms=100").await;
    assert_eq!(end, Ok(()));
    assert_eq!(text.matches("data: ").count(), 25);
}

#[tokio::test]
async fn stall_mid_stream_is_cut_not_completed() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "      timeout: {request: 1}").await;
    let started = Instant::now();
    let (text, end) = read_stream(server.forward_addr("main").unwrap(), "/v1/stall?after=3").await;
    assert_eq!(text.matches("data: ").count(), 3);
    assert!(end.is_err(), "a cut stream must not look complete");
    assert!(started.elapsed() >= Duration::from_millis(900) && started.elapsed() < Duration::from_secs(4));
    assert!(
        eventually(Duration::from_secs(2), || up.log.stream_dropped.load(Ordering::SeqCst)).await,
        "upstream request must be dropped"
    );
}

#[tokio::test]
async fn non_streaming_group_bounds_the_whole_response() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "      stream: false\n      timeout: {request: 1}").await;
    let (text, end) = read_stream(server.forward_addr("main").unwrap(), "/v1/stream?n=30&gap_ms=100").await;
    assert!(end.is_err(), "the total deadline cuts the body");
    let n = text.matches("data: ").count();
    assert!((5..30).contains(&n), "{n} events before the deadline");
}

#[tokio::test]
async fn upstream_reset_mid_stream_aborts_the_client_response() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let (text, end) = tokio::time::timeout(
        Duration::from_secs(5),
        read_stream(server.forward_addr("main").unwrap(), "/v1/reset?after=2"),
    )
    .await
    .expect("a reset must not hang the client");
    assert_eq!(text.matches("data: ").count(), 2);
    assert!(end.is_err());
}

#[tokio::test]
async fn client_disconnect_drops_the_upstream_request() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    {
        let c = client();
        let resp = c
            .request(Request::get(format!("http://{addr}/v1/stream?n=1000&gap_ms=20")).body(Full::default()).unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        assert!(!up.log.stream_dropped.load(Ordering::SeqCst));
        // Dropping the body and the client closes the connection mid-stream.
    }
    assert!(
        eventually(Duration::from_secs(3), || up.log.stream_dropped.load(Ordering::SeqCst)).await,
        "the upstream stream must be dropped when the client goes away"
    );
}

#[tokio::test]
async fn graceful_shutdown_drains_a_stream_and_health_reports_draining() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let admin = server.admin_addr();
    let (status, _, body) = get(admin, "/health").await;
    assert_eq!((status, json_of(&body)["status"].as_str()), (StatusCode::OK, Some("ok")));
    let stream = tokio::spawn(read_stream(addr, "/v1/stream?n=15&gap_ms=100"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Keep an admin connection open so we can watch health during the drain.
    let admin_client = client();
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = admin_client
        .request(Request::get(format!("http://{admin}/health")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "health must say draining");
    // New connections to the forward are refused while the stream finishes.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let (text, end) = stream.await.unwrap();
    assert_eq!(end, Ok(()));
    assert_eq!(text.matches("data: ").count(), 15, "the stream in flight finished");
    assert!(shutdown.await.unwrap(), "drained within the grace period");
}

#[tokio::test]
async fn shutdown_waits_for_streams_of_a_forward_a_reload_removed() {
    let up = TestUpstream::start().await;
    let two = |with_b: bool| {
        let b = if with_b { "    - {name: b, port: 0, address: 127.0.0.1, default_group: g}\n" } else { "" };
        format!(
            "http_server:\n  forwards:\n    - {{name: a, port: 0, address: 127.0.0.1, default_group: g}}\n{b}\
             upstreams:\n  - {{name: up, url: \"{}\"}}\nupstream_groups:\n  - {{name: g, upstreams: [{{name: up}}]}}\n",
            up.url("/v1")
        )
    };
    let server = start(&two(true)).await;
    let started = std::time::Instant::now();
    // About a second of events.
    let stream = tokio::spawn(read_stream(server.forward_addr("b").unwrap(), "/v1/stream?n=10&gap_ms=100"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let env = std::collections::HashMap::new();
    server.reload(llmproxy::config::from_str(&two(false), &env).unwrap()).unwrap();
    assert!(server.forward_addr("b").is_none());
    assert!(server.shutdown(Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_millis(800), "shutdown returned while b's stream was running");
    let (text, end) = stream.await.unwrap();
    assert_eq!((text.matches("data: ").count(), end), (10, Ok(())));
}

#[tokio::test]
async fn routes_pick_groups_by_priority_and_default() {
    let yaml = r#"
http_server:
  forwards:
    - name: main
      port: 0
      address: 127.0.0.1
      default_group: fallback
      routing:
        - {path: "/v1/models", target_group: static}
        - {path: "/v1/:any", target_group: param}
        - {path: "/x/{id:[0-9]+}/models", target_group: regex}
        - {path: "/w/*", target_group: wildcard}
  admin: {port: 0, address: 127.0.0.1}
upstreams:
  - {name: s, url: "mock://", mock: {model: from-static, ttft_ms: 0}}
  - {name: p, url: "mock://", mock: {model: from-param, ttft_ms: 0}}
  - {name: r, url: "mock://", mock: {model: from-regex, ttft_ms: 0}}
  - {name: w, url: "mock://", mock: {model: from-wildcard, ttft_ms: 0}}
  - {name: f, url: "mock://", mock: {model: from-fallback, ttft_ms: 0}}
upstream_groups:
  - {name: static, upstreams: [{name: s}]}
  - {name: param, upstreams: [{name: p}]}
  - {name: regex, upstreams: [{name: r}]}
  - {name: wildcard, upstreams: [{name: w}]}
  - {name: fallback, upstreams: [{name: f}]}
"#;
    let server = start(yaml).await;
    let addr = server.forward_addr("main").unwrap();
    for (path, want) in [
        ("/v1/models", "from-static"),
        ("/v1/models?limit=1", "from-static"),
        ("/v1/other/models", "from-fallback"),
        ("/x/42/models", "from-regex"),
        ("/x/abc/models", "from-fallback"),
        ("/w/a/b/models", "from-wildcard"),
        ("/models", "from-fallback"),
    ] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(json_of(&body)["data"][0]["id"], want, "{path}");
    }
    // /v1/:any matches one segment: the mock answers 404 for an unknown endpoint, from the param group.
    let (status, _, _) = get(addr, "/v1/whatever").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let resp = h2
        .request(Request::get(format!("http://{addr}/v1/stream?n=3&gap_ms=10")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 3);
}

#[tokio::test]
async fn http2_a_stream_nobody_reads_lets_go_of_its_upstream_while_its_siblings_go_on() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await; // timeout.connect: 1 s
    let addr = server.forward_addr("main").unwrap();
    // One HTTP/2 connection carries both streams.
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let get = |path: &str| Request::get(format!("http://{addr}{path}")).body(Full::default()).unwrap();
    let unread = h2.request(get("/v1/big?mb=32")).await.unwrap();
    let live = h2.request(get("/v1/stream?n=60&gap_ms=100")).await.unwrap();
    let reader = tokio::spawn(async move { live.into_body().collect().await.map(|b| b.to_bytes()) });
    let load = server.shared.runtime().groups[0].members[0].upstream.load.clone();
    assert_eq!(load.inflight(), 2);
    // Abandoned after three times timeout.connect: within 4 s, while its sibling runs for 6.
    assert!(
        eventually(Duration::from_secs(5), || load.inflight() == 1).await,
        "the stream nobody reads still holds its upstream"
    );
    assert!(!reader.is_finished(), "while its sibling streams on");
    let body = reader.await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 60, "the sibling is whole");
    drop(unread);
}

#[tokio::test]
async fn garbage_gets_400_and_does_not_disturb_others() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"\x16\x03\x01 this is not http\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
    // Too many headers → 431.
    let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = String::from("GET /v1/echo HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    big.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), big.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400") || text.is_empty(), "{text}");
    let (status, _, _) = get(addr, "/v1/echo").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn builtin_mock_serves_sse_through_the_proxy() {
    let server =
        start(&single_upstream_config("mock://", "    mock: {ttft_ms: 50, token_delay_ms: 5, tokens: 4}", "")).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, headers, body) = post(addr, "/v1/chat/completions", r#"{"stream":true,"model":"m"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("data: ").count(), 1 + 4 + 1 + 1 + 1);
}

#[tokio::test]
async fn client_disconnect_before_the_head_drops_the_upstream_request() {
    // A raw upstream that reads the request, never answers, and reports when the proxy hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    let server = start(&single_upstream_config(&format!("http://{up_addr}/v1"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let hung_up = tokio::time::timeout(Duration::from_secs(3), closed_rx).await;
    assert!(hung_up.is_ok(), "the proxy must abandon the upstream request when its client leaves");
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    for _ in 0..10 {
        assert_eq!(get(addr, "/v1/echo").await.0, 200);
    }
    assert_eq!(up.log.connections.load(Ordering::SeqCst), 1, "sequential requests share one upstream connection");
    // The upstream closes after each answer: every next request still succeeds on a new one.
    for _ in 0..5 {
        assert_eq!(get(addr, "/v1/close").await.0, 200);
    }
    assert!(up.log.connections.load(Ordering::SeqCst) >= 5);
    // HEAD has no body to drain: the connection still goes back to the pool.
    let before = up.log.connections.load(Ordering::SeqCst);
    for _ in 0..3 {
        let req = Request::head(format!("http://{addr}/v1/echo")).body(Full::default()).unwrap();
        assert_eq!(send(addr, req).await.0, 200);
    }
    assert_eq!(get(addr, "/v1/echo").await.0, 200);
    assert!(up.log.connections.load(Ordering::SeqCst) <= before + 1, "HEAD answers do not leak connections");
}

/// A raw TCP upstream for framing cases no HTTP library would produce on purpose: each request
/// (on any connection) gets the next canned answer, written a few bytes at a time. A connection
/// stays open after its answer unless the answer ends with the close (an empty answer with the
/// close: the request is read and the connection closed unanswered).
async fn raw_upstream(answers: Vec<(&'static [u8], bool)>) -> (std::net::SocketAddr, std::sync::Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let answers = std::sync::Arc::new(std::sync::Mutex::new(answers.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            tokio::spawn(async move {
                loop {
                    // Requests in these tests are GETs: a head and no body.
                    if !read_request_head(&mut stream).await {
                        return;
                    }
                    let Some((answer, close)) = answers.lock().unwrap().next() else { return };
                    for piece in answer.chunks(3) {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        stream.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_idempotent_request_whose_pooled_connection_closes_unanswered_is_sent_again() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // The second request finds the pooled connection closing under it (a keep-alive timeout
    // racing the request): a GET goes again on a fresh connection and succeeds.
    let (up, connections) = raw_upstream(vec![(OK, false), (b"", true), (OK, false)]).await;
    let server = start(&single_upstream_config(&format!("http://{up}"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    assert_eq!(get(addr, "/a").await.0, StatusCode::OK);
    let (status, _, body) = get(addr, "/b").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // A POST is not sent twice behind the retry policy's back: the upstream may have acted on it.
    let (up, connections) = raw_upstream(vec![(OK, false), (b"", true), (OK, false)]).await;
    let server = start(&single_upstream_config(&format!("http://{up}"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    assert_eq!(post(addr, "/a", "{}").await.0, StatusCode::OK);
    assert_eq!(post(addr, "/b", "{}").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_answer_whose_body_stalls_does_not_hold_up_the_next_upstream() {
    // a answers 503 but never finishes its body; b is fine. Moving on to b must not wait for
    // a's body beyond timeout.connect.
    let (a, _) =
        raw_upstream(vec![(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nshort", false)]).await;
    let b = TestUpstream::start().await;
    let server = start(&group_config(
        &[("a", format!("http://{a}"), ""), ("b", b.url(""), "")],
        "    balance: {strategy: failover}\n    http_client: {timeout: {connect: 1}}",
    ))
    .await;
    let started = std::time::Instant::now();
    let (status, _, _) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn upstreams_are_asked_for_uncompressed_answers_and_compressed_ones_pass_untouched() {
    let up = TestUpstream::start().await;
    let server = proxy_for(&up, "/v1", "", "").await;
    let addr = server.forward_addr("main").unwrap();
    let req =
        Request::get(format!("http://{addr}/v1/echo")).header("accept-encoding", "gzip, br").body(Full::default());
    let (_, _, body) = send(addr, req.unwrap()).await;
    assert_eq!(
        json_of(&body)["headers"]["accept-encoding"],
        serde_json::json!(["identity"]),
        "usage must stay readable"
    );

    // An upstream that compresses anyway: its bytes are relayed as they are (no usage chunk
    // stripping, no keep-alive comments inside compressed data), and its length kept.
    const GZIPPED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\n\x1f\x8b\x08zzz\nxy";
    let (raw, _) = raw_upstream(vec![(GZIPPED, false)]).await;
    let yaml = single_upstream_config(&format!("http://{raw}"), "", "      track_usage: true\n      sse_keepalive: 1");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, headers, body) = post(addr, "/v1/chat/completions", r#"{"model":"m","stream":true}"#).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"\x1f\x8b\x08zzz\nxy");
    assert_eq!(headers["content-length"], "9");
}

#[tokio::test]
async fn upstream_framing_chunked_interim_and_until_close() {
    let (up, connections) = raw_upstream(vec![
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nfirst",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", false),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", true),
    ])
    .await;
    let server = start(&single_upstream_config(&format!("http://{up}"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, headers, body) = get(addr, "/a").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"first"[..]), "interim 100 skipped");
    for hop in ["x-secret", "keep-alive"] {
        assert!(!headers.contains_key(hop), "hop-by-hop {hop} must not reach the client");
    }
    let (status, headers, body) = get(addr, "/b").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello, world"[..]), "chunked decoded, trailers dropped");
    assert_eq!(headers["x-up"], "1");
    assert_eq!(get(addr, "/c").await.0, StatusCode::NO_CONTENT);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "exactly framed answers keep the connection");
    // An HTTP/1.0 answer with a transfer coding is read, but its connection is not trusted again.
    assert_eq!(get(addr, "/e").await.2, &b"ok"[..]);
    assert_eq!(get(addr, "/f").await.2, &b"next"[..]);
    assert_eq!(connections.load(Ordering::SeqCst), 2, "a new connection after the HTTP/1.0 chunked answer");
    let (status, _, body) = get(addr, "/d").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"until the end"[..]), "HTTP/1.0 body runs to the close");
}

#[tokio::test]
async fn upstream_framing_errors_fail_the_request_instead_of_guessing() {
    let (up, _) = raw_upstream(vec![
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", true),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true),
        (b"not http at all\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08", true),
    ])
    .await;
    let server = start(&single_upstream_config(&format!("http://{up}"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    assert_eq!(get(addr, "/conflicting-length").await.0, StatusCode::BAD_GATEWAY);
    // Once the head has been relayed, a broken body can only be cut: the client must see an
    // error, never a short body that looks complete.
    for path in ["/bad-chunk", "/short-body"] {
        let resp = client().request(Request::get(format!("http://{addr}{path}")).body(Full::default()).unwrap()).await;
        let cut = match resp {
            Ok(r) => r.into_body().collect().await.is_err(),
            Err(_) => true,
        };
        assert!(cut, "{path}: the client sees the failure");
    }
    assert_eq!(get(addr, "/garbage").await.0, StatusCode::BAD_GATEWAY);
    // Still gzip once de-chunked, or until the close: passed on, it would be undeclared.
    for path in ["/gzip-chunked", "/gzip-until-close"] {
        assert_eq!(get(addr, path).await.0, StatusCode::BAD_GATEWAY, "{path}");
    }
}

#[tokio::test]
async fn a_stream_the_proxy_rewrites_does_not_keep_the_upstream_length() {
    // An SSE answer with a Content-Length, whose usage chunk the proxy strips (track_usage).
    let kept = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
    let body = format!("{kept}{usage}data: [DONE]\n\n");
    let answer =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (up, _) = raw_upstream(vec![(Box::leak(answer.into_bytes().into_boxed_slice()), false)]).await;
    let server = start(&single_upstream_config(&format!("http://{up}/v1"), "", "      track_usage: true")).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, headers, got) = post(addr, "/v1/chat/completions", r#"{"model":"m","stream":true}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&got), format!("{kept}data: [DONE]\n\n"), "whole, without the usage chunk");
    assert!(!headers.contains_key("content-length"), "the upstream's length no longer holds");
}

#[tokio::test]
async fn an_http_1_0_client_reading_to_the_close_sees_a_cut_answer_as_a_reset() {
    // Chunked from the upstream, so to an HTTP/1.0 client the answer runs to the close: a FIN
    // after the upstream broke off would make the first bytes look like the whole answer.
    let (up, _) =
        raw_upstream(vec![(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", true)]).await;
    let server = start(&single_upstream_config(&format!("http://{up}"), "", "")).await;
    let mut c = tokio::net::TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /cut HTTP/1.0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await.unwrap();
    let err = read.expect_err("the cut answer must not end like a complete one");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn a_path_climbing_out_of_the_upstream_base_is_refused() {
    let up = TestUpstream::start().await;
    let server = start(&single_upstream_config(&up.url("/openai/v1"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    for path in ["/v1/../../admin/keys", "/v1/%2e%2e/%2E%2E/admin", "/v1/./models"] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    }
    assert_eq!(up.log.requests(), 0, "nothing reached the upstream");
    get(addr, "/v1/files/report.v2.json").await;
    assert_eq!(up.log.requests(), 1, "dots inside names are fine");
}

#[tokio::test]
async fn credentials_in_the_upstream_url_are_sent_as_basic_auth() {
    let up = TestUpstream::start().await;
    let url = up.url("/v1").replace("http://", "http://alice:p%40ss@");
    let server = start(&single_upstream_config(&url, "", "")).await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, StatusCode::OK);
    let echoed = json_of(&body);
    // base64("alice:p@ss")
    assert_eq!(echoed["headers"]["authorization"][0], "Basic YWxpY2U6cEBzcw==");
    assert!(!echoed["headers"]["host"][0].as_str().unwrap().contains('@'), "{echoed}");
}
