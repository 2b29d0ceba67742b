//! Accepting clients on a worker: up to a turn's worth per turn, each admitted as a session
//! of its listener's service or shed at once (past `max-conns` for the whole process or for
//! the service, or when this worker's buffer pool is nearly empty; a `low`-class client
//! sooner, at 90% of a limit or 10% of the buffers left); out of descriptors, accepting
//! pauses without spinning.

use crate::config::protection::Class;
use crate::net;
use crate::reactor::suppressed_note;
use crate::service::{Service, ServiceId, ServiceStats};
use crate::stats::{EndReason, SessionSummary};
use crate::worker::session::{Rejected, Session};
use crate::worker::{TimerKey, Worker, lend_env};
use log::{debug, warn};
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Clients accepted per turn before the loop serves the sessions it has.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after running out of descriptors (unless a session ends first).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// New clients are shed when fewer than 1/SHED_POOL_FRACTION of the buffers are free.
const SHED_POOL_FRACTION: usize = 20;
/// Low-class clients are shed when fewer than 1/LOW_SHED_POOL_FRACTION are free...
const LOW_SHED_POOL_FRACTION: usize = 10;
/// ... and past a limit less 1/LOW_RESERVE of it.
const LOW_RESERVE: usize = 10;

impl Worker {
    /// Accepts waiting clients on every listener with some, up to a turn's worth each.
    pub(super) fn accept_clients(&mut self) {
        let mut still_ready = false;
        let ready: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.ready)
            .map(|(key, _)| key)
            .collect();
        for i in ready {
            self.accept_on(i);
            if self.accept_paused || self.closed {
                // Stopped for lack of descriptors (or the listeners closed): the flags left
                // set say where to go on.
                return;
            }
            still_ready |= self.listeners.get(i).is_some_and(|l| l.ready);
        }
        self.listener_ready = still_ready;
    }

    /// Accepts waiting clients on listener `i`, up to a turn's worth; clears its ready flag
    /// once it has none left.
    fn accept_on(&mut self, i: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let service = listener.service;
            match listener.socket.accept() {
                Ok((stream, addr)) => {
                    if self.admit(stream, addr, service) == Some(EndReason::NoResources) {
                        self.pause_accepting();
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[i].ready = false;
                    return;
                }
                Err(e) if net::is_transient_accept_error(&e) => {}
                Err(e) => {
                    self.stats.accept_errors.add(1);
                    if let Some(n) = self.throttles.accept.allow(self.now) {
                        warn!(
                            "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?}{}",
                            suppressed_note(n)
                        );
                    }
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    pub(super) fn pause_accepting(&mut self) {
        if !self.accept_paused {
            self.accept_paused = true;
            self.resume_accept_timer = Some(
                self.timers
                    .insert(self.now + ACCEPT_PAUSE, TimerKey::ResumeAccept),
            );
        }
    }

    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused = false;
        if let Some(timer) = self.resume_accept_timer.take() {
            self.timers.cancel(timer);
        }
    }

    /// Turns a new client of `service` into a session, or sheds it: past the process's or
    /// the service's `max-conns`, or when the buffer pool is nearly empty (a session
    /// admitted then could not move bytes). Returns why the client was turned away, if it
    /// was.
    fn admit(
        &mut self,
        client: TcpStream,
        addr: SocketAddr,
        service: ServiceId,
    ) -> Option<EndReason> {
        self.stats.accepted.add(1);
        let Some(service) = self.topology.service(service).map(Arc::clone) else {
            // A listener whose service this worker's view no longer has (a removal racing
            // this accept): nobody serves it.
            net::reset_on_close(&client);
            return Some(EndReason::Shutdown);
        };
        let stats = &service.stats;
        ServiceStats::add(&stats.accepted, 1);
        let open = self.shared.sessions.fetch_add(1, Ordering::AcqRel);
        let service_open = stats.active.fetch_add(1, Ordering::AcqRel);
        // A low-class client is turned away first: past 90% of a limit, or with fewer
        // than 10% of the buffers free; the others keep the rest.
        let low = service.class_of(addr.ip()) == Class::Low;
        let limit = |max: usize| if low { max - max / LOW_RESERVE } else { max };
        let pool_fraction = if low {
            LOW_SHED_POOL_FRACTION
        } else {
            SHED_POOL_FRACTION
        };
        let shed = if open >= limit(self.topology.max_conns()) {
            self.stats.shed_max_conns.add(1);
            ServiceStats::add(&stats.shed_max_conns, 1);
            Some(EndReason::ShedMaxConns)
        } else if service
            .max_conns
            .is_some_and(|max| service_open >= limit(max))
        {
            self.stats.shed_max_conns.add(1);
            ServiceStats::add(&stats.shed_service_max_conns, 1);
            Some(EndReason::ShedMaxConns)
        } else if self.pool.free() * pool_fraction < self.pool.capacity() {
            self.stats.shed_pool.add(1);
            ServiceStats::add(&stats.shed_pool, 1);
            Some(EndReason::ShedPool)
        } else {
            None
        };
        if let Some(reason) = shed {
            self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
            stats.active.fetch_sub(1, Ordering::AcqRel);
            debug!("{addr}: {}, {open} sessions open", reason.as_str());
            if let Some(n) = self.throttles.shed.allow(self.now) {
                warn!(
                    "shedding new clients ({}): {open} sessions open, {} of {} buffers free on \
                     worker {}{}",
                    reason.as_str(),
                    self.pool.free(),
                    self.pool.capacity(),
                    self.index,
                    suppressed_note(n)
                );
            }
            net::reset_on_close(&client);
            self.record_refused(addr, &service, reason, 0);
            return Some(reason);
        }
        let id = self.next_id();
        match Session::start(id, client, addr, Arc::clone(&service), &mut lend_env!(self)) {
            Ok(session) => {
                self.sessions.insert(session);
                self.stats.sessions.set(self.sessions.len() as u64);
                None
            }
            Err(Rejected {
                client,
                reason,
                summary,
            }) => {
                self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
                service.stats.active.fetch_sub(1, Ordering::AcqRel);
                // Counted before the client is closed: whoever sees the close sees the count.
                match summary {
                    Some(summary) => self.record(&summary, Some(&service), reason),
                    None => self.record_refused(addr, &service, reason, 0),
                }
                drop(client);
                Some(reason)
            }
        }
    }

    /// A client closed before it became a session (shed, or no backend).
    fn record_refused(
        &mut self,
        client: SocketAddr,
        service: &Service,
        reason: EndReason,
        attempts: u32,
    ) {
        let summary = SessionSummary {
            service: Arc::clone(&service.name),
            client_addr: client,
            backend: None,
            connect_time: None,
            first_response: None,
            duration: Duration::ZERO,
            bytes_up: 0,
            bytes_down: 0,
            retries: attempts.saturating_sub(1),
            class: service.class_of(client.ip()),
            queue_wait: None,
            tls: None,
        };
        self.record(&summary, Some(service), reason);
    }
}
