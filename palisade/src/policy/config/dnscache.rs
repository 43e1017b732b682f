//! `[dns.cache]` (see [`crate::dns::cache`] and the module docs of `config`).
//!
//! ```toml
//! [dns.cache]
//! enabled = true                # default false
//! resolver = "192.0.2.53"       # the resolver on this host, addr[:port] (port 53 by default)
//! capacity = 4096               # entries, 1..=65536
//! min_ttl = 0                   # TTLs below are raised to this (seconds)
//! max_ttl = 86400               # TTLs above are lowered to this (seconds)
//! ```

use std::net::{IpAddr, SocketAddr};

use palisade_common::dns::cache::MAX_CAPACITY;

use super::{Checker, Node};
use crate::dns::cache::DnsCache;

pub(super) const CACHE_KEYS: &[&str] = &["enabled", "resolver", "capacity", "min_ttl", "max_ttl"];
/// Longest TTL clamp: a week.
const MAX_TTL: i64 = 7 * 24 * 3600;

/// `addr[:port]`, IPv6 in brackets when a port is given.
fn resolver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
}

impl Checker<'_> {
    /// `[dns.cache]`; `ingress`: whether `[dns.ingress]` is there (the cache serves from
    /// its hook). Problems are recorded; `None` when the cache is off.
    pub(super) fn dns_cache(&mut self, node: &Node, ingress: bool) -> Option<DnsCache> {
        let view = self.table(node, "`[dns.cache]`")?;
        self.check_keys(view, "[dns.cache]", CACHE_KEYS);
        let mut enabled = false;
        if let Some(n) = view.get("enabled")
            && let Some(on) = self.boolean(n, "[dns.cache].enabled")
        {
            enabled = on;
        }
        let mut addr = None;
        if let Some(n) = view.get("resolver")
            && let Some(s) = self.string(n, "[dns.cache].resolver")
        {
            addr = resolver(s);
            if addr.is_none() {
                let msg = format!(
                    "`[dns.cache].resolver`: `{s}` is not addr[:port] (e.g. \"192.0.2.53\", \
                     \"192.0.2.53:5353\", \"[2001:db8::53]:53\")"
                );
                self.err(n.at, msg);
            }
        }
        let mut cache = DnsCache::new(addr.unwrap_or_else(|| SocketAddr::from(([0; 4], 53))));
        cache.enabled = enabled;
        if let Some(n) = view.get("capacity")
            && let Some(c) = self.integer(n, "[dns.cache].capacity", 1, i64::from(MAX_CAPACITY))
        {
            cache.capacity = c as u32;
        }
        if let Some(n) = view.get("min_ttl")
            && let Some(t) = self.integer(n, "[dns.cache].min_ttl", 0, MAX_TTL)
        {
            cache.min_ttl = t as u32;
        }
        if let Some(n) = view.get("max_ttl")
            && let Some(t) = self.integer(n, "[dns.cache].max_ttl", 1, MAX_TTL)
        {
            cache.max_ttl = t as u32;
        }
        if cache.min_ttl > cache.max_ttl {
            let at = view.get("min_ttl").map_or(node.at, |n| n.at);
            self.err(at, "`[dns.cache].min_ttl` is larger than `max_ttl`");
        }
        if !enabled {
            return None;
        }
        if addr.is_none() && view.get("resolver").is_none() {
            self.err(
                node.at,
                "`[dns.cache]` needs `resolver` (the resolver on this host it answers for)",
            );
        }
        if !ingress {
            self.err(
                node.at,
                "`[dns.cache]` needs `[dns.ingress]`: cached answers are served by its hook \
                 (mode = \"blocklist\" with no lists passes every query)",
            );
        }
        Some(cache)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::resolver;
    use crate::dns::cache::DnsCache;

    fn parse(text: &str) -> Result<crate::policy::model::Policy, super::super::ConfigError> {
        super::super::parse_policy(text, "p.toml", Path::new("/nonexistent"))
    }

    fn errors(text: &str) -> String {
        parse(text).expect_err("refused").to_string()
    }

    const INGRESS: &str = "[dns.ingress]\nmode = \"blocklist\"\nlists = []\n";

    #[test]
    fn section_parses_to_the_model() {
        let p = parse(&format!(
            "{INGRESS}[dns.cache]\nenabled = true\nresolver = \"192.0.2.53:5353\"\n\
             capacity = 100\nmin_ttl = 5\nmax_ttl = 600\n"
        ))
        .expect("valid");
        assert_eq!(
            p.dns.cache,
            Some(DnsCache {
                enabled: true,
                resolver: "192.0.2.53:5353".parse().unwrap(),
                capacity: 100,
                min_ttl: 5,
                max_ttl: 600,
            })
        );
        let off = parse(&format!(
            "{INGRESS}[dns.cache]\nresolver = \"192.0.2.53\"\n"
        ))
        .expect("valid");
        assert_eq!(off.dns.cache, None, "off by default");
    }

    #[test]
    fn bad_settings_are_refused_with_their_place() {
        let e = errors(&format!(
            "{INGRESS}[dns.cache]\nenabled = true\ncapacity = 70000\nresolver = \"x\"\n"
        ));
        assert!(
            e.contains("`[dns.cache].capacity` must be between 1 and 65536"),
            "{e}"
        );
        assert!(
            e.contains("`[dns.cache].resolver`: `x` is not addr[:port]"),
            "{e}"
        );
        let e = errors("[dns.cache]\nenabled = true\nresolver = \"192.0.2.53\"\n");
        assert!(e.contains("needs `[dns.ingress]`"), "{e}");
        let e = errors(&format!("{INGRESS}[dns.cache]\nenabled = true\n"));
        assert!(e.contains("needs `resolver`"), "{e}");
        let e = errors(&format!(
            "{INGRESS}[dns.cache]\nenabled = true\nresolver = \"192.0.2.53\"\nmin_ttl = 60\nmax_ttl = 10\n"
        ));
        assert!(
            e.contains("`[dns.cache].min_ttl` is larger than `max_ttl`"),
            "{e}"
        );
        let e = errors(&format!("{INGRESS}[dns.cache]\nsize = 1\n"));
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn resolver_forms() {
        assert_eq!(
            resolver("192.0.2.53"),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            resolver("192.0.2.53:5353"),
            Some("192.0.2.53:5353".parse().unwrap())
        );
        assert_eq!(
            resolver("2001:db8::53"),
            Some("[2001:db8::53]:53".parse().unwrap())
        );
        assert_eq!(
            resolver("[2001:db8::53]:54"),
            Some("[2001:db8::53]:54".parse().unwrap())
        );
        assert_eq!(resolver("0.0.0.0"), None);
        assert_eq!(resolver("192.0.2.53:0"), None);
        assert_eq!(resolver("resolver.example"), None);
    }
}
