//! Reading the LLMProxy schema into [`Config`]: every key, its default and its range.
//!
//! Ranges and defaults are those documented by LLMProxy; additions of ours (TLS, `max_body_size`,
//! the mock upstream) are marked where they are read. Aliases from older
//! LLMProxy releases (`upstream_group`, `stream_mode`, `retry.enabled`, `proxy.enabled`,
//! `least_connections`) are accepted so existing files keep working.

use super::model::*;
use super::reader::{Fields, Node};
use super::ConfigError;
use std::net::IpAddr;

/// A request tracks the upstreams it tried in a `u64` bitmask (no allocation per request).
pub const MAX_GROUP_MEMBERS: usize = 64;

pub const DEFAULT_AGENT: &str = "LLMProxy/1.0";
/// Request bodies are buffered (to retry them); 32 MiB holds any chat request with images.
pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;

pub fn config(root: &Node) -> Result<Config, ConfigError> {
    let f = root.fields(&["http_server", "upstreams", "upstream_groups"])?;
    let http_server = http_server(&f.require("http_server")?)?;
    let upstreams = f.require("upstreams")?.items()?.iter().map(upstream).collect::<Result<Vec<_>, _>>()?;
    let upstream_groups =
        f.require("upstream_groups")?.items()?.iter().map(|n| group(n, &upstreams)).collect::<Result<Vec<_>, _>>()?;
    Ok(Config { http_server, upstreams, upstream_groups })
}

fn http_server(node: &Node) -> Result<HttpServer, ConfigError> {
    let f = node.fields(&["forwards", "admin"])?;
    let forwards = f.require("forwards")?.items()?.iter().map(forward).collect::<Result<Vec<_>, _>>()?;
    if forwards.is_empty() {
        return Err(ConfigError::at(&f.child_path("forwards"), "needs at least one forward"));
    }
    let admin = match f.get("admin") {
        Some(n) => admin(&n)?,
        None => admin(&Node { path: f.child_path("admin"), value: &serde_yaml::Value::Null, env: node.env })?,
    };
    Ok(HttpServer { forwards, admin })
}

fn port(f: &Fields, key: &str) -> Result<Option<u16>, ConfigError> {
    // Port 0 asks the kernel for a free port; tests and ad-hoc runs use it.
    f.get(key).map(|n| n.u64_in(0..=65535).map(|p| p as u16)).transpose()
}

fn address(f: &Fields) -> Result<IpAddr, ConfigError> {
    match f.get("address") {
        None => Ok(IpAddr::from([0, 0, 0, 0])),
        Some(n) => {
            let s = n.string()?;
            // LLMProxy parsed `address:port` as a socket address, where IPv6 takes brackets.
            let bare = s.trim();
            let bare = bare.strip_prefix('[').and_then(|b| b.strip_suffix(']')).unwrap_or(bare);
            bare.parse()
                .map_err(|_| n.error(format!("{s:?} is not an IP address (use e.g. 0.0.0.0, 127.0.0.1, :: or [::])")))
        }
    }
}

fn tls(f: &Fields) -> Result<Option<Tls>, ConfigError> {
    let Some(n) = f.get("tls") else { return Ok(None) };
    let t = n.fields(&["cert", "key"])?;
    Ok(Some(Tls { cert: t.required_string("cert")?, key: t.required_string("key")? }))
}

