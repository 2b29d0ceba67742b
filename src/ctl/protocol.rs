//! The control socket's protocol, shared by the server (the control thread) and the client
//! (`tcplb ctl`): one request line, one answer, then the connection closes.
//!
//! ```text
//! request:  [json] COMMAND [ARGS...]\n        (at most MAX_REQUEST bytes)
//! answer:   ok\n BODY...                     (BODY: text, or one JSON document)
//!           error: MESSAGE\n
//! ```
//!
//! So a plain `socat - UNIX-CONNECT:/run/tcplb/control.sock` works too. The commands
//! (their names are the interface) are [`Command`]'s; [`USAGE`] lists them.

use crate::config::{BackendSpec, printable};
use crate::fleet::backend::{Admin, MAX_WEIGHT};

/// The longest request line.
pub const MAX_REQUEST: usize = 4096;

/// The commands, as `tcplb ctl --help` and an unknown command's error list them.
pub const USAGE: &str = "  show backends [POOL]               every backend (of POOL): state, weight (configured/effective),
                                     active sessions, health checks, agent
  set state POOL BACKEND ready|drain|maint
                                     drain: no new sessions, live ones go on; maint: no new
                                     sessions, no health checks; ready: back
  set weight POOL BACKEND N          weight N (1 to 256) until a reload changes the configured one
  add backend POOL SPEC              add HOST:PORT[,weight=N][,backup][,send-proxy|,send-proxy-v2]
                                     [,agent-port=N] (every address HOST resolves to)
  del backend POOL BACKEND           take it out: no new sessions, live ones drain
  kill sessions POOL BACKEND         cut its live sessions now
  reload                             as SIGHUP, answering with the outcome";

/// The commands in a few words, for an error.
const COMMANDS: &str = "the commands are show backends, set state, set weight, add backend, del backend, \
     kill sessions and reload";

/// What an operator asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    ShowBackends {
        pool: Option<String>,
    },
    SetState {
        pool: String,
        backend: String,
        state: Admin,
    },
    SetWeight {
        pool: String,
        backend: String,
        weight: u32,
    },
    AddBackend {
        pool: String,
        spec: BackendSpec,
    },
    DelBackend {
        pool: String,
        backend: String,
    },
    KillSessions {
        pool: String,
        backend: String,
    },
    Reload,
}

/// Why a command's words are not a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a command, or not its words: the client says how to use it (exit 2).
    Usage(String),
    /// A command with a bad value (a state, a weight, a backend spec): exit 1.
    Value(String),
}

impl ParseError {
    pub fn message(&self) -> &str {
        match self {
            ParseError::Usage(m) | ParseError::Value(m) => m,
        }
    }
}

/// A request: a command, and whether the answer is JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub json: bool,
}

impl Request {
    /// The line sent for it (the words as given).
    pub fn line(words: &[String], json: bool) -> String {
        let mut line = if json {
            "json ".to_string()
        } else {
            String::new()
        };
        line.push_str(&words.join(" "));
        line.push('\n');
        line
    }

    /// Parses a request line (without its line end).
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words: Vec<&str> = line.split_ascii_whitespace().collect();
        let json = words.first() == Some(&"json");
        if json {
            words.remove(0);
        }
        Ok(Request {
            command: Command::parse(&words).map_err(|e| e.message().to_string())?,
            json,
        })
    }
}

