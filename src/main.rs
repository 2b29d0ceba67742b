//! Process entry: parse the command line, set up logging, resolve the backends, bind the
//! listeners and run the reactor. Maps errors to exit codes: 2 for bad input (one line on
//! stderr naming the bad value), 1 for start-up failures (the address and the OS error).

use log::{info, warn};
use signal_hook_mio::v1_0::Signals;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use tcplb::access_log::AccessLog;
use tcplb::balancer::{Balancer, ResolvedBackend};
use tcplb::config::{self, Action, Config};
use tcplb::context::Settings;
use tcplb::discovery::{self, Plan, Resolver};
use tcplb::pool::Pool;
use tcplb::reactor::{self, Reactor, ReactorConfig};
use tcplb::{limits, logging, net};

/// Why tcplb could not start.
enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// The environment said no (port in use, permission): exit 1.
    Start(String),
}

fn main() -> ExitCode {
    // First of all: until the handlers are installed, SIGHUP (or SIGTERM) would kill the
    // process with the default action.
    let signals = match reactor::catch_signals() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tcplb: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let config = match config::parse_args(&args) {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Help) => return print_stdout(&config::usage()),
        Ok(Action::Version) => {
            return print_stdout(&format!("tcplb {}\n", env!("CARGO_PKG_VERSION")));
        }
        Err(e) => {
            eprintln!("tcplb: {e} (try 'tcplb --help')");
            return ExitCode::from(2);
        }
    };
    logging::init();
    let outcome = run(config, signals);
    // The last log lines (why it stopped, what was cut) before the exit status; bounded, so
    // a stderr nobody reads cannot hold the exit up.
    logging::flush(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("tcplb: {message} (try 'tcplb --help')");
            ExitCode::from(2)
        }
        Err(Failure::Start(message)) => {
            eprintln!("tcplb: {message}");
            ExitCode::from(1)
        }
    }
}

