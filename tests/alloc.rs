//! The hot-path building blocks allocate nothing: checked with a counting global allocator.

use llmproxy::balance::{pick, Reuse};
use llmproxy::ratelimit::{Gcra, KeyedLimiter};
use llmproxy::router::Router;
use llmproxy::runtime::Runtime;
use llmproxy::upstream::breaker::Breaker;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::AtomicU64;

/// Counts allocations made by the current thread (tests run on several threads at once).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(mut f: impl FnMut()) -> u64 {
    f(); // warm up lazily initialised state (clock origin, thread locals)
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..1000 {
        f();
    }
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn router_match_allocates_nothing() {
    let mut r = Router::new();
    for (i, p) in
        ["/v1/chat/completions", "/v1/models/:id", "/v1/{d:gpt-[a-z0-9-]+}/x", "/files/*", "/a/*/b"].iter().enumerate()
    {
        r.insert(p, i).unwrap();
    }
    for path in ["/v1/chat/completions", "/v1/models/abc", "/v1/gpt-4o/x", "/files/a/b/c", "/a/z/b", "/nope"] {
        assert_eq!(
            allocations(|| {
                std::hint::black_box(r.lookup(path));
            }),
            0,
            "{path}"
        );
    }
}

#[test]
fn limiter_checks_allocate_nothing() {
    let g = Gcra::new(100, 10);
    let tat = AtomicU64::new(0);
    let mut t = 0;
    assert_eq!(
        allocations(|| {
            t += 1_000_000;
            let _ = g.check(&tat, t);
        }),
        0
    );
    let keyed: KeyedLimiter<std::net::IpAddr> = KeyedLimiter::new(Gcra::new(100, 10), 1024);
    let ips: Vec<std::net::IpAddr> = (0..64u8).map(|i| std::net::IpAddr::from([10, 0, 0, i])).collect();
    let mut i = 0;
    assert_eq!(
        allocations(|| {
            i += 1;
            let _ = keyed.check(&ips[i % 64], i as u64 * 1000);
        }),
        0
    );
}

#[test]
fn breaker_admit_and_record_allocate_nothing() {
    let b = Breaker::new(0.5, 30);
    let mut t = 0u64;
    assert_eq!(
        allocations(|| {
            t += 7_000_000;
            let (a, _) = b.admit(t);
            let _ = b.record(a, t % 3 != 0, t);
        }),
        0
    );
}

#[test]
fn every_strategy_picks_without_allocating() {
    for strategy in ["roundrobin", "weighted_roundrobin", "random", "response_aware", "failover"] {
        let ups: String = (0..6).map(|i| format!("  - {{name: u{i}, url: \"mock://\", breaker: {{}}, ratelimit: {{per_second: 10000, burst: 20000}}, max_concurrency: 100}}\n")).collect();
        let list: String = (0..6).map(|i| format!("{{name: u{i}, weight: {}}}, ", i + 1)).collect();
        let yaml = format!("http_server:\n  forwards: [{{name: f, port: 0, default_group: g}}]\n  admin: {{port: 0}}\nupstreams:\n{ups}upstream_groups:\n  - {{name: g, upstreams: [{list}], balance: {{strategy: {strategy}}}}}\n");
        let rt = Runtime::build(
            llmproxy::config::from_str(&yaml, &std::collections::HashMap::<String, String>::new()).unwrap(),
        )
        .unwrap();
        let g = &rt.groups[0];
        let mut t = 1_000_000_000u64;
        assert_eq!(
            allocations(|| {
                t += 1_000_000;
                drop(std::hint::black_box(pick(g, 0b10, Reuse::Except(0), t).ok()));
            }),
            0,
            "{strategy}"
        );
    }
}

#[test]
fn metric_recording_allocates_nothing() {
    let c = llmproxy::metrics::Counter::default();
    let h = llmproxy::metrics::Histogram::default();
    let mut x = 0.0;
    assert_eq!(
        allocations(|| {
            x += 0.37;
            c.inc();
            h.observe(x);
        }),
        0
    );
    let f = llmproxy::metrics::families::ForwardMetrics::default();
    assert_eq!(
        allocations(|| {
            f.requests[1].inc();
            f.duration[1].observe(0.2);
            f.proxy_error("rate_limited");
            f.upstream_status(503);
        }),
        0
    );
}

#[test]
fn the_counter_does_count() {
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 16]))), 1000);
}

#[test]
fn asking_for_usage_reads_the_body_without_building_it() {
    // A body crafted as thousands of tiny strings: parsed into a tree, every one would be an
    // allocation (and the memory many times the body's size).
    let body = format!(r#"{{"stream":true,"messages":[{}"a"]}}"#, r#""a","#.repeat(2_000));
    let mut asked = None;
    let made = allocations(|| asked = llmproxy::usage::ask_for_usage("/v1/chat/completions", body.as_bytes()));
    assert!(asked.is_some_and(|b| b.starts_with(br#"{"stream_options":{"include_usage":true},"stream""#)));
    assert!(made <= 2 * 1000, "{made} allocations for 1000 requests: the edited body, not a tree");
}
