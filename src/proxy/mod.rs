//! The request pipeline: limit → route → buffer body → pick → send (retry) → relay.

pub mod body_budget;
pub mod headers;
pub mod relay;
pub mod retry;

use crate::balance::{self, Picked, Reuse, Unavailable};
use crate::body::{BoxError, ProxyBody};
use crate::client_keys::Refusal;
use crate::clock;
use crate::error::ApiError;
use crate::fields::{text, Fields};
use crate::message::{Answer, RequestHead};
use crate::metrics::families::{method_index, Failure, CALL_FAILURE, CALL_SUCCESS};
use crate::ratelimit::Gcra;
use crate::runtime::{Forward, Group, Member, Runtime};
use crate::upstream::breaker::Admission;
use crate::upstream::load::InflightGuard;
use crate::upstream::{direct, note_transition, Target, Upstream};
use crate::usage::UsageScanner;
use body_budget::Reservation;
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, StatusCode, Uri, Version};
use relay::{AccessLine, Delivery, RelayBody, RelayOptions, Telemetry, Timer, UpstreamBody};
use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What the listener knows about the client connection.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer address as an `X-Forwarded-For` value, formatted once per connection instead
    /// of once per request (shared bytes: each request's copy is a reference count).
    pub forwarded_for: HeaderValue,
}

impl ClientConn {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let forwarded_for = HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientConn { peer, tls, forwarded_for }
    }
}

/// Handles one client request on forward `forward`. Never fails: every problem becomes a
/// JSON error response with the right status.
pub async fn handle<B>(rt: &Runtime, forward: &str, conn: ClientConn, req: RequestHead, body: B) -> Answer<ProxyBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let Some(fwd) = rt.forward(forward) else {
        return ApiError::no_upstream(format!("forward {forward} is not configured")).into_response().into();
    };
    let started = Instant::now();
    let method = method_index(&req.method);
    fwd.metrics.requests[method].inc();
    let access = fwd.access_log.then(|| AccessLine {
        client: conn.peer.ip(),
        method: req.method.clone(),
        path: req.uri.path().to_string(),
    });
    let unanswered = Unanswered { fwd, method, started, access };
    let result = proxy(rt, fwd, conn, req, body, started).await;
    let access = unanswered.answered();
    match result {
        Ok((mut resp, routed)) => {
            if resp.status.as_u16() >= 400 {
                fwd.metrics.upstream_status(resp.status.as_u16());
            }
            resp.body.deliver(Delivery {
                forward: fwd.metrics.clone(),
                forward_name: fwd.name.clone(),
                method,
                started,
                group: routed.group,
                model: routed.model,
                key: routed.key,
                access,
            });
            resp.map(ProxyBody::Relay)
        }
        Err(e) => {
            crate::debug!("{forward}: {} {}", e.status.as_u16(), e.message);
            record_unserved(fwd, method, started, access.as_ref(), e.status.as_u16(), e.code);
            e.into_response().into()
        }
    }
}

/// nginx's name for a request whose client left before its answer began.
const CLIENT_CLOSED_REQUEST: (u16, &str) = (499, "client_closed_request");

/// A request being handled. Dropped unfinished — its client left before the answer began, and
/// the connection dropped the handler — it is still counted (as `client_closed_request`),
/// timed and logged, so error totals add up to the requests counted. A finished handler
/// forgets it.
struct Unanswered<'a> {
    fwd: &'a Forward,
    method: usize,
    started: Instant,
    access: Option<AccessLine>,
}

impl Unanswered<'_> {
    /// The handler finished: its answer is accounted for where it ends.
    fn answered(mut self) -> Option<AccessLine> {
        let access = self.access.take();
        std::mem::forget(self);
        access
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let (status, code) = CLIENT_CLOSED_REQUEST;
        record_unserved(self.fwd, self.method, self.started, self.access.as_ref(), status, code);
    }
}

/// Accounts for a request answered by the proxy itself (or by nobody): its error, its duration
/// and its access log line.
fn record_unserved(
    fwd: &Forward,
    method: usize,
    started: Instant,
    access: Option<&AccessLine>,
    status: u16,
    code: &str,
) {
    fwd.metrics.proxy_error(code);
    fwd.metrics.duration[method].observe_duration(started.elapsed());
    if let Some(a) = access {
        crate::info!(
            "access forward={} client={} method={} path={} status={status} error={code} duration_ms={}",
            fwd.name,
            a.client,
            a.method,
            crate::log::Field(&a.path),
            started.elapsed().as_millis()
        );
    }
}

