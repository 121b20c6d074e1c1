//! Retries, failover, breakers, rate limits, concurrency caps and health checks, end to end.

mod common;

use common::*;
use hyper::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test]
async fn retry_moves_to_another_upstream_at_once() {
    let bad = TestUpstream::start().await;
    let good = TestUpstream::start().await;
    let yaml = group_config(
        &[("bad", bad.url("/always503"), ""), ("good", good.url(""), "")],
        "    http_client: {retry: {attempts: 1, initial: 5000}}",
    );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let started = Instant::now();
    for _ in 0..6 {
        let (status, _, _) = get(addr, "/v1/echo").await;
        assert_eq!(status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "moving to another upstream must not wait for the backoff");
    assert_eq!(good.log.requests(), 6, "every request ended on the good upstream");
    assert!(bad.log.requests() >= 1 && bad.log.requests() <= 6);
}

#[tokio::test]
async fn same_upstream_retries_back_off_exponentially() {
    let up = TestUpstream::start().await;
    let yaml = group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 2, initial: 200}}");
    let server = start(&yaml).await;
    let started = Instant::now();
    let (status, _, _) = get(server.forward_addr("main").unwrap(), "/v1/flaky?fail=2&code=500").await;
    assert_eq!(status, 200, "third attempt succeeds");
    assert_eq!(up.log.requests(), 3);
    // Equal jitter: at least half of 200 ms, then half of 400 ms.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn retry_after_is_honoured_and_capped() {
    let up = TestUpstream::start().await;
    let yaml = group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 1, initial: 100}}");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let started = Instant::now();
    let (status, _, _) = get(addr, "/v1/flaky?fail=1&code=429&retry_after=1").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}, Retry-After said 1 s", started.elapsed());

    // Beyond the cap the upstream's own answer is relayed at once.
    let up2 = TestUpstream::start().await;
    let server2 =
        start(&group_config(&[("only", up2.url(""), "")], "    http_client: {retry: {attempts: 3, initial: 100}}"))
            .await;
    let started = Instant::now();
    let (status, headers, body) =
        get(server2.forward_addr("main").unwrap(), "/v1/flaky?fail=5&code=429&retry_after=3600").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3600");
    assert_eq!(json_of(&body)["error"]["message"], "flaky", "the upstream's body, untouched");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(up2.log.requests(), 1);
}

#[tokio::test]
async fn providers_overload_and_millisecond_waits_are_understood() {
    let up = TestUpstream::start().await;
    let yaml = group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 1, initial: 100}}");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    // Anthropic's 529 (overloaded_error) is an upstream failure worth another attempt.
    let (status, _, _) = get(addr, "/v1/flaky?fail=1&code=529").await;
    assert_eq!(status, 200, "529 is retried");
    assert_eq!(up.log.requests(), 2);

    // Azure OpenAI's `retry-after-ms` (finer than `Retry-After`, which it may send as 1) rules.
    let up = TestUpstream::start().await;
    let yaml = group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 1, initial: 100}}");
    let server = start(&yaml).await;
    let started = Instant::now();
    let (status, _, _) =
        get(server.forward_addr("main").unwrap(), "/v1/flaky?fail=1&code=429&retry_after_ms=700").await;
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(690), "waited {waited:?}, retry-after-ms said 700 ms");
}

#[tokio::test]
async fn retry_after_holds_back_only_the_upstream_that_sent_it() {
    // a asks for 1 s, b for an hour: the third attempt waits for a's time and goes to a, rather
    // than giving up because b's wait is beyond what the proxy waits.
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let server = start(&group_config(
        &[("a", a.url(""), ""), ("b", b.url("/always429"), "")],
        "    balance: {strategy: failover}\n    http_client: {retry: {attempts: 2, initial: 100}}",
    ))
    .await;
    let addr = server.forward_addr("main").unwrap();
    let started = Instant::now();
    let (status, _, _) = get(addr, "/v1/flaky?fail=1&code=429&retry_after=1").await;
    assert_eq!(status, 200);
    assert_eq!((a.log.requests(), b.log.requests()), (2, 1));
    assert!(started.elapsed() >= Duration::from_millis(950), "a was asked again after {:?}", started.elapsed());

    let c = TestUpstream::start().await;
    let d = TestUpstream::start().await;
    let server = start(&group_config(
        &[("c", c.url(""), ""), ("d", d.url(""), "")],
        "    balance: {strategy: failover}\n    http_client: {retry: {attempts: 2, initial: 100}}",
    ))
    .await;
    let (status, headers, _) =
        get(server.forward_addr("main").unwrap(), "/v1/flaky?fail=5&code=429&retry_after=3600").await;
    assert_eq!(status, 429, "nobody to wait for: the answer is relayed");
    assert_eq!(headers["retry-after"], "3600");
    assert_eq!((c.log.requests(), d.log.requests()), (1, 1));
}

