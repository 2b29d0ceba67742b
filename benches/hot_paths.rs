//! Micro-benchmarks of the hot paths (divan): the buffer pool, least-active selection over
//! 4 / 64 / 1024 backends, and a loopback echo round trip through a real worker.
//!
//! Run with `cargo bench`. These measure our own code in isolation; whole-system figures
//! against HAProxy and nginx come from `scripts/bench.sh`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use tcplb::config::{self, Action};
use tcplb::fleet::Policy;
use tcplb::fleet::backend::ResolvedBackend;
use tcplb::fleet::builder::Builder;
use tcplb::fleet::health::BreakerPolicy;
use tcplb::fleet::select::{Balance, PickRequest};
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

/// Picking the least active backend, holding it and releasing the lease (what a session
/// costs the selection), with backends that already hold a spread of sessions.
#[divan::bench(args = [4, 64, 1024])]
fn least_active_pick(bencher: divan::Bencher, n: usize) {
    let policy = Policy {
        breaker: BREAKER,
        checks: None,
    };
    let (fleet, _) = Builder::new(policy, Balance::LeastActive).build(&backends(n));
    let request = PickRequest {
        client: None,
        now: 0,
        tried: &[],
    };
    // A spread of load: 3 sessions per backend on average.
    let held: Vec<_> = (0..n * 3).filter_map(|_| fleet.pick(&request)).collect();
    bencher.bench_local(|| {
        if let Some(lease) = divan::black_box(fleet.pick(&request)) {
            fleet.release(lease, 0);
        }
    });
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
        tx.send(control.local_addr()).expect("send addr");
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
