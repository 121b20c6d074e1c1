//! Decoding `Transfer-Encoding: chunked` (RFC 9112 §7.1) incrementally, as bytes arrive.
//!
//! Streaming answers (SSE) are chunked, one chunk per event or token: each decoded piece of
//! data is handed on at once, cut from the read buffer without copying. Chunk extensions are
//! ignored and trailer fields dropped (no LLM API sends them, and the client's response is
//! re-framed by the server side anyway). Anything malformed is an error: the body's end would
//! be unknown, so the connection cannot be trusted further. A bare CR inside a framing line is
//! refused (parsers that disagree on it are how requests are smuggled). A bare LF line end is
//! accepted from upstreams, as most clients do, but not in a client's request body
//! ([`Chunked::for_requests`]): a front proxy that reads `2;x\nAB` as one extension line would
//! see another body than we do. Extensions and trailers together are capped per body, so a
//! peer cannot keep a body going on framing alone.

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size or trailer line longer than this is not HTTP.
const MAX_LINE: usize = 4096;
/// Bytes of chunk extensions and trailer lines allowed per body (hyper's limit too).
const MAX_OVERHEAD: usize = 16 * 1024;

/// Where a chunked body's decoding stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    at: At,
    /// Bytes of extensions and trailers seen so far.
    overhead: usize,
    /// Every framing line must end with CRLF.
    strict: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
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
    /// A decoder for request bodies: every framing line must end with CRLF.
    pub fn for_requests() -> Self {
        Chunked { strict: true, ..Chunked::default() }
    }

    /// Consumes framing from `buf` up to the next piece of data, the end, or the end of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.at {
                At::Size => {
                    let Some(line_len) = line(buf)? else { return Ok(Step::NeedMore) };
                    let (size, overhead) = chunk_size(self.line_end(&buf[..line_len])?)?;
                    self.add_overhead(overhead)?;
                    buf.advance(line_len);
                    self.at = if size == 0 { At::Trailers } else { At::Data(size) };
                }
                At::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.at = if n == left { At::DataEnd } else { At::Data(left - n) };
                    return Ok(Step::Data(data));
                }
                At::DataEnd => {
                    match buf.first() {
                        None => return Ok(Step::NeedMore),
                        Some(b'\n') if !self.strict => buf.advance(1),
                        Some(b'\r') if buf.len() < 2 => return Ok(Step::NeedMore),
                        Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                        Some(_) => return Err("chunk data not followed by CRLF"),
                    }
                    self.at = At::Size;
                }
                At::Trailers => {
                    let Some(line_len) = line(buf)? else { return Ok(Step::NeedMore) };
                    self.line_end(&buf[..line_len])?;
                    let blank = matches!(&buf[..line_len], b"\n" | b"\r\n");
                    if !blank {
                        content(&buf[..line_len])?;
                        self.add_overhead(line_len)?;
                    }
                    buf.advance(line_len);
                    if blank {
                        self.at = At::Done;
                    }
                }
                At::Done => return Ok(Step::End),
            }
        }
    }

    /// `line` itself, if its line end is one this decoder accepts.
    fn line_end<'a>(&self, line: &'a [u8]) -> Result<&'a [u8], &'static str> {
        if self.strict && !line.ends_with(b"\r\n") {
            return Err("chunk framing line not ended by CRLF");
        }
        Ok(line)
    }

    fn add_overhead(&mut self, bytes: usize) -> Result<(), &'static str> {
        self.overhead += bytes;
        if self.overhead > MAX_OVERHEAD {
            return Err("chunk extensions and trailers too long");
        }
        Ok(())
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

/// A framing line without its line end; a CR anywhere else is an error.
fn content(line: &[u8]) -> Result<&[u8], &'static str> {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.contains(&b'\r') {
        return Err("bare CR in chunk framing");
    }
    Ok(text)
}

