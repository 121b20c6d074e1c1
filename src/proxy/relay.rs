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
//! frame passes, the in-flight slot and the request duration when it ends or is dropped.

use crate::body::{BoxError, ProxyBody};
use crate::metrics::families::{ForwardMetrics, MemberMetrics};
use crate::upstream::load::InflightGuard;
use crate::upstream::Upstream;
use bytes::Bytes;
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
pub enum UpstreamBody {
    Http(Incoming),
    Mock(ProxyBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Mock(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http(b) => b.is_end_stream(),
            UpstreamBody::Mock(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http(b) => b.size_hint(),
            UpstreamBody::Mock(b) => b.size_hint(),
        }
    }
}

/// Measurements the relay completes.
pub struct Telemetry {
    pub member: Arc<MemberMetrics>,
    /// When the request was sent upstream (for time to first byte).
    pub sent_at: Instant,
}

pub struct RelayBody {
    inner: UpstreamBody,
    timer: Timer,
    sleep: Pin<Box<Sleep>>,
    upstream: Arc<Upstream>,
    telemetry: Telemetry,
    first_byte_seen: bool,
    /// The forward's duration histogram, method slot and request start: set only on the
    /// response the client receives (not on failed attempts that were retried).
    forward: Option<(Arc<ForwardMetrics>, usize, Instant)>,
    /// The upstream's in-flight slot, released when the body ends or is dropped.
    _inflight: InflightGuard,
}

impl RelayBody {
    pub fn new(
        inner: UpstreamBody,
        timer: Timer,
        upstream: Arc<Upstream>,
        telemetry: Telemetry,
        inflight: InflightGuard,
    ) -> Self {
        let at = match timer {
            Timer::Idle(d) => Instant::now() + d,
            Timer::Deadline(at) => at,
        };
        RelayBody {
            inner,
            timer,
            sleep: Box::pin(tokio::time::sleep_until(at)),
            upstream,
            telemetry,
            first_byte_seen: false,
            forward: None,
            _inflight: inflight,
        }
    }

    /// Marks this as the response the client gets: its end completes the request duration.
    pub fn deliver(&mut self, forward: Arc<ForwardMetrics>, method: usize, started: Instant) {
        self.forward = Some((forward, method, started));
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if let Some((f, method, started)) = &self.forward {
            f.duration[*method].observe_duration(started.elapsed());
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
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !this.first_byte_seen && frame.is_data() {
                    this.first_byte_seen = true;
                    this.telemetry.member.ttft.observe_duration(this.telemetry.sent_at.elapsed());
                }
                if let Timer::Idle(d) = this.timer {
                    this.sleep.as_mut().reset(Instant::now() + d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.telemetry.member.stream_errors[STREAM_RESET].inc();
                crate::warn!("upstream {} broke off its response: {e}", this.upstream.name);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.telemetry.member.stream_errors[STREAM_TIMEOUT].inc();
                    let err = RelayTimeout {
                        upstream: this.upstream.name.clone(),
                        idle: matches!(this.timer, Timer::Idle(_)),
                    };
                    crate::warn!("{err}");
                    Poll::Ready(Some(Err(Box::new(err))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        let body = UpstreamBody::Mock(ScheduledBody::new(frames, gap).boxed_unsync());
        let telemetry = Telemetry { member: member.clone(), sent_at: Instant::now() };
        (RelayBody::new(body, timer, upstream, telemetry, guard), member)
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
        body.deliver(forward.clone(), 1, Instant::now());
        let load = body.upstream.load.clone();
        assert_eq!(load.inflight(), 1);
        drop(body);
        assert_eq!(load.inflight(), 0);
        assert_eq!(forward.duration[1].count(), 1);
    }
}
