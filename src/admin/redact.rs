//! Secrets never leave the process: API responses show them as `"***"`, and a `"***"` sent back
//! (a GET → edit → PUT round trip) means "keep the current value".

use serde_json::Value;

pub const MASK: &str = "***";

/// Header names whose values are credentials in practice.
fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "password", "cookie"].iter().any(|w| n.contains(w))
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
pub fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:{MASK}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Masks the secrets of an upstream, group or forward rendered as JSON: credentials (`token`,
/// `password`, client `key`s), the password in URLs, and header-op values of credential-like
/// headers (`x-api-key`, `Authorization`, …).
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("op") {
                // A header op: its `key` is the header's name, its `value` may be a credential.
                if map.get("key").and_then(Value::as_str).is_some_and(is_sensitive_header) {
                    if let Some(value) = map.get_mut("value") {
                        *value = Value::String(MASK.into());
                    }
                }
                return;
            }
            for (k, child) in map.iter_mut() {
                match (k.as_str(), &*child) {
                    ("token" | "password" | "key", Value::String(_)) => *child = Value::String(MASK.into()),
                    ("url", Value::String(u)) => *child = Value::String(mask_userinfo(u)),
                    _ => redact(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Puts back current secrets wherever `new` carries the masked form of the value `old` has at
/// the same place.
pub fn restore(new: &mut Value, old: &Value) {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            for (k, child) in n.iter_mut() {
                if let Some(prev) = o.get(k) {
                    restore(child, prev);
                }
            }
        }
        (Value::Array(n), Value::Array(o)) => {
            for (child, prev) in n.iter_mut().zip(o) {
                restore(child, prev);
            }
        }
        (Value::String(n), Value::String(o)) if n == MASK || (n.contains(MASK) && *n == mask_userinfo(o)) => {
            *n = o.clone();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_credentials_and_restores_them() {
        let original = json!({
            "name": "u", "url": "https://bob:hunter2@api.example.com/v1",
            "auth": {"type": "bearer", "token": "sk-1"},
            "headers": [{"op": "insert", "key": "x-api-key", "value": "k-2"}, {"op": "insert", "key": "x-trace", "value": "on"}],
            "http_client": {"proxy": {"url": "socks5://al:pw@127.0.0.1:1080"}}
        });
        let mut shown = original.clone();
        redact(&mut shown);
        let text = shown.to_string();
        for secret in ["sk-1", "hunter2", "k-2", ":pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(shown["headers"][0]["key"], "x-api-key");
        assert_eq!(shown["headers"][1]["value"], "on");
        assert_eq!(shown["url"], "https://bob:***@api.example.com/v1");
        let mut back = shown.clone();
        restore(&mut back, &original);
        assert_eq!(back, original);
    }
}
