//! Micro-benchmarks of the hot paths (divan): the buffer pool, the kernel pipe pool,
//! selection with every `--balance` algorithm over 4 / 64 / 1024 backends (a pick, the
//! lease, its release), the PROXY protocol decoder and encoder, a ClientHello parsed and
//! routed by its name among 1,000 routes, and a loopback echo round trip through a real
//! worker.
//!
//! Run with `cargo bench`. These measure our own code in isolation; whole-system figures
//! against HAProxy and nginx come from `scripts/bench.sh`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use tcplb::config::{self, Action};
use tcplb::fleet::Policy;
use tcplb::fleet::backend::ResolvedBackend;
use tcplb::fleet::builder::Builder;
use tcplb::fleet::health::BreakerPolicy;
use tcplb::fleet::lease::Lease;
use tcplb::fleet::select::maglev::build_table;
use tcplb::fleet::select::{Balance, HashSettings, LatencySettings, PickRequest};
use tcplb::proxy_protocol::{self, Version};
use tcplb::worker::pipes::{PIPE_SIZE, PipePool};
use tcplb::worker::pool::Pool;

fn main() {
    divan::main();
}

const BREAKER: BreakerPolicy = BreakerPolicy {
    max_fails: 3,
    fail_timeout: Duration::from_secs(10),
};

fn backends(n: usize) -> Vec<ResolvedBackend> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            ResolvedBackend {
                addr,
                name: addr.to_string(),
                weight: 1 + (i % 3) as u32,
                backup: false,
                send_proxy: None,
                agent_port: None,
                maxconn: None,
            }
        })
        .collect()
}

/// Taking a buffer and giving it back: what every read costs the pool.
#[divan::bench]
fn pool_take_give(bencher: divan::Bencher) {
    let mut pool = Pool::new(16 * 1024, 3584).expect("pool");
    bencher.bench_local(|| {
        let buf = pool.take();
        if let Some(buf) = divan::black_box(buf) {
            pool.give(buf);
        }
    });
}

/// Taking a pipe and giving it back: what every splice read costs the pipe pool (once made,
/// a pipe is reused).
#[divan::bench]
fn pipe_pool_take_give(bencher: divan::Bencher) {
    let mut pipes = PipePool::new(256, Some(PIPE_SIZE));
    // Made once, before timing.
    if let Some(pipe) = pipes.take() {
        pipes.give(pipe);
    }
    bencher.bench_local(|| {
        let pipe = pipes.take();
        if let Some(pipe) = divan::black_box(pipe) {
            pipes.give(pipe);
        }
    });
}

/// A fleet of `n` backends under `balance`, with 3 sessions per backend held on average
/// (what the held leases keep), and a pick request from one of many clients.
fn loaded_fleet(balance: Balance, n: usize) -> (std::sync::Arc<tcplb::fleet::Fleet>, Vec<Lease>) {
    let policy = Policy {
        breaker: BREAKER,
        checks: None,
        runtime: tcplb::fleet::RuntimePolicy::DEFAULT,
    };
    let (fleet, _) = Builder::new(policy, balance).build(&backends(n));
    let held = (0..n * 3)
        .filter_map(|i| fleet.pick(&request(i as u32)))
        .collect();
    (fleet, held)
}

/// A new session from client number `i` (10.x.y.z).
fn request(i: u32) -> PickRequest<'static> {
    PickRequest {
        client: Some(IpAddr::from(Ipv4Addr::from(0x0a00_0000 | (i & 0xff_ffff)))),
        now: 0,
        tried: &[],
    }
}

/// What a session costs the selection: pick (and lease) a backend, then release it, with
/// backends that already hold a spread of sessions. Each algorithm over 4, 64 and 1024
/// backends; the goal is at most 200 ns at 1024.
fn bench_pick(bencher: divan::Bencher, balance: Balance, n: usize) {
    let (fleet, held) = loaded_fleet(balance, n);
    let mut client = 0u32;
    bencher.bench_local(|| {
        client = client.wrapping_add(0x9E37_79B9);
        if let Some(lease) = divan::black_box(fleet.pick(&request(client))) {
            fleet.release(lease, 0);
        }
    });
    drop(held);
}

#[divan::bench(args = [4, 64, 1024])]
fn least_active_pick(bencher: divan::Bencher, n: usize) {
    bench_pick(bencher, Balance::LeastActive, n);
}

#[divan::bench(args = [4, 64, 1024])]
fn round_robin_pick(bencher: divan::Bencher, n: usize) {
    bench_pick(bencher, Balance::RoundRobin, n);
}

#[divan::bench(args = [4, 64, 1024])]
fn random_two_pick(bencher: divan::Bencher, n: usize) {
    bench_pick(bencher, Balance::RandomTwo, n);
}

#[divan::bench(args = [4, 64, 1024])]
fn source_hash_pick(bencher: divan::Bencher, n: usize) {
    bench_pick(bencher, Balance::SourceHash(HashSettings::default()), n);
}

