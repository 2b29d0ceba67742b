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

/// The next `count` process ids the kernel will hand out (it counts up from the last one,
/// skipping ids in use, and wraps at `pid_max` to 300, past the ids kept for daemons).
fn next_pids(count: u32) -> Vec<u32> {
    let last = read_number("/proc/sys/kernel/ns_last_pid");
    let max = read_number("/proc/sys/kernel/pid_max");
    (1..=count)
        .map(|i| {
            let pid = last + i;
            if pid < max { pid } else { pid - max + 300 }
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
    // Planting takes a while, and other processes (and threads) take pids meanwhile: plant
    // until at least 3000 of the next pids are covered.
    let mut pids = std::collections::BTreeSet::new();
    loop {
        let new: Vec<u32> = next_pids(4000)
            .into_iter()
            .filter(|&pid| pids.insert(pid))
            .collect();
        for pid in &new {
            plant(&format!("tcplb.pid.{pid}.tmp"));
        }
        if new.len() <= 1000 {
            break;
        }
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
        "tcplb got pid {pid}, outside the {} planted: the test proves nothing",
        pids.len()
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

/// The client address of each line of an access log (`client=ADDR`).
fn clients_in(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("client="))
                .unwrap_or_else(|| panic!("no client in {line:?}"))
                .to_string()
        })
        .collect()
}

/// logrotate renames the access log and sends SIGUSR1, twice, while clients come and go
/// without pause: every session's line lands in exactly one of the three files (none
/// lost, none twice), and every session that began after the reopen was logged lands in
/// the new file.
#[test]
fn sigusr1_reopens_the_access_log_and_loses_no_line() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = ScratchDir::new("reopen");
    let log = dir.0.join("access.log");
    let backend = Backend::start(1, echo());
    let log_arg = log.to_str().expect("utf-8 path");
    let mut tcplb = Tcplb::start(&["--access-log", log_arg, &backend.arg()]);

    // Sessions one after another until told to stop; each remembers its client address
    // and which rotation had been logged as done when it began.
    let stop = Arc::new(AtomicBool::new(false));
    let rotations = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let client = {
        let (stop, rotations, sessions) = (stop.clone(), rotations.clone(), sessions.clone());
        let addr = tcplb.addr;
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !stop.load(Ordering::SeqCst) {
                let began = rotations.load(Ordering::SeqCst);
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
                let me = stream.local_addr().expect("addr").to_string();
                stream.write_all(b"x").expect("write");
                let mut back = [0u8; 1];
                stream.read_exact(&mut back).expect("echo");
                drop(stream);
                sessions.lock().expect("sessions").push((me, began));
            }
        })
    };

    let rotated = [dir.0.join("access.log.1"), dir.0.join("access.log.2")];
    for (i, old) in rotated.iter().enumerate() {
        // Some lines in the file first, and more sessions under way while it is renamed.
        let before = sessions.lock().expect("sessions").len();
        wait_until(
            || sessions.lock().expect("sessions").len() >= before + 50,
            || "the client stalled".to_string(),
        );
        wait_for_lines(&log, 1);
        std::fs::rename(&log, old).expect("rotate");
        tcplb.signal(libc::SIGUSR1);
        tcplb.wait_for_nth_log("SIGUSR1: reopened the access log", i + 1);
        rotations.store(i + 1, Ordering::SeqCst);
    }
    let before = sessions.lock().expect("sessions").len();
    wait_until(
        || sessions.lock().expect("sessions").len() >= before + 50,
        || "the client stalled".to_string(),
    );
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client thread");
    // At exit the writer writes out every line it was given.
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));

    let sessions = sessions.lock().expect("sessions").clone();
    let files = [rotated[0].clone(), rotated[1].clone(), log.clone()];
    let mut found: HashMap<String, Vec<usize>> = HashMap::new();
    for (f, path) in files.iter().enumerate() {
        for client in clients_in(path) {
            found.entry(client).or_default().push(f);
        }
    }
    let lines: usize = found.values().map(Vec::len).sum();
    for (client, began) in &sessions {
        match found.get(client).map(Vec::as_slice) {
            None => panic!("session {client} was not logged"),
            Some([f]) => assert!(
                *f >= *began,
                "session {client} began after rotation {began} yet is in {}",
                files[*f].display()
            ),
            Some(more) => panic!("session {client} was logged {} times", more.len()),
        }
    }
    assert_eq!(
        lines,
        sessions.len(),
        "lines of sessions the client never ran"
    );
    let per_file: Vec<usize> = files.iter().map(|p| clients_in(p).len()).collect();
    assert!(per_file.iter().all(|&n| n > 0), "{per_file:?}");
}
