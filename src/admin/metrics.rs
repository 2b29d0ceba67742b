//! Prometheus text exposition: a small encoder (families with `# HELP` and `# TYPE`, escaped
//! label values, histograms), the rendering of every family, and the conventional
//! `process_*` collector read from `/proc`.
//!
//! Updates on the data path are single-writer atomic stores on each worker (`stats.rs`) and
//! atomic additions on the shared backends; everything here happens only when `/metrics`
//! is scraped, on the control thread, which adds up every worker's figures.

use crate::admin::View;
use crate::clock;
use crate::fleet::backend::{Backend, BackendStats, State};
use crate::fleet::queue::{Class, Queue};
use crate::service::ServiceStats;
use crate::stats::{ProxyError, Snapshot, TlsInspect, WorkerStats};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

/// Writes the text exposition format into a string.
pub struct Exposition<'a> {
    out: &'a mut String,
}

impl<'a> Exposition<'a> {
    pub fn new(out: &'a mut String) -> Exposition<'a> {
        Exposition { out }
    }

    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label_value(self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(self.out, value);
        self.out.push('\n');
    }

    /// One per-backend sample with a whole-number value: `name{block extra} value`, where
    /// `block` is `{backend="..."}` from [`label_block`] and `extra` more labels
    /// (`,direction="sent"`) or nothing. The fast path for fleets of many thousands.
    pub fn sample_int(&mut self, name: &str, block: &str, extra: &str, value: u64) {
        self.out.push_str(name);
        match block.strip_suffix('}') {
            Some(open) if !extra.is_empty() => {
                self.out.push_str(open);
                self.out.push_str(extra);
                self.out.push('}');
            }
            _ => self.out.push_str(block),
        }
        self.out.push(' ');
        write_u64(self.out, value);
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram family of one series per label set (`[("service", "web")]`), each a
    /// [`Snapshot`].
    pub fn histograms(&mut self, name: &str, help: &str, series: &[(Vec<(&str, &str)>, Snapshot)]) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (labels, h) in series {
            let mut cumulative = 0;
            for (i, c) in h.counts.iter().enumerate() {
                cumulative += c;
                let le = match h.bounds.get(i) {
                    Some(bound) => {
                        let mut s = String::new();
                        write_value(&mut s, *bound);
                        s
                    }
                    None => "+Inf".to_string(),
                };
                let mut with_le = labels.clone();
                with_le.push(("le", &le));
                self.sample(&bucket, &with_le, cumulative as f64);
            }
            self.sample(&format!("{name}_sum"), labels, h.sum);
            self.sample(&format!("{name}_count"), labels, h.count as f64);
        }
    }
}

/// A label block, `{key="value"}`, the value escaped: written once per backend per scrape,
/// then copied into each of its samples.
pub fn label_block(out: &mut String, key: &str, value: &str) {
    out.push('{');
    out.push_str(key);
    out.push_str("=\"");
    escape_label_value(out, value);
    out.push_str("\"}");
}

/// A whole number in decimal, without the formatting machinery.
fn write_u64(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Whole numbers without a fraction; others as Rust prints them (which Prometheus parses).
fn write_value(out: &mut String, value: f64) {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

/// A per-backend family: name, type, help and how to read the value.
type PerBackend = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Backend, u64) -> u64,
);

/// Renders every metric. With a large fleet the per-backend families are nearly all of it
/// (20,000 backends: 7.5 MB, about 4 ms in a release build, against 16 ms when every sample
/// went through `format!`), so each backend's label is escaped once per scrape and copied
/// into its samples, and their values are written as plain integers.
pub fn render(view: &View, out: &mut String) {
    let mut e = Exposition::new(out);
    let now = clock::millis(view.now);
    let backends = || {
        view.topology
            .pools()
            .flat_map(|f| f.backends().chain(f.draining()))
    };
    // Every backend's `{pool="NAME",backend="ADDR"}`, end to end in one string.
    let mut blocks = String::with_capacity(backends().count() * 48);
    let mut ends = Vec::with_capacity(backends().count());
    let mut addr = String::new();
    for fleet in view.topology.pools() {
        let mut pool = String::new();
        label_block(&mut pool, "pool", fleet.name());
        let pool = pool.strip_suffix('}').unwrap_or(&pool).to_string();
        for b in fleet.backends().chain(fleet.draining()) {
            addr.clear();
            let _ = write!(addr, "{}", b.addr);
            blocks.push_str(&pool);
            let start = blocks.len();
            label_block(&mut blocks, "backend", &addr);
            // `,backend="..."}` after the pool's `{pool="..."`.
            blocks.replace_range(start..start + 1, ",");
            ends.push(blocks.len());
        }
    }
    let labelled = || {
        backends().zip(&ends).scan(0, |start, (b, &end)| {
            let block = &blocks[*start..end];
            *start = end;
            Some((b, block))
        })
    };

    let gauges: [PerBackend; 5] = [
        (
            "tcplb_backend_active_connections",
            "gauge",
            "Sessions on the backend now, connecting ones included.",
            |b, _| b.active().into(),
        ),
        (
            "tcplb_backend_connections_total",
            "counter",
            "Sessions whose connect to the backend succeeded.",
            |b, _| BackendStats::get(&b.stats.sessions),
        ),
        (
            "tcplb_backend_connect_failures_total",
            "counter",
            "Connects to the backend that were refused, reset, unreachable or timed out.",
            |b, _| BackendStats::get(&b.stats.connect_failures),
        ),
        (
            "tcplb_backend_up",
            "gauge",
            "1 if the backend takes new sessions (health checks pass, circuit breaker closed).",
            |b, now| u64::from(b.state(now) == State::Up),
        ),
        (
            "tcplb_backend_max_connections",
            "gauge",
            "The backend's maxconn: sessions it takes at once (0: no limit of its own).",
            |b, _| b.maxconn().map_or(0, u64::from),
        ),
    ];
    for (name, kind, help, value) in gauges {
        e.family(name, kind, help);
        for (b, block) in labelled() {
            e.sample_int(name, block, "", value(b, now));
        }
    }
    e.family(
        "tcplb_backend_bytes_total",
        "counter",
        "Bytes written to (sent) and read from (received) the backend.",
    );
    for (b, block) in labelled() {
        let name = "tcplb_backend_bytes_total";
        let (sent, received) = (&b.stats.bytes_sent, &b.stats.bytes_received);
        e.sample_int(name, block, ",direction=\"sent\"", BackendStats::get(sent));
        e.sample_int(
            name,
            block,
            ",direction=\"received\"",
            BackendStats::get(received),
        );
    }

    // The first-response times least-latency balances by (its pools only: a histogram per
    // backend of every pool would multiply the size of a large fleet's scrape).
    let mut addrs: Vec<(String, &str, &crate::fleet::backend::Backend)> = Vec::new();
    for fleet in view.topology.pools().filter(|f| f.ticks()) {
        for b in fleet.backends().chain(fleet.draining()) {
            addrs.push((b.addr.to_string(), fleet.name(), b));
        }
    }
    let responses: Vec<_> = addrs
        .iter()
        .map(|(addr, pool, b)| {
            (
                vec![("pool", *pool), ("backend", addr.as_str())],
                b.latency.responses.snapshot(),
            )
        })
        .collect();
    if !responses.is_empty() {
        e.histograms(
            "tcplb_backend_response_seconds",
            "First-response time (client's first bytes out to the backend's first bytes back; the connect time where the backend speaks first or never answered), for least-latency pools.",
            &responses,
        );
    }
    queues(view, &mut e);
    services(view, &mut e);
    let workers = view.workers;
    let total = |get: fn(&WorkerStats) -> u64| workers.iter().map(|w| get(w)).sum::<u64>() as f64;
    e.family(
        "tcplb_worker_connections_accepted_total",
        "counter",
        "Client connections accepted, by worker.",
    );
    for (i, w) in workers.iter().enumerate() {
        e.sample(
            "tcplb_worker_connections_accepted_total",
            &[("worker", &i.to_string())],
            w.accepted.get() as f64,
        );
    }

    e.family(
        "tcplb_proxy_protocol_errors_total",
        "counter",
        "Clients reset for their PROXY protocol header (--accept-proxy), by reason.",
    );
    for (i, reason) in ProxyError::ALL.iter().enumerate() {
        e.sample(
            "tcplb_proxy_protocol_errors_total",
            &[("reason", reason.as_str())],
            workers.iter().map(|w| w.proxy_errors[i].get()).sum::<u64>() as f64,
        );
    }

    e.single(
        "tcplb_accept_errors_total",
        "counter",
        "accept() failures (out of descriptors, out of memory, ...).",
        total(|w| w.accept_errors.get()),
    );

    e.single(
        "tcplb_workers",
        "gauge",
        "Worker threads (event loops) serving clients.",
        workers.len() as f64,
    );
    e.family(
        "tcplb_buffer_pool_buffers",
        "gauge",
        "Pool buffers by state.",
    );
    let (free, all) = (
        total(|w| w.buffers_free.get()),
        total(|w| w.buffers_total.get()),
    );
    e.sample("tcplb_buffer_pool_buffers", &[("state", "free")], free);
    e.sample(
        "tcplb_buffer_pool_buffers",
        &[("state", "used")],
        all - free,
    );
    e.single(
        "tcplb_buffer_pool_capacity_bytes",
        "gauge",
        "Bytes in the buffer pool, allocated at start.",
        total(|w| w.buffer_bytes.get()),
    );
    e.family(
        "tcplb_pipe_pool_pipes",
        "gauge",
        "Kernel pipes of the splice path by state: used (bytes sit in them) or free (to be taken; made on first use).",
    );
    let (free, all) = (
        total(|w| w.pipes_free.get()),
        total(|w| w.pipes_total.get()),
    );
    e.sample("tcplb_pipe_pool_pipes", &[("state", "free")], free);
    e.sample("tcplb_pipe_pool_pipes", &[("state", "used")], all - free);
    e.family(
        "tcplb_spliced_bytes_total",
        "counter",
        "Bytes moved by splice through kernel pipes, without a copy, to the backend (sent) and to the client (received); also counted in tcplb_backend_bytes_total.",
    );
    e.sample(
        "tcplb_spliced_bytes_total",
        &[("direction", "sent")],
        total(|w| w.spliced_sent.get()),
    );
    e.sample(
        "tcplb_spliced_bytes_total",
        &[("direction", "received")],
        total(|w| w.spliced_received.get()),
    );
    e.family(
        "tcplb_fast_path_sessions_total",
        "counter",
        "Sessions handed to the kernel fast path (--bpf-redirect): from then on the kernel moves their bytes.",
    );
    e.sample(
        "tcplb_fast_path_sessions_total",
        &[],
        total(|w| w.fast_linked.get()),
    );
    e.family(
        "tcplb_fast_path_bytes_total",
        "counter",
        "Bytes the kernel fast path moved to the backend (sent) and to the client (received), never read by tcplb; counted when the session ends, also in tcplb_backend_bytes_total.",
    );
    e.sample(
        "tcplb_fast_path_bytes_total",
        &[("direction", "sent")],
        total(|w| w.fast_sent.get()),
    );
    e.sample(
        "tcplb_fast_path_bytes_total",
        &[("direction", "received")],
        total(|w| w.fast_received.get()),
    );
    let sessions: Vec<_> = view
        .topology
        .services()
        .map(|s| {
            (
                vec![("service", &*s.name)],
                s.stats.session_duration.snapshot(),
            )
        })
        .collect();
    e.histograms(
        "tcplb_session_duration_seconds",
        "How long sessions lasted, from accept to close, by service.",
        &sessions,
    );
    let connects: Vec<_> = view
        .topology
        .pools()
        .map(|f| {
            (
                vec![("pool", &**f.name())],
                f.stats().connect_duration.snapshot(),
            )
        })
        .collect();
    e.histograms(
        "tcplb_connect_duration_seconds",
        "How long successful backend connects took, by pool.",
        &connects,
    );
    if let Some(dropped) = view.access_log_dropped {
        e.single(
            "tcplb_access_log_dropped_lines_total",
            "counter",
            "Access log lines not written: the writer fell behind, a write failed, or no process read the FIFO.",
            dropped as f64,
        );
    }
    e.single(
        "tcplb_log_lines_dropped_total",
        "counter",
        "Log lines dropped because stderr was not keeping up (the event loop never waits for it).",
        crate::logging::dropped_lines() as f64,
    );

    let process = ProcessStats::read();
    e.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        process.resident_bytes as f64,
    );
    e.single(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        process.open_fds as f64,
    );
    e.single(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        process.max_fds as f64,
    );
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        process.cpu_seconds,
    );
    let start = view
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
}

