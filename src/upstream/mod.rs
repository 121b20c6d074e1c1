//! An upstream as the hot path sees it: where to send, and the header work precomputed at load.

pub mod breaker;
pub mod client;
pub mod direct;
pub mod header_plan;
pub mod health_check;
pub mod load;
pub mod target;
pub mod trust;

use crate::config::{self, Auth};
use crate::metrics::families::MemberMetrics;
use crate::metrics::Counter;
use crate::ratelimit::Gcra;
use breaker::Breaker;
use header_plan::{HeaderOp, PlannedHeader};
use hyper::header::{HeaderName, HeaderValue};
use load::Load;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
pub use target::HttpTarget;

pub enum Target {
    Http(HttpTarget),
    Mock(config::Mock),
}

pub struct Upstream {
    pub name: String,
    pub target: Target,
    /// The complete `Authorization` value, built once (never per request) and marked sensitive
    /// so hyper keeps it out of HPACK tables and debug output.
    pub authorization: Option<HeaderValue>,
    /// The `headers` operations, reduced to their net effect per header name.
    pub header_plan: Vec<PlannedHeader>,
    /// The proxy sets this upstream's credentials (`auth`, URL credentials, or an `insert` or
    /// `replace` of a credential header), so no credential the client sent is forwarded: a
    /// client's key for one provider must never reach another.
    pub supplies_credentials: bool,
    /// A header op sets (or removes) `Accept-Encoding`, inviting compressed answers: those are
    /// relayed untouched, so `track_usage` could not take back a usage chunk it asked for.
    pub may_compress: bool,
    /// Shared with the upstream this one replaces on a reload when the breaker settings and the
    /// target are the same (an open breaker stays open).
    pub breaker: Option<Arc<Breaker>>,
    pub load: Arc<Load>,
    /// Request-rate cap towards this upstream: the limiter and its one word of state.
    pub rate: Option<(Gcra, AtomicU64)>,
    pub max_concurrency: Option<u32>,
    /// Cleared by a failing active health check, set again by a passing one.
    pub healthy: AtomicBool,
    /// Answered a body with `stream_options` (added for `track_usage`) with a 400 naming it:
    /// it gets the client's bodies as they are, for a while.
    pub refuses_usage_option: UsageOptionRefusal,
    pub health_check: Option<config::HealthCheck>,
    pub health_passes: Arc<Counter>,
    pub health_failures: Arc<Counter>,
    /// Which health-check loop is the current one (see `health_check::spawn`).
    pub health_loop: AtomicU64,
    /// The configuration this was compiled from: a runtime swap keeps this upstream (and its
    /// breaker, load statistics and health state) when the new configuration is identical.
    pub config: config::Upstream,
}

/// Request headers that carry an API credential: OpenAI's and most providers' `Authorization`,
/// Anthropic's `x-api-key`, Azure OpenAI's `api-key`, Google's `x-goog-api-key`.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] = [
    hyper::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
];

pub fn is_credential(name: &[u8]) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|c| c.as_str().len() == name.len() && c.as_str().as_bytes().eq_ignore_ascii_case(name))
}

impl Upstream {
    pub fn compile(cfg: &config::Upstream) -> Result<Self, String> {
        Self::compile_after(cfg, None)
    }

