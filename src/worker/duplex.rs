//! The two directions of an established session, as tokio's `copy_bidirectional`: `up`
//! moves client → backend, `down` backend → client; an end of stream on one side is passed
//! on as `shutdown(Write)` on the other once everything before it is delivered; the other
//! direction keeps flowing; the session is over when both are done. A reset or error on
//! either side ends it, and is passed on to the other side as a reset (also a reset that
//! arrives after that side's FIN, which reading alone would never see).
//!
//! Generic over the socket ([`Stream`]), so every case is unit-tested with scripted sockets
//! (the buffer path), and again over real loopback sockets for the splice path.

use crate::stats::EndReason;
use crate::worker::direction::{Direction, Fault, Flow, Pools, Readiness};
use crate::worker::stream::Stream;

/// Which socket of a session an event is for (the socket number in its token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub fn from_socket(socket: usize) -> Side {
        if socket == 0 {
            Side::Client
        } else {
            Side::Backend
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// What a pump of both directions came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes written to the backend and to the client by this pump.
    pub sent: u64,
    pub received: u64,
    /// Of those, bytes moved by splice.
    pub spliced_sent: u64,
    pub spliced_received: u64,
    /// The session is over, and why.
    pub closed: Option<EndReason>,
    /// A direction is readable but the pool is empty: run again when a buffer comes back.
    pub need_buffer: bool,
    /// A direction used up its turn with work left: run again soon.
    pub yielded: bool,
    /// A direction waits for the kernel fast path to deliver what it redirected first.
    pub gated: bool,
}

#[derive(Debug, Default)]
pub struct Duplex {
    pub client_ready: Readiness,
    pub backend_ready: Readiness,
    /// Client to backend.
    up: Direction,
    /// Backend to client.
    down: Direction,
    /// Which side sent its FIN first.
    first_fin: Option<Side>,
}

impl Duplex {
    /// Bytes written to the backend and to the client so far.
    pub fn moved(&self) -> (u64, u64) {
        (self.up.moved(), self.down.moved())
    }

    /// Nothing is held in flight in either direction.
    pub fn is_quiet(&self) -> bool {
        !self.up.holds_bytes() && !self.down.holds_bytes()
    }

    /// Pool buffers held right now.
    pub fn buffers_held(&self) -> usize {
        self.up.buffers_held() + self.down.buffers_held()
    }

    /// Either side has reached its end of stream.
    pub fn any_eof(&self) -> bool {
        self.up.eof() || self.down.eof()
    }

    /// Counts bytes moved outside this duplex (by the kernel fast path) in its totals.
    pub fn add_moved(&mut self, up: u64, down: u64) {
        self.up.add_moved(up);
        self.down.add_moved(down);
    }

    /// Kernel pipes held right now.
    pub fn pipes_held(&self) -> usize {
        usize::from(self.up.pipe_held()) + usize::from(self.down.pipe_held())
    }

    /// Moves bytes both ways until everything blocks, and says whether the session is over.
    pub fn pump<S: Stream + ?Sized>(
        &mut self,
        client: &mut S,
        backend: &mut S,
        pools: &mut Pools<'_>,
    ) -> Pumped {
        self.pump_gated(client, backend, pools, [None, None])
    }

