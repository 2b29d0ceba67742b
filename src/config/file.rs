//! The config file (`--config FILE`): TOML with four kinds of table.
//!
//! ```toml
//! [global]           # process-wide: workers, admin, access-log, max-conns, ...
//! [defaults]         # what every service and pool inherits unless it says otherwise
//! [services.NAME]    # listen = [...], pool = "NAME" and/or routes = [...], service settings
//! [pools.NAME]       # backends = [...] or backends-file, balance, checks, ...
//! ```
//!
//! Every key is a setting of the option table ([`super::table`]) whose scope allows it
//! there; a key that is not is an error naming the file, line and column, with the key meant
//! where one is close. Reading the file is the caller's to do off any event loop.

use super::lower::{self, Layers, Location, Written};
use super::spec::printable;
use super::table::{self, Opt};
use super::values::Raw;
use super::{Config, ConfigError, Where};
use std::fs::File;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use toml::de::{DeString, DeTable, DeValue};

/// The tables a file may have at its top.
const SECTIONS: [&str; 4] = ["global", "defaults", "services", "pools"];
/// The longest config file read (a file of 1,000 services is about 100 KiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and checks the config file at `path`; `flags` are the process-wide flags given
/// beside it (they win over `[global]`).
pub fn load(path: &Path, flags: &Written) -> Result<Config, ConfigError> {
    let shown = printable(&path.display().to_string()).into_owned();
    let bytes = read(path)
        .map_err(|why| ConfigError::Usage(format!("cannot read config file {shown}: {why}")))?;
    let mut config = parse_bytes(&bytes, &shown, flags)?;
    config.file = Some(path.to_path_buf());
    Ok(config)
}

/// The bytes of the file at `path`, at most [`MAX_FILE_BYTES`] of them: a file that grows
/// while it is read, a pipe or a device such as `/dev/zero` cannot make it read on.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a directory".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES} a config file may have",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "it has more than the {MAX_FILE_BYTES} bytes a config file may have"
        ));
    }
    Ok(bytes)
}

/// Parses and checks a config file's bytes (UTF-8 text, or an error naming the line and
/// column of the first byte that is not); `file` names it in errors.
pub fn parse_bytes(bytes: &[u8], file: &str, flags: &Written) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, file, flags),
        Err(e) => {
            // The bytes before the bad one are text.
            let before = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let (line, column) = line_and_column(&before, before.len());
            Err(ConfigError::At {
                file: file.to_string(),
                line,
                column,
                error: Box::new(ConfigError::Usage("the file is not UTF-8 text".to_string())),
            })
        }
    }
}

/// Parses and checks a config file's `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str, flags: &Written) -> Result<Config, ConfigError> {
    let file: Arc<str> = Arc::from(file);
    let positions = Positions::new(text);
    let at = |offset: usize| {
        let (line, column) = positions.line_and_column(offset);
        Location::File {
            file: Arc::clone(&file),
            line,
            column,
        }
    };
    let document = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset).wrap(ConfigError::Usage(format!(
            "not valid TOML: {}",
            e.message().trim_end()
        )))
    })?;
    let document = document.get_ref();
    let mut global = Written::at(at(0));
    let mut defaults = Written::at(at(0));
    let mut services: Vec<(String, Written)> = Vec::new();
    let mut pools: Vec<(String, Written)> = Vec::new();
    for (key, value) in in_written_order(document) {
        let name = key.get_ref().as_ref();
        let key_at = at(key.span().start);
        match name {
            "global" => global = settings(value, "[global]", Section::Global, &at)?,
            "defaults" => defaults = settings(value, "[defaults]", Section::Defaults, &at)?,
            "services" | "pools" => {
                let DeValue::Table(named) = value.get_ref() else {
                    return Err(key_at.wrap(ConfigError::Usage(format!(
                        "{name} must be tables: [{name}.NAME]"
                    ))));
                };
                for (child, body) in in_written_order(named) {
                    let child_name = child.get_ref().as_ref();
                    check_name(child_name).map_err(|e| at(child.span().start).wrap(e))?;
                    let title = format!("[{name}.{child_name}]");
                    let (section, list) = if name == "services" {
                        (Section::Service, &mut services)
                    } else {
                        (Section::Pool, &mut pools)
                    };
                    let mut written = settings(body, &title, section, &at)?;
                    written.at = Some(at(child.span().start));
                    list.push((child_name.to_string(), written));
                }
            }
            other => {
                let hint = match table::closest(other, SECTIONS) {
                    Some(meant) => format!(" (did you mean [{meant}]?)"),
                    None if table::find(other).is_some() => {
                        " (settings go in a table: [global], [defaults], [services.NAME] or [pools.NAME])".to_string()
                    }
                    None => String::new(),
                };
                return Err(key_at.wrap(ConfigError::Usage(format!(
                    "unknown table or key '{}' at the top of the file{hint}",
                    printable(other)
                ))));
            }
        }
    }

    let global = lower::global(&Layers::new(vec![flags, &global]))?;
    let mut service_specs = Vec::with_capacity(services.len());
    for (name, written) in &services {
        service_specs.push(
            lower::service(name, &Layers::new(vec![written, &defaults]), true)
                .map_err(|e| placed(e, &at))?,
        );
    }
    let mut pool_specs = Vec::with_capacity(pools.len());
    for (name, written) in &pools {
        pool_specs.push(lower::pool(
            name,
            &Layers::new(vec![written, &defaults]),
            &[],
        )?);
    }
    let config = Config {
        global,
        services: service_specs,
        pools: pool_specs,
        file: None,
    };
    let locations: Vec<Location> = services
        .iter()
        .map(|(_, w)| w.at.clone().unwrap_or_else(|| at(0)))
        .collect();
    config.validate().map_err(|(place, error)| match place {
        Some(Where::Service(i)) => locations[i].wrap(error),
        Some(Where::Route(i, j)) => route_location(&services[i].1, j, &at)
            .unwrap_or_else(|| locations[i].clone())
            .wrap(error),
        None => at(0).wrap(error),
    })?;
    Ok(config)
}

