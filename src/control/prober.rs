//! Active health checks: a probe is a non-blocking TCP connect to one backend, run by the
//! control thread's event loop, once per `--health-interval` for the whole process (not
//! once per worker). It passes when the connect completes, fails when it is refused,
//! errors or outlasts the connect timeout; then the socket is closed. The fleet folds the
//! result into the backend's shared check state, which every worker obeys.
//!
//! At most [`MAX_PROBES_IN_FLIGHT`] probes are open at once (their descriptors are kept out
//! of the sessions' reach: `limits::reserve`); [`Schedule`] says which backend is next. A
//! probe that cannot start yet (every slot taken, or no descriptor left) waits for a slot:
//! it is not a failure of its backend.

use crate::fleet::Fleet;
use crate::fleet::backend::Backend;
use crate::net;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io;
use std::sync::Arc;

/// Health probes open at once, for the whole process: one descriptor each. Probes to
/// backends that answer take a round trip; to ones whose connects hang, up to the connect
/// timeout, so a round over `n` such backends takes about `n / 64` connect timeouts.
pub const MAX_PROBES_IN_FLIGHT: usize = 64;

/// Which backend to probe next, in rounds over the fleet, with at most
/// [`MAX_PROBES_IN_FLIGHT`] probes open. A round walks one generation's backends in order,
/// starting each probe as a slot frees (a backend still being probed is passed over). A
/// round is due every `--health-interval`; one due while another is under way starts when
/// that one ends, so slow rounds run back to back rather than pile up.
#[derive(Default)]
pub struct Schedule {
    round: Option<Round>,
    /// Another round is due once this one ends.
    due: bool,
    in_flight: usize,
}

struct Round {
    fleet: Arc<Fleet>,
    next: usize,
}

impl Schedule {
    /// The interval has passed: a round over `fleet` (the generation in use) is due.
    pub fn round_due(&mut self, fleet: &Arc<Fleet>) {
        if self.round.is_some() {
            self.due = true;
        } else {
            self.round = Some(Round {
                fleet: Arc::clone(fleet),
                next: 0,
            });
        }
    }

    /// The backend to probe now, if a slot is free and a round has one left; a round that
    /// was due starts on `fleet`.
    pub fn next(&mut self, fleet: &Arc<Fleet>) -> Option<Arc<Backend>> {
        if self.in_flight >= MAX_PROBES_IN_FLIGHT {
            return None;
        }
        loop {
            let round = self.round.as_mut()?;
            match round.fleet.backend_at(round.next) {
                Some(backend) => {
                    round.next += 1;
                    if !backend.is_probing() {
                        return Some(Arc::clone(backend));
                    }
                }
                None => {
                    self.round = None;
                    if std::mem::take(&mut self.due) {
                        self.round_due(fleet);
                    }
                }
            }
        }
    }

    /// The backend [`Schedule::next`] gave last could not be probed for now (no
    /// descriptor): it comes first again when a slot frees or the next round is due.
    pub fn put_back(&mut self) {
        if let Some(round) = &mut self.round {
            round.next = round.next.saturating_sub(1);
        }
    }

    /// A probe has started.
    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    /// A probe has ended: its slot is free.
    pub fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Policy;
    use crate::fleet::builder::Builder;
    use crate::fleet::builder::tests::spec;
    use crate::fleet::health::BreakerPolicy;
    use crate::fleet::select::Balance;
    use std::time::Duration;

    fn fleet(n: usize) -> Arc<Fleet> {
        let policy = Policy {
            breaker: BreakerPolicy {
                max_fails: 3,
                fail_timeout: Duration::from_secs(10),
            },
            checks: None,
        };
        let specs: Vec<_> = (0..n)
            .map(|i| spec(1000 + i as u16, 1, i % 3 == 2))
            .collect();
        Builder::new(policy, Balance::LeastActive).build(&specs).0
    }

    /// Takes what `schedule` gives now, marking each started and probing.
    fn start_all(schedule: &mut Schedule, fleet: &Arc<Fleet>) -> Vec<Arc<Backend>> {
        let mut started = Vec::new();
        while let Some(backend) = schedule.next(fleet) {
            backend.set_probing(true);
            schedule.started();
            started.push(backend);
        }
        started
    }

    fn end(schedule: &mut Schedule, backend: &Backend) {
        backend.set_probing(false);
        schedule.ended();
    }

    #[test]
    fn a_round_probes_every_backend_once_with_at_most_the_cap_open() {
        let fleet = fleet(150);
        let mut schedule = Schedule::default();
        assert!(schedule.next(&fleet).is_none(), "no round is due yet");
        schedule.round_due(&fleet);
        let mut seen = Vec::new();
        let mut open = start_all(&mut schedule, &fleet);
        while !open.is_empty() {
            assert!(open.len() <= MAX_PROBES_IN_FLIGHT);
            let done = open.remove(0);
            end(&mut schedule, &done);
            seen.push(done.addr);
            open.extend(start_all(&mut schedule, &fleet));
        }
        let all: Vec<_> = fleet.backends().map(|b| b.addr).collect();
        assert_eq!(seen, all, "backups included, each once, in order");
        // The round is over: nothing until the next is due.
        assert!(schedule.next(&fleet).is_none());
    }

    #[test]
    fn a_round_due_during_another_follows_it_and_passes_over_backends_still_probed() {
        let fleet = fleet(4);
        let all: Vec<_> = fleet.backends().map(|b| b.addr).collect();
        let mut schedule = Schedule::default();
        schedule.round_due(&fleet);
        let first = start_all(&mut schedule, &fleet);
        assert_eq!(first.len(), 4);
        // Due again while all four are open: the next round waits for this one's end, which
        // comes once it has no backend left (it has none: every probe is started).
        schedule.round_due(&fleet);
        end(&mut schedule, &first[1]);
        let second = start_all(&mut schedule, &fleet);
        // It passes over the three still being probed.
        assert_eq!(second.iter().map(|b| b.addr).collect::<Vec<_>>(), [all[1]]);
        end(&mut schedule, &first[0]);
        assert!(
            start_all(&mut schedule, &fleet).is_empty(),
            "no round is due"
        );
    }

    #[test]
    fn a_backend_put_back_comes_first_again() {
        let fleet = fleet(3);
        let mut schedule = Schedule::default();
        schedule.round_due(&fleet);
        let first = schedule.next(&fleet).expect("a backend");
        schedule.put_back();
        let again = schedule.next(&fleet).expect("a backend");
        assert!(Arc::ptr_eq(&first, &again));
    }
}
