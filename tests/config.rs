//! Configuration loading: defaults, ranges, references, unknown keys, environment, round trip.

use llmproxy::config::{self, Auth, Config, HeaderOpKind, Strategy};
use serde_yaml::Value;
use std::collections::HashMap;

const MINIMAL: &str = r#"
http_server:
  forwards:
    - name: f
      port: 3000
      default_group: g
upstreams:
  - name: a
    url: "http://127.0.0.1:8000/v1"
upstream_groups:
  - name: g
    upstreams:
      - name: a
"#;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(text: &str) -> Result<Config, String> {
    config::from_str(text, &no_env()).map_err(|e| e.to_string())
}

/// `a.b.0.c` → the node at a.b[0].c, creating mappings on the way.
fn set(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    for seg in path.split('.') {
        node = match seg.parse::<usize>() {
            Ok(i) => {
                let seq = node.as_sequence_mut().unwrap();
                if i == seq.len() {
                    seq.push(Value::Null);
                }
                &mut seq[i]
            }
            Err(_) => {
                if node.is_null() {
                    *node = Value::Mapping(Default::default());
                }
                let map = node.as_mapping_mut().unwrap();
                map.entry(Value::String(seg.into())).or_insert(Value::Null)
            }
        };
    }
    *node = value;
}

fn with(path: &str, value: Value) -> Result<Config, String> {
    let mut root: Value = serde_yaml::from_str(MINIMAL).unwrap();
    set(&mut root, path, value);
    parse(&serde_yaml::to_string(&root).unwrap())
}

fn dotted_to_shown(path: &str) -> String {
    path.split('.').fold(String::new(), |mut acc, seg| {
        if seg.parse::<usize>().is_ok() {
            acc.push_str(&format!("[{seg}]"));
        } else {
            if !acc.is_empty() {
                acc.push('.');
            }
            acc.push_str(seg);
        }
        acc
    })
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    let f = &c.http_server.forwards[0];
    assert_eq!(f.address.to_string(), "0.0.0.0");
    assert_eq!(f.timeout.connect, 10);
    assert_eq!(f.max_body_size, 32 * 1024 * 1024);
    assert_eq!(f.max_buffered_bodies, 16 * 32 * 1024 * 1024);
    assert!(f.ratelimit.is_none() && f.routing.is_empty() && f.tls.is_none());
    let admin = &c.http_server.admin;
    assert_eq!((admin.port, admin.address.to_string(), admin.timeout.connect), (9000, "0.0.0.0".into(), 10));
    let u = &c.upstreams[0];
    assert_eq!(u.auth, Auth::None);
    assert!(u.headers.is_empty() && u.breaker.is_none() && u.ratelimit.is_none() && u.mock.is_none());
    assert_eq!(u.weight, 1);
    let g = &c.upstream_groups[0];
    assert_eq!((g.upstreams[0].weight, g.upstreams[0].weight_with(u)), (None, 1), "the upstream's weight");
    assert_eq!(g.balance.strategy, Strategy::Roundrobin);
    let h = &g.http_client;
    assert_eq!(h.agent, "LLMProxy/1.0");
    assert_eq!(h.keepalive, 60);
    assert!(h.stream);
    assert_eq!((h.timeout.connect, h.timeout.request, h.timeout.idle), (10, 300, 60));
    assert!(h.retry.is_none(), "no retry block means no retries");
    assert!(h.proxy.is_none());
}

#[test]
fn block_defaults() {
    let c = with("http_server.forwards.0.ratelimit", Value::Mapping(Default::default())).unwrap();
    let r = c.http_server.forwards[0].ratelimit.clone().unwrap();
    assert!(r.enabled);
    assert_eq!((r.per_second, r.burst), (100, 200));
    let c = with("upstreams.0.breaker", Value::Mapping(Default::default())).unwrap();
    let b = c.upstreams[0].breaker.clone().unwrap();
    assert_eq!((b.threshold, b.cooldown), (0.5, 30));
    let c = with("upstream_groups.0.http_client.retry", Value::Mapping(Default::default())).unwrap();
    let r = c.upstream_groups[0].http_client.retry.clone().unwrap();
    assert_eq!((r.attempts, r.initial), (3, 500));
    let c = with("upstreams.0.ratelimit", Value::Mapping(Default::default())).unwrap();
    let r = c.upstreams[0].ratelimit.clone().unwrap();
    assert_eq!((r.per_second, r.burst), (100, 200));
}

