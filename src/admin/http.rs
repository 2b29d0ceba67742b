//! The admin endpoint (`--admin`): HTTP/1.1 served by the control thread (never by a
//! worker, so nothing here can stall traffic), one request per connection, parsed with
//! `httparse`.
//!
//! - `GET /metrics`: Prometheus text exposition (`metrics.rs`).
//! - `GET /healthz`: 200 when at least one backend is up; 503 while none is, and from the
//!   moment a drain starts (`draining`), so readiness probes stop sending traffic.
//! - `GET /backends`: JSON, one object per backend (draining ones included).
//! - `GET /`: the dashboard (`/dashboard.js`, `/dashboard.css`), polling `GET /api/stats`
//!   (and `GET /api/history?backend=ID` for one backend's history).
//!
//! The target may be in origin form (`/metrics?x`) or absolute form
//! (`http://host:9090/metrics`); only its path counts. A request head larger than
//! [`MAX_REQUEST`], one that does not parse, or one cut short by the client's EOF gets 400;
//! one not complete within [`REQUEST_TIMEOUT`] gets 408 (a connection that sent nothing is
//! just closed); unknown paths 404; other methods 405. Every response closes the connection,
//! and a connection lives at most [`ADMIN_TIMEOUT`].
//!
//! At most [`MAX_ADMIN_CONNS`] connections are open at once: a new one past that closes the
//! one doing least (see [`AdminConn::eviction_rank`]), so idle or slow clients cannot lock
//! probes out. The big answers (`/metrics`, `/backends`: megabytes with a large fleet) are
//! rendered once and shared by every request that overlaps that rendering within
//! [`SHARE_WINDOW`] ([`Shared`]), so slow scrapers cost one copy, not one each. Nothing here
//! blocks.

use crate::admin::View;
use crate::reactor::ConnId;
use crate::reactor::timer::{TimerId, Timers};
use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an admin connection may live in all: request, answer and close.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::limits::MAX_ADMIN_CONNS;
/// Admin connections accepted per turn of the loop, so a flood of them cannot hold it up.
pub const ACCEPTS_PER_TURN: usize = 8;
/// How long one rendering of a big answer may be shared by requests that overlap it.
pub const SHARE_WINDOW: Duration = Duration::from_secs(1);

/// The admin listener and what its connections share. The connections themselves live in
/// the control thread's slab, next to the health probes.
pub struct Endpoint {
    /// `None` once handed over to a newer tcplb (its connections are still served).
    listener: Option<TcpListener>,
    /// The listener may have connections waiting (its edge has not been drained).
    ready: bool,
    /// Not accepting for now ([`Endpoint::pause`]).
    paused: bool,
    /// Open connections (at most [`MAX_ADMIN_CONNS`]).
    open: Vec<ConnId>,
    shared: Shared,
}

