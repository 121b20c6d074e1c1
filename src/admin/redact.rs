//! Secrets never leave the process: API responses show them as `"***"`, and a `"***"` sent back
//! (a GET → edit → PUT round trip) means "keep the current value".

use crate::sensitive::{is_sensitive_name, MASK};
use serde_json::Value;

/// The credentials in a URL masked: the password (`user:***@`), a user name standing alone (a
/// token used as one: `***@`), and the values of credential-like query parameters (`?key=***`).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => format!("{MASK}@{host}"),
        },
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let Some(query) = query else { return format!("{scheme}://{authority}{path}") };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, format!("#{f}")),
        None => (query, String::new()),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_sensitive_name(name) => format!("{name}={MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{scheme}://{authority}{path}?{}{fragment}", pairs.join("&"))
}

/// Masks the secrets of an upstream, group or forward rendered as JSON: credentials (`token`,
/// `password`, client `key`s), those in URLs (see [`mask_url`]), and header-op values of
/// credential-like headers (`x-api-key`, `Authorization`, …).
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("op") {
                // A header op: its `key` is the header's name, its `value` may be a credential.
                if map.get("key").and_then(Value::as_str).is_some_and(is_sensitive_name) {
                    if let Some(value) = map.get_mut("value") {
                        *value = Value::String(MASK.into());
                    }
                }
                return;
            }
            for (k, child) in map.iter_mut() {
                match (k.as_str(), &mut *child) {
                    ("token" | "password" | "key", Value::String(_)) => *child = Value::String(MASK.into()),
                    ("url", Value::String(u)) => *child = Value::String(mask_url(u)),
                    // A route's header conditions, `{name: glob}`: a glob on a credential header
                    // is most of a credential.
                    ("headers", Value::Object(conditions)) => {
                        for (name, glob) in conditions.iter_mut() {
                            if is_sensitive_name(name) {
                                *glob = Value::String(MASK.into());
                            }
                        }
                    }
                    _ => redact(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Puts back current secrets wherever `new` carries the masked form of the value `old` has at
/// the same place — unless the object holding them now has another `url`: a secret is kept for
/// where it was sent, never carried to a new destination (an API caller who could read only the
/// masked form would otherwise have the proxy send the real key to a host of their choosing). List items are matched by what names them — a header operation by its
/// header, anything else by its `name` — so removing or reordering items cannot put one item's
/// secret into another; items that name nothing are matched by position. A masked value with no
/// counterpart is an error: it would otherwise be sent upstream as the literal `***`.
pub fn restore(new: &mut Value, old: &Value) -> Result<(), String> {
    restore_at(new, Some(old), "")
}

fn restore_at(new: &mut Value, old: Option<&Value>, path: &str) -> Result<(), String> {
    match new {
        Value::Object(n) => {
            let url = |o: &serde_json::Map<String, Value>| o.get("url").and_then(Value::as_str).map(str::to_string);
            if let (Some(to), Some(from)) = (url(n), old.and_then(Value::as_object).and_then(url)) {
                if to != from && to != mask_url(&from) {
                    if let Some(at) = masked_in(new, path) {
                        return Err(format!(
                            "{at}: \"{MASK}\" keeps a secret only while the url stays the same; send the value \
                             with the new url"
                        ));
                    }
                    return Ok(());
                }
            }
            let Value::Object(n) = new else { return Ok(()) };
            for (k, child) in n.iter_mut() {
                let prev = old.and_then(|o| o.get(k));
                restore_at(child, prev, &format!("{path}.{k}"))?;
            }
        }
        Value::Array(items) => {
            let olds = old.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for i in 0..items.len() {
                // The n-th item with a name matches the n-th old one with it (two operations
                // on one header keep their own values).
                let id = identity(&items[i]);
                let prev = match &id {
                    Some(id) => {
                        let nth = items[..i].iter().filter(|x| identity(x).as_ref() == Some(id)).count();
                        olds.iter().filter(|o| identity(o).as_ref() == Some(id)).nth(nth)
                    }
                    None => olds.get(i),
                };
                restore_at(&mut items[i], prev, &format!("{path}[{i}]"))?;
            }
        }
        Value::String(n) if n.contains(MASK) => match old {
            Some(Value::String(o)) if *n == MASK || (*n == mask_url(o) && n != o) => *n = o.clone(),
            // A literal `***` inside some other text (a model glob, say) is that text.
            _ if *n != MASK && !n.contains("://") => {}
            _ => {
                let at = path.trim_start_matches('.');
                return Err(format!(
                    "{at}: \"{MASK}\" stands for a secret, but there is none to keep here; send the value"
                ));
            }
        },
        _ => {}
    }
    Ok(())
}

/// The path of the first masked value in `v`, if any.
fn masked_in(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::Object(o) => o.iter().find_map(|(k, child)| masked_in(child, &format!("{path}.{k}"))),
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, child)| masked_in(child, &format!("{path}[{i}]")))
        }
        Value::String(s) if s == MASK || (s.contains(MASK) && s.contains("://")) => {
            Some(path.trim_start_matches('.').to_string())
        }
        _ => None,
    }
}

