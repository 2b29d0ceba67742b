//! The option table: every flag with its help text and default, in one place, shared by
//! the parser (`config/mod.rs`) and `--help`.

use crate::config::DEFAULT_LISTEN;

/// The option table, shared by the parser and `--help`.
pub(super) fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "l",
        "listen",
        &format!("address to accept clients on (default {DEFAULT_LISTEN})"),
        "HOST:PORT",
    );
    o.optopt(
        "",
        "connect-timeout",
        "give up a backend connect after this long and try the next backend; a bare number \
         is milliseconds (default 3s)",
        "DURATION",
    );
    o.optopt(
        "",
        "retries",
        "connect attempts on other backends after a failed one (default 2, max 16)",
        "N",
    );
    o.optopt(
        "",
        "idle-timeout",
        "close a session with no bytes either way for this long; 0 = never (default 300s)",
        "DURATION",
    );
    o.optopt(
        "",
        "max-conns",
        "sessions at once; past it new clients are closed at once (default 10000)",
        "N",
    );
    o.optopt("", "backlog", "listen backlog (default 1024)", "N");
    o.optopt(
        "",
        "workers",
        "worker threads, each with its own event loop; auto = one per CPU this process may \
         run on (default auto)",
        "N|auto",
    );
    o.optopt(
        "",
        "buffer-size",
        "size of one pool buffer, from 1k to 1m; k/m suffixes allowed (default 16k)",
        "BYTES",
    );
    o.optopt(
        "",
        "buffers",
        "buffers in the pool, allocated once at start (default: 56 MiB worth)",
        "N",
    );
    o.optopt(
        "",
        "pipes",
        "kernel pipes for moving bulk flows with splice, without a copy (Linux); each is 2 \
         descriptors, held only while bytes sit in it; 0 = splice off (default 256)",
        "N",
    );
    o.optopt(
        "",
        "balance",
        "how a backend is chosen: least-active, round-robin, random-two or source-hash \
         (default least-active)",
        "NAME",
    );
    o.optopt(
        "",
        "hash-table-size",
        "source-hash: slots in the Maglev table, a prime, at least the backends and best \
         100 times as many (default 65537)",
        "PRIME",
    );
    o.optopt(
        "",
        "hash-balance-factor",
        "source-hash: bounded loads; no backend takes more than F times the mean active \
         sessions per unit of weight, such as 1.25 (default off)",
        "F",
    );
    o.optflag(
        "",
        "accept-proxy",
        "every client starts with a PROXY protocol header (v1 or v2), which gives the real \
         client address",
    );
    o.optopt(
        "",
        "proxy-timeout",
        "with --accept-proxy: reset a client whose header is not complete after this long \
         (default 5s)",
        "DURATION",
    );
    o.optopt(
        "",
        "max-fails",
        "failed connects in a row that take a backend out; 0 = never (default 3)",
        "N",
    );
    o.optopt(
        "",
        "fail-timeout",
        "how long a failing backend stays out before one trial session; doubles while \
         trials fail, up to 300s (default 10s)",
        "DURATION",
    );
    o.optopt(
        "",
        "health-interval",
        "probe every backend with a TCP connect this often, at most 64 at once; 0 = off \
         (default 0)",
        "DURATION",
    );
    o.optopt(
        "",
        "rise",
        "passed probes in a row that bring a backend up (default 2)",
        "N",
    );
    o.optopt(
        "",
        "fall",
        "failed probes in a row that take a backend down (default 3)",
        "N",
    );
    o.optopt(
        "",
        "backends-file",
        "more backends, one BACKEND per line (# comments); re-read on SIGHUP",
        "PATH",
    );
    o.optopt(
        "",
        "resolve-interval",
        "re-resolve backend host names this often; 0 = at start and reload only (default 0)",
        "DURATION",
    );
    o.optopt(
        "",
        "drain-timeout",
        "after SIGTERM/SIGINT, let live sessions finish for up to this long (default 30s)",
        "DURATION",
    );
    o.optopt(
        "",
        "admin",
        "serve /metrics, /healthz and /backends over HTTP here; keep it on loopback or a \
         private network (default off)",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "access-log",
        "write one line per finished session to PATH (- = stdout); SIGUSR1 reopens it \
         (default off)",
        "PATH",
    );
    o.optopt(
        "",
        "pid-file",
        "write the process id to PATH at start (replaced atomically; an upgrade's new \
         process rewrites it) (default off)",
        "PATH",
    );
    o.optopt(
        "",
        "upgrade-timeout",
        "after SIGUSR2, how long the new process may take to start serving before the \
         upgrade is given up (default 30s)",
        "DURATION",
    );
    o.optopt(
        "",
        "upgrade-probation",
        "after SIGUSR2, once the new process serves, the old one stops accepting but stands \
         by this long, and takes over again if the new one dies; 0 = hand over at once \
         (default 5s)",
        "DURATION",
    );
    o.optflag("h", "help", "print this help and exit");
    o.optflag("V", "version", "print the version and exit");
    o
}

/// What `--help` says after the options: durations, signals, exit status, examples.
const USAGE_NOTES: &str = "
DURATION is a number with a unit: 250ms, 3s, 1.5s, 2m, 1h (decimals allowed). A bare
number is seconds, except for --connect-timeout, where it is milliseconds.

Signals:
  SIGHUP           re-read the backends file and re-resolve the names
  SIGTERM, SIGINT  stop accepting, let live sessions finish (--drain-timeout), exit 0;
                   a second one cuts them and exits at once
  SIGUSR1          reopen the access log (after logrotate renamed it)
  SIGUSR2          upgrade: start the binary at the path tcplb was started from, with
                   the same arguments, hand it the listening sockets, and once it
                   serves, stand by for --upgrade-probation (taking over again if it
                   dies), then drain as on SIGTERM; if it fails, keep serving

Exit status:
  0  after --help or --version, and after a drain
  1  it cannot start (the port is in use, a backend name does not resolve, ...)
  2  bad usage: one line on stderr names the bad value

Examples:
  tcplb --listen 0.0.0.0:8080 10.0.0.11:80 10.0.0.12:80,weight=2
  tcplb -l 127.0.0.1:6379 --connect-timeout 250ms --idle-timeout 1m 10.0.1.5:6379
  RUST_LOG=debug tcplb -l [::]:5432 db-a.internal:5432 db-b.internal:5432
  tcplb -l 0.0.0.0:6379 --balance source-hash --hash-balance-factor 1.25 cache-a:6379 cache-b:6379
  tcplb -l 0.0.0.0:443 --accept-proxy web-a:443,send-proxy-v2 web-b:443,send-proxy-v2
";

/// The `--help` text.
pub fn usage() -> String {
    let brief = "Usage: tcplb [OPTIONS] BACKEND...\n\n\
        A Layer-4 TCP load balancer: each client connection is piped to the backend with the\n\
        fewest active sessions per unit of weight (or as --balance says).\n\n\
        BACKEND is HOST:PORT[,weight=N][,backup][,send-proxy|,send-proxy-v2]\n\
        (N from 1 to 256, default 1; HOST may be an IPv4 address, [IPv6] or a name: every\n\
        address it resolves to is a backend; send-proxy sends it a PROXY protocol v1 header\n\
        first, send-proxy-v2 a v2 one)";
    let mut text = options().usage(brief);
    text.push_str(USAGE_NOTES);
    text
}