/// What every attempt of a request sends.
struct Outgoing<'a> {
    /// The client's request head (the upstream's is derived from it on each attempt, never by
    /// changing it).
    head: &'a RequestHead,
    body: Bytes,
    conn: ClientConn,
    /// `track_usage`: the body with `stream_options.include_usage` added, for upstreams that
    /// accept the option (the usage chunk it brings is removed from the client's stream again).
    with_usage: Option<Bytes>,
    /// When the request arrived, if nothing has waited since.
    ready_at: Option<Instant>,
}

impl Outgoing<'_> {
    /// What an attempt on `upstream` at `at` sends: the body with the usage option, unless that
    /// upstream refused it lately, or may answer compressed (the chunk could not be taken back
    /// out).
    fn body_for(&self, upstream: &Upstream, at: Instant) -> AttemptBody<'_> {
        match &self.with_usage {
            Some(edited)
                if !upstream.may_compress && !upstream.refuses_usage_option.holds(clock::at(at.into_std())) =>
            {
                AttemptBody { bytes: edited, asks_usage: true }
            }
            _ => AttemptBody { bytes: &self.body, asks_usage: false },
        }
    }
}

/// The body one attempt sends.
#[derive(Clone, Copy)]
struct AttemptBody<'a> {
    bytes: &'a Bytes,
    /// It carries the usage option the proxy added (see `Outgoing::with_usage`).
    asks_usage: bool,
}

/// Where a request went, for its accounting.
struct Routed {
    group: Arc<str>,
    model: Option<String>,
    key: Option<Arc<str>>,
}

async fn proxy<B>(
    rt: &Runtime,
    fwd: &Forward,
    conn: ClientConn,
    mut head: RequestHead,
    body: B,
    started: Instant,
) -> Result<(Answer<RelayBody>, Routed), ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // The request's arrival is the time its limits are checked at (a clock read costs tens of
    // nanoseconds in a VM; the checks take a microsecond).
    let now = clock::at(started.into_std());
    let client_ip = conn.peer.ip();
    if fwd.access.as_ref().is_some_and(|acl| !acl.permits(client_ip)) {
        return Err(ApiError::forbidden(format!("{client_ip} is not allowed to use this gateway")));
    }
    if crate::router::has_dot_segment(head.uri.path()) {
        return Err(ApiError::bad_request("paths with \".\" or \"..\" segments are not forwarded"));
    }
    // The address first: a client that sprays missing or wrong keys is limited like any other,
    // and a request the address limit refuses spends none of its key's rate.
    if let Some(limiter) = &fwd.client_limiter {
        let network = crate::ratelimit::client_network(client_ip);
        if let Err(wait) = limiter.check(&network, now) {
            fwd.metrics.ratelimited.inc();
            let who = if network == client_ip { client_ip.to_string() } else { format!("{network}/64") };
            return Err(rate_limited(&who, wait));
        }
    }
    // What the key check takes out, kept for rules on credential headers (rare: none else).
    let taken: Option<Vec<(HeaderName, Vec<u8>)>> = fwd.rules_read_credentials.then(|| {
        crate::upstream::CREDENTIAL_HEADERS
            .iter()
            .flat_map(|name| head.fields.get_all(name).map(|v| (name.clone(), v.to_vec())))
            .collect()
    });
    let key = match &fwd.keys {
        None => None,
        Some(keys) => match keys.admit(&mut head.fields, now) {
            Ok(k) => Some(k.name.clone()),
            Err(Refusal::Missing) => {
                return Err(ApiError::unauthorized("an API key is required (Authorization: Bearer <key> or x-api-key)"))
            }
            Err(Refusal::Unknown) => return Err(ApiError::unauthorized("the API key is not valid")),
            Err(Refusal::RateLimited(wait)) => {
                fwd.metrics.ratelimited.inc();
                return Err(rate_limited("this API key", wait));
            }
        },
    };
    let limit = fwd.max_body_size;
    // A declared length over the limit is refused before reading a byte of it (the body's
    // exact size is its `Content-Length`).
    if body.size_hint().exact().is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    // Buffered because a retry must be able to send it again (and model rules read it), within
    // the forward's budget for all bodies; the reservation lasts as long as the request.
    let mut reservation = Reservation::default();
    let (body, waited) = read_body(body, fwd, &mut reservation).await?;
    let model = if fwd.needs_model || fwd.access_log {
        crate::router::model::extract(&body).map(Cow::into_owned)
    } else {
        None
    };
    let path = head.uri.path();
    let group_index = fwd
        .rules
        .iter()
        .find(|r| {
            r.matches(
                path,
                model.as_deref(),
                &head.fields,
                head.uri.authority().map(|a| a.as_str()),
                taken.as_deref().unwrap_or_default(),
            )
        })
        .map(|r| r.target)
        .or_else(|| fwd.router.lookup(path).copied())
        .unwrap_or(fwd.default_group);
    let group = &rt.groups[group_index];
    // Only a POST is a generation whose answer is read for usage (and the added event stripped).
    let with_usage = if group.track_usage && head.method == hyper::Method::POST {
        crate::usage::ask_for_usage(path, &body)
    } else {
        None
    };
    // The edited copy is held as well: within the budget, or not made (the body goes as written).
    let with_usage = with_usage.filter(|copy| fwd.hold_body(&mut reservation, copy.len()));
    // Nothing waited since the request arrived, and the body was not parsed as a whole for
    // `track_usage` (a large prompt takes a while): that moment also starts the first attempt.
    let ready_at = (!waited && !group.track_usage).then_some(started);
    let out = Outgoing { head: &head, body, conn, with_usage, ready_at };
    let resp = forward_with_retries(group, &out).await?;
    Ok((resp, Routed { group: group.name.clone(), model, key }))
}

