//! The dashboard's JSON (documented in docs/observability.md):
//!
//! - `GET /api/stats`: the version and the process; every service and pool with the members
//!   `/backends` gives them (the same functions write them), plus their current rates and
//!   their history; every backend with `/backends`' members plus its `id` and current rates
//!   (a backend's history would make the document megabytes with a large fleet: it is
//!   asked for one backend at a time).
//! - `GET /api/history?backend=ID`: one backend's history.
//!
//! A history is an object of series, each an array of numbers oldest first, the newest
//! taken at `history.last_unix_ms`, one every `history.interval_ms`; `null` where a value
//! is missing. Written by hand like the other admin documents (no serializer).

use crate::admin::View;
use crate::admin::backends::{backend_members, pool_members, service_members};
use crate::admin::history::{
    self, BACKEND_SERIES, POOL_SERIES, PROCESS_SERIES, SERVICE_SERIES, STATES, Track,
};
use crate::admin::json::json_string;
use crate::service::ServiceStats;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many of the newest samples a current percentile may come from (an interval without
/// connects has none): a minute's worth.
const RECENT: usize = 30;

/// Renders `/api/stats`.
pub fn render(view: &View, out: &mut String) {
    let history = view.history;
    let _ = writeln!(
        out,
        "{{\"version\": {{\"version\": {}, \"commit\": {}, \"built\": {}}},",
        json_string(crate::version::VERSION),
        json_string(crate::version::COMMIT),
        json_string(crate::version::BUILD_DATE),
    );
    process(view, out);
    let _ = write!(
        out,
        ",\n\"history\": {{\"interval_ms\": {}, \"capacity\": {}, \"last_unix_ms\": {}, \
         \"backend_states\": [{}], \"process\": ",
        history::INTERVAL.as_millis(),
        history::SAMPLES,
        history
            .last_wall
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or_else(|| "null".to_string(), |d| d.as_millis().to_string()),
        STATES.map(|s| format!("\"{s}\"")).join(", "),
    );
    series(&history.process, &PROCESS_SERIES, out);
    out.push_str("},\n\"services\": [");
    for (i, service) in view.topology.services().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n  {");
        service_members(view, service, out);
        let s = &service.stats;
        let get = ServiceStats::get;
        let mut pools: Vec<_> = service.pools().collect();
        pools.sort_unstable();
        pools.dedup();
        let queued: usize = pools
            .iter()
            .filter_map(|&p| view.topology.pool(p))
            .map(|f| f.queue().by_class().iter().sum::<usize>())
            .sum();
        let _ = write!(
            out,
            ", \"shed_total\": {}, \"limited_total\": {}, \"queued\": {queued}",
            get(&s.shed_max_conns)
                + get(&s.shed_service_max_conns)
                + get(&s.shed_pool)
                + get(&s.pool_full),
            get(&s.limited_conns) + get(&s.limited_rate),
        );
        routes(view, service, out);
        current_and_history(history.services.get(&*service.name), &SERVICE_SERIES, out);
        out.push('}');
    }
    out.push_str("\n],\n\"pools\": [");
    for (i, fleet) in view.topology.pools().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n {");
        pool_members(view, fleet, out);
        current_and_history(history.pools.get(&**fleet.name()), &POOL_SERIES, out);
        out.push_str(", \"backends\": [");
        for (i, b) in fleet.backends().chain(fleet.draining()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\n  {{\"id\": {}, ", b.id);
            backend_members(view, fleet, b, out);
            out.push_str(", \"now\": ");
            backend_now(history, b.id, out);
            out.push('}');
        }
        out.push_str("\n ]}");
    }
    out.push_str("\n]}\n");
}

/// Renders `/api/history?backend=ID`; `None` when there is no such backend.
pub fn backend_history(view: &View, id: u64, out: &mut String) -> Option<()> {
    let (fleet, b) = view
        .topology
        .pools()
        .flat_map(|f| f.backends().chain(f.draining()).map(move |b| (f, b)))
        .find(|(_, b)| b.id == id)?;
    let history = view.history;
    let _ = write!(
        out,
        "{{\"id\": {id}, \"pool\": {}, \"address\": {}, \"interval_ms\": {}, \
         \"last_unix_ms\": {}, \"backend_states\": [{}], \"history\": ",
        json_string(fleet.name()),
        json_string(&b.addr.to_string()),
        history::INTERVAL.as_millis(),
        history
            .last_wall
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or_else(|| "null".to_string(), |d| d.as_millis().to_string()),
        STATES.map(|s| format!("\"{s}\"")).join(", "),
    );
    out.push('{');
    if let Some(rows) = history.backends.rows(id) {
        let rows: Vec<_> = rows.collect();
        for (k, name) in BACKEND_SERIES.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "\"{name}\": [");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                number(out, row[k].get());
            }
            out.push(']');
        }
    }
    out.push('}');
    out.push_str("}\n");
    Some(())
}