/// Prints to stdout without panicking if stdout is closed.
fn print_stdout(text: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn run(mut config: Config, signals: Signals) -> Result<(), Failure> {
    fit_max_conns(&mut config);

    // The backend set: positional specs plus the backends file, every name resolved.
    let file_specs = match &config.backends_file {
        Some(path) => discovery::read_backends_file(path).map_err(Failure::Input)?,
        None => Vec::new(),
    };
    let specs: Vec<_> = config.backends.iter().chain(&file_specs).cloned().collect();
    let mut resolver = Resolver::default();
    let (initial, failures) = resolver.resolve(&specs);
    if let Some(first) = failures.first() {
        if config.resolve_interval.is_none() {
            return Err(Failure::Start(first.clone()));
        }
        for failure in &failures {
            warn!(
                "{failure}; trying again every {:?}",
                config.resolve_interval
            );
        }
    }
    if initial.is_empty() {
        warn!("no backends yet: clients will be closed until some are added");
    }
    warn_duplicates(&initial);

    let listener = bind(&config.listen, config.backlog)?;
    refuse_loops(&listener, &initial)?;
    let admin = match &config.admin {
        Some(addr) => Some(bind(addr, 64)?),
        None => None,
    };
    let access_log = match &config.access_log {
        Some(path) => Some(AccessLog::open(path).map_err(|e| {
            Failure::Start(format!("cannot open access log {}: {e}", path.display()))
        })?),
        None => None,
    };

    let pool =
        Pool::new(config.buffer_size, config.buffers).map_err(|e| Failure::Start(e.to_string()))?;
    let backend_list = describe(&initial);
    let mut reactor = Reactor::new(
        listener,
        Balancer::new(config.breaker, config.checks, &initial),
        ReactorConfig {
            settings: Settings {
                connect_timeout: config.connect_timeout,
                retries: config.retries,
                idle_timeout: config.idle_timeout,
                max_conns: config.max_conns,
            },
            pool,
            signals,
            drain_timeout: config.drain_timeout,
            admin,
            access_log,
            discovery: Plan {
                positional: config.backends.clone(),
                file: config.backends_file.clone(),
                file_specs,
                resolver,
                current: initial,
                resolve_interval: config.resolve_interval,
            },
        },
    )
    .map_err(|e| Failure::Start(format!("cannot start the event loop: {e}")))?;
    let local = reactor
        .local_addr()
        .map_err(|e| Failure::Start(format!("cannot read the listen address: {e}")))?;
    let admin_note = reactor
        .admin_addr()
        .map(|a| format!("; admin on http://{a}/"))
        .unwrap_or_default();
    info!(
        "listening on {local}; backends: {backend_list}; max-conns {}, {} buffers of {} bytes \
         ({} MiB){admin_note}",
        config.max_conns,
        config.buffers,
        config.buffer_size,
        (config.buffers * config.buffer_size) >> 20
    );
    reactor
        .run()
        .map_err(|e| Failure::Start(format!("event loop failed: {e}")))
}

/// Raises the open-file limit and fits `--max-conns` in it. Lowering the default is routine
/// (an info line); lowering a value the user gave is worth a warning.
fn fit_max_conns(config: &mut Config) {
    let nofile = match limits::raise_nofile_limit() {
        Ok(nofile) => nofile,
        Err(e) => return warn!("cannot read the open-file limit: {e}"),
    };
    let Some(fits) = limits::fit_max_conns(config.max_conns, nofile) else {
        return;
    };
    let needs = config.max_conns as u64 * 2 + limits::FD_HEADROOM;
    if config.max_conns_given {
        warn!(
            "--max-conns {} needs {needs} descriptors but the open-file limit is {nofile}; \
             using --max-conns {fits}",
            config.max_conns
        );
    } else {
        info!(
            "the open-file limit is {nofile}: using --max-conns {fits} (the default {} needs \
             {needs} descriptors)",
            config.max_conns
        );
    }
    config.max_conns = fits;
}

/// Warns once for each address listed more than once (it is used once, with the options it
/// was first listed with): the same spec twice, or a name and an address that resolve alike.
fn warn_duplicates(backends: &[ResolvedBackend]) {
    const SHOWN: usize = 8;
    let mut seen: HashMap<SocketAddr, Vec<&str>> = HashMap::with_capacity(backends.len());
    let mut repeated = Vec::new();
    for backend in backends {
        let names = seen.entry(backend.addr).or_default();
        if names.len() == 1 {
            repeated.push(backend.addr);
        }
        names.push(&backend.name);
    }
    for addr in repeated.iter().take(SHOWN) {
        let times = seen[addr].len();
        let mut names: Vec<&str> = Vec::new();
        for name in &seen[addr] {
            if !names.contains(name) {
                names.push(name);
            }
        }
        let written = if names == [addr.to_string()] {
            String::new()
        } else {
            format!(" (as {})", names.join(", "))
        };
        warn!(
            "backend {addr} is listed {times} times{written}; it is used once, with the \
             options first given"
        );
    }
    if repeated.len() > SHOWN {
        warn!(
            "and {} more backends are listed more than once",
            repeated.len() - SHOWN
        );
    }
}

/// Refuses a backend that is tcplb's own listener: each session would connect to tcplb
/// again, without end.
fn refuse_loops(
    listener: &mio::net::TcpListener,
    backends: &[ResolvedBackend],
) -> Result<(), Failure> {
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Start(format!("cannot read the listen address: {e}")))?;
    let v6_only = socket2::SockRef::from(listener).only_v6().unwrap_or(false);
    // Only a wildcard listener needs this host's addresses.
    let host = if local.ip().is_unspecified() {
        net::local_addresses().unwrap_or_else(|e| {
            warn!("cannot list this host's addresses ({e}); checking backends against loopback");
            Default::default()
        })
    } else {
        Default::default()
    };
    match backends
        .iter()
        .find(|b| net::reaches_listener(local, v6_only, b.addr, |ip| host.contains(&ip)))
    {
        Some(b) => Err(Failure::Input(format!(
            "backend {} is tcplb's own listen address {local}: sessions would loop back into \
             tcplb",
            if b.name == b.addr.to_string() {
                b.name.clone()
            } else {
                format!("{} ({})", b.name, b.addr)
            }
        ))),
        None => Ok(()),
    }
}

/// Resolves and binds a listener; failures name the address and the OS error.
fn bind((host, port): &(String, u16), backlog: i32) -> Result<mio::net::TcpListener, Failure> {
    let addrs = net::resolve(host, *port)
        .map_err(|e| Failure::Start(format!("cannot resolve listen address {host}:{port}: {e}")))?;
    let addr = addrs[0];
    net::bind_listener(addr, backlog)
        .map_err(|e| Failure::Start(format!("cannot listen on {addr}: {e}")))
}

/// The backends for the start line: the first few, then how many more.
fn describe(backends: &[ResolvedBackend]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = backends
        .iter()
        .take(SHOWN)
        .map(|b| {
            let mut s = b.addr.to_string();
            if b.weight != 1 {
                s.push_str(&format!(" weight {}", b.weight));
            }
            if b.backup {
                s.push_str(" backup");
            }
            s
        })
        .collect();
    if backends.len() > SHOWN {
        parts.push(format!("and {} more", backends.len() - SHOWN));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}
