//! Start-up: everything between a parsed configuration and a running process, in order:
//! fit `max-conns` and `pipes` in the open-file limit, resolve every pool's backends and
//! build their first generations, get every service's listening sockets (bound, or handed
//! over by the tcplb this process upgrades, or by systemd: [`super::sockets`]), open the
//! access log, allocate each worker's buffer pool (and size its pipe pool), write the pid
//! file, start the workers and the discovery thread, hand the rest to the control thread,
//! and say it serves (to the process that started an upgrade, or to systemd). Blocking is
//! fine here: nothing serves before the workers start.
//!
//! Failures are sorted for the exit status: bad input (exit 2) or an environment that says
//! no (exit 1).

use super::failure::Failure;
use crate::access_log::AccessLog;
use crate::bpf::FastPath;
use crate::config::{Config, DEFAULT_NAME, Global};
use crate::control::pid_file::PidFile;
use crate::control::registry::Registry;
use crate::control::rollout::Rollout;
use crate::control::sockets::{Origin, Sockets};
use crate::control::upgrade::{self, Invocation};
use crate::control::{self, Control, ControlConfig, FdBudget, systemd};
use crate::control::{ctl as control_socket_mod, state};
use crate::fleet::Fleet;
use crate::fleet::backend::Backend;
use crate::fleet::discovery::{Discovery, Pools, StartError};
use crate::service::Topology;
use crate::stats::WorkerStats;
use crate::worker::fast::Fast;
use crate::worker::pipes::{PIPE_SIZE, PipePool};
use crate::worker::pool::{Pool, PoolError};
use crate::worker::{Inbox, Shared, Worker, WorkerConfig};
use crate::{limits, net};
use log::{info, warn};
use signal_hook_mio::v1_0::Signals;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};

/// Descriptors each worker holds besides its sessions: its poll, its waker, its listener.
/// The first few workers' fit in the spare descriptors `limits::FD_HEADROOM` keeps anyway.
const FDS_PER_WORKER: u64 = 4;
const WORKERS_IN_HEADROOM: usize = 8;

