//! Which flows `palisade ct list` and `palisade ct flush` take: the operator's filter, as it
//! travels over the control socket, and its translation into the sweep's [`SweepRequest`],
//! whose matcher (shared with the kernel sweep) decides for both commands. A listing with a
//! filter therefore shows exactly what a flush with the same filter removes.

use palisade_common::{
    conntrack::{
        ENTRY_STATE_NAMES, ENTRY_STATES, MATCH_ADDR, MATCH_DPORT, MATCH_DST, MATCH_PORT,
        MATCH_PROTO, MATCH_SPORT, MATCH_SRC, MATCH_STATES, REPLIED, STATE_NAMES, SweepRequest,
        TCP_ESTABLISHED, bytes_to_words, is_validated,
    },
    packet::{FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::{Deserialize, Serialize};

use crate::policy::{
    model::{Cidr, Family, prefix_mask},
    setfile::parse_cidr,
};

/// A filter over tracked flows. Every condition given must hold; values are text as the
/// operator wrote them and are checked by [`FlowFilter::request`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Address or CIDR block of either endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Address or CIDR block of the endpoint that opened the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Address or CIDR block of the endpoint that answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Port of either endpoint (the identifier of an ICMP echo flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The opener's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// The answerer's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// State names, comma-separated (see [`parse_states`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The flow classes `--state` accepts besides the entry states.
const CLASS_HELP: &str = "new (not answered yet), established (tcp established, or answered)";

/// Parses a protocol: a name or a number `0..=255`.
///
/// # Errors
/// On anything else, with the accepted forms.
pub fn parse_proto(text: &str) -> Result<u8, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        "icmp" => Ok(IPPROTO_ICMP),
        "icmpv6" | "ipv6-icmp" => Ok(IPPROTO_ICMPV6),
        t => t.parse::<u8>().map_err(|_| {
            format!("unknown protocol `{text}`: use tcp, udp, icmp, icmpv6 or a number 0-255")
        }),
    }
}

/// Parses an address or CIDR block (`10.0.0.7`, `10.0.0.0/8`, `2001:db8::/32`).
///
/// # Errors
/// When the text is neither, or has host bits past its prefix.
pub fn parse_addr(text: &str) -> Result<Cidr, String> {
    parse_cidr(text).map_err(|e| e.to_string())
}

/// Parses a comma-separated list of states into a mask of entry states (bit `1 << state`).
/// Accepted: `new` (flows not answered yet: syn-sent, syn-sent2, syn-recv, unreplied),
/// `established` (TCP established, or another protocol's flow that was answered), and every
/// entry state by name. `related` and `invalid` classify packets, never flows.
///
/// # Errors
/// On an unknown or packet-only name, with the accepted names.
pub fn parse_states(text: &str) -> Result<u16, String> {
    let mut mask = 0u16;
    for word in text.split(',').map(str::trim) {
        let w = word.to_ascii_lowercase();
        mask |= match w.as_str() {
            "new" => (1..ENTRY_STATES)
                .filter(|s| !is_validated(*s as u8))
                .fold(0, |m, s| m | 1 << s),
            "established" => 1 << TCP_ESTABLISHED | 1 << REPLIED,
            _ if w == STATE_NAMES[2] || w == STATE_NAMES[3] => {
                return Err(format!(
                    "`{word}` classifies packets, not flows; flows are {CLASS_HELP}, or in an entry state: {}",
                    entry_state_list()
                ));
            }
            _ => match ENTRY_STATE_NAMES.iter().skip(1).position(|n| *n == w) {
                Some(i) => 1 << (i + 1),
                None => {
                    return Err(format!(
                        "unknown state `{word}`: use {CLASS_HELP}, or an entry state: {}",
                        entry_state_list()
                    ));
                }
            },
        };
    }
    Ok(mask)
}

fn entry_state_list() -> String {
    ENTRY_STATE_NAMES[1..].join(", ")
}

/// `--addr`, `--src`, `--dst` on the command line: checked, kept as written.
///
/// # Errors
/// As [`parse_addr`].
pub fn check_addr(text: &str) -> Result<String, String> {
    parse_addr(text).map(|_| text.to_string())
}

/// `--proto` on the command line: checked, kept as written.
///
/// # Errors
/// As [`parse_proto`].
pub fn check_proto(text: &str) -> Result<String, String> {
    parse_proto(text).map(|_| text.to_string())
}

/// `--state` on the command line: checked, kept as written.
///
/// # Errors
/// As [`parse_states`].
pub fn check_states(text: &str) -> Result<String, String> {
    parse_states(text).map(|_| text.to_string())
}

impl From<crate::cli::CtFilterArgs> for FlowFilter {
    fn from(a: crate::cli::CtFilterArgs) -> Self {
        Self {
            addr: a.addr,
            src: a.src,
            dst: a.dst,
            port: a.port,
            sport: a.sport,
            dport: a.dport,
            proto: a.proto,
            state: a.state,
        }
    }
}

