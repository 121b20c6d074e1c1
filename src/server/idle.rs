//! The guard against clients that hold a connection without sending a request (slowloris, and
//! idle keep-alive connections): a connection with no request in flight for `timeout.connect`
//! is closed.
//!
//! hyper has a header-read timeout of its own, but it arms a fresh heap-allocated timer for
//! every request head — an allocation, a clock read and a timer-wheel insertion and removal per
//! request, on a path where everything else was made to cost nothing. Here each connection has
//! one timer, which only moves when it fires: requests just count themselves in and out (an
//! atomic add) and note when the connection went idle. A request being served, however long
//! (a slow model, a long stream), never counts as idle. On the proxy's own HTTP/1.1 server a
//! request counts as in flight once its body has arrived; until then the limit applies between
//! the pieces of the body, so a client cannot hold a connection by trickling a body either.
//!
//! On connections hyper serves (TLS, HTTP/2) the same two limits hold through wrappers: a
//! request body that stops arriving for the limit fails ([`Stalling`]), and a connection whose
//! requests in flight all wait for the client to take their answers — hyper asks an answer
//! for its next piece only once the client has made room — is closed when none has moved for
//! the limit ([`Tracked`]): a client that stops reading must not hold its upstream requests.
//! On HTTP/2 a client may stop reading one stream and go on with others, which keep the
//! connection moving: an answer whose piece has waited for `STREAM_STALL_FACTOR` times the limit
//! lets go of its source (the upstream request) by itself, and its stream is reset once the
//! client reads again. The longer limit spares a client that reads many streams over a slow
//! link, where each waits its turn for the connection's capacity.

use crate::clock;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// How often the guard of a connection with requests in flight looks at it again.
const BUSY_RECHECK: Duration = Duration::from_secs(1);
/// An HTTP/2 answer is abandoned when one of its pieces has waited this many times the limit
/// (30 s with the default `timeout.connect`): a piece of a few KiB that long is under 1 KiB/s.
const STREAM_STALL_FACTOR: u32 = 3;

pub struct Activity {
    in_flight: AtomicU32,
    /// When the last request ended (or the connection opened), on `clock`.
    idle_since: AtomicU64,
    /// Requests in flight whose answer handed hyper a piece that it has not yet written (it
    /// has not asked for the next one).
    waiting_for_client: AtomicU32,
    /// When an answer last moved (a piece handed over, or the next one asked for), on `clock`.
    moved_at: AtomicU64,
    /// A request has begun on this connection, and who waits for that (a drain).
    began_any: AtomicBool,
    first_began: tokio::sync::Notify,
    /// The answers hyper serves on this connection (dropped ones are pruned as it goes).
    answers: Mutex<Vec<Weak<dyn Waiting>>>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let now = clock::now();
        Arc::new(Activity {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            waiting_for_client: AtomicU32::new(0),
            moved_at: AtomicU64::new(now),
            began_any: AtomicBool::new(false),
            first_began: tokio::sync::Notify::new(),
            answers: Mutex::new(Vec::new()),
        })
    }

    /// A request's head has arrived; the connection is busy until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.began_any.swap(true, Ordering::AcqRel) {
            self.first_began.notify_waiters();
        }
        Busy(self.clone())
    }

    /// Resolves once a request has begun on this connection.
    pub async fn first_request(&self) {
        let began = self.first_began.notified();
        if !self.began_any.load(Ordering::Acquire) {
            began.await;
        }
    }

    /// The client just made progress without a request being in flight yet (a piece of a
    /// request body arrived): the idle time counts from now.
    pub fn touch(&self) {
        self.idle_since.store(clock::now(), Ordering::Relaxed);
    }

    /// How long past the limit the connection has been idle, or how long until it will be.
    fn remaining(&self, limit: Duration, now: u64) -> Option<Duration> {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let since = match in_flight {
            0 => self.idle_since.load(Ordering::Relaxed),
            // Every answer waits for the client to read: stalled since the last movement.
            n if self.waiting_for_client.load(Ordering::Relaxed) >= n => self.moved_at.load(Ordering::Relaxed),
            // Busy: looked at again within a second, so that once every answer waits for the
            // client, the limit runs from when that began (not up to twice the limit).
            _ => return Some(limit.min(BUSY_RECHECK)),
        };
        let deadline = since.saturating_add(limit.as_nanos() as u64);
        (deadline > now).then(|| Duration::from_nanos(deadline - now))
    }

    fn moved(&self) -> u64 {
        let now = clock::now();
        self.moved_at.store(now, Ordering::Relaxed);
        now
    }

    fn register(&self, answer: Weak<dyn Waiting>) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        // Pruned when full, before it would grow: amortised constant time per answer.
        if answers.len() == answers.capacity() {
            answers.retain(|a| a.strong_count() > 0);
        }
        answers.push(answer);
    }

    /// Lets go of the source of every answer whose piece has waited for its client since before
    /// `limit` ago (at `now`), while other answers on the connection move.
    fn abandon_waiting_for(&self, limit: Duration, now: u64) {
        if self.waiting_for_client.load(Ordering::Relaxed) == 0 {
            return;
        }
        let before = now.saturating_sub(limit.as_nanos() as u64);
        let stalled: Vec<Arc<dyn Waiting>> = {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            answers
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|a| a.waiting_since().is_some_and(|t| t <= before))
                .collect()
        };
        for answer in stalled {
            answer.abandon_if_waiting_since(before);
        }
    }
}

