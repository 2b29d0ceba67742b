//! The splice path of a [`Direction`], over real loopback sockets driven by a real
//! edge-triggered `mio` poll (scripted sockets have no descriptor to splice).

use crate::worker::direction::{Direction, Fault, Flow, MAX_GATHER, Pools, Readiness};
use crate::worker::pipes::{PIPE_SIZE, PipePool};
use crate::worker::pool::Pool;
use crate::worker::splice::Splice;
use mio::net::TcpStream;
use mio::{Events, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const SRC: Token = Token(0);
const DST: Token = Token(1);

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A connected loopback pair: (the peer's blocking end, our non-blocking end with
/// `SO_OOBINLINE`, as tcplb sets it).
fn pair() -> (std::net::TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (ours, _) = listener.accept().expect("accept");
    socket2::SockRef::from(&ours)
        .set_out_of_band_inline(true)
        .expect("oobinline");
    ours.set_nonblocking(true).expect("non-blocking");
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (peer, TcpStream::from_std(ours))
}

/// One direction from `src` to `dst` with its own poll: the source's peer writes into
/// it, the destination's peer reads what comes out.
struct Rig {
    poll: Poll,
    events: Events,
    src: TcpStream,
    dst: TcpStream,
    src_ready: Readiness,
    dst_ready: Readiness,
    dir: Direction,
    pool: Pool,
    pipes: PipePool,
    src_peer: Option<std::net::TcpStream>,
    dst_peer: Option<std::net::TcpStream>,
    /// The source has reported urgent data (`EPOLLPRI`) at least once.
    saw_urgent: bool,
}

impl Rig {
    fn new(pipes: PipePool) -> Rig {
        let (src_peer, mut src) = pair();
        let (dst_peer, mut dst) = pair();
        let poll = Poll::new().expect("poll");
        let interest = crate::net::session_interest();
        poll.registry()
            .register(&mut src, SRC, interest)
            .expect("register");
        poll.registry()
            .register(&mut dst, DST, interest)
            .expect("register");
        Rig {
            poll,
            events: Events::with_capacity(16),
            src,
            dst,
            src_ready: Readiness::default(),
            dst_ready: Readiness::default(),
            dir: Direction::default(),
            pool: Pool::new(16 * 1024, 64).expect("pool"),
            pipes,
            src_peer: Some(src_peer),
            dst_peer: Some(dst_peer),
            saw_urgent: false,
        }
    }

    fn pump(&mut self) -> Result<Flow, Fault> {
        self.dir.pump(
            &mut self.src,
            &mut self.src_ready,
            &mut self.dst,
            &mut self.dst_ready,
            &mut Pools {
                buffers: &mut self.pool,
                pipes: &mut self.pipes,
            },
            false,
            None,
        )
    }

    /// Runs the loop (wait, fold events in, pump) until `done` holds; panics after 20 s.
    fn run_until(&mut self, mut done: impl FnMut(&Rig) -> bool) -> Result<(), Fault> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut flow = Flow::Blocked;
        while !done(self) {
            assert!(Instant::now() < deadline, "stuck: {flow:?}");
            let wait = if flow == Flow::Yielded {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
            self.poll.poll(&mut self.events, Some(wait)).expect("poll");
            for event in self.events.iter() {
                match event.token() {
                    SRC => {
                        self.saw_urgent |= event.is_priority();
                        self.src_ready.observe(event);
                    }
                    _ => self.dst_ready.observe(event),
                }
            }
            flow = self.pump()?;
        }
        Ok(())
    }

    /// Runs until the direction is stuck: it holds bytes and none has moved for `quiet`.
    fn run_until_stuck(&mut self, quiet: Duration) {
        let (mut moved, mut since) = (u64::MAX, Instant::now());
        self.run_until(|rig| {
            if rig.dir.moved() != moved || !rig.dir.holds_bytes() {
                (moved, since) = (rig.dir.moved(), Instant::now());
            }
            since.elapsed() >= quiet
        })
        .expect("no fault");
    }

    fn release(&mut self) {
        self.dir.release(&mut Pools {
            buffers: &mut self.pool,
            pipes: &mut self.pipes,
        });
    }
}

/// Reads the destination's peer to EOF on a thread, counting bytes as they come.
fn collect(
    mut peer: std::net::TcpStream,
    progress: Arc<AtomicU64>,
) -> thread::JoinHandle<io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = peer.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
            progress.fetch_add(n as u64, Ordering::SeqCst);
        }
    })
}

