//! The PROXY protocol through the real binary: `--accept-proxy` (v1, v2, LOCAL, a header
//! in pieces; bad, cut short and slow headers reset and counted, never reaching a
//! backend), `send-proxy` and `send-proxy-v2` to backends (the header before any client
//! byte, not counted as client bytes), source-hash on the address from the header, and
//! interoperability with real HAProxy and nginx in both directions.

mod common;

use common::proxy::{
    External, client_ip, connect_from, free_ports, haproxy, header_backend, nginx, read_report,
    v1_header, v2_header, v2_local,
};
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// Sends `data`, reads it back through the echo, half-closes, expects EOF.
fn echo_and_finish(mut stream: TcpStream, data: &[u8]) {
    echo_piece(&mut stream, data).expect("echo");
    finish_echo(stream);
}

/// The access log line of the session from `client`, once written (lines from several
/// workers come in their own turns: wait for this one, whatever the order).
fn log_line_of(log: &Scratch, client: SocketAddr) -> String {
    let needle = format!("client={client} ");
    let mut found = None;
    wait_until(
        || {
            found = std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(&needle))
                .map(str::to_string);
            found.is_some()
        },
        || {
            format!(
                "no access log line with {needle}in:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        },
    );
    found.unwrap_or_default()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn accepted_headers_give_the_real_client_to_the_backend_and_the_access_log() {
    let backend = header_backend(1);
    let log = Scratch::new("accept-proxy.log");
    let tcplb = Tcplb::start(&[
        "--accept-proxy",
        "--access-log",
        &log.arg(),
        &format!("{},send-proxy-v2", backend.arg()),
    ]);
    let payload = pattern(1, 3000);

    // v1, header and payload in one write.
    let (src, dst) = (addr("192.0.2.7:4242"), addr("198.51.100.1:443"));
    let mut c = tcplb.connect();
    let mut first = v1_header(src, dst);
    first.extend_from_slice(&payload[..100]);
    c.write_all(&first).expect("send");
    assert_eq!(read_report(&mut c), (2, src, dst));
    let mut back = vec![0u8; 100];
    c.read_exact(&mut back).expect("echo");
    assert_eq!(back, payload[..100]);
    echo_and_finish(c, &payload[100..]);
    let line = log_line_of(&log, src);
    assert_eq!(
        field(&line, "bytes_up"),
        "3000",
        "the header is not a client byte"
    );
    let report = format!("2 {src} {dst}\n").len();
    assert_eq!(field(&line, "bytes_down"), (3000 + report).to_string());

    // v2.
    let (src, dst) = (addr("203.0.113.9:1"), addr("10.9.8.7:65535"));
    let mut c = tcplb.connect();
    c.write_all(&v2_header(src, dst)).expect("send");
    assert_eq!(read_report(&mut c), (2, src, dst));
    echo_and_finish(c, &payload);
    log_line_of(&log, src);

    // v1 in three pieces, the line cut mid-address and between CR and LF.
    let (src, dst) = (addr("192.0.2.200:60000"), addr("192.0.2.1:80"));
    let header = v1_header(src, dst);
    let mut c = tcplb.connect();
    for piece in [
        &header[..9],
        &header[9..header.len() - 1],
        &header[header.len() - 1..],
    ] {
        c.write_all(piece).expect("send a piece");
        thread::sleep(Duration::from_millis(50));
    }
    c.write_all(&payload[..10]).expect("send");
    assert_eq!(read_report(&mut c), (2, src, dst));
    let mut back = [0u8; 10];
    c.read_exact(&mut back).expect("echo");
    assert_eq!(back, payload[..10]);
    echo_and_finish(c, &payload[10..20]);

    // v2 LOCAL (an upstream's health check): served, with the connection's own addresses.
    let mut c = tcplb.connect();
    let me = c.local_addr().expect("local");
    c.write_all(&v2_local()).expect("send");
    assert_eq!(read_report(&mut c), (2, me, tcplb.addr));
    echo_and_finish(c, b"ping");
    log_line_of(&log, me);
}

#[test]
fn send_proxy_tells_the_backend_the_client_and_is_not_counted_as_client_bytes() {
    let v1 = header_backend(1);
    let v2 = header_backend(2);
    let tcplb = Tcplb::start(&[
        "--admin",
        "127.0.0.1:0",
        "--balance",
        "round-robin",
        &format!("{},send-proxy", v1.arg()),
        &format!("{},send-proxy-v2", v2.arg()),
    ]);
    let payload = pattern(2, 50_000);
    for (n, version) in [(0u32, 1u8), (1, 2)] {
        let from = client_ip(4000 + n);
        let mut c = connect_from(from, tcplb.addr);
        let me = c.local_addr().expect("local");
        c.write_all(&payload).expect("send");
        assert_eq!(read_report(&mut c), (version, me, tcplb.addr));
        let mut back = vec![0u8; payload.len()];
        c.read_exact(&mut back).expect("echo");
        assert!(
            back == payload,
            "the bytes after the header are the client's"
        );
        finish_echo(c);
    }
    for b in [&v1, &v2] {
        wait_until(
            || {
                metric(
                    &tcplb,
                    &format!(
                        "tcplb_backend_bytes_total{{backend=\"{}\",direction=\"sent\"}}",
                        b.addr
                    ),
                ) == payload.len() as f64
            },
            || format!("{} was sent more than the client's bytes", b.addr),
        );
    }
}

/// One client that sends `bytes` (then `then`) must be reset, counted as `reason`, and
/// never reach a backend.
fn refused(tcplb: &Tcplb, bytes: &[u8], half_close: bool, reason: &str, before: f64) {
    let mut c = tcplb.connect();
    c.write_all(bytes).expect("send");
    if half_close {
        c.shutdown(Shutdown::Write).expect("half-close");
    }
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{reason}: expected a reset, got {other:?}"),
    }
    let sample = format!("tcplb_proxy_protocol_errors_total{{reason=\"{reason}\"}}");
    wait_until(
        || metric(tcplb, &sample) == before + 1.0,
        || format!("{sample} is {}", metric(tcplb, &sample)),
    );
}

#[test]
fn bad_headers_are_reset_counted_and_never_reach_a_backend() {
    let backend = Backend::start(1, echo());
    let log = Scratch::new("bad-proxy.log");
    let tcplb = Tcplb::start(&[
        "--accept-proxy",
        "--proxy-timeout",
        "300ms",
        "--admin",
        "127.0.0.1:0",
        "--access-log",
        &log.arg(),
        &backend.arg(),
    ]);
    // A good session, open throughout: the bad ones must not disturb it.
    let mut good = tcplb.connect();
    good.write_all(&v1_header(addr("192.0.2.1:1"), addr("192.0.2.2:2")))
        .expect("send");
    echo_piece(&mut good, b"before").expect("echo");

    let mut oversized = v2_header(addr("1.2.3.4:5"), addr("6.7.8.9:10"));
    oversized[14..16].copy_from_slice(&1000u16.to_be_bytes());
    oversized.resize(1016, 0);
    let cases: [(&[u8], bool, &str); 6] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, "missing"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", false, "malformed"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nhello",
            false,
            "malformed",
        ),
        (&oversized, false, "oversized"),
        (b"PROXY TCP4 1.2", true, "truncated"),
        (b"PROXY TCP4 1.2.3.4", false, "timeout"),
    ];
    for (bytes, half_close, reason) in cases {
        let before = metric(
            &tcplb,
            &format!("tcplb_proxy_protocol_errors_total{{reason=\"{reason}\"}}"),
        );
        refused(&tcplb, bytes, half_close, reason, before);
    }
    // A v1 line of 108 bytes without its end is too long.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(120, b'x');
    refused(&tcplb, &long, false, "oversized", 1.0);
    // Connected and closed without a byte (a port scan, a plain TCP check).
    let before = metric(
        &tcplb,
        "tcplb_proxy_protocol_errors_total{reason=\"missing\"}",
    );
    refused(&tcplb, b"", true, "missing", before);

    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the good client reached the backend"
    );
    echo_piece(&mut good, b"after").expect("the good session still works");
    finish_echo(good);
    let lines = wait_for_lines(&log, 9);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("end=bad_proxy_header"))
            .count(),
        8,
        "{lines:#?}"
    );
}

