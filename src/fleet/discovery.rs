//! Where the backend set comes from: the positional specs and the `--backends-file`, with
//! every host name resolved to all of its addresses.
//!
//! At start this runs on the main thread (blocking is fine there). Afterwards it runs on a
//! helper thread — no event loop ever reads a file or waits for DNS — which
//! - re-reads the backends file and re-resolves every name when asked (SIGHUP), and
//! - re-resolves the names every `--resolve-interval`, reporting only when the set changed,
//!
//! and builds each new fleet generation itself (`builder.rs`, O(n)), handing it to the
//! control thread through a channel plus a `mio::Waker`.
//!
//! A backends file that fails to read or parse changes nothing (the error names the line),
//! and neither does one that yields no backend at all (an empty or half-written file would
//! otherwise turn every client away), nor a set the balance cannot serve whole (more
//! backends than `--hash-table-size` has slots). A name that fails to resolve keeps the
//! addresses it resolved to last time, so a DNS blip does not empty the fleet.

use crate::config::{self, BackendSpec};
use crate::fleet::Fleet;
use crate::fleet::backend::ResolvedBackend;
use crate::fleet::builder::{Builder, Changes};
use crate::net;
use log::warn;
use mio::Waker;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// Reads and parses a backends file; the error names the file and, for a bad spec, the line.
/// Bytes that are not UTF-8 are read as U+FFFD: harmless in a comment, and a bad spec's error
/// then names its line.
pub fn read_backends_file(path: &Path) -> Result<Vec<BackendSpec>, String> {
    let shown = path.display().to_string();
    let shown = config::printable(&shown);
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read backends file {shown}: {e}"))?;
    config::parse_backends_file(&String::from_utf8_lossy(&bytes), path)
        .map_err(|e| format!("{shown}: {e}"))
}

/// Resolves specs, remembering each name's last good addresses.
#[derive(Debug, Default)]
pub struct Resolver {
    last: HashMap<(String, u16), Vec<SocketAddr>>,
}

impl Resolver {
    /// Every address of every spec, in order. A name that does not resolve keeps its last
    /// addresses; one that never resolved is left out. Returns the failures too.
    pub fn resolve(&mut self, specs: &[BackendSpec]) -> (Vec<ResolvedBackend>, Vec<String>) {
        let mut set = Vec::new();
        let mut failures = Vec::new();
        for spec in specs {
            let key = (spec.host.clone(), spec.port);
            let addrs = match net::resolve(&spec.host, spec.port) {
                Ok(addrs) => {
                    self.last.insert(key, addrs.clone());
                    addrs
                }
                Err(e) => {
                    let kept = self.last.get(&key).cloned().unwrap_or_default();
                    failures.push(format!(
                        "{}cannot resolve backend {}: {e}{}",
                        spec.origin
                            .as_ref()
                            .map(|origin| format!("{origin}: "))
                            .unwrap_or_default(),
                        spec.authority(),
                        if kept.is_empty() {
                            String::new()
                        } else {
                            format!("; keeping its {} last known addresses", kept.len())
                        }
                    ));
                    kept
                }
            };
            set.extend(addrs.into_iter().map(|addr| ResolvedBackend {
                addr,
                name: spec.authority(),
                weight: spec.weight,
                backup: spec.backup,
                send_proxy: spec.send_proxy,
            }));
        }
        (set, failures)
    }
}

/// Why a new set was produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// SIGHUP: the file was re-read and every name re-resolved.
    Reload,
    /// `--resolve-interval` came round and the addresses changed.
    Resolve,
}

/// A new fleet generation, or why there is none.
#[derive(Debug)]
pub struct Update {
    pub cause: Cause,
    pub result: Result<(Arc<Fleet>, Changes), String>,
}

/// What the helper thread starts from.
pub struct Plan {
    pub positional: Vec<BackendSpec>,
    pub file: Option<PathBuf>,
    /// The file's specs as read at start.
    pub file_specs: Vec<BackendSpec>,
    pub resolver: Resolver,
    /// The set the fleet started with.
    pub current: Vec<ResolvedBackend>,
    /// Built the first generation; builds the next ones.
    pub builder: Builder,
    pub resolve_interval: Option<Duration>,
}

/// The control thread's end of the helper thread.
pub struct Discovery {
    requests: Sender<()>,
    updates: Receiver<Update>,
}

impl Discovery {
    /// Starts the helper thread; it wakes the control thread through `waker` for each
    /// update.
    pub fn spawn(plan: Plan, waker: Arc<Waker>) -> io::Result<Discovery> {
        let (requests, requested) = mpsc::channel();
        let (report, updates) = mpsc::channel();
        std::thread::Builder::new()
            .name("discovery".to_string())
            .spawn(move || run(plan, &requested, &report, &waker))?;
        Ok(Discovery { requests, updates })
    }

    /// Asks for the file to be re-read and every name re-resolved.
    pub fn reload(&self) {
        let _ = self.requests.send(());
    }

