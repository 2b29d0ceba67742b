//! The listening sockets, by service: where they come from, which worker accepts on which,
//! and the control thread's own copy of each (for the next upgrade to hand over).
//!
//! At start a service's address gets its sockets from the first of these that has them:
//! 1. the tcplb this process upgrades (`TCPLB_UPGRADE_FDS`, see [`super::upgrade`]): each
//!    socket comes named with its service; it is adopted where the service (by name) still
//!    listens on its address (or on port 0 of its host);
//! 2. systemd (socket activation, see [`super::systemd`]): a socket at a service's address
//!    is that service's (with one service, every socket but the admin one is its);
//! 3. binding here: on Linux one socket per worker, in one `SO_REUSEPORT` group.
//!
//! A reload binds the addresses of the services it adds ([`Sockets::bind_service`]) and lets
//! go of those of the services it removes ([`Sockets::remove`]): the sockets of a service
//! that did not change are never touched.
//!
//! Which worker accepts where ([`assign`]), per address:
//! - a `SO_REUSEPORT` group (two or more sockets on one address, as tcplb binds them): one
//!   socket per worker. After an upgrade to more workers than the group has sockets, the new
//!   process binds more into the group. With fewer workers than sockets, some workers take
//!   two or more, round-robin: a socket of the group cannot leave it without being closed,
//!   and closing it resets every client queued on it.
//! - anything else (a single socket, systemd's): every worker accepts on it through its own
//!   descriptor; the kernel wakes every worker for a new client and one of them gets it.

use super::failure::Failure;
use super::systemd;
use super::upgrade::Inherited;
use crate::config::{Config, ServiceSpec, authority};
use crate::net;
use log::{info, warn};
use socket2::Socket;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};

/// `TCP_DEFER_ACCEPT` on a service with routes: a client that has sent nothing is handed
/// over after about this long anyway (the kernel rounds it to its SYN-ACK retransmission
/// schedule), and then waits `sni-timeout` as any client does. HAProxy's `defer-accept`
/// and nginx's `deferred` do the same.
const DEFER_ACCEPT_SECONDS: u32 = 1;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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

/// The sockets of one address of a service, and who accepts on which.
#[derive(Debug)]
pub struct Group {
    /// The address as configured (`None`: handed over with no configured one to match).
    configured: Option<(String, u16)>,
    pub addr: SocketAddr,
    /// The control thread's copies (`None` once let go of).
    sockets: Vec<Option<TcpListener>>,
    /// For each worker, the sockets it accepts on (indexes into `sockets`).
    plan: Vec<Vec<usize>>,
}

impl Group {
    fn new(
        configured: Option<(String, u16)>,
        addr: SocketAddr,
        sockets: Vec<TcpListener>,
        workers: usize,
    ) -> Group {
        let group = is_group(&sockets);
        let plan = assign(sockets.len(), workers, group);
        Group {
            configured,
            addr,
            sockets: sockets.into_iter().map(Some).collect(),
            plan,
        }
    }

    /// Worker `w`'s own copies of its sockets.
    fn for_worker(&self, w: usize) -> io::Result<Vec<TcpListener>> {
        self.plan[w]
            .iter()
            .filter_map(|&j| self.sockets[j].as_ref())
            .map(TcpListener::try_clone)
            .collect()
    }
}

/// Every service's listening sockets, and the admin one.
pub struct Sockets {
    services: Vec<(String, Vec<Group>)>,
    workers: usize,
    pub admin: Option<TcpListener>,
    pub origin: Origin,
    /// After an upgrade: where to say this process serves.
    pub ready: Option<File>,
}

/// A socket handed to this process, not yet given to a service.
struct Adopted {
    socket: TcpListener,
    addr: SocketAddr,
    /// The service it was named for (an upgrade names them; systemd does not).
    service: Option<String>,
}

