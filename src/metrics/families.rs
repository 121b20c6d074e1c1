//! The metric families of the gateway: label handles per forward and per group member, and the
//! scrape that renders a whole runtime.
//!
//! Names follow LLMProxy's so existing dashboards keep working; the `upstream` label is always
//! the upstream's name. Handles are `Arc`s that survive a runtime swap for entities whose name
//! is unchanged, so counters do not reset when an unrelated upstream is edited.

use super::encode::Encoder;
use super::{Counter, Histogram};
use crate::runtime::{Member, Runtime};
use crate::upstream::breaker::{State, Transition};
use hyper::Method;
use std::sync::atomic::Ordering;

/// Methods get a fixed label set, so recording is an array index.
pub const METHODS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER"];

pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Errors the proxy itself answers with: `(error label, status)`, matching [`crate::error`] codes.
pub const PROXY_ERRORS: [(&str, u16); 15] = [
    ("bad_request", 400),
    ("unauthorized", 401),
    ("forbidden", 403),
    ("request_timeout", 408),
    ("request_too_large", 413),
    ("request_head_too_large", 431),
    ("unsupported_transfer_coding", 501),
    ("rate_limited", 429),
    ("upstream_rate_limited", 429),
    ("upstream_unreachable", 502),
    ("no_upstream_available", 503),
    ("upstream_at_capacity", 503),
    ("server_busy", 503),
    ("upstream_timeout", 504),
    ("client_closed_request", 499),
];

/// Upstream error statuses relayed to clients, counted per status (400–599).
const STATUS_BASE: u16 = 400;
const STATUS_SLOTS: usize = 200;

pub struct ForwardMetrics {
    pub requests: [Counter; METHODS.len()],
    pub duration: [Histogram; METHODS.len()],
    proxy_errors: [Counter; PROXY_ERRORS.len()],
    upstream_statuses: [Counter; STATUS_SLOTS],
    pub ratelimited: Counter,
    pub tokens: TokenCounters,
    /// Answers read for usage that reported none, by [`UNCOUNTED_REASONS`].
    pub uncounted: [Counter; UNCOUNTED_REASONS.len()],
}

/// Why an answer read for usage reported none: it ended without any, or ended early.
pub const UNCOUNTED_REASONS: [&str; 2] = ["no_usage", "cut"];
pub const UNCOUNTED_NO_USAGE: usize = 0;
pub const UNCOUNTED_CUT: usize = 1;

impl Default for ForwardMetrics {
    fn default() -> Self {
        ForwardMetrics {
            requests: Default::default(),
            duration: Default::default(),
            proxy_errors: Default::default(),
            upstream_statuses: std::array::from_fn(|_| Counter::default()),
            ratelimited: Counter::default(),
            tokens: TokenCounters::default(),
            uncounted: Default::default(),
        }
    }
}

impl ForwardMetrics {
    /// Counts a proxy-made error by its code.
    pub fn proxy_error(&self, code: &str) {
        if let Some(i) = PROXY_ERRORS.iter().position(|(c, _)| *c == code) {
            self.proxy_errors[i].inc();
        }
    }

    /// Counts a request whose head was refused before it could be handled (malformed, too
    /// large): a request under `method="OTHER"`, and its error, so errors never outnumber the
    /// requests counted.
    pub fn refused_head(&self, code: &str) {
        self.requests[METHODS.len() - 1].inc();
        self.proxy_error(code);
    }

    /// Counts an upstream answer relayed with an error status.
    pub fn upstream_status(&self, status: u16) {
        if let Some(c) = status.checked_sub(STATUS_BASE).and_then(|i| self.upstream_statuses.get(i as usize)) {
            c.inc();
        }
    }
}

/// Distinct (group, upstream, model, key) series a forward tracks; models are named by clients
/// and upstreams, so their number is capped and the rest are counted under `model="other"`.
const MAX_TOKEN_SERIES: usize = 1000;

/// The longest model name kept as a label: real ones are far shorter, and a client-chosen name
/// must not make every scrape megabytes long.
const MAX_MODEL_LABEL: usize = 128;

/// `model` as a label: cut to `MAX_MODEL_LABEL` bytes (at a character boundary), and `invalid`
/// when it holds control characters, which no model name has.
fn model_label(model: &str) -> &str {
    if model.chars().any(char::is_control) {
        return "invalid";
    }
    let mut end = model.len().min(MAX_MODEL_LABEL);
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    &model[..end]
}

struct TokenSeries {
    group: Box<str>,
    upstream: Box<str>,
    model: Box<str>,
    key: Option<Box<str>>,
    prompt: Counter,
    completion: Counter,
}

