//! `tcplb ctl` as an operator runs it: the real binary's client against a running tcplb's
//! control socket, its exit status, stdout and stderr.

use super::process::Scratch;
use std::path::Path;
use std::process::{Command, Stdio};

/// A control socket path for a test (removed when dropped).
pub fn ctl_socket(name: &str) -> Scratch {
    Scratch::new(&format!("{name}.sock"))
}

/// `tcplb ctl --socket SOCKET ARGS...`: (exit code, stdout, stderr).
pub fn ctl(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    ctl_command(socket, args, |_| {})
}

/// As [`ctl`], adjusting the command first (to run it as another user).
pub fn ctl_command(
    socket: &Path,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcplb"));
    command
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null());
    adjust(&mut command);
    let out = command.output().expect("run tcplb ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tcplb ctl` that must succeed: its stdout.
pub fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(socket, args);
    assert_eq!(code, Some(0), "tcplb ctl {args:?} failed: {err}");
    out
}

/// `tcplb ctl --json show backends`: one object per backend.
pub fn ctl_backends(socket: &Path) -> Vec<serde_json::Value> {
    let out = ctl_ok(socket, &["--json", "show", "backends"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON from tcplb ctl");
    doc["backends"].as_array().expect("backends").clone()
}

/// The row of backend `addr` in `tcplb ctl --json show backends`.
pub fn ctl_backend(socket: &Path, addr: &str) -> Option<serde_json::Value> {
    ctl_backends(socket)
        .into_iter()
        .find(|b| b["backend"] == addr)
}
