//! One setting's value, as written (a flag's text, or a TOML value from a file) and as
//! parsed by the kind the option table gives it. Flags and file keys go through the same
//! parser, so `3s` means the same in both and the error names the same range.

use super::protection::{Cidr, Priority, Rate, parse_class};
use super::spec::{BackendSpec, parse_host_port};
use super::table::{BareUnit, Kind, Opt};
use super::units::{
    MILLISECONDS, SECONDS, parse_duration, parse_number, parse_size, show_duration,
};
use super::{ConfigError, MAX_WORKERS, describe};
use std::path::PathBuf;
use std::time::Duration;
use toml::de::{DeInteger, DeValue};

/// A value as written, before it is parsed.
#[derive(Clone, Copy, Debug)]
pub enum Raw<'a> {
    /// A flag's text (empty for a switch that was given).
    Text(&'a str),
    /// The positional arguments (backends).
    Texts(&'a [String]),
    /// A value from a config file.
    Toml(&'a DeValue<'a>),
}

/// A parsed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Switch(bool),
    Whole(u64),
    Size(u64),
    Duration(Duration),
    Address((String, u16)),
    Addresses(Vec<(String, u16)>),
    Path(PathBuf),
    Name(String),
    Choice(&'static str),
    /// `None` = `auto`.
    Workers(Option<usize>),
    /// Hundredths (125 = 1.25).
    Factor(u32),
    Backends(Vec<BackendSpec>),
    Health(super::health::HealthTable),
    /// Permission bits.
    Mode(u32),
    /// A user or group, as written.
    Account(String),
    Rate(Rate),
    Priority(Priority),
    Routes(Vec<super::routes::RouteSpec>),
}

/// Parses `raw` as `opt` says; `name` is how a message names it (`--retries` on the
/// command line, `retries` in a file).
pub fn parse(opt: &Opt, name: &str, raw: Raw) -> Result<Value, ConfigError> {
    let name = name.to_string();
    match opt.kind {
        Kind::Switch => match raw {
            Raw::Text(_) => Ok(Value::Switch(true)),
            Raw::Toml(DeValue::Boolean(b)) => Ok(Value::Switch(*b)),
            other => Err(bad(&name, other, "true or false")),
        },
        Kind::Whole { min, max } => {
            let text = scalar(&name, raw, || range_words(min, max))?;
            parse_number(&text, min, max)
                .map(Value::Whole)
                .ok_or_else(|| bad_text(&name, &text, &range_words(min, max)))
        }
        Kind::Prime { max } => {
            let expected = || {
                format!(
                    "a prime number from 2 to {max}, such as {} (the default) or 655373",
                    super::policy::DEFAULT_TABLE_SIZE
                )
            };
            let text = scalar(&name, raw, expected)?;
            parse_number(&text, 2, max)
                .filter(|&n| super::policy::is_prime(n))
                .map(Value::Whole)
                .ok_or_else(|| bad_text(&name, &text, &expected()))
        }
        Kind::Size { min, max } => {
            let text = scalar(&name, raw, || size_words(min, max))?;
            parse_size(&text)
                .map(|n| n as u64)
                .filter(|n| (min..=max).contains(n))
                .map(Value::Size)
                .ok_or_else(|| bad_text(&name, &text, &size_words(min, max)))
        }
        Kind::Duration { bare, min, max } => {
            let words = || duration_words(bare, min, max);
            let text = scalar(&name, raw, words)?;
            let unit = match bare {
                BareUnit::Seconds => SECONDS,
                BareUnit::Milliseconds => MILLISECONDS,
            };
            let range = Duration::from_nanos(min)..=Duration::from_nanos(max);
            parse_duration(&text, unit)
                .filter(|d| range.contains(d))
                .map(Value::Duration)
                .ok_or_else(|| bad_text(&name, &text, &words()))
        }
        Kind::Address => {
            let text = string(&name, raw, "HOST:PORT")?;
            address(&name, &text).map(Value::Address)
        }
        Kind::Addresses => {
            let texts = strings(&name, raw, "HOST:PORT or a list of them")?;
            if texts.is_empty() {
                return Err(ConfigError::Usage(format!(
                    "{name} is empty: give at least one HOST:PORT"
                )));
            }
            let addrs = texts
                .iter()
                .map(|t| address(&name, t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Addresses(addrs))
        }
        Kind::Path => {
            let text = string(&name, raw, "a path")?;
            if text.is_empty() {
                return Err(bad_text(&name, &text, "a path"));
            }
            Ok(Value::Path(PathBuf::from(text)))
        }
        Kind::PoolName => {
            let text = string(&name, raw, "the name of a pool")?;
            if text.is_empty() {
                return Err(bad_text(&name, &text, "the name of a pool"));
            }
            Ok(Value::Name(text))
        }
        Kind::Choice(words) => {
            let expected = format!("one of {}", words.join(", "));
            let text = string(&name, raw, &expected)?;
            words
                .iter()
                .find(|w| **w == text)
                .map(|w| Value::Choice(w))
                .ok_or_else(|| bad_text(&name, &text, &expected))
        }
        Kind::Workers => {
            let expected = format!("auto or a whole number from 1 to {MAX_WORKERS}");
            let text = scalar(&name, raw, || expected.clone())?;
            if text == "auto" {
                return Ok(Value::Workers(None));
            }
            parse_number(&text, 1, MAX_WORKERS as u64)
                .map(|n| Value::Workers(Some(n as usize)))
                .ok_or_else(|| bad_text(&name, &text, &expected))
        }
        Kind::Factor => {
            let expected = "a number from 1 to 100 with at most two decimals, such as 1.25";
            let text = scalar(&name, raw, || expected.to_string())?;
            parse_factor(&text)
                .map(Value::Factor)
                .ok_or_else(|| bad_text(&name, &text, expected))
        }
        Kind::Health => match raw {
            Raw::Toml(value) => super::health::parse(&name, value).map(Value::Health),
            _ => Err(ConfigError::Usage(format!(
                "{name} is written in a config file"
            ))),
        },
        Kind::Mode => {
            let expected = "permission bits in octal, from 0600 to 0666, such as 0660";
            let text = scalar(&name, raw, || expected.to_string())?;
            u32::from_str_radix(&text, 8)
                .ok()
                .filter(|m| m & 0o600 == 0o600 && m & !0o666 == 0 && text.len() <= 4)
                .map(Value::Mode)
                .ok_or_else(|| bad_text(&name, &text, expected))
        }
        Kind::Account => {
            let expected = "a group name or number";
            let text = scalar(&name, raw, || expected.to_string())?;
            let ok = !text.is_empty()
                && text.len() <= 32
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if ok {
                Ok(Value::Account(text))
            } else {
                Err(bad_text(&name, &text, expected))
            }
        }
        Kind::Routes => match raw {
            Raw::Toml(value) => super::routes::parse(&name, value).map(Value::Routes),
            _ => Err(ConfigError::Usage(format!(
                "{name} is written in a config file only"
            ))),
        },
        Kind::Backends => {
            let texts = strings(&name, raw, "a list of BACKEND specs")?;
            let specs = texts
                .iter()
                .map(|t| BackendSpec::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Backends(specs))
        }
        Kind::Rate => {
            let expected = "a rate such as 50/s, 600/m or 1000/h (1 to 1000000 per unit)";
            let text = string(&name, raw, expected)?;
            Rate::parse(&text)
                .map(Value::Rate)
                .ok_or_else(|| bad_text(&name, &text, expected))
        }
        Kind::Priority => priority(&name, raw).map(Value::Priority),
        Kind::Group(_) => Err(ConfigError::Usage(format!(
            "{name} is a table of settings, not a value"
        ))),
    }
}

/// A `priority` list: `CIDR=CLASS,...` as text, or TOML `[{ source = CIDR, class = CLASS }]`
/// (an item may also be the text `CIDR=CLASS`).
fn priority(name: &str, raw: Raw) -> Result<Priority, ConfigError> {
    const EXPECTED: &str = "a list of { source = \"CIDR\", class = \"high|normal|low\" }";
    let usage = |why: String| ConfigError::Usage(format!("{name}: {why}"));
    let items = match raw {
        Raw::Text(text) => return Priority::parse_flag(text).map_err(usage),
        Raw::Toml(DeValue::String(text)) => return Priority::parse_flag(text).map_err(usage),
        Raw::Toml(DeValue::Array(items)) => items,
        other => return Err(bad(name, other, EXPECTED)),
    };
    let mut rules = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(text) => rules.extend(Priority::parse_flag(text).map_err(usage)?.rules),
            DeValue::Table(table) => {
                let (mut source, mut class) = (None, None);
                for (key, value) in table.iter() {
                    let DeValue::String(text) = value.get_ref() else {
                        return Err(bad(name, Raw::Toml(value.get_ref()), "a string"));
                    };
                    match key.get_ref().as_ref() {
                        "source" => source = Some(Cidr::parse(text).map_err(usage)?),
                        "class" => class = Some(parse_class(text).map_err(usage)?),
                        other => {
                            return Err(usage(format!(
                                "unknown key '{}' in a rule (a rule has source and class)",
                                super::spec::printable(other)
                            )));
                        }
                    }
                }
                match (source, class) {
                    (Some(source), Some(class)) => rules.push((source, class)),
                    _ => return Err(usage("a rule needs both source and class".to_string())),
                }
            }
            other => return Err(bad(name, Raw::Toml(other), EXPECTED)),
        }
    }
    Ok(Priority { rules })
}

