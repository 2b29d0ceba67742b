//! Socket set-up: the listener, backend connects, socket options, name resolution and the
//! classification of socket errors. Everything here is a thin, documented wrapper over
//! `socket2`/`mio` so the rest of the crate reads in terms of what it wants done.

use mio::Interest;
use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Binds a non-blocking listener with `SO_REUSEADDR`, `TCP_NODELAY` and `SO_OOBINLINE`.
///
/// On Linux accepted sockets inherit both options from the listener, which saves two
/// `setsockopt`s per client (see [`accepted_options_are_inherited`]).
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Whether a socket accepted from the listener has its `TCP_NODELAY` and `SO_OOBINLINE`.
pub const fn accepted_options_are_inherited() -> bool {
    cfg!(any(target_os = "linux", target_os = "android"))
}

/// Prepares an accepted client socket.
pub fn prepare_client(stream: &TcpStream) -> io::Result<()> {
    if !accepted_options_are_inherited() {
        stream.set_nodelay(true)?;
        SockRef::from(stream).set_out_of_band_inline(true)?;
    }
    Ok(())
}

/// Starts a non-blocking connect to a backend with `TCP_NODELAY` and `SO_OOBINLINE` set.
/// Completion (or failure) is reported by the socket becoming writable.
///
/// `SO_OOBINLINE` keeps TCP urgent data (telnet's Synch, FTP's ABOR) in the byte stream,
/// so it is forwarded like every other byte instead of being dropped.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    SockRef::from(&stream).set_out_of_band_inline(true)?;
    Ok(stream)
}

/// What a session's sockets are registered for: both directions, plus urgent data where the
/// platform reports it (a read stops short at the urgent mark, see `pipe.rs`).
pub fn session_interest() -> Interest {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let interest = Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let interest = Interest::READABLE | Interest::WRITABLE;
    interest
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

/// The trouble is here, not at the backend: out of file descriptors, socket memory or
/// local ports (`EADDRNOTAVAIL` when the ephemeral ports are used up). Such a failed connect
/// is not counted against the backend.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
        )
    )
}

/// An `accept` failure that concerns only the one connection (interrupted, or the client
/// gave up while queued): accept the next one.
pub fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
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
    fn accepted_sockets_have_nodelay_and_oobinline() {
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
        assert!(
            SockRef::from(&accepted)
                .out_of_band_inline()
                .expect("getsockopt")
        );
    }

    #[test]
    fn local_address_trouble_is_not_the_backends_fault() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::EADDRINUSE,
        ] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
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
