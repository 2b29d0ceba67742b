//! The new processes of upgrades given up on, until each has ended and been reaped.
//!
//! One given up on while it may be serving already (a SIGTERM to this process during the
//! upgrade) gets SIGTERM, so that it finishes what it took; one that has not ended
//! [`GRACE`] later gets SIGKILL. One that failed (it wrote nonsense, or did not say it
//! serves in time) gets SIGKILL at once. Without the SIGKILL, a new binary that ignores
//! SIGTERM or hangs in start-up would live on holding every listening socket: clients would
//! connect, queue, and never be served. The control thread looks at them every few
//! milliseconds ([`Reaper::poll`], non-blocking) and does not exit while one is left.

use log::{info, warn};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long a new process given up on has, after SIGTERM, before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

/// A process given up on, until it is reaped.
struct Abandoned {
    child: Child,
    /// When SIGTERM was sent (`None` once it has been sent SIGKILL).
    terminated: Option<Instant>,
}

/// Every process given up on and not reaped yet.
pub struct Reaper {
    grace: Duration,
    abandoned: Vec<Abandoned>,
}

impl Reaper {
    pub fn new(grace: Duration) -> Reaper {
        Reaper {
            grace,
            abandoned: Vec::new(),
        }
    }

    /// No process is left to reap.
    pub fn is_empty(&self) -> bool {
        self.abandoned.is_empty()
    }

    /// Gives `child` up: SIGTERM now and SIGKILL after the grace, or with `kill`, SIGKILL
    /// now. One that has ended already is reaped here (its caller has said how it ended).
    pub fn abandon(&mut self, mut child: Child, kill: bool, now: Instant) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let terminated = if kill {
            let _ = child.kill();
            None
        } else {
            // SAFETY: kill has no memory effects; the pid is our own unreaped child's, so
            // it cannot name another process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            Some(now)
        };
        self.abandoned.push(Abandoned { child, terminated });
    }

    /// SIGKILL, now, to every one still waiting out its grace (a second SIGTERM: exit now).
    pub fn kill_all(&mut self) {
        for abandoned in &mut self.abandoned {
            if abandoned.terminated.take().is_some() {
                let _ = abandoned.child.kill();
            }
        }
    }

    /// Reaps the ones that have ended (saying how) and sends SIGKILL to the ones past their
    /// grace. Never blocks.
    pub fn poll(&mut self, now: Instant) {
        let grace = self.grace;
        self.abandoned.retain_mut(|abandoned| {
            let pid = abandoned.child.id();
            match abandoned.child.try_wait() {
                Ok(Some(status)) => {
                    info!(
                        "the abandoned new process (pid {pid}) {}",
                        describe_exit(status)
                    );
                    false
                }
                Ok(None) => {
                    if abandoned
                        .terminated
                        .is_some_and(|at| now.saturating_duration_since(at) >= grace)
                    {
                        warn!(
                            "the abandoned new process (pid {pid}) has not ended {grace:?} \
                             after SIGTERM; killing it (SIGKILL)"
                        );
                        abandoned.terminated = None;
                        let _ = abandoned.child.kill();
                    }
                    true
                }
                Err(e) => {
                    warn!("cannot wait for the abandoned new process (pid {pid}): {e}");
                    false
                }
            }
        });
    }
}

/// "exited with status 1", "was killed by signal 9".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A shell that ignores SIGTERM (`trap '' TERM` is inherited by the `exec`).
    fn stubborn() -> Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg("trap '' TERM; exec sleep 60")
            .spawn()
            .expect("spawn sh")
    }

    /// Polls until the reaper is empty, for at most five seconds; returns how long it took.
    fn poll_until_empty(reaper: &mut Reaper) -> Duration {
        let started = Instant::now();
        while !reaper.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "not reaped");
            std::thread::sleep(Duration::from_millis(5));
            reaper.poll(Instant::now());
        }
        started.elapsed()
    }

    /// Waits until `pid` runs `sleep` (the shell has set its trap and exec'd).
    fn wait_exec(pid: u32) {
        let started = Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .as_deref()
            != Some("sleep\n")
        {
            assert!(started.elapsed() < Duration::from_secs(5), "no exec");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace_and_reaped() {
        let grace = Duration::from_millis(200);
        let mut reaper = Reaper::new(grace);
        let child = stubborn();
        let pid = child.id();
        wait_exec(pid);
        reaper.abandon(child, false, Instant::now());
        assert!(!reaper.is_empty());
        let took = poll_until_empty(&mut reaper);
        assert!(took >= grace, "killed before the grace was over: {took:?}");
        // Reaped: no such process (not even a zombie) is left.
        // SAFETY: kill with signal 0 only checks that the pid exists.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, -1);
    }

    #[test]
    fn a_child_that_takes_sigterm_is_reaped_without_waiting_for_the_grace() {
        let mut reaper = Reaper::new(Duration::from_secs(60));
        let child = Command::new("sleep").arg("60").spawn().expect("spawn");
        let pid = child.id();
        wait_exec(pid);
        reaper.abandon(child, false, Instant::now());
        assert!(poll_until_empty(&mut reaper) < Duration::from_secs(5));
        // Reaped here: waiting for it again finds no such child.
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn a_second_stop_kills_at_once_and_a_failed_one_is_killed_at_once() {
        let mut reaper = Reaper::new(Duration::from_secs(60));
        let first = stubborn();
        let second = stubborn();
        wait_exec(first.id());
        wait_exec(second.id());
        reaper.abandon(first, false, Instant::now());
        reaper.abandon(second, true, Instant::now());
        reaper.kill_all();
        assert!(poll_until_empty(&mut reaper) < Duration::from_secs(5));
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(<ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(<ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(9)),
            "was killed by signal 9"
        );
    }
}
