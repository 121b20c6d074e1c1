//! Header fields as the proxy reads them: hyper's `HeaderMap`, or the fields of an HTTP/1 head
//! exactly where they lie in the bytes read.
//!
//! A gateway reads a handful of fields of each message (framing, credentials, content type) and
//! copies the rest through. For the plain-HTTP/1.1 path — nearly all traffic — building a
//! `HeaderMap` for that meant two allocations per message, a hash and a validation pass per
//! field, and a reference count per value, for the request and again for the answer: about a
//! sixth of the proxy's instructions per request. [`WireFields`] keeps the head as the one
//! buffer it was read into, plus the offsets of each field: `httparse` has already checked every
//! byte, and the few lookups are a pass over a handful of short names. Messages hyper parsed (TLS,
//! HTTP/2) or the proxy made keep their map; both are read through the same methods.
//!
//! Names from the wire keep the case the peer sent (HTTP/1 names are case-insensitive, and
//! every lookup here compares them so); a map's names are lowercase.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;

/// A message's header fields.
pub enum Fields {
    Map(HeaderMap),
    Wire(WireFields),
}

/// The fields of an HTTP/1 head: the head's bytes, and where each field lies in them.
pub struct WireFields {
    head: Bytes,
    spans: Spans,
}

/// Where each field of a head lies: name start, name end, value start, value end. A removed
/// field keeps its place with an empty name (a real name is never empty). Offsets are `u32`: a
/// head is at most its size limit plus one read long. The table is kept apart from the value
/// (offsets kept inline made every move of an answer through the futures that carry it a copy of
/// hundreds of bytes), and tables are reused (see [`SPARE_TABLES`]).
pub struct Spans(Vec<[u32; 4]>);

/// Span tables of heads that are done with, kept for the next heads this thread reads: a table
/// per message was an allocation and a free for the request and again for the answer.
const SPARE_TABLES: usize = 64;
/// Tables larger than this (a head with very many fields) are not kept.
const SPARE_MAX_FIELDS: usize = 128;

thread_local! {
    static SPARE: RefCell<Vec<Vec<[u32; 4]>>> = const { RefCell::new(Vec::new()) };
}

impl Spans {
    /// Where `fields` — slices of `buf`, as `httparse` returns them — lie in `buf`, so they can
    /// be read from the head once it is frozen (see [`WireFields::new`]).
    pub fn measure(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
        let mut table = SPARE.try_with(|spare| spare.borrow_mut().pop()).ok().flatten().unwrap_or_default();
        let at = |part: &[u8]| crate::http1::offset_in(buf, part);
        table.extend(fields.iter().map(|f| {
            let (name, value) = (at(f.name.as_bytes()), at(f.value));
            [name, name + f.name.len() as u32, value, value + f.value.len() as u32]
        }));
        Spans(table)
    }

    /// (name, value) of each field, read from `buf` — the buffer the offsets were measured in.
    pub fn fields<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.0.iter().map(move |&span| field(buf, span))
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        if self.0.capacity() == 0 || self.0.capacity() > SPARE_MAX_FIELDS {
            return;
        }
        let mut table = std::mem::take(&mut self.0);
        table.clear();
        // `try_with`: a thread being torn down has no spares to keep.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_TABLES {
                spare.push(table);
            }
        });
    }
}

/// The name and value at `span` of `buf` (empty where a span does not fit, which cannot happen
/// for spans measured in `buf`).
#[inline]
fn field(buf: &[u8], [ns, ne, vs, ve]: [u32; 4]) -> (&[u8], &[u8]) {
    let cut = |s: u32, e: u32| buf.get(s as usize..e as usize).unwrap_or_default();
    (cut(ns, ne), cut(vs, ve))
}

impl WireFields {
    /// The fields at `spans` of `head`, the buffer they were measured in, now frozen.
    pub fn new(head: Bytes, spans: Spans) -> Self {
        WireFields { head, spans }
    }

    fn iter(&self) -> WireIter<'_> {
        WireIter { head: &self.head, spans: self.spans.0.iter() }
    }

    /// The first value of the field `name` (lowercase): the names' lengths are compared first,
    /// so most fields cost one comparison.
    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let head = &self.head[..];
        let found = self.spans.0.iter().find(|&&[ns, ne, ..]| {
            ne.saturating_sub(ns) as usize == name.len()
                && head.get(ns as usize..ne as usize).is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        found.map(|&span| field(head, span).1)
    }

    /// Keeps the fields whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head[..];
        for span in &mut self.spans.0 {
            let name = field(head, *span).0;
            if !name.is_empty() && !keep(name) {
                span[1] = span[0];
            }
        }
    }
}

/// The fields of a head in order, removed ones skipped.
pub struct WireIter<'a> {
    head: &'a [u8],
    spans: std::slice::Iter<'a, [u32; 4]>,
}

