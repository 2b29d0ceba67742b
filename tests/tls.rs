//! TLS passthrough by name: services with `routes` send each client to a pool chosen by the
//! server name (SNI) and protocols (ALPN) of its ClientHello, without terminating TLS. Real
//! TLS on both ends: backends are TLS servers with certificates made in the test, clients
//! are TLS clients (Python's `ssl` and `openssl s_client`); the certificate the client sees
//! says which backend it reached, and every byte crosses both ways unchanged.

mod common;

use common::tls::{Certs, Hello, TlsBackend, served_by, tls_client, tls_clients};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// TLS backends for the pools `api`, `web` (a wildcard certificate), `grpc` (takes only h2)
/// and `fallback`; a plain echo server; and a server that speaks first.
struct Backends {
    certs: Certs,
    api: TlsBackend,
    web: TlsBackend,
    grpc: TlsBackend,
    fallback: TlsBackend,
    echo: Arc<Backend>,
    banner: Arc<Backend>,
}

/// What the banner backend says first.
const BANNER: &[u8] = b"220 mail.example.com ESMTP ready\r\n";

impl Backends {
    fn start() -> Backends {
        let certs = Certs::new();
        Backends {
            api: TlsBackend::start(&certs, "api", "api.example.com", None, false),
            web: TlsBackend::start(&certs, "web", "*.example.com", Some("http/1.1,h2"), false),
            grpc: TlsBackend::start(&certs, "grpc", "grpc.example.com", Some("h2"), false),
            fallback: TlsBackend::start(&certs, "fallback", "fallback.example.net", None, false),
            echo: Backend::start(1, echo()),
            banner: Backend::start(
                2,
                Arc::new(|mut stream, _| {
                    let _ = stream.write_all(BANNER);
                    echo_until_eof(&mut stream);
                }),
            ),
            certs,
        }
    }

    /// A config: `tls` routes by name and protocol (the rest to `fallback`); `small` takes
    /// hellos of 1 KiB at most; `odd` sends the rest to a plain echo server and waits 300 ms
    /// for a hello; `strict` has no pool of its own; `banner`, no routes, has a server that
    /// speaks first.
    fn config(&self, log: &Scratch) -> String {
        format!(
            r#"
[global]
admin = "127.0.0.1:0"
access-log = "{}"

[services.tls]
listen = ["127.0.0.1:0"]
routes = [
  {{ sni = "api.example.com", pool = "api" }},
  {{ sni = "*.example.com", pool = "web" }},
  {{ sni = "grpc.example.com", alpn = "h2", pool = "grpc" }},
]
pool = "fallback"

[services.small]
listen = ["127.0.0.1:0"]
routes = [{{ sni = "grpc.example.com", pool = "grpc" }}]
pool = "fallback"
max-hello = "1k"

[services.odd]
listen = ["127.0.0.1:0"]
routes = [{{ sni = "api.example.com", pool = "api" }}]
pool = "echo"
sni-timeout = "300ms"

[services.strict]
listen = ["127.0.0.1:0"]
routes = [{{ sni = "api.example.com", pool = "api" }}]
sni-timeout = "300ms"

[services.banner]
listen = ["127.0.0.1:0"]
pool = "banner"

[pools.api]
backends = ["{}"]
[pools.web]
backends = ["{}"]
[pools.grpc]
backends = ["{}"]
[pools.fallback]
backends = ["{}"]
[pools.echo]
backends = ["{}"]
[pools.banner]
backends = ["{}"]
"#,
            log.arg(),
            self.api.arg(),
            self.web.arg(),
            self.grpc.arg(),
            self.fallback.arg(),
            self.echo.arg(),
            self.banner.arg(),
        )
    }
}

/// The backends, tcplb in front, and its access log.
fn start() -> (Backends, Tcplb, Scratch) {
    let backends = Backends::start();
    let log = Scratch::new(&format!("tls-access-{}.log", test_id()));
    let tcplb = Tcplb::start_config(&backends.config(&log), &[]);
    (backends, tcplb, log)
}

/// A name for this test's scratch files.
fn test_id() -> String {
    let thread = std::thread::current();
    thread.name().unwrap_or("main").replace("::", "-")
}

