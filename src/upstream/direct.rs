//! Plain-HTTP/1.1 upstream connections, spoken directly by the request that uses them.
//!
//! For `http://` upstreams without an outbound proxy (the vLLM/Ollama/sidecar case, and every
//! benchmark) the proxy is an HTTP/1.1 client of the simplest kind: one request at a time per
//! connection, a buffered body, a response relayed frame by frame. hyper's client is built for
//! the general case — a connection task, a request channel and a response callback per
//! request, a header map walked through `fmt` — and on a busy core that machinery cost more
//! than the proxying itself. Here the request's own task writes the head and body in one
//! system call, parses the response head with `httparse` (hyper's own parser), and the response
//! body reads the socket as the client consumes it; the connection goes back to the pool the
//! moment the last byte is read. HTTPS, HTTP/2 and proxied upstreams keep hyper's pooled client.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when the
//! final transfer coding is chunked; else `Content-Length` (conflicting values are an error);
//! else the body runs to the close. A transfer coding other than chunked (`gzip, chunked`) is an
//! error: the proxy drops `Transfer-Encoding`, so the client would get the coded bytes
//! undeclared. A connection is reused only after a complete, exactly framed
//! response that did not ask to close.
//!
//! An idle connection is not read, so a close by the upstream is noticed when it is taken: from
//! the readiness the event loop already has (no system call), and, for a connection idle long
//! enough for an upstream's keep-alive timeout to have ended it, by asking the socket. A request
//! whose write fails on a pooled connection was not received and goes again on a fresh one; so
//! does an idempotent request whose pooled connection closes before any byte of an answer (the
//! upstream's keep-alive ran out as it went out), as RFC 9110 §9.2.2 allows. A `POST` is not
//! sent twice behind the retry policy's back: the upstream may have started on it.
//!
//! An upstream may answer before it has read the whole body (RFC 9112 §9.5) and close: a 413
//! for a prompt too large, a 401. The close resets the connection under the proxy's write, but
//! the answer sent before it is still in the socket, and it is what the client gets.

use crate::fields::{name_is, Fields, Spans, WireFields};
use crate::http1::chunked::{Chunked, Step};
use crate::http1::{format_u64, HeadFacts, COPY_LIMIT};
use crate::message::Answer;
use crate::proxy::headers::is_hop_by_hop;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, StatusCode, Version};
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Idle connections kept per upstream: enough for bursts, bounded so a spike cannot pin
/// thousands of sockets.
const MAX_IDLE: usize = 512;
/// A response head larger than this is refused (hyper's default limit is similar).
const MAX_HEAD: usize = 64 * 1024;
/// Response headers beyond this count are refused (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// A pooled connection idle this long is checked with a system call before reuse: the close of
/// an upstream keep-alive timeout (uvicorn's is 5 s) may not have been reported yet.
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// One upstream connection and its buffers, reused from request to request.
struct Conn {
    io: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

struct Idle {
    conn: Box<Conn>,
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

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    Connect(String),
    /// The connection failed while the request was written or the head awaited.
    Io(io::Error),
    /// The upstream's answer is not HTTP/1.x as it must be.
    Protocol(&'static str),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => f.write_str(e),
            SendError::Io(e) => write!(f, "{e}"),
            SendError::Protocol(e) => write!(f, "invalid HTTP response: {e}"),
        }
    }
}

/// Hands each header of a request to the given function.
pub type HeaderSource<'a> = &'a (dyn Fn(&mut dyn FnMut(&[u8], &[u8])) + Sync);

