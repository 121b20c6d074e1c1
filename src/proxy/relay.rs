//! Relaying an upstream body to the client frame by frame, under a timer.
//!
//! Frames are passed on as they arrive: nothing is buffered, re-chunked or delayed, so SSE
//! streams stay smooth. The timer is the only addition:
//! - streaming groups (`stream: true`): the longest silence between frames, reset by every
//!   frame — a long answer can run for as long as it keeps producing;
//! - non-streaming groups: a fixed deadline for the whole response.
//!
//! When the timer fires, or the upstream resets, the body ends with an error. hyper then aborts
//! the client connection instead of finishing the response, so the client can never mistake a
//! cut response for a complete one. When the client goes away, hyper drops this body, which drops
//! the upstream body and with it the upstream request: no tokens are burnt on abandoned streams.
//!
//! The body also finishes the request's measurements: time to first byte when the first data
//! frame passes; token usage scanned from the frames as they pass (see [`crate::usage`]); the
//! in-flight slot, request duration, token counts and access log line when it ends or is dropped.
//!
//! With `sse_keepalive`, an SSE response that stays silent that long gets a `: keep-alive`
//! comment — only between events, never inside one — so idle-timeout middleboxes keep the
//! connection while a reasoning model thinks.

use crate::body::{BoxError, ProxyBody};
use crate::metrics::families::{ForwardMetrics, MemberMetrics, UNCOUNTED_CUT, UNCOUNTED_NO_USAGE};
use crate::upstream::direct::DirectBody;
use crate::upstream::load::InflightGuard;
use crate::upstream::Upstream;
use crate::usage::{ModelName, UsageScanner};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
pub enum Timer {
    /// Longest allowed silence between frames.
    Idle(Duration),
    /// Instant by which the whole body must have arrived.
    Deadline(Instant),
}

/// An upstream's body: from the network, or from the in-process mock.
// Lives inside the (boxed) relay body; boxing the large variant would add an allocation per
// request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamBody {
    Http(Incoming),
    /// A body read straight from a plain-HTTP/1.1 upstream connection.
    Direct(DirectBody),
    Mock(ProxyBody),
}