#[test]
fn every_range_boundary_is_inclusive_and_enforced() {
    let int_ranges: &[(&str, u64, u64)] = &[
        ("http_server.forwards.0.port", 0, 65535),
        ("http_server.forwards.0.ratelimit.per_second", 1, 10_000),
        ("http_server.forwards.0.ratelimit.burst", 1, 20_000),
        ("http_server.forwards.0.timeout.connect", 1, 120),
        ("http_server.forwards.0.max_body_size", 1024, 1024 * 1024 * 1024),
        ("http_server.admin.port", 0, 65535),
        ("http_server.admin.timeout.connect", 1, 120),
        ("upstreams.0.breaker.cooldown", 1, 3600),
        ("upstreams.0.ratelimit.per_second", 1, 10_000),
        ("upstreams.0.ratelimit.burst", 1, 20_000),
        ("upstreams.0.weight", 1, 65_535),
        ("upstream_groups.0.upstreams.0.weight", 1, 65_535),
        ("upstream_groups.0.http_client.keepalive", 0, 600),
        ("upstream_groups.0.http_client.timeout.connect", 1, 120),
        ("upstream_groups.0.http_client.timeout.request", 1, 1200),
        ("upstream_groups.0.http_client.timeout.idle", 5, 1800),
        ("upstream_groups.0.http_client.retry.attempts", 1, 100),
        ("upstream_groups.0.http_client.retry.initial", 100, 10_000),
    ];
    for &(path, min, max) in int_ranges {
        // Ports 0..=65535 have no out-of-range value below; the admin/forward clash is avoided
        // by keeping the forward port distinct.
        for ok in [min, max] {
            let value = Value::from(ok);
            let r = if path == "http_server.admin.port" && ok == 3000 { continue } else { with(path, value) };
            assert!(r.is_ok(), "{path}={ok} should be accepted: {r:?}");
        }
        let mut bad = vec![max + 1];
        if min > 0 {
            bad.push(min - 1);
        }
        for b in bad {
            let err = with(path, Value::from(b)).unwrap_err();
            assert!(err.contains(&dotted_to_shown(path)), "{path}={b}: error must name the path: {err}");
            assert!(err.contains("out of range"), "{path}={b}: {err}");
        }
    }
    let threshold = "upstreams.0.breaker.threshold";
    for ok in [0.01, 1.0] {
        assert!(with(threshold, Value::from(ok)).is_ok());
    }
    for bad in [0.009, 1.01] {
        assert!(with(threshold, Value::from(bad)).unwrap_err().contains("upstreams[0].breaker.threshold"));
    }
}

#[test]
fn numbers_may_come_from_strings_and_sizes_have_units() {
    let c = with("http_server.forwards.0.port", Value::from("3100")).unwrap();
    assert_eq!(c.http_server.forwards[0].port, 3100);
    let c = with("http_server.forwards.0.max_body_size", Value::from("1MiB")).unwrap();
    assert_eq!(c.http_server.forwards[0].max_body_size, 1 << 20);
    // A rate block is on unless it says `enabled: false`, on upstreams as on forwards.
    let c = with("upstreams.0.ratelimit.enabled", Value::from(false)).unwrap();
    assert!(c.upstreams[0].ratelimit.is_none());
    let c = with("upstreams.0.ratelimit.per_second", Value::from(5)).unwrap();
    assert_eq!(c.upstreams[0].ratelimit.as_ref().map(|r| r.per_second), Some(5));
    let c = with("http_server.forwards.0.max_buffered_bodies", Value::from("2GiB")).unwrap();
    assert_eq!(c.http_server.forwards[0].max_buffered_bodies, 2 << 30);
    let err = with("http_server.forwards.0.max_buffered_bodies", Value::from("1MiB")).unwrap_err();
    assert!(err.contains("http_server.forwards[0].max_buffered_bodies: must hold at least one body"), "{err}");
    let err = with("http_server.forwards.0.max_body_size", Value::from("lots")).unwrap_err();
    assert!(err.contains("max_body_size") && err.contains("not a size"), "{err}");
    let err = with("http_server.forwards.0.port", Value::from("http")).unwrap_err();
    assert!(err.contains("http_server.forwards[0].port: expected a whole number"), "{err}");
}

