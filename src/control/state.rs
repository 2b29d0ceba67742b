//! The runtime state an upgrade hands to the new process: what `tcplb ctl` set (drain and
//! maint, weights) and the backends it added and deleted, so a drained backend stays
//! drained across `SIGUSR2`. The old process writes it as text to an anonymous file
//! (`memfd` on Linux, an unlinked temporary file elsewhere) handed over with the sockets;
//! the new one reads it before it builds its pools. Lines:
//!
//! ```text
//! tcplb-runtime-state 1
//! added POOL ADDR SPEC          a backend added at run time (SPEC as it was given)
//! deleted POOL ADDR             a listed backend deleted at run time
//! backend POOL ADDR admin=drain weight=3
//! ```
//!
//! Only what differs from the configuration is written. What the new process's
//! configuration no longer has (a pool, a backend) is dropped; a line it cannot read is
//! skipped with a warning. Agent words and slow-start ramps are not handed over: agents are
//! asked again within their interval.

use crate::config::BackendSpec;
use crate::fleet::backend::{Admin, ResolvedBackend};
use crate::fleet::discovery::{Overlay, Overlays};
use crate::service::Topology;
use log::{info, warn};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;

const HEADER: &str = "tcplb-runtime-state 1";
/// The most a state file may hold.
const MAX_BYTES: u64 = 64 << 20;

/// One backend's operator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub pool: String,
    pub addr: SocketAddr,
    pub admin: Admin,
    pub weight: Option<u32>,
}

/// What an upgrade hands over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handed {
    pub overlays: Overlays,
    pub backends: Vec<BackendState>,
}

/// The state of `topology`'s backends and `overlays`, as text.
pub fn capture(topology: &Topology, overlays: &Overlays) -> String {
    let mut out = format!("{HEADER}\n");
    for (pool, overlay) in overlays {
        for (backend, spec) in &overlay.added {
            let _ = writeln!(out, "added {pool} {} {spec}", backend.addr);
        }
        for addr in &overlay.deleted {
            let _ = writeln!(out, "deleted {pool} {addr}");
        }
    }
    for fleet in topology.pools() {
        for b in fleet.backends() {
            if b.admin() == Admin::Ready && b.weight_set().is_none() {
                continue;
            }
            let _ = write!(
                out,
                "backend {} {} admin={}",
                fleet.name(),
                b.addr,
                b.admin().as_str()
            );
            if let Some(w) = b.weight_set() {
                let _ = write!(out, " weight={w}");
            }
            out.push('\n');
        }
    }
    out
}

/// Reads handed-over state; lines it cannot read are skipped with a warning.
pub fn parse(text: &str) -> Handed {
    let mut handed = Handed::default();
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        warn!("upgrade: the runtime state handed over is not one this tcplb reads; ignored");
        return handed;
    }
    for line in lines.filter(|l| !l.trim().is_empty()) {
        if parse_line(line, &mut handed).is_none() {
            warn!(
                "upgrade: cannot read runtime state line {:?}; skipped",
                crate::config::printable(line)
            );
        }
    }
    handed
}

fn overlay<'a>(handed: &'a mut Handed, pool: &str) -> &'a mut Overlay {
    let i = match handed.overlays.iter().position(|(p, _)| p == pool) {
        Some(i) => i,
        None => {
            handed.overlays.push((pool.to_string(), Overlay::default()));
            handed.overlays.len() - 1
        }
    };
    &mut handed.overlays[i].1
}

