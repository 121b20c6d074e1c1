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
    client_trusting("ca.pem", h2)
}

fn client_trusting(
    ca: &str,
    h2: bool,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(format!("{FIXTURES}/{ca}")).unwrap() {
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

#[tokio::test]
async fn a_reload_serves_a_certificate_renewed_in_place() {
    let dir = common::TempDir::new("tls-reload");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(format!("{FIXTURES}/cert.pem"), &cert).unwrap();
    std::fs::copy(format!("{FIXTURES}/key.pem"), &key).unwrap();
    let up = TestUpstream::start().await;
    let yaml = single_upstream_config(&up.url("/v1"), "", "").replace(
        "timeout: {connect: 1}",
        &format!("timeout: {{connect: 5}}\n      tls: {{cert: {}, key: {}}}", cert.display(), key.display()),
    );
    let server = start(&yaml).await;
    let port = server.forward_addr("main").unwrap().port();
    let call = |ca: &'static str| async move {
        client_trusting(ca, false)
            .request(Request::get(format!("https://localhost:{port}/v1/echo")).body(Full::default()).unwrap())
            .await
            .map(|r| r.status())
    };
    assert_eq!(call("ca.pem").await.unwrap(), 200);
    assert!(call("ca2.pem").await.is_err(), "the renewed certificate is not served yet");
    // Renewed in place (as certbot does), then a reload of the unchanged configuration.
    std::fs::copy(format!("{FIXTURES}/cert2.pem"), &cert).unwrap();
    std::fs::copy(format!("{FIXTURES}/key2.pem"), &key).unwrap();
    server.reload(llmproxy::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap()).unwrap();
    assert_eq!(call("ca2.pem").await.unwrap(), 200, "new handshakes get the renewed certificate");
    assert_eq!(server.forward_addr("main").unwrap().port(), port, "the listener was kept");
    // A renewal that cannot be read rejects the reload and keeps serving the last good one.
    std::fs::write(&key, "not a key").unwrap();
    let err = server.reload(llmproxy::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap());
    assert!(err.unwrap_err().contains("tls"));
    assert_eq!(call("ca2.pem").await.unwrap(), 200);
}

/// A TLS connection to `port` speaking HTTP/1.1, trusting the test CA.
async fn tls_stream(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(format!("{FIXTURES}/ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

fn tls_config(up: &TestUpstream) -> String {
    single_upstream_config(&up.url("/v1"), "", "").replace(
        "timeout: {connect: 1}",
        &format!("timeout: {{connect: 1}}\n      tls: {{cert: {FIXTURES}/cert.pem, key: {FIXTURES}/key.pem}}"),
    )
}

#[tokio::test]
async fn over_tls_a_body_that_stops_arriving_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let server = start(&tls_config(&up)).await;
    let mut c = tls_stream(server.forward_addr("main").unwrap().port()).await;
    c.write_all(b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the stalled body must not hold the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(up.log.requests(), 0);
}

#[tokio::test]
async fn over_tls_request_heads_have_the_same_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let server = start(&tls_config(&up)).await;
    let port = server.forward_addr("main").unwrap().port();
    let many_fields: String = (0..120).map(|i| format!("x-field-{i}: 1\r\n")).collect();
    let long_field = format!("x-long: {}\r\n", "a".repeat(70 * 1024));
    for extra in [many_fields, long_field] {
        let mut c = tls_stream(port).await;
        c.write_all(format!("GET /v1/echo HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }
    assert_eq!(up.log.requests(), 0);
}

#[tokio::test]
async fn over_tls_a_client_that_reads_nothing_is_cut() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start().await;
    let server = start(&tls_config(&up)).await;
    let mut c = tls_stream(server.forward_addr("main").unwrap().port()).await;
    c.write_all(b"GET /v1/big?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let rt = server.shared.runtime();
    let load = &rt.groups[0].members[0].upstream.load;
    assert!(eventually(std::time::Duration::from_secs(5), || load.inflight() == 1).await);
    assert!(
        eventually(std::time::Duration::from_secs(10), || load.inflight() == 0).await,
        "the answer nobody reads still holds the upstream"
    );
    drop(c);
}

#[tokio::test]
async fn over_tls_a_request_sent_just_after_the_drain_began_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let server = start(&tls_config(&up)).await;
    // Handshake done, request not yet sent (as for a connection from the drain's last sweep).
    let mut c = tls_stream(server.forward_addr("main").unwrap().port()).await;
    let drained = tokio::spawn(server.shutdown(std::time::Duration::from_secs(5)));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    c.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(drained.await.unwrap());
}

/// An `https://` upstream whose certificate a private CA signed: refused while only the public
/// roots are trusted, served once the CA is trusted too (what `SSL_CERT_FILE` does at start).
/// The upstream is a second proxy terminating TLS, in front of the test upstream; it offers
/// HTTP/2 and HTTP/1.1, and the upstream client asks for HTTP/1.1 only.
#[tokio::test]
async fn an_upstream_signed_by_a_private_ca_is_served_once_its_ca_is_trusted() {
    let up = TestUpstream::start().await;
    let front = start(&tls_config(&up)).await;
    let https = format!("https://localhost:{}/v1", front.forward_addr("main").unwrap().port());
    let untrusting = start(&single_upstream_config(&https, "", "")).await;
    let (status, _, body) = get(untrusting.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 502, "a certificate no public CA signed: {}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("certificate"), "{}", String::from_utf8_lossy(&body));

    let bundle = llmproxy::upstream::trust::read_bundle(std::path::Path::new(&format!("{FIXTURES}/ca.pem")));
    llmproxy::upstream::trust::trust_also(bundle.ok().unwrap().roots);
    let trusting = start(&single_upstream_config(&https, "", "")).await;
    let (status, _, body) = get(trusting.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echoed = json_of(&body);
    assert_eq!(echoed["path"], "/v1/echo");
    assert_eq!(echoed["headers"]["x-forwarded-proto"][0], "https", "it went through the TLS front");
}
