//! Prometheus text exposition: a small encoder (families with `# HELP` and `# TYPE`, escaped
//! label values, histograms), the histogram type the reactor updates, and the conventional
//! `process_*` collector read from `/proc`.
//!
//! Updates on the data path are plain integer (and float) additions on the reactor thread;
//! everything else happens only when `/metrics` is scraped.

use crate::balancer::Backend;
use crate::context::Context;
use std::fmt::Write;
use std::time::UNIX_EPOCH;

/// Upper bounds (seconds) of the session duration histogram.
pub const SESSION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Upper bounds (seconds) of the backend connect time histogram.
pub const CONNECT_BUCKETS: [f64; 15] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets; observing allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

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

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = match h.bounds.get(i) {
                Some(bound) => {
                    let mut s = String::new();
                    write_value(&mut s, *bound);
                    s
                }
                None => "+Inf".to_string(),
            };
            self.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
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
    fn(&Backend) -> u64,
);

/// Renders every metric. With a large fleet the per-backend families are nearly all of it
/// (20,000 backends: 7.5 MB, about 4 ms in a release build, against 16 ms when every sample
/// went through `format!`), so each backend's label is escaped once per scrape and copied
/// into its samples, and their values are written as plain integers.
pub fn render(ctx: &mut Context, out: &mut String) {
    let mut e = Exposition::new(out);
    let draining: Vec<_> = ctx.balancer.draining().to_vec();
    let backends = || ctx.balancer.backends().iter().chain(draining.iter());
    // Every backend's `{backend="ADDR"}`, end to end in one string.
    let mut blocks = String::with_capacity(backends().count() * 32);
    let mut ends = Vec::with_capacity(backends().count());
    let mut addr = String::new();
    for b in backends() {
        addr.clear();
        let _ = write!(addr, "{}", b.addr);
        label_block(&mut blocks, "backend", &addr);
        ends.push(blocks.len());
    }
    let labelled = || {
        backends().zip(&ends).scan(0, |start, (b, &end)| {
            let block = &blocks[*start..end];
            *start = end;
            Some((b, block))
        })
    };

    let gauges: [PerBackend; 4] = [
        (
            "tcplb_backend_active_connections",
            "gauge",
            "Sessions on the backend now, connecting ones included.",
            |b| b.active().into(),
        ),
        (
            "tcplb_backend_connections_total",
            "counter",
            "Sessions whose connect to the backend succeeded.",
            |b| b.stats.sessions.get(),
        ),
        (
            "tcplb_backend_connect_failures_total",
            "counter",
            "Connects to the backend that were refused, reset, unreachable or timed out.",
            |b| b.stats.connect_failures.get(),
        ),
        (
            "tcplb_backend_up",
            "gauge",
            "1 if the backend takes new sessions (health checks pass, circuit breaker closed).",
            |b| u64::from(b.is_up() && !b.is_removed()),
        ),
    ];
    for (name, kind, help, value) in gauges {
        e.family(name, kind, help);
        for (b, block) in labelled() {
            e.sample_int(name, block, "", value(b));
        }
    }
    e.family(
        "tcplb_backend_bytes_total",
        "counter",
        "Bytes written to (sent) and read from (received) the backend.",
    );
    for (b, block) in labelled() {
        let name = "tcplb_backend_bytes_total";
        e.sample_int(name, block, ",direction=\"sent\"", b.stats.bytes_sent.get());
        e.sample_int(
            name,
            block,
            ",direction=\"received\"",
            b.stats.bytes_received.get(),
        );
    }

    let s = &ctx.stats;
    e.single(
        "tcplb_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        s.accepted as f64,
    );
    e.family(
        "tcplb_connections_shed_total",
        "counter",
        "Clients accepted and closed at once: too many sessions, or the buffer pool nearly empty.",
    );
    e.sample(
        "tcplb_connections_shed_total",
        &[("reason", "max_conns")],
        s.shed_max_conns as f64,
    );
    e.sample(
        "tcplb_connections_shed_total",
        &[("reason", "pool")],
        s.shed_pool as f64,
    );
    e.single(
        "tcplb_connections_no_backend_total",
        "counter",
        "Clients closed because no backend could be reached.",
        s.no_backend as f64,
    );
    e.single(
        "tcplb_accept_errors_total",
        "counter",
        "accept() failures (out of descriptors, out of memory, ...).",
        s.accept_errors as f64,
    );
    e.single(
        "tcplb_sessions_active",
        "gauge",
        "Client sessions open now.",
        s.sessions as f64,
    );
    e.family(
        "tcplb_buffer_pool_buffers",
        "gauge",
        "Pool buffers by state.",
    );
    e.sample(
        "tcplb_buffer_pool_buffers",
        &[("state", "free")],
        ctx.pool.free() as f64,
    );
    e.sample(
        "tcplb_buffer_pool_buffers",
        &[("state", "used")],
        ctx.pool.used() as f64,
    );
    e.single(
        "tcplb_buffer_pool_capacity_bytes",
        "gauge",
        "Bytes in the buffer pool, allocated at start.",
        (ctx.pool.capacity() * ctx.pool.buffer_size()) as f64,
    );
    e.histogram(
        "tcplb_session_duration_seconds",
        "How long sessions lasted, from accept to close.",
        &s.session_duration,
    );
    e.histogram(
        "tcplb_connect_duration_seconds",
        "How long successful backend connects took.",
        &s.connect_duration,
    );
    if let Some(log) = &ctx.access_log {
        e.single(
            "tcplb_access_log_dropped_lines_total",
            "counter",
            "Access log lines not written: the writer fell behind, a write failed, or no process read the FIFO.",
            log.dropped() as f64,
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
    let start = ctx
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

fn page_size() -> u64 {
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
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 2.0, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        Exposition::new(&mut out).histogram("x_seconds", "help", &h);
        assert_eq!(
            out,
            "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.1\"} 2\nx_seconds_bucket{le=\"1\"} 3\n\
             x_seconds_bucket{le=\"+Inf\"} 5\nx_seconds_sum 5.65\nx_seconds_count 5\n"
        );
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
