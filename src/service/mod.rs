//! Services, as the workers see them: a [`Service`] is what a listener's clients get (its
//! timeouts, retries, PROXY protocol, limit, and the pool its sessions go to), and a
//! [`Topology`] is one consistent view of every service and every pool's current fleet
//! generation, swapped whole (an `Arc`) on each worker when anything changes.
//!
//! A service's counters ([`ServiceStats`]) are its own `Arc`, kept by name across reloads,
//! so a reload that changes a service's settings does not reset what `/metrics` shows.
//! A service with `routes` has them compiled here ([`routes`]): the pool a TLS client's
//! ClientHello asks for is a hash lookup.

pub mod routes;

pub mod sources;

use crate::config::protection::{Class, Priority, SourceLimits};
use crate::fleet::backend::Backend;
use crate::fleet::lease::Lease;
use crate::fleet::{Fleet, PoolId, Verdict};
use crate::stats::{SESSION_BUCKETS, SharedHistogram, TlsInspect};
pub use routes::{Routing, Target};
use sources::Sources;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A service's number, stable while the service (by name) is configured; a removed
/// service's may be given to one added later.
pub type ServiceId = u32;

/// One service's settings, for the sessions of its clients.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: ServiceId,
    pub name: Arc<str>,
    /// Where it listens (as bound: a port 0 resolved).
    pub listen: Vec<std::net::SocketAddr>,
    /// Where its clients go (with `routing`: those no route takes); `None`: they are reset.
    pub pool: Option<Target>,
    /// Routes by the TLS ClientHello; `None`: the client's bytes are never looked at.
    pub routing: Option<Routing>,
    pub idle_timeout: Option<Duration>,
    /// Clients start with a PROXY protocol header, due within this long.
    pub accept_proxy: Option<Duration>,
    /// Its own limit of sessions at once.
    pub max_conns: Option<usize>,
    /// Its clients' classes by source (empty: all `normal`).
    pub priority: Priority,
    /// Per-source limits and the table that counts them (kept across reloads).
    pub sources: Option<(SourceLimits, Arc<Sources>)>,
    pub stats: Arc<ServiceStats>,
}

impl Service {
    /// The class of a client from `client` (after its PROXY protocol header, if any).
    pub fn class_of(&self, client: std::net::IpAddr) -> Class {
        if self.priority.is_empty() {
            Class::Normal
        } else {
            self.priority.class_of(client)
        }
    }

    /// Every pool it sends clients to: its own, then its routes' (a pool may repeat).
    pub fn pools(&self) -> impl Iterator<Item = PoolId> + '_ {
        let routes = self.routing.as_ref().map_or(&[][..], |r| r.routes());
        self.pool
            .iter()
            .map(|t| t.pool)
            .chain(routes.iter().map(|r| r.target.pool))
    }
}

/// A service's counters, summed over every worker (shared atomics: a service's clients
/// may land on any worker).
#[derive(Debug)]
#[repr(align(64))]
pub struct ServiceStats {
    /// Sessions open now (what the service's `max-conns` is checked against).
    pub active: AtomicUsize,
    pub accepted: AtomicU64,
    /// Clients closed at once: past the process's `max-conns`, past the service's own,
    /// or with the buffer pool nearly empty.
    pub shed_max_conns: AtomicU64,
    pub shed_service_max_conns: AtomicU64,
    pub shed_pool: AtomicU64,
    /// Clients closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Clients turned away because every backend was at its `maxconn` and the queue was
    /// off or full (or put out of it for a higher class).
    pub pool_full: AtomicU64,
    /// Clients turned away, for any of the reasons above, by class (`Class as usize`).
    pub shed_by_class: [AtomicU64; 3],
    /// Clients reset by the per-source limits.
    pub limited_conns: AtomicU64,
    pub limited_rate: AtomicU64,
    /// How long its sessions lasted, from accept to close.
    pub session_duration: SharedHistogram,
    /// With routes: what each client's first bytes turned out to be, by [`TlsInspect`].
    pub tls_inspect: [AtomicU64; TlsInspect::ALL.len()],
}

impl Default for ServiceStats {
    fn default() -> ServiceStats {
        ServiceStats {
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            shed_max_conns: AtomicU64::new(0),
            shed_service_max_conns: AtomicU64::new(0),
            shed_pool: AtomicU64::new(0),
            no_backend: AtomicU64::new(0),
            pool_full: AtomicU64::new(0),
            shed_by_class: Default::default(),
            limited_conns: AtomicU64::new(0),
            limited_rate: AtomicU64::new(0),
            session_duration: SharedHistogram::new(&SESSION_BUCKETS),
            tls_inspect: Default::default(),
        }
    }
}

