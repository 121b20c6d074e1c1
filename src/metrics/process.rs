//! Standard process metrics, read from /proc at scrape time (Linux; absent elsewhere).

use super::encode::Encoder;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static START: OnceLock<f64> = OnceLock::new();

/// Records the process start time; called once at startup (later calls keep the first value).
pub fn mark_start() {
    START.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
}

/// Kernel clock ticks per second for /proc/self/stat CPU times; 100 on every mainstream Linux
/// configuration (reading it needs sysconf, i.e. libc).
const CLOCK_TICKS: f64 = 100.0;

pub fn encode(e: &mut Encoder) {
    mark_start();
    e.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds.");
    e.float("process_start_time_seconds", &[], START.get().copied().unwrap_or(0.0));
    if let Some(kib) = rss_kib() {
        e.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        e.int("process_resident_memory_bytes", &[], kib * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        e.family("process_open_fds", "gauge", "Number of open file descriptors.");
        e.int("process_open_fds", &[], dir.count() as u64);
    }
    if let Some(cpu) = cpu_seconds() {
        e.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        e.float("process_cpu_seconds_total", &[], cpu);
    }
}

pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, i.e. 11 and 12 after ")".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}