/// An answer as the connection's guard sees it.
trait Waiting: Send + Sync {
    /// Since when its last piece has waited for the client, if it does.
    fn waiting_since(&self) -> Option<u64>;
    /// Drops its source if its piece still waits since `before` or earlier: the client stopped
    /// taking it (and did not take it since it was found waiting).
    fn abandon_if_waiting_since(&self, before: u64);
}

/// A [`Tracked`] answer's body, shared with the connection's guard.
struct Shared<B> {
    /// `None` once abandoned.
    body: Mutex<Option<B>>,
    /// When its last piece was handed to hyper and not yet taken (0: none waits).
    handed_at: AtomicU64,
}

impl<B: Send> Waiting for Shared<B> {
    fn waiting_since(&self) -> Option<u64> {
        Some(self.handed_at.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    fn abandon_if_waiting_since(&self, before: u64) {
        let body = {
            // Under the lock a poll of the body cannot run: the answer is either still waiting,
            // or was taken since (and is checked here with its new time, or 0).
            let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
            match self.waiting_since() {
                Some(since) if since <= before => body.take(),
                _ => None,
            }
        };
        drop(body);
    }
}

/// The error of an answer whose client stopped reading it.
#[derive(Debug)]
pub struct ClientStalled;

impl std::fmt::Display for ClientStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client took none of this answer for three times timeout.connect: abandoned")
    }
}

impl std::error::Error for ClientStalled {}

/// Marks a request in flight; dropped with the response body (sent, or abandoned).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(clock::now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has been idle for `limit`. The timer sleeps until the earliest
/// moment that could happen, and re-arms itself when activity moved that moment.
pub async fn expired(activity: Arc<Activity>, limit: Duration) {
    while let Some(wait) = activity.remaining(limit, clock::now()) {
        // While requests are in flight, looked at every second whatever the connection's own
        // deadline: an answer left waiting on HTTP/2 is let go of within a second of its limit.
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        tokio::time::sleep(if busy { wait.min(BUSY_RECHECK) } else { wait }).await;
        activity.abandon_waiting_for(limit * STREAM_STALL_FACTOR, clock::now());
    }
}

/// A response body that keeps its request counted as in flight until it is dropped, and notes
/// whether its last piece is still waiting for the client. One whose piece waits for
/// `STREAM_STALL_FACTOR` times the limit is abandoned by the connection's guard, and ends with
/// [`ClientStalled`] (a stream reset).
pub struct Tracked<B> {
    shared: Arc<Shared<B>>,
    busy: Busy,
    handed: bool,
}

impl<B: Send + 'static> Tracked<B> {
    pub fn new(body: B, busy: Busy) -> Self {
        let shared = Arc::new(Shared { body: Mutex::new(Some(body)), handed_at: AtomicU64::new(0) });
        let weak: Weak<dyn Waiting> = Arc::downgrade(&shared) as Weak<Shared<B>>;
        busy.0.register(weak);
        Tracked { shared, busy, handed: false }
    }
}

