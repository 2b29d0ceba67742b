//! One check's conversation with a backend, as bytes: what to send once connected, and
//! when the answer says pass or fail. Pure (no sockets: the prober moves the bytes), so
//! every verdict is unit-tested here.
//!
//! - A connect check passes once connected.
//! - `send` (without `expect`) passes once every byte is written.
//! - `expect` (`expect-hex`, `expect-regex`) passes as soon as the answer has it. It fails
//!   when the backend closes, when [`MAX_ANSWER`] bytes have come without it, when the
//!   time runs out, or when the backend pauses after what looks like a whole answer: a text
//!   answer ending in a line end, or for `expect-hex` as many bytes as the pattern (a
//!   Redis replica answers `ROLE` with one complete reply and keeps the connection open; a
//!   check that waited for more would take its whole timeout to fail). The prober gives
//!   such an answer a moment to grow (`prober::SETTLE`: a segment a little behind) first.
//! - `http` sends a GET and judges the status line: a status outside `expect-status` fails
//!   at once (`status 503`); one inside passes, unless an `expect` must be found in the
//!   response too (then as above, the response read to its end).
//! - An agent check reads one line (up to [`agent::MAX_LINE`] bytes, or what came before
//!   the backend closed) and hands it over.
//!
//! A failure says why in a few words, for `/backends`, `tcplb ctl show backends` and the
//! log: `refused`, `timeout`, `expect "master" not found in 58 bytes`, `status 503`.

use crate::config::policy::{Exchange, Expect};
use crate::fleet::agent;
use std::io;
use std::sync::Arc;

/// The most bytes of an answer a check reads.
pub const MAX_ANSWER: usize = 16 * 1024;

/// What a check is after.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// A TCP connect.
    Connect,
    /// An application check.
    Exchange(Arc<Exchange>),
    /// An agent's line.
    Agent,
}

/// How a check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed; the note says how (`ok`, `status 200`).
    Pass(String),
    /// Failed; the note says why.
    Fail(String),
    /// An agent's line, as read.
    Line(Vec<u8>),
}

/// What the conversation needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes to write ([`Conversation::to_send`]).
    Write,
    /// An answer to read.
    Read,
    Done(Verdict),
}

/// One check's bytes, both ways.
#[derive(Debug)]
pub struct Conversation {
    purpose: Purpose,
    request: Vec<u8>,
    sent: usize,
    answer: Vec<u8>,
    /// The HTTP status line has been judged (and passed).
    status: Option<u16>,
}

impl Conversation {
    /// A conversation for `purpose` with a backend at `authority` (`host:port`, the HTTP
    /// check's default `Host`).
    pub fn new(purpose: Purpose, authority: &str) -> Conversation {
        let request = match &purpose {
            Purpose::Exchange(exchange) => match &exchange.http {
                Some(http) => http.request(authority),
                None => exchange.send.clone(),
            },
            Purpose::Connect | Purpose::Agent => Vec::new(),
        };
        Conversation {
            purpose,
            request,
            sent: 0,
            answer: Vec::new(),
            status: None,
        }
    }

    /// Connected: what now.
    pub fn connected(&mut self) -> Step {
        match &self.purpose {
            Purpose::Connect => Step::Done(Verdict::Pass("ok".to_string())),
            Purpose::Agent => Step::Read,
            Purpose::Exchange(_) if !self.request.is_empty() => Step::Write,
            Purpose::Exchange(_) => self.after_sending(),
        }
    }

    /// What is left to write.
    pub fn to_send(&self) -> &[u8] {
        &self.request[self.sent.min(self.request.len())..]
    }

    /// `n` more bytes were written.
    pub fn wrote(&mut self, n: usize) -> Step {
        self.sent += n;
        if self.sent < self.request.len() {
            return Step::Write;
        }
        self.after_sending()
    }

    fn after_sending(&self) -> Step {
        match &self.purpose {
            Purpose::Exchange(exchange) if exchange.expect.is_none() && exchange.http.is_none() => {
                Step::Done(Verdict::Pass("ok: sent".to_string()))
            }
            _ => Step::Read,
        }
    }

    /// Bytes of the answer so far.
    pub fn answer_len(&self) -> usize {
        self.answer.len()
    }

