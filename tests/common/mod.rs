//! Test support: the real server on port 0, a scripted upstream, and a small HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmproxy::body::{BoxError, ProxyBody};
use llmproxy::server::Server;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

/// Starts the gateway from YAML text (use port 0 everywhere).
pub async fn start(yaml: &str) -> Server {
    let env: HashMap<String, String> = HashMap::new();
    let config = llmproxy::config::from_str(yaml, &env).unwrap_or_else(|e| panic!("test config: {e}"));
    Server::start(config).await.unwrap_or_else(|e| panic!("server start: {e}"))
}

/// A one-forward, one-group config in front of `url`, with extra group `http_client` YAML.
pub fn single_upstream_config(url: &str, upstream_extra: &str, http_client: &str) -> String {
    format!(
        r#"
http_server:
  forwards:
    - name: main
      port: 0
      address: 127.0.0.1
      default_group: g
      max_body_size: 1MiB
      timeout: {{connect: 1}}
  admin: {{port: 0, address: 127.0.0.1}}
upstreams:
  - name: up
    url: "{url}"
{upstream_extra}
upstream_groups:
  - name: g
    upstreams: [{{name: up}}]
    http_client:
      agent: "test-agent/1"
{http_client}
"#
    )
}

/// What the scripted upstream saw and did.
#[derive(Default)]
pub struct UpstreamLog {
    pub requests: AtomicUsize,
    /// Set when a streaming body the upstream was sending got dropped (client went away).
    pub stream_dropped: AtomicBool,
    /// Status served at `…/health`.
    pub health_status: std::sync::atomic::AtomicU16,
    flaky_seen: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// The last request's headers and body, as the upstream received them.
    pub last_headers: std::sync::Mutex<hyper::HeaderMap>,
    pub last_body: std::sync::Mutex<Bytes>,
}