fn pipes() -> PipePool {
    PipePool::new(4, Some(PIPE_SIZE))
}

#[test]
fn bulk_goes_to_splice_small_exchanges_come_back_and_every_byte_keeps_its_place() {
    let mut rig = Rig::new(pipes());
    let src_peer = rig.src_peer.take().expect("peer");
    let progress = Arc::new(AtomicU64::new(0));
    let collector = collect(rig.dst_peer.take().expect("peer"), Arc::clone(&progress));
    let mut sent = Vec::new();
    let mut send_and_deliver = |rig: &mut Rig, data: Vec<u8>| {
        sent.extend_from_slice(&data);
        let writer = {
            let mut peer = src_peer.try_clone().expect("clone");
            thread::spawn(move || peer.write_all(&data).expect("write"))
        };
        let total = sent.len() as u64;
        rig.run_until(|_| progress.load(Ordering::SeqCst) == total)
            .expect("no fault");
        writer.join().expect("writer");
    };

    // A small exchange stays on the buffer path.
    send_and_deliver(&mut rig, bytes(1, 100));
    assert!(!rig.dir.splicing());
    assert_eq!(rig.dir.spliced(), 0);

    // Bulk: two full reads, then splices through a pipe.
    send_and_deliver(&mut rig, bytes(2, 8 << 20));
    let bulk_spliced = rig.dir.spliced();
    assert!(
        bulk_spliced > 4 << 20,
        "most of the bulk was spliced: {bulk_spliced}"
    );
    assert_eq!(rig.pipes.used(), 0, "the pipe went back once empty");

    // Small again: two splices in a row bring less than a buffer's worth (the bulk's
    // tail may be the first), and the next reads take the buffer path.
    send_and_deliver(&mut rig, bytes(3, 100));
    send_and_deliver(&mut rig, bytes(4, 100));
    assert!(!rig.dir.splicing(), "back on the buffer path");
    assert!(rig.dir.spliced() <= bulk_spliced + 200);
    assert_eq!(rig.pipes.used(), 0, "the last pipe went back once empty");
    let spliced = rig.dir.spliced();
    for seed in 5..20 {
        send_and_deliver(&mut rig, bytes(seed, 100));
    }
    assert_eq!(
        rig.dir.spliced(),
        spliced,
        "small exchanges are not spliced"
    );

    // The end of stream is passed on once everything before it is delivered.
    src_peer.shutdown(Shutdown::Write).expect("half-close");
    rig.run_until(|rig| rig.dir.is_done()).expect("no fault");
    drop(rig);
    let got = collector.join().expect("collector").expect("read");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "every byte in its place");
}

