//! The validated configuration: the LLMProxy schema with every default filled in.
//!
//! These types are what the rest of the program reads; they are produced only by
//! [`super::parse`], so holding one means every range and cross-reference was checked.
//! `Serialize` writes them back in the same schema (used by the round-trip test and, later, the
//! admin API).

use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub http_server: HttpServer,
    pub upstreams: Vec<Upstream>,
    pub upstream_groups: Vec<UpstreamGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpServer {
    pub forwards: Vec<Forward>,
    pub admin: Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forward {
    pub name: String,
    /// 0 asks the kernel for a free port (tests do this).
    pub port: u16,
    pub address: IpAddr,
    pub default_group: String,
    pub routing: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimit>,
    pub timeout: ForwardTimeout,
    pub max_body_size: u64,
    /// Request bodies held in memory at once (they are buffered to be retried).
    pub max_buffered_bodies: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<ForwardAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// One log line per request: model, upstream, status, TTFT, duration, tokens.
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Path pattern (trie rules); optional on rules that match the `model` or headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Glob on the request body's top-level JSON `model` (`*` = any run of characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Request headers that must all match their glob (names lower-case).
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "pairs_as_map")]
    pub headers: Vec<(String, String)>,
    pub target_group: String,
}

impl Route {
    /// Rules with a `model` or header condition are tried before the path trie.
    pub fn is_conditional(&self) -> bool {
        self.model.is_some() || !self.headers.is_empty()
    }

    /// What identifies the rule within its forward: the path of a path rule (as LLMProxy's
    /// route ids are the path), or all conditions of a conditional rule. The admin API shows it
    /// (route ids, messages), so a condition on a credential header (`authorization: "Bearer
    /// sk-team-*"`) is in it only as a fingerprint of its glob: distinct globs stay distinct
    /// rules, and the glob itself is never shown (the ids of such rules change with each start
    /// of the process, whose random key the fingerprint uses).
    pub fn key(&self) -> String {
        match (&self.path, self.is_conditional()) {
            (Some(p), false) => p.clone(),
            _ => {
                let headers: serde_json::Map<String, serde_json::Value> = self
                    .headers
                    .iter()
                    .map(|(name, glob)| {
                        let shown = if crate::sensitive::is_sensitive_name(name) {
                            format!("{}{:016x}", crate::sensitive::MASK, crate::sensitive::fingerprint(glob))
                        } else {
                            glob.clone()
                        };
                        (name.clone(), serde_json::Value::String(shown))
                    })
                    .collect();
                serde_json::json!({"path": self.path, "model": self.model, "headers": headers}).to_string()
            }
        }
    }
}

fn pairs_as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// Client API keys of a forward: when present, every request must carry one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardAuth {
    pub keys: Vec<ClientKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientKey {
    /// Labels metrics and logs; the key itself never appears anywhere.
    pub name: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<UpstreamRateLimit>,
}

/// IP access lists (CIDRs or single addresses, IPv4 and IPv6).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Access {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimit {
    pub enabled: bool,
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardTimeout {
    /// Seconds a client may take to send a request head (slowloris guard).
    pub connect: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admin {
    pub port: u16,
    pub address: IpAddr,
    pub timeout: AdminTimeout,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminTimeout {
    pub connect: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    pub auth: Auth,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderOp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<UpstreamRateLimit>,
    pub weight: u32,
    /// Cap on requests in flight to this upstream (a self-hosted box has a fixed capacity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mock: Option<Mock>,
}

/// Active health check: a background `GET` of `path` every `interval`; an upstream failing it is
/// not picked until a check passes again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    pub path: String,
    /// Seconds between checks.
    pub interval: u64,
    /// Seconds a check may take.
    pub timeout: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Auth {
    None,
    Bearer { token: String },
    Basic { username: String, password: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderOp {
    pub op: HeaderOpKind,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderOpKind {
    Insert,
    Replace,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breaker {
    pub threshold: f64,
    pub cooldown: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamRateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// The built-in mock upstream (`url: "mock://"`): answers OpenAI- and Anthropic-style requests
/// with configurable latency and failures, so the proxy runs with no keys and no network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mock {
    /// Model name reported in responses when the request names none.
    pub model: String,
    /// Milliseconds before the first token (or the whole JSON answer).
    pub ttft_ms: u64,
    /// Milliseconds between streamed tokens.
    pub token_delay_ms: u64,
    /// Completion tokens per answer.
    pub tokens: u32,
    /// Fraction of requests answered with `error_status` (0.0–1.0).
    pub error_rate: f64,
    pub error_status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamGroup {
    pub name: String,
    pub upstreams: Vec<GroupMember>,
    pub balance: Balance,
    pub http_client: HttpClient,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMember {
    pub name: String,
    /// The member's own weight; without one it takes its upstream's (`upstreams[].weight`,
    /// default 1) — resolved when the runtime is built, so changing the upstream's weight
    /// reaches every group that did not set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl GroupMember {
    /// The weight the balancer uses.
    pub fn weight_with(&self, upstream: &Upstream) -> u32 {
        self.weight.unwrap_or(upstream.weight)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    pub strategy: Strategy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Roundrobin,
    WeightedRoundrobin,
    Random,
    ResponseAware,
    Failover,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpClient {
    pub agent: String,
    /// TCP keepalive seconds; 0 disables.
    pub keepalive: u64,
    pub stream: bool,
    pub timeout: ClientTimeout,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<OutboundProxy>,
    /// Ask OpenAI-style streams for usage and hide the extra chunk from the client.
    pub track_usage: bool,
    /// Seconds of SSE silence after which a `: keep-alive` comment is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_keepalive: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientTimeout {
    pub connect: u64,
    pub request: u64,
    pub idle: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    pub attempts: u32,
    /// Milliseconds before the first retry to the same upstream.
    pub initial: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundProxy {
    pub url: String,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&UpstreamGroup> {
        self.upstream_groups.iter().find(|g| g.name == name)
    }
}
