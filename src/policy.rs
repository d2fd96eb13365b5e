//! The destination policy: where an event-chosen URL may send a request (SSRF).
//!
//! By default an event may not reach loopback, link-local (169.254.0.0/16, fe80::/10,
//! which hold the cloud metadata services), private (RFC 1918, 100.64.0.0/10, fc00::/7),
//! unspecified, multicast or broadcast addresses, nor the IPv4-mapped, IPv4-compatible
//! and NAT64 forms of these. The operator opens exactly what is needed with `allow`, and
//! closes more with `deny`:
//!
//! 1. a destination matching `allow` (by host name, wildcard or CIDR) is allowed;
//! 2. else one matching `deny` is refused (`deny = ["*"]` makes `allow` a strict list);
//! 3. else an address of a restricted class is refused;
//! 4. else it is allowed.
//!
//! The check runs on the address actually connected to: [`PolicyResolver`] is the HTTP
//! client's resolver and drops every resolved address the policy refuses, so neither DNS
//! rebinding nor a name like `localhost` gets past it. IP literals (which skip the
//! resolver) are checked with [`Policy::check_url`] before a request is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `[backends.<name>.destinations]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationsConfig {
    /// Host names (`hooks.internal`), wildcards (`*.corp.example`), addresses or CIDRs
    /// (`10.20.0.0/16`, `::1`) that are allowed even in a restricted class.
    pub allow: Vec<String>,
    /// The same forms, refused (after `allow`); `"*"` refuses everything not allowed.
    pub deny: Vec<String>,
    /// Allow private ranges (RFC 1918, 100.64.0.0/10, fc00::/7). Default: off; on when a
    /// consumed topic has the `port` format, since Port's agent runs inside the cluster to
    /// reach private services. Loopback, link-local and metadata addresses stay refused.
    pub allow_private: Option<bool>,
    /// Follow HTTP redirects (each hop is checked again; credential headers are dropped
    /// when the host changes). Default: off.
    pub follow_redirects: bool,
}

/// Why an address is restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Loopback,
    LinkLocal,
    Private,
    Unspecified,
    Multicast,
    Broadcast,
    /// Reserved for documentation or future use, never a real destination.
    Reserved,
    Public,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Loopback => "loopback",
            Class::LinkLocal => "link-local",
            Class::Private => "private",
            Class::Unspecified => "unspecified",
            Class::Multicast => "multicast",
            Class::Broadcast => "broadcast",
            Class::Reserved => "reserved",
            Class::Public => "public",
        }
    }
}

/// The class of an address, looking through IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::/96`) forms.
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return classify_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_unspecified() {
                Class::Unspecified
            } else if v6.is_loopback() {
                Class::Loopback
            } else if v6.is_multicast() {
                Class::Multicast
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Class::LinkLocal
            } else if seg[0] & 0xfe00 == 0xfc00 || seg[0] & 0xffc0 == 0xfec0 {
                // Unique local, and the deprecated site-local range.
                Class::Private
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Class::Reserved
            } else {
                Class::Public
            }
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let tail = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    let mapped = seg[..5].iter().all(|s| *s == 0) && seg[5] == 0xffff;
    // `::a.b.c.d` (deprecated), but not `::` and `::1` themselves.
    let compatible = seg[..6].iter().all(|s| *s == 0) && (seg[6] != 0 || seg[7] > 1);
    let nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|s| *s == 0);
    (mapped || compatible || nat64).then_some(tail)
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Class::Unspecified
    } else if ip.is_loopback() {
        Class::Loopback
    } else if ip.is_link_local() {
        Class::LinkLocal
    } else if ip.is_private() || (o[0] == 100 && o[1] & 0xc0 == 64) {
        Class::Private
    } else if ip.is_broadcast() {
        Class::Broadcast
    } else if ip.is_multicast() {
        Class::Multicast
    } else if o[0] >= 240
        || ip.is_documentation()
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        Class::Reserved
    } else {
        Class::Public
    }
}

/// One `allow` or `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Any,
    Host(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
    Net(IpAddr, u8),
}

impl Rule {
    fn parse(text: &str) -> Result<Rule, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            return Ok(Rule::Any);
        }
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("{text:?}: a wildcard is `*.` and a domain"));
            }
            return Ok(Rule::Suffix(format!(".{rest}")));
        }
        if let Some((addr, bits)) = t.split_once('/') {
            let ip: IpAddr = addr
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| format!("{text:?}: not a CIDR (address/bits)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?;
            return Ok(Rule::Net(ip, bits));
        }
        if let Ok(ip) = t.trim_matches(['[', ']']).parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Rule::Net(ip, bits));
        }
        if t.is_empty() || t.contains(['*', '/', ':', ' ']) {
            return Err(format!(
                "{text:?}: expected a host name, `*.domain`, an address or a CIDR"
            ));
        }
        Ok(Rule::Host(t.trim_end_matches('.').to_owned()))
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match self {
            Rule::Any => true,
            Rule::Host(h) => host == h,
            Rule::Suffix(s) => host.ends_with(s.as_str()),
            Rule::Net(net, bits) => ip.is_some_and(|ip| in_net(ip, *net, *bits)),
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A refused destination; the message names the host, the address and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A compiled destination policy.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    allow_private: bool,
    pub follow_redirects: bool,
}