/// Each pool's wait queue.
fn queues(view: &View, e: &mut Exposition) {
    let pools: Vec<_> = view.topology.pools().collect();
    type PerQueue = (&'static str, &'static str, &'static str, fn(&Queue) -> f64);
    let families: [PerQueue; 3] = [
        (
            "tcplb_queue_length",
            "gauge",
            "Clients waiting in the pool's queue for a backend slot now.",
            |q| q.len() as f64,
        ),
        (
            "tcplb_queue_size",
            "gauge",
            "Clients the pool's queue takes at most (queue-size; 0: no queue).",
            |q| q.settings().size as f64,
        ),
        (
            "tcplb_queue_timeouts_total",
            "counter",
            "Clients reset after waiting queue-timeout in the pool's queue.",
            |q| q.stats.timeouts.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help);
        for fleet in &pools {
            e.sample(name, &[("pool", fleet.name())], value(fleet.queue()));
        }
    }
    let waits: Vec<_> = pools
        .iter()
        .map(|f| (vec![("pool", &**f.name())], f.queue().stats.wait.snapshot()))
        .collect();
    e.histograms(
        "tcplb_queue_wait_seconds",
        "How long clients served from the pool's queue waited for their slot.",
        &waits,
    );
}

/// The per-service families, and how reloads went.
fn services(view: &View, e: &mut Exposition) {
    let services: Vec<_> = view.topology.services().collect();
    type Counter = (&'static str, &'static str, fn(&ServiceStats) -> u64);
    let counters: [Counter; 2] = [
        (
            "tcplb_connections_accepted_total",
            "Client connections accepted, by service.",
            |s| ServiceStats::get(&s.accepted),
        ),
        (
            "tcplb_connections_no_backend_total",
            "Clients closed because no backend could be reached, by service.",
            |s| ServiceStats::get(&s.no_backend),
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for s in &services {
            e.sample(name, &[("service", &s.name)], get(&s.stats) as f64);
        }
    }
    let name = "tcplb_connections_shed_total";
    e.family(
        name,
        "counter",
        "Clients accepted and closed at once, by service and reason: max_conns (the process's or the service's own limit), or pool (the buffer pool nearly empty).",
    );
    for s in &services {
        let st = &s.stats;
        let max_conns =
            ServiceStats::get(&st.shed_max_conns) + ServiceStats::get(&st.shed_service_max_conns);
        e.sample(
            name,
            &[("service", &s.name), ("reason", "max_conns")],
            max_conns as f64,
        );
        e.sample(
            name,
            &[("service", &s.name), ("reason", "pool")],
            ServiceStats::get(&st.shed_pool) as f64,
        );
        e.sample(
            name,
            &[("service", &s.name), ("reason", "pool_full")],
            ServiceStats::get(&st.pool_full) as f64,
        );
    }
    let name = "tcplb_connections_shed_by_class_total";
    e.family(
        name,
        "counter",
        "Clients turned away at once (every reason of tcplb_connections_shed_total), by service and priority class.",
    );
    for s in &services {
        for class in Class::ALL {
            e.sample(
                name,
                &[("service", &s.name), ("class", class.as_str())],
                ServiceStats::get(&s.stats.shed_by_class[class as usize]) as f64,
            );
        }
    }
    let name = "tcplb_connections_limited_total";
    e.family(
        name,
        "counter",
        "Clients reset by the per-source limits, by service and reason: per_source_conns (max-conns-per-source), per_source_rate (conn-rate-per-source).",
    );
    for s in &services {
        for (reason, counter) in [
            ("per_source_conns", &s.stats.limited_conns),
            ("per_source_rate", &s.stats.limited_rate),
        ] {
            e.sample(
                name,
                &[("service", &s.name), ("reason", reason)],
                ServiceStats::get(counter) as f64,
            );
        }
    }
    let limited: Vec<_> = services
        .iter()
        .filter_map(|s| Some((s, &s.sources.as_ref()?.1)))
        .collect();
    if !limited.is_empty() {
        let name = "tcplb_source_table_sources";
        e.family(
            name,
            "gauge",
            "Client sources the per-source limits remember now, by service (at most source-table-size).",
        );
        for (s, table) in &limited {
            e.sample(name, &[("service", &s.name)], table.len() as f64);
        }
        let name = "tcplb_source_table_untracked_total";
        e.family(
            name,
            "counter",
            "Clients let in without a per-source count because the table was full of sources with sessions open (raise source-table-size).",
        );
        for (s, table) in &limited {
            e.sample(
                name,
                &[("service", &s.name)],
                table.stats.untracked.load(Ordering::Relaxed) as f64,
            );
        }
    }
    // Only services with routes look at their clients' bytes: the family exists when one
    // does.
    let routed: Vec<_> = services.iter().filter(|s| s.routing.is_some()).collect();
    if !routed.is_empty() {
        let name = "tcplb_tls_inspect_total";
        e.family(
            name,
            "counter",
            "Clients of services with routes, by what they sent first: sni (a TLS ClientHello with a server name), no_sni (one without), not_tls, too_big (past max-hello), timeout (not whole within sni-timeout), malformed.",
        );
        for s in &routed {
            for (i, result) in TlsInspect::ALL.iter().enumerate() {
                e.sample(
                    name,
                    &[("service", &s.name), ("result", result.as_str())],
                    ServiceStats::get(&s.stats.tls_inspect[i]) as f64,
                );
            }
        }
    }
    let name = "tcplb_sessions_active";
    e.family(name, "gauge", "Client sessions open now, by service.");
    for s in &services {
        e.sample(
            name,
            &[("service", &s.name)],
            s.stats.active.load(Ordering::Relaxed) as f64,
        );
    }
    let name = "tcplb_service_max_connections";
    e.family(
        name,
        "gauge",
        "A service's own limit of sessions at once (0: only the process's).",
    );
    for s in &services {
        e.sample(
            name,
            &[("service", &s.name)],
            s.max_conns.unwrap_or(0) as f64,
        );
    }
    e.single(
        "tcplb_max_connections",
        "gauge",
        "Sessions at once for the whole process (max-conns).",
        view.topology.max_conns() as f64,
    );
    let name = "tcplb_config_reloads_total";
    e.family(name, "counter", "Reloads (SIGHUP), by outcome: ok, or error (the file did not parse or validate, a backends file failed; nothing changed).");
    e.sample(name, &[("result", "ok")], view.reloads.ok as f64);
    e.sample(name, &[("result", "error")], view.reloads.errors as f64);
    e.single(
        "tcplb_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the last reload that succeeded did (the start, before any), since the epoch.",
        view.reloads
            .last_success
            .unwrap_or(view.started)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    e.single(
        "tcplb_listener_bind_failures_total",
        "counter",
        "Listeners a reload could not bind; their service was left out (or kept its old addresses).",
        view.reloads.bind_failures as f64,
    );
}

/// The process collector's figures, from `/proc/self` (zeros where unavailable).
#[derive(Debug, Default)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub cpu_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let mut p = ProcessStats::default();
        let page = page_size();
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
            {
                p.resident_bytes = pages * page;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Minus the descriptor read_dir itself holds open.
            p.open_fds = (dir.count() as u64).saturating_sub(1);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (in parentheses): utime is the 14th field overall.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks: u64 = [11, 12]
                    .iter()
                    .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
                    .sum();
                p.cpu_seconds = ticks as f64 / clock_ticks() as f64;
            }
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            p.max_fds = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        p
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects; _SC_PAGESIZE is a valid name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects; _SC_CLK_TCK is a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_summed_over_workers() {
        let (a, b) = (
            crate::stats::Histogram::new(&[0.1, 1.0]),
            crate::stats::Histogram::new(&[0.1, 1.0]),
        );
        for v in [0.05, 0.1, 0.5] {
            a.observe(v);
        }
        for v in [2.0, 3.0] {
            b.observe(v);
        }
        let total = Snapshot::sum_of([&a, &b].into_iter(), &[0.1, 1.0]);
        let mut out = String::new();
        Exposition::new(&mut out).histograms("x_seconds", "help", &[(vec![("pool", "p")], total)]);
        assert_eq!(
            out,
            "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{pool=\"p\",le=\"0.1\"} 2\nx_seconds_bucket{pool=\"p\",le=\"1\"} 3\n\
             x_seconds_bucket{pool=\"p\",le=\"+Inf\"} 5\nx_seconds_sum{pool=\"p\"} 5.65\n\
             x_seconds_count{pool=\"p\"} 5\n"
        );
        let shared = crate::stats::SharedHistogram::new(&[0.1, 1.0]);
        shared.observe(std::time::Duration::from_millis(50));
        shared.observe(std::time::Duration::from_secs(2));
        let s = shared.snapshot();
        assert_eq!((s.counts, s.count), (vec![1, 0, 1], 2));
        assert!((s.sum - 2.05).abs() < 1e-9);
    }

    #[test]
    fn integer_samples_with_a_label_block() {
        let mut block = String::new();
        label_block(&mut block, "backend", "[::1]:80\"");
        assert_eq!(block, "{backend=\"[::1]:80\\\"\"}");
        let mut out = String::new();
        let mut e = Exposition::new(&mut out);
        e.sample_int("m", &block, "", 0);
        e.sample_int("m", &block, ",direction=\"sent\"", u64::MAX);
        e.sample_int("m", "", "", 1234567890);
        assert_eq!(
            out,
            "m{backend=\"[::1]:80\\\"\"} 0\n\
             m{backend=\"[::1]:80\\\"\",direction=\"sent\"} 18446744073709551615\n\
             m 1234567890\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        Exposition::new(&mut out).sample("m", &[("a", "x\"y\\z\nw"), ("b", "[::1]:80")], 1.5);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"[::1]:80\"} 1.5\n");
    }

    #[test]
    fn process_stats_are_read() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds >= 3);
        assert!(p.max_fds > 0);
    }
}