/// The hexadecimal size at the start of a chunk-size line, and how many bytes follow it: spaces
/// or tabs, then extensions after `;` (ignored). Both count as overhead, so framing alone cannot
/// keep a body going (RFC 9112 §7.1.1 allows whitespace only before `;`; a size followed by
/// whitespace alone is tolerated, as other servers do).
fn chunk_size(line: &[u8]) -> Result<(u64, usize), &'static str> {
    let text = content(line)?;
    let semi = text.iter().position(|&b| b == b';').unwrap_or(text.len());
    let digits = text[..semi].iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |last| last + 1);
    let hex = &text[..digits];
    if hex.is_empty() || hex.len() > 15 {
        return Err("invalid chunk size");
    }
    let size = hex.iter().try_fold(0u64, |n, &c| {
        let digit = (c as char).to_digit(16).ok_or("invalid chunk size")?;
        Ok::<_, &'static str>(n * 16 + u64::from(digit))
    })?;
    Ok((size, text.len() - digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder `piece` bytes at a time; returns the data and what was left
    /// in the buffer after the end.
    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
        decode_with(Chunked::default(), wire, piece)
    }

    fn decode_with(mut state: Chunked, wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
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
        let wire = b"5\r\nhello\r\n1 ;ext=\"a;b\"\r\n \r\nA\nsse events\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1 200 OK";
        for piece in 1..=wire.len() {
            let (data, rest) = decode_in_pieces(wire, piece).unwrap();
            assert_eq!(data, b"hello sse events", "piece {piece}");
            // Bytes after the end stay for the next response (fed pieces may stop short of them).
            assert!(b"HTTP/1.1 200 OK".starts_with(&rest), "piece {piece}: {rest:?}");
        }
    }

    #[test]
    fn malformed_framing_is_an_error() {
        let bad: [&[u8]; 9] = [
            b"x\r\n",
            b"5\x0c\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
            b"-1\r\n",
            b" 5\r\n",
            b"5\rX\n",
            b"0\r\nx: 1\ry\r\n\r\n",
        ];
        for wire in bad {
            assert!(decode_in_pieces(wire, 64).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert_eq!(decode_in_pieces(&long, 64), Err("chunk framing line too long"));
        assert_eq!(decode_in_pieces(b"5\r\nhel", 64), Err("truncated"));
        // Framing alone cannot keep a body going.
        let extensions: Vec<u8> =
            (0..20).flat_map(|_| format!("1;{}\r\na\r\n", "e".repeat(1000)).into_bytes()).collect();
        assert_eq!(decode_in_pieces(&extensions, 4096), Err("chunk extensions and trailers too long"));
        let padded: Vec<u8> = (0..20).flat_map(|_| format!("1{}\r\na\r\n", " ".repeat(1000)).into_bytes()).collect();
        assert_eq!(decode_in_pieces(&padded, 4096), Err("chunk extensions and trailers too long"));
        let trailers: Vec<u8> = [&b"0\r\n"[..], &b"x-t: 1\r\n".repeat(3000), b"\r\n"].concat();
        assert_eq!(decode_in_pieces(&trailers, 4096), Err("chunk extensions and trailers too long"));
    }

    #[test]
    fn request_bodies_need_crlf_everywhere() {
        let good = b"2;x=1\r\nAB\r\n0\r\nt: 1\r\n\r\n";
        assert_eq!(decode_with(Chunked::for_requests(), good, 3).unwrap().0, b"AB");
        let bare_lf: [&[u8]; 4] =
            [b"2;x\nAB\r\n0\r\n\r\n", b"2\r\nAB\n0\r\n\r\n", b"2\r\nAB\r\n0\n\r\n", b"0\r\nt: 1\n\r\n"];
        for wire in bare_lf {
            assert!(decode_with(Chunked::for_requests(), wire, 64).is_err(), "{:?}", String::from_utf8_lossy(wire));
            assert!(decode_in_pieces(wire, 64).is_ok(), "answers stay lenient: {:?}", String::from_utf8_lossy(wire));
        }
    }
}
