//! The `[shield]` section (see [`crate::shield`] and the module docs of `config`).

use super::{Checker, Node, Val};
use crate::{
    policy::model::PortRange,
    shield::{
        ECHO_PAYLOAD_RANGE, MSS_V4_RANGE, MSS_V6_RANGE, PREFIX_V4_RANGE, PREFIX_V6_RANGE,
        SOURCE_BLOCK_RANGE_S, SOURCE_RATE_RANGE, SYN_HOLD_RANGE_S, SYN_RATE_RANGE, Shield,
        SynCookies,
    },
};

pub(super) const SHIELD_KEYS: &[&str] = &[
    "syn_ports",
    "syn_cookies",
    "syn_rate",
    "syn_hold",
    "mss_v4",
    "mss_v6",
    "wscale",
    "tcp_invalid",
    "amplification",
    "amplification_ports",
    "source_rate",
    "source_prefix_v4",
    "source_prefix_v6",
    "source_block",
    "icmp_echo_rate",
    "icmp_echo_global_rate",
    "icmp_echo_max_payload",
];

impl Checker<'_> {
    /// `[shield]`; `ct_disabled_at` is where `[conntrack]` says `enabled = false`, if it
    /// does. Problems are recorded and replaced by defaults.
    pub(super) fn shield(&mut self, node: &Node, ct_disabled_at: Option<usize>) -> Shield {
        let mut sh = Shield {
            line: self.lines.line(node.at),
            ..Shield::default()
        };
        let Some(view) = self.table(node, "`shield`") else {
            return sh;
        };
        self.check_keys(view, "[shield]", SHIELD_KEYS);
        if let Some(n) = view.get("syn_ports") {
            sh.syn_ports = self.port_list(n, "syn_ports");
        }
        if let Some(n) = view.get("syn_cookies")
            && let Some(text) = self.string(n, "syn_cookies")
        {
            match text {
                "auto" => sh.syn_cookies = SynCookies::Auto,
                "on" => sh.syn_cookies = SynCookies::On,
                "off" => sh.syn_cookies = SynCookies::Off,
                other => self.err(
                    n.at,
                    format!("`syn_cookies` must be \"auto\", \"on\" or \"off\", found \"{other}\""),
                ),
            }
            if sh.syn_ports.is_empty() {
                self.err(
                    n.at,
                    "`syn_cookies` needs `syn_ports`: the ports whose SYNs cookies answer",
                );
            }
        }
        let int = |this: &mut Self, key: &str, lo: i64, hi: i64| {
            view.get(key).and_then(|n| this.integer(n, key, lo, hi))
        };
        if let Some(n) = int(
            self,
            "syn_rate",
            (*SYN_RATE_RANGE.start()).into(),
            (*SYN_RATE_RANGE.end()).into(),
        ) {
            sh.syn_rate = n as u32;
        }
        if let Some(n) = int(
            self,
            "syn_hold",
            (*SYN_HOLD_RANGE_S.start()).into(),
            (*SYN_HOLD_RANGE_S.end()).into(),
        ) {
            sh.syn_hold_s = n as u32;
        }
        if let Some(n) = int(
            self,
            "mss_v4",
            (*MSS_V4_RANGE.start()).into(),
            (*MSS_V4_RANGE.end()).into(),
        ) {
            sh.mss_v4 = n as u16;
        }
        if let Some(n) = int(
            self,
            "mss_v6",
            (*MSS_V6_RANGE.start()).into(),
            (*MSS_V6_RANGE.end()).into(),
        ) {
            sh.mss_v6 = n as u16;
        }
        if let Some(n) = int(self, "wscale", 0, 14) {
            sh.wscale = Some(n as u8);
        }
        if let Some(n) = view.get("tcp_invalid")
            && let Some(text) = self.string(n, "tcp_invalid")
        {
            match text {
                "drop" => sh.tcp_invalid_drop = true,
                "pass" => sh.tcp_invalid_drop = false,
                other => self.err(
                    n.at,
                    format!("`tcp_invalid` must be \"drop\" or \"pass\", found \"{other}\""),
                ),
            }
        }
        if let Some(n) = view.get("amplification")
            && let Some(on) = self.boolean(n, "amplification")
        {
            sh.amplification = on;
        }
        if let Some(n) = view.get("amplification_ports") {
            sh.amplification_ports = self.port_list(n, "amplification_ports");
            if !sh.amplification {
                self.err(n.at, "`amplification_ports` needs `amplification = true`");
            }
        }
        self.source_limits(view, &mut sh);
        if sh.any()
            && let Some(at) = ct_disabled_at
        {
            self.err(
                node.at,
                format!(
                    "[shield] needs connection tracking, but [conntrack] turns it off \
                     (`enabled = false` on line {})",
                    self.lines.line(at)
                ),
            );
        }
        sh
    }

    /// The per-source and echo limits of `[shield]`.
    fn source_limits(&mut self, view: super::TableView<'_>, sh: &mut Shield) {
        let int = |this: &mut Self, key: &str, lo: u32, hi: u32| {
            view.get(key)
                .and_then(|n| this.integer(n, key, lo.into(), hi.into()))
                .map(|n| n as u32)
        };
        let (rate_lo, rate_hi) = (*SOURCE_RATE_RANGE.start(), *SOURCE_RATE_RANGE.end());
        sh.source_rate = int(self, "source_rate", rate_lo, rate_hi);
        sh.icmp_echo_rate = int(self, "icmp_echo_rate", rate_lo, rate_hi);
        sh.icmp_echo_global_rate = int(self, "icmp_echo_global_rate", rate_lo, rate_hi);
        sh.icmp_echo_max_payload = int(
            self,
            "icmp_echo_max_payload",
            *ECHO_PAYLOAD_RANGE.start(),
            *ECHO_PAYLOAD_RANGE.end(),
        );
        if let Some(n) = int(
            self,
            "source_prefix_v4",
            (*PREFIX_V4_RANGE.start()).into(),
            (*PREFIX_V4_RANGE.end()).into(),
        ) {
            sh.source_prefix_v4 = n as u8;
        }
        if let Some(n) = int(
            self,
            "source_prefix_v6",
            (*PREFIX_V6_RANGE.start()).into(),
            (*PREFIX_V6_RANGE.end()).into(),
        ) {
            sh.source_prefix_v6 = n as u8;
        }
        sh.source_block_s = int(
            self,
            "source_block",
            *SOURCE_BLOCK_RANGE_S.start(),
            *SOURCE_BLOCK_RANGE_S.end(),
        );
        // (A key given but invalid has its own error already.)
        let has_rate = view.get("source_rate").is_some();
        if !has_rate && let Some(n) = view.get("source_block") {
            self.err(
                n.at,
                "`source_block` needs `source_rate`: what a prefix goes over",
            );
        }
        if !has_rate && view.get("icmp_echo_rate").is_none() {
            for key in ["source_prefix_v4", "source_prefix_v6"] {
                if let Some(n) = view.get(key) {
                    let msg = format!("`{key}` needs `source_rate` or `icmp_echo_rate`");
                    self.err(n.at, msg);
                }
            }
        }
    }

    /// A non-empty list of ports and `"LO-HI"` ranges.
    fn port_list(&mut self, node: &Node, key: &str) -> Vec<PortRange> {
        let Val::Array(items) = &node.val else {
            let msg = format!(
                "`{key}` must be a list of ports and \"LO-HI\" ranges, found {}",
                node.val.type_name()
            );
            self.err(node.at, msg);
            return Vec::new();
        };
        if items.is_empty() {
            self.err(node.at, format!("`{key}` is empty; leave it out instead"));
        }
        items
            .iter()
            .filter_map(|item| self.port_range(item, key))
            .collect()
    }
}