/// Token counts by label set, updated once per response (not per frame): a shared read lock
/// finds the series and the counters are atomics, so responses do not queue behind each other;
/// the write lock (and the label allocation) is taken only the first time a combination is seen.
#[derive(Default)]
pub struct TokenCounters {
    series: std::sync::RwLock<Vec<TokenSeries>>,
}

impl TokenCounters {
    pub fn add(&self, group: &str, upstream: &str, model: &str, key: Option<&str>, usage: crate::usage::Usage) {
        let model = model_label(model);
        let find = |series: &[TokenSeries], model: &str| {
            series.iter().position(|s| {
                &*s.group == group && &*s.upstream == upstream && &*s.model == model && s.key.as_deref() == key
            })
        };
        let count = |s: &TokenSeries| {
            s.prompt.add(usage.prompt.unwrap_or(0));
            s.completion.add(usage.completion.unwrap_or(0));
        };
        {
            let series = self.series.read().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = find(&series, model) {
                count(&series[i]);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let model = if find(&series, model).is_none() && series.len() >= MAX_TOKEN_SERIES { "other" } else { model };
        let i = match find(&series, model) {
            Some(i) => i,
            None => {
                series.push(TokenSeries {
                    group: group.into(),
                    upstream: upstream.into(),
                    model: model.into(),
                    key: key.map(Into::into),
                    prompt: Counter::default(),
                    completion: Counter::default(),
                });
                series.len() - 1
            }
        };
        count(&series[i]);
    }

    fn encode(&self, e: &mut Encoder, forward: &str) {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        for s in series.iter() {
            for (kind, c) in [("prompt", &s.prompt), ("completion", &s.completion)] {
                let base = [
                    ("forward", forward),
                    ("group", &*s.group),
                    ("upstream", &*s.upstream),
                    ("model", &*s.model),
                    ("type", kind),
                ];
                match &s.key {
                    Some(k) => {
                        let labels = [base[0], base[1], base[2], base[3], base[4], ("key", &**k)];
                        e.int("llmproxy_tokens_total", &labels, c.get());
                    }
                    None => e.int("llmproxy_tokens_total", &base, c.get()),
                }
            }
        }
    }
}

/// Why an attempt failed (also the `reason` of a retry it caused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Status429 = 3,
    Status5xx = 4,
}

pub const FAILURES: [&str; 5] = ["connect", "timeout", "reset", "status_429", "status_5xx"];
/// Failures after the response head: the stream went silent too long, or broke.
pub const STREAM_ERRORS: [&str; 2] = ["stream_timeout", "stream_reset"];
const TRANSITIONS: [(State, State); 4] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::HalfOpen, State::Closed),
    (State::HalfOpen, State::Open),
];
pub const CALL_SUCCESS: usize = 0;
pub const CALL_FAILURE: usize = 1;
pub const CALL_REJECTED: usize = 2;
const CALL_RESULTS: [&str; 3] = ["success", "failure", "rejected"];

/// Per group member (group × upstream).
#[derive(Default)]
pub struct MemberMetrics {
    pub requests: Counter,
    /// Request sent → response head.
    pub duration: Histogram,
    /// Request sent → first response body byte.
    pub ttft: Histogram,
    pub failures: [Counter; FAILURES.len()],
    pub stream_errors: [Counter; STREAM_ERRORS.len()],
    pub retries: [Counter; FAILURES.len()],
    breaker_changes: [Counter; TRANSITIONS.len()],
    pub breaker_calls: [Counter; CALL_RESULTS.len()],
}

impl MemberMetrics {
    pub fn transition(&self, t: Transition) {
        if let Some(i) = TRANSITIONS.iter().position(|&(f, to)| f == t.from && to == t.to) {
            self.breaker_changes[i].inc();
        }
    }
}

/// Renders every family of `rt` (and the process metrics) in the text format.
pub fn scrape(rt: &Runtime) -> String {
    let mut e = Encoder::new();
    forwards(&mut e, rt);
    members(&mut e, rt);
    health_checks(&mut e, rt);
    super::process::encode(&mut e);
    e.into_string()
}

