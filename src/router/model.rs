//! Extracting the top-level `"model"` string of a JSON body without building a DOM.
//!
//! The scanner walks the top-level object's keys and skips every value but the one under
//! `model`, so a 30 MiB body of images costs one pass and no allocation (unless the model name
//! itself contains escapes). Anything that is not a JSON object, or has no string `model`, yields
//! `None`: such a request simply matches no model rule.

use crate::json_scan::{key_is, Scanner};
use std::borrow::Cow;

/// The `model` of a request, as the upstream will read it: the last top-level `model` key wins
/// (as in Python's, Go's and serde's JSON decoders) and keys written with escapes count, so a
/// request cannot be routed by one model and served by another.
pub fn extract(body: &[u8]) -> Option<Cow<'_, str>> {
    let mut model = None;
    let mut s = Scanner::new(body);
    s.object(|s, key, escaped| {
        if key_is(key, escaped, b"model") {
            model = s.string_or_null()?;
            return Some(());
        }
        s.skip_value()
    })?;
    model
}

/// The first top-level `model` of an upstream's answer, without walking the rest of it (the
/// answer is the upstream's own, with one `model` near its start): the walk stops there.
pub fn leading(body: &[u8]) -> Option<Cow<'_, str>> {
    let mut model = None;
    let mut s = Scanner::new(body);
    let _ = s.object(|s, key, escaped| {
        if key == b"model" && !escaped {
            model = s.string_or_null();
            return None;
        }
        s.skip_value()
    });
    model.flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_top_level_model_only() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"model":"gpt-4o","messages":[]}"#, Some("gpt-4o")),
            (r#"{ "messages": [{"role":"user","content":"model"}], "model" : "claude-3" }"#, Some("claude-3")),
            (r#"{"metadata":{"model":"nested"},"model":"top"}"#, Some("top")),
            (r#"{"metadata":{"model":"nested"}}"#, None),
            (r#"{"model":42}"#, None),
            (r#"{"model":"a\"b"}"#, Some("a\"b")),
            (r#"{"n":[1,2.5e3,true,null,{"x":[]}],"model":"m"}"#, Some("m")),
            ("not json", None),
            ("[1,2]", None),
            ("", None),
            (r#"{"model":"#, None),
            (r#"{"stream":true"#, None),
        ];
        for (body, want) in cases {
            assert_eq!(extract(body.as_bytes()).as_deref(), *want, "{body}");
            assert_eq!(leading(body.as_bytes()).as_deref(), *want, "{body}");
        }
    }

    #[test]
    fn a_request_is_routed_by_the_model_the_upstream_will_read() {
        // The last key wins, and an escaped key is the same key.
        assert_eq!(extract(br#"{"model":"gpt-4o-mini","messages":[],"model":"o1"}"#).as_deref(), Some("o1"));
        assert_eq!(extract(br#"{"mod\u0065l":"o1"}"#).as_deref(), Some("o1"));
        assert_eq!(extract(br#"{"model":"m","broken":"#).as_deref(), None, "a document cut short");
    }

    #[test]
    fn deep_nesting_is_skipped_in_one_pass() {
        let body = format!("{{\"x\":{}1{},\"model\":\"m\"}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(extract(body.as_bytes()).as_deref(), Some("m"));
    }
}
