//! The open-file limit: raise the soft `RLIMIT_NOFILE` to the hard limit at start, and fit
//! `--max-conns` inside it (each session holds two descriptors).

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

/// The largest session count that fits in `nofile` descriptors, if `wanted` does not.
pub fn fit_max_conns(wanted: usize, nofile: u64) -> Option<usize> {
    let fits = nofile.saturating_sub(FD_HEADROOM) / 2;
    ((wanted as u64) > fits).then_some(fits.max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_conns_fits_in_the_limit() {
        assert_eq!(fit_max_conns(10_000, 1_048_576), None);
        assert_eq!(fit_max_conns(10_000, 20_064), None);
        assert_eq!(fit_max_conns(10_000, 20_000), Some(9_968));
        assert_eq!(fit_max_conns(100, 64), Some(1));
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
