//! An upstream's header operations (`insert` / `replace` / `remove`), reduced at load time to
//! their net effect on each header name.
//!
//! `insert` sets the value whether or not the client sent the header, exactly as `replace`
//! does: LLMProxy documented it as "only when absent" but always overwrote, and the configs
//! that run on it rely on that — `insert x-api-key` in front of a client that sends a dummy key
//! must send the proxy's key, not the dummy. So every operation decides a name whatever came
//! before it, and the last one on a name is its net effect: a value, or none. Computing that
//! once lets a request apply all of them while its headers stream out, in one pass and without
//! building a header map.

use crate::config::HeaderOpKind;
use hyper::header::{HeaderName, HeaderValue};

/// The net effect of the operations on one header name.
#[derive(Debug, Clone)]
pub struct PlannedHeader {
    pub name: HeaderName,
    /// What the upstream gets, whatever the client sent: this value, or (after a `remove`)
    /// no such header at all.
    pub value: Option<HeaderValue>,
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
            let value = ops.iter().filter(|op| op.name == name).fold(None, |value, op| match (op.kind, &op.value) {
                (HeaderOpKind::Remove, _) => None,
                (HeaderOpKind::Insert | HeaderOpKind::Replace, Some(v)) => Some(v.clone()),
                // The configuration requires a value for these; without one, nothing changes.
                (HeaderOpKind::Insert | HeaderOpKind::Replace, None) => value,
            });
            PlannedHeader { name: name.clone(), value }
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
    fn the_last_operation_on_a_name_decides_it() {
        use HeaderOpKind::*;
        let ops = [
            op(Insert, "x-a", Some("1")),
            op(Replace, "x-b", Some("2")),
            op(Remove, "x-c", None),
            op(Remove, "X-D", None),
            op(Insert, "x-d", Some("4")),
            op(Replace, "x-e", Some("5")),
            op(Remove, "x-e", None),
            op(Insert, "x-e", Some("6")),
            op(Insert, "x-f", Some("7")),
            op(Remove, "x-f", None),
        ];
        let p = plan(&ops);
        let got: Vec<(&str, Option<&str>)> =
            p.iter().map(|h| (h.name.as_str(), h.value.as_ref().map(|v| v.to_str().unwrap()))).collect();
        assert_eq!(
            got,
            [
                ("x-a", Some("1")),
                ("x-b", Some("2")),
                ("x-c", None),
                ("x-d", Some("4")),
                ("x-e", Some("6")),
                ("x-f", None)
            ]
        );
    }
}