fn port(tcplb: &Tcplb, service: &str) -> u16 {
    tcplb.service_addr(service).port()
}

fn inspected(tcplb: &Tcplb, service: &str, result: &str) -> f64 {
    tcplb.metrics().get(
        "tcplb_tls_inspect_total",
        &[("service", service), ("result", result)],
    )
}

/// The access log's `key=value` pairs of each line.
fn log_fields(path: &Scratch, n: usize) -> Vec<Vec<(String, String)>> {
    wait_for_lines(path, n)
        .iter()
        .map(|line| {
            line.split(' ')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn field<'a>(line: &'a [(String, String)], key: &str) -> Option<&'a str> {
    line.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn each_client_reaches_the_pool_its_name_and_protocols_choose() {
    let (b, tcplb, log) = start();
    let tls = port(&tcplb, "tls");
    // (sni, alpn) -> (backend, certificate CN, protocol agreed)
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        (
            Some("api.example.com"),
            None,
            "api",
            "api.example.com",
            None,
        ),
        (
            Some("API.Example.COM"),
            None,
            "api",
            "api.example.com",
            None,
        ),
        (Some("www.example.com"), None, "web", "*.example.com", None),
        (
            Some("grpc.example.com"),
            Some("h2"),
            "grpc",
            "grpc.example.com",
            Some("h2"),
        ),
        // The protocol the route names not offered: the wildcard takes it.
        (
            Some("grpc.example.com"),
            Some("http/1.1"),
            "web",
            "*.example.com",
            Some("http/1.1"),
        ),
        // One label deep only; another domain; no name: the service's own pool.
        (
            Some("a.b.example.com"),
            None,
            "fallback",
            "fallback.example.net",
            None,
        ),
        (
            Some("example.org"),
            Some("h2"),
            "fallback",
            "fallback.example.net",
            None,
        ),
        (None, None, "fallback", "fallback.example.net", None),
    ];
    let hellos: Vec<Hello> = cases
        .iter()
        .enumerate()
        .map(|(i, &(sni, alpn, ..))| Hello {
            sni,
            alpn,
            len: Some(1000 + i * 4099),
            ..Hello::default()
        })
        .collect();
    let answers = tls_clients(tls, &b.certs.cafile, &hellos);
    for (&(sni, alpn, backend, cn, agreed), answer) in cases.iter().zip(&answers) {
        assert_eq!(
            served_by(answer),
            (backend.to_string(), cn.to_string()),
            "{sni:?} {alpn:?}: {answer}"
        );
        // The backend saw the client's own hello: its name, and the protocol it chose.
        assert_eq!(answer["server"]["sni"].as_str(), sni, "{answer}");
        assert_eq!(answer["alpn"].as_str(), agreed, "{answer}");
    }
    assert_eq!(inspected(&tcplb, "tls", "sni"), 7.0);
    assert_eq!(inspected(&tcplb, "tls", "no_sni"), 1.0);
    assert_eq!(inspected(&tcplb, "tls", "not_tls"), 0.0);
    // The access log names what each client asked for.
    let lines = log_fields(&log, cases.len());
    let mut names: Vec<&str> = lines.iter().filter_map(|l| field(l, "sni")).collect();
    names.sort_unstable();
    let mut wanted: Vec<&str> = cases.iter().map(|c| c.0.unwrap_or("-")).collect();
    wanted.sort_unstable();
    assert_eq!(names, wanted);
    for line in &lines {
        let result = field(line, "tls");
        let sni = field(line, "sni");
        assert_eq!(result == Some("no_sni"), sni == Some("-"), "{line:?}");
        assert!(
            result == Some("sni") || result == Some("no_sni"),
            "{line:?}"
        );
    }
}

#[test]
fn openssl_s_client_is_routed_by_its_alpn() {
    let (b, tcplb, _log) = start();
    let tls = port(&tcplb, "tls");
    for (alpn, cn, agreed) in [
        ("h2", "grpc.example.com", "ALPN protocol: h2"),
        ("http/1.1", "*.example.com", "ALPN protocol: http/1.1"),
    ] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{tls}")])
            .args(["-servername", "grpc.example.com", "-alpn", alpn])
            .arg("-CAfile")
            .arg(&b.certs.cafile)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("subject=CN = {cn}")),
            "{alpn}: {text}"
        );
        assert!(text.contains(agreed), "{alpn}: {text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
}

