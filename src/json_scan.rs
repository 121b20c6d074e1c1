//! A forward-only JSON scanner for reading a few fields out of a document without building it.
//!
//! The gateway reads JSON on the hot path in two places: the `model` of a request (routing
//! rules) and the `usage` of a response (token accounting). Both want two or three fields out of
//! a document whose bulk (messages, choices, images) is irrelevant. Deserializing — even with
//! serde skipping into `IgnoredAny` — costs several thousand instructions per response; walking
//! the bytes and skipping what is not asked for costs a few per byte and allocates nothing.
//!
//! The scanner is lenient where leniency is harmless (a skipped value is not validated, only
//! its extent found) and strict where it matters: a document that ends early, or whose fields
//! are not separated as JSON's are, yields `None`, so a caller never acts on half a document.
//! Nothing recurses, so hostile nesting costs one pass like anything else.

use std::borrow::Cow;

pub struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

// The primitives below are `#[inline(always)]`: they run once per member or value, and their
// call overhead was a third of a scan's cost (callgrind: 0.6 k of the 22.7 k instructions a
// proxied request cost).
impl<'a> Scanner<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    #[inline(always)]
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The next value's first byte, after whitespace.
    pub fn peek_value(&mut self) -> Option<u8> {
        self.ws();
        self.peek()
    }

    /// Walks the object at the cursor, calling `field` with each key (its raw bytes, and whether
    /// it contained escapes) while the cursor is on the value; `field` must consume the value.
    pub fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8], bool) -> Option<()>) -> Option<()> {
        self.ws();
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let (key, escaped) = self.raw_string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            field(self, key, escaped)?;
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string's raw bytes (between the quotes) and whether it contained escapes.
    #[inline(always)]
    fn raw_string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Most bytes are neither a quote nor a backslash: find the next one of those at once.
            let rest = self.b.get(self.i..)?;
            let at = quote_or_backslash(rest)?;
            self.i += at + 1;
            if rest[at] == b'"' {
                return Some((&self.b[start..self.i - 1], escaped));
            }
            escaped = true;
            self.next()?;
        }
    }

    /// The string value at the cursor (`Ok(None)` for `null`); any other value is skipped and
    /// also yields `Ok(None)`.
    pub fn string_or_null(&mut self) -> Option<Option<Cow<'a, str>>> {
        self.ws();
        if self.peek()? != b'"' {
            self.skip_value()?;
            return Some(None);
        }
        let (raw, escaped) = self.raw_string()?;
        Some(if escaped { unescape(raw).map(Cow::Owned) } else { std::str::from_utf8(raw).ok().map(Cow::Borrowed) })
    }

    /// The non-negative integer at the cursor (also written as `12.0`), or `None` inside `Some`
    /// for any other value (which is skipped).
    #[inline(always)]
    pub fn u64_or_other(&mut self) -> Option<Option<u64>> {
        self.ws();
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        // An integral fraction, as some OpenAI-compatible servers write counts.
        if self.peek() == Some(b'.') && self.b.get(self.i + 1) == Some(&b'0') {
            self.i += 1;
            while self.peek() == Some(b'0') {
                self.i += 1;
            }
        }
        let ends_here = matches!(self.peek(), Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
        if !digits.is_empty() && ends_here {
            let n = digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            if n.is_some() {
                return Some(n);
            }
        }
        self.i = start;
        self.skip_value()?;
        Some(None)
    }

    /// Whether the array at the cursor is empty, or `None` inside `Some` for any other value.
    /// The value is skipped either way.
    pub fn array_is_empty(&mut self) -> Option<Option<bool>> {
        self.ws();
        let start = self.i;
        let empty = if self.peek()? == b'[' {
            self.i += 1;
            self.ws();
            Some(self.peek()? == b']')
        } else {
            None
        };
        self.i = start;
        self.skip_value()?;
        Some(empty)
    }

    /// The value at the cursor, as it is written.
    pub fn raw_value(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        Some(&self.b[start..self.i])
    }

    /// Skips the value at the cursor, whatever it is. Containers are skipped by counting
    /// brackets outside strings — their inner structure is not validated, only their extent —
    /// which is several times cheaper than walking keys and values, and cannot recurse.
    #[inline(always)]
    pub fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.raw_string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.next()? {
                        b'"' => {
                            self.i -= 1;
                            self.raw_string()?;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                // number, true, false, null: the bytes they can be made of
                let start = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.')) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

/// The value of the last top-level member named `key` in `doc`, walking forwards (the reference
/// `last_member` is checked against).
pub fn member<'a>(doc: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut s = Scanner::new(doc);
    let mut found = None;
    s.object(|s, k, escaped| {
        let value = s.raw_value()?;
        if key_is(k, escaped, key) {
            found = Some(value);
        }
        Some(())
    })?;
    found
}

/// How far from the end [`read_last_member`] searches for the key's text: past the few members
/// an answer puts after its usage, the backward walk is no dearer.
const SEARCH_LIMIT: usize = 2048;

/// Reads, with `read`, the value [`last_member`] finds — first by searching backwards for the
/// key's plain text and reading forwards from there. That costs a third of the backward walk
/// over the value followed by a forward read of it, and is taken only when what follows the
/// value proves the find: members not named `key`, then the end of the object at the end of the
/// document, so the key is the object's last of that name (in a well-formed document, the
/// top-level object's). Otherwise — the key escaped, nested, further back, or the tail not JSON —
/// the backward walk decides. `None` when the member is not found or `read` fails.
pub fn read_last_member<'a, T>(
    doc: &'a [u8],
    key: &[u8],
    max_members: usize,
    mut read: impl FnMut(&mut Scanner<'a>) -> Option<T>,
) -> Option<T> {
    if let Some(value) = searched_member(doc, key, max_members, &mut read) {
        return Some(value);
    }
    read(&mut Scanner::new(last_member(doc, key, max_members)?))
}

fn searched_member<'a, T>(
    doc: &'a [u8],
    key: &[u8],
    max_members: usize,
    read: &mut impl FnMut(&mut Scanner<'a>) -> Option<T>,
) -> Option<T> {
    let end = doc.len() - trailing_ws(doc);
    let (open, colon) = last_key_text(doc, end.saturating_sub(SEARCH_LIMIT), end, key)?;
    // A string's opening quote (not an escaped one), after the `{` or `,` that a key follows.
    let after = (open - trailing_ws(&doc[..open])).checked_sub(1).map(|b| doc[b]);
    if escaped(doc, open) || !matches!(after, Some(b'{' | b',')) {
        return None;
    }
    let mut s = Scanner { b: doc, i: colon + 1 };
    s.ws();
    let value = read(&mut s)?;
    let mut later = 0;
    loop {
        s.ws();
        match s.next()? {
            b'}' => {
                s.ws();
                return (s.i == doc.len()).then_some(value);
            }
            b',' => {
                later += 1;
                if later >= max_members {
                    return None;
                }
                s.ws();
                let (k, escaped) = s.raw_string()?;
                if key_is(k, escaped, key) {
                    return None;
                }
                s.ws();
                s.eat(b':')?;
                s.skip_value()?;
            }
            _ => return None,
        }
    }
}

/// The value of `key` among the last `max_members` members of the top-level object in `doc`,
/// found by walking backwards from the document's end. API answers put `usage` last (or nearly):
/// this reads it without scanning the choices and generated text in front of it. `None` when the
/// key is not among them or the tail is not well-formed JSON — the caller then scans forwards.
pub fn last_member<'a>(doc: &'a [u8], key: &[u8], max_members: usize) -> Option<&'a [u8]> {
    let mut end = doc.len() - trailing_ws(doc);
    end = end.checked_sub(1).filter(|&e| doc[e] == b'}')?;
    for _ in 0..max_members {
        end -= trailing_ws(&doc[..end]);
        let start = value_start(doc, end)?;
        let value = &doc[start..end];
        end = start - trailing_ws(&doc[..start]);
        end = end.checked_sub(1).filter(|&e| doc[e] == b':')?;
        end -= trailing_ws(&doc[..end]);
        let close = end.checked_sub(1).filter(|&e| doc[e] == b'"')?;
        let open = opening_quote(doc, close)?;
        let raw = &doc[open + 1..close];
        if key_is(raw, raw.contains(&b'\\'), key) {
            return Some(value);
        }
        end = open - trailing_ws(&doc[..open]);
        match end.checked_sub(1).map(|e| doc[e]) {
            Some(b',') => end -= 1,
            _ => return None, // `{`: no member left; anything else: not JSON
        }
    }
    None
}

