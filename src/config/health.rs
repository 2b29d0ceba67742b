//! A pool's `health = { ... }` table: an application health check, as written.
//!
//! ```toml
//! health = { interval = "2s", timeout = "1s", rise = 2, fall = 3, send = "ROLE\r\n", expect = "master" }
//! health = { interval = "2s", http = "/healthz", expect-status = "200-399" }
//! ```
//!
//! `send` and `expect` take the escapes `\r \n \t \0 \\ \xNN` (after TOML's own, so in a
//! literal string `'...'` they are written as they are); `send-hex` and `expect-hex` take
//! hex digits. Without `send`, `http` or an `expect` the check stays a TCP connect. Pure
//! parsing: what the table means at run time is `control::check`'s.

use super::policy::{Exchange, Expect, HttpCheck};
use super::table;
use super::units::{SECONDS, parse_duration, parse_number};
use super::{ConfigError, printable};
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeValue;

/// The keys a `health` table may have.
pub const KEYS: [&str; 13] = [
    "interval",
    "timeout",
    "rise",
    "fall",
    "send",
    "send-hex",
    "expect",
    "expect-regex",
    "expect-hex",
    "http",
    "http-host",
    "expect-status",
    "port",
];

/// The most bytes `send` may hold.
pub const MAX_SEND: usize = 4096;

/// A `health` table as written; what it leaves out comes from the pool's other keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthTable {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub port: Option<u16>,
    pub exchange: Option<Arc<Exchange>>,
}

/// Parses a `health` table (`name` is how messages name it).
pub fn parse(name: &str, value: &DeValue) -> Result<HealthTable, ConfigError> {
    let DeValue::Table(items) = value else {
        return Err(usage(format!(
            "{name} must be a table, such as {{ interval = \"2s\", send = \"PING\\r\\n\", \
             expect = \"+PONG\" }}"
        )));
    };
    let mut table = HealthTable::default();
    let (mut send, mut send_hex, mut expect, mut http) = (None, None, None, None);
    let (mut host, mut status) = (None, None);
    for (key, value) in items.iter() {
        let key = key.get_ref().as_ref();
        let value = value.get_ref();
        let shown = format!("{name}.{key}");
        match key {
            "interval" => {
                table.interval = Some(duration(&shown, value, Duration::from_millis(100))?)
            }
            "timeout" => table.timeout = Some(duration(&shown, value, Duration::from_millis(1))?),
            "rise" => table.rise = Some(whole(&shown, value, 1, 1000)? as u32),
            "fall" => table.fall = Some(whole(&shown, value, 1, 1000)? as u32),
            "port" => table.port = Some(whole(&shown, value, 1, 65_535)? as u16),
            "send" => send = Some(unescape(&shown, &text(&shown, value)?)?),
            "send-hex" => send_hex = Some(hex(&shown, &text(&shown, value)?)?),
            "expect" | "expect-hex" | "expect-regex" => {
                if expect.is_some() {
                    return Err(usage(format!(
                        "{name}: give one of expect, expect-hex and expect-regex"
                    )));
                }
                let written = text(&shown, value)?;
                expect = Some(match key {
                    "expect" => Expect::Bytes {
                        bytes: unescape(&shown, &written)?,
                        hex: false,
                    },
                    "expect-hex" => Expect::Bytes {
                        bytes: hex(&shown, &written)?,
                        hex: true,
                    },
                    _ => Expect::Regex(regex::bytes::Regex::new(&written).map_err(|e| {
                        usage(format!(
                            "{shown} '{}' is not a regular expression: {}",
                            printable(&written),
                            first_line(&e.to_string())
                        ))
                    })?),
                });
            }
            "http" => {
                let path = text(&shown, value)?;
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(bad(&shown, &path, "a path such as /healthz"));
                }
                http = Some(path);
            }
            "http-host" => {
                let written = text(&shown, value)?;
                if written.is_empty() || written.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(bad(
                        &shown,
                        &written,
                        "a host name, such as www.example.com",
                    ));
                }
                host = Some(written);
            }
            "expect-status" => {
                let written = scalar(&shown, value)?;
                status = Some(status_range(&written).ok_or_else(|| {
                    bad(&shown, &written, "a status or a range, such as 200-399")
                })?);
            }
            other => {
                let hint = match table::closest(other, KEYS) {
                    Some(meant) => format!(" (did you mean '{meant}'?)"),
                    None => format!(" (the keys are {})", KEYS.join(", ")),
                };
                return Err(usage(format!(
                    "unknown key '{}' in {name}{hint}",
                    printable(other)
                )));
            }
        }
    }
    if send.is_some() && send_hex.is_some() {
        return Err(usage(format!("{name}: give send or send-hex, not both")));
    }
    let send = send.or(send_hex);
    if http.is_some() && send.is_some() {
        return Err(usage(format!(
            "{name}: http sends its own request; give http or send, not both"
        )));
    }
    if http.is_none() {
        for (given, key) in [
            (host.is_some(), "http-host"),
            (status.is_some(), "expect-status"),
        ] {
            if given {
                return Err(usage(format!("{name}.{key} applies to an http check only")));
            }
        }
    }
    if send.as_ref().is_some_and(|s| s.len() > MAX_SEND) {
        return Err(usage(format!("{name}.send is more than {MAX_SEND} bytes")));
    }
    let http = http.map(|path| HttpCheck {
        path,
        host,
        status: status.unwrap_or((200, 399)),
    });
    if send.is_some() || expect.is_some() || http.is_some() {
        table.exchange = Some(Arc::new(Exchange {
            send: send.unwrap_or_default(),
            expect,
            http,
        }));
    }
    Ok(table)
}

