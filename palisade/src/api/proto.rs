//! Requests, responses and the data they carry.

use serde::{Deserialize, Serialize};

use crate::{
    conntrack::{FlowFilter, report::Census},
    stats::Counters,
};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/palisade/palisade.sock";
/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 1 << 20;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// What runs: programs, interfaces, policy generation, counters.
    Status,
    /// The firewall rules in evaluation order, with their counters.
    ListRules,
    /// The sets and their members (one set when named).
    ListSets {
        #[serde(default)]
        set: Option<String>,
    },
    /// The DNS lists and their entries (one list when named).
    ListDns {
        #[serde(default)]
        list: Option<String>,
    },
    /// Adds a firewall rule.
    AddRule { rule: Box<RuleSpec> },
    /// Removes the firewall rule with this name.
    DeleteRule { name: String },
    /// Adds addresses or CIDR blocks to a set.
    AddMembers { set: String, members: Vec<String> },
    /// Removes addresses or CIDR blocks from a set.
    DeleteMembers { set: String, members: Vec<String> },
    /// Adds names to a DNS list.
    AddDns {
        list: String,
        names: Vec<String>,
        /// Seconds until the entries stop applying.
        #[serde(default)]
        ttl: Option<u64>,
        /// Query types (`A`, `AAAA`, numbers); empty for every type.
        #[serde(default)]
        qtypes: Vec<String>,
        /// Plain names also match every name below them.
        #[serde(default)]
        subdomains: bool,
    },
    /// Removes names from a DNS list.
    DeleteDns { list: String, names: Vec<String> },
    /// Reads the policy file again and installs it (live changes are discarded).
    Reload,
    /// Every counter.
    Stats,
    /// Streams events until the client hangs up.
    Events {
        #[serde(default)]
        filter: EventFilter,
        /// JSON lines instead of text.
        #[serde(default)]
        json: bool,
    },
    /// Detaches everything, removes every pin, and stops the daemon.
    Unload,
    /// The tracked flows that match the filter.
    CtList {
        #[serde(default)]
        filter: FlowFilter,
    },
    /// Removes the tracked flows that match the filter (every flow when it is empty).
    CtFlush {
        #[serde(default)]
        filter: FlowFilter,
    },
    /// The tracker's counters, the census of its tables, and the top sources.
    CtStats,
    /// The members of the overload set that `addr` (an address or CIDR block) takes, all
    /// without it.
    CtOverload {
        #[serde(default)]
        addr: Option<String>,
    },
    /// Removes the members of the overload set that `addr` takes (all without it).
    CtOverloadFlush {
        #[serde(default)]
        addr: Option<String>,
    },
    /// The heavy hitters of the per-source limits.
    ShieldHitters,
    /// Forgets every heavy hitter.
    ShieldHittersFlush,
    /// The load balancer's services, their backends and states.
    LbList,
    /// A live change to a backend of a load-balanced service.
    LbChange {
        service: String,
        addr: String,
        action: crate::lb::Action,
        /// The weight of `add` and `weight`.
        #[serde(default)]
        weight: Option<u32>,
    },
    /// The lease table of DHCP snooping (`[dhcp]`).
    DhcpLeases,
    /// The IDS coverage of each live flow (`[ids]`).
    IdsFlows,
}

/// A rule given on the command line. Values are checked by the policy file's own parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub priority: Option<u32>,
    pub action: String,
    #[serde(default)]
    pub proto: Option<String>,
    #[serde(default)]
    pub src: Vec<String>,
    #[serde(default)]
    pub dst: Vec<String>,
    #[serde(default)]
    pub sport: Option<String>,
    #[serde(default)]
    pub dport: Option<String>,
    #[serde(default)]
    pub tcp_flags: Option<String>,
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
    #[serde(default)]
    pub log: bool,
    #[serde(default)]
    pub rate_pps: Option<u32>,
    #[serde(default)]
    pub rate_burst: Option<u32>,
    #[serde(default)]
    pub rate_per: Option<String>,
    /// IP header and link-layer conditions, in the policy file's words (`dscp = "ef"`,
    /// `ttl = "0-9"`, `vlan = "untagged"`, ...).
    #[serde(default)]
    pub dscp: Option<String>,
    #[serde(default)]
    pub ecn: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub length: Option<String>,
    #[serde(default)]
    pub src_mac: Option<String>,
    #[serde(default)]
    pub dst_mac: Option<String>,
    #[serde(default)]
    pub vlan: Option<String>,
    #[serde(default)]
    pub iface: Option<String>,
    /// Conditions to negate: `src`, `dst`, `sport`, `dport`, `proto`.
    #[serde(default)]
    pub not: Vec<String>,
    /// `mark`: the mark and DSCP to set, in the policy file's words.
    #[serde(default)]
    pub set_mark: Option<String>,
    #[serde(default)]
    pub set_dscp: Option<String>,
    /// `mirror`: the interface that gets the copies.
    #[serde(default)]
    pub mirror_to: Option<String>,
    /// `redirect`: the interface the packets leave by, as they are.
    #[serde(default)]
    pub redirect_to: Option<String>,
    /// `redirect`: the routing table whose next hop the packets go to (route-to).
    #[serde(default)]
    pub route_table: Option<u32>,
    /// `steer`: the CPUs its flows are spread over, and the CPU map queue size.
    #[serde(default)]
    pub cpus: Vec<u32>,
    #[serde(default)]
    pub queue_size: Option<u32>,
}