/// Reads a request body of at most the forward's `max_body_size`, held in its budget, and says
/// whether that had to wait for the client. A body that arrives in one frame — the usual case —
/// is kept as it is: no copy, no allocation.
async fn read_body<'a, B>(
    body: B,
    fwd: &'a Forward,
    reservation: &mut Reservation<'a>,
) -> Result<(Bytes, bool), ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limit = fwd.max_body_size;
    let mut body = std::pin::pin!(body);
    // A declared length is the buffer's exact size: a body of many frames then costs no more
    // memory than the budget counts (grown by doubling, it could hold twice that).
    let declared = body.size_hint().exact().and_then(|n| usize::try_from(n).ok());
    let (mut first, mut joined): (Option<Bytes>, Option<BytesMut>) = (None, None);
    let (mut size, mut waited) = (0u64, false);
    loop {
        let next = std::future::poll_fn(|cx| {
            let polled = body.as_mut().poll_frame(cx);
            waited |= polled.is_pending();
            polled
        });
        let Some(frame) = next.await else { break };
        let frame = frame.map_err(|e| {
            let e = e.into();
            match e.downcast_ref::<crate::server::idle::BodyStalled>() {
                Some(stalled) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "request_timeout",
                    stalled.to_string(),
                ),
                None => ApiError::bad_request(format!("could not read the request body: {e}")),
            }
        })?;
        let Ok(data) = frame.into_data() else { continue }; // trailers: nothing to forward
        size += data.len() as u64;
        if size > limit {
            return Err(ApiError::body_too_large(limit));
        }
        if !fwd.hold_body(reservation, data.len()) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "server_busy",
                format!(
                    "request bodies held by the gateway would exceed {} bytes (max_buffered_bodies)",
                    fwd.max_buffered_bodies
                ),
            )
            .with_retry_after(1));
        }
        match (&first, &mut joined) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut all = BytesMut::with_capacity(declared.unwrap_or(head.len() + data.len() * 2));
                all.extend_from_slice(head);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
        // A body of declared length is complete with its last byte: asking for the end as well
        // would only wait for the server side to say so.
        if body.is_end_stream() {
            break;
        }
    }
    let body = match (joined, first) {
        (Some(all), _) => all.freeze(),
        (None, Some(one)) => one,
        (None, None) => Bytes::new(),
    };
    Ok((body, waited))
}

fn rate_limited(who: &str, wait: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "rate_limited",
        format!("too many requests from {who}; slow down"),
    )
    .with_retry_after(Gcra::retry_after_secs(wait))
}

/// A failed attempt that another attempt may improve on; the last upstream answer (or, when no
/// upstream answered, the last error) is what the client gets when attempts run out.
enum Failed {
    Response(Answer<RelayBody>),
    Error(ApiError),
}

enum Outcome {
    /// Relay this to the client: success, or an answer that retrying cannot change.
    Final(Answer<RelayBody>),
    Retryable {
        failed: Failed,
        kind: Failure,
        retry_after: Option<Duration>,
    },
    /// The request itself cannot be sent (no upstream is to blame).
    Invalid(ApiError),
}

