//! Process entry: `tcplb ctl ...` is the control socket's client (`ctl::client`), handled
//! first; otherwise catch signals, parse the command line (or check a config file), set up
//! logging, start everything (`control::start`) and run the control thread until the
//! process is done. Maps errors to exit codes: 2 for bad input (one line on stderr naming
//! the bad value), 1 for start-up failures (the address and the OS error).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tcplb::config::{self, Action};
use tcplb::control::upgrade::Invocation;
use tcplb::control::{self, failure::Failure};
use tcplb::{clock, logging};

fn main() -> ExitCode {
    // `tcplb ctl`: a client, not a balancer.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|first| first == "ctl") {
        let args: Vec<String> = argv.map(|a| a.to_string_lossy().into_owned()).collect();
        return tcplb::ctl::client::run(&args);
    }
    // First of all: until the handlers are installed, SIGHUP (or SIGTERM) would kill the
    // process with the default action.
    let signals = match control::catch_signals() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tcplb: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    clock::epoch();
    // What an upgrade (SIGUSR2) runs again: the path as started, resolved now.
    let invocation = Invocation::current();
    let config = match config::parse_args(&invocation.args) {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Check(config)) => {
            let mut summary = config.summary().join("\n");
            summary.push_str(&format!(
                "\n{}: ok ({} service{}, {} pool{})\n",
                config
                    .file
                    .as_ref()
                    .map_or_else(|| "config".to_string(), |f| f.display().to_string()),
                config.services.len(),
                if config.services.len() == 1 { "" } else { "s" },
                config.pools.len(),
                if config.pools.len() == 1 { "" } else { "s" },
            ));
            return print_stdout(&summary);
        }
        Ok(Action::Help) => return print_stdout(&config::usage()),
        Ok(Action::Version) => {
            return print_stdout(&format!("{}\n", tcplb::version::line()));
        }
        // A config file's error says where it is; --help would not help there.
        Err(e @ config::ConfigError::At { .. }) => {
            eprintln!("tcplb: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tcplb: {e} (try 'tcplb --help')");
            return ExitCode::from(2);
        }
    };
    logging::init();
    let outcome = control::start::start(config, signals, invocation).and_then(|control| {
        control
            .run()
            .map_err(|e| Failure::Start(format!("event loop failed: {e}")))
    });
    // The last log lines (why it stopped, what was cut) before the exit status; bounded, so
    // a stderr nobody reads cannot hold the exit up.
    logging::flush(Duration::from_secs(1));
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
