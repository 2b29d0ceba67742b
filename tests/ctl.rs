//! `tcplb ctl` against a running tcplb, as an operator uses it for a rolling deploy: drain a
//! backend under load (its live session finishes byte for byte, new ones avoid it) and
//! bring it back; weights; backends added and deleted at run time; sessions killed; the
//! state kept across SIGHUP and SIGUSR2; the socket refused to another user; the admin
//! port refusing every method but GET and HEAD.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A config of one service `web` on a free port whose pool `web` has `backends`, with the
/// control socket at `socket`; `pool` and `global` are more keys for those tables.
fn config(socket: &Path, backends: &[&Arc<Backend>], pool: &str, global: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.arg()))
        .collect();
    format!(
        "[global]\ncontrol-socket = \"{}\"\n{global}\n\
         [services.web]\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n\
         [pools.web]\nbackends = [{}]\n{pool}\n",
        socket.display(),
        list.join(", ")
    )
}

/// Opens a session through `addr` and reads the backend's id byte.
fn session(addr: SocketAddr) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(addr).expect("connect through tcplb");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut id = [0u8; 1];
    stream.read_exact(&mut id).expect("the backend's id");
    (stream, id[0])
}

/// Opens sessions until one reaches backend `id` (closing the others); returns it.
fn session_on(addr: SocketAddr, id: u8) -> TcpStream {
    for _ in 0..64 {
        let (stream, got) = session(addr);
        if got == id {
            return stream;
        }
        close_and_wait(stream);
    }
    panic!("no session reached backend {id}");
}

/// Sends `len` patterned bytes through an echo session and checks every byte came back.
fn echo_exact(stream: TcpStream, seed: u64, len: usize) {
    let data = pattern(seed, len);
    let back = echo_through(stream, &data);
    assert_eq!(back.len(), data.len(), "every byte came back");
    assert_eq!(hash(&back), hash(&data), "byte for byte");
}

/// The ids of `n` sessions opened one after another (each closed before the next).
fn spread(addr: SocketAddr, n: usize) -> HashMap<u8, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (stream, id) = session(addr);
        *seen.entry(id).or_default() += 1;
        close_and_wait(stream);
    }
    seen
}

#[test]
fn a_drained_backend_takes_no_new_session_under_load_finishes_its_live_one_and_comes_back() {
    let a = Backend::start(1, identify_then_echo());
    let b = Backend::start(2, identify_then_echo());
    let socket = ctl_socket("drain");
    // Round-robin: without the drain, backend 1 would take every other session.
    let tcplb = Tcplb::start_config(
        &config(&socket, &[&a, &b], "balance = \"round-robin\"", ""),
        &[],
    );
    let addr = tcplb.service_addr("web");
    let live = session_on(addr, 1);

    // Load: sessions one after another from another thread, each recorded with the phase
    // it started in (0 before the drain was answered, 1 drained, 2 once `ready` is asked).
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u8, u8)>>> = Arc::default();
    let loader = {
        let (phase, stop, seen) = (Arc::clone(&phase), Arc::clone(&stop), Arc::clone(&seen));
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let started_in = phase.load(Ordering::SeqCst);
                let (stream, id) = session(addr);
                seen.lock().expect("seen").push((started_in, id));
                close_and_wait(stream);
            }
        })
    };
    wait_until(
        || seen.lock().expect("seen").len() >= 20,
        || "the load got going".to_string(),
    );

    let answer = ctl_ok(&socket, &["set", "state", "web", &a.arg(), "drain"]);
    phase.store(1, Ordering::SeqCst);
    assert!(
        answer.contains(&a.arg()) && answer.contains("drain"),
        "{answer}"
    );
    tcplb.wait_for_log(&format!("ctl: set state web {} drain", a.arg()));
    let row = ctl_backend(&socket, &a.arg()).expect("a's row");
    assert_eq!(row["state"], "drain");
    assert_eq!(row["admin"], "drain");
    assert_eq!(row["active"], 1, "its live session goes on");
    // /backends says the same (one answer to "does it take sessions?").
    wait_until(
        || {
            seen.lock()
                .expect("seen")
                .iter()
                .filter(|(p, _)| *p == 1)
                .count()
                >= 50
        },
        || "sessions during the drain".to_string(),
    );
    // The live session finishes, every byte.
    echo_exact(live, 7, 1 << 20);

    phase.store(2, Ordering::SeqCst);
    ctl_ok(&socket, &["set", "state", "web", &a.arg(), "ready"]);
    wait_until(
        || {
            seen.lock()
                .expect("seen")
                .iter()
                .any(|&(p, id)| p == 2 && id == 1)
        },
        || "backend 1 takes sessions again after ready".to_string(),
    );
    stop.store(true, Ordering::SeqCst);
    loader.join().expect("loader");
    let seen = seen.lock().expect("seen");
    let drained: Vec<u8> = seen
        .iter()
        .filter(|(p, _)| *p == 1)
        .map(|(_, id)| *id)
        .collect();
    assert!(
        drained.iter().all(|&id| id == 2),
        "a session started during the drain went to the drained backend: {drained:?}"
    );
    assert!(
        seen.iter().any(|&(p, id)| p == 0 && id == 1),
        "it took sessions before"
    );
}

