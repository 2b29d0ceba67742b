//! `/backends`: every pool with the services that use it and every backend (draining ones
//! too) with its state (and why it is not up), weight, counters and runtime state (what
//! `tcplb ctl` set, what the last health check and agent check said: `tcplb ctl show
//! backends`' fields), as JSON:
//!
//! ```json
//! {"services": [{"name": "web", "pool": "web", "listen": ["0.0.0.0:80"], "active": 3, ...}],
//!  "pools": [{"name": "web", "balance": "least-active", "services": ["web"],
//!             "backends": [{"address": "10.0.0.11:80", "state": "up", ...}]}]}
//! ```

use crate::admin::View;
use crate::admin::json::json_string;
use crate::clock;
use crate::fleet::Fleet;
use crate::fleet::backend::{Backend, BackendStats as Stat, State};
use crate::fleet::health::BreakerState;
use crate::service::{Service, ServiceStats};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Renders the whole document.
pub fn render(view: &View, out: &mut String) {
    out.push_str("{\"services\": [");
    for (i, service) in view.topology.services().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n  {");
        service_members(view, service, out);
        out.push('}');
    }
    out.push_str("\n],\n\"pools\": [");
    for (i, fleet) in view.topology.pools().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n {");
        pool_members(view, fleet, out);
        out.push_str(", \"backends\": [");
        for (i, b) in fleet.backends().chain(fleet.draining()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("\n  {");
            backend_members(view, fleet, b, out);
            out.push('}');
        }
        out.push_str("\n ]}");
    }
    out.push_str("\n]}\n");
}

/// A service's members (without the braces): name, pool, listeners, counters, limits.
/// Shared with the dashboard's `/api/stats`, which adds its rates and history.
pub fn service_members(view: &View, service: &Service, out: &mut String) {
    let listen: Vec<String> = service
        .listen
        .iter()
        .map(|a| json_string(&a.to_string()))
        .collect();
    let pool = service
        .pool
        .and_then(|t| view.topology.pool(t.pool))
        .map_or_else(|| "null".to_string(), |f| json_string(f.name()));
    let stats = &service.stats;
    let _ = write!(
        out,
        "\"name\": {}, \"pool\": {pool}, \"listen\": [{}], \"active\": {}, \
         \"accepted_total\": {}, \"no_backend_total\": {}, \"pool_full_total\": {}, \
         \"limits\": {}",
        json_string(&service.name),
        listen.join(", "),
        stats.active.load(Ordering::Relaxed),
        ServiceStats::get(&stats.accepted),
        ServiceStats::get(&stats.no_backend),
        ServiceStats::get(&stats.pool_full),
        limits(service),
    );
}

/// A service's per-source limits and priority rules, as JSON (`null`: none).
fn limits(service: &Service) -> String {
    let mut out = String::from("{");
    if let Some((limits, table)) = &service.sources {
        let _ = write!(
            out,
            "\"max_conns_per_source\": {}, \"conn_rate_per_source\": {}, \
             \"source_prefix\": {{\"v4\": {}, \"v6\": {}}}, \"sources\": {}, \
             \"limited_total\": {{\"per_source_conns\": {}, \"per_source_rate\": {}}}",
            limits
                .max_conns
                .map_or_else(|| "null".to_string(), |n| n.to_string()),
            limits
                .rate
                .map_or_else(|| "null".to_string(), |r| json_string(&r.to_string())),
            limits.prefix_v4,
            limits.prefix_v6,
            table.len(),
            ServiceStats::get(&service.stats.limited_conns),
            ServiceStats::get(&service.stats.limited_rate),
        );
    }
    if !service.priority.is_empty() {
        if out.len() > 1 {
            out.push_str(", ");
        }
        let rules: Vec<String> = service
            .priority
            .rules
            .iter()
            .map(|(block, class)| {
                format!(
                    "{{\"source\": {}, \"class\": \"{}\"}}",
                    json_string(&block.to_string()),
                    class.as_str()
                )
            })
            .collect();
        let _ = write!(out, "\"priority\": [{}]", rules.join(", "));
    }
    if out.len() == 1 {
        return "null".to_string();
    }
    out.push('}');
    out
}

