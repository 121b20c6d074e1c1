//! Strategy order and distribution, through the same `pick` the proxy uses.

use llmproxy::balance::{pick, Reuse, Unavailable};
use llmproxy::runtime::Runtime;
use std::collections::HashMap;

fn runtime(strategy: &str, members: &[(&str, u32)], upstream_extra: &str) -> Runtime {
    let ups: String =
        members.iter().map(|(n, _)| format!("  - {{name: {n}, url: \"mock://\"{upstream_extra}}}\n")).collect();
    let list: String = members.iter().map(|(n, w)| format!("{{name: {n}, weight: {w}}}, ")).collect();
    let yaml = format!(
        "http_server:\n  forwards: [{{name: f, port: 0, default_group: g}}]\n  admin: {{port: 0}}\nupstreams:\n{ups}upstream_groups:\n  - {{name: g, upstreams: [{list}], balance: {{strategy: {strategy}}}}}\n"
    );
    Runtime::build(llmproxy::config::from_str(&yaml, &HashMap::new()).unwrap()).unwrap()
}

/// Names of `n` successive picks at time `now` (each released before the next).
fn picks(rt: &Runtime, n: usize, now: u64) -> Vec<String> {
    let g = &rt.groups[0];
    (0..n).map(|_| g.members[pick(g, 0, Reuse::Never, now).unwrap().index].upstream.name.clone()).collect()
}

fn counts(p: &[String]) -> HashMap<&str, usize> {
    let mut c = HashMap::new();
    for name in p {
        *c.entry(name.as_str()).or_default() += 1;
    }
    c
}

fn longest_run(p: &[String]) -> usize {
    p.chunk_by(|a, b| a == b).map(<[String]>::len).max().unwrap_or(0)
}

#[test]
fn roundrobin_rotates_strictly() {
    let rt = runtime("roundrobin", &[("a", 1), ("b", 1), ("c", 1)], "");
    let p = picks(&rt, 30, 1);
    assert_eq!(counts(&p), HashMap::from([("a", 10), ("b", 10), ("c", 10)]));
    assert_eq!(longest_run(&p), 1, "never the same twice in a row: {p:?}");
}

#[test]
fn weighted_roundrobin_is_smooth_and_exact() {
    let rt = runtime("weighted_roundrobin", &[("a", 8), ("b", 2)], "");
    let p = picks(&rt, 50, 1);
    assert_eq!(counts(&p), HashMap::from([("a", 40), ("b", 10)]));
    assert!(longest_run(&p) <= 4, "{p:?}");
}

#[test]
fn random_is_uniform() {
    let rt = runtime("random", &[("a", 1), ("b", 1), ("c", 1)], "");
    let c = counts(&picks(&rt, 3000, 1)).into_values().collect::<Vec<_>>();
    assert_eq!(c.len(), 3);
    assert!(c.iter().all(|&n| (850..=1150).contains(&n)), "{c:?}");
}

#[test]
fn failover_takes_the_first_available_in_list_order() {
    let rt = runtime("failover", &[("primary", 1), ("secondary", 1)], ", breaker: {threshold: 0.5, cooldown: 30}");
    assert!(picks(&rt, 10, 1).iter().all(|n| n == "primary"));
    // Trip the primary's breaker (injected time): picks move to the secondary.
    let primary = &rt.groups[0].members[0].upstream;
    let breaker = primary.breaker.as_ref().unwrap();
    for _ in 0..5 {
        let (a, _) = breaker.admit(1);
        breaker.record(a, false, 1);
    }
    assert!(picks(&rt, 10, 2).iter().all(|n| n == "secondary"));
    // A request that already tried the primary skips it.
    let g = &rt.groups[0];
    let rt2 = runtime("failover", &[("primary", 1), ("secondary", 1)], "");
    let g2 = &rt2.groups[0];
    assert_eq!(pick(g2, 0b01, Reuse::Never, 1).unwrap().index, 1);
    assert_eq!(pick(g2, 0b11, Reuse::Never, 1).err(), Some(Unavailable::Down { reopens_in: None }));
    assert_eq!(pick(g2, 0b11, Reuse::Except(0), 1).unwrap().index, 0, "reuse allowed: back to the first");
    assert_eq!(pick(g2, 0b11, Reuse::Except(0b01), 1).unwrap().index, 1, "the first is still in its Retry-After");
    assert_eq!(pick(g2, 0b11, Reuse::Except(0b11), 1).err(), Some(Unavailable::Down { reopens_in: None }));
    // After the cooldown the next pick is the primary's single probe.
    let now = 31 * 1_000_000_000 + 1;
    let probe = pick(g, 0, Reuse::Never, now).unwrap();
    assert_eq!(probe.index, 0);
    assert_eq!(pick(g, 0, Reuse::Never, now).unwrap().index, 1, "one probe at a time");
}