fn forward(node: &Node) -> Result<Forward, ConfigError> {
    let f = node.fields(&[
        "name",
        "port",
        "address",
        "default_group",
        "upstream_group",
        "routing",
        "ratelimit",
        "timeout",
        "max_body_size",
        "max_buffered_bodies",
        "tls",
        "auth",
        "access",
        "access_log",
    ])?;
    let name = f.required_string("name")?;
    // LLMProxy documents 3000 as the default (while calling the key required).
    let port = port(&f, "port")?.unwrap_or(3000);
    let default_group = match f.get_alias(&["default_group", "upstream_group"])? {
        Some(n) => n.string()?,
        None => return Err(ConfigError::at(&f.child_path("default_group"), "is required")),
    };
    let routing = match f.get("routing") {
        None => Vec::new(),
        Some(n) => n.items()?.iter().map(route).collect::<Result<Vec<_>, ConfigError>>()?,
    };
    let ratelimit = match f.get("ratelimit") {
        None => None,
        Some(n) => {
            let (enabled, UpstreamRateLimit { per_second, burst }) = rate_block(&n)?;
            Some(RateLimit { enabled, per_second, burst })
        }
    };
    let timeout = match f.get("timeout") {
        None => ForwardTimeout { connect: 10 },
        Some(n) => ForwardTimeout { connect: n.fields(&["connect"])?.u64_or("connect", 10, 1..=120)? },
    };
    let max_body_size = match f.get("max_body_size") {
        None => DEFAULT_MAX_BODY,
        Some(n) => byte_size(&n, 1024..=1024 * 1024 * 1024)?,
    };
    // [ours] Sixteen bodies of the largest size by default (512 MiB with the default size).
    let max_buffered_bodies = match f.get("max_buffered_bodies") {
        None => max_body_size.saturating_mul(16),
        Some(n) => {
            let total = byte_size(&n, 1024..=1024 * 1024 * 1024 * 1024)?;
            if total < max_body_size {
                return Err(n.error(format!("must hold at least one body of max_body_size ({max_body_size} bytes)")));
            }
            total
        }
    };
    Ok(Forward {
        name,
        port,
        address: address(&f)?,
        default_group,
        routing,
        ratelimit,
        timeout,
        max_body_size,
        max_buffered_bodies,
        tls: tls(&f)?,
        auth: f.get("auth").map(|n| forward_auth(&n)).transpose()?,
        access: f.get("access").map(|n| access(&n)).transpose()?,
        access_log: f.bool_or("access_log", false)?,
    })
}

pub(super) fn route(node: &Node) -> Result<Route, ConfigError> {
    let f = node.fields(&["path", "model", "headers", "target_group"])?;
    let path = f.get("path").map(|n| n.string()).transpose()?;
    let model = f.get("model").map(|n| n.string()).transpose()?;
    if path.is_none() && model.is_none() {
        return Err(node.error("a routing rule needs a `path` or a `model` (or both)"));
    }
    let mut headers = Vec::new();
    if let Some(h) = f.get("headers") {
        let Some(map) = h.value.as_mapping() else {
            return Err(h.error("expected a mapping of header name to glob"));
        };
        for (k, v) in map {
            let Some(name) = k.as_str() else { return Err(h.error("header names must be strings")) };
            let child = Node { path: format!("{}.{name}", h.path), value: v, env: h.env };
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(child.error(format!("{name:?} is not a valid header name")));
            }
            let name = name.to_ascii_lowercase();
            if headers.iter().any(|(seen, _)| *seen == name) {
                return Err(child.error("names a header already named here (names are case-insensitive)"));
            }
            headers.push((name, child.string()?));
        }
    }
    Ok(Route { path, model, headers, target_group: f.required_string("target_group")? })
}

/// A `ratelimit` block: whether it is on, and its `{per_second, burst}` rate. A block means
/// "limit" unless it says `enabled: false` (LLMProxy defaulted to off, so a block without
/// `enabled` silently did nothing).
fn rate_block(node: &Node) -> Result<(bool, UpstreamRateLimit), ConfigError> {
    let r = node.fields(&["enabled", "per_second", "burst"])?;
    let enabled = r.bool_or("enabled", true)?;
    let limit = UpstreamRateLimit {
        per_second: r.u64_or_if_on(enabled, "per_second", 100, 1..=10_000)? as u32,
        burst: r.u64_or_if_on(enabled, "burst", 200, 1..=20_000)? as u32,
    };
    Ok((enabled, limit))
}

/// The request rate of an upstream or a client key; `None` when its block is off.
fn rate(node: &Node) -> Result<Option<UpstreamRateLimit>, ConfigError> {
    let (enabled, limit) = rate_block(node)?;
    Ok(enabled.then_some(limit))
}