/// A pool's members (without the braces and its backends): its settings, the services
/// that use it, its queue. Shared with `/api/stats`.
pub fn pool_members(view: &View, fleet: &Fleet, out: &mut String) {
    let balance = fleet.balance_name();
    let services: Vec<String> = view
        .topology
        .services_of(fleet.pool())
        .map(|s| json_string(&s.name))
        .collect();
    let queue = fleet.queue();
    let settings = queue.settings();
    let [low, normal, high] = queue.by_class();
    let _ = write!(
        out,
        "\"name\": {}, \"balance\": \"{balance}\", \"services\": [{}], \
         \"queue\": {{\"size\": {}, \"timeout_ms\": {}, \"waiting\": {}, \
         \"waiting_by_class\": {{\"high\": {high}, \"normal\": {normal}, \"low\": {low}}}, \
         \"timeouts_total\": {}}}",
        json_string(fleet.name()),
        services.join(", "),
        settings.size,
        settings.timeout.as_millis(),
        low + normal + high,
        queue.stats.timeouts.load(Ordering::Relaxed),
    );
}

/// One backend's members (without the braces): identity, state and why it is not up,
/// weight, counters. Shared with `/api/stats`.
pub fn backend_members(view: &View, fleet: &Fleet, b: &Backend, out: &mut String) {
    let now = clock::millis(view.now);
    let checks = match (fleet.policy().checks.is_some(), b.checks_up()) {
        (false, _) => "off",
        (true, true) => "up",
        (true, false) => "down",
    };
    let _ = write!(
        out,
        "\"pool\": {}, \"address\": {}, \"name\": {}, \"weight\": {}, \
         \"backup\": {}, \"send_proxy\": {}, \"balance\": \"{}\", \
         \"state\": \"{}\", \"reason\": {}, \"health_checks\": \"{checks}\", \"active\": {}, \
         \"connections_total\": {}, \"connect_failures_total\": {}, \
         \"consecutive_failures\": {}, \"bytes_sent\": {}, \"bytes_received\": {}, \
         \"latency_ms\": {}, \"maxconn\": {}, {}",
        json_string(fleet.name()),
        json_string(&b.addr.to_string()),
        json_string(&b.name),
        b.weight(),
        b.is_backup(),
        b.send_proxy()
            .map_or("null", |v| if v == crate::proxy_protocol::Version::V1 {
                "\"v1\""
            } else {
                "\"v2\""
            }),
        fleet.balance_name(),
        b.state(now).as_str(),
        reason(b, now).map_or_else(|| "null".to_string(), |r| json_string(&r)),
        b.active(),
        Stat::get(&b.stats.sessions),
        Stat::get(&b.stats.connect_failures),
        b.breaker().consecutive_failures(),
        Stat::get(&b.stats.bytes_sent),
        Stat::get(&b.stats.bytes_received),
        match b.latency.estimate_ns() {
            0 => "null".to_string(),
            ns => format!("{:.3}", ns as f64 / 1e6),
        },
        b.maxconn()
            .map_or_else(|| "null".to_string(), |m| m.to_string()),
        super::show::runtime_members(fleet, b, now),
    );
}

/// Why a backend does not take sessions as usual, in words (`None` while it is up): the
/// one place the dashboard and `/backends` get it from.
pub fn reason(b: &Backend, now: u64) -> Option<String> {
    let breaker = b.breaker();
    let fails = breaker.consecutive_failures();
    match b.state(now) {
        State::Up => None,
        State::Draining => Some("removed from the pool: finishing its sessions".to_string()),
        State::Down if !b.checks_up() => Some(match b.notes().check {
            Some(last) => format!("health checks failing: {last}"),
            None => "health checks failing".to_string(),
        }),
        State::Drain | State::Maint => {
            let (what, after) = if b.state(now) == State::Drain {
                ("drain", "no new sessions, live ones go on")
            } else {
                ("maint", "no new sessions, no health checks")
            };
            let who = if b.admin().as_str() == what {
                "set by the operator (tcplb ctl)"
            } else {
                "said by its agent"
            };
            Some(format!("{what}, {who}: {after}"))
        }
        State::Down => Some(match breaker.state() {
            BreakerState::Down { until } => format!(
                "circuit breaker open: {fails} connect{} failed in a row; next try in {:.1}s",
                if fails == 1 { "" } else { "s" },
                until.saturating_sub(now) as f64 / 1000.0
            ),
            _ => "circuit breaker open".to_string(),
        }),
        State::HalfOpen { trial: true } => {
            Some("circuit breaker half-open: a trial session is under way".to_string())
        }
        State::HalfOpen { trial: false } => {
            Some("circuit breaker half-open: the next session is a trial".to_string())
        }
    }
}
