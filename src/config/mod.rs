//! Configuration: the LLMProxy YAML schema, read with paths in every error.
//!
//! Loading is two-stage: [`parse`] turns the raw YAML tree (after `${VAR}` expansion and
//! `LLMPROXY_…__…` overrides) into typed values with defaults and ranges; [`validate`] checks
//! what spans sections (names, references, route patterns, listen addresses). The runtime is
//! compiled from the result and never sees an unchecked value.

pub mod env;
pub mod model;
pub mod parse;
pub mod reader;
pub mod validate;

pub use env::{Env, Literal, ProcessEnv};
pub use model::*;

use std::fmt;
use std::path::Path;

/// A rejected configuration: where (the YAML path) and why, printed on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: Option<String>,
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        ConfigError { file: None, path: path.to_string(), message: message.into() }
    }

    fn in_file(mut self, file: &str) -> Self {
        self.file = Some(file.to_string());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Name of the variable holding the admin API bearer token (read by the admin server).
pub const ADMIN_TOKEN_VAR: &str = "LLMPROXY_ADMIN_AUTH_TOKEN";

/// Parses and validates configuration text.
pub fn from_str(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
    let mut root: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map(|l| format!(" at line {} column {}", l.line(), l.column())).unwrap_or_default();
        let reason = e.to_string();
        // serde_yaml appends the location to its message; keep the reason only.
        let reason = reason.split(" at line ").next().unwrap_or(&reason).to_string();
        ConfigError::at("", format!("invalid YAML{at}: {reason}"))
    })?;
    env::apply_overrides(&mut root, env).map_err(|e| ConfigError::at("", e))?;
    from_value(&root, env)
}

/// Parses and validates a configuration tree (the file's, or the running configuration with an
/// admin API change applied).
pub fn from_value(root: &serde_yaml::Value, env: &dyn Env) -> Result<Config, ConfigError> {
    let config = parse::config(&reader::Node::root(root, env))?;
    validate::config(&config)?;
    Ok(config)
}

/// Reads, parses and validates a configuration file; every error names the file.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file (pass another with -c/--config)".to_string(),
            _ => e.to_string(),
        };
        ConfigError::at("", format!("cannot read configuration: {reason}")).in_file(&file)
    })?;
    from_str(&text, env).map_err(|e| e.in_file(&file))
}

/// The key of a routing rule given as a raw tree (admin API bodies and the running
/// configuration's tree), read exactly as the file's rules are.
pub fn route_key_of(rule: &serde_yaml::Value) -> Result<String, ConfigError> {
    parse::route(&reader::Node::root(rule, &Literal)).map(|r| r.key())
}
