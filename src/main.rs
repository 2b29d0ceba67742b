//! Process entry: parse the command line, set up logging, resolve the backends, bind the
//! listener and run the reactor. Maps errors to exit codes: 2 for usage errors (one line on
//! stderr naming the bad value), 1 for start-up failures (the address and the OS error).

use log::{info, warn};
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use tcplb::balancer::{Backend, Balancer};
use tcplb::config::{self, Action, Config};
use tcplb::context::Settings;
use tcplb::reactor::{Reactor, ReactorConfig};
use tcplb::{limits, logging, net};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let config = match config::parse_args(&args) {
        Ok(Action::Run(config)) => config,
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
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
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

fn run(mut config: Config) -> Result<(), String> {
    match limits::raise_nofile_limit() {
        Ok(nofile) => {
            if let Some(fits) = limits::fit_max_conns(config.max_conns, nofile) {
                warn!(
                    "--max-conns {} needs {} descriptors but the open-file limit is {nofile}; \
                     using --max-conns {fits}",
                    config.max_conns,
                    config.max_conns as u64 * 2 + limits::FD_HEADROOM
                );
                config.max_conns = fits;
            }
        }
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }

    let backends = resolve_backends(&config)?;
    let (host, port) = &config.listen;
    let listen_addr = net::resolve(host, *port)
        .map_err(|e| format!("cannot resolve listen address {host}:{port}: {e}"))?[0];
    let listener = net::bind_listener(listen_addr, config.backlog)
        .map_err(|e| format!("cannot listen on {listen_addr}: {e}"))?;

    let backend_list = backends
        .iter()
        .map(|b| {
            if b.weight == 1 {
                b.addr.to_string()
            } else {
                format!("{} (weight {})", b.addr, b.weight)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut reactor = Reactor::new(
        listener,
        Balancer::new(backends),
        ReactorConfig {
            settings: Settings {
                connect_timeout: config.connect_timeout,
                retries: config.retries,
                idle_timeout: config.idle_timeout,
                max_conns: config.max_conns,
            },
            buffer_size: config.buffer_size,
            buffers: config.buffers,
        },
    )
    .map_err(|e| format!("cannot start the event loop: {e}"))?;
    let local = reactor
        .local_addr()
        .map_err(|e| format!("cannot read the listen address: {e}"))?;
    info!(
        "listening on {local}; backends: {backend_list}; max-conns {}, {} buffers of {} bytes ({} MiB)",
        config.max_conns,
        config.buffers,
        config.buffer_size,
        (config.buffers * config.buffer_size) >> 20
    );
    reactor.run().map_err(|e| format!("event loop failed: {e}"))
}

/// Resolves every backend spec: each address a name resolves to becomes a backend.
fn resolve_backends(config: &Config) -> Result<Vec<Backend>, String> {
    let mut backends = Vec::new();
    for spec in &config.backends {
        let addrs: Vec<SocketAddr> = net::resolve(&spec.host, spec.port)
            .map_err(|e| format!("cannot resolve backend {}: {e}", spec.authority()))?;
        for addr in addrs {
            let id = backends.len() as u32;
            backends.push(Backend::new(id, addr, spec.authority(), spec.weight));
        }
    }
    Ok(backends)
}
