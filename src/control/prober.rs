//! Active health checks: a probe is a non-blocking TCP connect to one backend, run by the
//! control thread's event loop, once per `--health-interval` for the whole process (not
//! once per worker). It passes when the connect completes, fails when it is refused,
//! errors or outlasts the connect timeout; then the socket is closed. The fleet folds the
//! result into the backend's shared check state, which every worker obeys.

use crate::fleet::backend::Backend;
use crate::net;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io;
use std::sync::Arc;

pub struct Probe {
    stream: TcpStream,
    backend: Arc<Backend>,
}

impl Probe {
    /// Starts connecting to `backend`; readiness comes with `token`.
    pub fn start(backend: Arc<Backend>, registry: &Registry, token: Token) -> io::Result<Probe> {
        let mut stream = net::connect(backend.addr)?;
        registry.register(&mut stream, token, Interest::WRITABLE)?;
        backend.set_probing(true);
        Ok(Probe { stream, backend })
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The connect's outcome, once the socket reports one.
    pub fn on_ready(&mut self, event: &Event) -> Option<io::Result<()>> {
        if event.is_error() || event.is_write_closed() {
            return Some(Err(net::connect_error(&self.stream)));
        }
        event.is_writable().then_some(Ok(()))
    }

    /// The error for a probe whose time ran out.
    pub fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "health check connect timed out")
    }
}

impl Drop for Probe {
    /// Ends the probe: the socket closes and the backend may be probed again.
    fn drop(&mut self) {
        self.backend.set_probing(false);
    }
}