impl UpstreamBody {
    /// Whether what was read of the body so far came in the read that brought the head.
    fn came_with_head(&self) -> bool {
        matches!(self, UpstreamBody::Direct(b) if b.came_with_head())
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Direct(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Mock(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http(b) => b.is_end_stream(),
            UpstreamBody::Direct(b) => b.is_end_stream(),
            UpstreamBody::Mock(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http(b) => b.size_hint(),
            UpstreamBody::Direct(b) => b.size_hint(),
            UpstreamBody::Mock(b) => b.size_hint(),
        }
    }
}

/// Measurements the relay completes.
pub struct Telemetry {
    pub member: Arc<MemberMetrics>,
    /// When the request was sent upstream (for time to first byte).
    pub sent_at: Instant,
    /// Time to first byte in milliseconds, once seen (for the access log).
    pub first_byte_ms: Option<u64>,
}

/// What the end of the response the client receives completes: request duration, token counts
/// and the access log line. Set only on that response, never on failed attempts that were retried.
pub struct Delivery {
    pub forward: Arc<ForwardMetrics>,
    pub forward_name: Arc<str>,
    pub method: usize,
    pub started: Instant,
    pub group: Arc<str>,
    /// The request's `model`, when it was read (labels tokens when the response names none).
    pub model: Option<String>,
    pub key: Option<Arc<str>>,
    /// Present when the forward writes an access log.
    pub access: Option<AccessLine>,
}

pub struct AccessLine {
    pub client: std::net::IpAddr,
    pub method: hyper::Method,
    /// The path without its query string (which may carry credentials).
    pub path: String,
}

/// Comment lines sent during SSE silence.
struct KeepAlive {
    every: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The last bytes relayed, to know whether the stream is between two events; at the start,
    /// as if an event had just ended.
    tail: [u8; 4],
}

const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// The largest failed answer body read into memory when the answer is set aside.
pub const SET_ASIDE_MAX: u64 = 64 * 1024;

impl KeepAlive {
    /// An event ends with an empty line: the last line ending (CRLF, LF or a lone CR) comes
    /// right after another one.
    fn between_events(&self) -> bool {
        let before_last: &[u8] = match &self.tail[..] {
            [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n' | b'\r'] => rest,
            _ => return false,
        };
        matches!(before_last.last(), Some(b'\n' | b'\r'))
    }

    fn note(&mut self, data: &[u8]) {
        let n = data.len().min(self.tail.len());
        self.tail.rotate_left(n);
        self.tail[4 - n..].copy_from_slice(&data[data.len() - n..]);
    }
}

/// The relay, boxed once: its state is several hundred bytes, and the response that carries it
/// is moved from the attempt up through the retry loop to hyper — as a pointer, not a copy.
pub struct RelayBody(Box<Relay>);

struct Relay {
    inner: UpstreamBody,
    timer: Timer,
    sleep: Pin<Box<Sleep>>,
    upstream: Arc<Upstream>,
    telemetry: Telemetry,
    status: u16,
    /// When the last upstream frame arrived (for the idle timer).
    last_frame: Instant,
    /// When the response head arrived.
    head_at: Instant,
    /// The body has had to wait for the upstream at least once.
    waited: bool,
    first_byte_seen: bool,
    /// The upstream body has ended (what follows is only what the scanner held back).
    inner_ended: bool,
    /// Why the body broke off, when it did: how the access log says the answer ended.
    broke_off: Option<Ending>,
    scanner: Option<UsageScanner>,
    keepalive: Option<KeepAlive>,
    delivery: Option<Delivery>,
    /// The upstream's in-flight slot, released when the body ends or is dropped (or when the
    /// answer is set aside).
    inflight: Option<InflightGuard>,
}

/// How the relay treats the body beyond passing it on.
pub struct RelayOptions {
    pub timer: Timer,
    /// The attempt's timer, re-armed here rather than allocating another one.
    pub sleep: Pin<Box<Sleep>>,
    /// When the response head arrived: the idle timer counts from there.
    pub head_at: Instant,
    pub scanner: Option<UsageScanner>,
    /// SSE keep-alive interval (applied only to `text/event-stream` responses).
    pub keepalive: Option<Duration>,
}

impl RelayBody {
    pub fn new(
        inner: UpstreamBody,
        status: u16,
        options: RelayOptions,
        upstream: Arc<Upstream>,
        telemetry: Telemetry,
        inflight: InflightGuard,
    ) -> Self {
        let now = options.head_at;
        let at = match options.timer {
            Timer::Idle(d) => now + d,
            Timer::Deadline(at) => at,
        };
        let mut sleep = options.sleep;
        // The attempt's timer is already filed for `sent_at + timeout`: the very deadline of a
        // whole-response timer, and no later than the idle limit — an idle deadline re-arms itself
        // from `last_frame` when it fires early. Re-filing it would cost a timer-wheel update on
        // every request for nothing.
        let filed = match options.timer {
            Timer::Idle(_) => sleep.deadline() <= at,
            Timer::Deadline(_) => sleep.deadline() == at,
        };
        if !filed {
            sleep.as_mut().reset(at);
        }
        let keepalive = options.keepalive.map(|every| KeepAlive {
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
            tail: *b"\n\n\n\n",
        });
        RelayBody(Box::new(Relay {
            inner,
            timer: options.timer,
            sleep,
            upstream,
            telemetry,
            status,
            last_frame: now,
            head_at: now,
            waited: false,
            first_byte_seen: false,
            inner_ended: false,
            broke_off: None,
            scanner: options.scanner,
            keepalive,
            delivery: None,
            inflight: Some(inflight),
        }))
    }

    /// Keeps a failed answer while later attempts run without holding on to its upstream: the
    /// in-flight slot is released, and a body of known length up to `SET_ASIDE_MAX` — error
    /// bodies are small — is read now, so the upstream connection is free again too. A longer or
    /// unsized body stays attached and is relayed as it is if this answer ends up the client's.
    /// Returns the body when it was read.
    pub async fn set_aside(&mut self) -> Result<Option<Bytes>, BoxError> {
        let relay = &mut *self.0;
        relay.inflight = None;
        if relay.inner.size_hint().exact().is_none_or(|n| n > SET_ASIDE_MAX) {
            return Ok(None);
        }
        let mut body = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| relay.poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                body.extend_from_slice(&data);
            }
        }
        let body = body.freeze();
        relay.inner = UpstreamBody::Mock(crate::body::full(body.clone()));
        relay.inner_ended = false;
        Ok(Some(body))
    }

    /// Marks this as the response the client gets.
    pub fn deliver(&mut self, delivery: Delivery) {
        self.0.delivery = Some(delivery);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let Some(d) = &self.delivery else { return };
        let elapsed = d.started.elapsed();
        d.forward.duration[d.method].observe_duration(elapsed);
        let read_for_usage = self.scanner.is_some();
        let (usage, reported_model) = self.scanner.as_mut().map(UsageScanner::finish).unwrap_or_default();
        let model = reported_model.as_ref().map(ModelName::as_str).or(d.model.as_deref()).unwrap_or("unknown");
        if !usage.is_empty() {
            d.forward.tokens.add(&d.group, &self.upstream.name, model, d.key.as_deref(), usage);
        } else if read_for_usage {
            // Where token counts fall short of the bill: a stream cut before its usage event.
            let reason = if self.ending() == Ending::Complete { UNCOUNTED_NO_USAGE } else { UNCOUNTED_CUT };
            d.forward.uncounted[reason].inc();
        }
        if let Some(a) = &d.access {
            let dash = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
            crate::info!(
                "access forward={} client={} key={} method={} path={} model={} group={} upstream={} status={} end={} ttft_ms={} duration_ms={} prompt_tokens={} completion_tokens={}",
                d.forward_name,
                a.client,
                d.key.as_deref().unwrap_or("-"),
                a.method,
                crate::log::Field(&a.path),
                crate::log::Field(model),
                d.group,
                self.upstream.name,
                self.status,
                self.ending().as_str(),
                dash(self.telemetry.first_byte_ms),
                elapsed.as_millis(),
                dash(usage.prompt),
                dash(usage.completion),
            );
        }
    }
}

/// How the body the client was given ended; the status alone says 200 for a stream cut halfway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Relayed to its end.
    Complete,
    /// The upstream broke it off: a reset, or a body shorter than declared.
    UpstreamError,
    /// `timeout.request` ended it: the upstream went silent, or never finished.
    Timeout,
    /// Dropped before its end: the client left, or a shutdown's deadline ended it.
    Cut,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::UpstreamError => "upstream_error",
            Ending::Timeout => "timeout",
            Ending::Cut => "cut",
        }
    }
}

