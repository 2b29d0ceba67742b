//! A client's TLS ClientHello, looked at on its socket for a service with `routes`, and
//! left there: the hello is peeked (`MSG_PEEK`), never read, so once a backend is chosen
//! and connected every byte the client sent reaches it unchanged and the TLS handshake runs
//! end to end. The bytes are [`crate::tls_hello`]'s to parse; the choice of a route is the
//! service's ([`crate::service::routes`]).
//!
//! The peek goes into the worker's one scratch buffer (`max-hello` bytes to look at and as
//! many to gather a hello spread over several records into), not a pool buffer: a session
//! waiting for its hello holds no memory of its own but its kernel receive queue. Each
//! readable edge of a client still sending its hello costs one `FIONREAD` ioctl, and a peek
//! only once the queue holds the bytes the parser said it needs next (at least the rest of
//! the hello as far as it can tell): a hello sent a byte at a time is peeked a few times,
//! not once per byte. The first edge peeks at once (usually the whole hello is there).
//! Each look parses from the first byte again: with the scratch shared by every session, a
//! peek from where the last one stopped (`SO_PEEK_OFF`, Linux 6.10) would need each session
//! to keep what the parser had seen; the byte counts keep the looks few instead (a hello cut
//! into one-byte records, the worst framing, takes a few dozen looks at 16 KiB).
//!
//! A decided hello costs the session one small allocation, for the server name it keeps
//! for the access log; a service without routes never comes here.

use crate::service::Routing;
use crate::stats::TlsInspect;
use crate::tls_hello::{self, Failure, Parsed};
use crate::worker::direction::Readiness;
use mio::net::TcpStream;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// What the client has sent so far comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspected {
    /// Not enough yet: wait for the next readable edge.
    Waiting,
    /// The client reset its connection.
    Reset,
    /// Decided: what it sent, the route it takes (`None`: none did, or not a hello), and
    /// the server name it asked for.
    Decided {
        result: TlsInspect,
        route: Option<usize>,
        name: Option<Arc<str>>,
    },
}

impl Inspected {
    fn failed(result: TlsInspect) -> Inspected {
        Inspected::Decided {
            result,
            route: None,
            name: None,
        }
    }
}

/// Looks at what the client has sent. `needed` is the session's: 0 before the first peek,
/// then how many bytes must be queued before a peek can tell more. `scratch` is the
/// worker's (grown here to twice `max-hello` the first time a service needs it).
pub fn inspect(
    client: &TcpStream,
    ready: &mut Readiness,
    needed: &mut u32,
    routing: &Routing,
    scratch: &mut Vec<u8>,
) -> Inspected {
    if ready.error {
        return Inspected::Reset;
    }
    if !ready.readable {
        return Inspected::Waiting;
    }
    if *needed > 0 && !ready.read_closed {
        // Peeked before: only once enough has come to tell more.
        if queued(client).is_ok_and(|n| n < *needed as usize) {
            ready.readable = false;
            return Inspected::Waiting;
        }
    }
    let cap = routing.max_hello;
    if scratch.len() < 2 * cap {
        scratch.resize(2 * cap, 0);
    }
    let (seen, gather) = scratch.split_at_mut(cap);
    let n = loop {
        match client.peek(seen) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.readable = false;
                return Inspected::Waiting;
            }
            Err(_) => return Inspected::Reset,
        }
    };
    match tls_hello::parse(&seen[..n], cap, gather) {
        // The client closed having sent nothing, or half a hello (an empty peek is the end
        // of the stream, whatever the event said).
        Parsed::Incomplete { .. } if ready.read_closed || n == 0 => Inspected::failed(if n == 0 {
            TlsInspect::NotTls
        } else {
            TlsInspect::Malformed
        }),
        Parsed::Incomplete { needed: more } => {
            *needed = u32::try_from(more).unwrap_or(u32::MAX);
            ready.readable = false;
            Inspected::Waiting
        }
        Parsed::Failed(failure) => Inspected::failed(match failure {
            Failure::NotTls => TlsInspect::NotTls,
            Failure::TooBig => TlsInspect::TooBig,
            Failure::Malformed => TlsInspect::Malformed,
        }),
        Parsed::Hello(hello) => {
            // Visible ASCII (the parser checks): always UTF-8.
            let name: Option<Arc<str>> = hello
                .server_name
                .and_then(|n| std::str::from_utf8(n).ok())
                .map(Arc::from);
            Inspected::Decided {
                result: if name.is_some() {
                    TlsInspect::Sni
                } else {
                    TlsInspect::NoSni
                },
                route: routing.route(&hello),
                name,
            }
        }
    }
}

/// Bytes waiting in the socket's receive queue.
fn queued(stream: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`, alive
    // for the call; the descriptor is the stream's own, open while it is borrowed.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}