fn forwards(e: &mut Encoder, rt: &Runtime) {
    e.family("llmproxy_http_requests_total", "counter", "Requests received by a forward.");
    for f in &rt.forwards {
        for (i, m) in METHODS.iter().enumerate() {
            let n = f.metrics.requests[i].get();
            if n > 0 || i < 2 {
                e.int("llmproxy_http_requests_total", &[("forward", &f.name), ("method", m)], n);
            }
        }
    }
    e.family(
        "llmproxy_http_request_duration_seconds",
        "histogram",
        "Time from request to the end of the response body.",
    );
    for f in &rt.forwards {
        for (i, m) in METHODS.iter().enumerate() {
            if f.metrics.duration[i].count() > 0 || i < 2 {
                e.histogram(
                    "llmproxy_http_request_duration_seconds",
                    &[("forward", &f.name), ("method", m)],
                    &f.metrics.duration[i],
                );
            }
        }
    }
    e.family(
        "llmproxy_http_request_errors_total",
        "counter",
        "Responses with an error status, by cause (proxy-made codes, or upstream).",
    );
    let mut status = String::with_capacity(3);
    for f in &rt.forwards {
        for (i, (code, s)) in PROXY_ERRORS.iter().enumerate() {
            let n = f.metrics.proxy_errors[i].get();
            if n > 0 {
                status.clear();
                push_u16(&mut status, *s);
                e.int(
                    "llmproxy_http_request_errors_total",
                    &[("forward", &f.name), ("error", code), ("status", &status)],
                    n,
                );
            }
        }
        for (i, c) in f.metrics.upstream_statuses.iter().enumerate() {
            let n = c.get();
            if n > 0 {
                status.clear();
                push_u16(&mut status, STATUS_BASE + i as u16);
                e.int(
                    "llmproxy_http_request_errors_total",
                    &[("forward", &f.name), ("error", "upstream"), ("status", &status)],
                    n,
                );
            }
        }
    }
    e.family(
        "llmproxy_buffered_body_bytes",
        "gauge",
        "Request-body bytes the forward holds in memory now (bounded by max_buffered_bodies).",
    );
    for f in &rt.forwards {
        e.int("llmproxy_buffered_body_bytes", &[("forward", &f.name)], f.bodies.held());
    }
    e.family("llmproxy_ratelimit_total", "counter", "Requests refused by the forward's per-client rate limit.");
    for f in &rt.forwards {
        e.int("llmproxy_ratelimit_total", &[("forward", &f.name)], f.metrics.ratelimited.get());
    }
    e.family(
        "llmproxy_responses_uncounted_total",
        "counter",
        "Successful answers to POSTs, read for token usage, that reported none: no_usage (ended without it), \
         cut (ended early: the client left, a timeout or a reset came before it).",
    );
    for f in &rt.forwards {
        for (reason, c) in UNCOUNTED_REASONS.iter().zip(&f.metrics.uncounted) {
            e.int("llmproxy_responses_uncounted_total", &[("forward", &f.name), ("reason", reason)], c.get());
        }
    }
    e.family(
        "llmproxy_client_requests_total",
        "counter",
        "Requests authenticated with a client API key, by the key's name.",
    );
    for f in &rt.forwards {
        for k in f.keys.iter().flat_map(|k| &k.keys) {
            e.int("llmproxy_client_requests_total", &[("forward", &f.name), ("key", &k.name)], k.requests.get());
        }
    }
    e.family("llmproxy_tokens_total", "counter", "Tokens reported by upstreams, by type (prompt or completion).");
    for f in &rt.forwards {
        f.metrics.tokens.encode(e, &f.name);
    }
}

fn push_u16(s: &mut String, v: u16) {
    use std::fmt::Write;
    let _ = write!(s, "{v}");
}

/// Calls `f` for every group member with its `group` and `upstream` labels.
fn each_member(rt: &Runtime, e: &mut Encoder, mut f: impl FnMut(&mut Encoder, &[(&str, &str)], &Member)) {
    for g in &rt.groups {
        for m in &g.members {
            f(e, &[("group", &g.name), ("upstream", &m.upstream.name)], m);
        }
    }
}