#[test]
fn cross_reference_errors_name_path_and_known_names() {
    let err = with("http_server.forwards.0.default_group", Value::from("nope")).unwrap_err();
    assert_eq!(err, "http_server.forwards[0].default_group: unknown upstream group \"nope\" (known: g)");
    let mut root: Value = serde_yaml::from_str(MINIMAL).unwrap();
    set(
        &mut root,
        "http_server.forwards.0.routing",
        serde_yaml::from_str("[{path: /v1/x, target_group: ghost}]").unwrap(),
    );
    let err = parse(&serde_yaml::to_string(&root).unwrap()).unwrap_err();
    assert!(
        err.starts_with("http_server.forwards[0].routing[0].target_group: unknown upstream group \"ghost\""),
        "{err}"
    );
    let err = with("upstream_groups.0.upstreams.0.name", Value::from("ghost")).unwrap_err();
    assert_eq!(err, "upstream_groups[0].upstreams[0].name: unknown upstream \"ghost\" (known: a)");
    let err = with("upstream_groups.0.upstreams", serde_yaml::from_str("[{name: a}, {name: a}]").unwrap()).unwrap_err();
    assert!(err.contains("upstream_groups[0].upstreams[1].name") && err.contains("listed twice"), "{err}");
    let err = with("upstream_groups.0.upstreams", serde_yaml::from_str("[]").unwrap()).unwrap_err();
    assert!(err.contains("upstream_groups[0].upstreams: needs at least one upstream"), "{err}");
    let err = with("upstreams.1", serde_yaml::from_str("{name: a, url: 'http://x'}").unwrap()).unwrap_err();
    assert!(err.contains("upstreams[1].name: duplicate name \"a\""), "{err}");
    let err =
        with("upstream_groups.1", serde_yaml::from_str("{name: g, upstreams: [{name: a}]}").unwrap()).unwrap_err();
    assert!(err.contains("upstream_groups[1].name: duplicate name"), "{err}");
    let err = with("http_server.forwards.1", serde_yaml::from_str("{name: f, port: 3001, default_group: g}").unwrap())
        .unwrap_err();
    assert!(err.contains("http_server.forwards[1].name: duplicate name"), "{err}");
}

#[test]
fn route_patterns_must_compile() {
    for (pattern, why) in [("/v1/{m:[}", "invalid regex"), ("v1/x", "must start with"), ("/v1/a}", "without opening")] {
        let routes =
            Value::Sequence(vec![serde_yaml::from_str(&format!("{{path: '{pattern}', target_group: g}}")).unwrap()]);
        let err = with("http_server.forwards.0.routing", routes).unwrap_err();
        assert!(err.starts_with("http_server.forwards[0].routing[0].path:") && err.contains(why), "{pattern}: {err}");
    }
    let routes = serde_yaml::from_str("[{path: /v1/:a, target_group: g}, {path: /v1/:b, target_group: g}]").unwrap();
    assert!(with("http_server.forwards.0.routing", routes).unwrap_err().contains("routing[1].path"));
}

#[test]
fn unknown_keys_are_errors_with_path_and_suggestion() {
    let err = with("upstream_groups.0.http_client.stream_mod", Value::from(true)).unwrap_err();
    assert_eq!(
        err,
        "upstream_groups[0].http_client.stream_mod: unknown key \"stream_mod\"; did you mean \"stream_mode\"?"
    );
    let err = with("upstreams.0.brekaer", Value::Mapping(Default::default())).unwrap_err();
    assert!(err.contains("upstreams[0].brekaer") && err.contains("did you mean \"breaker\""), "{err}");
    let err = with("colour", Value::from(1)).unwrap_err();
    assert!(
        err.starts_with("colour: unknown key \"colour\" (known keys: http_server, upstreams, upstream_groups)"),
        "{err}"
    );
}

