//! The files tcplb writes: the pid file is never written through a symlink planted beside
//! it, and the access log is reopened on SIGUSR1 (for logrotate) without losing or
//! repeating a line.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A scratch directory, removed with everything in it when the test ends.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let path = scratch_path(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("mkdir");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_number(path: &str) -> u32 {
    std::fs::read_to_string(path)
        .expect("read")
        .trim()
        .parse()
        .expect("a number")
}

/// The next `count` process ids the kernel will hand out (it counts up from the last one
/// and wraps at `pid_max`, past the low ids kept for the kernel's own).
fn next_pids(count: u32) -> Vec<u32> {
    let last = read_number("/proc/sys/kernel/ns_last_pid");
    let max = read_number("/proc/sys/kernel/pid_max");
    (1..=count)
        .map(|i| {
            let pid = last + i;
            if pid < max { pid } else { pid - max + 2 }
        })
        .collect()
}

/// Someone who can write to the pid file's directory plants symlinks, pointing at a file
/// they want root to overwrite, at every name the temporary file could have: the old
/// `<pidfile>.<pid>.tmp` for the next few thousand pids, and a range of other guesses.
/// tcplb must follow none of them: the victim keeps its bytes, and the pid file ends up a
/// regular file naming tcplb.
#[test]
fn the_pid_file_follows_no_symlink_planted_beside_it() {
    let dir = ScratchDir::new("pid-symlinks");
    let victim = dir.0.join("victim");
    std::fs::write(&victim, "precious\n").expect("write the victim");
    let pid_path = dir.0.join("tcplb.pid");
    let plant = |name: &str| {
        std::os::unix::fs::symlink(&victim, dir.0.join(name)).expect("plant a symlink");
    };
    let pids = next_pids(4000);
    for pid in &pids {
        plant(&format!("tcplb.pid.{pid}.tmp"));
    }
    for name in [
        "tcplb.pid",
        "tcplb.pid.tmp",
        ".tcplb.pid.tmp",
        "tcplb.pid~",
        "tcplb.pid.new",
        "tcplb.tmp",
    ] {
        plant(name);
    }
    let planted = std::fs::read_dir(&dir.0).expect("list").count();

    let backend = Backend::start(1, echo());
    let pid_arg = pid_path.to_str().expect("utf-8 path");
    let mut tcplb = Tcplb::start(&["--pid-file", pid_arg, &backend.arg()]);
    let pid = tcplb.pid();
    assert!(
        pids.contains(&pid),
        "tcplb got pid {pid}, outside the planted range {:?}..={:?}: the test proves nothing",
        pids.first(),
        pids.last()
    );
    // It serves (the pid file is written before the start line).
    let (stream, id) = connect_and_identify_echo(&tcplb);
    assert_eq!(id, b"x");
    drop(stream);

    let untouched = |why: &str| {
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read the victim"),
            "precious\n",
            "{why}: the victim was written through a symlink"
        );
    };
    untouched("at start");
    let meta = std::fs::symlink_metadata(&pid_path).expect("the pid file");
    assert!(meta.file_type().is_file(), "the pid file is {meta:?}");
    assert_eq!(
        std::fs::read_to_string(&pid_path).expect("read the pid file"),
        format!("{pid}\n")
    );
    assert_eq!(
        meta.mode() & 0o022,
        0,
        "writable by others: {:o}",
        meta.mode()
    );
    // No temporary file left behind: the planted names, with the pid file's symlink
    // replaced by the file itself.
    assert_eq!(
        std::fs::read_dir(&dir.0).expect("list").count(),
        planted,
        "a temporary file was left behind"
    );

    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    untouched("at exit");
    assert!(
        !pid_path.exists() && std::fs::symlink_metadata(&pid_path).is_err(),
        "the pid file is removed at exit"
    );
}

/// Sends one byte through tcplb to an echo backend: the stream and the byte that came back.
fn connect_and_identify_echo(tcplb: &Tcplb) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = tcplb.connect();
    stream.write_all(b"x").expect("write");
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).expect("read the echo");
    (stream, back.to_vec())
}