#[derive(Debug)]
pub struct RelayTimeout {
    pub upstream: String,
    pub idle: bool,
}

impl std::fmt::Display for RelayTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.idle {
            write!(f, "upstream {} went silent mid-stream for longer than timeout.request", self.upstream)
        } else {
            write!(f, "upstream {} did not finish its response within timeout.request", self.upstream)
        }
    }
}

impl std::error::Error for RelayTimeout {}

/// Index of the `stream_timeout` / `stream_reset` counters in `MemberMetrics::stream_errors`.
const STREAM_TIMEOUT: usize = 0;
const STREAM_RESET: usize = 1;

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        if self.0.rewrites_body() {
            return SizeHint::default();
        }
        self.0.inner.size_hint()
    }
}

/// Whether the client may receive other bytes than the upstream sent (keep-alive comments
/// added, usage chunks stripped): the upstream's length then does not hold.
fn rewrites(keepalive: bool, scanner: Option<&UsageScanner>) -> bool {
    keepalive || scanner.is_some_and(UsageScanner::rewrites)
}

impl RelayOptions {
    pub fn rewrites_body(&self) -> bool {
        rewrites(self.keepalive.is_some(), self.scanner.as_ref())
    }
}

impl Relay {
    fn rewrites_body(&self) -> bool {
        rewrites(self.keepalive.is_some(), self.scanner.as_ref())
    }

