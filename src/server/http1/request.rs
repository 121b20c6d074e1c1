//! Reading a client's request head: `httparse` over the connection's read buffer, the head then
//! frozen and cut into the method, URI and header values without copying them.

use crate::error::ApiError;
use crate::fields::{Fields, Spans, WireFields};
use crate::http1::chunked::Chunked;
use crate::http1::HeadFacts;
use crate::message::RequestHead;
use bytes::BytesMut;
use hyper::{Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// A request head larger than this is refused with 431 (hyper's default limit is similar).
pub const MAX_HEAD: usize = 64 * 1024;
/// Request headers beyond this count are refused with 431 (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// Where the request body ends (RFC 9112 §6.3: a request without `Content-Length` or
/// `Transfer-Encoding` has none).
#[derive(Debug)]
pub enum BodyFraming {
    Length(u64),
    Chunked(Chunked),
}

/// A parsed request head and what it says about the body and the connection.
pub struct Head {
    pub request: RequestHead,
    pub version: Version,
    pub body: BodyFraming,
    /// The client may send another request on this connection after the answer.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

/// Parses the head at the front of `buf` and removes it from there; `Ok(None)` while the head
/// is incomplete. An error is the answer to send before closing the connection.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, ApiError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => return Err(ApiError::bad_request(format!("malformed request head: {e}"))),
    };
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(ApiError::bad_request("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| ApiError::bad_request("invalid request method"))?;
    // Offsets of the target and of each field, to cut them from the frozen head.
    let start = crate::http1::offset_in(buf, target.as_bytes()) as usize;
    let target = start..start + target.len();
    let spans = Spans::measure(buf, req.headers);
    let mut facts = HeadFacts::default();
    let mut expect_continue = false;
    let mut hosts = 0;
    for (name, raw) in spans.fields(buf) {
        // The fields the request's own checks read, told apart by length first.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            6 if name.eq_ignore_ascii_case(b"expect") => expect_continue = raw.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
        facts.note(name, raw).map_err(ApiError::bad_request)?;
    }
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| ApiError::bad_request("invalid request target"))?;
    let fields = Fields::Wire(WireFields::new(head, spans));

    if version == Version::HTTP_11 && hosts != 1 {
        // RFC 9112 §3.2: exactly one `Host` (nginx refuses the same).
        return Err(ApiError::bad_request("an HTTP/1.1 request needs exactly one host header"));
    }
    // Only `chunked` itself: a body in another coding would go upstream undeclared.
    if facts.other_coding && facts.content_length.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "unsupported_transfer_coding",
            "only the chunked transfer coding is supported",
        ));
    }
    let body = match (facts.chunked, facts.content_length) {
        // Both, or a coding other than chunked last: the body's end is ambiguous, which is how
        // requests are smuggled past a proxy (RFC 9112 §6.1, §6.3).
        (Some(_), Some(_)) => return Err(ApiError::bad_request("both transfer-encoding and content-length")),
        (Some(false), None) => return Err(ApiError::bad_request("transfer-encoding must end with chunked")),
        (Some(true), None) if version == Version::HTTP_10 => {
            return Err(ApiError::bad_request("transfer-encoding in an HTTP/1.0 request"))
        }
        (Some(true), None) => BodyFraming::Chunked(Chunked::for_requests()),
        (None, n) => BodyFraming::Length(n.unwrap_or(0)),
    };
    Ok(Some(Head {
        request: RequestHead { method, uri, fields },
        version,
        body,
        // HTTP/1.0 connections are closed after one answer (keep-alive there is a rarity).
        keep_alive: version == Version::HTTP_11 && !facts.close,
        expect_continue: expect_continue && version == Version::HTTP_11,
    }))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "invalid_request_error",
        "request_head_too_large",
        format!("the request head exceeds {MAX_HEAD} bytes or {MAX_HEADERS} fields"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Option<Head>, ApiError> {
        parse(&mut BytesMut::from(s))
    }

    #[test]
    fn a_head_is_cut_from_the_buffer_with_its_framing() {
        let mut buf = BytesMut::from(
            "\r\nPOST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Two: 1\r\nx-two: 2\r\n\r\n{}GET",
        );
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.request.method, Method::POST);
        assert_eq!(head.request.uri, "/v1/chat?x=1");
        let two = hyper::header::HeaderName::from_static("x-two");
        assert_eq!(head.request.fields.get_all(&two).collect::<Vec<_>>(), [b"1", b"2"]);
        assert!(matches!(head.body, BodyFraming::Length(2)));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"{}GET", "the body and what follows stay in the buffer");
    }

    #[test]
    fn connection_and_expectation() {
        let head = parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive && head.expect_continue);
        assert!(matches!(head.body, BodyFraming::Length(0)));
        let head = parse_str("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive && !head.expect_continue);
        let head = parse_str("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
        assert!(matches!(head.body, BodyFraming::Chunked(_)));
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused() {
        assert!(parse_str("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let refused = |s: &str| parse_str(s).err().map(|e| e.status.as_u16());
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(501));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), Some(501));
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), Some(400));
        assert_eq!(refused("G\0T / HTTP/1.1\r\n\r\n"), Some(400));
        let many: String = (0..150).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(431));
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD + 1))), Some(431));
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD))), Some(431));
    }
}
