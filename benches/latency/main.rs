//! Latency benchmark: the same load sent to a fast upstream directly and through llmproxyd.
//!
//! `make bench` runs the default suite and prints figures (it asserts nothing):
//! - closed loop at fixed concurrency and open loop at a fixed request rate (latency measured
//!   from the scheduled send time, so queueing is not hidden): throughput and p50/p90/p99/p99.9,
//!   direct vs proxied, and the difference (the proxy's added latency);
//! - streaming: added time to first token and added jitter between chunks;
//! - heap allocations per proxied request (in-process proxy, counting allocator);
//! - memory: RSS idle and with 1,000 concurrent slow SSE streams; time from start to listening.
//!
//! `make bench-compare` runs `compare`: nginx (plain keep-alive reverse proxy) and llmproxyd,
//! each pinned to core 0, upstream and load generator pinned to core 1, interleaved rounds. The
//! upstream and load generator there are raw-socket programs: with hyper on both ends they cost
//! the shared core more per request than either proxy costs its own, so they — not the proxies
//! — set the pace, and the comparison would measure nothing. `make bench-tail` runs `tail`: the
//! same pair, with only the open loops, in enough rounds to compare p99s.
//!
//! Subcommands (run as separate processes so they can be pinned): `upstream PORT` and
//! `load URL closed|open N SECONDS` (hyper), `raw-upstream PORT`,
//! `raw-load HOST:PORT closed|open N SECONDS` and `raw-pair HOST:PORT HOST:PORT RATE SECONDS`
//! (raw sockets; the pair shares one open loop, as the together load does).
//!
//! Files: this one holds the suite, the hyper load generator and what every mode shares;
//! `raw.rs` the raw-socket upstream and load generator, `compare.rs` the comparisons with
//! nginx (`compare`, `tail`), `instructions.rs` the callgrind count.

mod compare;
mod instructions;
mod raw;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Allocation counting: only threads that opted in (the in-process proxy's runtime) are counted.

struct Counting;

static PROXY_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            PROXY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            PROXY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// The fast upstream.

/// A chat-completion-sized JSON answer.
const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}"#;
const REQUEST: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say something short."}]}"#;

/// SSE chunks `gap` apart.
struct Chunks {
    left: u32,
    gap: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        use std::future::Future;
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.left -= 1;
        let gap = self.gap;
        self.timer.as_mut().reset(tokio::time::Instant::now() + gap);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n",
        )))))
    }
}

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn upstream_answer(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let _ = req.into_body().collect().await;
    let num = |k: &str, d: u64| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(d)
    };
    let resp = if path.ends_with("/stream") {
        let body = Chunks {
            left: num("n", 20) as u32,
            gap: Duration::from_millis(num("gap_ms", 10)),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        Response::builder().header("content-type", "text/event-stream").body(body.boxed_unsync())
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(ANSWER.as_bytes())).boxed_unsync())
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

async fn serve_upstream(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(upstream_answer))
                .await;
        });
    }
}

/// Starts the upstream on its own runtime thread; returns its address.
fn spawn_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            serve_upstream(listener).await;
        });
    });
    rx.recv().expect("upstream address")
}

// ---------------------------------------------------------------------------------------------
// The load generator.

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Stats {
    fn record(&mut self, ok: bool, latency: Duration) {
        if ok {
            self.latencies_us.push(latency.as_micros() as u64);
        } else {
            self.errors += 1;
        }
    }

    /// Adds up the workers' figures, once they have all finished.
    async fn merged(workers: Vec<tokio::task::JoinHandle<Stats>>, start: Instant) -> Stats {
        let mut total = Stats::default();
        for w in workers {
            if let Ok(s) = w.await {
                total.latencies_us.extend(s.latencies_us);
                total.errors += s.errors;
            }
        }
        total.elapsed = start.elapsed();
        total.latencies_us.sort_unstable();
        total
    }

    fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, q: f64) -> f64 {
        pct(&self.latencies_us, q)
    }
    fn line(&self) -> String {
        format!(
            "{:>9.0} req/s  p50 {:>7.0}  p90 {:>7.0}  p99 {:>7.0}  p99.9 {:>7.0} µs  errors {}",
            self.throughput(),
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.pct(0.999),
            self.errors
        )
    }
    fn machine(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.throughput(),
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.pct(0.999),
            self.errors,
            self.latencies_us.len()
        )
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(http)
}