impl<'a> Iterator for WireIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.spans.by_ref().map(|&span| field(self.head, span)).find(|(name, _)| !name.is_empty())
    }
}

/// Whether a field name read from anywhere is `name` (HTTP names are case-insensitive).
pub fn name_is(raw: &[u8], name: &HeaderName) -> bool {
    raw.eq_ignore_ascii_case(name.as_str().as_bytes())
}

/// A value as text, when it is visible ASCII (as `HeaderValue::to_str` decides).
pub fn text(value: &[u8]) -> Option<&str> {
    let visible = value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    visible.then(|| std::str::from_utf8(value).ok()).flatten()
}

impl Fields {
    /// Every field as (name, value), in order, repeated names included.
    pub fn iter(&self) -> Iter<'_> {
        match self {
            Fields::Map(map) => Iter::Map(map.iter()),
            Fields::Wire(wire) => Iter::Wire(wire.iter()),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            Fields::Map(map) => map.get(name).map(HeaderValue::as_bytes),
            Fields::Wire(wire) => wire.get(name.as_str().as_bytes()),
        }
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(n, _)| name_is(n, name)).map(|(_, v)| v)
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        match self {
            Fields::Map(map) => {
                map.remove(name);
            }
            Fields::Wire(wire) => wire.retain(|n| !name_is(n, name)),
        }
    }

    /// The fields as a map, for hyper. A field hyper would not accept — none, since `httparse`
    /// checked them with the same rules — is left out rather than failing the message.
    pub fn into_map(self) -> HeaderMap {
        match self {
            Fields::Map(map) => map,
            Fields::Wire(wire) => {
                let mut map = HeaderMap::with_capacity(wire.spans.0.len());
                for (name, value) in wire.iter() {
                    let value = HeaderValue::from_maybe_shared(wire.head.slice_ref(value));
                    if let (Ok(name), Ok(value)) = (crate::http1::header_name(name), value) {
                        map.append(name, value);
                    }
                }
                map
            }
        }
    }
}

impl Default for Fields {
    fn default() -> Self {
        Fields::Map(HeaderMap::new())
    }
}

impl From<HeaderMap> for Fields {
    fn from(map: HeaderMap) -> Self {
        Fields::Map(map)
    }
}

/// The fields of either kind, as (name, value).
pub enum Iter<'a> {
    Map(hyper::header::Iter<'a, HeaderValue>),
    Wire(WireIter<'a>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Map(it) => it.next().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            Iter::Wire(it) => it.next(),
        }
    }
}

/// The fields of `text` (`Name: value` lines, CRLF-terminated), as read from the wire.
#[cfg(test)]
pub fn wire(text: &str) -> Fields {
    let mut buf = bytes::BytesMut::from(format!("{text}\r\n").as_str());
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let (len, fields) = match httparse::parse_headers(&buf, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        other => panic!("not a header block: {other:?}"),
    };
    let spans = Spans::measure(&buf, fields);
    Fields::Wire(WireFields::new(buf.split_to(len).freeze(), spans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};

    #[test]
    fn wire_fields_are_read_like_a_map() {
        let mut f = wire("Host: a\r\nX-Two: 1\r\ncontent-TYPE: text/plain\r\nx-two: 2\r\nConnection: close\r\n");
        assert_eq!(f.get(&HOST), Some(&b"a"[..]));
        assert_eq!(f.get(&CONTENT_TYPE), Some(&b"text/plain"[..]));
        let two = HeaderName::from_static("x-two");
        assert_eq!(f.get_all(&two).collect::<Vec<_>>(), [b"1", b"2"]);
        f.remove(&two);
        f.remove(&CONNECTION);
        assert!(!f.contains(&two) && !f.contains(&CONNECTION));
        assert_eq!(f.iter().map(|(n, _)| n).collect::<Vec<_>>(), [&b"Host"[..], b"content-TYPE"], "order kept");
        // Converted for hyper (a TLS or HTTP/2 client): names lowercase, values shared, the
        // removed fields gone.
        let map = f.into_map();
        assert_eq!(map.len(), 2);
        assert_eq!(map[HOST], "a");
        assert_eq!(map[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn span_tables_are_reused() {
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let buf = b"A: 1\r\nB: 2\r\n\r\n";
        let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(buf, &mut slots) else { panic!() };
        let first = Spans::measure(buf, fields);
        let table = first.0.as_ptr();
        drop(first);
        let second = Spans::measure(buf, fields);
        assert_eq!(second.0.as_ptr(), table, "the table of a dropped head serves the next one");
        assert_eq!(second.fields(buf).collect::<Vec<_>>(), [(&b"A"[..], &b"1"[..]), (b"B", b"2")]);
    }

    #[test]
    fn text_agrees_with_header_value() {
        for b in 0..=255u8 {
            let bytes = [b'a', b];
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { continue };
            assert_eq!(text(&bytes), value.to_str().ok(), "byte {b:#x}");
        }
    }
}
