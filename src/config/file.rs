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
use std::path::Path;
use std::sync::Arc;
use toml::de::{DeTable, DeValue};

/// The tables a file may have at its top.
const SECTIONS: [&str; 4] = ["global", "defaults", "services", "pools"];
/// The longest config file read (a file of 1,000 services is about 100 KiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads and checks the config file at `path`; `flags` are the process-wide flags given
/// beside it (they win over `[global]`).
pub fn load(path: &Path, flags: &Written) -> Result<Config, ConfigError> {
    let shown = printable(&path.display().to_string()).into_owned();
    let fail = |why: String| ConfigError::Usage(format!("cannot read config file {shown}: {why}"));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        return Err(fail("it is a directory".to_string()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES} a config file may have",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let before = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, column) = line_and_column(&before, before.len());
            return Err(ConfigError::At {
                file: shown,
                line,
                column,
                error: Box::new(ConfigError::Usage("the file is not UTF-8 text".to_string())),
            });
        }
    };
    let mut config = parse(&text, &shown, flags)?;
    config.file = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and checks a config file's `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str, flags: &Written) -> Result<Config, ConfigError> {
    let file: Arc<str> = Arc::from(file);
    let lines = LineIndex::new(text);
    let at = |offset: usize| {
        let (line, column) = lines.locate(text, offset);
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
    for (key, value) in document.iter() {
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
                for (child, body) in named.iter() {
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
    for (key, value) in table.iter() {
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
        written.push(opt, Raw::Toml(value.get_ref()), at(value.span().start));
    }
    Ok(written)
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

/// Where each line of a text starts, so that a position is found in O(log n): a file of
/// thousands of services has tens of thousands of keys and values to place.
struct LineIndex {
    /// Byte offsets of every line's first byte.
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// As [`line_and_column`].
    fn locate(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// The line and column (both from 1, the column in characters) of byte `offset` of `text`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut start = offset;
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_lines_and_columns_in_characters() {
        let text = "a = 1\nbé = \"x\"\n\nc";
        for (offset, want) in [
            (0, (1, 1)),
            (4, (1, 5)),
            (6, (2, 1)),
            (9, (2, 3)),
            (8, (2, 2)),
            (17, (4, 1)),
            (99, (4, 2)),
        ] {
            assert_eq!(line_and_column(text, offset), want, "{offset}");
            assert_eq!(LineIndex::new(text).locate(text, offset), want, "{offset}");
        }
    }
}