async fn one(c: &Client<HttpConnector, Full<Bytes>>, url: &str) -> bool {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())));
    let Ok(req) = req else { return false };
    match c.request(req).await {
        Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// `concurrency` workers, each sending its next request when the previous one finished.
async fn closed_loop(url: &str, concurrency: usize, duration: Duration) -> Stats {
    let c = client();
    // Warm the connection pool so that connection setup is not measured.
    let warm: Vec<_> = (0..concurrency)
        .map(|_| {
            let c = c.clone();
            let u = url.to_string();
            tokio::spawn(async move { one(&c, &u).await })
        })
        .collect();
    for w in warm {
        let _ = w.await;
    }
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let c = c.clone();
            let url = url.to_string();
            tokio::spawn(async move {
                let mut s = Stats::default();
                while start.elapsed() < duration {
                    let t = Instant::now();
                    let ok = one(&c, &url).await;
                    s.record(ok, t.elapsed());
                }
                s
            })
        })
        .collect();
    Stats::merged(workers, start).await
}

/// Requests sent on a fixed schedule whatever the answers do, each on its own task: a stalled
/// proxy shows up as latency (and open connections) instead of as a slower send rate.
async fn open_loop(url: &str, rate: u64, duration: Duration) -> Stats {
    let c = client();
    for _ in 0..32 {
        one(&c, url).await;
    }
    let url = url.to_string();
    let mut stats = on_schedule(rate, duration, Lanes::One, move |_| {
        let (c, url) = (c.clone(), url.clone());
        async move { one(&c, &url).await }
    })
    .await;
    stats.remove(0)
}

/// Runs `send(lane)` `rate` times a second for `duration`, each on its own task, and times each
/// from its dispatch: the schedule is kept whatever the answers do (no coordinated omission),
/// but the timer's 1 ms granularity is the generator's, not the proxy's. With two lanes, the
/// requests alternate between them in the order A B B A A B B A…, so that within every burst
/// the timer releases, neither lane's requests are consistently sent first.
async fn on_schedule<F, Fut>(rate: u64, duration: Duration, lanes: Lanes, send: F) -> Vec<Stats>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total_requests = (duration.as_secs_f64() * rate as f64) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total_requests as usize);
    for i in 0..total_requests {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let lane = match lanes {
            Lanes::One => 0,
            // The low bit of i's Gray code.
            Lanes::Two => ((i ^ (i >> 1)) & 1) as usize,
        };
        let request = send(lane);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = request.await;
            (lane, ok, sent.elapsed())
        }));
    }
    let mut stats: Vec<Stats> = (0..lanes as usize).map(|_| Stats::default()).collect();
    for t in tasks {
        if let Ok((lane, ok, latency)) = t.await {
            stats[lane].record(ok, latency);
        }
    }
    for s in &mut stats {
        s.elapsed = start.elapsed();
        s.latencies_us.sort_unstable();
    }
    stats
}

/// How many targets one schedule feeds.
#[derive(Clone, Copy)]
enum Lanes {
    One = 1,
    Two = 2,
}

/// Streams: time to first chunk and the spread of the gaps between chunks, in µs.
async fn stream_stats(url: &str, streams: usize) -> (Vec<u64>, Vec<u64>) {
    let c = client();
    let (mut ttft, mut jitter) = (Vec::new(), Vec::new());
    for _ in 0..streams {
        let t = Instant::now();
        let Ok(req) = Request::get(url).body(Full::default()) else { continue };
        let Ok(resp) = c.request(req).await else { continue };
        let mut body = resp.into_body();
        let mut last: Option<Instant> = None;
        while let Some(Ok(frame)) = body.frame().await {
            if frame.is_data() {
                let now = Instant::now();
                match last {
                    None => ttft.push(t.elapsed().as_micros() as u64),
                    Some(prev) => jitter.push((now - prev).as_micros().abs_diff(10_000) as u64),
                }
                last = Some(now);
            }
        }
    }
    ttft.sort_unstable();
    jitter.sort_unstable();
    (ttft, jitter)
}

