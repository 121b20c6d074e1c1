//! A typed reader over the raw YAML tree that knows where it is.
//!
//! We read the configuration by hand instead of deriving `Deserialize`, because serde's errors
//! carry a line number but not the path (`upstream_groups[1].upstreams[0].name`), cannot suggest
//! the nearest known key, and would need a second pass to expand `${VAR}` inside numbers.
//! Every accessor expands variables and reports errors as `path: reason`.

use super::env::{expand, Env, Expanded};
use super::ConfigError;
use serde_yaml::Value;
use std::ops::RangeInclusive;

/// One node of the tree with its dotted path.
#[derive(Clone)]
pub struct Node<'a> {
    pub path: String,
    pub value: &'a Value,
    pub env: &'a dyn Env,
}

impl<'a> Node<'a> {
    pub fn root(value: &'a Value, env: &'a dyn Env) -> Self {
        Node { path: String::new(), value, env }
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, message)
    }

    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Opens a mapping whose keys must all be in `known`; `null` (an empty block) is an empty map.
    pub fn fields(&self, known: &'static [&'static str]) -> Result<Fields<'a>, ConfigError> {
        let map = match self.value {
            Value::Mapping(map) => Some(map),
            Value::Null => None,
            other => return Err(self.error(format!("expected a mapping, found {}", kind(other)))),
        };
        for key in map.iter().flat_map(|m| m.keys()) {
            let Some(key) = key.as_str() else {
                return Err(self.error(format!("keys must be strings, found {}", kind(key))));
            };
            if !known.contains(&key) {
                let hint = match nearest(key, known) {
                    Some(near) => format!("; did you mean \"{near}\"?"),
                    None => format!(" (known keys: {})", known.join(", ")),
                };
                return Err(ConfigError::at(&self.child(key), format!("unknown key \"{key}\"{hint}")));
            }
        }
        Ok(Fields { node: self.clone(), map })
    }

    pub fn items(&self) -> Result<Vec<Node<'a>>, ConfigError> {
        match self.value {
            Value::Sequence(seq) => Ok(seq
                .iter()
                .enumerate()
                .map(|(i, value)| Node { path: format!("{}[{i}]", self.path), value, env: self.env })
                .collect()),
            Value::Null => Ok(Vec::new()),
            other => Err(self.error(format!("expected a list, found {}", kind(other)))),
        }
    }

    /// The string value after `${VAR}` expansion, with the variables it referenced.
    pub fn expanded(&self) -> Result<Expanded, ConfigError> {
        match self.value {
            Value::String(s) => expand(s, self.env).map_err(|e| self.error(e)),
            Value::Number(n) => Ok(Expanded { value: n.to_string(), vars: Vec::new() }),
            Value::Bool(b) => Ok(Expanded { value: b.to_string(), vars: Vec::new() }),
            other => Err(self.error(format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn string(&self) -> Result<String, ConfigError> {
        Ok(self.expanded()?.value)
    }

    /// A string that must not be empty; when it came out empty from `${VAR}`, the error names
    /// the variable so the operator knows what to export.
    pub fn secret(&self) -> Result<String, ConfigError> {
        let e = self.expanded()?;
        if e.value.is_empty() {
            return Err(match e.vars.first() {
                Some(var) => self.error(format!("is empty: environment variable {var} is unset or empty")),
                None => self.error("must not be empty"),
            });
        }
        Ok(e.value)
    }

    pub fn u64_in(&self, range: RangeInclusive<u64>) -> Result<u64, ConfigError> {
        let n = match self.value {
            Value::Number(n) => n.as_u64().ok_or_else(|| self.error(format!("expected a whole number, found {n}")))?,
            Value::String(_) => {
                let s = self.string()?;
                s.trim().parse::<u64>().map_err(|_| self.error(format!("expected a whole number, found {s:?}")))?
            }
            other => return Err(self.error(format!("expected a whole number, found {}", kind(other)))),
        };
        if !range.contains(&n) {
            return Err(self.error(format!("{n} is out of range {}–{}", range.start(), range.end())));
        }
        Ok(n)
    }

    pub fn f64_in(&self, range: RangeInclusive<f64>) -> Result<f64, ConfigError> {
        let n = match self.value {
            Value::Number(n) => n.as_f64().ok_or_else(|| self.error("expected a number"))?,
            Value::String(_) => {
                let s = self.string()?;
                s.trim().parse::<f64>().map_err(|_| self.error(format!("expected a number, found {s:?}")))?
            }
            other => return Err(self.error(format!("expected a number, found {}", kind(other)))),
        };
        if !(range.contains(&n)) {
            return Err(self.error(format!("{n} is out of range {}–{}", range.start(), range.end())));
        }
        Ok(n)
    }

    pub fn bool(&self) -> Result<bool, ConfigError> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            Value::String(_) => match self.string()?.trim() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                s => Err(self.error(format!("expected true or false, found {s:?}"))),
            },
            other => Err(self.error(format!("expected true or false, found {}", kind(other)))),
        }
    }

    /// One of a fixed set of words.
    /// One of `choices`, in any letter case (some LLMProxy releases wrote `Insert`, others
    /// `insert`); returned as spelled in `choices`.
    pub fn choice(&self, choices: &[&str]) -> Result<String, ConfigError> {
        let s = self.string()?;
        if let Some(c) = choices.iter().find(|c| c.eq_ignore_ascii_case(&s)) {
            Ok(c.to_string())
        } else {
            Err(self.error(format!("unknown value {s:?} (expected one of: {})", choices.join(", "))))
        }
    }
}

