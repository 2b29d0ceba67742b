//! The access log (`--access-log`): one line per finished session, HAProxy-`tcplog`-like,
//! as `key=value` pairs:
//!
//! ```text
//! 2026-11-23T03:24:31.123Z client=10.1.2.3:51234 backend=10.0.0.11:80 connect_ms=0.214 duration_ms=12.801 bytes_up=112 bytes_down=5120 retries=0 end=backend_fin
//! ```
//!
//! Each worker formats its lines into its own batch during a turn of its loop and hands the
//! batch, once per turn, to the one writer thread every worker shares: a slow disk or a
//! stalled pipe never blocks an event loop, and lines from different workers never
//! interleave mid-line. If the writer falls more than a few batches behind, batches are
//! dropped and counted. When the log is off none of this exists.

use crate::stats::{EndReason, SessionSummary};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Batches that may wait for the writer before new ones are dropped.
const BACKLOG_BATCHES: usize = 64;

/// A batch on its way to the writer, with where to send the emptied buffer back.
struct Batch {
    bytes: Vec<u8>,
    recycle: Sender<Vec<u8>>,
}

/// The writer thread, owned by the control thread.
pub struct AccessLog {
    writer: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

/// One worker's end: formats lines and hands them over once per turn.
pub struct AccessLogBatch {
    batch: Vec<u8>,
    lines: u64,
    full: SyncSender<Batch>,
    recycle: Sender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` for appending (`-` = standard output), starts the writer thread and
    /// returns one batch handle per worker.
    pub fn open(path: &Path, workers: usize) -> io::Result<(AccessLog, Vec<AccessLogBatch>)> {
        let mut out: File = if path == Path::new("-") {
            File::from(io::stdout().as_fd().try_clone_to_owned()?)
        } else {
            OpenOptions::new().create(true).append(true).open(path)?
        };
        let (full, to_write) = mpsc::sync_channel::<Batch>(BACKLOG_BATCHES);
        let writer = std::thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || {
                for Batch { mut bytes, recycle } in to_write {
                    if let Err(e) = out.write_all(&bytes) {
                        log::warn!("access log write failed: {e}");
                    }
                    bytes.clear();
                    let _ = recycle.send(bytes);
                }
                let _ = out.flush();
            })?;
        let dropped = Arc::new(AtomicU64::new(0));
        let batches = (0..workers)
            .map(|_| {
                let (recycle, empty) = mpsc::channel();
                AccessLogBatch {
                    batch: Vec::with_capacity(16 * 1024),
                    lines: 0,
                    full: full.clone(),
                    recycle,
                    empty,
                    dropped: Arc::clone(&dropped),
                }
            })
            .collect();
        Ok((
            AccessLog {
                writer: Some(writer),
                dropped,
            },
            batches,
        ))
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    /// Waits for the writer to write out what it was given (at exit, once every worker has
    /// handed over its last batch and dropped its end).
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl AccessLogBatch {
    /// Formats one line into this turn's batch: how `session` went and how it `ended`.
    pub fn record(&mut self, session: &SessionSummary, ended: EndReason, now: SystemTime) {
        let b = &mut self.batch;
        write_rfc3339_millis(b, now);
        let _ = write!(b, " client={}", session.client_addr);
        match session.backend {
            Some(addr) => {
                let _ = write!(b, " backend={addr}");
            }
            None => b.extend_from_slice(b" backend=-"),
        }
        match session.connect_time {
            Some(d) => {
                let _ = write!(b, " connect_ms={:.3}", d.as_secs_f64() * 1000.0);
            }
            None => b.extend_from_slice(b" connect_ms=-"),
        }
        let _ = writeln!(
            b,
            " duration_ms={:.3} bytes_up={} bytes_down={} retries={} end={}",
            session.duration.as_secs_f64() * 1000.0,
            session.bytes_up,
            session.bytes_down,
            session.retries,
            ended.as_str()
        );
        self.lines += 1;
    }

    /// Hands this turn's lines to the writer. Never blocks: if the writer is too far behind,
    /// the lines are dropped and counted.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(16 * 1024));
        let batch = Batch {
            bytes: std::mem::replace(&mut self.batch, next),
            recycle: self.recycle.clone(),
        };
        match self.full.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                self.dropped.fetch_add(self.lines, Ordering::Relaxed);
                let mut bytes = batch.bytes;
                bytes.clear();
                self.batch = bytes;
            }
        }
        self.lines = 0;
    }
}

/// `2026-11-23T03:24:31.123Z`.
pub fn write_rfc3339_millis(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp(secs: u64, millis: u64) -> String {
        let mut out = Vec::new();
        write_rfc3339_millis(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis),
        );
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn timestamps() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stamp(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(stamp(1_795_404_271, 123), "2026-11-23T03:24:31.123Z");
        assert_eq!(stamp(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("tcplb-access-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let (writer, mut batches) = AccessLog::open(&dir, 1).expect("open");
        let mut log = batches.pop().expect("one batch");
        log.record(
            &SessionSummary {
                client_addr: "10.1.2.3:51234".parse().expect("addr"),
                backend: Some("10.0.0.11:80".parse().expect("addr")),
                connect_time: Some(Duration::from_micros(214)),
                duration: Duration::from_micros(12_801),
                bytes_up: 112,
                bytes_down: 5120,
                retries: 0,
            },
            EndReason::BackendClosed,
            UNIX_EPOCH + Duration::from_millis(1_795_404_271_123),
        );
        log.record(
            &SessionSummary {
                client_addr: "[::1]:9".parse().expect("addr"),
                backend: None,
                connect_time: None,
                duration: Duration::ZERO,
                bytes_up: 0,
                bytes_down: 0,
                retries: 2,
            },
            EndReason::NoBackend,
            UNIX_EPOCH,
        );
        log.flush();
        drop(log);
        drop(writer);
        let text = std::fs::read_to_string(&dir).expect("read");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            text,
            "2026-11-23T03:24:31.123Z client=10.1.2.3:51234 backend=10.0.0.11:80 \
             connect_ms=0.214 duration_ms=12.801 bytes_up=112 bytes_down=5120 retries=0 \
             end=backend_fin\n\
             1970-01-01T00:00:00.000Z client=[::1]:9 backend=- connect_ms=- duration_ms=0.000 \
             bytes_up=0 bytes_down=0 retries=2 end=no_backend\n"
        );
    }
}