    /// As [`Duplex::pump`], for a session the kernel fast path moves: `gates` (up, down)
    /// say when the kernel has delivered what it redirected toward the backend and toward
    /// the client (see [`Direction::pump`]).
    pub fn pump_gated<S: Stream + ?Sized>(
        &mut self,
        client: &mut S,
        backend: &mut S,
        pools: &mut Pools<'_>,
        gates: [Option<&dyn Fn() -> bool>; 2],
    ) -> Pumped {
        let before = (self.moved(), self.up.spliced(), self.down.spliced());
        let up = self.up.pump(
            client,
            &mut self.client_ready,
            backend,
            &mut self.backend_ready,
            pools,
            self.down.is_done(),
            gates[0],
        );
        let down = match up {
            Ok(_) => Some(self.down.pump(
                backend,
                &mut self.backend_ready,
                client,
                &mut self.client_ready,
                pools,
                self.up.is_done(),
                gates[1],
            )),
            Err(_) => None,
        };
        let mut pumped = Pumped {
            sent: self.up.moved() - before.0.0,
            received: self.down.moved() - before.0.1,
            spliced_sent: self.up.spliced() - before.1,
            spliced_received: self.down.spliced() - before.2,
            ..Pumped::default()
        };
        let flows = match (up, down) {
            (Err(fault), _) => {
                pumped.closed = Some(fail(fault, Side::Client, client, backend));
                return pumped;
            }
            (Ok(_), Some(Err(fault))) => {
                pumped.closed = Some(fail(fault, Side::Backend, client, backend));
                return pumped;
            }
            (Ok(up), Some(Ok(down))) => [up, down],
            (Ok(_), None) => return pumped,
        };
        if self.first_fin.is_none() {
            if self.up.eof() {
                self.first_fin = Some(Side::Client);
            } else if self.down.eof() {
                self.first_fin = Some(Side::Backend);
            }
        }
        if self.up.is_done() && self.down.is_done() {
            pumped.closed = Some(match self.first_fin {
                Some(Side::Backend) => EndReason::BackendClosed,
                _ => EndReason::ClientClosed,
            });
            return pumped;
        }
        pumped.need_buffer = flows.contains(&Flow::NeedBuffer);
        pumped.yielded = flows.contains(&Flow::Yielded);
        pumped.gated = flows.contains(&Flow::Gated);
        if self.client_ready.error || self.backend_ready.error {
            pumped.closed = self.collect_error(client, backend);
        }
        pumped
    }

    /// A socket reported an error that reading did not meet: a reset that came after the
    /// peer's FIN. A read past the FIN returns EOF, not the error, and the other pipe may
    /// have nothing to write to that socket, so the reset would be lost (forwarded as a clean
    /// end, the session left open on a dead peer). Once the stream before it is delivered up
    /// to the EOF, end the session and pass the reset on.
    fn collect_error<S: Stream + ?Sized>(
        &mut self,
        client: &mut S,
        backend: &mut S,
    ) -> Option<EndReason> {
        for side in [Side::Client, Side::Backend] {
            let (ready, read_done) = match side {
                Side::Client => (&self.client_ready, self.up.eof()),
                Side::Backend => (&self.backend_ready, self.down.eof()),
            };
            let socket: &S = if side == Side::Client {
                client
            } else {
                backend
            };
            if ready.error && read_done {
                match socket.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        return Some(fail(Fault::Source(e), side, client, backend));
                    }
                    Ok(None) => {}
                }
            }
        }
        None
    }

    /// Gives the buffers and pipes back, dropping any bytes not yet written (the session is
    /// ending).
    pub fn release(&mut self, pools: &mut Pools<'_>) {
        self.up.release(pools);
        self.down.release(pools);
    }
}

