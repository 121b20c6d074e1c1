//! A group's `proxy.url`: upstream traffic goes through an HTTP CONNECT or SOCKS5 proxy.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct ProxyLog {
    tunnels: AtomicUsize,
    /// The CONNECT request head, or the SOCKS5 credentials, last seen.
    last_auth: Mutex<String>,
}

/// A minimal HTTP CONNECT proxy: reads the head, dials the target, answers 200, splices.
async fn connect_proxy() -> (String, Arc<ProxyLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(ProxyLog::default());
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = l.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                *log.last_auth.lock().unwrap() = head.clone();
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                log.tunnels.fetch_add(1, Ordering::SeqCst);
                client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://user:pa55@{addr}"), log)
}

/// A minimal SOCKS5 proxy (RFC 1928/1929): username/password auth, CONNECT to IPv4 or a name.
async fn socks5_proxy() -> (String, Arc<ProxyLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(ProxyLog::default());
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let log = l.clone();
            tokio::spawn(async move {
                let mut hdr = [0u8; 2];
                c.read_exact(&mut hdr).await.unwrap();
                let mut methods = vec![0u8; hdr[1] as usize];
                c.read_exact(&mut methods).await.unwrap();
                assert!(methods.contains(&2), "client must offer username/password");
                c.write_all(&[5, 2]).await.unwrap();
                let mut ver_len = [0u8; 2];
                c.read_exact(&mut ver_len).await.unwrap();
                let mut user = vec![0u8; ver_len[1] as usize];
                c.read_exact(&mut user).await.unwrap();
                let mut plen = [0u8; 1];
                c.read_exact(&mut plen).await.unwrap();
                let mut pass = vec![0u8; plen[0] as usize];
                c.read_exact(&mut pass).await.unwrap();
                *log.last_auth.lock().unwrap() =
                    format!("{}:{}", String::from_utf8_lossy(&user), String::from_utf8_lossy(&pass));
                c.write_all(&[1, 0]).await.unwrap();
                let mut req = [0u8; 4];
                c.read_exact(&mut req).await.unwrap();
                let host = match req[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        c.read_exact(&mut ip).await.unwrap();
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut len = [0u8; 1];
                        c.read_exact(&mut len).await.unwrap();
                        let mut name = vec![0u8; len[0] as usize];
                        c.read_exact(&mut name).await.unwrap();
                        String::from_utf8_lossy(&name).to_string()
                    }
                    other => panic!("address type {other} not supported by the test proxy"),
                };
                let mut port = [0u8; 2];
                c.read_exact(&mut port).await.unwrap();
                let mut upstream = TcpStream::connect((host.as_str(), u16::from_be_bytes(port))).await.unwrap();
                log.tunnels.fetch_add(1, Ordering::SeqCst);
                c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut upstream).await;
            });
        }
    });
    (format!("socks5://alice:s3cret@{addr}"), log)
}

#[tokio::test]
async fn http_connect_proxy_carries_upstream_traffic_with_credentials() {
    let up = TestUpstream::start().await;
    let (proxy_url, log) = connect_proxy().await;
    let server =
        start(&single_upstream_config(&up.url("/v1"), "", &format!("      proxy: {{url: \"{proxy_url}\"}}"))).await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["path"], "/v1/echo");
    assert_eq!(log.tunnels.load(Ordering::SeqCst), 1);
    let head = log.last_auth.lock().unwrap().clone();
    assert!(head.starts_with(&format!("CONNECT {} HTTP/1.1", up.addr)), "{head}");
    // base64("user:pa55")
    assert!(head.contains("Basic dXNlcjpwYTU1"), "{head}");
}

#[tokio::test]
async fn socks5_proxy_carries_upstream_traffic_with_credentials() {
    let up = TestUpstream::start().await;
    let (proxy_url, log) = socks5_proxy().await;
    let server =
        start(&single_upstream_config(&up.url("/v1"), "", &format!("      proxy: {{url: \"{proxy_url}\"}}"))).await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(log.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(log.last_auth.lock().unwrap().as_str(), "alice:s3cret");
}

#[tokio::test]
async fn percent_encoded_proxy_credentials_are_decoded() {
    let up = TestUpstream::start().await;
    let (proxy_url, log) = connect_proxy().await;
    let proxy_url = proxy_url.replace("user:pa55@", "us%40er:p%2Fss%3A@");
    let server =
        start(&single_upstream_config(&up.url("/v1"), "", &format!("      proxy: {{url: \"{proxy_url}\"}}"))).await;
    assert_eq!(get(server.forward_addr("main").unwrap(), "/v1/echo").await.0, 200);
    // base64("us@er:p/ss:")
    let head = log.last_auth.lock().unwrap().clone();
    assert!(head.contains("Basic dXNAZXI6cC9zczo="), "{head}");
}

#[tokio::test]
async fn a_proxy_that_accepts_and_stalls_fails_the_connect_after_timeout_connect() {
    let up = TestUpstream::start().await;
    // Accepts, reads, never answers the CONNECT.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let client = format!("      proxy: {{url: \"http://{addr}\"}}\n      timeout: {{connect: 1, request: 300}}");
    let server = start(&single_upstream_config(&up.url("/v1"), "", &client)).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 502, "{}", error_message(&body));
    assert!(error_message(&body).contains("timeout.connect"), "{}", error_message(&body));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "waited {:?}", started.elapsed());
}

