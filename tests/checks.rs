//! Application health checks, agent checks and slow start against real servers: a Redis
//! primary and replica behind a `ROLE`/`master` check (only the primary takes sessions,
//! and sessions follow a failover), an HTTP server answering 503 (down, with the status
//! shown), `expect-regex`, a check on another `port` (with `on-marked-down =
//! "shutdown-sessions"`), an agent moving its backend with its words, and a backend's
//! share of new sessions growing over its slow-start window.

mod common;

use common::proxy::{External, free_ports, program};
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A config of service `svc` on a free port for pool `svc` with `backends` (as written)
/// and `pool` keys, with a control socket at `socket`.
fn config(socket: &Path, backends: &[String], pool: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[global]\ncontrol-socket = \"{}\"\nadmin = \"127.0.0.1:0\"\n\
         [services.svc]\nlisten = [\"127.0.0.1:0\"]\npool = \"svc\"\n\
         [pools.svc]\nbackends = [{}]\n{pool}\n",
        socket.display(),
        list.join(", ")
    )
}

/// Waits until `tcplb ctl` shows backend `addr` with `field` equal to `value`; returns its
/// row.
fn wait_row(
    socket: &Path,
    addr: &str,
    field: &str,
    value: impl Into<serde_json::Value>,
) -> serde_json::Value {
    let value = value.into();
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until(
        || {
            let row = ctl_backend(socket, addr).unwrap_or_default();
            let done = row[field] == value;
            *last.borrow_mut() = row;
            done
        },
        || format!("backend {addr}: {field} is not {value}: {}", last.borrow()),
    );
    last.into_inner()
}

// ---- Redis ----

/// One RESP reply, flattened to its words (`*3 $6 master :0 *0` → `["master", "0"]`).
fn resp(reader: &mut impl BufRead) -> Vec<String> {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a RESP line");
    let line = line.trim_end().to_string();
    let (kind, rest) = line.split_at(1);
    match kind {
        "*" => {
            let n: i64 = rest.parse().expect("array length");
            (0..n.max(0)).flat_map(|_| resp(reader)).collect()
        }
        "$" => {
            let n: i64 = rest.parse().expect("bulk length");
            if n < 0 {
                return vec![];
            }
            let mut bulk = vec![0u8; n as usize + 2];
            reader.read_exact(&mut bulk).expect("bulk");
            vec![String::from_utf8_lossy(&bulk[..n as usize]).into_owned()]
        }
        _ => vec![rest.to_string()],
    }
}

/// Sends `commands` (inline, each ended by CRLF) on `stream` and reads one reply each.
fn redis(stream: TcpStream, commands: &[&str]) -> Vec<Vec<String>> {
    let mut writer = stream.try_clone().expect("clone");
    writer.set_read_timeout(Some(PATIENCE)).expect("timeout");
    for command in commands {
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("send");
    }
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| resp(&mut reader)).collect()
}

/// A real redis-server on `port` (a replica of `primary`, if given).
fn redis_server(binary: &Path, port: u16, primary: Option<u16>) -> External {
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {{dir}}\nprotected-mode no\n"
    );
    if let Some(primary) = primary {
        conf.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
    }
    External::start(
        "redis",
        binary,
        &conf,
        |path, _| vec![path.to_string()],
        &[SocketAddr::from(([127, 0, 0, 1], port))],
    )
}

/// Through tcplb: the role and the port of the Redis a new session reached.
fn role_and_port(addr: SocketAddr) -> (String, u16) {
    let replies = redis(
        TcpStream::connect(addr).expect("connect"),
        &["ROLE", "CONFIG GET port"],
    );
    (
        replies[0].first().cloned().unwrap_or_default(),
        replies[1][1].parse().expect("a port"),
    )
}

