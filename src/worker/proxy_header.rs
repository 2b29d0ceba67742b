//! The PROXY protocol on a session's sockets: receiving a client's header
//! (`--accept-proxy`) and sending one to a backend (`send-proxy`, `send-proxy-v2`). The
//! bytes themselves are [`crate::proxy_protocol`]'s.
//!
//! Receiving takes exactly the header and not one byte more: the first bytes are looked at
//! with `MSG_PEEK` (at most [`MAX_HEADER`], on the stack, so a session holds no buffer while
//! it waits), and only once they hold a complete header are that many read. The client's
//! own bytes stay in the kernel until a backend is connected, as without the header. A
//! version-1 line that arrives in pieces is peeked again at each new piece (the socket is
//! edge-triggered: every arrival is a new edge), at most 107 bytes each time.
//!
//! Sending writes the header to a freshly connected backend before any client byte; a
//! write that takes only part of it (it never does on a new connection's empty send
//! buffer, but it may) is resumed at the next writable edge from where it stopped.

use crate::proxy_protocol::{self, Decoded, HeaderError, MAX_ENCODED, MAX_HEADER, Version};
use crate::stats::ProxyError;
use crate::worker::direction::Readiness;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

/// What the client has sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not enough yet: wait for the next readable edge.
    Waiting,
    /// A complete header, consumed; the client's (source) and our (destination) addresses
    /// if it carried them.
    Header(Option<(SocketAddr, SocketAddr)>),
    /// No acceptable header will come.
    Failed(ProxyError),
}

/// Looks for a complete header in what the client has sent, and consumes exactly it.
pub fn receive(client: &TcpStream, ready: &mut Readiness) -> Received {
    if !ready.readable {
        return Received::Waiting;
    }
    let mut bytes = [0u8; MAX_HEADER];
    let seen = loop {
        match client.peek(&mut bytes) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.readable = false;
                return Received::Waiting;
            }
            Err(_) => return Received::Failed(ProxyError::Truncated),
        }
    };
    match proxy_protocol::decode(&bytes[..seen]) {
        Err(e) => Received::Failed(match e {
            HeaderError::Missing => ProxyError::Missing,
            HeaderError::Malformed => ProxyError::Malformed,
            HeaderError::Oversized => ProxyError::Oversized,
        }),
        // The client closed before a whole header (or before any byte).
        Ok(Decoded::Incomplete) if seen == 0 => Received::Failed(ProxyError::Missing),
        Ok(Decoded::Incomplete) if ready.read_closed || ready.error => {
            Received::Failed(ProxyError::Truncated)
        }
        Ok(Decoded::Incomplete) => {
            // What is there has been seen: the next piece raises a new edge.
            ready.readable = false;
            Received::Waiting
        }
        Ok(Decoded::Complete(header)) => {
            // The same bytes again, this time taken off the socket.
            let mut client: &TcpStream = client;
            match read_exactly(&mut client, &mut bytes[..header.len]) {
                Ok(()) => Received::Header(header.addresses),
                Err(_) => Received::Failed(ProxyError::Truncated),
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes that a peek has shown to be there.
fn read_exactly(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the rest of the header for a session from `source` to `destination` to the
/// backend, from byte `sent` on (which it advances). `Ok(true)` once it is all written,
/// `Ok(false)` when the backend's send buffer is full (wait for it to be writable).
pub fn send(
    backend: &mut TcpStream,
    ready: &mut Readiness,
    version: Version,
    (source, destination): (SocketAddr, SocketAddr),
    sent: &mut u8,
) -> io::Result<bool> {
    let mut header = [0u8; MAX_ENCODED];
    let len = proxy_protocol::encode(version, source, destination, &mut header);
    while usize::from(*sent) < len {
        match backend.write(&header[usize::from(*sent)..len]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // At most MAX_ENCODED (107) bytes: fits.
            Ok(n) => *sent += n as u8,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.writable = false;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