/// What is sent: the request line's parts, the headers and the buffered body. The headers are
/// a function that hands each one over, so the proxy's rewrite streams straight into the
/// connection's buffer without a header map in between.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    pub headers: HeaderSource<'a>,
    pub body: &'a Bytes,
    /// When the attempt began: idle connections are aged against it rather than a clock read
    /// of their own.
    pub now: Instant,
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

    /// The most recently used idle connection, and how long it was idle at `now`.
    fn take(&self, now: Instant) -> Option<(Box<Conn>, Duration)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            let idle_for = now.saturating_duration_since(c.since);
            if idle_for < self.idle_timeout {
                return Some((c.conn, idle_for));
            }
        }
        None
    }

    /// Returns a connection idle since `since` to the top of the stack. Those at the bottom that
    /// have been idle for `idle_timeout` by then are closed: a steady trickle of requests, always
    /// served from the top, would never reach them, and each holds a descriptor (in CLOSE_WAIT
    /// once the upstream gives up on it).
    fn put(&self, conn: Box<Conn>, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let expired = idle.iter().take_while(|c| since.saturating_duration_since(c.since) >= self.idle_timeout).count();
        // Empty (no allocation) unless some expired; closed after the lock is released.
        let stale: Vec<Idle> = idle.drain(..expired).collect();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since });
        }
        drop(idle);
        drop(stale);
    }

    async fn dial(&self) -> Result<Box<Conn>, SendError> {
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            // The upstream's address stays out: the message reaches the client, which has no
            // business knowing the network behind the proxy (the upstream's name says enough).
            .map_err(|_| SendError::Connect(format!("connect timed out after {}s", self.connect_timeout.as_secs())))?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = io.set_nodelay(true);
        if let Some(idle) = self.keepalive {
            let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle));
        }
        Ok(Box::new(Conn { io, read: BytesMut::with_capacity(READ_CHUNK), write: Vec::with_capacity(1024) }))
    }

    /// Sends the request and returns the response head; the body is read from the connection
    /// as it is polled, and the connection returns to the pool when the body has been read.
    pub async fn send(self: &Arc<Self>, out: Outgoing<'_>) -> Result<Answer<DirectBody>, SendError> {
        let head_request = out.method == Method::HEAD;
        let idempotent = out.method.is_idempotent();
        loop {
            let (mut conn, pooled) = match self.take(out.now) {
                Some((conn, idle_for)) if conn.closed_while_idle(idle_for >= PROBE_AFTER) => continue,
                Some((conn, _)) => (conn, true),
                // Boxed: dialling is rare, and its future would otherwise enlarge every request's.
                None => (Box::pin(self.dial()).await?, false),
            };
            conn.encode_head(&out);
            match conn.write_request(out.body).await {
                Ok(()) => {}
                // What the upstream answered before it closed, if anything, is still there to read
                // (see the module's doc).
                Err(e) if closed(&e) => match conn.answer_before_the_close(head_request) {
                    Some(head) => return Ok(self.answer(conn, head)),
                    // The upstream closed it between our check and the write: nothing was received.
                    None if pooled => continue,
                    None => return Err(SendError::Io(e)),
                },
                Err(_) if pooled => continue,
                Err(e) => return Err(SendError::Io(e)),
            }
            let head = match conn.read_head(head_request).await {
                Ok(head) => head,
                Err(SendError::Io(e)) if pooled && idempotent && conn.read.is_empty() && closed(&e) => continue,
                Err(e) => return Err(e),
            };
            return Ok(self.answer(conn, head));
        }
    }

    /// The answer whose head was read from `conn`; its body is read from there as it is polled.
    #[inline(always)]
    fn answer(self: &Arc<Self>, conn: Box<Conn>, head: Head) -> Answer<DirectBody> {
        let Head { status, fields, framing } = head;
        let head_at = Instant::now();
        let mut body = DirectBody { conn: Some(conn), pool: self.clone(), framing, head_at, waited: false };
        if body.framing.is_complete() {
            body.finish();
        }
        Answer { status, fields, body }
    }
}

