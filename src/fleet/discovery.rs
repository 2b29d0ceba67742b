//! Where every pool's backends come from, and the configuration with them: the discovery
//! thread. No event loop ever reads a file or waits for DNS; this thread does, and builds
//! each new fleet generation itself (`builder.rs`, O(n)), handing it to the control thread
//! through a channel plus a `mio::Waker`.
//!
//! - At start ([`Pools::start`], on the main thread, where blocking is fine) every pool's
//!   backends (its `backends`, plus its `backends-file`) are resolved and its first
//!   generation built.
//! - On a reload (SIGHUP) the command line is parsed again, which re-reads the config file
//!   if there is one; every pool's backends file is re-read and its names re-resolved; a
//!   pool whose settings or backends changed gets a new generation, a new pool its first,
//!   and a pool no longer configured is dropped. All of it or nothing: a file that does not
//!   parse, a backends file that fails to read or lists no backend, a set the balance cannot
//!   serve whole (more backends than `hash-table-size` has slots), changes nothing.
//! - Every `resolve-interval` a pool's names are re-resolved, and a new generation is built
//!   only if its addresses changed.
//!
//! - At run time, `tcplb ctl` adds and deletes backends ([`Request::Add`],
//!   [`Request::Delete`]) and asks for a generation rebuilt with weights it changed
//!   ([`Request::Rebuild`]). What it adds and deletes is kept as each pool's [`Overlay`]
//!   on the set its configuration lists, and so outlives a reload: a backend added at run
//!   time stays until it is deleted (or the file lists it, when the file's options take
//!   over); a listed backend deleted at run time stays out until it is added again (or the
//!   file no longer lists it). A restart forgets the overlay; an upgrade hands it over.
//!
//! A pool keeps its [`Builder`] across generations, so a backend that stays keeps its
//! counters, breaker, check state and runtime state.

use crate::config::{self, BackendSpec, Config, PoolSpec};
use crate::fleet::backend::ResolvedBackend;
use crate::fleet::backends_file::read_backends_file;
use crate::fleet::builder::{Builder, Changes};
use crate::fleet::resolver::Resolver;
use crate::fleet::{Fleet, Policy, PoolId};
use log::warn;
use mio::Waker;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A pool's new generation, or `None` where nothing changed.
#[derive(Debug)]
pub struct PoolChange {
    pub id: PoolId,
    pub name: Arc<str>,
    pub built: Option<(Arc<Fleet>, Changes)>,
}

/// A reload's outcome: the configuration it read, every pool it configures (changed or
/// not), and the pools it no longer has.
#[derive(Debug)]
pub struct Reloaded {
    pub config: Config,
    pub pools: Vec<PoolChange>,
    pub removed: Vec<PoolId>,
}

/// What `tcplb ctl` changed in a pool's set: backends added at run time, and listed ones
/// deleted. Kept across reloads (see the module's notes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    /// Added at run time: each resolved address, with the spec as it was given.
    pub added: Vec<(ResolvedBackend, BackendSpec)>,
    /// Listed by the configuration but deleted at run time.
    pub deleted: Vec<SocketAddr>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.deleted.is_empty()
    }

    /// The set to build: `listed` less what was deleted, plus what was added.
    fn apply(&self, listed: &[ResolvedBackend]) -> Vec<ResolvedBackend> {
        let deleted: HashSet<&SocketAddr> = self.deleted.iter().collect();
        let mut set: Vec<ResolvedBackend> = listed
            .iter()
            .filter(|b| !deleted.contains(&b.addr))
            .cloned()
            .collect();
        set.extend(self.added.iter().map(|(b, _)| b.clone()));
        set
    }

    /// Forgets what the configuration has caught up with: added backends it now lists
    /// (its options take over), deleted ones it no longer lists.
    fn catch_up(&mut self, listed: &[ResolvedBackend]) {
        let listed: HashSet<SocketAddr> = listed.iter().map(|b| b.addr).collect();
        self.added.retain(|(b, _)| !listed.contains(&b.addr));
        self.deleted.retain(|addr| listed.contains(addr));
    }
}

/// Every pool's overlay that is not empty, by pool name.
pub type Overlays = Vec<(String, Overlay)>;

