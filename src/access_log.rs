//! The access log (`--access-log`): one line per finished session, HAProxy-`tcplog`-like,
//! as `key=value` pairs:
//!
//! ```text
//! 2026-11-23T03:24:31.123Z service=web client=10.1.2.3:51234 class=normal backend=10.0.0.11:80 queue_ms=- connect_ms=0.214 ttfb_ms=1.500 duration_ms=12.801 bytes_up=112 bytes_down=5120 retries=0 end=backend_fin
//! ```
//!
//! A session of a service with `routes` ends its line with what the client sent first
//! (`tls=`, as `tcplb_tls_inspect_total`'s `result`) and the server name it asked for
//! (`sni=`, `-` for none): `... end=backend_fin tls=sni sni=api.example.com`.
//!
//! Each worker formats its lines into its own batch during a turn of its loop and hands the
//! batch, once per turn, to the one writer thread every worker shares: a slow disk or a
//! stalled pipe never blocks an event loop, and lines from different workers never
//! interleave mid-line. Every line not written is counted ([`AccessLog::dropped`]): batches
//! dropped because the writer fell more than a few batches behind, and lines of a batch
//! whose write failed (a full disk, a FIFO whose reader went away). The writer warns about
//! failed writes at most once per [`THROTTLE_WINDOW`](crate::logging::THROTTLE_WINDOW).
//!
//! The file is opened without blocking, so a FIFO nobody reads yet does not hold start-up
//! up: while no process has it open for reading, lines are dropped and counted, and the
//! writer opens it with the first batch after a reader shows up (and again after a reader
//! goes away). When the log is off none of this exists.
//!
//! [`AccessLog::reopen`] (SIGUSR1, for logrotate) asks the writer to open the path again
//! and write there from its next batch on: the control thread only sets a flag and wakes
//! the writer, and the writer opens the new file before it lets go of the old one (if the
//! open fails, it keeps writing to the old one and says so). Every line goes to exactly one
//! of the two: the batches written before the reopen to the old file, the rest to the new.

use crate::reactor::{Throttle, suppressed_note};
use crate::stats::{EndReason, SessionSummary};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Batches that may wait for the writer before new ones are dropped.
const BACKLOG_BATCHES: usize = 64;
/// How long exiting waits for the writer to write out what is left.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// What the writer thread is handed.
enum ToWriter {
    /// A batch of lines, with where to send the emptied buffer back.
    Batch {
        bytes: Vec<u8>,
        recycle: Sender<Vec<u8>>,
    },
    /// Look at the reopen flag now (it is looked at before every batch anyway).
    Wake,
}

/// The writer thread, owned by the control thread.
pub struct AccessLog {
    /// Lines not written, counted here, by the batches and by the writer.
    dropped: Arc<AtomicU64>,
    /// Set to have the writer open the path again before its next write.
    reopen: Arc<AtomicBool>,
    /// Wakes the writer for a reopen; dropped first at exit, so that the writer sees the
    /// channel close once every worker has dropped its end too.
    wake: Option<SyncSender<ToWriter>>,
    writer: Option<JoinHandle<()>>,
    /// Disconnected once the writer has finished.
    writer_done: Receiver<()>,
}

