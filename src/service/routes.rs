//! A service's TLS routes, compiled for the workers: which [`Target`] a ClientHello goes
//! to, found by hash lookups, never a scan of the routes.
//!
//! A route names a server name (`api.example.com`), a wildcard one label deep
//! (`*.example.com`: `a.example.com`, not `example.com` nor `a.b.example.com`), an ALPN
//! protocol the client must offer, or a name and a protocol. A client's name is looked up
//! lower-cased and without a trailing dot: first among the exact names, then the wildcards
//! over its parent domain, then the routes without a name; in each, the route that comes
//! first in the file among those whose protocol (if they name one) the client offers wins.
//! So an exact name beats a wildcard, which beats a route by protocol alone, and otherwise
//! the order written decides. The cost is one or two hash lookups of the name, and when
//! some route for that name names a protocol, one lookup per protocol the client offers.

use crate::fleet::PoolId;
use crate::tls_hello::{Hello, MAX_NAME};
use std::collections::HashMap;
use std::time::Duration;

/// Where a service sends a client: a pool, and the connect settings for it (the service's
/// own, or the pool's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub pool: PoolId,
    pub connect_timeout: Duration,
    pub retries: u32,
}

/// A route as the workers need it: its match and its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Lower-case; `*.DOMAIN` for a wildcard.
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub target: Target,
}

/// Routes that share a name (or a wildcard's domain, or none): the first of them that
/// takes any protocol, and the first for each protocol named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Choices {
    any_protocol: Option<usize>,
    by_protocol: HashMap<Box<[u8]>, usize>,
}

impl Choices {
    fn add(&mut self, alpn: Option<&str>, index: usize) {
        match alpn {
            None => {
                self.any_protocol.get_or_insert(index);
            }
            Some(p) => {
                self.by_protocol.entry(p.as_bytes().into()).or_insert(index);
            }
        }
    }

    /// The first route (in file order) of these that `hello` meets.
    fn pick(&self, hello: &Hello) -> Option<usize> {
        let mut best = self.any_protocol;
        if !self.by_protocol.is_empty() {
            for protocol in hello.protocols() {
                if let Some(&i) = self.by_protocol.get(protocol) {
                    best = Some(best.map_or(i, |b| b.min(i)));
                }
            }
        }
        best
    }
}

/// A service's routes, compiled, with the settings of reading the hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// In file order (a route's index is its rank).
    routes: Vec<Route>,
    exact: HashMap<Box<[u8]>, Choices>,
    /// By the domain after `*.`.
    wildcard: HashMap<Box<[u8]>, Choices>,
    /// Routes without a name.
    nameless: Choices,
    /// How long a client may take to send its whole ClientHello.
    pub sni_timeout: Duration,
    /// The most bytes the hello may take.
    pub max_hello: usize,
}

