//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and by `make ci`, which replays the
//! committed corpus through them on stable Rust, so the targets can never rot.
//!
//! Each function must never panic on any input except to report a broken invariant: panicking
//! is how a fuzzer learns of one, so the crate-wide ban on panics is lifted here (nothing in the
//! server calls these functions).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use crate::router::pattern::{self, Segment};
use crate::router::Router;
use std::cmp::Ordering;

/// Patterns and paths as text: lines up to the first empty line are patterns, the rest paths.
/// Invariant: the trie agrees with a naive matcher that tries every rule and keeps the
/// highest-priority match.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut trie = Router::new();
    let mut rules: Vec<Vec<Segment>> = Vec::new();
    for line in lines.by_ref().take_while(|l| !l.is_empty()).take(32) {
        // Long regexes make compilation, not matching, the subject; keep rules short.
        if line.len() > 64 {
            continue;
        }
        if trie.insert(line, rules.len()).is_ok() {
            match pattern::parse(line) {
                Ok(segments) => rules.push(segments),
                Err(e) => panic!("the trie accepted {line:?} that the parser rejects: {e}"),
            }
        }
    }
    for path in lines.take(64) {
        let want = reference(&rules, path);
        let got = trie.lookup(path).copied();
        assert_eq!(got, want, "path {path:?} over rules {rules:?}");
    }
}

/// The naive matcher: every rule, in full, then the best by priority.
fn reference(rules: &[Vec<Segment>], path: &str) -> Option<usize> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let matching: Vec<usize> = (0..rules.len()).filter(|&i| matches(&rules[i], &segs)).collect();
    matching.into_iter().min_by(|&a, &b| priority(rules, a, b))
}

fn matches(rule: &[Segment], segs: &[&str]) -> bool {
    let mut i = 0;
    for seg in rule {
        match seg {
            Segment::Rest => return i < segs.len(),
            _ if i >= segs.len() => return false,
            Segment::Static(s) if s != segs[i] => return false,
            Segment::Regex { regex, .. } if !regex.is_match(segs[i]) => return false,
            _ => {}
        }
        i += 1;
    }
    i == segs.len()
}

fn kind(s: &Segment) -> u8 {
    match s {
        Segment::Static(_) => 0,
        Segment::Regex { .. } => 1,
        Segment::Param => 2,
        Segment::Wildcard => 3,
        Segment::Rest => 4,
    }
}

fn same_shape(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::Static(x), Segment::Static(y)) => x == y,
        (Segment::Regex { source: x, .. }, Segment::Regex { source: y, .. }) => x == y,
        _ => kind(a) == kind(b),
    }
}

/// Compares two matching rules at their first differing segment: by kind, and between two
/// regexes by which one was declared first at that position (after the same prefix).
fn priority(rules: &[Vec<Segment>], a: usize, b: usize) -> Ordering {
    let (ra, rb) = (&rules[a], &rules[b]);
    let Some(i) = (0..ra.len().min(rb.len())).find(|&i| !same_shape(&ra[i], &rb[i])) else {
        return ra.len().cmp(&rb.len());
    };
    match kind(&ra[i]).cmp(&kind(&rb[i])) {
        Ordering::Equal => {
            let first = |rule: &[Segment]| {
                rules
                    .iter()
                    .position(|r| r.len() > i && (0..=i).all(|j| same_shape(&r[j], &rule[j])))
                    .unwrap_or(usize::MAX)
            };
            first(ra).cmp(&first(rb))
        }
        other => other,
    }
}

/// Arbitrary bytes as a configuration file: either an error (with a message) or a configuration
/// that compiles into a runtime and survives a write/read round trip unchanged.
pub fn config(data: &[u8]) {
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let text = String::from_utf8_lossy(data);
    match crate::config::from_str(&text, &env) {
        Err(e) => assert!(!e.message.is_empty(), "an error without a reason"),
        Ok(config) => {
            let written = serde_yaml::to_string(&config).unwrap_or_else(|e| panic!("cannot write a valid config: {e}"));
            let again = crate::config::from_str(&written, &crate::config::Literal);
            assert_eq!(again.as_ref().ok(), Some(&config), "round trip changed the config: {written}");
            if let Err(e) = crate::runtime::Runtime::build(config) {
                panic!("a validated config failed to compile: {e}");
            }
        }
    }
}