    /// Room left for the answer (0: it is full).
    pub fn room(&self) -> usize {
        let cap = match self.purpose {
            Purpose::Agent => agent::MAX_LINE,
            _ => MAX_ANSWER,
        };
        cap.saturating_sub(self.answer.len())
    }

    /// `bytes` came: a verdict, if they make one.
    pub fn received(&mut self, bytes: &[u8]) -> Option<Verdict> {
        let take = bytes.len().min(self.room());
        self.answer.extend_from_slice(&bytes[..take]);
        match &self.purpose {
            Purpose::Connect => None,
            Purpose::Agent => {
                if self.answer.contains(&b'\n') || self.room() == 0 {
                    return Some(Verdict::Line(std::mem::take(&mut self.answer)));
                }
                None
            }
            Purpose::Exchange(exchange) => {
                let exchange = Arc::clone(exchange);
                if exchange.http.is_some() {
                    if let Some(verdict) = self.judge_status(&exchange) {
                        return Some(verdict);
                    }
                    self.status?;
                }
                match &exchange.expect {
                    Some(expect) if expect.found_in(&self.answer) => {
                        Some(Verdict::Pass(self.passed()))
                    }
                    Some(expect) if self.room() == 0 => Some(self.missing(expect, "")),
                    Some(_) => None,
                    None if self.status.is_some() => Some(Verdict::Pass(self.passed())),
                    None => None,
                }
            }
        }
    }

    /// The HTTP status line, once it is all there: a status outside the range fails.
    fn judge_status(&mut self, exchange: &Exchange) -> Option<Verdict> {
        let http = exchange.http.as_ref()?;
        if self.status.is_some() {
            return None;
        }
        let Some(end) = self.answer.iter().position(|&b| b == b'\n') else {
            return (self.room() == 0)
                .then(|| Verdict::Fail("not an HTTP response (no status line)".to_string()));
        };
        let line = String::from_utf8_lossy(&self.answer[..end]).into_owned();
        let mut words = line.split_ascii_whitespace();
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse::<u16>().ok(),
            _ => None,
        };
        let Some(status) = status.filter(|s| (100..=999).contains(s)) else {
            return Some(Verdict::Fail(format!(
                "not an HTTP response: {}",
                crate::config::printable(line.trim_end())
                    .chars()
                    .take(60)
                    .collect::<String>()
            )));
        };
        if status < http.status.0 || status > http.status.1 {
            return Some(Verdict::Fail(format!("status {status}")));
        }
        self.status = Some(status);
        None
    }

    fn passed(&self) -> String {
        match self.status {
            Some(status) => format!("ok: status {status}"),
            None => "ok".to_string(),
        }
    }

    /// The fail verdict for an expectation not met by the answer so far.
    fn missing(&self, expect: &Expect, how: &str) -> Verdict {
        let status = match self.status {
            Some(status) => format!("status {status}, "),
            None => String::new(),
        };
        Verdict::Fail(format!(
            "{status}expect {} not found in {} bytes{how}",
            expect.describe(),
            self.answer.len()
        ))
    }

    /// The backend has nothing more for now (a read would block): a verdict if what came
    /// looks like a whole answer without what is expected.
    pub fn paused(&self) -> Option<Verdict> {
        let Purpose::Exchange(exchange) = &self.purpose else {
            return None;
        };
        if exchange.http.is_some() {
            return None; // read to the end (`Connection: close`)
        }
        let expect = exchange.expect.as_ref()?;
        let whole = match expect {
            Expect::Bytes { hex: true, .. } => self.answer.len() >= expect.min_len(),
            _ => self.answer.len() >= expect.min_len() && self.answer.ends_with(b"\n"),
        };
        whole.then(|| self.missing(expect, ""))
    }

    /// The backend closed its side.
    pub fn closed(&mut self) -> Verdict {
        match &self.purpose {
            Purpose::Connect => Verdict::Pass("ok".to_string()),
            Purpose::Agent if self.answer.is_empty() => {
                Verdict::Fail("closed without a word".to_string())
            }
            Purpose::Agent => Verdict::Line(std::mem::take(&mut self.answer)),
            Purpose::Exchange(exchange) => {
                if self.answer.is_empty() {
                    return Verdict::Fail("closed without answering".to_string());
                }
                if exchange.http.is_some() && self.status.is_none() {
                    return Verdict::Fail("closed before a whole status line".to_string());
                }
                match &exchange.expect {
                    Some(expect) => self.missing(expect, ""),
                    None => Verdict::Pass(self.passed()),
                }
            }
        }
    }

    /// The time ran out (`connected`: after the connect).
    pub fn timed_out(&self, connected: bool) -> Verdict {
        if !connected {
            return Verdict::Fail("timeout".to_string());
        }
        match &self.purpose {
            Purpose::Exchange(exchange) if !self.answer.is_empty() => match &exchange.expect {
                Some(expect) => self.missing(expect, " (timeout)"),
                None => Verdict::Fail("timeout: no whole status line".to_string()),
            },
            _ => Verdict::Fail("timeout: no answer".to_string()),
        }
    }

    /// A socket error (`connected`: after the connect).
    pub fn failed(&self, error: &io::Error, connected: bool) -> Verdict {
        let what = describe_error(error);
        if connected && !self.answer.is_empty() {
            Verdict::Fail(format!("{what} after {} bytes", self.answer.len()))
        } else {
            Verdict::Fail(what)
        }
    }
}

