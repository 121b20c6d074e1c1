//! The built-in mock upstream (`url: "mock://"`).
//!
//! It answers the OpenAI and Anthropic wire formats closely enough for the official SDKs:
//! chat completions (JSON and SSE), model lists, embeddings, Anthropic messages (JSON and SSE
//! events), and Ollama's native chat and generate (JSON and newline-delimited JSON), with a configurable time to first token, delay between tokens, answer length and
//! error rate. It runs in-process (no socket), so `config.default.yaml` works with no keys and no
//! network, and users can rehearse latency and outages against the real proxy path.

use crate::body::{BoxError, ProxyBody};
use crate::config::Mock;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Words the mock "generates", one per token, cycling.
const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "llmproxy",
    "mock",
    "upstream.",
    "Every",
    "token",
    "you",
    "see",
    "was",
    "streamed",
    "through",
    "the",
    "gateway",
    "exactly",
    "as",
    "a",
    "real",
    "provider",
    "would",
    "send",
    "it.",
];

/// Dimensions of mock embeddings: small, since only the shape matters.
const EMBEDDING_DIMS: usize = 8;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Answers one request. `path` is the request path (any prefix such as `/v1` is accepted).
pub async fn respond(cfg: &Mock, method: &Method, path: &str, body: &[u8]) -> Response<ProxyBody> {
    if cfg.error_rate > 0.0 && crate::rand::next_f64() < cfg.error_rate {
        tokio::time::sleep(Duration::from_millis(cfg.ttft_ms)).await;
        return injected_error(cfg.error_status);
    }
    let request = read_request(body);
    let endpoint = path.trim_end_matches('/');
    let route = |suffix: &str| endpoint.ends_with(suffix);
    match (method, ()) {
        (&Method::POST, _) if route("/chat/completions") => chat(cfg, &request, body.len()).await,
        (&Method::POST, _) if route("/messages") => messages(cfg, &request, body.len()).await,
        (&Method::POST, _) if route("/embeddings") => embeddings(cfg, &request, body.len()),
        (&Method::POST, _) if route("/api/chat") => ollama(cfg, &request, body.len(), Ollama::Chat).await,
        (&Method::POST, _) if route("/api/generate") => ollama(cfg, &request, body.len(), Ollama::Generate).await,
        (&Method::GET, _) if route("/models") => models(cfg),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("mock upstream has no endpoint {method} {path}"), "type": "invalid_request_error", "code": "not_found"}}),
        ),
    }
}

/// The members the mock reads, taken from the body with the scanner: the body is never built
/// into a tree whole (a prompt of megabytes, or one crafted as millions of tiny values, costs one
/// pass). A body that is not a JSON object has none of them.
fn read_request(body: &[u8]) -> Value {
    let picked = ["model", "stream", "stream_options", "input"].into_iter().filter_map(|key| {
        let raw = crate::json_scan::member(body, key.as_bytes())?;
        Some((key.to_string(), serde_json::from_slice(raw).ok()?))
    });
    Value::Object(picked.collect())
}

/// Embeddings requests larger than this are refused: each input becomes a vector, so the answer
/// would be many times the request.
const MAX_EMBEDDINGS_REQUEST: usize = 2 * 1024 * 1024;

fn injected_error(status: u16) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(
        status,
        json!({"error": {"message": format!("mock upstream injected a {} error", status.as_u16()), "type": "api_error", "code": "mock_error"}}),
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn json_response(status: StatusCode, v: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::body::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn sse_response(frames: VecDeque<Bytes>, gap: Duration) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::boxed(ScheduledBody::new(frames, gap)));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn model_of(cfg: &Mock, request: &Value) -> String {
    request.get("model").and_then(Value::as_str).unwrap_or(&cfg.model).to_string()
}

/// A rough prompt size: about four bytes of request per token, like the providers' rule of thumb.
fn prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64 / 4).max(1)
}

fn text(tokens: u32) -> String {
    (0..tokens as usize).map(|i| WORDS[i % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn token_word(i: usize) -> String {
    if i == 0 {
        WORDS[0].to_string()
    } else {
        format!(" {}", WORDS[i % WORDS.len()])
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn is_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// Whole-answer latency for non-streaming requests: what the client would wait for a provider.
fn generation_time(cfg: &Mock) -> Duration {
    Duration::from_millis(cfg.ttft_ms + cfg.token_delay_ms * u64::from(cfg.tokens.saturating_sub(1)))
}

async fn chat(cfg: &Mock, request: &Value, body_len: usize) -> Response<ProxyBody> {
    let id = format!("chatcmpl-mock-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let model = model_of(cfg, request);
    let created = unix_now();
    let prompt = prompt_tokens(body_len);
    let completion = u64::from(cfg.tokens);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    if !is_stream(request) {
        tokio::time::sleep(generation_time(cfg)).await;
        return json_response(
            StatusCode::OK,
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text(cfg.tokens)}, "logprobs": null, "finish_reason": "stop"}],
                "usage": usage,
            }),
        );
    }
    tokio::time::sleep(Duration::from_millis(cfg.ttft_ms)).await;
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut frames = VecDeque::new();
    frames.push_back(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    for i in 0..cfg.tokens as usize {
        frames.push_back(chunk(json!({"content": token_word(i)}), Value::Null));
    }
    frames.push_back(chunk(json!({}), json!("stop")));
    // OpenAI sends the usage chunk only when asked; the mock sends it unless explicitly told not
    // to, so token accounting can be rehearsed without client changes.
    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(true);
    if include_usage {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage});
        frames.push_back(Bytes::from(format!("data: {v}\n\n")));
    }
    frames.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(frames, Duration::from_millis(cfg.token_delay_ms))
}