/// Which events a stream carries. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// `firewall` or `dns`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `drop`, `pass` (= `allow`), `nxdomain`, `sinkhole`, `refused` or `audit`.
    #[serde(default)]
    pub verdict: Option<String>,
    /// A substring of the DNS name or the firewall rule's name (case-insensitive).
    #[serde(default)]
    pub name: Option<String>,
}

/// Event kinds a filter accepts.
pub const EVENT_KINDS: [&str; 8] = [
    "firewall", "dns", "tls", "dhcp", "intel", "dga", "ids", "dlp",
];
/// Verdicts a filter accepts (`alert` is the verdict of DHCP rogue reports and intel
/// events, `tag` of intel events).
pub const EVENT_VERDICTS: [&str; 10] = [
    "drop", "pass", "allow", "nxdomain", "sinkhole", "refused", "audit", "lease", "alert", "tag",
];

impl EventFilter {
    /// Checks the values; the message names the bad one.
    ///
    /// # Errors
    /// On an unknown kind or verdict.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(k) = &self.kind
            && !EVENT_KINDS.contains(&k.as_str())
        {
            return Err(format!(
                "unknown event kind `{k}`: use one of {}",
                EVENT_KINDS.join(", ")
            ));
        }
        if let Some(v) = &self.verdict
            && !EVENT_VERDICTS.contains(&v.as_str())
        {
            return Err(format!(
                "unknown verdict `{v}`: use one of {}",
                EVENT_VERDICTS.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether an event passes.
    #[must_use]
    pub fn matches(&self, kind: &str, verdict: &str, names: &[&str]) -> bool {
        if self.kind.as_deref().is_some_and(|k| k != kind) {
            return false;
        }
        if let Some(v) = &self.verdict {
            let norm = |s: &str| {
                if s == "allow" {
                    "pass".to_string()
                } else {
                    s.to_string()
                }
            };
            if norm(v) != norm(verdict) {
                return false;
            }
        }
        if let Some(n) = &self.name {
            let n = n.to_ascii_lowercase();
            if !names.iter().any(|s| s.to_ascii_lowercase().contains(&n)) {
                return false;
            }
        }
        true
    }
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    /// A success carrying `data`.
    #[must_use]
    pub fn ok(data: &impl Serialize) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(serde_json::to_value(data).unwrap_or_default()),
        }
    }

    /// A refusal.
    #[must_use]
    pub fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            data: None,
        }
    }
}

/// `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub policy: PolicySummary,
    pub generation: u32,
    pub pin_dir: String,
    pub layout: String,
    /// Whether the maps were adopted from pins left by an earlier daemon.
    pub adopted: bool,
    pub programs_reused: bool,
    pub programs: Vec<ProgramStatus>,
    pub interfaces: Vec<InterfaceStatus>,
    pub cgroups: Vec<CgroupStatus>,
    pub packets: u64,
    pub passed: u64,
    pub dropped: u64,
    pub events_lost: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub unload_on_exit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// `palisade events` clients connected now.
    #[serde(default)]
    pub event_streams: usize,
    /// The connection tables as the last sweep counted them (absent before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Census>,
    /// The shields' counters, when the policy has `[shield]` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shield: Vec<crate::stats::Named>,
    /// What the shields are doing now, when the policy has `[shield]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield_state: Option<crate::shield::ShieldState>,
    /// The scrub's counters, when the policy has `[scrub]` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrub: Vec<crate::stats::Named>,
    /// The NAT's counters, when the policy has `[nat]` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<crate::stats::Named>,
    /// The TLS gate's counters, when the policy has `[tls]` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<crate::stats::Named>,
    /// The IDS's counters (kernel preselection, ring, engine, alerts per sid), when the
    /// policy has `[ids]` (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<crate::stats::Named>,
    /// The connection tables' capacities, when connections are tracked (what `conntrack`
    /// fills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_capacity: Option<CtCapacity>,
    /// The digest (`palisade::pod::digest`) of the policy file's bytes in force; absent
    /// with the built-in default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
}