fn forward_auth(node: &Node) -> Result<ForwardAuth, ConfigError> {
    let f = node.fields(&["keys"])?;
    let list = f.require("keys")?;
    let mut keys: Vec<ClientKey> = Vec::new();
    for k in list.items()? {
        let kf = k.fields(&["name", "key", "ratelimit"])?;
        let name = kf.required_string("name")?;
        let key_node = kf.require("key")?;
        let key = key_node.secret()?;
        // What clients present is read trimmed and printable: a key with a space, a line break
        // (a `${KEY}` read from a file ending in one) or other bytes could never match.
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(key_node.error("must be printable ASCII without spaces or line breaks, as clients send it"));
        }
        if keys.iter().any(|other| other.name == name) {
            return Err(ConfigError::at(&kf.child_path("name"), format!("duplicate key name \"{name}\"")));
        }
        if keys.iter().any(|other| other.key == key) {
            return Err(ConfigError::at(
                &kf.child_path("key"),
                format!(
                    "the same key is also given to \"{}\"",
                    keys.iter().find(|o| o.key == key).map(|o| o.name.as_str()).unwrap_or("")
                ),
            ));
        }
        let ratelimit = kf.get("ratelimit").map(|n| rate(&n)).transpose()?.flatten();
        keys.push(ClientKey { name, key, ratelimit });
    }
    if keys.is_empty() {
        return Err(list.error("needs at least one key (remove `auth` to accept requests without a key)"));
    }
    Ok(ForwardAuth { keys })
}

fn access(node: &Node) -> Result<Access, ConfigError> {
    let f = node.fields(&["allow", "deny"])?;
    let list = |key: &str| -> Result<Vec<String>, ConfigError> {
        let Some(n) = f.get(key) else { return Ok(Vec::new()) };
        n.items()?
            .iter()
            .map(|item| {
                let s = item.string()?;
                crate::access::Cidr::parse(&s).map_err(|e| item.error(e))?;
                Ok(s)
            })
            .collect()
    };
    Ok(Access { allow: list("allow")?, deny: list("deny")? })
}

/// A byte count, either a number or a string with a unit (`512KiB`, `32MiB`, `1GiB`, `10MB`).
fn byte_size(node: &Node, range: std::ops::RangeInclusive<u64>) -> Result<u64, ConfigError> {
    if node.value.is_number() {
        return node.u64_in(range);
    }
    let s = node.string()?;
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return Err(node.error(format!("{s:?} is not a size (examples: 1048576, 512KiB, 32MiB)"))),
    };
    let n: u64 =
        digits.parse().map_err(|_| node.error(format!("{s:?} is not a size (examples: 1048576, 512KiB, 32MiB)")))?;
    let bytes = n.saturating_mul(unit_bytes);
    if !range.contains(&bytes) {
        return Err(node.error(format!("{bytes} bytes is out of range {}–{}", range.start(), range.end())));
    }
    Ok(bytes)
}

fn admin(node: &Node) -> Result<Admin, ConfigError> {
    let f = node.fields(&["port", "address", "timeout", "tls"])?;
    let connect = match f.get("timeout") {
        None => 10,
        Some(n) => n.fields(&["connect"])?.u64_or("connect", 10, 1..=120)?,
    };
    Ok(Admin {
        port: port(&f, "port")?.unwrap_or(9000),
        address: address(&f)?,
        timeout: AdminTimeout { connect },
        tls: tls(&f)?,
    })
}

/// Scheme of the built-in mock upstream.
pub const MOCK_SCHEME: &str = "mock://";

