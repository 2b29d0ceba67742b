//! `tcplb ctl [--socket PATH] [--json] COMMAND`: the client, in the same binary. It checks
//! the command first (a mistake is one line on stderr and exit 2, before any connection),
//! connects to the control socket, sends the line, prints the answer's body on stdout and
//! exits 0; an error the server answers (an unknown pool or backend, a bad value, a reload
//! that failed) is printed as one line on stderr with exit 1, and so is a socket it cannot
//! reach (not there, or not this user's: the socket is owner-only unless widened).

use crate::ctl::protocol::{self, Request, USAGE};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the socket is looked for without `--socket`: `$TCPLB_CONTROL_SOCKET`, else this.
pub const DEFAULT_SOCKET: &str = "/run/tcplb/control.sock";
/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "TCPLB_CONTROL_SOCKET";
/// How long the client waits for an answer (a reload resolving many names can take a while).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// `tcplb ctl --help`.
pub fn usage() -> String {
    format!(
        "Usage: tcplb ctl [--socket PATH] [--json] COMMAND\n\n\
         Steers a running tcplb through its control socket (control-socket in [global], or\n\
         --control-socket). Every change applies to every worker at once, is logged, and\n\
         is answered with the new state; an unknown pool or backend, or a bad value, is an\n\
         error (exit 1).\n\n\
         Options:\n  \
           --socket PATH   the control socket (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})\n  \
           --json          answer in JSON\n  \
           -h, --help      print this help\n\n\
         Commands (BACKEND is its address, HOST:PORT, or the name it was given):\n\
         {USAGE}\n\n\
         Runtime state (drain, maint, weights, added and deleted backends) outlives a reload\n\
         and is handed to the new process of an upgrade (SIGUSR2); a restart forgets it.\n\n\
         Examples:\n  \
           tcplb ctl show backends\n  \
           tcplb ctl set state web 10.0.0.11:80 drain\n  \
           tcplb ctl --json show backends web\n"
    )
}

/// Runs `tcplb ctl` with `args` (after `ctl`).
pub fn run(args: &[String]) -> ExitCode {
    let mut socket: Option<PathBuf> = None;
    let mut json = false;
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "-h" | "--help" if words.is_empty() => return print(&usage()),
            "--json" if words.is_empty() => json = true,
            "--socket" if words.is_empty() => {
                i += 1;
                match args.get(i) {
                    Some(path) if !path.is_empty() => socket = Some(PathBuf::from(path)),
                    _ => return usage_error("--socket needs a PATH"),
                }
            }
            s if words.is_empty() && s.starts_with("--socket=") => {
                socket = Some(PathBuf::from(&s["--socket=".len()..]));
            }
            s if words.is_empty() && s.starts_with('-') => {
                return usage_error(&format!("unknown option '{}'", crate::config::printable(s)));
            }
            _ => words.push(arg.clone()),
        }
        i += 1;
    }
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    match protocol::Command::parse(&refs) {
        Ok(_) => {}
        Err(protocol::ParseError::Usage(e)) => return usage_error(&e),
        Err(protocol::ParseError::Value(e)) => return fail(&e),
    }
    let line = Request::line(&words, json);
    if line.len() > protocol::MAX_REQUEST {
        return usage_error("the command is too long");
    }
    let socket = socket
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    match ask(&socket, &line) {
        Ok(answer) => match protocol::parse_answer(&answer) {
            Ok(body) => print(body),
            Err(message) => fail(&message),
        },
        Err(message) => fail(&message),
    }
}

/// Sends `line` and reads the whole answer.
fn ask(socket: &std::path::Path, line: &str) -> Result<String, String> {
    let shown = crate::config::printable(&socket.display().to_string()).into_owned();
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (the control socket is for its owner: run as that user, or widen it with \
                 control-socket-mode and control-socket-group)"
            }
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is tcplb running with control-socket set? --socket PATH names another)"
            }
            _ => "",
        };
        format!("cannot connect to {shown}: {e}{hint}")
    })?;
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot send to {shown}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer from {shown}: {e}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn print(text: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("tcplb ctl: {message}");
    ExitCode::from(1)
}

fn usage_error(message: &str) -> ExitCode {
    let first = message.lines().next().unwrap_or_default();
    eprintln!("tcplb ctl: {first} (try 'tcplb ctl --help')");
    ExitCode::from(2)
}
