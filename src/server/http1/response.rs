//! Writing an answer to the client: the head encoded into a buffer the connection reuses, body
//! frames gathered while they are ready and written together with the head in one system call,
//! and each frame of a stream written as soon as it arrives (nothing waits for a buffer to fill).

use super::client::Client;
use super::date;
use crate::body::BoxError;
use crate::body::ProxyBody;
use crate::fields::name_is;
use crate::http1::{format_u64, parse_u64, COPY_LIMIT};
use crate::message::Answer;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header;
use hyper::StatusCode;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;

/// Pieces written by one `writev` at most (a single piece is written with `send`).
const MAX_SLICES: usize = 64;
/// Body bytes gathered before they are written even though more are ready: a body that is
/// always ready must not delay its first byte or grow the queue without bound.
const MAX_GATHERED: usize = 64 * 1024;

/// Buffers for writing answers, kept by the connection from one answer to the next.
#[derive(Default)]
pub struct Writer {
    /// The head and chunk framing, referred to by [`Piece::Framing`] ranges.
    framing: Vec<u8>,
    /// What to write next, in order.
    pieces: Vec<Piece>,
    /// Body bytes among `pieces`.
    gathered: usize,
}

enum Piece {
    Framing(usize, usize),
    Data(Bytes),
}

/// How the answer's body is delimited, and the length to declare: the body's own exact size,
/// else the handler's declared one — never a copied field that could contradict the framing.
fn delimit(status: StatusCode, declared: Option<u64>, exact: Option<u64>, to: AnswerTo) -> (Delimit, Option<u64>) {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        (Delimit::None, None)
    } else if to.head_request || status == StatusCode::NOT_MODIFIED {
        // No body follows; a length, if given, describes the one a GET would get.
        (Delimit::None, declared)
    } else {
        match exact.or(declared) {
            Some(n) => (Delimit::Length(n), Some(n)),
            // Even when the connection closes after it: a cut stream must look cut.
            None if to.http_1_1 => (Delimit::Chunked, None),
            None => (Delimit::Close, None),
        }
    }
}

/// What the head-writing pass noticed among the answer's own fields.
struct Noticed {
    content_length: Option<u64>,
    date: bool,
}

/// How the body is delimited for the client.
enum Delimit {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// What the request being answered asked for.
#[derive(Clone, Copy)]
pub struct AnswerTo {
    /// A HEAD request: the head only.
    pub head_request: bool,
    /// Else HTTP/1.0: no chunked coding, the body runs to the close.
    pub http_1_1: bool,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// What went wrong while answering; either way the connection closes.
pub enum WriteError {
    Io(io::Error),
    /// The body failed (upstream cut, timeout) or did not match its declared length: the client
    /// sees the connection close before the end of the body.
    Body,
    /// The client left while the body was awaited.
    ClientGone,
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl Writer {
    /// Writes `resp` to the client; returns whether the connection can carry another request.
    pub async fn answer(
        &mut self,
        client: &Client<'_>,
        resp: Answer<ProxyBody>,
        to: AnswerTo,
    ) -> Result<bool, WriteError> {
        let mut body = std::pin::pin!(resp.body);
        let fields = self.start_head(resp.status, &resp.fields);
        let (delimit, length) = delimit(resp.status, fields.content_length, body.size_hint().exact(), to);
        let keep_alive = to.keep_alive && !matches!(delimit, Delimit::Close);
        self.end_head(!fields.date, length, matches!(delimit, Delimit::Chunked), keep_alive);
        if !matches!(delimit, Delimit::None) {
            self.write_body(client, body.as_mut(), &delimit).await?;
        }
        self.flush(client).await?;
        Ok(keep_alive)
    }

    /// Gathers the body's frames behind the head, writing whenever the body has nothing ready.
    async fn write_body(
        &mut self,
        client: &Client<'_>,
        mut body: Pin<&mut ProxyBody>,
        delimit: &Delimit,
    ) -> Result<(), WriteError> {
        /// What waiting for the body produced.
        enum Next {
            Frame(Option<Result<Frame<Bytes>, BoxError>>),
            /// Nothing ready: write what is gathered first.
            Flush,
            ClientGone,
        }
        let mut left = match delimit {
            Delimit::Length(n) => *n,
            _ => u64::MAX,
        };
        let mut failed = false;
        while !body.is_end_stream() {
            if self.pieces.len() + 3 > MAX_SLICES || self.gathered >= MAX_GATHERED {
                self.flush(client).await?;
            }
            let pending = !self.pieces.is_empty();
            let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
                Poll::Pending if pending => Poll::Ready(Next::Flush),
                Poll::Pending => client.poll_gone(cx).map(|()| Next::ClientGone),
            })
            .await;
            match next {
                Next::Flush => self.flush(client).await?,
                Next::ClientGone => return Err(WriteError::ClientGone),
                Next::Frame(None) => break,
                Next::Frame(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue }; // trailers are not relayed
                    if data.is_empty() {
                        continue;
                    }
                    if let Delimit::Length(_) = delimit {
                        left = left.checked_sub(data.len() as u64).ok_or(WriteError::Body)?;
                    }
                    self.push_data(delimit, data);
                }
                Next::Frame(Some(Err(_))) if client.lock().eof => return Err(WriteError::ClientGone),
                Next::Frame(Some(Err(_))) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed || matches!(delimit, Delimit::Length(_)) && left != 0 {
            // What arrived is sent, then the connection closes: the client sees a body shorter
            // than declared, or without its last chunk.
            let _ = self.flush(client).await;
            return Err(WriteError::Body);
        }
        if let Delimit::Chunked = delimit {
            self.push_framing(b"0\r\n\r\n");
        }
        Ok(())
    }

