//! The admin listener: health and Prometheus metrics.

use crate::body::{full, ProxyBody};
use crate::error::ApiError;
use crate::runtime::Shared;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

pub async fn handle<B>(shared: &Shared, req: Request<B>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => health(shared),
        (&Method::GET, "/metrics") => metrics(shared),
        _ => ApiError::not_found(format!("no admin endpoint {} {}", req.method(), req.uri().path())).into_response(),
    }
}

fn metrics(shared: &Shared) -> Response<ProxyBody> {
    let text = crate::metrics::families::scrape(&shared.runtime());
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(crate::metrics::encode::CONTENT_TYPE));
    resp
}

/// 200 while serving; 503 while draining so a load balancer stops sending new requests.
fn health(shared: &Shared) -> Response<ProxyBody> {
    let (status, body) = if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
