//! Backends as the user writes them, on the command line or in a backends file:
//! `HOST:PORT[,weight=N][,backup][,send-proxy|,send-proxy-v2][,maxconn=N][,agent-port=N]`,
//! one per line of the file
//! (`#` comments). Pure parsing;
//! text from the user reaches a message only through [`printable`], so a control character
//! cannot forge or colour a log line.

use crate::config::ConfigError;
use crate::config::units::parse_number;
use crate::proxy_protocol::Version;
use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 256;

/// A backend as the user wrote it: `HOST:PORT[,weight=N][,backup][,send-proxy[-v2]]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// Used only when no primary backend is up.
    pub backup: bool,
    /// A PROXY protocol header goes to it before any client byte.
    pub send_proxy: Option<Version>,
    /// Its agent answers on this port (HAProxy's agent protocol).
    pub agent_port: Option<u16>,
    /// Sessions it takes at once (`maxconn=N`); `None`: no limit of its own.
    pub maxconn: Option<u32>,
    /// The backends file line it came from; `None` for a positional backend.
    pub origin: Option<Origin>,
}

/// Where a backend spec was written: a line of a backends file (the path is shared by every
/// spec of the file, so carrying it costs a reference count).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: Arc<Path>,
    /// Counted from 1.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        write!(f, "{}: line {}", printable(&file), self.line)
    }
}

impl BackendSpec {
    /// Parses one backend spec such as `10.0.0.1:80,weight=2` or `[::1]:5432,backup`.
    pub fn parse(text: &str) -> Result<BackendSpec, ConfigError> {
        let mut parts = text.split(',');
        let addr = parts.next().unwrap_or_default();
        let bad_addr = |why| ConfigError::BadBackend {
            spec: text.to_string(),
            why,
        };
        if let Some(fixed) = options_after_a_colon(text) {
            return Err(bad_addr(format!("options follow a comma: {fixed}")));
        }
        let (host, port) = parse_host_port(addr, false).map_err(bad_addr)?;
        let mut spec = BackendSpec {
            host,
            port,
            weight: 1,
            backup: false,
            send_proxy: None,
            agent_port: None,
            maxconn: None,
            origin: None,
        };
        for option in parts {
            let bad = |why: String| ConfigError::BadBackend {
                spec: text.to_string(),
                why,
            };
            match option.split_once('=') {
                Some(("weight", value)) => {
                    spec.weight = parse_number(value, 1, u64::from(MAX_WEIGHT))
                        .ok_or_else(|| bad(format!("weight '{value}' is not 1..={MAX_WEIGHT}")))?
                        as u32;
                }
                Some(("agent-port", value)) => {
                    spec.agent_port = Some(
                        parse_number(value, 1, 65_535)
                            .ok_or_else(|| bad(format!("agent-port '{value}' is not 1..=65535")))?
                            as u16,
                    );
                }
                Some(("maxconn", value)) => {
                    spec.maxconn = Some(parse_number(value, 1, 1_000_000).ok_or_else(|| {
                        bad(format!(
                            "maxconn '{value}' is not a number from 1 to 1000000"
                        ))
                    })? as u32);
                }
                None if option == "backup" => spec.backup = true,
                None if option == "send-proxy" || option == "send-proxy-v2" => {
                    let version = if option == "send-proxy" {
                        Version::V1
                    } else {
                        Version::V2
                    };
                    if spec.send_proxy.is_some_and(|v| v != version) {
                        return Err(bad(
                            "send-proxy and send-proxy-v2 are exclusive: choose one".to_string(),
                        ));
                    }
                    spec.send_proxy = Some(version);
                }
                _ => return Err(bad(format!("unknown option '{option}'"))),
            }
        }
        Ok(spec)
    }

    /// `host:port`, with brackets around an IPv6 literal: the name used in logs and metrics.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `127.0.0.1:6379:weight=2` (a colon where a comma belongs) written as it was meant
/// (`127.0.0.1:6379,weight=2`), if `text` looks like that.
fn options_after_a_colon(text: &str) -> Option<String> {
    let addr = text.split(',').next().unwrap_or_default();
    let colon = [
        ":weight=",
        ":backup",
        ":send-proxy",
        ":maxconn=",
        ":agent-port=",
    ]
    .iter()
    .filter_map(|option| addr.find(option))
    .min()?;
    let before = &addr[..colon];
    // Only after HOST:PORT: `host:weight=2` lacks a port, which its own message says.
    before
        .contains(':')
        .then(|| format!("{before},{}", &text[colon + 1..]))
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        if self.backup {
            f.write_str(",backup")?;
        }
        if let Some(version) = self.send_proxy {
            write!(f, ",{}", version.option())?;
        }
        if let Some(maxconn) = self.maxconn {
            write!(f, ",maxconn={maxconn}")?;
        }
        if let Some(port) = self.agent_port {
            write!(f, ",agent-port={port}")?;
        }
        Ok(())
    }
}

/// `text` made safe for a log line or an error message: control characters and invisible
/// formatting ones (bidi overrides, zero-width spaces, line separators) are shown as escapes
/// (`\x1b`, `\n`, `\u{202e}`), and a backslash as `\\`, so what is shown is unambiguous.
/// Borrows when there is nothing to escape (the usual case).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\\' => shown.push_str("\\\\"),
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            c if c.is_ascii() && needs_escape(c) => {
                let _ = write!(shown, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(shown, "\\u{{{:x}}}", u32::from(c));
            }
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// Splits `HOST:PORT` or `[IPv6]:PORT`. Port 0 is allowed only where `allow_zero_port`.
/// The error says what is wrong and, for the usual slips (a URL, a port alone, an IPv6
/// address without brackets), what to write instead.
pub fn parse_host_port(text: &str, allow_zero_port: bool) -> Result<(String, u16), String> {
    if let Some((scheme, rest)) = text.split_once("://") {
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or_default();
        return Err(if path.is_empty() {
            format!("expected HOST:PORT, not a URL: drop '{scheme}://'")
        } else {
            format!("expected HOST:PORT, not a URL: drop '{scheme}://' and '{path}'")
        });
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected HOST:PORT, such as 127.0.0.1:{text}"));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| "expected [IPv6]:PORT".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{host}' is not an IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "expected HOST:PORT".to_string())?;
        if host.contains(':') {
            return Err(if host.parse::<std::net::Ipv6Addr>().is_ok() {
                "an IPv6 address needs brackets: [ADDR]:PORT".to_string()
            } else {
                "expected one ':', between HOST and PORT (an IPv6 address goes in brackets: \
                 [ADDR]:PORT)"
                    .to_string()
            });
        }
        if host.is_empty() {
            return Err("the host is empty".to_string());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(format!("'{host}' is not a host name or IP address"));
        }
        (host, port)
    };
    let min = if allow_zero_port { 0 } else { 1 };
    let port = parse_number(port, min, 65_535)
        .ok_or_else(|| format!("port '{port}' is not a number from {min} to 65535"))?;
    Ok((host.to_string(), port as u16))
}