impl Command {
    /// Parses a command's words.
    pub fn parse(words: &[&str]) -> Result<Command, ParseError> {
        let usage = |what: &str| ParseError::Usage(format!("usage: {what}"));
        match words {
            ["show", "backends"] => Ok(Command::ShowBackends { pool: None }),
            ["show", "backends", pool] => Ok(Command::ShowBackends {
                pool: Some(pool.to_string()),
            }),
            ["show", ..] => Err(usage("show backends [POOL]")),
            ["set", "state", pool, backend, state] => Ok(Command::SetState {
                pool: pool.to_string(),
                backend: backend.to_string(),
                state: Admin::from_name(state).ok_or_else(|| {
                    ParseError::Value(format!(
                        "state '{}' is not ready, drain or maint",
                        printable(state)
                    ))
                })?,
            }),
            ["set", "state", ..] => Err(usage("set state POOL BACKEND ready|drain|maint")),
            ["set", "weight", pool, backend, weight] => Ok(Command::SetWeight {
                pool: pool.to_string(),
                backend: backend.to_string(),
                weight: crate::config::parse_number(weight, 1, u64::from(MAX_WEIGHT)).ok_or_else(
                    || {
                        ParseError::Value(format!(
                            "weight '{}' is not a whole number from 1 to {MAX_WEIGHT}",
                            printable(weight)
                        ))
                    },
                )? as u32,
            }),
            ["set", "weight", ..] => Err(usage("set weight POOL BACKEND N")),
            ["set", ..] => Err(usage(
                "set state POOL BACKEND ready|drain|maint, or set weight POOL BACKEND N",
            )),
            ["add", "backend", pool, spec] => Ok(Command::AddBackend {
                pool: pool.to_string(),
                spec: BackendSpec::parse(spec).map_err(|e| ParseError::Value(e.to_string()))?,
            }),
            ["add", ..] => Err(usage("add backend POOL HOST:PORT[,weight=N][,backup]...")),
            ["del", "backend", pool, backend] => Ok(Command::DelBackend {
                pool: pool.to_string(),
                backend: backend.to_string(),
            }),
            ["del", ..] => Err(usage("del backend POOL BACKEND")),
            ["kill", "sessions", pool, backend] => Ok(Command::KillSessions {
                pool: pool.to_string(),
                backend: backend.to_string(),
            }),
            ["kill", ..] => Err(usage("kill sessions POOL BACKEND")),
            ["reload"] => Ok(Command::Reload),
            ["reload", ..] => Err(usage("reload")),
            [] => Err(ParseError::Usage(format!("no command; {COMMANDS}"))),
            [other, ..] => Err(ParseError::Usage(format!(
                "unknown command '{}'; {COMMANDS}",
                printable(other)
            ))),
        }
    }

    /// Whether it changes anything (logged at info).
    pub fn changes(&self) -> bool {
        !matches!(self, Command::ShowBackends { .. })
    }
}

/// An answer's first line: `ok`, or `error: MESSAGE` (the message on one line).
pub fn status_line(result: &Result<String, String>) -> String {
    match result {
        Ok(_) => "ok\n".to_string(),
        Err(message) => format!("error: {}\n", message.replace('\n', " ")),
    }
}

/// Splits an answer into its outcome: the body, or the error message.
pub fn parse_answer(answer: &str) -> Result<&str, String> {
    let (first, body) = answer.split_once('\n').unwrap_or((answer, ""));
    match first {
        "ok" => Ok(body),
        _ => Err(first
            .strip_prefix("error: ")
            .unwrap_or(if first.is_empty() {
                "the control socket closed without an answer"
            } else {
                first
            })
            .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_by_their_names() {
        let r = Request::parse("json show backends web").expect("parses");
        assert!(r.json);
        assert_eq!(
            r.command,
            Command::ShowBackends {
                pool: Some("web".into())
            }
        );
        assert_eq!(
            Request::parse("set state web 10.0.0.1:80 drain")
                .expect("parses")
                .command,
            Command::SetState {
                pool: "web".into(),
                backend: "10.0.0.1:80".into(),
                state: Admin::Drain
            }
        );
        assert!(matches!(
            Command::parse(&["add", "backend", "web", "10.0.0.9:80,weight=3"]),
            Ok(Command::AddBackend { spec, .. }) if spec.weight == 3
        ));
        assert_eq!(Command::parse(&["reload"]), Ok(Command::Reload));
        for (words, why) in [
            (
                &["set", "state", "web", "b", "off"][..],
                "'off' is not ready, drain or maint",
            ),
            (&["set", "weight", "web", "b", "0"], "from 1 to 256"),
            (
                &["set", "weight", "web", "b", "x"],
                "'x' is not a whole number",
            ),
            (
                &["set", "weight", "web"],
                "usage: set weight POOL BACKEND N",
            ),
            (&["add", "backend", "web", "nope"], "expected HOST:PORT"),
            (&["frobnicate"], "unknown command 'frobnicate'"),
            (&[], "no command"),
        ] {
            let err = Command::parse(words).expect_err(why);
            assert!(err.message().contains(why), "{words:?}: {err:?}");
        }
    }

    #[test]
    fn answers_frame_their_outcome() {
        let ok: Result<String, String> = Ok("x".into());
        assert_eq!(status_line(&ok), "ok\n");
        assert_eq!(parse_answer("ok\nbody\nmore\n"), Ok("body\nmore\n"));
        let err: Result<String, String> = Err("no pool web\nsecond".into());
        assert_eq!(status_line(&err), "error: no pool web second\n");
        assert_eq!(
            parse_answer("error: no pool web second\n"),
            Err("no pool web second".to_string())
        );
        assert!(parse_answer("").is_err());
    }
}