#[test]
fn a_stalled_reader_leaves_at_most_one_pipe_full_and_the_rest_in_the_kernel() {
    const LEN: usize = 64 << 20;
    let mut rig = Rig::new(pipes());
    let src_peer = rig.src_peer.take().expect("peer");
    let data = bytes(5, LEN);
    let writer = {
        let data = data.clone();
        // One write: the source's queue stays full, so every splice finds plenty.
        thread::spawn(move || {
            let mut src_peer = src_peer;
            src_peer.write_all(&data).expect("write");
        })
    };
    // Nobody reads the destination: everything on the way fills up, then nothing moves.
    rig.run_until_stuck(Duration::from_millis(300));
    assert!(rig.dir.spliced() > 0, "the bulk went to the splice path");
    let pipe_size = {
        let pipe = rig.pipes.take().expect("another pipe");
        let size = pipe.size();
        rig.pipes.give(pipe);
        size
    };
    // What waits here is bounded: one pipe's worth, or (had a splice found the queue
    // nearly empty and gone back to buffers) one gathered read's worth of buffers.
    match (rig.pipes.used(), rig.pool.used()) {
        (1, 0) => assert!(
            rig.dir.pipe_bytes() > 0 && rig.dir.pipe_bytes() <= pipe_size,
            "{} bytes wait in a {pipe_size}-byte pipe",
            rig.dir.pipe_bytes()
        ),
        (0, buffers) => assert!(buffers > 0 && buffers <= MAX_GATHER),
        held => panic!("(pipes, buffers) held: {held:?}"),
    }
    assert!(
        rig.dir.moved() < (LEN / 2) as u64,
        "the source was held back: {} moved",
        rig.dir.moved()
    );

    // The reader comes back: every byte arrives, in order, and the pipe goes back.
    let progress = Arc::new(AtomicU64::new(0));
    let collector = collect(rig.dst_peer.take().expect("peer"), Arc::clone(&progress));
    rig.run_until(|_| progress.load(Ordering::SeqCst) == LEN as u64)
        .expect("no fault");
    writer.join().expect("writer");
    assert_eq!(rig.pipes.used(), 0);
    drop(rig);
    let got = collector.join().expect("collector").expect("read");
    assert!(got == data, "every byte in its place");
}

