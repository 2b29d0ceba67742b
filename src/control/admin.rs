//! The admin endpoint's connections on the control thread: accepted with eviction when
//! every slot is taken (so idle or slow clients cannot lock an operator out), served from a
//! [`View`](crate::admin::View) of the process, and ended at their deadline.

use crate::admin::http::{self, AdminConn, Endpoint};
use crate::control::{Control, TimerKey};
use crate::reactor::ConnId;
use crate::reactor::{Throttle, suppressed_note};
use log::{debug, warn};
use mio::Registry;
use slab::Slab;

/// The admin listener and its connections.
pub(super) struct AdminConns {
    endpoint: Option<Endpoint>,
    conns: Slab<AdminConn>,
    next_generation: u32,
    accept_throttle: Throttle,
}

impl AdminConns {
    pub(super) fn new(endpoint: Option<Endpoint>) -> AdminConns {
        AdminConns {
            endpoint,
            conns: Slab::new(),
            next_generation: 0,
            accept_throttle: Throttle::default(),
        }
    }

    pub(super) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// The listening socket's descriptor, for an upgrade to hand over.
    pub(super) fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        self.endpoint.as_ref().and_then(Endpoint::listener_fd)
    }

    /// After an upgrade handed over: the newer process answers from now on.
    pub(super) fn stop_listening(&mut self, registry: &Registry) {
        if let Some(endpoint) = &mut self.endpoint {
            endpoint.stop_listening(registry);
        }
    }

    /// An upgrade's probation: stop accepting, keep the socket.
    pub(super) fn pause(&mut self, registry: &Registry) {
        if let Some(endpoint) = &mut self.endpoint {
            endpoint.pause(registry);
        }
    }

    /// Accept again after [`AdminConns::pause`].
    pub(super) fn resume(&mut self, registry: &Registry, token: mio::Token) -> std::io::Result<()> {
        match &mut self.endpoint {
            Some(endpoint) => endpoint.resume(registry, token),
            None => Ok(()),
        }
    }

    pub(super) fn set_ready(&mut self) {
        if let Some(endpoint) = &mut self.endpoint {
            endpoint.set_ready();
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        self.endpoint.as_ref().is_some_and(Endpoint::is_ready)
    }

    fn next_id(&mut self) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        ConnId {
            slot: self.conns.vacant_key() as u32,
            generation: self.next_generation,
        }
    }

    /// Whether `id` names an open connection.
    fn is_open(&self, id: ConnId) -> bool {
        self.conns
            .get(id.slot as usize)
            .is_some_and(|c| c.id() == id)
    }
}

impl Control {
    /// Accepts admin connections, up to a turn's worth. When every slot is taken, the
    /// connection doing least makes room ([`AdminConn::eviction_rank`]). A new connection is
    /// served at once: its request is usually there already.
    pub(super) fn accept_admin(&mut self) {
        for _ in 0..http::ACCEPTS_PER_TURN {
            let admin = &mut self.admin;
            let Some(endpoint) = &mut admin.endpoint else {
                return;
            };
            let (stream, addr) = match endpoint.accept() {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    if let Some(n) = admin.accept_throttle.allow(self.now) {
                        warn!("admin accept failed: {e}{}", suppressed_note(n));
                    }
                    return;
                }
            };
            if endpoint.is_full() {
                let victim = endpoint
                    .open()
                    .iter()
                    .filter_map(|&id| admin.conns.get(id.slot as usize).filter(|c| c.id() == id))
                    .min_by_key(|conn| conn.eviction_rank())
                    .map(AdminConn::id);
                if let Some(victim) = victim {
                    debug!("admin {addr}: every admin slot taken; closing the idlest");
                    self.end_admin(victim);
                }
            }
            let id = self.admin.next_id();
            match AdminConn::new(
                id,
                stream,
                self.poll.registry(),
                &mut self.timers,
                TimerKey::Admin(id),
                self.now,
            ) {
                Ok(conn) => {
                    self.admin.conns.insert(conn);
                    if let Some(endpoint) = &mut self.admin.endpoint {
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
        if !self.admin.is_open(id) {
            return; // a late event for a connection that has ended
        }
        // The view borrows fields the connections do not live in.
        let view = super::view!(self);
        let admin = &mut self.admin;
        let (Some(conn), Some(endpoint)) =
            (admin.conns.get_mut(id.slot as usize), &mut admin.endpoint)
        else {
            return;
        };
        let done = conn.on_ready(
            &view,
            endpoint.shared(),
            &mut self.timers,
            TimerKey::Admin(id),
        );
        if done {
            self.end_admin(id);
        }
    }

    /// Ends an admin connection: its timer is cancelled, its slot freed.
    fn end_admin(&mut self, id: ConnId) {
        if !self.admin.is_open(id) {
            return;
        }
        let conn = self.admin.conns.remove(id.slot as usize);
        conn.finish(&mut self.timers);
        if let Some(endpoint) = &mut self.admin.endpoint {
            endpoint.removed(id);
        }
    }

    /// An admin connection's deadline (it may still answer 408 first).
    pub(super) fn on_admin_timer(&mut self, id: ConnId) {
        let done = match self.admin.conns.get_mut(id.slot as usize) {
            Some(conn) if conn.id() == id => conn.on_timer(&mut self.timers, TimerKey::Admin(id)),
            _ => false,
        };
        if done {
            self.end_admin(id);
        }
    }
}