    /// The next update, if one is waiting.
    pub fn next_update(&self) -> Option<Update> {
        self.updates.try_recv().ok()
    }
}

fn run(mut plan: Plan, requested: &Receiver<()>, report: &Sender<Update>, waker: &Waker) {
    loop {
        let cause = match plan.resolve_interval {
            Some(interval) => match requested.recv_timeout(interval) {
                Ok(()) => Cause::Reload,
                Err(RecvTimeoutError::Timeout) => Cause::Resolve,
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match requested.recv() {
                Ok(()) => Cause::Reload,
                Err(_) => return,
            },
        };
        // SIGHUPs that came in a burst are one reload.
        while requested.try_recv().is_ok() {}
        let result = next_set(&mut plan, cause);
        let result = match result {
            Ok(None) => continue,
            Ok(Some(set)) => {
                let built = plan.builder.build(&set);
                plan.current = set;
                Ok(built)
            }
            Err(message) => Err(message),
        };
        send(report, waker, Update { cause, result });
    }
}

/// The set to build next: `Ok(None)` when a periodic re-resolve found nothing new.
fn next_set(plan: &mut Plan, cause: Cause) -> Result<Option<Vec<ResolvedBackend>>, String> {
    let mut file_specs = None;
    if cause == Cause::Reload {
        if let Some(path) = &plan.file {
            file_specs = Some(read_backends_file(path)?);
        }
    }
    let specs: Vec<BackendSpec> = plan
        .positional
        .iter()
        .chain(file_specs.as_ref().unwrap_or(&plan.file_specs))
        .cloned()
        .collect();
    let (set, failures) = plan.resolver.resolve(&specs);
    for failure in failures {
        warn!("{failure}");
    }
    if set.is_empty() && cause == Cause::Resolve && plan.current.is_empty() {
        return Ok(None); // still nothing: the failures above say why
    }
    if set.is_empty() {
        let source = match &plan.file {
            Some(path) if cause == Cause::Reload => format!("{} lists", path.display()),
            _ => "the backend names resolve to".to_string(),
        };
        return Err(format!(
            "{source} no backend; keeping the running set of {} (to take every backend \
             out, stop tcplb)",
            plan.current.len()
        ));
    }
    if cause == Cause::Resolve && set == plan.current {
        return Ok(None);
    }
    // A set the balance cannot serve whole (a backend that would never be chosen) is
    // refused like one that does not parse.
    if let Some(warning) = plan.builder.check(&set)? {
        warn!("{warning}");
    }
    if let Some(specs) = file_specs {
        plan.file_specs = specs;
    }
    Ok(Some(set))
}

fn send(report: &Sender<Update>, waker: &Waker, update: Update) {
    if report.send(update).is_ok() {
        if let Err(e) = waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> BackendSpec {
        BackendSpec::parse(text).expect("spec")
    }

    #[test]
    fn every_address_of_a_name_is_a_backend_with_its_options() {
        let mut resolver = Resolver::default();
        let (set, failures) = resolver.resolve(&[
            spec("127.0.0.1:80,weight=3"),
            spec("[::1]:81,backup,send-proxy-v2"),
        ]);
        assert!(failures.is_empty());
        assert_eq!(
            set,
            vec![
                ResolvedBackend {
                    addr: "127.0.0.1:80".parse().expect("addr"),
                    name: "127.0.0.1:80".to_string(),
                    weight: 3,
                    backup: false,
                    send_proxy: None,
                },
                ResolvedBackend {
                    addr: "[::1]:81".parse().expect("addr"),
                    name: "[::1]:81".to_string(),
                    weight: 1,
                    backup: true,
                    send_proxy: Some(crate::proxy_protocol::Version::V2),
                },
            ]
        );
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let mut resolver = Resolver::default();
        let name = spec("no-such-host.invalid:80");
        let (set, failures) = resolver.resolve(std::slice::from_ref(&name));
        assert!(set.is_empty());
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("no-such-host.invalid:80"));
        // Pretend it resolved once.
        resolver.last.insert(
            ("no-such-host.invalid".to_string(), 80),
            vec!["10.9.9.9:80".parse().expect("addr")],
        );
        let (set, failures) = resolver.resolve(&[name]);
        assert_eq!(set.len(), 1);
        assert!(failures[0].contains("keeping its 1 last known"));
    }

    #[test]
    fn file_errors_name_the_file_and_line() {
        let path = std::env::temp_dir().join(format!("tcplb-backends-{}", std::process::id()));
        std::fs::write(&path, "127.0.0.1:80\n# comment\n127.0.0.1:x\n").expect("write");
        let err = read_backends_file(&path).expect_err("bad line");
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 3"),
            "{err}"
        );
        let err = read_backends_file(Path::new("/no/such/file")).expect_err("missing");
        assert!(err.contains("/no/such/file"), "{err}");
    }
}
