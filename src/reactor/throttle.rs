//! Throttled warnings: one message of a kind per window, with a count of the ones held
//! back, shared by every thread (a burst of faults is logged once per burst, not once per
//! event).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a throttled warning stays quiet after it is logged.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(5);

/// Lets one message of a kind through per window and counts the ones held back, so the
/// next message can say how many were suppressed. Atomic, so one throttle can be shared by
/// every thread (a backend's connect-failure warning, say).
#[derive(Debug, Default)]
pub struct Throttle {
    /// When the last message went out, in ms since the clock's epoch, plus one (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when a message may be logged now, `n` being how many were held back since
    /// the last one; `None` when this one should be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let now = crate::clock::millis(now) + 1;
        let window = THROTTLE_WINDOW.as_millis() as u64;
        let last = self.last.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < window {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            // Another thread let its message through just now.
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// `" (N similar suppressed)"`, or nothing when none were.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_window() {
        let t0 = crate::clock::epoch() + Duration::from_secs(1);
        let throttle = Throttle::default();
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.allow(t0 + Duration::from_secs(4)), None);
        assert_eq!(throttle.allow(t0 + THROTTLE_WINDOW), Some(2));
        assert_eq!(throttle.allow(t0 + THROTTLE_WINDOW * 3), Some(0));
        assert_eq!(suppressed_note(2), " (2 similar suppressed)");
        assert_eq!(suppressed_note(0), "");
    }
}