impl Sockets {
    /// Gets every service's sockets for `workers` workers: handed over (`inherited`, by
    /// the process this one upgrades), from systemd, or bound.
    pub fn acquire(
        config: &Config,
        workers: usize,
        inherited: Option<Inherited>,
    ) -> Result<Sockets, Failure> {
        let (mut inherited, admin, origin, ready) = match inherited {
            Some(inherited) => {
                let mut sockets = Vec::with_capacity(inherited.listen.len());
                for (fd, service) in inherited.listen {
                    let (socket, addr) = adopt(fd)?;
                    sockets.push(Adopted {
                        socket,
                        addr,
                        service,
                    });
                }
                let admin = inherited.admin.map(adopt).transpose()?;
                let origin = Origin::Upgrade {
                    from: inherited.from,
                };
                (sockets, admin, origin, Some(inherited.ready))
            }
            None => {
                let fds = systemd::listen_fds().map_err(Failure::Start)?;
                if fds.is_empty() {
                    (Vec::new(), None, Origin::Bound, None)
                } else {
                    let (sockets, admin) = split_systemd(fds, config)?;
                    (sockets, admin, Origin::Systemd, None)
                }
            }
        };
        let admin = match (admin, &config.global.admin) {
            (Some((socket, _)), Some(_)) => Some(socket),
            (None, Some(addr)) => Some(
                bind("--admin", addr, 64, 1, false)
                    .map_err(Failure::Start)?
                    .remove(0)
                    .0,
            ),
            (_, None) => None,
        };
        let mut sockets = Sockets {
            services: Vec::with_capacity(config.services.len()),
            workers,
            admin,
            origin,
            ready,
        };
        let only_one = config.services.len() == 1;
        for service in &config.services {
            let mut groups = Vec::with_capacity(service.listen.len());
            let taken = take_inherited(&mut inherited, service, only_one, origin);
            for source in taken {
                groups.push(match source {
                    Source::Adopt(configured, found) => {
                        grow(configured, found, service.backlog, workers, origin)
                    }
                    Source::Bind(addr) => bind_group(
                        &listen_flag(config, service),
                        &addr,
                        service.backlog,
                        workers,
                        only_v6(&addr, config),
                    )
                    .map_err(Failure::Start)?,
                });
            }
            sockets.services.push((service.name.clone(), groups));
        }
        for left in inherited {
            info!(
                "closing the handed-over socket on {}{}: no service listens there now",
                left.addr,
                left.service
                    .map(|s| format!(" (service {s})"))
                    .unwrap_or_default()
            );
        }
        Ok(sockets)
    }

    /// Binds `service`'s addresses (a reload added it to `config`). Nothing is kept if one
    /// fails.
    pub fn bind_service(&mut self, service: &ServiceSpec, config: &Config) -> Result<(), String> {
        let mut groups = Vec::with_capacity(service.listen.len());
        let what = format!("service {}", service.name);
        for addr in &service.listen {
            let v6 = only_v6(addr, config);
            groups.push(bind_group(&what, addr, service.backlog, self.workers, v6)?);
        }
        self.remove(&service.name);
        self.services.push((service.name.clone(), groups));
        Ok(())
    }