#[test]
fn weight_three_to_one_holds_for_held_sessions_and_for_round_robin() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let socket = ctl_socket("weight");
    let tcplb = Tcplb::start_config(&config(&socket, &[&a, &b], "", ""), &[]);
    let addr = tcplb.service_addr("web");
    let answer = ctl_ok(&socket, &["set", "weight", "web", &a.arg(), "3"]);
    assert!(answer.contains("1/3 set"), "{answer}");
    tcplb.wait_for_log(&format!("ctl: pool web: backend {} now weight 3", a.arg()));
    let held: Vec<(TcpStream, u8)> = (0..40).map(|_| session(addr)).collect();
    let on_a = held.iter().filter(|(_, id)| *id == 1).count();
    assert_eq!(
        (on_a, 40 - on_a),
        (30, 10),
        "least active per unit of weight"
    );
    drop(held);

    // Round-robin takes weights when its generation is built: the change rebuilds it, and
    // is answered once every worker has it.
    let c = Backend::start(3, identify_then_echo());
    let d = Backend::start(4, identify_then_echo());
    let socket = ctl_socket("weight-rr");
    let tcplb = Tcplb::start_config(
        &config(&socket, &[&c, &d], "balance = \"round-robin\"", ""),
        &[],
    );
    let addr = tcplb.service_addr("web");
    assert_eq!(spread(addr, 8).get(&3), Some(&4), "1:1 first");
    ctl_ok(&socket, &["set", "weight", "web", &c.arg(), "3"]);
    let seen = spread(addr, 40);
    assert_eq!(
        (seen.get(&3).copied(), seen.get(&4).copied()),
        (Some(30), Some(10)),
        "3:1 turns"
    );
}

#[test]
fn backends_are_added_and_deleted_at_run_time_and_stay_so_across_a_reload() {
    let a = Backend::start(1, identify_then_echo());
    let b = Backend::start(2, identify_then_echo());
    let socket = ctl_socket("add-del");
    let tcplb = Tcplb::start_config(&config(&socket, &[&a], "", ""), &[]);
    let addr = tcplb.service_addr("web");
    assert_eq!(spread(addr, 4).get(&1), Some(&4));

    let answer = ctl_ok(&socket, &["add", "backend", "web", &b.arg()]);
    assert!(answer.contains(&b.arg()), "{answer}");
    tcplb.wait_for_log(&format!("ctl: pool web: added backend {}", b.arg()));
    assert!(
        spread(addr, 10).contains_key(&2),
        "the added backend takes sessions"
    );
    let (code, _, err) = ctl(&socket, &["add", "backend", "web", &b.arg()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("pool web already has backend {}", b.arg())),
        "{err}"
    );

    // Delete a, with a session live on it: it drains.
    let live = session_on(addr, 1);
    let answer = ctl_ok(&socket, &["del", "backend", "web", &a.arg()]);
    assert!(answer.contains("1 sessions left to drain"), "{answer}");
    let row = ctl_backend(&socket, &a.arg()).expect("shown while it drains");
    assert_eq!(row["state"], "draining", "out of the pool: {row}");
    assert_eq!(row["active"], 1);
    assert_eq!(spread(addr, 10).get(&2), Some(&10), "new sessions avoid it");
    echo_exact(live, 3, 256 << 10);
    assert!(
        ctl_backend(&socket, &a.arg()).is_none(),
        "gone once drained"
    );
    let (code, _, err) = ctl(&socket, &["del", "backend", "web", &b.arg()]);
    assert_eq!(code, Some(1), "the last backend stays");
    assert!(err.contains("no backend left"), "{err}");

    // A reload of the unchanged file keeps both changes.
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 services");
    let rows = ctl_backends(&socket);
    let addrs: Vec<&str> = rows.iter().filter_map(|r| r["backend"].as_str()).collect();
    assert_eq!(addrs, [b.arg()], "added stays, deleted stays out");
    assert_eq!(spread(addr, 4).get(&2), Some(&4));
    // `tcplb ctl reload` answers with the outcome.
    let answer = ctl_ok(&socket, &["reload"]);
    assert!(answer.starts_with("reloaded: 1 services"), "{answer}");
}

