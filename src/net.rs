//! Socket set-up: the listener, backend connects, socket options, name resolution and the
//! classification of socket errors. Everything here is a thin, documented wrapper over
//! `socket2`/`mio` so the rest of the crate reads in terms of what it wants done.

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Binds a non-blocking listener with `SO_REUSEADDR` and `TCP_NODELAY`.
///
/// On Linux accepted sockets inherit `TCP_NODELAY` from the listener, which saves a
/// `setsockopt` per client (see [`accepted_nodelay_is_inherited`]).
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Whether a socket accepted from a `TCP_NODELAY` listener has `TCP_NODELAY` already.
pub const fn accepted_nodelay_is_inherited() -> bool {
    cfg!(any(target_os = "linux", target_os = "android"))
}

/// Prepares an accepted client socket.
pub fn prepare_client(stream: &TcpStream) -> io::Result<()> {
    if !accepted_nodelay_is_inherited() {
        stream.set_nodelay(true)?;
    }
    Ok(())
}

/// Starts a non-blocking connect with `TCP_NODELAY` set. Completion (or failure) is reported
/// by the socket becoming writable.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Makes closing this socket send a reset (`SO_LINGER` 0) instead of a FIN: how a reset on
/// one side is passed on to the other, and how shed clients are turned away.
pub fn reset_on_close(stream: &TcpStream) {
    // Best effort: if it fails the peer sees a FIN instead, which still ends its session.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The error a non-blocking connect ended with, once the socket reported an error.
pub fn connect_error(stream: &TcpStream) -> io::Error {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => e,
        Ok(None) => io::Error::new(io::ErrorKind::ConnectionRefused, "connection closed"),
    }
}

/// The process or the system is out of file descriptors (or socket memory).
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The peer reset or abandoned the connection: worth passing on as a reset.
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::TimedOut
    )
}

/// Resolves `host:port` to every address it names (blocking: only at start or off the
/// reactor thread).
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    // getaddrinfo lists an address once per socket type unless told otherwise.
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "name resolves to no address",
        ));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn accepted_sockets_have_nodelay() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), 8).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client.write_all(b"x").expect("write");
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        prepare_client(&accepted).expect("prepare");
        assert!(accepted.nodelay().expect("getsockopt"));
    }

    #[test]
    fn resolves_literals_and_localhost() {
        assert_eq!(
            resolve("127.0.0.1", 80).expect("literal"),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))]
        );
        assert_eq!(
            resolve("::1", 80).expect("literal"),
            vec!["[::1]:80".parse::<SocketAddr>().expect("addr")]
        );
        let local = resolve("localhost", 9).expect("localhost resolves");
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(resolve("no-such-host.invalid", 80).is_err());
    }
}