#[test]
fn with_no_pipe_to_be_had_bulk_takes_the_buffer_path() {
    let mut rig = Rig::new(PipePool::new(1, Some(PIPE_SIZE)));
    let held = rig.pipes.take().expect("the only pipe");
    let mut src_peer = rig.src_peer.take().expect("peer");
    let progress = Arc::new(AtomicU64::new(0));
    let collector = collect(rig.dst_peer.take().expect("peer"), Arc::clone(&progress));
    let data = [bytes(6, 4 << 20), bytes(7, 4 << 20)];
    let writer = {
        let mut peer = src_peer.try_clone().expect("clone");
        let first = data[0].clone();
        thread::spawn(move || peer.write_all(&first).expect("write"))
    };
    rig.run_until(|_| progress.load(Ordering::SeqCst) == 4 << 20)
        .expect("no fault");
    writer.join().expect("writer");
    assert!(rig.dir.splicing(), "bulk, and would splice");
    assert_eq!(rig.dir.spliced(), 0, "but every byte took buffers");

    // A pipe comes back: the next bulk bytes are spliced.
    rig.pipes.give(held);
    let writer = {
        let second = data[1].clone();
        thread::spawn(move || {
            src_peer.write_all(&second).expect("write");
            src_peer.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    rig.run_until(|rig| rig.dir.is_done()).expect("no fault");
    writer.join().expect("writer");
    assert!(rig.dir.spliced() > 0);
    drop(rig);
    let got = collector.join().expect("collector").expect("read");
    assert!(got == data.concat(), "every byte in its place");
}

#[test]
fn a_pipe_still_holding_bytes_when_the_session_ends_is_closed_not_reused() {
    let mut rig = Rig::new(PipePool::new(1, Some(PIPE_SIZE)));
    let src_peer = rig.src_peer.take().expect("peer");
    let writer = thread::spawn(move || {
        let mut src_peer = src_peer;
        let _ = src_peer.write_all(&bytes(8, 32 << 20));
    });
    rig.run_until_stuck(Duration::from_millis(300));
    assert!(rig.dir.pipe_bytes() > 0, "bytes wait in the pipe");
    rig.release();
    assert_eq!((rig.pipes.used(), rig.pipes.free()), (1 - 1, 1));
    let fresh = rig.pipes.take().expect("a fresh pipe");
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int into `queued`, which outlives the call.
    let rc = unsafe { libc::ioctl(fresh.read_fd(), libc::FIONREAD, &mut queued) };
    assert_eq!((rc, queued), (0, 0), "no stale bytes in the next pipe");
    rig.pipes.give(fresh);
    drop(rig);
    writer.join().expect("writer");
}

#[test]
fn a_reset_met_by_a_splice_is_an_error_and_the_pipe_goes_back() {
    let (peer, ours) = pair();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(peer);
    let mut pipes = pipes();
    let mut splice = Splice::default();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        match splice.fill(fd, &mut pipes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the reset never came");
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => break e,
            Ok(n) => panic!("expected the reset, got {n:?}"),
        }
    };
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert!(!splice.holds_pipe());
    assert_eq!(pipes.used(), 0, "the pipe went back");
}

#[test]
fn a_source_reset_mid_bulk_is_the_sources_fault_and_every_pipe_comes_back() {
    let mut rig = Rig::new(pipes());
    let src_peer = rig.src_peer.take().expect("peer");
    let progress = Arc::new(AtomicU64::new(0));
    let _collector = collect(rig.dst_peer.take().expect("peer"), Arc::clone(&progress));
    let writer = thread::spawn(move || {
        let mut src_peer = src_peer;
        src_peer.write_all(&bytes(9, 8 << 20)).expect("write");
        socket2::SockRef::from(&src_peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    });
    match rig.run_until(|_| false) {
        Err(Fault::Source(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected the source's reset, got {other:?}"),
    }
    writer.join().expect("writer");
    assert!(rig.dir.spliced() > 0, "the bulk was spliced");
    rig.release();
    assert_eq!((rig.pipes.used(), rig.pool.used()), (0, 0));
}

#[test]
fn urgent_data_in_a_spliced_stream_is_read_in_line_and_splicing_goes_on() {
    let mut rig = Rig::new(pipes());
    let src_peer = rig.src_peer.take().expect("peer");
    let progress = Arc::new(AtomicU64::new(0));
    let collector = collect(rig.dst_peer.take().expect("peer"), Arc::clone(&progress));
    let (before, after) = (bytes(10, 8 << 20), bytes(11, 8 << 20));
    // The urgent byte is sent in the middle of the bulk, while it is being spliced.
    let writer = {
        let (before, after) = (before.clone(), after.clone());
        let progress = Arc::clone(&progress);
        thread::spawn(move || {
            let mut src_peer = src_peer;
            src_peer.write_all(&before).expect("write");
            while progress.load(Ordering::SeqCst) < 4 << 20 {
                thread::sleep(Duration::from_millis(1));
            }
            socket2::SockRef::from(&src_peer)
                .send_out_of_band(b"U")
                .expect("urgent byte");
            src_peer.write_all(&after).expect("write");
            src_peer.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    let (mut spliced_before, mut spliced_at_urgent) = (None, None);
    rig.run_until(|rig| {
        let arrived = progress.load(Ordering::SeqCst);
        if arrived >= 4 << 20 && spliced_before.is_none() {
            spliced_before = Some(rig.dir.spliced());
        }
        // The direction has just written the urgent byte out.
        if rig.dir.moved() > (8 << 20) && spliced_at_urgent.is_none() {
            spliced_at_urgent = Some(rig.dir.spliced());
        }
        rig.dir.is_done()
    })
    .expect("no fault");
    writer.join().expect("writer");
    assert!(rig.saw_urgent, "the urgent data was reported");
    assert!(
        spliced_before.is_some_and(|n| n > 0),
        "splicing when the urgent byte came"
    );
    let at_urgent = spliced_at_urgent.expect("the urgent byte arrived");
    assert!(
        rig.dir.spliced() > at_urgent + (1 << 20),
        "and again after it: {at_urgent} then {}",
        rig.dir.spliced()
    );
    drop(rig);
    let got = collector.join().expect("collector").expect("read");
    let expected = [before, b"U".to_vec(), after].concat();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the urgent byte in its place");
}