    /// Compiles `cfg` as the successor of `previous` (the same upstream, changed by a reload or
    /// the admin API): what describes the upstream's current condition carries over — requests
    /// in flight (so `max_concurrency` holds across the change), load statistics, rate-limit
    /// debt, breaker and health state — as long as it is still the same target; counters
    /// continue.
    pub fn compile_after(cfg: &config::Upstream, previous: Option<&Upstream>) -> Result<Self, String> {
        let target = match &cfg.mock {
            Some(mock) => Target::Mock(mock.clone()),
            None => Target::Http(HttpTarget::parse(&cfg.url)?),
        };
        let basic = |username: &str, password: &str| {
            sensitive(&format!("Basic {}", crate::base64::encode(format!("{username}:{password}").as_bytes())))
        };
        let authorization = match &cfg.auth {
            // Credentials written into the URL (`https://user:pass@host`) are basic auth, as
            // HTTP clients (LLMProxy's among them) send them; they never travel in the URL.
            Auth::None => match &target {
                Target::Http(t) => t.userinfo().map(|(user, pass)| basic(&user, &pass)).transpose()?,
                Target::Mock(_) => None,
            },
            Auth::Bearer { token } => Some(sensitive(&format!("Bearer {token}"))?),
            Auth::Basic { username, password } => Some(basic(username, password)?),
        };
        let header_ops = cfg
            .headers
            .iter()
            .map(|op| {
                let name =
                    HeaderName::from_bytes(op.key.as_bytes()).map_err(|e| format!("header {:?}: {e}", op.key))?;
                let value = op
                    .value
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|e| format!("header {:?}: {e}", op.key))?;
                Ok(HeaderOp { kind: op.op, name, value })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let same = previous.filter(|p| p.config.url == cfg.url && p.config.mock == cfg.mock);
        let breaker = match (&cfg.breaker, same.and_then(|p| p.breaker.as_ref().map(|old| (p, old)))) {
            (Some(b), Some((p, old))) if p.config.breaker.as_ref() == Some(b) => Some(old.clone()),
            (Some(b), Some((_, old))) => Some(Arc::new(Breaker::continuing(b.threshold, b.cooldown, old))),
            (Some(b), None) => Some(Arc::new(Breaker::new(b.threshold, b.cooldown))),
            (None, _) => None,
        };
        let rate = cfg
            .ratelimit
            .as_ref()
            .map(|r| Gcra::with_state(r.per_second, r.burst, same.and_then(|p| p.rate.as_ref()), crate::clock::now()));
        // Shared with the upstream this one replaces, not copied: a check finishing on the old
        // one after the copy would be lost, and the counter would seem to go back.
        let carried =
            |counter: fn(&Upstream) -> &Arc<Counter>| previous.map_or_else(Arc::default, |p| counter(p).clone());
        let header_plan = header_plan::plan(&header_ops);
        let may_compress = header_plan
            .iter()
            .any(|p| p.name == hyper::header::ACCEPT_ENCODING && p.value.as_ref().is_none_or(|v| v != "identity"));
        let supplies_credentials = authorization.is_some()
            || header_plan.iter().any(|p| is_credential(p.name.as_str().as_bytes()) && p.value.is_some());
        Ok(Upstream {
            name: cfg.name.clone(),
            target,
            authorization,
            header_plan,
            supplies_credentials,
            may_compress,
            breaker,
            load: same.map_or_else(|| Arc::new(Load::default()), |p| p.load.clone()),
            rate,
            max_concurrency: cfg.max_concurrency,
            // Only a health check brings an upstream back: without one, it starts healthy.
            healthy: AtomicBool::new(
                cfg.health_check.is_none() || same.is_none_or(|p| p.healthy.load(Ordering::Acquire)),
            ),
            refuses_usage_option: UsageOptionRefusal(AtomicU64::new(
                same.map_or(0, |p| p.refuses_usage_option.0.load(Ordering::Relaxed)),
            )),
            health_check: cfg.health_check.clone(),
            health_passes: carried(|u| &u.health_passes),
            health_failures: carried(|u| &u.health_failures),
            health_loop: AtomicU64::new(0),
            config: cfg.clone(),
        })
    }
}

/// Breaker transitions are rare and operationally important: always logged and counted.
pub fn note_transition(upstream: &str, metrics: &MemberMetrics, transition: Option<breaker::Transition>) {
    if let Some(t) = transition {
        metrics.transition(t);
        crate::info!("circuit breaker of upstream {upstream}: {} -> {}", t.from.as_str(), t.to.as_str());
    }
}

fn sensitive(s: &str) -> Result<HeaderValue, String> {
    let mut v =
        HeaderValue::from_str(s).map_err(|_| "credentials contain characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// How long an upstream that refused `stream_options` gets client bodies as they are before it
/// is asked again: the refusal may have been about one request (an Azure `api-version` that
/// client chose), and an upstream upgraded meanwhile would otherwise go uncounted until a
/// restart. Asking again costs one request a second round trip.
pub const USAGE_OPTION_RETRY: u64 = 600 * crate::clock::NANOS_PER_SEC;

/// When an upstream last refused `stream_options` (on the clock; 0: it has not).
pub struct UsageOptionRefusal(AtomicU64);

impl UsageOptionRefusal {
    /// Whether the upstream is still taken to refuse the option at `now`.
    pub fn holds(&self, now: u64) -> bool {
        let at = self.0.load(Ordering::Relaxed);
        at != 0 && now.saturating_sub(at) < USAGE_OPTION_RETRY
    }

    /// Records a refusal at `now`; whether the upstream was not already taken to refuse.
    pub fn mark(&self, now: u64) -> bool {
        let held = self.holds(now);
        self.0.store(now.max(1), Ordering::Relaxed);
        !held
    }

    /// The refusal was about something else.
    pub fn lift(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_usage_option_is_held_for_a_while_then_asked_again() {
        let refusal = UsageOptionRefusal(AtomicU64::new(0));
        let t = 5 * crate::clock::NANOS_PER_SEC;
        assert!(!refusal.holds(t));
        assert!(refusal.mark(t), "newly marked");
        assert!(!refusal.mark(t + 1), "already marked");
        assert!(refusal.holds(t + USAGE_OPTION_RETRY - 2));
        assert!(!refusal.holds(t + 1 + USAGE_OPTION_RETRY), "asked again");
        assert!(refusal.mark(t + 1 + USAGE_OPTION_RETRY), "a refusal then is news again");
        refusal.lift();
        assert!(!refusal.holds(t + 2 + USAGE_OPTION_RETRY));
    }

    #[test]
    fn health_counts_are_shared_with_the_upstream_a_reload_replaces() {
        let yaml = "http_server:\n  forwards: [{name: f, default_group: g}]\n\
                    upstreams: [{name: u, url: \"http://127.0.0.1:1/v1\"}]\n\
                    upstream_groups: [{name: g, upstreams: [{name: u}]}]\n";
        let env = std::collections::HashMap::<String, String>::new();
        let cfg = config::from_str(yaml, &env).unwrap().upstreams.remove(0);
        let old = Upstream::compile(&cfg).unwrap();
        old.health_passes.inc();
        let new = Upstream::compile_after(&cfg, Some(&old)).unwrap();
        // A check that was running on the old one finishes after the swap: not lost.
        old.health_passes.inc();
        old.health_failures.inc();
        assert_eq!((new.health_passes.get(), new.health_failures.get()), (2, 1));
    }
}
