//! TLS termination on a forward: HTTP/2 by ALPN, HTTP/1.1 fallback, X-Forwarded-Proto https.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn tls_client(
    h2: bool,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(format!("{FIXTURES}/ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let connector = if h2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn forward_terminates_tls_with_h2_and_http1() {
    let up = TestUpstream::start().await;
    let yaml = single_upstream_config(&up.url("/v1"), "", "").replace(
        "timeout: {connect: 1}",
        &format!("timeout: {{connect: 5}}\n      tls: {{cert: {FIXTURES}/cert.pem, key: {FIXTURES}/key.pem}}"),
    );
    let server = start(&yaml).await;
    let port = server.forward_addr("main").unwrap().port();
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let resp = tls_client(h2)
            .request(Request::get(format!("https://localhost:{port}/v1/echo")).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(json_of(&body)["headers"]["x-forwarded-proto"][0], "https");
    }
}

#[tokio::test]
async fn unreadable_certificate_is_a_startup_error() {
    let yaml = single_upstream_config("mock://", "", "").replace(
        "timeout: {connect: 1}",
        "timeout: {connect: 1}\n      tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}",
    );
    let config = llmproxy::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap();
    let err = llmproxy::server::Server::start(config).await.err().expect("must fail");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
