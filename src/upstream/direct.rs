//! Plain-HTTP/1.1 upstream connections driven by the request that uses them.
//!
//! hyper-util's pooled client runs every connection in a task of its own and hands requests and
//! responses to it through channels: two extra task wake-ups per request, which on a busy core
//! cost more than the proxying itself. For `http://` upstreams without an outbound proxy (the
//! vLLM/Ollama/sidecar case, and every benchmark), this pool instead keeps idle
//! `(SendRequest, Connection)` pairs and lets the request's own task poll the connection while
//! it waits for the head, and the relay body poll it while the body streams. When the body ends
//! the pair goes back to the pool; when the client goes away it is dropped, which closes the
//! upstream connection. HTTPS, HTTP/2 and proxied upstreams keep the pooled client.
//!
//! An idle connection is not polled, so a close by the upstream is noticed when it is taken:
//! it is polled once, and a request that an already-closed connection refused unsent is sent
//! again on a fresh one.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per upstream: enough for bursts, bounded so a spike cannot pin
/// thousands of sockets.
const MAX_IDLE: usize = 512;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// A connection and its request handle. Boxed once when dialled: the pair is large (hyper's
/// connection state), and it moves between the pool, the request and the relay body on every
/// request — as a pointer, not as kilobytes.
struct Pair {
    sender: SendRequest<Full<Bytes>>,
    conn: Conn,
}

struct Idle {
    pair: Box<Pair>,
    since: Instant,
}

pub struct DirectPool {
    /// `host:port` to dial.
    address: String,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    Connect(String),
    /// The connection failed before a response head arrived.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => f.write_str(e),
            SendError::Http(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl DirectPool {
    pub fn new(
        address: String,
        connect_timeout: Duration,
        keepalive: Option<Duration>,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(DirectPool { address, connect_timeout, keepalive, idle_timeout, idle: Mutex::new(Vec::new()) })
    }

    fn take(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, pair: Box<Pair>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { pair, since: Instant::now() });
        }
    }

    async fn dial(&self) -> Result<Box<Pair>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| SendError::Connect(format!("connect to {} timed out", self.address)))?
            .map_err(|e| SendError::Connect(format!("connect to {}: {e}", self.address)))?;
        let _ = stream.set_nodelay(true);
        if let Some(idle) = self.keepalive {
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle));
        }
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(SendError::Http)?;
        Ok(Box::new(Pair { sender, conn }))
    }

    /// Sends the request and returns the response head with the connection that must be polled
    /// while its body is read. When a pooled connection turns out to be closed before the request
    /// was written, hyper hands the request back and it goes again on a fresh connection.
    pub async fn send(self: &Arc<Self>, req: Request<Full<Bytes>>) -> Result<(Response<Incoming>, Driver), SendError> {
        let mut req = Some(req);
        let mut reused = self.take();
        loop {
            let was_pooled = reused.is_some();
            let mut pair = match reused.take() {
                Some(c) => c.pair,
                None => self.dial().await?,
            };
            // Ready to send? Polling the connection also notices a close by the upstream.
            let ready = poll_fn(|cx| {
                let Pair { sender, conn } = &mut *pair;
                if let Poll::Ready(r) = Pin::new(conn).poll(cx) {
                    return Poll::Ready(Err(r.err()));
                }
                sender.poll_ready(cx).map_err(Some)
            })
            .await;
            match ready {
                Ok(()) => {}
                Err(_) if was_pooled => continue,
                Err(Some(e)) => return Err(SendError::Http(e)),
                Err(None) => return Err(SendError::Connect(format!("{} closed the connection", self.address))),
            }
            let Some(request) = req.take() else {
                return Err(SendError::Connect(format!("{}: the request could not be resent", self.address)));
            };
            let mut response = std::pin::pin!(pair.sender.try_send_request(request));
            let mut conn_done = false;
            let result = poll_fn(|cx| {
                if !conn_done && Pin::new(&mut pair.conn).poll(cx).is_ready() {
                    conn_done = true;
                }
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => return Ok((resp, Driver { pool: self.clone(), pair: Some(pair), conn_done })),
                Err(mut e) => {
                    req = e.take_message();
                    if !(was_pooled && req.is_some()) {
                        return Err(SendError::Http(e.into_error()));
                    }
                }
            }
        }
    }
}

/// The connection behind a response body: polled with the body, pooled again when the body has
/// been read to its end, closed when dropped earlier.
pub struct Driver {
    pool: Arc<DirectPool>,
    pair: Option<Box<Pair>>,
    conn_done: bool,
}

impl Driver {
    /// Lets the connection read and dispatch; call before polling the body.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        if self.conn_done {
            return;
        }
        if let Some(pair) = &mut self.pair {
            if Pin::new(&mut pair.conn).poll(cx).is_ready() {
                self.conn_done = true;
            }
        }
    }

    /// The body was read to its end: the connection can serve the next request.
    pub fn release(&mut self) {
        if self.conn_done {
            return;
        }
        if let Some(pair) = self.pair.take() {
            self.pool.put(pair);
        }
    }
}
