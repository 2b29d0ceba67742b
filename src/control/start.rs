//! Start-up: everything between a parsed command line and a running process, in order:
//! fit `--max-conns` and `--pipes` in the open-file limit, resolve the backends and build
//! the first fleet generation, get the listening sockets (bound, or handed over by the
//! tcplb this process upgrades, or by systemd: [`super::sockets`]), open the access log,
//! allocate each worker's buffer pool (and size its pipe pool), write the pid file, start
//! the workers and the discovery thread, hand the rest to the control thread, and say it
//! serves (to the process that started an upgrade, or to systemd). Blocking is fine here:
//! nothing serves before the workers start.
//!
//! Failures are sorted for the exit status: bad input (exit 2) or an environment that says
//! no (exit 1).

use crate::admin::access_log::AccessLog;
use crate::config::{BackendSpec, Config};
use crate::control::pid_file::PidFile;
use crate::control::sockets::{Listening, Origin};
use crate::control::upgrade::{self, Invocation};
use crate::control::{self, Control, ControlConfig, systemd};
use crate::fleet::Policy;
use crate::fleet::backend::ResolvedBackend;
use crate::fleet::builder::Builder;
use crate::fleet::discovery::{self, Discovery, Plan, Resolver};
use crate::stats::WorkerStats;
use crate::worker::pipes::{PIPE_SIZE, PipePool};
use crate::worker::pool::{Pool, PoolError};
use crate::worker::{Settings, Shared, Worker, WorkerConfig};
use crate::{limits, net};
use log::{info, warn};
use signal_hook_mio::v1_0::Signals;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};

/// Why tcplb could not start.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// The environment said no (port in use, permission, memory): exit 1.
    Start(String),
}

/// Descriptors each worker holds besides its sessions: its poll, its waker, its listener.
/// The first few workers' fit in the spare descriptors `limits::FD_HEADROOM` keeps anyway.
const FDS_PER_WORKER: u64 = 4;
const WORKERS_IN_HEADROOM: usize = 8;

