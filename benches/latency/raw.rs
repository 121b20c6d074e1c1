//! Lean harness for `compare`: a raw-socket upstream and load generator, several times cheaper
//! per request than hyper on both ends, so that the core they share is not what limits the
//! proxies being compared.
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
