//! The request pipeline: route → buffer body → pick → send → relay.

pub mod headers;
pub mod relay;

use crate::body::{BoxError, ProxyBody};
use crate::error::ApiError;
use crate::runtime::{Group, Runtime};
use crate::upstream::{Target, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_LENGTH;
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri, Version};
use relay::{RelayBody, Timer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// What the listener knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Handles one client request on forward `forward`. Never fails: every problem becomes a
/// JSON error response with the right status.
pub async fn handle<B>(rt: &Runtime, forward: &str, conn: ClientConn, req: Request<B>) -> Response<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match proxy(rt, forward, conn, req).await {
        Ok(resp) => resp,
        Err(e) => {
            crate::debug!("{forward}: {} {}", e.status.as_u16(), e.message);
            e.into_response()
        }
    }
}

async fn proxy<B>(
    rt: &Runtime,
    forward: &str,
    conn: ClientConn,
    req: Request<B>,
) -> Result<Response<ProxyBody>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let fwd =
        rt.forward(forward).ok_or_else(|| ApiError::no_upstream(format!("forward {forward} is not configured")))?;
    let (parts, body) = req.into_parts();
    let limit = fwd.max_body_size;
    // A declared length over the limit is refused before reading a byte of it.
    if content_length(&parts).is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let group_index = *fwd.router.lookup(parts.uri.path()).unwrap_or(&fwd.default_group);
    let group = &rt.groups[group_index];
    // Buffered because a retry must be able to send it again.
    let body = match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ApiError::body_too_large(limit)),
        Err(e) => return Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    };
    let member =
        group.pick().ok_or_else(|| ApiError::no_upstream(format!("group {} has no usable upstream", group.name)))?;
    send(group, &member.upstream, parts, body, conn).await
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// One attempt against one upstream: build the request, wait for the head, wrap the body.
async fn send(
    group: &Group,
    upstream: &Upstream,
    parts: Parts,
    body: Bytes,
    conn: ClientConn,
) -> Result<Response<ProxyBody>, ApiError> {
    let started = Instant::now();
    let timer = if group.stream {
        Timer::Idle(group.request_timeout)
    } else {
        Timer::Deadline(started + group.request_timeout)
    };
    let target = match &upstream.target {
        Target::Mock(mock) => {
            let resp = tokio::time::timeout(
                group.request_timeout,
                crate::mock::respond(mock, &parts.method, parts.uri.path(), &body),
            )
            .await
            .map_err(|_| timeout_error(upstream, group.request_timeout))?;
            let (head, body) = resp.into_parts();
            return Ok(Response::from_parts(head, RelayBody::new(body, timer, &upstream.name).boxed_unsync()));
        }
        Target::Http(t) => t,
    };
    let path_and_query = target.path_and_query(parts.uri.path(), parts.uri.query());
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::bad_request(format!("cannot build the upstream URL: {e}")))?;
    let mut headers = parts.headers;
    headers::to_upstream(
        &mut headers,
        upstream,
        &headers::ForwardedFor {
            client_ip: conn.peer.ip(),
            proto: if conn.tls { "https" } else { "http" },
            host: target.host_header(),
            agent: &group.agent,
        },
    );
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    // The pool speaks HTTP/2 to upstreams that negotiate it by ALPN, whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    let resp = match tokio::time::timeout(group.request_timeout, group.client.send(req)).await {
        Err(_) => return Err(timeout_error(upstream, group.request_timeout)),
        Ok(Err(e)) => return Err(upstream_error(upstream, &e)),
        Ok(Ok(resp)) => resp,
    };
    let (mut head, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    Ok(Response::from_parts(head, RelayBody::new(body, timer, &upstream.name).boxed_unsync()))
}

fn timeout_error(upstream: &Upstream, limit: Duration) -> ApiError {
    ApiError::gateway_timeout(format!(
        "upstream {} did not answer within {}s (timeout.request)",
        upstream.name,
        limit.as_secs()
    ))
}

fn upstream_error(upstream: &Upstream, e: &hyper_util::client::legacy::Error) -> ApiError {
    use std::error::Error;
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        ApiError::bad_gateway(format!("cannot connect to upstream {}: {cause}", upstream.name))
    } else {
        ApiError::bad_gateway(format!("upstream {} failed before answering: {cause}", upstream.name))
    }
}