/// Attempts the request on the group's upstreams per its retry policy. Every attempt happens
/// before any byte reaches the client, so nothing that was relayed is ever replayed.
async fn forward_with_retries(group: &Group, out: &Outgoing<'_>) -> Result<Answer<RelayBody>, ApiError> {
    let policy = group.retry;
    let mut tried = 0u64;
    let mut reuses = 0u32;
    let mut last: Option<Failed> = None;
    // The member whose failure the next attempt retries, and why.
    let mut cause: Option<(usize, Failure)> = None;
    let mut retry_afters = RetryAfters::default();
    // Members found refusing the usage option, for which the client's body is resent (once
    // each), and those of them this request marked.
    let (mut refused_option, mut marked_here) = (0u64, 0u64);
    let mut n = 0;
    while n < policy.max_attempts {
        n += 1;
        // One clock read serves the pick and the attempt's latency measurement — none for the
        // first attempt of a request that has not waited since it arrived.
        let mut at = match (n, out.ready_at) {
            (1, Some(arrived)) => arrived,
            _ => Instant::now(),
        };
        let picked = match balance::pick(group, tried, Reuse::Never, clock::at(at.into_std())) {
            Ok(p) => p,
            // No going back, or nothing to go back to: every upstream tried asked to wait
            // longer than the proxy does (or none was tried at all).
            Err(why) if !policy.may_reuse || tried & !retry_afters.beyond_reach() == 0 => {
                return finish(last, group, why)
            }
            Err(_) => {
                // Every available upstream was tried: back off before going back to one. The wait
                // happens before the pick so that no in-flight slot or breaker probe is held while
                // sleeping; boxed, like the other rarely taken branches below, so that the
                // request's future — moved a few times per request — stays small.
                Box::pin(tokio::time::sleep(retry::backoff(policy.initial, reuses))).await;
                reuses += 1;
                match Box::pin(pick_again(group, tried, &retry_afters)).await {
                    Ok((p, when)) => {
                        at = when;
                        p
                    }
                    Err(why) => return finish(last, group, why),
                }
            }
        };
        if let Some((i, kind)) = cause {
            group.members[i].metrics.retries[kind as usize].inc();
        }
        tried |= 1 << picked.index;
        let member = &group.members[picked.index];
        let body = out.body_for(&member.upstream, at);
        match attempt(group, member, out, body, at, picked.admission, picked.guard).await {
            Outcome::Final(mut resp)
                if body.asks_usage
                    && resp.status == StatusCode::BAD_REQUEST
                    && refused_option & (1 << picked.index) == 0 =>
            {
                let upstream = &member.upstream;
                let Some(marked) =
                    Box::pin(refuses_usage_option(out, upstream, &mut resp, group.connect_timeout)).await?
                else {
                    return Ok(resp);
                };
                // Sent again as the client wrote it, neither as an attempt nor as a retry: the
                // proxy's own addition failed, not the request.
                refused_option |= 1 << picked.index;
                marked_here |= u64::from(marked) << picked.index;
                tried &= !(1 << picked.index);
                cause = None;
                n -= 1;
            }
            Outcome::Final(resp) => {
                if marked_here & (1 << picked.index) != 0 && resp.status == StatusCode::BAD_REQUEST {
                    // The client's own body is refused too: the 400 that marked the upstream was
                    // about something else.
                    member.upstream.refuses_usage_option.lift();
                }
                return Ok(resp);
            }
            Outcome::Invalid(e) => return Err(e),
            Outcome::Retryable { failed, kind, retry_after } => {
                if let Some(after) = retry_after {
                    retry_afters.note(picked.index, after);
                }
                let upstream = &group.members[picked.index].upstream;
                let failed = if n < policy.max_attempts {
                    Box::pin(failed.set_aside(upstream, group.connect_timeout)).await
                } else {
                    failed
                };
                // The client gets the last answer an upstream gave, when one did: a 429 and its
                // Retry-After say more than a later attempt's connect error or timeout.
                if !matches!((&failed, &last), (Failed::Error(_), Some(Failed::Response(_)))) {
                    last = Some(failed);
                }
                cause = Some((picked.index, kind));
            }
        }
    }
    finish(last, group, Unavailable::Down { reopens_in: None })
}