fn pct(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64
}

// ---------------------------------------------------------------------------------------------
// Running llmproxyd as a child process.

fn proxy_config(upstream: SocketAddr, port: u16) -> String {
    format!(
        "http_server:\n  forwards: [{{name: bench, port: {port}, address: 127.0.0.1, default_group: g}}]\n  admin: {{port: 0, address: 127.0.0.1}}\n\
         upstreams: [{{name: up, url: \"http://{upstream}\"}}]\n\
         upstream_groups: [{{name: g, upstreams: [{{name: up}}], http_client: {{keepalive: 60, timeout: {{request: 120}}}}}}]\n"
    )
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
    started_in: Duration,
    /// Holds its configuration file; removed with the proxy.
    dir: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_proxy(config_text: &str, pin: Option<&str>) -> Proxy {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("llmproxy-bench-{}-{n}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("config.yaml");
    std::fs::write(&path, config_text).expect("write config");
    let bin = env!("CARGO_BIN_EXE_llmproxyd");
    let mut cmd = match pin {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", core, bin]);
            c
        }
        None => Command::new(bin),
    };
    let started = Instant::now();
    let mut child =
        cmd.arg("-c").arg(&path).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn llmproxyd");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut addr = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(a) = line.split("forward bench listening on http://").nth(1) {
            addr = a.trim().parse().ok();
            break;
        }
    }
    let started_in = started.elapsed();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Proxy { child, addr: addr.expect("proxy address"), started_in, dir }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [kind @ ("upstream" | "raw-upstream"), port] => {
            let port: u16 = port.parse().expect("port");
            // One thread: the upstream shares a core with the load generator, and a second thread
            // would only add context switches to what is measured.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind upstream");
                match *kind {
                    "upstream" => serve_upstream(listener).await,
                    _ => raw::serve(listener).await,
                }
            });
        }
        [kind @ ("load" | "raw-load"), target, mode, n, secs] => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            let n: u64 = n.parse().expect("number");
            let d = Duration::from_secs(secs.parse().expect("seconds"));
            let s = rt.block_on(async {
                match (*kind, *mode) {
                    ("load", "closed") => closed_loop(target, n as usize, d).await,
                    ("load", _) => open_loop(target, n, d).await,
                    (_, "closed") => raw::closed_loop(target, n as usize, d).await,
                    _ => raw::open_loop(target, n, d).await,
                }
            });
            println!("{}", s.machine());
        }
        ["raw-pair", a, b, rate, secs] => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            let d = Duration::from_secs(secs.parse().expect("seconds"));
            let (sa, sb) = rt.block_on(raw::open_loop_pair(a, b, rate.parse().expect("rate"), d));
            println!("{}\n{}", sa.machine(), sb.machine());
        }
        ["compare"] => compare::run(),
        ["tail"] => compare::tail(),
        ["instructions"] => instructions::run(),
        _ => suite(),
    }
}