#[test]
fn only_the_redis_primary_takes_sessions_and_they_follow_a_failover() {
    let Some(binary) = program("redis-server") else {
        eprintln!("SKIPPED: redis-server is not installed (scripts/setup installs it)");
        return;
    };
    let ports = free_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let _r1 = redis_server(&binary, p1, None);
    let _r2 = redis_server(&binary, p2, Some(p1));
    let interval = Duration::from_millis(200);
    let (rise, fall) = (2u32, 2u32);
    let socket = ctl_socket("redis");
    let tcplb = Tcplb::start_config(
        &config(
            &socket,
            &[format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")],
            &format!(
                "health = {{ interval = \"{}ms\", timeout = \"1s\", rise = {rise}, fall = {fall}, \
                 send = \"ROLE\\r\\n\", expect = \"master\" }}",
                interval.as_millis()
            ),
        ),
        &[],
    );
    let addr = tcplb.service_addr("svc");
    let replica = format!("127.0.0.1:{p2}");
    let row = wait_row(&socket, &replica, "state", "down");
    let why = row["last_check"].as_str().expect("a note");
    assert!(
        why.starts_with("expect \"master\" not found in ") && why.ends_with(" bytes"),
        "{why}"
    );
    tcplb.wait_for_log(&format!(
        "backend {replica} is down: {fall} health checks failed in a row (last: expect \"master\" not found in"
    ));
    let (code, out, _) = ctl(&socket, &["show", "backends"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("down: expect \"master\" not found in"),
        "{out}"
    );
    for _ in 0..20 {
        assert_eq!(role_and_port(addr), ("master".to_string(), p1));
    }

    // Failover: the replica is promoted, the old primary follows it.
    let direct = |port: u16, command: &str| {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        redis(stream, &[command]).remove(0)
    };
    let started = Instant::now();
    assert_eq!(direct(p2, "REPLICAOF NO ONE"), ["OK"]);
    assert_eq!(direct(p1, &format!("REPLICAOF 127.0.0.1 {p2}")), ["OK"]);
    let mut first_on_new = None;
    wait_until(
        || {
            let (role, port) = role_and_port(addr);
            if port == p2 && first_on_new.is_none() {
                first_on_new = Some(started.elapsed());
            }
            port == p2 && role == "master" && {
                let old = ctl_backend(&socket, &format!("127.0.0.1:{p1}")).unwrap_or_default();
                old["state"] == "down"
            }
        },
        || "sessions never followed the failover".to_string(),
    );
    let followed = first_on_new.expect("a session on the new primary");
    let settled = started.elapsed();
    eprintln!(
        "failover: first session on the new primary after {followed:?}, old primary down after \
         {settled:?} (interval {interval:?}, rise {rise}, fall {fall})"
    );
    // A round may have just started when the promotion happened: one interval of slack,
    // and one more for a busy machine.
    assert!(
        followed <= interval * (rise + 2),
        "the new primary took {followed:?} to take sessions"
    );
    for _ in 0..20 {
        assert_eq!(role_and_port(addr), ("master".to_string(), p2));
    }
}

// ---- HTTP ----

const HTTP_SERVER: &str = "\
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = b'hello\\n'
        self.send_response(int(sys.argv[2]))
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
";

/// A Python HTTP server on `port` answering every GET with `status`.
fn http_server(python: &Path, port: u16, status: u16) -> External {
    External::start(
        "http",
        python,
        HTTP_SERVER,
        move |path, _| vec![path.to_string(), port.to_string(), status.to_string()],
        &[SocketAddr::from(([127, 0, 0, 1], port))],
    )
}

#[test]
fn an_http_backend_answering_503_is_down_with_its_status_shown() {
    let Some(python) = program("python3") else {
        eprintln!("SKIPPED: no python3 for the HTTP backends");
        return;
    };
    let ports = free_ports(2);
    let _ok = http_server(&python, ports[0], 200);
    let _failing = http_server(&python, ports[1], 503);
    let socket = ctl_socket("http");
    let tcplb = Tcplb::start_config(
        &config(
            &socket,
            &[
                format!("127.0.0.1:{}", ports[0]),
                format!("127.0.0.1:{}", ports[1]),
            ],
            "health = { interval = \"200ms\", http = \"/healthz\", expect-status = \"200-399\" }",
        ),
        &[],
    );
    let failing = format!("127.0.0.1:{}", ports[1]);
    let row = wait_row(&socket, &failing, "state", "down");
    assert_eq!(row["last_check"], "status 503");
    assert_eq!(row["checks"], "down");
    let ok = ctl_backend(&socket, &format!("127.0.0.1:{}", ports[0])).expect("row");
    assert_eq!(ok["last_check"], "ok: status 200");
    tcplb.wait_for_log(&format!(
        "backend {failing} is down: 3 health checks failed in a row (last: status 503)"
    ));
    // /backends says why too.
    let entry = backend_entry(&tcplb, &failing);
    assert_eq!(entry["last_check"], "status 503");
    assert_eq!(entry["state"], "down");
    let addr = tcplb.service_addr("svc");
    for _ in 0..10 {
        let (status, _) = http_request(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200, "only the healthy backend answers");
    }
}

// ---- expect-regex, port ----

/// A line server: answers each line it reads with `answer`, keeping the connection open.
fn line_server(answer: &'static str) -> Arc<Backend> {
    Backend::start(
        1,
        Arc::new(move |stream, _| {
            let mut writer = stream.try_clone().expect("clone");
            for line in BufReader::new(stream).lines() {
                if line.is_err() || writer.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }),
    )
}

#[test]
fn expect_regex_tells_a_primary_from_a_replica() {
    let primary = line_server("# Replication\r\nrole:primary\r\n");
    let replica = line_server("# Replication\r\nrole:replica\r\n");
    let socket = ctl_socket("regex");
    let _tcplb = Tcplb::start_config(
        &config(
            &socket,
            &[primary.arg(), replica.arg()],
            "health = { interval = \"200ms\", rise = 1, fall = 1, send = \"INFO replication\\r\\n\", \
             expect-regex = 'role:(primary|master)' }",
        ),
        &[],
    );
    let row = wait_row(&socket, &replica.arg(), "state", "down");
    assert_eq!(
        row["last_check"],
        "expect regex \"role:(primary|master)\" not found in 29 bytes"
    );
    let row = ctl_backend(&socket, &primary.arg()).expect("row");
    assert_eq!(row["state"], "up");
    assert_eq!(row["last_check"], "ok");
}

#[test]
fn a_check_on_another_port_marks_down_and_shutdown_sessions_cuts_the_live_ones() {
    let backend = Backend::start(1, echo());
    let check = ReservedPort::new();
    let check_addr = check.addr;
    let mut listener = Some(check.listen());
    let socket = ctl_socket("port");
    let tcplb = Tcplb::start_config(
        &config(
            &socket,
            &[backend.arg()],
            &format!(
                "health = {{ interval = \"200ms\", rise = 1, fall = 1, port = {} }}\n\
                 on-marked-down = \"shutdown-sessions\"",
                check_addr.port()
            ),
        ),
        &[],
    );
    let row = wait_row(&socket, &backend.arg(), "last_check", "ok");
    assert_eq!(row["state"], "up");
    let addr = tcplb.service_addr("svc");
    let mut live = TcpStream::connect(addr).expect("connect");
    live.set_read_timeout(Some(PATIENCE)).expect("timeout");
    live.write_all(b"ping").expect("write");
    let mut four = [0u8; 4];
    live.read_exact(&mut four).expect("echo");
    backend.wait_active(1);

    // The check port closes; the traffic port is as fine as ever.
    drop(listener.take());
    let row = wait_row(&socket, &backend.arg(), "state", "down");
    assert_eq!(row["last_check"], "refused");
    let mut rest = [0u8; 16];
    match live.read(&mut rest) {
        Ok(0) => {}
        Err(e) => assert!(is_peer_end(&e), "{e}"),
        Ok(n) => panic!("{n} bytes on a session that should have been cut"),
    }
    tcplb.wait_for_log("marked down; cutting its 1 sessions (on-marked-down = shutdown-sessions)");
    backend.wait_active(0);

    // Back: the check port answers again.
    let _listener = rebind(check_addr);
    wait_row(&socket, &backend.arg(), "state", "up");
}

// ---- agent ----

/// An agent on its own port: answers every connection with the current word and closes.
fn agent(word: Arc<Mutex<String>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the agent");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let line = format!("{}\n", word.lock().expect("word"));
            let _ = stream.write_all(line.as_bytes());
        }
    });
    addr
}