/// What the control thread asks of the discovery thread.
#[derive(Debug)]
pub enum Request {
    /// Re-read the configuration (SIGHUP, or `tcplb ctl reload`).
    Reload(u64),
    /// Add a backend to a pool (every address its name resolves to).
    Add {
        ticket: u64,
        pool: String,
        spec: BackendSpec,
    },
    /// Take these backends out of a pool (they drain).
    Delete {
        ticket: u64,
        pool: String,
        addrs: Vec<SocketAddr>,
    },
    /// Build the pool's generation again (weights changed at run time; its selectors take
    /// them when built).
    Rebuild { ticket: u64, pool: String },
}

/// What the discovery thread tells the control thread.
#[derive(Debug)]
pub enum Update {
    /// A reload ran (for these requests: see [`Discovery::reload`]).
    Reloaded {
        tickets: Vec<u64>,
        result: Result<Box<Reloaded>, String>,
        overlays: Overlays,
    },
    /// A pool's names were re-resolved to a different set.
    Resolved(PoolChange),
    /// A run-time change ([`Request::Add`], [`Request::Delete`], [`Request::Rebuild`]):
    /// the pool's new generation, or why nothing changed.
    Changed {
        ticket: u64,
        result: Result<Changed, String>,
        overlays: Overlays,
    },
}

/// A run-time change carried out.
#[derive(Debug)]
pub struct Changed {
    pub change: PoolChange,
    /// What changed, for the log.
    pub line: String,
    /// The addresses added or deleted.
    pub addrs: Vec<SocketAddr>,
}

/// Why start-up failed.
#[derive(Debug)]
pub enum StartError {
    /// Bad input (a backends file that does not parse): exit 2.
    Input(String),
    /// The environment said no (a name that does not resolve): exit 1.
    Start(String),
}

/// One pool's sources and builder.
struct Plan {
    id: PoolId,
    spec: PoolSpec,
    builder: Builder,
    /// The backends file's specs as last read.
    file_specs: Vec<BackendSpec>,
    /// The set the configuration lists, resolved.
    listed: Vec<ResolvedBackend>,
    /// What `tcplb ctl` added and deleted.
    overlay: Overlay,
    /// The set the newest generation was built from: `listed` with `overlay` applied.
    current: Vec<ResolvedBackend>,
    next_resolve: Option<Instant>,
}

/// Every pool's plan, and the name cache they share.
pub struct Pools {
    plans: Vec<Plan>,
    resolver: Resolver,
    /// Ids of removed pools, given to pools added later.
    free_ids: Vec<PoolId>,
    next_id: PoolId,
}

/// `pool NAME: ` before a line about a pool; nothing for the command line's one pool, whose
/// lines read as they always have.
pub fn prefix(pool: &str) -> String {
    if pool == config::DEFAULT_NAME {
        String::new()
    } else {
        format!("pool {pool}: ")
    }
}

fn policy(spec: &PoolSpec) -> Policy {
    Policy {
        breaker: spec.breaker,
        checks: spec.checks.clone(),
        runtime: spec.runtime,
    }
}

/// What a pool's next set is made of, read and resolved but not built.
struct Prepared {
    file_specs: Option<Vec<BackendSpec>>,
    set: Vec<ResolvedBackend>,
}