#[test]
fn kill_sessions_cuts_that_backends_sessions_only() {
    let a = Backend::start(1, identify_then_echo());
    let b = Backend::start(2, identify_then_echo());
    let socket = ctl_socket("kill");
    let tcplb = Tcplb::start_config(
        &config(&socket, &[&a, &b], "balance = \"round-robin\"", ""),
        &[],
    );
    let addr = tcplb.service_addr("web");
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    while on_a.len() < 3 || on_b.is_empty() {
        let (stream, id) = session(addr);
        if id == 1 && on_a.len() < 3 {
            on_a.push(stream);
        } else if id == 2 && on_b.is_empty() {
            on_b.push(stream);
        } else {
            close_and_wait(stream);
        }
    }
    let answer = ctl_ok(&socket, &["kill", "sessions", "web", &a.arg()]);
    assert!(answer.starts_with("cutting 3 sessions"), "{answer}");
    for mut stream in on_a {
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) => assert!(is_peer_end(&e), "{e}"),
            Ok(n) => panic!("{n} bytes from a killed session"),
        }
    }
    a.wait_active(0);
    // b's session is untouched.
    echo_exact(on_b.remove(0), 9, 64 << 10);
    assert!(tcplb.count_logs("cutting the 3 sessions") == 1);
}

/// Kills the process with this id when dropped (an upgrade's new process is not ours to
/// wait for).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the pid is the upgraded tcplb's.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

