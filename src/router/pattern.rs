//! Route patterns: `/v1/chat/completions`, `/v1/:resource`, `/v1/{model:gpt-.*}/x`, `/api/*`
//! (parameter names are optional: `/v1/:`, `/v1/{\d+}`), and text mixed with parameters in one
//! segment — Gemini's `/v1beta/models/{model}:generateContent`, `/files/*.json` — which becomes
//! a regex segment.

use regex_lite::Regex;
use std::fmt;

/// One segment of a pattern, in matching priority order (static first).
#[derive(Debug, Clone)]
pub enum Segment {
    Static(String),
    /// `{name:regex}`, or text mixed with parameters: the regex must match the whole segment.
    Regex {
        source: String,
        regex: Regex,
    },
    /// `:name` or `{name}`: any one segment.
    Param,
    /// `*` before the last segment: any one segment.
    Wildcard,
    /// `*` as the last segment: the rest of the path (one segment or more).
    Rest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

/// Parses a pattern into segments. Empty segments (`//`, a trailing `/`) are ignored, exactly as
/// lookups ignore them in paths, so `/v1/` and `/v1` are the same route.
pub fn parse(pattern: &str) -> Result<Vec<Segment>, PatternError> {
    if !pattern.starts_with('/') {
        return Err(PatternError(format!("route {pattern:?} must start with \"/\"")));
    }
    let raw: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let last = raw.len().saturating_sub(1);
    raw.iter().enumerate().map(|(i, s)| segment(pattern, s, i == last)).collect()
}

fn segment(pattern: &str, s: &str, is_last: bool) -> Result<Segment, PatternError> {
    let bad = |why: &str| PatternError(format!("route {pattern:?}: segment {s:?} {why}"));
    if s == "*" {
        return Ok(if is_last { Segment::Rest } else { Segment::Wildcard });
    }
    // Names only document a parameter (nothing reads them), so they may be left out, as
    // LLMProxy's router allows: `:`, `{}`, `{:\d+}`, and `{\d+}` (not a name, so a regex).
    if let Some(name) = s.strip_prefix(':') {
        check_name(name).map_err(&bad)?;
        return Ok(Segment::Param);
    }
    if !s.contains(['{', '}', '*']) {
        return Ok(Segment::Static(s.to_string()));
    }
    // A braced segment that reads neither as one parameter nor as text mixed with parameters is
    // read whole, as before mixed segments existed: its regex's error says what is wrong.
    let braced = || s.starts_with('{') && s.ends_with('}') && mixed_to_regex(s).is_err();
    if let Some(inner) = whole_parameter(s).or_else(|| braced().then(|| &s[1..s.len() - 1])) {
        return match parameter(inner).map_err(&bad)? {
            None => Ok(Segment::Param),
            Some(re) => regex_segment(re.to_string()).map_err(|e| bad(&e)),
        };
    }
    regex_segment(mixed_to_regex(s).map_err(&bad)?).map_err(|e| bad(&e))
}

fn regex_segment(source: String) -> Result<Segment, String> {
    let regex = Regex::new(&format!("^(?:{source})$")).map_err(|e| format!("has an invalid regex: {e}"))?;
    Ok(Segment::Regex { source, regex })
}

/// The inside of a segment that is one parameter, `{…}` from its first to its last byte (so
/// `{id:\\d{3}}` and `{x:[^}]+}` are one, `{a}-{b}` is not).
fn whole_parameter(s: &str) -> Option<&str> {
    (s.starts_with('{') && parameter_end(s) == Some(s.len() - 1)).then(|| &s[1..s.len() - 1])
}

/// Where the `}` that closes the parameter `s` opens lies: braces balanced, as a regex inside
/// may hold its own (`\\d{3}`), except those escaped (`\\}`) or in a class (`[^}]`).
fn parameter_end(s: &str) -> Option<usize> {
    let (mut depth, mut class, mut escaped) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !class => class = true,
            ']' if class => class = false,
            _ if class => {}
            '{' => depth += 1,
            '}' if depth <= 1 => return (depth == 1).then_some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The regex of a segment mixing text with parameters: the text literal, `{name}` (or `{}`) one
/// or more characters, `{name:regex}` (or `{regex}`) that regex, `*` any text.
fn mixed_to_regex(s: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}', '*']) {
        out.push_str(&regex_lite::escape(&rest[..i]));
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix('*') {
            out.push_str(".*");
            rest = after;
            continue;
        }
        if rest.starts_with('}') {
            return Err("closes \"}\" without opening \"{\"");
        }
        let end = parameter_end(rest).ok_or("opens \"{\" without closing \"}\"")?;
        let re = parameter(&rest[1..end])?.unwrap_or(".+");
        out.push_str("(?:");
        out.push_str(re);
        out.push(')');
        rest = &rest[end + 1..];
    }
    out.push_str(&regex_lite::escape(rest));
    Ok(out)
}

/// The regex of the parameter whose inside (between its braces) is `inner`, or `None` for any
/// value: `name:regex` or `:regex`, a bare `regex` that is not a name, or a bare `name`.
fn parameter(inner: &str) -> Result<Option<&str>, &'static str> {
    let re = match inner.find(':') {
        Some(i) => {
            check_name(&inner[..i])?;
            &inner[i + 1..]
        }
        None if check_name(inner).is_ok() => return Ok(None),
        None => inner,
    };
    if re.is_empty() {
        return Err("has an empty regex");
    }
    Ok(Some(re))
}

/// A parameter name: `[A-Za-z0-9_]*`, possibly empty.
fn check_name(name: &str) -> Result<(), &'static str> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Err("has a parameter name that is not [A-Za-z0-9_]")
    } else {
        Ok(())
    }
}