impl<B> Tracked<B> {
    fn set_handed(&mut self, handed: bool) {
        if self.handed != handed {
            self.handed = handed;
            let waiting = &self.busy.0.waiting_for_client;
            if handed {
                waiting.fetch_add(1, Ordering::Relaxed);
            } else {
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
            let now = self.busy.0.moved();
            self.shared.handed_at.store(if handed { now } else { 0 }, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.set_handed(false);
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // Asked for more: the client took what it was given.
        this.set_handed(false);
        let mut body = this.shared.body.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(inner) = body.as_mut() else { return Poll::Ready(Some(Err(Box::new(ClientStalled)))) };
        let polled = Pin::new(inner).poll_frame(cx);
        drop(body);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            this.set_handed(true);
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.shared.body.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.shared.body.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(B::size_hint).unwrap_or_default()
    }
}

/// A request body that fails when no piece of it arrives for `limit` (hyper-served
/// connections; the proxy's own HTTP/1.1 server has this built in).
pub struct Stalling<B> {
    body: B,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Stalling<B> {
    pub fn new(body: B, limit: Duration) -> Self {
        Stalling { body, limit, timer: None }
    }
}

/// The error of a request body that stopped arriving.
#[derive(Debug)]
pub struct BodyStalled(pub Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no part of the request body arrived for {}s (timeout.connect)", self.0.as_secs())
    }
}

impl std::error::Error for BodyStalled {}

impl<B> Body for Stalling<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                // The timer is armed only while a piece is awaited, and moved when one comes.
                if let Some(t) = &mut this.timer {
                    t.as_mut().reset(tokio::time::Instant::now() + this.limit);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_only_without_requests_in_flight() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        let t0 = a.idle_since.load(Ordering::Relaxed);
        let s = |secs: u64| t0 + secs * clock::NANOS_PER_SEC;
        assert_eq!(a.remaining(limit, s(4)), Some(Duration::from_secs(6)));
        assert_eq!(a.remaining(limit, s(10)), None, "idle since it opened: expired");
        let busy = a.begin();
        assert_eq!(a.remaining(limit, s(100)), Some(BUSY_RECHECK), "a request in flight is never idle");
        let second = a.begin();
        drop(busy);
        assert_eq!(a.remaining(limit, s(100)), Some(BUSY_RECHECK), "one of two requests still in flight");
        drop(second);
        a.touch();
        let ended = a.idle_since.load(Ordering::Relaxed);
        assert!(ended >= t0);
        assert_eq!(a.remaining(limit, ended + 3 * clock::NANOS_PER_SEC), Some(Duration::from_secs(7)));
        assert_eq!(a.remaining(limit, ended + 10 * clock::NANOS_PER_SEC), None);
    }

    #[tokio::test]
    async fn a_connection_whose_answers_all_wait_for_the_client_runs_out_of_time() {
        use http_body_util::BodyExt;
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        let mut answer = Tracked::new(http_body_util::Full::new(Bytes::from_static(b"x")), a.begin());
        let _still_busy = a.begin(); // a second request, still waiting for its upstream
        assert!(answer.frame().await.is_some(), "a piece handed to the server, not yet written");
        let moved = a.moved_at.load(Ordering::Relaxed);
        let at = |secs: u64| moved + secs * clock::NANOS_PER_SEC;
        assert_eq!(a.remaining(limit, at(3)), Some(BUSY_RECHECK), "the other request is not waiting for the client");
        drop(_still_busy);
        assert_eq!(a.remaining(limit, at(3)), Some(Duration::from_secs(7)), "every answer waits: the clock runs");
        assert_eq!(a.remaining(limit, at(10)), None);
        assert!(answer.frame().await.is_none(), "asked for more: the client took it");
        assert_eq!(a.waiting_for_client.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_answer_left_waiting_is_abandoned_while_its_siblings_move() {
        use http_body_util::BodyExt;
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        let full = |text: &'static str| http_body_util::Full::new(Bytes::from_static(text.as_bytes()));
        let mut stalled = Tracked::new(full("x"), a.begin());
        let moving = Tracked::new(full("y"), a.begin());
        assert!(stalled.frame().await.is_some(), "a piece handed over, never taken");
        let handed = stalled.shared.handed_at.load(Ordering::Relaxed);
        let at = |secs: u64| handed + secs * clock::NANOS_PER_SEC;
        a.abandon_waiting_for(limit, at(9));
        assert!(stalled.shared.body.lock().unwrap().is_some(), "within the limit: kept");
        a.abandon_waiting_for(limit, at(10));
        assert!(stalled.shared.body.lock().unwrap().is_none(), "its source let go");
        assert!(moving.shared.body.lock().unwrap().is_some(), "the other answer waits for no client");
        let ended = stalled.frame().await.unwrap().unwrap_err();
        assert!(ended.is::<ClientStalled>(), "{ended}");
        drop((stalled, moving));
        assert_eq!(a.answers.lock().unwrap().iter().filter(|w| w.strong_count() > 0).count(), 0);
    }
}