#[test]
fn response_aware_prefers_fast_samples_untried_and_recovers() {
    let rt = runtime("response_aware", &[("fast", 1), ("slow", 1), ("new", 1)], "");
    let g = &rt.groups[0];
    let s = 1_000_000_000u64;
    let t = 100 * s;
    let (fast, slow) = (&g.members[0].upstream.load, &g.members[1].upstream.load);
    for _ in 0..5 {
        fast.observe(0.05, true, t);
        slow.observe(1.5, true, t);
    }
    assert_eq!(picks(&rt, 1, t), vec!["new"], "an untried upstream is sampled first");
    g.members[2].upstream.load.observe(0.8, true, t);
    assert!(picks(&rt, 20, t).iter().all(|n| n == "fast"));
    // In-flight load spreads traffic: hold many requests on the fast one.
    let held: Vec<_> = (0..40).map(|_| fast.try_begin(None).unwrap()).collect();
    assert_ne!(picks(&rt, 1, t), vec!["fast"], "a loaded upstream yields");
    drop(held);
    // The fast one fails repeatedly: traffic moves away, then comes back after recovery.
    for _ in 0..10 {
        fast.observe(0.05, false, t);
    }
    assert!(picks(&rt, 5, t).iter().all(|n| n != "fast"));
    // The others keep answering meanwhile; its penalties fade, and it is tried again.
    let (new, later) = (&g.members[2].upstream.load, t + 120 * s);
    for second in 1..=120 {
        slow.observe(1.5, true, t + second * s);
        new.observe(0.8, true, t + second * s);
    }
    assert_eq!(picks(&rt, 1, later), vec!["fast"], "penalties fade: it is tried again");
}

#[test]
fn capped_and_full_upstreams_are_skipped() {
    let rt = runtime("roundrobin", &[("a", 1), ("b", 1)], ", ratelimit: {per_second: 1, burst: 1}, max_concurrency: 1");
    let g = &rt.groups[0];
    let t = 10_000_000_000;
    let first = pick(g, 0, Reuse::Never, t).unwrap();
    let second = pick(g, 0, Reuse::Never, t).unwrap();
    assert_ne!(first.index, second.index);
    drop((first, second));
    match pick(g, 0, Reuse::Never, t) {
        Err(Unavailable::RateLimited { wait }) => assert!(wait > 0 && wait <= 1_000_000_000),
        other => panic!("expected rate limited, got {:?}", other.map(|p| p.index)),
    }
    let later = t + 1_000_000_000;
    let held_a = pick(g, 0, Reuse::Never, later).unwrap();
    let held_b = pick(g, 0, Reuse::Never, later).unwrap();
    let much_later = later + 5_000_000_000;
    assert_eq!(pick(g, 0, Reuse::Never, much_later).err(), Some(Unavailable::Full));
    drop((held_a, held_b));
    assert!(pick(g, 0, Reuse::Never, much_later).is_ok());
}

/// Requests race for an upstream's single breaker probe: those the breaker refuses in the
/// pick must not have spent a rate token (the upstream's burst stays whole but for the probe).
/// A loser spends one only when it passes the availability filter before the winner takes the
/// probe, which happened in about one round in eight here: hence the many rounds.
#[test]
fn a_request_the_breaker_refuses_spends_no_rate_token() {
    const BURST: usize = 50;
    const RACERS: usize = 4;
    for round in 0..300 {
        let extra = format!(", breaker: {{threshold: 0.5, cooldown: 1}}, ratelimit: {{per_second: 1, burst: {BURST}}}");
        let rt = runtime("roundrobin", &[("a", 1)], &extra);
        let g = &rt.groups[0];
        let upstream = &g.members[0].upstream;
        let breaker = upstream.breaker.as_ref().unwrap();
        for _ in 0..5 {
            let (a, _) = breaker.admit(1);
            breaker.record(a, false, 1);
        }
        let after_cooldown = 10_000_000_000;
        let start = std::sync::Barrier::new(RACERS);
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..RACERS)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        pick(g, 0, Reuse::Never, after_cooldown).map(|p| p.admission).err()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| o.is_none()).count(), 1, "exactly one probe: {outcomes:?}");
        let (gcra, tat) = upstream.rate.as_ref().unwrap();
        let left = (0..BURST).take_while(|_| gcra.check(tat, after_cooldown).is_ok()).count();
        assert_eq!(left, BURST - 1, "only the probe took a token (round {round})");
        let rejected = g.members[0].metrics.breaker_calls[llmproxy::metrics::families::CALL_REJECTED].get();
        assert_eq!(rejected, RACERS as u64 - 1, "each loser counted once, in the filter or at the breaker");
    }
}

/// A configuration change that leaves the group's strategy, members and weights alone (here the
/// group's agent, changed before every request) keeps the rotation where it was.
#[test]
fn unrelated_configuration_changes_keep_the_rotation() {
    for strategy in ["roundrobin", "weighted_roundrobin"] {
        let yaml = |change: usize| {
            format!(
                "http_server:\n  forwards: [{{name: f, port: 0, default_group: g}}]\n  admin: {{port: 0}}\n\
                 upstreams:\n  - {{name: a, url: \"mock://\"}}\n  - {{name: b, url: \"mock://\"}}\n\
                 upstream_groups:\n  - {{name: g, upstreams: [{{name: a, weight: 8}}, {{name: b, weight: 2}}], \
                 balance: {{strategy: {strategy}}}, http_client: {{agent: \"change {change}\"}}}}\n"
            )
        };
        let config = |change| llmproxy::config::from_str(&yaml(change), &HashMap::new()).unwrap();
        let mut rt = Runtime::build(config(0)).unwrap();
        let mut names = Vec::new();
        for change in 1..=10 {
            names.extend(picks(&rt, 1, 1));
            rt = Runtime::rebuild(config(change), Some(&rt)).unwrap();
        }
        let expected = if strategy == "roundrobin" { [("a", 5), ("b", 5)] } else { [("a", 8), ("b", 2)] };
        assert_eq!(counts(&names), HashMap::from(expected), "{strategy}: {names:?}");
    }
}