#[tokio::test]
async fn an_upstream_answer_outranks_a_later_connect_error() {
    // a answers 429 with Retry-After; b, tried next, refuses the connection. The client gets
    // a's answer and its Retry-After, not a 502 about b.
    let a = TestUpstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = start(&group_config(
        &[("a", a.url("/always429"), ""), ("b", refused, "")],
        "    balance: {strategy: failover}",
    ))
    .await;
    let (status, headers, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("retry-after"));
    assert_eq!(a.log.requests(), 1);
}

#[tokio::test]
async fn a_failed_answer_kept_for_later_holds_no_concurrency_slot() {
    // With max_concurrency 1, the 429 kept while the proxy backs off must not occupy the only
    // slot: the retry finds the upstream free.
    let up = TestUpstream::start().await;
    let server = start(&group_config(
        &[("only", up.url(""), "    max_concurrency: 1")],
        "    http_client: {retry: {attempts: 1, initial: 100}}",
    ))
    .await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/flaky?fail=1&code=429").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(up.log.requests(), 2);
    let rt = server.shared.runtime();
    assert_eq!(rt.groups[0].members[0].upstream.load.inflight(), 0);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let up = TestUpstream::start().await;
    let server =
        start(&group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 5, initial: 100}}"))
            .await;
    let (status, _, _) = get(server.forward_addr("main").unwrap(), "/v1/status?code=400").await;
    assert_eq!(status, 400);
    assert_eq!(up.log.requests(), 1);
}

#[tokio::test]
async fn a_stream_that_began_is_never_replayed() {
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let server = start(&group_config(
        &[("a", a.url(""), ""), ("b", b.url(""), "")],
        "    http_client: {retry: {attempts: 3, initial: 100}}",
    ))
    .await;
    let resp = client()
        .request(
            hyper::Request::get(format!("http://{}/v1/reset?after=2", server.forward_addr("main").unwrap()))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "the client sees the cut");
    assert_eq!(a.log.requests() + b.log.requests(), 1, "no second attempt after bytes were relayed");
}

#[tokio::test]
async fn failover_moves_on_without_a_retry_block() {
    let good = TestUpstream::start().await;
    let yaml = group_config(
        &[("dead", closed_port_url(), ""), ("good", good.url(""), "")],
        "    balance: {strategy: failover}",
    );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    for _ in 0..3 {
        let (status, _, _) = get(addr, "/v1/echo").await;
        assert_eq!(status, 200);
    }
    assert_eq!(good.log.requests(), 3);
}

#[tokio::test]
async fn all_failures_return_the_last_upstream_answer_or_a_json_error() {
    let up = TestUpstream::start().await;
    let server =
        start(&group_config(&[("only", up.url(""), "")], "    http_client: {retry: {attempts: 1, initial: 100}}"))
            .await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/status?code=502").await;
    assert_eq!(status, 502);
    assert_eq!(json_of(&body)["error"]["message"], "scripted");
    assert_eq!(up.log.requests(), 2);
    let server = start(&group_config(
        &[("dead", closed_port_url(), "")],
        "    http_client: {retry: {attempts: 1, initial: 100}}",
    ))
    .await;
    let (status, _, body) = get(server.forward_addr("main").unwrap(), "/v1/echo").await;
    assert_eq!(status, 502);
    assert!(error_message(&body).contains("cannot connect to upstream dead"));
}

#[tokio::test]
async fn open_breakers_answer_503_without_touching_the_upstream() {
    let up = TestUpstream::start().await;
    let server =
        start(&group_config(&[("flaky", up.url(""), "    breaker: {threshold: 0.5, cooldown: 60}")], "")).await;
    let addr = server.forward_addr("main").unwrap();
    for _ in 0..5 {
        let (status, _, _) = get(addr, "/v1/status?code=500").await;
        assert_eq!(status, 500);
    }
    let before = up.log.requests();
    let (status, headers, body) = get(addr, "/v1/status?code=500").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_message(&body).contains("circuit breakers open"));
    assert_eq!(headers["retry-after"], "60", "when the breaker lets its probe through");
    assert_eq!(up.log.requests(), before, "an open circuit sends nothing");
    let metrics = server.shared.runtime().groups[0].members[0].metrics.clone();
    assert_eq!(metrics.breaker_calls[llmproxy::metrics::families::CALL_REJECTED].get(), 1, "the refusal is counted");
}

#[tokio::test]
async fn forward_rate_limit_answers_429_with_retry_after() {
    let yaml = single_upstream_config("mock://", "    mock: {ttft_ms: 0, token_delay_ms: 0}", "")
        .replace("timeout: {connect: 1}", "timeout: {connect: 1}\n      ratelimit: {per_second: 1, burst: 2}");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    for _ in 0..2 {
        assert_eq!(get(addr, "/v1/models").await.0, 200);
    }
    let (status, headers, body) = get(addr, "/v1/models").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(json_of(&body)["error"]["type"], "rate_limit_error");
    let rt = server.shared.runtime();
    assert_eq!(rt.forwards[0].metrics.ratelimited.get(), 1);
}

