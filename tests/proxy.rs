//! Byte transparency and balancing through the real binary: echo under concurrency, least
//! active choice, weights, half-close, both directions at once, a slow reader.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::thread;

#[test]
fn many_concurrent_clients_echo_every_byte() {
    let backends = [Backend::start(1, echo()), Backend::start(2, echo())];
    let tcplb = Tcplb::start(&[&backends[0].arg(), &backends[1].arg()]);
    let clients = 40;
    thread::scope(|s| {
        for seed in 0..clients {
            let tcplb = &tcplb;
            s.spawn(move || {
                let data = pattern(seed, (1 << 20) + seed as usize * 7919);
                let back = echo_through(tcplb.connect(), &data);
                assert_eq!(back.len(), data.len(), "client {seed}: length");
                assert_eq!(hash(&back), hash(&data), "client {seed}: content");
            });
        }
    });
    let served: usize = backends
        .iter()
        .map(|b| b.accepted.load(Ordering::SeqCst))
        .sum();
    assert_eq!(served, clients as usize);
    for b in &backends {
        assert!(
            b.accepted.load(Ordering::SeqCst) >= 10,
            "backend {} got {} of {clients}: load is not shared",
            b.id,
            b.accepted.load(Ordering::SeqCst)
        );
    }
}

#[test]
fn the_least_active_backend_gets_the_next_sessions() {
    let backends: Vec<_> = (0..3)
        .map(|i| Backend::start(i, identify_and_hold()))
        .collect();
    let args: Vec<String> = backends.iter().map(|b| b.arg()).collect();
    let tcplb = Tcplb::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut held: Vec<_> = (0..9).map(|_| connect_and_identify(&tcplb)).collect();
    let mut per_backend = [0; 3];
    for (_, id) in &held {
        per_backend[*id as usize] += 1;
    }
    assert_eq!(per_backend, [3, 3, 3], "equal backends share equally");

    // Free two sessions on backend 1: it is now the least active, twice over.
    for _ in 0..2 {
        let at = held
            .iter()
            .position(|(_, id)| *id == 1)
            .expect("a session on 1");
        close_and_wait(held.remove(at).0);
    }
    let next: Vec<u8> = (0..2)
        .map(|_| {
            let (stream, id) = connect_and_identify(&tcplb);
            held.push((stream, id));
            id
        })
        .collect();
    assert_eq!(next, [1, 1]);
    // Balanced again: the next three go one to each.
    let mut next: Vec<u8> = (0..3)
        .map(|_| {
            let (stream, id) = connect_and_identify(&tcplb);
            held.push((stream, id));
            id
        })
        .collect();
    next.sort();
    assert_eq!(next, [0, 1, 2]);
}

#[test]
fn weights_share_sessions_in_proportion() {
    let backends: Vec<_> = (0..3)
        .map(|i| Backend::start(i, identify_and_hold()))
        .collect();
    let tcplb = Tcplb::start(&[
        &backends[0].arg(),
        &format!("{},weight=2", backends[1].arg()),
        &format!("{},weight=3", backends[2].arg()),
    ]);
    // Held at once: least active per unit of weight.
    let held: Vec<_> = (0..60).map(|_| connect_and_identify(&tcplb)).collect();
    let mut counts = [0; 3];
    for (_, id) in &held {
        counts[*id as usize] += 1;
    }
    assert_eq!(counts, [10, 20, 30]);
    for (stream, _) in held {
        close_and_wait(stream);
    }
    // One at a time (never more than one active): ties share by weight too.
    let mut counts = [0; 3];
    for _ in 0..60 {
        let (stream, id) = connect_and_identify(&tcplb);
        counts[id as usize] += 1;
        close_and_wait(stream);
    }
    assert_eq!(counts, [10, 20, 30]);
}