/// Where route `j` of a service's `routes` list is written.
fn route_location(
    written: &Written,
    j: usize,
    at: &impl Fn(usize) -> Location,
) -> Option<Location> {
    match written.raw("routes")? {
        Raw::Toml(DeValue::Array(items)) => items.get(j).map(|item| at(item.span().start)),
        _ => None,
    }
}

/// An error from inside a value (a route of a list) placed where it was written, rather
/// than where the value starts.
fn placed(error: ConfigError, at: &impl Fn(usize) -> Location) -> ConfigError {
    match error {
        ConfigError::Nested { offset, error } => at(offset).wrap(*error),
        ConfigError::At {
            file,
            line,
            column,
            error,
        } => match *error {
            ConfigError::Nested { offset, error } => at(offset).wrap(*error),
            inner => ConfigError::At {
                file,
                line,
                column,
                error: Box::new(inner),
            },
        },
        other => other,
    }
}

/// Which kind of table settings are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Global,
    Defaults,
    Service,
    Pool,
}

impl Section {
    fn allows(self, opt: &Opt) -> bool {
        match self {
            Section::Global => opt.scope.in_global(),
            Section::Defaults => {
                (opt.scope.in_service() || opt.scope.in_pool()) && !Section::per_table(opt)
            }
            Section::Service => opt.scope.in_service(),
            Section::Pool => opt.scope.in_pool(),
        }
    }

    /// Settings that name one service's or pool's own things, never inherited.
    fn per_table(opt: &Opt) -> bool {
        matches!(
            opt.name,
            "listen" | "pool" | "routes" | "backends" | "backends-file"
        )
    }

    /// Where a setting that is not allowed here goes instead.
    fn elsewhere(opt: &Opt) -> &'static str {
        use table::Scope;
        match opt.scope {
            Scope::Global => "[global]",
            Scope::Service | Scope::GlobalAndService => "[services.NAME] (or [defaults])",
            Scope::Pool => "[pools.NAME] (or [defaults])",
            Scope::ServiceAndPool => "[services.NAME], [pools.NAME] or [defaults]",
            Scope::Command => "the command line",
        }
    }
}

/// The settings of one table, each checked to be a known key allowed in it.
fn settings<'a>(
    value: &'a toml::Spanned<DeValue<'a>>,
    title: &str,
    section: Section,
    at: &impl Fn(usize) -> Location,
) -> Result<Written<'a>, ConfigError> {
    let DeValue::Table(table) = value.get_ref() else {
        return Err(
            at(value.span().start).wrap(ConfigError::Usage(format!("{title} must be a table")))
        );
    };
    let mut written = Written::at(at(value.span().start));
    for (key, value) in in_written_order(table) {
        let name = key.get_ref().as_ref();
        let key_at = at(key.span().start);
        let opt = match table::find(name) {
            Some(opt) if section.allows(opt) => opt,
            Some(opt) if section == Section::Defaults && Section::per_table(opt) => {
                return Err(key_at.wrap(ConfigError::Usage(format!(
                    "'{name}' cannot be a default: give each {} its own",
                    if opt.scope.in_service() {
                        "[services.NAME]"
                    } else {
                        "[pools.NAME]"
                    }
                ))));
            }
            Some(opt) if opt.scope != table::Scope::Command => {
                return Err(key_at.wrap(ConfigError::Usage(format!(
                    "'{name}' is not a setting of {title}: it goes in {}",
                    Section::elsewhere(opt)
                ))));
            }
            _ => {
                let allowed = table::OPTIONS
                    .iter()
                    .filter(|o| section.allows(o))
                    .map(|o| o.name);
                let hint = match table::closest(name, allowed) {
                    Some(meant) => format!(" (did you mean '{meant}'?)"),
                    None => String::new(),
                };
                return Err(key_at.wrap(ConfigError::Usage(format!(
                    "unknown key '{}' in {title}{hint}",
                    printable(name)
                ))));
            }
        };
        let value_at = at(value.span().start);
        if let table::Kind::Group(keys) = opt.kind {
            expand_group(opt, keys, value, &mut written, at)?;
            continue;
        }
        if written.contains(opt.name) {
            return Err(key_at.wrap(given_twice(opt.name)));
        }
        written.push(opt, Raw::Toml(value.get_ref()), value_at);
    }
    Ok(written)
}