fn upstream(node: &Node) -> Result<Upstream, ConfigError> {
    // Some LLMProxy releases read an `http_client` per upstream; here it belongs to the group.
    if node.value.get("http_client").is_some() {
        return Err(ConfigError::at(
            &node.child("http_client"),
            "belongs to the upstream group here: move it to upstream_groups[].http_client",
        ));
    }
    let f = node.fields(&[
        "name",
        "url",
        "auth",
        "headers",
        "breaker",
        "ratelimit",
        "weight",
        "max_concurrency",
        "health_check",
        "mock",
        // LLMProxy declares an `id` on upstreams (internal; a file may carry one): ignored.
        "id",
    ])?;
    let name = f.required_string("name")?;
    let url_node = f.require("url")?;
    let url = url_node.string()?;
    let is_mock = url.starts_with(MOCK_SCHEME);
    if !is_mock {
        check_http_url(&url_node, &url, &["http", "https"])?;
    }
    let auth = match f.get("auth") {
        None => Auth::None,
        Some(n) => auth(&n)?,
    };
    let headers = match f.get("headers") {
        None => Vec::new(),
        Some(n) => n.items()?.iter().map(header_op).collect::<Result<Vec<_>, _>>()?,
    };
    let breaker = match f.get("breaker") {
        None => None,
        Some(n) => {
            let b = n.fields(&["threshold", "cooldown"])?;
            Some(Breaker {
                threshold: b.f64_or("threshold", 0.5, 0.01..=1.0)?,
                cooldown: b.u64_or("cooldown", 30, 1..=3600)?,
            })
        }
    };
    let ratelimit = f.get("ratelimit").map(|n| rate(&n)).transpose()?.flatten();
    let mock = match (f.get("mock"), is_mock) {
        (Some(n), false) => return Err(n.error(format!("a mock block needs url: \"{MOCK_SCHEME}\""))),
        (Some(n), true) => Some(mock(&n)?),
        (None, true) => {
            Some(mock(&Node { path: f.child_path("mock"), value: &serde_yaml::Value::Null, env: node.env })?)
        }
        (None, false) => None,
    };
    Ok(Upstream {
        name,
        url,
        auth,
        headers,
        breaker,
        ratelimit,
        weight: f.u64_or("weight", 1, 1..=65_535)? as u32,
        max_concurrency: f.get("max_concurrency").map(|n| n.u64_in(1..=100_000).map(|v| v as u32)).transpose()?,
        health_check: f.get("health_check").map(|n| health_check(&n)).transpose()?,
        mock,
    })
}

fn health_check(node: &Node) -> Result<HealthCheck, ConfigError> {
    let f = node.fields(&["path", "interval", "timeout"])?;
    let path = f.string_or("path", "/v1/models")?;
    if !path.starts_with('/') {
        return Err(ConfigError::at(&f.child_path("path"), format!("{path:?} must start with \"/\"")));
    }
    Ok(HealthCheck { path, interval: f.u64_or("interval", 10, 1..=3600)?, timeout: f.u64_or("timeout", 5, 1..=300)? })
}

