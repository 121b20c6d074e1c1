//! The request pipeline: limit → route → buffer body → pick → send (retry) → relay.

pub mod headers;
pub mod relay;
pub mod retry;

use crate::balance::{self, Unavailable};
use crate::body::{BoxError, ProxyBody};
use crate::clock;
use crate::error::ApiError;
use crate::ratelimit::Gcra;
use crate::runtime::{Group, Runtime};
use crate::upstream::breaker::Admission;
use crate::upstream::{log_transition, Target, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri, Version};
use relay::{RelayBody, Timer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
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
    if let Some(limiter) = &fwd.client_limiter {
        if let Err(wait) = limiter.check(&conn.peer.ip(), clock::now()) {
            fwd.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
                format!("too many requests from {}; slow down", conn.peer.ip()),
            )
            .with_retry_after(Gcra::retry_after_secs(wait)));
        }
    }
    let (parts, body) = req.into_parts();
    let limit = fwd.max_body_size;
    // A declared length over the limit is refused before reading a byte of it.
    if content_length(&parts).is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let group = &rt.groups[*fwd.router.lookup(parts.uri.path()).unwrap_or(&fwd.default_group)];
    // Buffered because a retry must be able to send it again.
    let body = match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ApiError::body_too_large(limit)),
        Err(e) => return Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    };
    forward_with_retries(group, &parts, body, conn).await
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A failed attempt that another attempt may improve on; the last one is what the client gets
/// when attempts run out.
enum Failure {
    Response(Response<ProxyBody>),
    Error(ApiError),
}

enum Outcome {
    /// Relay this to the client: success, or an answer that retrying cannot change.
    Final(Response<ProxyBody>),
    Retryable {
        failure: Failure,
        retry_after: Option<Duration>,
    },
}

/// Attempts the request on the group's upstreams per its retry policy. Every attempt happens
/// before any byte reaches the client, so nothing that was relayed is ever replayed.
async fn forward_with_retries(
    group: &Group,
    parts: &Parts,
    body: Bytes,
    conn: ClientConn,
) -> Result<Response<ProxyBody>, ApiError> {
    let policy = group.retry;
    let mut tried = 0u64;
    let mut reuses = 0u32;
    let mut last: Option<Failure> = None;
    let mut last_retry_after: Option<Duration> = None;
    for _ in 0..policy.max_attempts {
        let picked = match balance::pick(group, tried, false, clock::now()) {
            Ok(p) => p,
            Err(_) if policy.may_reuse && tried != 0 => {
                // Every available upstream was tried: wait before going back to one — the
                // backoff, or the upstream's Retry-After when longer. The wait happens before the
                // pick so that no in-flight slot or breaker probe is held while sleeping.
                let mut delay = retry::backoff(policy.initial, reuses);
                if let Some(after) = last_retry_after {
                    if after > retry::MAX_RETRY_AFTER {
                        break;
                    }
                    delay = delay.max(after);
                }
                reuses += 1;
                tokio::time::sleep(delay).await;
                match balance::pick(group, tried, true, clock::now()) {
                    Ok(p) => p,
                    Err(why) => return finish(last, group, why),
                }
            }
            Err(why) => return finish(last, group, why),
        };
        tried |= 1 << picked.index;
        let member = &group.members[picked.index];
        match attempt(group, &member.upstream, parts, body.clone(), conn, picked.admission, picked.guard).await {
            Outcome::Final(resp) => return Ok(resp),
            Outcome::Retryable { failure, retry_after } => {
                last = Some(failure);
                last_retry_after = retry_after;
            }
        }
    }
    finish(last, group, Unavailable::Down)
}

fn finish(last: Option<Failure>, group: &Group, why: Unavailable) -> Result<Response<ProxyBody>, ApiError> {
    match last {
        Some(Failure::Response(resp)) => Ok(resp),
        Some(Failure::Error(e)) => Err(e),
        None => Err(match why {
            Unavailable::RateLimited { wait } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "upstream_rate_limited",
                format!("every upstream of group {} is at its request-rate limit", group.name),
            )
            .with_retry_after(balance::retry_after(wait)),
            Unavailable::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "upstream_at_capacity",
                format!("every upstream of group {} is at max_concurrency", group.name),
            )
            .with_retry_after(1),
            Unavailable::Down => ApiError::no_upstream(format!(
                "no upstream of group {} is available (circuit breakers open or health checks failing)",
                group.name
            )),
        }),
    }
}

