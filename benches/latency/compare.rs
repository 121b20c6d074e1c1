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

/// The order the two run alone in `round`: ABBA, so that a drift of the machine during a run
/// favours neither.
fn abba(round: usize) -> [usize; 2] {
    if round % 2 == 1 {
        [0, 1]
    } else {
        [1, 0]
    }
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
    let r = urls[0].0;

    let rounds = rounds(5);
    println!("bench-compare: {r} and llmproxyd pinned to core 0, upstream and load generator to core 1, {rounds} interleaved rounds of {secs} s");
    let rate = contest.open_loop_rate();
    let mut figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    let mut together_figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for i in abba(round) {
            let (name, url) = &urls[i];
            let before = core_0_busy();
            let closed = contest.load(url, true, 32, secs);
            let busy = core_0_busy().saturating_sub(before);
            let open = contest.load(url, false, rate, secs);
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
    println!("\nmedians: throughput {r} {nt:.0} req/s, llmproxyd {lt:.0} req/s → ratio {:.2} (target ≥ 1.00)", lt / nt);
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
    println!("  {what:<30} median {:.2}, {}; ≥ 1 in {above} of {n} rounds", median(ratios.clone()), interval(ratios));
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
        let mut alone_stats: [Stats; 2] = Default::default();
        for i in abba(round) {
            alone_stats[i] = contest.load(&contest.urls[i].1, false, rate, secs);
        }
        let [alone_a, alone_b] = alone_stats;
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