/// The capacities of the connection tables (`[conntrack] max_entries`, `max_unvalidated`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtCapacity {
    pub validated: u64,
    pub unvalidated: u64,
}

/// The policy in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub source: String,
    pub rules: usize,
    pub sets: usize,
    pub dns_lists: usize,
    pub default_action: String,
    /// Changes made since the file was last loaded.
    pub live_changes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub id: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub iface: String,
    pub ifindex: u32,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u32>,
    /// `created`, `adopted`, `moved` or `unpinned`.
    pub origin: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStatus {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u32>,
    pub origin: String,
}

/// `list rules`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub generation: u32,
    pub rules: Vec<RuleRow>,
    pub default_action: String,
    pub default_packets: u64,
    pub default_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    /// Evaluation order.
    pub index: usize,
    pub name: String,
    pub priority: u32,
    pub action: String,
    /// The conditions, written as on the command line.
    pub matches: String,
    pub log: bool,
    /// Added at run time (not in the policy file).
    pub live: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// `list sets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sets {
    pub sets: Vec<SetRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRow {
    pub name: String,
    pub members: Vec<String>,
    /// Rules that refer to the set.
    pub used_by: Vec<String>,
}

/// `list dns`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsLists {
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    pub lists: Vec<DnsListRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsListRow {
    pub name: String,
    /// `ingress`/`egress` scopes using the list.
    pub used_by: Vec<String>,
    pub entries: Vec<DnsEntryRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsEntryRow {
    /// As written in a list (`*.example.com` for names strictly below).
    pub name: String,
    /// `exact`, `subdomains` (strictly below) or `apex-and-subdomains`.
    pub matches: String,
    pub qtypes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Seconds left before `expires` (negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_left: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entropy_bits: Option<u32>,
    pub live: bool,
}

/// The answer to a change (add, delete, reload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub message: String,
    /// The policy generation now in force.
    pub generation: u32,
}

/// `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub generation: u32,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub live_applied: u64,
    pub live_refused: u64,
    pub counters: Counters,
    /// What the shields are doing now, when the policy has `[shield]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield_state: Option<crate::shield::ShieldState>,
    /// What the DGA scorer counted, when the policy has `[dns.dga]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dga: Option<crate::dga::runtime::DgaStats>,
    /// What the OTLP event export counted, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<crate::fleet::otlp::OtlpStats>,
}

/// `unload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unloaded {
    pub done: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r = Request::AddMembers {
            set: "bad".into(),
            members: vec!["10.0.0.1".into()],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"cmd":"add-members","set":"bad","members":["10.0.0.1"]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"events"}"#).unwrap(),
            Request::Events {
                filter: EventFilter::default(),
                json: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ct-flush","filter":{"port":22}}"#).unwrap(),
            Request::CtFlush {
                filter: FlowFilter {
                    port: Some(22),
                    ..FlowFilter::default()
                }
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"shield-hitters-flush"}"#).unwrap(),
            Request::ShieldHittersFlush
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ct-overload"}"#).unwrap(),
            Request::CtOverload { addr: None }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ct-overload-flush","addr":"10.0.0.0/8"}"#)
                .unwrap(),
            Request::CtOverloadFlush {
                addr: Some("10.0.0.0/8".into())
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ct-list"}"#).unwrap(),
            Request::CtList {
                filter: FlowFilter::default()
            }
        );
    }

    #[test]
    fn filters_match_kind_verdict_and_name() {
        let f = EventFilter {
            kind: Some("dns".into()),
            verdict: Some("drop".into()),
            name: Some("Ads".into()),
        };
        assert!(f.matches("dns", "drop", &["ads.example.com"]));
        assert!(!f.matches("firewall", "drop", &["ads"]));
        assert!(!f.matches("dns", "allow", &["ads.example.com"]));
        assert!(!f.matches("dns", "drop", &["example.com"]));
        let pass = EventFilter {
            verdict: Some("allow".into()),
            ..EventFilter::default()
        };
        assert!(pass.matches("firewall", "pass", &[]));
        assert!(
            EventFilter {
                kind: Some("tcp".into()),
                ..EventFilter::default()
            }
            .validate()
            .unwrap_err()
            .contains("tcp")
        );
    }
}
