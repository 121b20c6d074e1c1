//! Which certificates an `https://` upstream may present: the public CA roots compiled into the
//! binary (a static binary on a bare host has no system store to read), plus those of the PEM
//! bundle `SSL_CERT_FILE` names — the variable OpenSSL, curl and Go read — for an internal CA,
//! a self-signed model server, or a company proxy that re-signs TLS.
//!
//! The extra roots are process-wide, set once at start (before any upstream client is built);
//! tests set them directly instead of through the environment.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::RwLock;

/// The environment variable naming a PEM bundle of extra trusted certificates.
pub const BUNDLE_VAR: &str = "SSL_CERT_FILE";

static EXTRA_ROOTS: RwLock<Vec<CertificateDer<'static>>> = RwLock::new(Vec::new());

/// The certificates of the PEM bundle at `path`, each checked to be usable as a root: a bundle
/// that cannot be read, holds no certificate, or holds a malformed one is an error naming it.
pub fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = path.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{BUNDLE_VAR} {at}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{BUNDLE_VAR} {at}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{BUNDLE_VAR} {at}: no certificate found"));
    }
    let mut check = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| format!("{BUNDLE_VAR} {at}: certificate {}: {e}", i + 1))?;
    }
    Ok(certs)
}

/// Trusts `certs` besides the public roots, in every upstream client built from now on.
pub fn trust_also(certs: Vec<CertificateDer<'static>>) {
    *EXTRA_ROOTS.write().unwrap_or_else(|p| p.into_inner()) = certs;
}

/// Reads the bundle `SSL_CERT_FILE` names, if it is set, and trusts it; returns how many
/// certificates it added.
pub fn trust_bundle_from_environment() -> Result<usize, String> {
    let Some(path) = std::env::var_os(BUNDLE_VAR).filter(|p| !p.is_empty()) else { return Ok(0) };
    let certs = read_bundle(Path::new(&path))?;
    let added = certs.len();
    trust_also(certs);
    Ok(added)
}

/// The public roots and the extra ones.
pub fn roots() -> RootCertStore {
    let mut store = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    // Each was checked when read; one that fails now cannot, and would only be missing.
    let (_added, _ignored) =
        store.add_parsable_certificates(EXTRA_ROOTS.read().unwrap_or_else(|p| p.into_inner()).iter().cloned());
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    #[test]
    fn a_bundle_is_read_whole_or_refused_with_its_path() {
        let ca = read_bundle(Path::new(&format!("{FIXTURES}/ca.pem"))).unwrap();
        assert_eq!(ca.len(), 1);
        let missing = read_bundle(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(missing.starts_with("SSL_CERT_FILE /nonexistent/ca.pem: "), "{missing}");
        // A key file holds no certificate.
        let key = read_bundle(Path::new(&format!("{FIXTURES}/key.pem"))).unwrap_err();
        assert!(key.ends_with("no certificate found"), "{key}");
    }
}
