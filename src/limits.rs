//! The open-file limit: raise the soft `RLIMIT_NOFILE` to the hard limit at start, and fit
//! `--max-conns` and `--pipes` inside it (each session holds two descriptors, and so does
//! each kernel pipe of the splice path).

use std::io;

/// Descriptors kept free for everything that is not a session: the listener, the poller,
/// signal and wake-up pipes, admin and health-check sockets, a shed client being turned away.
pub const FD_HEADROOM: u64 = 64;

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

/// Descriptors `conns` sessions and `pipes` pipes need, headroom included.
pub fn descriptors_needed(conns: usize, pipes: usize) -> u64 {
    2 * conns as u64 + 2 * pipes as u64 + FD_HEADROOM
}

/// What fits in `nofile` descriptors when `conns` sessions and `pipes` pipes do not:
/// (sessions, pipes). Pipes keep their number unless they would take more than a quarter
/// of the descriptors (they only save CPU; sessions are the service); sessions get the rest.
pub fn fit(conns: usize, pipes: usize, nofile: u64) -> Option<(usize, usize)> {
    if descriptors_needed(conns, pipes) <= nofile {
        return None;
    }
    let room = nofile.saturating_sub(FD_HEADROOM);
    let pipes = (pipes as u64).min(room / 8);
    let conns = ((room - 2 * pipes) / 2).clamp(1, conns as u64);
    Some((conns as usize, pipes as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_pipes_fit_in_the_limit() {
        assert_eq!(fit(10_000, 1024, 1_048_576), None);
        assert_eq!(descriptors_needed(10_000, 1024), 22_112);
        assert_eq!(fit(10_000, 1024, 22_112), None);
        // Pipes keep their number; sessions take what is left.
        assert_eq!(fit(10_000, 1024, 20_000), Some((8_944, 1024)));
        assert_eq!(fit(10_000, 0, 20_000), Some((9_968, 0)));
        // Pipes take at most a quarter of the descriptors.
        assert_eq!(fit(10_000, 1024, 1024), Some((360, 120)));
        assert_eq!(fit(100, 1024, 64), Some((1, 0)));
        // Fewer sessions wanted than fit: only the pipes are cut.
        assert_eq!(fit(100, 1024, 1024), Some((100, 120)));
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