#[test]
fn half_close_reply_after_client_eof_arrives() {
    let backend = Backend::start(1, digest_after_eof());
    let tcplb = Tcplb::start(&[&backend.arg()]);
    for (seed, len) in [(1u64, 0usize), (2, 1), (3, 100_000), (4, 5 << 20)] {
        let data = pattern(seed, len);
        let mut stream = tcplb.connect();
        stream.write_all(&data).expect("write");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply after EOF");
        assert_eq!(
            reply,
            format!("{} {}\n", data.len(), hash(&data)),
            "len {len}"
        );
    }
}

#[test]
fn large_transfers_both_ways_at_once_do_not_deadlock() {
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&[&backend.arg()]);
    thread::scope(|s| {
        for seed in 0..3u64 {
            let tcplb = &tcplb;
            s.spawn(move || {
                // Far more than every socket buffer on the way can hold.
                let data = pattern(100 + seed, 48 << 20);
                let back = echo_through(tcplb.connect(), &data);
                assert_eq!(back.len(), data.len());
                assert_eq!(hash(&back), hash(&data));
            });
        }
    });
}

#[test]
fn a_client_that_stops_reading_holds_memory_flat_and_gets_every_byte() {
    const LEN: u64 = 384 << 20;
    let backend = Backend::start(1, streamer(7, LEN));
    let tcplb = Tcplb::start(&[&backend.arg()]);
    let rss_before = tcplb.rss_kib();
    // The streamer starts on connect (and never reads: sending it bytes would make its
    // close a reset).
    let mut stream = tcplb.connect();

    // Wait until the backend is stuck: socket buffers on the way are full.
    backend.wait_stalled();
    let written = backend.counter.load(Ordering::SeqCst);
    assert!(
        written < LEN / 4,
        "the backend was not held back: {written} bytes out"
    );
    let rss_stalled = tcplb.rss_kib();
    assert!(
        rss_stalled < rss_before + 2048,
        "tcplb grew from {rss_before} KiB to {rss_stalled} KiB while the client stalled"
    );

    let got = read_digest(&mut stream).expect("read everything");
    assert_eq!(got, stream_digest(7, LEN));
    assert!(tcplb.rss_kib() < rss_before + 2048);
}

#[test]
fn server_speaks_first_protocols_work() {
    // Like SSH or SMTP: the backend talks before the client sends anything.
    let backend = Backend::start(42, identify_and_hold());
    let tcplb = Tcplb::start(&[&backend.arg()]);
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 42);
    close_and_wait(stream);
}

#[test]
fn tcp_urgent_data_is_forwarded_in_the_stream_both_ways() {
    // Like telnet's Synch or FTP's ABOR: a byte sent with MSG_OOB in the middle of a stream.
    // A read stops short at the urgent mark; that must neither stall the stream nor end it.
    let backend = Backend::start(
        1,
        std::sync::Arc::new(|mut stream: std::net::TcpStream, _: &Backend| {
            let sock = socket2::SockRef::from(&stream);
            sock.set_out_of_band_inline(true).expect("oobinline");
            // Read the client's stream to EOF, then answer with urgent data in the middle.
            let Ok((len, digest)) = read_digest(&mut stream) else {
                return;
            };
            let reply = format!("{len} {digest}\n");
            let _ = stream.write_all(b"xx");
            let _ = socket2::SockRef::from(&stream).send_out_of_band(b"y");
            let _ = stream.write_all(reply.as_bytes());
        }),
    );
    let tcplb = Tcplb::start(&[&backend.arg()]);
    for _ in 0..3 {
        let mut stream = tcplb.connect();
        socket2::SockRef::from(&stream)
            .set_out_of_band_inline(true)
            .expect("oobinline");
        stream.write_all(b"AAAA").expect("write");
        socket2::SockRef::from(&stream)
            .send_out_of_band(b"B")
            .expect("urgent byte");
        stream.write_all(b"CCCC").expect("write");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        let sent = b"AAAABCCCC";
        assert_eq!(reply, format!("xxy{} {}\n", sent.len(), hash(sent)));
    }
}
