//! A reload, applied in place: the difference between the running services and pools and
//! the ones the discovery thread read, and nothing else.
//!
//! - an added service binds its listeners and starts serving (one that cannot bind is left
//!   out alone, logged and counted; the rest of the change applies);
//! - a removed service's listeners close at once and its live sessions drain for up to
//!   `drain-timeout`, then are cut;
//! - a service whose addresses changed binds the new ones and closes the old ones; one whose
//!   settings changed gets a new [`Service`](crate::service::Service) for new sessions;
//! - a pool with a new generation (settings or backends changed) replaces its old one;
//!   backends that stay keep their state (the builder's work, on the discovery thread);
//! - what did not change is not touched: no listener closed, no session cut.
//!
//! The workers hear of it in an order that never leaves a listener without its service:
//! listeners closed first, then the new topology, then new listeners.

use super::Control;
use crate::config::{Global, authority};
use crate::fleet::discovery::{PoolChange, Reloaded};
use crate::fleet::{Fleet, PoolId};
use crate::service::Topology;
use crate::worker::Command;
use log::{info, warn};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Settings of `[global]` a running process cannot change: they wait for an upgrade.
fn fixed_changes(running: &Global, new: &Global) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if running.workers != new.workers {
        fixed.push("workers");
    }
    if running.admin != new.admin {
        fixed.push("admin");
    }
    if running.access_log != new.access_log {
        fixed.push("access-log");
    }
    if running.pid_file != new.pid_file {
        fixed.push("pid-file");
    }
    if running.buffer_size != new.buffer_size || running.buffers != new.buffers {
        fixed.push("buffer-size/buffers");
    }
    if running.pipes != new.pipes {
        fixed.push("pipes");
    }
    if running.bpf_redirect != new.bpf_redirect
        || running.bpf_redirect_bound != new.bpf_redirect_bound
    {
        fixed.push("bpf-redirect");
    }
    if running.control_socket != new.control_socket
        || running.control_socket_mode != new.control_socket_mode
        || running.control_socket_group != new.control_socket_group
    {
        fixed.push("control-socket");
    }
    fixed
}

impl Control {
    /// A reload's outcome, applied; returns a line that sums it up.
    pub(super) fn apply_reload(&mut self, reloaded: Reloaded) -> String {
        let Reloaded {
            config,
            pools,
            removed,
        } = reloaded;
        let mut lines = Vec::new();

        // [global]: what can change in place does; the rest waits for an upgrade.
        let fixed = fixed_changes(&self.global, &config.global);
        if !fixed.is_empty() {
            warn!(
                "reload: {} changed in the file; kept as they are until an upgrade (SIGUSR2)",
                fixed.join(", ")
            );
        }
        self.global.drain_timeout = config.global.drain_timeout;
        self.global.upgrade_timeout = config.global.upgrade_timeout;
        self.global.upgrade_probation = config.global.upgrade_probation;
        self.global.max_conns = self.fit_max_conns(config.global.max_conns);

        // Pools: the new generations, the kept ones, without the removed ones.
        let current = Arc::clone(self.rollout.current());
        let ids: HashMap<&str, PoolId> = pools.iter().map(|p| (&*p.name, p.id)).collect();
        let mut fleets: Vec<Arc<Fleet>> = Vec::with_capacity(pools.len());
        let mut changed: Vec<Arc<Fleet>> = Vec::new();
        for change in &pools {
            let fleet = match &change.built {
                Some((fleet, changes)) => {
                    changed.push(Arc::clone(fleet));
                    describe_pool(change, fleet, changes, &mut lines);
                    Arc::clone(fleet)
                }
                None => match current.pool(change.id) {
                    Some(fleet) => {
                        if &*change.name == crate::config::DEFAULT_NAME {
                            // The command line's one pool says what every reload found,
                            // as it always has.
                            lines.push(format!(
                                "reload: 0 added, 0 removed, 0 changed; {} backends",
                                fleet.len()
                            ));
                        }
                        Arc::clone(fleet)
                    }
                    None => continue, // cannot be: an unchanged pool is a running one
                },
            };
            fleets.push(fleet);
        }
        for id in &removed {
            if let Some(fleet) = current.pool(*id) {
                lines.push(format!("reload: pool {} removed", fleet.name()));
            }
            self.prober.unschedule(*id, &mut self.timers);
        }

        // Services.
        let mut unlisten = Vec::new();
        let mut listen = Vec::new();
        let gone: Vec<String> = self
            .registry
            .entries()
            .filter(|e| config.service(&e.spec.name).is_none())
            .map(|e| e.spec.name.clone())
            .collect();
        let deadline = self.now + self.global.drain_timeout;
        for name in gone {
            self.sockets.remove(&name);
            if let Some(service) = self.registry.remove(&name) {
                lines.push(format!(
                    "reload: service {name} removed; its live sessions may finish for up to \
                     {:?}",
                    self.global.drain_timeout
                ));
                unlisten.push((service.id, None, Some((service, deadline))));
            }
        }
        let (mut added, mut updated) = (0, 0);
        let lookup = |name: &str| Some((*ids.get(name)?, config.pool(name)?));
        for spec in &config.services {
            match self.registry.get(&spec.name) {
                None => {
                    if let Err(e) = self.sockets.bind_service(spec, &config) {
                        self.reloads.bind_failures += 1;
                        warn!("reload: service {} not added: {e}", spec.name);
                        continue;
                    }
                    self.sockets.defer_accept(spec);
                    // (Validated: every pool it names exists.)
                    let Some(service) =
                        self.registry
                            .add(spec, &lookup, self.sockets.addrs(&spec.name))
                    else {
                        self.sockets.remove(&spec.name);
                        continue;
                    };
                    let addrs: Vec<String> = self
                        .sockets
                        .addrs(&spec.name)
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                    lines.push(format!(
                        "reload: service {} added, listening on {} for {}",
                        spec.name,
                        addrs.join(", "),
                        spec.destination(None)
                    ));
                    listen.push((service.id, spec.name.clone(), None));
                    added += 1;
                }
                Some(entry) => {
                    let old_spec = entry.spec.clone();
                    let id = entry.service.id;
                    if old_spec.listen != spec.listen || old_spec.backlog != spec.backlog {
                        match self.sockets.rebind_service(&old_spec, spec, &config) {
                            Ok((gone, new)) => {
                                if !gone.is_empty() {
                                    unlisten.push((id, Some(gone), None));
                                }
                                if !new.is_empty() {
                                    listen.push((id, spec.name.clone(), Some(new)));
                                }
                                let shown: Vec<String> =
                                    spec.listen.iter().map(authority).collect();
                                lines.push(format!(
                                    "reload: service {} now listens on {}",
                                    spec.name,
                                    shown.join(", ")
                                ));
                            }
                            Err(e) => {
                                self.reloads.bind_failures += 1;
                                warn!("reload: service {} keeps its listeners: {e}", spec.name);
                                // Its other settings still apply; its addresses stay.
                                let mut kept = spec.clone();
                                kept.listen = old_spec.listen.clone();
                                kept.backlog = old_spec.backlog;
                                self.sockets.defer_accept(&kept);
                                let listen = self.sockets.addrs(&spec.name);
                                if self.registry.update(&kept, &lookup, listen).is_some() {
                                    updated += 1;
                                }
                                continue;
                            }
                        }
                    }
                    self.sockets.defer_accept(spec);
                    let listen = self.sockets.addrs(&spec.name);
                    if self.registry.update(spec, &lookup, listen).is_some() {
                        lines.push(format!("reload: service {} settings changed", spec.name));
                        updated += 1;
                    }
                }
            }
        }

        // The workers: listeners closed, the new view, new listeners.
        for (service, only, retire) in unlisten {
            for w in &self.workers {
                w.send(Command::Unlisten {
                    service,
                    only: only.clone(),
                    retire: retire.clone(),
                });
            }
        }
        let topology = Topology::new(
            self.rollout.next_generation(),
            self.global.max_conns,
            self.registry.services(),
            fleets,
        );
        for fleet in &changed {
            self.prober.schedule(fleet, &mut self.timers, self.now);
            self.track_ramps(fleet);
        }
        self.rollout
            .publish(topology, changed, lines, &self.workers);
        for (id, name, only) in listen {
            self.listen_on(id, &name, only.as_deref());
        }
        self.reloads.ok += 1;
        self.reloads.last_success = Some(SystemTime::now());
        let summary = format!(
            "{} services ({added} added, {updated} changed), {} pools",
            config.services.len(),
            config.pools.len()
        );
        if config.file.is_some() {
            info!("reload: {summary}");
        }
        summary
    }

