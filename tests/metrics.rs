//! `/metrics` on the admin port: every family, well-formed exposition, values that follow traffic.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};

type Labels = Vec<(String, String)>;
/// One sample: metric name, labels, value.
type Sample = (String, Labels, f64);

/// A strict reader of the text format (0.0.4): declared families, `# TYPE` before samples,
/// valid names, quoted and escaped label values, numeric values, no duplicate series, and
/// consistent histograms. Panics with the offending line.
fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE: {line}"));
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "family declared twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line}"),
        };
        assert!(valid_name(name), "bad metric name: {line}");
        let mut labels = Vec::new();
        let value_text = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let Some((i, c)) = chars.next() else { panic!("unterminated labels: {line}") };
                if c == '}' {
                    break i;
                }
                let key_start = i;
                let mut key_end = i;
                while let Some(&(j, c)) = chars.peek() {
                    if c == '=' {
                        key_end = j;
                        break;
                    }
                    chars.next();
                }
                let key = &body[key_start..key_end];
                assert!(valid_name(key), "bad label name {key:?}: {line}");
                chars.next();
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "label value must be quoted: {line}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?}: {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, '\n')) | None => panic!("unterminated label value: {line}"),
                        Some((_, c)) => value.push(c),
                    }
                }
                labels.push((key.to_string(), value));
                if let Some(&(_, ',')) = chars.peek() {
                    chars.next();
                }
            };
            &body[end + 1..]
        } else {
            rest
        };
        let value_text = value_text.strip_prefix(' ').unwrap_or_else(|| panic!("missing space before value: {line}"));
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| types.get(*base).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its # TYPE: {line}");
        let mut key: Vec<_> = labels.clone();
        key.sort();
        assert!(seen.insert((name.to_string(), key)), "duplicate series: {line}");
        samples.push((name.to_string(), labels, value));
    }
    // Histograms: buckets cumulative, ending in +Inf equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        for (name, labels, value) in &samples {
            if *name == format!("{family}_bucket") {
                let le = labels.iter().find(|(k, _)| k == "le").expect("bucket without le").1.clone();
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                series.entry(rest).or_default().push((le, *value));
            }
        }
        for (labels, buckets) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family} {labels:?} not cumulative"
            );
            let count =
                samples.iter().find(|(n, l, _)| *n == format!("{family}_count") && *l == labels).expect("no _count").2;
            assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{family} {labels:?}: +Inf != count");
        }
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| s.2)
}

