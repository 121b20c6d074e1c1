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

use crate::body::BoxError;
use crate::upstream::load::InflightGuard;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
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

pub struct RelayBody<B> {
    inner: B,
    timer: Timer,
    sleep: Pin<Box<Sleep>>,
    upstream: String,
    /// The upstream's in-flight slot, released when the body ends or is dropped.
    _inflight: InflightGuard,
}

impl<B> RelayBody<B> {
    pub fn new(inner: B, timer: Timer, upstream: &str, inflight: InflightGuard) -> Self {
        let at = match timer {
            Timer::Idle(d) => Instant::now() + d,
            Timer::Deadline(at) => at,
        };
        RelayBody {
            inner,
            timer,
            sleep: Box::pin(tokio::time::sleep_until(at)),
            upstream: upstream.to_string(),
            _inflight: inflight,
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

impl<B> Body for RelayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Timer::Idle(d) = this.timer {
                    this.sleep.as_mut().reset(Instant::now() + d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let idle = matches!(this.timer, Timer::Idle(_));
                    crate::warn!("{}", RelayTimeout { upstream: this.upstream.clone(), idle });
                    Poll::Ready(Some(Err(Box::new(RelayTimeout { upstream: this.upstream.clone(), idle }))))
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

    fn relay(frames: VecDeque<Bytes>, gap: Duration, timer: Timer) -> RelayBody<ScheduledBody> {
        let load = std::sync::Arc::new(crate::upstream::load::Load::default());
        RelayBody::new(ScheduledBody::new(frames, gap), timer, "u", load.try_begin(None).unwrap())
    }

    fn frames(n: usize) -> VecDeque<Bytes> {
        (0..n).map(|i| Bytes::from(format!("data: {i}\n\n"))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_allows_long_streams_that_keep_talking() {
        // 20 frames 100 ms apart: 2 s in total, far beyond the 300 ms silence limit.
        let body = relay(frames(20), Duration::from_millis(100), Timer::Idle(Duration::from_millis(300)));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), frames(20).iter().map(Bytes::len).sum::<usize>());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_cuts_a_stalled_stream() {
        let body = relay(frames(3), Duration::from_secs(10), Timer::Idle(Duration::from_secs(1)));
        let mut body = std::pin::pin!(body);
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("silent"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_the_whole_body() {
        let deadline = Instant::now() + Duration::from_millis(250);
        let body = relay(frames(5), Duration::from_millis(100), Timer::Deadline(deadline));
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
}