    /// A reload changed `old`'s addresses (or backlog) to `new`'s: binds the addresses it
    /// gained, lets go of those it lost, keeps the rest (with the new backlog). Returns the
    /// addresses lost and the addresses gained; on an error nothing has changed.
    #[allow(clippy::type_complexity)]
    pub fn rebind_service(
        &mut self,
        old: &ServiceSpec,
        new: &ServiceSpec,
        config: &Config,
    ) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), String> {
        let Some(i) = self.services.iter().position(|(name, _)| *name == old.name) else {
            return Err(format!("service {} has no sockets", old.name));
        };
        let configured = |g: &Group| g.configured.clone();
        let have: Vec<Option<(String, u16)>> = self.services[i].1.iter().map(configured).collect();
        let mut fresh = Vec::new();
        for addr in &new.listen {
            if !have.contains(&Some(addr.clone())) {
                let what = format!("service {}", new.name);
                let v6 = only_v6(addr, config);
                fresh.push(bind_group(&what, addr, new.backlog, self.workers, v6)?);
            }
        }
        let groups = std::mem::take(&mut self.services[i].1);
        let mut kept = Vec::with_capacity(groups.len() + fresh.len());
        let mut lost = Vec::new();
        for group in groups {
            match &group.configured {
                Some(addr) if !new.listen.contains(addr) => lost.push(group.addr),
                _ => {
                    if new.backlog != old.backlog {
                        for socket in group.sockets.iter().flatten() {
                            if let Err(e) = socket2::SockRef::from(socket).listen(new.backlog) {
                                warn!("cannot change the backlog on {}: {e}", group.addr);
                            }
                        }
                    }
                    kept.push(group);
                }
            }
        }
        let gained: Vec<SocketAddr> = fresh.iter().map(|g| g.addr).collect();
        kept.extend(fresh);
        self.services[i].1 = kept;
        Ok((lost, gained))
    }

    /// Sets `TCP_DEFER_ACCEPT` on every socket of `service` ([`net::set_defer_accept`]):
    /// on for a service with routes (its clients speak first), off otherwise.
    pub fn defer_accept(&self, service: &ServiceSpec) {
        let seconds = if service.routing.is_some() {
            DEFER_ACCEPT_SECONDS
        } else {
            0
        };
        for group in self.groups(&service.name) {
            for socket in group.sockets.iter().flatten() {
                if let Err(e) = net::set_defer_accept(socket, seconds) {
                    warn!("cannot set TCP_DEFER_ACCEPT on {}: {e}", group.addr);
                }
            }
        }
    }

    /// Lets go of `service`'s sockets (a reload removed it): one nobody else holds closes.
    pub fn remove(&mut self, service: &str) -> bool {
        let before = self.services.len();
        self.services.retain(|(name, _)| name != service);
        self.services.len() != before
    }

    /// Worker `w`'s copies of `service`'s sockets (those on `only`'s addresses, if given).
    pub fn for_worker(
        &self,
        service: &str,
        w: usize,
        only: Option<&[SocketAddr]>,
    ) -> io::Result<Vec<TcpListener>> {
        let mut out = Vec::new();
        for group in self.groups(service) {
            if only.is_none_or(|addrs| addrs.contains(&group.addr)) {
                out.extend(group.for_worker(w)?);
            }
        }
        Ok(out)
    }

    fn groups(&self, service: &str) -> &[Group] {
        self.services
            .iter()
            .find(|(name, _)| name == service)
            .map_or(&[], |(_, groups)| groups.as_slice())
    }

    /// The addresses `service` listens on.
    pub fn addrs(&self, service: &str) -> Vec<SocketAddr> {
        self.groups(service).iter().map(|g| g.addr).collect()
    }

    /// Whether the socket on `addr` takes IPv6 only (a `[::]` one without it reaches IPv4
    /// clients too).
    pub fn v6_only(&self, addr: SocketAddr) -> bool {
        self.services
            .iter()
            .flat_map(|(_, groups)| groups)
            .filter(|g| g.addr == addr)
            .flat_map(|g| g.sockets.iter().flatten())
            .next()
            .is_some_and(|s| socket2::SockRef::from(s).only_v6().unwrap_or(false))
    }

    /// Every address of every service, for the start line.
    pub fn all_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .iter()
            .flat_map(|(name, groups)| groups.iter().map(move |g| (name.clone(), g.addr)))
            .collect()
    }

    /// Every socket still held, with its service, for an upgrade to hand over.
    pub fn handoff(&self) -> Vec<(RawFd, String)> {
        self.services
            .iter()
            .flat_map(|(name, groups)| {
                groups.iter().flat_map(move |g| {
                    g.sockets
                        .iter()
                        .flatten()
                        .map(move |s| (s.as_raw_fd(), name.clone()))
                })
            })
            .collect()
    }

    /// Lets go of every client socket (a drain began): one nobody else holds closes.
    pub fn release_all(&mut self) {
        self.services.clear();
    }

    /// Lets go of the sockets no running worker accepts on any more (its worker's loop
    /// failed), so that they close instead of queueing clients nobody serves.
    pub fn release_unserved(&mut self, listening: impl Fn(usize) -> bool) {
        for (_, groups) in &mut self.services {
            for group in groups {
                for (j, socket) in group.sockets.iter_mut().enumerate() {
                    let served = group
                        .plan
                        .iter()
                        .enumerate()
                        .any(|(w, sockets)| sockets.contains(&j) && listening(w));
                    if !served {
                        *socket = None;
                    }
                }
            }
        }
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
        let workers = self.workers;
        let groups: Vec<&Group> = self.services.iter().flat_map(|(_, g)| g).collect();
        // Said per address when there is one (the usual command line), counted otherwise.
        let shared = groups
            .iter()
            .filter(|g| workers > 1 && g.plan.iter().all(|p| p.len() == g.sockets.len()))
            .count();
        let spread = groups.iter().filter(|g| g.sockets.len() > workers).count();
        match groups.as_slice() {
            [g] if shared == 1 => notes.push(format!(
                "the workers share {}",
                if g.sockets.len() == 1 {
                    "the listening socket".to_string()
                } else {
                    format!("{} listening sockets", g.sockets.len())
                }
            )),
            [g] if spread == 1 => notes.push(format!(
                "{} listening sockets over {workers} worker{}",
                g.sockets.len(),
                if workers == 1 { "" } else { "s" }
            )),
            _ if shared > 0 => notes.push(format!(
                "the workers share the sockets of {shared} listen addresses"
            )),
            _ => {}
        }
        notes.iter().map(|n| format!("; {n}")).collect()
    }
}