/// Checks that `url` parses and has one of `schemes` and a host.
fn check_http_url(node: &Node, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    // Errors show the URL with its password masked: they are logged.
    let shown_url = crate::admin::redact::mask_url(url);
    let uri: hyper::Uri = url.parse().map_err(|e| node.error(format!("{shown_url:?} is not a valid URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        let shown = if scheme.is_empty() { "none".to_string() } else { format!("{scheme:?}") };
        return Err(node.error(format!("{shown_url:?}: scheme {shown} is not supported (use {})", schemes.join(", "))));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(node.error(format!("{shown_url:?} has no host")));
    }
    Ok(())
}

/// Credentials the chosen `type` does not use are ignored, as LLMProxy does (a file switched to
/// `type: none` often keeps its token).
fn auth(node: &Node) -> Result<Auth, ConfigError> {
    let f = node.fields(&["type", "token", "username", "password"])?;
    let kind = match f.get("type") {
        None => "none".to_string(),
        Some(n) => n.choice(&["bearer", "basic", "none"])?,
    };
    match kind.as_str() {
        "bearer" => Ok(Auth::Bearer { token: f.require("token")?.secret()? }),
        "basic" => {
            Ok(Auth::Basic { username: f.required_string("username")?, password: f.require("password")?.secret()? })
        }
        _ => Ok(Auth::None),
    }
}

fn header_op(node: &Node) -> Result<HeaderOp, ConfigError> {
    let f = node.fields(&["op", "key", "value"])?;
    let op = match f.require("op")?.choice(&["insert", "replace", "remove"])?.as_str() {
        "insert" => HeaderOpKind::Insert,
        "replace" => HeaderOpKind::Replace,
        _ => HeaderOpKind::Remove,
    };
    let key_node = f.require("key")?;
    let key = key_node.string()?;
    if hyper::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
        return Err(key_node.error(format!("{key:?} is not a valid header name")));
    }
    // The proxy frames each request itself: a value of its own for these would contradict the
    // framing it writes (two lengths, a length and chunking), and no `Host` leaves an HTTP/1.1
    // request invalid. Removing a framing header is harmless (the proxy never forwards the
    // client's), and `Host` may still be set, for an upstream reached by address.
    let framing = crate::proxy::headers::is_hop_by_hop(key.as_bytes()) || key.eq_ignore_ascii_case("content-length");
    match op {
        HeaderOpKind::Insert | HeaderOpKind::Replace if framing => {
            return Err(key_node.error(format!("{key:?} cannot be set: the proxy frames each request itself")))
        }
        HeaderOpKind::Remove if key.eq_ignore_ascii_case("host") => {
            return Err(key_node.error("\"host\" cannot be removed: an HTTP/1.1 request needs one (it may be set)"))
        }
        _ => {}
    }
    let value = match (op, f.get("value")) {
        // Ignored, as LLMProxy does.
        (HeaderOpKind::Remove, _) => None,
        (_, None) => return Err(ConfigError::at(&f.child_path("value"), "is required for insert and replace")),
        (_, Some(n)) => {
            let v = n.string()?;
            if hyper::header::HeaderValue::from_str(&v).is_err() {
                return Err(n.error("is not a valid header value (control characters or non-ASCII)"));
            }
            Some(v)
        }
    };
    Ok(HeaderOp { op, key, value })
}

fn mock(node: &Node) -> Result<Mock, ConfigError> {
    let f = node.fields(&["model", "ttft_ms", "token_delay_ms", "tokens", "error_rate", "error_status"])?;
    Ok(Mock {
        model: f.string_or("model", "mock-gpt")?,
        ttft_ms: f.u64_or("ttft_ms", 150, 0..=600_000)?,
        token_delay_ms: f.u64_or("token_delay_ms", 20, 0..=60_000)?,
        tokens: f.u64_or("tokens", 24, 1..=100_000)? as u32,
        error_rate: f.f64_or("error_rate", 0.0, 0.0..=1.0)?,
        error_status: f.u64_or("error_status", 500, 400..=599)? as u16,
    })
}

fn group(node: &Node, upstreams: &[Upstream]) -> Result<UpstreamGroup, ConfigError> {
    let f = node.fields(&["name", "upstreams", "balance", "http_client"])?;
    let name = f.required_string("name")?;
    let members_node = f.require("upstreams")?;
    let mut members: Vec<GroupMember> = Vec::new();
    for m in members_node.items()? {
        let mf = m.fields(&["name", "weight"])?;
        let member_name = mf.required_string("name")?;
        if !upstreams.iter().any(|u| u.name == member_name) {
            let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err(ConfigError::at(
                &mf.child_path("name"),
                format!("unknown upstream \"{member_name}\" (known: {})", known.join(", ")),
            ));
        }
        if members.iter().any(|x| x.name == member_name) {
            return Err(ConfigError::at(&mf.child_path("name"), format!("upstream \"{member_name}\" is listed twice")));
        }
        let weight = mf.get("weight").map(|n| n.u64_in(1..=65_535).map(|w| w as u32)).transpose()?;
        members.push(GroupMember { name: member_name, weight });
    }
    if members.is_empty() {
        return Err(members_node.error("needs at least one upstream"));
    }
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(
            members_node.error(format!("has {} upstreams; a group holds at most {MAX_GROUP_MEMBERS}", members.len()))
        );
    }
    let strategy = match f.get("balance") {
        None => Strategy::Roundrobin,
        Some(n) => {
            let b = n.fields(&["strategy"])?;
            match b.get("strategy") {
                None => Strategy::Roundrobin,
                Some(s) => match s
                    .choice(&[
                        "roundrobin",
                        "weighted_roundrobin",
                        "random",
                        "response_aware",
                        "failover",
                        "least_connections",
                    ])?
                    .as_str()
                {
                    "weighted_roundrobin" => Strategy::WeightedRoundrobin,
                    "random" => Strategy::Random,
                    // Older LLMProxy releases named the load-aware strategy least_connections.
                    "response_aware" | "least_connections" => Strategy::ResponseAware,
                    "failover" => Strategy::Failover,
                    _ => Strategy::Roundrobin,
                },
            }
        }
    };
    let http_client = match f.get("http_client") {
        None => {
            http_client(&Node { path: f.child_path("http_client"), value: &serde_yaml::Value::Null, env: node.env })?
        }
        Some(n) => http_client(&n)?,
    };
    Ok(UpstreamGroup { name, upstreams: members, balance: Balance { strategy }, http_client })
}

