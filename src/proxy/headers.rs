//! Header rules between client and upstream.
//!
//! Hop-by-hop headers describe one connection and must not cross the proxy (RFC 9110 §7.6.1).
//! Credentials: an upstream with `auth` gets exactly its own `Authorization` (the client's is
//! replaced, never duplicated — LLMProxy sent both); an upstream with `auth: none` receives the
//! client's, so pass-through setups keep working.

use crate::fields::{name_is, Fields};
use crate::http1::MAX_LISTED;
use crate::upstream::Upstream;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether `name` is hop-by-hop by definition (RFC 9110 §7.6.1; `Connection` may name more).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    ];
    // The comparison looks at the lengths first: most names are done after nine of those.
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Whether the proxy sets `name` itself, replacing what the client sent.
fn set_by_proxy(name: &[u8]) -> bool {
    const SET: [&[u8]; 5] = [b"host", b"content-length", b"user-agent", b"accept-encoding", b"x-forwarded-proto"];
    SET.iter().any(|set| name.eq_ignore_ascii_case(set))
}

/// Removes an answer's hop-by-hop headers, including those the `Connection` header names, and
/// a `Content-Length` beside a `Transfer-Encoding`: the coding framed the body, and the length
/// must not reach the client (RFC 9112 §6.3), where it would cut or stall the relayed body.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop_by_hop = |name: &HeaderName| is_hop_by_hop(name.as_str().as_bytes());
    // Most messages carry none: one pass over the few names present is cheaper than a hash
    // lookup for each of the nine that might be.
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
    let hop: Vec<HeaderName> = named.chain(headers.keys().filter(|n| hop_by_hop(n)).cloned()).collect();
    for name in &hop {
        headers.remove(name);
    }
}

pub struct ForwardedFor<'a> {
    /// The client's address, formatted.
    pub client: &'a HeaderValue,
    /// "http" or "https": how the client reached us.
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    pub agent: &'a HeaderValue,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The upstream request's headers — the client's, rewritten — handed to `emit` one by one, in
/// a single pass and without building a header map (the plain-HTTP client writes them straight
/// into its buffer). The rules, in the order they apply:
/// - hop-by-hop headers (and those `Connection` names), `Host` and `Content-Length` are not
///   forwarded (the body's length is set from what is actually sent);
/// - the proxy sets `Host` (the upstream's), `X-Forwarded-For` (prior values, then the
///   client's address, in one value), `X-Forwarded-Proto`, `User-Agent`, `Accept-Encoding:
///   identity` (the proxy reads token usage from answers, which it cannot in compressed ones;
///   LLM answers are small), and — when the upstream has `auth` — `Authorization`, replacing
///   every value the client sent;
/// - when the proxy supplies the upstream's credentials, none of the client's (`Authorization`,
///   `x-api-key`, `api-key`, `x-goog-api-key`) is forwarded;
/// - then the upstream's header operations apply, as planned at load time.
pub fn for_each_upstream_header(
    client: &Fields,
    upstream: &Upstream,
    fwd: &ForwardedFor,
    emit: &mut dyn FnMut(&[u8], &[u8]),
) {
    let plan = &upstream.header_plan;
    // Which planned names the request has had so far (only allocated when there is a plan).
    let mut present = vec![false; plan.len()];
    // A planned name takes its planned value, once, where it first appears.
    let mut apply = |name: &[u8], value: &[u8], emit: &mut dyn FnMut(&[u8], &[u8])| {
        let Some(i) = plan.iter().position(|p| name_is(name, &p.name)) else { return emit(name, value) };
        if !std::mem::replace(&mut present[i], true) {
            if let Some(v) = &plan[i].value {
                emit(name, v.as_bytes());
            }
        }
    };
    // The headers `Connection` names beyond the hop-by-hop ones (rare: clients send
    // `keep-alive` or `close`), gathered once so that a long list costs one pass, not one per
    // field; names beyond the first `MAX_LISTED` are forwarded.
    let mut listed: [&[u8]; MAX_LISTED] = [&[]; MAX_LISTED];
    let mut count = 0;
    let names =
        connection_tokens(client).filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(t));
    for (slot, name) in listed.iter_mut().zip(names) {
        *slot = name;
        count += 1;
    }
    let listed = &listed[..count];
    let mut prior_forwarded_for = false;
    for (name, value) in client.iter() {
        if is_hop_by_hop(name)
            || set_by_proxy(name)
            || (upstream.supplies_credentials && crate::upstream::is_credential(name))
            || listed.iter().any(|t| t.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if name_is(name, &X_FORWARDED_FOR) {
            prior_forwarded_for = true;
            continue;
        }
        apply(name, value, emit);
    }
    apply(b"host", fwd.host.as_bytes(), emit);
    if prior_forwarded_for {
        let mut joined = Vec::new();
        for prior in client.get_all(&X_FORWARDED_FOR) {
            joined.extend_from_slice(prior);
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(fwd.client.as_bytes());
        apply(b"x-forwarded-for", &joined, emit);
    } else {
        apply(b"x-forwarded-for", fwd.client.as_bytes(), emit);
    }
    apply(b"x-forwarded-proto", fwd.proto.as_bytes(), emit);
    apply(b"user-agent", fwd.agent.as_bytes(), emit);
    apply(b"accept-encoding", b"identity", emit);
    if let Some(auth) = &upstream.authorization {
        apply(b"authorization", auth.as_bytes(), emit);
    }
    for (p, seen) in plan.iter().zip(&present) {
        if let (false, Some(v)) = (seen, &p.value) {
            emit(p.name.as_str().as_bytes(), v.as_bytes());
        }
    }
}

/// The upstream request's headers as a map (for hyper's client).
pub fn upstream_headers(client: &Fields, upstream: &Upstream, fwd: &ForwardedFor) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.iter().count() + 5);
    for_each_upstream_header(client, upstream, fwd, &mut |name, value| {
        // Every field was checked where it was read (hyper's parser, `httparse`, the config).
        if let (Ok(name), Ok(mut value)) = (crate::http1::header_name(name), HeaderValue::from_bytes(value)) {
            // Credentials are never put in HTTP/2's header compression table.
            value.set_sensitive(name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION);
            headers.append(name, value);
        }
    });
    headers
}

