//! HTTP/1.1 message framing shared by both ends of the proxy: the upstream client
//! (`upstream::direct`) and the client-facing server (`server::http1`) read the same header
//! fields to find where a body ends, and decode the same chunked coding.

pub mod chunked;

use hyper::header::{self, HeaderName, InvalidHeaderName};

/// A message whose head and body fit in this many bytes is written from one buffer with
/// `send(2)`, the body copied behind the head, rather than from where its parts lie with
/// `writev(2)` (for a stream: each event with its chunk lines). On loopback, where the sender's
/// system call also runs the receiver's TCP stack, `writev`'s iovec import and file-layer checks
/// were 4 % of a proxied request's CPU (perf, `make bench-compare` load); copying a few KiB in
/// user space costs far less. Larger bodies (long prompts) are not copied.
pub const COPY_LIMIT: usize = 4 * 1024;

/// What a message head says about its framing and its connection (RFC 9112 §6, §9.6).
#[derive(Default)]
pub struct HeadFacts {
    pub close: bool,
    pub keep_alive: bool,
    /// Other headers `Connection` names: hop-by-hop too (rare; allocated only then).
    pub listed: Vec<HeaderName>,
    /// Whether the final transfer coding is chunked, when there is a `Transfer-Encoding`.
    pub chunked: Option<bool>,
    /// Whether a transfer coding other than one `chunked` is named (`gzip, chunked`, or
    /// `chunked` twice): the body is still coded once de-chunked, and the proxy, which drops
    /// `Transfer-Encoding`, would pass it on undeclared.
    pub other_coding: bool,
    pub content_length: Option<u64>,
}

/// At most this many header names that a `Connection` field lists are honoured (stripped as
/// hop-by-hop); real peers list one or two, and a list of thousands must cost no more.
pub const MAX_LISTED: usize = 16;

impl HeadFacts {
    /// Notes the field `name: value` if framing or the connection depends on it (the names are
    /// told apart by length first: most fields cost one comparison). A malformed or conflicting
    /// `Content-Length` is an error.
    pub fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => self.connection(value),
            14 if name.eq_ignore_ascii_case(b"content-length") => self.content_length(value)?,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => self.transfer_encoding(value),
            _ => {}
        }
        Ok(())
    }

    fn connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if self.listed.len() >= MAX_LISTED {
                // A list no real peer sends: the rest of its names are not looked at.
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                self.listed.push(name);
            }
        }
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        let mut codings = value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty());
        // Chunked once, and only as the last coding of all the fields: anything else leaves
        // the body coded after de-chunking.
        let only_chunked = self.chunked.is_none()
            && matches!((codings.next(), codings.next()), (Some(c), None) if c.eq_ignore_ascii_case(b"chunked"));
        self.other_coding |= !only_chunked;
        self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
    }

    /// Records a `Content-Length`; differing or malformed values are an error (RFC 9112 §6.3),
    /// since the body's end could not be known.
    fn content_length(&mut self, value: &[u8]) -> Result<(), &'static str> {
        for part in value.split(|&b| b == b',') {
            let n = parse_u64(part.trim_ascii()).ok_or("invalid content-length")?;
            if self.content_length.is_some_and(|l| l != n) {
                return Err("conflicting content-length values");
            }
            self.content_length = Some(n);
        }
        Ok(())
    }
}

/// Where `part` (a slice of `whole`) starts in `whole`.
pub fn offset_in(whole: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize) as u32
}

/// A header name from the wire. The names nearly every request and answer carry are
/// recognised by length and a case-insensitive comparison; `HeaderName::from_bytes` lowercases
/// into a buffer and walks the whole standard-name table, several times the cost.
pub fn header_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let known = match name.len() {
        4 if name.eq_ignore_ascii_case(b"host") => Some(header::HOST),
        4 if name.eq_ignore_ascii_case(b"date") => Some(header::DATE),
        6 if name.eq_ignore_ascii_case(b"accept") => Some(header::ACCEPT),
        6 if name.eq_ignore_ascii_case(b"server") => Some(header::SERVER),
        10 if name.eq_ignore_ascii_case(b"user-agent") => Some(header::USER_AGENT),
        10 if name.eq_ignore_ascii_case(b"connection") => Some(header::CONNECTION),
        12 if name.eq_ignore_ascii_case(b"content-type") => Some(header::CONTENT_TYPE),
        13 if name.eq_ignore_ascii_case(b"authorization") => Some(header::AUTHORIZATION),
        13 if name.eq_ignore_ascii_case(b"cache-control") => Some(header::CACHE_CONTROL),
        14 if name.eq_ignore_ascii_case(b"content-length") => Some(header::CONTENT_LENGTH),
        15 if name.eq_ignore_ascii_case(b"accept-encoding") => Some(header::ACCEPT_ENCODING),
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => Some(header::TRANSFER_ENCODING),
        _ => None,
    };
    match known {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(name),
    }
}

/// A non-empty run of ASCII digits as a number (no sign, no spaces, no overflow).
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// `n` in decimal, written into the end of `buf`.
pub fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values_must_agree() {
        let mut f = HeadFacts::default();
        assert!(f.content_length(b"12, 12").is_ok());
        assert_eq!(f.content_length, Some(12));
        assert!(f.content_length(b"13").is_err());
        for bad in [&b""[..], b"-1", b"1 2", b"0x10", b"99999999999999999999"] {
            assert!(HeadFacts::default().content_length(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens() {
        let mut f = HeadFacts::default();
        f.connection(b"Keep-Alive, X-Trace ,close");
        assert!(f.close && f.keep_alive);
        assert_eq!(f.listed, vec![HeaderName::from_static("x-trace")]);
        f.transfer_encoding(b"gzip, Chunked");
        assert_eq!(f.chunked, Some(true));
        f.transfer_encoding(b"chunked, gzip");
        assert_eq!(f.chunked, Some(false));
        assert!(f.other_coding);
        let mut plain = HeadFacts::default();
        plain.transfer_encoding(b" Chunked, ");
        assert!(!plain.other_coding);
        let mut identity = HeadFacts::default();
        identity.transfer_encoding(b"identity");
        assert!(identity.other_coding);
        plain.transfer_encoding(b"chunked");
        assert!(plain.other_coding, "chunked twice, in two fields");
        let mut twice = HeadFacts::default();
        twice.transfer_encoding(b"chunked, chunked");
        assert!(twice.other_coding);
    }

    #[test]
    fn common_names_are_the_standard_ones() {
        for name in ["Host", "DATE", "content-type", "Content-Length", "transfer-encoding", "x-custom", "User-Agent"] {
            assert_eq!(header_name(name.as_bytes()).unwrap(), HeaderName::from_bytes(name.as_bytes()).unwrap());
        }
        assert!(header_name(b"bad name").is_err() && header_name(b"").is_err());
    }

    #[test]
    fn formats_numbers() {
        let mut b = [0u8; 20];
        assert_eq!(format_u64(0, &mut b), b"0");
        assert_eq!(format_u64(u64::MAX, &mut b), b"18446744073709551615");
    }
}