#[test]
fn what_llmproxy_tolerates_loads() {
    // Capitalised choices (one release wrote `op: Insert`), credentials the auth type does not
    // use, a value on a remove, and a forward without a port (LLMProxy's default: 3000).
    let c = with(
        "upstreams.0.headers",
        serde_yaml::from_str("[{op: Insert, key: x-a, value: v}, {op: REMOVE, key: x-b, value: v}]").unwrap(),
    )
    .unwrap();
    assert_eq!(c.upstreams[0].headers[0].op, HeaderOpKind::Insert);
    assert_eq!(
        (c.upstreams[0].headers[1].op, c.upstreams[0].headers[1].value.as_deref()),
        (HeaderOpKind::Remove, None)
    );
    let c = with("upstreams.0.auth", serde_yaml::from_str("{type: None, token: x, username: u}").unwrap()).unwrap();
    assert_eq!(c.upstreams[0].auth, Auth::None);
    let c = with("upstream_groups.0.balance.strategy", Value::from("Failover")).unwrap();
    assert_eq!(c.upstream_groups[0].balance.strategy, Strategy::Failover);
    let mut root: Value = serde_yaml::from_str(MINIMAL).unwrap();
    if let Some(forward) = root["http_server"]["forwards"][0].as_mapping_mut() {
        forward.remove("port");
    }
    let c = config::from_str(&serde_yaml::to_string(&root).unwrap(), &HashMap::<String, String>::new()).unwrap();
    assert_eq!(c.http_server.forwards[0].port, 3000);
}

#[test]
fn value_errors_name_the_path() {
    let cases: &[(&str, Value, &str)] = &[
        ("upstreams.0.url", Value::from("ftp://x"), "upstreams[0].url: \"ftp://x\": scheme \"ftp\" is not supported"),
        ("upstreams.0.url", Value::from("not a url"), "upstreams[0].url"),
        ("upstreams.0.auth", serde_yaml::from_str("{type: bearer}").unwrap(), "upstreams[0].auth.token: is required"),
        (
            "upstreams.0.auth",
            serde_yaml::from_str("{type: basic, password: p}").unwrap(),
            "upstreams[0].auth.username: is required",
        ),
        (
            "upstreams.0.auth",
            serde_yaml::from_str("{type: basic, username: u}").unwrap(),
            "upstreams[0].auth.password: is required",
        ),
        (
            "upstreams.0.auth",
            serde_yaml::from_str("{type: token}").unwrap(),
            "upstreams[0].auth.type: unknown value \"token\"",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: insert, key: 'bad key', value: v}]").unwrap(),
            "upstreams[0].headers[0].key",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: insert, key: x-a}]").unwrap(),
            "upstreams[0].headers[0].value: is required",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: remove, key: x-b}, {op: replace, key: Content-Length, value: '5'}]").unwrap(),
            "upstreams[0].headers[1].key: \"Content-Length\" cannot be set: the proxy frames each request itself",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: insert, key: transfer-encoding, value: chunked}]").unwrap(),
            "upstreams[0].headers[0].key: \"transfer-encoding\" cannot be set",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: remove, key: Host}]").unwrap(),
            "upstreams[0].headers[0].key: \"host\" cannot be removed",
        ),
        (
            "upstreams.0.http_client",
            serde_yaml::from_str("{timeout: {request: 30}}").unwrap(),
            "upstreams[0].http_client: belongs to the upstream group here",
        ),
        (
            "upstreams.0.headers",
            serde_yaml::from_str("[{op: upsert, key: x-a, value: v}]").unwrap(),
            "upstreams[0].headers[0].op: unknown value",
        ),
        (
            "upstreams.0.mock",
            Value::Mapping(Default::default()),
            "upstreams[0].mock: a mock block needs url: \"mock://\"",
        ),
        (
            "upstream_groups.0.balance.strategy",
            Value::from("fastest"),
            "upstream_groups[0].balance.strategy: unknown value",
        ),
        (
            "upstream_groups.0.http_client.proxy.url",
            Value::from("ftp://p:1"),
            "upstream_groups[0].http_client.proxy.url",
        ),
        (
            "http_server.forwards.0.address",
            Value::from("localhost"),
            "http_server.forwards[0].address: \"localhost\" is not an IP address",
        ),
        ("http_server.forwards.0.name", Value::from(""), "http_server.forwards[0].name: must not be empty"),
        ("http_server.forwards", Value::Sequence(vec![]), "http_server.forwards: needs at least one forward"),
        (
            "upstream_groups.0.http_client.stream",
            Value::from("maybe"),
            "upstream_groups[0].http_client.stream: expected true or false",
        ),
    ];
    for (path, value, want) in cases {
        let err = with(path, value.clone()).unwrap_err();
        assert!(err.contains(want), "{path}: got {err:?}, want {want:?}");
    }
    let err = parse("http_server: [").unwrap_err();
    assert!(err.starts_with("invalid YAML at line"), "{err}");
}

