//! HTTP/1.1 on plain-TCP forwards, served by the proxy itself.
//!
//! A forward's connection carries one request at a time, and each is answered by a relay that
//! already does the work: the server side only has to cut heads from a buffer, hand the handler
//! a body it can read, and write the answer back. hyper's server does this through a general
//! dispatcher — a state machine polled for reading, writing and flushing on every wake-up, a
//! channel for the request body (whose first read wakes the task once more), read-ahead buffers
//! reallocated per request, and header maps for both directions — and on a busy core that
//! machinery cost about as much as everything the gateway does per request. Here the
//! connection's task parses the head with `httparse` (hyper's own parser), awaits the handler
//! in place, and writes head and body in one system call.
//!
//! Semantics follow RFC 9112 and what clients expect of hyper or nginx: keep-alive on HTTP/1.1
//! unless either side says close (HTTP/1.0 gets one answer), pipelined requests answered in
//! order, `100 Continue` sent when the handler first reads the body, chunked request bodies,
//! answers framed by their length or chunked, `Date` on every answer. A request whose body was
//! not read closes the connection after its answer; a malformed head gets an error answer and a
//! close. A client that closes its side while its request is served is taken to have left, as
//! nginx does: the request is dropped, and with it the upstream's. HTTP/2 by prior knowledge,
//! TLS and the admin port stay with hyper (see `server`).

mod client;
mod date;
pub(crate) mod request;
mod response;

use crate::error::ApiError;
use crate::proxy::ClientConn;
use crate::runtime::Shared;
use crate::server::idle::Activity;
use client::Client;
use hyper::{Method, Version};
use response::{AnswerTo, WriteError, Writer};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;

/// What a connection serves and the signals that end it.
pub struct Connection {
    pub shared: Arc<Shared>,
    pub forward: Arc<str>,
    pub conn: ClientConn,
    /// Requests in flight and idleness (the idle guard reads it).
    pub activity: Arc<Activity>,
    /// Set when the listener drains: finish the answer in flight, and answer a request that has
    /// already arrived (with `Connection: close`); wait for no other.
    pub closing: Arc<AtomicBool>,
    /// The forward's `timeout.connect`: also the longest a client may accept none of its answer.
    pub idle_limit: Duration,
}

/// The first bytes of HTTP/2 by prior knowledge (RFC 9113 §3.3): such connections go to hyper.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// Whether the connection's first bytes are (or may still become) the HTTP/2 preface. Waits
/// for the first bytes without consuming them.
pub async fn looks_like_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 4];
    let n = stream.peek(&mut first).await?;
    Ok(n > 0 && first[..n] == H2_PREFACE_START[..n])
}

/// Serves requests on `stream` until either side closes, the listener drains, or an error.
pub async fn serve(mut stream: TcpStream, c: Connection) {
    let client = Client::new(&mut stream, c.activity.clone(), c.idle_limit);
    let mut writer = Writer::default();
    loop {
        let head = match next_head(&client, &c.closing, c.conn.peer).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                crate::debug!("refused a request head from {}: {}", c.conn.peer, refusal.message);
                if let Some(fwd) = c.shared.runtime().forward(&c.forward) {
                    fwd.metrics.refused_head(refusal.code);
                }
                let to = AnswerTo { head_request: false, http_1_1: true, keep_alive: false };
                if writer.answer(&client, refusal.into_response().into(), to).await.is_ok() {
                    client.linger().await;
                }
                return;
            }
        };
        let mut to = AnswerTo {
            head_request: head.request.method == Method::HEAD,
            http_1_1: head.version == Version::HTTP_11,
            keep_alive: head.keep_alive,
        };
        let body = client.start_request(head.body, head.expect_continue);
        let runtime = c.shared.runtime();
        let mut handling =
            std::pin::pin!(crate::proxy::handle(&runtime, &c.forward, c.conn.clone(), head.request, body));
        let answered = poll_fn(|cx| match handling.as_mut().poll(cx) {
            Poll::Ready(resp) => Poll::Ready(Some(resp)),
            Poll::Pending => client.poll_gone(cx).map(|()| None),
        })
        .await;
        client.mark_busy();
        let Some(resp) = answered else {
            crate::debug!("client {} left before its answer", c.conn.peer);
            return;
        };
        // A body the handler did not read (a refusal) is skipped if it is all here already;
        // otherwise the connection cannot carry another request.
        let body_done = client.discard_buffered_body();
        to.keep_alive &= body_done && !c.closing.load(Ordering::Relaxed);
        let kept = match writer.answer(&client, resp, to).await {
            Ok(kept) => kept,
            Err(WriteError::Io(e)) => {
                crate::debug!("writing to {} failed: {e}", c.conn.peer);
                false
            }
            Err(WriteError::Body) if !to.http_1_1 => {
                client.reset_on_close();
                return;
            }
            Err(WriteError::Body | WriteError::ClientGone) => false,
        };
        client.mark_idle();
        if !kept {
            // Unread input (a body, pipelined requests) would make the close a reset, which can
            // destroy the answer before the client has read it.
            let linger = {
                let inbound = client.lock();
                (!body_done || !inbound.buf.is_empty()) && !inbound.eof
            };
            if linger {
                client.linger().await;
            }
            return;
        }
    }
}