/// `200-399` or `200`.
fn status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low = parse_number(low.trim(), 100, 599)? as u16;
    let high = parse_number(high.trim(), 100, 599)? as u16;
    (low <= high).then_some((low, high))
}

/// `\r \n \t \0 \\ \xNN` turned into their bytes.
pub fn unescape(name: &str, text: &str) -> Result<Vec<u8>, ConfigError> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes.get(i + 1).copied();
        let (byte, len) = match escape {
            Some(b'r') => (b'\r', 2),
            Some(b'n') => (b'\n', 2),
            Some(b't') => (b'\t', 2),
            Some(b'0') => (0, 2),
            Some(b'\\') => (b'\\', 2),
            Some(b'x') => {
                let digits = text.get(i + 2..i + 4).unwrap_or_default();
                match u8::from_str_radix(digits, 16) {
                    Ok(b) if digits.len() == 2 => (b, 4),
                    _ => {
                        return Err(bad(
                            name,
                            text,
                            "\\x followed by two hex digits, such as \\x0d",
                        ));
                    }
                }
            }
            _ => {
                return Err(bad(
                    name,
                    text,
                    "text whose escapes are \\r, \\n, \\t, \\0, \\\\ and \\xNN",
                ));
            }
        };
        out.push(byte);
        i += len;
    }
    Ok(out)
}

/// Hex digits (spaces allowed between bytes) as bytes.
fn hex(name: &str, text: &str) -> Result<Vec<u8>, ConfigError> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let expected = "an even number of hex digits, such as 2b504f4e47";
    if digits.is_empty() || digits.len() % 2 != 0 {
        return Err(bad(name, text, expected));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| bad(name, text, expected))
        })
        .collect()
}

fn text(name: &str, value: &DeValue) -> Result<String, ConfigError> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(usage(format!(
            "invalid value {} for {name}: expected a string",
            kind(other)
        ))),
    }
}

fn scalar(name: &str, value: &DeValue) -> Result<String, ConfigError> {
    match value {
        DeValue::Integer(i) => Ok(i.as_str().to_string()),
        _ => text(name, value),
    }
}

fn whole(name: &str, value: &DeValue, min: u64, max: u64) -> Result<u64, ConfigError> {
    let written = scalar(name, value)?;
    parse_number(&written, min, max).ok_or_else(|| {
        bad(
            name,
            &written,
            &format!("a whole number from {min} to {max}"),
        )
    })
}

fn duration(name: &str, value: &DeValue, min: Duration) -> Result<Duration, ConfigError> {
    let written = match value {
        DeValue::Float(f) => f.as_str().to_string(),
        _ => scalar(name, value)?,
    };
    parse_duration(&written, SECONDS)
        .filter(|d| *d >= min && *d <= Duration::from_secs(3600))
        .ok_or_else(|| {
            bad(
                name,
                &written,
                &format!(
                    "a duration from {}ms to 1h, such as 500ms or 2s",
                    min.as_millis()
                ),
            )
        })
}