/// Whether a 400 answer to a body with the usage option refuses that option — as Azure OpenAI
/// does before API version 2024-09-01 (`Unrecognized request argument supplied:
/// stream_options`). Only an option the proxy added whole counts: a client's own
/// `stream_options` refused is the client's answer. If so, the upstream is marked: for
/// [`crate::upstream::USAGE_OPTION_RETRY`] it gets the client's body as it is (and its streams go
/// uncounted, which the warning says).
/// `Some(true)` when this call marked it, `Some(false)` when another request had.
async fn refuses_usage_option(
    out: &Outgoing<'_>,
    upstream: &Upstream,
    resp: &mut Answer<RelayBody>,
    limit: Duration,
) -> Result<Option<bool>, ApiError> {
    // A refusal is short and of known length; any other answer is relayed as it is.
    let short = hyper::body::Body::size_hint(&resp.body).exact().is_some_and(|n| n <= relay::SET_ASIDE_MAX);
    if !short || crate::json_scan::member(&out.body, b"stream_options").is_some() {
        return Ok(None);
    }
    let Some(body) = read_aside(resp, upstream, limit).await? else { return Ok(None) };
    if !body.windows(14).any(|w| w == b"stream_options") {
        return Ok(None);
    }
    let marked = upstream.refuses_usage_option.mark(clock::now());
    if marked {
        crate::warn!(
            "upstream {} refuses stream_options (track_usage): for {} minutes its streams go on without it, and their tokens are not counted",
            upstream.name,
            crate::upstream::USAGE_OPTION_RETRY / clock::NANOS_PER_SEC / 60
        );
    }
    Ok(Some(marked))
}

/// After a backoff: an upstream the request already tried, except those still inside the
/// `Retry-After` they asked for — or, when only those are left, the first of them once its time
/// has come (if that is within `MAX_RETRY_AFTER`).
async fn pick_again(group: &Group, tried: u64, retry_afters: &RetryAfters) -> Result<(Picked, Instant), Unavailable> {
    loop {
        let at = Instant::now();
        match balance::pick(group, tried, Reuse::Except(retry_afters.held(at)), clock::at(at.into_std())) {
            Ok(p) => return Ok((p, at)),
            Err(why) => match retry_afters.next_free(at) {
                Some(free) => tokio::time::sleep_until(free).await,
                None => return Err(why),
            },
        }
    }
}

/// When upstreams of this request may be sent it again, as they asked with `Retry-After`
/// (`None`: longer than `MAX_RETRY_AFTER` — not within this request). Empty, and unallocated,
/// unless an upstream said so.
#[derive(Default)]
struct RetryAfters(Vec<(usize, Option<Instant>)>);

impl RetryAfters {
    fn note(&mut self, index: usize, after: Duration) {
        let until = (after <= retry::MAX_RETRY_AFTER).then(|| Instant::now() + after);
        self.0.retain(|&(i, _)| i != index);
        self.0.push((index, until));
    }

    /// The upstreams whose wait satisfies `which`, as a mask.
    fn mask(&self, which: impl Fn(Option<Instant>) -> bool) -> u64 {
        self.0.iter().filter(|&&(_, until)| which(until)).fold(0, |mask, &(i, _)| mask | 1 << i)
    }

    /// The upstreams still waiting at `at`.
    fn held(&self, at: Instant) -> u64 {
        self.mask(|until| until.is_none_or(|u| u > at))
    }

    /// The upstreams that asked for longer than `MAX_RETRY_AFTER`.
    fn beyond_reach(&self) -> u64 {
        self.mask(|until| until.is_none())
    }

    /// When the first upstream still waiting at `at` may be tried again.
    fn next_free(&self, at: Instant) -> Option<Instant> {
        self.0.iter().filter_map(|&(_, until)| until).filter(|&u| u > at).min()
    }
}

impl Failed {
    /// A failed answer kept while later attempts run (see [`RelayBody::set_aside`]). Its body
    /// gets `limit` (the group's connect timeout) to arrive — the next attempt must not wait on a
    /// failed upstream — and one that breaks off or is late becomes the gateway error it is.
    async fn set_aside(self, upstream: &Upstream, limit: Duration) -> Failed {
        let Failed::Response(mut resp) = self else { return self };
        match read_aside(&mut resp, upstream, limit).await {
            Ok(_) => Failed::Response(resp),
            Err(e) => Failed::Error(e),
        }
    }
}