#[test]
fn an_agent_moves_its_backend_as_its_words_say() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let word = Arc::new(Mutex::new("up ready 100%".to_string()));
    let agent_addr = agent(Arc::clone(&word));
    let socket = ctl_socket("agent");
    let tcplb = Tcplb::start_config(
        &config(
            &socket,
            &[
                format!("{},weight=2,agent-port={}", a.arg(), agent_addr.port()),
                b.arg(),
            ],
            "agent-interval = \"200ms\"",
        ),
        &[],
    );
    let addr = tcplb.service_addr("svc");
    let say = |w: &str| *word.lock().expect("word") = w.to_string();
    let held = |n: usize| -> (usize, Vec<TcpStream>) {
        let sessions: Vec<(TcpStream, u8)> = (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                let mut id = [0u8; 1];
                s.read_exact(&mut id).expect("id");
                (s, id[0])
            })
            .collect();
        let on_a = sessions.iter().filter(|(_, id)| *id == 1).count();
        (on_a, sessions.into_iter().map(|(s, _)| s).collect())
    };
    let release = |sessions: Vec<TcpStream>| {
        for s in sessions {
            close_and_wait(s);
        }
        a.wait_active(0);
        b.wait_active(0);
    };
    let row = wait_row(&socket, &a.arg(), "weight_effective", 2);
    assert_eq!(row["agent"]["said"], "ready up 100%");
    let (on_a, sessions) = held(30);
    assert_eq!(on_a, 20, "weight 2 against 1");
    release(sessions);

    say("drain");
    wait_row(&socket, &a.arg(), "state", "drain");
    tcplb.wait_for_log("its agent says drain up 100%");
    let (on_a, sessions) = held(10);
    assert_eq!(on_a, 0, "drained by its agent");
    release(sessions);

    say("ready 50%");
    let row = wait_row(&socket, &a.arg(), "state", "up");
    assert_eq!(row["weight_effective"], 1, "50% of 2");
    let (on_a, sessions) = held(30);
    assert_eq!(on_a, 15, "now 1 against 1");
    release(sessions);

    say("down");
    wait_row(&socket, &a.arg(), "state", "down");
    let (on_a, sessions) = held(10);
    assert_eq!(on_a, 0, "down by its agent");
    release(sessions);

    say("up 100%");
    wait_row(&socket, &a.arg(), "state", "up");
    let row = wait_row(&socket, &a.arg(), "weight_effective", 2);
    assert_eq!(row["agent"]["last"], "ready up 100%");
}

