//! The client's side of the connection as both the request handler and the connection loop see
//! it: the bytes read and not yet consumed, where the current request body ends, and the reads
//! that fill them.
//!
//! The request body is read from the socket by whoever polls it — the handler — so it needs the
//! buffer the head was parsed from; while the handler waits for the upstream, the loop reads the
//! same socket to notice a client that left. Both run in the connection's one task, never at
//! once, so the lock between them is never contended (it only keeps the sharing safe to write).

use super::request::BodyFraming;
use crate::http1::chunked::Step;
use crate::server::idle::{Activity, Busy};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Pipelined bytes buffered while a request is served; beyond this the client is not read
/// until the answer is out (no EOF detection meanwhile, bounded memory instead).
const MAX_AHEAD: usize = 64 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub struct Client<'s> {
    pub write: WriteHalf<'s>,
    inbound: Mutex<Inbound<'s>>,
    /// The idle guard's view of the connection (see `server::idle`).
    activity: Arc<Activity>,
    /// How long a write may wait for the client to accept bytes: a client that reads nothing
    /// must not hold its upstream request (and the upstream's slot) forever.
    pub stall_limit: Duration,
}

pub struct Inbound<'s> {
    /// Read through tokio's `AsyncRead`, which knows a short read drained the socket: the next
    /// wait for bytes then costs no system call.
    read: ReadHalf<'s>,
    /// Read from the client and not yet consumed: a head, a body, or a pipelined request.
    pub buf: BytesMut,
    /// What is left of the current request's body; `None` once it has been read.
    body: Option<BodyFraming>,
    /// Bytes of `100 Continue` written, while it is owed (see [`Client::start_request`]).
    continue_written: Option<usize>,
    /// How much of `buf` the last parse found to be an incomplete head (0: none tried).
    pub partial_head: usize,
    /// The client closed its side (or the connection failed).
    pub eof: bool,
    /// The close came with requests still buffered (see [`Client::poll_gone`]).
    pipelined_then_closed: bool,
    /// The current request counts as in flight: from the end of its body (or its answer, if
    /// that comes first) to the end of its answer. Before, the idle limit applies between the
    /// pieces of the body.
    busy: Option<Busy>,
}

impl Inbound<'_> {
    pub fn socket(&self) -> &TcpStream {
        self.read.as_ref()
    }

    /// Whether parsing `buf` again may find a complete head: on the first bytes, once a blank
    /// line has arrived, or once the buffer has doubled since the last try (so a malformed head
    /// is still refused early). A head trickling in byte by byte is then parsed a logarithmic
    /// number of times, not once per byte.
    pub fn head_may_be_complete(&self) -> bool {
        let tried = self.partial_head;
        if self.buf.len() <= tried {
            return false;
        }
        if tried == 0 || self.buf.len() >= 2 * tried {
            return true;
        }
        // The new bytes, and the three before them that may start `\n\r\n`.
        let fresh = &self.buf[tried.saturating_sub(3)..];
        fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n")
    }
}

impl<'s> Client<'s> {
    pub fn new(stream: &'s mut TcpStream, activity: Arc<Activity>, stall_limit: Duration) -> Self {
        let (read, write) = stream.split();
        let buf = BytesMut::with_capacity(READ_CHUNK);
        let inbound = Inbound {
            read,
            buf,
            body: None,
            continue_written: None,
            partial_head: 0,
            eof: false,
            pipelined_then_closed: false,
            busy: None,
        };
        Client { write, inbound: Mutex::new(inbound), activity, stall_limit }
    }

    /// The request is in flight (idempotent); see [`Inbound::busy`].
    pub fn mark_busy(&self) {
        let mut inbound = self.lock();
        if inbound.busy.is_none() {
            inbound.busy = Some(self.activity.begin());
        }
    }

    /// The request's answer is out: the connection is idle again.
    pub fn mark_idle(&self) {
        self.lock().busy = None;
    }

    pub fn lock(&self) -> MutexGuard<'_, Inbound<'s>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets up the body of a request whose head was just parsed, and returns it.
    pub fn start_request(&self, framing: BodyFraming, expect_continue: bool) -> RequestBody<'_, 's> {
        let declared = match framing {
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked(_) => None,
        };
        let mut inbound = self.lock();
        inbound.body = (declared != Some(0)).then_some(framing);
        let buffered = inbound.buf.len() as u64;
        match &inbound.body {
            None => inbound.busy = Some(self.activity.begin()),
            // All here already (the usual case): it will be read without waiting.
            Some(BodyFraming::Length(n)) if *n <= buffered => {}
            // The body's next piece is awaited from now.
            Some(_) => self.activity.touch(),
        }
        // `100 Continue` is owed only if a body is expected and none of it has arrived yet; it
        // is sent when the handler first asks for the body (a refusal skips it).
        inbound.continue_written = (expect_continue && inbound.body.is_some() && inbound.buf.is_empty()).then_some(0);
        RequestBody { client: self, declared }
    }

