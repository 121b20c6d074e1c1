//! Token accounting: reading `usage` from what the upstream reports, as the body passes.
//!
//! - OpenAI JSON: `usage.prompt_tokens` / `usage.completion_tokens`; streams: the final chunk's
//!   `usage` (sent when `stream_options.include_usage` is on).
//! - Anthropic JSON: `usage.input_tokens` / `usage.output_tokens`; streams: `message_start`
//!   (`message.usage`) and `message_delta` (`usage.output_tokens`, cumulative).
//! - Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`): top-level
//!   `prompt_eval_count` / `eval_count`, in a JSON answer or in the last line (`"done": true`) of
//!   a newline-delimited JSON stream (`application/x-ndjson`, Ollama's default).
//!
//! Streams are scanned line by line without delaying or copying what the client receives: only
//! the unfinished tail of a frame is kept to join it with the next one, and only lines that
//! mention `usage` are parsed. A response without usage counts nothing — never a guess.
//!
//! With `track_usage`, the scanner also removes the usage-only chunk the proxy asked for on the
//! client's behalf; then complete lines pass at once and only an unfinished line waits for its
//! end (an SSE client cannot act on half a line anyway), so the stream is otherwise
//! byte-identical.

use crate::json_scan::Scanner;
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.completion.is_none()
    }
}

/// The counts a report states, each kept apart until the answer ends: a later report restates
/// some and may leave others out (Anthropic's `message_delta` repeats `input_tokens` without the
/// cache counts of `message_start`, or with them `null`), and each takes the place of its own
/// earlier value only.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    /// `prompt_tokens`, Anthropic's `input_tokens`, or Ollama's `prompt_eval_count`.
    input: Option<u64>,
    completion: Option<u64>,
    /// Anthropic's prompt-cache reads and writes, apart from `input_tokens` (OpenAI's
    /// `prompt_tokens` includes its cached input).
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// OpenAI's `total_tokens`.
    total: Option<u64>,
}

impl Reported {
    fn is_empty(&self) -> bool {
        self.input.is_none() && self.completion.is_none() && self.total.is_none()
    }

    /// `Some` when anything was counted.
    fn counted(self) -> Option<Reported> {
        (!self.is_empty()).then_some(self)
    }

    fn merge(&mut self, later: Reported) {
        self.input = later.input.or(self.input);
        self.completion = later.completion.or(self.completion);
        self.cache_read = later.cache_read.or(self.cache_read);
        self.cache_write = later.cache_write.or(self.cache_write);
        self.total = later.total.or(self.total);
    }

    /// Prompt tokens are all input, cached or not, as OpenAI counts them. A total above prompt
    /// and completion together holds tokens billed as output that `completion_tokens` leaves
    /// out (Gemini's OpenAI-compatible API, thinking tokens); a total alone (embeddings of some
    /// providers) is the prompt.
    fn usage(self) -> Usage {
        let cache = self.cache_read.unwrap_or(0).saturating_add(self.cache_write.unwrap_or(0)).min(MAX_TOKENS);
        let prompt = self.input.map(|n| n.saturating_add(cache));
        match (prompt, self.total) {
            (None, Some(total)) if self.completion.is_none() => Usage { prompt: Some(total), completion: None },
            (Some(p), Some(total)) if total > p.saturating_add(self.completion.unwrap_or(0)) => {
                Usage { prompt, completion: Some(total - p) }
            }
            _ => Usage { prompt, completion: self.completion },
        }
    }
}

/// The model an upstream named in its answer: a slice of the answer itself when it can be (a
/// JSON answer in one frame, a name without escapes — the usual case, and no copy), otherwise a
/// string of its own.
#[derive(Debug, Clone)]
pub enum ModelName {
    Shared(Bytes),
    Owned(String),
}

impl ModelName {
    pub fn as_str(&self) -> &str {
        match self {
            // Only ever built from text that was valid UTF-8.
            ModelName::Shared(b) => std::str::from_utf8(b).unwrap_or_default(),
            ModelName::Owned(s) => s,
        }
    }
}

impl PartialEq for ModelName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A line longer than this is not a usage event; it is skipped rather than buffered.
const MAX_LINE: usize = 1024 * 1024;
/// JSON bodies larger than this are not kept whole: only their start (for `model`) and their
/// last `JSON_TAIL` bytes (for `usage`, which APIs put last) are.
const MAX_JSON: usize = 2 * 1024 * 1024;
const JSON_HEAD: usize = 4 * 1024;
const JSON_TAIL: usize = 64 * 1024;

enum Mode {
    Sse {
        partial: Vec<u8>,
        overlong: bool,
        dropping_event: bool,
        /// When stripping: the fields of the current event before its first `data:` line
        /// (`event:`, `id:`, `retry:`), held until that line shows whether the event is passed
        /// on. Passed on without it, they would join the next event.
        fields: Vec<u8>,
        /// The current event's first `data:` line has been passed on.
        in_data: bool,
        /// When stripping: the last frame ended with a line ended by a lone CR, so a LF opening
        /// the next frame completes that line's CRLF and goes where the line went.
        cr_line: Option<Fate>,
    },
    /// The body: its first frame by reference (most JSON answers arrive in one, which then
    /// costs no copy), the rest copied — so many small frames pin no buffers of their own.
    Json {
        first: Option<Bytes>,
        rest: BytesMut,
        size: usize,
        /// Over `MAX_JSON`: `first` holds the body's first `JSON_HEAD` bytes and `rest` its
        /// latest (at most twice `JSON_TAIL`).
        only_ends: bool,
    },
}

pub struct UsageScanner {
    mode: Mode,
    /// The lines are JSON documents (`application/x-ndjson`), not SSE fields: read as the lines
    /// of an SSE stream are, and never rewritten.
    ndjson: bool,
    usage: Reported,
    model: Option<ModelName>,
    /// Remove the usage-only chunk (`"choices": []` with `usage`) from the client stream.
    strip: bool,
}

