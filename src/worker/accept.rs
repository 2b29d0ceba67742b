//! Accepting clients on a worker: up to a turn's worth per turn, each admitted as a session
//! or shed at once (past `--max-conns` for the whole process, or when this worker's buffer
//! pool is nearly empty); out of descriptors, accepting pauses without spinning.

use crate::logging::suppressed_note;
use crate::net;
use crate::stats::{EndReason, SessionSummary};
use crate::worker::session::{Rejected, Session};
use crate::worker::{TimerKey, Worker, lend_env};
use log::{debug, warn};
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Clients accepted per turn before the loop serves the sessions it has.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after running out of descriptors (unless a session ends first).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// New clients are shed when fewer than 1/SHED_POOL_FRACTION of the buffers are free.
const SHED_POOL_FRACTION: usize = 20;

impl Worker {
    /// Accepts waiting clients on every listener with some, up to a turn's worth each.
    pub(super) fn accept_clients(&mut self) {
        let mut still_ready = false;
        for i in 0..self.listeners.len() {
            if self.listeners[i].ready {
                self.accept_on(i);
            }
            if self.accept_paused || self.listeners.is_empty() {
                // Stopped for lack of descriptors (or the listeners closed): the flags left
                // set say where to go on.
                return;
            }
            still_ready |= self.listeners[i].ready;
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
            match listener.socket.accept() {
                Ok((stream, addr)) => {
                    if self.admit(stream, addr) == Some(EndReason::NoResources) {
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

    /// Turns a new client into a session, or sheds it: past `--max-conns`, or when the
    /// buffer pool is nearly empty (a session admitted then could not move bytes). Returns
    /// why the client was turned away, if it was.
    fn admit(&mut self, client: TcpStream, addr: SocketAddr) -> Option<EndReason> {
        self.stats.accepted.add(1);
        let open = self.shared.sessions.fetch_add(1, Ordering::AcqRel);
        let shed = if open >= self.settings.max_conns {
            self.stats.shed_max_conns.add(1);
            Some(EndReason::ShedMaxConns)
        } else if self.pool.free() * SHED_POOL_FRACTION < self.pool.capacity() {
            self.stats.shed_pool.add(1);
            Some(EndReason::ShedPool)
        } else {
            None
        };
        if let Some(reason) = shed {
            self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
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
            self.record_refused(addr, reason, 0);
            return Some(reason);
        }
        let id = self.next_id();
        match Session::start(id, client, addr, &mut lend_env!(self)) {
            Ok(session) => {
                self.sessions.insert(session);
                self.stats.sessions.set(self.sessions.len() as u64);
                None
            }
            Err(Rejected {
                client,
                reason,
                attempts,
            }) => {
                self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
                drop(client);
                self.record_refused(addr, reason, attempts);
                Some(reason)
            }
        }
    }

    /// A client closed before it became a session (shed, or no backend).
    fn record_refused(&mut self, client: SocketAddr, reason: EndReason, attempts: u32) {
        let summary = SessionSummary {
            client_addr: client,
            backend: None,
            connect_time: None,
            duration: Duration::ZERO,
            bytes_up: 0,
            bytes_down: 0,
            retries: attempts.saturating_sub(1),
        };
        self.record(&summary, reason);
    }
}