#[test]
fn source_hash_hashes_the_address_from_the_header() {
    let backends: Vec<_> = (1..=4)
        .map(|id| Backend::start(id, identify_then_echo()))
        .collect();
    let args: Vec<String> = backends.iter().map(|b| b.arg()).collect();
    let mut with_header = vec!["--balance", "source-hash", "--accept-proxy"];
    with_header.extend(args.iter().map(String::as_str));
    let mut direct = vec!["--balance", "source-hash"];
    direct.extend(args.iter().map(String::as_str));
    let proxied = Tcplb::start(&with_header);
    let plain = Tcplb::start(&direct);
    let mut seen = std::collections::HashSet::new();
    for n in 0..64 {
        let ip = client_ip(7000 + n);
        // The same client address: by header from 127.0.0.1, and directly.
        let mut c = proxied.connect();
        c.write_all(&v2_header(SocketAddr::new(ip, 1234), proxied.addr))
            .expect("send");
        let mut via_header = [0u8; 1];
        c.read_exact(&mut via_header).expect("id");
        let mut d = connect_from(ip, plain.addr);
        let mut direct = [0u8; 1];
        d.read_exact(&mut direct).expect("id");
        assert_eq!(via_header, direct, "client {ip}");
        seen.insert(direct[0]);
    }
    assert_eq!(seen.len(), 4, "the clients spread over every backend");
}