impl UsageScanner {
    /// A scanner for a response of `content_type`, or `None` when it cannot carry usage.
    pub fn for_content_type(content_type: &[u8], strip: bool) -> Option<Self> {
        let is = |prefix: &[u8]| content_type.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
        let ndjson = is(b"application/x-ndjson");
        let mode = if is(b"text/event-stream") || ndjson {
            Mode::Sse {
                partial: Vec::new(),
                overlong: false,
                dropping_event: false,
                fields: Vec::new(),
                in_data: false,
                cr_line: None,
            }
        } else if is(b"application/json") {
            Mode::Json { first: None, rest: BytesMut::new(), size: 0, only_ends: false }
        } else {
            return None;
        };
        Some(UsageScanner { mode, ndjson, usage: Reported::default(), model: None, strip: strip && !ndjson })
    }

    /// Whether what the client receives may differ from what the upstream sent.
    pub fn rewrites(&self) -> bool {
        self.strip && matches!(self.mode, Mode::Sse { .. })
    }

    /// Observes one data frame and returns what the client should receive: the frame itself
    /// unless usage chunks are being stripped.
    pub fn frame(&mut self, data: Bytes) -> Bytes {
        match &mut self.mode {
            Mode::Json { first, rest, size, only_ends } => {
                *size = size.saturating_add(data.len());
                match first {
                    None => *first = Some(data.clone()),
                    Some(_) => rest.extend_from_slice(&data),
                }
                if !*only_ends && *size > MAX_JSON {
                    let whole = first.as_deref().unwrap_or_default();
                    let mut head = whole[..whole.len().min(JSON_HEAD)].to_vec();
                    head.extend_from_slice(&rest[..rest.len().min(JSON_HEAD - head.len())]);
                    // The last JSON_TAIL bytes of the body so far: from `rest`, and from `first`
                    // when `rest` is shorter.
                    let from_first = JSON_TAIL.saturating_sub(rest.len()).min(whole.len());
                    let from_rest = rest.len().min(JSON_TAIL);
                    let mut tail = BytesMut::with_capacity(2 * JSON_TAIL);
                    tail.extend_from_slice(&whole[whole.len() - from_first..]);
                    tail.extend_from_slice(&rest[rest.len() - from_rest..]);
                    (*first, *rest, *only_ends) = (Some(Bytes::from(head)), tail, true);
                } else if *only_ends && rest.len() > 2 * JSON_TAIL {
                    // Copied down now and then: linear in the body, memory bounded.
                    *rest = BytesMut::from(&rest[rest.len() - JSON_TAIL..]);
                }
                data
            }
            Mode::Sse { .. } if self.strip => self.strip_lines(data),
            Mode::Sse { .. } => {
                self.scan_lines(&data);
                data
            }
        }
    }

    /// Only `data:` lines matter here, so a LF completing a CRLF split across two frames can
    /// pass for an empty line of its own.
    fn scan_lines(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(end) = line_end(rest) {
            let (line, tail) = rest.split_at(end);
            rest = tail;
            let Mode::Sse { partial, overlong, .. } = &mut self.mode else { return };
            if partial.is_empty() && !*overlong {
                self.line(line);
                continue;
            }
            partial.extend_from_slice(line);
            let joined = std::mem::take(partial);
            if !std::mem::take(overlong) {
                self.line(&joined);
            } else if joined.len() > line.len() {
                // The end of a `data:` (or NDJSON) line too long to keep whole.
                self.usage_near_end(&joined);
            }
        }
        let Mode::Sse { partial, overlong, .. } = &mut self.mode else { return };
        if !*overlong && partial.len() + rest.len() <= MAX_LINE {
            partial.extend_from_slice(rest);
            return;
        }
        if !*overlong {
            *overlong = true;
            // Of a line too long to keep, a `data:` line keeps its last bytes, where a usage
            // object still counts: OpenAI's `response.completed` repeats the whole response,
            // generated images and all; so does an NDJSON line (Ollama's last one carries the
            // whole `context` before its counts). Other lines are dropped as they pass.
            if !self.ndjson && !partial.iter().chain(rest).take(5).eq(b"data:") {
                partial.clear();
                return;
            }
        } else if partial.is_empty() {
            return;
        }
        partial.extend_from_slice(rest);
        if partial.len() > 2 * JSON_TAIL {
            partial.drain(..partial.len() - JSON_TAIL);
            partial.shrink_to(2 * JSON_TAIL);
        }
    }

    /// Reads the last complete usage object in `tail` (the last bytes of a line too long to
    /// keep): found by its key's text with an unescaped opening quote, which in JSON only a key
    /// has; a few candidates at most, each a walk over what follows it. On an NDJSON line,
    /// Ollama's counts close the object.
    fn usage_near_end(&mut self, tail: &[u8]) {
        if let Some(u) = self.ndjson.then(|| ollama_counts_at_end(tail)).flatten() {
            return self.note(u);
        }
        let mut end = tail.len();
        for _ in 0..8 {
            let Some(at) = tail[..end].windows(7).rposition(|w| w == b"\"usage\"") else { return };
            end = at;
            let backslashes = tail[..at].iter().rev().take_while(|&&b| b == b'\\').count();
            let after = tail[at + 7..].trim_ascii_start();
            let (Some(b':'), 0) = (after.first(), backslashes % 2) else { continue };
            if let Some(Some(u)) = counts(&mut Scanner::new(&after[1..])) {
                return self.note(u);
            }
        }
    }

