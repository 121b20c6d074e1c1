//! An upstream that refuses a request by its head — a 413 for an audio file or prompt too large,
//! a 401 — may answer before it has read the body and close (RFC 9112 §9.5). Closing with the
//! body unread resets the connection under the proxy's upload; the client must get the answer,
//! not a 502 for the reset, and the upload must not be sent again. Its own test binary: the
//! HTTPS case trusts the test CA for the whole process.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const REFUSAL_BODY: &str = r#"{"error":"prompt too long"}"#;

/// Reads the request's head, answers 413 and closes with the body unread.
async fn refuse(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    if !read_request_head(&mut stream).await {
        return;
    }
    let answer = format!(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Sends an upload larger than the socket buffers can hold through a proxy in front of `url`.
async fn upload_through_proxy(url: &str) -> (hyper::StatusCode, hyper::HeaderMap, bytes::Bytes) {
    let yaml = single_upstream_config(url, "", "").replace("max_body_size: 1MiB", "max_body_size: 64MiB");
    let server = start(&yaml).await;
    post(server.forward_addr("main").unwrap(), "/v1/audio/transcriptions", vec![b'x'; 48 << 20]).await
}

#[tokio::test]
async fn a_plain_http_upstreams_early_answer_reaches_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            refuse(tcp).await;
        }
    });
    let (status, headers, body) = upload_through_proxy(&format!("http://{up}")).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(&body[..], REFUSAL_BODY.as_bytes());
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the upload is not sent again");
}

/// The OpenAI case: hyper's client and TLS.
#[tokio::test]
async fn an_https_upstreams_early_answer_reaches_the_client() {
    let certs = CertificateDer::pem_file_iter(format!("{FIXTURES}/cert.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(format!("{FIXTURES}/key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            // Without it the answer's record could wait for an acknowledgement and be dropped
            // with the reset, unsent.
            let _ = tcp.set_nodelay(true);
            if let Ok(tls) = acceptor.accept(tcp).await {
                refuse(tls).await;
            }
        }
    });
    let bundle = llmproxy::upstream::trust::read_bundle(std::path::Path::new(&format!("{FIXTURES}/ca.pem")));
    llmproxy::upstream::trust::trust_also(bundle.ok().unwrap().roots);
    let (status, _, body) = upload_through_proxy(&format!("https://localhost:{port}")).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], REFUSAL_BODY.as_bytes());
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the upload is not sent again");
}