    /// After the answer: drops what is left of an unread body, if all of it is already
    /// buffered; returns whether the body is now behind us (else the connection must close).
    pub fn discard_buffered_body(&self) -> bool {
        let mut inbound = self.lock();
        loop {
            match inbound.buffered_body() {
                Ok(Some(_)) => {}
                Ok(None) => return inbound.body.is_none(),
                Err(_) => return false,
            }
        }
    }

    /// Closes gracefully while the client may still be sending: our side is shut, and what the
    /// client sends meanwhile is read and dropped (for a bounded time and size), so the close
    /// is a FIN rather than a reset — a reset can destroy the answer before the client reads it.
    pub async fn linger(&self) {
        const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
        const LINGER_BYTES: usize = 4 << 20;
        let _ = socket2::SockRef::from(self.write.as_ref()).shutdown(std::net::Shutdown::Write);
        let mut dropped = 0;
        let drain = std::future::poll_fn(|cx| {
            let mut inbound = self.lock();
            loop {
                dropped += inbound.buf.len();
                inbound.buf.clear();
                if inbound.eof || dropped > LINGER_BYTES {
                    return Poll::Ready(());
                }
                if ready!(Self::poll_fill(&mut inbound, cx)).is_err() {
                    return Poll::Ready(());
                }
            }
        });
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Makes the close a reset: the one way to tell a client that reads its answer to the close
    /// (HTTP/1.0, no length) that the answer was cut, where a FIN would look like its end.
    pub fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self.write.as_ref()).set_linger(Some(Duration::ZERO));
    }

    /// Reads what the client sent into the buffer; `Ok(0)` at the end of the stream.
    pub fn poll_fill(inbound: &mut Inbound<'_>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if inbound.buf.capacity() - inbound.buf.len() < READ_CHUNK / 4 {
            inbound.buf.reserve(READ_CHUNK);
        }
        // `read_buf` holds only references: a fresh one per poll is the same read.
        let read = tokio::io::AsyncReadExt::read_buf(&mut inbound.read, &mut inbound.buf);
        let n = ready!(std::pin::pin!(read).poll(cx))?;
        inbound.eof |= n == 0;
        Poll::Ready(Ok(n))
    }

    /// While the client waits for its answer: ready once it has gone (closed its side, or the
    /// connection failed), as nginx sees it — a proxy should stop paying for an answer nobody
    /// will read. Pipelined requests read meanwhile stay buffered.
    pub fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbound = self.lock();
        // While the body is still owed, the handler's reads of it see the end of the stream.
        if inbound.body.is_some() {
            return Poll::Pending;
        }
        loop {
            if inbound.eof {
                // A client that closed its side right after pipelining requests is waiting for
                // their answers, not gone (a lone request is taken as abandoned, as hyper does).
                inbound.pipelined_then_closed |= !inbound.buf.is_empty();
                return if inbound.pipelined_then_closed { Poll::Pending } else { Poll::Ready(()) };
            }
            if inbound.buf.len() >= MAX_AHEAD {
                return Poll::Pending;
            }
            match ready!(Self::poll_fill(&mut inbound, cx)) {
                Ok(_) => {}
                Err(_) => inbound.eof = true,
            }
        }
    }

    /// Writes what is left of `100 Continue`.
    fn poll_continue(&self, inbound: &mut Inbound<'_>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(written) = inbound.continue_written {
            if written == CONTINUE.len() {
                inbound.continue_written = None;
                break;
            }
            ready!(self.write.as_ref().poll_write_ready(cx))?;
            match self.write.try_write(&CONTINUE[written..]) {
                Ok(n) => inbound.continue_written = Some(written + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Inbound<'_> {
    /// The next piece of the body already in the buffer, if any.
    fn buffered_body(&mut self) -> Result<Option<Bytes>, &'static str> {
        let buf = &mut self.buf;
        match &mut self.body {
            None => Ok(None),
            Some(BodyFraming::Length(left)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.body = None;
                }
                Ok(Some(buf.split_to(n).freeze()))
            }
            Some(BodyFraming::Chunked(state)) => match state.decode(buf)? {
                Step::Data(data) => Ok(Some(data)),
                Step::NeedMore => Ok(None),
                Step::End => {
                    self.body = None;
                    Ok(None)
                }
            },
        }
    }
}

/// A request body, read from the client's connection as the handler polls it.
pub struct RequestBody<'c, 's> {
    client: &'c Client<'s>,
    /// `Content-Length`, when the request declared one.
    declared: Option<u64>,
}

impl Body for RequestBody<'_, '_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let client = self.client;
        let mut inbound = client.lock();
        ready!(client.poll_continue(&mut inbound, cx))?;
        loop {
            let piece = inbound.buffered_body();
            if inbound.body.is_none() && inbound.busy.is_none() {
                inbound.busy = Some(client.activity.begin());
            }
            match piece {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if inbound.body.is_none() => return Poll::Ready(None),
                Ok(None) => {}
                Err(why) => return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why)))),
            }
            let read = ready!(Client::poll_fill(&mut inbound, cx))?;
            client.activity.touch();
            if read == 0 {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before the body was complete",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.declared == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.declared.map(SizeHint::with_exact).unwrap_or_default()
    }
}