/// Sets an answer aside ([`RelayBody::set_aside`]), with `limit` for its body to arrive: the body
/// when it was read, or the gateway error an answer that breaks off or is late becomes.
async fn read_aside(
    resp: &mut Answer<RelayBody>,
    upstream: &Upstream,
    limit: Duration,
) -> Result<Option<Bytes>, ApiError> {
    let status = resp.status.as_u16();
    let why = match tokio::time::timeout(limit, resp.body.set_aside()).await {
        Ok(Ok(body)) => return Ok(body),
        Ok(Err(e)) => format!("broke off its {status} answer: {e}"),
        Err(_) => format!("did not finish its {status} answer within {}s", limit.as_secs()),
    };
    Err(ApiError::bad_gateway(format!("upstream {} {why}", upstream.name)))
}

fn finish(last: Option<Failed>, group: &Group, why: Unavailable) -> Result<Answer<RelayBody>, ApiError> {
    match last {
        Some(Failed::Response(resp)) => Ok(resp),
        Some(Failed::Error(e)) => Err(e),
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
            Unavailable::Down { reopens_in } => {
                let e = ApiError::no_upstream(format!(
                    "no upstream of group {} is available (circuit breakers open or health checks failing)",
                    group.name
                ));
                // When the first breaker lets a probe through (the next health check's time is
                // not known here).
                match reopens_in {
                    Some(wait) => e.with_retry_after(balance::retry_after(wait)),
                    None => e,
                }
            }
        }),
    }
}

/// Reports an attempt's outcome to the upstream's breaker, load statistics and metrics exactly
/// once; a half-open probe dropped without an outcome (the client left) is handed back.
struct Verdict<'a> {
    member: &'a Member,
    admission: Admission,
    sent_at: Instant,
    done: bool,
}

impl Verdict<'_> {
    /// Records the outcome of an attempt that ended at `end` (read from the clock if `None`);
    /// returns that time.
    fn record(&mut self, failure: Option<Failure>, end: Option<Instant>) -> Instant {
        self.done = true;
        let end = end.unwrap_or_else(Instant::now);
        let now = clock::at(end.into_std());
        let (upstream, metrics) = (&self.member.upstream, &self.member.metrics);
        let elapsed = end.saturating_duration_since(self.sent_at);
        metrics.duration.observe_duration(elapsed);
        if let Some(kind) = failure {
            metrics.failures[kind as usize].inc();
        }
        upstream.load.observe(elapsed.as_secs_f64(), failure.is_none(), now);
        if let Some(b) = &upstream.breaker {
            metrics.breaker_calls[if failure.is_none() { CALL_SUCCESS } else { CALL_FAILURE }].inc();
            note_transition(&upstream.name, metrics, b.record(self.admission, failure.is_none(), now));
        }
        end
    }
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        if !self.done && self.admission == Admission::Probe {
            if let Some(b) = &self.member.upstream.breaker {
                note_transition(&self.member.upstream.name, &self.member.metrics, b.abandon_probe());
            }
        }
    }
}