/// A socket error ends the session; a reset is passed on as a reset to the other side.
/// `source` is the side the failing pipe reads from.
fn fail<S: Stream + ?Sized>(fault: Fault, source: Side, client: &S, backend: &S) -> EndReason {
    let (failed_side, error) = match fault {
        Fault::Source(e) => (source, e),
        Fault::Destination(e) => (source.other(), e),
    };
    log::debug!("{failed_side:?} side failed: {error}");
    match failed_side {
        Side::Client => {
            backend.reset_on_close();
            EndReason::ClientReset
        }
        Side::Backend => {
            client.reset_on_close();
            EndReason::BackendReset
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::pipes::PipePool;
    use crate::worker::pool::Pool;
    use crate::worker::stream::scripted::{Read, Scripted};
    use std::io;

    fn open() -> Duplex {
        let mut d = Duplex::default();
        for r in [&mut d.client_ready, &mut d.backend_ready] {
            r.readable = true;
            r.writable = true;
        }
        d
    }

    fn pool() -> Pool {
        Pool::new(1024, 32).expect("pool")
    }

    /// A worker's stores, without pipes: scripted sockets take the buffer path.
    struct Stock {
        pool: Pool,
        pipes: PipePool,
    }

    impl Stock {
        fn new(pool: Pool) -> Stock {
            Stock {
                pool,
                pipes: PipePool::disabled(),
            }
        }

        fn pools(&mut self) -> Pools<'_> {
            Pools {
                buffers: &mut self.pool,
                pipes: &mut self.pipes,
            }
        }
    }

    #[test]
    fn a_request_and_its_answer_cross_and_the_close_is_passed_on_both_ways() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::Data(b"GET /".to_vec())]);
        let mut backend = Scripted::reading([Read::Data(b"200 OK".to_vec())]);
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!((pumped.sent, pumped.received, pumped.closed), (5, 6, None));
        assert_eq!(backend.written, b"GET /");
        assert_eq!(client.written, b"200 OK");
        // The client half-closes: passed on; the backend answers more, then closes too.
        client.reads.push_back(Read::Eof);
        d.client_ready.readable = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert!(backend.shut && pumped.closed.is_none());
        backend
            .reads
            .extend([Read::Data(b" more".to_vec()), Read::Eof]);
        // The last bytes and the FIN arrive together: epoll reports readable and RDHUP.
        d.backend_ready.readable = true;
        d.backend_ready.read_closed = true;
        d.backend_ready.fin = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(client.written, b"200 OK more");
        assert_eq!(
            pumped.closed,
            Some(EndReason::ClientClosed),
            "the client closed first"
        );
        assert!(!client.reset.get() && !backend.reset.get());
        assert_eq!(stock.pool.free(), 32);
    }

    #[test]
    fn the_backend_closing_first_is_recorded() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::WouldBlock]);
        let mut backend = Scripted::reading([Read::Data(b"bye".to_vec()), Read::Eof]);
        d.backend_ready.fin = true;
        d.backend_ready.read_closed = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert!(client.shut, "the backend's FIN reached the client");
        assert_eq!(pumped.closed, None, "the client may still send");
        client.reads.push_back(Read::Eof);
        d.client_ready.readable = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(pumped.closed, Some(EndReason::BackendClosed));
    }

    #[test]
    fn a_reset_on_one_side_is_passed_on_as_a_reset() {
        for failing in [Side::Client, Side::Backend] {
            let mut d = open();
            let mut stock = Stock::new(pool());
            let reset = || Scripted::reading([Read::Fail(io::ErrorKind::ConnectionReset)]);
            let quiet = || Scripted::reading([Read::WouldBlock]);
            let (mut client, mut backend) = match failing {
                Side::Client => (reset(), quiet()),
                Side::Backend => (quiet(), reset()),
            };
            let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
            let (expected, other_reset) = match failing {
                Side::Client => (EndReason::ClientReset, backend.reset.get()),
                Side::Backend => (EndReason::BackendReset, client.reset.get()),
            };
            assert_eq!(pumped.closed, Some(expected));
            assert!(other_reset, "the other side is reset on close");
        }
    }

    #[test]
    fn a_reset_after_the_peers_fin_is_still_passed_on() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::WouldBlock]);
        let mut backend = Scripted::reading([Read::Data(b"last".to_vec()), Read::Eof]);
        d.backend_ready.read_closed = true;
        d.backend_ready.fin = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(pumped.closed, None);
        assert!(client.shut);
        // Then the backend's socket reports an error: its reset, which no read will return.
        backend.error = Some(io::ErrorKind::ConnectionReset);
        d.backend_ready.error = true;
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(pumped.closed, Some(EndReason::BackendReset));
        assert!(client.reset.get());
    }

    #[test]
    fn a_write_that_fails_blames_the_side_written_to() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::Data(b"x".to_vec())]);
        let mut backend = Scripted::reading([Read::WouldBlock]);
        backend.write_error = Some(io::ErrorKind::ConnectionReset);
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(pumped.closed, Some(EndReason::BackendReset));
        assert!(client.reset.get());
    }

    #[test]
    fn a_stalled_reader_holds_bytes_and_the_session_is_not_quiet() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::WouldBlock]);
        client.write_room = Some(0);
        let mut backend = Scripted::reading([Read::Data(vec![7; 5000])]);
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert_eq!(pumped.received, 0);
        assert!(!d.is_quiet(), "bytes wait here for the client");
        assert!(d.buffers_held() > 0);
        d.release(&mut stock.pools());
        assert_eq!(stock.pool.free(), 32);
    }

    /// A pump with the kernel fast path's gates: toward the backend open or not, toward the
    /// client open.
    fn pump_gated(
        d: &mut Duplex,
        client: &mut Scripted,
        backend: &mut Scripted,
        stock: &mut Stock,
        up_open: bool,
    ) -> Pumped {
        let up = || up_open;
        let down = || true;
        d.pump_gated(
            client,
            backend,
            &mut stock.pools(),
            [Some(&up), Some(&down)],
        )
    }

    /// With the kernel fast path, bytes passed up to user space wait behind the ones the
    /// kernel still delivers: nothing read is written, nor the end of stream passed on,
    /// while the gate is shut, and all of it, in order, once it opens.
    #[test]
    fn bytes_and_the_end_of_stream_wait_for_the_kernel_to_deliver_first() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::Data(b"late".to_vec()), Read::Eof]);
        let mut backend = Scripted::reading([Read::WouldBlock]);
        let pumped = pump_gated(&mut d, &mut client, &mut backend, &mut stock, false);
        assert!(pumped.gated && pumped.closed.is_none());
        assert_eq!((backend.written.len(), backend.shut), (0, false));
        assert!(!d.is_quiet(), "the bytes read wait here");
        // Still shut: the next turn waits too, and reads nothing more.
        let pumped = pump_gated(&mut d, &mut client, &mut backend, &mut stock, false);
        assert!(pumped.gated && backend.written.is_empty());
        let pumped = pump_gated(&mut d, &mut client, &mut backend, &mut stock, true);
        assert!(!pumped.gated);
        assert_eq!(backend.written, b"late");
        // Then the client's FIN is reported: passed on (the gate is open).
        d.client_ready.readable = true;
        d.client_ready.read_closed = true;
        pump_gated(&mut d, &mut client, &mut backend, &mut stock, true);
        assert!(backend.shut, "the FIN follows once the kernel is done");
    }

    #[test]
    fn an_end_of_stream_alone_waits_for_the_gate() {
        let mut d = open();
        let mut stock = Stock::new(pool());
        let mut client = Scripted::reading([Read::Eof]);
        let mut backend = Scripted::reading([Read::WouldBlock]);
        let pumped = pump_gated(&mut d, &mut client, &mut backend, &mut stock, false);
        assert!(
            pumped.gated && !backend.shut,
            "no FIN ahead of the kernel's bytes"
        );
        pump_gated(&mut d, &mut client, &mut backend, &mut stock, true);
        assert!(backend.shut);
    }

    #[test]
    fn an_empty_pool_asks_for_a_buffer() {
        let mut d = open();
        let mut stock = Stock::new(Pool::new(1024, 1).expect("pool"));
        let held = stock.pool.take().expect("the only buffer");
        let mut client = Scripted::reading([Read::Data(b"x".to_vec())]);
        let mut backend = Scripted::reading([Read::WouldBlock]);
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert!(pumped.need_buffer && pumped.closed.is_none());
        stock.pool.give(held);
        let pumped = d.pump(&mut client, &mut backend, &mut stock.pools());
        assert!(!pumped.need_buffer);
        assert_eq!(backend.written, b"x");
    }
}
