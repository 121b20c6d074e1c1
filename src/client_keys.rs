//! Client API keys of a forward (`auth.keys`): who may use the gateway, and how fast.
//!
//! A request presents its key as `Authorization: Bearer <key>` or `x-api-key: <key>` (what the
//! OpenAI and Anthropic SDKs send). The key is found by its keyed fingerprint — no scan over all
//! keys, and no comparison of the secret's own bytes but the final constant-time one — so lookup
//! timing tells an attacker nothing about a guess. Every credential header that carries the key
//! is removed before the request goes upstream, and only the key's *name* appears in metrics
//! and logs.

use crate::admin::constant_time_eq;
use crate::config::ForwardAuth;
use crate::fields::{text, Fields};
use crate::metrics::Counter;
use crate::ratelimit::Gcra;
use hyper::header::{HeaderName, AUTHORIZATION};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

pub struct ClientKey {
    pub name: Arc<str>,
    secret: Box<[u8]>,
    limiter: Option<(Gcra, AtomicU64)>,
    /// Requests authenticated with this key (kept across runtime swaps by name).
    pub requests: Arc<Counter>,
}

pub struct ClientKeys {
    /// Keys by the fingerprint of their secret ([`crate::sensitive::fingerprint`]): two keys of
    /// one forward sharing one (odds about 2^-64 per pair) would leave the second unreachable.
    by_fingerprint: HashMap<u64, usize>,
    pub keys: Vec<ClientKey>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    /// The key is over its own rate limit; nanoseconds to wait.
    RateLimited(u64),
}

