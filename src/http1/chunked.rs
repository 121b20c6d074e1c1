//! Decoding `Transfer-Encoding: chunked` (RFC 9112 §7.1) incrementally, as bytes arrive.
//!
//! Streaming answers (SSE) are chunked, one chunk per event or token: each decoded piece of
//! data is handed on at once, cut from the read buffer without copying. Chunk extensions are
//! ignored and trailer fields dropped (no LLM API sends them, and the client's response is
//! re-framed by the server side anyway). Anything malformed is an error: the body's end would
//! be unknown, so the connection cannot be trusted further.

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size or trailer line longer than this is not HTTP.
const MAX_LINE: usize = 4096;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many bytes of it still to come.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no complete next piece: read more.
    NeedMore,
    /// The body ended; what follows in the buffer belongs to the next response.
    End,
}

impl Chunked {
    /// Consumes framing from `buf` up to the next piece of data, the end, or the end of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(line_len) = line(buf)? else { return Ok(Step::NeedMore) };
                    let size = chunk_size(&buf[..line_len])?;
                    buf.advance(line_len);
                    *self = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    *self = if n == left { Chunked::DataEnd } else { Chunked::Data(left - n) };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    match buf.first() {
                        None => return Ok(Step::NeedMore),
                        Some(b'\n') => buf.advance(1),
                        Some(b'\r') if buf.len() < 2 => return Ok(Step::NeedMore),
                        Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                        Some(_) => return Err("chunk data not followed by CRLF"),
                    }
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let Some(line_len) = line(buf)? else { return Ok(Step::NeedMore) };
                    let blank = matches!(&buf[..line_len], b"\n" | b"\r\n");
                    buf.advance(line_len);
                    if blank {
                        *self = Chunked::Done;
                    }
                }
                Chunked::Done => return Ok(Step::End),
            }
        }
    }
}

/// Length of the complete line at the start of `buf`, newline included.
fn line(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    match buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(nl) => Ok(Some(nl + 1)),
        None if buf.len() >= MAX_LINE => Err("chunk framing line too long"),
        None => Ok(None),
    }
}

/// The hexadecimal size at the start of a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let hex = line.split(|&b| b == b';' || b == b'\r' || b == b'\n').next().unwrap_or(b"").trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return Err("invalid chunk size");
    }
    hex.iter().try_fold(0u64, |n, &c| {
        let digit = (c as char).to_digit(16).ok_or("invalid chunk size")?;
        Ok(n * 16 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder `piece` bytes at a time; returns the data and what was left
    /// in the buffer after the end.
    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        let mut state = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut chunks = wire.chunks(piece);
        loop {
            match state.decode(&mut buf)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::NeedMore => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => return Err("truncated"),
                },
                Step::End => return Ok((data, buf.to_vec())),
            }
        }
    }

    #[test]
    fn decodes_in_any_framing_and_leaves_the_next_response() {
        let wire = b"5\r\nhello\r\n1;ext=\"a;b\"\r\n \r\nA\nsse events\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1 200 OK";
        for piece in 1..=wire.len() {
            let (data, rest) = decode_in_pieces(wire, piece).unwrap();
            assert_eq!(data, b"hello sse events", "piece {piece}");
            // Bytes after the end stay for the next response (fed pieces may stop short of them).
            assert!(b"HTTP/1.1 200 OK".starts_with(&rest), "piece {piece}: {rest:?}");
        }
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for wire in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"10000000000000000\r\n", b"-1\r\n"] {
            assert!(decode_in_pieces(wire, 64).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert_eq!(decode_in_pieces(&long, 64), Err("chunk framing line too long"));
        assert_eq!(decode_in_pieces(b"5\r\nhel", 64), Err("truncated"));
    }
}
