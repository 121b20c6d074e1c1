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