#[test]
fn duplicate_listen_addresses_are_rejected() {
    let err = with("http_server.admin.port", Value::from(3000)).unwrap_err();
    assert!(
        err.contains("http_server.admin.port: 0.0.0.0:3000 is already used by http_server.forwards[0].port"),
        "{err}"
    );
    let second = serde_yaml::from_str("{name: f2, port: 3000, address: 127.0.0.1, default_group: g}").unwrap();
    let err = with("http_server.forwards.1", second).unwrap_err();
    assert!(err.contains("http_server.forwards[1].port: 127.0.0.1:3000 is already used"), "{err}");
    // Different ports, or two port-0 listeners, are fine.
    assert!(with("http_server.forwards.1", serde_yaml::from_str("{name: f2, port: 3001, default_group: g}").unwrap())
        .is_ok());
    let mut root: Value = serde_yaml::from_str(MINIMAL).unwrap();
    set(&mut root, "http_server.forwards.0.port", Value::from(0));
    set(&mut root, "http_server.admin.port", Value::from(0));
    assert!(parse(&serde_yaml::to_string(&root).unwrap()).is_ok());
}

#[test]
fn environment_expansion_and_overrides() {
    let text = MINIMAL.replace(
        "url: \"http://127.0.0.1:8000/v1\"",
        "url: \"${BASE:-http://127.0.0.1:9}/v1\"\n    auth: {type: bearer, token: \"${KEY}\"}",
    );
    let c = config::from_str(&text, &env(&[("KEY", "sk-123")])).unwrap();
    assert_eq!(c.upstreams[0].url, "http://127.0.0.1:9/v1");
    assert_eq!(c.upstreams[0].auth, Auth::Bearer { token: "sk-123".into() });
    let c = config::from_str(&text, &env(&[("KEY", "k"), ("BASE", "https://api.example.com")])).unwrap();
    assert_eq!(c.upstreams[0].url, "https://api.example.com/v1");

    let err = config::from_str(&text, &no_env()).unwrap_err().to_string();
    assert_eq!(err, "upstreams[0].auth.token: is empty: environment variable KEY is unset or empty");
    let basic = MINIMAL.replace(
        "url: \"http://127.0.0.1:8000/v1\"",
        "url: http://x\n    auth: {type: basic, username: u, password: \"${PW}\"}",
    );
    let err = config::from_str(&basic, &env(&[("PW", "")])).unwrap_err().to_string();
    assert!(err.contains("upstreams[0].auth.password: is empty: environment variable PW"), "{err}");

    let overrides = env(&[
        ("KEY", "from-file-var"),
        ("LLMPROXY_UPSTREAMS__0__AUTH__TOKEN", "sk-override"),
        ("LLMPROXY_HTTP_SERVER__FORWARDS__0__PORT", "3999"),
        ("LLMPROXY_UPSTREAM_GROUPS__0__HTTP_CLIENT__STREAM", "false"),
        ("LLMPROXY_ADMIN_AUTH_TOKEN", "admin-secret"),
    ]);
    let c = config::from_str(&text, &overrides).unwrap();
    assert_eq!(c.upstreams[0].auth, Auth::Bearer { token: "sk-override".into() });
    assert_eq!(c.http_server.forwards[0].port, 3999);
    assert!(!c.upstream_groups[0].http_client.stream);
    // Override values are literal: no second expansion, and no error that could print them.
    for token in ["pa$$w", "x${y", "${KEY}", "$${KEY}", "$"] {
        let c = config::from_str(&text, &env(&[("KEY", "k"), ("LLMPROXY_UPSTREAMS__0__AUTH__TOKEN", token)])).unwrap();
        assert_eq!(c.upstreams[0].auth, Auth::Bearer { token: token.into() });
    }
    let err = config::from_str(&text.replace("${KEY}", "sk-secret${"), &no_env()).unwrap_err().to_string();
    assert!(err.starts_with("upstreams[0].auth.token: ") && !err.contains("sk-secret"), "{err}");
    let bad = env(&[("KEY", "k"), ("LLMPROXY_UPSTREAMS__0__COLOUR", "red")]);
    let err = config::from_str(&text, &bad).unwrap_err().to_string();
    assert!(err.contains("upstreams[0].colour: unknown key"), "{err}");
}