    /// Like `scan_lines`, but builds the client's bytes without the usage-only event (its data
    /// line, the fields before and after it, and the blank line that ends it). Bytes after the
    /// last line break are held back until their line is complete (or until the body ends:
    /// [`Self::take_held_back`]); a line longer than `MAX_LINE` cannot be a usage chunk and is
    /// passed on as it comes.
    fn strip_lines(&mut self, data: Bytes) -> Bytes {
        let mut out = BytesMut::with_capacity(data.len());
        let mut rest: &[u8] = &data;
        if let (Mode::Sse { cr_line, fields, .. }, false) = (&mut self.mode, rest.is_empty()) {
            if let (Some(fate), Some(b'\n')) = (cr_line.take(), rest.first()) {
                // The LF of a CRLF split across frames: it goes where its line went.
                match fate {
                    Fate::Passed => out.extend_from_slice(b"\n"),
                    Fate::Held => fields.push(b'\n'),
                    Fate::Dropped => {}
                }
                rest = &rest[1..];
            }
        }
        while let Some(end) = line_end(rest) {
            let (piece, tail) = rest.split_at(end);
            rest = tail;
            let fate = self.strip_line(piece, &mut out);
            if let Mode::Sse { cr_line, .. } = &mut self.mode {
                *cr_line = (rest.is_empty() && piece.ends_with(b"\r")).then_some(fate);
            }
        }
        if let Mode::Sse { partial, overlong, dropping_event, fields, in_data, .. } = &mut self.mode {
            if *overlong || partial.len() + rest.len() > MAX_LINE {
                if !*dropping_event {
                    // A long comment between events leaves the next event strippable; a long
                    // data line or field commits its event (decided where the line starts).
                    if !*overlong {
                        let comment = partial.first().or(rest.first()) == Some(&b':');
                        *in_data |= !(comment && fields.is_empty());
                    }
                    out.extend_from_slice(fields);
                    out.extend_from_slice(partial);
                    out.extend_from_slice(rest);
                    fields.clear();
                }
                partial.clear();
                *overlong = true;
            } else {
                partial.extend_from_slice(rest);
            }
        }
        out.freeze()
    }

    /// Strips one complete line (`piece`, with its line ending): passes it on to `out`, holds
    /// it with the fields of an event not yet decided, or drops it with the usage-only event.
    fn strip_line(&mut self, piece: &[u8], out: &mut BytesMut) -> Fate {
        let Mode::Sse { partial, overlong, dropping_event, .. } = &mut self.mode else { return Fate::Passed };
        if *overlong {
            // The end of a line whose start was already passed on (or dropped).
            *overlong = false;
            if *dropping_event {
                return Fate::Dropped;
            }
            out.extend_from_slice(piece);
            return Fate::Passed;
        }
        let joined;
        let line: &[u8] = if partial.is_empty() {
            piece
        } else {
            partial.extend_from_slice(piece);
            joined = std::mem::take(partial);
            &joined
        };
        if *dropping_event {
            *dropping_event = !is_blank(line);
            // Removed from the stream, still read: the event goes, its tokens count.
            self.line(line);
            return Fate::Dropped;
        }
        let usage_only = self.line(line);
        let Mode::Sse { dropping_event, fields, in_data, .. } = &mut self.mode else { return Fate::Passed };
        if usage_only && !*in_data {
            fields.clear();
            *dropping_event = true;
            Fate::Dropped
        } else if is_blank(line) {
            out.extend_from_slice(fields);
            out.extend_from_slice(line);
            fields.clear();
            *in_data = false;
            Fate::Passed
        } else if !*in_data && line.starts_with(b":") && fields.is_empty() {
            // A comment between events (upstreams send them to keep a quiet stream alive) is
            // passed on at once.
            out.extend_from_slice(line);
            Fate::Passed
        } else if *in_data || line.starts_with(b"data:") || fields.len() + line.len() > MAX_LINE {
            // Data (or fields too long for a usage chunk's event): the event is passed on.
            out.extend_from_slice(fields);
            out.extend_from_slice(line);
            fields.clear();
            *in_data = true;
            Fate::Passed
        } else {
            fields.extend_from_slice(line);
            Fate::Held
        }
    }

    /// Whether stripping holds back bytes the client is still owed.
    pub fn holds_back(&self) -> bool {
        matches!(&self.mode, Mode::Sse { partial, fields, dropping_event: false, .. }
            if self.strip && !(partial.is_empty() && fields.is_empty()))
    }

    /// At the end of the body: what a stripping scan held back — fields of an event whose data
    /// never came, and an unterminated last line — which the client receives as it is (it is
    /// not a complete event, so not a usage chunk to remove).
    pub fn take_held_back(&mut self) -> Option<Bytes> {
        if !self.holds_back() {
            return None;
        }
        match &mut self.mode {
            Mode::Sse { partial, fields, .. } => {
                fields.append(partial);
                Some(Bytes::from(std::mem::take(fields)))
            }
            Mode::Json { .. } => None,
        }
    }

    /// Handles one complete line; returns true when it is a usage-only chunk.
    fn line(&mut self, line: &[u8]) -> bool {
        if self.ndjson {
            // Only Ollama's last line counts; every line names the model.
            if self.model.is_none() || find(line, b"eval_count\"", 0).is_some() || has_usage_object(line) {
                self.report(line.trim_ascii());
            }
            return false;
        }
        let Some(payload) = line.strip_prefix(b"data:") else { return false };
        // Every OpenAI chunk names the model (and, with include_usage, carries `"usage":null`):
        // once the model is known, only lines with a usage object are parsed.
        if !has_usage_object(payload) && (self.model.is_some() || find(payload, b"\"model\"", 0).is_none()) {
            return false;
        }
        self.report(payload.trim_ascii())
    }

    /// Takes the counts `u` reports. Later values replace earlier ones (Anthropic's counts are
    /// cumulative, and vLLM's `continuous_usage_stats` repeats them in every chunk): nothing is
    /// summed.
    fn note(&mut self, u: Reported) {
        self.usage.merge(u);
    }

    /// Reads one JSON event or body; returns true for a usage-only chunk (`"choices": []`).
    /// A malformed document changes nothing.
    fn report(&mut self, json: &[u8]) -> bool {
        let Some(r) = Report::read(json) else { return false };
        if self.model.is_none() {
            // An empty name (Azure's first, content-filter chunk) is no name.
            let model = r.model.filter(|m| !m.is_empty()).or(r.message_model.filter(|m| !m.is_empty()));
            self.model = model.map(|m| ModelName::Owned(m.into_owned()));
        }
        let nested = r.kind.is_some_and(|k| k == b"message_start" || k.starts_with(b"response."));
        let usage = if nested { r.message_usage } else { r.usage.or(r.ollama.counted()) };
        let Some(u) = usage else { return false };
        self.note(u);
        r.kind.is_none() && r.choices_empty == Some(true)
    }