    /// Writes the status line and the answer's own fields (all but the framing and connection
    /// fields, which are this hop's: see [`Writer::end_head`]), noting the declared length.
    fn start_head(&mut self, status: StatusCode, fields: &crate::fields::Fields) -> Noticed {
        let w = &mut self.framing;
        w.clear();
        w.extend_from_slice(b"HTTP/1.1 ");
        w.extend_from_slice(status.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.extend_from_slice(b"\r\n");
        let mut noticed = Noticed { content_length: None, date: false };
        let mut lengths = 0;
        for (name, value) in fields.iter() {
            if name_is(name, &header::CONTENT_LENGTH) {
                // Differing values mean no known length.
                let n = parse_u64(value);
                noticed.content_length = if lengths > 0 && noticed.content_length != n { None } else { n };
                lengths += 1;
                continue;
            }
            if name_is(name, &header::TRANSFER_ENCODING) || name_is(name, &header::CONNECTION) {
                continue;
            }
            noticed.date |= name_is(name, &header::DATE);
            w.extend_from_slice(name);
            w.extend_from_slice(b": ");
            w.extend_from_slice(value);
            w.extend_from_slice(b"\r\n");
        }
        noticed
    }

    /// Adds `Date` (when the answer has none), the framing fields and `Connection: close` when
    /// the connection ends after this answer, and ends the head.
    fn end_head(&mut self, date: bool, length: Option<u64>, chunked: bool, keep_alive: bool) {
        let w = &mut self.framing;
        if date {
            w.extend_from_slice(b"date: ");
            w.extend_from_slice(&date::now());
            w.extend_from_slice(b"\r\n");
        }
        if let Some(n) = length {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(format_u64(n, &mut [0; 20]));
            w.extend_from_slice(b"\r\n");
        }
        if chunked {
            w.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !keep_alive {
            w.extend_from_slice(b"connection: close\r\n");
        }
        w.extend_from_slice(b"\r\n");
        self.pieces.push(Piece::Framing(0, w.len()));
    }

    fn push_framing(&mut self, bytes: &[u8]) {
        let start = self.framing.len();
        self.framing.extend_from_slice(bytes);
        match self.pieces.last_mut() {
            Some(Piece::Framing(_, end)) if *end == start => *end = self.framing.len(),
            _ => self.pieces.push(Piece::Framing(start, self.framing.len())),
        }
    }

    fn push_data(&mut self, delimit: &Delimit, data: Bytes) {
        self.gathered += data.len();
        if let Delimit::Chunked = delimit {
            let mut line = [0u8; 18];
            let n = format_hex(data.len(), &mut line);
            self.push_framing(&line[..n]);
            self.push_data_piece(data);
            self.push_framing(b"\r\n");
        } else {
            self.push_data_piece(data);
        }
    }

    /// A small piece is copied among the framing, so that a head and a small body (or a stream
    /// event and its chunk lines) make one buffer, written with `send(2)` (see [`COPY_LIMIT`]).
    /// The connection keeps the buffer while it lives, so it grows by what is copied (and room
    /// for the framing that may follow), to about `COPY_LIMIT`, rather than by doubling.
    fn push_data_piece(&mut self, data: Bytes) {
        /// A chunk's CRLF, the next chunk-size line, or the last chunk.
        const FRAMING_AFTER: usize = 32;
        if self.framing.len() + data.len() <= COPY_LIMIT {
            self.framing.reserve_exact(data.len() + FRAMING_AFTER);
            self.push_framing(&data);
        } else {
            self.pieces.push(Piece::Data(data));
        }
    }

    /// Writes every gathered piece.
    async fn flush(&mut self, client: &Client<'_>) -> io::Result<()> {
        let (mut first, mut skip) = (0, 0);
        while first < self.pieces.len() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.pieces[first..]) {
                let bytes = piece.bytes(&self.framing);
                *slot = IoSlice::new(if count == 0 { &bytes[skip..] } else { bytes });
                count += 1;
            }
            let mut written = loop {
                let tried = match &slices[..count] {
                    [one] => client.write.try_write(one),
                    several => client.write.try_write_vectored(several),
                };
                match tried {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let writable = client.write.as_ref().writable();
                        tokio::time::timeout(client.stall_limit, writable).await.map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "the client accepted none of its answer in time")
                        })??
                    }
                    Err(e) => return Err(e),
                }
            };
            while written > 0 {
                let len = self.pieces[first].bytes(&self.framing).len() - skip;
                if written >= len {
                    written -= len;
                    (first, skip) = (first + 1, 0);
                } else {
                    skip += written;
                    written = 0;
                }
            }
        }
        self.pieces.clear();
        self.framing.clear();
        self.gathered = 0;
        Ok(())
    }
}

