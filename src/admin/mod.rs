//! The admin listener: health, Prometheus metrics, and the configuration API.

mod api;
pub mod redact;

use crate::body::{full, BoxError, ProxyBody};
use crate::client_keys::bearer_token;
use crate::error::ApiError;
use crate::runtime::Shared;
use bytes::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use std::net::IpAddr;

/// The OpenAPI 3 description of `/api/v1`, served at `/api/v1/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// Answers an admin request from `peer`.
pub async fn handle<B>(shared: &Shared, req: Request<B>, peer: IpAddr) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/health") => health(shared),
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(shared),
        (&Method::GET | &Method::HEAD, "/api/v1/openapi.json") => json(StatusCode::OK, OPENAPI),
        _ if path == "/api/v1" || path.starts_with("/api/v1/") => {
            if shared.admin_token.is_none() && !is_loopback(peer) {
                ApiError::forbidden(
                    "without LLMPROXY_ADMIN_AUTH_TOKEN the admin API answers only clients on this host; \
                     set the token to use it from elsewhere",
                )
                .into_admin_response()
            } else if shared.admin_token.is_none() && from_a_browser_page(&req) {
                ApiError::forbidden(
                    "without LLMPROXY_ADMIN_AUTH_TOKEN the admin API answers no web page (a request with \
                     an Origin header, or for a Host other than localhost or an IP address); set the \
                     token to use it from a browser",
                )
                .into_admin_response()
            } else if authorized(shared, &req) {
                api::handle(shared, req).await
            } else {
                let mut resp =
                    ApiError::unauthorized("the admin API requires Authorization: Bearer <LLMPROXY_ADMIN_AUTH_TOKEN>")
                        .into_admin_response();
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"llmproxy admin\""));
                resp
            }
        }
        _ => ApiError::not_found(format!("no admin endpoint {} {path}", req.method())).into_response(),
    }
}

/// Whether `peer` is this host. Without a token the configuration API (which can point traffic,
/// prompts included, at any URL) answers only such clients: an admin port listening on all
/// addresses — LLMProxy's default, where it served only health and metrics — must not open it
/// to the network.
fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Whether a request may come from a web page in a browser on this host, which the loopback
/// check alone would let through: any site can make the browser send a cross-site form `POST`
/// (it carries `Origin`), and a site whose name it re-points at 127.0.0.1 (DNS rebinding) can
/// read and write as if it were this host (its `Host` is its own name). Local tools send
/// neither; with a token, no page knows it.
fn from_a_browser_page<B>(req: &Request<B>) -> bool {
    if req.headers().contains_key(ORIGIN) {
        return true;
    }
    let host = req.headers().get(HOST).map(HeaderValue::as_bytes).or(req.uri().host().map(str::as_bytes));
    host.is_some_and(|h| !local_host_name(h))
}

/// `localhost` (and its subdomains), or an IP address, with or without a port.
fn local_host_name(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// With `LLMPROXY_ADMIN_AUTH_TOKEN` set, the configuration API requires
/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized<B>(shared: &Shared, req: &Request<B>) -> bool {
    let Some(expected) = &shared.admin_token else { return true };
    let presented = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes()))
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess was
/// right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn json(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn metrics(shared: &Shared) -> Response<ProxyBody> {
    let text = crate::metrics::families::scrape(&shared.runtime());
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(crate::metrics::encode::CONTENT_TYPE));
    resp
}

/// 200 while serving; 503 while draining so a load balancer stops sending new requests.
fn health(shared: &Shared) -> Response<ProxyBody> {
    if shared.is_draining() {
        json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json(StatusCode::OK, r#"{"status":"ok"}"#)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[tokio::test]
    async fn without_a_token_the_api_answers_only_this_host() {
        let yaml = "http_server:\n  forwards: [{name: f, port: 0, default_group: g}]\n\
                    upstreams: [{name: u, url: \"mock://\"}]\nupstream_groups: [{name: g, upstreams: [{name: u}]}]\n";
        let config = || crate::config::from_str(yaml, &std::collections::HashMap::<String, String>::new()).unwrap();
        let (here, remote) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([192, 0, 2, 7]));
        let mapped_here: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let get = |path: &str, token: Option<&str>| {
            let mut req = Request::get(path);
            if let Some(t) = token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            req.body(http_body_util::Empty::<Bytes>::new()).unwrap()
        };
        let open = Shared::new(crate::runtime::Runtime::build(config()).unwrap(), None);
        for peer in [here, mapped_here] {
            assert_eq!(handle(&open, get("/api/v1/upstreams", None), peer).await.status(), StatusCode::OK, "{peer}");
        }
        let refused = handle(&open, get("/api/v1/upstreams", None), remote).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = http_body_util::BodyExt::collect(refused.into_body()).await.unwrap().to_bytes();
        let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((&envelope["code"], &envelope["status"]), (&serde_json::json!(403), &serde_json::json!("error")));
        for path in ["/health", "/metrics", "/api/v1/openapi.json"] {
            assert_eq!(handle(&open, get(path, None), remote).await.status(), StatusCode::OK, "{path}");
            // Probes that ask with HEAD (LLMProxy answered them).
            let head = Request::head(path).body(http_body_util::Empty::<Bytes>::new()).unwrap();
            assert_eq!(handle(&open, head, remote).await.status(), StatusCode::OK, "HEAD {path}");
        }
        // Nor a web page in a browser on this host: a cross-site form, or a site re-pointed at
        // 127.0.0.1.
        let from_page = |origin: Option<&str>, host: &str| {
            let mut req = Request::post("/api/v1/upstreams").header(HOST, host);
            if let Some(o) = origin {
                req = req.header(ORIGIN, o);
            }
            req.body(http_body_util::Empty::<Bytes>::new()).unwrap()
        };
        for (origin, host) in [(Some("https://evil.example"), "127.0.0.1:9000"), (None, "rebound.evil.example:9000")] {
            let status = handle(&open, from_page(origin, host), here).await.status();
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?} {host}");
        }
        for host in ["127.0.0.1:9000", "localhost:9000", "LOCALHOST", "[::1]:9000", "[::1]", "10.0.0.5", "localhost."] {
            assert!(local_host_name(host.as_bytes()), "{host}");
        }
        for host in ["evil.example", "localhost.evil.example:9000", "[evil]:9000", "127.0.0.1.evil.example"] {
            assert!(!local_host_name(host.as_bytes()), "{host}");
        }
        // With a token, the token decides, wherever the client is.
        let guarded = Shared::new(crate::runtime::Runtime::build(config()).unwrap(), Some("s3cret".into()));
        let status = handle(&guarded, get("/api/v1/upstreams", Some("s3cret")), remote).await.status();
        assert_eq!(status, StatusCode::OK);
        let status = handle(&guarded, get("/api/v1/upstreams", None), here).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn openapi_document_is_valid_json_and_lists_every_path() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/forwards",
            "/forwards/{name}",
            "/forwards/{name}/routes",
            "/forwards/{name}/routes/{id}",
            "/upstream-groups",
            "/upstream-groups/{name}",
            "/upstreams",
            "/upstreams/{name}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
    }
}
