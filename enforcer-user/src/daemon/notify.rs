//! `sd_notify(READY=1)` without libsystemd: one datagram to
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), sent
//! only after the self-test passed.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is ready, when run by systemd with
/// `Type=notify` (`NOTIFY_SOCKET` set); otherwise does nothing.
pub fn ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send(&socket, b"READY=1\nSTATUS=enforcing; self-test passed") {
        tracing::warn!(error = %error, "could not notify systemd (NOTIFY_SOCKET)");
    }
}

fn send(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(message, &addr)
        }
        None => sender.send_to(message, std::path::Path::new(socket)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
