//! The `[lb]` section and its `[[lb.service]]` tables (see [`crate::lb`] and the module docs
//! of `config`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Checker, Node, TableView, Val};
use crate::lb::{Backend, Check, Health, Lb, MAX_INSERT_RATE, MAX_WEIGHT, Mode, Service};
use palisade_common::{
    lb::{MAX_BACKENDS, MAX_SERVICES},
    packet::{IPPROTO_TCP, IPPROTO_UDP},
};

pub(super) const LB_KEYS: &[&str] = &[
    "hash_seed",
    "flow_insert_rate",
    "encap_source_v4",
    "encap_source_v6",
    "service",
];
const SERVICE_KEYS: &[&str] = &["name", "vip", "port", "proto", "mode", "backends", "health"];
const BACKEND_KEYS: &[&str] = &["address", "weight"];
const HEALTH_KEYS: &[&str] = &[
    "check",
    "path",
    "port",
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
];

impl Checker<'_> {
    /// `[lb]`. Problems are recorded and replaced by defaults.
    pub(super) fn lb(&mut self, node: &Node) -> Lb {
        let mut lb = Lb {
            line: self.lines.line(node.at),
            ..Lb::default()
        };
        let Some(view) = self.table(node, "`lb`") else {
            return lb;
        };
        self.check_keys(view, "[lb]", LB_KEYS);
        if let Some(n) = view.get("hash_seed")
            && let Some(v) = self.integer(n, "hash_seed", 0, i64::MAX)
        {
            lb.hash_seed = v as u64;
        }
        if let Some(n) = view.get("flow_insert_rate")
            && let Some(v) = self.integer(n, "flow_insert_rate", 0, i64::from(MAX_INSERT_RATE))
        {
            lb.flow_insert_rate = v as u32;
        }
        if let Some(n) = view.get("encap_source_v4") {
            match self.prefix(n, "encap_source_v4") {
                Some((IpAddr::V4(a), len)) => lb.encap_source_v4 = Some((a, len)),
                Some(_) => self.err(n.at, "`encap_source_v4` must be an IPv4 prefix"),
                None => {}
            }
        }
        if let Some(n) = view.get("encap_source_v6") {
            match self.prefix(n, "encap_source_v6") {
                Some((IpAddr::V6(a), len)) if len >= 96 => lb.encap_source_v6 = Some((a, len)),
                Some((IpAddr::V6(_), _)) => self.err(
                    n.at,
                    "`encap_source_v6` must be a /96 or longer: the flow hash fills at most \
                     32 host bits",
                ),
                Some(_) => self.err(n.at, "`encap_source_v6` must be an IPv6 prefix"),
                None => {}
            }
        }
        let Some(services) = view.get("service") else {
            return lb;
        };
        let Val::Array(items) = &services.val else {
            self.err(
                services.at,
                format!(
                    "`service` must be an array of tables (`[[lb.service]]`), found {}",
                    services.val.type_name()
                ),
            );
            return lb;
        };
        if items.len() > MAX_SERVICES as usize {
            self.err(
                services.at,
                format!(
                    "{} services; the load balancer holds {MAX_SERVICES}",
                    items.len()
                ),
            );
        }
        let mut seen: HashMap<(IpAddr, u16, u8), usize> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        // A DNAT backend's (address, port, protocol): its replies name one service.
        let mut dnat: HashMap<(IpAddr, u16, u8), String> = HashMap::new();
        for item in items {
            let Some(svc) = self.service(item) else {
                continue;
            };
            if let Some(line) = seen.insert((svc.vip, svc.port, svc.proto), svc.line) {
                self.err(
                    item.at,
                    format!(
                        "[[lb.service]] {:?}: {} port {} is already the service of line {line}",
                        svc.name, svc.vip, svc.port
                    ),
                );
            }
            if let Some(line) = names.insert(svc.name.clone(), svc.line) {
                self.err(
                    item.at,
                    format!(
                        "[[lb.service]]: the name {:?} is taken by the service of line {line}",
                        svc.name
                    ),
                );
            }
            match (svc.mode, svc.vip) {
                (Mode::Dsr, IpAddr::V4(_)) if lb.encap_source_v4.is_none() => self.err(
                    item.at,
                    format!(
                        "[[lb.service]] {:?}: a DSR service on IPv4 needs `[lb] \
                         encap_source_v4`, the prefix its outer sources come from",
                        svc.name
                    ),
                ),
                (Mode::Dsr, IpAddr::V6(_)) if lb.encap_source_v6.is_none() => self.err(
                    item.at,
                    format!(
                        "[[lb.service]] {:?}: a DSR service on IPv6 needs `[lb] \
                         encap_source_v6`, the prefix its outer sources come from",
                        svc.name
                    ),
                ),
                _ => {}
            }
            if svc.mode == Mode::Dnat {
                for b in &svc.backends {
                    if let Some(other) =
                        dnat.insert((b.addr, svc.port, svc.proto), svc.name.clone())
                        && other != svc.name
                    {
                        self.err(
                            item.at,
                            format!(
                                "[[lb.service]] {:?}: the backend {} port {} is a DNAT \
                                 backend of {other:?} too; its replies must name one service",
                                svc.name, b.addr, svc.port
                            ),
                        );
                    }
                }
            }
            lb.services.push(svc);
        }
        lb
    }

    /// An address with an optional prefix length.
    fn prefix(&mut self, node: &Node, key: &str) -> Option<(IpAddr, u8)> {
        let text = self.string(node, key)?;
        match crate::policy::setfile::parse_cidr(text) {
            Ok(c) => {
                let v6 = Ipv6Addr::from(c.addr);
                let ip = match c.family {
                    crate::policy::model::Family::V4 => {
                        IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
                    }
                    crate::policy::model::Family::V6 => IpAddr::V6(v6),
                };
                Some((ip, c.prefix_len))
            }
            Err(e) => {
                self.err(node.at, format!("`{key}`: {e}"));
                None
            }
        }
    }

    /// One `[[lb.service]]`; `None` when it has an error (recorded).
    fn service(&mut self, node: &Node) -> Option<Service> {
        let view = self.table(node, "`[[lb.service]]`")?;
        self.check_keys(view, "[[lb.service]]", SERVICE_KEYS);
        let errors = self.error_count();
        let line = self.lines.line(node.at);
        let name = match view.get("name") {
            Some(n) => self.string(n, "name").map(str::to_owned),
            None => {
                self.err(node.at, "[[lb.service]] needs a `name`");
                None
            }
        };
        if let (Some(n), Some(name)) = (view.get("name"), &name)
            && !super::valid_name(name, b".")
        {
            self.err(
                n.at,
                format!("`name` {name:?}: letters, digits, `_`, `-` and `.` only"),
            );
        }
        let vip = match view.get("vip") {
            Some(n) => self.address(n, "vip"),
            None => {
                self.err(
                    node.at,
                    "[[lb.service]] needs a `vip`, the address it serves",
                );
                None
            }
        };
        let port = match view.get("port") {
            Some(n) => self.integer(n, "port", 1, 65_535).map(|p| p as u16),
            None => {
                self.err(node.at, "[[lb.service]] needs a `port`");
                None
            }
        };
        let proto = match view.get("proto") {
            None => Some(IPPROTO_TCP),
            Some(n) => match self.string(n, "proto") {
                Some("tcp") => Some(IPPROTO_TCP),
                Some("udp") => Some(IPPROTO_UDP),
                Some(other) => {
                    self.err(
                        n.at,
                        format!("`proto` of a service is \"tcp\" or \"udp\", found {other:?}"),
                    );
                    None
                }
                None => None,
            },
        };
        let mode = match view.get("mode") {
            None => Some(Mode::Dsr),
            Some(n) => match self.string(n, "mode") {
                Some("dsr") => Some(Mode::Dsr),
                Some("dnat") => Some(Mode::Dnat),
                Some(other) => {
                    self.err(
                        n.at,
                        format!("`mode` is \"dsr\" or \"dnat\", found {other:?}"),
                    );
                    None
                }
                None => None,
            },
        };
        let backends = match view.get("backends") {
            Some(n) => self.backends(n, vip),
            None => {
                self.err(
                    node.at,
                    "[[lb.service]] needs `backends`, a list of { address = ..., weight = ... }",
                );
                Vec::new()
            }
        };
        let health = view.get("health").and_then(|n| self.health(n));
        if self.error_count() != errors {
            return None;
        }
        Some(Service {
            name: name?,
            vip: vip?,
            port: port?,
            proto: proto?,
            mode: mode?,
            backends,
            health,
            line,
        })
    }

    /// A single address (no prefix).
    fn address(&mut self, node: &Node, key: &str) -> Option<IpAddr> {
        let text = self.string(node, key)?;
        if let Ok(a) = text.parse::<IpAddr>() {
            Some(a)
        } else {
            self.err(
                node.at,
                format!("`{key}` must be an IPv4 or IPv6 address, found {text:?}"),
            );
            None
        }
    }

    fn backends(&mut self, node: &Node, vip: Option<IpAddr>) -> Vec<Backend> {
        let Val::Array(items) = &node.val else {
            self.err(
                node.at,
                format!(
                    "`backends` must be a list of {{ address = ..., weight = ... }}, found {}",
                    node.val.type_name()
                ),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.err(node.at, "`backends` is empty");
        }
        if items.len() > MAX_BACKENDS as usize {
            self.err(
                node.at,
                format!("{} backends; a service holds {MAX_BACKENDS}", items.len()),
            );
        }
        let mut out: Vec<Backend> = Vec::new();
        for item in items {
            let Some(view) = self.table(item, "a backend") else {
                continue;
            };
            self.check_keys(view, "a backend", BACKEND_KEYS);
            let Some(addr) = self.backend_address(view, item) else {
                continue;
            };
            let weight = match view.get("weight") {
                Some(n) => self
                    .integer(n, "weight", 1, i64::from(MAX_WEIGHT))
                    .map_or(1, |w| w as u32),
                None => 1,
            };
            if let Some(v) = vip
                && v.is_ipv4() != addr.is_ipv4()
            {
                self.err(
                    item.at,
                    format!("the backend {addr} is not of the VIP's family ({v})"),
                );
                continue;
            }
            if out.iter().any(|b| b.addr == addr) {
                self.err(item.at, format!("the backend {addr} is listed twice"));
                continue;
            }
            out.push(Backend { addr, weight });
        }
        out
    }

    fn backend_address(&mut self, view: TableView<'_>, item: &Node) -> Option<IpAddr> {
        match view.get("address") {
            Some(n) => self.address(n, "address"),
            None => {
                self.err(item.at, "a backend needs an `address`");
                None
            }
        }
    }

    fn health(&mut self, node: &Node) -> Option<Health> {
        let view = self.table(node, "`health`")?;
        self.check_keys(view, "`health`", HEALTH_KEYS);
        let check = match view.get("check") {
            None => Some("tcp"),
            Some(n) => self.string(n, "check"),
        }?;
        let check = match check {
            "tcp" => {
                if let Some(n) = view.get("path") {
                    self.err(n.at, "`path` is for `check = \"http\"`");
                }
                Check::Tcp
            }
            "http" => Check::Http {
                path: match view.get("path") {
                    Some(n) => {
                        let p = self.string(n, "path")?;
                        if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                            self.err(n.at, "`path` must start with `/` and hold no spaces");
                            return None;
                        }
                        p.to_owned()
                    }
                    None => "/".to_owned(),
                },
            },
            other => {
                let at = view.get("check").map_or(node.at, |n| n.at);
                self.err(
                    at,
                    format!("`check` is \"tcp\" or \"http\", found {other:?}"),
                );
                return None;
            }
        };
        let int = |this: &mut Self, key: &str, lo: i64, hi: i64, default: u32| match view.get(key) {
            Some(n) => this.integer(n, key, lo, hi).map(|v| v as u32),
            None => Some(default),
        };
        let interval_ms = int(self, "interval_ms", 50, 60_000, 200)?;
        let timeout_ms = int(self, "timeout_ms", 10, 60_000, 300)?;
        let fall = int(self, "fall", 1, 100, 2)?;
        let rise = int(self, "rise", 1, 100, 2)?;
        let port = match view.get("port") {
            Some(n) => Some(self.integer(n, "port", 1, 65_535)? as u16),
            None => None,
        };
        Some(Health {
            check,
            port,
            interval_ms,
            timeout_ms,
            fall,
            rise,
        })
    }
}