#[tokio::test]
async fn upstream_caps_skip_and_then_refuse() {
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let yaml = group_config(
        &[
            ("a", a.url(""), "    ratelimit: {per_second: 1, burst: 1}"),
            ("b", b.url(""), "    ratelimit: {per_second: 1, burst: 1}"),
        ],
        "",
    );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    assert_eq!(get(addr, "/v1/echo").await.0, 200);
    assert_eq!(get(addr, "/v1/echo").await.0, 200);
    assert_eq!((a.log.requests(), b.log.requests()), (1, 1), "a capped upstream is skipped");
    let (status, headers, body) = get(addr, "/v1/echo").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert!(error_message(&body).contains("request-rate limit"));

    let c = TestUpstream::start().await;
    let server = start(&group_config(&[("c", c.url(""), "    max_concurrency: 1")], "")).await;
    let addr = server.forward_addr("main").unwrap();
    let slow = tokio::spawn(async move { get(addr, "/v1/slow-head?ms=800").await.0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, headers, _) = get(addr, "/v1/echo").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(get(addr, "/v1/echo").await.0, 200, "the slot is free again");
}

#[tokio::test]
async fn failing_health_checks_take_an_upstream_out_and_passing_ones_bring_it_back() {
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let check = "    health_check: {path: /health, interval: 1, timeout: 1}";
    let server = start(&group_config(&[("a", a.url(""), check), ("b", b.url(""), check)], "")).await;
    let addr = server.forward_addr("main").unwrap();
    a.log.health_status.store(503, std::sync::atomic::Ordering::SeqCst);
    let rt = server.shared.runtime();
    let a_up = rt.groups[0].members[0].upstream.clone();
    assert!(eventually(Duration::from_secs(4), || !a_up.healthy.load(std::sync::atomic::Ordering::SeqCst)).await);
    for _ in 0..6 {
        assert_eq!(get(addr, "/v1/echo").await.0, 200);
    }
    assert_eq!(a.log.requests(), 0, "an unhealthy upstream is not picked");
    a.log.health_status.store(200, std::sync::atomic::Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(4), || a_up.healthy.load(std::sync::atomic::Ordering::SeqCst)).await);
    for _ in 0..6 {
        get(addr, "/v1/echo").await;
    }
    assert!(a.log.requests() > 0, "back in rotation");
}

#[tokio::test]
async fn a_failed_health_check_says_why() {
    use llmproxy::upstream::{client::HttpClient, health_check::check};
    let up = TestUpstream::start().await;
    up.log.health_status.store(503, std::sync::atomic::Ordering::SeqCst);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let check_cfg = "    health_check: {path: /health, interval: 1, timeout: 1}";
    let server = start(&group_config(&[("a", up.url(""), check_cfg), ("b", refused, check_cfg)], "")).await;
    let rt = server.shared.runtime();
    let client = HttpClient::new(&rt.groups[0].config.http_client).unwrap();
    let probe = |i: usize| {
        let upstream = rt.groups[0].members[i].upstream.clone();
        let (cfg, client) = (upstream.health_check.clone().unwrap(), &client);
        async move { check(&upstream, &cfg, client).await }
    };
    assert_eq!(probe(0).await, Err("status 503".to_string()));
    let why = probe(1).await.unwrap_err();
    assert!(why.to_lowercase().contains("refused"), "{why}");
    up.log.health_status.store(429, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(probe(0).await, Err("status 429".to_string()));
    up.log.health_status.store(200, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(probe(0).await, Ok(()));
    // What a full endpoint URL (the check path behind it) or clients' own keys (none on the
    // check) answer: the upstream is up.
    for up_but_refusing in [404, 401] {
        up.log.health_status.store(up_but_refusing, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(probe(0).await, Ok(()), "{up_but_refusing}");
    }
}

#[tokio::test]
async fn response_aware_favours_the_fast_upstream_under_concurrency() {
    let yaml = group_config(
        &[
            ("fast", "mock://".into(), "    mock: {model: fast, ttft_ms: 10, token_delay_ms: 0, tokens: 1}"),
            ("slow", "mock://".into(), "    mock: {model: slow, ttft_ms: 300, token_delay_ms: 0, tokens: 1}"),
        ],
        "    balance: {strategy: response_aware}",
    );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut models = Vec::new();
            for _ in 0..10 {
                let (_, _, body) = post(addr, "/v1/chat/completions", "{}").await;
                models.push(json_of(&body)["model"].as_str().unwrap_or("").to_string());
            }
            models
        }));
    }
    let mut served = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        for m in t.await.unwrap() {
            *served.entry(m).or_default() += 1;
        }
    }
    let (f, s) = (served.get("fast").copied().unwrap_or(0), served.get("slow").copied().unwrap_or(0));
    assert_eq!(f + s, 80);
    assert!(f > 3 * s, "fast served {f}, slow served {s}");
    let rt = server.shared.runtime();
    let g = &rt.groups[0];
    let (fast, slow) = (&g.members[0].upstream.load, &g.members[1].upstream.load);
    assert_eq!((fast.inflight(), slow.inflight()), (0, 0), "every in-flight slot was released");
    let now = llmproxy::clock::now();
    assert!(fast.score(now) < slow.score(now));
}