/// Least-latency over backends with a spread of latency estimates (1 to 50 ms).
#[divan::bench(args = [4, 64, 1024])]
fn least_latency_pick(bencher: divan::Bencher, n: usize) {
    let balance = Balance::LeastLatency(LatencySettings::default());
    let (fleet, held) = loaded_fleet(balance, n);
    for (i, b) in fleet.backends().enumerate() {
        let ms = 1 + (i as u64 * 7919) % 50;
        b.latency.observe(
            std::time::Duration::from_millis(ms),
            0,
            Duration::from_secs(10),
        );
    }
    fleet.tick(0);
    let mut client = 0u32;
    bencher.bench_local(|| {
        client = client.wrapping_add(0x9E37_79B9);
        if let Some(lease) = divan::black_box(fleet.pick(&request(client))) {
            fleet.release(lease, 0);
        }
    });
    drop(held);
}

/// Source-hash with bounded loads (F = 1.25): the totals kept on every lease and release.
#[divan::bench(args = [4, 64, 1024])]
fn source_hash_bounded_pick(bencher: divan::Bencher, n: usize) {
    let settings = HashSettings {
        balance_factor: Some(125),
        ..HashSettings::default()
    };
    bench_pick(bencher, Balance::SourceHash(settings), n);
}

/// Building a generation's Maglev table (65,537 slots) over 1,024 backends: off the event
/// loops, on each reload.
#[divan::bench(sample_count = 10)]
fn source_hash_table_build(bencher: divan::Bencher) {
    let entries: Vec<(SocketAddr, u32)> =
        backends(1024).iter().map(|b| (b.addr, b.weight)).collect();
    bencher.bench_local(|| divan::black_box(build_table(&entries, 65_537)));
}

/// Decoding a PROXY header (v1 and v2) as `--accept-proxy` does for every client.
#[divan::bench(args = ["v1", "v2"])]
fn proxy_header_decode(bencher: divan::Bencher, version: &str) {
    let version = if version == "v1" {
        Version::V1
    } else {
        Version::V2
    };
    let mut header = [0u8; proxy_protocol::MAX_ENCODED];
    let len = proxy_protocol::encode(
        version,
        "192.0.2.7:40000".parse().expect("addr"),
        "198.51.100.1:443".parse().expect("addr"),
        &mut header,
    );
    bencher
        .bench_local(|| divan::black_box(proxy_protocol::decode(divan::black_box(&header[..len]))));
}

/// What a service with routes does with a client's ClientHello (a real one, 517 bytes from
/// Python's ssl): parse it, and look its name up among `n` exact routes and a wildcard.
#[divan::bench(args = [10, 1000])]
fn client_hello_parse_and_route(bencher: divan::Bencher, n: usize) {
    use tcplb::service::routes::{Route, Routing, Target};
    use tcplb::tls_hello::{DEFAULT_CAP, Parsed, parse};
    let hello = include_bytes!("../tests/data/client_hello_python.bin");
    let target = Target {
        pool: 1,
        connect_timeout: Duration::from_secs(3),
        retries: 2,
    };
    let mut routes: Vec<Route> = (0..n)
        .map(|i| Route {
            sni: Some(format!("site-{i}.example.net")),
            alpn: None,
            target,
        })
        .collect();
    routes.push(Route {
        sni: Some("*.example.com".to_string()),
        alpn: Some("h2".to_string()),
        target,
    });
    let routing = Routing::new(routes, Duration::from_secs(5), DEFAULT_CAP);
    let mut scratch = vec![0u8; DEFAULT_CAP];
    bencher.bench_local(|| {
        let Parsed::Hello(h) = parse(divan::black_box(hello), DEFAULT_CAP, &mut scratch) else {
            panic!("a hello");
        };
        divan::black_box(routing.route(&h))
    });
}

/// One small request/response round trip through tcplb on loopback: client → reactor →
/// echo backend → reactor → client, on a kept-alive connection.
#[divan::bench(args = [64, 16 * 1024])]
fn echo_round_trip(bencher: divan::Bencher, size: usize) {
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let echo_addr = echo.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let args: Vec<std::ffi::OsString> = [
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--buffers",
            "256",
        ]
        .iter()
        .map(Into::into)
        .chain([echo_addr.to_string().into()])
        .collect();
        let Ok(Action::Run(config)) = config::parse_args(&args) else {
            panic!("arguments");
        };
        let signals = tcplb::control::catch_signals().expect("signals");
        let invocation = tcplb::control::upgrade::Invocation::current();
        let control = tcplb::control::start::start(*config, signals, invocation).expect("start");
        tx.send(control.local_addr().expect("an address"))
            .expect("send addr");
        let _ = control.run();
    });
    let addr = rx.recv().expect("tcplb address");
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let request = vec![7u8; size];
    let mut response = vec![0u8; size];
    bencher.bench_local(|| {
        client.write_all(&request).expect("write");
        client.read_exact(&mut response).expect("read");
    });
}