async fn messages(cfg: &Mock, request: &Value, body_len: usize) -> Response<ProxyBody> {
    let id = format!("msg_mock_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let model = model_of(cfg, request);
    let input = prompt_tokens(body_len);
    if !is_stream(request) {
        tokio::time::sleep(generation_time(cfg)).await;
        return json_response(
            StatusCode::OK,
            json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text(cfg.tokens)}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": cfg.tokens},
            }),
        );
    }
    tokio::time::sleep(Duration::from_millis(cfg.ttft_ms)).await;
    let event = |name: &str, v: Value| Bytes::from(format!("event: {name}\ndata: {v}\n\n"));
    let mut frames = VecDeque::new();
    frames.push_back(event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
    ));
    frames.push_back(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    frames.push_back(event("ping", json!({"type": "ping"})));
    for i in 0..cfg.tokens as usize {
        frames.push_back(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token_word(i)}}),
        ));
    }
    frames.push_back(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    frames.push_back(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": cfg.tokens}}),
    ));
    frames.push_back(event("message_stop", json!({"type": "message_stop"})));
    sse_response(frames, Duration::from_millis(cfg.token_delay_ms))
}

#[derive(Clone, Copy)]
enum Ollama {
    /// `/api/chat`: each piece of text in `message.content`.
    Chat,
    /// `/api/generate`: in `response`.
    Generate,
}

/// Ollama's native API: it streams unless told `"stream": false`, one JSON object per line, and
/// counts tokens only in the last object (`"done": true`).
async fn ollama(cfg: &Mock, request: &Value, body_len: usize, kind: Ollama) -> Response<ProxyBody> {
    let model = model_of(cfg, request);
    let piece = |text: String, done: bool| {
        let mut v = match kind {
            Ollama::Chat => json!({"model": model, "message": {"role": "assistant", "content": text}, "done": done}),
            Ollama::Generate => json!({"model": model, "response": text, "done": done}),
        };
        if done {
            let elapsed_ns = generation_time(cfg).as_nanos() as u64;
            v["done_reason"] = json!("stop");
            v["total_duration"] = json!(elapsed_ns);
            v["prompt_eval_count"] = json!(prompt_tokens(body_len));
            v["eval_count"] = json!(cfg.tokens);
        }
        v
    };
    if !request.get("stream").and_then(Value::as_bool).unwrap_or(true) {
        tokio::time::sleep(generation_time(cfg)).await;
        return json_response(StatusCode::OK, piece(text(cfg.tokens), true));
    }
    tokio::time::sleep(Duration::from_millis(cfg.ttft_ms)).await;
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let mut frames: VecDeque<Bytes> = (0..cfg.tokens as usize).map(|i| line(piece(token_word(i), false))).collect();
    frames.push_back(line(piece(String::new(), true)));
    let mut resp =
        Response::new(ProxyBody::boxed(ScheduledBody::new(frames, Duration::from_millis(cfg.token_delay_ms))));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp
}