/// `1.25` as 125 (hundredths), from 1 to 100 with at most two decimals.
pub fn parse_factor(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 3 || fraction.len() > 2 || !digits(whole) {
        return None;
    }
    if !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    let hundredths: u32 =
        whole.parse::<u32>().ok()? * 100 + format!("{fraction:0<2}").parse::<u32>().ok()?;
    (100..=10_000).contains(&hundredths).then_some(hundredths)
}

fn address(name: &str, text: &str) -> Result<(String, u16), ConfigError> {
    parse_host_port(text, true).map_err(|why| ConfigError::BadAddress {
        option: name.to_string(),
        value: text.to_string(),
        why,
    })
}

/// A number or a string, as text: TOML `3` and `"3"` are the same to a number, and
/// `"250ms"` is how a duration is written.
fn scalar(name: &str, raw: Raw, expected: impl Fn() -> String) -> Result<String, ConfigError> {
    match raw {
        Raw::Text(t) => Ok(t.to_string()),
        Raw::Toml(DeValue::String(s)) => Ok(s.to_string()),
        Raw::Toml(DeValue::Integer(i)) => Ok(integer(i)),
        Raw::Toml(DeValue::Float(f)) => Ok(f.as_str().to_string()),
        other => Err(bad(name, other, &expected())),
    }
}

