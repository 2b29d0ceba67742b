//! Many services in one process, from a config file (`--config`): each service reaches its
//! own pool, services share a pool's least-active counts, and a reload (SIGHUP) applies
//! only what changed: added services serve, removed ones close at once and drain, a changed
//! pool leaves every other service untouched (not one connection refused on its port), and
//! a file that does not parse changes nothing. Real backends, every byte checked.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A service: `(name, pool)`, listening on a free loopback port.
fn service(name: &str, pool: &str) -> String {
    format!("[services.{name}]\nlisten = [\"127.0.0.1:0\"]\npool = \"{pool}\"\n\n")
}

/// A pool with these backends.
fn pool(name: &str, backends: &[String]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!("[pools.{name}]\nbackends = [{}]\n\n", list.join(", "))
}

const ADMIN: &str = "[global]\nadmin = \"127.0.0.1:0\"\n\n";

/// Connects to `addr`, reads the backend's id byte.
fn identify(addr: SocketAddr) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut id = [0u8; 1];
    stream.read_exact(&mut id).expect("backend id");
    (stream, id[0])
}

/// The address a reload's line gives an added service.
fn added_addr(tcplb: &Tcplb, name: &str) -> SocketAddr {
    let needle = format!("reload: service {name} added, listening on ");
    let line = tcplb.wait_for_log(&needle);
    line.split(&needle)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[test]
fn two_services_on_two_ports_reach_their_own_pools() {
    let web = Backend::start(1, identify_then_echo());
    let cache = Backend::start(2, identify_then_echo());
    let toml = format!(
        "{ADMIN}{}{}{}{}",
        service("web", "web"),
        service("cache", "cache"),
        pool("web", &[web.arg()]),
        pool("cache", &[cache.arg()])
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let (web_addr, cache_addr) = (tcplb.service_addr("web"), tcplb.service_addr("cache"));
    assert_ne!(web_addr, cache_addr);
    for round in 0..5u64 {
        for (addr, id) in [(web_addr, 1), (cache_addr, 2)] {
            let (mut stream, got) = identify(addr);
            assert_eq!(got, id, "service on {addr} reached its own pool");
            let data = pattern(round * 10 + u64::from(id), 3000);
            stream.write_all(&data).expect("send");
            stream.shutdown(Shutdown::Write).expect("half-close");
            let mut back = Vec::new();
            stream.read_to_end(&mut back).expect("echo");
            assert_eq!(hash(&back), hash(&data));
        }
    }
    let metrics = tcplb.metrics();
    for name in ["web", "cache"] {
        assert_eq!(
            metrics.get("tcplb_connections_accepted_total", &[("service", name)]),
            5.0
        );
    }
    assert_eq!(
        metrics.get(
            "tcplb_backend_connections_total",
            &[("pool", "web"), ("backend", &web.arg())]
        ),
        5.0
    );
    let backends = Backends::get(&tcplb);
    assert_eq!(backends.service("web")["pool"], "web");
    assert_eq!(backends.pool("cache")["services"][0], "cache");
    assert_eq!(
        backends.service("cache")["listen"][0],
        cache_addr.to_string()
    );
    assert_eq!(web.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(cache.accepted.load(Ordering::SeqCst), 5);
}

#[test]
fn one_pool_shared_by_two_services_counts_both_in_least_active() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let toml = format!(
        "{}{}{}",
        service("left", "shared"),
        service("right", "shared"),
        pool("shared", &[a.arg(), b.arg()])
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let (left, right) = (tcplb.service_addr("left"), tcplb.service_addr("right"));
    // Seven through one service, then seven through the other: with one count for both,
    // the pool ends 7/7; counted per service, each would lean the same way (8/6).
    let mut held = Vec::new();
    for addr in [left, right] {
        for _ in 0..7 {
            held.push(identify(addr).0);
        }
    }
    a.wait_active(7);
    b.wait_active(7);
    assert_eq!(
        (
            a.active.load(Ordering::SeqCst),
            b.active.load(Ordering::SeqCst)
        ),
        (7, 7)
    );
    held.into_iter().for_each(close_and_wait);
}

#[test]
fn a_reload_adds_a_service_and_removes_one_whose_session_finishes_byte_exact() {
    let web = Backend::start(1, identify_then_echo());
    let old = Backend::start(2, digest_after_eof());
    let new = Backend::start(3, identify_then_echo());
    let pools = format!(
        "{}{}{}",
        pool("web", &[web.arg()]),
        pool("old", &[old.arg()]),
        pool("new", &[new.arg()])
    );
    let toml = format!(
        "{ADMIN}{}{}{pools}",
        service("web", "web"),
        service("old", "old")
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let old_addr = tcplb.service_addr("old");
    // A session on the service about to go: half its bytes now, the rest after.
    let data = pattern(7, 400_000);
    let mut live = TcpStream::connect(old_addr).expect("connect");
    live.set_read_timeout(Some(PATIENCE)).expect("timeout");
    live.write_all(&data[..200_000]).expect("first half");
    old.wait_active(1);

    tcplb.rewrite_config(&format!(
        "{ADMIN}{}{}{pools}",
        service("web", "web"),
        service("new", "new")
    ));
    tcplb.signal(libc::SIGHUP);
    let new_addr = added_addr(&tcplb, "new");
    tcplb.wait_for_log("reload: service old removed");
    // The removed service's port refuses at once (its listeners are closed, nothing
    // else holds them).
    match TcpStream::connect(old_addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("{old_addr} still accepts after its service was removed"),
    }
    // The added one serves, from its own pool.
    let (_stream, id) = identify(new_addr);
    assert_eq!(id, 3);
    // The untouched one too.
    assert_eq!(identify(tcplb.service_addr("web")).1, 1);
    // The live session of the removed service finishes, every byte.
    live.write_all(&data[200_000..]).expect("second half");
    live.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = String::new();
    live.read_to_string(&mut answer).expect("digest");
    assert_eq!(answer, format!("{} {}\n", data.len(), hash(&data)));
    let metrics = tcplb.metrics();
    assert_eq!(
        metrics.get("tcplb_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[test]
fn a_removed_services_sessions_are_cut_after_the_drain_timeout() {
    let backend = Backend::start(1, identify_and_hold());
    let keep = Backend::start(2, identify_and_hold());
    let base = format!(
        "[global]\ndrain-timeout = \"300ms\"\n\n{}{}",
        pool("gone", &[backend.arg()]),
        pool("keep", &[keep.arg()])
    );
    let tcplb = Tcplb::start_config(
        &format!(
            "{base}{}{}",
            service("gone", "gone"),
            service("keep", "keep")
        ),
        &[],
    );
    let (mut held, _) = identify(tcplb.service_addr("gone"));
    let (mut kept, _) = identify(tcplb.service_addr("keep"));
    tcplb.rewrite_config(&format!("{base}{}", service("keep", "keep")));
    let removed = Instant::now();
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: service gone removed");
    // Cut (a reset: a cut stream must not look complete) once its drain time is over.
    let mut rest = Vec::new();
    let end = held.read_to_end(&mut rest);
    assert!(
        matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(
        removed.elapsed() >= Duration::from_millis(250),
        "cut after {:?}, before its drain time",
        removed.elapsed()
    );
    tcplb.wait_for_log("service gone was removed: cutting its 1 sessions");
    // The session of the service that stays is not touched.
    kept.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let still = kept.read(&mut byte);
    assert!(
        matches!(&still, Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut),
        "{still:?}"
    );
}

#[test]
fn twenty_reloads_of_one_pool_refuse_not_one_connection_of_an_untouched_service() {
    let steady = Backend::start(1, echo());
    let churn: Vec<Arc<Backend>> = (0..2).map(|i| Backend::start(10 + i, echo())).collect();
    let config = |round: usize| {
        let mut weights = churn[0].arg();
        if round % 2 == 1 {
            weights.push_str(",weight=3");
        }
        format!(
            "{ADMIN}{}{}{}{}",
            service("steady", "steady"),
            service("churn", "churn"),
            pool("steady", &[steady.arg()]),
            pool("churn", &[weights, churn[1].arg()])
        )
    };
    let tcplb = Tcplb::start_config(&config(0), &[]);
    let steady_addr = tcplb.service_addr("steady");
    // A long session on the untouched service, streaming through every reload.
    let long_data = pattern(99, 2_000_000);
    let mut long = TcpStream::connect(steady_addr).expect("connect");
    long.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let stop = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    thread::scope(|s| {
        // Load on the untouched service: every connection must be served, byte-exact.
        let load = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let data = pattern(n, 2000);
                let stream = TcpStream::connect(steady_addr)
                    .unwrap_or_else(|e| panic!("connection {n} refused during reloads: {e}"));
                assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
                served.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        });
        let mut reader = long.try_clone().expect("clone");
        let echoed = s.spawn(move || {
            let mut back = Vec::new();
            reader.read_to_end(&mut back).expect("long echo");
            back
        });
        let _stop = StopOnDrop(&stop);
        for round in 1..=20 {
            // Each reload lands while the load runs: it has served more since the last.
            let before = served.load(Ordering::SeqCst);
            wait_until(
                || served.load(Ordering::SeqCst) > before,
                || "the load serves nothing".to_string(),
            );
            tcplb.rewrite_config(&config(round));
            tcplb.signal(libc::SIGHUP);
            tcplb.wait_for_nth_log("reload: pool churn: 0 added", round);
            // A slice of the long session between reloads.
            let at = (round - 1) * 100_000;
            long.write_all(&long_data[at..at + 100_000])
                .expect("the long session streams on");
        }
        stop.store(true, Ordering::SeqCst);
        load.join().expect("load");
        long.shutdown(Shutdown::Write).expect("half-close");
        let back = echoed.join().expect("echo");
        assert_eq!(back.len(), long_data.len());
        assert_eq!(hash(&back), hash(&long_data));
    });
    assert!(
        served.load(Ordering::SeqCst) >= 20,
        "the load ran through the reloads"
    );
    let metrics = tcplb.metrics();
    assert_eq!(
        metrics.get("tcplb_config_reloads_total", &[("result", "ok")]),
        20.0
    );
    assert_eq!(
        tcplb.count_logs("reload: pool steady"),
        0,
        "the untouched pool was not rebuilt"
    );
}

/// Sets its flag when dropped, also when a test fails (unwinds) in between.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_file_that_does_not_parse_on_reload_changes_nothing() {
    let web = Backend::start(1, identify_then_echo());
    let other = Backend::start(2, identify_then_echo());
    let good = format!(
        "{ADMIN}{}{}",
        service("web", "web"),
        pool("web", &[web.arg()])
    );
    let tcplb = Tcplb::start_config(&good, &[]);
    let addr = tcplb.service_addr("web");
    let broken = [
        // A slip in a key: its line and column, and the key meant.
        format!(
            "{ADMIN}{}conect-timeout = \"1s\"\n\n{}",
            service("web", "web"),
            pool("web", &[other.arg()])
        ),
        // Not TOML.
        format!("{ADMIN}[services.web\n"),
        // A service naming a pool that does not exist.
        format!(
            "{ADMIN}{}{}",
            service("web", "nope"),
            pool("web", &[other.arg()])
        ),
    ];
    let wanted = [
        ":8:1: unknown key 'conect-timeout' in [services.web] (did you mean 'connect-timeout'?)",
        ":4:",
        "service 'web' names pool 'nope', which is not defined",
    ];
    for (round, (text, why)) in broken.iter().zip(wanted).enumerate() {
        tcplb.rewrite_config(text);
        tcplb.signal(libc::SIGHUP);
        let line = tcplb.wait_for_nth_log("reload failed, keeping the running set", round + 1);
        assert!(line.contains(why), "{line}");
        assert!(
            line.contains(&tcplb.config_path().display().to_string()),
            "the file is named: {line}"
        );
        // Nothing changed: the same backend serves.
        assert_eq!(identify(addr).1, 1);
    }
    let metrics = tcplb.metrics();
    assert_eq!(
        metrics.get("tcplb_config_reloads_total", &[("result", "error")]),
        3.0
    );
    assert_eq!(
        metrics.get("tcplb_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    // Fixed: the change applies.
    tcplb.rewrite_config(&format!(
        "{ADMIN}{}{}",
        service("web", "web"),
        pool("web", &[other.arg()])
    ));
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: pool web: ");
    assert_eq!(identify(addr).1, 2, "the same port, the new pool");
    assert_eq!(
        tcplb
            .metrics()
            .get("tcplb_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[test]
fn a_file_service_listens_on_every_address_it_lists() {
    let backend = Backend::start(1, identify_then_echo());
    let toml = format!(
        "[services.two]\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\npool = \"p\"\n\n{}",
        pool("p", &[backend.arg()])
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let addrs = tcplb.service_addrs("two");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for addr in addrs {
        assert_eq!(identify(addr).1, 1, "{addr}");
    }
}

/// `tcplb --check --config FILE`: (exit status, stdout, stderr).
fn check(text: &str) -> (Option<i32>, String, String) {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let file = Scratch::new(&format!(
        "check-{}.toml",
        FILES.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&*file, text).expect("write");
    let (code, out, err) = run_cli(&["--check", "--config", &file.arg()]);
    // The file's name in messages is the scratch path: shown as FILE.
    let path = file.arg();
    (code, out.replace(&path, "FILE"), err.replace(&path, "FILE"))
}

#[test]
fn check_summarises_a_good_file_and_exits_zero() {
    let (code, out, err) = check(
        "[defaults]\nconnect-timeout = \"1s\"\n\n\
         [services.web]\nlisten = [\"0.0.0.0:8080\", \"[::]:8080\"]\npool = \"web\"\n\n\
         [services.cache]\nlisten = [\"127.0.0.1:6379\"]\npool = \"redis\"\n\n\
         [pools.web]\nbackends = [\"10.0.0.11:80\", \"10.0.0.12:80,weight=2\"]\n\n\
         [pools.redis]\nbackends = [\"10.0.1.5:6379\"]\nbalance = \"source-hash\"\n\
         hash-balance-factor = 1.25\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "service web: 0.0.0.0:8080, [::]:8080 -> pool web (2 backends, least-active)\n\
         service cache: 127.0.0.1:6379 -> pool redis (1 backend, source-hash (table 65537, \
         balance factor 1.25))\n\
         FILE: ok (2 services, 2 pools)\n"
    );
    assert_eq!(err, "");
}

#[test]
fn check_names_the_file_line_and_column_of_what_is_wrong() {
    let web = "[services.web]\nlisten = [\"127.0.0.1:8080\"]\npool = \"web\"\n";
    let pool = "[pools.web]\nbackends = [\"10.0.0.1:80\"]\n";
    for (text, wanted) in [
        (
            format!("{web}retrys = 3\n{pool}"),
            "FILE:4:1: unknown key 'retrys' in [services.web] (did you mean 'retries'?)",
        ),
        (
            format!("{web}{pool}balance = \"fastest\"\n"),
            "FILE:6:11: invalid value 'fastest' for balance: expected one of least-active, \
             round-robin, random-two, source-hash",
        ),
        (
            format!("{web}idle-timeout = \"5 minutes\"\n{pool}"),
            "FILE:4:16: invalid value '5 minutes' for idle-timeout: expected a duration",
        ),
        (
            format!("{web}retries = \"many\"\n{pool}"),
            "FILE:4:11: invalid value 'many' for retries: expected a whole number from 0 to 16",
        ),
        (
            format!("{web}max-conns = [1]\n{pool}"),
            "FILE:4:13: invalid value a list for max-conns",
        ),
        (
            format!("[services.web]\nlisten = []\npool = \"web\"\n{pool}"),
            "FILE:2:10: listen is empty: give at least one HOST:PORT",
        ),
        (
            format!("[services.web]\npool = \"web\"\n{pool}"),
            "FILE:1:11: service 'web' has no listen",
        ),
        (
            format!("{web}[pools.web]\nbalance = \"round-robin\"\n"),
            "FILE:4:8: pool 'web' has no backend",
        ),
        (
            format!("{web}[pools.wbe]\nbackends = [\"10.0.0.1:80\"]\n"),
            "FILE:1:11: service 'web' names pool 'web', which is not defined (did you mean 'wbe'?)",
        ),
        (
            format!("{web}[services.api]\nlisten = [\"0.0.0.0:8080\"]\npool = \"web\"\n{pool}"),
            "FILE:4:11: service 'api' listens on 0.0.0.0:8080, which service 'web' already \
             listens on (127.0.0.1:8080)",
        ),
        (
            "[services.web]\nlisten = [\"127.0.0.1:80\"]\npool = \"web\"\n\
             [pools.web]\nbackends = [\"127.0.0.1:80\"]\n"
                .to_string(),
            "sessions would loop back into tcplb",
        ),
        (
            format!("[global]\nretries = 2\n{web}{pool}"),
            "FILE:2:1: 'retries' is not a setting of [global]: it goes in [services.NAME], \
             [pools.NAME] or [defaults]",
        ),
        (
            format!("[globals]\nworkers = 2\n{web}{pool}"),
            "FILE:1:2: unknown table or key 'globals' at the top of the file (did you mean \
             [global]?)",
        ),
        (
            format!("{web}{pool}[pools.web"),
            "FILE:6:11: not valid TOML",
        ),
        (String::new(), "no service: add a [services.NAME] table"),
        (
            "[services.\"a b\"]\nlisten = [\"127.0.0.1:1\"]\npool = \"x\"\n".to_string(),
            "FILE:1:11: 'a b' is not a name",
        ),
    ] {
        let (code, out, err) = check(&text);
        assert_eq!(code, Some(2), "{text}\nstdout: {out}\nstderr: {err}");
        assert!(err.starts_with("tcplb: "), "{err}");
        assert!(err.contains(wanted), "{text}\nwanted: {wanted}\ngot: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(out, "");
    }
}

#[test]
fn a_config_file_that_is_not_one_is_a_clear_error() {
    let dir = Scratch::new("config-dir");
    std::fs::create_dir_all(&*dir).expect("mkdir");
    let (code, _, err) = run_cli(&["--config", &dir.arg()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cannot read config file") && err.contains("it is a directory"),
        "{err}"
    );
    std::fs::remove_dir(&*dir).expect("rmdir");
    let (code, _, err) = run_cli(&["--config", "/no/such/tcplb.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("/no/such/tcplb.toml") && err.contains("No such file"),
        "{err}"
    );
    let latin1 = Scratch::new("latin1.toml");
    std::fs::write(&*latin1, b"# caf\xe9\n[services.web]\n").expect("write");
    let (code, _, err) = run_cli(&["--config", &latin1.arg()]);
    assert_eq!(code, Some(2));
    assert!(err.contains(":1:6: the file is not UTF-8 text"), "{err}");
}

#[test]
fn the_config_file_and_the_flags_that_describe_a_service_are_exclusive() {
    let file = Scratch::new("exclusive.toml");
    std::fs::write(&*file, "").expect("write");
    for (args, wanted) in [
        (
            vec!["--listen", "127.0.0.1:1"],
            "--config describes the services and pools: drop --listen (set it in the file instead)",
        ),
        (vec!["10.0.0.1:80"], "drop the BACKEND arguments"),
        (
            vec!["--retries", "3", "10.0.0.1:80"],
            "drop --retries and the BACKEND arguments (set them in the file instead)",
        ),
    ] {
        let mut all = vec!["--config", file.to_str().expect("utf-8")];
        all.extend(args);
        let (code, _, err) = run_cli(&all);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(wanted), "{err}");
    }
    let (code, _, err) = run_cli(&["--check", "10.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--check checks a config file: give it --config FILE"),
        "{err}"
    );
}

#[test]
fn a_reload_fits_max_conns_in_the_open_file_limit_as_start_up_did() {
    let backend = Backend::start(1, echo());
    let toml = format!(
        "[global]\nadmin = \"127.0.0.1:0\"\nmax-conns = 1000\npipes = 0\n\n{}{}",
        service("web", "web"),
        pool("web", &[backend.arg()])
    );
    let tcplb = Launch::config(&toml).nofile(400).start();
    let fitted = tcplb.metrics().get("tcplb_max_connections", &[]);
    assert!(
        fitted < 200.0,
        "max-conns fitted in 400 descriptors: {fitted}"
    );
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: max-conns 1000 does not fit the open-file limit of 400");
    wait_until(
        || {
            tcplb
                .metrics()
                .get("tcplb_config_reloads_total", &[("result", "ok")])
                == 1.0
        },
        || "the reload did not happen".to_string(),
    );
    assert_eq!(tcplb.metrics().get("tcplb_max_connections", &[]), fitted);
}

#[test]
fn defaults_hold_settings_to_inherit_not_a_services_own_things() {
    let (code, _, err) = check(
        "[defaults]\nlisten = [\"127.0.0.1:1\"]\n\n[services.web]\nlisten = [\"127.0.0.1:2\"]\n\
         pool = \"web\"\n\n[pools.web]\nbackends = [\"10.0.0.1:80\"]\n",
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("FILE:2:1: 'listen' cannot be a default: give each [services.NAME] its own"),
        "{err}"
    );
    // A service limit in [defaults] is every service's own limit.
    let backend = Backend::start(1, identify_and_hold());
    let toml = format!(
        "[defaults]\nmax-conns = 1\n\n{}{}",
        service("web", "web"),
        pool("web", &[backend.arg()])
    );
    let tcplb = Tcplb::start_config(&toml, &["--admin", "127.0.0.1:0"]);
    let addr = tcplb.service_addr("web");
    let (_held, _) = identify(addr);
    let mut second = TcpStream::connect(addr).expect("connect");
    second.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut byte = [0u8; 1];
    let refused = second.read(&mut byte);
    assert!(
        matches!(&refused, Ok(0))
            || matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{refused:?}"
    );
    assert_eq!(
        tcplb.metrics().get(
            "tcplb_connections_shed_total",
            &[("service", "web"), ("reason", "max_conns")]
        ),
        1.0
    );
}