fn embeddings(cfg: &Mock, request: &Value, body_len: usize) -> Response<ProxyBody> {
    if body_len > MAX_EMBEDDINGS_REQUEST {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": format!("the mock embeds at most {MAX_EMBEDDINGS_REQUEST} bytes of input per request"), "type": "invalid_request_error", "code": "input_too_large"}}),
        );
    }
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()
        }
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "'input' is required", "type": "invalid_request_error", "code": "missing_input"}}),
            )
        }
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, s)| {
            tokens += (s.len() as u64 / 4).max(1);
            json!({"object": "embedding", "index": index, "embedding": embedding(s)})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": data, "model": model_of(cfg, request), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

/// A deterministic unit vector derived from the text (FNV-1a), so equal inputs embed equally.
fn embedding(s: &str) -> Vec<f64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let raw: Vec<f64> = (0..EMBEDDING_DIMS)
        .map(|_| {
            for b in s.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h = h.rotate_left(17);
            (h % 2001) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect()
}

fn models(cfg: &Mock) -> Response<ProxyBody> {
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": [{"id": cfg.model, "object": "model", "created": unix_now(), "owned_by": "llmproxy-mock"}]}),
    )
}

/// A body that yields pre-built frames one `gap` apart: the first at once, like a provider that
/// sends its head and first event together.
pub struct ScheduledBody {
    frames: VecDeque<Bytes>,
    gap: Duration,
    timer: Pin<Box<Sleep>>,
}

impl ScheduledBody {
    pub fn new(frames: VecDeque<Bytes>, gap: Duration) -> Self {
        ScheduledBody { frames, gap, timer: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }
}

impl Body for ScheduledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.frames.is_empty() {
            return Poll::Ready(None);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let gap = self.gap;
        self.timer.as_mut().reset(Instant::now() + gap);
        Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn quick() -> Mock {
        Mock { model: "mock-gpt".into(), ttft_ms: 0, token_delay_ms: 0, tokens: 5, error_rate: 0.0, error_status: 500 }
    }

    async fn body_of(resp: Response<ProxyBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn chat_json_has_openai_shape() {
        let r = respond(&quick(), &Method::POST, "/v1/chat/completions", br#"{"model":"gpt-x","messages":[]}"#).await;
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-x");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["completion_tokens"], 5);
    }

    #[tokio::test]
    async fn chat_sse_ends_with_usage_and_done() {
        let r = respond(&quick(), &Method::POST, "/v1/chat/completions", br#"{"stream":true}"#).await;
        assert_eq!(r.headers()[CONTENT_TYPE], "text/event-stream");
        let text = body_of(r).await;
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let mut content = String::new();
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                content.push_str(c);
            }
        }
        assert_eq!(content, text_of(5));
        let usage: Value = serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 5);
        assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    }

    fn text_of(n: u32) -> String {
        text(n)
    }

    #[tokio::test]
    async fn anthropic_sse_has_event_sequence() {
        let r = respond(&quick(), &Method::POST, "/v1/messages", br#"{"stream":true,"model":"claude-x"}"#).await;
        let text = body_of(r).await;
        let names: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name_line, data_line) = e.split_once('\n').unwrap();
                let v: Value = serde_json::from_str(data_line.strip_prefix("data: ").unwrap()).unwrap();
                let name = name_line.strip_prefix("event: ").unwrap();
                assert_eq!(v["type"], name);
                name
            })
            .collect();
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(names.iter().filter(|n| **n == "content_block_delta").count(), 5);
        assert_eq!(&names[names.len() - 2..], &["message_delta", "message_stop"]);
    }

    #[tokio::test]
    async fn anthropic_json_models_and_embeddings() {
        let m: Value =
            serde_json::from_str(&body_of(respond(&quick(), &Method::POST, "/v1/messages", b"{}").await).await)
                .unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"][0]["type"], "text");
        assert_eq!(m["usage"]["output_tokens"], 5);
        let l: Value =
            serde_json::from_str(&body_of(respond(&quick(), &Method::GET, "/v1/models", b"").await).await).unwrap();
        assert_eq!(l["object"], "list");
        assert_eq!(l["data"][0]["id"], "mock-gpt");
        let e = respond(&quick(), &Method::POST, "/v1/embeddings", br#"{"input":["a","b"]}"#).await;
        let e: Value = serde_json::from_str(&body_of(e).await).unwrap();
        assert_eq!(e["data"].as_array().unwrap().len(), 2);
        assert_eq!(e["data"][1]["embedding"].as_array().unwrap().len(), EMBEDDING_DIMS);
        let nf = respond(&quick(), &Method::GET, "/v1/nothing", b"").await;
        assert_eq!(nf.status(), 404);
        let huge = format!(r#"{{"input":[{}"a"]}}"#, r#""a","#.repeat(MAX_EMBEDDINGS_REQUEST / 4));
        let refused = respond(&quick(), &Method::POST, "/v1/embeddings", huge.as_bytes()).await;
        assert_eq!(refused.status(), 400, "an answer of many vectors per input byte is not built");
    }

    #[test]
    fn only_the_members_the_mock_reads_are_parsed() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false}}"#;
        let v = read_request(body);
        assert_eq!(v, serde_json::json!({"model": "m", "stream": true, "stream_options": {"include_usage": false}}));
        assert_eq!(read_request(b"[1,2]"), serde_json::json!({}));
        assert_eq!(read_request(b"not json"), serde_json::json!({}));
    }

    #[tokio::test]
    async fn error_rate_one_always_fails_with_configured_status() {
        let cfg = Mock { error_rate: 1.0, error_status: 429, ..quick() };
        let r = respond(&cfg, &Method::POST, "/v1/chat/completions", b"{}").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[tokio::test(start_paused = true)]
    async fn stream_frames_are_spaced_by_token_delay() {
        let cfg = Mock { ttft_ms: 100, token_delay_ms: 50, tokens: 3, ..quick() };
        let start = Instant::now();
        let r = respond(&cfg, &Method::POST, "/chat/completions", br#"{"stream":true}"#).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let mut body = r.into_body();
        let mut times = Vec::new();
        while let Some(f) = body.frame().await {
            f.unwrap();
            times.push(start.elapsed().as_millis());
        }
        // role chunk, 3 tokens, finish, usage, [DONE]
        assert_eq!(times, vec![100, 150, 200, 250, 300, 350, 400]);
    }
}