impl Routing {
    /// Compiles `routes` (names lower-case, as the config gives them).
    pub fn new(routes: Vec<Route>, sni_timeout: Duration, max_hello: usize) -> Routing {
        let mut routing = Routing {
            routes: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            nameless: Choices::default(),
            sni_timeout,
            max_hello,
        };
        for (i, route) in routes.iter().enumerate() {
            let alpn = route.alpn.as_deref();
            match route.sni.as_deref() {
                None => routing.nameless.add(alpn, i),
                Some(sni) => match sni.strip_prefix("*.") {
                    Some(domain) => routing
                        .wildcard
                        .entry(domain.as_bytes().into())
                        .or_default()
                        .add(alpn, i),
                    None => routing
                        .exact
                        .entry(sni.as_bytes().into())
                        .or_default()
                        .add(alpn, i),
                },
            }
        }
        routing.routes = routes;
        routing
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route `hello` takes (its index), if any.
    pub fn route(&self, hello: &Hello) -> Option<usize> {
        if let Some(sent) = hello.server_name {
            let mut lower = [0u8; MAX_NAME];
            let sent = sent.strip_suffix(b".").unwrap_or(sent);
            let Some(name) = lower.get_mut(..sent.len()) else {
                return self.nameless.pick(hello);
            };
            name.copy_from_slice(sent);
            name.make_ascii_lowercase();
            let name: &[u8] = name;
            if let Some(i) = self.exact.get(name).and_then(|c| c.pick(hello)) {
                return Some(i);
            }
            if let Some(dot) = name.iter().position(|&b| b == b'.').filter(|&d| d > 0) {
                if let Some(i) = self
                    .wildcard
                    .get(&name[dot + 1..])
                    .and_then(|c| c.pick(hello))
                {
                    return Some(i);
                }
            }
        }
        self.nameless.pick(hello)
    }

    /// Route `index`'s target.
    pub fn target(&self, index: usize) -> Option<Target> {
        self.routes.get(index).map(|r| r.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_hello::testing::{message, records};
    use crate::tls_hello::{DEFAULT_CAP, Parsed, parse};

    fn target(pool: PoolId) -> Target {
        Target {
            pool,
            connect_timeout: Duration::from_secs(1),
            retries: 0,
        }
    }

    fn route(sni: Option<&str>, alpn: Option<&str>, pool: PoolId) -> Route {
        Route {
            sni: sni.map(str::to_string),
            alpn: alpn.map(str::to_string),
            target: target(pool),
        }
    }

    /// The pool a client naming `name` and offering `alpn` is routed to.
    fn pool_for(routing: &Routing, name: Option<&str>, alpn: &[&str]) -> Option<PoolId> {
        let alpn: Vec<&[u8]> = alpn.iter().map(|p| p.as_bytes()).collect();
        let wire = records(&message(name.map(str::as_bytes), &alpn, 0), &[]);
        let mut scratch = vec![0u8; DEFAULT_CAP];
        let Parsed::Hello(hello) = parse(&wire, DEFAULT_CAP, &mut scratch) else {
            panic!("not a hello");
        };
        routing
            .route(&hello)
            .and_then(|i| routing.target(i))
            .map(|t| t.pool)
    }

    #[test]
    fn exact_names_then_wildcards_then_protocols_and_file_order_within() {
        let routing = Routing::new(
            vec![
                route(None, Some("acme-tls/1"), 9),
                route(Some("api.example.com"), None, 1),
                route(Some("*.example.com"), None, 2),
                route(Some("grpc.example.com"), Some("h2"), 3),
                route(Some("*.example.com"), Some("h2"), 4),
                route(Some("api.example.com"), Some("h2"), 5),
                route(None, Some("h2"), 6),
            ],
            Duration::from_secs(5),
            DEFAULT_CAP,
        );
        let cases: &[(Option<&str>, &[&str], Option<PoolId>)] = &[
            (Some("api.example.com"), &[], Some(1)),
            (Some("API.EXAMPLE.COM."), &[], Some(1)),
            // The exact name's first route in file order takes it, protocol or not.
            (Some("api.example.com"), &["h2"], Some(1)),
            (Some("www.example.com"), &[], Some(2)),
            (Some("www.example.com"), &["h2"], Some(2)),
            // An exact name with a protocol beats the wildcard...
            (Some("grpc.example.com"), &["http/1.1", "h2"], Some(3)),
            // ... but not when the client does not offer it.
            (Some("grpc.example.com"), &["http/1.1"], Some(2)),
            // One label deep only.
            (Some("a.b.example.com"), &[], None),
            (Some("example.com"), &[], None),
            (Some("a.b.example.com"), &["h2"], Some(6)),
            // Routes without a name, for any name or none.
            (Some("other.org"), &["h2"], Some(6)),
            (None, &["h2", "acme-tls/1"], Some(9)),
            (None, &[], None),
            (Some(".example.com"), &[], None),
        ];
        for (name, alpn, want) in cases {
            assert_eq!(pool_for(&routing, *name, alpn), *want, "{name:?} {alpn:?}");
        }
    }

    #[test]
    fn a_name_that_matches_nothing_goes_nowhere() {
        let routing = Routing::new(
            vec![route(Some("a.example.com"), None, 1)],
            Duration::from_secs(5),
            DEFAULT_CAP,
        );
        assert_eq!(pool_for(&routing, Some("b.example.com"), &[]), None);
        assert_eq!(pool_for(&routing, Some("a.example.com"), &[]), Some(1));
        let long = "a".repeat(MAX_NAME);
        assert_eq!(pool_for(&routing, Some(&long), &[]), None);
    }
}
