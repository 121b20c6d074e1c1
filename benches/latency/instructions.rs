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
        let conf = compare::nginx_config(&dir, port, up).replacen("daemon off;", "daemon off;\nmaster_process off;", 1);
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