impl Pools {
    /// Every pool's first generation, in the config's order, with the overlays an upgrade
    /// handed over (`handed`, by pool name; for pools no longer configured they are
    /// dropped).
    pub fn start(
        config: &Config,
        handed: &Overlays,
    ) -> Result<(Pools, Vec<Arc<Fleet>>), StartError> {
        let mut pools = Pools {
            plans: Vec::with_capacity(config.pools.len()),
            resolver: Resolver::default(),
            free_ids: Vec::new(),
            next_id: 0,
        };
        let mut fleets = Vec::with_capacity(config.pools.len());
        for spec in &config.pools {
            let file_specs = match &spec.backends_file {
                Some(path) => read_backends_file(path).map_err(StartError::Input)?,
                None => Vec::new(),
            };
            let all: Vec<BackendSpec> = spec.backends.iter().chain(&file_specs).cloned().collect();
            let (set, failures) = pools.resolver.resolve(&all);
            if let Some(first) = failures.first() {
                let Some(interval) = spec.resolve_interval else {
                    return Err(StartError::Start(first.clone()));
                };
                for failure in &failures {
                    warn!(
                        "{}{failure}; trying again every {interval:?}",
                        prefix(&spec.name)
                    );
                }
            }
            if set.is_empty() {
                warn!(
                    "{}no backends yet: clients will be closed until some are added",
                    prefix(&spec.name)
                );
            }
            warn_duplicates(&spec.name, &set);
            warn_idle_queue(spec, &set);
            // A set the balance cannot serve whole (a backend that would never be chosen)
            // is refused like one that does not parse.
            let fits = Builder::check(spec.balance, &set)
                .map_err(|e| StartError::Input(format!("{}{e}", prefix(&spec.name))))?;
            if let Some(warning) = fits {
                warn!("{}{warning}", prefix(&spec.name));
            }
            let id = pools.allocate_id();
            let mut builder = Builder::for_pool(
                id,
                Arc::from(spec.name.as_str()),
                policy(spec),
                spec.balance,
            );
            let mut overlay = handed
                .iter()
                .find(|(name, _)| *name == spec.name)
                .map(|(_, o)| o.clone())
                .unwrap_or_default();
            overlay.catch_up(&set);
            let current = overlay.apply(&set);
            builder.set_queue(spec.queue);
            let (fleet, _) = builder.build(&current);
            fleets.push(fleet);
            pools.plans.push(Plan {
                id,
                spec: spec.clone(),
                builder,
                file_specs,
                listed: set,
                overlay,
                current,
                next_resolve: spec.resolve_interval.map(|i| Instant::now() + i),
            });
        }
        Ok((pools, fleets))
    }

    /// The id of the pool called `name`.
    pub fn id_of(&self, name: &str) -> Option<PoolId> {
        self.plans
            .iter()
            .find(|p| p.spec.name == name)
            .map(|p| p.id)
    }

