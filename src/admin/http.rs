//! The admin endpoint (`--admin`): HTTP/1.1 served by the reactor itself, one request per
//! connection, parsed with `httparse`.
//!
//! - `GET /metrics`: Prometheus text exposition (`metrics.rs`).
//! - `GET /healthz`: 200 when at least one backend is up, 503 otherwise.
//! - `GET /backends`: JSON, one object per backend (draining ones included).
//!
//! A request head larger than [`MAX_REQUEST`] or one that does not parse gets 400; unknown
//! paths 404; other methods 405. Every response closes the connection. An admin connection
//! has [`ADMIN_TIMEOUT`] to send its request and read the answer, so a slow or silent client
//! cannot hold a descriptor for long. All of this runs between data-path events and never
//! blocks.

use crate::admin::View;
use crate::clock;
use crate::fleet::backend::BackendStats as Stat;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long an admin connection may live.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    Writing,
    /// Response sent and write side shut: reading (and dropping) what the client still
    /// sends until it closes, so closing never turns into a reset that could eat the response.
    Lingering,
}

pub struct AdminConn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    phase: Phase,
}

impl AdminConn {
    /// Serves an accepted connection; its readiness comes with `token`. The caller keeps
    /// the connection's deadline ([`ADMIN_TIMEOUT`]).
    pub fn new(mut stream: TcpStream, registry: &Registry, token: Token) -> io::Result<AdminConn> {
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(AdminConn {
            stream,
            request: Vec::new(),
            response: Vec::new(),
            written: 0,
            phase: Phase::Reading,
        })
    }

    /// Handles readiness; returns true when the connection is finished.
    pub fn on_ready(&mut self, _event: &Event, view: &View) -> bool {
        if self.phase == Phase::Reading {
            match self.read_request(view) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(_) => return true,
            }
        }
        if self.phase == Phase::Writing {
            match self.write_response() {
                Ok(true) => {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Lingering;
                }
                Ok(false) => return false,
                Err(_) => return true,
            }
        }
        // Lingering: done once the client has closed.
        let mut sink = [0u8; 1024];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Reads until the request head is complete; then builds the response. Ok(true) once a
    /// response is ready, Ok(false) to wait for more bytes.
    fn read_request(&mut self, view: &View) -> io::Result<bool> {
        let mut chunk = [0u8; 2048];
        // The client may send its FIN right behind the request (`nc -N`, HTTP/1.0 tools):
        // answer what came before it.
        let mut eof = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.request.extend_from_slice(&chunk[..n]);
                    if self.request.len() > MAX_REQUEST {
                        self.respond(400, "text/plain", "request too large\n");
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.request) {
            Ok(httparse::Status::Partial) if eof => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(httparse::Status::Partial) => Ok(false),
            Err(e) => {
                self.respond(400, "text/plain", &format!("bad request: {e}\n"));
                Ok(true)
            }
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default().to_string();
                let path = request.path.unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default().to_string();
                self.route(&method, &path, view);
                Ok(true)
            }
        }
    }

    fn route(&mut self, method: &str, path: &str, view: &View) {
        if method != "GET" && method != "HEAD" {
            self.respond(405, "text/plain", "only GET and HEAD\n");
        } else {
            match path {
                "/metrics" => {
                    let mut body = String::with_capacity(16 * 1024);
                    crate::admin::metrics::render(view, &mut body);
                    self.respond(200, "text/plain; version=0.0.4; charset=utf-8", &body);
                }
                "/healthz" => {
                    if !view.lifecycle.is_running() {
                        self.respond(503, "text/plain", "draining\n");
                    } else if view.fleet.any_taking_sessions(clock::millis(view.now)) {
                        self.respond(200, "text/plain", "ok\n");
                    } else {
                        self.respond(503, "text/plain", "no backend is up\n");
                    }
                }
                "/backends" => {
                    let body = backends_json(view);
                    self.respond(200, "application/json", &body);
                }
                _ => self.respond(
                    404,
                    "text/plain",
                    "not found: try /metrics, /healthz, /backends\n",
                ),
            }
        }
        if method == "HEAD" {
            if let Some(end) = find(&self.response, b"\r\n\r\n") {
                self.response.truncate(end + 4);
            }
        }
    }

    fn respond(&mut self, status: u16, content_type: &str, body: &str) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if status == 405 {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        self.response = head.into_bytes();
        self.response.extend_from_slice(body.as_bytes());
        self.phase = Phase::Writing;
    }

    /// Ok(true) once the whole response is written.
    fn write_response(&mut self) -> io::Result<bool> {
        while self.written < self.response.len() {
            match self.stream.write(&self.response[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `/backends`: every backend (draining ones too) with its state, weight and counters.
fn backends_json(view: &View) -> String {
    let now = clock::millis(view.now);
    let checks_on = view.fleet.policy().checks.is_some();
    let mut out = String::from("[");
    for (i, b) in view
        .fleet
        .backends()
        .chain(view.fleet.draining())
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        let checks = match (checks_on, b.checks_up()) {
            (false, _) => "off",
            (true, true) => "up",
            (true, false) => "down",
        };
        let _ = write!(
            out,
            "\n  {{\"address\": {}, \"name\": {}, \"weight\": {}, \"backup\": {}, \
             \"state\": \"{}\", \"health_checks\": \"{checks}\", \"active\": {}, \
             \"connections_total\": {}, \"connect_failures_total\": {}, \
             \"consecutive_failures\": {}, \"bytes_sent\": {}, \"bytes_received\": {}}}",
            json_string(&b.addr.to_string()),
            json_string(&b.name),
            b.weight(),
            b.is_backup(),
            b.state(now).as_str(),
            b.active(),
            Stat::get(&b.stats.sessions),
            Stat::get(&b.stats.connect_failures),
            b.breaker().consecutive_failures(),
            Stat::get(&b.stats.bytes_sent),
            Stat::get(&b.stats.bytes_received),
        );
    }
    out.push_str("\n]\n");
    out
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_string("[::1]:80"), "\"[::1]:80\"");
    }
}