/// One worker's end: formats lines and hands them over once per turn.
pub struct AccessLogBatch {
    batch: Vec<u8>,
    lines: u64,
    full: SyncSender<ToWriter>,
    recycle: Sender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` for appending (`-` = standard output), starts the writer thread and
    /// returns one batch handle per worker. A FIFO with no reader yet is opened later, by
    /// the writer.
    pub fn open(path: &Path, workers: usize) -> io::Result<(AccessLog, Vec<AccessLogBatch>)> {
        let mut output = if path == Path::new("-") {
            Output {
                path: None,
                file: Some(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
            }
        } else {
            let file = match open_without_blocking(path) {
                Ok(file) => Some(file),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    log::info!(
                        "access log {}: a FIFO no process reads yet; its lines are dropped \
                         (and counted) until one does",
                        path.display()
                    );
                    None
                }
                Err(e) => return Err(e),
            };
            Output {
                path: Some(path.to_path_buf()),
                file,
            }
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let (full, to_write) = mpsc::sync_channel::<ToWriter>(BACKLOG_BATCHES);
        let (done, writer_done) = mpsc::channel::<()>();
        let counter = Arc::clone(&dropped);
        let reopen_asked = Arc::clone(&reopen);
        let writer = std::thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || {
                let _done = done;
                let throttle = Throttle::default();
                for message in to_write {
                    if reopen_asked.swap(false, Ordering::AcqRel) {
                        output.reopen();
                    }
                    let ToWriter::Batch { mut bytes, recycle } = message else {
                        continue;
                    };
                    if let Err((lost, e)) = output.write(&bytes) {
                        counter.fetch_add(lost, Ordering::Relaxed);
                        if let Some(n) = throttle.allow(Instant::now()) {
                            log::warn!(
                                "access log: {lost} lines not written: {e}{}",
                                suppressed_note(n)
                            );
                        }
                    }
                    bytes.clear();
                    let _ = recycle.send(bytes);
                }
                if let Some(file) = &mut output.file {
                    let _ = file.flush();
                }
            })?;
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
                dropped,
                reopen,
                wake: Some(full),
                writer: Some(writer),
                writer_done,
            },
            batches,
        ))
    }

    /// Has the writer open the path again (after logrotate renamed the file) before it
    /// writes its next batch, and logs how that went. Never blocks: if the writer's queue
    /// is full, it reopens before the next batch it takes from it.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(ToWriter::Wake);
        }
    }

    /// Lines not written so far: dropped because the writer fell behind, or lost to a
    /// failed write.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    /// Waits for the writer to write out what it was given (at exit, once every worker has
    /// handed over its last batch and dropped its end), for at most `EXIT_WAIT`: a reader
    /// that stopped reading must not keep the process from exiting.
    fn drop(&mut self) {
        self.wake = None;
        match self.writer_done.recv_timeout(EXIT_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("access log: the last lines could not be written within {EXIT_WAIT:?}");
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(writer) = self.writer.take() {
                    let _ = writer.join();
                }
            }
        }
    }
}

impl AccessLogBatch {
    /// Formats one line into this turn's batch: how `session` went and how it `ended`.
    pub fn record(&mut self, session: &SessionSummary, ended: EndReason, now: SystemTime) {
        let b = &mut self.batch;
        write_rfc3339_millis(b, now);
        let _ = write!(
            b,
            " service={} client={} class={}",
            session.service,
            session.client_addr,
            session.class.as_str()
        );
        match session.backend {
            Some(addr) => {
                let _ = write!(b, " backend={addr}");
            }
            None => b.extend_from_slice(b" backend=-"),
        }
        match session.queue_wait {
            Some(d) => {
                let _ = write!(b, " queue_ms={:.3}", d.as_secs_f64() * 1000.0);
            }
            None => b.extend_from_slice(b" queue_ms=-"),
        }
        match session.connect_time {
            Some(d) => {
                let _ = write!(b, " connect_ms={:.3}", d.as_secs_f64() * 1000.0);
            }
            None => b.extend_from_slice(b" connect_ms=-"),
        }
        match session.first_response {
            Some(d) => {
                let _ = write!(b, " ttfb_ms={:.3}", d.as_secs_f64() * 1000.0);
            }
            None => b.extend_from_slice(b" ttfb_ms=-"),
        }
        let _ = write!(
            b,
            " duration_ms={:.3} bytes_up={} bytes_down={} retries={} end={}",
            session.duration.as_secs_f64() * 1000.0,
            session.bytes_up,
            session.bytes_down,
            session.retries,
            ended.as_str()
        );
        // A service with routes: what the client sent first, and the name it asked for
        // (visible ASCII: the parser took nothing else).
        if let Some((result, name)) = &session.tls {
            let _ = write!(
                b,
                " tls={} sni={}",
                result.as_str(),
                name.as_deref().unwrap_or("-")
            );
        }
        b.push(b'\n');
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
        let batch = ToWriter::Batch {
            bytes: std::mem::replace(&mut self.batch, next),
            recycle: self.recycle.clone(),
        };
        match self.full.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                self.dropped.fetch_add(self.lines, Ordering::Relaxed);
                if let ToWriter::Batch { mut bytes, .. } = batch {
                    bytes.clear();
                    self.batch = bytes;
                }
            }
        }
        self.lines = 0;
    }
}

/// Where the writer thread writes.
struct Output {
    /// `None` for standard output.
    path: Option<PathBuf>,
    /// `None` while a FIFO has no reader (or lost it): opened again with the next batch.
    file: Option<File>,
}

impl Output {
    /// Opens the path again (SIGUSR1): the new file is opened before the old one is closed,
    /// and if it cannot be, the old one is kept. Standard output has nothing to reopen.
    fn reopen(&mut self) {
        let Some(path) = &self.path else {
            log::info!("SIGUSR1: the access log is standard output; nothing to reopen");
            return;
        };
        let shown = path.display();
        match open_without_blocking(path) {
            Ok(file) => {
                self.file = Some(file);
                log::info!("SIGUSR1: reopened the access log {shown}");
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                self.file = None;
                log::info!(
                    "SIGUSR1: reopened the access log {shown}: a FIFO no process reads yet; \
                     its lines are dropped (and counted) until one does"
                );
            }
            Err(e) => log::warn!(
                "SIGUSR1: cannot reopen the access log {shown}: {e}; still writing to the \
                 file open before"
            ),
        }
    }

    /// Writes a batch of whole lines. On failure: how many lines were not written (the one
    /// cut in the middle included), and why.
    fn write(&mut self, batch: &[u8]) -> Result<(), (u64, io::Error)> {
        let lines_in = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        if self.file.is_none() {
            if let Some(path) = &self.path {
                match open_without_blocking(path) {
                    Ok(file) => self.file = Some(file),
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                        let why = io::Error::new(
                            e.kind(),
                            format!("no process reads the FIFO {}", path.display()),
                        );
                        return Err((lines_in(batch), why));
                    }
                    Err(e) => return Err((lines_in(batch), e)),
                }
            }
        }
        let Some(file) = &mut self.file else {
            return Err((lines_in(batch), io::ErrorKind::NotConnected.into()));
        };
        let mut written = 0;
        while written < batch.len() {
            match file.write(&batch[written..]) {
                Ok(0) => {
                    return Err((lines_in(&batch[written..]), io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The FIFO's reader went away: open it again when another comes.
                    if e.kind() == io::ErrorKind::BrokenPipe && self.path.is_some() {
                        self.file = None;
                    }
                    return Err((lines_in(&batch[written..]), e));
                }
            }
        }
        Ok(())
    }
}

/// Opens `path` for appending without waiting for a FIFO's reader (`ENXIO` when it has
/// none), then makes writes blocking again: they happen on the writer thread. A symlink is
/// followed (an administrator may point the log anywhere on purpose); a missing file is
/// created with mode 0644 (less the umask), never writable by others.
fn open_without_blocking(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns (`file`); F_GETFL/F_SETFL only read
    // and set its status flags.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if cleared {
        Ok(file)
    } else {
        Err(io::Error::last_os_error())
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
    use crate::stats::TlsInspect;
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

    fn summary(port: u16) -> SessionSummary {
        SessionSummary {
            service: std::sync::Arc::from("web"),
            client_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            backend: None,
            connect_time: None,
            first_response: None,
            duration: Duration::ZERO,
            bytes_up: 0,
            bytes_down: 0,
            retries: 0,
            class: crate::stats::Class::Normal,
            queue_wait: None,
            tls: None,
        }
    }

    /// A reopen that works writes to the new file from then on; one that fails (a
    /// directory where the file was) keeps writing to the file open before.
    #[test]
    fn reopening() {
        let dir = std::env::temp_dir().join(format!("tcplb-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("access.log");
        let (writer, mut batches) = AccessLog::open(&path, 1).expect("open");
        let mut log = batches.pop().expect("one batch");
        let mut line = |port: u16| {
            log.record(&summary(port), EndReason::ClientClosed, UNIX_EPOCH);
            log.flush();
        };
        let clients = |path: &Path| -> Vec<String> {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut ports: Vec<String> = text
                .lines()
                .filter_map(|l| l.split(' ').nth(2).map(str::to_string))
                .collect();
            ports.sort();
            ports
        };
        let wait_for = |path: &Path, n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while clients(path).len() < n {
                assert!(Instant::now() < deadline, "{} lines in {path:?}", n);
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        line(1);
        wait_for(&path, 1);
        let first = dir.join("access.log.1");
        std::fs::rename(&path, &first).expect("rotate");
        writer.reopen();
        line(2);
        wait_for(&path, 1);
        // Now the path cannot be opened as a file: the lines stay in the file open before.
        let second = dir.join("access.log.2");
        std::fs::rename(&path, &second).expect("rotate");
        std::fs::create_dir(&path).expect("a directory in its place");
        writer.reopen();
        line(3);
        wait_for(&second, 2);
        assert_eq!(clients(&first), ["client=127.0.0.1:1"]);
        assert_eq!(
            clients(&second),
            ["client=127.0.0.1:2", "client=127.0.0.1:3"]
        );
        drop(log);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("tcplb-access-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let (writer, mut batches) = AccessLog::open(&dir, 1).expect("open");
        let mut log = batches.pop().expect("one batch");
        log.record(
            &SessionSummary {
                service: std::sync::Arc::from("web"),
                client_addr: "10.1.2.3:51234".parse().expect("addr"),
                backend: Some("10.0.0.11:80".parse().expect("addr")),
                connect_time: Some(Duration::from_micros(214)),
                first_response: Some(Duration::from_micros(1_500)),
                duration: Duration::from_micros(12_801),
                bytes_up: 112,
                bytes_down: 5120,
                retries: 0,
                class: crate::stats::Class::High,
                queue_wait: Some(Duration::from_micros(2_250)),
                tls: None,
            },
            EndReason::BackendClosed,
            UNIX_EPOCH + Duration::from_millis(1_795_404_271_123),
        );
        log.record(
            &SessionSummary {
                service: std::sync::Arc::from("web"),
                client_addr: "[::1]:9".parse().expect("addr"),
                backend: None,
                connect_time: None,
                first_response: None,
                duration: Duration::ZERO,
                bytes_up: 0,
                bytes_down: 0,
                retries: 2,
                class: crate::stats::Class::Normal,
                queue_wait: None,
                tls: None,
            },
            EndReason::NoBackend,
            UNIX_EPOCH,
        );
        log.record(
            &SessionSummary {
                service: std::sync::Arc::from("tls"),
                client_addr: "10.1.2.4:443".parse().expect("addr"),
                backend: Some("10.0.0.12:443".parse().expect("addr")),
                connect_time: Some(Duration::from_micros(100)),
                first_response: None,
                duration: Duration::from_millis(2),
                bytes_up: 517,
                bytes_down: 1200,
                retries: 0,
                class: crate::stats::Class::Normal,
                queue_wait: None,
                tls: Some((
                    TlsInspect::Sni,
                    Some(std::sync::Arc::from("api.example.com")),
                )),
            },
            EndReason::ClientClosed,
            UNIX_EPOCH,
        );
        log.record(
            &SessionSummary {
                service: std::sync::Arc::from("tls"),
                client_addr: "10.1.2.5:443".parse().expect("addr"),
                backend: None,
                connect_time: None,
                first_response: None,
                duration: Duration::from_secs(5),
                bytes_up: 0,
                bytes_down: 0,
                retries: 0,
                class: crate::stats::Class::Normal,
                queue_wait: None,
                tls: Some((TlsInspect::Timeout, None)),
            },
            EndReason::NoRoute,
            UNIX_EPOCH,
        );
        log.flush();
        drop(log);
        drop(writer);
        let text = std::fs::read_to_string(&dir).expect("read");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            text,
            "2026-11-23T03:24:31.123Z service=web client=10.1.2.3:51234 class=high \
             backend=10.0.0.11:80 queue_ms=2.250 connect_ms=0.214 ttfb_ms=1.500 duration_ms=12.801 bytes_up=112 bytes_down=5120 \
             retries=0 end=backend_fin\n\
             1970-01-01T00:00:00.000Z service=web client=[::1]:9 class=normal backend=- \
             queue_ms=- connect_ms=- \
             ttfb_ms=- duration_ms=0.000 bytes_up=0 bytes_down=0 retries=2 end=no_backend\n\
             1970-01-01T00:00:00.000Z service=tls client=10.1.2.4:443 class=normal \
             backend=10.0.0.12:443 queue_ms=- \
             connect_ms=0.100 ttfb_ms=- duration_ms=2.000 bytes_up=517 bytes_down=1200 retries=0 \
             end=client_fin tls=sni sni=api.example.com\n\
             1970-01-01T00:00:00.000Z service=tls client=10.1.2.5:443 class=normal backend=- \
             queue_ms=- connect_ms=- \
             ttfb_ms=- duration_ms=5000.000 bytes_up=0 bytes_down=0 retries=0 end=no_route \
             tls=timeout sni=-\n"
        );
    }
}
