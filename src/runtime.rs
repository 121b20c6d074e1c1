//! The compiled, immutable snapshot of everything the request path reads.
//!
//! Built from a validated [`Config`]; a request loads the current `Arc<Runtime>` once and reads
//! only that, so a configuration change (later: admin API, SIGHUP) can swap in a new snapshot
//! while requests in flight finish on the old one.

use crate::balance::Balancer;
use crate::config::{self, Config, Strategy};
use crate::ratelimit::{Gcra, KeyedLimiter};
use crate::router::Router;
use crate::upstream::client::HttpClient;
use crate::upstream::Upstream;
use hyper::header::HeaderValue;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
    pub name: String,
    /// Values are indexes into [`Runtime::groups`].
    pub router: Router<usize>,
    pub default_group: usize,
    pub max_body_size: u64,
    /// Per-client-IP limiter, when the forward's `ratelimit` is enabled.
    pub client_limiter: Option<KeyedLimiter<IpAddr>>,
    /// Requests refused by `client_limiter`.
    pub rate_limited: AtomicU64,
}

pub struct Group {
    pub name: String,
    pub members: Vec<Member>,
    pub balancer: Balancer,
    pub client: HttpClient,
    pub agent: HeaderValue,
    pub stream: bool,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
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
}

impl Runtime {
    pub fn build(config: Config) -> Result<Self, String> {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Upstream::compile(u).map(Arc::new).map_err(|e| format!("upstream {}: {e}", u.name)))
            .collect::<Result<_, _>>()?;
        let groups = config
            .upstream_groups
            .iter()
            .map(|g| build_group(g, &config, &upstreams))
            .collect::<Result<Vec<_>, _>>()?;
        let group_index = |name: &str| {
            config.upstream_groups.iter().position(|g| g.name == name).ok_or_else(|| format!("unknown group {name}"))
        };
        let mut forwards = Vec::new();
        for f in &config.http_server.forwards {
            let mut router = Router::new();
            for r in &f.routing {
                router.insert(&r.path, group_index(&r.target_group)?).map_err(|e| e.to_string())?;
            }
            let client_limiter = f
                .ratelimit
                .as_ref()
                .filter(|r| r.enabled)
                .map(|r| KeyedLimiter::new(Gcra::new(r.per_second, r.burst), CLIENT_LIMITER_CAPACITY));
            forwards.push(Forward {
                name: f.name.clone(),
                router,
                default_group: group_index(&f.default_group)?,
                max_body_size: f.max_body_size,
                client_limiter,
                rate_limited: AtomicU64::new(0),
            });
        }
        Ok(Runtime { config: Arc::new(config), forwards, groups, upstreams })
    }

    pub fn forward(&self, name: &str) -> Option<&Forward> {
        self.forwards.iter().find(|f| f.name == name)
    }
}

fn build_group(g: &config::UpstreamGroup, config: &Config, upstreams: &[Arc<Upstream>]) -> Result<Group, String> {
    let members = g
        .upstreams
        .iter()
        .map(|m| {
            let i = config
                .upstreams
                .iter()
                .position(|u| u.name == m.name)
                .ok_or_else(|| format!("unknown upstream {}", m.name))?;
            Ok(Member { upstream: upstreams[i].clone(), weight: m.weight })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let agent = HeaderValue::from_str(&g.http_client.agent).map_err(|_| format!("group {}: invalid agent", g.name))?;
    let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
    Ok(Group {
        name: g.name.clone(),
        members,
        balancer: Balancer::new(g.balance.strategy, &weights),
        client: HttpClient::new(&g.http_client).map_err(|e| format!("group {}: {e}", g.name))?,
        agent,
        stream: g.http_client.stream,
        request_timeout: Duration::from_secs(g.http_client.timeout.request),
        retry: RetryPolicy::of(g),
    })
}

impl Runtime {
    /// Starts background work that belongs to this snapshot (active health checks). Separate
    /// from `build` so that `llmproxyd -t` can compile a runtime without a reactor.
    pub fn start_background(&self) {
        for u in &self.upstreams {
            crate::upstream::health_check::spawn(u);
        }
    }
}

/// The live runtime, shared by every listener. A read lock is held only long enough to clone
/// the `Arc` (nanoseconds), never across a request.
pub struct Shared {
    current: RwLock<Arc<Runtime>>,
    draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(runtime: Runtime) -> Self {
        Shared { current: RwLock::new(Arc::new(runtime)), draining: false.into() }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, runtime: Runtime) {
        let new = Arc::new(runtime);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