    fn allocate_id(&mut self) -> PoolId {
        self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    /// Applies a re-read configuration: all of it, or (on any error) nothing.
    fn reload(&mut self, config: Config) -> Result<Reloaded, String> {
        // First read and resolve everything, changing nothing.
        let mut prepared = Vec::with_capacity(config.pools.len());
        for spec in &config.pools {
            let old = self.plans.iter().find(|p| p.spec.name == spec.name);
            let file_specs = match &spec.backends_file {
                Some(path) => Some(read_backends_file(path)?),
                None => None,
            };
            let listed: Vec<BackendSpec> = spec
                .backends
                .iter()
                .chain(file_specs.as_deref().unwrap_or(&[]))
                .cloned()
                .collect();
            let (set, failures) = self.resolver.resolve(&listed);
            for failure in failures {
                warn!("{}{failure}", prefix(&spec.name));
            }
            if set.is_empty() {
                let source = match &spec.backends_file {
                    Some(path) if spec.backends.is_empty() => {
                        format!("{} lists", config::printable(&path.display().to_string()))
                    }
                    _ => "the backend names resolve to".to_string(),
                };
                return Err(match old {
                    Some(old) => format!(
                        "pool {}: {source} no backend (it has {} now; to take every backend \
                         out, remove the pool and its services)",
                        spec.name,
                        old.current.len()
                    ),
                    None => format!("new pool {}: {source} no backend", spec.name),
                });
            }
            if let Some(warning) = Builder::check(spec.balance, &set)
                .map_err(|e| format!("{}{e}", prefix(&spec.name)))?
            {
                warn!("{}{warning}", prefix(&spec.name));
            }
            warn_idle_queue(spec, &set);
            prepared.push(Prepared { file_specs, set });
        }
        // Then build what changed.
        let mut changes = Vec::with_capacity(config.pools.len());
        let mut kept = Vec::with_capacity(config.pools.len());
        let mut old_plans = std::mem::take(&mut self.plans);
        for (spec, ready) in config.pools.iter().zip(prepared) {
            let name: Arc<str> = Arc::from(spec.name.as_str());
            let (mut plan, fresh) = match old_plans.iter().position(|p| p.spec.name == spec.name) {
                Some(i) => (old_plans.swap_remove(i), false),
                None => {
                    let id = self.allocate_id();
                    let mut builder =
                        Builder::for_pool(id, Arc::clone(&name), policy(spec), spec.balance);
                    builder.set_queue(spec.queue);
                    let plan = Plan {
                        id,
                        spec: spec.clone(),
                        builder,
                        file_specs: Vec::new(),
                        listed: Vec::new(),
                        overlay: Overlay::default(),
                        current: Vec::new(),
                        next_resolve: None,
                    };
                    (plan, true)
                }
            };
            let settings_changed = plan.spec != *spec;
            if settings_changed {
                plan.builder.set_policy(policy(spec), spec.balance);
                plan.builder.set_queue(spec.queue);
                plan.next_resolve = spec.resolve_interval.map(|i| Instant::now() + i);
                plan.spec = spec.clone();
            }
            plan.file_specs = ready.file_specs.unwrap_or_default();
            plan.overlay.catch_up(&ready.set);
            let wanted = plan.overlay.apply(&ready.set);
            plan.listed = ready.set;
            let built = if fresh || settings_changed || wanted != plan.current {
                let built = plan.builder.build(&wanted);
                plan.current = wanted;
                Some(built)
            } else {
                None
            };
            changes.push(PoolChange {
                id: plan.id,
                name,
                built,
            });
            kept.push(plan);
        }
        let removed: Vec<PoolId> = old_plans.iter().map(|p| p.id).collect();
        self.free_ids.extend(&removed);
        self.plans = kept;
        Ok(Reloaded {
            config,
            pools: changes,
            removed,
        })
    }

    /// Re-resolves the pools whose interval has come round; a pool whose addresses
    /// changed gets a new generation.
    fn resolve_due(&mut self, now: Instant) -> Vec<PoolChange> {
        let mut changes = Vec::new();
        for plan in &mut self.plans {
            let (Some(due), Some(interval)) = (plan.next_resolve, plan.spec.resolve_interval)
            else {
                continue;
            };
            if due > now {
                continue;
            }
            plan.next_resolve = Some(now + interval);
            let listed: Vec<BackendSpec> = plan
                .spec
                .backends
                .iter()
                .chain(&plan.file_specs)
                .cloned()
                .collect();
            let (set, failures) = self.resolver.resolve(&listed);
            for failure in failures {
                warn!("{}{failure}", prefix(&plan.spec.name));
            }
            if set == plan.listed || (set.is_empty() && !plan.listed.is_empty()) {
                if set.is_empty() {
                    warn!(
                        "pool {}: the backend names resolve to no backend; keeping the \
                         running set of {}",
                        plan.spec.name,
                        plan.current.len()
                    );
                }
                continue;
            }
            plan.overlay.catch_up(&set);
            let wanted = plan.overlay.apply(&set);
            match Builder::check(plan.spec.balance, &wanted) {
                Err(e) => {
                    warn!(
                        "{}re-resolve refused, keeping the running set: {e}",
                        prefix(&plan.spec.name)
                    );
                    continue;
                }
                Ok(Some(warning)) => warn!("{}{warning}", prefix(&plan.spec.name)),
                Ok(None) => {}
            }
            plan.listed = set;
            let built = plan.builder.build(&wanted);
            plan.current = wanted;
            changes.push(PoolChange {
                id: plan.id,
                name: Arc::from(plan.spec.name.as_str()),
                built: Some(built),
            });
        }
        changes
    }

    /// Every pool's overlay that is not empty.
    pub fn overlays(&self) -> Overlays {
        self.plans
            .iter()
            .filter(|p| !p.overlay.is_empty())
            .map(|p| (p.spec.name.clone(), p.overlay.clone()))
            .collect()
    }

    fn plan(&mut self, pool: &str) -> Result<&mut Plan, String> {
        let known: Vec<String> = self.plans.iter().map(|p| p.spec.name.clone()).collect();
        self.plans
            .iter_mut()
            .find(|p| p.spec.name == pool)
            .ok_or_else(|| no_pool(pool, &known))
    }

    /// A run-time change ([`Request::Add`], [`Request::Delete`], [`Request::Rebuild`]).
    fn change(&mut self, request: Request) -> Result<Changed, String> {
        let (pool, what) = match request {
            Request::Add { pool, spec, .. } => {
                let (set, failures) = self.resolver.resolve(std::slice::from_ref(&spec));
                if set.is_empty() {
                    return Err(failures
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| format!("backend {spec} resolves to no address")));
                }
                let plan = self.plan(&pool)?;
                if let Some(b) = set
                    .iter()
                    .find(|b| plan.current.iter().any(|c| c.addr == b.addr))
                {
                    return Err(format!("pool {pool} already has backend {}", b.addr));
                }
                let mut overlay = plan.overlay.clone();
                let addrs: Vec<SocketAddr> = set.iter().map(|b| b.addr).collect();
                overlay.deleted.retain(|a| !addrs.contains(a));
                overlay
                    .added
                    .extend(set.iter().map(|b| (b.clone(), spec.clone())));
                let what = set
                    .iter()
                    .map(|b| b.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let line = if spec.to_string() == what {
                    format!("added backend {what}")
                } else {
                    format!("added backend {what} ({spec})")
                };
                (pool, (overlay, line, addrs))
            }
            Request::Delete { pool, addrs, .. } => {
                let plan = self.plan(&pool)?;
                if let Some(missing) = addrs
                    .iter()
                    .find(|a| !plan.current.iter().any(|c| c.addr == **a))
                {
                    return Err(format!("pool {pool} has no backend {missing}"));
                }
                let mut overlay = plan.overlay.clone();
                overlay.added.retain(|(b, _)| !addrs.contains(&b.addr));
                for addr in &addrs {
                    if plan.listed.iter().any(|b| b.addr == *addr)
                        && !overlay.deleted.contains(addr)
                    {
                        overlay.deleted.push(*addr);
                    }
                }
                let what = addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                (pool, (overlay, format!("deleted backend {what}"), addrs))
            }
            Request::Rebuild { pool, .. } => {
                let plan = self.plan(&pool)?;
                let overlay = plan.overlay.clone();
                (
                    pool,
                    (
                        overlay,
                        "rebuilt with the weights set".to_string(),
                        Vec::new(),
                    ),
                )
            }
            Request::Reload(_) => return Err("not a run-time change".to_string()),
        };
        let (overlay, line, addrs) = what;
        let plan = self.plan(&pool)?;
        let wanted = overlay.apply(&plan.listed);
        if wanted.is_empty() {
            return Err(format!(
                "pool {pool} would have no backend left (drain it instead: tcplb ctl set state)"
            ));
        }
        if let Some(warning) = Builder::check(plan.spec.balance, &wanted)
            .map_err(|e| format!("{}{e}", prefix(&pool)))?
        {
            warn!("{}{warning}", prefix(&pool));
        }
        plan.overlay = overlay;
        let built = plan.builder.build(&wanted);
        plan.current = wanted;
        Ok(Changed {
            change: PoolChange {
                id: plan.id,
                name: Arc::from(pool.as_str()),
                built: Some(built),
            },
            line,
            addrs,
        })
    }

    /// When the next re-resolve is due, if any pool has one.
    fn next_due(&self) -> Option<Instant> {
        self.plans.iter().filter_map(|p| p.next_resolve).min()
    }
}

/// Warns once for each address listed more than once (it is used once, with the options it
/// was first listed with): the same spec twice, or a name and an address that resolve alike.
/// A queue only ever holds clients when every backend is at its `maxconn`: one that has
/// none is never full.
fn warn_idle_queue(spec: &PoolSpec, backends: &[ResolvedBackend]) {
    if spec.queue.size > 0 && backends.iter().any(|b| b.maxconn.is_none()) {
        warn!(
            "{}queue-size is set, but a backend without maxconn is never full: clients wait              only while every backend is at its maxconn (give each one ,maxconn=N)",
            prefix(&spec.name)
        );
    }
}

fn warn_duplicates(pool: &str, backends: &[ResolvedBackend]) {
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
            "{}backend {addr} is listed {times} times{written}; it is used once, with \
             the options first given",
            prefix(pool)
        );
    }
    if repeated.len() > SHOWN {
        warn!(
            "{}and {} more backends are listed more than once",
            prefix(pool),
            repeated.len() - SHOWN
        );
    }
}