    /// A reload's `max-conns`, fitted in the open-file limit as at start (a value that
    /// does not fit is lowered, with a warning).
    fn fit_max_conns(&self, wanted: usize) -> usize {
        let Some(budget) = self.fd_budget else {
            return wanted;
        };
        match crate::limits::fit(wanted, self.global.pipes, budget.nofile, budget.reserve) {
            Some((fits, _)) if fits < wanted => {
                warn!(
                    "reload: max-conns {wanted} does not fit the open-file limit of {} \
                     (2 descriptors per session, 2 per pipe, {} kept aside); using {fits}",
                    budget.nofile, budget.reserve
                );
                fits
            }
            _ => wanted,
        }
    }

    /// Hands every worker its copies of `service`'s sockets (those on `only`'s addresses,
    /// if given).
    fn listen_on(
        &mut self,
        id: crate::service::ServiceId,
        name: &str,
        only: Option<&[std::net::SocketAddr]>,
    ) {
        for (w, handle) in self.workers.iter().enumerate() {
            match self.sockets.for_worker(name, w, only) {
                Ok(sockets) => handle.send(Command::Listen {
                    service: id,
                    sockets: sockets
                        .into_iter()
                        .map(mio::net::TcpListener::from_std)
                        .collect(),
                }),
                Err(e) => warn!("service {name}: cannot give worker {w} its listeners: {e}"),
            }
        }
    }
}

/// The lines that say what changed in a pool.
fn describe_pool(
    change: &PoolChange,
    fleet: &Fleet,
    changes: &crate::fleet::builder::Changes,
    lines: &mut Vec<String>,
) {
    describe_pool_named("reload", &change.name, fleet, changes, lines);
}

pub(super) fn describe_pool_named(
    what: &str,
    name: &str,
    fleet: &Fleet,
    changes: &crate::fleet::builder::Changes,
    lines: &mut Vec<String>,
) {
    // The one pool of the command line keeps the lines it always had.
    let prefix = if name == crate::config::DEFAULT_NAME {
        what.to_string()
    } else {
        format!("{what}: pool {name}")
    };
    lines.push(format!(
        "{prefix}: {}; {} backends",
        changes.counts(),
        fleet.len()
    ));
    lines.extend(
        changes
            .lines()
            .into_iter()
            .map(|l| format!("{prefix}: {l}")),
    );
    if fleet.is_empty() {
        lines.push(format!(
            "{prefix}: the backend set is empty; new clients will be closed"
        ));
    }
}
