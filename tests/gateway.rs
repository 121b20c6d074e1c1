//! LLM-aware features end to end: model and header routing, client keys, access lists, token
//! accounting, track_usage and SSE keep-alive.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use std::time::Instant;

const RULES: &str = r#"
http_server:
  forwards:
    - name: main
      port: 0
      address: 127.0.0.1
      default_group: fallback
      routing:
        - {path: "/v1/embeddings", model: "text-embedding-3-*", target_group: embed}
        - {model: "claude-*", target_group: anthropic}
        - {model: "gpt-4*", headers: {x-tenant: "acme-*"}, target_group: acme}
        - {path: "/v1/chat/completions", target_group: openai}
  admin: {port: 0, address: 127.0.0.1}
upstreams:
  - {name: a, url: "mock://", mock: {model: served-by-anthropic, ttft_ms: 0}}
  - {name: o, url: "mock://", mock: {model: served-by-openai, ttft_ms: 0}}
  - {name: e, url: "mock://", mock: {model: served-by-embed, ttft_ms: 0}}
  - {name: t, url: "mock://", mock: {model: served-by-acme, ttft_ms: 0}}
  - {name: f, url: "mock://", mock: {model: served-by-fallback, ttft_ms: 0}}
upstream_groups:
  - {name: anthropic, upstreams: [{name: a}]}
  - {name: openai, upstreams: [{name: o}]}
  - {name: embed, upstreams: [{name: e}]}
  - {name: acme, upstreams: [{name: t}]}
  - {name: fallback, upstreams: [{name: f}]}
"#;

