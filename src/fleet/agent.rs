//! HAProxy's agent protocol, as a backend's agent speaks it: connected to on its
//! `agent-port`, it answers one line of words (separated by spaces, tabs or commas; a `#`
//! starts free text), and tcplb applies them:
//!
//! | word | meaning |
//! |---|---|
//! | `ready` | take sessions again (undoes `drain` and `maint`) |
//! | `drain` | no new sessions; live ones go on |
//! | `maint` | no new sessions, no health checks |
//! | `up` | healthy again (undoes `down`) |
//! | `down`, `fail`, `stopped` | down: no new sessions until `up` |
//! | `N%` | weight N % of the configured one (`0%` drains) |
//! | `maxconn:N` | the backend's `maxconn` until the agent says another (0: no limit) |
//!
//! Pure: the prober reads the line, [`parse`] says what it means, and the fleet applies it
//! to the backend's [`AgentState`].

use crate::fleet::backend::{Admin, AgentState};

/// The longest answer read from an agent: one line.
pub const MAX_LINE: usize = 512;

/// What one answer said; words it did not have leave the state as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub admin: Option<Admin>,
    /// `Some(true)`: `down`; `Some(false)`: `up`.
    pub down: Option<bool>,
    pub percent: Option<u32>,
    pub maxconn: Option<u32>,
    /// Words it did not know (ignored, shown).
    pub unknown: Vec<String>,
}

impl Reply {
    /// The state after this answer.
    pub fn apply(&self, mut state: AgentState) -> AgentState {
        if let Some(admin) = self.admin {
            state.admin = admin;
        }
        if let Some(down) = self.down {
            state.down = down;
        }
        if let Some(percent) = self.percent {
            state.percent = percent;
        }
        if self.maxconn.is_some() {
            state.maxconn = self.maxconn;
        }
        state
    }
}

/// The words of one answer (the bytes up to the first line end).
pub fn parse(line: &[u8]) -> Reply {
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let words = line.split('#').next().unwrap_or_default();
    let mut reply = Reply::default();
    for word in words
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "ready" => reply.admin = Some(Admin::Ready),
            "drain" => reply.admin = Some(Admin::Drain),
            "maint" => reply.admin = Some(Admin::Maint),
            "up" => reply.down = Some(false),
            "down" | "fail" | "stopped" => reply.down = Some(true),
            w => {
                if let Some(n) = w.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    reply.percent = Some(n.min(0xffff));
                } else if let Some(n) = w.strip_prefix("maxconn:").and_then(|n| n.parse().ok()) {
                    reply.maxconn = Some(n);
                } else if reply.unknown.len() < 4 {
                    reply
                        .unknown
                        .push(crate::config::printable(word).into_owned());
                }
            }
        }
    }
    reply
}

/// How a state reads in `/backends`, `tcplb ctl` and the log: `ready up 100%`.
pub fn describe(state: &AgentState) -> String {
    let mut text = format!(
        "{} {} {}%",
        state.admin.as_str(),
        if state.down { "down" } else { "up" },
        state.percent
    );
    if let Some(maxconn) = state.maxconn {
        text.push_str(&format!(" maxconn:{maxconn}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_words() {
        let r = parse(b"drain 50%\r\n");
        assert_eq!(r.admin, Some(Admin::Drain));
        assert_eq!(r.percent, Some(50));
        let r = parse(b"up,ready,maxconn:30 # all fine\n");
        assert_eq!(
            (r.admin, r.down, r.maxconn),
            (Some(Admin::Ready), Some(false), Some(30))
        );
        let r = parse(b"DOWN\tfoo\n");
        assert_eq!(r.down, Some(true));
        assert_eq!(r.unknown, ["foo"]);
        let r = parse(b"75%");
        assert_eq!(r.percent, Some(75));
        assert_eq!(parse(b"\n"), Reply::default());
        assert_eq!(parse(b"maint\nup\n").down, None, "one line only");
    }

    #[test]
    fn words_change_only_what_they_name() {
        let s = parse(b"drain").apply(AgentState::default());
        assert_eq!(s.admin, Admin::Drain);
        assert_eq!(s.percent, 100);
        let s = parse(b"50%").apply(s);
        assert_eq!((s.admin, s.percent), (Admin::Drain, 50));
        let s = parse(b"ready down").apply(s);
        assert_eq!((s.admin, s.down, s.percent), (Admin::Ready, true, 50));
        let s = parse(b"up 100%").apply(s);
        assert_eq!(s, AgentState::default());
        assert_eq!(describe(&s), "ready up 100%");
    }
}
