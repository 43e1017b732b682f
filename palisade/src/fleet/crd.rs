//! The `PalisadePolicy` custom resource: a cluster-scoped overlay that nodes whose labels
//! match its `nodeSelector` merge over their base policy (see [`super::merge`]).
//!
//! The schema is generated from these types (`palisade crd`); the field names are the
//! policy file's keys in camel case, and every value is checked again by the daemon's own
//! policy compiler, so the CRD's schema is the first gate, not the only one.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};
use kube::{CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A firewall and DNS policy overlay, merged over the base policy of every node it selects.
///
/// Policies that select a node are merged in order of `priority` (lower first), ties by
/// name; a policy that does not compile is skipped and reported as an Event.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "palisade.io",
    version = "v1alpha1",
    kind = "PalisadePolicy",
    plural = "palisadepolicies",
    shortname = "ppol",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PalisadePolicySpec {
    /// Which nodes merge this policy (every node when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Merge order among the policies that select a node: lower first, ties by name.
    #[serde(default)]
    pub priority: i32,
    /// Firewall rules appended after the base policy's, and the default action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallSpec>,
    /// Named address sets, referred to as `@NAME` in rules; entries are added to a set of
    /// the same name in the base policy or an earlier overlay.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, SetSpec>,
    /// DNS name lists; names are added to a list of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,
}

/// The `[firewall]` part of an overlay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirewallSpec {
    /// Replaces `[firewall] default`; the last policy in merge order that sets it wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,
    /// Rules, as `[[firewall.rule]]`; each is named `POLICY.NAME` on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

/// What a packet no rule matches gets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAction {
    /// Let it through.
    Allow,
    /// Drop it.
    Drop,
}

/// What a rule does with the packets it matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    /// Let it through.
    Allow,
    /// Drop it.
    Drop,
    /// Let it through within `rate`.
    RateLimit,
    /// Let it through with its mark (`setMark`) and/or DSCP (`setDscp`) set.
    Mark,
    /// Let it through, and send a copy out of `mirrorTo`.
    Mirror,
    /// Send it out of `redirectTo` as it is, or to the next hop of `routeTable`, from XDP.
    Redirect,
    /// Hand it to one of `cpus` (by its flow's hash) through a CPU map.
    Steer,
}

/// Who shares a rate limit's bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RatePer {
    /// One bucket per source address (per prefix, see `rate_prefix_v4/v6`).
    Source,
    /// One bucket for the whole rule.
    Rule,
    /// One bucket per source country (needs `[geoip]` in the base policy).
    Country,
}

/// A token bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateSpec {
    /// Packets a second.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub pps: u32,
    /// Packets at once.
    #[schemars(range(min = 1))]
    pub burst: u32,
    /// Who shares a bucket (default `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<RatePer>,
}

/// One `[[firewall.rule]]`; the keys and their values are the policy file's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`, unique in the policy.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub name: String,
    /// Lower runs first; without it the rule runs after the base policy's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// What to do with a matching packet.
    pub action: RuleAction,
    /// Required with `rate-limit`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `any` or a protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Source addresses or CIDR blocks, or one `@set`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<String>,
    /// Destination addresses or CIDR blocks, or one `@set`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst: Vec<String>,
    /// A port or a range `"LO-HI"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<IntOrString>,
    /// A port or a range `"LO-HI"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<IntOrString>,
    /// `"VALUE/MASK"` of flag names, e.g. `"syn/syn,ack"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// ICMP or ICMPv6 type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code (needs `icmpType`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Connection-tracking states the rule matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<ConnState>,
    /// Emit an event for every packet the rule drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<bool>,
    /// `mark` only: the socket buffer's mark, for `ip rule fwmark`, tc and nftables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mark: Option<u32>,
    /// `mark` only: the DSCP code point written into the IP header, `0..=63` or a name
    /// (`"ef"`, `"af41"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_dscp: Option<IntOrString>,
    /// `mirror` only, and required with it: the interface that gets a copy of each packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_to: Option<String>,
    /// `redirect` only: the interface the matching packets leave by, as they are. A
    /// `redirect` rule needs this or `routeTable`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_to: Option<String>,
    /// `redirect` only: a routing table (`254` is `main`); the packets go to the next hop
    /// found there, MACs rewritten and TTL / hop limit decremented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub route_table: Option<u32>,
    /// `steer` only, and required with it: 1 to 8 distinct online CPU numbers below 64; each
    /// flow goes to one of them, picked by a hash of its addresses, ports and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u32>,
    /// `steer` only: the CPU map entry's queue size, `1..=16384` (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub queue_size: Option<u32>,
}

/// A connection-tracking state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConnState {
    /// Opens a flow, or its flow has not been answered yet.
    New,
    /// Its flow has seen traffic both ways.
    Established,
    /// An ICMP error about a tracked flow.
    Related,
    /// Neither belongs to a flow nor may open one.
    Invalid,
}

/// A `[sets.NAME]`: only inline entries (a set file would be a path on the node).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetSpec {
    /// Addresses or CIDR blocks.
    #[serde(default)]
    pub entries: Vec<String>,
}

/// The `[dns]` part of an overlay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// `[dns.lists.NAME]` additions; a list takes effect where `[dns.ingress]` or
    /// `[dns.egress]` of the base policy names it.
    #[serde(default)]
    pub lists: BTreeMap<String, NameListSpec>,
}

/// A `[dns.lists.NAME]`: only inline names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameListSpec {
    /// Names, `*.name` wildcards included.
    #[serde(default)]
    pub names: Vec<String>,
    /// Plain names also match every name below them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomains: Option<bool>,
}

/// The CustomResourceDefinition as YAML, as checked in at `deploy/crd/palisadepolicy.yaml`.
///
/// # Errors
/// Only if the definition could not be serialized.
pub fn crd_yaml() -> Result<String, String> {
    let crd = PalisadePolicy::crd();
    let yaml = serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Generated by `palisade crd` from palisade/src/fleet/crd.rs: do not edit.\n{yaml}"
    ))
}
