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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub path: String,
    pub target_group: String,
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
    pub weight: u32,
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
