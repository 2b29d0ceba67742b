//! Which listen addresses clash ([`clash`]: they cannot both be bound) and which listen
//! address is a backend's ([`same_place`]), and indexes that find the clash or the backend
//! of one address among thousands without comparing it with each ([`Taken`],
//! [`BackendPlaces`]): `--check` of a file of 30,000 services took seconds comparing pairs.

use super::BackendSpec;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

/// A listen address as written: host (IPv6 without brackets) and port.
pub type Addr = (String, u16);

/// Two listen addresses that cannot both be bound (the second bind would fail with only
/// "Address already in use"): the same port, not 0 (each 0 picks a free port of its own),
/// and the same host (names compared as written, without resolving them) or a wildcard
/// address that takes the other's (`0.0.0.0` any IPv4 address; `[::]` any address, since
/// it takes IPv4 too, unless beside `0.0.0.0` on the same port: then tcplb makes it take
/// IPv6 only, as nginx does).
pub fn clash(a: &Addr, b: &Addr) -> bool {
    let ((a, a_port), (b, b_port)) = (a, b);
    if a_port != b_port || *a_port == 0 {
        return false;
    }
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let covers = |wild: &IpAddr, other: &IpAddr| match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) if a.is_unspecified() && b.is_unspecified() => a == b,
        (Ok(a), Ok(b)) => a == b || covers(&a, &b) || covers(&b, &a),
        _ => false,
    }
}

/// A listen address and a backend that are the same place, as far as the text tells (the
/// resolved addresses are checked again at start). [`BackendPlaces`] finds them by lookups;
/// this is what it must agree with.
#[cfg(test)]
pub fn same_place(listen: &Addr, backend: &Addr) -> bool {
    if listen.1 != backend.1 || listen.1 == 0 {
        return false;
    }
    let (l, b) = (
        listen.0.to_ascii_lowercase(),
        backend.0.to_ascii_lowercase(),
    );
    l == b || (wildcard(&l) && loopback(&b))
}

fn wildcard(host: &str) -> bool {
    host == "0.0.0.0" || host == "::"
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

/// A host as [`clash`] compares it: an IP address by value, a name by its lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn of(host: &str) -> Host {
        match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host.to_ascii_lowercase()),
        }
    }
}

