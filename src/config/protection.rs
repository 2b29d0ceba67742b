//! What protects the backends and the balancer, as plain data: a pool's wait queue
//! ([`QueueSettings`]), a client's priority [`Class`] by source ([`Priority`]), and the
//! per-source limits of a service ([`SourceLimits`]). Parsing their values is here too;
//! the fleet and the workers act on them.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A client's priority: chosen by its source address (a service's `priority` list), it
/// decides who is served first from a pool's queue and who is turned away first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Low = 0,
    #[default]
    Normal = 1,
    High = 2,
}

impl Class {
    /// Every class, highest first (the order a queue serves them in).
    pub const ALL: [Class; 3] = [Class::High, Class::Normal, Class::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Low => "low",
            Class::Normal => "normal",
            Class::High => "high",
        }
    }

    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A pool's wait queue (`queue-size`, `queue-timeout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSettings {
    /// Clients that may wait at once; 0 = no queue (a client finding every backend at its
    /// `maxconn` is reset at once).
    pub size: usize,
    /// Longest wait: then the client is reset.
    pub timeout: Duration,
}

/// An address block: `10.1.0.0/16`, `2001:db8::/32`, or one address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The block's first address (bits past the prefix are zero).
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("prefix '/{p}' is not 0 to {max}"))?,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `addr` is in the block. An IPv4 client that reaches an IPv6 listener
    /// (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for; others as they are.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with the bits past `prefix` cleared.
pub fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// A service's `priority` list: the first rule whose block holds the client's address
/// gives its class; a client no rule matches is `normal`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Priority {
    pub rules: Vec<(Cidr, Class)>,
}

impl Priority {
    pub fn class_of(&self, client: IpAddr) -> Class {
        self.rules
            .iter()
            .find(|(block, _)| block.contains(client))
            .map_or(Class::Normal, |&(_, class)| class)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Parses the flag form, `CIDR=CLASS[,CIDR=CLASS...]`.
    pub fn parse_flag(text: &str) -> Result<Priority, String> {
        let mut rules = Vec::new();
        for rule in text.split(',') {
            let (block, class) = rule
                .split_once('=')
                .ok_or_else(|| format!("'{rule}' is not CIDR=CLASS (such as 10.1.0.0/16=high)"))?;
            rules.push((Cidr::parse(block.trim())?, parse_class(class.trim())?));
        }
        Ok(Priority { rules })
    }
}

/// A class name, or an error naming the three.
pub fn parse_class(name: &str) -> Result<Class, String> {
    Class::from_name(name).ok_or_else(|| format!("class '{name}' is not high, normal or low"))
}

/// New sessions allowed per interval (`conn-rate-per-source = "50/s"`): a token bucket
/// that refills `count` per `per` and holds at most `count` (the burst is the rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (also `N/sec`, `N/min`, `N/hour`).
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, unit) = text.split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|&n| n >= 1)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        (count <= 1_000_000).then_some(Rate { count, per })
    }

    /// Tokens that come back per millisecond.
    pub fn per_milli(&self) -> f64 {
        f64::from(self.count) / self.per.as_millis() as f64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A service's per-source limits (`max-conns-per-source`, `conn-rate-per-source`,
/// `source-prefix`, `source-table-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Sessions at once from one source.
    pub max_conns: Option<u32>,
    /// New sessions from one source.
    pub rate: Option<Rate>,
    /// What counts as one source: an IPv4 address masked to `v4` bits, an IPv6 one to `v6`.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Sources the table remembers at most.
    pub table_size: usize,
}

impl SourceLimits {
    /// The source `client` counts as.
    pub fn source_of(&self, client: IpAddr) -> IpAddr {
        let client = canonical(client);
        let prefix = if client.is_ipv4() {
            self.prefix_v4
        } else {
            self.prefix_v6
        };
        mask(client, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn blocks_hold_their_addresses_and_no_others() {
        let block = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(
            block.contains(ip("::ffff:10.1.0.9")),
            "a mapped IPv4 client"
        );
        assert!(!block.contains(ip("2001:db8::1")));
        let all = Cidr::parse("0.0.0.0/0").expect("cidr");
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("::1")));
        let any6 = Cidr::parse("::/0").expect("cidr");
        assert!(any6.contains(ip("2001:db8::1")));
        let one = Cidr::parse("192.0.2.7").expect("cidr");
        assert_eq!(one.prefix, 32);
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert_eq!(
            Cidr::parse("10.1.2.3/8").expect("cidr").to_string(),
            "10.0.0.0/8",
            "bits past the prefix are dropped"
        );
        let v6 = Cidr::parse("2001:db8:aa::/48").expect("cidr");
        assert!(v6.contains(ip("2001:db8:aa:1::5")));
        assert!(!v6.contains(ip("2001:db8:ab::5")));
    }

    #[test]
    fn bad_blocks_say_what_is_wrong() {
        assert!(Cidr::parse("10.1.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("::/129").unwrap_err().contains("0 to 128"));
        assert!(Cidr::parse("10.1/16").unwrap_err().contains("not an IP"));
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn the_first_matching_rule_gives_the_class() {
        let p = Priority::parse_flag("10.1.0.0/16=high, 10.0.0.0/8=low,0.0.0.0/0=normal")
            .expect("priority");
        assert_eq!(p.class_of(ip("10.1.0.5")), Class::High);
        assert_eq!(p.class_of(ip("10.9.0.5")), Class::Low);
        assert_eq!(p.class_of(ip("192.0.2.1")), Class::Normal);
        assert_eq!(p.class_of(ip("::1")), Class::Normal, "no rule matches");
        assert!(Priority::parse_flag("10.0.0.0/8=urgent").is_err());
        assert!(Priority::parse_flag("10.0.0.0/8").is_err());
    }

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        let r = Rate::parse("50/s").expect("rate");
        assert_eq!((r.count, r.per), (50, Duration::from_secs(1)));
        assert!((r.per_milli() - 0.05).abs() < 1e-9);
        assert_eq!(
            Rate::parse("600/m").map(|r| r.per),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            Rate::parse("10/hour").map(|r| r.to_string()),
            Some("10/h".into())
        );
        for bad in ["50", "0/s", "-1/s", "50/d", "/s", "x/s", "2000000/s"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_source_is_the_address_masked_to_its_prefix() {
        let limits = SourceLimits {
            max_conns: None,
            rate: None,
            prefix_v4: 24,
            prefix_v6: 64,
            table_size: 16,
        };
        assert_eq!(limits.source_of(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(limits.source_of(ip("::ffff:10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(
            limits.source_of(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
    }
}
