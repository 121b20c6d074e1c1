//! Percent-decoding (RFC 3986 §2.1), for names in admin API paths and credentials in proxy URLs.

/// Decodes `%XX` escapes; an invalid escape stays as it is, and bytes that are not UTF-8 after
/// decoding become U+FFFD.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_escapes_and_keeps_invalid_ones() {
        assert_eq!(super::decode("p%2Fw%40x%3A"), "p/w@x:");
        assert_eq!(super::decode("100%"), "100%");
        assert_eq!(super::decode("%zz%4"), "%zz%4");
    }
}
