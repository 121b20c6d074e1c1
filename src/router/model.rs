//! Extracting the top-level `"model"` string of a JSON request body without building a DOM.
//!
//! The scanner walks the top-level object's keys and skips every value but the one under
//! `model`, so a 30 MiB body of images costs one pass and no allocation (unless the model name
//! itself contains escapes). Anything that is not a JSON object, or has no string `model`, yields
//! `None`: such a request simply matches no model rule.

use crate::json_scan::Scanner;
use std::borrow::Cow;

pub fn extract(body: &[u8]) -> Option<Cow<'_, str>> {
    let mut model = None;
    let mut s = Scanner::new(body);
    // The walk stops (`None`) at the first `model` key: nothing after it matters.
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
        }
    }

    #[test]
    fn deep_nesting_is_skipped_in_one_pass() {
        let body = format!("{{\"x\":{}1{},\"model\":\"m\"}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(extract(body.as_bytes()).as_deref(), Some("m"));
    }
}
