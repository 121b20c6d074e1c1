//! Routing rules with conditions on the JSON `model` or on request headers. They are tried
//! before the path trie, in declaration order; a rule matches when every condition it states
//! matches (its path pattern, its model glob, each of its header globs).

use super::Router;
use crate::fields::{text, Fields};
use crate::glob::Glob;
use hyper::header::HeaderName;

pub struct ConditionalRule {
    /// A one-route trie: the same pattern semantics as path rules.
    path: Option<Router<()>>,
    model: Option<Glob>,
    headers: Vec<(HeaderName, Glob)>,
    pub target: usize,
}

impl ConditionalRule {
    pub fn compile(rule: &crate::config::Route, target: usize) -> Result<Self, String> {
        let path = match &rule.path {
            Some(p) => {
                let mut r = Router::new();
                r.insert(p, ()).map_err(|e| e.to_string())?;
                Some(r)
            }
            None => None,
        };
        let headers = rule
            .headers
            .iter()
            .map(|(k, v)| HeaderName::from_bytes(k.as_bytes()).map(|n| (n, Glob::new(v))).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(ConditionalRule { path, model: rule.model.as_deref().map(Glob::new), headers, target })
    }

    /// Whether a condition reads a credential header, which a forward's key check takes out of
    /// the request before the rules are tried (see `matches`).
    pub fn reads_credentials(&self) -> bool {
        self.headers.iter().any(|(name, _)| crate::upstream::is_credential(name.as_str().as_bytes()))
    }

    /// `authority` is the request target's host (HTTP/2's `:authority`), which a `host`
    /// condition reads when the request has no `Host` field — HTTP/2 requests carry none.
    /// `taken` are the credential fields the forward's key check took out, as the client sent
    /// them: a rule on `authorization` routes by the client's key.
    pub fn matches(
        &self,
        path: &str,
        model: Option<&str>,
        headers: &Fields,
        authority: Option<&str>,
        taken: &[(HeaderName, Vec<u8>)],
    ) -> bool {
        self.path.as_ref().is_none_or(|r| r.lookup(path).is_some())
            && self.model.as_ref().is_none_or(|g| model.is_some_and(|m| g.matches(m)))
            && self.headers.iter().all(|(name, g)| {
                let taken = taken.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_slice());
                let mut values = headers.get_all(name).chain(taken).filter_map(text).peekable();
                match (values.peek(), authority) {
                    (None, Some(authority)) if *name == hyper::header::HOST => g.matches(authority),
                    _ => values.any(|v| g.matches(v)),
                }
            })
    }
}