/// A TOML integer in decimal: `0x10` is 16 (its digits alone, `10`, would read as ten).
fn integer(i: &DeInteger) -> String {
    match i64::from_str_radix(i.as_str(), i.radix()) {
        Ok(n) => n.to_string(),
        Err(_) => i.to_string(),
    }
}

fn string(name: &str, raw: Raw, expected: &str) -> Result<String, ConfigError> {
    match raw {
        Raw::Text(t) => Ok(t.to_string()),
        Raw::Toml(DeValue::String(s)) => Ok(s.to_string()),
        other => Err(bad(name, other, expected)),
    }
}

/// A list of strings (one string is a list of one).
fn strings(name: &str, raw: Raw, expected: &str) -> Result<Vec<String>, ConfigError> {
    match raw {
        Raw::Text(t) => Ok(vec![t.to_string()]),
        Raw::Texts(ts) => Ok(ts.to_vec()),
        Raw::Toml(DeValue::String(s)) => Ok(vec![s.to_string()]),
        Raw::Toml(DeValue::Array(items)) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                other => Err(bad(name, Raw::Toml(other), expected)),
            })
            .collect(),
        other => Err(bad(name, other, expected)),
    }
}

fn bad(name: &str, raw: Raw, expected: &str) -> ConfigError {
    let value = match raw {
        Raw::Text(t) => t.to_string(),
        Raw::Texts(ts) => ts.join(" "),
        Raw::Toml(DeValue::String(s)) => s.to_string(),
        Raw::Toml(v) => {
            return ConfigError::Usage(format!(
                "invalid value {} for {name}: expected {expected}",
                describe(v)
            ));
        }
    };
    bad_text(name, &value, expected)
}

fn bad_text(name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::BadValue {
        option: name.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn range_words(min: u64, max: u64) -> String {
    format!("a whole number from {min} to {max}")
}

fn size_words(min: u64, max: u64) -> String {
    let show = |n: u64| {
        if n >= 1 << 20 && n % (1 << 20) == 0 {
            format!("{}m", n >> 20)
        } else if n >= 1024 && n % 1024 == 0 {
            format!("{}k", n >> 10)
        } else {
            n.to_string()
        }
    };
    format!("a size from {} to {}", show(min), show(max))
}

fn duration_words(bare: BareUnit, min: u64, max: u64) -> String {
    format!(
        "a duration from {} to {}, such as 250ms, 3s, 1.5s or 2m; a bare number is {}",
        show_duration(min),
        show_duration(max),
        match bare {
            BareUnit::Milliseconds => "milliseconds",
            BareUnit::Seconds => "seconds",
        }
    )
}