impl ServiceStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Every service and every pool's current generation, by id.
#[derive(Debug, Default)]
pub struct Topology {
    generation: u32,
    /// Sessions at once for the process.
    max_conns: usize,
    services: Vec<Option<Arc<Service>>>,
    pools: Vec<Option<Arc<Fleet>>>,
}

impl Topology {
    pub fn new(
        generation: u32,
        max_conns: usize,
        services: impl IntoIterator<Item = Arc<Service>>,
        pools: impl IntoIterator<Item = Arc<Fleet>>,
    ) -> Topology {
        let mut topology = Topology {
            generation,
            max_conns,
            ..Topology::default()
        };
        for service in services {
            let slot = service.id as usize;
            if topology.services.len() <= slot {
                topology.services.resize(slot + 1, None);
            }
            topology.services[slot] = Some(service);
        }
        for fleet in pools {
            let slot = fleet.pool() as usize;
            if topology.pools.len() <= slot {
                topology.pools.resize(slot + 1, None);
            }
            topology.pools[slot] = Some(fleet);
        }
        topology
    }

    /// Which generation this is (counts every change of any service or pool).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Sessions at once for the process (`max-conns` of `[global]`).
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    pub fn service(&self, id: ServiceId) -> Option<&Arc<Service>> {
        self.services.get(id as usize)?.as_ref()
    }

    pub fn pool(&self, id: PoolId) -> Option<&Arc<Fleet>> {
        self.pools.get(id as usize)?.as_ref()
    }

    /// Every service, by id.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter().flatten()
    }

    /// Every pool's current generation, by id.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Fleet>> {
        self.pools.iter().flatten()
    }

    /// The pool called `name`.
    pub fn pool_named(&self, name: &str) -> Option<&Arc<Fleet>> {
        self.pools().find(|f| &**f.name() == name)
    }

    /// The current generation of `backend`'s pool, if the pool is still configured.
    fn pool_of(&self, backend: &Backend) -> Option<&Arc<Fleet>> {
        self.pool(backend.pool)
    }

    /// Ends a lease (see [`Fleet::release`]); a lease of a pool since removed just ends.
    pub fn release(&self, lease: Lease, now: u64) {
        match self.pool_of(lease.backend()) {
            Some(fleet) => fleet.release(lease, now),
            None => drop(lease),
        }
    }

    /// See [`Fleet::connect_succeeded`].
    pub fn connect_succeeded(&self, lease: &mut Lease, now: u64) -> bool {
        match self.pool_of(lease.backend()) {
            Some(fleet) => fleet.connect_succeeded(lease, now),
            None => {
                lease.settle_trial();
                false
            }
        }
    }

    /// See [`Fleet::connect_failed`].
    pub fn connect_failed(&self, lease: &mut Lease, now: u64, error: &io::Error) -> Verdict {
        match self.pool_of(lease.backend()) {
            Some(fleet) => fleet.connect_failed(lease, now, error),
            None => {
                lease.settle_trial();
                Verdict::Noted
            }
        }
    }

    /// See [`Fleet::refresh`].
    pub fn refresh(&self, backend: &Backend, now: u64) {
        if let Some(fleet) = self.pool_of(backend) {
            fleet.refresh(backend, now);
        }
    }

    /// The services whose sessions go to `pool`.
    pub fn services_of(&self, pool: PoolId) -> impl Iterator<Item = &Arc<Service>> {
        self.services()
            .filter(move |s| s.pools().any(|p| p == pool))
    }
}

/// A [`Service`] with test settings: a 5 s connect timeout, no idle timeout.
#[cfg(test)]
pub fn for_tests(retries: u32, accept_proxy: Option<Duration>) -> Arc<Service> {
    Arc::new(Service {
        id: 0,
        name: Arc::from("default"),
        listen: Vec::new(),
        pool: Some(Target {
            pool: 0,
            connect_timeout: Duration::from_secs(5),
            retries,
        }),
        routing: None,
        idle_timeout: None,
        accept_proxy,
        max_conns: None,
        priority: Priority::default(),
        sources: None,
        stats: Arc::default(),
    })
}