// --- Interoperability with real implementations -------------------------------------

fn haproxy_args(config: &str, _dir: &str) -> Vec<String> {
    vec!["-db".into(), "-f".into(), config.into()]
}

const HAPROXY_DEFAULTS: &str = "global
    maxconn 200
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
";

#[test]
fn haproxy_in_front_sends_v1_and_v2_headers_that_tcplb_accepts() {
    let Some(haproxy) = haproxy() else { return };
    let backend = header_backend(1);
    let log = Scratch::new("haproxy-front.log");
    let tcplb = Tcplb::start(&[
        "--accept-proxy",
        "--access-log",
        &log.arg(),
        &format!("{},send-proxy", backend.arg()),
    ]);
    let ports = free_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let config = format!(
        "{HAPROXY_DEFAULTS}
frontend v1
    mode tcp
    bind 127.0.0.1:{p1}
    default_backend tcplb_v1
backend tcplb_v1
    mode tcp
    server tcplb {tcplb} send-proxy
frontend v2
    mode tcp
    bind 127.0.0.1:{p2}
    default_backend tcplb_v2
backend tcplb_v2
    mode tcp
    server tcplb {tcplb} send-proxy-v2
",
        tcplb = tcplb.addr
    );
    let fronts = [
        SocketAddr::from(([127, 0, 0, 1], p1)),
        SocketAddr::from(([127, 0, 0, 1], p2)),
    ];
    let _haproxy = External::start("haproxy", &haproxy, &config, haproxy_args, &fronts);
    let payload = pattern(3, 20_000);
    for (n, front) in fronts.iter().enumerate() {
        let from = client_ip(9000 + n as u32);
        let mut c = connect_from(from, *front);
        let me = c.local_addr().expect("local");
        c.write_all(&payload).expect("send");
        // tcplb took HAProxy's header and told the backend the original client.
        let (version, source, destination) = read_report(&mut c);
        assert_eq!((version, source, destination), (1, me, *front));
        let mut back = vec![0u8; payload.len()];
        c.read_exact(&mut back).expect("echo");
        assert!(back == payload);
        finish_echo(c);
        log_line_of(&log, me);
    }
}

#[test]
fn haproxy_behind_tcplb_sees_the_original_client() {
    let Some(haproxy) = haproxy() else { return };
    let ports = free_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let config = format!(
        "{HAPROXY_DEFAULTS}
frontend web_v1
    mode http
    bind 127.0.0.1:{p1} accept-proxy
    http-request return status 200 content-type text/plain lf-string \"v1 %[src]:%[src_port]\"
frontend web_v2
    mode http
    bind 127.0.0.1:{p2} accept-proxy
    http-request return status 200 content-type text/plain lf-string \"v2 %[src]:%[src_port]\"
"
    );
    let webs = [
        SocketAddr::from(([127, 0, 0, 1], p1)),
        SocketAddr::from(([127, 0, 0, 1], p2)),
    ];
    let _haproxy = External::start("haproxy", &haproxy, &config, haproxy_args, &webs);
    for (n, (web, option, version)) in [
        (webs[0], "send-proxy", "v1"),
        (webs[1], "send-proxy-v2", "v2"),
    ]
    .into_iter()
    .enumerate()
    {
        let tcplb = Tcplb::start(&[&format!("{web},{option}")]);
        let from = client_ip(9100 + n as u32);
        let mut c = connect_from(from, tcplb.addr);
        let me = c.local_addr().expect("local");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let response = read_http_response(&mut c);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), format!("{version} {me}"));
    }
}

#[test]
fn nginx_behind_tcplb_sees_the_original_client() {
    let Some(nginx) = nginx() else { return };
    let port = free_ports(1)[0];
    let config = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {{dir}}/body;
    proxy_temp_path {{dir}}/proxy;
    fastcgi_temp_path {{dir}}/fastcgi;
    uwsgi_temp_path {{dir}}/uwsgi;
    scgi_temp_path {{dir}}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port\"; }}
    }}
}}
"
    );
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let args = |config: &str, dir: &str| {
        vec![
            "-e".into(),
            format!("{dir}/error.log"),
            "-p".into(),
            format!("{dir}/"),
            "-c".into(),
            config.into(),
        ]
    };
    let _nginx = External::start("nginx", &nginx, &config, args, &[web]);
    for (n, option) in ["send-proxy", "send-proxy-v2"].into_iter().enumerate() {
        let tcplb = Tcplb::start(&[&format!("{web},{option}")]);
        let from = client_ip(9200 + n as u32);
        let mut c = connect_from(from, tcplb.addr);
        let me = c.local_addr().expect("local");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let response = read_http_response(&mut c);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), me.to_string(), "{option}");
    }
}