/// Reports an attempt's outcome to the upstream's breaker and load statistics exactly once; a
/// half-open probe dropped without an outcome (the client left) is handed back.
struct Verdict<'a> {
    upstream: &'a Upstream,
    admission: Admission,
    started: Instant,
    done: bool,
}

impl Verdict<'_> {
    fn record(&mut self, success: bool) {
        self.done = true;
        let now = clock::now();
        self.upstream.load.observe(self.started.elapsed().as_secs_f64(), success, now);
        if let Some(b) = &self.upstream.breaker {
            log_transition(&self.upstream.name, b.record(self.admission, success, now));
        }
    }
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        if !self.done && self.admission == Admission::Probe {
            if let Some(b) = &self.upstream.breaker {
                log_transition(&self.upstream.name, b.abandon_probe(clock::now()));
            }
        }
    }
}

/// One attempt against one upstream: build the request, wait for the head, wrap the body.
async fn attempt(
    group: &Group,
    upstream: &Upstream,
    parts: &Parts,
    body: Bytes,
    conn: ClientConn,
    admission: Admission,
    guard: crate::upstream::load::InflightGuard,
) -> Outcome {
    let started = Instant::now();
    let mut verdict = Verdict { upstream, admission, started, done: false };
    let timer = if group.stream {
        Timer::Idle(group.request_timeout)
    } else {
        Timer::Deadline(started + group.request_timeout)
    };
    let head = match &upstream.target {
        Target::Mock(mock) => {
            match tokio::time::timeout(
                group.request_timeout,
                crate::mock::respond(mock, &parts.method, parts.uri.path(), &body),
            )
            .await
            {
                Ok(resp) => Ok(resp),
                Err(_) => Err(timeout_error(upstream, group.request_timeout)),
            }
        }
        Target::Http(target) => {
            let req = match build_request(group, upstream, target, parts, body, conn) {
                Ok(r) => r,
                Err(e) => return Outcome::Final(e.into_response()),
            };
            match tokio::time::timeout(group.request_timeout, group.client.send(req)).await {
                Err(_) => Err(timeout_error(upstream, group.request_timeout)),
                Ok(Err(e)) => Err(upstream_error(upstream, &e)),
                Ok(Ok(resp)) => {
                    let (mut head, body) = resp.into_parts();
                    headers::strip_hop_by_hop(&mut head.headers);
                    Ok(Response::from_parts(head, body.map_err(BoxError::from).boxed_unsync()))
                }
            }
        }
    };
    let resp = match head {
        Ok(resp) => resp,
        Err(e) => {
            verdict.record(false);
            crate::debug!("upstream {}: {}", upstream.name, e.message);
            return Outcome::Retryable { failure: Failure::Error(e), retry_after: None };
        }
    };
    let status = resp.status().as_u16();
    verdict.record(!retry::is_failure_status(status));
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    let (head, body) = resp.into_parts();
    let resp = Response::from_parts(head, RelayBody::new(body, timer, &upstream.name, guard).boxed_unsync());
    if retry::is_retryable_status(status) {
        crate::debug!("upstream {} answered {status}", upstream.name);
        Outcome::Retryable { failure: Failure::Response(resp), retry_after }
    } else {
        Outcome::Final(resp)
    }
}

fn build_request(
    group: &Group,
    upstream: &Upstream,
    target: &crate::upstream::HttpTarget,
    parts: &Parts,
    body: Bytes,
    conn: ClientConn,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(target.path_and_query(parts.uri.path(), parts.uri.query()))
        .build()
        .map_err(|e| ApiError::bad_request(format!("cannot build the upstream URL: {e}")))?;
    let mut headers = parts.headers.clone();
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
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    // The pool speaks HTTP/2 to upstreams that negotiate it by ALPN, whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
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