/// One attempt against one upstream: build the request, wait for the head, wrap the body.
async fn attempt(
    group: &Group,
    member: &Member,
    out: &Outgoing<'_>,
    body: AttemptBody<'_>,
    sent_at: Instant,
    admission: Admission,
    guard: InflightGuard,
) -> Outcome {
    let upstream = &member.upstream;
    member.metrics.requests.inc();
    let mut verdict = Verdict { member, admission, sent_at, done: false };
    let timer = if group.stream {
        Timer::Idle(group.request_timeout)
    } else {
        Timer::Deadline(sent_at + group.request_timeout)
    };
    // One timer per attempt: it bounds the wait for the head, then the relay re-arms it.
    let mut sleep = Box::pin(tokio::time::sleep_until(sent_at + group.request_timeout));
    let head = match &upstream.target {
        Target::Mock(mock) => {
            let head = out.head;
            match within(&mut sleep, Box::pin(crate::mock::respond(mock, &head.method, head.uri.path(), body.bytes)))
                .await
            {
                Some(resp) => Ok(Answer::from(resp).map(UpstreamBody::Mock)),
                None => Err((Failure::Timeout, timeout_error(upstream, group.request_timeout))),
            }
        }
        Target::Http(target) => {
            let path = match upstream_path(target, &out.head.uri) {
                Ok(p) => p,
                Err(e) => return Outcome::Invalid(e),
            };
            let fwd = headers::ForwardedFor {
                client: &out.conn.forwarded_for,
                proto: if out.conn.tls { "https" } else { "http" },
                host: &target.host_value,
                agent: &group.agent,
            };
            if let Some(pool) = &member.direct {
                let headers = |emit: &mut dyn FnMut(&[u8], &[u8])| {
                    headers::for_each_upstream_header(&out.head.fields, upstream, &fwd, emit)
                };
                let request = direct::Outgoing {
                    method: &out.head.method,
                    path: &path,
                    headers: &headers,
                    body: body.bytes,
                    now: sent_at.into_std(),
                };
                match within(&mut sleep, pool.send(request)).await {
                    None => Err((Failure::Timeout, timeout_error(upstream, group.request_timeout))),
                    Some(Err(e)) => Err(direct_error(upstream, &e)),
                    // The head comes without hop-by-hop headers (read for framing, left out).
                    Some(Ok(resp)) => Ok(resp.map(UpstreamBody::Direct)),
                }
            } else {
                let headers = headers::upstream_headers(&out.head.fields, upstream, &fwd);
                let req = match client_request(target, out, body.bytes, path, headers) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Invalid(e),
                };
                match within(&mut sleep, Box::pin(group.client.send(req))).await {
                    None => Err((Failure::Timeout, timeout_error(upstream, group.request_timeout))),
                    Some(Err(e)) => Err(upstream_error(upstream, &e)),
                    // The same refusal as the direct client's (hyper decodes only chunked).
                    Some(Ok(resp)) if other_transfer_coding(resp.headers()) => Err((
                        Failure::Reset,
                        ApiError::bad_gateway(format!(
                            "upstream {} sent an answer the proxy cannot relay: a transfer coding other than chunked",
                            upstream.name
                        )),
                    )),
                    Some(Ok(resp)) => {
                        let (mut head, body) = resp.into_parts();
                        headers::strip_hop_by_hop(&mut head.headers);
                        Ok(Answer { status: head.status, fields: head.headers.into(), body: UpstreamBody::Http(body) })
                    }
                }
            }
        }
    };
    let resp = match head {
        Ok(resp) => resp,
        Err((kind, e)) => {
            verdict.record(Some(kind), None);
            crate::debug!("upstream {}: {}", upstream.name, e.message);
            return Outcome::Retryable { failed: Failed::Error(e), kind, retry_after: None };
        }
    };
    let status = resp.status.as_u16();
    let failure = match status {
        429 => Some(Failure::Status429),
        s if retry::is_failure_status(s) => Some(Failure::Status5xx),
        _ => None,
    };
    // The direct client noted when the head arrived; the others are timed here.
    let arrived = match &resp.body {
        UpstreamBody::Direct(body) => Some(Instant::from_std(body.head_at())),
        _ => None,
    };
    let head_at = verdict.record(failure, arrived);
    let facts = AnswerFacts::read(&resp.fields);
    // Only a failure's `Retry-After` matters (it delays the next attempt).
    let retry_after = failure.and_then(|_| {
        let ms = facts.retry_after_ms.and_then(text).and_then(retry::parse_retry_after_ms);
        ms.or_else(|| retry::parse_retry_after(text(facts.retry_after?)?, SystemTime::now()))
    });
    let telemetry = Telemetry { member: member.metrics.clone(), sent_at, first_byte_ms: None };
    let content_type = facts.content_type.unwrap_or_default();
    let is_sse = content_type.get(..17).is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"));
    // A compressed answer (an upstream that compresses unasked, or header ops that asked) is
    // relayed untouched: it can be neither read for usage nor have comments put in.
    let plain = facts.content_encoding.is_none_or(|e| e.eq_ignore_ascii_case(b"identity"));
    let options = RelayOptions {
        timer,
        sleep,
        head_at,
        // Usage is read from successful answers to generation calls only: error bodies carry
        // none, and a `GET` fetches what was already generated (a stored response, a run) —
        // counted again, it would be billed twice.
        scanner: if failure.is_none() && status < 300 && plain && out.head.method == hyper::Method::POST {
            UsageScanner::for_content_type(content_type, body.asks_usage)
        } else {
            None
        },
        keepalive: group.sse_keepalive.filter(|_| is_sse && plain),
    };
    let mut resp = resp;
    if options.rewrites_body() {
        resp.fields.remove(&CONTENT_LENGTH);
    }
    let resp = resp.map(|body| RelayBody::new(body, status, options, upstream.clone(), telemetry, guard));
    match failure {
        Some(kind) if retry::is_retryable_status(status) => {
            crate::debug!("upstream {} answered {status}", upstream.name);
            Outcome::Retryable { failed: Failed::Response(resp), kind, retry_after }
        }
        _ => Outcome::Final(resp),
    }
}

