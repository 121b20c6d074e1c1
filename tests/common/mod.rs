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
/// - `flaky?fail=N&code=C&retry_after=S`: the first N requests get C (with Retry-After S), then 200
/// - any path under `/always503/`: 503
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
    if req.uri().path().starts_with("/always503/") {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": {"message": "always 503", "type": "upstream"}}),
        );
    }
    let q = query(&req);
    let num = |k: &str, d: u64| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let last = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
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
        "echo-body" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::new(llmproxy::body::full(body))
        }
        "stream" => {
            sse(Script { remaining: num("n", 5), gap: Duration::from_millis(num("gap_ms", 50)), end: End::Clean }, log)
        }
        "stall" => sse(Script { remaining: num("after", 2), gap: Duration::from_millis(10), end: End::Stall }, log),
        "reset" => sse(Script { remaining: num("after", 2), gap: Duration::from_millis(10), end: End::Reset }, log),
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
                r
            } else {
                json(StatusCode::OK, serde_json::json!({"ok": true}))
            }
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
    remaining: u64,
    gap: Duration,
    end: End,
}

fn sse(script: Script, log: Arc<UpstreamLog>) -> Response<ProxyBody> {
    let body = ScriptedBody { script, sent: 0, timer: Box::pin(tokio::time::sleep(Duration::ZERO)), log };
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}

struct ScriptedBody {
    script: Script,
    sent: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
    log: Arc<UpstreamLog>,
}

impl Drop for ScriptedBody {
    fn drop(&mut self) {
        if self.sent < self.script.remaining || self.script.end != End::Clean {
            self.log.stream_dropped.store(true, Ordering::SeqCst);
        }
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        if self.sent == self.script.remaining {
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
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("data: {{\"n\":{}}}\n\n", self.sent))))))
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
