//! Listening sockets, made with socket2 so we can set what std cannot.

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Pending connections the kernel may queue per listener; bursts of new clients (a fleet of
/// workers starting at once) must not see refused connections.
const BACKLOG: i32 = 4096;

/// Binds with SO_REUSEADDR and, on Linux, SO_REUSEPORT: a second instance started on the same
/// ports shares them, so a restart can overlap the old and the new process (zero downtime). A
/// port held by a socket without SO_REUSEPORT (another program) still fails, naming the address.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |what: &str, e: std::io::Error| format!("cannot listen on {addr}: {what}: {e}");
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| fail("socket", e))?;
    socket.set_reuse_address(true).map_err(|e| fail("SO_REUSEADDR", e))?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd", target_os = "macos"))]
    socket.set_reuse_port(true).map_err(|e| fail("SO_REUSEPORT", e))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(|e| fail("IPV6_V6ONLY", e))?;
    }
    socket.set_nodelay(true).map_err(|e| fail("TCP_NODELAY", e))?;
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: the address is already in use by another program")
        } else {
            fail("bind", e)
        }
    })?;
    socket.listen(BACKLOG).map_err(|e| fail("listen", e))?;
    socket.set_nonblocking(true).map_err(|e| fail("non-blocking", e))?;
    TcpListener::from_std(socket.into()).map_err(|e| fail("register", e))
}

/// Linux resets connections still queued on a listener when it closes, even if another socket
/// shares the port — unless `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14+), which moves them to
/// the remaining listener. Zero-downtime restarts depend on it; say so once at startup.
pub fn warn_if_restarts_can_lose_connections() {
    #[cfg(target_os = "linux")]
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => crate::info!(
            "net.ipv4.tcp_migrate_req is 0: during an overlapping restart, connections queued on the \
             old instance's listener can be reset (set it to 1 for zero-downtime restarts)"
        ),
        Err(_) => crate::info!("kernel without tcp_migrate_req: overlapping restarts can reset queued connections"),
    }
}

/// Whether a socket of another process (or another of ours) listens on exactly `addr` beside
/// ours — an instance started on the same ports for a zero-downtime restart. Read from the
/// kernel's socket table; `false` where there is none to read.
pub fn others_listen_on(addr: SocketAddr) -> bool {
    let table = if addr.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    std::fs::read_to_string(table).is_ok_and(|text| listening_on(&text, addr) > 1)
}

/// How many sockets in a `/proc/net/tcp{,6}` table listen on `addr`. The table writes an address
/// as the hexadecimal of each 32-bit word as the machine stores it, then `:` and the port.
fn listening_on(table: &str, addr: SocketAddr) -> usize {
    const LISTEN: &str = "0A";
    let octets = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let words: String =
        octets.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect();
    let local = format!("{words}:{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            fields.nth(1) == Some(local.as_str()) && fields.nth(1) == Some(LISTEN)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_are_counted_from_the_kernel_table() {
        // 127.0.0.1:9000 and [::1]:9000 as a little-endian machine writes them.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                  0: 0100007F:2328 00000000:0000 0A 00000000:00000000\n\
                  1: 0100007F:2328 00000000:0000 0A 00000000:00000000\n\
                  2: 0100007F:2328 0100007F:9C40 01 00000000:00000000\n\
                  3: 00000000:2328 00000000:0000 0A 00000000:00000000\n";
        if cfg!(target_endian = "little") {
            assert_eq!(listening_on(v4, "127.0.0.1:9000".parse().unwrap()), 2, "established ones do not count");
            assert_eq!(listening_on(v4, "0.0.0.0:9000".parse().unwrap()), 1);
            let v6 = "  sl  local_address rem_address st\n\
                      0: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A\n";
            assert_eq!(listening_on(v6, "[::1]:9000".parse().unwrap()), 1);
        }
        // And on this machine, for real: one listener, then two.
        let first = bind("127.0.0.1:0".parse().unwrap());
        if let (Ok(first), true) = (first, std::path::Path::new("/proc/net/tcp").exists()) {
            let addr = first.local_addr().unwrap();
            assert!(!others_listen_on(addr));
            let _second = bind(addr).unwrap();
            assert!(others_listen_on(addr));
        }
    }
}