/// Seconds per case (`BENCH_SECONDS`).
fn seconds(default: u64) -> u64 {
    std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn suite() {
    let secs = seconds(5);
    let duration = Duration::from_secs(secs);
    let upstream = spawn_upstream();
    let proxy = spawn_proxy(&proxy_config(upstream, 0), None);
    let direct = format!("http://{upstream}/v1/chat/completions");
    let proxied = format!("http://{}/v1/chat/completions", proxy.addr);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");

    println!(
        "llmproxy latency benchmark — loopback, {} cores, {secs} s per case (BENCH_SECONDS)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("\nclosed loop, 16 concurrent clients, 0.3 KiB JSON answers");
    let d = rt.block_on(closed_loop(&direct, 16, duration));
    let p = rt.block_on(closed_loop(&proxied, 16, duration));
    println!("  direct   {}\n  proxied  {}", d.line(), p.line());
    println!("  added    p50 {:+.0} µs  p99 {:+.0} µs", p.pct(0.5) - d.pct(0.5), p.pct(0.99) - d.pct(0.99));

    let rate = ((p.throughput() * 0.25) as u64).clamp(100, 20_000);
    println!("\nopen loop, {rate} req/s (a quarter of the proxied closed-loop throughput)");
    let d = rt.block_on(open_loop(&direct, rate, duration));
    let p = rt.block_on(open_loop(&proxied, rate, duration));
    println!("  direct   {}\n  proxied  {}", d.line(), p.line());
    println!(
        "  added    p50 {:+.0} µs  p99 {:+.0} µs  p99.9 {:+.0} µs",
        p.pct(0.5) - d.pct(0.5),
        p.pct(0.99) - d.pct(0.99),
        p.pct(0.999) - d.pct(0.999)
    );

    println!("\nstreaming, 20 SSE chunks 10 ms apart, 50 streams");
    let (dt, dj) = rt.block_on(stream_stats(&format!("http://{upstream}/v1/stream?n=20&gap_ms=10"), 50));
    let (pt, pj) = rt.block_on(stream_stats(&format!("http://{}/v1/stream?n=20&gap_ms=10", proxy.addr), 50));
    println!(
        "  time to first chunk   direct p50 {:.0} µs  proxied p50 {:.0} µs  added {:+.0} µs",
        pct(&dt, 0.5),
        pct(&pt, 0.5),
        pct(&pt, 0.5) - pct(&dt, 0.5)
    );
    println!(
        "  gap jitter |gap-10ms| direct p99 {:.0} µs  proxied p99 {:.0} µs  added {:+.0} µs",
        pct(&dj, 0.99),
        pct(&pj, 0.99),
        pct(&pj, 0.99) - pct(&dj, 0.99)
    );

    println!("\nmemory and start-up (llmproxyd process)");
    println!("  start to listening     {:.1} ms", proxy.started_in.as_secs_f64() * 1000.0);
    drop(proxy);
    let fresh = spawn_proxy(&proxy_config(upstream, 0), None);
    std::thread::sleep(Duration::from_millis(300));
    println!("  RSS idle               {:.1} MiB", rss_kib(fresh.child.id()) as f64 / 1024.0);
    let streams = std::env::var("BENCH_STREAMS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000usize);
    let held = rt.block_on(hold_streams(fresh.addr, streams));
    println!("  RSS with {} open SSE streams  {:.1} MiB", held.len(), rss_kib(fresh.child.id()) as f64 / 1024.0);
    drop(held);
    drop(fresh);

    let per_request = allocations_per_request(upstream);
    println!("\nheap allocations per proxied request (in-process proxy, 20,000 requests): {per_request:.1}");
}

/// Opens `n` slow SSE streams through the proxy and returns them once each delivered its first
/// chunk: they stay open (in the proxy too) until the caller drops them.
async fn hold_streams(proxy: SocketAddr, n: usize) -> Vec<Incoming> {
    let c = client();
    let url = format!("http://{proxy}/v1/stream?n=60&gap_ms=1000");
    let pending: Vec<_> = (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let req = Request::get(&url).body(Full::default()).ok()?;
                let resp = c.request(req).await.ok()?;
                let mut body = resp.into_body();
                body.frame().await?.ok()?;
                Some(body)
            })
        })
        .collect();
    let mut bodies = Vec::with_capacity(n);
    for p in pending {
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(30), p).await.unwrap_or(Ok(None)) {
            bodies.push(b);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    bodies
}

/// Runs the proxy in-process on a runtime whose threads count their allocations.
fn allocations_per_request(upstream: SocketAddr) -> f64 {
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .enable_all()
        .build()
        .expect("proxy runtime");
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let config = llmproxy::config::from_str(&proxy_config(upstream, 0), &env).expect("config");
    let server = proxy_rt
        .block_on(async { tokio::spawn(llmproxy::server::Server::start(config)).await.expect("join").expect("start") });
    let addr = server.forward_addr("bench").expect("address");
    let load_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("load runtime");
    let url = format!("http://{addr}/v1/chat/completions");
    let n = 20_000u64;
    let counted = load_rt.block_on(async {
        let c = client();
        for _ in 0..200 {
            one(&c, &url).await;
        }
        let before = PROXY_ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..n {
            one(&c, &url).await;
        }
        PROXY_ALLOCATIONS.load(Ordering::Relaxed) - before
    });
    drop(server);
    counted as f64 / n as f64
}
