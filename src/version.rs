//! What this binary is: the crate's version, the git commit it was built from and when it
//! was built (set by build.rs), for `tcplb --version` and the admin dashboard.

/// The crate's version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built, 12 hex digits (`unknown` when not built from a git checkout).
pub const COMMIT: &str = env!("TCPLB_COMMIT");
/// When it was built, UTC (`SOURCE_DATE_EPOCH` where set): `2026-11-01T09:30:00Z`.
pub const BUILD_DATE: &str = env!("TCPLB_BUILD_DATE");

/// The line `tcplb --version` prints (without its newline):
/// `tcplb 0.1.0 (commit 1a2b3c4d5e6f, built 2026-11-01T09:30:00Z)`.
pub fn line() -> String {
    format!("tcplb {VERSION} (commit {COMMIT}, built {BUILD_DATE})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_commit_and_date() {
        let line = line();
        assert!(line.starts_with("tcplb "), "{line}");
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        // YYYY-MM-DDTHH:MM:SSZ
        let d = BUILD_DATE.as_bytes();
        assert_eq!(d.len(), 20, "{BUILD_DATE}");
        assert_eq!((d[4], d[7], d[10], d[19]), (b'-', b'-', b'T', b'Z'));
    }
}
