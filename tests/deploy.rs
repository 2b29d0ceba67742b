//! The deployment files against the binary they run: the Kubernetes pod's memory limit
//! (`deploy/kubernetes/`) holds what tcplb, started with the manifest's own arguments, may
//! use; the `Dockerfile` builds reproducibly and caches its dependencies. (The image itself
//! is not built here: no container engine.)

mod common;

use common::*;

/// The manifest's tcplb arguments (its `- --flag=value` lines, as flag and value) and its
/// memory limit in MiB.
fn manifest() -> (Vec<(String, String)>, u64) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/deployment.yaml"
    ))
    .expect("read deployment.yaml");
    let args = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|arg| {
            let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
            (format!("--{flag}"), value.to_string())
        })
        .collect();
    let limits = text.find("limits:").expect("resources.limits");
    let limit = text[limits..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .and_then(|v| v.trim().strip_suffix("Mi"))
        .and_then(|v| v.parse().ok())
        .expect("a memory limit in Mi");
    (args, limit)
}

/// The pod's memory limit holds, at their worst, the buffer pool, every pipe full, the
/// sessions (about 0.25 KiB each) and the process itself, as tcplb reports them when
/// started with the manifest's arguments (on loopback, one local backend).
#[test]
fn the_pod_memory_limit_holds_the_buffer_pool_and_every_pipe_full() {
    let (args, limit_mib) = manifest();
    let backend = Backend::start(1, echo());
    let mut run = Vec::new();
    for (flag, value) in args {
        match flag.as_str() {
            "--listen" => continue,
            "--admin" => run.extend([flag, "127.0.0.1:0".to_string()]),
            _ if value.is_empty() => run.push(flag),
            _ => run.extend([flag, value]),
        }
    }
    run.push(backend.arg());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let tcplb = Tcplb::start(&run);
    let line = tcplb.wait_for_log("listening on ");
    let number_before = |needle: &str| -> u64 {
        let at = line
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {line}"));
        line[..at]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {needle:?} in {line}"))
    };
    let number_after = |needle: &str| -> u64 {
        let at = line
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {line}"));
        line[at + needle.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {needle:?} in {line}"))
    };
    let buffers = number_before(" buffers of ") * number_after(" buffers of ");
    let pipes = number_after("splice through up to ") * tcplb::worker::pipes::PIPE_SIZE as u64;
    let sessions = number_after("max-conns ") * 256;
    let process = 8 << 20;
    let needed = buffers + pipes + sessions + process;
    assert!(
        needed <= limit_mib << 20,
        "the pod's memory limit is {limit_mib} MiB; tcplb may use {} MiB: {} of buffers, {} \
         of pipes, {} of sessions, {} for the process ({line})",
        needed >> 20,
        buffers >> 20,
        pipes >> 20,
        sessions >> 20,
        process >> 20
    );
}

/// The Dockerfile builds exactly the dependency versions of Cargo.lock (`--locked`), in a
/// Rust image pinned to an exact release (or a digest), and builds the dependencies in a
/// layer of their own, from Cargo.toml and Cargo.lock alone, before the sources come in (so
/// a change to tcplb's code does not rebuild them).
#[test]
fn the_dockerfile_builds_locked_in_a_pinned_image_with_a_dependency_layer() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("read the Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let builds: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "no cargo build");
    for &i in &builds {
        assert!(lines[i].contains("--locked"), "not --locked: {}", lines[i]);
    }
    let rust = lines
        .iter()
        .find_map(|l| l.split_once("library/rust:").map(|(_, tag)| tag.trim()))
        .expect("a Rust image");
    let release = rust.split('-').next().unwrap_or_default();
    let exact =
        release.split('.').count() == 3 && release.split('.').all(|n| n.parse::<u32>().is_ok());
    assert!(
        exact || rust.contains("@sha256:"),
        "the Rust image is not pinned: rust:{rust}"
    );
    let position = |what: &str| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what:?} in the Dockerfile"))
    };
    let manifests = position("COPY Cargo.toml Cargo.lock");
    let sources = position("COPY . .");
    assert!(
        manifests < builds[0] && builds[0] < sources,
        "the dependencies are not built from Cargo.toml and Cargo.lock before the sources \
         are copied"
    );
}