#[tokio::test]
async fn model_rules_take_precedence_and_need_every_condition() {
    let server = start(RULES).await;
    let addr = server.forward_addr("main").unwrap();
    // Which upstream served is read from its attempt counter.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        // model glob beats the static path rule
        ("/v1/chat/completions", r#"{"model":"claude-3-opus","messages":[]}"#, &[], "a"),
        // no model rule matches: the path rule
        ("/v1/chat/completions", r#"{"model":"gpt-4o","messages":[]}"#, &[], "o"),
        // model and header both match
        ("/v1/chat/completions", r#"{"model":"gpt-4o","messages":[]}"#, &[("x-tenant", "acme-eu")], "t"),
        // header does not match its glob
        ("/v1/chat/completions", r#"{"model":"gpt-4o","messages":[]}"#, &[("x-tenant", "other")], "o"),
        // path and model must both match
        ("/v1/embeddings", r#"{"model":"text-embedding-3-small","input":"x"}"#, &[], "e"),
        ("/v1/embeddings", r#"{"model":"ada-002","input":"x"}"#, &[], "f"),
        // non-JSON body, or no model: no model rule matches
        ("/v1/chat/completions", "not json at all", &[], "o"),
        ("/v1/chat/completions", r#"{"messages":[]}"#, &[], "o"),
        ("/v2/other", r#"{"messages":[]}"#, &[], "f"),
    ];
    for (path, body, headers, want) in cases {
        let mut req = Request::post(format!("http://{addr}{path}"));
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let before: Vec<u64> = ["a", "o", "e", "t", "f"].iter().map(|u| upstream_requests(&server, u)).collect();
        let (_, _, _) = send(addr, req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await;
        let after: Vec<u64> = ["a", "o", "e", "t", "f"].iter().map(|u| upstream_requests(&server, u)).collect();
        let served: Vec<&str> = ["a", "o", "e", "t", "f"]
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(served, vec![*want], "{path} {body} {headers:?}");
    }
}

#[tokio::test]
async fn a_host_rule_matches_http_2_requests_too() {
    // HTTP/2 carries the host as `:authority`, with no Host field: the rule must still see it.
    let yaml = RULES.replace(
        "        - {path: \"/v1/chat/completions\", target_group: openai}",
        "        - {path: \"/v1/models\", headers: {host: \"127.0.0.1:*\"}, target_group: acme}",
    );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let h1 = client();
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let request = || Request::get(format!("http://{addr}/v1/models")).body(Full::default()).unwrap();
    for version in [hyper::Version::HTTP_11, hyper::Version::HTTP_2] {
        let before = upstream_requests(&server, "t");
        let resp = if version == hyper::Version::HTTP_2 { h2.request(request()) } else { h1.request(request()) };
        let resp = resp.await.unwrap();
        assert_eq!(resp.version(), version);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(upstream_requests(&server, "t"), before + 1, "{version:?}: {}", String::from_utf8_lossy(&body));
    }
}

fn upstream_requests(server: &llmproxy::server::Server, name: &str) -> u64 {
    let rt = server.shared.runtime();
    rt.groups
        .iter()
        .flat_map(|g| &g.members)
        .filter(|m| m.upstream.name == name)
        .map(|m| m.metrics.requests.get())
        .sum()
}

fn keyed_config(url: &str) -> String {
    format!(
        r#"
http_server:
  forwards:
    - name: main
      port: 0
      address: 127.0.0.1
      default_group: g
      auth:
        keys:
          - {{name: team-a, key: sk-team-a-secret, ratelimit: {{per_second: 1, burst: 2}}}}
          - {{name: team-b, key: sk-team-b-secret}}
  admin: {{port: 0, address: 127.0.0.1}}
upstreams:
  - {{name: up, url: "{url}", auth: {{type: bearer, token: sk-upstream}}}}
upstream_groups:
  - {{name: g, upstreams: [{{name: up}}]}}
"#
    )
}

#[tokio::test]
async fn client_keys_via_either_header_never_reach_the_upstream() {
    let up = TestUpstream::start().await;
    let server = start(&keyed_config(&up.url("/v1"))).await;
    let addr = server.forward_addr("main").unwrap();
    let call = |headers: Vec<(&'static str, &'static str)>| async move {
        let mut req = Request::get(format!("http://{addr}/v1/echo"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(addr, req.body(Full::default()).unwrap()).await
    };
    let (status, _, body) = call(vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body).contains("API key is required"));
    let (status, _, body) = call(vec![("authorization", "Bearer sk-wrong")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body).contains("not valid"));
    assert_eq!(up.log.requests(), 0, "refused requests never reach the upstream");

    let (status, _, body) = call(vec![("authorization", "Bearer sk-team-b-secret")]).await;
    assert_eq!(status, 200);
    let seen = json_of(&body);
    assert_eq!(seen["headers"]["authorization"][0], "Bearer sk-upstream", "the upstream's own key replaces it");
    let (status, _, body) = call(vec![("x-api-key", "sk-team-b-secret")]).await;
    assert_eq!(status, 200);
    let seen = json_of(&body);
    assert!(seen["headers"]["x-api-key"].is_null(), "x-api-key removed: {seen}");
    assert!(!body.windows(16).any(|w| w == b"sk-team-b-secret"));

    // team-a: burst 2 at 1/s.
    assert_eq!(call(vec![("x-api-key", "sk-team-a-secret")]).await.0, 200);
    assert_eq!(call(vec![("x-api-key", "sk-team-a-secret")]).await.0, 200);
    let (status, headers, _) = call(vec![("x-api-key", "sk-team-a-secret")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(call(vec![("x-api-key", "sk-team-b-secret")]).await.0, 200, "limits are per key");

    let (_, _, metrics) = get(server.admin_addr(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(text.contains("llmproxy_client_requests_total{forward=\"main\",key=\"team-a\"} 2"), "{text}");
    assert!(
        text.contains("llmproxy_http_request_errors_total{forward=\"main\",error=\"unauthorized\",status=\"401\"} 2")
    );
    assert!(!text.contains("sk-team"), "keys never in metrics");
    assert!(text.contains("llmproxy_ratelimit_total{forward=\"main\"} 1"), "key refusals are rate-limit refusals");
}

/// A rule on the credential header routes by the client's key, although the key check takes the
/// key out of the request before the rules are tried.
#[tokio::test]
async fn rules_on_the_key_header_route_keyed_requests() {
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let yaml = keyed_config(&b.url("/v1"))
        .replace(
            "      auth:\n",
            "      routing:\n        - {path: /v1/*, headers: {authorization: \"Bearer sk-team-a*\"}, target_group: team_a}\n      auth:\n",
        )
        .replace(
            "upstream_groups:\n",
            &format!("  - {{name: a, url: \"{}\"}}\nupstream_groups:\n  - {{name: team_a, upstreams: [{{name: a}}]}}\n", a.url("/v1")),
        );
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let call = |key: &'static str| async move {
        let req = Request::get(format!("http://{addr}/v1/echo")).header("authorization", key);
        send(addr, req.body(Full::default()).unwrap()).await
    };
    let (status, _, body) = call("Bearer sk-team-a-secret").await;
    assert_eq!(status, 200);
    assert!(!body.windows(16).any(|w| w == b"sk-team-a-secret"), "the key still does not reach the upstream");
    assert_eq!((a.log.requests(), b.log.requests()), (1, 0), "team a's key goes to team a's group");
    assert_eq!(call("Bearer sk-team-b-secret").await.0, 200);
    assert_eq!((a.log.requests(), b.log.requests()), (1, 1));
}

#[tokio::test]
async fn the_address_limit_applies_before_keys_are_checked() {
    let up = TestUpstream::start().await;
    let yaml = keyed_config(&up.url("/v1"))
        .replace("      auth:\n", "      ratelimit: {per_second: 1, burst: 2}\n      auth:\n");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let call = |key: &'static str| async move {
        let req = Request::get(format!("http://{addr}/v1/echo")).header("x-api-key", key);
        send(addr, req.body(Full::default()).unwrap()).await.0
    };
    // Guessing keys spends the address's allowance like any request: once it is used up, a
    // guess is refused for its rate, not answered with another 401.
    assert_eq!(call("sk-guess-1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(call("sk-guess-2").await, StatusCode::UNAUTHORIZED);
    assert_eq!(call("sk-guess-3").await, StatusCode::TOO_MANY_REQUESTS);
    // A request the address limit refuses is not counted against (or for) its key.
    assert_eq!(call("sk-team-a-secret").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(up.log.requests(), 0);
    let (_, _, metrics) = get(server.admin_addr(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(!text.contains("llmproxy_client_requests_total{forward=\"main\",key=\"team-a\"} 1"), "{text}");
    assert!(text.contains("llmproxy_ratelimit_total{forward=\"main\"} 2"), "{text}");
}

#[tokio::test]
async fn client_keys_are_listed_masked_added_and_removed_through_the_api() {
    let up = TestUpstream::start().await;
    let server = start(&keyed_config(&up.url("/v1"))).await;
    let (admin, addr) = (server.admin_addr(), server.forward_addr("main").unwrap());
    let (status, _, body) = get(admin, "/api/v1/forwards/main/keys").await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    assert!(text.contains("team-a") && !text.contains("sk-team-a-secret"), "{text}");
    let (status, _, body) =
        post(admin, "/api/v1/forwards/main/keys", r#"{"name":"team-c","key":"sk-team-c-secret"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains("sk-team-c-secret"));
    let with_c = Request::get(format!("http://{addr}/v1/echo"))
        .header("x-api-key", "sk-team-c-secret")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(addr, with_c).await.0, 200);
    let del =
        Request::delete(format!("http://{admin}/api/v1/forwards/main/keys/team-c")).body(Full::default()).unwrap();
    assert_eq!(send(admin, del).await.0, StatusCode::NO_CONTENT);
    let with_c = Request::get(format!("http://{addr}/v1/echo"))
        .header("x-api-key", "sk-team-c-secret")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(addr, with_c).await.0, StatusCode::UNAUTHORIZED);
    // The last key cannot be removed: the forward would be open to anyone.
    let delete = |name: &str| {
        Request::delete(format!("http://{admin}/api/v1/forwards/main/keys/{name}")).body(Full::default()).unwrap()
    };
    assert_eq!(send(admin, delete("team-a")).await.0, StatusCode::NO_CONTENT);
    let (status, _, body) = send(admin, delete("team-b")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&body).contains("last key"), "{}", error_message(&body));
    assert_eq!(get(addr, "/v1/echo").await.0, StatusCode::UNAUTHORIZED, "still closed");
}

#[tokio::test]
async fn access_lists_answer_403_before_anything_else() {
    for (access, want) in [
        ("{allow: [\"10.0.0.0/8\"]}", StatusCode::FORBIDDEN),
        ("{allow: [\"127.0.0.0/8\"], deny: [\"127.0.0.1\"]}", StatusCode::FORBIDDEN),
        ("{allow: [\"127.0.0.1\", \"::1\"]}", StatusCode::OK),
        ("{deny: [\"192.168.0.0/16\"]}", StatusCode::OK),
    ] {
        let yaml = single_upstream_config("mock://", "    mock: {ttft_ms: 0}", "").replace(
            "timeout: {connect: 1}",
            &format!("timeout: {{connect: 1}}\n      access: {access}\n      ratelimit: {{per_second: 1, burst: 1}}"),
        );
        let server = start(&yaml).await;
        let addr = server.forward_addr("main").unwrap();
        let (status, _, body) = get(addr, "/v1/models").await;
        assert_eq!(status, want, "{access}");
        if want == StatusCode::FORBIDDEN {
            assert!(error_message(&body).contains("127.0.0.1 is not allowed"));
            // 403 comes first: the rate limiter never saw these requests.
            assert_eq!(get(addr, "/v1/models").await.0, StatusCode::FORBIDDEN);
        }
    }
}

async fn tokens(server: &llmproxy::server::Server) -> String {
    let (_, _, body) = get(server.admin_addr(), "/metrics").await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("llmproxy_tokens_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn tokens_are_counted_for_openai_anthropic_and_ollama_answers_and_streams() {
    let server =
        start(&single_upstream_config("mock://", "    mock: {ttft_ms: 0, token_delay_ms: 0, tokens: 7}", "")).await;
    let addr = server.forward_addr("main").unwrap();
    // The mock reports one prompt token per 4 request bytes and 7 completion tokens.
    let mut expected = Vec::new();
    for (path, model, stream) in [
        ("/v1/chat/completions", "m-openai-json", false),
        ("/v1/messages", "m-anthropic-json", false),
        ("/v1/chat/completions", "m-openai-sse", true),
        ("/v1/messages", "m-anthropic-sse", true),
        ("/api/chat", "m-ollama-json", false),
        ("/api/generate", "m-ollama-ndjson", true),
    ] {
        let body = format!("{{\"model\":\"{model}\",\"stream\":{stream}}}");
        expected.push((model, body.len() / 4));
        let (status, headers, _) = post(addr, path, body).await;
        assert_eq!(status, 200);
        let streamed = ["text/event-stream", "application/x-ndjson"].map(|t| headers["content-type"] == t);
        assert_eq!(streamed.contains(&true), stream, "{path}");
    }
    let t = tokens(&server).await;
    for (model, prompt) in expected {
        let line = |kind: &str| {
            format!("llmproxy_tokens_total{{forward=\"main\",group=\"g\",upstream=\"up\",model=\"{model}\",type=\"{kind}\"}}")
        };
        assert!(
            t.contains(&format!("{} {prompt}\n", line("prompt")))
                || t.ends_with(&format!("{} {prompt}", line("prompt"))),
            "{model} prompt:\n{t}"
        );
        assert!(t.contains(&format!("{} 7", line("completion"))), "{model} completion:\n{t}");
    }
    // A response without usage counts nothing.
    let up = TestUpstream::start().await;
    let server = start(&single_upstream_config(&up.url("/v1"), "", "")).await;
    assert_eq!(get(server.forward_addr("main").unwrap(), "/v1/stream?n=3&gap_ms=5").await.0, 200);
    assert_eq!(tokens(&server).await, "");
}

/// Fetching a stored response (`GET /v1/responses/{id}`) returns the usage of its generation:
/// counted again, every fetch would be billed to the caller.
#[tokio::test]
async fn only_generation_calls_are_counted() {
    const STORED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 83\r\n\r\n{\"object\":\"response\",\"model\":\"m\",\"usage\":{\"input_tokens\":9000,\"output_tokens\":800}}";
    let up = canned_upstream(STORED).await;
    let server = start(&single_upstream_config(&format!("http://{up}/v1"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, _, body) = get(addr, "/v1/responses/resp_1").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 83));
    assert_eq!(tokens(&server).await, "", "a fetch is not a generation");
    assert_eq!(post(addr, "/v1/responses", "{}").await.0, StatusCode::OK);
    assert!(tokens(&server).await.contains("type=\"prompt\"} 9000"), "{}", tokens(&server).await);
}

/// Answers that report no usage are counted as such, so a gap between token counts and the
/// bill can be seen: ended without it, or cut before it.
#[tokio::test]
async fn answers_without_usage_are_counted_by_why() {
    let up = TestUpstream::start().await;
    let server = start(&single_upstream_config(&up.url("/v1"), "", "")).await;
    let addr = server.forward_addr("main").unwrap();
    let uncounted = || async {
        let (_, _, body) = get(server.admin_addr(), "/metrics").await;
        let text = String::from_utf8_lossy(&body).to_string();
        let value = |reason: &str| {
            let series = format!("llmproxy_responses_uncounted_total{{forward=\"main\",reason=\"{reason}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&series)).map(|v| v.parse::<u64>().unwrap())
        };
        (value("no_usage"), value("cut"))
    };
    assert_eq!(post(addr, "/v1/echo", "{}").await.0, StatusCode::OK);
    assert_eq!(uncounted().await, (Some(1), Some(0)));
    // A stream the client leaves after its head.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /v1/stream?n=50&gap_ms=20 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(client.read(&mut buf).await.unwrap() > 0);
    drop(client);
    let server_ref = &server;
    let cut = eventually(std::time::Duration::from_secs(5), || {
        let rt = server_ref.shared.runtime();
        rt.forwards[0].metrics.uncounted[llmproxy::metrics::families::UNCOUNTED_CUT].get() == 1
    })
    .await;
    assert!(cut, "{:?}", uncounted().await);
}

/// A proxy in front of `up` at `path`, asking for stream usage on its clients' behalf.
fn track_usage_config(up: &TestUpstream, path: &str) -> String {
    single_upstream_config(&up.url(path), "", "      track_usage: true")
}

/// The bytes of the OpenAI stream the test upstream sends, with or without its usage chunk.
fn openai_stream(with_usage: bool) -> Vec<u8> {
    openai_stream_frames(with_usage).iter().flat_map(|b| b.to_vec()).collect()
}

#[tokio::test]
async fn track_usage_adds_and_strips_exactly_one_chunk() {
    let up = TestUpstream::start().await;
    let server = start(&track_usage_config(&up, "/openai-stream/v1")).await;
    let addr = server.forward_addr("main").unwrap();
    let request = r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = post(addr, "/v1/chat/completions?gap_ms=5", request).await;
    assert_eq!(status, 200);
    let without_usage = openai_stream(false);
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&without_usage),
        "the client sees the stream it asked for"
    );
    let sent = up.log.last_body.lock().unwrap().clone();
    let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true, "usage was asked for upstream");
    assert!(tokens(&server).await.contains("model=\"gpt-test\",type=\"completion\"} 3"));

    // An upstream asked for compressed answers (a header op) is not asked for usage: a
    // compressed stream is relayed untouched, and the chunk could not be taken back out.
    let compressing = single_upstream_config(
        &up.url("/openai-stream/v1"),
        "    headers: [{op: replace, key: Accept-Encoding, value: gzip}]",
        "      track_usage: true",
    );
    let gzip_server = start(&compressing).await;
    let gzip_addr = gzip_server.forward_addr("main").unwrap();
    assert_eq!(post(gzip_addr, "/v1/chat/completions?gap_ms=5", request).await.0, 200);
    assert_eq!(&*up.log.last_body.lock().unwrap(), request.as_bytes(), "the client's body, as it was");

    // A client that asks for usage itself gets the chunk untouched.
    let asking = r#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true}}"#;
    let (_, _, body) = post(addr, "/v1/chat/completions?gap_ms=5", asking).await;
    let with_usage = openai_stream(true);
    assert_eq!(body.to_vec(), with_usage);
    assert_eq!(&up.log.last_body.lock().unwrap()[..], asking.as_bytes(), "its request is forwarded byte for byte");
}

#[tokio::test]
async fn track_usage_copies_a_body_only_within_the_budget() {
    let up = TestUpstream::start().await;
    let yaml = track_usage_config(&up, "/openai-stream/v1")
        .replace("max_body_size: 1MiB", "max_body_size: 1MiB\n      max_buffered_bodies: 1MiB");
    let server = start(&yaml).await;
    let addr = server.forward_addr("main").unwrap();
    let prompt = "x".repeat(600 * 1024);
    let request =
        format!(r#"{{"model":"gpt-test","stream":true,"messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    let (status, _, _) = post(addr, "/v1/chat/completions?gap_ms=1", request.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(&up.log.last_body.lock().unwrap()[..], request.as_bytes(), "no room for a copy: sent as written");
    let small = r#"{"model":"gpt-test","stream":true,"messages":[]}"#;
    assert_eq!(post(addr, "/v1/chat/completions?gap_ms=1", small).await.0, 200);
    assert!(up.log.last_body.lock().unwrap().starts_with(br#"{"stream_options""#), "room for it: usage asked");
}

#[tokio::test]
async fn track_usage_steps_aside_for_an_upstream_that_refuses_the_option() {
    let up = TestUpstream::start().await;
    let server = start(&track_usage_config(&up, "/strict/v1")).await;
    let addr = server.forward_addr("main").unwrap();
    let request = r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let without_usage = openai_stream(false);
    for (n, upstream_requests) in [(1, 2), (2, 3)] {
        let (status, _, body) = post(addr, "/v1/chat/completions?gap_ms=1", request).await;
        assert_eq!(status, 200, "request {n}: the option refused, the request as the client wrote it");
        assert_eq!(body.to_vec(), without_usage, "request {n}");
        assert_eq!(&up.log.last_body.lock().unwrap()[..], request.as_bytes());
        assert_eq!(up.log.requests(), upstream_requests, "request {n}: the refusal is remembered");
    }

    // A client's own `stream_options` refused is the client's answer; and a refusal that is
    // about something else (the resent body is refused too) marks nothing.
    let up = TestUpstream::start().await;
    let server = start(&track_usage_config(&up, "/strict/v1")).await;
    let addr = server.forward_addr("main").unwrap();
    let (status, _, body) = post(addr, "/v1/chat/completions", r#"{"stream":true,"stream_options":{"x":1}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["error"]["message"], "Unrecognized request argument supplied: stream_options");
    assert_eq!(up.log.requests(), 1, "not resent");
    let (status, _, _) = post(addr, "/v1/chat/completions", r#"{"stream":true,"bad":1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(up.log.requests(), 3, "resent once as written, and refused again");
    assert_eq!(post(addr, "/v1/chat/completions?gap_ms=1", request).await.0, 200);
    assert_eq!(up.log.requests(), 5, "the upstream was not left marked: the option was tried again");
}

#[tokio::test]
async fn sse_keepalive_comments_only_in_silence_between_events() {
    let up = TestUpstream::start().await;
    let server = start(&single_upstream_config(&up.url("/v1"), "", "      sse_keepalive: 1")).await;
    let addr = server.forward_addr("main").unwrap();
    // Three events 2.5 s apart: two silent seconds between each.
    let started = Instant::now();
    let (_, _, body) = get(addr, "/v1/stream?n=3&gap_ms=2500").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let comments = text.matches(": keep-alive\n\n").count();
    assert!((3..=6).contains(&comments), "{comments} comments in {:?}: {text:?}", started.elapsed());
    assert_eq!(text.replace(": keep-alive\n\n", ""), "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\n");
    // Silence in the middle of an event is not interrupted.
    let (_, _, body) = get(addr, "/v1/split?gap_ms=1500").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("\"part\":: keep-alive"), "{text:?}");
    assert_eq!(text.replace(": keep-alive\n\n", ""), "data: {\"part\":1}\n\ndata: {\"part\":2}\n\n");
    assert!(text.matches(": keep-alive").count() >= 1, "the silence between the events got one: {text:?}");
    // Non-SSE bodies never get comments.
    let (_, _, body) = get(addr, "/v1/slow-head?ms=1500").await;
    assert!(!String::from_utf8_lossy(&body).contains("keep-alive"));
    let resp =
        client().request(Request::get(format!("http://{addr}/v1/echo")).body(Full::default()).unwrap()).await.unwrap();
    assert!(!String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).contains("keep-alive"));
}
