//! The listening sockets: where they come from, and which worker accepts on which.
//!
//! They come from the first of these that has them:
//! 1. the tcplb this process upgrades (`TCPLB_UPGRADE_FDS`, see [`super::upgrade`]): every
//!    client socket and the admin socket, adopted as they are;
//! 2. systemd (socket activation, see [`super::systemd`]): the socket at the `--admin`
//!    address, if one is, serves the admin endpoint; every other one serves clients;
//! 3. binding here: `--listen` (on Linux one socket per worker, in one `SO_REUSEPORT` group)
//!    and `--admin`.
//!
//! An admin socket that was not handed over is bound here.
//!
//! Which worker accepts where ([`assign`]):
//! - a `SO_REUSEPORT` group (two or more sockets on one address, as tcplb binds them): one
//!   socket per worker. After an upgrade to more workers than the group has sockets
//!   (`--workers auto` on a machine that gained CPUs), the new process binds more into the
//!   group, and the kernel spreads new clients over all of them. With fewer workers than
//!   sockets, some workers take two or more, round-robin: a socket of the group cannot leave
//!   it without being closed, and closing it resets every client queued on it (unless
//!   `net.ipv4.tcp_migrate_req` is on), so none is closed before the process exits.
//! - anything else (a single socket, systemd's sockets, sockets on different addresses):
//!   every worker accepts on every socket, each through its own descriptor; the kernel wakes
//!   every worker for a new client and one of them gets it. A process never adds sockets of
//!   its own beside systemd's: they would close, with the clients queued on them, when it
//!   stops, and the point of systemd's sockets is that a restart refuses nothing.
//!
//! The control thread keeps one descriptor of every client socket (for the next upgrade);
//! each worker gets copies of its own.

use super::start::Failure;
use super::systemd;
use super::upgrade::Inherited;
use crate::config::Config;
use crate::net;
use crate::worker::MAX_LISTENERS;
use log::warn;
use socket2::Socket;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};

/// Where the listening sockets came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Bound,
    /// Handed over by the tcplb this process upgrades.
    Upgrade {
        from: u32,
    },
    Systemd,
}

/// The listening sockets and who accepts on which.
pub struct Listening {
    /// Every client socket, once each.
    pub sockets: Vec<TcpListener>,
    /// Their addresses, in the same order.
    pub addrs: Vec<SocketAddr>,
    /// For each worker, the sockets it accepts on (indexes into `sockets`).
    pub plan: Vec<Vec<usize>>,
    pub admin: Option<TcpListener>,
    pub origin: Origin,
    /// After an upgrade: where to say this process serves.
    pub ready: Option<File>,
}

impl Listening {
    /// Gets the sockets for `workers` workers: handed over, from systemd, or bound.
    pub fn acquire(config: &Config, workers: usize) -> Result<Listening, Failure> {
        let (sockets, admin, origin, ready) = match Inherited::from_env().map_err(Failure::Start)? {
            Some(inherited) => {
                let sockets = inherited
                    .listen
                    .into_iter()
                    .map(adopt)
                    .collect::<Result<Vec<_>, _>>()?;
                let admin = inherited.admin.map(adopt).transpose()?;
                let origin = Origin::Upgrade {
                    from: inherited.from,
                };
                (sockets, admin, origin, Some(inherited.ready))
            }
            None => {
                let fds = systemd::listen_fds().map_err(Failure::Start)?;
                if fds.is_empty() {
                    (
                        bind("--listen", &config.listen, config.backlog, workers)?,
                        None,
                        Origin::Bound,
                        None,
                    )
                } else {
                    let (sockets, admin) = split_systemd(fds, config)?;
                    (sockets, admin, Origin::Systemd, None)
                }
            }
        };
        if sockets.is_empty() {
            return Err(Failure::Start(
                "no listening socket was handed over".to_string(),
            ));
        }
        let admin = match (admin, &config.admin) {
            (Some((socket, _)), Some(_)) => Some(socket),
            (None, Some(addr)) => Some(bind("--admin", addr, 64, 1)?.remove(0).0),
            (_, None) => None,
        };
        let (mut sockets, mut addrs): (Vec<TcpListener>, Vec<SocketAddr>) =
            sockets.into_iter().unzip();
        let group = is_group(&sockets, &addrs);
        // Sockets bound here are as many as could be (`net::bind_group`); systemd's are
        // never added to.
        if group && sockets.len() < workers && matches!(origin, Origin::Upgrade { .. }) {
            for _ in sockets.len()..workers {
                match net::join_group(addrs[0], config.backlog) {
                    Ok(socket) => {
                        sockets.push(socket);
                        addrs.push(addrs[0]);
                    }
                    Err(e) => {
                        warn!(
                            "cannot add a socket to the group listening on {}: {e}; some \
                             workers share one",
                            addrs[0]
                        );
                        break;
                    }
                }
            }
        }
        let plan = assign(sockets.len(), workers, group);
        if plan.iter().any(|p| p.len() > MAX_LISTENERS) {
            return Err(Failure::Start(format!(
                "{} listening sockets: more than {MAX_LISTENERS} per worker",
                sockets.len()
            )));
        }
        Ok(Listening {
            sockets,
            addrs,
            plan,
            admin,
            origin,
            ready,
        })
    }

