//! A service's `routes`: which pool a TLS client goes to, by the server name (SNI) and the
//! application protocols (ALPN) of its ClientHello, as written in a config file:
//!
//! ```toml
//! routes = [
//!   { sni = "api.example.com", pool = "api" },
//!   { sni = "*.example.com", pool = "web" },          # one label deep, as in a certificate
//!   { sni = "grpc.example.com", alpn = "h2", pool = "grpc" },
//!   { alpn = "acme-tls/1", pool = "acme" },           # any name, this protocol offered
//! ]
//! ```
//!
//! Parsed and checked here, pure: names lower-cased (matching ignores case), a wildcard only
//! as a leading `*.` over a name of at least one label, ALPN protocol ids of 1 to 255
//! visible ASCII bytes, a route naming `sni`, `alpn` or both, and no route the same as an
//! earlier one (it could never match). Whether each route's pool exists is for
//! [`super::Config::validate`], which knows the pools.

use super::table;
use super::{ConfigError, describe};
use toml::de::DeValue;

/// One route as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// The server name, lower-case: `api.example.com`, or `*.example.com` for any name one
    /// label below `example.com`; `None`: any name, or none.
    pub sni: Option<String>,
    /// An application protocol the client must offer (`h2`); `None`: any, or none.
    pub alpn: Option<String>,
    pub pool: String,
}

impl RouteSpec {
    /// `sni=api.example.com alpn=h2`, as messages show a route.
    pub fn describe(&self) -> String {
        match (&self.sni, &self.alpn) {
            (Some(sni), Some(alpn)) => format!("sni {sni}, alpn {alpn}"),
            (Some(sni), None) => format!("sni {sni}"),
            (None, Some(alpn)) => format!("alpn {alpn}"),
            (None, None) => "any".to_string(),
        }
    }
}

/// A service's routes and the settings that go with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingSpec {
    /// In the order written.
    pub routes: Vec<RouteSpec>,
    /// The ClientHello must be complete this long after the client (or its PROXY header)
    /// arrived.
    pub sni_timeout: std::time::Duration,
    /// The most bytes a ClientHello may take on the wire.
    pub max_hello: usize,
}

/// The keys a route takes.
const KEYS: [&str; 3] = ["sni", "alpn", "pool"];

/// A route's error inside the list: at the route's own position in the file (`offset`, a
/// byte offset the file's reader turns into a line and column).
fn at(offset: usize, error: ConfigError) -> ConfigError {
    ConfigError::Nested {
        offset,
        error: Box::new(error),
    }
}