/// An error in a word or two: `refused`, `timeout`, `reset`, else the OS's text.
pub fn describe_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "refused".to_string(),
        io::ErrorKind::TimedOut => "timeout".to_string(),
        io::ErrorKind::ConnectionReset => "reset".to_string(),
        io::ErrorKind::ConnectionAborted => "aborted".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::HttpCheck;

    fn exchange(send: &[u8], expect: Option<Expect>, http: Option<HttpCheck>) -> Purpose {
        Purpose::Exchange(Arc::new(Exchange {
            send: send.to_vec(),
            expect,
            http,
        }))
    }

    fn text(t: &str) -> Option<Expect> {
        Some(Expect::Bytes {
            bytes: t.as_bytes().to_vec(),
            hex: false,
        })
    }

    fn fail(why: &str) -> Option<Verdict> {
        Some(Verdict::Fail(why.to_string()))
    }

    #[test]
    fn a_connect_check_passes_once_connected() {
        let mut c = Conversation::new(Purpose::Connect, "10.0.0.1:80");
        assert_eq!(c.connected(), Step::Done(Verdict::Pass("ok".into())));
        assert_eq!(c.timed_out(false), Verdict::Fail("timeout".into()));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(c.failed(&refused, false), Verdict::Fail("refused".into()));
    }

    #[test]
    fn redis_role_on_a_primary_and_a_replica() {
        let mut c = Conversation::new(exchange(b"ROLE\r\n", text("master"), None), "r:6379");
        assert_eq!(c.connected(), Step::Write);
        assert_eq!(c.to_send(), b"ROLE\r\n");
        assert_eq!(c.wrote(2), Step::Write);
        assert_eq!(c.to_send(), b"LE\r\n");
        assert_eq!(c.wrote(4), Step::Read);
        // Split across reads: found once it is all there.
        assert_eq!(c.received(b"*3\r\n$6\r\nmas"), None);
        assert_eq!(c.paused(), None, "a pause mid-line is not an answer");
        assert_eq!(c.received(b"ter\r\n"), Some(Verdict::Pass("ok".into())));

        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:14\r\n";
        let mut c = Conversation::new(exchange(b"ROLE\r\n", text("master"), None), "r:6379");
        c.connected();
        c.wrote(6);
        assert_eq!(c.received(replica), None);
        assert_eq!(
            c.paused(),
            Some(Verdict::Fail(format!(
                "expect \"master\" not found in {} bytes",
                replica.len()
            )))
        );
    }

    #[test]
    fn an_answer_that_never_has_it() {
        let mut c = Conversation::new(exchange(b"", text("220"), None), "m:25");
        assert_eq!(c.connected(), Step::Read, "a banner check sends nothing");
        assert_eq!(c.received(b"5"), None);
        assert_eq!(c.paused(), None, "shorter than the pattern and no line end");
        assert_eq!(
            c.timed_out(true),
            Verdict::Fail("expect \"220\" not found in 1 bytes (timeout)".into())
        );
        assert_eq!(
            c.closed(),
            Verdict::Fail("expect \"220\" not found in 1 bytes".into())
        );
        let mut c = Conversation::new(exchange(b"x", text("never"), None), "m:25");
        c.connected();
        c.wrote(1);
        let big = vec![b'a'; MAX_ANSWER + 10];
        assert_eq!(
            c.received(&big),
            fail(&format!("expect \"never\" not found in {MAX_ANSWER} bytes"))
        );
        let mut c = Conversation::new(exchange(b"PING\r\n", None, None), "m:25");
        c.connected();
        assert_eq!(c.wrote(6), Step::Done(Verdict::Pass("ok: sent".into())));
    }

    #[test]
    fn hex_and_regex() {
        let hex = Some(Expect::Bytes {
            bytes: vec![0x2b, 0x4f, 0x4b],
            hex: true,
        });
        let mut c = Conversation::new(exchange(b"\x01", hex, None), "b:1");
        c.connected();
        c.wrote(1);
        assert_eq!(c.received(b"-ER"), None);
        assert_eq!(c.paused(), fail("expect hex 2b4f4b not found in 3 bytes"));
        let regex = Some(Expect::Regex(
            regex::bytes::Regex::new(r"role:(master|primary)").expect("regex"),
        ));
        let mut c = Conversation::new(exchange(b"INFO\r\n", regex, None), "r:6379");
        c.connected();
        c.wrote(6);
        assert_eq!(
            c.received(b"$40\r\n# Replication\r\nrole:primary\r\n"),
            Some(Verdict::Pass("ok".into()))
        );
    }

    #[test]
    fn http_statuses() {
        let http = |expect: Option<Expect>| {
            exchange(
                b"",
                expect,
                Some(HttpCheck {
                    path: "/healthz".into(),
                    host: None,
                    status: (200, 399),
                }),
            )
        };
        let mut c = Conversation::new(http(None), "10.0.0.1:8080");
        assert_eq!(c.connected(), Step::Write);
        assert!(
            c.to_send()
                .starts_with(b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n")
        );
        let n = c.to_send().len();
        assert_eq!(c.wrote(n), Step::Read);
        assert_eq!(c.received(b"HTTP/1.0 50"), None);
        assert_eq!(c.received(b"3 Service Unavailable\r\n"), fail("status 503"));
        let mut c = Conversation::new(http(None), "h:80");
        c.connected();
        assert_eq!(
            c.received(b"HTTP/1.1 204 No Content\r\n"),
            Some(Verdict::Pass("ok: status 204".into()))
        );
        let mut c = Conversation::new(http(text("healthy")), "h:80");
        c.connected();
        assert_eq!(
            c.received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"),
            None
        );
        assert_eq!(c.paused(), None, "an HTTP answer is read to its end");
        assert_eq!(
            c.closed(),
            Verdict::Fail("status 200, expect \"healthy\" not found in 38 bytes".into())
        );
        let mut c = Conversation::new(http(None), "h:80");
        c.connected();
        assert_eq!(
            c.received(b"SSH-2.0-OpenSSH\r\n"),
            fail("not an HTTP response: SSH-2.0-OpenSSH")
        );
        let mut c = Conversation::new(http(None), "h:80");
        c.connected();
        assert_eq!(c.closed(), Verdict::Fail("closed without answering".into()));
    }

    #[test]
    fn an_agent_line() {
        let mut c = Conversation::new(Purpose::Agent, "b:9999");
        assert_eq!(c.connected(), Step::Read);
        assert_eq!(c.received(b"drain "), None);
        assert_eq!(
            c.received(b"50%\nmore"),
            Some(Verdict::Line(b"drain 50%\nmore".to_vec()))
        );
        let mut c = Conversation::new(Purpose::Agent, "b:9999");
        c.connected();
        c.received(b"up");
        assert_eq!(c.closed(), Verdict::Line(b"up".to_vec()));
        let mut c = Conversation::new(Purpose::Agent, "b:9999");
        c.connected();
        assert_eq!(c.closed(), Verdict::Fail("closed without a word".into()));
    }
}
