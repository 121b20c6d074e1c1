//! `${VAR}` / `${VAR:-default}` expansion and `LLMPROXY_A__B__0__C` overrides.
//!
//! The environment is passed in as a trait object rather than read from the process so that
//! tests can describe it as a table and run in parallel without touching global state.

use serde_yaml::{Mapping, Value};

/// Where variable values come from: the process environment in production, a table in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for discovering `LLMPROXY_…__…` overrides.
    fn vars(&self) -> Vec<(String, String)>;
    /// Whether `${VAR}` is expanded at all.
    fn expands(&self) -> bool {
        true
    }
}

/// No environment: values are taken literally. Changes made through the admin API use this —
/// the running configuration already holds expanded values (a token containing `${` must not be
/// expanded a second time), and API clients send values, not references.
pub struct Literal;

impl Env for Literal {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn expands(&self) -> bool {
        false
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        // `vars()` would panic on a variable that is not UTF-8; such a variable cannot be one
        // of ours, so it is skipped.
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The result of expanding one string: its value and the variables it referenced, so that a
/// secret which comes out empty can name the variable to set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expanded {
    pub value: String,
    pub vars: Vec<String>,
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`, and every other `$` is itself
/// — so a password like `pa$$w0rd`, which LLMProxy took literally, means what it always meant.
/// An unset `${VAR}` without a default expands to the empty string (callers that need a value
/// say which variable was empty). An unterminated `${` is an error rather than a silent literal:
/// it is almost always a typo, and the error says how to write it literally.
pub fn expand(input: &str, env: &dyn Env) -> Result<Expanded, String> {
    if !input.contains('$') || !env.expands() {
        return Ok(Expanded { value: input.to_string(), vars: Vec::new() });
    }
    let mut out = Expanded::default();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.value.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            out.value.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            // The input is never quoted in errors: it may hold a secret.
            let end = body.find('}').ok_or("unterminated \"${\" (a literal one is written \"$${\")")?;
            let spec = &body[..end];
            let (name, default) = match spec.find(":-") {
                Some(i) => (&spec[..i], Some(&spec[i + 2..])),
                None => (spec, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in \"${{…}}\""));
            }
            out.vars.push(name.to_string());
            match env.var(name).filter(|v| !(v.is_empty() && default.is_some())) {
                Some(v) => out.value.push_str(&v),
                None => out.value.push_str(default.unwrap_or("")),
            }
            rest = &body[end + 1..];
        } else {
            out.value.push('$');
            rest = after;
        }
    }
    out.value.push_str(rest);
    Ok(out)
}

/// Prefix of override variables; the rest of the name is the config path joined by `__`.
const OVERRIDE_PREFIX: &str = "LLMPROXY_";

/// Applies `LLMPROXY_UPSTREAMS__0__AUTH__TOKEN=...` style overrides to the raw YAML tree before
/// validation, creating mappings as needed. Variables without `__` (such as
/// `LLMPROXY_ADMIN_AUTH_TOKEN`) are settings of their own, not overrides. Values are set as
/// strings; the typed reader parses numbers and booleans from strings, so `…__PORT=8080` works.
/// A value is taken literally: its `${` are escaped, so a token like `x${y` is not expanded.
/// Returns the overrides applied (name only, never the value, which may be a secret).
pub fn apply_overrides(root: &mut Value, env: &dyn Env) -> Result<Vec<String>, String> {
    let mut vars: Vec<(String, String)> =
        env.vars().into_iter().filter(|(k, _)| k.starts_with(OVERRIDE_PREFIX) && k.contains("__")).collect();
    // Deterministic order so that the same environment always yields the same config.
    vars.sort();
    let mut applied = Vec::new();
    for (name, value) in vars {
        let path: Vec<String> = name[OVERRIDE_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(format!("environment override {name}: empty path segment"));
        }
        set_path(root, &path, Value::String(value.replace("${", "$${")))
            .map_err(|e| format!("environment override {name}: {e}"))?;
        applied.push(name);
    }
    Ok(applied)
}

fn set_path(node: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((head, tail)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    match node {
        Value::Mapping(map) => {
            let key = Value::String(head.clone());
            if !map.contains_key(&key) {
                map.insert(key.clone(), Value::Null);
            }
            match map.get_mut(&key) {
                Some(child) => set_path(child, tail, value),
                None => Err(format!("cannot set {head}")),
            }
        }
        Value::Sequence(seq) => {
            let index: usize = head.parse().map_err(|_| format!("{head:?} is not a list index"))?;
            match seq.get_mut(index) {
                Some(child) => set_path(child, tail, value),
                None => Err(format!("index {index} is out of range (the list has {} entries)", seq.len())),
            }
        }
        _ => Err(format!("{head:?} is inside a value that is neither a mapping nor a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expands_set_unset_and_default() {
        let e = env(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(expand("x${A}y", &e).unwrap().value, "x1y");
        assert_eq!(expand("${B}", &e).unwrap().value, "");
        assert_eq!(expand("${B:-dflt}", &e).unwrap().value, "dflt");
        assert_eq!(expand("${EMPTY:-dflt}", &e).unwrap().value, "dflt");
        assert_eq!(expand("${A:-dflt}", &e).unwrap().value, "1");
        assert_eq!(expand("$${A} $x pa$$w $", &e).unwrap().value, "${A} $x pa$$w $", "only `${{` is special");
        assert_eq!(expand("$$${A}", &e).unwrap().value, "$${A}");
        assert_eq!(expand("${A}${B}", &e).unwrap().vars, vec!["A", "B"]);
        assert!(expand("${A", &e).is_err());
        assert!(expand("${}", &e).is_err());
    }

    #[test]
    fn overrides_set_nested_paths_and_indexes() {
        let mut root: Value =
            serde_yaml::from_str("upstreams:\n  - name: a\n    auth: {type: bearer, token: x}\n").unwrap();
        let e = env(&[
            ("LLMPROXY_UPSTREAMS__0__AUTH__TOKEN", "sk-new"),
            ("LLMPROXY_HTTP_SERVER__ADMIN__PORT", "9100"),
            ("LLMPROXY_ADMIN_AUTH_TOKEN", "not-an-override"),
        ]);
        let applied = apply_overrides(&mut root, &e).unwrap();
        assert_eq!(applied.len(), 2);
        assert_eq!(root["upstreams"][0]["auth"]["token"].as_str(), Some("sk-new"));
        assert_eq!(root["http_server"]["admin"]["port"].as_str(), Some("9100"));
        let bad = env(&[("LLMPROXY_UPSTREAMS__3__URL", "x")]);
        assert!(apply_overrides(&mut root, &bad).unwrap_err().contains("out of range"));
    }
}
