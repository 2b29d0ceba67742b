//! Micro-benchmarks of the hot paths (divan): the buffer pool, least-active selection over
//! 4 / 64 / 1024 backends, and a loopback echo round trip through a real reactor.
//!
//! Run with `cargo bench`. These measure our own code in isolation; whole-system figures
//! against HAProxy and nginx come from `scripts/bench.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tcplb::balancer::{Balancer, ResolvedBackend};
use tcplb::context::Settings;
use tcplb::discovery::{Plan, Resolver};
use tcplb::health::BreakerPolicy;
use tcplb::net;
use tcplb::pool::Pool;
use tcplb::reactor::{Reactor, ReactorConfig};

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

/// Picking the least active backend (and releasing the lease), with backends that already
/// hold a spread of sessions.
#[divan::bench(args = [4, 64, 1024])]
fn least_active_pick(bencher: divan::Bencher, n: usize) {
    let balancer = Balancer::new(BREAKER, None, &backends(n));
    let now = Instant::now();
    // A spread of load: 3 sessions per backend on average.
    let held: Vec<_> = (0..n * 3).filter_map(|_| balancer.pick(now, &[])).collect();
    bencher.bench_local(|| divan::black_box(balancer.pick(now, &[])));
    drop(held);
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
        let listener =
            net::bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 128).expect("bind tcplb");
        let set = vec![ResolvedBackend {
            addr: echo_addr,
            name: echo_addr.to_string(),
            weight: 1,
            backup: false,
        }];
        let mut reactor = Reactor::new(
            listener,
            Balancer::new(BREAKER, None, &set),
            ReactorConfig {
                settings: Settings {
                    connect_timeout: Duration::from_secs(3),
                    retries: 2,
                    idle_timeout: None,
                    max_conns: 1000,
                },
                pool: Pool::new(16 * 1024, 256).expect("pool"),
                signals: tcplb::reactor::catch_signals().expect("signals"),
                drain_timeout: Duration::from_secs(1),
                admin: None,
                access_log: None,
                discovery: Plan {
                    positional: Vec::new(),
                    file: None,
                    file_specs: Vec::new(),
                    resolver: Resolver::default(),
                    current: set,
                    resolve_interval: None,
                },
            },
        )
        .expect("reactor");
        tx.send(reactor.local_addr().expect("addr"))
            .expect("send addr");
        let _ = reactor.run();
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
