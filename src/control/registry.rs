//! The services the process runs, by name: each one's id (stable while it is configured),
//! its counters (kept across reloads), the spec it was built from and the [`Service`] the
//! workers use. A reload asks it what a service's spec turns into.

use crate::config::{PoolSpec, ServiceSpec};
use crate::fleet::PoolId;
use crate::service::routes::Route;
use crate::service::sources::Sources;
use crate::service::{Routing, Service, ServiceId, ServiceStats, Target};
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

/// Finds a pool by name: its id and spec (the pools of the config being applied).
pub type PoolLookup<'a> = dyn Fn(&str) -> Option<(PoolId, &'a PoolSpec)> + 'a;

/// What a service's sessions get: its own settings, and each pool's where it has none.
/// `None` if a pool it names is not found (the config was validated: it is).
pub fn build(
    id: ServiceId,
    spec: &ServiceSpec,
    pools: &PoolLookup,
    listen: Vec<SocketAddr>,
    kept: Kept,
) -> Option<Arc<Service>> {
    let target = |name: &str| {
        let (pool_id, pool) = pools(name)?;
        Some(Target {
            pool: pool_id,
            connect_timeout: spec.connect_timeout.unwrap_or(pool.connect_timeout),
            retries: spec.retries.unwrap_or(pool.retries),
        })
    };
    let pool = match &spec.pool {
        Some(name) => Some(target(name)?),
        None => None,
    };
    let routing = match &spec.routing {
        None => None,
        Some(r) => {
            let routes = r
                .routes
                .iter()
                .map(|route| {
                    Some(Route {
                        sni: route.sni.clone(),
                        alpn: route.alpn.clone(),
                        target: target(&route.pool)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Routing::new(routes, r.sni_timeout, r.max_hello))
        }
    };
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
    Some(Arc::new(Service {
        id,
        name: Arc::from(spec.name.as_str()),
        listen,
        pool,
        routing,
        idle_timeout: spec.idle_timeout,
        accept_proxy: spec.accept_proxy,
        max_conns: spec.max_conns,
        priority: spec.priority.clone(),
        sources,
        stats: kept.stats,
    }))
}

/// Whether two builds of a service give its sessions the same settings.
fn same_settings(a: &Service, b: &Service) -> bool {
    a.pool == b.pool
        && a.routing == b.routing
        && a.listen == b.listen
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

    /// Adds a service listening on `listen`; returns it (`None`, and nothing added, if a
    /// pool it names is not in `pools`).
    pub fn add(
        &mut self,
        spec: &ServiceSpec,
        pools: &PoolLookup,
        listen: Vec<SocketAddr>,
    ) -> Option<Arc<Service>> {
        let id = self.free_ids.last().copied().unwrap_or(self.next_id);
        let service = build(id, spec, pools, listen, Kept::default())?;
        if self.free_ids.pop().is_none() {
            self.next_id += 1;
        }
        self.entries.push(Entry {
            spec: spec.clone(),
            service: Arc::clone(&service),
        });
        Some(service)
    }

    /// Makes `spec` the service's spec. Returns the service if its sessions' settings
    /// changed (a new [`Service`], same id and counters); `None` keeps the one the workers
    /// have.
    pub fn update(
        &mut self,
        spec: &ServiceSpec,
        pools: &PoolLookup,
        listen: Vec<SocketAddr>,
    ) -> Option<Arc<Service>> {
        let entry = self.entries.iter_mut().find(|e| e.spec.name == spec.name)?;
        let service = build(
            entry.service.id,
            spec,
            pools,
            listen,
            Kept {
                stats: Arc::clone(&entry.service.stats),
                sources: entry.service.sources.as_ref().map(|(_, t)| Arc::clone(t)),
            },
        )?;
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