/// Starts everything and returns the control thread's loop, ready to run. `invocation` is
/// what an upgrade (`SIGUSR2`) runs again.
pub fn start(
    mut config: Config,
    signals: Signals,
    invocation: Invocation,
) -> Result<Control, Failure> {
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    fit_max_conns(&mut config, workers);

    // The backend set: positional specs plus the backends file, every name resolved.
    let file_specs = match &config.backends_file {
        Some(path) => discovery::read_backends_file(path).map_err(Failure::Input)?,
        None => Vec::new(),
    };
    let specs: Vec<BackendSpec> = config.backends.iter().chain(&file_specs).cloned().collect();
    let mut resolver = Resolver::default();
    let (initial, failures) = resolver.resolve(&specs);
    if let Some(first) = failures.first() {
        if config.resolve_interval.is_none() {
            return Err(Failure::Start(first.clone()));
        }
        for failure in &failures {
            warn!(
                "{failure}; trying again every {:?}",
                config.resolve_interval
            );
        }
    }
    if initial.is_empty() {
        warn!("no backends yet: clients will be closed until some are added");
    }
    warn_duplicates(&initial);
    let policy = Policy {
        breaker: config.breaker,
        checks: config.checks,
    };
    let mut builder = Builder::new(policy, config.balance);
    if let Some(warning) = builder.check(&initial).map_err(Failure::Input)? {
        warn!("{warning}");
    }

    let mut listening = Listening::acquire(&config, workers)?;
    for (i, socket) in listening.sockets.iter().enumerate() {
        // Once per address (a group has one socket per worker on the same).
        if !listening.addrs[..i].contains(&listening.addrs[i]) {
            refuse_loops(socket, &initial)?;
        }
    }
    let local = listening.addrs[0];
    let admin = listening.admin.take().map(mio::net::TcpListener::from_std);
    let admin_note = admin
        .as_ref()
        .and_then(|a| a.local_addr().ok())
        .map(|a| format!("; admin on http://{a}/"))
        .unwrap_or_default();
    let (access_log, mut batches) = match &config.access_log {
        Some(path) => {
            let (log, batches) = AccessLog::open(path, workers).map_err(|e| {
                Failure::Start(format!("cannot open access log {}: {e}", path.display()))
            })?;
            (Some(log), batches.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    let pools = pools(config.buffer_size, config.buffers, workers)?;
    let pipe_pools =
        (0..workers).map(|i| PipePool::new(share(config.pipes, workers, i), Some(PIPE_SIZE)));

    let (fleet, _) = builder.build(&initial);
    let backend_list = describe(&initial);

    let (poll, waker) =
        control::poll().map_err(|e| Failure::Start(format!("cannot start the event loop: {e}")))?;
    let shared = Arc::new(Shared {
        sessions: AtomicUsize::new(0),
        adopted: (0..workers)
            .map(|_| AtomicU32::new(fleet.generation()))
            .collect(),
        running: AtomicUsize::new(workers),
        accepting: AtomicUsize::new(workers),
        listening: (0..workers).map(|_| AtomicBool::new(true)).collect(),
        control: Arc::clone(&waker),
    });
    let settings = Arc::new(Settings {
        connect_timeout: config.connect_timeout,
        retries: config.retries,
        idle_timeout: config.idle_timeout,
        max_conns: config.max_conns,
        accept_proxy: config.accept_proxy,
    });
    // Written before any worker accepts: once one has, a failure to start would cut the
    // clients it took, and after an upgrade those were the old process's to serve.
    let pid_file = match &config.pid_file {
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
    let mut worker_stats = Vec::with_capacity(workers);
    for (index, (pool, pipes)) in pools.into_iter().zip(pipe_pools).enumerate() {
        let stats = Arc::new(WorkerStats::default());
        worker_stats.push(Arc::clone(&stats));
        let listeners = listening
            .for_worker(index)
            .map_err(|e| Failure::Start(format!("cannot start worker {index}: {e}")))
            .map_err(remove_pid_file)?;
        let handle = Worker::spawn(WorkerConfig {
            index,
            listeners,
            fleet: Arc::clone(&fleet),
            pool,
            pipes,
            settings: Arc::clone(&settings),
            shared: Arc::clone(&shared),
            stats,
            access_log: batches[index].take(),
        })
        .map_err(|e| Failure::Start(format!("cannot start worker {index}: {e}")))
        .map_err(remove_pid_file)?;
        handles.push(handle);
    }
    let discovery = Discovery::spawn(
        Plan {
            positional: config.backends.clone(),
            file: config.backends_file.clone(),
            file_specs,
            resolver,
            current: initial,
            builder,
            resolve_interval: config.resolve_interval,
        },
        waker,
    )
    .map_err(|e| Failure::Start(format!("cannot start the discovery thread: {e}")))
    .map_err(remove_pid_file)?;

    let proxy_note = match config.accept_proxy {
        Some(timeout) => format!("; accepting PROXY protocol headers (timeout {timeout:?})"),
        None => String::new(),
    };
    info!(
        "listening on {local}; {workers} worker{}; balance {}; backends: {backend_list}; \
         max-conns {}, {} buffers of {} bytes ({} MiB), {}{proxy_note}{admin_note}{}",
        if workers == 1 { "" } else { "s" },
        config.balance.describe(),
        config.max_conns,
        config.buffers,
        config.buffer_size,
        (config.buffers * config.buffer_size) >> 20,
        describe_pipes(config.pipes),
        listening.note()
    );
    let ready = listening.ready.take();
    let origin = listening.origin;
    let control = Control::new(ControlConfig {
        poll,
        signals,
        fleet,
        discovery,
        admin,
        access_log,
        drain_timeout: config.drain_timeout,
        probe_timeout: config.connect_timeout,
        workers: handles,
        worker_stats,
        shared,
        local_addr: local,
        sockets: listening.sockets,
        plan: listening.plan,
        invocation,
        upgrade_timeout: config.upgrade_timeout,
        upgrade_probation: config.upgrade_probation,
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

/// Each worker's share of `--buffers`, allocated now: a pool the machine cannot provide is
/// a start-up failure.
fn pools(buffer_size: usize, buffers: usize, workers: usize) -> Result<Vec<Pool>, Failure> {
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

/// Raises the open-file limit and fits `--max-conns` and `--pipes` in it beside the
/// reserve (see [`limits::fit`], [`limits::reserve`]). Lowering defaults is routine (an
/// info line); lowering a value the user gave is worth a warning.
fn fit_max_conns(config: &mut Config, workers: usize) {
    let nofile = match limits::raise_nofile_limit() {
        Ok(nofile) => nofile,
        Err(e) => return warn!("cannot read the open-file limit: {e}"),
    };
    let spare = FDS_PER_WORKER * workers.saturating_sub(WORKERS_IN_HEADROOM) as u64;
    let (admin, checks) = (config.admin.is_some(), config.checks.is_some());
    let reserve = limits::reserve(admin, checks) + spare;
    let pipes = if cfg!(target_os = "linux") {
        config.pipes
    } else {
        0
    };
    let Some((conns, fit_pipes)) = limits::fit(config.max_conns, pipes, nofile, reserve) else {
        return;
    };
    let needs = limits::descriptors_needed(config.max_conns, pipes, reserve);
    let asked = if pipes > 0 {
        format!("--max-conns {} and --pipes {pipes}", config.max_conns)
    } else {
        format!("--max-conns {}", config.max_conns)
    };
    let mut using = Vec::new();
    if conns != config.max_conns {
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
    let given = (conns != config.max_conns && config.max_conns_given)
        || (fit_pipes != pipes && config.pipes_given);
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
    config.max_conns = conns;
    if cfg!(target_os = "linux") {
        config.pipes = fit_pipes;
    }
}

/// Warns once for each address listed more than once (it is used once, with the options it
/// was first listed with): the same spec twice, or a name and an address that resolve alike.
fn warn_duplicates(backends: &[ResolvedBackend]) {
    const SHOWN: usize = 8;
    let mut seen: HashMap<SocketAddr, Vec<&str>> = HashMap::with_capacity(backends.len());
    let mut repeated = Vec::new();
    for backend in backends {
        let names = seen.entry(backend.addr).or_default();
        if names.len() == 1 {
            repeated.push(backend.addr);
        }
        names.push(&backend.name);
    }
    for addr in repeated.iter().take(SHOWN) {
        let times = seen[addr].len();
        let mut names: Vec<&str> = Vec::new();
        for name in &seen[addr] {
            if !names.contains(name) {
                names.push(name);
            }
        }
        let written = if names == [addr.to_string()] {
            String::new()
        } else {
            format!(" (as {})", names.join(", "))
        };
        warn!(
            "backend {addr} is listed {times} times{written}; it is used once, with the \
             options first given"
        );
    }
    if repeated.len() > SHOWN {
        warn!(
            "and {} more backends are listed more than once",
            repeated.len() - SHOWN
        );
    }
}

/// Refuses a backend that is tcplb's own listener: each session would connect to tcplb
/// again, without end.
fn refuse_loops(
    listener: &std::net::TcpListener,
    backends: &[ResolvedBackend],
) -> Result<(), Failure> {
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Start(format!("cannot read the listen address: {e}")))?;
    let v6_only = socket2::SockRef::from(listener).only_v6().unwrap_or(false);
    // Only a wildcard listener needs this host's addresses.
    let host = if local.ip().is_unspecified() {
        net::local_addresses().unwrap_or_else(|e| {
            warn!("cannot list this host's addresses ({e}); checking backends against loopback");
            Default::default()
        })
    } else {
        Default::default()
    };
    match backends
        .iter()
        .find(|b| net::reaches_listener(local, v6_only, b.addr, |ip| host.contains(&ip)))
    {
        Some(b) => Err(Failure::Input(format!(
            "backend {} is tcplb's own listen address {local}: sessions would loop back into \
             tcplb",
            if b.name == b.addr.to_string() {
                b.name.clone()
            } else {
                format!("{} ({})", b.name, b.addr)
            }
        ))),
        None => Ok(()),
    }
}

/// The backends for the start line: the first few, then how many more.
fn describe(backends: &[ResolvedBackend]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = backends
        .iter()
        .take(SHOWN)
        .map(|b| {
            let mut s = b.addr.to_string();
            if b.weight != 1 {
                s.push_str(&format!(" weight {}", b.weight));
            }
            if b.backup {
                s.push_str(" backup");
            }
            if let Some(version) = b.send_proxy {
                s.push(' ');
                s.push_str(version.option());
            }
            s
        })
        .collect();
    if backends.len() > SHOWN {
        parts.push(format!("and {} more", backends.len() - SHOWN));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}
