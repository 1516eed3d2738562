//! Which endpoints a delivery may reach: the guard against server-side request forgery.
//!
//! An endpoint URL is a tenant's input, and the worker connects to it from inside the
//! operator's network. So a URL must be `https` (plain `http` only where the operator allows
//! it), carry no credentials, and every address the worker connects to must be a public one:
//! never loopback, private, shared (carrier-grade NAT), link-local (cloud metadata lives there),
//! multicast, unspecified, reserved or documentation space. IPv6 forms that carry an IPv4
//! address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by that address too. Hosts are
//! read by the WHATWG URL parser, so `2130706433`, `0177.0.0.1` and `0x7f.1` are the loopback
//! address they are to any HTTP client. Names are checked on what they resolve to
//! ([`AddressPolicy::resolve`]), which is what the connection must then use: checking a name
//! once and letting the HTTP client resolve it again would let DNS answer differently the
//! second time. An operator who self-hosts receivers on a private network allows named ranges
//! ([`AddressPolicy::allow`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a URL.
    #[error("not a valid URL: {0}")]
    InvalidUrl(String),
    /// A scheme other than `https` (or `http` where allowed).
    #[error("the URL must be https, not {0}")]
    Scheme(String),
    /// `user:password@` in the URL.
    #[error("the URL may not carry credentials; use custom headers")]
    Credentials,
    /// No host.
    #[error("the URL has no host")]
    NoHost,
    /// The host is, or resolves to, an address deliveries may not reach.
    #[error("{address} is a {kind} address, which deliveries may not reach")]
    Forbidden {
        /// The address.
        address: IpAddr,
        /// What kind of address it is.
        kind: &'static str,
    },
    /// The name did not resolve.
    #[error("{0} does not resolve")]
    Unresolved(String),
}

/// A range of addresses, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Reads `10.0.0.0/8` or `fd12::/16` (a bare address is a range of one).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr =
            address.trim().parse().map_err(|_| format!("{text} is not an address range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("bad prefix in {text}"))?
            }
            None => max,
        };
        Ok(Self { network, prefix })
    }

    /// Returns whether `address` is in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(a, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(a, net, self.prefix),
            _ => false,
        }
    }
}

fn in_v4(address: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(address) & mask == u32::from(network) & mask
}

fn in_v6(address: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    u128::from(address) & mask == u128::from(network) & mask
}

/// IPv4 space deliveries may not reach, with the kind reported.
const FORBIDDEN_V4: &[([u8; 4], u8, &str)] = &[
    ([169, 254, 169, 254], 32, "cloud metadata"),
    ([0, 0, 0, 0], 8, "unspecified (this network)"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared (carrier-grade NAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "reserved (IETF protocol assignments)"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "reserved (6to4 relay)"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "reserved (benchmarking)"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// IPv6 space deliveries may not reach (the forms that embed an IPv4 address are judged by it).
const FORBIDDEN_V6: &[(u128, u8, &str)] = &[
    (0xfd00_0ec2_0000_0000_0000_0000_0000_0254, 128, "cloud metadata"),
    (0, 128, "unspecified"),
    (1, 128, "loopback"),
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48, "reserved (local NAT64)"),
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, "reserved (discard)"),
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23, "reserved (IETF protocol assignments, Teredo)"),
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, "documentation"),
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, "private (unique local)"),
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, "link-local"),
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, "private (site-local)"),
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, "multicast"),
];

/// The IPv4 address an IPv6 address carries, if it is of a form that carries one:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`)
/// or 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some(low);
    }
    if in_v6(address, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    if address.segments()[0] == 0x2002 {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// What kind of address `address` is, if deliveries may not reach it.
pub fn forbidden_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => FORBIDDEN_V4
            .iter()
            .find(|(net, prefix, _)| in_v4(v4, Ipv4Addr::from(*net), *prefix))
            .map(|(_, _, kind)| *kind),
        IpAddr::V6(v6) => {
            let own = FORBIDDEN_V6
                .iter()
                .find(|(net, prefix, _)| in_v6(v6, Ipv6Addr::from(*net), *prefix))
                .map(|(_, _, kind)| *kind);
            own.or_else(|| embedded_v4(v6).and_then(|v4| forbidden_kind(IpAddr::V4(v4))))
        }
    }
}

