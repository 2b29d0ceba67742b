//! Socket set-up: the listener, backend connects, socket options, name resolution and the
//! classification of socket errors. Everything here is a thin, documented wrapper over
//! `socket2`/`mio` so the rest of the crate reads in terms of what it wants done.

use mio::Interest;
use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, SockRef, Socket, Type};
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Binds a non-blocking listener with `SO_REUSEADDR`, `TCP_NODELAY` and `SO_OOBINLINE`.
///
/// On Linux accepted sockets inherit both options from the listener, which saves two
/// `setsockopt`s per client (see [`accepted_options_are_inherited`]).
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    Ok(TcpListener::from_std(bind_one(
        addr, backlog, false, false,
    )?))
}

/// The listening sockets for `workers` workers on `addr`. On Linux, with more than one
/// worker, one socket per worker, each its own socket in one `SO_REUSEPORT` group, so the
/// kernel spreads new connections evenly over the workers' accept queues by a hash of the
/// client's address and port (no shared queue, no wake-up of every worker per
/// connection); the first bind picks the port when `addr` has port 0. Otherwise one socket,
/// which the workers share.
pub fn bind_group(
    addr: SocketAddr,
    backlog: i32,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    bind_group_v6(addr, backlog, workers, false)
}

/// As [`bind_group`]; `only_v6` makes an IPv6 socket take IPv6 clients only
/// (`IPV6_V6ONLY`: `[::]:80` beside `0.0.0.0:80`, as nginx does it), where the system's
/// default would take IPv4 clients too.
pub fn bind_group_v6(
    addr: SocketAddr,
    backlog: i32,
    workers: usize,
    only_v6: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
    let group = cfg!(target_os = "linux") && workers > 1;
    let first = bind_one(addr, backlog, group, only_v6)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    if group {
        for _ in 1..workers {
            match join_group(bound, backlog, only_v6) {
                Ok(socket) => sockets.push(socket),
                // Another socket on the port that is not in the group (bound by another
                // program without SO_REUSEPORT) keeps more from joining: the workers share
                // the ones there are (see `control::sockets`).
                Err(e) => {
                    log::warn!(
                        "cannot add a listening socket on {bound} for every worker ({e}); the \
                         workers share {}",
                        if sockets.len() == 1 { "one" } else { "them" }
                    );
                    break;
                }
            }
        }
    }
    Ok(sockets)
}

/// One more socket in the `SO_REUSEPORT` group listening on `addr` (Linux only), taking
/// IPv6 clients only if the group's do (`only_v6`).
pub fn join_group(
    addr: SocketAddr,
    backlog: i32,
    only_v6: bool,
) -> io::Result<std::net::TcpListener> {
    bind_one(addr, backlog, true, only_v6)
}

fn bind_one(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
    only_v6: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && only_v6 {
        socket.set_only_v6(true)?;
    }
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Checks that a socket this process was handed (by the tcplb it upgrades, or by systemd)
/// is a listening TCP socket, and gives it what [`bind_listener`] gives a socket of its
/// own: non-blocking, `TCP_NODELAY` and `SO_OOBINLINE` (for the clients it accepts), and
/// close-on-exec (it was handed over without). Returns its address.
pub fn prepare_inherited(socket: &Socket) -> io::Result<SocketAddr> {
    let not = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    if socket.r#type()? != Type::STREAM {
        return Err(not("not a stream socket"));
    }
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| not("not an IPv4 or IPv6 socket"))?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    if !socket.is_listener()? {
        return Err(not("not listening"));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    Ok(addr)
}

