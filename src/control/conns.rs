//! The control thread's own connections, in its slab: admin clients (accepted with
//! eviction when every slot is taken, so idle or slow clients cannot lock a probe out) and
//! health probes (one per backend per `--health-interval`, for the whole process, at most
//! `MAX_PROBES_IN_FLIGHT` open at once: [`crate::control::prober::Schedule`]), with their
//! deadlines.

use crate::admin::View;
use crate::admin::access_log::AccessLog;
use crate::admin::http::{self, AdminConn};
use crate::clock;
use crate::control::prober::Probe;
use crate::control::{Control, TimerKey};
use crate::lifecycle::Lifecycle;
use crate::logging::suppressed_note;
use crate::net;
use crate::worker::ConnId;
use crate::worker::timer::TimerId;
use log::{debug, warn};
use mio::Token;
use mio::event::Event;
use std::io;
use std::sync::Arc;

/// A connection the control thread serves.
pub(super) enum Conn {
    Admin(AdminConn),
    Probe(Probe, ConnId, Option<TimerId>),
}

impl Conn {
    pub(super) fn id(&self) -> ConnId {
        match self {
            Conn::Admin(admin) => admin.id(),
            Conn::Probe(_, id, _) => *id,
        }
    }
}

impl Control {
    pub(super) fn next_id(&mut self) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        ConnId {
            slot: self.conns.vacant_key() as u32,
            generation: self.next_generation,
        }
    }

    /// Accepts admin connections, up to a turn's worth. When every slot is taken, the
    /// connection doing least makes room ([`AdminConn::eviction_rank`]), so idle or slow
    /// clients cannot lock a probe out. A new connection is served at once: its request is
    /// usually there already, and it is then no longer the idlest.
    pub(super) fn accept_admin(&mut self) {
        for _ in 0..http::ACCEPTS_PER_TURN {
            let Some(endpoint) = &mut self.admin else {
                return;
            };
            let (stream, addr) = match endpoint.accept() {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    if let Some(n) = self.accept_throttle.allow(self.now) {
                        warn!("admin accept failed: {e}{}", suppressed_note(n));
                    }
                    return;
                }
            };
            if endpoint.is_full() {
                let victim = endpoint
                    .open()
                    .iter()
                    .filter_map(|&id| match self.conns.get(id.slot as usize) {
                        Some(Conn::Admin(conn)) if conn.id() == id => Some(conn),
                        _ => None,
                    })
                    .min_by_key(|conn| conn.eviction_rank())
                    .map(AdminConn::id);
                if let Some(victim) = victim {
                    debug!("admin {addr}: every admin slot taken; closing the idlest");
                    self.end_conn(victim, None);
                }
            }
            let id = self.next_id();
            match AdminConn::new(
                id,
                stream,
                self.poll.registry(),
                &mut self.timers,
                TimerKey::Conn(id),
                self.now,
            ) {
                Ok(conn) => {
                    self.conns.insert(Conn::Admin(conn));
                    if let Some(endpoint) = &mut self.admin {
                        endpoint.added(id);
                    }
                    self.serve_admin(id);
                }
                Err(e) => debug!("admin {addr}: {e}"),
            }
        }
    }

    /// Runs an admin connection's handler; removes it once it is done.
    pub(super) fn serve_admin(&mut self, id: ConnId) {
        // The view borrows fields the connection does not live in.
        let view = View {
            fleet: &self.fleet,
            workers: &self.worker_stats,
            // After a hand-over (or during its probation), a request accepted before it is
            // answered for the service, which the newer process runs on: "draining" would
            // tell a health checker the service is going away.
            lifecycle: if self.upgrade.successor().is_some() {
                Lifecycle::Running
            } else {
                self.lifecycle
            },
            now: self.now,
            started: self.started,
            access_log_dropped: self.access_log.as_ref().map(AccessLog::dropped),
        };
        let (Some(Conn::Admin(conn)), Some(endpoint)) =
            (self.conns.get_mut(id.slot as usize), &mut self.admin)
        else {
            return;
        };
        if conn.id() == id
            && conn.on_ready(
                &view,
                endpoint.shared(),
                &mut self.timers,
                TimerKey::Conn(id),
            )
        {
            self.end_conn(id, None);
        }
    }

    pub(super) fn dispatch(&mut self, token: Token, event: &Event) {
        let (id, _) = ConnId::from_token(token);
        let finished = match self.conns.get_mut(id.slot as usize) {
            Some(conn) if conn.id() == id => match conn {
                Conn::Admin(_) => return self.serve_admin(id),
                Conn::Probe(probe, ..) => probe.on_ready(event).map(Some),
            },
            _ => return, // a late event for a connection that has ended
        };
        if let Some(probe_result) = finished {
            self.end_conn(id, probe_result);
        }
    }

    /// Ends a connection: its timer is cancelled; a probe's result goes to the fleet.
    pub(super) fn end_conn(&mut self, id: ConnId, probe_result: Option<io::Result<()>>) {
        match self.conns.remove(id.slot as usize) {
            Conn::Admin(conn) => {
                conn.finish(&mut self.timers);
                if let Some(endpoint) = &mut self.admin {
                    endpoint.removed(id);
                }
            }
            Conn::Probe(probe, _, timer) => {
                if let Some(timer) = timer {
                    self.timers.cancel(timer);
                }
                let result = probe_result.unwrap_or_else(|| Err(Probe::timed_out()));
                self.fleet
                    .probe_result(probe.backend(), &result, clock::millis(self.now));
                drop(probe);
                self.probes.ended();
                self.start_probes();
            }
        }
    }

    /// A connection's deadline: an admin connection's (it may still answer 408 first) or a
    /// probe's (it failed).
    pub(super) fn on_conn_timer(&mut self, id: ConnId) {
        let done = match self.conns.get_mut(id.slot as usize) {
            Some(Conn::Admin(conn)) if conn.id() == id => {
                conn.on_timer(&mut self.timers, TimerKey::Conn(id))
            }
            Some(Conn::Probe(_, probe_id, timer)) if *probe_id == id => {
                *timer = None;
                true
            }
            _ => false,
        };
        if done {
            self.end_conn(id, None);
        }
    }

    /// A round of probes is due: every backend that has no probe under way gets one, as
    /// slots free up.
    pub(super) fn health_round(&mut self) {
        let Some(policy) = self.fleet.policy().checks else {
            return;
        };
        // (Standing by too: this process may have to take over again.)
        if !self.lifecycle.may_serve() {
            return;
        }
        self.probes.round_due(&self.fleet);
        self.start_probes();
        self.timers
            .insert(self.now + policy.interval, TimerKey::HealthRound);
    }

    /// Starts the probes the schedule has room for. Out of descriptors, the backend waits
    /// for the next slot or round: that is not its failure.
    fn start_probes(&mut self) {
        if !self.lifecycle.is_running() {
            return;
        }
        let fleet = Arc::clone(&self.fleet);
        while let Some(backend) = self.probes.next(&fleet) {
            let id = self.next_id();
            match Probe::start(Arc::clone(&backend), self.poll.registry(), id.token(0)) {
                Ok(probe) => {
                    let timer = self
                        .timers
                        .insert(self.now + self.probe_timeout, TimerKey::Conn(id));
                    self.conns.insert(Conn::Probe(probe, id, Some(timer)));
                    self.probes.started();
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    self.probes.put_back();
                    if let Some(n) = self.fds_throttle.allow(self.now) {
                        warn!(
                            "cannot open a health check socket: {e}{}",
                            suppressed_note(n)
                        );
                    }
                    return;
                }
                Err(e) => fleet.probe_result(&backend, &Err(e), clock::millis(self.now)),
            }
        }
    }
}