    /// Worker `index`'s own copies of its sockets.
    pub fn for_worker(&self, index: usize) -> io::Result<Vec<mio::net::TcpListener>> {
        self.plan[index]
            .iter()
            .map(|&j| {
                Ok(mio::net::TcpListener::from_std(
                    self.sockets[j].try_clone()?,
                ))
            })
            .collect()
    }

    /// For the start line: where the sockets came from and how the workers share them
    /// (empty for the usual one socket per worker, bound here).
    pub fn note(&self) -> String {
        let mut notes = Vec::new();
        match self.origin {
            Origin::Bound => {}
            Origin::Upgrade { from } => {
                notes.push(format!("listening sockets taken over from pid {from}"))
            }
            Origin::Systemd => notes.push("listening sockets from systemd".to_string()),
        }
        let workers = self.plan.len();
        let sockets = self.sockets.len();
        if workers > 1 && self.plan.iter().all(|p| p.len() == sockets) {
            notes.push(format!(
                "the workers share {}",
                if sockets == 1 {
                    "the listening socket".to_string()
                } else {
                    format!("{sockets} listening sockets")
                }
            ));
        } else if sockets > workers {
            notes.push(format!(
                "{sockets} listening sockets over {workers} worker{}",
                if workers == 1 { "" } else { "s" }
            ));
        }
        if self.addrs.iter().any(|a| *a != self.addrs[0]) {
            let others: Vec<String> = self.addrs[1..].iter().map(|a| a.to_string()).collect();
            notes.push(format!("also listening on {}", others.join(", ")));
        }
        notes.iter().map(|n| format!("; {n}")).collect()
    }
}

/// Which sockets each of `workers` workers accepts on (see the module's doc).
pub fn assign(sockets: usize, workers: usize, group: bool) -> Vec<Vec<usize>> {
    (0..workers)
        .map(|w| {
            if group && sockets >= workers {
                (w..sockets).step_by(workers).collect()
            } else if group {
                vec![w % sockets]
            } else {
                (0..sockets).collect()
            }
        })
        .collect()
}

/// Two or more sockets on one address, each with `SO_REUSEPORT`: the kernel spreads new
/// clients over them (Linux).
fn is_group(sockets: &[TcpListener], addrs: &[SocketAddr]) -> bool {
    cfg!(target_os = "linux")
        && sockets.len() >= 2
        && addrs.iter().all(|a| *a == addrs[0])
        && sockets.iter().all(net::is_reuse_port)
}

/// Takes over a listening socket that was handed to this process.
fn adopt(fd: OwnedFd) -> Result<(TcpListener, SocketAddr), Failure> {
    let number = fd.as_raw_fd();
    let socket = Socket::from(fd);
    let addr = net::prepare_inherited(&socket).map_err(|e| {
        Failure::Start(format!(
            "inherited descriptor {number} is not a listening TCP socket: {e}"
        ))
    })?;
    Ok((socket.into(), addr))
}

type Adopted = (TcpListener, SocketAddr);

/// systemd's sockets: the one at the `--admin` address (if any) is the admin socket; every
/// other one is a client socket.
fn split_systemd(
    fds: Vec<OwnedFd>,
    config: &Config,
) -> Result<(Vec<Adopted>, Option<Adopted>), Failure> {
    let mut sockets = fds.into_iter().map(adopt).collect::<Result<Vec<_>, _>>()?;
    let admin_addrs = match &config.admin {
        Some((host, port)) => net::resolve(host, *port).unwrap_or_default(),
        None => Vec::new(),
    };
    let admin = sockets
        .iter()
        .position(|(_, addr)| admin_addrs.contains(addr))
        .map(|i| sockets.remove(i));
    if sockets.is_empty() {
        return Err(Failure::Start(
            "systemd passed only the --admin socket; tcplb needs one for clients too".to_string(),
        ));
    }
    let (host, port) = &config.listen;
    let listen_addrs = net::resolve(host, *port).unwrap_or_default();
    if !sockets.iter().any(|(_, addr)| listen_addrs.contains(addr)) {
        let passed: Vec<String> = sockets.iter().map(|(_, a)| a.to_string()).collect();
        warn!(
            "--listen {}:{port} is not among the sockets systemd passed ({}); serving on those",
            host,
            passed.join(", ")
        );
    }
    Ok((sockets, admin))
}