/// `queue = { size = 100, timeout = "2s" }`: each key of the inline table is the setting
/// `queue-size`, `queue-timeout`.
fn expand_group<'a>(
    opt: &'static Opt,
    keys: &[&str],
    value: &'a toml::Spanned<DeValue<'a>>,
    written: &mut Written<'a>,
    at: &impl Fn(usize) -> Location,
) -> Result<(), ConfigError> {
    let listed = keys.join(", ");
    let DeValue::Table(table) = value.get_ref() else {
        return Err(at(value.span().start).wrap(ConfigError::Usage(format!(
            "{} must be a table such as {{ {} }}",
            opt.name,
            keys.iter()
                .map(|k| format!("{k} = ..."))
                .collect::<Vec<_>>()
                .join(", ")
        ))));
    };
    for (key, inner) in table.iter() {
        let name = key.get_ref().as_ref();
        let key_at = at(key.span().start);
        let full = format!("{}-{name}", opt.name);
        let sub = match table::find(&full) {
            Some(sub) if keys.contains(&name) => sub,
            _ => {
                return Err(key_at.wrap(ConfigError::Usage(format!(
                    "unknown key '{}' in {} (it takes {listed})",
                    printable(name),
                    opt.name
                ))));
            }
        };
        if written.contains(sub.name) {
            return Err(key_at.wrap(given_twice(sub.name)));
        }
        written.push(sub, Raw::Toml(inner.get_ref()), at(inner.span().start));
    }
    Ok(())
}

/// `queue-size = 1` beside `queue = { size = 2 }`.
fn given_twice(name: &str) -> ConfigError {
    let (group, key) = name.rsplit_once('-').unwrap_or((name, ""));
    ConfigError::Usage(format!(
        "'{name}' is given twice (as {name} and as {group} = {{ {key} = ... }}): give it once"
    ))
}

/// The entries of `table` in the order the file writes them (the parser keeps them sorted
/// by name): services and pools run in that order, and of two mistakes the first is told.
fn in_written_order<'t, 'a>(
    table: &'t DeTable<'a>,
) -> Vec<(
    &'t toml::Spanned<DeString<'a>>,
    &'t toml::Spanned<DeValue<'a>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// Names of services and pools: letters, digits, `-`, `_` and `.`, as metric labels and log
/// lines can show them plainly.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Usage(format!(
            "'{}' is not a name: use up to 64 letters, digits, '-', '_' and '.'",
            printable(name)
        )))
    }
}

/// The line and column (both from 1, the column in characters) of byte `offset` of `text`
/// (an offset inside a character is that character's; one past the end, the end's).
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    Positions::new(text).line_and_column(offset)
}

/// Bytes of text a count of characters is kept for, in [`Positions`].
const BLOCK: usize = 4096;

/// Lines and columns of byte offsets of one text, each found without reading the text from
/// its start: a file of many thousand keys makes a location for each, and counting from the
/// start every time took minutes for 30,000 services.
pub struct Positions<'t> {
    text: &'t str,
    /// Where each line starts.
    line_starts: Vec<usize>,
    /// Characters before byte `i * BLOCK`, for `i` in `0..=len / BLOCK`.
    chars_before: Vec<usize>,
}

impl<'t> Positions<'t> {
    pub fn new(text: &'t str) -> Positions<'t> {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        line_starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut chars_before = Vec::with_capacity(bytes.len() / BLOCK + 1);
        let mut chars = 0;
        chars_before.push(0);
        for block in bytes.chunks_exact(BLOCK) {
            chars += starts_of_chars(block);
            chars_before.push(chars);
        }
        Positions {
            text,
            line_starts,
            chars_before,
        }
    }

    /// Line and column of byte `offset`, as [`line_and_column`] says.
    pub fn line_and_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // Line starts at or before `offset`: at least the first, at 0.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        // A line is short but for a rare one of many inline tables: count it, or look its
        // characters up by blocks.
        let chars = if offset - start <= BLOCK {
            starts_of_chars(&self.text.as_bytes()[start..offset])
        } else {
            self.chars_to(offset) - self.chars_to(start)
        };
        (line, chars + 1)
    }

    /// Characters in the text before byte `offset` (a character boundary).
    fn chars_to(&self, offset: usize) -> usize {
        let block = offset / BLOCK;
        self.chars_before[block] + starts_of_chars(&self.text.as_bytes()[block * BLOCK..offset])
    }
}

/// Characters that start in `bytes` (UTF-8 continuation bytes are `0b10xx_xxxx`).
fn starts_of_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count()
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