    /// Nothing is left to relay. A server that knows the length may stop asking once it has
    /// it all, so the end is not always seen as a last `None`.
    #[inline]
    fn at_end(&self) -> bool {
        self.inner_ended || (self.inner.is_end_stream() && !self.scanner.as_ref().is_some_and(UsageScanner::holds_back))
    }

    fn ending(&self) -> Ending {
        match self.broke_off {
            Some(why) => why,
            None if self.at_end() => Ending::Complete,
            None => Ending::Cut,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if this.inner_ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let idle_timer = matches!(this.timer, Timer::Idle(_));
                // When the frame arrived, if anything below needs it. A first frame that was
                // ready when first asked for is taken to have come with the head (a whole answer
                // in one read, or a mock's): its time is the head's, and a clock read — dear in a
                // VM — would only time the proxy. The idle timer needs every frame's real time
                // (a slow client can keep a ready body unread for long, and a socket read that
                // finds data at once does not wait): the head's only for a first frame the
                // upstream's body confirms was read together with the head.
                let arrived = match (idle_timer, this.first_byte_seen, this.waited) {
                    (false, false, false) => Some(this.head_at),
                    (true, false, false) if this.inner.came_with_head() => Some(this.head_at),
                    (false, true, _) => None,
                    _ => Some(Instant::now()),
                };
                if let (true, Some(at)) = (idle_timer, arrived) {
                    // Only noted here: the timer is moved when it fires (below), not on every
                    // frame — a token stream would otherwise re-file it hundreds of times.
                    this.last_frame = at;
                }
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if !this.first_byte_seen {
                            this.first_byte_seen = true;
                            let at = arrived.unwrap_or(this.head_at);
                            let ttft = at.saturating_duration_since(this.telemetry.sent_at);
                            this.telemetry.first_byte_ms = Some(ttft.as_millis() as u64);
                            this.telemetry.member.ttft.observe_duration(ttft);
                        }
                        if let Some(scanner) = &mut this.scanner {
                            data = scanner.frame(data);
                        }
                        if let Some(k) = &mut this.keepalive {
                            k.note(&data);
                            k.sleep.as_mut().reset(Instant::now() + k.every);
                        }
                        if data.is_empty() {
                            // Everything in it was held back or stripped: wait for more.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Frame::data(data)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.broke_off = Some(Ending::UpstreamError);
                this.telemetry.member.stream_errors[STREAM_RESET].inc();
                crate::warn!("upstream {} broke off its response: {e}", this.upstream.name);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.inner_ended = true;
                Poll::Ready(
                    this.scanner.as_mut().and_then(UsageScanner::take_held_back).map(|tail| Ok(Frame::data(tail))),
                )
            }
            Poll::Pending => {
                this.waited = true;
                if let Some(k) = &mut this.keepalive {
                    if k.sleep.as_mut().poll(cx).is_ready() {
                        let now = Instant::now();
                        k.sleep.as_mut().reset(now + k.every);
                        // Re-arm the timer's waker registration.
                        let _ = k.sleep.as_mut().poll(cx);
                        if k.between_events() {
                            k.note(KEEPALIVE_COMMENT);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE_COMMENT)))));
                        }
                    }
                }
                loop {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Timer::Idle(d) = this.timer {
                        let silent_until = this.last_frame + d;
                        if silent_until > Instant::now() {
                            // Frames came since the timer was set: it fires again after the
                            // silence that follows the latest one.
                            this.sleep.as_mut().reset(silent_until);
                            continue;
                        }
                    }
                    this.broke_off = Some(Ending::Timeout);
                    this.telemetry.member.stream_errors[STREAM_TIMEOUT].inc();
                    let err = RelayTimeout {
                        upstream: this.upstream.name.clone(),
                        idle: matches!(this.timer, Timer::Idle(_)),
                    };
                    crate::warn!("{err}");
                    return Poll::Ready(Some(Err(Box::new(err))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::ScheduledBody;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    fn frames(n: usize) -> VecDeque<Bytes> {
        (0..n).map(|i| Bytes::from(format!("data: {i}\n\n"))).collect()
    }

    fn relay(frames: VecDeque<Bytes>, gap: Duration, timer: Timer) -> (RelayBody, Arc<MemberMetrics>) {
        let body = UpstreamBody::Mock(ProxyBody::boxed(ScheduledBody::new(frames, gap)));
        relay_over(body, timer, Instant::now(), Instant::now(), None)
    }

    /// A relay of `body`, whose request was sent at `sent_at` and whose head came at `head_at`.
    fn relay_over(
        body: UpstreamBody,
        timer: Timer,
        sent_at: Instant,
        head_at: Instant,
        keepalive: Option<Duration>,
    ) -> (RelayBody, Arc<MemberMetrics>) {
        let upstream = Arc::new(
            Upstream::compile(&crate::config::Upstream {
                name: "u".into(),
                url: "mock://".into(),
                auth: crate::config::Auth::None,
                headers: vec![],
                breaker: None,
                ratelimit: None,
                weight: 1,
                max_concurrency: None,
                health_check: None,
                mock: Some(crate::config::Mock {
                    model: "m".into(),
                    ttft_ms: 0,
                    token_delay_ms: 0,
                    tokens: 1,
                    error_rate: 0.0,
                    error_status: 500,
                }),
            })
            .unwrap(),
        );
        let member = Arc::new(MemberMetrics::default());
        let guard = upstream.load.try_begin(None).unwrap();
        let telemetry = Telemetry { member: member.clone(), sent_at, first_byte_ms: None };
        let options = RelayOptions {
            timer,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            head_at,
            scanner: None,
            keepalive,
        };
        (RelayBody::new(body, 200, options, upstream, telemetry, guard), member)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_allows_long_streams_that_keep_talking() {
        // 20 frames 100 ms apart: 2 s in total, far beyond the 300 ms silence limit.
        let (body, member) = relay(frames(20), Duration::from_millis(100), Timer::Idle(Duration::from_millis(300)));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), frames(20).iter().map(Bytes::len).sum::<usize>());
        assert_eq!(member.ttft.count(), 1, "time to first byte is observed once");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_cuts_a_stalled_stream() {
        let (body, member) = relay(frames(3), Duration::from_secs(10), Timer::Idle(Duration::from_secs(1)));
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("silent"), "{err}");
        assert_eq!(member.stream_errors[STREAM_TIMEOUT].get(), 1);
    }

    /// A body that breaks off at once, as an upstream resetting mid-answer.
    struct Broken;

    impl Body for Broken {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("connection reset".into())))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_access_log_says_how_the_body_ended() {
        let idle = Timer::Idle(Duration::from_secs(1));
        let (mut body, _) = relay(frames(2), Duration::from_millis(10), idle);
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        assert_eq!(body.0.ending(), Ending::Complete);

        let (mut body, _) = relay(frames(2), Duration::from_millis(10), idle);
        body.frame().await.unwrap().unwrap();
        assert_eq!(body.0.ending(), Ending::Cut, "the client left after the first event");

        let (mut body, _) = relay(frames(2), Duration::from_secs(10), idle);
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(body.0.ending(), Ending::Timeout);

        let broken = UpstreamBody::Mock(ProxyBody::boxed(Broken));
        let (mut body, _) = relay_over(broken, idle, Instant::now(), Instant::now(), None);
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(body.0.ending(), Ending::UpstreamError);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_slow_to_read_a_ready_stream_is_not_taken_for_a_silent_upstream() {
        // Frames 100 ms apart, a silence limit of 1 s, and a client that reads the second frame
        // 2 s late: the frames it finds waiting are still the upstream talking.
        let (body, _) = relay(frames(3), Duration::from_millis(100), Timer::Idle(Duration::from_secs(1)));
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        for n in 2..=3 {
            assert!(body.frame().await.unwrap().is_ok(), "frame {n}");
        }
        assert!(body.frame().await.is_none());
    }

    /// A stream's first event that a plain-HTTP/1.1 upstream sent in the same read as the head
    /// arrived with the head, however late the client asks for it: its time to first byte is
    /// the head's, found with no clock read. The events after it are relayed as ever.
    #[tokio::test]
    async fn a_first_event_read_with_the_head_is_timed_by_the_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (more_tx, more_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await.unwrap();
            // The head and the first event in one write; the second only when asked.
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            s.write_all(format!("{head}d\r\ndata: first\n\n\r\n").as_bytes()).await.unwrap();
            let _ = more_rx.await;
            s.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await.unwrap();
            let _ = s.read(&mut request).await;
        });
        let pool =
            crate::upstream::direct::DirectPool::new(address, Duration::from_secs(5), None, Duration::from_secs(60));
        let (method, path) = (hyper::Method::GET, hyper::http::uri::PathAndQuery::from_static("/v1/chat/completions"));
        let out = crate::upstream::direct::Outgoing {
            method: &method,
            path: &path,
            headers: &|_: &mut dyn FnMut(&[u8], &[u8])| {},
            body: &Bytes::new(),
            now: std::time::Instant::now(),
        };
        let sent_at = Instant::now();
        let answer = pool.send(out).await.unwrap();
        let head_at = Instant::from_std(answer.body.head_at());
        assert!(answer.body.came_with_head());
        let body = UpstreamBody::Direct(answer.body);
        let (body, member) = relay_over(body, Timer::Idle(Duration::from_secs(600)), sent_at, head_at, None);
        let mut body = std::pin::pin!(body);
        // The client asks for the body a (virtual) minute after the head came.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(60)).await;
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: first\n\n");
        let (ttft, head) = (member.ttft.sum(), (head_at - sent_at).as_secs_f64());
        assert!((ttft - head).abs() < 1e-6, "the head's time ({head} s), not when it was asked for: {ttft} s");
        tokio::time::resume();
        more_tx.send(()).unwrap();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"data: second\n\n");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_comments_fall_between_events_whatever_their_line_endings() {
        // Frames 2.5 s apart, a comment after each silent second: the silence in the middle of
        // the first event gets none, the one after it two.
        for ending in ["\n", "\r\n", "\r"] {
            let frames = [format!("data: 0{ending}"), ending.to_string(), format!("data: 1{ending}{ending}")];
            let body = ScheduledBody::new(frames.into_iter().map(Bytes::from).collect(), Duration::from_millis(2500));
            let body = UpstreamBody::Mock(ProxyBody::boxed(body));
            let timer = Timer::Idle(Duration::from_secs(60));
            let (body, _) = relay_over(body, timer, Instant::now(), Instant::now(), Some(Duration::from_secs(1)));
            let all = body.collect().await.unwrap().to_bytes();
            let expected = format!("data: 0{ending}{ending}: keep-alive\n\n: keep-alive\n\ndata: 1{ending}{ending}");
            assert_eq!(String::from_utf8_lossy(&all), expected, "{ending:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_the_whole_body() {
        let deadline = Instant::now() + Duration::from_millis(250);
        let (body, _) = relay(frames(5), Duration::from_millis(100), Timer::Deadline(deadline));
        let mut body = std::pin::pin!(body);
        let mut ok = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(e.to_string().contains("did not finish"));
                    break;
                }
            }
        }
        assert_eq!(ok, 3, "frames at 0, 100 and 200 ms pass; the one at 300 ms is past the deadline");
    }

    #[tokio::test]
    async fn dropping_the_body_releases_the_slot_and_records_the_duration() {
        let (mut body, _) = relay(frames(3), Duration::from_secs(10), Timer::Idle(Duration::from_secs(60)));
        let forward = Arc::new(ForwardMetrics::default());
        body.deliver(Delivery {
            forward: forward.clone(),
            forward_name: "f".into(),
            method: 1,
            started: Instant::now(),
            group: "g".into(),
            model: None,
            key: None,
            access: None,
        });
        let load = body.0.upstream.load.clone();
        assert_eq!(load.inflight(), 1);
        drop(body);
        assert_eq!(load.inflight(), 0);
        assert_eq!(forward.duration[1].count(), 1);
    }
}
