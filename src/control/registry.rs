//! The services the process runs, by name: each one's id (stable while it is configured),
//! its counters (kept across reloads), the spec it was built from and the [`Service`] the
//! workers use. A reload asks it what a service's spec turns into.

use crate::config::{PoolSpec, ServiceSpec};
use crate::fleet::PoolId;
use crate::service::sources::Sources;
use crate::service::{Service, ServiceId, ServiceStats};
use std::net::SocketAddr;
use std::sync::Arc;

/// One configured service.
pub struct Entry {
    pub spec: ServiceSpec,
    pub service: Arc<Service>,
}

/// What a service keeps across reloads: its counters, and its sources' counts.
#[derive(Clone, Default)]
pub struct Kept {
    pub stats: Arc<ServiceStats>,
    pub sources: Option<Arc<Sources>>,
}

#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    free_ids: Vec<ServiceId>,
    next_id: ServiceId,
}

/// What a service's sessions get: its own settings, and its pool's where it has none.
pub fn build(
    id: ServiceId,
    spec: &ServiceSpec,
    pool: (PoolId, &PoolSpec),
    listen: Vec<SocketAddr>,
    kept: Kept,
) -> Arc<Service> {
    let (pool_id, pool) = pool;
    // The table outlives a change of limits (its counts are of sessions still open); a
    // new size applies as sources come.
    let sources = spec.source_limits.map(|limits| {
        let table = match kept.sources {
            Some(table) => {
                table.resize(limits.table_size);
                table
            }
            None => Arc::new(Sources::new(limits.table_size)),
        };
        (limits, table)
    });
    Arc::new(Service {
        id,
        name: Arc::from(spec.name.as_str()),
        listen,
        pool: pool_id,
        connect_timeout: spec.connect_timeout.unwrap_or(pool.connect_timeout),
        retries: spec.retries.unwrap_or(pool.retries),
        idle_timeout: spec.idle_timeout,
        accept_proxy: spec.accept_proxy,
        max_conns: spec.max_conns,
        priority: spec.priority.clone(),
        sources,
        stats: kept.stats,
    })
}

/// Whether two builds of a service give its sessions the same settings.
fn same_settings(a: &Service, b: &Service) -> bool {
    a.pool == b.pool
        && a.listen == b.listen
        && a.connect_timeout == b.connect_timeout
        && a.retries == b.retries
        && a.idle_timeout == b.idle_timeout
        && a.accept_proxy == b.accept_proxy
        && a.max_conns == b.max_conns
        && a.priority == b.priority
        && a.sources.as_ref().map(|(l, _)| l) == b.sources.as_ref().map(|(l, _)| l)
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.spec.name == name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Every service the workers use.
    pub fn services(&self) -> impl Iterator<Item = Arc<Service>> + '_ {
        self.entries.iter().map(|e| Arc::clone(&e.service))
    }

    /// Adds a service listening on `listen`; returns it.
    pub fn add(
        &mut self,
        spec: &ServiceSpec,
        pool: (PoolId, &PoolSpec),
        listen: Vec<SocketAddr>,
    ) -> Arc<Service> {
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        let service = build(id, spec, pool, listen, Kept::default());
        self.entries.push(Entry {
            spec: spec.clone(),
            service: Arc::clone(&service),
        });
        service
    }

    /// Makes `spec` the service's spec. Returns the service if its sessions' settings
    /// changed (a new [`Service`], same id and counters); `None` keeps the one the workers
    /// have.
    pub fn update(
        &mut self,
        spec: &ServiceSpec,
        pool: (PoolId, &PoolSpec),
        listen: Vec<SocketAddr>,
    ) -> Option<Arc<Service>> {
        let entry = self.entries.iter_mut().find(|e| e.spec.name == spec.name)?;
        let service = build(
            entry.service.id,
            spec,
            pool,
            listen,
            Kept {
                stats: Arc::clone(&entry.service.stats),
                sources: entry.service.sources.as_ref().map(|(_, t)| Arc::clone(t)),
            },
        );
        entry.spec = spec.clone();
        if same_settings(&service, &entry.service) {
            return None;
        }
        entry.service = Arc::clone(&service);
        Some(service)
    }

    /// Removes a service; returns it (its live sessions still use it).
    pub fn remove(&mut self, name: &str) -> Option<Arc<Service>> {
        let i = self.entries.iter().position(|e| e.spec.name == name)?;
        let entry = self.entries.swap_remove(i);
        self.free_ids.push(entry.service.id);
        Some(entry.service)
    }
}