fn members(e: &mut Encoder, rt: &Runtime) {
    e.family("llmproxy_upstream_requests_total", "counter", "Attempts sent to an upstream.");
    each_member(rt, e, |e, l, m| e.int("llmproxy_upstream_requests_total", l, m.metrics.requests.get()));
    e.family(
        "llmproxy_upstream_duration_seconds",
        "histogram",
        "Time from sending a request to the upstream's response head.",
    );
    each_member(rt, e, |e, l, m| e.histogram("llmproxy_upstream_duration_seconds", l, &m.metrics.duration));
    e.family(
        "llmproxy_upstream_ttft_seconds",
        "histogram",
        "Time from sending a request to the first response body byte.",
    );
    each_member(rt, e, |e, l, m| e.histogram("llmproxy_upstream_ttft_seconds", l, &m.metrics.ttft));
    e.family("llmproxy_upstream_errors_total", "counter", "Failed attempts and broken response bodies, by error.");
    each_member(rt, e, |e, l, m| {
        let names = FAILURES.iter().zip(&m.metrics.failures).chain(STREAM_ERRORS.iter().zip(&m.metrics.stream_errors));
        for (name, c) in names {
            if c.get() > 0 {
                e.int("llmproxy_upstream_errors_total", &[("error", name), l[0], l[1]], c.get());
            }
        }
    });
    e.family("llmproxy_retries_total", "counter", "Retries caused by a failed attempt on an upstream, by reason.");
    each_member(rt, e, |e, l, m| {
        for (name, c) in FAILURES.iter().zip(&m.metrics.retries) {
            if c.get() > 0 {
                e.int("llmproxy_retries_total", &[l[0], l[1], ("reason", name)], c.get());
            }
        }
    });
    e.family(
        "llmproxy_upstream_inflight",
        "gauge",
        "Requests in flight to an upstream through any of its groups (from pick to end of body).",
    );
    each_member(rt, e, |e, l, m| e.int("llmproxy_upstream_inflight", l, u64::from(m.upstream.load.inflight())));
    e.family("llmproxy_circuitbreaker_state", "gauge", "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    each_member(rt, e, |e, l, m| {
        if let Some(b) = &m.upstream.breaker {
            e.int("llmproxy_circuitbreaker_state", l, b.state() as u64);
        }
    });
    e.family("llmproxy_circuitbreaker_state_changes_total", "counter", "Circuit breaker transitions.");
    each_member(rt, e, |e, l, m| {
        if m.upstream.breaker.is_some() {
            for ((from, to), c) in TRANSITIONS.iter().zip(&m.metrics.breaker_changes) {
                e.int(
                    "llmproxy_circuitbreaker_state_changes_total",
                    &[l[0], l[1], ("from", from.as_str()), ("to", to.as_str())],
                    c.get(),
                );
            }
        }
    });
    // LLMProxy's per-state counters (some of its releases), read from the transitions above.
    for (family, state, help) in [
        ("llmproxy_circuitbreaker_opened_total", State::Open, "Times a circuit breaker opened."),
        ("llmproxy_circuitbreaker_closed_total", State::Closed, "Times a circuit breaker closed."),
        ("llmproxy_circuitbreaker_half_opened_total", State::HalfOpen, "Times a circuit breaker let a probe through."),
    ] {
        e.family(family, "counter", help);
        each_member(rt, e, |e, l, m| {
            if m.upstream.breaker.is_some() {
                let into = TRANSITIONS.iter().zip(&m.metrics.breaker_changes).filter(|((_, to), _)| *to == state);
                e.int(family, l, into.map(|(_, c)| c.get()).sum());
            }
        });
    }
    e.family("llmproxy_circuitbreaker_calls_total", "counter", "Calls through a circuit breaker, by result.");
    each_member(rt, e, |e, l, m| {
        if m.upstream.breaker.is_some() {
            for (name, c) in CALL_RESULTS.iter().zip(&m.metrics.breaker_calls) {
                e.int("llmproxy_circuitbreaker_calls_total", &[l[0], l[1], ("result", name)], c.get());
            }
        }
    });
}

fn health_checks(e: &mut Encoder, rt: &Runtime) {
    let checked = || rt.upstreams.iter().filter(|u| u.health_check.is_some());
    if checked().next().is_none() {
        return;
    }
    e.family("llmproxy_upstream_healthy", "gauge", "1 while the upstream passes its active health check.");
    for u in checked() {
        e.int("llmproxy_upstream_healthy", &[("upstream", &u.name)], u64::from(u.healthy.load(Ordering::Relaxed)));
    }
    e.family("llmproxy_upstream_health_checks_total", "counter", "Active health checks, by result.");
    for u in checked() {
        e.int(
            "llmproxy_upstream_health_checks_total",
            &[("upstream", &u.name), ("result", "pass")],
            u.health_passes.get(),
        );
        e.int(
            "llmproxy_upstream_health_checks_total",
            &[("upstream", &u.name), ("result", "fail")],
            u.health_failures.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_bounded_and_printable() {
        assert_eq!(model_label("gpt-4o"), "gpt-4o");
        assert_eq!(model_label(&"m".repeat(1_000_000)).len(), MAX_MODEL_LABEL);
        assert_eq!(model_label(&format!("{}é", "m".repeat(MAX_MODEL_LABEL - 1))), "m".repeat(MAX_MODEL_LABEL - 1));
        assert_eq!(model_label("a\nb"), "invalid");
    }
}