fn parse_line(line: &str, handed: &mut Handed) -> Option<()> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["added", pool, addr, spec] => {
            let addr: SocketAddr = addr.parse().ok()?;
            let spec = BackendSpec::parse(spec).ok()?;
            let resolved = ResolvedBackend {
                addr,
                name: spec.authority(),
                weight: spec.weight,
                backup: spec.backup,
                send_proxy: spec.send_proxy,
                agent_port: spec.agent_port,
                maxconn: spec.maxconn,
            };
            overlay(handed, pool).added.push((resolved, spec));
        }
        ["deleted", pool, addr] => {
            let addr = addr.parse().ok()?;
            overlay(handed, pool).deleted.push(addr);
        }
        ["backend", pool, addr, settings @ ..] => {
            let mut state = BackendState {
                pool: pool.to_string(),
                addr: addr.parse().ok()?,
                admin: Admin::Ready,
                weight: None,
            };
            for setting in settings {
                match setting.split_once('=')? {
                    ("admin", word) => state.admin = Admin::from_name(word)?,
                    ("weight", n) => {
                        state.weight = Some(crate::config::parse_number(
                            n,
                            1,
                            u64::from(crate::config::MAX_WEIGHT),
                        )? as u32);
                    }
                    _ => return None,
                }
            }
            handed.backends.push(state);
        }
        _ => return None,
    }
    Some(())
}

/// Gives the backends of `topology` the operator settings handed over.
pub fn apply(handed: &Handed, topology: &Topology) {
    let mut applied = 0;
    for state in &handed.backends {
        let Some(backend) = topology
            .pools()
            .find(|f| **f.name() == *state.pool)
            .and_then(|f| f.backends().find(|b| b.addr == state.addr))
        else {
            continue;
        };
        backend.set_admin(state.admin);
        backend.set_weight(state.weight);
        applied += 1;
    }
    let added: usize = handed.overlays.iter().map(|(_, o)| o.added.len()).sum();
    let deleted: usize = handed.overlays.iter().map(|(_, o)| o.deleted.len()).sum();
    if applied + added + deleted > 0 {
        info!(
            "upgrade: runtime state taken over: {applied} backend settings, {added} added and \
             {deleted} deleted backends"
        );
    }
}

/// An anonymous file holding `text`, read from its start: what an upgrade hands over.
pub fn to_file(text: &str) -> io::Result<File> {
    let mut file = anonymous()?;
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(file)
}

#[cfg(target_os = "linux")]
fn anonymous() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor (or
    // -1), which we own from here on.
    let fd = unsafe { libc::memfd_create(c"tcplb-runtime-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return temporary();
    }
    // SAFETY: `fd` is a new, open descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn anonymous() -> io::Result<File> {
    temporary()
}

/// A temporary file, unlinked at once.
fn temporary() -> io::Result<File> {
    let path = std::env::temp_dir().join(format!(
        "tcplb-runtime-state-{}-{}",
        std::process::id(),
        crate::clock::now_millis()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Reads a handed-over state file.
pub fn read(file: File) -> io::Result<String> {
    let mut text = String::new();
    file.take(MAX_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_text() {
        let text = "tcplb-runtime-state 1\n\
                    added web 127.0.0.1:9003 localhost:9003,weight=2\n\
                    deleted web 127.0.0.1:9001\n\
                    backend web 127.0.0.1:9002 admin=drain weight=3\n\
                    backend db [::1]:5432 admin=maint\n\
                    nonsense here\n";
        let handed = parse(text);
        assert_eq!(handed.overlays.len(), 1);
        let (pool, overlay) = &handed.overlays[0];
        assert_eq!(pool, "web");
        assert_eq!(
            overlay.added[0].0.addr,
            "127.0.0.1:9003".parse().expect("addr")
        );
        assert_eq!(overlay.added[0].0.weight, 2);
        assert_eq!(overlay.added[0].0.name, "localhost:9003");
        assert_eq!(overlay.deleted, ["127.0.0.1:9001".parse().expect("addr")]);
        assert_eq!(
            handed.backends,
            [
                BackendState {
                    pool: "web".into(),
                    addr: "127.0.0.1:9002".parse().expect("addr"),
                    admin: Admin::Drain,
                    weight: Some(3),
                },
                BackendState {
                    pool: "db".into(),
                    addr: "[::1]:5432".parse().expect("addr"),
                    admin: Admin::Maint,
                    weight: None,
                },
            ]
        );
        assert_eq!(
            parse("something else\nbackend a 1.2.3.4:5 admin=drain\n"),
            Handed::default()
        );
    }

    #[test]
    fn the_file_reads_back() {
        let file = to_file("tcplb-runtime-state 1\n").expect("file");
        assert_eq!(read(file).expect("read"), "tcplb-runtime-state 1\n");
    }
}