/// What names a list item: a header operation's header (case-insensitive), else its `name`.
fn identity(item: &Value) -> Option<String> {
    if item.get("op").is_some() {
        return item.get("key").and_then(Value::as_str).map(|k| format!("header {}", k.to_ascii_lowercase()));
    }
    item.get("name").and_then(Value::as_str).map(|n| format!("name {n}"))
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
        restore(&mut back, &original).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn secrets_are_kept_only_for_the_url_they_were_sent_to() {
        let current = json!({
            "name": "u", "url": "https://bob:pw@api.example.com/v1",
            "auth": {"type": "bearer", "token": "sk-1"},
            "headers": [{"op": "replace", "key": "x-api-key", "value": "k-2"}]
        });
        let mut shown = current.clone();
        redact(&mut shown);
        // Another path on the same host is another destination too.
        for url in ["https://evil.example/v1", "https://bob:***@evil.example/v1", "https://api.example.com/v2"] {
            let mut moved = shown.clone();
            moved["url"] = json!(url);
            let why = restore(&mut moved, &current).unwrap_err();
            assert!(why.contains("only while the url stays the same"), "{url}: {why}");
        }
        // Secrets sent anew go with the new url.
        let mut moved =
            json!({"name": "u", "url": "https://evil.example/v1", "auth": {"type": "bearer", "token": "sk-new"}});
        restore(&mut moved, &current).unwrap();
        assert_eq!(moved["auth"]["token"], "sk-new");
        // The url as shown (its password masked) is the same url.
        let mut same = shown.clone();
        restore(&mut same, &current).unwrap();
        assert_eq!(same, current);
    }

    #[test]
    fn two_operations_on_one_header_keep_their_own_secrets() {
        let original = json!({"headers": [
            {"op": "insert", "key": "x-api-key", "value": "first"},
            {"op": "replace", "key": "x-api-key", "value": "second"}
        ]});
        let mut shown = original.clone();
        redact(&mut shown);
        restore(&mut shown, &original).unwrap();
        assert_eq!(shown, original);
    }

    #[test]
    fn urls_keep_their_shape_and_lose_their_credentials() {
        for (url, shown) in [
            ("https://g.example/v1beta?key=AIza-1&alt=sse", "https://g.example/v1beta?key=***&alt=sse"),
            ("https://a.example/x?sv=1&sig=abc%2F#top", "https://a.example/x?sv=1&sig=***#top"),
            ("https://sk-live-2@h.example/v1", "https://***@h.example/v1"),
            ("http://u:p@h.example?api_key=3", "http://u:***@h.example?api_key=***"),
            ("https://plain.example/v1?model=m", "https://plain.example/v1?model=m"),
        ] {
            assert_eq!(mask_url(url), shown);
            let mut back = json!({"url": shown});
            restore(&mut back, &json!({"url": url})).unwrap();
            assert_eq!(back["url"], url, "a GET → PUT round trip keeps {url}");
        }
        // A masked URL that is not the current one's masked form cannot be guessed back.
        let err = restore(&mut json!({"url": "https://***@other.example"}), &json!({"url": "https://t@h.example"}));
        assert!(err.is_err());
        // Text that merely contains the mask is text.
        let mut glob = json!({"model": "gpt-***"});
        restore(&mut glob, &json!({})).unwrap();
        assert_eq!(glob["model"], "gpt-***");
    }

    #[test]
    fn list_items_get_back_their_own_secrets_and_a_lone_mask_is_refused() {
        let original = json!({"headers": [
            {"op": "insert", "key": "x-trace", "value": "on"},
            {"op": "insert", "key": "x-api-key", "value": "k-2"}
        ]});
        // x-trace removed: the masked x-api-key is now first, and must get its own value.
        let mut edited = json!({"headers": [{"op": "insert", "key": "X-Api-Key", "value": "***"}]});
        restore(&mut edited, &original).unwrap();
        assert_eq!(edited["headers"][0]["value"], "k-2");
        let mut unknown = json!({"headers": [{"op": "insert", "key": "authorization", "value": "***"}]});
        let err = restore(&mut unknown, &original).unwrap_err();
        assert!(err.starts_with("headers[0].value: "), "{err}");
    }
}