impl Policy {
    /// Compile `cfg`; `port_mode` is the default of `allow_private`.
    pub fn new(cfg: &DestinationsConfig, port_mode: bool) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let mut rules = |list: &[String], what: &str| {
            list.iter()
                .filter_map(|t| {
                    Rule::parse(t)
                        .map_err(|e| problems.push(format!("{what}: {e}")))
                        .ok()
                })
                .collect::<Vec<_>>()
        };
        let allow = rules(&cfg.allow, "allow");
        let deny = rules(&cfg.deny, "deny");
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            allow,
            deny,
            allow_private: cfg.allow_private.unwrap_or(port_mode),
            follow_redirects: cfg.follow_redirects,
        })
    }

    /// Whether `host` (a name or an address literal) may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        let host = host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let shown = if host.parse::<IpAddr>().is_ok() {
            ip.to_string()
        } else {
            format!("{host} ({ip})")
        };
        if self.allow.iter().any(|r| r.matches(&host, Some(ip))) {
            return Ok(());
        }
        if self.deny.iter().any(|r| r.matches(&host, Some(ip))) {
            return Err(Refused(format!(
                "destination {shown} is not allowed (denied by the destination policy)"
            )));
        }
        match classify(ip) {
            Class::Public => Ok(()),
            Class::Private if self.allow_private => Ok(()),
            class => Err(Refused(format!(
                "destination {shown} is not allowed ({})",
                class.as_str()
            ))),
        }
    }

    /// Check a URL whose host is an address literal (the resolver never sees those).
    /// Names pass here; the resolver checks them after resolution.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(&v4.to_string(), IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(&v6.to_string(), IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Refused(format!("{url}: no host"))),
        }
    }
}

/// Name resolution, for [`PolicyResolver`]: the system's, or a fixed table in tests.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    }
}

