//! Base64 (RFC 4648): standard with padding for Basic credentials, URL-safe without padding for
//! route ids in the admin API. Twenty lines do not justify a crate.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode_with(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

pub fn encode(input: &[u8]) -> String {
    encode_with(input, STANDARD, true)
}

pub fn encode_url(input: &[u8]) -> String {
    encode_with(input, URL_SAFE, false)
}

/// Decodes URL-safe base64, with or without padding; `None` on any invalid character.
pub fn decode_url(input: &str) -> Option<Vec<u8>> {
    let digits: Vec<u32> = input
        .trim_end_matches('=')
        .bytes()
        .map(|c| URL_SAFE.iter().position(|&a| a == c).map(|p| p as u32))
        .collect::<Option<_>>()?;
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_and_url_round_trip() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(input.as_bytes()), want);
        }
        for path in ["/v1/chat/completions", "/v1/{m:gpt-.*}/x", "/", "/a?b>c"] {
            let id = encode_url(path.as_bytes());
            assert!(!id.contains(['+', '/', '=']));
            assert_eq!(decode_url(&id).unwrap(), path.as_bytes());
        }
        assert_eq!(decode_url("L3YxL21vZGVscw"), Some(b"/v1/models".to_vec()));
        assert_eq!(decode_url("not base64!"), None);
    }
}