async fn scrape(server: &llmproxy::server::Server) -> (HashMap<String, String>, Vec<Sample>, String) {
    let (status, headers, body) = get(server.admin_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(body.to_vec()).unwrap();
    let (types, samples) = parse_exposition(&text);
    promtool_accepts(&text);
    (types, samples, text)
}

/// Where Prometheus's own checker is installed (`apt-get install prometheus`), it must accept
/// the exposition too; elsewhere the strict parser above stands in for it.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the exposition: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_family_is_exposed_and_counters_follow_traffic() {
    let up = TestUpstream::start().await;
    let yaml = group_config(
        &[
            ("good", up.url(""), "    breaker: {threshold: 0.5, cooldown: 60}\n    health_check: {path: /health, interval: 1, timeout: 1}"),
            ("mock", "mock://".into(), "    mock: {ttft_ms: 20, token_delay_ms: 5, tokens: 3}"),
        ],
        "    balance: {strategy: failover}\n    http_client: {retry: {attempts: 1, initial: 100}}",
    )
    .replace("name: main, port: 0", "name: \"ma\\\"in\", port: 0, ratelimit: {per_second: 1, burst: 4}");
    let server = start(&yaml).await;
    let addr = server.forward_addrs()[0].1;
    assert_eq!(get(addr, "/v1/stream?n=3&gap_ms=20").await.0, 200);
    assert_eq!(post(addr, "/v1/echo", "{}").await.0, 200);
    assert_eq!(get(addr, "/v1/status?code=404").await.0, 404);
    // The first upstream fails with 503 and the request is retried on the mock.
    assert_eq!(post(addr, "/always503/v1/chat/completions", "{}").await.0, 200);
    assert_eq!(get(addr, "/v1/echo").await.0, 429, "the fifth request exceeds the burst of 4");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let (types, samples, text) = scrape(&server).await;
    for (family, kind) in [
        ("llmproxy_http_requests_total", "counter"),
        ("llmproxy_http_request_duration_seconds", "histogram"),
        ("llmproxy_http_request_errors_total", "counter"),
        ("llmproxy_buffered_body_bytes", "gauge"),
        ("llmproxy_ratelimit_total", "counter"),
        ("llmproxy_upstream_requests_total", "counter"),
        ("llmproxy_upstream_duration_seconds", "histogram"),
        ("llmproxy_upstream_errors_total", "counter"),
        ("llmproxy_upstream_ttft_seconds", "histogram"),
        ("llmproxy_upstream_inflight", "gauge"),
        ("llmproxy_circuitbreaker_state", "gauge"),
        ("llmproxy_circuitbreaker_state_changes_total", "counter"),
        ("llmproxy_circuitbreaker_calls_total", "counter"),
        ("llmproxy_retries_total", "counter"),
        ("llmproxy_upstream_healthy", "gauge"),
        ("llmproxy_upstream_health_checks_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "family {family}");
    }
    // Label values are escaped: the forward is named ma"in.
    assert!(text.contains("llmproxy_http_requests_total{forward=\"ma\\\"in\",method=\"GET\"} 3"), "{text}");
    let fwd = [("forward", "ma\"in")];
    assert_eq!(value(&samples, "llmproxy_http_requests_total", &[fwd[0], ("method", "POST")]), Some(2.0));
    assert_eq!(value(&samples, "llmproxy_ratelimit_total", &fwd), Some(1.0));
    assert_eq!(
        value(&samples, "llmproxy_http_request_errors_total", &[fwd[0], ("error", "rate_limited"), ("status", "429")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "llmproxy_http_request_errors_total", &[fwd[0], ("error", "upstream"), ("status", "404")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "llmproxy_http_request_duration_seconds_count", &[fwd[0], ("method", "GET")]),
        Some(3.0)
    );
    let good = [("group", "g"), ("upstream", "good")];
    let mock = [("group", "g"), ("upstream", "mock")];
    assert_eq!(value(&samples, "llmproxy_upstream_requests_total", &good), Some(4.0));
    assert_eq!(value(&samples, "llmproxy_upstream_requests_total", &mock), Some(1.0));
    assert_eq!(
        value(&samples, "llmproxy_upstream_errors_total", &[good[0], good[1], ("error", "status_5xx")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "llmproxy_retries_total", &[good[0], good[1], ("reason", "status_5xx")]), Some(1.0));
    assert!(
        value(&samples, "llmproxy_upstream_ttft_seconds_count", &good).unwrap() >= 1.0,
        "TTFT observed for the stream"
    );
    assert_eq!(value(&samples, "llmproxy_upstream_inflight", &good), Some(0.0));
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_state", &good), Some(0.0));
    assert_eq!(
        value(&samples, "llmproxy_circuitbreaker_calls_total", &[good[0], good[1], ("result", "success")]),
        Some(3.0)
    );
    assert_eq!(
        value(&samples, "llmproxy_circuitbreaker_calls_total", &[good[0], good[1], ("result", "failure")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "llmproxy_upstream_healthy", &[("upstream", "good")]), Some(1.0));
    assert!(
        value(&samples, "llmproxy_upstream_health_checks_total", &[("upstream", "good"), ("result", "pass")]).unwrap()
            >= 1.0
    );
    assert!(value(&samples, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    // Every bucket bound LLMProxy's histograms have, for queries on them.
    for le in ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "20", "30", "60", "+Inf"] {
        let bucket = [fwd[0], ("method", "GET"), ("le", le)];
        assert!(value(&samples, "llmproxy_http_request_duration_seconds_bucket", &bucket).is_some(), "le={le}");
    }
    assert!(!text.contains(&up.addr.to_string()), "upstream URLs never appear in metrics");
}

#[tokio::test]
async fn breaker_transitions_are_counted_and_the_state_gauge_moves() {
    let up = TestUpstream::start().await;
    let server =
        start(&group_config(&[("flaky", up.url(""), "    breaker: {threshold: 0.5, cooldown: 60}")], "")).await;
    let addr = server.forward_addr("main").unwrap();
    for _ in 0..5 {
        get(addr, "/v1/status?code=500").await;
    }
    assert_eq!(get(addr, "/v1/echo").await.0, 503);
    let (_, samples, _) = scrape(&server).await;
    let l = [("group", "g"), ("upstream", "flaky")];
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_state", &l), Some(1.0), "open");
    assert_eq!(
        value(
            &samples,
            "llmproxy_circuitbreaker_state_changes_total",
            &[l[0], l[1], ("from", "closed"), ("to", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "llmproxy_circuitbreaker_state_changes_total",
            &[l[0], l[1], ("from", "open"), ("to", "half_open")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_calls_total", &[l[0], l[1], ("result", "failure")]), Some(5.0));
    assert_eq!(
        value(&samples, "llmproxy_http_request_errors_total", &[("error", "no_upstream_available"), ("status", "503")]),
        Some(1.0)
    );
    // LLMProxy's per-state counters, for the dashboards built on them.
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_opened_total", &l), Some(1.0));
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_half_opened_total", &l), Some(0.0));
    assert_eq!(value(&samples, "llmproxy_circuitbreaker_closed_total", &l), Some(0.0));
}

#[tokio::test]
async fn secrets_never_appear_in_metrics() {
    let yaml = group_config(
        &[("secretive", "mock://".into(), "    auth: {type: bearer, token: sk-very-secret-token}\n    headers: [{op: insert, key: x-api-key, value: other-secret}]")],
        "    http_client: {proxy: {url: \"http://user:proxy-pass@127.0.0.1:9\"}}",
    );
    let server = start(&yaml).await;
    get(server.forward_addr("main").unwrap(), "/v1/models").await;
    let (_, _, text) = scrape(&server).await;
    for secret in ["sk-very-secret-token", "other-secret", "proxy-pass"] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }
}
