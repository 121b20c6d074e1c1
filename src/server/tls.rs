//! TLS termination (rustls, `ring` provider): HTTP/2 and HTTP/1.1 offered by ALPN. A
//! listener's certificate sits in a [`CertSlot`], so a reload can put a renewed one in place
//! for the next handshake without rebinding (certbot renews files in place, then reloads).

use crate::config::Tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::sync::RwLock;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(cfg: &Tls) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| format!("tls.cert {}: {e}", cfg.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cfg.cert))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no certificate found", cfg.cert));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| format!("tls.key {}: {e}", cfg.key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls {} / {}: {e}", cfg.cert, cfg.key))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The acceptor a listener's next handshake uses.
pub struct CertSlot {
    acceptor: RwLock<TlsAcceptor>,
    /// Where it was read from.
    pub files: Tls,
}

impl CertSlot {
    pub fn load(cfg: &Tls) -> Result<Arc<CertSlot>, String> {
        Ok(Arc::new(CertSlot { acceptor: RwLock::new(acceptor(cfg)?), files: cfg.clone() }))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, fresh: TlsAcceptor) {
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}