#[inline(always)]
fn trailing_ws(s: &[u8]) -> usize {
    s.iter().rev().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')).count()
}

/// Where the value ending at `end` (exclusive) starts.
#[inline(always)]
fn value_start(doc: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    match doc[last] {
        b'"' => opening_quote(doc, last),
        b'}' | b']' => {
            let mut depth = 0usize;
            let mut i = end;
            while i > 0 {
                i -= 1;
                match doc[i] {
                    b'"' => i = opening_quote(doc, i)?,
                    b'}' | b']' => depth += 1,
                    b'{' | b'[' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        _ => {
            let scalar = doc[..end]
                .iter()
                .rev()
                .take_while(|c| matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.'))
                .count();
            (scalar > 0).then(|| end - scalar)
        }
    }
}

/// The quote that opens the string whose closing quote is at `close`: the nearest quote before
/// it that is not escaped (preceded by an even number of backslashes).
#[inline(always)]
fn opening_quote(doc: &[u8], close: usize) -> Option<usize> {
    let mut i = close;
    loop {
        i = doc[..i].iter().rposition(|&c| c == b'"')?;
        if !escaped(doc, i) {
            return Some(i);
        }
    }
}

/// Whether the byte at `at` is escaped: preceded by an odd number of backslashes.
#[inline(always)]
fn escaped(doc: &[u8], at: usize) -> bool {
    doc[..at].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1
}

/// The last `"key"` followed by a colon in `doc[floor..end]` — a member named `key`, by its
/// text — as the positions of its opening quote and of the colon. Colons are looked for eight
/// bytes at a time: there is one per member, where quotes come four to a member.
fn last_key_text(doc: &[u8], floor: usize, end: usize, key: &[u8]) -> Option<(usize, usize)> {
    let key_before = |colon: usize| -> Option<(usize, usize)> {
        let close = (colon - trailing_ws(&doc[..colon])).checked_sub(1)?;
        let open = close.checked_sub(key.len() + 1)?;
        let named = doc[close] == b'"' && doc[open] == b'"' && doc.get(open + 1) == key.first();
        (named && &doc[open + 1..close] == key).then_some((open, colon))
    };
    let mut end = end;
    while end >= floor + 8 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&doc[end - 8..end]);
        let mut marks = exact_marks(u64::from_le_bytes(bytes), b':');
        while marks != 0 {
            let at = 7 - (marks.leading_zeros() / 8) as usize;
            if let Some(found) = key_before(end - 8 + at) {
                return Some(found);
            }
            marks &= !(0x80 << (8 * at));
        }
        end -= 8;
    }
    (floor..end).rev().filter(|&c| doc[c] == b':').find_map(key_before)
}

/// The high bit of each byte of `w` that equals `b`, and of no other: unlike the marks of
/// [`quote_or_backslash`], no borrow crosses bytes, so any mark may be taken, not only the lowest.
fn exact_marks(w: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (0x0101_0101_0101_0101 * u64::from(b));
    !(((x & LOW7) + LOW7) | x) & !LOW7
}

/// Position of the first `"` or `\\` in `s`, eight bytes at a time: model output is mostly long
/// strings, and this is where a scan spends its time.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Marks the bytes of `w` equal to `b`; the lowest mark is always a true match (a borrow can
    // only produce false marks above it).
    let equal = |w: u64, b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut words = s.chunks_exact(8);
    let mut offset = 0;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let marks = equal(w, b'"') | equal(w, b'\\');
        if marks != 0 {
            return Some(offset + (marks.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words.remainder().iter().position(|&c| c == b'"' || c == b'\\').map(|p| offset + p)
}

/// Whether an object key (raw bytes between the quotes, and whether they hold escapes) is
/// `name`. Keys are compared as the upstreams' JSON decoders compare them: after their escapes
/// are decoded.
pub fn key_is(raw: &[u8], escaped: bool, name: &[u8]) -> bool {
    // An escape is at most six bytes (`\uXXXX`) for one character: anything longer is another key,
    // and is not decoded (a body of many escaped keys must not cost an allocation each).
    if escaped && raw.len() <= 6 * name.len() {
        unescape(raw).is_some_and(|k| k.as_bytes() == name)
    } else {
        !escaped && raw == name
    }
}

/// Decodes a string with escapes (rare in model names; never on the hot path).
fn unescape(raw: &[u8]) -> Option<String> {
    let quoted = [b"\"", raw, b"\""].concat();
    serde_json::from_slice::<String>(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(doc: &str) -> Option<Vec<(String, String)>> {
        let mut s = Scanner::new(doc.as_bytes());
        let mut out = Vec::new();
        s.object(|s, key, _| {
            let start = s.i;
            s.skip_value()?;
            out.push((String::from_utf8_lossy(key).into_owned(), doc[start..s.i].trim().to_string()));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn walks_top_level_keys_and_skips_nested_values() {
        let doc = r#" { "a" : 1 , "b":{"c":[1,{"d":"}"}]}, "e":"x\"y", "f":[], "g":{} ,"h":null} "#;
        let got = fields(doc).unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "e", "f", "g", "h"]);
        assert_eq!(got[1].1, r#"{"c":[1,{"d":"}"}]}"#);
        assert_eq!(got[2].1, r#""x\"y""#);
        assert_eq!(fields("{}"), Some(vec![]));
    }

    #[test]
    fn malformed_documents_yield_none() {
        for doc in ["", "[1]", "{", r#"{"a":}"#, r#"{"a":1"#, r#"{"a" 1}"#, r#"{"a":[1,"#, r#"{"a":"x}"#, r#"{"a":1;}"#]
        {
            assert_eq!(fields(doc), None, "{doc}");
        }
        let unclosed = format!("{{\"x\":{}", "[".repeat(100_000));
        assert_eq!(fields(&unclosed), None);
    }

    #[test]
    fn finds_the_first_quote_or_backslash_at_any_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for mark in [b'"', b'\\'] {
                    let mut s = vec![b'a'; len];
                    // Bytes that differ from the marks by one bit or borrow must not match.
                    for (i, c) in s.iter_mut().enumerate() {
                        *c = [b'a', b'#', b'!', 0x22 ^ 0x80, b']', 0xff][i % 6];
                    }
                    if at < len {
                        s[at] = mark;
                    }
                    let want = (at < len).then_some(at);
                    assert_eq!(quote_or_backslash(&s), want, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn finds_the_last_key_text_at_any_offset() {
        for pad in 0..20 {
            for ws in ["", " ", "\n  "] {
                // Bytes one bit or one borrow away from a colon must not match.
                let noise: String = (0..pad).map(|i| ['a', ';', '{', ',', '"', '9'][i % 6]).collect();
                let doc = format!("{{{noise}\"usage\"{ws}:{{\"a\":1}},\"x\":\"usage:\"{noise}}}");
                let (open, colon) = last_key_text(doc.as_bytes(), 0, doc.len(), b"usage").unwrap();
                assert_eq!((open, colon), (1 + pad, 1 + pad + 7 + ws.len()), "{doc}");
                assert_eq!(last_key_text(doc.as_bytes(), colon + 1, doc.len(), b"usage"), None);
            }
        }
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b':', 0, b ^ 0x80, b':', 0xff, b, 0x3a ^ 1]);
            let want: u64 = [1, 4].iter().map(|i| 0x80u64 << (8 * i)).sum::<u64>()
                | [0, 6].iter().filter(|_| b == b':').map(|i| 0x80u64 << (8 * i)).sum::<u64>()
                | [3].iter().filter(|_| b ^ 0x80 == b':').map(|i| 0x80u64 << (8 * i)).sum::<u64>();
            assert_eq!(exact_marks(w, b':'), want, "byte {b:#x}");
        }
    }

    #[test]
    fn deep_nesting_costs_one_pass_without_recursion() {
        let deep = format!("{{\"x\":{}1{},\"y\":2}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(fields(&deep).map(|f| f.len()), Some(2));
    }

    #[test]
    fn typed_values() {
        let doc = r#"{"s":"gpt-4o","e":"a\"b","n":null,"k":7,"u":18446744073709551615,"neg":-1,"f":1.5,"o":{"x":1},"z":[],"y":[0]}"#;
        let mut s = Scanner::new(doc.as_bytes());
        let mut seen = Vec::new();
        s.object(|s, key, _| {
            let v = match key {
                b"s" | b"e" | b"n" | b"o" => format!("{:?}", s.string_or_null()?),
                b"z" | b"y" => format!("{:?}", s.array_is_empty()?),
                _ => format!("{:?}", s.u64_or_other()?),
            };
            seen.push(v);
            Some(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                r#"Some("gpt-4o")"#,
                r#"Some("a\"b")"#,
                "None",
                "Some(7)",
                "Some(18446744073709551615)",
                "None",
                "None",
                "None",
                "Some(true)",
                "Some(false)"
            ]
        );
    }

    #[test]
    fn last_member_agrees_with_a_forward_walk() {
        let docs = [
            r#"{"id":"x","choices":[{"message":{"content":"say \"usage\": {\"a\":1}"}}],"usage":{"prompt_tokens":3},"system_fingerprint":"fp"}"#,
            r#"{"usage":{"prompt_tokens":1}}"#,
            r#" { "a" : [1, {"b": "}\\"}], "usage" : { "x" : [ "]" ] } , "z" : null } "#,
            r#"{"usage":7,"tail":"\\\\"}"#,
            r#"{"a":{"usage":{"nested":true}},"b":2}"#,
            r#"{}"#,
            // For the search: the last plain text is nested, a value, escaped, or in a string.
            r#"{"usage":1,"a":{"usage":2}}"#,
            r#"{"usage":1,"a":["usage"]}"#,
            r#"{"usage":1,"a":"\"usage\":3}"}"#,
            r#"{"usage":1,"a":"\\","usage":4}"#,
            r#"{"usage":1,"a":{"b":"x","usage":5}}"#,
        ];
        for doc in docs {
            let want = member(doc.as_bytes(), b"usage");
            let got = last_member(doc.as_bytes(), b"usage", 8);
            assert_eq!(got, want, "{doc}");
            let searched = read_last_member(doc.as_bytes(), b"usage", 8, Scanner::raw_value);
            assert_eq!(searched, want, "{doc}");
            // The search, when it answers, answers right (not only the walk behind it).
            let wrong =
                searched_member(doc.as_bytes(), b"usage", 8, &mut Scanner::raw_value).filter(|&v| Some(v) != want);
            assert_eq!(wrong, None, "{doc}");
        }
        // The search is what reads a plainly written usage near the end.
        let plain = br#"{"id":"x","usage":{"prompt_tokens":3},"system_fingerprint":"fp"}"#;
        assert_eq!(searched_member(plain, b"usage", 4, &mut Scanner::raw_value), Some(&br#"{"prompt_tokens":3}"#[..]));
        assert_eq!(searched_member(plain, b"usage", 1, &mut Scanner::raw_value), None, "further back than asked");
        assert_eq!(last_member(plain, b"usage", 1), None);
        // Further back than asked, or a tail that is not JSON: not found (the caller scans forwards).
        assert_eq!(last_member(br#"{"usage":1,"a":2,"b":3}"#, b"usage", 2), None);
        assert_eq!(last_member(br#"{"usage":1,"a":2,"b":3]"#, b"usage", 8), None);
        assert_eq!(last_member(br#"{"usage":1 "a":2}"#, b"usage", 8), None);
        assert_eq!(last_member(b"", b"usage", 8), None);
        // Keys compare after their escapes are decoded, as decoders compare them.
        let escaped = br#"{"usage":1,"us\u0061ge":2}"#;
        assert_eq!(member(escaped, b"usage"), Some(&b"2"[..]));
        assert_eq!(last_member(escaped, b"usage", 8), Some(&b"2"[..]));
        assert_eq!(read_last_member(escaped, b"usage", 8, Scanner::raw_value), Some(&b"2"[..]));
    }

    #[test]
    fn last_member_agrees_with_a_forward_walk_on_random_documents() {
        use serde_json::{json, Value};
        let pieces = ["\"", "\\", "}", "]", "{", "[", ":", ",", "usage", "a", " ", "\u{e9}"];
        let text = |n: u64| -> String {
            (0..n % 7).map(|k| pieces[((n >> (k * 3)) % pieces.len() as u64) as usize]).collect()
        };
        for round in 0..2000u64 {
            let r = |k: u64| crate::rand::below(1 + k);
            let mut members = serde_json::Map::new();
            for m in 0..r(5) {
                let value: Value = match r(4) {
                    0 => json!(text(crate::rand::next_u64())),
                    1 => json!([text(crate::rand::next_u64()), {"usage": text(crate::rand::next_u64())}, r(100)]),
                    2 => json!({"prompt_tokens": r(1000), "note": text(crate::rand::next_u64())}),
                    _ => json!(r(1_000_000)),
                };
                let key = if r(3) == 0 { "usage".to_string() } else { format!("{}{m}", text(crate::rand::next_u64())) };
                members.insert(key, value);
            }
            let doc = if round % 2 == 0 {
                serde_json::to_string(&Value::Object(members)).unwrap()
            } else {
                serde_json::to_string_pretty(&Value::Object(members)).unwrap()
            };
            let want = member(doc.as_bytes(), b"usage");
            let got = last_member(doc.as_bytes(), b"usage", 16);
            assert_eq!(got, want, "{doc}");
            assert_eq!(read_last_member(doc.as_bytes(), b"usage", 16, Scanner::raw_value), want, "{doc}");
        }
    }
}
