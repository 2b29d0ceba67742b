//! Process-wide time for shared state: milliseconds since the process started.
//!
//! State that several threads read and write (a breaker's cool-down, a throttle's window)
//! lives in atomics, and an `Instant` does not fit in one. Such times are kept as `u64`
//! milliseconds since one process-wide epoch, fixed the first time anything asks for it
//! (`main` does so first thing).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant all millisecond times count from.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as milliseconds since the epoch (0 for anything before it).
pub fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> u64 {
    millis(Instant::now())
}

/// The instant `ms` milliseconds after the epoch.
pub fn instant(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip() {
        let start = epoch();
        assert_eq!(millis(start), 0);
        assert_eq!(millis(start + Duration::from_millis(1500)), 1500);
        assert_eq!(instant(250), start + Duration::from_millis(250));
        assert!(now_millis() >= millis(start));
    }
}
