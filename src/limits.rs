//! The open-file limit: raise the soft `RLIMIT_NOFILE` to the hard limit at start, and fit
//! `--max-conns` and `--pipes` inside it (each session holds two descriptors, and so does
//! each kernel pipe of the splice path) beside a reserve for everything else.
//!
//! The reserve has shares, each bounded where its descriptors are opened, so that clients
//! can never take the descriptors the admin endpoint or the health checks need (nor the
//! other way round): [`FD_HEADROOM`] for the process itself, [`ADMIN_FDS`] for the admin
//! endpoint (at most `MAX_ADMIN_CONNS` connections, see `admin::http`),
//! [`MAX_PROBES_IN_FLIGHT`] for health and agent checks (checks past it wait for a slot:
//! see `control::prober`), and [`CTL_FDS`] for the control socket (`control::ctl`). A new
//! kind of control connection takes its descriptors from one of these shares, or adds its
//! own here.

use std::io;

/// Admin connections open at once (`admin::http`): a new one past that closes the idlest.
pub const MAX_ADMIN_CONNS: usize = 32;

/// Health probes open at once, for the whole process: one descriptor each
/// (`control::prober`). Probes to backends that answer take a round trip; to ones whose
/// connects hang, up to the connect timeout, so a round over `n` such backends takes about
/// `n / 64` connect timeouts.
pub const MAX_PROBES_IN_FLIGHT: usize = 64;

/// Control socket connections open at once (`control::ctl`): one past that is told it is
/// busy and closed.
pub const MAX_CTL_CONNS: usize = 8;

/// Descriptors the control socket may hold at once: its listener, its connections, and
/// one accepted past them to be told it is busy.
pub const CTL_FDS: u64 = MAX_CTL_CONNS as u64 + 2;

/// Descriptors kept free for the process itself: standard streams, listeners, pollers,
/// wakers, the signal pipe, the access log, files and DNS look-ups of a reload, the pipe of
/// an upgrade, and a client being turned away past `--max-conns` on each worker.
pub const FD_HEADROOM: u64 = 64;

/// Descriptors the admin endpoint may hold at once: its connections, and one accepted while
/// every slot is taken, just before the idlest one is closed.
pub const ADMIN_FDS: u64 = MAX_ADMIN_CONNS as u64 + 1;

/// The descriptors kept out of the sessions' and pipes' reach: the process's own headroom,
/// plus the admin endpoint's share if it is on, the checks' (health and agent) if any are
/// on, and the control socket's if it is on.
pub fn reserve(admin: bool, checks: bool, ctl: bool) -> u64 {
    FD_HEADROOM
        + if admin { ADMIN_FDS } else { 0 }
        + if checks {
            MAX_PROBES_IN_FLIGHT as u64
        } else {
            0
        }
        + if ctl { CTL_FDS } else { 0 }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass, which lives for the whole call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

/// Descriptors `conns` sessions and `pipes` pipes need, with `reserve` ([`reserve`]) kept
/// beside them.
pub fn descriptors_needed(conns: usize, pipes: usize, reserve: u64) -> u64 {
    2 * conns as u64 + 2 * pipes as u64 + reserve
}

/// What fits in `nofile` descriptors, `reserve` kept aside, when `conns` sessions and
/// `pipes` pipes do not: (sessions, pipes). Pipes keep their number unless they would take
/// more than a quarter of the room (they only save CPU; sessions are the service); sessions
/// get the rest.
pub fn fit(conns: usize, pipes: usize, nofile: u64, reserve: u64) -> Option<(usize, usize)> {
    if descriptors_needed(conns, pipes, reserve) <= nofile {
        return None;
    }
    let room = nofile.saturating_sub(reserve);
    let pipes = (pipes as u64).min(room / 8);
    let conns = ((room - 2 * pipes) / 2).clamp(1, conns as u64);
    Some((conns as usize, pipes as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_pipes_fit_in_the_limit() {
        let r = FD_HEADROOM;
        assert_eq!(fit(10_000, 1024, 1_048_576, r), None);
        assert_eq!(descriptors_needed(10_000, 1024, r), 22_112);
        assert_eq!(fit(10_000, 1024, 22_112, r), None);
        // Pipes keep their number; sessions take what is left.
        assert_eq!(fit(10_000, 1024, 20_000, r), Some((8_944, 1024)));
        assert_eq!(fit(10_000, 0, 20_000, r), Some((9_968, 0)));
        // Pipes take at most a quarter of the descriptors.
        assert_eq!(fit(10_000, 1024, 1024, r), Some((360, 120)));
        assert_eq!(fit(100, 1024, 64, r), Some((1, 0)));
        // Fewer sessions wanted than fit: only the pipes are cut.
        assert_eq!(fit(100, 1024, 1024, r), Some((100, 120)));
    }

    #[test]
    fn the_admin_endpoint_and_health_probes_have_their_own_share() {
        assert_eq!(reserve(false, false, false), 64);
        assert_eq!(reserve(true, false, false), 64 + 33);
        assert_eq!(reserve(false, true, false), 64 + 64);
        assert_eq!(reserve(false, false, true), 64 + 10);
        assert_eq!(reserve(true, true, false), 161);
        // 400 descriptors with both on: 239 left, a quarter of them (29) for pipes.
        assert_eq!(
            fit(160, 256, 400, reserve(true, true, false)),
            Some((90, 29))
        );
        assert_eq!(fit(160, 0, 400, reserve(true, true, false)), Some((119, 0)));
    }

    #[test]
    fn soft_limit_is_raised_to_hard() {
        let soft = raise_nofile_limit().expect("getrlimit");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above, a valid pointer to a local struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
