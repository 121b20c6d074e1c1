//! systemd's readiness protocol: under `Type=notify`, `systemctl start` returns only once every
//! listener is bound, so a script starting a second instance for a zero-downtime restart knows
//! when it may stop the first — and a start that fails is reported as a failed start.
//!
//! The protocol is one datagram to the Unix socket systemd names in `NOTIFY_SOCKET` (a path, or
//! an abstract name after `@`); outside systemd the variable is unset and nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Tells systemd `state` (`READY=1`, `STOPPING=1`). A failure is logged, never fatal: the proxy
/// serves the same whether or not anyone listens.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(socket.as_encoded_bytes(), state) {
        crate::warn!("cannot tell systemd {state}: {e}");
    }
}

fn send(socket: &[u8], state: &str) -> std::io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    #[cfg(target_os = "linux")]
    if let Some(name) = socket.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        return sender.send_to_addr(state.as_bytes(), &address).map(drop);
    }
    use std::os::unix::ffi::OsStrExt;
    sender.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(socket)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_path_or_an_abstract_socket() {
        let path = std::env::temp_dir().join(format!("llmproxy-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str().as_encoded_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&path);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("llmproxy-notify-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(format!("@{name}").as_bytes(), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