/// Resolves and binds `--listen` or `--admin` (`flag`); failures name the address, the
/// flag and the OS error.
fn bind(
    flag: &str,
    (host, port): &(String, u16),
    backlog: i32,
    workers: usize,
) -> Result<Vec<Adopted>, Failure> {
    let addrs = net::resolve(host, *port)
        .map_err(|e| Failure::Start(format!("cannot resolve {flag} address {host}:{port}: {e}")))?;
    let addr = addrs[0];
    let sockets = net::bind_group(addr, backlog, workers).map_err(|e| {
        Failure::Start(format!(
            "cannot listen on {addr} for {flag}: {e}{}",
            privilege_hint(addr.port(), &e)
        ))
    })?;
    sockets
        .into_iter()
        .map(|s| {
            let bound = s
                .local_addr()
                .map_err(|e| Failure::Start(format!("cannot read the listen address: {e}")))?;
            Ok((s, bound))
        })
        .collect()
}

/// For a port only privileged processes may bind (below
/// `net.ipv4.ip_unprivileged_port_start`, 1024 by default) refused for want of privilege:
/// the ways to get it without running as root. Empty otherwise.
fn privilege_hint(port: u16, e: &io::Error) -> String {
    let first_open = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    if e.kind() != io::ErrorKind::PermissionDenied || u32::from(port) >= first_open {
        return String::new();
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/path/to/tcplb".to_string());
    format!(
        "; ports below {first_open} need privilege: give the binary the capability \
         (setcap cap_net_bind_service=+ep {exe}), let systemd bind the port (socket \
         activation, deploy/systemd/tcplb.socket), or set \
         AmbientCapabilities=CAP_NET_BIND_SERVICE in its service unit"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_gives_each_worker_its_own_and_anything_else_is_shared() {
        // As many sockets as workers: one each.
        assert_eq!(assign(2, 2, true), vec![vec![0], vec![1]]);
        // Fewer workers than sockets: round-robin, none left out.
        assert_eq!(assign(5, 2, true), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(assign(4, 1, true), vec![vec![0, 1, 2, 3]]);
        // More workers than a group could be grown to: they share.
        assert_eq!(assign(2, 3, true), vec![vec![0], vec![1], vec![0]]);
        // One socket, or systemd's: every worker on every socket.
        assert_eq!(assign(1, 3, false), vec![vec![0], vec![0], vec![0]]);
        assert_eq!(assign(2, 2, false), vec![vec![0, 1], vec![0, 1]]);
        assert_eq!(assign(1, 1, false), vec![vec![0]]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn what_tcplb_binds_is_a_group_and_one_socket_is_not() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let bound = net::bind_group(addr, 8, 3).expect("bind");
        let addrs: Vec<SocketAddr> = bound
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| *a == addrs[0] && a.port() != 0));
        assert!(is_group(&bound, &addrs));
        let one = net::bind_group(addr, 8, 1).expect("bind");
        let one_addr = [one[0].local_addr().expect("addr")];
        assert!(!is_group(&one, &one_addr));
        // Two sockets on different addresses are not a group either.
        let other = net::bind_group(addr, 8, 2).expect("bind");
        let mixed = [
            bound[0].try_clone().expect("dup"),
            other[0].try_clone().expect("dup"),
        ];
        let mixed_addrs = [addrs[0], other[0].local_addr().expect("addr")];
        assert!(!is_group(&mixed, &mixed_addrs));
    }

    #[test]
    fn only_listening_tcp_sockets_are_adopted() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (adopted, seen) = adopt(OwnedFd::from(listener)).unwrap_or_else(|_| panic!("adopt"));
        assert_eq!(seen, addr);
        // SAFETY: F_GETFL/F_GETFD only read the flags of a descriptor we own.
        let (status, flags) = unsafe {
            (
                libc::fcntl(adopted.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(adopted.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert!(status & libc::O_NONBLOCK != 0, "non-blocking");
        assert!(flags & libc::FD_CLOEXEC != 0, "close-on-exec");
        let connected = std::net::TcpStream::connect(addr).expect("connect");
        match adopt(OwnedFd::from(connected)) {
            Err(Failure::Start(message)) => assert!(message.contains("not listening"), "{message}"),
            _ => panic!("a connected socket was adopted as a listener"),
        }
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        match adopt(OwnedFd::from(udp)) {
            Err(Failure::Start(message)) => {
                assert!(message.contains("not a stream socket"), "{message}")
            }
            _ => panic!("a UDP socket was adopted as a listener"),
        }
    }
}
