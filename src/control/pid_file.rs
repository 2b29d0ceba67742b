//! `--pid-file`: the process id in a file, for `kill -USR2 "$(cat /run/tcplb.pid)"`.
//!
//! Written whole or not at all (a temporary file beside it, renamed over it), so a reader
//! never sees a half-written id. The process an upgrade starts rewrites it before it says
//! it is ready; the old one then leaves it alone, and rewrites it with its own id if the
//! upgrade fails (the new process dying on probation included). At exit the file is removed only if it still names this process.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
        let pid = std::process::id();
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{pid}.tmp"));
        let temp = self.path.with_file_name(name);
        let written = std::fs::File::create(&temp)
            .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// Whether the file names this process.
    fn names_me(&self) -> bool {
        std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>() == Ok(std::process::id()))
    }

    /// Removes the file if it still names this process (after an upgrade it names the new
    /// one, which keeps it).
    pub fn remove(&self) {
        if self.names_me() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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
}