/// The HTTP client's resolver: resolves a name and keeps only the addresses the policy
/// allows, so the connection can only go to an allowed address.
pub struct PolicyResolver {
    policy: Arc<Policy>,
    lookup: Arc<dyn Lookup>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<Policy>, lookup: Arc<dyn Lookup>) -> PolicyResolver {
        PolicyResolver { policy, lookup }
    }

    /// The allowed addresses of `host`, or why there are none.
    pub async fn allowed(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let addrs = self
            .lookup
            .lookup(host.to_owned())
            .await
            .map_err(|e| Refused(format!("{host}: name resolution failed: {e}")))?;
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.policy.check(host, a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    first_refusal.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(refused)) => Err(refused),
            (true, None) => Err(Refused(format!("{host}: the name has no address"))),
        }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = PolicyResolver {
            policy: self.policy.clone(),
            lookup: self.lookup.clone(),
        };
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match this.allowed(&host).await {
                Ok(addrs) => {
                    let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
                    Ok(addrs)
                }
                Err(refused) => {
                    crate::telemetry::metrics::get()
                        .refusals
                        .with_label_values(&["destination"])
                        .inc();
                    Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

/// The policy's refusal inside an HTTP client error, if that is what failed.
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// A reqwest redirect policy that checks every hop (address literals here, names in the
/// resolver), stops after 5 hops, or refuses all redirects when following is off.
pub fn redirects(policy: Arc<Policy>) -> reqwest::redirect::Policy {
    if !policy.follow_redirects {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_every_restricted_range_and_its_ipv6_forms() {
        let cases = [
            ("127.0.0.1", Class::Loopback),
            ("127.255.1.2", Class::Loopback),
            ("::1", Class::Loopback),
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::127.0.0.1", Class::Loopback),
            ("64:ff9b::7f00:1", Class::Loopback),
            ("169.254.169.254", Class::LinkLocal),
            ("::ffff:169.254.169.254", Class::LinkLocal),
            ("fe80::1", Class::LinkLocal),
            ("10.1.2.3", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("192.168.1.1", Class::Private),
            ("100.64.0.1", Class::Private),
            ("100.100.100.200", Class::Private),
            ("fd00:ec2::254", Class::Private),
            ("fc00::1", Class::Private),
            ("::ffff:10.0.0.1", Class::Private),
            ("0.0.0.0", Class::Unspecified),
            ("0.1.2.3", Class::Unspecified),
            ("::", Class::Unspecified),
            ("224.0.0.1", Class::Multicast),
            ("ff02::1", Class::Multicast),
            ("255.255.255.255", Class::Broadcast),
            ("240.0.0.1", Class::Reserved),
            ("8.8.8.8", Class::Public),
            ("172.32.0.1", Class::Public),
            ("100.128.0.1", Class::Public),
            ("2606:4700::1111", Class::Public),
            ("::ffff:8.8.8.8", Class::Public),
        ];
        for (text, want) in cases {
            assert_eq!(classify(ip(text)), want, "{text}");
        }
    }

    fn policy(allow: &[&str], deny: &[&str], private: Option<bool>) -> Policy {
        let cfg = DestinationsConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            allow_private: private,
            follow_redirects: false,
        };
        Policy::new(&cfg, false).unwrap()
    }

    #[test]
    fn default_refuses_restricted_classes_and_names_the_reason() {
        let p = policy(&[], &[], None);
        assert_eq!(
            p.check("127.0.0.1", ip("127.0.0.1")).unwrap_err().0,
            "destination 127.0.0.1 is not allowed (loopback)"
        );
        assert_eq!(
            p.check("localhost", ip("127.0.0.1")).unwrap_err().0,
            "destination localhost (127.0.0.1) is not allowed (loopback)"
        );
        assert!(p.check("x", ip("169.254.169.254")).is_err());
        assert!(p.check("x", ip("10.0.0.1")).is_err());
        assert!(p.check("example.com", ip("93.184.216.34")).is_ok());
    }

    #[test]
    fn allow_opens_by_name_wildcard_and_cidr_and_deny_star_makes_a_strict_list() {
        let p = policy(
            &[
                "127.0.0.2",
                "hooks.internal",
                "*.corp.example",
                "10.20.0.0/16",
            ],
            &[],
            None,
        );
        assert!(p.check("127.0.0.2", ip("127.0.0.2")).is_ok());
        assert!(p.check("127.0.0.1", ip("127.0.0.1")).is_err());
        assert!(p.check("hooks.internal", ip("10.9.9.9")).is_ok());
        assert!(p.check("a.b.corp.example", ip("192.168.0.1")).is_ok());
        assert!(p.check("corp.example", ip("192.168.0.1")).is_err());
        assert!(p.check("x", ip("10.20.5.5")).is_ok());
        assert!(p.check("x", ip("::ffff:10.20.5.5")).is_ok());
        assert!(p.check("x", ip("10.21.5.5")).is_err());
        let strict = policy(&["api.partner.example"], &["*"], None);
        assert!(strict.check("api.partner.example", ip("8.8.8.8")).is_ok());
        assert!(strict
            .check("other.example", ip("8.8.8.8"))
            .unwrap_err()
            .0
            .contains("denied by the destination policy"));
        let deny_one = policy(&[], &["8.8.8.0/24"], None);
        assert!(deny_one.check("x", ip("8.8.8.8")).is_err());
    }

    #[test]
    fn private_ranges_open_with_allow_private_but_loopback_and_metadata_stay_closed() {
        let p = policy(&[], &[], Some(true));
        assert!(p.check("svc", ip("10.0.0.1")).is_ok());
        assert!(p.check("svc", ip("fd12::1")).is_ok());
        assert!(p.check("svc", ip("127.0.0.1")).is_err());
        assert!(p.check("svc", ip("169.254.169.254")).is_err());
        let port = Policy::new(&DestinationsConfig::default(), true).unwrap();
        assert!(port.check("svc", ip("192.168.3.4")).is_ok());
        assert!(port.check("svc", ip("::1")).is_err());
    }

    #[test]
    fn bad_rules_are_configuration_errors() {
        let cfg = DestinationsConfig {
            allow: vec!["10.0.0.0/33".into(), "a*b".into(), "".into()],
            ..Default::default()
        };
        assert_eq!(Policy::new(&cfg, false).unwrap_err().len(), 3);
    }

    /// Names that resolve to loopback (DNS rebinding, `localhost`-style names) are
    /// refused after resolution; a name with one allowed address keeps only that one.
    #[tokio::test]
    async fn the_resolver_checks_resolved_addresses_not_names() {
        struct Table;
        impl Lookup for Table {
            fn lookup(
                &self,
                host: String,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>,
            > {
                let addrs: Vec<SocketAddr> = match host.as_str() {
                    "rebind.example" => vec!["127.0.0.3:0".parse().unwrap()],
                    "mixed.example" => vec![
                        "127.0.0.4:0".parse().unwrap(),
                        "127.0.0.5:0".parse().unwrap(),
                    ],
                    "mapped.example" => vec!["[::ffff:127.0.0.6]:0".parse().unwrap()],
                    _ => vec![],
                };
                Box::pin(async move { Ok(addrs) })
            }
        }
        let p = Arc::new(policy(&["127.0.0.5"], &[], None));
        let r = PolicyResolver::new(p, Arc::new(Table));
        assert_eq!(
            r.allowed("rebind.example").await.unwrap_err().0,
            "destination rebind.example (127.0.0.3) is not allowed (loopback)"
        );
        assert_eq!(
            r.allowed("mixed.example").await.unwrap(),
            vec!["127.0.0.5:0".parse::<SocketAddr>().unwrap()]
        );
        assert!(r.allowed("mapped.example").await.is_err());
        assert!(r.allowed("nothing.example").await.is_err());
    }
}
