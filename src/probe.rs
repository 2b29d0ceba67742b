//! Active health checks: a probe is a non-blocking TCP connect to one backend, run by the
//! reactor like any other connection. It passes when the connect completes, fails when it is
//! refused, errors or outlasts the connect timeout; then the socket is closed.
//! [`crate::health::CheckState`] turns the results into up/down with `--rise`/`--fall`.

use crate::balancer::Backend;
use crate::context::{ConnId, Context, TimerKey};
use crate::net;
use crate::timer::TimerId;
use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;
use std::io;
use std::rc::Rc;

pub struct Probe {
    id: ConnId,
    stream: TcpStream,
    backend: Rc<Backend>,
    timer: Option<TimerId>,
}

impl Probe {
    /// Starts connecting to `backend`.
    pub fn start(id: ConnId, backend: Rc<Backend>, ctx: &mut Context) -> io::Result<Probe> {
        let mut stream = net::connect(backend.addr)?;
        ctx.registry
            .register(&mut stream, id.token(0), Interest::WRITABLE)?;
        let timer = Some(
            ctx.timers
                .insert(ctx.now + ctx.settings.connect_timeout, TimerKey::Conn(id)),
        );
        backend.set_probing(true);
        Ok(Probe {
            id,
            stream,
            backend,
            timer,
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn backend(&self) -> &Rc<Backend> {
        &self.backend
    }

    /// The connect's outcome, once the socket reports one.
    pub fn on_ready(&mut self, event: &Event) -> Option<io::Result<()>> {
        if event.is_error() || event.is_write_closed() {
            return Some(Err(net::connect_error(&self.stream)));
        }
        event.is_writable().then_some(Ok(()))
    }

    /// Ends the probe and closes its socket.
    pub fn finish(mut self, ctx: &mut Context) {
        if let Some(timer) = self.timer.take() {
            ctx.timers.cancel(timer);
        }
        self.backend.set_probing(false);
    }

    /// The probe's time is up (the timer is gone once it fired).
    pub fn timed_out(&mut self) -> io::Error {
        self.timer = None;
        io::Error::new(io::ErrorKind::TimedOut, "health check connect timed out")
    }
}
