//! Route patterns: `/v1/chat/completions`, `/v1/:resource`, `/v1/{model:gpt-.*}/x`, `/api/*`
//! (parameter names are optional: `/v1/:`, `/v1/{\d+}`).

use regex_lite::Regex;
use std::fmt;

/// One segment of a pattern, in matching priority order (static first).
#[derive(Debug, Clone)]
pub enum Segment {
    Static(String),
    /// `{name:regex}`: the regex must match the whole segment.
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
    if let Some(inner) = s.strip_prefix('{') {
        let inner = inner.strip_suffix('}').ok_or_else(|| bad("opens \"{\" without closing \"}\""))?;
        let (name, re) = match inner.find(':') {
            Some(i) => (&inner[..i], Some(&inner[i + 1..])),
            None if check_name(inner).is_ok() => (inner, None),
            None => ("", Some(inner)),
        };
        check_name(name).map_err(&bad)?;
        return match re {
            None => Ok(Segment::Param),
            Some("") => Err(bad("has an empty regex")),
            Some(re) => {
                let regex =
                    Regex::new(&format!("^(?:{re})$")).map_err(|e| bad(&format!("has an invalid regex: {e}")))?;
                Ok(Segment::Regex { source: re.to_string(), regex })
            }
        };
    }
    if s.contains(['{', '}', '*']) {
        return Err(bad("mixes text with \"{\", \"}\" or \"*\" (a parameter must be a whole segment)"));
    }
    Ok(Segment::Static(s.to_string()))
}

/// A parameter name: `[A-Za-z0-9_]*`, possibly empty.
fn check_name(name: &str) -> Result<(), &'static str> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Err("has a parameter name that is not [A-Za-z0-9_]")
    } else {
        Ok(())
    }
}