    /// Reads a whole JSON answer: `usage` from the back (where APIs put it) and `model` from the
    /// front, so the choices and generated text between them are not walked at all; a body laid
    /// out otherwise is read in full.
    fn report_body(&mut self, json: &Bytes) {
        let Some(usage) = crate::json_scan::read_last_member(json, b"usage", 4, counts) else {
            self.report(json);
            return;
        };
        if let Some(u) = usage {
            self.note(u);
        }
        if self.model.is_none() {
            self.model = crate::router::model::leading(json).filter(|m| !m.is_empty()).map(|m| match m {
                Cow::Borrowed(name) => ModelName::Shared(json.slice_ref(name.as_bytes())),
                Cow::Owned(name) => ModelName::Owned(name),
            });
        }
    }

    /// Usage and the model the upstream reported, once the body has ended.
    pub fn finish(&mut self) -> (Usage, Option<ModelName>) {
        if let Mode::Json { first, rest, only_ends, .. } = &mut self.mode {
            let (first, rest, only_ends) = (first.take(), std::mem::take(rest), *only_ends);
            match first {
                Some(head) if only_ends => self.report_ends(&head, &rest),
                Some(one) if rest.is_empty() => self.report_body(&one),
                Some(one) => {
                    let mut body = BytesMut::with_capacity(one.len() + rest.len());
                    body.extend_from_slice(&one);
                    body.extend_from_slice(&rest);
                    self.report_body(&body.freeze());
                }
                None => {}
            }
        }
        (self.usage.usage(), self.model.take())
    }

    /// A JSON answer too large to keep: `usage` from its last bytes, `model` from its first.
    fn report_ends(&mut self, head: &[u8], tail: &[u8]) {
        if let Some(Some(u)) = crate::json_scan::read_last_member(tail, b"usage", 4, counts) {
            self.note(u);
        } else if let Some(u) = ollama_counts_at_end(tail) {
            // An `/api/embed` of many inputs grows large.
            self.note(u);
        }
        if self.model.is_none() {
            // Near the end in some answers (OpenAI embeddings put it after `data`), else first.
            let near_end = crate::json_scan::read_last_member(tail, b"model", 4, Scanner::string_or_null).flatten();
            let model = near_end.or_else(|| crate::router::model::leading(head)).filter(|m| !m.is_empty());
            self.model = model.map(|m| ModelName::Owned(m.into_owned()));
        }
    }
}

/// The fields accounting needs from one event or body, read without building the document
/// (see `json_scan`: a full deserialization cost more than the rest of the proxying).
#[derive(Default)]
struct Report<'a> {
    model: Option<Cow<'a, str>>,
    /// `type`, when it is a plain string (Anthropic events).
    kind: Option<&'a [u8]>,
    usage: Option<Reported>,
    /// `message.model` and `message.usage` (Anthropic `message_start`), or `response.…`
    /// (OpenAI Responses API events).
    message_model: Option<Cow<'a, str>>,
    message_usage: Option<Reported>,
    /// Whether `choices` is an empty array, when it is an array.
    choices_empty: Option<bool>,
    /// Ollama's top-level `prompt_eval_count` and `eval_count`.
    ollama: Reported,
}

impl<'a> Report<'a> {
    fn read(json: &'a [u8]) -> Option<Self> {
        let mut r = Report::default();
        Scanner::new(json).object(|s, key, escaped| {
            match key {
                _ if escaped => s.skip_value()?,
                b"model" => r.model = s.string_or_null()?,
                b"type" => {
                    r.kind = match s.string_or_null()? {
                        Some(Cow::Borrowed(t)) => Some(t.as_bytes()),
                        _ => None,
                    }
                }
                b"usage" => r.usage = counts(s)?,
                b"choices" => r.choices_empty = s.array_is_empty()?,
                b"prompt_eval_count" => r.ollama.input = s.u64_or_other()?.filter(sane),
                b"eval_count" => r.ollama.completion = s.u64_or_other()?.filter(sane),
                // Anthropic's `message_start` carries them in `message`, OpenAI's Responses API
                // events (`response.completed`, …) in `response`.
                b"message" | b"response" if s.peek_value()? == b'{' => s.object(|s, key, escaped| match key {
                    _ if escaped => s.skip_value(),
                    b"model" => s.string_or_null().map(|m| r.message_model = m),
                    b"usage" => counts(s).map(|u| r.message_usage = u),
                    _ => s.skip_value(),
                })?,
                _ => s.skip_value()?,
            }
            Some(())
        })?;
        Some(r)
    }
}

/// OpenAI (`prompt_tokens`/`completion_tokens`/`total_tokens`) or Anthropic
/// (`input_tokens`/`output_tokens` and the cache counts) counts; `Some(None)` for `null` or any
/// value that is not an object.
fn counts(s: &mut Scanner<'_>) -> Option<Option<Reported>> {
    if s.peek_value()? != b'{' {
        s.skip_value()?;
        return Some(None);
    }
    let mut u = Reported::default();
    let mut anthropic = false;
    s.object(|s, key, _| {
        let count = |s: &mut Scanner<'_>| s.u64_or_other().map(|n| n.filter(sane));
        match key {
            b"prompt_tokens" => u.input = u.input.or(count(s)?),
            b"input_tokens" => {
                anthropic = true;
                u.input = u.input.or(count(s)?);
            }
            b"completion_tokens" | b"output_tokens" => u.completion = u.completion.or(count(s)?),
            b"total_tokens" => u.total = count(s)?,
            b"cache_read_input_tokens" => u.cache_read = count(s)?,
            b"cache_creation_input_tokens" => u.cache_write = count(s)?,
            _ => s.skip_value()?,
        }
        Some(())
    })?;
    // Only in Anthropic's layout are the cache counts apart from the input count (gateways that
    // report `prompt_tokens` with them include them already).
    if !anthropic {
        (u.cache_read, u.cache_write) = (None, None);
    }
    Some(Some(u))
}

/// More tokens than any request has: a count beyond this is a broken upstream, not usage (and
/// would make the counter jump, or wrap).
const MAX_TOKENS: u64 = 1 << 40;

fn sane(n: &u64) -> bool {
    *n <= MAX_TOKENS
}