#[test]
fn llmproxy_aliases_are_accepted() {
    let text = r#"
http_server:
  forwards:
    - name: to_group
      port: 3000
      address: "0.0.0.0"
      upstream_group: "grp"
      ratelimit: {enabled: true, per_second: 100, burst: 200}
      timeout: {connect: 10}
  admin: {port: 9000, address: "0.0.0.0", timeout: {connect: 10}}
upstreams:
  - name: a
    url: "https://api.openai.com/v1"
    auth: {type: "bearer", token: "sk-x"}
upstream_groups:
  - name: grp
    upstreams: [{name: a, weight: 8}]
    balance: {strategy: "least_connections"}
    http_client:
      agent: "LLMProxy/1.0 (X)"
      keepalive: 90
      stream_mode: true
      timeout: {connect: 10, request: 300, idle: 90}
      retry: {enabled: false, attempts: 2, initial: 1000}
      proxy: {enabled: false, url: ""}
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.http_server.forwards[0].default_group, "grp");
    let g = &c.upstream_groups[0];
    assert_eq!(g.balance.strategy, Strategy::ResponseAware);
    assert!(g.http_client.retry.is_none() && g.http_client.proxy.is_none());
    let err = parse(&text.replace("stream_mode: true", "stream_mode: true\n      stream: false")).unwrap_err();
    assert!(err.contains("set only one of stream / stream_mode, or both alike"), "{err}");
    assert!(parse(&text.replace("stream_mode: true", "stream_mode: true\n      stream: \"true\"")).is_ok());
}