#[test]
fn https_proxies_are_refused_and_errors_mask_the_password() {
    let yaml =
        single_upstream_config("http://127.0.0.1:9/v1", "", "      proxy: {url: \"https://u:hunter2@proxy.example\"}");
    let err = llmproxy::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("proxy.url") && err.contains("scheme \"https\" is not supported"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn health_checks_go_through_the_groups_proxy() {
    let up = TestUpstream::start().await;
    let (proxy_url, log) = connect_proxy().await;
    let server = start(&single_upstream_config(
        &up.url("/v1"),
        "    health_check: {path: /health, interval: 1, timeout: 1}",
        &format!("      proxy: {{url: \"{proxy_url}\"}}"),
    ))
    .await;
    assert!(
        eventually(std::time::Duration::from_secs(5), || log.tunnels.load(Ordering::SeqCst) >= 1).await,
        "the check must reach the upstream the way requests do"
    );
    let rt = server.shared.runtime();
    let up_state = rt.upstreams[0].clone();
    assert!(eventually(std::time::Duration::from_secs(5), || up_state.health_passes.get() >= 1).await, "and pass");
    assert_eq!(up_state.health_failures.get(), 0);
}

#[tokio::test]
async fn a_reload_that_adds_a_proxy_moves_the_health_checks_onto_it() {
    let up = TestUpstream::start().await;
    let (proxy_url, log) = connect_proxy().await;
    let check = "    health_check: {path: /health, interval: 1, timeout: 1}";
    let server = start(&single_upstream_config(&up.url("/v1"), check, "")).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(log.tunnels.load(Ordering::SeqCst), 0, "direct while there is no proxy");
    let with_proxy = single_upstream_config(&up.url("/v1"), check, &format!("      proxy: {{url: \"{proxy_url}\"}}"));
    server.reload(llmproxy::config::from_str(&with_proxy, &std::collections::HashMap::new()).unwrap()).unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(5), || log.tunnels.load(Ordering::SeqCst) >= 1).await,
        "the upstream is unchanged, but its checks now take the group's proxy"
    );
}

#[tokio::test]
async fn unreachable_proxy_is_a_502() {
    let up = TestUpstream::start().await;
    let proxy_url = closed_port_url();
    let server =
        start(&single_upstream_config(&up.url("/v1"), "", &format!("      proxy: {{url: \"{proxy_url}\"}}"))).await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 502);
    error_message(&body);
    assert_eq!(up.log.requests.load(Ordering::SeqCst), 0);
}

/// An upstream that answers the first request on each connection and closes the connection,
/// unanswered, when a second one arrives on it (a keep-alive timeout racing the request).
async fn closes_kept_connections() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                for answer in [Some(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]), None] {
                    // Each request: a head, then (POST) a small body that arrives with it.
                    if !read_request_head(&mut s).await {
                        return;
                    }
                    let Some(answer) = answer else { return };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), connections)
}

#[tokio::test]
async fn an_idempotent_request_whose_kept_connection_closes_is_sent_again() {
    // Through a proxy, so hyper's client carries it (plain-HTTP upstreams without one use the
    // direct client, tested in `proxy.rs`).
    let (up, connections) = closes_kept_connections().await;
    let (proxy_url, _) = connect_proxy().await;
    let server = start(&single_upstream_config(&up, "", &format!("      proxy: {{url: \"{proxy_url}\"}}"))).await;
    let addr = server.forward_addr("main").unwrap();
    for n in 1..=3 {
        let (status, _, body) = get(addr, "/v1/models").await;
        assert_eq!((status.as_u16(), String::from_utf8_lossy(&body).as_ref()), (200, "ok"), "GET {n}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3, "each GET after the first found its connection closing");
    // A POST is not sent twice: the client hears of the failure.
    let (status, _, body) = post(addr, "/v1/chat/completions", "{}").await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
}

/// hyper's client (which carries proxied traffic) decodes only chunked: an answer still in
/// another coding is refused as the direct client refuses it, not passed on undeclared.
#[tokio::test]
async fn an_answer_in_a_transfer_coding_other_than_chunked_is_a_502() {
    let up =
        canned_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
            .await;
    let (proxy_url, log) = connect_proxy().await;
    let server =
        start(&single_upstream_config(&format!("http://{up}"), "", &format!("      proxy: {{url: \"{proxy_url}\"}}")))
            .await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/models").await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("transfer coding"));
    assert_eq!(log.tunnels.load(Ordering::SeqCst), 1, "through the proxy, so hyper's client");
}