impl Piece {
    fn bytes<'a>(&'a self, framing: &'a [u8]) -> &'a [u8] {
        match self {
            Piece::Framing(start, end) => &framing[*start..*end],
            Piece::Data(data) => data,
        }
    }
}

/// A chunk-size line: `len` in hexadecimal and CRLF; returns its length.
fn format_hex(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_delimited_by_what_the_request_and_status_allow() {
        let to = |head_request, http_1_1| AnswerTo { head_request, http_1_1, keep_alive: true };
        let ok = StatusCode::OK;
        let show = |(d, len): (Delimit, Option<u64>)| {
            let d = match d {
                Delimit::None => "none".to_string(),
                Delimit::Length(n) => format!("length {n}"),
                Delimit::Chunked => "chunked".to_string(),
                Delimit::Close => "close".to_string(),
            };
            (d, len)
        };
        // The body's exact size wins over a declared length that contradicts it.
        assert_eq!(show(delimit(ok, Some(9), Some(5), to(false, true))), ("length 5".into(), Some(5)));
        assert_eq!(show(delimit(ok, Some(9), None, to(false, true))), ("length 9".into(), Some(9)));
        assert_eq!(show(delimit(ok, None, None, to(false, true))), ("chunked".into(), None));
        assert_eq!(show(delimit(ok, None, None, to(false, false))), ("close".into(), None));
        // HEAD and 304: no body, the declared length only (never an implied zero).
        assert_eq!(show(delimit(ok, None, Some(0), to(true, true))), ("none".into(), None));
        assert_eq!(show(delimit(ok, Some(42), Some(0), to(true, true))), ("none".into(), Some(42)));
        assert_eq!(show(delimit(StatusCode::NOT_MODIFIED, Some(7), None, to(false, true))), ("none".into(), Some(7)));
        // 204: neither body nor length.
        assert_eq!(show(delimit(StatusCode::NO_CONTENT, Some(3), Some(3), to(false, true))), ("none".into(), None));
    }

    #[test]
    fn small_bodies_join_their_head_in_one_buffer_and_large_ones_are_not_copied() {
        let mut w = Writer::default();
        let written = |w: &Writer| w.pieces.iter().map(|p| p.bytes(&w.framing).to_vec()).collect::<Vec<_>>();
        w.push_framing(b"HTTP/1.1 200 OK\r\n\r\n");
        w.push_data(&Delimit::Length(5), Bytes::from_static(b"hello"));
        assert_eq!(written(&w), [b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec()]);

        // A stream event and its chunk lines: one buffer too.
        let mut w = Writer::default();
        w.push_data(&Delimit::Chunked, Bytes::from_static(b"data: {}\n\n"));
        assert_eq!(written(&w), [b"a\r\ndata: {}\n\n\r\n".to_vec()]);

        // Up to the limit, head and body together; answer after answer, the kept buffer grows
        // only by what was copied.
        let mut w = Writer::default();
        for body_len in [COPY_LIMIT / 2, COPY_LIMIT - 300] {
            w.framing.clear();
            w.pieces.clear();
            w.push_framing(&[b'h'; 300]);
            let fits = Bytes::from(vec![b'x'; body_len]);
            w.push_data(&Delimit::Length(fits.len() as u64), fits.clone());
            assert_eq!(written(&w), [[[b'h'; 300].as_slice(), &fits].concat()]);
        }
        assert!(w.framing.capacity() <= COPY_LIMIT + 64, "{}", w.framing.capacity());

        // Beyond it, the body is written from where it lies.
        let mut w = Writer::default();
        w.push_framing(b"head\r\n\r\n");
        let large = Bytes::from(vec![b'x'; COPY_LIMIT - 7]);
        w.push_data(&Delimit::Length(large.len() as u64), large.clone());
        assert_eq!(written(&w), [b"head\r\n\r\n".to_vec(), large.to_vec()]);
        assert!(w.framing.len() < 16);

        // Chunks copied and not, in their order, each with its own framing.
        let mut w = Writer::default();
        let big = Bytes::from(vec![b'b'; COPY_LIMIT]);
        for data in [Bytes::from_static(b"one"), big.clone(), Bytes::from_static(b"two")] {
            w.push_data(&Delimit::Chunked, data);
        }
        let want: Vec<Vec<u8>> = vec![b"3\r\none\r\n1000\r\n".to_vec(), big.to_vec(), b"\r\n3\r\ntwo\r\n".to_vec()];
        assert_eq!(written(&w), want);
    }

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 18];
        for (n, want) in [(0usize, "0\r\n"), (1, "1\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            let len = format_hex(n, &mut b);
            assert_eq!(&b[..len], want.as_bytes());
        }
        let len = format_hex(usize::MAX, &mut b);
        assert_eq!(len, 18);
    }
}
