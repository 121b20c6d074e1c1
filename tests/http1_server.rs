//! The client-facing HTTP/1.1 server (`server::http1`) byte for byte: raw TCP clients against
//! the real server, so framing, keep-alive and refusals are seen as a client sees them.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy(up: &TestUpstream) -> llmproxy::server::Server {
    start(&single_upstream_config(&up.url("/v1"), "", "")).await
}

/// Sends `request` and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    read_to_close(&mut c).await
}

async fn read_to_close(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .expect("the server must close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `text` has arrived.
async fn read_until(c: &mut TcpStream, text: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(text) {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("answer").unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let text = exchange(
        server.forward_addr("main").unwrap(),
        b"GET /v1/echo?i=1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond\
          GET /v1/echo?i=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    let (first, second, third) =
        (text.find("/v1/echo?i=1").unwrap(), text.find("\r\n\r\nsecond").unwrap(), text.find("/v1/echo?i=3").unwrap());
    assert!(first < second && second < third, "answers in request order: {text}");
    assert_eq!(text.matches("\r\ndate: ").count(), 3, "every answer carries Date: {text}");
    assert_eq!(text.matches("\r\nconnection: close\r\n").count(), 1, "only the last answer closes: {text}");
    assert_eq!(up.log.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "upstream connection reused");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut c, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"ping").await.unwrap();
    let answer = read_until(&mut c, "\r\n\r\nping").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\r\ncontent-length: 4\r\n"), "{answer}");
}

#[tokio::test]
async fn a_refused_body_is_not_waited_for_and_closes_the_connection() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    // Over the 1 MiB limit: refused on its declared length, before any of it is read (so no
    // `100 Continue` either), and the connection cannot carry another request.
    let text = exchange(
        server.forward_addr("main").unwrap(),
        b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.contains(r#""code":"request_too_large""#), "{text}");
    assert_eq!(up.log.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_heads_get_a_json_error_and_a_close() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let addr = server.forward_addr("main").unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"GET /v1/echo HTTP/1.1\r\nBad Header\r\n\r\n", "400 Bad Request"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400 Bad Request"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", "400 Bad Request"),
        (b"GET /v1/echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "400 Bad Request"),
    ];
    for (request, status) in cases {
        let text = exchange(addr, request).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{text}");
        assert!(text.contains("content-type: application/json") && text.contains(r#""type":"invalid_request_error""#));
    }
    let huge = format!("GET /v1/echo HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let text = exchange(addr, huge.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text}");
    assert_eq!(up.log.requests.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing malformed went upstream");
    // The server is unaffected.
    assert_eq!(get(addr, "/v1/echo").await.0, 200);
    // And the refusals are counted.
    let (_, _, metrics) = get(server.admin_addr(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    let errors = |code: &str, status: u16| {
        format!("llmproxy_http_request_errors_total{{forward=\"main\",error=\"{code}\",status=\"{status}\"}}")
    };
    assert!(text.contains(&format!("{} 4", errors("bad_request", 400))), "{text}");
    assert!(text.contains(&format!("{} 1", errors("request_head_too_large", 431))), "{text}");
    // Each refused head is a request too (its method unread), so errors never outnumber requests.
    assert!(text.contains("llmproxy_http_requests_total{forward=\"main\",method=\"OTHER\"} 5"), "{text}");
}

#[tokio::test]
async fn http_1_0_gets_one_answer_and_a_close() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let text = exchange(server.forward_addr("main").unwrap(), b"GET /v1/echo HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n") && text.contains(r#""method":"GET""#), "{text}");
}

#[tokio::test]
async fn streams_are_chunked_to_http_1_1_clients() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let text = exchange(
        server.forward_addr("main").unwrap(),
        b"GET /v1/stream?n=3&gap_ms=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.contains("\r\ntransfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "ends with the last chunk: {text}");
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
}

#[tokio::test]
async fn a_drain_closes_idle_connections_at_once() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_until(&mut c, r#""path":"/v1/echo"}"#).await;
    // And one that has not sent a byte yet.
    let mut silent = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Well within timeout.connect (1 s), which would close both anyway.
    let drained = tokio::time::timeout(Duration::from_millis(500), server.shutdown(Duration::from_secs(30))).await;
    assert_eq!(drained, Ok(true), "idle connections do not hold up the drain");
    assert_eq!(read_to_close(&mut c).await, "");
    assert_eq!(read_to_close(&mut silent).await, "");
}

#[tokio::test]
async fn a_drain_answers_requests_that_have_already_arrived() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let addr = server.forward_addr("main").unwrap();
    // A keep-alive connection whose next request is sent as the drain begins, and a new one
    // whose first request is: both requests are in the proxy's hands, so both are answered.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_until(&mut kept, r#""path":"/v1/echo"}"#).await;
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /v1/echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    fresh.write_all(b"GET /v1/echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(5), server.shutdown(Duration::from_secs(30))).await;
    assert_eq!(drained, Ok(true));
    for (c, n) in [(&mut kept, 2), (&mut fresh, 3)] {
        let text = read_to_close(c).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "request {n}: {text}");
        assert!(text.contains(&format!(r#""path":"/v1/echo?n={n}"}}"#)), "{text}");
    }
}

#[tokio::test]
async fn a_head_still_trickling_in_does_not_hold_a_drain_beyond_timeout_connect() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await; // timeout.connect: 1 s
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /v1/echo HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drained = tokio::time::timeout(Duration::from_secs(5), server.shutdown(Duration::from_secs(60))).await;
    assert_eq!(drained, Ok(true), "the idle guard still applies while draining");
}

#[tokio::test]
async fn a_client_that_reads_nothing_of_its_answer_is_cut_after_timeout_connect() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await; // timeout.connect: 1 s
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    // 32 MiB: more than the socket buffers between proxy and client can hold.
    c.write_all(b"GET /v1/big?mb=32 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let rt = server.shared.runtime();
    let load = &rt.groups[0].members[0].upstream.load;
    assert!(eventually(Duration::from_secs(5), || load.inflight() == 1).await);
    // The client never reads: once the buffers are full the proxy gives up on it, and with it
    // the upstream request and its in-flight slot.
    assert!(eventually(Duration::from_secs(10), || load.inflight() == 0).await, "the stalled answer is still held");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut received)).await;
    assert!(received.len() < (32 << 20), "the answer was cut");
}

/// A forward that refuses requests without a client key (401 before the body is read).
async fn keyed_proxy(up: &TestUpstream) -> llmproxy::server::Server {
    let config = single_upstream_config(&up.url("/v1"), "", "").replace(
        "      max_body_size: 1MiB\n",
        "      max_body_size: 1MiB\n      auth: {keys: [{name: a, key: sk-a}]}\n",
    );
    start(&config).await
}

#[tokio::test]
async fn a_refused_body_already_received_is_skipped_and_the_connection_kept() {
    let up = TestUpstream::start().await;
    let server = keyed_proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    let refused = read_until(&mut c, r#""code":"#).await;
    assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{refused}");
    assert!(!refused.contains("connection: close"), "{refused}");
    // The unread body was skipped: the next request on the connection is read as one.
    c.write_all(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.contains("HTTP/1.1 200 OK\r\n"), "{text}");
}

#[tokio::test]
async fn a_large_refused_body_still_gets_its_answer() {
    let up = TestUpstream::start().await;
    let server = keyed_proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    // A client that sends its whole body before reading (as most SDKs do): the proxy answers
    // early and must not reset the connection under the unread bytes.
    let body = vec![b'x'; 600 * 1024];
    let head = format!("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body).await.unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}

#[tokio::test]
async fn requests_sent_before_a_half_close_are_answered() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /v1/echo?i=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/echo?i=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let text = read_to_close(&mut c).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_cut_after_timeout_connect_but_a_slow_one_is_not() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await; // timeout.connect: 1 s
    let addr = server.forward_addr("main").unwrap();
    // Arrives slowly but keeps arriving: 10 bytes, 300 ms apart (3 s in all).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for b in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(&[*b]).await.unwrap();
    }
    let text = read_to_close(&mut slow).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n0123456789"), "{text}");
    // Stops: cut once it has been silent for the limit, and nothing reaches the upstream.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"POST /v1/echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01").await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_to_close(&mut stalled).await, "");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut too early: {:?}", started.elapsed());
    assert_eq!(up.log.requests.load(std::sync::atomic::Ordering::SeqCst), 1, "only the complete body went upstream");
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_is_counted_as_499() {
    let up = TestUpstream::start().await;
    let server = proxy(&up).await;
    let mut c = TcpStream::connect(server.forward_addr("main").unwrap()).await.unwrap();
    c.write_all(b"GET /v1/slow-head?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(eventually(Duration::from_secs(5), || up.log.requests() == 1).await);
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let counted =
        "llmproxy_http_request_errors_total{forward=\"main\",error=\"client_closed_request\",status=\"499\"} 1";
    let mut text = String::new();
    while !text.contains(counted) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = String::from_utf8_lossy(&get(server.admin_addr(), "/metrics").await.2).into_owned();
    }
    assert!(text.contains(counted), "{text}");
    assert!(text.contains("llmproxy_http_request_duration_seconds_count{forward=\"main\",method=\"GET\"} 1"), "{text}");
}