/// Ollama's counts, which close its answers (and the last line of its streams), read from the
/// last bytes of one.
fn ollama_counts_at_end(tail: &[u8]) -> Option<Reported> {
    let count =
        |key: &[u8]| crate::json_scan::read_last_member(tail, key, 6, Scanner::u64_or_other).flatten().filter(sane);
    Reported { input: count(b"prompt_eval_count"), completion: count(b"eval_count"), ..Reported::default() }.counted()
}

/// For `track_usage`: the body to send upstream when the proxy asks for usage on the client's
/// behalf — an OpenAI-style streaming chat or text completion that does not ask for it — or
/// `None`. Only a client that plainly did not ask is asked for: `stream_options` absent or
/// `null`, or `include_usage` `false` or `null` (which OpenAI and vLLM read as false). Any other `stream_options` is left as it is — vLLM sends
/// usage when `include_usage` is left out of one (`{}`, `{"continuous_usage_stats":true}`),
/// and takes `1` or `"true"` for true — since the usage event the proxy asks for is taken out
/// of the client's stream again, and such a client may be counting on it.
/// The field is inserted (or edited) textually, so every other byte of the request stays as
/// the client wrote it. The body is read with the scanner, never built into a tree: a prompt of
/// megabytes — or a body crafted as millions of tiny values — costs one pass and no memory.
pub fn ask_for_usage(path: &str, body: &[u8]) -> Option<Bytes> {
    use crate::json_scan::member;
    if !path.trim_end_matches('/').ends_with("/completions") || member(body, b"stream")? != b"true" {
        return None;
    }
    // The span of `body` to replace, and what with.
    let (cut, with): (std::ops::Range<usize>, &[u8]) = match member(body, b"stream_options") {
        None => {
            let open = body.iter().position(|&b| b == b'{')? + 1;
            (open..open, br#""stream_options":{"include_usage":true},"#)
        }
        Some(null @ b"null") => {
            let at = crate::http1::offset_in(body, null) as usize;
            (at..at + null.len(), br#"{"include_usage":true}"#)
        }
        Some(options) => match member(options, b"include_usage") {
            Some(no @ (b"false" | b"null")) => {
                let at = crate::http1::offset_in(body, no) as usize;
                (at..at + no.len(), b"true")
            }
            _ => return None,
        },
    };
    Some([&body[..cut.start], with, &body[cut.end..]].concat().into())
}

/// Where a line went when usage chunks are stripped.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// To the client.
    Passed,
    /// Into the fields of an event not yet decided.
    Held,
    /// Removed with the usage-only event.
    Dropped,
}

/// Where the first line of `data` ends (after its line ending), if it ends there: SSE ends a
/// line with CRLF, LF or a lone CR. A CR that ends `data` ends its line; a LF opening the next
/// frame is then the rest of that line ending.
fn line_end(data: &[u8]) -> Option<usize> {
    let at = data.iter().position(|&b| b == b'\n' || b == b'\r')?;
    Some(if data[at] == b'\r' && data.get(at + 1) == Some(&b'\n') { at + 2 } else { at + 1 })
}

/// The complete lines of an SSE body, each with its line ending.
pub fn sse_lines(mut body: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (line, rest) = body.split_at(line_end(body)?);
        body = rest;
        Some(line)
    })
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, b"\n" | b"\r\n" | b"\r")
}

/// Whether some `"usage"` key in `json` has an object for its value (not `null`).
fn has_usage_object(json: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = find(json, b"\"usage\"", from) {
        from = at + 7;
        let value = json[from..].iter().copied().filter(|c| !c.is_ascii_whitespace()).take(2);
        if value.eq([b':', b'{']) {
            return true;
        }
    }
    false
}

