//! What counts as a secret wherever the configuration is shown (the admin API, route ids,
//! messages): header and query-parameter names that carry credentials, the mask shown in place
//! of their values, and a fingerprint that tells secrets apart without revealing them.

use std::hash::BuildHasher;
use std::sync::OnceLock;

pub const MASK: &str = "***";

/// Header and query-parameter names whose values are credentials in practice (`x-api-key`,
/// `Authorization`, Gemini's `?key=`, Azure's `?sig=`).
pub fn is_sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "password", "cookie", "sig"].iter().any(|w| n.contains(w))
}

/// Equal secrets get equal fingerprints for the life of the process, and a fingerprint gives
/// nothing away: the hash is keyed with random bits drawn at start, so it cannot be checked
/// against guesses elsewhere (an unkeyed hash of a short glob such as `Bearer sk-team-*` could
/// be, billions of guesses a second).
pub fn fingerprint(secret: &str) -> u64 {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_secrets_apart_and_stay_put() {
        assert_eq!(fingerprint("Bearer sk-team-a*"), fingerprint("Bearer sk-team-a*"));
        assert_ne!(fingerprint("Bearer sk-team-a*"), fingerprint("Bearer sk-team-b*"));
        assert!(is_sensitive_name("X-Api-Key") && is_sensitive_name("authorization") && !is_sensitive_name("x-team"));
    }
}
