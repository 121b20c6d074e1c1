//! The compiled, immutable snapshot of everything the request path reads.
//!
//! Built from a validated [`Config`]; a request loads the current `Arc<Runtime>` once and reads
//! only that, so a configuration change (later: admin API, SIGHUP) can swap in a new snapshot
//! while requests in flight finish on the old one.

use crate::access::AccessList;
use crate::balance::Balancer;
use crate::client_keys::ClientKeys;
use crate::config::{self, Config, Strategy};
use crate::metrics::families::{ForwardMetrics, MemberMetrics};
use crate::proxy::body_budget::{BodyBudget, Reservation};
use crate::ratelimit::{Gcra, KeyedLimiter};
use crate::router::rules::ConditionalRule;
use crate::router::Router;
use crate::upstream::client::HttpClient;
use crate::upstream::direct::DirectPool;
use crate::upstream::Upstream;
use hyper::header::HeaderValue;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub struct Runtime {
    pub config: Arc<Config>,
    pub forwards: Vec<Forward>,
    pub groups: Vec<Group>,
    pub upstreams: Vec<Arc<Upstream>>,
}

/// Client IPs tracked at once per forward limiter (256 KiB of slots). A key stays tracked only
/// while it owes time (at most `burst / per_second` seconds after its last request), so this is
/// the number of clients active within that window, not since start.
const CLIENT_LIMITER_CAPACITY: usize = 16_384;

pub struct Forward {
    pub name: Arc<str>,
    /// Values are indexes into [`Runtime::groups`].
    pub router: Router<usize>,
    /// Model and header rules, tried first in declaration order.
    pub rules: Vec<ConditionalRule>,
    pub default_group: usize,
    pub max_body_size: u64,
    pub max_buffered_bodies: u64,
    /// The request-body bytes held now (shared with the previous runtime's forward of this name).
    pub bodies: Arc<BodyBudget>,
    /// Per-client-IP limiter, when the forward's `ratelimit` is enabled (shared with the
    /// previous runtime while the limits are unchanged, so a reload forgives no client).
    pub client_limiter: Option<Arc<KeyedLimiter<IpAddr>>>,
    pub access: Option<AccessList>,
    pub keys: Option<ClientKeys>,
    pub access_log: bool,
    /// Whether any rule looks at the body's `model` (only then is the body scanned for it).
    pub needs_model: bool,
    /// Whether a rule reads a credential header that the key check takes out (only then are
    /// they kept for the rules).
    pub rules_read_credentials: bool,
    pub metrics: Arc<ForwardMetrics>,
}

impl Forward {
    /// Holds `bytes` more of request bodies for `reservation`, if they fit `max_buffered_bodies`.
    pub fn hold_body<'a>(&'a self, reservation: &mut Reservation<'a>, bytes: usize) -> bool {
        self.bodies.reserve(reservation, bytes as u64, self.max_buffered_bodies)
    }
}

pub struct Group {
    pub name: Arc<str>,
    pub members: Vec<Member>,
    /// Carried across configuration changes that leave the strategy, members and weights as
    /// they were: a rotation restarted by every unrelated change (a key added, a route) would
    /// send the next request to the first member each time, and a weighted one would never
    /// reach its light members if changes came often enough.
    pub balancer: Arc<Balancer>,
    pub client: Arc<HttpClient>,
    pub agent: HeaderValue,
    pub stream: bool,
    pub request_timeout: Duration,
    /// `timeout.connect`: also how long a failed answer kept for later may take to arrive.
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    pub track_usage: bool,
    pub sse_keepalive: Option<Duration>,
    /// The configuration this was compiled from (to reuse the connection pool on a swap).
    pub config: config::UpstreamGroup,
}

/// How many attempts a request may make in a group, and whether it may go back to an upstream
/// it already tried (with backoff).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub may_reuse: bool,
    pub initial: Duration,
}

impl RetryPolicy {
    /// A `retry` block allows `attempts` extra attempts. Without one, `failover` still moves a
    /// failed request along the list (each upstream once); other strategies make one attempt.
    pub fn of(group: &config::UpstreamGroup) -> Self {
        match &group.http_client.retry {
            Some(r) => {
                RetryPolicy { max_attempts: 1 + r.attempts, may_reuse: true, initial: Duration::from_millis(r.initial) }
            }
            None if group.balance.strategy == Strategy::Failover => {
                RetryPolicy { max_attempts: group.upstreams.len() as u32, may_reuse: false, initial: Duration::ZERO }
            }
            None => RetryPolicy { max_attempts: 1, may_reuse: false, initial: Duration::ZERO },
        }
    }
}

pub struct Member {
    pub upstream: Arc<Upstream>,
    pub weight: u32,
    pub metrics: Arc<MemberMetrics>,
    /// Request-driven connections for plain-HTTP upstreams reached without an outbound proxy.
    pub direct: Option<Arc<DirectPool>>,
}

