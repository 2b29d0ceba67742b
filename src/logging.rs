//! Log set-up (`env_logger`, `RUST_LOG`, default `info`) and [`Throttle`], which keeps a
//! burst of identical faults down to one warning per window.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Installs the logger: `RUST_LOG` if set, else `info`; lines go to stderr.
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}

/// How long a throttled warning stays quiet after it is logged.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(5);

/// Lets one message of a kind through per window and counts the ones held back, so the
/// next message can say how many were suppressed. Cell-based so it can sit in shared state.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Throttle {
    /// `Some(n)` when a message may be logged now, `n` being how many were held back since
    /// the last one; `None` when this one should be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < THROTTLE_WINDOW => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
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
        let t0 = Instant::now();
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
