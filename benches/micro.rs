//! Micro benchmarks of the hot-path building blocks. Prints ns/op; asserts nothing.
//!
//! Run with `make bench` (release build). Each case runs for a fixed number of iterations after
//! a warm-up; the figure is wall time divided by iterations on this machine. A first argument
//! runs only the cases whose name contains it.

use llmproxy::balance::{pick, Reuse};
use llmproxy::ratelimit::{Gcra, KeyedLimiter};
use llmproxy::router::Router;
use llmproxy::runtime::Runtime;
use llmproxy::upstream::breaker::Breaker;
use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Only cases whose name contains this (the first argument, e.g.
/// `cargo bench --bench micro -- usage`) run.
static FILTER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn bench(name: &str, iterations: u64, mut f: impl FnMut(u64)) {
    let filter = FILTER.get_or_init(|| std::env::args().skip(1).find(|a| !a.starts_with("--")));
    if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
        return;
    }
    for i in 0..iterations / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{name:<52} {ns:>9.1} ns/op");
}

fn runtime(strategy: &str, n: usize) -> Runtime {
    let ups: String =
        (0..n).map(|i| format!("  - {{name: u{i}, url: \"mock://\", breaker: {{}}, weight: {}}}\n", i + 1)).collect();
    let list: String = (0..n).map(|i| format!("{{name: u{i}}}, ")).collect();
    let yaml = format!(
        "http_server:\n  forwards: [{{name: f, port: 0, default_group: g}}]\n  admin: {{port: 0}}\nupstreams:\n{ups}upstream_groups:\n  - {{name: g, upstreams: [{list}], balance: {{strategy: {strategy}}}}}\n"
    );
    match llmproxy::config::from_str(&yaml, &std::collections::HashMap::<String, String>::new()).map(Runtime::build) {
        Ok(Ok(rt)) => rt,
        other => panic!("bench config: {:?}", other.err()),
    }
}

fn main() {
    const N: u64 = 2_000_000;
    let mut router = Router::new();
    for (i, p) in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/:id",
        "/v1/{deployment:gpt-[a-z0-9-]+}/chat/completions",
        "/v1/messages",
        "/anthropic/*",
        "/openai/*/chat/completions",
    ]
    .iter()
    .enumerate()
    {
        router.insert(p, i).unwrap_or_else(|e| panic!("{e}"));
    }
    bench("router: static /v1/chat/completions", N, |_| {
        black_box(router.lookup(black_box("/v1/chat/completions")));
    });
    bench("router: regex /v1/gpt-4o/chat/completions", N, |_| {
        black_box(router.lookup(black_box("/v1/gpt-4o/chat/completions")));
    });
    bench("router: backtrack to param /v1/models/x", N, |_| {
        black_box(router.lookup(black_box("/v1/models/gpt-4o")));
    });
    bench("router: miss", N, |_| {
        black_box(router.lookup(black_box("/nothing/here")));
    });

    let gcra = Gcra::new(10_000, 20_000);
    let tat = AtomicU64::new(0);
    bench("limiter: GCRA check (one key)", N, |i| {
        let _ = black_box(gcra.check(&tat, i * 200_000));
    });
    let keyed: KeyedLimiter<std::net::IpAddr> = KeyedLimiter::new(Gcra::new(100, 200), 16_384);
    let ips: Vec<std::net::IpAddr> =
        (0..1024u32).map(|i| std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())).collect();
    bench("limiter: keyed check (1024 client IPs)", N, |i| {
        let _ = black_box(keyed.check(&ips[(i % 1024) as usize], i * 1000));
    });

    let breaker = Breaker::new(0.5, 30);
    bench("breaker: admit + record success", N, |i| {
        let (a, _) = breaker.admit(i * 1000);
        black_box(breaker.record(a, true, i * 1000));
    });

    let h = llmproxy::metrics::Histogram::default();
    bench("metrics: histogram observe", N, |i| {
        h.observe(black_box((i % 1000) as f64 / 100.0));
    });
    let c = llmproxy::metrics::Counter::default();
    bench("metrics: counter inc", N, |_| {
        black_box(&c).inc();
    });
    let big = runtime("roundrobin", 64);
    let rt100 = {
        // 100 upstreams across two groups (a group holds at most 64).
        let ups: String = (0..100).map(|i| format!("  - {{name: u{i}, url: \"mock://\", breaker: {{}}}}\n")).collect();
        let a: String = (0..50).map(|i| format!("{{name: u{i}}}, ")).collect();
        let b: String = (50..100).map(|i| format!("{{name: u{i}}}, ")).collect();
        let yaml = format!(
            "http_server:\n  forwards: [{{name: f, port: 0, default_group: a}}]\n  admin: {{port: 0}}\nupstreams:\n{ups}upstream_groups:\n  - {{name: a, upstreams: [{a}]}}\n  - {{name: b, upstreams: [{b}]}}\n"
        );
        match llmproxy::config::from_str(&yaml, &std::collections::HashMap::<String, String>::new()).map(Runtime::build)
        {
            Ok(Ok(rt)) => rt,
            other => panic!("bench config: {:?}", other.err()),
        }
    };
    for g in &rt100.groups {
        for m in &g.members {
            m.metrics.requests.add(12345);
            m.metrics.duration.observe(0.4);
            m.metrics.ttft.observe(0.2);
        }
    }
    let scrape_len = llmproxy::metrics::families::scrape(&rt100).len();
    bench(&format!("metrics: full scrape, 100 upstreams ({} KiB)", scrape_len / 1024), 2_000, |_| {
        black_box(llmproxy::metrics::families::scrape(&rt100));
    });
    drop(big);

    for strategy in ["roundrobin", "weighted_roundrobin", "random", "response_aware", "failover"] {
        let rt = runtime(strategy, 8);
        let g = &rt.groups[0];
        bench(&format!("pick: {strategy} (8 upstreams, breakers)"), N / 4, |i| {
            black_box(pick(g, 0, Reuse::Never, i).map(|p| p.index).ok());
        });
    }

    // Token accounting reads every successful JSON answer once and every SSE line that carries
    // usage; a chat completion of 0.3 KiB, one of 8 KiB of generated text, and one as OpenAI
    // writes it today (usage with its detail objects, then more members).
    let short = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}"#;
    let long = String::from_utf8_lossy(short).replace(
        "The quick brown fox jumps over the lazy dog.",
        &"All work and no play makes Jack a dull boy. \n".repeat(180),
    );
    let openai = br#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_ee1d74bde0"}"#;
    let answers = [
        ("0.3 KiB", bytes::Bytes::from_static(short)),
        ("8 KiB", bytes::Bytes::from(long)),
        ("OpenAI-shaped 0.6 KiB", bytes::Bytes::from_static(openai)),
    ];
    for (name, body) in answers {
        bench(&format!("usage: scan a {name} JSON answer"), N / 20, |_| {
            let mut scanner =
                llmproxy::usage::UsageScanner::for_content_type(b"application/json", false).map(|mut s| {
                    s.frame(body.clone());
                    s.finish()
                });
            black_box(scanner.take());
        });
    }
}