impl UpstreamLog {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A scripted upstream on 127.0.0.1:0. Behaviour is chosen by the last path segment and query:
/// - `echo`: JSON of method, path+query, headers (name → list of values), body length
/// - `echo-body`: the request body, byte for byte
/// - `stream?n=N&gap_ms=G`: N SSE events G ms apart
/// - `stall?after=N`: N events, then silence forever
/// - `reset?after=N`: N events, then an aborted connection
/// - `status?code=C`: that status with a JSON body
/// - `slow-head?ms=M`: the head after M ms
/// - `big?mb=M`: M MiB of `x`
/// - `flaky?fail=N&code=C&retry_after=S`: the first N requests get C (with Retry-After S), then 200
/// - `openai-stream?gap_ms=G` (or any path under `/openai-stream/`): an OpenAI chat stream (3 tokens); the usage chunk only when the
///   request asked for it with `stream_options.include_usage`
/// - `split?gap_ms=G`: two SSE events, each sent in two halves G ms apart
/// - any path under `/always503/`: 503
/// - `close`: 200 with `Connection: close` (the upstream hangs up after answering)
/// - `health`: the status in `log.health_status` (not counted in `requests`)
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub log: Arc<UpstreamLog>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(UpstreamLog::default());
        log.health_status.store(200, Ordering::SeqCst);
        let l = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                l.connections.fetch_add(1, Ordering::SeqCst);
                let log = l.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(scripted(req, log).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestUpstream { addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn scripted(req: Request<Incoming>, log: Arc<UpstreamLog>) -> Response<ProxyBody> {
    if req.uri().path().ends_with("/health") {
        let code = StatusCode::from_u16(log.health_status.load(Ordering::SeqCst)).unwrap();
        return json(code, serde_json::json!({"health": code.as_u16()}));
    }
    log.requests.fetch_add(1, Ordering::SeqCst);
    *log.last_headers.lock().unwrap() = req.headers().clone();
    if req.uri().path().starts_with("/always503/") {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": {"message": "always 503", "type": "upstream"}}),
        );
    }
    if req.uri().path().starts_with("/always429/") {
        let mut r = json(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": {"message": "always 429", "type": "upstream"}}),
        );
        r.headers_mut().insert("retry-after", "3600".parse().unwrap());
        return r;
    }
    let q = query(&req);
    let num = |k: &str, d: u64| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let last = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
    // Under /openai-stream/ every path (…/chat/completions included) is the OpenAI stream script,
    // under /strict/ too, but one that refuses `stream_options` as older Azure API versions do.
    let last = match req.uri().path() {
        p if p.starts_with("/openai-stream/") => "openai-stream".to_string(),
        p if p.starts_with("/strict/") => "strict".to_string(),
        _ => last,
    };
    match last.as_str() {
        "echo" => {
            let mut headers: HashMap<String, Vec<String>> = HashMap::new();
            for (k, v) in req.headers() {
                headers.entry(k.to_string()).or_default().push(v.to_str().unwrap_or("<binary>").to_string());
            }
            let method = req.method().to_string();
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({"method": method, "path": path, "headers": headers, "body_len": body}),
            )
        }
        "close" => {
            let mut r = json(StatusCode::OK, serde_json::json!({"closing": true}));
            r.headers_mut().insert("connection", "close".parse().unwrap());
            r
        }
        "echo-body" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::new(llmproxy::body::full(body))
        }
        "stream" => sse(Script::numbered(num("n", 5), num("gap_ms", 50), End::Clean), log),
        "stall" => sse(Script::numbered(num("after", 2), 10, End::Stall), log),
        "reset" => sse(Script::numbered(num("after", 2), 10, End::Reset), log),
        "openai-stream" | "strict" => {
            let gap = num("gap_ms", 10);
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            *log.last_body.lock().unwrap() = body.clone();
            if last == "strict" && body.windows(5).any(|w| w == b"\"bad\"") {
                // A validator that quotes what it was sent.
                let message = format!("invalid request: {}", String::from_utf8_lossy(&body));
                return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": {"message": message}}));
            }
            if last == "strict" && body.windows(14).any(|w| w == b"stream_options") {
                let message = "Unrecognized request argument supplied: stream_options";
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let usage = v.pointer("/stream_options/include_usage").and_then(|u| u.as_bool()) == Some(true);
            sse(
                Script { frames: openai_stream_frames(usage).into(), gap: Duration::from_millis(gap), end: End::Clean },
                log,
            )
        }
        "split" => {
            let frames = vec!["data: {\"part\":", "1}\n\n", "data: {\"part\":", "2}\n\n"];
            let frames = frames.into_iter().map(|f: &'static str| Bytes::from_static(f.as_bytes())).collect();
            sse(Script { frames, gap: Duration::from_millis(num("gap_ms", 100)), end: End::Clean }, log)
        }
        "status" => {
            let code = StatusCode::from_u16(num("code", 500) as u16).unwrap();
            json(code, serde_json::json!({"error": {"message": "scripted", "type": "upstream", "code": code.as_u16()}}))
        }
        "flaky" => {
            if log.flaky_seen.fetch_add(1, Ordering::SeqCst) < num("fail", 1) as usize {
                let code = StatusCode::from_u16(num("code", 503) as u16).unwrap();
                let mut r = json(
                    code,
                    serde_json::json!({"error": {"message": "flaky", "type": "upstream", "code": code.as_u16()}}),
                );
                if let Some(s) = q.get("retry_after") {
                    r.headers_mut().insert("retry-after", s.parse().unwrap());
                }
                if let Some(ms) = q.get("retry_after_ms") {
                    r.headers_mut().insert("retry-after-ms", ms.parse().unwrap());
                }
                r
            } else {
                json(StatusCode::OK, serde_json::json!({"ok": true}))
            }
        }
        "big" => {
            let mut r = Response::new(llmproxy::body::full(vec![b'x'; (num("mb", 1) as usize) << 20]));
            r.headers_mut().insert("content-type", "text/plain".parse().unwrap());
            r
        }
        "slow-head" => {
            tokio::time::sleep(Duration::from_millis(num("ms", 1000))).await;
            json(StatusCode::OK, serde_json::json!({"slow": true}))
        }
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such script"})),
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(llmproxy::body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    Clean,
    Stall,
    Reset,
}

struct Script {
    frames: std::collections::VecDeque<Bytes>,
    gap: Duration,
    end: End,
}

impl Script {
    fn numbered(n: u64, gap_ms: u64, end: End) -> Script {
        let frames = (1..=n).map(|i| Bytes::from(format!("data: {{\"n\":{i}}}\n\n"))).collect();
        Script { frames, gap: Duration::from_millis(gap_ms), end }
    }
}

/// The chunks of a three-token OpenAI chat stream, as `openai-stream` sends them.
pub fn openai_stream_frames(with_usage: bool) -> Vec<Bytes> {
    let chunk = |delta: &str, finish: &str| {
        format!("data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n")
    };
    let mut frames = vec![
        chunk(r#"{"role":"assistant","content":""}"#, "null"),
        chunk(r#"{"content":"Hello"}"#, "null"),
        chunk(r#"{"content":" there"}"#, "null"),
        chunk(r#"{"content":"!"}"#, "null"),
        chunk("{}", "\"stop\""),
    ];
    if with_usage {
        frames.push("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n".to_string());
    }
    frames.push("data: [DONE]\n\n".to_string());
    frames.into_iter().map(Bytes::from).collect()
}

fn sse(script: Script, log: Arc<UpstreamLog>) -> Response<ProxyBody> {
    let body = ScriptedBody { script, timer: Box::pin(tokio::time::sleep(Duration::ZERO)), log };
    let mut r = Response::new(ProxyBody::boxed(body));
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}

struct ScriptedBody {
    script: Script,
    timer: Pin<Box<tokio::time::Sleep>>,
    log: Arc<UpstreamLog>,
}

impl Drop for ScriptedBody {
    fn drop(&mut self) {
        if !self.script.frames.is_empty() || self.script.end != End::Clean {
            self.log.stream_dropped.store(true, Ordering::SeqCst);
        }
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        if self.script.frames.is_empty() {
            return match self.script.end {
                End::Clean => Poll::Ready(None),
                End::Stall => Poll::Pending,
                // One more gap first, so the events before the reset are on the wire.
                End::Reset => match self.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err("scripted reset".into()))),
                },
            };
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let gap = self.script.gap;
        self.timer.as_mut().reset(tokio::time::Instant::now() + gap);
        Poll::Ready(self.script.frames.pop_front().map(|f| Ok(Frame::data(f))))
    }
}

/// A config with one forward and one group over several upstreams: `(name, url, extra YAML
/// lines for the upstream)`, plus extra YAML lines for the group (balance, http_client, …).
pub fn group_config(upstreams: &[(&str, String, &str)], group_extra: &str) -> String {
    let ups: String =
        upstreams.iter().map(|(n, u, extra)| format!("  - name: {n}\n    url: \"{u}\"\n{extra}\n")).collect();
    let members: String = upstreams.iter().map(|(n, _, _)| format!("{{name: {n}}}, ")).collect();
    format!(
        r#"
http_server:
  forwards:
    - {{name: main, port: 0, address: 127.0.0.1, default_group: g}}
  admin: {{port: 0, address: 127.0.0.1}}
upstreams:
{ups}
upstream_groups:
  - name: g
    upstreams: [{members}]
{group_extra}
"#
    )
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, hyper::HeaderMap, Bytes) {
    send(addr, Request::get(format!("http://{addr}{path}")).body(Full::default()).unwrap()).await
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> (StatusCode, hyper::HeaderMap, Bytes) {
    send(
        addr,
        Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap(),
    )
    .await
}

pub async fn send(_addr: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body failed").to_bytes();
    (parts.status, parts.headers, bytes)
}

pub fn json_of(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Asserts an OpenAI-shaped proxy error and returns its message.
pub fn error_message(b: &Bytes) -> String {
    let v = json_of(b);
    assert!(v["error"]["type"].is_string() && v["error"]["code"].is_string(), "not an OpenAI error: {v}");
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// A URL whose port nothing listens on (bound, then released).
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Polls `cond` every 10 ms for up to `limit`.
pub async fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A directory under the system temp dir, removed with everything in it when dropped, so test
/// runs leave nothing behind.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("llmproxy-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `name` in this directory; returns its path.
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads from `stream` until a request head has ended (a small body that arrives with it is
/// read too, and dropped); false when the connection ends first.
pub async fn read_request_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt;
    let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A raw upstream that answers every request, on every connection, with `answer` as it is
/// (request bodies must be small enough to arrive with their heads).
pub async fn canned_upstream(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while read_request_head(&mut stream).await && stream.write_all(answer).await.is_ok() {}
            });
        }
    });
    addr
}
