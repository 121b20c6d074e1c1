//! Extracting the top-level `"model"` string of a JSON request body without building a DOM.
//!
//! The scanner walks the top-level object's keys and skips every value but the one under
//! `model`, so a 30 MiB body of images costs one pass and no allocation (unless the model name
//! itself contains escapes). Anything that is not a JSON object, or has no string `model`, yields
//! `None`: such a request simply matches no model rule.

use std::borrow::Cow;

pub fn extract(body: &[u8]) -> Option<Cow<'_, str>> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.eat(b'{')?;
    loop {
        s.ws();
        if s.peek()? == b'}' {
            return None;
        }
        let (raw, escaped) = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if raw == b"model" && !escaped {
            if s.peek()? == b'"' {
                let (value, escaped) = s.string()?;
                return if escaped {
                    unescape(value).map(Cow::Owned)
                } else {
                    std::str::from_utf8(value).ok().map(Cow::Borrowed)
                };
            }
            return None;
        }
        s.skip_value(0)?;
        s.ws();
        match s.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// Nesting deeper than this is not a chat request; giving up keeps the scan bounded.
const MAX_DEPTH: usize = 128;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string's raw bytes (between the quotes) and whether it contained escapes.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.next()? {
                b'"' => return Some((&self.b[start..self.i - 1], escaped)),
                b'\\' => {
                    escaped = true;
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                loop {
                    self.ws();
                    if self.peek()? == close {
                        self.i += 1;
                        return Some(());
                    }
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => {
                // number, true, false, null
                let start = self.i;
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

fn unescape(raw: &[u8]) -> Option<String> {
    let quoted = [b"\"", raw, b"\""].concat();
    serde_json::from_slice::<String>(&quoted).ok()
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
    fn deep_nesting_gives_up_instead_of_recursing_forever() {
        let body = format!("{{\"x\":{}1{},\"model\":\"m\"}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(extract(body.as_bytes()), None);
    }
}
