//! `tcplb ctl`'s commands, carried out on the control thread. Each names a pool and a
//! backend (its address, or the name it was given) and applies to every worker at once:
//! a backend's runtime state is atomics every worker reads (`fleet::backend`), so `set
//! state` and `set weight` hold from the moment they are answered; `add backend`, `del
//! backend` and a weight change under a balance whose selectors take weights when built
//! go through the discovery thread, which builds the pool's next generation, and are
//! answered once it has gone out to every worker. `kill sessions` tells every worker to
//! cut the backend's sessions. `reload` is SIGHUP's, answered with its outcome.
//!
//! Every command that changes something is logged at `info`, naming the command, and
//! every answer is the new state (`ctl::show`'s rows) or one line saying what is wrong.

use super::Control;
use crate::admin::show::{self, Row};
use crate::ctl::protocol::{self, Command, Request};
use crate::fleet::Fleet;
use crate::fleet::backend::{Admin, Backend};
use crate::fleet::discovery::{self, Changed, Request as Change};
use crate::reactor::ConnId;
use crate::worker::Command as WorkerCommand;
use log::{debug, info};
use std::sync::Arc;

/// A command waiting for the discovery thread.
pub(super) struct Pending {
    pub conn: ConnId,
    pub json: bool,
    /// The command line, for the log.
    pub line: String,
    pub what: Waiting,
}

/// What a pending command will do with the answer.
pub(super) enum Waiting {
    Reload,
    /// Added to a pool.
    Add,
    /// Deleted from `pool`; they were set to drain first (and are set back to `before`
    /// if the deletion is refused).
    Delete {
        pool: String,
        backends: Vec<(Arc<Backend>, Admin)>,
    },
    /// A weight set, its pool rebuilt.
    Weight {
        backends: Vec<Arc<Backend>>,
    },
}

impl Control {
    /// A request line came on control connection `id`.
    pub(super) fn on_ctl_request(&mut self, id: ConnId, line: String) {
        let request = match Request::parse(&line) {
            Ok(request) => request,
            Err(message) => {
                debug!("ctl: {:?}: {message}", crate::config::printable(&line));
                return self.ctl_answer(id, Err(message), false);
            }
        };
        let shown = crate::config::printable(line.trim_start_matches("json ")).into_owned();
        if request.command.changes() {
            info!("ctl: {shown}");
        }
        match self.run_command(id, &request, &shown) {
            Some(result) => {
                if let (Err(e), true) = (&result, request.command.changes()) {
                    info!("ctl: {shown}: {e}");
                }
                self.ctl_answer(id, result, request.json)
            }
            None => {
                if let Some(ctl) = &mut self.ctl {
                    ctl.wait(id, &mut self.timers, self.now);
                }
            }
        }
    }

    /// Writes `result` as the answer on `id` (closing it once written).
    pub(super) fn ctl_answer(&mut self, id: ConnId, result: Result<String, String>, _json: bool) {
        let mut text = protocol::status_line(&result);
        if let Ok(body) = result {
            text.push_str(&body);
        }
        let Some(ctl) = &mut self.ctl else {
            return;
        };
        if ctl.answer(id, text) {
            ctl.close(id, self.poll.registry(), &mut self.timers);
        }
    }

    /// Carries `request` out: its answer now, or `None` when it waits for the discovery
    /// thread (then [`Control::ctl_changed`] or [`Control::ctl_reloaded`] answers).
    fn run_command(
        &mut self,
        id: ConnId,
        request: &Request,
        line: &str,
    ) -> Option<Result<String, String>> {
        let json = request.json;
        let now = crate::clock::millis(self.now);
        match &request.command {
            Command::ShowBackends { pool } => Some(self.show(pool.as_deref(), json)),
            Command::SetState {
                pool,
                backend,
                state,
            } => Some(self.find(pool, backend).map(|(fleet, backends)| {
                for b in &backends {
                    let before = fleet.set_admin(b, *state, now);
                    if before != *state {
                        info!(
                            "ctl: pool {pool}: backend {b} is now {} (was {})",
                            state.as_str(),
                            before.as_str()
                        );
                    }
                    self.track_ramp(b);
                }
                rows(&fleet, &backends, now, json)
            })),
            Command::SetWeight {
                pool,
                backend,
                weight,
            } => {
                let (fleet, backends) = match self.find(pool, backend) {
                    Ok(found) => found,
                    Err(e) => return Some(Err(e)),
                };
                for b in &backends {
                    b.set_weight(Some(*weight));
                    fleet.refresh(b, now);
                    info!("ctl: pool {pool}: backend {b} now weight {weight}");
                }
                if !fleet.static_weights() {
                    return Some(Ok(rows(&fleet, &backends, now, json)));
                }
                self.ask_discovery(id, json, line, Waiting::Weight { backends }, |ticket| {
                    Change::Rebuild {
                        ticket,
                        pool: pool.clone(),
                    }
                });
                None
            }
            Command::AddBackend { pool, spec } => {
                if let Err(e) = self.pool(pool) {
                    return Some(Err(e));
                }
                self.ask_discovery(id, json, line, Waiting::Add, |ticket| Change::Add {
                    ticket,
                    pool: pool.clone(),
                    spec: spec.clone(),
                });
                None
            }
            Command::DelBackend { pool, backend } => {
                let (fleet, backends) = match self.find(pool, backend) {
                    Ok(found) => found,
                    Err(e) => return Some(Err(e)),
                };
                // No new session from this moment; the deletion follows.
                let before: Vec<(Arc<Backend>, Admin)> = backends
                    .iter()
                    .map(|b| (Arc::clone(b), fleet.set_admin(b, Admin::Drain, now)))
                    .collect();
                let addrs = backends.iter().map(|b| b.addr).collect();
                self.ask_discovery(
                    id,
                    json,
                    line,
                    Waiting::Delete {
                        pool: pool.clone(),
                        backends: before,
                    },
                    |ticket| Change::Delete {
                        ticket,
                        pool: pool.clone(),
                        addrs,
                    },
                );
                None
            }
            Command::KillSessions { pool, backend } => {
                Some(self.find(pool, backend).map(|(fleet, backends)| {
                    let mut cut = 0;
                    for b in &backends {
                        cut += b.active();
                        self.cut_backend(b);
                    }
                    info!("ctl: pool {pool}: cutting the {cut} sessions of {backend}");
                    let mut text = if json {
                        String::new()
                    } else {
                        format!("cutting {cut} sessions\n")
                    };
                    text.push_str(&rows(&fleet, &backends, now, json));
                    text
                }))
            }
            Command::Reload => {
                let ticket = self.next_ticket();
                self.pending.insert(
                    ticket,
                    Pending {
                        conn: id,
                        json,
                        line: line.to_string(),
                        what: Waiting::Reload,
                    },
                );
                self.discovery.reload(ticket);
                None
            }
        }
    }