/// Whether a listening socket has `SO_REUSEPORT` (is, or may be, one of a group).
pub fn is_reuse_port(socket: &std::net::TcpListener) -> bool {
    #[cfg(target_os = "linux")]
    return SockRef::from(socket).reuse_port().unwrap_or(false);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// Whether a socket accepted from the listener has its `TCP_NODELAY` and `SO_OOBINLINE`.
pub const fn accepted_options_are_inherited() -> bool {
    cfg!(any(target_os = "linux", target_os = "android"))
}

/// Has the kernel hand `listener` a connection only once the client's first bytes have
/// come (or `seconds` have passed without any), `TCP_DEFER_ACCEPT`; 0 turns it off. For
/// services that read the client's first bytes before anything else (a TLS hello): the
/// hello is there in the turn that accepts the client, one turn of the loop sooner.
pub fn set_defer_accept(listener: &std::net::TcpListener, seconds: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor borrowed for the call, and a pointer to an int that lives
    // through it, with its size: what setsockopt(2) reads for TCP_DEFER_ACCEPT.
    let done = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
/// platform reports it (a read stops short at the urgent mark, see `direction.rs`).
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

/// Whether a connect to `backend` would reach the listener bound to `listen` (a loop): the
/// same address and port, or `listen` is the wildcard address (`0.0.0.0`; `[::]`, which
/// also takes IPv4 unless `v6_only`) and `backend` is one of this host's addresses
/// (`is_local`, see [`local_addresses`]) on the same port. A connect to the wildcard
/// address itself goes to the loopback address.
pub fn reaches_listener(
    listen: SocketAddr,
    v6_only: bool,
    backend: SocketAddr,
    is_local: impl Fn(IpAddr) -> bool,
) -> bool {
    if listen.port() != backend.port() {
        return false;
    }
    let target = match backend.ip().to_canonical() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let local = || target.is_loopback() || is_local(target);
    match listen.ip().to_canonical() {
        IpAddr::V4(ip) if ip.is_unspecified() => target.is_ipv4() && local(),
        IpAddr::V6(ip) if ip.is_unspecified() => (target.is_ipv6() || !v6_only) && local(),
        ip => ip == target,
    }
}

/// The addresses of this host's network interfaces (`getifaddrs`).
pub fn local_addresses() -> io::Result<HashSet<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a pointer to a list it allocated in `list`, a valid place.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addrs = HashSet::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is a node of the list getifaddrs returned, which is freed only below.
        let ifa = unsafe { &*node };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family tells its real
            // type, so reading it as sockaddr_in / sockaddr_in6 by family is sound.
            let ip = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            addrs.extend(ip);
        }
        node = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once, after its last use.
    unsafe { libc::freeifaddrs(list) };
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
    fn a_backend_that_is_the_listener_is_a_loop() {
        // This host's addresses besides loopback: one of each family.
        let host: [IpAddr; 2] = [
            "10.1.2.3".parse().expect("ip"),
            "2001:db8::3".parse().expect("ip"),
        ];
        // (listen, IPV6_V6ONLY, backend, a loop?)
        let cases = [
            // The same address, however written.
            ("127.0.0.1:8080", false, "127.0.0.1:8080", true),
            ("[::1]:8080", false, "[::1]:8080", true),
            ("127.0.0.1:8080", false, "[::ffff:127.0.0.1]:8080", true),
            ("127.0.0.1:8080", false, "0.0.0.0:8080", true),
            ("10.1.2.3:8080", false, "10.1.2.3:8080", true),
            // A wildcard listener takes every address of this host, of its family, on its port.
            ("0.0.0.0:8080", false, "127.0.0.1:8080", true),
            ("0.0.0.0:8080", false, "127.0.0.2:8080", true),
            ("0.0.0.0:8080", false, "10.1.2.3:8080", true),
            ("[::]:8080", false, "127.0.0.1:8080", true),
            ("[::]:8080", false, "10.1.2.3:8080", true),
            ("[::]:8080", true, "[2001:db8::3]:8080", true),
            ("[::]:8080", true, "127.0.0.1:8080", false),
            ("0.0.0.0:8080", false, "[::1]:8080", false),
            ("0.0.0.0:8080", false, "[2001:db8::3]:8080", false),
            // Another port, another address, a remote address.
            ("127.0.0.1:8080", false, "127.0.0.1:8081", false),
            ("127.0.0.1:8080", false, "127.0.0.2:8080", false),
            ("10.1.2.3:8080", false, "127.0.0.1:8080", false),
            ("0.0.0.0:8080", false, "192.0.2.1:8080", false),
        ];
        for (listen, v6_only, backend, want) in cases {
            let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
            let got = reaches_listener(at(listen), v6_only, at(backend), |ip| host.contains(&ip));
            assert_eq!(
                got, want,
                "listen {listen} (v6 only: {v6_only}), backend {backend}"
            );
        }
    }

    #[test]
    fn local_addresses_are_this_hosts() {
        let addrs = local_addresses().expect("getifaddrs");
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
        assert!(!addrs.contains(&"192.0.2.1".parse::<IpAddr>().expect("ip")));
        // Each can be bound to, which only this host's addresses can (link-local IPv6 needs
        // a scope, so it is left out).
        for ip in &addrs {
            if matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            std::net::UdpSocket::bind(SocketAddr::new(*ip, 0))
                .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        }
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
