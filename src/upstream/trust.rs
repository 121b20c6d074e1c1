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

/// A bundle as read: the certificates usable as roots, and how many others it held.
pub struct Bundle {
    pub roots: Vec<CertificateDer<'static>>,
    /// Certificates that cannot serve as a root (a system bundle may hold a few): left out.
    pub skipped: usize,
}

/// The PEM bundle at `path`. One that cannot be read, or holds no certificate usable as a root,
/// is an error naming it: trust that was asked for and is missing must not go unnoticed.
pub fn read_bundle(path: &Path) -> Result<Bundle, String> {
    let at = path.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{BUNDLE_VAR} {at}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{BUNDLE_VAR} {at}: {e}"))?;
    let mut check = RootCertStore::empty();
    let (roots, skipped): (Vec<_>, Vec<_>) = certs.into_iter().partition(|cert| check.add(cert.clone()).is_ok());
    if roots.is_empty() {
        return Err(format!("{BUNDLE_VAR} {at}: no certificate usable as a root found"));
    }
    Ok(Bundle { roots, skipped: skipped.len() })
}

/// Trusts `certs` besides the public roots, in every upstream client built from now on.
pub fn trust_also(certs: Vec<CertificateDer<'static>>) {
    *EXTRA_ROOTS.write().unwrap_or_else(|p| p.into_inner()) = certs;
}

/// Reads the bundle `SSL_CERT_FILE` names, if it is set, and trusts it; returns what it added
/// and skipped.
pub fn trust_bundle_from_environment() -> Result<Option<(usize, usize)>, String> {
    let Some(path) = std::env::var_os(BUNDLE_VAR).filter(|p| !p.is_empty()) else { return Ok(None) };
    let bundle = read_bundle(Path::new(&path))?;
    let counts = (bundle.roots.len(), bundle.skipped);
    trust_also(bundle.roots);
    Ok(Some(counts))
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
        assert_eq!((ca.roots.len(), ca.skipped), (1, 0));
        let missing = read_bundle(Path::new("/nonexistent/ca.pem")).err().unwrap();
        assert!(missing.starts_with("SSL_CERT_FILE /nonexistent/ca.pem: "), "{missing}");
        // A key file holds no certificate.
        let key = read_bundle(Path::new(&format!("{FIXTURES}/key.pem"))).err().unwrap();
        assert!(key.ends_with("no certificate usable as a root found"), "{key}");
    }
}