impl Conn {
    /// Whether the upstream closed (or wrote to) the connection while it sat in the pool. Unless
    /// `ask_socket`, only readiness the event loop already recorded leads to a read, so a live
    /// connection costs no system call here.
    fn closed_while_idle(&self, ask_socket: bool) -> bool {
        if ask_socket {
            let mut probe = [MaybeUninit::<u8>::uninit(); 1];
            return !matches!(socket2::SockRef::from(&self.io).peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn encode_head(&mut self, out: &Outgoing<'_>) {
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(out.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(out.path.as_str().as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        (out.headers)(&mut |name, value| {
            w.extend_from_slice(name);
            w.extend_from_slice(b": ");
            w.extend_from_slice(value);
            w.extend_from_slice(b"\r\n");
        });
        // The length of what is actually sent (the client's was removed: the body may have been
        // rewritten). Methods that define a body get one even when empty.
        let defines_body = !matches!(*out.method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS);
        if !out.body.is_empty() || defines_body {
            w.extend_from_slice(b"content-length: ");
            let mut digits = [0u8; 20];
            w.extend_from_slice(format_u64(out.body.len() as u64, &mut digits));
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
    }

    /// Head and body in one system call, normally. When both fit in [`COPY_LIMIT`], the body is
    /// copied behind the head and the whole written with `send(2)`, which costs the kernel less
    /// than `writev(2)`; a larger body is written from where it lies with `writev`.
    async fn write_request(&mut self, body: &[u8]) -> io::Result<()> {
        if self.write.len() + body.len() <= COPY_LIMIT {
            // The pooled connection keeps the buffer: grown by the body, not doubled.
            self.write.reserve_exact(body.len());
            self.write.extend_from_slice(body);
            return self.io.write_all(&self.write).await;
        }
        let (mut head_sent, mut body_sent) = (0, 0);
        while head_sent < self.write.len() || body_sent < body.len() {
            let parts = [IoSlice::new(&self.write[head_sent..]), IoSlice::new(&body[body_sent..])];
            let n = self.io.write_vectored(&parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(self.write.len() - head_sent);
            head_sent += from_head;
            body_sent += n - from_head;
        }
        Ok(())
    }

    /// The answer the upstream sent before the connection closed under the request's write,
    /// when its head is complete. The connection is closed, so all that will ever arrive has: it
    /// is read without waiting (and without a second await of `read_head`, which would cost
    /// every request its inlining).
    #[cold]
    fn answer_before_the_close(&mut self, head_request: bool) -> Option<Head> {
        let socket = socket2::SockRef::from(&self.io);
        let mut piece = [0u8; READ_CHUNK];
        while self.read.len() < MAX_HEAD {
            match std::io::Read::read(&mut &*socket, &mut piece) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.read.extend_from_slice(&piece[..n]),
            }
        }
        let mut head = parse_head(&mut self.read, head_request).ok().flatten()?;
        // The request was not all sent: nothing more can follow on this connection.
        head.framing.keep_alive = false;
        Some(head)
    }

    async fn read_head(&mut self, head_request: bool) -> Result<Head, SendError> {
        loop {
            if let Some(parsed) = parse_head(&mut self.read, head_request)? {
                return Ok(parsed);
            }
            if self.read.len() >= MAX_HEAD {
                return Err(SendError::Protocol("response head too large"));
            }
            self.read.reserve(READ_CHUNK);
            let n = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.read).await.map_err(SendError::Io)?;
            if n == 0 {
                return Err(SendError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before answering",
                )));
            }
        }
    }
}

/// Whether `e` says the connection was closed under us (rather than, say, a timeout).
pub fn closed(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// Parses a complete response head at the start of `buf` and removes it (skipping interim 1xx
/// answers); `Ok(None)` while the head is incomplete. The fields stay in the read buffer's
/// memory (see `fields`). Hop-by-hop headers are read for framing and left out of the fields
/// returned: they describe this connection, not the response.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, SendError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(SendError::Protocol("too many headers")),
            Err(_) => return Err(SendError::Protocol("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| SendError::Protocol("invalid status code"))?;
        if status.is_informational() {
            if code == 101 {
                return Err(SendError::Protocol("unexpected protocol switch"));
            }
            // 100 Continue, 103 Early Hints: the real answer follows.
            buf.advance(len);
            continue;
        }
        let version = if resp.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let spans = Spans::measure(buf, resp.headers);
        let mut facts = HeadFacts::default();
        for (name, raw) in spans.fields(buf) {
            facts.note(name, raw).map_err(SendError::Protocol)?;
        }
        if facts.other_coding {
            return Err(SendError::Protocol("a transfer coding other than chunked"));
        }
        let mut fields = WireFields::new(buf.split_to(len).freeze(), spans);
        // Transfer-Encoding frames the body; a length beside it must not reach the client (RFC
        // 9112 §6.3).
        let length_overridden = facts.chunked.is_some() && facts.content_length.is_some();
        fields.retain(|name| {
            !(is_hop_by_hop(name)
                || facts.listed.iter().any(|listed| name_is(name, listed))
                || (length_overridden && name.eq_ignore_ascii_case(b"content-length")))
        });
        let framing = response_framing(&facts, version, status, head_request);
        return Ok(Some(Head { status, fields: Fields::Wire(fields), framing }));
    }
}

/// A response head as read, and how its body is delimited.
struct Head {
    status: StatusCode,
    fields: Fields,
    framing: Framing,
}

/// How a response with these facts is delimited (RFC 9112 §6.3), and whether its connection
/// can be reused after it.
fn response_framing(facts: &HeadFacts, version: Version, status: StatusCode, head_request: bool) -> Framing {
    let mut keep_alive = if version == Version::HTTP_10 { facts.keep_alive } else { !facts.close };
    let body = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Delimiter::Empty
    } else if let Some(chunked) = facts.chunked {
        // Transfer-Encoding overrides Content-Length; a message with both is suspect, and so is
        // an HTTP/1.0 message with a transfer coding (RFC 9112 §6.1): the connection is not
        // reused after either.
        keep_alive &= facts.content_length.is_none() && version != Version::HTTP_10;
        if chunked {
            Delimiter::Chunked(Chunked::default())
        } else {
            Delimiter::UntilClose
        }
    } else if let Some(n) = facts.content_length {
        Delimiter::Length(n)
    } else {
        Delimiter::UntilClose
    };
    if matches!(body, Delimiter::UntilClose) {
        keep_alive = false;
    }
    Framing { body, keep_alive }
}

/// Where the response body ends.
#[derive(Debug)]
enum Delimiter {
    Empty,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// How the response body is delimited, and whether the connection survives it.
#[derive(Debug)]
struct Framing {
    body: Delimiter,
    keep_alive: bool,
}

impl Framing {
    fn is_complete(&self) -> bool {
        matches!(self.body, Delimiter::Empty | Delimiter::Length(0))
    }
}

/// A response body read from its connection as it is polled. The connection returns to the
/// pool when the body has been read to its exact end; dropped earlier (the client left, a
/// timer fired), it is closed with the body.
pub struct DirectBody {
    /// Boxed once, when dialled: the body is moved several times on its way to the client, and
    /// a connection with its buffers is large.
    conn: Option<Box<Conn>>,
    pool: Arc<DirectPool>,
    framing: Framing,
    /// When the head had been read.
    head_at: Instant,
    /// Some of the body had to be read from the connection after the head (so it may have
    /// ended well after the head did).
    waited: bool,
}

impl DirectBody {
    /// When the response head had been read (the attempt's latency ends there).
    pub fn head_at(&self) -> Instant {
        self.head_at
    }

    /// Whether all of the body read so far came in the read that brought the head, and so
    /// arrived when the head did.
    pub fn came_with_head(&self) -> bool {
        !self.waited
    }

    /// The body has been read to its end: the connection serves the next request, unless it
    /// must close or holds bytes no request asked for.
    fn finish(&mut self) {
        self.framing.body = Delimiter::Empty;
        if let Some(conn) = self.conn.take() {
            if self.framing.keep_alive && conn.read.is_empty() {
                // A body that came whole with its head ended as the head arrived: no clock read
                // of its own.
                let idle_since = if self.waited { Instant::now() } else { self.head_at };
                self.pool.put(conn, idle_since);
            }
        }
    }

    /// The next piece of body already in the buffer, if any.
    fn buffered(&mut self) -> Result<Option<Bytes>, &'static str> {
        let Some(conn) = &mut self.conn else { return Ok(None) };
        let buf = &mut conn.read;
        match &mut self.framing.body {
            Delimiter::Empty => Ok(None),
            Delimiter::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(data))
            }
            Delimiter::Chunked(state) => match state.decode(buf)? {
                Step::Data(data) => Ok(Some(data)),
                Step::NeedMore => Ok(None),
                Step::End => {
                    self.finish();
                    Ok(None)
                }
            },
            Delimiter::UntilClose => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.buffered() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {}
                Err(why) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))));
                }
            }
            if matches!(this.framing.body, Delimiter::Empty) {
                return Poll::Ready(None);
            }
            let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
            if conn.read.capacity() - conn.read.len() < READ_CHUNK / 2 {
                conn.read.reserve(READ_CHUNK);
            }
            // `read_buf` holds only references: a fresh one per poll is the same read.
            let read = tokio::io::AsyncReadExt::read_buf(&mut conn.io, &mut conn.read);
            this.waited = true;
            let n = ready!(std::pin::pin!(read).poll(cx))?;
            if n == 0 {
                if matches!(this.framing.body, Delimiter::UntilClose) {
                    this.framing.body = Delimiter::Empty;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                this.conn = None;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before the body was complete",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing.body, Delimiter::Empty | Delimiter::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.body {
            Delimiter::Empty => SizeHint::with_exact(0),
            Delimiter::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_even_below_the_top() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_secs(30);
        let pool = DirectPool::new(address, Duration::from_secs(1), None, timeout);
        let t0 = Instant::now();
        for i in 0..3 {
            let conn = pool.dial().await.unwrap();
            pool.put(conn, t0 + Duration::from_secs(i));
        }
        let idle_count = || pool.idle.lock().unwrap().len();
        // A later request, served from the top and put back: by then the bottom one is past the
        // limit, though no request would ever reach it.
        let later = t0 + Duration::from_millis(30_500);
        let (top, _) = pool.take(later).unwrap();
        pool.put(top, later);
        assert_eq!(idle_count(), 2, "of those idle since 0, 1 and 2 s, the first is closed");
        assert_eq!(pool.take(later).unwrap().1, Duration::ZERO);
        assert_eq!(pool.take(later).unwrap().1, Duration::from_millis(29_500), "idle since 1 s: kept");
    }
}
