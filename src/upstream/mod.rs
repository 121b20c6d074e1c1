//! An upstream as the hot path sees it: where to send, and the header work precomputed at load.

pub mod client;
pub mod target;

use crate::config::{self, Auth, HeaderOpKind};
use hyper::header::{HeaderName, HeaderValue};
pub use target::HttpTarget;

pub enum Target {
    Http(HttpTarget),
    Mock(config::Mock),
}

pub struct HeaderOp {
    pub kind: HeaderOpKind,
    pub name: HeaderName,
    pub value: Option<HeaderValue>,
}

pub struct Upstream {
    pub name: String,
    pub target: Target,
    /// The complete `Authorization` value, built once (never per request) and marked sensitive
    /// so hyper keeps it out of HPACK tables and debug output.
    pub authorization: Option<HeaderValue>,
    pub header_ops: Vec<HeaderOp>,
}

impl Upstream {
    pub fn compile(cfg: &config::Upstream) -> Result<Self, String> {
        let target = match &cfg.mock {
            Some(mock) => Target::Mock(mock.clone()),
            None => Target::Http(HttpTarget::parse(&cfg.url)?),
        };
        let authorization = match &cfg.auth {
            Auth::None => None,
            Auth::Bearer { token } => Some(sensitive(&format!("Bearer {token}"))?),
            Auth::Basic { username, password } => {
                Some(sensitive(&format!("Basic {}", base64(format!("{username}:{password}").as_bytes())))?)
            }
        };
        let header_ops = cfg
            .headers
            .iter()
            .map(|op| {
                let name =
                    HeaderName::from_bytes(op.key.as_bytes()).map_err(|e| format!("header {:?}: {e}", op.key))?;
                let value = op
                    .value
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|e| format!("header {:?}: {e}", op.key))?;
                Ok(HeaderOp { kind: op.op, name, value })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Upstream { name: cfg.name.clone(), target, authorization, header_ops })
    }
}

fn sensitive(s: &str) -> Result<HeaderValue, String> {
    let mut v =
        HeaderValue::from_str(s).map_err(|_| "credentials contain characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// Standard base64 with padding, for Basic auth (a crate for twenty lines is not worth it).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