/// What a TOML value is, for an error about its type.
fn kind(value: &DeValue) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a number",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

fn usage(message: String) -> ConfigError {
    ConfigError::Usage(message)
}

fn bad(name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::BadValue {
        option: name.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<HealthTable, String> {
        let source = format!("health = {text}");
        let doc = toml::de::DeTable::parse(&source).expect("toml");
        let value = doc.get_ref().get("health").expect("health").get_ref();
        parse("health", value).map_err(|e| e.to_string())
    }

    #[test]
    fn a_redis_role_check() {
        let t = table(r#"{ interval = "2s", timeout = "1s", rise = 2, fall = 3, send = "ROLE\r\n", expect = "master" }"#)
            .expect("parses");
        assert_eq!(t.interval, Some(Duration::from_secs(2)));
        assert_eq!(t.timeout, Some(Duration::from_secs(1)));
        assert_eq!((t.rise, t.fall), (Some(2), Some(3)));
        let exchange = t.exchange.expect("an exchange");
        assert_eq!(exchange.send, b"ROLE\r\n");
        let expect = exchange.expect.as_ref().expect("expect");
        assert!(expect.found_in(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"));
        assert!(!expect.found_in(b"*5\r\n$5\r\nslave\r\n"));
        assert_eq!(expect.describe(), "\"master\"");
    }

    #[test]
    fn escapes_hex_and_regex() {
        let t = table(r#"{ send = '\x00\x01PING\r\n', expect-hex = "2b 50 4f" }"#).expect("parses");
        let exchange = t.exchange.expect("exchange");
        assert_eq!(exchange.send, b"\x00\x01PING\r\n");
        let expect = exchange.expect.as_ref().expect("expect");
        assert!(expect.found_in(b"x+POy"));
        assert_eq!(expect.describe(), "hex 2b504f");
        let t =
            table(r#"{ send-hex = "0a0b", expect-regex = '^\+OK|role:master' }"#).expect("regex");
        let exchange = t.exchange.expect("exchange");
        assert_eq!(exchange.send, [10, 11]);
        let expect = exchange.expect.as_ref().expect("expect");
        assert!(expect.found_in(b"# Replication\r\nrole:master\r\n"));
        assert!(!expect.found_in(b"role:slave\r\n"));
    }

    #[test]
    fn an_http_check() {
        let t = table(
            r#"{ http = "/healthz", http-host = "www.example.com", expect-status = "200-299" }"#,
        )
        .expect("parses");
        let http = t.exchange.expect("exchange").http.clone().expect("http");
        assert_eq!(http.status, (200, 299));
        let request = String::from_utf8(http.request("10.0.0.1:80")).expect("text");
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\nHost: www.example.com\r\n"));
        let t = table(r#"{ http = "/", expect-status = 204 }"#).expect("parses");
        assert_eq!(
            t.exchange.expect("x").http.as_ref().expect("http").status,
            (204, 204)
        );
        let plain = table(r#"{ interval = "1s", port = 8081 }"#).expect("parses");
        assert!(plain.exchange.is_none(), "a connect check");
        assert_eq!(plain.port, Some(8081));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, why) in [
            (
                r#"{ expct = "x" }"#,
                "unknown key 'expct' in health (did you mean 'expect'?)",
            ),
            (r#"{ send = "a", send-hex = "00" }"#, "send or send-hex"),
            (r#"{ expect = "a", expect-regex = "b" }"#, "one of expect"),
            (r#"{ http = "/", send = "x" }"#, "give http or send"),
            (
                r#"{ expect-status = "200" }"#,
                "applies to an http check only",
            ),
            (r#"{ http = "healthz" }"#, "a path such as /healthz"),
            (r#"{ expect-regex = "(" }"#, "is not a regular expression"),
            (r#"{ send = '\q' }"#, "escapes are"),
            (r#"{ send = '\x4' }"#, "two hex digits"),
            (r#"{ expect-hex = "abc" }"#, "even number of hex digits"),
            (r#"{ interval = "10ms" }"#, "from 100ms"),
            (r#"{ rise = 0 }"#, "from 1 to 1000"),
            (r#"{ port = 70000 }"#, "from 1 to 65535"),
            (
                r#"{ http = "/", expect-status = "500-200" }"#,
                "a status or a range",
            ),
            (r#""2s""#, "must be a table"),
        ] {
            let err = table(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
