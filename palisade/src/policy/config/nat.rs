//! The `[nat]` section (see [`crate::nat`] and the module docs of `config`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use palisade_common::{
    nat::{MAX_FORWARDS, MAX_SUBNETS},
    packet::{IPPROTO_TCP, IPPROTO_UDP},
};

use super::{Checker, Node, TableView, Val, parse_cidr};
use crate::nat::{DEFAULT_PORTS, Forward, Nat};

pub(super) const NAT_KEYS: &[&str] = &[
    "out",
    "masquerade",
    "address_v4",
    "address_v6",
    "ports",
    "forward",
];
const FORWARD_KEYS: &[&str] = &["proto", "port", "to"];

impl Checker<'_> {
    /// `[nat]`; `ct_disabled_at` is where `[conntrack]` says `enabled = false`, if it does.
    /// Problems are recorded.
    pub(super) fn nat(&mut self, node: &Node, ct_disabled_at: Option<usize>) -> Nat {
        let mut nat = Nat {
            line: self.lines.line(node.at),
            ports: DEFAULT_PORTS,
            ..Nat::default()
        };
        let Some(view) = self.table(node, "`nat`") else {
            return nat;
        };
        self.check_keys(view, "[nat]", NAT_KEYS);
        if let Some(at) = ct_disabled_at {
            self.err(
                at,
                "[nat] needs connection tracking (a mapping lives as long as its flow's \
                 entry); remove `enabled = false` or the `[nat]` section",
            );
        }
        match view.get("out") {
            Some(n) => {
                if let Some(s) = self.string(n, "out") {
                    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
                        self.err(n.at, format!("[nat].out: {s:?} is not an interface name"));
                    } else {
                        nat.out = Some(s.to_owned());
                    }
                }
            }
            None => {
                self.err(
                    view.at,
                    "[nat] needs `out`, the outside interface (one of the guarded ones)",
                );
                nat.out = Some(String::new());
            }
        }
        if let Some(n) = view.get("masquerade") {
            let items = self.string_list(n, "masquerade");
            for (text, at) in items {
                match parse_cidr(&text) {
                    Ok(c) => nat.masquerade.push(c),
                    Err(e) => self.err(at, format!("[nat].masquerade: {e}")),
                }
            }
            if nat.masquerade.len() > MAX_SUBNETS {
                self.err(
                    n.at,
                    format!(
                        "[nat].masquerade lists {} subnets; at most {MAX_SUBNETS} fit",
                        nat.masquerade.len()
                    ),
                );
            }
        }
        for (key, v4) in [("address_v4", true), ("address_v6", false)] {
            let Some(n) = view.get(key) else { continue };
            let Some(s) = self.string(n, key) else {
                continue;
            };
            match (s.parse::<IpAddr>(), v4) {
                (Ok(IpAddr::V4(a)), true) if !a.is_unspecified() && !a.is_multicast() => {
                    nat.address_v4 = Some(a);
                }
                (Ok(IpAddr::V6(a)), false) if !a.is_unspecified() && !a.is_multicast() => {
                    nat.address_v6 = Some(a);
                }
                _ => self.err(
                    n.at,
                    format!(
                        "[nat].{key} must be a unicast {} address, found {s:?}",
                        if v4 { "IPv4" } else { "IPv6" }
                    ),
                ),
            }
        }
        if let Some(n) = view.get("ports")
            && let Some(range) = self.nat_ports(n)
        {
            nat.ports = range;
        }
        if let Some(n) = view.get("forward") {
            nat.forwards = self.nat_forwards(n);
        }
        if nat.masquerade.is_empty() && nat.forwards.is_empty() && self.error_count() == 0 {
            self.err(
                view.at,
                "[nat] translates nothing: give `masquerade` subnets or `[[nat.forward]]` \
                 port forwards",
            );
        }
        nat
    }

    /// `ports = [low, high]`.
    fn nat_ports(&mut self, n: &Node) -> Option<(u16, u16)> {
        let Val::Array(items) = &n.val else {
            self.err(
                n.at,
                format!(
                    "[nat].ports must be a list [low, high], found {}",
                    n.val.type_name()
                ),
            );
            return None;
        };
        if items.len() != 2 {
            self.err(
                n.at,
                format!(
                    "[nat].ports must be a list [low, high], found {} items",
                    items.len()
                ),
            );
            return None;
        }
        let lo = self.integer(&items[0], "ports", 1, 65_535)?;
        let hi = self.integer(&items[1], "ports", 1, 65_535)?;
        if lo > hi {
            self.err(
                n.at,
                format!("[nat].ports: the low end {lo} is above the high end {hi}"),
            );
            return None;
        }
        Some((lo as u16, hi as u16))
    }

    /// `[[nat.forward]]` tables.
    fn nat_forwards(&mut self, n: &Node) -> Vec<Forward> {
        let Val::Array(items) = &n.val else {
            self.err(
                n.at,
                format!(
                    "[nat].forward must be a list of tables ([[nat.forward]]), found {}",
                    n.val.type_name()
                ),
            );
            return Vec::new();
        };
        if items.len() > MAX_FORWARDS as usize {
            self.err(
                n.at,
                format!(
                    "[nat] has {} port forwards; at most {MAX_FORWARDS} fit",
                    items.len()
                ),
            );
        }
        let mut out = Vec::new();
        let mut seen: HashMap<(bool, u8, u16), usize> = HashMap::new();
        for item in items {
            let Some(view) = self.table(item, "[[nat.forward]]") else {
                continue;
            };
            self.check_keys(view, "[[nat.forward]]", FORWARD_KEYS);
            if let Some(f) = self.nat_forward(view) {
                let key = (f.to.is_ipv4(), f.proto, f.port);
                if let Some(line) = seen.get(&key) {
                    self.err(
                        view.at,
                        format!(
                            "[[nat.forward]]: {} port {} is forwarded already (line {line})",
                            if f.proto == IPPROTO_TCP { "tcp" } else { "udp" },
                            f.port
                        ),
                    );
                    continue;
                }
                seen.insert(key, f.line);
                out.push(f);
            }
        }
        out
    }

    fn nat_forward(&mut self, view: TableView<'_>) -> Option<Forward> {
        let line = self.lines.line(view.at);
        let missing = |this: &mut Self, key: &str| {
            this.err(view.at, format!("[[nat.forward]] needs `{key}`"));
        };
        let proto = match view.get("proto") {
            Some(n) => match self.string(n, "proto")? {
                "tcp" => IPPROTO_TCP,
                "udp" => IPPROTO_UDP,
                other => {
                    self.err(
                        n.at,
                        format!(
                            "[[nat.forward]].proto must be \"tcp\" or \"udp\", found {other:?}"
                        ),
                    );
                    return None;
                }
            },
            None => {
                missing(self, "proto");
                return None;
            }
        };
        let port = match view.get("port") {
            Some(n) => self.integer(n, "port", 1, 65_535)? as u16,
            None => {
                missing(self, "port");
                return None;
            }
        };
        let to = match view.get("to") {
            Some(n) => {
                let s = self.string(n, "to")?;
                match s.parse::<SocketAddr>() {
                    Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => a,
                    _ => {
                        self.err(
                            n.at,
                            format!(
                                "[[nat.forward]].to must be an inside address and port, like \
                                 \"10.0.0.2:80\" or \"[fd00::2]:80\", found {s:?}"
                            ),
                        );
                        return None;
                    }
                }
            }
            None => {
                missing(self, "to");
                return None;
            }
        };
        Some(Forward {
            proto,
            port,
            to,
            line,
        })
    }
}