    /// Every worker cuts `backend`'s sessions now.
    pub(super) fn cut_backend(&self, backend: &Backend) {
        for w in &self.workers {
            w.send(WorkerCommand::CutBackend(backend.id));
        }
    }

    fn next_ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    fn ask_discovery(
        &mut self,
        conn: ConnId,
        json: bool,
        line: &str,
        what: Waiting,
        request: impl FnOnce(u64) -> Change,
    ) {
        let ticket = self.next_ticket();
        self.pending.insert(
            ticket,
            Pending {
                conn,
                json,
                line: line.to_string(),
                what,
            },
        );
        self.discovery.change(request(ticket));
    }

    /// The pool called `name` (its current generation).
    fn pool(&self, name: &str) -> Result<Arc<Fleet>, String> {
        let topology = self.rollout.current();
        topology
            .pools()
            .find(|f| &**f.name() == name)
            .map(Arc::clone)
            .ok_or_else(|| {
                let known: Vec<String> = topology.pools().map(|f| f.name().to_string()).collect();
                discovery::no_pool(name, &known)
            })
    }

    /// The backends of pool `pool` that `backend` names: its address, or the name it was
    /// given (a name may stand for several addresses).
    fn find(&self, pool: &str, backend: &str) -> Result<(Arc<Fleet>, Vec<Arc<Backend>>), String> {
        let fleet = self.pool(pool)?;
        let by_addr: Option<std::net::SocketAddr> = backend.parse().ok();
        let found: Vec<Arc<Backend>> = fleet
            .backends()
            .filter(|b| match by_addr {
                Some(addr) => b.addr == addr,
                None => b.name == backend,
            })
            .cloned()
            .collect();
        if found.is_empty() {
            let known: Vec<String> = fleet.backends().map(|b| b.addr.to_string()).collect();
            let shown = crate::config::printable(backend);
            let hint =
                match crate::config::table::closest(backend, known.iter().map(String::as_str)) {
                    Some(meant) => format!(" (did you mean {meant}?)"),
                    None if known.len() <= 8 => format!(" (its backends are {})", known.join(", ")),
                    None => format!(
                        " ({} backends; tcplb ctl show backends {pool})",
                        known.len()
                    ),
                };
            return Err(format!("pool {pool} has no backend {shown}{hint}"));
        }
        Ok((fleet, found))
    }

    /// `show backends [POOL]`.
    fn show(&self, pool: Option<&str>, json: bool) -> Result<String, String> {
        let now = crate::clock::millis(self.now);
        let fleets: Vec<Arc<Fleet>> = match pool {
            Some(name) => vec![self.pool(name)?],
            None => self.rollout.current().pools().cloned().collect(),
        };
        let rows: Vec<Row> = fleets
            .iter()
            .flat_map(|f| {
                // Deleted (or removed) backends still draining their sessions too.
                f.backends().chain(f.draining()).map(move |b| Row {
                    fleet: f,
                    backend: b,
                })
            })
            .collect();
        Ok(if json {
            show::json(&rows, now)
        } else {
            show::text(&rows, now)
        })
    }

