//! The command line: `tcplb [OPTIONS] BACKEND...` describes one service (named `default`)
//! with one pool (also `default`); `tcplb --config FILE [OPTIONS]` reads services and pools
//! from a file, and then only process-wide flags may be given beside it.

use super::lower::{self, Layers, Location, Written};
use super::table::{self, Scope};
use super::values::Raw;
use super::{Action, Config, ConfigError, file};
use std::ffi::OsString;

/// The name of the service and of the pool the flags describe.
pub const DEFAULT_NAME: &str = "default";

/// Parses the arguments after the program name.
pub fn parse_args(args: &[OsString]) -> Result<Action, ConfigError> {
    let mut utf8 = Vec::with_capacity(args.len());
    for arg in args {
        match arg.to_str() {
            Some(s) => utf8.push(s.to_string()),
            None => {
                return Err(ConfigError::Usage(format!(
                    "argument '{}' is not valid UTF-8",
                    arg.to_string_lossy()
                )));
            }
        }
    }
    let matches = table::flags().parse(&utf8).map_err(|e| {
        ConfigError::Usage(match e {
            getopts::Fail::UnrecognizedOption(o) => unknown_flag(&o),
            getopts::Fail::ArgumentMissing(o) => format!("option '{}' needs a value", dashed(&o)),
            getopts::Fail::OptionDuplicated(o) => {
                format!("option '{}' given more than once", dashed(&o))
            }
            other => other.to_string(),
        })
    })?;
    if matches.opt_present("help") {
        return Ok(Action::Help);
    }
    if matches.opt_present("version") {
        return Ok(Action::Version);
    }
    // Every flag given, as written.
    let mut written = Written::default();
    let mut texts = Vec::new();
    for opt in table::OPTIONS.iter().filter(|o| o.flag) {
        if opt.scope == Scope::Command {
            continue;
        }
        if matches.opt_present(opt.name) {
            texts.push((opt, matches.opt_str(opt.name).unwrap_or_default()));
        }
    }
    for (opt, text) in &texts {
        written.push(opt, Raw::Text(text), Location::Flag);
    }
    let check = matches.opt_present("check");

    if let Some(path) = matches.opt_str("config") {
        let mut clash: Vec<String> = texts
            .iter()
            .filter(|(o, _)| !o.scope.in_global())
            .map(|(o, _)| format!("--{}", o.name))
            .collect();
        if !matches.free.is_empty() {
            clash.push("the BACKEND arguments".to_string());
        }
        if !clash.is_empty() {
            return Err(ConfigError::Usage(format!(
                "--config describes the services and pools: drop {} (set {} in the file \
                 instead)",
                clash.join(" and "),
                if clash.len() == 1 { "it" } else { "them" }
            )));
        }
        let config = file::load(std::path::Path::new(&path), &written)?;
        return Ok(if check {
            Action::Check(Box::new(config))
        } else {
            Action::Run(Box::new(config))
        });
    }
    if check {
        return Err(ConfigError::Usage(
            "--check checks a config file: give it --config FILE".to_string(),
        ));
    }
    let config = from_flags(&written, &matches.free)?;
    Ok(Action::Run(Box::new(config)))
}

/// The one service and one pool the flags describe.
fn from_flags(written: &Written, backends: &[String]) -> Result<Config, ConfigError> {
    let layers = Layers::new(vec![written]);
    let service = lower::service(DEFAULT_NAME, &layers, false)?;
    let mut pool = lower::pool(DEFAULT_NAME, &layers, backends)?;
    pool.name = DEFAULT_NAME.to_string();
    let mut service = service;
    service.pool = Some(DEFAULT_NAME.to_string());
    let global = lower::global(&layers)?;
    // On the command line --max-conns is the process's limit; the service has no other.
    let config = Config {
        global,
        services: vec![service],
        pools: vec![pool],
        file: None,
    };
    config.check_admin_address()?;
    Ok(config)
}

/// `unknown option '--bogus'`, with the flag meant when it is a slip.
fn unknown_flag(name: &str) -> String {
    let flags = table::OPTIONS.iter().filter(|o| o.flag).map(|o| o.name);
    match table::closest(name, flags) {
        Some(meant) if name.len() > 1 => {
            format!(
                "unknown option '{}' (did you mean '--{meant}'?)",
                dashed(name)
            )
        }
        _ => format!("unknown option '{}'", dashed(name)),
    }
}

fn dashed(name: &str) -> String {
    if name.len() == 1 {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}
