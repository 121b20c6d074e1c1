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