/// The fields of an upstream's answer that decide how it is relayed (the first value of each),
/// read in one pass over the fields.
#[derive(Default)]
struct AnswerFacts<'a> {
    content_type: Option<&'a [u8]>,
    content_encoding: Option<&'a [u8]>,
    retry_after: Option<&'a [u8]>,
    retry_after_ms: Option<&'a [u8]>,
}

impl<'a> AnswerFacts<'a> {
    fn read(fields: &'a Fields) -> Self {
        let mut facts = AnswerFacts::default();
        for (name, value) in fields.iter() {
            let slot = match name.len() {
                11 if name.eq_ignore_ascii_case(b"retry-after") => &mut facts.retry_after,
                14 if name.eq_ignore_ascii_case(b"retry-after-ms") => &mut facts.retry_after_ms,
                12 if name.eq_ignore_ascii_case(b"content-type") => &mut facts.content_type,
                16 if name.eq_ignore_ascii_case(b"content-encoding") => &mut facts.content_encoding,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        facts
    }
}

/// The path and query to request from the upstream.
fn upstream_path(target: &crate::upstream::HttpTarget, uri: &Uri) -> Result<PathAndQuery, ApiError> {
    match uri.path_and_query() {
        Some(pq) => target.upstream_path(pq),
        None => target.upstream_path(&PathAndQuery::from_static("/")),
    }
    .map_err(|e| ApiError::bad_request(format!("cannot build the upstream URL: {e}")))
}

/// The request for the pooled (hyper) client, which wants an absolute URI.
fn client_request(
    target: &crate::upstream::HttpTarget,
    out: &Outgoing<'_>,
    body: &Bytes,
    path: PathAndQuery,
    headers: HeaderMap,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| ApiError::bad_request(format!("cannot build the upstream URL: {e}")))?;
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = out.head.method.clone();
    *req.uri_mut() = uri;
    // The pool speaks HTTP/2 to upstreams that negotiate it by ALPN, whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Runs `f` until it finishes or `sleep` fires (`None`), leaving `sleep` to be re-armed.
async fn within<F: Future>(sleep: &mut std::pin::Pin<Box<tokio::time::Sleep>>, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

fn timeout_error(upstream: &Upstream, limit: Duration) -> ApiError {
    ApiError::gateway_timeout(format!(
        "upstream {} did not answer within {}s (timeout.request)",
        upstream.name,
        limit.as_secs()
    ))
}

fn direct_error(upstream: &Upstream, e: &crate::upstream::direct::SendError) -> (Failure, ApiError) {
    use crate::upstream::direct::SendError;
    match e {
        SendError::Connect(why) => {
            (Failure::Connect, ApiError::bad_gateway(format!("cannot connect to upstream {}: {why}", upstream.name)))
        }
        SendError::Io(_) => {
            (Failure::Reset, ApiError::bad_gateway(format!("upstream {} failed before answering: {e}", upstream.name)))
        }
        // Retried like a reset: another upstream can answer, where a client given the 502 would
        // send the same request again anyway.
        SendError::Protocol(_) => (
            Failure::Reset,
            ApiError::bad_gateway(format!("upstream {} sent an answer the proxy cannot relay: {e}", upstream.name)),
        ),
    }
}

/// Whether an answer's `Transfer-Encoding` names a coding other than chunked.
fn other_transfer_coding(headers: &hyper::HeaderMap) -> bool {
    let mut facts = crate::http1::HeadFacts::default();
    for value in headers.get_all(hyper::header::TRANSFER_ENCODING) {
        // Only `Content-Length` can make `note` fail.
        let _ = facts.note(b"transfer-encoding", value.as_bytes());
    }
    facts.other_coding
}

fn upstream_error(upstream: &Upstream, e: &hyper_util::client::legacy::Error) -> (Failure, ApiError) {
    let cause = crate::upstream::client::error_chain(e);
    if e.is_connect() {
        (Failure::Connect, ApiError::bad_gateway(format!("cannot connect to upstream {}: {cause}", upstream.name)))
    } else {
        (Failure::Reset, ApiError::bad_gateway(format!("upstream {} failed before answering: {cause}", upstream.name)))
    }
}
