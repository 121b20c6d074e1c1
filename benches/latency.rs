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
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * q) as usize).min(self.latencies_us.len() - 1);
        self.latencies_us[i] as f64
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
// Lean harness for `compare`: a raw-socket upstream and load generator, several times cheaper per
// request than hyper on both ends, so that the core they share is not what limits the proxies
// being compared.

mod raw {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn request() -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{REQUEST}",
            REQUEST.len()
        )
        .into_bytes()
    }

    fn response() -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}", ANSWER.len())
            .into_bytes()
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// The declared body length in a head, if any.
    fn content_length(head: &[u8]) -> Option<usize> {
        head.split(|&b| b == b'\n').find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())
                .flatten()
        })
    }

    /// Reads one message (head and a `Content-Length` or chunked body) into `buf`; false at EOF.
    async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(h) = find(buf, b"\r\n\r\n") {
                let complete = match content_length(&buf[..h]) {
                    Some(len) => buf.len() >= h + 4 + len,
                    None => buf.ends_with(b"\r\n0\r\n\r\n"),
                };
                if complete {
                    return true;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The fast upstream: every request on every connection gets the canned answer.
    pub async fn serve(listener: tokio::net::TcpListener) {
        let answer: Arc<[u8]> = response().into();
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(8192);
                while read_message(&mut s, &mut buf).await {
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    async fn connect(addr: &str) -> Option<TcpStream> {
        let s = TcpStream::connect(addr).await.ok()?;
        let _ = s.set_nodelay(true);
        Some(s)
    }

    /// One request and its answer; false on any failure or a status other than 200.
    async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> bool {
        s.write_all(req).await.is_ok() && read_message(s, buf).await && buf.starts_with(b"HTTP/1.1 200")
    }

    pub async fn closed_loop(addr: &str, concurrency: usize, duration: Duration) -> Stats {
        let req: Arc<[u8]> = request().into();
        let mut conns = Vec::new();
        for _ in 0..concurrency {
            if let Some(mut s) = connect(addr).await {
                let mut buf = Vec::new();
                if exchange(&mut s, &req, &mut buf).await {
                    conns.push(s);
                }
            }
        }
        let start = Instant::now();
        let workers: Vec<_> = conns
            .into_iter()
            .map(|mut s| {
                let req = req.clone();
                tokio::spawn(async move {
                    let mut stats = Stats::default();
                    let mut buf = Vec::with_capacity(8192);
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        let ok = exchange(&mut s, &req, &mut buf).await;
                        stats.record(ok, t.elapsed());
                        if !ok {
                            break; // the connection is gone
                        }
                    }
                    stats
                })
            })
            .collect();
        Stats::merged(workers, start).await
    }

    /// Connections the open loop keeps; a request waits for a free one, and that wait counts in
    /// its latency (measured from dispatch: the timer's 1 ms granularity is the generator's, not
    /// the proxy's).
    const OPEN_LOOP_CONNECTIONS: usize = 64;

    /// A fixed set of keep-alive connections to one address. Opening a new connection whenever
    /// all are busy would turn a brief stall into a connection storm that then dominates what
    /// is measured.
    struct Connections {
        addr: String,
        req: Arc<[u8]>,
        idle: std::sync::Mutex<Vec<TcpStream>>,
        free: tokio::sync::Semaphore,
    }

    impl Connections {
        async fn open(addr: &str) -> Arc<Self> {
            let req: Arc<[u8]> = request().into();
            let mut idle = Vec::new();
            for _ in 0..OPEN_LOOP_CONNECTIONS {
                if let Some(mut s) = connect(addr).await {
                    if exchange(&mut s, &req, &mut Vec::new()).await {
                        idle.push(s);
                    }
                }
            }
            let free = tokio::sync::Semaphore::new(idle.len());
            Arc::new(Connections { addr: addr.to_string(), req, idle: std::sync::Mutex::new(idle), free })
        }

        /// One request on a free connection (replaced if it failed); whether it succeeded.
        async fn send(self: Arc<Self>) -> bool {
            let Ok(_permit) = self.free.acquire().await else { return false };
            let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut buf = Vec::with_capacity(8192);
            let (ok, conn) = match conn {
                Some(mut s) => {
                    let ok = exchange(&mut s, &self.req, &mut buf).await;
                    (ok, if ok { Some(s) } else { connect(&self.addr).await })
                }
                None => (false, connect(&self.addr).await),
            };
            if let Some(s) = conn {
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
            ok
        }
    }

    /// Requests on a fixed schedule over a fixed set of keep-alive connections.
    pub async fn open_loop(addr: &str, rate: u64, duration: Duration) -> Stats {
        let conns = Connections::open(addr).await;
        let mut stats = on_schedule(rate, duration, Lanes::One, move |_| conns.clone().send()).await;
        stats.remove(0)
    }

    /// Two targets on one schedule, `rate` requests a second in all, alternating fairly. Two
    /// schedules run side by side (`join!`) would not be fair: the one polled first sends its
    /// burst first at every timer tick, so its requests reach a shared core first — a copy of
    /// llmproxyd measured against itself that way had a 1.18× higher p99 in the second slot.
    pub async fn open_loop_pair(a: &str, b: &str, rate: u64, duration: Duration) -> (Stats, Stats) {
        let targets = [Connections::open(a).await, Connections::open(b).await];
        let mut stats = on_schedule(rate, duration, Lanes::Two, move |lane| targets[lane].clone().send()).await;
        let b = stats.pop().unwrap_or_default();
        (stats.pop().unwrap_or_default(), b)
    }
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

mod compare {
    //! llmproxyd against nginx as a plain keep-alive reverse proxy, each pinned to core 0, with
    //! the upstream and the load generator pinned to core 1. Rounds interleave the two so that
    //! drift (thermal, noisy neighbours) affects both alike.
    //!
    //! The upstream and the load generator share one thread and one event loop (this process's,
    //! moved to core 1). As two processes on that core they were time-sliced by the scheduler:
    //! about one context switch every two requests, and an answer that waited for the other
    //! process's slice to end, so the open loop's tail measured the scheduler of core 1 more
    //! than the proxy on core 0.
    use super::*;

    /// Rounds per proxy (`BENCH_ROUNDS`); the medians are reported.
    fn rounds(default: usize) -> usize {
        std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
    }

    /// What one proxy did in one round.
    struct Round {
        throughput: f64,
        /// CPU per request of the closed loop. Alone: the busy time of the proxies' core, with
        /// the softirq time loopback traffic costs and no process is charged for (only the proxy
        /// under load runs there, so this is all it costs its core). Together, where the core's
        /// time cannot be split: the process's user and system time.
        cpu_us_per_request: f64,
        open_p99: f64,
    }

    /// CPU time (user + system) a process has used, in clock ticks (`/proc/PID/stat`).
    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name, from `state`: utime and stime are the 12th
        // and 13th. Counted as they stand, since some before them (tpgid) may be negative.
        let after = stat.rsplit(')').next().unwrap_or("");
        let tick = |n: usize| after.split_whitespace().nth(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        tick(11) + tick(12)
    }

    /// nginx's worker (the process that proxies), a child of the master.
    fn nginx_worker(master: u32) -> u32 {
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(master)
    }

    /// Clock ticks core 0 has spent busy: user, nice, system, irq and softirq (`/proc/stat`).
    fn core_0_busy() -> u64 {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = stat.lines().find(|l| l.starts_with("cpu0 ")).unwrap_or("");
        let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// A distribution-free confidence interval for the median of `v`, from its order statistics
    /// (the median ratio lies between the k-th smallest and k-th largest round with ≥ 95 %
    /// probability); with fewer than 6 rounds no such interval exists, and the range is given.
    fn interval(mut v: Vec<f64>) -> String {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n < 6 {
            return format!("range {:.2}–{:.2}", v.first().unwrap_or(&f64::NAN), v.last().unwrap_or(&f64::NAN));
        }
        // Largest k with P(Binomial(n, ½) < k) ≤ 2.5 %.
        let (mut k, mut below, mut term) = (0usize, 0.0f64, 0.5f64.powi(n as i32));
        while below + term <= 0.025 {
            below += term;
            k += 1;
            term = term * (n - k + 1) as f64 / k as f64;
        }
        let k = k.max(1);
        format!("95 % interval {:.2}–{:.2}", v[k - 1], v[n - k])
    }

    fn ticks_per_second() -> f64 {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
    }

    pub fn nginx_config(dir: &std::path::Path, port: u16, upstream: u16) -> String {
        let d = dir.display();
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 100000;\n\
             \x20   location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}\n  }}\n}}\n"
        )
    }

    /// Moves this process, every thread of it, to core 1 (where its upstream and load generator
    /// run); the proxies it starts are pinned to core 0 by their own `taskset`.
    fn move_to_core_1() {
        let pid = std::process::id().to_string();
        let moved = Command::new("taskset").args(["-a", "-c", "-p", "1", &pid]).stdout(Stdio::null()).status();
        if !moved.map(|s| s.success()).unwrap_or(false) {
            eprintln!("taskset could not move the benchmark to core 1");
            std::process::exit(1);
        }
    }

    /// The two proxies under comparison in front of one upstream, with the runtime (this
    /// process's, on core 1) that serves the upstream and sends the load.
    struct Contest {
        rt: tokio::runtime::Runtime,
        dir: std::path::PathBuf,
        nginx: Child,
        upstream: tokio::task::JoinHandle<()>,
        proxy: Proxy,
        calibration: Option<Proxy>,
        /// The reference (nginx, or with `BENCH_COMPARE_SELF` a second llmproxyd) and
        /// llmproxyd: name and address for the raw load generator.
        urls: [(&'static str, String); 2],
        /// The processes whose CPU time is charged to each.
        pids: [u32; 2],
    }

    impl Contest {
        fn start() -> Contest {
            if Command::new("nginx").arg("-v").output().is_err() {
                eprintln!("nginx not found (make bench-compare installs it)");
                std::process::exit(1);
            }
            let dir = std::env::temp_dir().join(format!("llmproxy-compare-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            move_to_core_1();
            // One thread for the upstream and the load: the upstream's task runs whenever a load runs.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind upstream");
            let up_port = listener.local_addr().expect("upstream address").port();
            let upstream = rt.spawn(raw::serve(listener));
            let nginx_port = free_port();
            std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, nginx_port, up_port)).expect("nginx.conf");
            let nginx = Command::new("taskset")
                .args(["-c", "0", "nginx", "-c"])
                .arg(dir.join("nginx.conf"))
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx");
            let upstream_addr = SocketAddr::from(([127, 0, 0, 1], up_port));
            let proxy = spawn_proxy(&proxy_config(upstream_addr, free_port()), Some("0"));
            std::thread::sleep(Duration::from_millis(500));
            // `BENCH_COMPARE_SELF=1` calibrates the instrument: the reference is a second
            // llmproxyd, and every ratio should come out 1.00 within its interval.
            let calibration = std::env::var_os("BENCH_COMPARE_SELF")
                .is_some()
                .then(|| spawn_proxy(&proxy_config(upstream_addr, free_port()), Some("0")));
            let reference = match &calibration {
                Some(twin) => ("twin", twin.addr.to_string(), twin.child.id()),
                None => ("nginx", format!("127.0.0.1:{nginx_port}"), nginx_worker(nginx.id())),
            };
            let pids = [reference.2, proxy.child.id()];
            let urls = [(reference.0, reference.1), ("llmproxyd", proxy.addr.to_string())];
            Contest { rt, dir, nginx, upstream, proxy, calibration, urls, pids }
        }

        fn load(&self, addr: &str, closed: bool, n: u64, secs: u64) -> Stats {
            let d = Duration::from_secs(secs);
            if closed {
                self.rt.block_on(raw::closed_loop(addr, n as usize, d))
            } else {
                self.rt.block_on(raw::open_loop(addr, n, d))
            }
        }

        /// The open loops' fixed rate: 40 % of the reference's closed-loop throughput in a short
        /// probe — a moderate load, where latency (not overload) is what is compared.
        fn open_loop_rate(&self) -> u64 {
            ((self.load(&self.urls[0].1, true, 32, 2).throughput() * 0.4) as u64).max(100)
        }

        fn stop(mut self) {
            // SIGTERM, not SIGKILL: nginx's master stops its workers only when asked politely.
            let _ = Command::new("kill").args(["-TERM", &self.nginx.id().to_string()]).status();
            let _ = self.nginx.wait();
            self.upstream.abort();
            drop(self.proxy);
            drop(self.calibration);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn run() {
        let secs = seconds(5);
        let contest = Contest::start();
        let Contest { urls, pids, .. } = &contest;
        let load = |addr: &str, closed: bool, n: u64, secs: u64| contest.load(addr, closed, n, secs);
        let r = urls[0].0;

        let rounds = rounds(5);
        println!("bench-compare: {r} and llmproxyd pinned to core 0, upstream and load generator to core 1, {rounds} interleaved rounds of {secs} s");
        let rate = contest.open_loop_rate();
        let mut figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
        let mut together_figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
        for round in 1..=rounds {
            // ABBA order: a drift of the machine during a round favours neither proxy.
            let order: [usize; 2] = if round % 2 == 1 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, url) = &urls[i];
                let before = core_0_busy();
                let closed = load(url, true, 32, secs);
                let busy = core_0_busy().saturating_sub(before);
                let open = load(url, false, rate, secs);
                let figure = Round {
                    throughput: closed.throughput(),
                    cpu_us_per_request: busy as f64 / ticks_per_second() * 1e6
                        / (closed.latencies_us.len() as f64).max(1.0),
                    open_p99: open.pct(0.99),
                };
                println!(
                    "round {round} {name:<9} closed(32): {:>8.0} req/s p99 {:>6.0} µs core 0 {:>5.1} µs/req | open({rate}/s): p50 {:>6.0} p99 {:>6.0} p99.9 {:>6.0} µs errors {}",
                    figure.throughput,
                    closed.pct(0.99),
                    figure.cpu_us_per_request,
                    open.pct(0.5),
                    figure.open_p99,
                    open.pct(0.999),
                    closed.errors + open.errors,
                );
                figures[i].push(figure);
            }
            // Both at once: half the connections and half the rate each, so the machine (and any
            // stall of it) is the same for both, request by request.
            let d = Duration::from_secs(secs);
            let [(_, reference_url), (_, llmproxyd_url)] = &urls;
            let before = pids.map(cpu_ticks);
            let (closed_ref, closed_llm) = contest.rt.block_on(async {
                tokio::join!(raw::closed_loop(reference_url, 16, d), raw::closed_loop(llmproxyd_url, 16, d))
            });
            let cpu = |i: usize, s: &Stats| {
                cpu_ticks(pids[i]).saturating_sub(before[i]) as f64 / ticks_per_second() * 1e6
                    / (s.latencies_us.len() as f64).max(1.0)
            };
            let (cpu_ref, cpu_llm) = (cpu(0, &closed_ref), cpu(1, &closed_llm));
            let (open_ref, open_llm) = contest.rt.block_on(raw::open_loop_pair(reference_url, llmproxyd_url, rate, d));
            println!(
                "round {round} together  closed(16 each): {r} {:>6.0}, llmproxyd {:>6.0} req/s; cpu {cpu_ref:>4.1}, {cpu_llm:>4.1} µs/req | open({}/s each): p99 {:>6.0}, {:>6.0} µs errors {}",
                closed_ref.throughput(),
                closed_llm.throughput(),
                rate / 2,
                open_ref.pct(0.99),
                open_llm.pct(0.99),
                closed_ref.errors + closed_llm.errors + open_ref.errors + open_llm.errors,
            );
            let together = |closed: &Stats, cpu_us: f64, open: &Stats| Round {
                throughput: closed.throughput(),
                cpu_us_per_request: cpu_us,
                open_p99: open.pct(0.99),
            };
            together_figures[0].push(together(&closed_ref, cpu_ref, &open_ref));
            together_figures[1].push(together(&closed_llm, cpu_llm, &open_llm));
        }
        let [reference_rounds, llmproxyd_rounds] = &figures;
        let medians = |pick: fn(&Round) -> f64| {
            (median(reference_rounds.iter().map(pick).collect()), median(llmproxyd_rounds.iter().map(pick).collect()))
        };
        let (nt, lt) = medians(|r| r.throughput);
        let (np, lp) = medians(|r| r.open_p99);
        let (nc, lc) = medians(|r| r.cpu_us_per_request);
        println!(
            "\nmedians: throughput {r} {nt:.0} req/s, llmproxyd {lt:.0} req/s → ratio {:.2} (target ≥ 1.00)",
            lt / nt
        );
        println!(
            "         open-loop p99 at {rate}/s: {r} {np:.0} µs, llmproxyd {lp:.0} µs → ratio {:.2} (target ≤ 1.00)",
            lp / np
        );
        println!(
            "         core 0 busy per request (user, system, softirq): {r} {nc:.1} µs, llmproxyd {lc:.1} µs → ratio {:.2}",
            lc / nc
        );
        // The same comparisons made within each round, where both proxies met the same machine.
        let paired = |what: &str, [reference, llmproxyd]: &[Vec<Round>; 2], pick: fn(&Round) -> f64| {
            report_ratios(what, reference.iter().zip(llmproxyd).map(|(n, l)| pick(l) / pick(n)).collect())
        };
        println!("paired (llmproxyd / {r} in the same round):");
        paired("throughput", &figures, |r| r.throughput);
        paired("open-loop p99", &figures, |r| r.open_p99);
        paired("core 0 busy per request", &figures, |r| r.cpu_us_per_request);
        println!("together (both at once, so every stall of the machine met both):");
        paired("throughput", &together_figures, |r| r.throughput);
        paired("open-loop p99", &together_figures, |r| r.open_p99);
        paired("CPU per request (user + system)", &together_figures, |r| r.cpu_us_per_request);
        contest.stop();
    }

    /// Per-round ratios, llmproxyd's over the reference's, with a distribution-free interval for
    /// their median: what the noise allows one to say.
    fn report_ratios(what: &str, ratios: Vec<f64>) {
        let above = ratios.iter().filter(|&&r| r >= 1.0).count();
        let n = ratios.len();
        println!(
            "  {what:<30} median {:.2}, {}; ≥ 1 in {above} of {n} rounds",
            median(ratios.clone()),
            interval(ratios)
        );
    }

    /// The `q` quantile of the latencies of several rounds (each sorted) taken together, round
    /// `i` counted `weights[i]` times: the least latency with more than ⌊q·n⌋ of the n at or
    /// below it (as `Stats::pct` reads one sorted list), found by bisection on the latency.
    fn pooled_quantile(rounds: &[Vec<u64>], weights: &[u32], q: f64) -> u64 {
        let at_or_below = |x: u64| -> u64 {
            rounds.iter().zip(weights).map(|(r, &w)| r.partition_point(|&v| v <= x) as u64 * w as u64).sum()
        };
        let total = at_or_below(u64::MAX);
        let rank = (total as f64 * q) as u64;
        let (mut low, mut high) = (0u64, rounds.iter().filter_map(|r| r.last()).copied().max().unwrap_or(0));
        while low < high {
            let mid = low + (high - low) / 2;
            if at_or_below(mid) > rank {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        low
    }

    /// A 95 % interval for the ratio of the two proxies' pooled `q` quantiles (llmproxyd's over
    /// the reference's): the rounds are drawn again with replacement, the same draw for both
    /// (they met the same machine in each round), 1,000 times. Rounds, not requests, are drawn,
    /// because a round's requests share its stalls.
    fn bootstrap_ratio(kept: &[Vec<Vec<u64>>; 2], q: f64) -> (f64, f64) {
        let n = kept[0].len();
        if n == 0 {
            return (f64::NAN, f64::NAN);
        }
        let mut ratios: Vec<f64> = (0..1000)
            .map(|_| {
                let mut weights = vec![0u32; n];
                for _ in 0..n {
                    weights[llmproxy::rand::below(n as u64) as usize] += 1;
                }
                pooled_quantile(&kept[1], &weights, q) as f64 / pooled_quantile(&kept[0], &weights, q) as f64
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        (ratios[25], ratios[974])
    }

    /// Each round's latencies (sorted) of the two proxies under one load, for `bench-tail`.
    #[derive(Default)]
    struct Tails {
        kept: [Vec<Vec<u64>>; 2],
        p99_ratios: Vec<f64>,
    }

    impl Tails {
        fn push(&mut self, reference: Stats, llmproxyd: Stats) {
            self.p99_ratios.push(llmproxyd.pct(0.99) / reference.pct(0.99));
            self.kept[0].push(reference.latencies_us);
            self.kept[1].push(llmproxyd.latencies_us);
        }

        fn report(self, what: &str, r: &str) {
            println!("{what}, llmproxyd / {r}:");
            report_ratios("p99, per round", self.p99_ratios);
            let every_round = vec![1; self.kept[0].len()];
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
                let [a, b] = [0, 1].map(|i| pooled_quantile(&self.kept[i], &every_round, q));
                let (low, high) = bootstrap_ratio(&self.kept, q);
                println!(
                    "  pooled {name:<22} {r} {a:>6} µs, llmproxyd {b:>6} µs → ratio {:.2} ({low:.2}–{high:.2})",
                    b as f64 / a as f64
                );
            }
        }
    }

    /// `make bench-tail`: only the open loops, in many short rounds. Where the machine sets the
    /// tail (here, vCPU wake-ups), two proxies' p99s differ by less than one round's noise, and
    /// it takes a hundred rounds or more to tell which is lower. Each round runs the open loop the
    /// two take together, then each one's alone (in ABBA order, as `run` does). Besides the
    /// median of the rounds' ratios, every request of every round is pooled per proxy and load,
    /// and the pooled percentiles compared, with an interval from resampling the rounds.
    pub fn tail() {
        let secs = seconds(3);
        let rounds = rounds(100);
        let contest = Contest::start();
        let [(r, reference_url), (_, llmproxyd_url)] = &contest.urls;
        let rate = contest.open_loop_rate();
        println!(
            "bench-tail: {r} and llmproxyd pinned to core 0, {rounds} rounds of {secs} s: together, one open loop of {rate} req/s in all (A B B A…); alone, {rate} req/s each"
        );
        let (mut together, mut alone) = (Tails::default(), Tails::default());
        for round in 1..=rounds {
            let d = Duration::from_secs(secs);
            let (a, b) = contest.rt.block_on(raw::open_loop_pair(reference_url, llmproxyd_url, rate, d));
            let alone_in_order = |first: &str, second: &str| {
                let one = contest.load(first, false, rate, secs);
                (one, contest.load(second, false, rate, secs))
            };
            let (alone_a, alone_b) = if round % 2 == 1 {
                alone_in_order(reference_url, llmproxyd_url)
            } else {
                let (b, a) = alone_in_order(llmproxyd_url, reference_url);
                (a, b)
            };
            println!(
                "round {round}: p99 together {r} {:>6.0}, llmproxyd {:>6.0} µs | alone {r} {:>6.0}, llmproxyd {:>6.0} µs; errors {}",
                a.pct(0.99),
                b.pct(0.99),
                alone_a.pct(0.99),
                alone_b.pct(0.99),
                a.errors + b.errors + alone_a.errors + alone_b.errors
            );
            together.push(a, b);
            alone.push(alone_a, alone_b);
        }
        println!("\npooled: every request of every round, with a 95 % interval from resampling the rounds");
        together.report("together", r);
        alone.report("alone", r);
        contest.stop();
    }
}

mod instructions {
    //! `make bench-instructions`: user-space instructions per proxied request, counted by
    //! valgrind's callgrind — a deterministic measure of the proxy's own work (on a shared machine
    //! timings vary by tens of percent, instruction counts by a fraction of one). llmproxyd runs
    //! pinned to one core (so on its single-thread runtime, as in production on one core), nginx
    //! as a single process; both in front of the raw upstream, under the same closed-loop load.
    use super::*;

    /// Starts the raw upstream on a thread of this process; returns its port.
    fn raw_upstream() -> u16 {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr").port()).expect("send");
                raw::serve(listener).await;
            });
        });
        rx.recv().expect("upstream port")
    }

    /// Runs `program` under callgrind, loads it through `addr`, and returns instructions per
    /// request (counted between a warm-up and the end of the load).
    fn count(name: &str, program: &[&str], addr: &str, dir: &std::path::Path) -> Option<f64> {
        let out = dir.join(format!("{name}.callgrind"));
        let mut child = Command::new("taskset")
            .args(["-c", "0", "valgrind", "--tool=callgrind"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .args(program)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let pid = child.id().to_string();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().ok()?;
        // Under valgrind start-up takes seconds: wait until the port answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        rt.block_on(raw::closed_loop(addr, 8, Duration::from_secs(2)));
        Command::new("callgrind_control").args(["-z", &pid]).output().ok()?;
        let load = rt.block_on(raw::closed_loop(addr, 8, Duration::from_secs(5)));
        Command::new("callgrind_control").args(["-d", &pid]).output().ok()?;
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = child.wait();
        // The dump is `<out>.1` (part 1); its `summary:` line is the instruction count.
        let dump = std::fs::read_to_string(format!("{}.1", out.display())).ok()?;
        let ir: f64 = dump.lines().find_map(|l| l.strip_prefix("summary:"))?.trim().parse().ok()?;
        Some(ir / load.latencies_us.len().max(1) as f64)
    }

    pub fn run() {
        if Command::new("valgrind").arg("--version").output().is_err() {
            eprintln!("valgrind not found (make bench-instructions installs it)");
            std::process::exit(1);
        }
        let dir = std::env::temp_dir().join(format!("llmproxy-instructions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let up = raw_upstream();
        println!("user-space instructions per proxied request (callgrind; raw upstream, 8 connections, 5 s)");

        let port = compare::free_port();
        let config = dir.join("llmproxy.yaml");
        std::fs::write(&config, proxy_config(SocketAddr::from(([127, 0, 0, 1], up)), port)).expect("config");
        let bin = env!("CARGO_BIN_EXE_llmproxyd");
        let config_arg = config.display().to_string();
        match count("llmproxyd", &[bin, "-c", &config_arg], &format!("127.0.0.1:{port}"), &dir) {
            Some(n) => println!("  llmproxyd  {n:>8.0}"),
            None => println!("  llmproxyd  (measurement failed)"),
        }

        if Command::new("nginx").arg("-v").output().is_ok() {
            let port = compare::free_port();
            let conf =
                compare::nginx_config(&dir, port, up).replacen("daemon off;", "daemon off;\nmaster_process off;", 1);
            let nginx_conf = dir.join("nginx.conf");
            std::fs::write(&nginx_conf, conf).expect("nginx.conf");
            let conf_arg = nginx_conf.display().to_string();
            let nginx = Command::new("sh").args(["-c", "command -v nginx"]).output().ok();
            let path = nginx.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            match count("nginx", &[&path, "-c", &conf_arg], &format!("127.0.0.1:{port}"), &dir) {
                Some(n) => println!("  nginx      {n:>8.0}"),
                None => println!("  nginx      (measurement failed)"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