impl ClientKeys {
    pub fn compile(cfg: &ForwardAuth, previous: Option<&ClientKeys>) -> Self {
        let now = crate::clock::now();
        let keys: Vec<ClientKey> = cfg
            .keys
            .iter()
            .map(|k| {
                // A key kept across a change keeps its count and what it owes its rate limit.
                let old = previous.and_then(|p| p.keys.iter().find(|old| *old.name == *k.name));
                let owed = old.and_then(|o| o.limiter.as_ref());
                ClientKey {
                    name: k.name.as_str().into(),
                    secret: k.key.as_bytes().into(),
                    limiter: k.ratelimit.as_ref().map(|r| Gcra::with_state(r.per_second, r.burst, owed, now)),
                    requests: old.map(|o| o.requests.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let by_fingerprint =
            cfg.keys.iter().enumerate().map(|(i, k)| (crate::sensitive::fingerprint(&k.key), i)).collect();
        ClientKeys { by_fingerprint, keys }
    }

    /// Authenticates the request at `now` and removes every credential header carrying its key.
    pub fn admit(&self, headers: &mut Fields, now: u64) -> Result<&ClientKey, Refusal> {
        let key = {
            let bearer = headers.get(&AUTHORIZATION).and_then(text).and_then(bearer_token);
            let api_key = headers.get(&X_API_KEY).and_then(text).map(str::trim);
            if bearer.is_none() && api_key.is_none() {
                return Err(Refusal::Missing);
            }
            let found = [bearer, api_key].into_iter().flatten().find_map(|presented| {
                let i = *self.by_fingerprint.get(&crate::sensitive::fingerprint(presented))?;
                constant_time_eq(presented.as_bytes(), &self.keys[i].secret).then_some(&self.keys[i])
            });
            found.ok_or(Refusal::Unknown)?
        };
        // Never forwarded, in whichever credential header it also came (`api-key`, a second
        // scheme): the upstream's own credentials (and header ops) apply next.
        for name in &crate::upstream::CREDENTIAL_HEADERS {
            if headers.get_all(name).any(|v| carries(v, &key.secret)) {
                headers.remove(name);
            }
        }
        if let Some((gcra, tat)) = &key.limiter {
            gcra.check(tat, now).map_err(Refusal::RateLimited)?;
        }
        key.requests.inc();
        Ok(key)
    }
}

/// Whether a credential header's value is `key`, alone or after a scheme (`Bearer key`, `Token
/// key`): not merely somewhere inside, which would take a short key for part of another one.
fn carries(value: &[u8], key: &[u8]) -> bool {
    let value = value.trim_ascii();
    match value.strip_suffix(key) {
        Some(before) => before.is_empty() || before.ends_with(b" "),
        None => false,
    }
}

/// The credential of an `Authorization: Bearer …` value; the scheme name is case-insensitive
/// (RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientKey as Cfg, UpstreamRateLimit};
    use hyper::header::HeaderValue;

    fn keys() -> ClientKeys {
        ClientKeys::compile(
            &ForwardAuth {
                keys: vec![
                    Cfg {
                        name: "team-a".into(),
                        key: "sk-team-a".into(),
                        ratelimit: Some(UpstreamRateLimit { per_second: 1, burst: 1 }),
                    },
                    Cfg { name: "team-b".into(), key: "sk-team-b".into(), ratelimit: None },
                ],
            },
            None,
        )
    }

    /// The fields as hyper's map, and as read from the wire: both must behave the same.
    fn both(pairs: &[(&'static str, &'static str)]) -> [Fields; 2] {
        let map = pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v)))
            .collect();
        let text: String = pairs.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        [Fields::Map(map), crate::fields::wire(&text)]
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Fields {
        let [_, wire] = both(pairs);
        wire
    }

    #[test]
    fn bearer_or_x_api_key_and_the_header_is_removed() {
        let k = keys();
        for mut h in both(&[("Authorization", "Bearer sk-team-b"), ("x-other", "1")]) {
            assert_eq!(&*k.admit(&mut h, 0).unwrap().name, "team-b");
            assert!(!h.contains(&AUTHORIZATION));
            assert_eq!(h.iter().collect::<Vec<_>>(), [(&b"x-other"[..], &b"1"[..])]);
        }
        for mut h in both(&[("x-api-key", "sk-team-b")]) {
            assert_eq!(&*k.admit(&mut h, 0).unwrap().name, "team-b");
            assert!(!h.contains(&X_API_KEY));
        }
        assert_eq!(k.keys[1].requests.get(), 4);
        // Sent in another credential header as well, it goes no further either; another key
        // beside it is not the gateway's to remove.
        let others =
            [("authorization", "Bearer sk-team-b"), ("api-key", "sk-team-b"), ("x-api-key", "sk-up-sk-team-b")];
        for mut h in both(&others) {
            assert_eq!(&*k.admit(&mut h, 0).unwrap().name, "team-b");
            assert!(!h.contains(&AUTHORIZATION) && !h.contains(&HeaderName::from_static("api-key")));
            assert_eq!(h.iter().collect::<Vec<_>>(), [(&b"x-api-key"[..], &b"sk-up-sk-team-b"[..])]);
        }
        // The scheme name is case-insensitive.
        for value in ["bearer sk-team-b", "BEARER sk-team-b"] {
            let mut h = headers(&[("authorization", value)]);
            assert_eq!(&*k.admit(&mut h, 0).unwrap().name, "team-b", "{value}");
            assert!(!h.contains(&AUTHORIZATION));
        }
    }

    #[test]
    fn refusals() {
        let k = keys();
        assert_eq!(k.admit(&mut Fields::default(), 0).err(), Some(Refusal::Missing));
        assert_eq!(k.admit(&mut headers(&[("authorization", "Bearer sk-wrong")]), 0).err(), Some(Refusal::Unknown));
        assert_eq!(k.admit(&mut headers(&[("authorization", "Basic c2s=")]), 0).err(), Some(Refusal::Missing));
        let t = 10_000_000_000;
        assert!(k.admit(&mut headers(&[("x-api-key", "sk-team-a")]), t).is_ok());
        assert!(matches!(k.admit(&mut headers(&[("x-api-key", "sk-team-a")]), t), Err(Refusal::RateLimited(_))));
    }
}
