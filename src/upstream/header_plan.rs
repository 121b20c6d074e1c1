//! An upstream's header operations (`insert` / `replace` / `remove`), reduced at load time to
//! their net effect on each header name.
//!
//! `insert` sets the value whether or not the client sent the header, exactly as `replace`
//! does: LLMProxy documented it as "only when absent" but always overwrote, and the configs
//! that run on it rely on that — `insert x-api-key` in front of a client that sends a dummy key
//! must send the proxy's key, not the dummy.
//!
//! The operations run in order on one name at a time, so what a name ends as depends only on
//! whether it was there before them: kept as it was, dropped, or set to a configured value.
//! Computing that once lets a request apply all of them while its headers stream out, in one
//! pass and without building a header map.

use crate::config::HeaderOpKind;
use hyper::header::{HeaderName, HeaderValue};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    Drop,
    Set(HeaderValue),
}

/// The net effect of the operations on one header name.
#[derive(Debug, Clone)]
pub struct PlannedHeader {
    pub name: HeaderName,
    /// When the request has the header (from the client, or set by the proxy).
    pub if_present: Outcome,
    /// When it does not.
    pub if_absent: Outcome,
}

/// One operation, compiled.
pub struct HeaderOp {
    pub kind: HeaderOpKind,
    pub name: HeaderName,
    pub value: Option<HeaderValue>,
}

/// Reduces `ops` to one planned header per distinct name, in order of first mention.
pub fn plan(ops: &[HeaderOp]) -> Vec<PlannedHeader> {
    let mut names: Vec<&HeaderName> = Vec::new();
    for op in ops {
        if !names.contains(&&op.name) {
            names.push(&op.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let run = |present: bool| {
                let mut state = if present { Outcome::Keep } else { Outcome::Drop };
                for op in ops.iter().filter(|op| op.name == name) {
                    state = match (op.kind, &op.value) {
                        (HeaderOpKind::Insert | HeaderOpKind::Replace, Some(v)) => Outcome::Set(v.clone()),
                        (HeaderOpKind::Remove, _) => Outcome::Drop,
                        _ => state,
                    };
                }
                state
            };
            PlannedHeader { name: name.clone(), if_present: run(true), if_absent: run(false) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: HeaderOpKind, name: &str, value: Option<&str>) -> HeaderOp {
        HeaderOp {
            kind,
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value: value.map(|v| HeaderValue::from_str(v).unwrap()),
        }
    }

    #[test]
    fn operations_in_order_reduce_to_their_net_effect() {
        use HeaderOpKind::*;
        let set = |v: &'static str| Outcome::Set(HeaderValue::from_static(v));
        let ops = [
            op(Insert, "x-a", Some("1")),
            op(Replace, "x-b", Some("2")),
            op(Remove, "x-c", None),
            op(Remove, "X-D", None),
            op(Insert, "x-d", Some("4")),
            op(Replace, "x-e", Some("5")),
            op(Remove, "x-e", None),
            op(Insert, "x-e", Some("6")),
        ];
        let p = plan(&ops);
        let got: Vec<(&str, &Outcome, &Outcome)> =
            p.iter().map(|h| (h.name.as_str(), &h.if_present, &h.if_absent)).collect();
        assert_eq!(
            got,
            [
                ("x-a", &set("1"), &set("1")),
                ("x-b", &set("2"), &set("2")),
                ("x-c", &Outcome::Drop, &Outcome::Drop),
                ("x-d", &set("4"), &set("4")),
                ("x-e", &set("6"), &set("6")),
            ]
        );
    }
}