/// A mapping whose keys were checked against the known list.
pub struct Fields<'a> {
    node: Node<'a>,
    /// `None` for an empty block (`timeout:` with nothing under it).
    map: Option<&'a serde_yaml::Mapping>,
}

impl<'a> Fields<'a> {
    pub fn path(&self) -> &str {
        &self.node.path
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        self.node.error(message)
    }

    /// The child under `key`, or `None` when absent or explicitly `null`.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        self.map?.get(key).filter(|v| !v.is_null()).map(|value| Node {
            path: self.node.child(key),
            value,
            env: self.node.env,
        })
    }

    /// Path a child would have, for errors about missing keys.
    pub fn child_path(&self, key: &str) -> String {
        self.node.child(key)
    }

    pub fn require(&self, key: &str) -> Result<Node<'a>, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError::at(&self.node.child(key), "is required"))
    }

    /// The first present key of several aliases (e.g. `stream` / `stream_mode`). Each LLMProxy
    /// release read one of them and ignored the other, so files that work across releases set
    /// both alike; set to different values, which one wins would be a guess, and it is an error.
    pub fn get_alias(&self, keys: &[&str]) -> Result<Option<Node<'a>>, ConfigError> {
        // Compared by what they mean: `stream: true` and `stream_mode: "${STREAM}"` may agree.
        let meaning = |n: &Node| n.bool().map(|b| b.to_string()).or_else(|_| n.string()).ok();
        let mut present = keys.iter().filter_map(|k| self.get(k));
        let first = present.next();
        if let Some(f) = &first {
            if present.any(|other| meaning(&other) != meaning(f)) {
                return Err(self.error(format!("set only one of {}, or both alike", keys.join(" / "))));
            }
        }
        Ok(first)
    }

    pub fn u64_or(&self, key: &str, default: u64, range: RangeInclusive<u64>) -> Result<u64, ConfigError> {
        self.get(key).map_or(Ok(default), |n| n.u64_in(range))
    }

    /// A number of a block that `enabled` may turn off. LLMProxy checked a block's values only
    /// when it was on, so in a block that is off a value that would not load — out of range
    /// (`retry: {enabled: false, attempts: 0}`), not a number — reads as the default instead of
    /// failing the load (and the admin API shows that default).
    pub fn u64_or_if_on(
        &self,
        on: bool,
        key: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        match self.u64_or(key, default, range) {
            Err(_) if !on => Ok(default),
            read => read,
        }
    }

    pub fn f64_or(&self, key: &str, default: f64, range: RangeInclusive<f64>) -> Result<f64, ConfigError> {
        self.get(key).map_or(Ok(default), |n| n.f64_in(range))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        self.get(key).map_or(Ok(default), |n| n.bool())
    }

    pub fn string_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        self.get(key).map_or(Ok(default.to_string()), |n| n.string())
    }

    pub fn required_string(&self, key: &str) -> Result<String, ConfigError> {
        let s = self.require(key)?.string()?;
        if s.is_empty() {
            return Err(ConfigError::at(&self.node.child(key), "must not be empty"));
        }
        Ok(s)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a plausible typo.
pub fn nearest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_key() {
        assert_eq!(nearest("stream_mod", &["stream", "stream_mode", "agent"]), Some("stream_mode"));
        assert_eq!(nearest("timout", &["timeout", "retry"]), Some("timeout"));
        assert_eq!(nearest("zzzzzz", &["timeout", "retry"]), None);
    }
}