/// Where an address of a service gets its sockets.
enum Source {
    /// Handed over (every socket on one address), for this configured address if known.
    Adopt(Option<(String, u16)>, Vec<(TcpListener, SocketAddr)>),
    /// Nothing was: bind it.
    Bind((String, u16)),
}

/// What was handed over for `service`'s addresses, taken out of `inherited`.
fn take_inherited(
    inherited: &mut Vec<Adopted>,
    service: &ServiceSpec,
    only_one: bool,
    origin: Origin,
) -> Vec<Source> {
    // One service and sockets from systemd (or from an older tcplb, which names none):
    // every socket is the service's, as with one --listen.
    if only_one && !inherited.is_empty() && inherited.iter().all(|a| a.service.is_none()) {
        if origin == Origin::Systemd {
            let configured: Vec<SocketAddr> = service
                .listen
                .iter()
                .flat_map(|(h, p)| net::resolve(h, *p).unwrap_or_default())
                .collect();
            if !inherited.iter().any(|a| configured.contains(&a.addr)) {
                let passed: Vec<String> = inherited.iter().map(|a| a.addr.to_string()).collect();
                let listen: Vec<String> = service.listen.iter().map(authority).collect();
                warn!(
                    "--listen {} is not among the sockets systemd passed ({}); serving on those",
                    listen.join(", "),
                    passed.join(", ")
                );
            }
        }
        let mut by_addr: Vec<Vec<(TcpListener, SocketAddr)>> = Vec::new();
        for a in inherited.drain(..) {
            match by_addr.iter_mut().find(|list| list[0].1 == a.addr) {
                Some(list) => list.push((a.socket, a.addr)),
                None => by_addr.push(vec![(a.socket, a.addr)]),
            }
        }
        return by_addr
            .into_iter()
            .map(|list| {
                let configured = service.listen.iter().find(|(h, p)| {
                    net::resolve(h, *p)
                        .unwrap_or_default()
                        .iter()
                        .any(|a| *a == list[0].1 || (*p == 0 && a.ip() == list[0].1.ip()))
                });
                Source::Adopt(configured.cloned(), list)
            })
            .collect();
    }
    let mut out = Vec::with_capacity(service.listen.len());
    for (host, port) in &service.listen {
        let wanted = net::resolve(host, *port).unwrap_or_default();
        let fits = |a: &Adopted| {
            a.service.as_deref().is_none_or(|s| s == service.name)
                && wanted
                    .iter()
                    .any(|w| *w == a.addr || (*port == 0 && w.ip() == a.addr.ip()))
        };
        let mut found: Vec<(TcpListener, SocketAddr)> = Vec::new();
        let mut i = 0;
        while i < inherited.len() {
            let same_addr = found.first().is_none_or(|(_, at)| *at == inherited[i].addr);
            if fits(&inherited[i]) && same_addr {
                let a = inherited.swap_remove(i);
                found.push((a.socket, a.addr));
            } else {
                i += 1;
            }
        }
        out.push(if found.is_empty() {
            Source::Bind((host.clone(), *port))
        } else {
            Source::Adopt(Some((host.clone(), *port)), found)
        });
    }
    out
}