/// The stored form, prefix length and family of a block, as the sweep request holds it.
fn stored(c: &Cidr) -> ([u8; 16], u32, u8) {
    let family = match c.family {
        Family::V4 => FAMILY_V4,
        Family::V6 => FAMILY_V6,
    };
    (c.addr, u32::from(c.stored_prefix_len()), family)
}

/// The words a request compares for a block: the address and its mask.
fn words(addr: &[u8; 16], prefix_len: u32) -> ([u32; 4], [u32; 4]) {
    let bits = u8::try_from(prefix_len.min(128)).unwrap_or(128);
    (bytes_to_words(addr), bytes_to_words(&prefix_mask(bits)))
}

impl FlowFilter {
    /// Whether the filter takes every flow.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The sweep request (operation `op`) that selects the flows of this filter.
    ///
    /// # Errors
    /// When a value is invalid, or the addresses mix IPv4 and IPv6 (no flow could match);
    /// the message names the field.
    pub fn request(&self, op: u32) -> Result<SweepRequest, String> {
        let mut r = SweepRequest {
            op,
            ..SweepRequest::default()
        };
        let mut family = None;
        let mut addr = |field: &str, text: &Option<String>| -> Result<_, String> {
            let Some(t) = text else { return Ok(None) };
            let c = parse_addr(t).map_err(|e| format!("--{field}: {e}"))?;
            let s = stored(&c);
            if let Some((f, other)) = &family {
                if *f != s.2 {
                    return Err(format!(
                        "--{field} {t} and --{other} are of different address families: no flow matches both"
                    ));
                }
            } else {
                family = Some((s.2, field.to_string()));
            }
            Ok(Some(s))
        };
        if let Some((a, len, fam)) = addr("addr", &self.addr)? {
            r.match_flags |= MATCH_ADDR;
            (r.addr, r.prefix_len, r.family) = (a, len, fam);
            r.addr_mask = words(&a, len).1;
        }
        if let Some((a, len, fam)) = addr("src", &self.src)? {
            r.match_flags |= MATCH_SRC;
            ((r.src, r.src_mask), r.family) = (words(&a, len), fam);
        }
        if let Some((a, len, fam)) = addr("dst", &self.dst)? {
            r.match_flags |= MATCH_DST;
            ((r.dst, r.dst_mask), r.family) = (words(&a, len), fam);
        }
        if let Some(p) = self.port {
            r.match_flags |= MATCH_PORT;
            r.port = p;
        }
        if let Some(p) = self.sport {
            r.match_flags |= MATCH_SPORT;
            r.sport = p;
        }
        if let Some(p) = self.dport {
            r.match_flags |= MATCH_DPORT;
            r.dport = p;
        }
        if let Some(p) = &self.proto {
            r.match_flags |= MATCH_PROTO;
            r.proto = parse_proto(p).map_err(|e| format!("--proto: {e}"))?;
        }
        if let Some(s) = &self.state {
            r.match_flags |= MATCH_STATES;
            r.states = parse_states(s).map_err(|e| format!("--state: {e}"))?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::{
        conntrack::{
            CtEntry, CtKey, ENTRY_ORIG_B, SWEEP_FLUSH, TCP_FIN_WAIT, TCP_SYN_RECV, TCP_SYN_SENT,
            UNREPLIED, bytes_to_words,
        },
        packet::FAMILY_V4,
    };

    use super::*;

    fn v4(a: [u8; 4]) -> [u32; 4] {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&a);
        bytes_to_words(&b)
    }

    /// A TCP flow opened by 10.0.0.2:40000 towards 10.0.0.1:22, in `state`.
    fn flow(state: u8) -> (CtKey, CtEntry) {
        let mut k = CtKey {
            family: FAMILY_V4,
            proto: IPPROTO_TCP,
            a: v4([10, 0, 0, 2]),
            a_port: 40_000,
            b: v4([10, 0, 0, 1]),
            b_port: 22,
            ..CtKey::default()
        };
        let mut e = CtEntry {
            state,
            ..CtEntry::default()
        };
        if k.canonicalize() {
            e.flags |= ENTRY_ORIG_B;
        }
        (k, e)
    }

    fn takes(f: &FlowFilter, state: u8) -> bool {
        let (k, e) = flow(state);
        f.request(SWEEP_FLUSH).unwrap().matches(&k, &e)
    }

    #[test]
    fn protocols_by_name_and_number() {
        assert_eq!(parse_proto("tcp"), Ok(6));
        assert_eq!(parse_proto("UDP"), Ok(17));
        assert_eq!(parse_proto("icmp"), Ok(1));
        assert_eq!(parse_proto("icmpv6"), Ok(58));
        assert_eq!(parse_proto("132"), Ok(132));
        let e = parse_proto("sctpx").unwrap_err();
        assert!(e.contains("`sctpx`") && e.contains("tcp, udp"), "{e}");
        assert!(parse_proto("256").is_err());
    }

    #[test]
    fn states_by_class_and_entry_state() {
        let bit = |s: u8| 1u16 << s;
        assert_eq!(
            parse_states("new"),
            Ok(bit(TCP_SYN_SENT) | bit(2) | bit(TCP_SYN_RECV) | bit(UNREPLIED))
        );
        assert_eq!(
            parse_states("established"),
            Ok(bit(TCP_ESTABLISHED) | bit(REPLIED))
        );
        assert_eq!(
            parse_states("fin-wait,time-wait"),
            Ok(bit(TCP_FIN_WAIT) | bit(7))
        );
        assert_eq!(parse_states("Replied"), Ok(bit(REPLIED)));
        let e = parse_states("related").unwrap_err();
        assert!(e.contains("classifies packets"), "{e}");
        let e = parse_states("bogus").unwrap_err();
        assert!(
            e.contains("unknown state `bogus`") && e.contains("syn-sent"),
            "{e}"
        );
        assert!(
            parse_states("none").is_err(),
            "the unused state 0 is no filter"
        );
    }

    #[test]
    fn filters_name_the_bad_field() {
        let bad = |f: FlowFilter, want: &str| {
            let e = f.request(SWEEP_FLUSH).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(
            FlowFilter {
                addr: Some("10.0.0.300".into()),
                ..FlowFilter::default()
            },
            "--addr",
        );
        bad(
            FlowFilter {
                src: Some("10.0.0.1/33".into()),
                ..FlowFilter::default()
            },
            "--src",
        );
        bad(
            FlowFilter {
                proto: Some("tcpp".into()),
                ..FlowFilter::default()
            },
            "--proto",
        );
        bad(
            FlowFilter {
                state: Some("open".into()),
                ..FlowFilter::default()
            },
            "--state",
        );
        bad(
            FlowFilter {
                src: Some("10.0.0.0/8".into()),
                dst: Some("2001:db8::/32".into()),
                ..FlowFilter::default()
            },
            "different address families",
        );
    }

    #[test]
    fn sides_ports_and_states_select_flows() {
        let f = |g: fn(&mut FlowFilter)| {
            let mut x = FlowFilter::default();
            g(&mut x);
            x
        };
        assert!(FlowFilter::default().is_empty());
        assert!(takes(&FlowFilter::default(), TCP_ESTABLISHED));
        // Either endpoint, as an address or a block.
        assert!(takes(&f(|x| x.addr = Some("10.0.0.1".into())), 4));
        assert!(takes(&f(|x| x.addr = Some("10.0.0.0/24".into())), 4));
        assert!(!takes(&f(|x| x.addr = Some("10.0.1.0/24".into())), 4));
        assert!(!takes(&f(|x| x.addr = Some("::1".into())), 4));
        // The opener is 10.0.0.2:40000, whichever side of the key it landed on.
        assert!(takes(&f(|x| x.src = Some("10.0.0.2".into())), 4));
        assert!(!takes(&f(|x| x.src = Some("10.0.0.1".into())), 4));
        assert!(takes(&f(|x| x.dst = Some("10.0.0.1/32".into())), 4));
        assert!(!takes(&f(|x| x.dst = Some("10.0.0.2".into())), 4));
        assert!(takes(&f(|x| x.sport = Some(40_000)), 4));
        assert!(!takes(&f(|x| x.sport = Some(22)), 4));
        assert!(takes(&f(|x| x.dport = Some(22)), 4));
        assert!(takes(&f(|x| x.port = Some(22)), 4));
        assert!(takes(&f(|x| x.port = Some(40_000)), 4));
        assert!(!takes(&f(|x| x.port = Some(23)), 4));
        assert!(takes(&f(|x| x.proto = Some("tcp".into())), 4));
        assert!(!takes(&f(|x| x.proto = Some("udp".into())), 4));
        // States: classes and entry states.
        let new = f(|x| x.state = Some("new".into()));
        assert!(takes(&new, TCP_SYN_SENT) && !takes(&new, TCP_ESTABLISHED));
        let est = f(|x| x.state = Some("established".into()));
        assert!(takes(&est, TCP_ESTABLISHED) && !takes(&est, TCP_FIN_WAIT));
        let fin = f(|x| x.state = Some("fin-wait".into()));
        assert!(takes(&fin, TCP_FIN_WAIT) && !takes(&fin, TCP_ESTABLISHED));
        // Every condition must hold.
        let both = FlowFilter {
            src: Some("10.0.0.2".into()),
            dport: Some(22),
            proto: Some("tcp".into()),
            state: Some("established".into()),
            ..FlowFilter::default()
        };
        assert!(takes(&both, TCP_ESTABLISHED) && !takes(&both, TCP_SYN_SENT));
        let wrong = FlowFilter {
            dport: Some(40_000),
            ..both
        };
        assert!(!takes(&wrong, TCP_ESTABLISHED));
    }
}