/// `no pool NAME`, with the one meant if it is close, else the pools there are.
pub fn no_pool(pool: &str, known: &[String]) -> String {
    let shown = config::printable(pool);
    match config::table::closest(pool, known.iter().map(String::as_str)) {
        Some(meant) => format!("no pool {shown} (did you mean {meant}?)"),
        None => format!("no pool {shown} (the pools are {})", known.join(", ")),
    }
}

/// The control thread's end of the discovery thread.
pub struct Discovery {
    requests: Sender<Request>,
    updates: Receiver<Update>,
}

impl Discovery {
    /// Starts the discovery thread with `pools` as [`Pools::start`] made them; a reload
    /// parses `args` (the command line) again. It wakes the control thread through `waker`
    /// for each update.
    pub fn spawn(args: Vec<OsString>, pools: Pools, waker: Arc<Waker>) -> io::Result<Discovery> {
        let (requests, requested) = mpsc::channel();
        let (report, updates) = mpsc::channel();
        std::thread::Builder::new()
            .name("discovery".to_string())
            .spawn(move || run(&args, pools, &requested, &report, &waker))?;
        Ok(Discovery { requests, updates })
    }

    /// Asks for a reload; its outcome names `ticket` (with every other request that came in
    /// the same burst: they are one reload).
    pub fn reload(&self, ticket: u64) {
        let _ = self.requests.send(Request::Reload(ticket));
    }