impl Endpoint {
    /// Registers `listener` under `token`.
    pub fn new(mut listener: TcpListener, registry: &Registry, token: Token) -> io::Result<Self> {
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Endpoint {
            listener: Some(listener),
            ready: true,
            paused: false,
            open: Vec::with_capacity(MAX_ADMIN_CONNS),
            shared: Shared::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The listening socket's descriptor, for an upgrade to hand over.
    pub fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Stops accepting and closes this process's copy of the listening socket (after an
    /// upgrade the newer process holds it and answers from now on); open connections are
    /// still served.
    pub fn stop_listening(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.ready = false;
    }

    /// Stops accepting but keeps the listening socket (an upgrade's probation: the new
    /// process answers on the same socket, and this one may have to take over again).
    pub fn pause(&mut self, registry: &Registry) {
        if let Some(listener) = &mut self.listener {
            let _ = registry.deregister(listener);
        }
        self.ready = false;
        self.paused = true;
    }

    /// Accepts again after [`Endpoint::pause`] (first what queued meanwhile).
    pub fn resume(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if let Some(listener) = &mut self.listener {
            registry.register(listener, token, Interest::READABLE)?;
            self.ready = true;
        }
        self.paused = false;
        Ok(())
    }

    /// The listener's readiness event: connections may be waiting. (Ignored while paused:
    /// an event from before the pause may still be in the batch.)
    pub fn set_ready(&mut self) {
        self.ready = !self.paused;
    }

    /// Whether connections may be waiting to be accepted.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The next waiting connection; `Ok(None)` once none is waiting.
    pub fn accept(&mut self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        let Some(listener) = &self.listener else {
            self.ready = false;
            return Ok(None);
        };
        loop {
            match listener.accept() {
                Ok(pair) => return Ok(Some(pair)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return Ok(None);
                }
                Err(e) if crate::net::is_transient_accept_error(&e) => {}
                // Out of descriptors, typically: the next connection raises a new edge.
                Err(e) => {
                    self.ready = false;
                    return Err(e);
                }
            }
        }
    }

    /// Every connection slot is taken: one must go before another is admitted.
    pub fn is_full(&self) -> bool {
        self.open.len() >= MAX_ADMIN_CONNS
    }

    /// The open connections.
    pub fn open(&self) -> &[ConnId] {
        &self.open
    }

    pub fn added(&mut self, id: ConnId) {
        self.open.push(id);
    }

    pub fn removed(&mut self, id: ConnId) {
        if let Some(i) = self.open.iter().position(|&o| o == id) {
            self.open.swap_remove(i);
        }
    }

    /// What the connections share.
    pub fn shared(&mut self) -> &mut Shared {
        &mut self.shared
    }
}

/// What requests share: the big answers, each rendered once and handed to every request that
/// overlaps it.
#[derive(Default)]
pub struct Shared {
    metrics: SharedRender,
    backends: SharedRender,
    stats: SharedRender,
}

/// One rendering of a big answer, shared while it is being written. Only a weak reference
/// is kept here: the copy lives exactly as long as some connection is still writing it.
#[derive(Default)]
struct SharedRender {
    last: Weak<Vec<u8>>,
    rendered_at: Option<Instant>,
    /// Length of the last rendering: the next one starts with room for about as much.
    last_len: usize,
}

impl SharedRender {
    /// The copy some connection is still writing, if it is recent enough; else a new one.
    /// So there is at most one copy per [`SHARE_WINDOW`], however many clients ask; a
    /// request that overlaps no other one always gets fresh figures.
    fn get(&mut self, what: &str, view: &View, render: fn(&View, &mut String)) -> Rc<Vec<u8>> {
        if let (Some(at), Some(body)) = (self.rendered_at, self.last.upgrade()) {
            if view.now.saturating_duration_since(at) < SHARE_WINDOW {
                return body;
            }
        }
        let started = Instant::now();
        let mut text = String::with_capacity(self.last_len + self.last_len / 8 + 4096);
        render(view, &mut text);
        debug!(
            "{what}: rendered {} bytes in {:?}",
            text.len(),
            started.elapsed()
        );
        self.last_len = text.len();
        let body = Rc::new(text.into_bytes());
        self.last = Rc::downgrade(&body);
        self.rendered_at = Some(view.now);
        body
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    Writing,
    /// Response sent and write side shut: reading (and dropping) what the client still
    /// sends until it closes, so closing never turns into a reset that could eat the response.
    Lingering,
}

/// What the bytes read so far make.
enum Head {
    /// Not a whole request head yet.
    Partial,
    Complete {
        method: String,
        /// The request target, whole (path and query).
        target: String,
    },
    /// Answered with 400 and this text.
    Bad(String),
    /// The client closed (or failed) before sending anything: close without an answer.
    Gone,
}

pub struct AdminConn {
    id: ConnId,
    stream: TcpStream,
    accepted: Instant,
    request: Vec<u8>,
    /// Status line and headers, and the body unless it is shared.
    head: Vec<u8>,
    /// A shared body (a big answer), written after `head`.
    body: Option<Rc<Vec<u8>>>,
    /// Bytes of `head` and then `body` written so far.
    written: usize,
    phase: Phase,
    timer: Option<TimerId>,
}

impl AdminConn {
    /// Serves an accepted connection; its readiness comes with `id`'s token, its deadlines
    /// as `key` on `timers`.
    pub fn new<K: Copy>(
        id: ConnId,
        mut stream: TcpStream,
        registry: &Registry,
        timers: &mut Timers<K>,
        key: K,
        now: Instant,
    ) -> io::Result<AdminConn> {
        registry.register(
            &mut stream,
            id.token(0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let timer = Some(timers.insert(now + REQUEST_TIMEOUT, key));
        Ok(AdminConn {
            id,
            stream,
            accepted: now,
            request: Vec::new(),
            head: Vec::new(),
            body: None,
            written: 0,
            phase: Phase::Reading,
            timer,
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Which connection goes first when a new one needs the slot: lowest rank, then oldest.
    /// A connection that has had its answer and waits for the client to close goes first,
    /// then one that has sent nothing, then one with part of a request, and only then one
    /// whose answer is still being written (a scraper that stopped reading).
    pub fn eviction_rank(&self) -> (u8, Instant) {
        let rank = match self.phase {
            Phase::Lingering => 0,
            Phase::Reading if self.request.is_empty() => 1,
            Phase::Reading => 2,
            Phase::Writing => 3,
        };
        (rank, self.accepted)
    }

    /// Handles readiness; returns true when the connection is finished.
    pub fn on_ready<K: Copy>(
        &mut self,
        view: &View,
        shared: &mut Shared,
        timers: &mut Timers<K>,
        key: K,
    ) -> bool {
        if self.phase == Phase::Reading {
            match self.read_head() {
                Head::Partial => return false,
                Head::Gone => return true,
                Head::Bad(why) => self.respond(400, "text/plain", why.as_bytes()),
                Head::Complete { method, target } => self.route(&method, &target, view, shared),
            }
            self.start_writing(timers, key);
        }
        self.write_and_linger()
    }

    /// Its deadline passed (the timer is gone once it fired); returns true when the
    /// connection is finished. A partial request gets its 408 first.
    pub fn on_timer<K: Copy>(&mut self, timers: &mut Timers<K>, key: K) -> bool {
        self.timer = None;
        if self.phase != Phase::Reading || self.request.is_empty() {
            return true;
        }
        self.respond(408, "text/plain", b"request timeout\n");
        self.start_writing(timers, key);
        self.write_and_linger()
    }

    /// Reads until the request head is complete or the socket is drained.
    fn read_head(&mut self) -> Head {
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
                        return Head::Bad("request too large\n".to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Head::Gone,
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.request) {
            Ok(httparse::Status::Partial) if eof && self.request.is_empty() => Head::Gone,
            Ok(httparse::Status::Partial) if eof => {
                Head::Bad("incomplete request: the connection was closed before its end\n".into())
            }
            Ok(httparse::Status::Partial) => Head::Partial,
            Err(e) => Head::Bad(format!("bad request: {e}\n")),
            Ok(httparse::Status::Complete(_)) => Head::Complete {
                method: request.method.unwrap_or_default().to_string(),
                target: request.path.unwrap_or_default().to_string(),
            },
        }
    }

    /// The request is answered: its whole lifetime ([`ADMIN_TIMEOUT`]) is left to write the
    /// answer and close.
    fn start_writing<K: Copy>(&mut self, timers: &mut Timers<K>, key: K) {
        if let Some(timer) = self.timer.take() {
            timers.cancel(timer);
        }
        self.timer = Some(timers.insert(self.accepted + ADMIN_TIMEOUT, key));
    }

    /// Writes the answer, then shuts the write side and reads until the client closes.
    /// Returns true when the connection is finished.
    fn write_and_linger(&mut self) -> bool {
        if self.phase == Phase::Writing {
            match self.write_response() {
                Ok(true) => {
                    // Let go of a shared copy as soon as it is written.
                    self.body = None;
                    self.head = Vec::new();
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Lingering;
                }
                Ok(false) => return false,
                Err(_) => return true,
            }
        }
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

    fn route(&mut self, method: &str, target: &str, view: &View, shared: &mut Shared) {
        if method != "GET" && method != "HEAD" {
            self.respond(405, "text/plain", b"only GET and HEAD\n");
            return;
        }
        let path = target_path(target);
        let (status, content_type, body) = match path {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                Body::Shared(shared.metrics.get("/metrics", view, super::metrics::render)),
            ),
            "/healthz" if !view.running => (503, "text/plain", Body::Static(b"draining\n")),
            "/healthz" => match view.healthy(None) {
                Some(true) => (200, "text/plain", Body::Static(b"ok\n")),
                _ => (503, "text/plain", Body::Static(b"no backend is up\n")),
            },
            p if p.starts_with("/healthz/") => {
                match (view.running, view.healthy(Some(&p["/healthz/".len()..]))) {
                    (_, None) => (404, "text/plain", Body::Static(b"no such service\n")),
                    (false, _) => (503, "text/plain", Body::Static(b"draining\n")),
                    (true, Some(true)) => (200, "text/plain", Body::Static(b"ok\n")),
                    (true, Some(false)) => (503, "text/plain", Body::Static(b"no backend is up\n")),
                }
            }
            "/backends" => (
                200,
                "application/json",
                Body::Shared(
                    shared
                        .backends
                        .get("/backends", view, super::backends::render),
                ),
            ),
            "/api/stats" => (
                200,
                "application/json",
                Body::Shared(shared.stats.get("/api/stats", view, super::stats::render)),
            ),
            "/api/history" => match backend_query(target) {
                Some(id) => {
                    let mut text = String::new();
                    match super::stats::backend_history(view, id, &mut text) {
                        Some(()) => (200, "application/json", Body::Owned(text.into_bytes())),
                        None => (404, "text/plain", Body::Static(b"no such backend\n")),
                    }
                }
                None => (
                    400,
                    "text/plain",
                    Body::Static(b"give the backend's id: /api/history?backend=ID\n"),
                ),
            },
            p => match super::dashboard::asset(p) {
                Some((content_type, bytes)) => (200, content_type, Body::Static(bytes)),
                None => (
                    404,
                    "text/plain",
                    Body::Static(
                        b"not found: try /, /metrics, /healthz, /healthz/SERVICE, /backends, /api/stats\n",
                    ),
                ),
            },
        };
        match body {
            Body::Static(text) => self.respond(status, content_type, text),
            Body::Owned(text) => self.respond(status, content_type, &text),
            Body::Shared(body) => {
                self.head = response_head(status, content_type, body.len());
                // HEAD: the same headers, no body.
                if method == "GET" {
                    self.body = Some(body);
                }
                self.phase = Phase::Writing;
            }
        }
        if method == "HEAD" {
            if let Some(end) = find(&self.head, b"\r\n\r\n") {
                self.head.truncate(end + 4);
            }
        }
    }

    /// Sets a small answer, written from `head` alone.
    fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.head = response_head(status, content_type, body.len());
        self.head.extend_from_slice(body);
        self.body = None;
        self.phase = Phase::Writing;
    }

    /// Ok(true) once the whole response is written.
    fn write_response(&mut self) -> io::Result<bool> {
        let body: &[u8] = self.body.as_deref().map_or(&[], Vec::as_slice);
        let total = self.head.len() + body.len();
        while self.written < total {
            let result = if self.written < self.head.len() {
                self.stream
                    .write_vectored(&[IoSlice::new(&self.head[self.written..]), IoSlice::new(body)])
            } else {
                self.stream.write(&body[self.written - self.head.len()..])
            };
            match result {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Ends the connection (timer cancelled, socket closed).
    pub fn finish<K: Copy>(mut self, timers: &mut Timers<K>) {
        if let Some(timer) = self.timer.take() {
            timers.cancel(timer);
        }
    }
}

/// A body: a fixed text, one made for this request, or a big rendering shared between
/// connections.
enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
    Shared(Rc<Vec<u8>>),
}

/// Status line and headers of an answer with a body of `length` bytes.
fn response_head(status: u16, content_type: &str, length: usize) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\
         Content-Security-Policy: {}\r\nX-Content-Type-Options: nosniff\r\n\
         Cache-Control: no-store\r\n",
        super::dashboard::CSP
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The path of a request target, without its query: origin form (`/metrics?x=1`) as is,
/// absolute form (`http://host:9090/metrics`) from its first `/` after the authority (`/`
/// when it has none).
fn target_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((scheme, rest)) if !target.starts_with('/') && !scheme.contains('/') => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match &rest[end..] {
                p if p.starts_with('/') => p,
                _ => "/",
            }
        }
        _ => target,
    };
    path.split(['?', '#']).next().unwrap_or_default()
}

/// The backend id of `?backend=ID` in a request target.
fn backend_query(target: &str) -> Option<u64> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("backend="))
        .and_then(|id| id.parse().ok())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_routed_by_their_path() {
        for (target, path) in [
            ("/metrics", "/metrics"),
            ("/metrics?x=1", "/metrics"),
            ("/healthz#top", "/healthz"),
            ("http://127.0.0.1:9090/metrics", "/metrics"),
            ("HTTP://host/healthz?probe=1", "/healthz"),
            ("https://[::1]:9090/backends", "/backends"),
            ("http://host", "/"),
            ("http://host?x=/metrics", "/"),
            ("/a://b", "/a://b"),
            ("*", "*"),
            ("", ""),
        ] {
            assert_eq!(target_path(target), path, "{target}");
        }
    }

    #[test]
    fn a_backend_is_named_by_its_id_in_the_query() {
        assert_eq!(backend_query("/api/history?backend=17"), Some(17));
        assert_eq!(backend_query("/api/history?x=1&backend=3#top"), Some(3));
        assert_eq!(backend_query("/api/history"), None);
        assert_eq!(backend_query("/api/history?backend=web"), None);
        assert_eq!(backend_query("/api/history?backend="), None);
    }
}