/// `, "routes": [...]`: a service's routes by the TLS ClientHello, in file order (`[]`:
/// none): `{"sni": "*.example.com", "alpn": null, "pool": "web"}`.
fn routes(view: &View, service: &crate::service::Service, out: &mut String) {
    out.push_str(", \"routes\": [");
    let routes = service.routing.as_ref().map_or(&[][..], |r| r.routes());
    for (i, route) in routes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let text = |v: &Option<String>| v.as_deref().map_or("null".to_string(), json_string);
        let _ = write!(
            out,
            "{{\"sni\": {}, \"alpn\": {}, \"pool\": {}}}",
            text(&route.sni),
            text(&route.alpn),
            view.topology
                .pool(route.target.pool)
                .map_or("null".to_string(), |f| json_string(f.name())),
        );
    }
    out.push(']');
}

/// The process: uptime, version, workers, sessions, pools of buffers and pipes, reloads.
fn process(view: &View, out: &mut String) {
    let workers = view.workers;
    let total = |get: fn(&crate::stats::WorkerStats) -> u64| -> u64 {
        workers.iter().map(|w| get(w)).sum()
    };
    let (buffers_free, buffers) = (
        total(|w| w.buffers_free.get()),
        total(|w| w.buffers_total.get()),
    );
    let (pipes_free, pipes) = (
        total(|w| w.pipes_free.get()),
        total(|w| w.pipes_total.get()),
    );
    let uptime = SystemTime::now()
        .duration_since(view.started)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = write!(
        out,
        "\"process\": {{\"uptime_s\": {uptime:.0}, \"lifecycle\": \"{}\", \"workers\": {}, \
         \"sessions\": {}, \"accepted_total\": {}, \
         \"buffers\": {{\"used\": {}, \"total\": {buffers}}}, \
         \"pipes\": {{\"used\": {}, \"total\": {pipes}}}, \
         \"reloads\": {{\"ok\": {}, \"errors\": {}, \"last_success_unix\": {}}}, \
         \"history_bytes\": {}}}",
        view.lifecycle,
        workers.len(),
        total(|w| w.sessions.get()),
        total(|w| w.accepted.get()),
        buffers.saturating_sub(buffers_free),
        pipes.saturating_sub(pipes_free),
        view.reloads.ok,
        view.reloads.errors,
        view.reloads
            .last_success
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or_else(|| "null".to_string(), |d| d.as_secs().to_string()),
        view.history.bytes(),
    );
}

/// `, "now": {...}, "history": {...}` of a thing (empty objects before its first sample).
fn current_and_history<const K: usize, const N: usize>(
    track: Option<&Track<K, N>>,
    names: &[&str; K],
    out: &mut String,
) {
    out.push_str(", \"now\": ");
    current(track, names, out);
    out.push_str(", \"history\": ");
    match track {
        Some(track) => series(track, names, out),
        None => out.push_str("{}"),
    }
}

/// The newest value of each of the first `names.len()` series (percentiles: the newest
/// within [`RECENT`] samples), as an object.
fn current<const K: usize, const N: usize>(
    track: Option<&Track<K, N>>,
    names: &[&str],
    out: &mut String,
) {
    out.push('{');
    for (k, name) in names.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{name}\": ");
        let within = if name.contains("_p") { RECENT } else { 1 };
        number(out, track.map_or(f64::NAN, |t| t.recent(k, within)));
    }
    out.push('}');
}

/// A backend's newest figures (every series but the state, which `state` says better;
/// the percentiles the newest within [`RECENT`] samples).
fn backend_now(history: &crate::admin::history::History, id: u64, out: &mut String) {
    let row = history.backends.latest(id);
    let [p50, p99] = history.backends.recent_percentiles(id, RECENT as u64);
    out.push('{');
    for (k, name) in BACKEND_SERIES[..BACKEND_SERIES.len() - 1]
        .iter()
        .enumerate()
    {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{name}\": ");
        let value = match *name {
            "response_p50_ms" => p50,
            "response_p99_ms" => p99,
            _ => row.map_or(f64::NAN, |r| r[k].get()),
        };
        number(out, value);
    }
    out.push('}');
}

/// Every series of a thing, as an object of arrays, oldest first.
fn series<const K: usize, const N: usize>(
    track: &Track<K, N>,
    names: &[&str; K],
    out: &mut String,
) {
    out.push('{');
    for (k, name) in names.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "\"{name}\": [");
        for (i, row) in track.rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            number(out, row[k].get());
        }
        out.push(']');
    }
    out.push('}');
}

/// A number as short as its precision allows (`null` for a missing one).
fn number(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let digits = match v.abs() {
            a if a >= 100.0 => 0,
            a if a >= 1.0 => 2,
            _ => 4,
        };
        let text = format!("{v:.digits$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        out.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_missing_ones_null() {
        let cases = [
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
            (0.0, "0"),
            (42.0, "42"),
            (1234.56, "1235"),
            (2.71234, "2.71"),
            (0.012345, "0.0123"),
            (0.5, "0.5"),
            (-2.5, "-2.5"),
        ];
        for (v, want) in cases {
            let mut out = String::new();
            number(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
    }
}