/// Parses `routes = [...]` (`name` as a message shows the key).
pub fn parse(name: &str, value: &DeValue) -> Result<Vec<RouteSpec>, ConfigError> {
    let expected = "a list of routes such as [{ sni = \"api.example.com\", pool = \"api\" }]";
    let DeValue::Array(items) = value else {
        return Err(ConfigError::Usage(format!(
            "invalid value {} for {name}: expected {expected}",
            describe(value)
        )));
    };
    if items.is_empty() {
        return Err(ConfigError::Usage(format!(
            "{name} is empty: give at least one route, or leave {name} out"
        )));
    }
    let mut routes: Vec<RouteSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let offset = item.span().start;
        // (An error that names its own place in the route keeps it.)
        let route = route(i + 1, item.get_ref()).map_err(|e| match e {
            nested @ ConfigError::Nested { .. } => nested,
            e => at(offset, e),
        })?;
        if let Some(j) = routes
            .iter()
            .position(|r| r.sni == route.sni && r.alpn == route.alpn)
        {
            return Err(at(
                offset,
                ConfigError::Usage(format!(
                    "route {} ({}) can never match: route {} has the same sni and alpn",
                    i + 1,
                    route.describe(),
                    j + 1
                )),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// Route number `n` (from 1).
fn route(n: usize, value: &DeValue) -> Result<RouteSpec, ConfigError> {
    let DeValue::Table(table) = value else {
        return Err(ConfigError::Usage(format!(
            "route {n} is {}: write each route as a table, {{ sni = \"NAME\", pool = \"POOL\" }}",
            describe(value)
        )));
    };
    let mut route = RouteSpec {
        sni: None,
        alpn: None,
        pool: String::new(),
    };
    for (key, value) in table.iter() {
        let key_name = key.get_ref().as_ref();
        let field = |expected: &str| -> Result<String, ConfigError> {
            match value.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                other => Err(ConfigError::Usage(format!(
                    "route {n}: invalid value {} for {key_name}: expected {expected}",
                    describe(other)
                ))),
            }
        };
        let check = |result: Result<String, String>| {
            result.map_err(|why| {
                at(
                    value.span().start,
                    ConfigError::Usage(format!("route {n}: {why}")),
                )
            })
        };
        match key_name {
            "sni" => route.sni = Some(check(sni_pattern(&field("a server name")?))?),
            "alpn" => route.alpn = Some(check(alpn_id(&field("a protocol id")?))?),
            "pool" => {
                let pool = field("the name of a pool")?;
                if pool.is_empty() {
                    return Err(ConfigError::Usage(format!(
                        "route {n}: pool is empty: give the name of a pool"
                    )));
                }
                route.pool = pool;
            }
            other => {
                let hint = match table::closest(other, KEYS) {
                    Some(meant) => format!(" (did you mean '{meant}'?)"),
                    None => " (a route has sni, alpn and pool)".to_string(),
                };
                return Err(at(
                    key.span().start,
                    ConfigError::Usage(format!(
                        "route {n}: unknown key '{}'{hint}",
                        super::printable(other)
                    )),
                ));
            }
        }
    }
    if route.pool.is_empty() {
        return Err(ConfigError::Usage(format!(
            "route {n} has no pool: give it pool = \"NAME\""
        )));
    }
    if route.sni.is_none() && route.alpn.is_none() {
        return Err(ConfigError::Usage(format!(
            "route {n} matches every client: give it sni, alpn or both (the service's own \
             pool takes the clients no route matches)"
        )));
    }
    Ok(route)
}

/// A server name or `*.DOMAIN`, lower-cased; the error says what is wrong with it.
pub fn sni_pattern(text: &str) -> Result<String, String> {
    let name = text.to_ascii_lowercase();
    let shown = super::printable(text);
    let domain = match name.strip_prefix("*.") {
        Some(domain) => domain,
        None if name.contains('*') => {
            return Err(format!(
                "sni '{shown}': a wildcard is '*.' before a domain, such as '*.example.com' (one \
                 label deep, as in a certificate)"
            ));
        }
        None => &name,
    };
    if domain.is_empty() {
        return Err(format!("sni '{shown}' is empty"));
    }
    if domain.len() > crate::tls_hello::MAX_NAME {
        return Err(format!(
            "sni '{shown}' is longer than the {} bytes a server name may have",
            crate::tls_hello::MAX_NAME
        ));
    }
    if domain.ends_with('.') {
        return Err(format!(
            "sni '{shown}': write it without the trailing dot (a client's trailing dot is \
             ignored too)"
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(format!("sni '{shown}' has an empty label"));
        }
        if label.contains('*') {
            return Err(format!(
                "sni '{shown}': a wildcard stands for one whole label, the first: '*.' before \
                 a domain"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "sni '{shown}' is not a host name: letters, digits, '-' and '_' in labels \
                 between dots (an internationalised name in its xn-- form)"
            ));
        }
    }
    Ok(name)
}

/// An ALPN protocol id (`h2`, `http/1.1`, `acme-tls/1`): 1 to 255 visible ASCII bytes,
/// compared exactly.
pub fn alpn_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "alpn '{}' is not a protocol id: 1 to 255 visible ASCII characters, such as h2 or \
             http/1.1",
            super::printable(text)
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Result<Vec<RouteSpec>, String> {
        let doc = toml::de::DeTable::parse(text).expect("TOML");
        let value = doc.get_ref().get("routes").expect("routes");
        parse("routes", value.get_ref()).map_err(|e| e.to_string())
    }

    fn r(sni: Option<&str>, alpn: Option<&str>, pool: &str) -> RouteSpec {
        RouteSpec {
            sni: sni.map(str::to_string),
            alpn: alpn.map(str::to_string),
            pool: pool.to_string(),
        }
    }

    #[test]
    fn routes_as_written_with_names_lower_cased() {
        let got = routes(
            r#"routes = [
                { sni = "API.Example.com", pool = "api" },
                { sni = "*.example.com", pool = "web" },
                { sni = "grpc.example.com", alpn = "h2", pool = "grpc" },
                { alpn = "acme-tls/1", pool = "acme" },
            ]"#,
        );
        assert_eq!(
            got,
            Ok(vec![
                r(Some("api.example.com"), None, "api"),
                r(Some("*.example.com"), None, "web"),
                r(Some("grpc.example.com"), Some("h2"), "grpc"),
                r(None, Some("acme-tls/1"), "acme"),
            ])
        );
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        for (text, wanted) in [
            (r#"routes = "api""#, "expected a list of routes"),
            ("routes = []", "routes is empty"),
            (
                r#"routes = ["api"]"#,
                "route 1 is 'api': write each route as a table",
            ),
            (r#"routes = [{ sni = "a.b" }]"#, "route 1 has no pool"),
            (
                r#"routes = [{ pool = "a" }]"#,
                "route 1 matches every client",
            ),
            (
                r#"routes = [{ sni = "a.b", pol = "a" }]"#,
                "unknown key 'pol' (did you mean 'pool'?)",
            ),
            (
                r#"routes = [{ sni = 3, pool = "a" }]"#,
                "route 1: invalid value 3 for sni",
            ),
            (
                r#"routes = [{ sni = "a.*.b", pool = "a" }]"#,
                "a wildcard is '*.' before a domain",
            ),
            (
                r#"routes = [{ sni = "*.*.b", pool = "a" }]"#,
                "a wildcard stands for one whole label",
            ),
            (
                r#"routes = [{ sni = "*", pool = "a" }]"#,
                "a wildcard is '*.'",
            ),
            (
                r#"routes = [{ sni = "*.", pool = "a" }]"#,
                "sni '*.' is empty",
            ),
            (
                r#"routes = [{ sni = "a..b", pool = "a" }]"#,
                "has an empty label",
            ),
            (
                r#"routes = [{ sni = "a.b.", pool = "a" }]"#,
                "without the trailing dot",
            ),
            (
                r#"routes = [{ sni = "a b", pool = "a" }]"#,
                "is not a host name",
            ),
            (
                r#"routes = [{ alpn = "", pool = "a" }]"#,
                "alpn '' is not a protocol id",
            ),
            (
                r#"routes = [{ alpn = "h 2", pool = "a" }]"#,
                "is not a protocol id",
            ),
            (
                r#"routes = [{ sni = "a.b", pool = "x" }, { sni = "A.B", pool = "y" }]"#,
                "route 2 (sni a.b) can never match: route 1 has the same sni and alpn",
            ),
        ] {
            let got = routes(text);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(wanted)),
                "{text}: {got:?}, wanted {wanted:?}"
            );
        }
        let long = format!(
            r#"routes = [{{ sni = "{}.com", pool = "a" }}]"#,
            "a".repeat(252)
        );
        assert!(routes(&long).is_err_and(|e| e.contains("longer than the 255 bytes")));
    }
}