/// The first address taken on one port of each kind a new address may clash with.
struct OnPort<'c, T> {
    ipv4: Option<(&'c Addr, T)>,
    /// An address that is not a wildcard.
    specific: Option<(&'c Addr, T)>,
    any_ipv4: Option<(&'c Addr, T)>,
    any: Option<(&'c Addr, T)>,
}

/// Listen addresses taken so far, each with what took it (a service's name): the one a new
/// address clashes with is found by lookups, as [`clash`] would find it by comparing.
pub struct Taken<'c, T> {
    exact: HashMap<(u16, Host), (&'c Addr, T)>,
    ports: HashMap<u16, OnPort<'c, T>>,
}

impl<'c, T: Copy> Taken<'c, T> {
    pub fn new() -> Taken<'c, T> {
        Taken {
            exact: HashMap::new(),
            ports: HashMap::new(),
        }
    }

    /// Takes `addr` for `owner`, or says which address taken before clashes with it, and
    /// whose it is.
    pub fn take(&mut self, addr: &'c Addr, owner: T) -> Result<(), (&'c Addr, T)> {
        let port = addr.1;
        if port == 0 {
            return Ok(());
        }
        let host = Host::of(&addr.0);
        if let Some(&taken) = self.exact.get(&(port, host.clone())) {
            return Err(taken);
        }
        let on_port = self.ports.entry(port).or_insert_with(|| OnPort {
            ipv4: None,
            specific: None,
            any_ipv4: None,
            any: None,
        });
        if let Host::Ip(ip) = host {
            // A wildcard takes what it covers; what it covers is taken by a wildcard.
            // `0.0.0.0` and `[::]` on one port are both bound (`[::]` then IPv6 only).
            let clashing = match ip {
                IpAddr::V4(v4) if v4.is_unspecified() => on_port.ipv4,
                IpAddr::V6(v6) if v6.is_unspecified() => on_port.specific,
                IpAddr::V4(_) => on_port.any_ipv4.or(on_port.any),
                IpAddr::V6(_) => on_port.any,
            };
            if let Some(taken) = clashing {
                return Err(taken);
            }
            let first = |slot: &mut Option<(&'c Addr, T)>| {
                slot.get_or_insert((addr, owner));
            };
            if !ip.is_unspecified() {
                first(&mut on_port.specific);
            }
            match ip {
                IpAddr::V4(v4) => {
                    first(&mut on_port.ipv4);
                    if v4.is_unspecified() {
                        first(&mut on_port.any_ipv4);
                    }
                }
                IpAddr::V6(v6) if v6.is_unspecified() => first(&mut on_port.any),
                IpAddr::V6(_) => {}
            }
        }
        self.exact.insert((port, host), (addr, owner));
        Ok(())
    }
}

/// A pool's backends by the places a listen address may share with them ([`same_place`]).
pub struct BackendPlaces<'c> {
    by_host: HashMap<(String, u16), &'c BackendSpec>,
    loopback: HashMap<u16, &'c BackendSpec>,
}

impl<'c> BackendPlaces<'c> {
    pub fn new(backends: &'c [BackendSpec]) -> BackendPlaces<'c> {
        let mut places = BackendPlaces {
            by_host: HashMap::new(),
            loopback: HashMap::new(),
        };
        for b in backends {
            let host = b.host.to_ascii_lowercase();
            if loopback(&host) {
                places.loopback.entry(b.port).or_insert(b);
            }
            if let Entry::Vacant(e) = places.by_host.entry((host, b.port)) {
                e.insert(b);
            }
        }
        places
    }

    /// The backend at the place of listen address `addr`, if one is.
    pub fn at(&self, addr: &Addr) -> Option<&'c BackendSpec> {
        if addr.1 == 0 {
            return None;
        }
        let host = addr.0.to_ascii_lowercase();
        let on_loopback = wildcard(&host);
        self.loopback
            .get(&addr.1)
            .filter(|_| on_loopback)
            .or_else(|| self.by_host.get(&(host, addr.1)))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PoolSpec, ServiceSpec, parse_args};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    /// Hosts that clash in every way there is: the same text, another case, another
    /// spelling of one IPv6 address, a wildcard of either family, a mapped IPv4 address.
    const HOSTS: [&str; 12] = [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "::",
        "0:0::0",
        "::1",
        "0:0::1",
        "::ffff:127.0.0.1",
        "localhost",
        "LocalHost",
        "example.com",
        "10.0.0.1",
    ];

    fn addr() -> impl Strategy<Value = Addr> {
        (
            proptest::sample::select(&HOSTS[..]),
            proptest::sample::select(&[0u16, 80, 81][..]),
        )
            .prop_map(|(h, p)| (h.to_string(), p))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(512)
        })]

        /// Taking addresses one after another refuses exactly those that clash with one
        /// taken before, and names one they clash with.
        #[test]
        fn taken_finds_what_comparing_every_pair_finds(
            addrs in proptest::collection::vec(addr(), 0..12),
        ) {
            let mut taken = Taken::new();
            let mut kept: Vec<&Addr> = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                let compared = kept.iter().any(|k| clash(k, a));
                match taken.take(a, i) {
                    Ok(()) => {
                        prop_assert!(!compared, "{a:?} clashes with one of {kept:?}");
                        kept.push(a);
                    }
                    Err((other, owner)) => {
                        prop_assert!(compared, "{a:?} refused, {kept:?} taken");
                        prop_assert!(clash(other, a) && addrs[owner] == *other);
                    }
                }
            }
        }

        /// The backend at a listen address's place is one [`same_place`] says is there,
        /// and there is one whenever it says so.
        #[test]
        fn backend_places_find_what_comparing_finds(
            backends in proptest::collection::vec(addr(), 0..8),
            listen in addr(),
        ) {
            let specs: Vec<BackendSpec> = backends
                .iter()
                .map(|(host, port)| BackendSpec {
                    maxconn: None,
                    agent_port: None,
                    host: host.clone(),
                    port: *port,
                    weight: 1,
                    backup: false,
                    send_proxy: None,
                    origin: None,
                })
                .collect();
            let places = BackendPlaces::new(&specs);
            let compared = backends.iter().any(|b| same_place(&listen, b));
            match places.at(&listen) {
                Some(b) => prop_assert!(same_place(&listen, &(b.host.clone(), b.port))),
                None => prop_assert!(!compared, "{listen:?} is at one of {backends:?}"),
            }
        }
    }

    /// 50,000 services on one port, each on its own address, with a backend each in one
    /// pool: compared pair by pair this took over a minute; looked up, a fraction of a
    /// second (the bound leaves room for a loaded machine).
    #[test]
    fn many_services_are_validated_in_linear_time() {
        let Ok(crate::config::Action::Run(base)) = parse_args(&["127.0.0.1:1".into()]) else {
            panic!("the flags' config");
        };
        let n = 50_000;
        let ip = |i: usize| format!("127.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
        let pool = PoolSpec {
            name: "p".to_string(),
            backends: (0..n)
                .map(|i| BackendSpec {
                    host: format!("10.0.{}.{}", i >> 8 & 255, i & 255),
                    ..base.pools[0].backends[0].clone()
                })
                .collect(),
            ..base.pools[0].clone()
        };
        let services: Vec<ServiceSpec> = (0..n)
            .map(|i| ServiceSpec {
                name: format!("s{i}"),
                listen: vec![(ip(i + 1), 80)],
                pool: Some("p".to_string()),
                ..base.services[0].clone()
            })
            .collect();
        let config = Config {
            services,
            pools: vec![pool],
            ..*base
        };
        let started = Instant::now();
        assert_eq!(config.validate(), Ok(()));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{n} services took {took:?}");
    }
}
