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

/// Fields whose offsets are kept inline; a head with more (rare) keeps the rest on the heap.
const INLINE: usize = 16;

/// A message's header fields.
// The wire variant is the common one, and is moved a few times per request at most: boxing it
// would bring back the allocation it exists to avoid.
#[allow(clippy::large_enum_variant)]
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
/// head is at most its size limit plus one read long.
pub struct Spans {
    len: usize,
    inline: [[u32; 4]; INLINE],
    more: Vec<[u32; 4]>,
}

impl Spans {
    /// Where `fields` — slices of `buf`, as `httparse` returns them — lie in `buf`, so they can
    /// be read from the head once it is frozen (see [`WireFields::new`]).
    pub fn measure(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
        let mut spans = Spans { len: fields.len(), inline: [[0; 4]; INLINE], more: Vec::new() };
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| (part.as_ptr() as usize).saturating_sub(base) as u32;
        for (i, field) in fields.iter().enumerate() {
            let (name, value) = (at(field.name.as_bytes()), at(field.value));
            let span = [name, name + field.name.len() as u32, value, value + field.value.len() as u32];
            match spans.inline.get_mut(i) {
                Some(slot) => *slot = span,
                None => spans.more.push(span),
            }
        }
        spans
    }

    fn get(&self, i: usize) -> Option<[u32; 4]> {
        if i >= self.len {
            return None;
        }
        self.inline.get(i).or_else(|| self.more.get(i - INLINE)).copied()
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut [u32; 4]> {
        self.inline[..self.len.min(INLINE)].iter_mut().chain(&mut self.more)
    }

    /// (name, value) of field `i`, read from `buf` — the buffer the offsets were measured in.
    fn field<'a>(&self, buf: &'a [u8], i: usize) -> Option<(&'a [u8], &'a [u8])> {
        let [ns, ne, vs, ve] = self.get(i)?;
        let cut = |s: u32, e: u32| buf.get(s as usize..e as usize).unwrap_or_default();
        Some((cut(ns, ne), cut(vs, ve)))
    }

    /// (name, value) of each field, read from `buf` — the buffer the offsets were measured in.
    pub fn fields<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        (0..self.len).filter_map(move |i| self.field(buf, i))
    }
}

impl WireFields {
    /// The fields at `spans` of `head`, the buffer they were measured in, now frozen.
    pub fn new(head: Bytes, spans: Spans) -> Self {
        WireFields { head, spans }
    }

    fn iter(&self) -> WireIter<'_> {
        WireIter { fields: self, next: 0 }
    }

    fn remove(&mut self, name: &[u8]) {
        let head = &self.head[..];
        for span in self.spans.all_mut() {
            if head.get(span[0] as usize..span[1] as usize).is_some_and(|n| n.eq_ignore_ascii_case(name)) {
                span[1] = span[0];
            }
        }
    }
}

/// The fields of a head in order, removed ones skipped.
pub struct WireIter<'a> {
    fields: &'a WireFields,
    next: usize,
}

impl<'a> Iterator for WireIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let field = self.fields.spans.field(&self.fields.head, self.next)?;
            self.next += 1;
            if !field.0.is_empty() {
                return Some(field);
            }
        }
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
            Fields::Wire(wire) => wire.iter().find(|(n, _)| name_is(n, name)).map(|(_, v)| v),
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
            Fields::Wire(wire) => wire.remove(name.as_str().as_bytes()),
        }
    }

    /// The fields as a map, for hyper. A field hyper would not accept — none, since `httparse`
    /// checked them with the same rules — is left out rather than failing the message.
    pub fn into_map(self) -> HeaderMap {
        match self {
            Fields::Map(map) => map,
            Fields::Wire(wire) => {
                let mut map = HeaderMap::with_capacity(wire.spans.len);
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