/// A handed-over address's group; an upgrade to more workers than it has sockets binds
/// more into the `SO_REUSEPORT` group (systemd's are never added to).
fn grow(
    configured: Option<(String, u16)>,
    found: Vec<(TcpListener, SocketAddr)>,
    backlog: i32,
    workers: usize,
    origin: Origin,
) -> Group {
    let addr = found[0].1;
    let mut sockets: Vec<TcpListener> = found.into_iter().map(|(s, _)| s).collect();
    let upgrade = matches!(origin, Origin::Upgrade { .. });
    if is_group(&sockets) && sockets.len() < workers && upgrade {
        for _ in sockets.len()..workers {
            let only_v6 = socket2::SockRef::from(&sockets[0])
                .only_v6()
                .unwrap_or(false);
            match net::join_group(addr, backlog, only_v6) {
                Ok(socket) => sockets.push(socket),
                Err(e) => {
                    warn!(
                        "cannot add a socket to the group listening on {addr}: {e}; some \
                         workers share one"
                    );
                    break;
                }
            }
        }
    }
    Group::new(configured, addr, sockets, workers)
}

/// Whether an IPv6 wildcard address takes IPv6 clients only: when the configuration also
/// listens on the IPv4 wildcard of the same port (`[::]:80` beside `0.0.0.0:80`), as nginx
/// does it. Otherwise the system's default stands (on Linux, `[::]` takes IPv4 too).
fn only_v6((host, port): &(String, u16), config: &Config) -> bool {
    host == "::"
        && *port != 0
        && config
            .services
            .iter()
            .flat_map(|s| &s.listen)
            .any(|(h, p)| h == "0.0.0.0" && p == port)
}

/// What a listen address is for, in a bind error: `--listen` for the command line's one
/// service, `service NAME` for a config file's.
fn listen_flag(config: &Config, service: &ServiceSpec) -> String {
    if config.file.is_none() && service.name == crate::config::DEFAULT_NAME {
        "--listen".to_string()
    } else {
        format!("service {}", service.name)
    }
}

/// Binds `addr` (for `what`: `--listen`, `service web`) for `workers` workers, as one
/// group.
fn bind_group(
    what: &str,
    addr: &(String, u16),
    backlog: i32,
    workers: usize,
    only_v6: bool,
) -> Result<Group, String> {
    let bound = bind(what, addr, backlog, workers, only_v6)?;
    let at = bound[0].1;
    Ok(Group::new(
        Some(addr.clone()),
        at,
        bound.into_iter().map(|(s, _)| s).collect(),
        workers,
    ))
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
fn is_group(sockets: &[TcpListener]) -> bool {
    cfg!(target_os = "linux") && sockets.len() >= 2 && sockets.iter().all(net::is_reuse_port)
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

/// systemd's sockets: the one at the `--admin` address (if any) is the admin socket; every
/// other one is for the services.
#[allow(clippy::type_complexity)]
fn split_systemd(
    fds: Vec<OwnedFd>,
    config: &Config,
) -> Result<(Vec<Adopted>, Option<(TcpListener, SocketAddr)>), Failure> {
    let mut sockets = fds.into_iter().map(adopt).collect::<Result<Vec<_>, _>>()?;
    let admin_addrs = match &config.global.admin {
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
    let adopted = sockets
        .into_iter()
        .map(|(socket, addr)| Adopted {
            socket,
            addr,
            service: None,
        })
        .collect();
    Ok((adopted, admin))
}

/// Resolves and binds a listen address (for `what`: `--listen`, `--admin`, `service web`):
/// on Linux one socket per worker in a `SO_REUSEPORT` group. Failures name the address,
/// what it is for and the OS error (with a hint for a privileged port).
fn bind(
    what: &str,
    (host, port): &(String, u16),
    backlog: i32,
    workers: usize,
    only_v6: bool,
) -> Result<Vec<(TcpListener, SocketAddr)>, String> {
    let addrs = net::resolve(host, *port)
        .map_err(|e| format!("cannot resolve {what} address {host}:{port}: {e}"))?;
    let addr = addrs[0];
    let sockets = net::bind_group_v6(addr, backlog, workers, only_v6).map_err(|e| {
        format!(
            "cannot listen on {addr} for {what}: {e}{}",
            privilege_hint(addr.port(), &e)
        )
    })?;
    sockets
        .into_iter()
        .map(|s| {
            let bound = s
                .local_addr()
                .map_err(|e| format!("cannot read the listen address: {e}"))?;
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
        assert!(is_group(&bound));
        let one = net::bind_group(addr, 8, 1).expect("bind");
        assert!(!is_group(&one));
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