#[test]
fn header_conditions_and_removals_that_cannot_mean_two_things() {
    let text = r#"
http_server:
  forwards:
    - {name: f, default_group: g, routing: [{path: /v1/*, headers: {X-Team: a, x-team: b}, target_group: g}]}
upstreams:
  - {name: a, url: "http://127.0.0.1:1", headers: [{op: remove, key: Connection}, {op: replace, key: Host, value: h.internal}]}
upstream_groups:
  - {name: g, upstreams: [{name: a}]}
"#;
    let err = parse(text).unwrap_err();
    assert!(err.contains("http_server.forwards[0].routing[0].headers.x-team: names a header already named"), "{err}");
    // Removing a framing header is harmless, and Host may be set: both load.
    assert!(parse(&text.replace("X-Team: a, ", "")).is_ok());
}

/// What LLMProxy accepted because it never looked: an upstream's internal `id`, the ranges of
/// blocks that are off, and IPv6 listen addresses written as for a socket address.
#[test]
fn what_llmproxy_did_not_check_loads_too() {
    let text = r#"
http_server:
  forwards:
    - {name: f, address: "[::]", upstream_group: g, ratelimit: {enabled: false, per_second: 0, burst: 0}}
  admin: {address: "[::1]"}
upstreams:
  - {name: a, url: "https://api.openai.com/v1", id: 6f1c2d3e-0000-4000-8000-000000000000, ratelimit: {enabled: false, per_second: 0}}
upstream_groups:
  - name: g
    upstreams: [{name: a}]
    http_client: {retry: {enabled: false, attempts: 0, initial: 0}}
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.http_server.forwards[0].address, "::".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(c.http_server.admin.address, "::1".parse::<std::net::IpAddr>().unwrap());
    assert!(!c.http_server.forwards[0].ratelimit.as_ref().unwrap().enabled);
    assert!(c.upstreams[0].ratelimit.is_none() && c.upstream_groups[0].http_client.retry.is_none());
    // Blocks that are on are checked as ever.
    let err = parse(&text.replace("enabled: false, attempts: 0", "enabled: true, attempts: 0")).unwrap_err();
    assert!(err.contains("upstream_groups[0].http_client.retry.attempts"), "{err}");
    assert!(parse(&text.replace("\"[::]\"", "\"[::\"")).is_err());
}

const EVERY_KEY: &str = r#"
http_server:
  forwards:
    - name: main
      port: 3000
      address: "127.0.0.1"
      default_group: pool
      routing:
        - {path: "/v1/embeddings", target_group: embed}
        - {path: "/v1/{model:gpt-.*}/x", target_group: pool}
        - {path: "/v1/:kind/y", target_group: pool}
        - {path: "/files/*", target_group: embed}
        - {model: "claude-*", target_group: embed}
        - {path: "/v1/embeddings", model: "text-embedding-3-*", headers: {x-tenant: "acme-*"}, target_group: embed}
      ratelimit: {enabled: true, per_second: 10, burst: 20}
      auth:
        keys:
          - {name: team-a, key: sk-a, ratelimit: {per_second: 5, burst: 10}}
          - {name: team-b, key: sk-b}
      access: {allow: ["10.0.0.0/8", "127.0.0.1", "::1"], deny: ["10.6.0.0/16"]}
      access_log: true
      timeout: {connect: 5}
      max_body_size: 2097152
      tls: {cert: /etc/cert.pem, key: /etc/key.pem}
  admin:
    port: 9100
    address: "::1"
    timeout: {connect: 3}
    tls: {cert: /etc/a.pem, key: /etc/a.key}
upstreams:
  - name: a
    url: "https://api.openai.com/v1"
    auth: {type: bearer, token: "sk-a"}
    headers:
      - {op: insert, key: x-a, value: "1"}
      - {op: replace, key: x-b, value: "2"}
      - {op: remove, key: x-c}
    breaker: {threshold: 0.25, cooldown: 12}
    ratelimit: {per_second: 7, burst: 9}
    weight: 4
    max_concurrency: 16
    health_check: {path: /v1/models, interval: 15, timeout: 3}
  - name: b
    url: "http://10.0.0.2:8000"
    auth: {type: basic, username: u, password: p}
  - name: m
    url: "mock://"
    mock: {model: m1, ttft_ms: 1, token_delay_ms: 2, tokens: 3, error_rate: 0.5, error_status: 503}
upstream_groups:
  - name: pool
    upstreams: [{name: a, weight: 8}, {name: b, weight: 2}, {name: m}]
    balance: {strategy: weighted_roundrobin}
    http_client:
      agent: "agent/2"
      keepalive: 0
      stream: false
      timeout: {connect: 2, request: 30, idle: 15}
      retry: {attempts: 5, initial: 200}
      proxy: {url: "socks5://user:pw@127.0.0.1:1080"}
      track_usage: true
      sse_keepalive: 15
  - name: embed
    upstreams: [{name: m}]
    balance: {strategy: failover}
"#;

#[test]
fn a_config_using_every_key_round_trips() {
    let c = parse(EVERY_KEY).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.headers[2].op, HeaderOpKind::Remove);
    assert_eq!(u.breaker.as_ref().unwrap().threshold, 0.25);
    assert_eq!(c.upstream_groups[0].upstreams[2].weight, None, "inherits");
    assert_eq!(c.upstream_groups[0].upstreams[0].weight, Some(8));
    assert_eq!(c.http_server.admin.address.to_string(), "::1");
    assert_eq!(c.upstreams[2].mock.as_ref().unwrap().error_status, 503);
    let written = serde_yaml::to_string(&c).unwrap();
    let again = parse(&written).unwrap_or_else(|e| panic!("re-reading the written config failed: {e}\n{written}"));
    assert_eq!(c, again);
}

#[test]
fn default_config_file_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.default.yaml");
    let c = config::load(std::path::Path::new(path), &no_env()).unwrap();
    assert!(c.upstreams.iter().all(|u| u.mock.is_some()), "the default config must run without network");
    assert_eq!(c.http_server.forwards[0].address.to_string(), "127.0.0.1");
}

#[test]
fn missing_file_names_the_path() {
    let err = config::load(std::path::Path::new("/nonexistent/llmproxy.yaml"), &no_env()).unwrap_err().to_string();
    assert!(err.starts_with("/nonexistent/llmproxy.yaml: cannot read configuration: no such file"), "{err}");
}

#[test]
fn llm_gateway_keys_are_validated_with_paths() {
    let rule = |yaml: &str| with("http_server.forwards.0.routing", serde_yaml::from_str(yaml).unwrap());
    let err = rule("[{target_group: g}]").unwrap_err();
    assert!(err.contains("http_server.forwards[0].routing[0]: a routing rule needs a `path` or a `model`"), "{err}");
    let err = rule("[{headers: {x-tenant: a}, target_group: g}]").unwrap_err();
    assert!(err.contains("needs a `path` or a `model`"), "{err}");
    let c = rule("[{model: 'gpt-*', headers: {X-Tenant: 'acme-*'}, target_group: g}]").unwrap();
    assert_eq!(c.http_server.forwards[0].routing[0].headers, vec![("x-tenant".to_string(), "acme-*".to_string())]);
    let err = rule("[{model: 'gpt-*', path: 'v1', target_group: g}]").unwrap_err();
    assert!(err.contains("routing[0].path"), "{err}");
    let err =
        rule("[{model: 'gpt-*', target_group: g}, {model: 'o*', target_group: g}, {model: 'gpt-*', target_group: g}]")
            .unwrap_err();
    assert!(err.contains("http_server.forwards[0].routing[2]: repeats the conditions of an earlier rule"), "{err}");

    let err =
        with("http_server.forwards.0.access", serde_yaml::from_str("{allow: [10.0.0.0/8, 10.0.0.0/33]}").unwrap())
            .unwrap_err();
    assert!(
        err.starts_with("http_server.forwards[0].access.allow[1]: \"10.0.0.0/33\": prefix length must be 0-32"),
        "{err}"
    );
    let err =
        with("http_server.forwards.0.access", serde_yaml::from_str("{deny: [example.com]}").unwrap()).unwrap_err();
    assert!(err.contains("access.deny[0]") && err.contains("not an IP address"), "{err}");

    let keys = |yaml: &str| with("http_server.forwards.0.auth", serde_yaml::from_str(yaml).unwrap());
    let err = keys("{keys: [{name: a, key: k1}, {name: a, key: k2}]}").unwrap_err();
    assert!(err.contains("auth.keys[1].name: duplicate key name \"a\""), "{err}");
    let err = keys("{keys: [{name: a, key: k1}, {name: b, key: k1}]}").unwrap_err();
    assert!(err.contains("auth.keys[1].key: the same key is also given to \"a\""), "{err}");
    let err = keys("{keys: [{name: a, key: '${UNSET_CLIENT_KEY}'}]}").unwrap_err();
    assert!(err.contains("auth.keys[0].key: is empty: environment variable UNSET_CLIENT_KEY"), "{err}");
    let err = keys("{keys: []}").unwrap_err();
    assert!(err.contains("auth.keys: needs at least one key"), "{err}");
    // As YAML double-quoted strings: a line break, a leading space, a space inside.
    for unmatchable in ["sk-a\\n", " sk-a", "sk a"] {
        let err = keys(&format!("{{keys: [{{name: a, key: \"{unmatchable}\"}}]}}")).unwrap_err();
        assert!(err.contains("auth.keys[0].key: must be printable ASCII") && !err.contains("sk"), "{err}");
    }

    for (v, ok) in [(0, false), (1, true), (299, true), (300, false), (3601, false)] {
        assert_eq!(
            with("upstream_groups.0.http_client.sse_keepalive", Value::from(v)).is_ok(),
            ok,
            "sse_keepalive {v}"
        );
    }
    let err = with("upstream_groups.0.http_client.sse_keepalive", Value::from(300)).unwrap_err();
    assert!(err.contains("http_client.sse_keepalive: must be shorter than timeout.request (300s)"), "{err}");
    let c = parse(MINIMAL).unwrap();
    assert!(!c.upstream_groups[0].http_client.track_usage && c.upstream_groups[0].http_client.sse_keepalive.is_none());
    assert!(!c.http_server.forwards[0].access_log && c.http_server.forwards[0].auth.is_none());
}