#[test]
fn a_hello_sent_a_byte_at_a_time_is_routed() {
    let (b, tcplb, _log) = start();
    let hello = Hello {
        sni: Some("api.example.com"),
        pace: Some("bytewise"),
        ..Hello::default()
    };
    let answer = tls_client(port(&tcplb, "tls"), &b.certs.cafile, &hello);
    assert_eq!(
        served_by(&answer),
        ("api".to_string(), "api.example.com".to_string())
    );
    assert_eq!(inspected(&tcplb, "tls", "sni"), 1.0);
}

#[test]
fn a_hello_split_over_two_records_is_routed() {
    let (b, tcplb, _log) = start();
    // Cut in the middle of the name, the halves 50 ms apart.
    let hello = Hello {
        sni: Some("grpc.example.com"),
        alpn: Some("h2"),
        pace: Some("records"),
        ..Hello::default()
    };
    let answer = tls_client(port(&tcplb, "tls"), &b.certs.cafile, &hello);
    assert_eq!(
        served_by(&answer),
        ("grpc".to_string(), "grpc.example.com".to_string())
    );
    assert_eq!(answer["alpn"], "h2");
}

/// Thirty long protocol names and h2: a hello of more than 2 KiB, as post-quantum key shares
/// make them.
fn many_protocols() -> String {
    let mut list: Vec<String> = (0..30)
        .map(|i| format!("x-long-protocol-name-{i:02}-{}", "p".repeat(60)))
        .collect();
    list.push("h2".to_string());
    list.join(",")
}

#[test]
fn a_hello_over_2_kib_in_two_segments_is_routed() {
    let (b, tcplb, _log) = start();
    let alpn = many_protocols();
    let hello = Hello {
        sni: Some("grpc.example.com"),
        alpn: Some(&alpn),
        pace: Some("split"),
        ..Hello::default()
    };
    let answer = tls_client(port(&tcplb, "tls"), &b.certs.cafile, &hello);
    assert_eq!(
        served_by(&answer),
        ("grpc".to_string(), "grpc.example.com".to_string())
    );
    assert!(answer["hello_len"].as_u64() > Some(2048), "{answer}");
    assert_eq!(answer["alpn"], "h2");
}

#[test]
fn a_hello_past_max_hello_goes_to_the_services_pool() {
    let (b, tcplb, _log) = start();
    let alpn = many_protocols();
    let big = Hello {
        sni: Some("grpc.example.com"),
        alpn: Some(&alpn),
        ..Hello::default()
    };
    let answer = tls_client(port(&tcplb, "small"), &b.certs.cafile, &big);
    assert_eq!(
        served_by(&answer),
        ("fallback".to_string(), "fallback.example.net".to_string())
    );
    assert_eq!(inspected(&tcplb, "small", "too_big"), 1.0);
    let small = Hello {
        sni: Some("grpc.example.com"),
        alpn: Some("h2"),
        ..Hello::default()
    };
    let answer = tls_client(port(&tcplb, "small"), &b.certs.cafile, &small);
    assert_eq!(
        served_by(&answer),
        ("grpc".to_string(), "grpc.example.com".to_string())
    );
}

#[test]
fn a_plaintext_client_goes_to_the_services_pool_or_is_reset() {
    let (_b, tcplb, log) = start();
    let request = pattern(7, 3000);
    let mut plain = request.clone();
    plain.splice(0..0, b"GET / HTTP/1.1\r\n".iter().copied());
    let echoed = echo_through(
        TcpStream::connect(tcplb.service_addr("odd")).expect("connect"),
        &plain,
    );
    assert_eq!(hash(&echoed), hash(&plain), "every byte, unchanged");
    assert_eq!(inspected(&tcplb, "odd", "not_tls"), 1.0);

    // Without a pool of its own: a reset, no backend dialled.
    let mut client = TcpStream::connect(tcplb.service_addr("strict")).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    client.write_all(&plain).expect("write");
    let read = client.read(&mut [0u8; 64]).map_err(|e| e.kind());
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
    assert_eq!(inspected(&tcplb, "strict", "not_tls"), 1.0);
    let lines = log_fields(&log, 2);
    let reset = lines
        .iter()
        .find(|l| field(l, "service") == Some("strict"))
        .expect("the strict service's line");
    assert_eq!(field(reset, "end"), Some("no_route"));
    assert_eq!(field(reset, "backend"), Some("-"));
    assert_eq!(field(reset, "tls"), Some("not_tls"));
}

