//! Checks that span sections: unique names, group references, route patterns, listen addresses.

use super::model::*;
use super::ConfigError;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

pub fn config(c: &Config) -> Result<(), ConfigError> {
    unique("http_server.forwards", c.http_server.forwards.iter().map(|f| f.name.as_str()))?;
    unique("upstreams", c.upstreams.iter().map(|u| u.name.as_str()))?;
    unique("upstream_groups", c.upstream_groups.iter().map(|g| g.name.as_str()))?;
    let group_names: Vec<&str> = c.upstream_groups.iter().map(|g| g.name.as_str()).collect();
    let known_group = |path: String, name: &str| -> Result<(), ConfigError> {
        if group_names.contains(&name) {
            Ok(())
        } else {
            Err(ConfigError::at(
                &path,
                format!("unknown upstream group \"{name}\" (known: {})", group_names.join(", ")),
            ))
        }
    };
    for (i, f) in c.http_server.forwards.iter().enumerate() {
        known_group(format!("http_server.forwards[{i}].default_group"), &f.default_group)?;
        let mut router = crate::router::Router::new();
        let mut rules = HashSet::new();
        for (j, r) in f.routing.iter().enumerate() {
            known_group(format!("http_server.forwards[{i}].routing[{j}].target_group"), &r.target_group)?;
            // A repeated rule could never match (the first one wins) and would share its id in
            // the admin API.
            if r.is_conditional() && !rules.insert(r.key()) {
                return Err(ConfigError::at(
                    &format!("http_server.forwards[{i}].routing[{j}]"),
                    "repeats the conditions of an earlier rule, which always matches first",
                ));
            }
            let Some(path) = &r.path else { continue };
            let at = format!("http_server.forwards[{i}].routing[{j}].path");
            // Conditional rules are matched one by one, path rules share the trie (where a
            // duplicate could never match).
            if r.is_conditional() {
                crate::router::pattern::parse(path).map_err(|e| ConfigError::at(&at, e.to_string()))?;
            } else {
                router.insert(path, ()).map_err(|e| ConfigError::at(&at, e.to_string()))?;
            }
        }
    }
    listen_addresses(c)
}

fn unique<'a>(section: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ConfigError::at(&format!("{section}[{i}].name"), format!("duplicate name \"{name}\"")));
        }
    }
    Ok(())
}

/// Two listeners on the same address and port would fail at bind time with a less helpful
/// message (or, with SO_REUSEPORT, silently share the port); a wildcard address overlaps every
/// address of its family on the same port.
fn listen_addresses(c: &Config) -> Result<(), ConfigError> {
    let mut taken: Vec<(String, SocketAddr)> = Vec::new();
    let admin = &c.http_server.admin;
    let listeners = c
        .http_server
        .forwards
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("http_server.forwards[{i}].port"), SocketAddr::new(f.address, f.port)))
        .chain(std::iter::once(("http_server.admin.port".to_string(), SocketAddr::new(admin.address, admin.port))));
    for (path, addr) in listeners {
        if addr.port() != 0 {
            if let Some((other, _)) = taken.iter().find(|(_, t)| overlaps(t, &addr)) {
                return Err(ConfigError::at(&path, format!("{addr} is already used by {other}")));
            }
        }
        taken.push((path, addr));
    }
    Ok(())
}

fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let same_family = matches!((a.ip(), b.ip()), (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)));
    a.ip() == b.ip() || (same_family && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}
