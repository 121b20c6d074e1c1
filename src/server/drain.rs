//! Serving a connection alongside the two things that may end it early: the listener's drain
//! signal (finish the response in flight, then close) and the idle guard (see `idle`).
//!
//! Both are futures that could simply be raced against the connection, but a race polls every
//! contender on every wake-up — three times per proxied request, for signals that fire once in
//! a connection's life. Here they are polled with a waker of their own and only when that waker
//! fired, so a request pays one atomic load for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use tokio::sync::watch;

/// The drain signal a listener sends to its connections, and the wait for them to close.
pub struct Drain {
    tx: watch::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { tx: watch::channel(()).0 }
    }
}

impl Drain {
    /// A handle for one connection; held until the connection closes.
    pub fn watcher(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }

    /// Signals every connection, then waits until all have closed.
    pub async fn drain(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// The two things that may interrupt a connection: the drain signal (once), and idleness —
/// which still applies during a drain, so a client that trickles a head or a body cannot hold a
/// drain (or a removed forward's listener) open.
pub struct Interrupts {
    drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    idle: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Interrupts {
    pub fn new(
        drain: impl Future<Output = ()> + Send + 'static,
        idle: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Interrupts { drain: Some(Box::pin(drain)), idle: Box::pin(idle) }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Interrupt> {
        if let Some(drain) = &mut self.drain {
            if drain.as_mut().poll(cx).is_ready() {
                self.drain = None;
                return Poll::Ready(Interrupt::Drain);
            }
        }
        self.idle.as_mut().poll(cx).map(|()| Interrupt::Idle)
    }
}

/// What ended a connection early.
pub enum Interrupt {
    /// The listener drains: let the current response finish, then close.
    Drain,
    /// No request for the idle limit.
    Idle,
}

/// Records that the side futures were woken, and forwards the wake-up to the task.
struct SideWaker {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A connection, and the interrupts — polled only when woken — which may end it early. On
/// `Drain`, `on_drain` is called once (hyper's graceful shutdown) and the connection runs to its
/// end unless it goes idle; on `Idle`, the connection is dropped (closed) at once.
pub struct Guarded<C, F> {
    conn: Pin<Box<C>>,
    side: Interrupts,
    on_drain: F,
    waker: Arc<SideWaker>,
    side_waker: Waker,
}

impl<C, F> Guarded<C, F>
where
    C: Future,
    F: FnMut(Pin<&mut C>),
{
    pub fn new(conn: C, side: Interrupts, on_drain: F) -> Self {
        // Woken at first, so the side futures get their first poll (and register their timers).
        let waker = Arc::new(SideWaker { woken: AtomicBool::new(true), task: Mutex::new(None) });
        let side_waker = Waker::from(waker.clone());
        Guarded { conn: Box::pin(conn), side, on_drain, waker, side_waker }
    }
}

impl<C, F> Future for Guarded<C, F>
where
    C: Future,
    F: FnMut(Pin<&mut C>) + Unpin,
{
    /// The connection's own outcome, or `None` when it was closed for idleness.
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.waker.woken.swap(false, Ordering::Acquire) {
            {
                let mut task = this.waker.task.lock().unwrap_or_else(|p| p.into_inner());
                if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    *task = Some(cx.waker().clone());
                }
            }
            let mut side_cx = Context::from_waker(&this.side_waker);
            // Drain first, then idleness (both may be ready in one wake-up).
            while let Poll::Ready(interrupt) = this.side.poll_next(&mut side_cx) {
                match interrupt {
                    Interrupt::Idle => return Poll::Ready(None),
                    Interrupt::Drain => (this.on_drain)(this.conn.as_mut()),
                }
            }
        }
        this.conn.as_mut().poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn side_interrupts_reach_the_connection() {
        // Idle: the connection is dropped.
        let conn = std::future::pending::<()>();
        let side = Interrupts::new(std::future::pending(), tokio::time::sleep(Duration::from_secs(5)));
        assert!(Guarded::new(conn, side, |_| {}).await.is_none());

        // Drain: the connection is told, then runs to its own end.
        let drain = Drain::default();
        let mut rx = drain.watcher();
        let (told_tx, told_rx) = tokio::sync::oneshot::channel::<()>();
        let mut told_tx = Some(told_tx);
        let conn = async move {
            let _ = told_rx.await;
            "finished"
        };
        let side = Interrupts::new(
            async move {
                let _ = rx.changed().await;
            },
            std::future::pending(),
        );
        let guarded = tokio::spawn(Guarded::new(conn, side, move |_| {
            if let Some(t) = told_tx.take() {
                let _ = t.send(());
            }
        }));
        tokio::task::yield_now().await;
        let _ = drain.tx.send(());
        assert_eq!(guarded.await.unwrap(), Some("finished"));

        // Idle during a drain: still dropped.
        let drain = Drain::default();
        let mut rx = drain.watcher();
        let side = Interrupts::new(
            async move {
                let _ = rx.changed().await;
            },
            tokio::time::sleep(Duration::from_secs(5)),
        );
        let _ = drain.tx.send(());
        assert!(Guarded::new(std::future::pending::<()>(), side, |_| {}).await.is_none());
    }
}