#[test]
fn a_malformed_hello_goes_to_the_services_pool() {
    let (_b, tcplb, _log) = start();
    // A handshake record of length 0: TLS, but no hello in it.
    let mut bytes = vec![22u8, 3, 1, 0, 0];
    bytes.extend(pattern(3, 100));
    let echoed = echo_through(
        TcpStream::connect(tcplb.service_addr("odd")).expect("connect"),
        &bytes,
    );
    assert_eq!(echoed, bytes);
    assert_eq!(inspected(&tcplb, "odd", "malformed"), 1.0);
}

#[test]
fn a_silent_client_is_sent_on_or_reset_at_sni_timeout() {
    let (b, tcplb, _log) = start();
    let began = Instant::now();
    let mut silent = TcpStream::connect(tcplb.service_addr("odd")).expect("connect");
    silent.set_read_timeout(Some(PATIENCE)).expect("timeout");
    // After 300 ms the session goes to the service's pool, the echo server.
    wait_until(
        || b.echo.accepted.load(std::sync::atomic::Ordering::SeqCst) == 1,
        || "the echo backend was never dialled".to_string(),
    );
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "{:?}",
        began.elapsed()
    );
    silent.write_all(b"late words").expect("write");
    let mut got = [0u8; 10];
    silent.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"late words");
    assert_eq!(inspected(&tcplb, "odd", "timeout"), 1.0);

    let began = Instant::now();
    let mut silent = TcpStream::connect(tcplb.service_addr("strict")).expect("connect");
    silent.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let read = silent.read(&mut [0u8; 8]).map_err(|e| e.kind());
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(inspected(&tcplb, "strict", "timeout"), 1.0);
}

#[test]
fn a_server_that_speaks_first_on_another_service_is_not_held() {
    let (_b, tcplb, _log) = start();
    let mut client = TcpStream::connect(tcplb.service_addr("banner")).expect("connect");
    // Well within the tls service's sni-timeout (5 s): nothing waits for a hello here.
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut got = vec![0u8; BANNER.len()];
    client.read_exact(&mut got).expect("the banner, at once");
    assert_eq!(got, BANNER);
    let m = tcplb.metrics();
    assert_eq!(
        m.value("tcplb_tls_inspect_total", &[("service", "banner")]),
        None,
        "a service without routes has no inspect counts"
    );
}

