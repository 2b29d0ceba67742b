//! What tcplb speaks of systemd's protocols, without linking libsystemd:
//!
//! - socket activation ([`listen_fds`], the `sd_listen_fds` protocol): when `LISTEN_PID` is
//!   this process and `LISTEN_FDS` is N, descriptors 3 to 3+N-1 are listening sockets
//!   systemd opened (`tcplb.socket`). systemd keeps its own copy, so they stay open,
//!   queueing clients, while tcplb restarts: a restart refuses nothing.
//! - readiness notification ([`notify`], the `sd_notify` protocol): one datagram to
//!   `$NOTIFY_SOCKET`: `READY=1` once serving, `STOPPING=1` when a drain begins, and
//!   `MAINPID=PID` when an upgrade hands the service over to a new process, so systemd
//!   follows it instead of stopping the service when the old one exits.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The first descriptor systemd passes.
const FIRST_FD: RawFd = 3;
/// Most sockets taken from systemd.
const MAX_FDS: usize = 1024;

/// The sockets systemd passed to this process (empty when it passed none, or passed them to
/// another process: `LISTEN_PID` is not ours).
pub fn listen_fds() -> Result<Vec<OwnedFd>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let count = count(pid.as_deref(), fds.as_deref(), std::process::id())?;
    let mut owned = Vec::with_capacity(count);
    for fd in FIRST_FD..FIRST_FD + count as RawFd {
        // SAFETY: F_GETFD only reads the descriptor's flags; an unused number fails.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(format!(
                "LISTEN_FDS={count}, but descriptor {fd} is not open: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: systemd passed descriptors 3..3+LISTEN_FDS to this very process
        // (LISTEN_PID is ours) for it to own; each number is taken once, and nothing else
        // in this process has claimed them.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// How many descriptors `LISTEN_PID`/`LISTEN_FDS` hand to process `me`.
fn count(pid: Option<&str>, fds: Option<&str>, me: u32) -> Result<usize, String> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(0);
    };
    if pid.parse::<u32>() != Ok(me) {
        return Ok(0);
    }
    fds.parse::<usize>()
        .ok()
        .filter(|&n| n <= MAX_FDS)
        .ok_or_else(|| {
            format!(
                "LISTEN_FDS='{}' is not a number of sockets from 0 to {MAX_FDS}",
                crate::config::printable(fds)
            )
        })
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `MAINPID=PID`) to the service manager, if one
/// listens (`$NOTIFY_SOCKET`). Returns whether one did. Never blocks.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notification socket at `path` (`@NAME`: in the abstract namespace).
fn notify_to(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match path.as_bytes().strip_prefix(b"@") {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(name) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sockets_meant_for_this_process_count() {
        assert_eq!(count(None, None, 42), Ok(0));
        assert_eq!(count(Some("42"), None, 42), Ok(0));
        assert_eq!(count(None, Some("2"), 42), Ok(0));
        assert_eq!(count(Some("41"), Some("2"), 42), Ok(0), "another process's");
        assert_eq!(count(Some("x"), Some("2"), 42), Ok(0));
        assert_eq!(count(Some("42"), Some("2"), 42), Ok(2));
        assert_eq!(count(Some("42"), Some("0"), 42), Ok(0));
        let err = count(Some("42"), Some("two"), 42).expect_err("not a number");
        assert!(err.contains("LISTEN_FDS='two'"), "{err}");
        assert!(count(Some("42"), Some("100000"), 42).is_err());
    }

    #[test]
    fn notifications_reach_the_socket() {
        let path = std::env::temp_dir().join(format!("tcplb-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"READY=1");
        drop(manager);
        assert!(
            notify_to(path.as_os_str(), "READY=1").is_err(),
            "nobody listens"
        );
        let _ = std::fs::remove_file(&path);

        // The abstract namespace: "@name".
        let name = format!("tcplb-notify-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .expect("abstract address")
        };
        let manager = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        let n = manager.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