    /// Asks for a run-time change; its outcome is an [`Update::Changed`] naming its ticket.
    pub fn change(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// The next update, if one is waiting.
    pub fn next_update(&self) -> Option<Update> {
        self.updates.try_recv().ok()
    }
}

fn run(
    args: &[OsString],
    mut pools: Pools,
    requested: &Receiver<Request>,
    report: &Sender<Update>,
    waker: &Waker,
) {
    loop {
        let request = match pools.next_due() {
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                match requested.recv_timeout(wait.max(Duration::from_millis(1))) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match requested.recv() {
                Ok(request) => Some(request),
                Err(_) => return,
            },
        };
        match request {
            Some(first) => {
                // Reloads asked for in a burst are one reload; run-time changes are each
                // their own, in the order asked.
                let mut burst = vec![first];
                burst.extend(requested.try_iter());
                let mut tickets = Vec::new();
                for request in burst {
                    match request {
                        Request::Reload(ticket) => tickets.push(ticket),
                        change => {
                            let ticket = match &change {
                                Request::Add { ticket, .. }
                                | Request::Delete { ticket, .. }
                                | Request::Rebuild { ticket, .. } => *ticket,
                                Request::Reload(ticket) => *ticket,
                            };
                            let result = pools.change(change);
                            let overlays = pools.overlays();
                            send(
                                report,
                                waker,
                                Update::Changed {
                                    ticket,
                                    result,
                                    overlays,
                                },
                            );
                        }
                    }
                }
                if !tickets.is_empty() {
                    let result = reload(args, &mut pools).map(Box::new);
                    let overlays = pools.overlays();
                    send(
                        report,
                        waker,
                        Update::Reloaded {
                            tickets,
                            result,
                            overlays,
                        },
                    );
                }
            }
            None => {
                for change in pools.resolve_due(Instant::now()) {
                    send(report, waker, Update::Resolved(change));
                }
            }
        }
    }
}

/// Parses the command line again (re-reading the config file) and applies it.
fn reload(args: &[OsString], pools: &mut Pools) -> Result<Reloaded, String> {
    let config = match config::parse_args(args) {
        Ok(config::Action::Run(config)) => *config,
        Ok(_) => return Err("the command line no longer describes a run".to_string()),
        Err(e) => return Err(e.to_string()),
    };
    pools.reload(config)
}

fn send(report: &Sender<Update>, waker: &Waker, update: Update) {
    if report.send(update).is_ok() {
        if let Err(e) = waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }
}