#[test]
fn routes_work_with_accept_proxy_send_proxy_and_source_hash() {
    let certs = Certs::new();
    let a = TlsBackend::start(&certs, "hash-a", "hash-a.example.com", None, true);
    let c = TlsBackend::start(&certs, "hash-b", "hash-b.example.com", None, true);
    let toml = format!(
        r#"
[services.tls]
listen = ["127.0.0.1:0"]
accept-proxy = true
routes = [{{ sni = "hash.example.com", pool = "hashed" }}]

[pools.hashed]
balance = "source-hash"
backends = ["{},send-proxy", "{},send-proxy-v2"]
"#,
        a.arg(),
        c.arg()
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let tls = port(&tcplb, "tls");
    // Sixteen clients, as their PROXY headers say, each twice.
    let sources: Vec<String> = (1..=16)
        .map(|n| format!("192.0.2.{n}:{}", 40000 + n))
        .collect();
    let hellos: Vec<Hello> = sources
        .iter()
        .chain(&sources)
        .map(|source| Hello {
            sni: Some("hash.example.com"),
            proxy_v1: Some(source),
            ..Hello::default()
        })
        .collect();
    let answers = tls_clients(tls, &certs.cafile, &hellos);
    let mut by_source = std::collections::BTreeMap::new();
    for (hello, answer) in hellos.iter().zip(&answers) {
        let (backend, _) = served_by(answer);
        // The backend learns the client the PROXY header named.
        assert_eq!(
            answer["server"]["source"].as_str(),
            hello.proxy_v1,
            "{answer}"
        );
        let first = by_source.entry(hello.proxy_v1).or_insert(backend.clone());
        assert_eq!(*first, backend, "a source hashes to one backend");
    }
    let used: std::collections::BTreeSet<&String> = by_source.values().collect();
    assert_eq!(
        used.len(),
        2,
        "source-hash spreads the sources: {by_source:?}"
    );
}

#[test]
fn a_reload_that_changes_the_routes_sends_new_clients_the_new_way() {
    let (b, tcplb, log) = start();
    let tls = tcplb.service_addr("tls");
    let api = Hello {
        sni: Some("api.example.com"),
        ..Hello::default()
    };
    assert_eq!(
        served_by(&tls_client(tls.port(), &b.certs.cafile, &api)).0,
        "api"
    );
    let config = b.config(&log).replace(
        r#"{ sni = "api.example.com", pool = "api" },"#,
        r#"{ sni = "api.example.com", pool = "grpc" },"#,
    );
    tcplb.rewrite_config(&config);
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: service tls settings changed");
    assert_eq!(tcplb.service_addr("tls"), tls, "the same listener");
    assert_eq!(
        served_by(&tls_client(tls.port(), &b.certs.cafile, &api)).0,
        "grpc"
    );
}

#[test]
fn five_thousand_half_sent_hellos_cost_kernel_buffers_only_and_end_at_sni_timeout() {
    const CLIENTS: usize = 5000;
    let toml = r#"
[global]
admin = "127.0.0.1:0"

[services.tls]
listen = ["127.0.0.1:0"]
routes = [{ sni = "api.example.com", pool = "api" }]
sni-timeout = "4s"

[pools.api]
backends = ["127.0.0.1:9"]
"#;
    let tcplb = Tcplb::start_config(toml, &[]);
    let addr = tcplb.service_addr("tls");
    let active = || {
        tcplb
            .metrics()
            .get("tcplb_sessions_active", &[("service", "tls")])
    };
    // One slowloris client first, so the worker's scratch buffer is counted before.
    let hello = include_bytes!("data/client_hello_python.bin");
    let first_at = Instant::now();
    let mut first = TcpStream::connect(addr).expect("connect");
    first.write_all(&hello[..200]).expect("half a hello");
    wait_until(|| active() == 1.0, || format!("{} active", active()));
    let rss_before = tcplb.rss_kib();

    let began = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 1..CLIENTS {
        let mut client = TcpStream::connect(addr).expect("connect");
        client.write_all(&hello[..200]).expect("half a hello");
        clients.push(client);
    }
    wait_until(
        || active() == CLIENTS as f64,
        || format!("{} active", active()),
    );
    let opened = began.elapsed();
    // What waits is in the kernel: a session holds its slab entry and its timer, no buffer.
    let per_client = tcplb.rss_kib().saturating_sub(rss_before) as f64 / CLIENTS as f64;
    eprintln!("{per_client:.3} KiB of RSS per half-sent hello (opened in {opened:?})");
    assert!(per_client < 2.0, "{per_client:.2} KiB per client");
    let m = tcplb.metrics();
    assert_eq!(
        m.get("tcplb_buffer_pool_buffers", &[("state", "used")]),
        0.0
    );

    // Each is reset at its sni-timeout (no pool of its own to go to), not before.
    clients.insert(0, first);
    for mut client in clients {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let read = client.read(&mut [0u8; 8]).map_err(|e| e.kind());
        assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
        assert!(
            first_at.elapsed() >= Duration::from_secs(4),
            "reset after {:?}",
            first_at.elapsed()
        );
    }
    assert_eq!(inspected(&tcplb, "tls", "timeout"), CLIENTS as f64);
    assert_eq!(active(), 0.0);
}