fn http_client(node: &Node) -> Result<HttpClient, ConfigError> {
    let f = node.fields(&[
        "agent",
        "keepalive",
        "stream",
        "stream_mode",
        "timeout",
        "retry",
        "proxy",
        "track_usage",
        "sse_keepalive",
    ])?;
    let agent_node = f.get("agent");
    let agent = f.string_or("agent", DEFAULT_AGENT)?;
    if hyper::header::HeaderValue::from_str(&agent).is_err() {
        if let Some(n) = agent_node {
            return Err(n.error("is not a valid header value"));
        }
    }
    let stream = match f.get_alias(&["stream", "stream_mode"])? {
        None => true,
        Some(n) => n.bool()?,
    };
    let timeout = match f.get("timeout") {
        None => ClientTimeout { connect: 10, request: 300, idle: 60 },
        Some(n) => {
            let t = n.fields(&["connect", "request", "idle"])?;
            ClientTimeout {
                connect: t.u64_or("connect", 10, 1..=120)?,
                request: t.u64_or("request", 300, 1..=1200)?,
                idle: t.u64_or("idle", 60, 5..=1800)?,
            }
        }
    };
    let retry = match f.get("retry") {
        None => None,
        Some(n) => {
            let r = n.fields(&["enabled", "attempts", "initial"])?;
            let enabled = r.bool_or("enabled", true)?;
            let attempts = r.u64_or_if_on(enabled, "attempts", 3, 1..=100)? as u32;
            let initial = r.u64_or_if_on(enabled, "initial", 500, 100..=10_000)?;
            enabled.then_some(Retry { attempts, initial })
        }
    };
    let proxy = match f.get("proxy") {
        None => None,
        Some(n) => {
            let p = n.fields(&["enabled", "url"])?;
            let url = p.string_or("url", "")?;
            // LLMProxy files carry `proxy: {enabled: false, url: ""}`; that means no proxy.
            let enabled = p.bool_or("enabled", !url.is_empty())?;
            if enabled {
                let url_node = p.require("url")?;
                // The proxy itself is spoken to in plain TCP (what is tunnelled to an https
                // upstream stays TLS end to end): an `https://` proxy would get its CONNECT, and
                // the credentials in it, in the clear.
                check_http_url(&url_node, &url, &["http", "socks5", "socks5h"])?;
                Some(OutboundProxy { url })
            } else {
                None
            }
        }
    };
    let sse_keepalive = match f.get("sse_keepalive") {
        None => None,
        Some(n) => {
            let every = n.u64_in(1..=3600)?;
            // The comments fill silences shorter than timeout.request, which ends the stream
            // (or the whole answer) first: a longer interval would never send one.
            if every >= timeout.request {
                return Err(n.error(format!(
                    "must be shorter than timeout.request ({}s), which would end a silent stream before the first keep-alive",
                    timeout.request
                )));
            }
            Some(every)
        }
    };
    Ok(HttpClient {
        agent,
        keepalive: f.u64_or("keepalive", 60, 0..=600)?,
        stream,
        timeout,
        retry,
        proxy,
        track_usage: f.bool_or("track_usage", false)?,
        sse_keepalive,
    })
}