/// Arbitrary bytes as a response body, cut into frames of varying sizes: the usage scanner never
/// panics, passes bytes through unchanged, reads the same usage whatever the framing, and when
/// stripping removes only whole lines.
pub fn sse(data: &[u8]) {
    use crate::usage::UsageScanner;
    use bytes::Bytes;
    let _ = crate::router::model::extract(data);
    // On a JSON object, reading a member from the back finds what reading forwards finds.
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data).is_ok() {
        let forwards = crate::json_scan::member(data, b"usage");
        let backwards = crate::json_scan::last_member(data, b"usage", usize::MAX);
        assert_eq!(backwards, forwards, "last_member disagrees");
        let searched =
            crate::json_scan::read_last_member(data, b"usage", usize::MAX, crate::json_scan::Scanner::raw_value);
        assert_eq!(searched, forwards, "read_last_member disagrees");
        // Asking for usage on the client's behalf keeps the request valid JSON, with the option on.
        if let Some(asked) = crate::usage::ask_for_usage("/v1/chat/completions", data) {
            let v: serde_json::Value = serde_json::from_slice(&asked).unwrap_or_else(|e| panic!("invalid JSON: {e}"));
            assert_eq!(v["stream_options"]["include_usage"], serde_json::Value::Bool(true));
        }
    }
    // A large answer's usage is read from its last bytes, which may start anywhere.
    for start in [0, data.len() / 3, data.len() / 2] {
        let _ = crate::json_scan::last_member(&data[start..], b"usage", 4);
    }
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step % 17) + 1;
    let run = |content_type: &str, strip: bool, chunk: usize| {
        let mut s =
            UsageScanner::for_content_type(content_type.as_bytes(), strip).unwrap_or_else(|| panic!("{content_type}"));
        let mut out = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            out.extend_from_slice(&s.frame(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&s.take_held_back().unwrap_or_default());
        (s.finish(), out)
    };
    let mut counted = None;
    for ct in ["text/event-stream", "application/json", "application/x-ndjson"] {
        let (whole, out) = run(ct, false, body.len());
        assert_eq!(out, body, "{ct}: bytes changed");
        let (pieces, out) = run(ct, false, step);
        assert_eq!(out, body, "{ct}: bytes changed in pieces");
        assert_eq!(whole, pieces, "{ct}: framing changed the usage read");
        counted.get_or_insert(whole);
    }
    // Stripping applies to SSE only: a newline-delimited JSON stream is never rewritten.
    assert_eq!(run("application/x-ndjson", true, step).1, body, "an NDJSON stream was rewritten");
    let (whole, stripped) = run("text/event-stream", true, body.len());
    assert_eq!(Some(whole), counted, "stripping changed the usage read");
    // Lines shorter than the scanner's line limit (1 MiB; fuzz inputs are at most 64 KiB) are
    // stripped the same however the body is framed — a CRLF split across frames included.
    let (_, in_pieces) = run("text/event-stream", true, step);
    assert_eq!(in_pieces, stripped, "framing changed what stripping removed");
    // Lines of the output appear in the input in the same order. A line ended by a lone CR,
    // then a removed event, then an empty line ended by LF read as one line ended by CRLF.
    let input: Vec<&[u8]> = crate::usage::sse_lines(body).collect();
    let mut at = 0;
    let mut find = |line: &[u8]| {
        let found = input[at..].iter().position(|l| *l == line);
        found.map(|k| at += k + 1).is_some()
    };
    for line in crate::usage::sse_lines(&stripped) {
        let split = line.strip_suffix(b"\n").filter(|l| l.ends_with(b"\r"));
        if !find(line) && !split.is_some_and(|cr| find(cr) && find(b"\n")) {
            panic!("stripping produced a line that was not in the input: {line:?}");
        }
    }
}

/// A client's byte stream on a forward connection: request heads as `server::http1` parses
/// them, each followed by its body as that server reads it. Invariants: an incomplete head
/// consumes nothing, a parsed one consumes at most the head limit, a refusal is a 400, 431 or 501,
/// and chunked bodies yield only non-empty data that was in the stream.
pub fn http1_requests(data: &[u8]) {
    use crate::http1::chunked::Step;
    use crate::server::http1::request::{self, BodyFraming};
    use bytes::Buf;
    let mut buf = bytes::BytesMut::from(data);
    for _ in 0..16 {
        let before = buf.len();
        let head = match request::parse(&mut buf) {
            Ok(Some(head)) => head,
            Ok(None) => return assert_eq!(buf.len(), before, "an incomplete head consumed bytes"),
            Err(refusal) => return assert!(matches!(refusal.status.as_u16(), 400 | 431 | 501), "{refusal:?}"),
        };
        let used = before - buf.len();
        assert!(used > 0 && used <= request::MAX_HEAD, "head of {used} bytes");
        match head.body {
            BodyFraming::Length(n) => {
                if n > buf.len() as u64 {
                    return;
                }
                buf.advance(n as usize);
            }
            BodyFraming::Chunked(mut state) => loop {
                let left = buf.len();
                match state.decode(&mut buf) {
                    Ok(Step::Data(d)) => assert!(!d.is_empty() && buf.len() + d.len() <= left, "data from nowhere"),
                    Ok(Step::End) => break,
                    Ok(Step::NeedMore) | Err(_) => return,
                }
            },
        }
    }
}