/// The operator's rules for endpoint URLs.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_http: bool,
    allowed: Vec<IpRange>,
}

impl AddressPolicy {
    /// The default: `https` only, public addresses only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows plain `http` URLs too.
    pub fn with_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Allows the addresses of `range` even though they are not public (self-hosted receivers
    /// on a private network).
    pub fn allow(mut self, range: IpRange) -> Self {
        self.allowed.push(range);
        self
    }

    /// Checks an address the worker is about to connect to.
    pub fn check_address(&self, address: IpAddr) -> Result<(), AddressError> {
        if self.allowed.iter().any(|range| range.contains(address)) {
            return Ok(());
        }
        match forbidden_kind(address) {
            Some(kind) => Err(AddressError::Forbidden { address, kind }),
            None => Ok(()),
        }
    }

    /// Checks an endpoint URL as given: its scheme, that it carries no credentials, and its host
    /// when that is an address. A name is checked by [`AddressPolicy::resolve`].
    pub fn check_url(&self, text: &str) -> Result<Url, AddressError> {
        let url = Url::parse(text.trim()).map_err(|err| AddressError::InvalidUrl(err.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(AddressError::Scheme(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AddressError::Credentials);
        }
        let host = url.host_str().ok_or(AddressError::NoHost)?;
        // The parser has already turned every IPv4 form into dotted decimal, and brackets IPv6.
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(address) => self.check_address(address).map(|()| url),
            Err(_) => Ok(url),
        }
    }

    /// Resolves a checked URL's host and returns the addresses the worker may connect to (every
    /// other one is dropped); refused when none is left. Connect to these, not to the name.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, AddressError> {
        let host = url.host_str().ok_or(AddressError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| AddressError::Unresolved(host.to_owned()))?;
        self.keep_allowed(host, found)
    }

    /// Keeps the addresses `host` resolved to that deliveries may reach; refused (with the
    /// first refusal) when none is left.
    pub fn keep_allowed(
        &self,
        host: &str,
        found: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, AddressError> {
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = found
            .filter(|addr| match self.check_address(addr.ip()) {
                Ok(()) => true,
                Err(err) => {
                    refusal.get_or_insert(err);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refusal) {
            (false, _) => Ok(allowed),
            (true, Some(err)) => Err(err),
            (true, None) => Err(AddressError::Unresolved(host.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_kind(policy: &AddressPolicy, url: &str) -> Result<(), String> {
        match policy.check_url(url) {
            Ok(_) => Ok(()),
            Err(AddressError::Forbidden { kind, .. }) => Err(kind.to_owned()),
            Err(other) => Err(format!("{other:?}")),
        }
    }

    /// Every form of a non-public address a tenant could write, and the kind it is refused as.
    #[test]
    fn every_form_of_a_forbidden_address_is_refused_by_what_it_is() {
        let policy = AddressPolicy::new().with_http(true);
        let cases: &[(&str, &str)] = &[
            ("https://127.0.0.1/hook", "loopback"),
            ("http://127.0.0.1:8080/", "loopback"),
            ("https://127.255.255.254/", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://0177.0.0.1/", "loopback"),
            ("https://0x7f.0.0.1/", "loopback"),
            ("https://0x7f000001/", "loopback"),
            ("https://127.1/", "loopback"),
            ("https://017700000001/", "loopback"),
            ("https://[::1]/", "loopback"),
            ("https://[0:0:0:0:0:0:0:1]/", "loopback"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://[::ffff:7f00:1]/", "loopback"),
            ("https://[::127.0.0.1]/", "loopback"),
            ("https://[64:ff9b::127.0.0.1]/", "loopback"),
            ("https://[2002:7f00:1::]/", "loopback"),
            ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
            ("https://2852039166/", "cloud metadata"),
            ("https://[::ffff:169.254.169.254]/", "cloud metadata"),
            ("https://[::ffff:a9fe:a9fe]/", "cloud metadata"),
            ("https://[fd00:ec2::254]/", "cloud metadata"),
            ("https://169.254.1.1/", "link-local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://10.0.0.1/", "private"),
            ("https://10.1/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://172.31.255.255/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://0xc0.0xa8.1.1/", "private"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://[fc00::1]/", "private (unique local)"),
            ("https://[fd12:3456::1]/", "private (unique local)"),
            ("https://[fec0::1]/", "private (site-local)"),
            ("https://100.64.0.1/", "shared (carrier-grade NAT)"),
            ("https://100.100.100.200/", "shared (carrier-grade NAT)"),
            ("https://0.0.0.0/", "unspecified (this network)"),
            ("https://0/", "unspecified (this network)"),
            ("https://[::]/", "unspecified"),
            ("https://224.0.0.1/", "multicast"),
            ("https://239.255.255.250/", "multicast"),
            ("https://[ff02::1]/", "multicast"),
            ("https://255.255.255.255/", "reserved"),
            ("https://240.0.0.1/", "reserved"),
            ("https://198.18.0.1/", "reserved (benchmarking)"),
            ("https://192.0.0.8/", "reserved (IETF protocol assignments)"),
            ("https://192.0.2.1/", "documentation"),
            ("https://203.0.113.9/", "documentation"),
            ("https://[2001:db8::1]/", "documentation"),
            ("https://[2001::1]/", "reserved (IETF protocol assignments, Teredo)"),
            ("https://[64:ff9b:1::1]/", "reserved (local NAT64)"),
            ("https://[100::1]/", "reserved (discard)"),
        ];
        for (url, kind) in cases {
            assert_eq!(refused_kind(&policy, url), Err((*kind).to_owned()), "{url}");
        }
        assert!(cases.len() >= 40);
    }

    #[test]
    fn public_addresses_and_names_pass_and_other_mistakes_say_what_is_wrong() {
        let policy = AddressPolicy::new();
        for url in [
            "https://example.com/hooks/tributary",
            "https://93.184.216.34/",
            "https://[2606:4700:4700::1111]/",
            "https://[::ffff:93.184.216.34]/",
            "https://[64:ff9b::93.184.216.34]/",
            "https://hooks.example.com:8443/path?query=1",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url}");
        }
        assert_eq!(policy.check_url("http://example.com/"), Err(AddressError::Scheme("http".into())));
        assert!(AddressPolicy::new().with_http(true).check_url("http://example.com/").is_ok());
        assert_eq!(policy.check_url("ftp://example.com/"), Err(AddressError::Scheme("ftp".into())));
        assert_eq!(policy.check_url("file:///etc/passwd"), Err(AddressError::Scheme("file".into())));
        assert_eq!(policy.check_url("https://user:secret@example.com/"), Err(AddressError::Credentials));
        assert_eq!(policy.check_url("https://token@example.com/"), Err(AddressError::Credentials));
        assert!(matches!(policy.check_url("not a url"), Err(AddressError::InvalidUrl(_))));
        assert!(matches!(policy.check_url("https://"), Err(AddressError::InvalidUrl(_))));
        assert!(matches!(policy.check_url("https://[::1/"), Err(AddressError::InvalidUrl(_))));
    }

    #[test]
    fn an_operator_allows_named_private_ranges_and_nothing_else() {
        let policy = AddressPolicy::new()
            .allow(IpRange::parse("10.20.0.0/16").unwrap())
            .allow(IpRange::parse("fd12::/16").unwrap());
        assert!(policy.check_url("https://10.20.3.4/").is_ok());
        assert!(policy.check_url("https://[fd12::7]/").is_ok());
        assert_eq!(refused_kind(&policy, "https://10.21.0.1/"), Err("private".into()));
        assert_eq!(refused_kind(&policy, "https://127.0.0.1/"), Err("loopback".into()));
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("ten/8").is_err());
        assert!(IpRange::parse("192.168.1.1").unwrap().contains("192.168.1.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to() {
        let policy = AddressPolicy::new();
        let url = policy.check_url("https://localhost:9443/hook").expect("a name passes the URL check");
        let refused = policy.resolve(&url).await.unwrap_err();
        assert!(matches!(refused, AddressError::Forbidden { kind: "loopback", .. }), "{refused:?}");
        let allowed = AddressPolicy::new()
            .allow(IpRange::parse("127.0.0.0/8").unwrap())
            .allow(IpRange::parse("::1").unwrap());
        let addresses = allowed.resolve(&url).await.unwrap();
        assert!(addresses.iter().all(|a| a.port() == 9443 && a.ip().is_loopback()), "{addresses:?}");
        let missing = policy.check_url("https://does-not-exist.invalid/").unwrap();
        assert!(matches!(policy.resolve(&missing).await, Err(AddressError::Unresolved(_))));
    }
}
