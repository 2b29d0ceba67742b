//! `--pid-file`: the process id in a file, for `kill -USR2 "$(cat /run/tcplb.pid)"`.
//!
//! Written whole or not at all (a temporary file beside it, renamed over it), so a reader
//! never sees a half-written id. The process an upgrade starts rewrites it before it says
//! it is ready; the old one then leaves it alone, and rewrites it with its own id if the
//! upgrade fails (the new process dying on probation included). At exit the file is removed only if it still names this process.
//!
//! The directory may be writable by someone else (tcplb often runs as root): nothing here
//! follows a symlink. The temporary file has an unpredictable name and is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` (a name already taken, a planted symlink included, is
//! never opened: another name is tried), mode 0644; the rename replaces whatever entry has
//! the pid file's name, a symlink included, without following it. Reading the file back
//! at exit does not follow a symlink either, and reads only a regular file (a FIFO put
//! there would block the exit).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Names tried for the temporary file before giving up (each is taken only if someone
/// guessed 64 random bits).
const ATTEMPTS: usize = 8;

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`.
    pub fn create(path: &Path) -> io::Result<PidFile> {
        let file = PidFile {
            path: path.to_path_buf(),
        };
        file.write()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (Re)writes this process's id, atomically.
    pub fn write(&self) -> io::Result<()> {
        let (mut file, temp) = create_temporary(&self.path)?;
        let written = file
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .and_then(|()| std::fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// Whether the file names this process.
    fn names_me(&self) -> bool {
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        else {
            return false;
        };
        let mut text = String::new();
        file.metadata().is_ok_and(|m| m.is_file())
            && file.take(64).read_to_string(&mut text).is_ok()
            && text.trim().parse::<u32>() == Ok(std::process::id())
    }

    /// Removes the file if it still names this process (after an upgrade it names the new
    /// one, which keeps it).
    pub fn remove(&self) {
        if self.names_me() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates a new file beside `path`, named `<name>.<16 random hex digits>.tmp`, that was
/// not there before (`O_EXCL`) and is not reached through a symlink (`O_NOFOLLOW`).
fn create_temporary(path: &Path) -> io::Result<(File, PathBuf)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..ATTEMPTS {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{:016x}.tmp", random_u64()?));
        let temp = path.with_file_name(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
        {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// 64 bits from the kernel's random number generator.
#[cfg(target_os = "linux")]
fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`, which we own; 8
    // bytes are never cut short by a signal (requests up to 256 bytes are not).
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        Ok(u64::from_ne_bytes(bytes))
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// 64 bits from the kernel's random number generator.
#[cfg(not(target_os = "linux"))]
fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_it_names_us() {
        let dir = std::env::temp_dir().join(format!("tcplb-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("tcplb.pid");
        std::fs::write(&path, "1\n").expect("a stale file");
        let pid_file = PidFile::create(&path).expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", std::process::id())
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["tcplb.pid"]);
        // Another process took it over: not ours to remove.
        std::fs::write(&path, "999999999\n").expect("rewrite");
        pid_file.remove();
        assert!(path.exists());
        pid_file.write().expect("rewrite ours");
        pid_file.remove();
        assert!(!path.exists());
        // A directory that does not exist: an error naming nothing half-done.
        let err = PidFile::create(&dir.join("missing/tcplb.pid")).expect_err("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// At exit, what stands in the pid file's place is read only if it is a regular file:
    /// a symlink is not followed, and a FIFO (which would block the read) is not read.
    #[test]
    fn only_a_regular_file_is_read_back() {
        let dir = std::env::temp_dir().join(format!("tcplb-pid-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("tcplb.pid");
        let pid_file = PidFile::create(&path).expect("write");
        assert!(pid_file.names_me());
        // A symlink to a file that names us: not followed, so not ours.
        let real = dir.join("real");
        std::fs::rename(&path, &real).expect("move aside");
        std::os::unix::fs::symlink(&real, &path).expect("symlink");
        assert!(!pid_file.names_me());
        pid_file.remove();
        assert!(real.exists() && std::fs::symlink_metadata(&path).is_ok());
        // A FIFO nobody writes: not read (this would hang if it were).
        std::fs::remove_file(&path).expect("unlink");
        let fifo = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        assert!(!pid_file.names_me());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