/// Start of the first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = from;
    while let Some(p) = hay.get(from..).and_then(|h| h.iter().position(|&c| c == first)) {
        let start = from + p;
        if hay.get(start + 1..start + 1 + rest.len()) == Some(rest) {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(ct: &str, body: &str, piece: usize, strip: bool) -> (Usage, Option<String>, String) {
        let mut s = UsageScanner::for_content_type(ct.as_bytes(), strip).unwrap();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(piece) {
            out.extend_from_slice(&s.frame(Bytes::copy_from_slice(chunk)));
        }
        let (u, m) = s.finish();
        let m = m.map(|m| m.as_str().to_string());
        (u, m, String::from_utf8(out).unwrap())
    }

    const OPENAI_SSE: &str = "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46}}\n\n\
data: [DONE]\n\n";

    /// `OPENAI_SSE` with `id:` (ended by `id_end`) and `event:` fields on every event.
    fn openai_sse_with_fields(id_end: &str) -> String {
        OPENAI_SSE
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .enumerate()
            .map(|(i, e)| format!("id: {i}{id_end}event: chunk\n{e}\n\n"))
            .collect()
    }

    #[test]
    fn openai_stream_usage_in_any_framing() {
        for piece in [1, 3, 7, 64, 10_000] {
            let (u, m, out) = scan_in_pieces("text/event-stream", OPENAI_SSE, piece, false);
            assert_eq!(u, Usage { prompt: Some(12), completion: Some(34) }, "piece {piece}");
            assert_eq!(m.as_deref(), Some("gpt-4o"));
            assert_eq!(out, OPENAI_SSE, "untouched");
        }
    }

    #[test]
    fn stripping_removes_exactly_the_usage_chunk() {
        let without: String = OPENAI_SSE
            .split("\n\n")
            .filter(|e| !e.contains("\"choices\":[]"))
            .map(|e| if e.is_empty() { String::new() } else { format!("{e}\n\n") })
            .collect();
        for piece in [1, 5, 64, 10_000] {
            let (u, _, out) = scan_in_pieces("text/event-stream", OPENAI_SSE, piece, true);
            assert_eq!(u.completion, Some(34), "still counted");
            assert_eq!(out, without, "piece {piece}");
        }
    }

    #[test]
    fn stripping_removes_the_fields_of_the_usage_event_and_keeps_the_others() {
        // Every event carries `id:` and `event:` fields; the usage chunk's must go with it, or
        // they would join the next event (`[DONE]` would arrive as a `chunk` with id 3).
        let with_fields = openai_sse_with_fields("\r\n");
        let without: String = with_fields.split_inclusive("\n\n").filter(|e| !e.contains("\"choices\":[]")).collect();
        assert_ne!(with_fields, without);
        for piece in [1, 3, 17, 10_000] {
            let (u, _, out) = scan_in_pieces("text/event-stream", &with_fields, piece, true);
            assert_eq!(u.completion, Some(34), "still counted");
            assert_eq!(out, without, "piece {piece}");
        }

        // A comment too long to hold, between events, passes on as it comes and leaves the usage
        // event after it strippable.
        let usage_event = OPENAI_SSE.split_inclusive("\n\n").find(|e| e.contains("\"choices\":[]")).unwrap();
        let long_comment = format!(": {}\n", "x".repeat(MAX_LINE));
        for piece in [4096, MAX_LINE + 100] {
            let (u, _, out) = scan_in_pieces("text/event-stream", &format!("{long_comment}{usage_event}"), piece, true);
            assert_eq!(u.completion, Some(34));
            assert_eq!(out, long_comment, "piece {piece}");
        }

        // A comment between events is passed on at once; fields whose data never comes reach
        // the client, in order, when the body ends.
        let mut s = UsageScanner::for_content_type(b"text/event-stream", true).unwrap();
        assert_eq!(&s.frame(Bytes::from_static(b": still thinking\nevent: ping\n"))[..], b": still thinking\n");
        assert_eq!(&s.frame(Bytes::from_static(b": held behind the field\nid: 7\n"))[..], b"");
        assert!(s.holds_back());
        assert_eq!(&s.take_held_back().unwrap()[..], b"event: ping\n: held behind the field\nid: 7\n");
    }

    #[test]
    fn lines_ended_by_cr_or_crlf_are_read_and_stripped_in_any_framing() {
        // SSE ends a line with LF, CRLF or a lone CR; a CRLF may be split across two frames.
        let with_fields = openai_sse_with_fields("\n");
        for ending in ["\r", "\r\n"] {
            let body = with_fields.replace('\n', ending);
            let without: String =
                body.split_inclusive(&ending.repeat(2)).filter(|e| !e.contains("\"choices\":[]")).collect();
            assert_ne!(body, without);
            for piece in [1, 2, 3, 7, 10_000] {
                let (u, m, out) = scan_in_pieces("text/event-stream", &body, piece, false);
                assert_eq!(u, Usage { prompt: Some(12), completion: Some(34) }, "{ending:?}, piece {piece}");
                assert_eq!(m.as_deref(), Some("gpt-4o"));
                assert_eq!(out, body);
                let (u, _, out) = scan_in_pieces("text/event-stream", &body, piece, true);
                assert_eq!(u.completion, Some(34));
                assert_eq!(out, without, "{ending:?}, piece {piece}");
            }
        }
        // The LF of a split CRLF goes where its line went: held with the fields, dropped with
        // the usage event, passed on with a blank line.
        let mut s = UsageScanner::for_content_type(b"text/event-stream", true).unwrap();
        let usage_event = OPENAI_SSE.split_inclusive("\n\n").find(|e| e.contains("\"choices\":[]")).unwrap();
        let mut out = Vec::new();
        for frame in ["id: 1\r", "\ndata: {\"choices\":[{}]}\r\n\r", "\n: c\r", "\nid: 2\r", "\n"] {
            out.extend_from_slice(&s.frame(Bytes::from(frame)));
        }
        out.extend_from_slice(&s.frame(Bytes::from(usage_event.trim_end().to_string() + "\r")));
        for frame in ["\n\r", "\nid: 3\r\n\r\n"] {
            out.extend_from_slice(&s.frame(Bytes::from(frame)));
        }
        assert_eq!(String::from_utf8(out).unwrap(), "id: 1\r\ndata: {\"choices\":[{}]}\r\n\r\n: c\r\nid: 3\r\n\r\n");
    }

    #[test]
    fn stripping_passes_on_an_unterminated_last_line_and_overlong_lines() {
        let body = format!("{OPENAI_SSE}data: [DONE]");
        let mut s = UsageScanner::for_content_type(b"text/event-stream", true).unwrap();
        let mut out = s.frame(Bytes::from(body)).to_vec();
        assert!(s.holds_back());
        out.extend_from_slice(&s.take_held_back().unwrap());
        assert!(String::from_utf8(out).unwrap().ends_with("data: [DONE]\n\ndata: [DONE]"));
        assert!(!s.holds_back() && s.take_held_back().is_none());

        // A line longer than any usage chunk is not held until it ends: memory stays bounded.
        let mut s = UsageScanner::for_content_type(b"text/event-stream", true).unwrap();
        let long = vec![b'x'; MAX_LINE];
        let mut out = s.frame(Bytes::from_static(b"data: ")).to_vec();
        out.extend_from_slice(&s.frame(Bytes::from(long.clone())));
        assert_eq!(out.len(), 6 + MAX_LINE, "passed on once over the limit");
        out.extend_from_slice(&s.frame(Bytes::from_static(b"xx\n\n")));
        assert_eq!(out.len(), 6 + MAX_LINE + 4);
        assert!(!s.holds_back());
    }

    #[test]
    fn responses_api_streams_azure_filters_and_anthropic_cache_are_counted() {
        let responses = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":900,\"output_tokens\":300}}}\n\n";
        let (u, m, _) = scan_in_pieces("text/event-stream", responses, 7, false);
        assert_eq!((u, m.as_deref()), (Usage { prompt: Some(900), completion: Some(300) }, Some("gpt-4.1")));

        let azure = "data: {\"choices\":[],\"id\":\"\",\"model\":\"\",\"prompt_filter_results\":[]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"model\":\"gpt-4o\"}\n\n";
        assert_eq!(scan_in_pieces("text/event-stream", azure, 5, false).1.as_deref(), Some("gpt-4o"));

        let cached = r#"{"type":"message","model":"claude-x","usage":{"input_tokens":5,"cache_read_input_tokens":90000,"cache_creation_input_tokens":10,"output_tokens":3}}"#;
        let (u, _, _) = scan_in_pieces("application/json", cached, 9, false);
        assert_eq!(u, Usage { prompt: Some(90_015), completion: Some(3) }, "prompt tokens are all input");
        // A gateway's OpenAI layout whose prompt_tokens already include the cache: not added twice.
        let gateway = r#"{"usage":{"prompt_tokens":13559,"cache_read_input_tokens":13000,"completion_tokens":5}}"#;
        assert_eq!(scan_in_pieces("application/json", gateway, 64, false).0.prompt, Some(13_559));
        // A later event restating the input without the cache counts (or with them null) keeps
        // the cache counts of the first.
        for delta_usage in [
            r#"{"input_tokens":5,"output_tokens":300}"#,
            r#"{"input_tokens":5,"cache_read_input_tokens":null,"output_tokens":300}"#,
        ] {
            let stream = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"claude-x\",\"usage\":{{\"input_tokens\":5,\"cache_read_input_tokens\":90000,\"output_tokens\":1}}}}}}\n\n\
                 event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{delta_usage}}}\n\n"
            );
            let (u, _, _) = scan_in_pieces("text/event-stream", &stream, 11, false);
            assert_eq!(u, Usage { prompt: Some(90_005), completion: Some(300) }, "{delta_usage}");
        }
    }

    #[test]
    fn a_total_beyond_prompt_and_completion_is_output_and_a_total_alone_is_the_prompt() {
        let read = |usage: &str| scan_in_pieces("application/json", &format!(r#"{{"usage":{usage}}}"#), 64, false).0;
        // Gemini's OpenAI-compatible API leaves thinking tokens out of completion_tokens.
        let thinking = read(r#"{"prompt_tokens":20,"completion_tokens":151,"total_tokens":553}"#);
        assert_eq!(thinking, Usage { prompt: Some(20), completion: Some(533) });
        let exact = read(r#"{"prompt_tokens":20,"completion_tokens":151,"total_tokens":171}"#);
        assert_eq!(exact, Usage { prompt: Some(20), completion: Some(151) });
        assert_eq!(read(r#"{"total_tokens":10}"#), Usage { prompt: Some(10), completion: None }, "embeddings");
        let embeddings = read(r#"{"prompt_tokens":8,"total_tokens":8}"#);
        assert_eq!(embeddings, Usage { prompt: Some(8), completion: None });
    }

    #[test]
    fn counts_written_as_integral_fractions_are_read_and_absurd_ones_are_not() {
        let read = |usage: &str| scan_in_pieces("application/json", &format!(r#"{{"usage":{usage}}}"#), 64, false).0;
        assert_eq!(read(r#"{"prompt_tokens":12.0,"completion_tokens":3}"#).prompt, Some(12));
        assert_eq!(read(r#"{"prompt_tokens":12.5,"completion_tokens":3}"#).prompt, None);
        assert_eq!(read(r#"{"prompt_tokens":18446744073709551615,"completion_tokens":3}"#).prompt, None);
    }

    #[test]
    fn a_json_answer_too_large_to_keep_is_still_counted_from_its_ends() {
        let big = format!(
            r#"{{"model":"embed-1","data":["{}"],"usage":{{"prompt_tokens":7,"total_tokens":7}}}}"#,
            "x".repeat(3 * MAX_JSON / 2)
        );
        for piece in [13, 1000, 100_000, big.len() - 10, big.len()] {
            let (u, m, out) = scan_in_pieces("application/json", &big, piece, false);
            assert_eq!((u.prompt, m.as_deref()), (Some(7), Some("embed-1")), "piece {piece}");
            assert_eq!(out.len(), big.len());
        }
        // OpenAI's embeddings answers name the model after the data.
        let embeddings = format!(
            r#"{{"object":"list","data":["{}"],"model":"text-embedding-3-large","usage":{{"prompt_tokens":9,"total_tokens":9}}}}"#,
            "x".repeat(3 * MAX_JSON / 2)
        );
        let (u, m, _) = scan_in_pieces("application/json", &embeddings, 65_536, false);
        assert_eq!((u.prompt, m.as_deref()), (Some(9), Some("text-embedding-3-large")));
    }

    #[test]
    fn anthropic_stream_and_json() {
        let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage is a word\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n";
        let (u, m, _) = scan_in_pieces("text/event-stream; charset=utf-8", sse, 4, false);
        assert_eq!(u, Usage { prompt: Some(25), completion: Some(15) });
        assert_eq!(m.as_deref(), Some("claude-x"));
        let json = r#"{"id":"m","type":"message","model":"claude-x","usage":{"input_tokens":9,"output_tokens":3}}"#;
        let (u, _, _) = scan_in_pieces("application/json", json, 5, false);
        assert_eq!(u, Usage { prompt: Some(9), completion: Some(3) });
    }

    #[test]
    fn ollama_native_answers_and_ndjson_streams() {
        let stream = concat!(
            r#"{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi eval_count"},"done":false}"#,
            "\n",
            r#"{"model":"llama3.2","created_at":"2026-01-01T00:00:01Z","message":{"role":"assistant","content":"!"},"done":false}"#,
            "\n",
            r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":5589157167,"load_duration":3013701500,"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":298,"eval_duration":2431537000}"#,
            "\n"
        );
        for piece in [1, 5, 64, 10_000] {
            for strip in [false, true] {
                let (u, m, out) = scan_in_pieces("application/x-ndjson", stream, piece, strip);
                assert_eq!(u, Usage { prompt: Some(26), completion: Some(298) }, "piece {piece}");
                assert_eq!(m.as_deref(), Some("llama3.2"));
                assert_eq!(out, stream, "never rewritten");
            }
        }
        let answer = r#"{"model":"llama3.2","response":"Hi","done":true,"context":[1,2,3],"prompt_eval_count":26,"eval_count":3}"#;
        let (u, m, _) = scan_in_pieces("application/json; charset=utf-8", answer, 7, false);
        assert_eq!((u, m.as_deref()), (Usage { prompt: Some(26), completion: Some(3) }, Some("llama3.2")));
        // A prompt Ollama had cached has no `prompt_eval_count`.
        let (u, _, _) = scan_in_pieces("application/json", r#"{"model":"m","done":true,"eval_count":4}"#, 64, false);
        assert_eq!(u, Usage { prompt: None, completion: Some(4) });
        // A last line too long to keep (a long `context`): its counts close it.
        let context = "1234,".repeat(MAX_LINE / 4);
        let long_last = format!(
            "{{\"model\":\"llama3.2\",\"response\":\"Hi\",\"done\":false}}\n{{\"model\":\"llama3.2\",\"done\":true,\"context\":[{context}1],\"prompt_eval_count\":70000,\"eval_count\":9}}\n"
        );
        for piece in [8192, MAX_LINE + 1] {
            let (u, _, _) = scan_in_pieces("application/x-ndjson", &long_last, piece, false);
            assert_eq!(u, Usage { prompt: Some(70000), completion: Some(9) }, "piece {piece}");
        }
        // An `/api/embed` of many inputs, too large to keep whole: its count closes it.
        let vector = format!("[{}0.5]", "0.25,".repeat(500_000));
        let embed =
            format!(r#"{{"model":"all-minilm","embeddings":[{vector}],"total_duration":1,"prompt_eval_count":8}}"#);
        assert!(embed.len() > MAX_JSON);
        let (u, m, _) = scan_in_pieces("application/json", &embed, 16 * 1024, false);
        assert_eq!((u, m.as_deref()), (Usage { prompt: Some(8), completion: None }, Some("all-minilm")));
    }

    #[test]
    fn usage_at_the_end_of_an_overlong_data_line_counts() {
        // A Responses API stream whose `response.completed` repeats a generated image.
        let image = "A".repeat(3 * MAX_LINE / 2);
        let completed = format!(
            r#"{{"type":"response.completed","response":{{"model":"gpt-4.1","output":[{{"type":"image_generation_call","result":"{image}"}}],"usage":{{"input_tokens":10,"output_tokens":20,"output_tokens_details":{{"reasoning_tokens":0}}}},"user":null,"metadata":{{}}}}}}"#
        );
        let stream = format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"model\":\"gpt-4.1\",\"usage\":null}}}}\n\n\
             event: response.completed\ndata: {completed}\n\n"
        );
        for piece in [4096, 100_000, MAX_LINE + 1, stream.len()] {
            let (u, m, out) = scan_in_pieces("text/event-stream", &stream, piece, false);
            assert_eq!(u, Usage { prompt: Some(10), completion: Some(20) }, "piece {piece}");
            assert_eq!(m.as_deref(), Some("gpt-4.1"));
            assert_eq!(out.len(), stream.len());
        }
        // Only a data line's end is read: a long comment, or a usage key inside a string, is not usage.
        let comment = format!(": {image} \"usage\":{{\"prompt_tokens\":1}}\n\n");
        let quoted = format!("data: {{\"text\":\"{image} \\\"usage\\\":{{\\\"prompt_tokens\\\":1}}\"}}\n\n");
        for body in [comment, quoted] {
            assert!(scan_in_pieces("text/event-stream", &body, 65_536, false).0.is_empty());
        }
    }

    #[test]
    fn asks_for_usage_only_when_the_client_did_not() {
        let p = "/v1/chat/completions";
        let added = ask_for_usage(p, br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(&added[..], br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#);
        let v: serde_json::Value = serde_json::from_slice(
            &ask_for_usage(p, br#"{"stream":true,"stream_options":{"include_usage":false}}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(ask_for_usage(p, br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        for not_a_streaming_object in
            [&br#"{"stream":true,"messages":["#[..], b"[true]", br#"{"stream":"true"}"#, b"{}"]
        {
            assert!(
                ask_for_usage(p, not_a_streaming_object).is_none(),
                "{:?}",
                String::from_utf8_lossy(not_a_streaming_object)
            );
        }
        // Every other byte stays as the client wrote it (key order, numbers beyond u64).
        let edited = |body: &str| String::from_utf8(ask_for_usage(p, body.as_bytes()).unwrap().to_vec()).unwrap();
        assert_eq!(
            edited(r#"{"stream":true,"stream_options":{"include_usage":false},"seed":123456789012345678901234}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true},"seed":123456789012345678901234}"#
        );
        assert_eq!(
            edited(r#"{"stream":true,"stream_options":null}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            edited(r#"{"stream":true,"stream_options":{"include_usage":null}}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        // Options that leave it out (vLLM then sends usage) or say yes loosely are the client's.
        for asked_or_may_have in [
            r#"{"stream_options": { },"stream":true}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":1}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":"true"}}"#,
            r#"{"stream":true,"stream_options":"weird"}"#,
        ] {
            assert!(ask_for_usage(p, asked_or_may_have.as_bytes()).is_none(), "{asked_or_may_have}");
        }
        assert!(ask_for_usage(p, br#"{"stream":false}"#).is_none());
        assert!(ask_for_usage("/v1/embeddings", br#"{"stream":true}"#).is_none());
        assert!(ask_for_usage(p, b"not json").is_none());
    }

    #[test]
    fn openai_json_and_no_usage() {
        let json =
            r#"{"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        assert_eq!(
            scan_in_pieces("application/json", json, 3, false).0,
            Usage { prompt: Some(5), completion: Some(7) }
        );
        // Usage read from the back even when a member follows it; the model from the front.
        let tail = r#"{"model":"gpt-4o","choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":99}"}}],"usage":{"prompt_tokens":8,"completion_tokens":9},"system_fingerprint":"fp_1"}"#;
        let (u, m, _) = scan_in_pieces("application/json", tail, 1000, false);
        assert_eq!((u, m.as_deref()), (Usage { prompt: Some(8), completion: Some(9) }, Some("gpt-4o")));
        let none = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
        assert!(scan_in_pieces("text/event-stream", none, 2, false).0.is_empty(), "no usage, nothing counted");
        assert!(UsageScanner::for_content_type(b"text/plain", false).is_none());
    }

    #[test]
    fn only_lines_with_a_usage_object_are_worth_parsing() {
        assert!(has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage_object(
            br#"{"x":1, "usage" :
 {"output_tokens":2}}"#
        ));
        assert!(!has_usage_object(br#"{"choices":[],"usage":null}"#));
        assert!(!has_usage_object(br#"{"content":"the \"usage\": {} of words"}"#));
        assert!(!has_usage_object(br#"{"usage""#));
        assert_eq!(find(b"abcabd", b"abd", 0), Some(3));
        assert_eq!(find(b"abcabd", b"abd", 4), None);
    }
}
