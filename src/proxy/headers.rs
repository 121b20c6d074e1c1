//! Header rules between client and upstream.
//!
//! Hop-by-hop headers describe one connection and must not cross the proxy (RFC 9110 §7.6.1).
//! Credentials: an upstream with `auth` gets exactly its own `Authorization` (the client's is
//! replaced, never duplicated — LLMProxy sent both); an upstream with `auth: none` receives the
//! client's, so pass-through setups keep working.

use crate::upstream::Upstream;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::PROXY_AUTHORIZATION || name == header::PROXY_AUTHENTICATE
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present is cheaper than a hash
    // lookup for each of the nine that might be.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
}

pub struct ForwardedFor<'a> {
    /// The client's address, formatted.
    pub client: &'a HeaderValue,
    /// "http" or "https": how the client reached us.
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    pub agent: &'a HeaderValue,
}

/// Rewrites the client's headers, in place, into the upstream request's headers.
pub fn to_upstream(headers: &mut HeaderMap, upstream: &Upstream, fwd: &ForwardedFor) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    // The body is buffered (and may be rewritten, e.g. by track_usage): its length is set from
    // what is actually sent, never copied from the client.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::HOST, fwd.host.clone());
    append_forwarded_for(headers, fwd.client);
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(fwd.proto));
    headers.insert(header::USER_AGENT, fwd.agent.clone());
    apply_upstream_headers(headers, upstream);
}

/// The upstream's own credentials, then its header ops (also used by active health checks).
pub fn apply_upstream_headers(headers: &mut HeaderMap, upstream: &Upstream) {
    if let Some(auth) = &upstream.authorization {
        // `insert` replaces every existing value: exactly one Authorization reaches the upstream.
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    for op in &upstream.header_ops {
        use crate::config::HeaderOpKind::*;
        match (op.kind, &op.value) {
            (Insert, Some(v)) => {
                if !headers.contains_key(&op.name) {
                    headers.insert(op.name.clone(), v.clone());
                }
            }
            (Replace, Some(v)) => {
                headers.insert(op.name.clone(), v.clone());
            }
            (Remove, _) => {
                headers.remove(&op.name);
            }
            (_, None) => {}
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    use hyper::header::Entry;
    match headers.entry(X_FORWARDED_FOR) {
        // The common case: the address alone, already formatted for the connection.
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        Entry::Occupied(mut e) => {
            let mut joined = Vec::new();
            for prior in e.iter() {
                joined.extend_from_slice(prior.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                e.insert(v);
            }
        }
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

    fn rewrite(h: &mut HeaderMap, u: &Upstream) {
        let agent = HeaderValue::from_static("LLMProxy/1.0");
        to_upstream(
            h,
            u,
            &ForwardedFor {
                client: &HeaderValue::from_static("10.0.0.7"),
                proto: "http",
                host: &HeaderValue::from_static("api.example.com"),
                agent: &agent,
            },
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
        assert_eq!(h["x-forwarded-for"], "10.0.0.7", "without a prior value: the client address alone");
        assert_eq!(h["x-present"], "client");
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
}