#[test]
fn runtime_state_is_kept_across_sighup_and_sigusr2() {
    let a = Backend::start(1, identify_then_echo());
    let b = Backend::start(2, identify_then_echo());
    let c = Backend::start(3, identify_then_echo());
    let socket = ctl_socket("keep");
    let mut tcplb = Tcplb::start_config(
        &config(&socket, &[&a, &b], "", "upgrade-probation = \"0\""),
        &[],
    );
    let addr = tcplb.service_addr("web");
    ctl_ok(&socket, &["set", "state", "web", &a.arg(), "drain"]);
    ctl_ok(&socket, &["set", "weight", "web", &b.arg(), "3"]);
    ctl_ok(&socket, &["add", "backend", "web", &c.arg()]);
    let check = |why: &str| {
        let rows = ctl_backends(&socket);
        let row = |addr: &str| {
            rows.iter()
                .find(|r| r["backend"] == addr)
                .unwrap_or_else(|| panic!("{why}: no row for {addr}: {rows:?}"))
                .clone()
        };
        assert_eq!(row(&a.arg())["state"], "drain", "{why}");
        assert_eq!(row(&b.arg())["weight_set"], 3, "{why}");
        assert_eq!(row(&c.arg())["state"], "up", "{why}");
        let seen = spread(addr, 12);
        assert!(
            !seen.contains_key(&1),
            "{why}: the drained backend took a session"
        );
    };
    check("before");
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 services");
    check("after SIGHUP");

    tcplb.signal(libc::SIGUSR2);
    let line = tcplb.wait_for_log("serves (ready");
    let new: u32 = line
        .split("upgrade: pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let _new = KillOnDrop(new);
    assert_eq!(
        tcplb.wait_exit(PATIENCE),
        Some(0),
        "the old process drains and exits"
    );
    tcplb.wait_for_log("runtime state taken over: 2 backend settings, 1 added");
    assert!(socket.exists(), "the new process keeps the socket");
    check("after SIGUSR2");
}

#[test]
fn the_socket_is_its_owners_only() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the client as another user needs root");
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: no setpriv (util-linux) to run the client as nobody");
        return;
    };
    let a = Backend::start(1, echo());
    // A directory anyone may pass through, so only the socket's own mode can refuse, and
    // a copy of the binary anyone may run.
    let dir = scratch_path("ctl-owner");
    std::fs::create_dir_all(&dir).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.join("tcplb");
    std::fs::copy(env!("CARGO_BIN_EXE_tcplb"), &exe).expect("copy the binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = |socket: &Path| {
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&exe)
            .args(["ctl", "--socket"])
            .arg(socket)
            .args(["show", "backends"])
            .output()
            .expect("run setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (mode, refused) in [(None, true), (Some("0666"), false)] {
        let socket = dir.join(format!("ctl-{}.sock", mode.unwrap_or("default")));
        let global = mode.map_or(String::new(), |m| format!("control-socket-mode = \"{m}\""));
        let _tcplb = Tcplb::start_config(&config(&socket, &[&a], "", &global), &[]);
        let meta = std::fs::metadata(&socket).expect("the socket");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            if refused { 0o600 } else { 0o666 }
        );
        let (code, err) = as_nobody(&socket);
        if refused {
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("Permission denied"), "{err}");
        } else {
            assert_eq!(code, Some(0), "widened, nobody may steer it: {err}");
        }
        // Its owner may.
        ctl_ok(&socket, &["show", "backends"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_admin_port_changes_nothing() {
    let a = Backend::start(1, echo());
    let socket = ctl_socket("admin");
    let tcplb = Tcplb::start_config(&config(&socket, &[&a], "", "admin = \"127.0.0.1:0\""), &[]);
    let admin = tcplb.admin_addr();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (status, body) = http_request(
            admin,
            &format!("{method} /backends HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\ndrain"),
        );
        assert_eq!(status, 405, "{method}: {body}");
    }
    let (status, _) = http_request(admin, "HEAD /backends HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let row = ctl_backend(&socket, &a.arg()).expect("row");
    assert_eq!(row["state"], "up", "nothing changed");
}

#[test]
fn errors_name_what_does_not_exist() {
    let a = Backend::start(1, echo());
    let socket = ctl_socket("errors");
    let mut tcplb = Tcplb::start_config(&config(&socket, &[&a], "", ""), &[]);
    for (args, said) in [
        (
            vec!["set", "state", "wbe", "127.0.0.1:1", "drain"],
            "no pool wbe (did you mean web?)".to_string(),
        ),
        (
            vec!["kill", "sessions", "web", "10.9.9.9:80"],
            "pool web has no backend 10.9.9.9:80".to_string(),
        ),
        (vec!["show", "backends", "nope"], "no pool nope".to_string()),
        (
            vec!["set", "state", "web", "x", "off"],
            "state 'off' is not ready, drain or maint".to_string(),
        ),
    ] {
        let (code, out, err) = ctl(&socket, &args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&said), "{args:?}: {err}");
    }
    let (code, _, err) = ctl(&socket, &["frobnicate"]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    let (code, out, _) = ctl(&socket, &["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("set state POOL BACKEND ready|drain|maint"),
        "{out}"
    );
    // A second tcplb on the same socket refuses to start.
    let mut second = Launch::config(&config(&socket, &[&a], "", "")).spawn();
    assert_eq!(second.wait_exit(PATIENCE), Some(1));
    second.wait_for_log("is in use: another tcplb answers on it");
    // The file goes when its process exits.
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    assert!(!socket.exists(), "removed at exit");
    let (code, _, err) = ctl(&socket, &["show", "backends"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot connect"), "{err}");
}