// ---- slow start ----

#[test]
fn after_it_rejoins_a_backends_share_grows_over_the_slow_start_window() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let socket = ctl_socket("slow-start");
    let window = Duration::from_secs(3);
    let tcplb = Tcplb::start_config(
        &config(&socket, &[a.arg(), b.arg()], "slow-start = \"3s\""),
        &[],
    );
    let addr = tcplb.service_addr("svc");
    ctl_ok(&socket, &["set", "state", "svc", &a.arg(), "maint"]);
    ctl_ok(&socket, &["set", "state", "svc", &a.arg(), "ready"]);
    let rejoined = Instant::now();
    // Buckets of half a second: in each, 20 sessions held at once, then all closed.
    let bucket = Duration::from_millis(500);
    let mut shares = Vec::new();
    for k in 1..=7u32 {
        let mut held = Vec::new();
        let mut on_a = 0;
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).expect("connect");
            let mut id = [0u8; 1];
            s.read_exact(&mut id).expect("id");
            on_a += usize::from(id[0] == 1);
            held.push(s);
        }
        shares.push((rejoined.elapsed(), on_a));
        for s in held {
            close_and_wait(s);
        }
        a.wait_active(0);
        b.wait_active(0);
        // The next bucket starts at its time (a measurement, not a wait for an event).
        if let Some(left) = (bucket * k).checked_sub(rejoined.elapsed()) {
            thread::sleep(left);
        }
    }
    eprintln!(
        "slow start over {window:?}: (time since rejoining, sessions of 20 on it): {shares:?}"
    );
    let counts: Vec<usize> = shares.iter().map(|(_, n)| *n).collect();
    assert!(counts[0] <= 4, "no jump to its full share: {shares:?}");
    assert!(counts[5] >= 8, "near its full share by the end: {shares:?}");
    assert!(
        counts[6] >= 9,
        "its full share after the window: {shares:?}"
    );
    for w in counts.windows(2) {
        assert!(w[1] + 2 >= w[0], "its share grows: {shares:?}");
    }
    assert!(
        counts[2] < counts[6],
        "still below its full share halfway: {shares:?}"
    );
}
