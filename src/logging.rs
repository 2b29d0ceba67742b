//! Log set-up (`env_logger`, `RUST_LOG`, default `info`) through a non-blocking sink, and
//! [`Throttle`], which keeps a burst of identical faults down to one warning per window.
//!
//! Log lines are formatted by `env_logger` on the thread that logs and handed to a bounded
//! queue; a writer thread empties it into stderr. The event loop therefore never waits for
//! stderr: when whatever reads it stalls (a stuck log shipper, a blocking container log
//! driver) and the queue fills, further lines are dropped and counted
//! ([`dropped_lines`], exported as `tcplb_log_lines_dropped_total`), never waited for.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines that may wait for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 4096;

/// Lines dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued and not yet written out.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The levels a `RUST_LOG` directive may name.
const LEVELS: &str = "off, error, warn, info, debug, trace";

/// Installs the logger: `RUST_LOG` if set (and not empty), else `info`; lines go to stderr
/// through the writer thread. If that thread cannot be started, lines are written to
/// stderr directly. A `RUST_LOG` with a word that is neither a level nor one of tcplb's
/// modules (`verbose`, `warning`) would turn every line off, the start line included:
/// it is named in a warning, and `info` is used instead.
pub fn init() {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let problem = filter_problem(&spec);
    let mut builder = env_logger::Builder::new();
    if spec.trim().is_empty() || problem.is_some() {
        builder.filter_level(log::LevelFilter::Info);
    } else {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_millis();
    if let Ok(queue) = QueueWriter::spawn() {
        builder.target(env_logger::Target::Pipe(Box::new(queue)));
    }
    builder.init();
    if let Some(problem) = problem {
        log::warn!(
            "RUST_LOG='{}': {problem}; logging at info",
            crate::config::printable(&spec)
        );
    }
}

/// What is wrong with `spec` (a `RUST_LOG` value: `DIRECTIVE[,DIRECTIVE...][/FILTER]`, a
/// directive being `LEVEL`, `MODULE` or `MODULE=LEVEL`), if anything. A bare word that is
/// not a level is taken by `env_logger` for a module, and every other module is then off:
/// it is accepted only if it names one of tcplb's (another crate's needs a level, as in
/// `mio=debug`).
fn filter_problem(spec: &str) -> Option<String> {
    use std::str::FromStr;
    let is_level = |word: &str| log::LevelFilter::from_str(word).is_ok();
    let ours = |module: &str| module == "tcplb" || module.starts_with("tcplb::");
    let mut parts = spec.split('/');
    let directives = parts.next().unwrap_or_default();
    if parts.nth(1).is_some() {
        return Some("more than one '/'".to_string());
    }
    for directive in directives.split(',').map(str::trim) {
        let problem = match directive.split('=').map(str::trim).collect::<Vec<_>>()[..] {
            [""] => None,
            [word] if is_level(word) || ours(word) => None,
            [word] => Some(format!(
                "'{}' is not a level ({LEVELS}) nor one of tcplb's modules",
                crate::config::printable(word)
            )),
            [_, level] if level.is_empty() || is_level(level) => None,
            [_, level] => Some(format!(
                "'{}' is not a level ({LEVELS})",
                crate::config::printable(level)
            )),
            _ => Some(format!(
                "'{}' has more than one '='",
                crate::config::printable(directive)
            )),
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// Log lines dropped so far because stderr was not keeping up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits (at most `limit`) for the queued lines to be written: at exit, so the last lines
/// are not lost, without hanging on a stderr nobody reads.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `env_logger`'s output: each formatted record is queued whole for the writer thread.
struct QueueWriter {
    queue: SyncSender<Vec<u8>>,
}

impl QueueWriter {
    fn spawn() -> io::Result<QueueWriter> {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("log-writer".to_string())
            .spawn(move || {
                let stderr = io::stderr();
                for line in lines {
                    // Nowhere to report a failed write to stderr: the line is lost.
                    let _ = stderr.lock().write_all(&line);
                    PENDING.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(QueueWriter { queue })
    }
}

impl Write for QueueWriter {
    /// Queues `record` (one whole formatted log record) or counts it dropped. Never blocks.
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        PENDING.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(record.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                PENDING.fetch_sub(1, Ordering::AcqRel);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_that_would_turn_everything_off_are_caught() {
        for good in [
            "",
            "info",
            "WARN",
            "off",
            "tcplb",
            "tcplb=debug",
            "tcplb::worker=trace, info",
            "mio=debug,tcplb=info",
            "tcplb=",
            "debug/listening",
        ] {
            assert_eq!(filter_problem(good), None, "{good}");
        }
        for (bad, named) in [
            ("verbose", "'verbose' is not a level"),
            ("warning", "'warning' is not a level"),
            ("info,loud", "'loud'"),
            ("tcplb=loud", "'loud' is not a level"),
            ("mio", "'mio'"),
            ("a=b=c", "'a=b=c' has more than one '='"),
            ("info/a/b", "more than one '/'"),
            ("\x1b[31m", "'\\x1b[31m'"),
        ] {
            let problem = filter_problem(bad).unwrap_or_else(|| panic!("{bad} passed"));
            assert!(problem.contains(named), "{bad}: {problem}");
        }
    }
}