impl Runtime {
    pub fn build(config: Config) -> Result<Self, String> {
        Self::rebuild(config, None)
    }

    /// Compiles `config`, keeping from `previous` what is unchanged: upstreams with an identical
    /// configuration keep their breaker, load statistics and health state; groups with an
    /// identical client configuration keep their connection pool; metric handles are kept by
    /// name so counters continue.
    pub fn rebuild(config: Config, previous: Option<&Runtime>) -> Result<Self, String> {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|old| old.name == u.name));
                match old {
                    Some(old) if old.config == *u => Ok(old.clone()),
                    _ => Upstream::compile_after(u, old.map(|o| &**o))
                        .map(Arc::new)
                        .map_err(|e| format!("upstream {}: {e}", u.name)),
                }
            })
            .collect::<Result<_, _>>()?;
        let groups = config
            .upstream_groups
            .iter()
            .map(|g| build_group(g, &config, &upstreams, previous))
            .collect::<Result<Vec<_>, _>>()?;
        let group_index = |name: &str| {
            config.upstream_groups.iter().position(|g| g.name == name).ok_or_else(|| format!("unknown group {name}"))
        };
        let mut forwards = Vec::new();
        for f in &config.http_server.forwards {
            let mut router = Router::new();
            let mut rules = Vec::new();
            for r in &f.routing {
                let target = group_index(&r.target_group)?;
                match (&r.path, r.is_conditional()) {
                    (Some(path), false) => router.insert(path, target).map_err(|e| e.to_string())?,
                    _ => rules.push(ConditionalRule::compile(r, target)?),
                }
            }
            let old = previous.and_then(|p| p.forward(&f.name));
            let old_limits = previous
                .and_then(|p| p.config.http_server.forwards.iter().find(|o| o.name == f.name))
                .map(|o| &o.ratelimit);
            let client_limiter =
                match old.and_then(|o| o.client_limiter.clone()) {
                    Some(same) if old_limits == Some(&f.ratelimit) => Some(same),
                    _ => f.ratelimit.as_ref().filter(|r| r.enabled).map(|r| {
                        Arc::new(KeyedLimiter::new(Gcra::new(r.per_second, r.burst), CLIENT_LIMITER_CAPACITY))
                    }),
                };
            let metrics = old.map(|o| o.metrics.clone()).unwrap_or_default();
            forwards.push(Forward {
                name: f.name.as_str().into(),
                router,
                needs_model: f.routing.iter().any(|r| r.model.is_some()),
                rules_read_credentials: f.auth.is_some() && rules.iter().any(ConditionalRule::reads_credentials),
                rules,
                default_group: group_index(&f.default_group)?,
                max_body_size: f.max_body_size,
                max_buffered_bodies: f.max_buffered_bodies,
                bodies: old.map(|o| o.bodies.clone()).unwrap_or_default(),
                client_limiter,
                access: f.access.as_ref().map(AccessList::compile).transpose()?,
                keys: f.auth.as_ref().map(|a| ClientKeys::compile(a, old.and_then(|o| o.keys.as_ref()))),
                access_log: f.access_log,
                metrics,
            });
        }
        Ok(Runtime { config: Arc::new(config), forwards, groups, upstreams })
    }

    pub fn forward(&self, name: &str) -> Option<&Forward> {
        self.forwards.iter().find(|f| &*f.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// Starts background work that belongs to this snapshot (active health checks). Separate
    /// from `build` so that `llmproxyd -t` can compile a runtime without a reactor. Upstreams
    /// kept from `previous` already have their checks running.
    pub fn start_background(&self, previous: Option<&Runtime>) {
        for u in &self.upstreams {
            let proxy = health_check_proxy(&self.config, &u.name);
            let kept = previous.is_some_and(|p| {
                p.upstreams.iter().any(|old| Arc::ptr_eq(old, u)) && health_check_proxy(&p.config, &u.name) == proxy
            });
            if !kept {
                crate::upstream::health_check::spawn(u, proxy);
            }
        }
    }
}

/// The outbound proxy an upstream's health checks go through: that of the first group using
/// it that has one (its requests go the same way).
fn health_check_proxy(config: &Config, upstream: &str) -> Option<config::OutboundProxy> {
    config
        .upstream_groups
        .iter()
        .filter(|g| g.upstreams.iter().any(|m| m.name == upstream))
        .find_map(|g| g.http_client.proxy.clone())
}

fn build_group(
    g: &config::UpstreamGroup,
    config: &Config,
    upstreams: &[Arc<Upstream>],
    previous: Option<&Runtime>,
) -> Result<Group, String> {
    let old_group = previous.and_then(|p| p.group(&g.name));
    let members = g
        .upstreams
        .iter()
        .map(|m| {
            let i = config
                .upstreams
                .iter()
                .position(|u| u.name == m.name)
                .ok_or_else(|| format!("unknown upstream {}", m.name))?;
            let metrics = old_group
                .and_then(|og| og.members.iter().find(|om| om.upstream.name == m.name))
                .map(|om| om.metrics.clone())
                .unwrap_or_default();
            let direct = direct_pool(
                &upstreams[i],
                &g.http_client,
                // Kept only while the client settings that shaped it (timeouts, keepalive) hold.
                old_group
                    .filter(|og| og.config.http_client == g.http_client)
                    .and_then(|og| og.members.iter().find(|om| om.upstream.name == m.name)),
            );
            Ok(Member { upstream: upstreams[i].clone(), weight: m.weight_with(&upstreams[i].config), metrics, direct })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let agent = HeaderValue::from_str(&g.http_client.agent).map_err(|_| format!("group {}: invalid agent", g.name))?;
    let client = match old_group.filter(|og| og.config.http_client == g.http_client) {
        Some(og) => og.client.clone(),
        None => Arc::new(HttpClient::new(&g.http_client).map_err(|e| format!("group {}: {e}", g.name))?),
    };
    let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
    let same_rotation = |og: &&Group| {
        og.config.balance == g.balance
            && og.members.len() == members.len()
            && og.members.iter().zip(&members).all(|(o, m)| o.upstream.name == m.upstream.name && o.weight == m.weight)
    };
    let balancer = match old_group.filter(same_rotation) {
        Some(og) => og.balancer.clone(),
        None => Arc::new(Balancer::new(g.balance.strategy, &weights)),
    };
    Ok(Group {
        name: g.name.as_str().into(),
        members,
        balancer,
        client,
        agent,
        stream: g.http_client.stream,
        request_timeout: Duration::from_secs(g.http_client.timeout.request),
        connect_timeout: Duration::from_secs(g.http_client.timeout.connect),
        retry: RetryPolicy::of(g),
        track_usage: g.http_client.track_usage,
        sse_keepalive: g.http_client.sse_keepalive.map(Duration::from_secs),
        config: g.clone(),
    })
}

/// A direct pool for an `http://` upstream without outbound proxy (kept across swaps when the
/// upstream and the group's client settings are unchanged).
fn direct_pool(upstream: &Arc<Upstream>, client: &config::HttpClient, old: Option<&Member>) -> Option<Arc<DirectPool>> {
    let crate::upstream::Target::Http(t) = &upstream.target else { return None };
    if client.proxy.is_some() || t.scheme != hyper::http::uri::Scheme::HTTP {
        return None;
    }
    if let Some(old) = old.filter(|o| Arc::ptr_eq(&o.upstream, upstream)) {
        if old.direct.is_some() {
            return old.direct.clone();
        }
    }
    let host = t.authority.host();
    let port = t.authority.port_u16().unwrap_or(80);
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(DirectPool::new(
        address,
        Duration::from_secs(client.timeout.connect),
        (client.keepalive > 0).then(|| Duration::from_secs(client.keepalive)),
        Duration::from_secs(client.timeout.idle),
    ))
}

/// The live runtime, shared by every listener. A read lock is held only long enough to clone
/// the `Arc` (nanoseconds), never across a request.
pub struct Shared {
    current: RwLock<Arc<Runtime>>,
    draining: std::sync::atomic::AtomicBool,
    /// Serialises configuration changes (admin API, reload): each derives the next
    /// configuration from the current one, so two concurrent changes must not both start from
    /// the same snapshot and lose one of them.
    changes: Mutex<()>,
    /// Bearer token the admin API requires (`LLMPROXY_ADMIN_AUTH_TOKEN`), if set.
    pub admin_token: Option<String>,
    /// The configuration as last read from the file, to tell on reload whether API changes are
    /// being replaced.
    file_config: Mutex<Option<Arc<Config>>>,
}

impl Shared {
    pub fn new(runtime: Runtime, admin_token: Option<String>) -> Self {
        let file = runtime.config.clone();
        Shared {
            current: RwLock::new(Arc::new(runtime)),
            draining: false.into(),
            changes: Mutex::new(()),
            admin_token,
            file_config: Mutex::new(Some(file)),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Derives a configuration from the running one, compiles it (keeping the state of what is
    /// unchanged) and swaps it in: requests in flight finish on the old snapshot, the next
    /// request sees the new one. Nothing changes if `derive` or compiling fails.
    pub fn update<E: From<String>>(
        &self,
        derive: impl FnOnce(&Runtime) -> Result<Config, E>,
    ) -> Result<Arc<Runtime>, E> {
        let _serial = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.runtime();
        let config = derive(&current)?;
        let next = Arc::new(Runtime::rebuild(config, Some(&current)).map_err(E::from)?);
        next.start_background(Some(&current));
        match self.current.write() {
            Ok(mut g) => *g = next.clone(),
            Err(poisoned) => *poisoned.into_inner() = next.clone(),
        }
        Ok(next)
    }

    /// Whether `running` differs from the file's last loaded content (changes made through the
    /// admin API).
    pub fn differs_from_file(&self, running: &Config) -> bool {
        let file = self.file_config.lock().unwrap_or_else(|p| p.into_inner());
        file.as_ref().is_some_and(|f| **f != *running)
    }

    /// Records `config` as the file's content, once it runs.
    pub fn set_file_config(&self, config: Arc<Config>) {
        *self.file_config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(group_client: &str) -> Config {
        let yaml = format!(
            "http_server:\n  forwards: [{{name: f, port: 0, address: 127.0.0.1, default_group: g}}]\n\
             upstreams: [{{name: up, url: \"http://127.0.0.1:9\"}}]\n\
             upstream_groups: [{{name: g, upstreams: [{{name: up}}], http_client: {group_client}}}]\n"
        );
        crate::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap()
    }

    fn pool(rt: &Runtime) -> Arc<DirectPool> {
        rt.groups[0].members[0].direct.clone().unwrap()
    }

    #[test]
    fn a_direct_pool_is_kept_only_while_its_client_settings_hold() {
        let first = Runtime::build(config("{timeout: {connect: 5}}")).unwrap();
        let same = Runtime::rebuild(config("{timeout: {connect: 5}}"), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&pool(&first), &pool(&same)), "unchanged: connections are kept");
        let changed = Runtime::rebuild(config("{timeout: {connect: 1}}"), Some(&same)).unwrap();
        assert!(!Arc::ptr_eq(&pool(&same), &pool(&changed)), "a new connect timeout takes effect");
    }

    fn limited(token: &str, body: &str) -> Config {
        limited_with(token, body, ", health_check: {path: /health}")
    }

    fn limited_with(token: &str, body: &str, upstream_extra: &str) -> Config {
        let yaml = format!(
            "http_server:\n  forwards:\n    - {{name: f, port: 0, address: 127.0.0.1, default_group: g, max_body_size: {body},\n       \
             ratelimit: {{per_second: 1, burst: 1}}, auth: {{keys: [{{name: k, key: sk-1, ratelimit: {{per_second: 1, burst: 1}}}}]}}}}\n\
             upstreams:\n  - {{name: up, url: \"http://127.0.0.1:9\", auth: {{type: bearer, token: {token}}},\n     \
             max_concurrency: 2, breaker: {{threshold: 0.5, cooldown: 60}}, ratelimit: {{per_second: 1, burst: 1}}{upstream_extra}}}\n\
             upstream_groups: [{{name: g, upstreams: [{{name: up}}]}}]\n"
        );
        crate::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap()
    }

    #[test]
    fn a_change_forgives_no_client_and_forgets_no_request_in_flight() {
        let first = Runtime::build(limited("t1", "1MiB")).unwrap();
        let now = 1_000 * crate::clock::NANOS_PER_SEC;
        let up = first.upstreams[0].clone();
        let _in_flight = up.load.try_begin(Some(2)).unwrap();
        up.healthy.store(false, Ordering::Relaxed);
        let fwd = first.forward("f").unwrap();
        let client = IpAddr::from([10, 0, 0, 1]);
        assert!(fwd.client_limiter.as_ref().unwrap().check(&client, now).is_ok());
        let headers = || crate::fields::wire("x-api-key: sk-1\r\n");
        assert!(fwd.keys.as_ref().unwrap().admit(&mut headers(), now).is_ok());

        // The upstream's token and the forward's body limit change; the limits do not.
        let second = Runtime::rebuild(limited("t2", "2MiB"), Some(&first)).unwrap();
        let next = &second.upstreams[0];
        assert!(!Arc::ptr_eq(&up, next), "recompiled with the new token");
        assert_eq!(next.load.inflight(), 1, "the request in flight still counts against max_concurrency");
        assert!(Arc::ptr_eq(up.breaker.as_ref().unwrap(), next.breaker.as_ref().unwrap()));
        assert!(!next.healthy.load(Ordering::Relaxed), "a failing upstream stays out until it passes");
        let fwd = second.forward("f").unwrap();
        assert!(fwd.client_limiter.as_ref().unwrap().check(&client, now).is_err(), "the client still owes");
        assert!(fwd.keys.as_ref().unwrap().admit(&mut headers(), now).is_err(), "the key still owes");

        // Without a health check nothing could bring it back: it starts healthy.
        let third = Runtime::rebuild(limited_with("t2", "2MiB", ""), Some(&second)).unwrap();
        assert!(third.upstreams[0].healthy.load(Ordering::Relaxed));
    }
}
