//! Backend names to addresses: every address a name resolves to is a backend, and a name
//! that stops resolving keeps the addresses it had, so a DNS blip does not empty a pool.

use crate::config::BackendSpec;
use crate::fleet::backend::ResolvedBackend;
use crate::net;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Resolves specs, remembering each name's last good addresses.
#[derive(Debug, Default)]
pub struct Resolver {
    last: HashMap<(String, u16), Vec<SocketAddr>>,
}

impl Resolver {
    /// Every address of every spec, in order. A name that does not resolve keeps its last
    /// addresses; one that never resolved is left out. Returns the failures too.
    pub fn resolve(&mut self, specs: &[BackendSpec]) -> (Vec<ResolvedBackend>, Vec<String>) {
        let mut set = Vec::new();
        let mut failures = Vec::new();
        for spec in specs {
            let key = (spec.host.clone(), spec.port);
            let addrs = match net::resolve(&spec.host, spec.port) {
                Ok(addrs) => {
                    self.last.insert(key, addrs.clone());
                    addrs
                }
                Err(e) => {
                    let kept = self.last.get(&key).cloned().unwrap_or_default();
                    failures.push(format!(
                        "{}cannot resolve backend {}: {e}{}",
                        spec.origin
                            .as_ref()
                            .map(|origin| format!("{origin}: "))
                            .unwrap_or_default(),
                        spec.authority(),
                        if kept.is_empty() {
                            String::new()
                        } else {
                            format!("; keeping its {} last known addresses", kept.len())
                        }
                    ));
                    kept
                }
            };
            set.extend(addrs.into_iter().map(|addr| ResolvedBackend {
                addr,
                name: spec.authority(),
                weight: spec.weight,
                backup: spec.backup,
                send_proxy: spec.send_proxy,
                agent_port: spec.agent_port,
                maxconn: spec.maxconn,
            }));
        }
        (set, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> BackendSpec {
        BackendSpec::parse(text).expect("spec")
    }

    #[test]
    fn every_address_of_a_name_is_a_backend_with_its_options() {
        let mut resolver = Resolver::default();
        let (set, failures) = resolver.resolve(&[
            spec("127.0.0.1:80,weight=3"),
            spec("[::1]:81,backup,send-proxy-v2"),
        ]);
        assert!(failures.is_empty());
        assert_eq!(
            set,
            vec![
                ResolvedBackend {
                    addr: "127.0.0.1:80".parse().expect("addr"),
                    name: "127.0.0.1:80".to_string(),
                    weight: 3,
                    backup: false,
                    send_proxy: None,
                    agent_port: None,
                    maxconn: None,
                },
                ResolvedBackend {
                    addr: "[::1]:81".parse().expect("addr"),
                    name: "[::1]:81".to_string(),
                    weight: 1,
                    backup: true,
                    send_proxy: Some(crate::proxy_protocol::Version::V2),
                    agent_port: None,
                    maxconn: None,
                },
            ]
        );
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let mut resolver = Resolver::default();
        let name = spec("no-such-host.invalid:80");
        let (set, failures) = resolver.resolve(std::slice::from_ref(&name));
        assert!(set.is_empty());
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("no-such-host.invalid:80"));
        // Pretend it resolved once.
        resolver.last.insert(
            ("no-such-host.invalid".to_string(), 80),
            vec!["10.9.9.9:80".parse().expect("addr")],
        );
        let (set, failures) = resolver.resolve(&[name]);
        assert_eq!(set.len(), 1);
        assert!(failures[0].contains("keeping its 1 last known"));
    }
}
