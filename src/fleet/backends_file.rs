//! The backends file (`backends-file`): one backend spec per line, `#` comments, re-read
//! on every reload by the discovery thread (never by an event loop).

use crate::config::{self, BackendSpec, ConfigError, Origin};
use std::path::Path;
use std::sync::Arc;

/// Reads and parses a backends file; the error names the file and, for a bad spec, the line.
/// Bytes that are not UTF-8 are read as U+FFFD: harmless in a comment, and a bad spec's error
/// then names its line.
pub fn read_backends_file(path: &Path) -> Result<Vec<BackendSpec>, String> {
    let shown = path.display().to_string();
    let shown = config::printable(&shown);
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read backends file {shown}: {e}"))?;
    parse_backends_file(&String::from_utf8_lossy(&bytes), path).map_err(|e| format!("{shown}: {e}"))
}

/// Bad lines of a backends file named in one error; the rest are counted.
pub const SHOWN_BAD_LINES: usize = 10;

/// Parses the backends file `file` holding `text`: one backend spec per line; `#` starts a
/// comment; blank lines are ignored; a line ends at LF, CRLF or a lone CR (old Mac files).
/// Each spec remembers its file and line. Every bad line is found, not just the first: one
/// is a [`ConfigError::BadLine`] with its number; several are a [`ConfigError::BadLines`]
/// naming the first [`SHOWN_BAD_LINES`] and counting them all.
pub fn parse_backends_file(text: &str, file: &Path) -> Result<Vec<BackendSpec>, ConfigError> {
    let file: Arc<Path> = Arc::from(file);
    let mut specs = Vec::new();
    let mut bad = Vec::new();
    let mut bad_lines = 0;
    for (i, line) in file_lines(text).enumerate() {
        let content = line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        match BackendSpec::parse(content) {
            Ok(mut spec) => {
                spec.origin = Some(Origin {
                    file: Arc::clone(&file),
                    line: i + 1,
                });
                specs.push(spec);
            }
            Err(error) => {
                bad_lines += 1;
                if bad.len() < SHOWN_BAD_LINES {
                    bad.push(ConfigError::BadLine {
                        line: i + 1,
                        error: Box::new(error),
                    });
                }
            }
        }
    }
    match bad.len() {
        0 => Ok(specs),
        1 => Err(bad.remove(0)),
        _ => Err(ConfigError::BadLines {
            shown: bad,
            total: bad_lines,
        }),
    }
}

/// The lines of `text`, each ended by LF, CRLF or a lone CR.
fn file_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;
    #[test]
    fn file_errors_name_the_file_and_line() {
        let path = std::env::temp_dir().join(format!("tcplb-backends-{}", std::process::id()));
        std::fs::write(&path, "127.0.0.1:80\n# comment\n127.0.0.1:x\n").expect("write");
        let err = read_backends_file(&path).expect_err("bad line");
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 3"),
            "{err}"
        );
        let err = read_backends_file(Path::new("/no/such/file")).expect_err("missing");
        assert!(err.contains("/no/such/file"), "{err}");
    }

    fn file(text: &str) -> Result<Vec<BackendSpec>, ConfigError> {
        parse_backends_file(text, Path::new("/etc/tcplb/backends"))
    }

    /// Each spec of `text` as shown, with the line it came from.
    fn lines_of(text: &str) -> Vec<(String, usize)> {
        file(text)
            .expect("parses")
            .iter()
            .map(|s| (s.to_string(), s.origin.as_ref().expect("origin").line))
            .collect()
    }

    #[test]
    fn backends_files() {
        let specs = file(
            "# web fleet\n\n10.0.0.1:80\n  10.0.0.2:80,weight=3   # the big one\n\
             [::1]:80,backup\n",
        )
        .expect("parses");
        let shown: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            ["10.0.0.1:80", "10.0.0.2:80,weight=3", "[::1]:80,backup"]
        );
        assert_eq!(
            specs[1].origin.as_ref().expect("origin").to_string(),
            "/etc/tcplb/backends: line 4"
        );
        assert_eq!(file("# nothing\n"), Ok(vec![]));
        let err = file("10.0.0.1:80\n\nfoo:bar\n").expect_err("bad line");
        assert_eq!(
            err.to_string(),
            "line 3: invalid backend 'foo:bar': port 'bar' is not a number from 1 to 65535"
        );
    }

    #[test]
    fn backends_file_lines_end_at_lf_crlf_or_a_lone_cr() {
        let want = |lines: &[usize]| -> Vec<(String, usize)> {
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
                .iter()
                .zip(lines)
                .map(|(s, &l)| (s.to_string(), l))
                .collect()
        };
        let unix = "10.0.0.1:80\n10.0.0.2:80\n\n10.0.0.3:80\n";
        assert_eq!(lines_of(unix), want(&[1, 2, 4]));
        assert_eq!(lines_of(&unix.replace('\n', "\r\n")), want(&[1, 2, 4]));
        assert_eq!(lines_of(&unix.replace('\n', "\r")), want(&[1, 2, 4]));
        // Mixed, a comment ended by a lone CR, and no line end at the end.
        assert_eq!(
            lines_of("10.0.0.1:80\r\n# old\r10.0.0.2:80\r\r\n10.0.0.3:80"),
            want(&[1, 3, 5])
        );
        // The line number of a bad line counts lone CRs too.
        let err = file("10.0.0.1:80\r# x\r10.0.0.2:x\r").expect_err("bad line");
        assert!(err.to_string().starts_with("line 3: "), "{err}");
    }

    #[test]
    fn every_bad_line_is_named_up_to_ten() {
        let err = file("10.0.0.1:x\n10.0.0.2:80\n# c\nweb:80,weight=0\n[::1:80\n")
            .expect_err("bad lines");
        assert_eq!(
            err.to_string(),
            "3 bad lines: line 1: invalid backend '10.0.0.1:x': port 'x' is not a number \
             from 1 to 65535; line 4: invalid backend 'web:80,weight=0': weight '0' is not \
             1..=256; line 5: invalid backend '[::1:80': expected [IPv6]:PORT"
        );
        // Thirteen bad lines: ten named, three counted.
        let text: String = (1..=13).map(|i| format!("h:{i}x\n")).collect();
        let shown = file(&text).expect_err("bad lines").to_string();
        assert!(shown.starts_with("13 bad lines: line 1: "), "{shown}");
        assert!(
            shown.contains("line 10: invalid backend 'h:10x'"),
            "{shown}"
        );
        assert!(!shown.contains("line 11"), "{shown}");
        assert!(shown.ends_with("; and 3 more bad lines"), "{shown}");
        // Eleven: "1 more bad line".
        let text: String = (1..=11).map(|i| format!("h:{i}x\n")).collect();
        let shown = file(&text).expect_err("bad lines").to_string();
        assert!(shown.ends_with("; and 1 more bad line"), "{shown}");
    }
}