/// The next request head, or `None` when the connection is done: closed, failed, or draining
/// with no request on its way. An error is the answer to a malformed head.
async fn next_head(
    client: &Client<'_>,
    closing: &AtomicBool,
    peer: SocketAddr,
) -> Result<Option<request::Head>, ApiError> {
    poll_fn(|cx| {
        let mut inbound = client.lock();
        loop {
            if inbound.head_may_be_complete() {
                match request::parse(&mut inbound.buf)? {
                    Some(head) => {
                        inbound.partial_head = 0;
                        return Poll::Ready(Ok(Some(head)));
                    }
                    None => inbound.partial_head = inbound.buf.len(),
                }
            }
            if inbound.eof {
                return Poll::Ready(Ok(None));
            }
            match Client::poll_fill(&mut inbound, cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    crate::debug!("connection from {peer} failed: {e}");
                    return Poll::Ready(Ok(None));
                }
                // Draining: a request already sent is answered — a client whose request reached
                // us must not lose it — but none is waited for. Bytes the event loop has not
                // reported yet are seen by asking the socket itself.
                Poll::Pending
                    if closing.load(Ordering::Relaxed) && inbound.buf.is_empty() && !has_input(inbound.socket()) =>
                {
                    return Poll::Ready(Ok(None))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Whether bytes from the client are waiting in the socket, whether or not the event loop has
/// reported them yet (one `recv(MSG_PEEK)`; used only when draining).
pub fn has_input(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut probe), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn draining_answers_a_request_the_event_loop_has_not_reported_yet() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut accepted, peer) = listener.accept().await.unwrap();
        let c = Client::new(&mut accepted, Activity::new(), Duration::from_secs(1));
        let closing = AtomicBool::new(false);
        client.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(next_head(&c, &closing, peer).await.unwrap().is_some());
        // The next request is in the socket, but no poll has reported it (the short read of the
        // first one cleared the readiness) — as when the drain begins in between.
        client.write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        closing.store(true, Ordering::Relaxed);
        let head = next_head(&c, &closing, peer).await.unwrap();
        assert_eq!(head.map(|h| h.request.uri.to_string()), Some("/2".to_string()));
        // Nothing more on its way: done at once.
        assert!(next_head(&c, &closing, peer).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_head_arriving_in_small_pieces_is_not_parsed_again_for_each() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let c = Client::new(&mut accepted, Activity::new(), Duration::from_secs(1));
        let mut inbound = c.lock();
        inbound.buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nx-long-header-name: ");
        assert!(inbound.head_may_be_complete(), "the first bytes are parsed (a bad request line fails early)");
        inbound.partial_head = inbound.buf.len();
        assert!(!inbound.head_may_be_complete(), "nothing new");
        inbound.buf.extend_from_slice(b"v\r\n");
        assert!(!inbound.head_may_be_complete(), "no blank line yet, and far from twice the size");
        inbound.buf.extend_from_slice(b"\r");
        assert!(!inbound.head_may_be_complete());
        inbound.buf.extend_from_slice(b"\n");
        assert!(inbound.head_may_be_complete(), "the blank line, split across two reads");
        let tried = inbound.partial_head;
        inbound.buf.truncate(tried);
        inbound.buf.extend_from_slice(&[b'v'; 64]);
        assert!(inbound.head_may_be_complete(), "twice the size: parsed again to enforce the limits");
    }
}