/// Starts everything and returns the control thread's loop, ready to run. `invocation` is
/// what an upgrade (`SIGUSR2`) runs again, and what a reload parses again.
pub fn start(
    mut config: Config,
    signals: Signals,
    invocation: Invocation,
) -> Result<Control, Failure> {
    let workers = config
        .global
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listeners: usize = config.services.iter().map(|s| s.listen.len()).sum();
    let fd_budget = fit_max_conns(&mut config, workers, listeners);

    // What the process this one upgrades hands over: sockets, and the runtime state
    // `tcplb ctl` set (read first: the pools are built with it).
    let mut inherited = upgrade::Inherited::from_env().map_err(Failure::Start)?;
    let handed = match inherited.as_mut().and_then(|i| i.state.take()) {
        Some(file) => match state::read(file) {
            Ok(text) => state::parse(&text),
            Err(e) => {
                warn!(
                    "upgrade: cannot read the runtime state handed over: {e}; starting without it"
                );
                state::Handed::default()
            }
        },
        None => state::Handed::default(),
    };
    let inherited_ctl = inherited.as_mut().and_then(|i| i.control.take());

    // Every pool's first generation: its backends and backends file, every name resolved.
    let (pools, fleets) = Pools::start(&config, &handed.overlays).map_err(|e| match e {
        StartError::Input(message) => Failure::Input(message),
        StartError::Start(message) => Failure::Start(message),
    })?;

    let mut sockets = Sockets::acquire(&config, workers, inherited)?;
    for service in &config.services {
        sockets.defer_accept(service);
    }
    let ctl = control_socket(&config, inherited_ctl)?;
    refuse_loops(&config, &sockets, &fleets)?;
    let admin = sockets.admin.take().map(mio::net::TcpListener::from_std);
    let admin_note = admin
        .as_ref()
        .and_then(|a| a.local_addr().ok())
        .map(|a| format!("; admin on http://{a}/"))
        .unwrap_or_default();
    let global = &config.global;
    let (access_log, mut batches) = match &global.access_log {
        Some(path) => {
            let (log, batches) = AccessLog::open(path, workers).map_err(|e| {
                Failure::Start(format!("cannot open access log {}: {e}", path.display()))
            })?;
            (Some(log), batches.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    let buffer_pools = buffer_pools(global.buffer_size, global.buffers, workers)?;
    let fast_path = load_fast_path(global);
    let pipe_pools =
        (0..workers).map(|i| PipePool::new(share(global.pipes, workers, i), Some(PIPE_SIZE)));

    // The services, each with its pools.
    let mut registry = Registry::default();
    let lookup = |name: &str| Some((pools.id_of(name)?, config.pool(name)?));
    for spec in &config.services {
        if registry
            .add(spec, &lookup, sockets.addrs(&spec.name))
            .is_none()
        {
            let missing = spec
                .pools()
                .find(|p| lookup(p).is_none())
                .unwrap_or_default();
            return Err(Failure::Input(format!(
                "service {} names pool {missing}, which is not defined",
                spec.name
            )));
        }
    }
    let topology = Arc::new(Topology::new(
        0,
        global.max_conns,
        registry.services(),
        fleets.iter().cloned(),
    ));
    state::apply(&handed, &topology);
    let names: HashMap<&str, crate::service::ServiceId> = registry
        .entries()
        .map(|e| (e.spec.name.as_str(), e.service.id))
        .collect();

    let (poll, waker) =
        control::poll().map_err(|e| Failure::Start(format!("cannot start the event loop: {e}")))?;
    let shared = Arc::new(Shared {
        sessions: AtomicUsize::new(0),
        adopted: (0..workers).map(|_| AtomicU32::new(0)).collect(),
        running: AtomicUsize::new(workers),
        accepting: AtomicUsize::new(workers),
        listening: (0..workers).map(|_| AtomicBool::new(true)).collect(),
        control: Arc::clone(&waker),
        inboxes: std::sync::OnceLock::new(),
    });
    // Written before any worker accepts: once one has, a failure to start would cut the
    // clients it took, and after an upgrade those were the old process's to serve.
    let pid_file = match &global.pid_file {
        Some(path) => Some(PidFile::create(path).map_err(|e| {
            Failure::Start(format!("cannot write pid file {}: {e}", path.display()))
        })?),
        None => None,
    };
    let remove_pid_file = |failure: Failure| {
        if let Some(pid_file) = &pid_file {
            pid_file.remove();
        }
        failure
    };
    let mut handles = Vec::with_capacity(workers);
    let mut built_workers = Vec::with_capacity(workers);
    let mut worker_stats = Vec::with_capacity(workers);
    for (index, (pool, pipes)) in buffer_pools.into_iter().zip(pipe_pools).enumerate() {
        let stats = Arc::new(WorkerStats::default());
        worker_stats.push(Arc::clone(&stats));
        let mut listeners = Vec::new();
        for spec in &config.services {
            let copies = sockets
                .for_worker(&spec.name, index, None)
                .map_err(|e| Failure::Start(format!("cannot start worker {index}: {e}")))
                .map_err(remove_pid_file)?;
            let id = names[spec.name.as_str()];
            listeners.extend(
                copies
                    .into_iter()
                    .map(|s| (id, mio::net::TcpListener::from_std(s))),
            );
        }
        let built = Worker::build(WorkerConfig {
            index,
            listeners,
            topology: Arc::clone(&topology),
            pool,
            pipes,
            shared: Arc::clone(&shared),
            stats,
            access_log: batches[index].take(),
            fast: fast_path
                .as_ref()
                .map(|path| Fast::new(Arc::clone(path), index, workers)),
        })
        .map_err(|e| Failure::Start(format!("cannot start worker {index}: {e}")))
        .map_err(remove_pid_file)?;
        built_workers.push(built);
    }
    // Every inbox is known before any worker runs: a worker may hand a queued client of
    // another its slot from its first turn.
    let inboxes: Box<[Inbox]> = built_workers.iter().map(|(_, i)| i.clone()).collect();
    let _ = shared.inboxes.set(inboxes);
    for (index, (worker, inbox)) in built_workers.into_iter().enumerate() {
        let handle = Worker::spawn(worker, inbox)
            .map_err(|e| Failure::Start(format!("cannot start worker {index}: {e}")))
            .map_err(remove_pid_file)?;
        handles.push(handle);
    }
    let discovery = Discovery::spawn(invocation.args.clone(), pools, waker)
        .map_err(|e| Failure::Start(format!("cannot start the discovery thread: {e}")))
        .map_err(remove_pid_file)?;

    let (head, tail) = describe_services(&config, &sockets, &fleets);
    for line in service_lines(&config, &sockets, &fleets) {
        info!("{line}");
    }
    info!(
        "{head}; {workers} worker{}{tail}; max-conns {}, {} buffers of {} bytes ({} MiB), \
         {}{admin_note}{}",
        if workers == 1 { "" } else { "s" },
        global.max_conns,
        global.buffers,
        global.buffer_size,
        (global.buffers * global.buffer_size) >> 20,
        describe_pipes(global.pipes),
        sockets.note()
    );
    let ready = sockets.ready.take();
    let origin = sockets.origin;
    let control = Control::new(ControlConfig {
        poll,
        signals,
        rollout: Rollout::new(topology),
        registry,
        sockets,
        discovery,
        admin,
        ctl,
        access_log,
        global: config.global.clone(),
        fd_budget,
        workers: handles,
        worker_stats,
        shared,
        invocation,
        pid_file,
    })
    .map_err(|e| Failure::Start(format!("cannot start the event loop: {e}")))?;
    // Serving now: say so to whoever waits for it.
    match (ready, origin) {
        (Some(ready), Origin::Upgrade { from }) => upgrade::report_ready(ready, from),
        _ => {
            if let Err(e) = systemd::notify("READY=1") {
                warn!("cannot tell systemd that tcplb is ready: {e}");
            }
        }
    }
    Ok(control)
}

/// The start line's parts around the worker count. The command line's one service keeps
/// the line it always had (`listening on ADDR; N workers; balance B; backends: ...`); with a
/// config file the line counts services and pools, and each service gets a line of its own
/// ([`service_lines`]).
fn describe_services(
    config: &Config,
    sockets: &Sockets,
    fleets: &[Arc<Fleet>],
) -> (String, String) {
    if config.file.is_none()
        && config.services.len() == 1
        && config.services[0].name == DEFAULT_NAME
    {
        let addrs: Vec<String> = sockets
            .addrs(DEFAULT_NAME)
            .iter()
            .map(|a| a.to_string())
            .collect();
        let pool = &config.pools[0];
        let proxy = match config.services[0].accept_proxy {
            Some(timeout) => format!("; accepting PROXY protocol headers (timeout {timeout:?})"),
            None => String::new(),
        };
        let also = if addrs.len() > 1 {
            format!("; also listening on {}", addrs[1..].join(", "))
        } else {
            String::new()
        };
        return (
            format!("listening on {}", addrs.first().map_or("-", String::as_str)),
            format!(
                "; balance {}; backends: {}{proxy}{also}",
                pool.balance.describe(),
                describe(fleets.first().map(|f| f.as_ref()))
            ),
        );
    }
    let backends: usize = fleets.iter().map(|f| f.len()).sum();
    (
        format!(
            "serving {} service{} from {}",
            config.services.len(),
            if config.services.len() == 1 { "" } else { "s" },
            config
                .file
                .as_ref()
                .map_or_else(String::new, |f| f.display().to_string())
        ),
        format!(
            "; {} pool{}, {backends} backends",
            config.pools.len(),
            if config.pools.len() == 1 { "" } else { "s" },
        ),
    )
}

/// One line per service of a config file (`service web: listening on ADDR, ADDR; pool web,
/// least-active, 3 backends`); the first [`SERVICE_LINES`] services, then how many more.
fn service_lines(config: &Config, sockets: &Sockets, fleets: &[Arc<Fleet>]) -> Vec<String> {
    if config.file.is_none() {
        return Vec::new();
    }
    const SERVICE_LINES: usize = 32;
    let mut lines: Vec<String> = config
        .services
        .iter()
        .take(SERVICE_LINES)
        .map(|s| {
            let addrs: Vec<String> = sockets
                .addrs(&s.name)
                .iter()
                .map(|a| a.to_string())
                .collect();
            let pool = s.pool.as_deref().map(|name| {
                match (
                    config.pool(name),
                    fleets.iter().find(|f| **f.name() == *name),
                ) {
                    (Some(spec), Some(fleet)) => format!(
                        "pool {name}, {}, {} backend{}",
                        spec.balance.describe(),
                        fleet.len(),
                        if fleet.len() == 1 { "" } else { "s" }
                    ),
                    _ => format!("pool {name}"),
                }
            });
            let pool = s.destination(pool);
            let proxy = if s.accept_proxy.is_some() {
                "; accepting PROXY protocol headers"
            } else {
                ""
            };
            format!(
                "service {}: listening on {}; {pool}{proxy}",
                s.name,
                addrs.join(", ")
            )
        })
        .collect();
    if config.services.len() > SERVICE_LINES {
        lines.push(format!(
            "and {} more services",
            config.services.len() - SERVICE_LINES
        ));
    }
    lines
}

/// Worker `i`'s share of `total` (the first ones take the remainder).
fn share(total: usize, workers: usize, i: usize) -> usize {
    total / workers + usize::from(i < total % workers)
}

/// The pipes for the start line.
fn describe_pipes(pipes: usize) -> String {
    if pipes == 0 {
        "splice off (--pipes 0)".to_string()
    } else if cfg!(target_os = "linux") {
        format!("splice through up to {pipes} pipes")
    } else {
        "splice off (not on this platform)".to_string()
    }
}

/// Each worker's share of `buffers`, allocated now: a pool the machine cannot provide is
/// a start-up failure.
fn buffer_pools(buffer_size: usize, buffers: usize, workers: usize) -> Result<Vec<Pool>, Failure> {
    (0..workers)
        .map(|i| {
            let share = share(buffers, workers, i);
            Pool::new(buffer_size, share.max(1)).map_err(|e| match e {
                PoolError::OutOfMemory { .. } => Failure::Start(format!(
                    "cannot allocate the buffer pool ({} MiB in all, over {workers} worker{}): \
                     not enough memory; lower --buffers or --buffer-size",
                    (buffers as u128 * buffer_size as u128) >> 20,
                    if workers == 1 { "" } else { "s" }
                )),
                other => Failure::Start(other.to_string()),
            })
        })
        .collect()
}

/// Raises the open-file limit and fits `max-conns` and `pipes` in it beside the reserve
/// (see [`limits::fit`], [`limits::reserve`]). Lowering defaults is routine (an info
/// line); lowering a value the user gave is worth a warning. Returns the budget (the
/// open-file limit and the reserve) a reload fits a new `max-conns` in.
fn fit_max_conns(config: &mut Config, workers: usize, listeners: usize) -> Option<FdBudget> {
    let nofile = match limits::raise_nofile_limit() {
        Ok(nofile) => nofile,
        Err(e) => {
            warn!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    // Each worker holds a copy of each listener beyond the first, and so does the control
    // thread.
    let spare = FDS_PER_WORKER * workers.saturating_sub(WORKERS_IN_HEADROOM) as u64
        + (listeners.saturating_sub(1) * (workers + 1)) as u64;
    let admin = config.global.admin.is_some();
    // Agent checks share the health checks' descriptors.
    let checks = config
        .pools
        .iter()
        .any(|p| p.checks.is_some() || p.backends.iter().any(|b| b.agent_port.is_some()));
    let ctl = config.global.control_socket.is_some();
    let reserve = limits::reserve(admin, checks, ctl) + spare;
    let global = &mut config.global;
    let pipes = if cfg!(target_os = "linux") {
        global.pipes
    } else {
        0
    };
    let budget = FdBudget { nofile, reserve };
    let Some((conns, fit_pipes)) = limits::fit(global.max_conns, pipes, nofile, reserve) else {
        return Some(budget);
    };
    let needs = limits::descriptors_needed(global.max_conns, pipes, reserve);
    let asked = if pipes > 0 {
        format!("--max-conns {} and --pipes {pipes}", global.max_conns)
    } else {
        format!("--max-conns {}", global.max_conns)
    };
    let mut using = Vec::new();
    if conns != global.max_conns {
        using.push(format!("--max-conns {conns}"));
    }
    if fit_pipes != pipes {
        using.push(format!("--pipes {fit_pipes}"));
    }
    let using = using.join(" and ");
    let mut kept = format!("{} spare", limits::FD_HEADROOM + spare);
    if admin {
        kept.push_str(&format!(", {} for the admin endpoint", limits::ADMIN_FDS));
    }
    if checks {
        kept.push_str(&format!(
            ", {} for health probes",
            limits::MAX_PROBES_IN_FLIGHT
        ));
    }
    if ctl {
        kept.push_str(&format!(", {} for the control socket", limits::CTL_FDS));
    }
    let given = (conns != global.max_conns && global.max_conns_given)
        || (fit_pipes != pipes && global.pipes_given);
    if given {
        warn!(
            "{asked} need {needs} descriptors (2 per session, 2 per pipe, {kept}) but the \
             open-file limit is {nofile}; using {using}"
        );
    } else {
        info!(
            "the open-file limit is {nofile}: using {using} ({asked} need {needs} \
             descriptors: 2 per session, 2 per pipe, {kept})"
        );
    }
    global.max_conns = conns;
    if cfg!(target_os = "linux") {
        global.pipes = fit_pipes;
    }
    Some(budget)
}

/// The control socket, if one is configured: the one an upgrade handed over if it is at
/// the same path, else a new one.
fn control_socket(
    config: &Config,
    inherited: Option<std::os::fd::OwnedFd>,
) -> Result<Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>, Failure> {
    let adopted = inherited.map(control_socket_mod::adopt);
    let Some(path) = &config.global.control_socket else {
        return Ok(None);
    };
    if let Some(listener) = adopted {
        let same = control_socket_mod::bound_path(&listener).is_some_and(|p| {
            p == *path || std::fs::canonicalize(&p).ok() == std::fs::canonicalize(path).ok()
        });
        if same {
            return Ok(Some((listener, path.clone())));
        }
    }
    let global = &config.global;
    let listener = control_socket_mod::bind(
        path,
        global.control_socket_mode,
        global.control_socket_group.as_deref(),
    )
    .map_err(Failure::Start)?;
    Ok(Some((listener, path.clone())))
}

/// Refuses a service whose pool has a backend at one of the service's own listening
/// addresses: each session would connect to tcplb again, without end.
fn refuse_loops(config: &Config, sockets: &Sockets, fleets: &[Arc<Fleet>]) -> Result<(), Failure> {
    let mut host = None;
    for spec in &config.services {
        for fleet in fleets
            .iter()
            .filter(|f| spec.pools().any(|p| p == &**f.name()))
        {
            for local in sockets.addrs(&spec.name) {
                // Only a wildcard listener needs this host's addresses.
                if local.ip().is_unspecified() && host.is_none() {
                    host = Some(net::local_addresses().unwrap_or_else(|e| {
                        warn!(
                            "cannot list this host's addresses ({e}); checking backends against \
                         loopback"
                        );
                        Default::default()
                    }));
                }
                let addresses = host.clone().unwrap_or_default();
                let v6_only = sockets.v6_only(local);
                if let Some(b) = fleet.backends().find(|b| {
                    net::reaches_listener(local, v6_only, b.addr, |ip| addresses.contains(&ip))
                }) {
                    return Err(Failure::Input(loop_message(spec.name.as_str(), b, local)));
                }
            }
        }
    }
    Ok(())
}

fn loop_message(service: &str, b: &Backend, local: SocketAddr) -> String {
    let what = if b.name == b.addr.to_string() {
        b.name.clone()
    } else {
        format!("{} ({})", b.name, b.addr)
    };
    if service == DEFAULT_NAME {
        format!(
            "backend {what} is tcplb's own listen address {local}: sessions would loop back into \
             tcplb"
        )
    } else {
        format!(
            "backend {what} of service {service} is its own listen address {local}: sessions \
             would loop back into tcplb"
        )
    }
}

/// The backends for the start line: the first few, then how many more.
fn describe(fleet: Option<&Fleet>) -> String {
    const SHOWN: usize = 8;
    let Some(fleet) = fleet else {
        return "none".to_string();
    };
    let mut parts: Vec<String> = fleet
        .backends()
        .take(SHOWN)
        .map(|b| {
            let mut s = b.addr.to_string();
            if b.weight() != 1 {
                s.push_str(&format!(" weight {}", b.weight()));
            }
            if b.is_backup() {
                s.push_str(" backup");
            }
            if let Some(version) = b.send_proxy() {
                s.push(' ');
                s.push_str(version.option());
            }
            s
        })
        .collect();
    if fleet.len() > SHOWN {
        parts.push(format!("and {} more", fleet.len() - SHOWN));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// Set to `1` to run the kernel fast path although it can deliver a segment twice (for
/// benchmarks and for testing a kernel: see docs/fastpath.md).
pub const UNSAFE_FAST_PATH: &str = "TCPLB_BPF_REDIRECT_UNSAFE";

/// `--bpf-redirect`: the kernel fast path, for up to `max-conns` sessions at once. It
/// stays off unless [`UNSAFE_FAST_PATH`] says otherwise: the kernels we know can pass a
/// segment up twice on the path its memory bound relies on, and tcplb does not trade a
/// stream's bytes for speed. If it cannot be loaded, says so once and goes on without it.
fn load_fast_path(global: &Global) -> Option<Arc<FastPath>> {
    if !global.bpf_redirect {
        return None;
    }
    if std::env::var(UNSAFE_FAST_PATH).as_deref() != Ok("1") {
        warn!(
            "bpf-redirect: the kernel fast path stays off, sessions run in user space: on the \
             kernels tested (6.18) the sockmap pass path its memory bound relies on can deliver \
             a segment twice (docs/fastpath.md); {UNSAFE_FAST_PATH}=1 runs it anyway, for tests \
             and benchmarks only"
        );
        return None;
    }
    let sessions = u32::try_from(global.max_conns).unwrap_or(u32::MAX);
    match FastPath::load(sessions, global.bpf_redirect_bound) {
        Ok(path) => {
            info!(
                "bpf-redirect: the kernel moves established sessions' bytes (up to {sessions} sessions, {} bytes in flight toward a socket)",
                global.bpf_redirect_bound
            );
            Some(Arc::new(path))
        }
        Err(e) => {
            warn!("bpf-redirect: the kernel fast path is off, sessions run in user space: {e}");
            None
        }
    }
}