/// The header names (and options) the client's `Connection` fields list: hop-by-hop too.
fn connection_tokens(client: &Fields) -> impl Iterator<Item = &[u8]> {
    client.get_all(&header::CONNECTION).flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

/// The upstream's own credentials, then its header operations, applied to a request built by
/// the proxy itself (active health checks).
pub fn apply_upstream_headers(headers: &mut HeaderMap, upstream: &Upstream) {
    if let Some(auth) = &upstream.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    for p in &upstream.header_plan {
        match &p.value {
            None => headers.remove(&p.name),
            Some(v) => headers.insert(p.name.clone(), v.clone()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, HeaderOp, HeaderOpKind, Upstream as UpCfg};

    fn upstream(auth: Auth, ops: Vec<HeaderOp>) -> Upstream {
        Upstream::compile(&UpCfg {
            name: "u".into(),
            url: "https://api.example.com/v1".into(),
            auth,
            headers: ops,
            breaker: None,
            ratelimit: None,
            weight: 1,
            max_concurrency: None,
            health_check: None,
            mock: None,
        })
        .unwrap()
    }

    fn forwarded(agent: &HeaderValue) -> ForwardedFor<'_> {
        static CLIENT: HeaderValue = HeaderValue::from_static("10.0.0.7");
        static HOST: HeaderValue = HeaderValue::from_static("api.example.com");
        ForwardedFor { client: &CLIENT, proto: "http", host: &HOST, agent }
    }

    /// Rewrites `h` as a request read by hyper (a map), and checks that the same request read
    /// from the wire comes out the same.
    fn rewrite(h: &mut HeaderMap, u: &Upstream) {
        let agent = HeaderValue::from_static("LLMProxy/1.0");
        let text: String = h.iter().map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap())).collect();
        let from_map = upstream_headers(&Fields::Map(h.clone()), u, &forwarded(&agent));
        let from_wire = upstream_headers(&crate::fields::wire(&text), u, &forwarded(&agent));
        assert_eq!(from_map, from_wire, "the same rewrite whichever way the request was read");
        *h = from_map;
    }

    #[test]
    fn names_from_the_wire_match_in_any_case() {
        let agent = HeaderValue::from_static("LLMProxy/1.0");
        let client = crate::fields::wire(
            "HOST: proxy.local\r\nConnection: X-Private\r\nX-PRIVATE: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\
             Authorization: Bearer client\r\nContent-Length: 2\r\nX-Keep: Yes\r\n",
        );
        let mut sent = Vec::new();
        let u = upstream(Auth::Bearer { token: "sk-up".into() }, vec![]);
        for_each_upstream_header(&client, &u, &forwarded(&agent), &mut |n, v| {
            sent.push(format!("{}: {}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
        });
        assert_eq!(
            sent,
            [
                "X-Keep: Yes",
                "host: api.example.com",
                "x-forwarded-for: 1.2.3.4, 10.0.0.7",
                "x-forwarded-proto: http",
                "user-agent: LLMProxy/1.0",
                "accept-encoding: identity",
                "authorization: Bearer sk-up",
            ]
        );
    }

    #[test]
    fn strips_hop_by_hop_and_sets_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert(header::HOST, HeaderValue::from_static("proxy.local"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        rewrite(&mut h, &upstream(Auth::None, vec![]));
        for gone in ["connection", "x-private", "keep-alive", "te", "upgrade", "proxy-authorization"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h[header::HOST], "api.example.com");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h[header::USER_AGENT], "LLMProxy/1.0");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn auth_replaces_client_authorization_and_ops_apply_after() {
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer client-key"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer second"));
        h.insert("x-present", HeaderValue::from_static("client"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        let ops = vec![
            HeaderOp { op: HeaderOpKind::Insert, key: "x-present".into(), value: Some("proxy".into()) },
            HeaderOp { op: HeaderOpKind::Insert, key: "x-absent".into(), value: Some("proxy".into()) },
            HeaderOp { op: HeaderOpKind::Replace, key: "x-new".into(), value: Some("set".into()) },
            HeaderOp { op: HeaderOpKind::Remove, key: "x-drop".into(), value: None },
        ];
        rewrite(&mut h, &upstream(Auth::Bearer { token: "sk-up".into() }, ops));
        let auths: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(auths, vec!["Bearer sk-up"]);
        assert!(auths[0].is_sensitive(), "credentials stay out of HTTP/2 header compression");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7", "without a prior value: the client address alone");
        assert_eq!(h["x-present"], "proxy", "insert overwrites, as LLMProxy's did");
        assert_eq!(h["x-absent"], "proxy");
        assert_eq!(h["x-new"], "set");
        assert!(!h.contains_key("x-drop"));

        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client-key"));
        rewrite(&mut h, &upstream(Auth::Basic { username: "u".into(), password: "p".into() }, vec![]));
        assert_eq!(h[header::AUTHORIZATION], "Basic dTpw");

        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer passthrough"));
        rewrite(&mut h, &upstream(Auth::None, vec![]));
        assert_eq!(h[header::AUTHORIZATION], "Bearer passthrough");
    }

    #[test]
    fn no_client_credential_reaches_an_upstream_whose_credentials_the_proxy_sets() {
        let client = || {
            let mut h = HeaderMap::new();
            for (name, value) in [
                ("authorization", "Bearer sk-client"),
                ("x-api-key", "sk-ant-client"),
                ("api-key", "azure-client"),
                ("x-goog-api-key", "g"),
            ] {
                h.insert(name, HeaderValue::from_static(value));
            }
            h
        };
        let sent = |u: &Upstream| {
            let mut h = client();
            rewrite(&mut h, u);
            ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
                .map(|n| h.get(n).map(|v| v.to_str().unwrap().to_string()))
        };
        let replace =
            |key: &str, value: &str| HeaderOp { op: HeaderOpKind::Replace, key: key.into(), value: Some(value.into()) };
        let insert =
            |key: &str, value: &str| HeaderOp { op: HeaderOpKind::Insert, key: key.into(), value: Some(value.into()) };
        let own = |v: &str| Some(v.to_string());
        assert_eq!(
            sent(&upstream(Auth::Bearer { token: "sk-up".into() }, vec![])),
            [own("Bearer sk-up"), None, None, None]
        );
        // Anthropic, as the README sets it up: the proxy's key in x-api-key, nothing of the client's.
        assert_eq!(
            sent(&upstream(Auth::None, vec![replace("x-api-key", "sk-ant-up")])),
            [None, own("sk-ant-up"), None, None]
        );
        // LLMProxy's own Anthropic example writes `insert`: the same, whatever key the client sent.
        assert_eq!(
            sent(&upstream(Auth::None, vec![insert("api-key", "azure-up")])),
            [None, None, own("azure-up"), None]
        );
        // The client's credentials pass only where the proxy sets none.
        let passthrough = [own("Bearer sk-client"), own("sk-ant-client"), own("azure-client"), own("g")];
        assert_eq!(sent(&upstream(Auth::None, vec![])), passthrough);
    }

    #[test]
    fn a_long_connection_list_is_honoured_up_to_its_limit() {
        let names: Vec<String> = (0..=MAX_LISTED).map(|i| format!("x-hop-{i}")).collect();
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_str(&format!("close, {}", names.join(", "))).unwrap());
        for name in &names {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        rewrite(&mut h, &upstream(Auth::None, vec![]));
        let (honoured, beyond) = names.split_at(MAX_LISTED);
        assert!(honoured.iter().all(|n| !h.contains_key(n.as_str())), "listed: hop-by-hop");
        assert!(h.contains_key(beyond[0].as_str()), "beyond the limit: forwarded");
    }

    #[test]
    fn operations_also_apply_to_what_the_proxy_sets_and_what_it_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let ops = vec![
            HeaderOp { op: HeaderOpKind::Remove, key: "user-agent".into(), value: None },
            HeaderOp { op: HeaderOpKind::Replace, key: "x-forwarded-for".into(), value: Some("hidden".into()) },
            HeaderOp { op: HeaderOpKind::Insert, key: "te".into(), value: Some("trailers".into()) },
            HeaderOp { op: HeaderOpKind::Replace, key: "x-multi".into(), value: Some("one".into()) },
        ];
        rewrite(&mut h, &upstream(Auth::None, ops));
        assert!(!h.contains_key(header::USER_AGENT));
        assert_eq!(h["x-forwarded-for"], "hidden");
        assert_eq!(h[header::TE], "trailers", "the client's TE was stripped, then the insert applied");
        assert_eq!(h.get_all("x-multi").iter().collect::<Vec<_>>(), ["one"], "replace leaves exactly one value");
        assert_eq!(h[header::HOST], "api.example.com");
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-conn-only"));
        h.insert("x-conn-only", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"], "a length beside chunked goes too");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "12", "a length alone stays");
    }
}