    /// A backend the control thread brought back up: followed while it ramps.
    pub(super) fn track_ramp(&mut self, backend: &Arc<Backend>) {
        let now = crate::clock::millis(self.now);
        if self.ramp.track(backend, now) {
            self.timers.insert(
                self.now + super::ramp::Ramp::interval(),
                super::TimerKey::RampTick,
            );
        }
    }

    /// The discovery thread has carried out a run-time change (`ticket`).
    pub(super) fn ctl_changed(&mut self, ticket: u64, result: Result<Changed, String>) {
        let pending = self.pending.remove(&ticket);
        let mut addrs = Vec::new();
        let published = match result {
            Ok(changed) => {
                let fleet = changed.change.built.as_ref().map(|(f, _)| Arc::clone(f));
                self.publish_pool(changed.change, "ctl");
                info!(
                    "ctl: pool {}: {}",
                    fleet.as_ref().map_or("?", |f| f.name()),
                    changed.line
                );
                addrs = changed.addrs;
                Ok(fleet)
            }
            Err(e) => Err(e),
        };
        let Some(pending) = pending else {
            return; // its connection has gone (timed out): the change holds all the same
        };
        let now = crate::clock::millis(self.now);
        let answer = match (pending.what, published) {
            (Waiting::Delete { backends, .. }, Err(e)) => {
                // Refused: the backends take sessions as they did.
                for (b, before) in backends {
                    if let Some(fleet) = self.rollout.current().pool(b.pool).map(Arc::clone) {
                        fleet.set_admin(&b, before, now);
                    }
                }
                Err(e)
            }
            (_, Err(e)) => Err(e),
            (_, Ok(None)) => Err("nothing changed".to_string()),
            (Waiting::Add, Ok(Some(fleet))) => {
                // The new backends: ready (one revived from draining may still say drain),
                // on their slow-start ramp, checked from now.
                let added: Vec<Arc<Backend>> = fleet
                    .backends()
                    .filter(|b| addrs.contains(&b.addr))
                    .cloned()
                    .collect();
                for b in &added {
                    fleet.set_admin(b, Admin::Ready, now);
                    self.track_ramp(b);
                }
                self.prober.schedule(&fleet, &mut self.timers, self.now);
                Ok(rows(&fleet, &added, now, pending.json))
            }
            (Waiting::Delete { pool, backends }, Ok(Some(_))) => {
                let draining: u32 = backends.iter().map(|(b, _)| b.active()).sum();
                let names: Vec<String> = backends.iter().map(|(b, _)| b.addr.to_string()).collect();
                Ok(if pending.json {
                    format!(
                        "{{\"pool\": {}, \"deleted\": [{}], \"draining_sessions\": {draining}}}\n",
                        crate::admin::json::json_string(&pool),
                        names
                            .iter()
                            .map(|n| crate::admin::json::json_string(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    format!(
                        "deleted {} from pool {pool}; {draining} sessions left to drain\n",
                        names.join(", ")
                    )
                })
            }
            (Waiting::Weight { backends }, Ok(Some(fleet))) => {
                Ok(rows(&fleet, &backends, now, pending.json))
            }
            (Waiting::Reload, Ok(Some(_))) => Err("a reload answered as a change".to_string()),
        };
        if let Err(e) = &answer {
            info!("ctl: {}: {e}", pending.line);
        }
        self.ctl_answer_settled(pending.conn, answer);
    }

    /// Answers `id` once every worker uses the newest generation (at once if they do):
    /// a change is answered when it applies everywhere.
    fn ctl_answer_settled(&mut self, id: ConnId, answer: Result<String, String>) {
        if self.rollout.settled() {
            self.ctl_answer(id, answer, false);
        } else {
            self.settling.push((id, answer));
        }
    }

    /// Every worker has adopted the newest generation: the answers that waited for it go.
    pub(super) fn answer_settled(&mut self) {
        if !self.rollout.settled() {
            return;
        }
        for (id, answer) in std::mem::take(&mut self.settling) {
            self.ctl_answer(id, answer, false);
        }
    }

    /// A reload asked for with these tickets has run: answer the `tcplb ctl reload`s among
    /// them.
    pub(super) fn ctl_reloaded(&mut self, tickets: &[u64], outcome: &Result<String, String>) {
        for ticket in tickets {
            if let Some(pending) = self.pending.remove(ticket) {
                match outcome {
                    Ok(summary) => info!("ctl: reload: {summary}"),
                    Err(e) => info!("ctl: reload failed: {e}"),
                }
                let answer = outcome.clone().map(|summary| {
                    if pending.json {
                        format!(
                            "{{\"reloaded\": true, \"summary\": {}}}\n",
                            crate::admin::json::json_string(&summary)
                        )
                    } else {
                        format!("reloaded: {summary}\n")
                    }
                });
                self.ctl_answer_settled(pending.conn, answer);
            }
        }
    }
}

/// The rows of `backends` of `fleet`, as text or JSON.
fn rows(fleet: &Fleet, backends: &[Arc<Backend>], now: u64, json: bool) -> String {
    let rows: Vec<Row> = backends.iter().map(|b| Row { fleet, backend: b }).collect();
    if json {
        show::json(&rows, now)
    } else {
        show::text(&rows, now)
    }
}
