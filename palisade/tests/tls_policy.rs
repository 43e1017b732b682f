//! `[tls]`: the section's keys and located errors, the decision on ClientHellos (names with
//! the DNS lists' matching rules, the no-SNI, IP-literal and ECH categories, JA4 lists,
//! audit), and the table of flows gathering their hello within its bounds.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade::craft::ClientHelloSpec;
use palisade::policy::config::parse_policy;
use palisade::tls::decide::{NameClass, TlsPolicy};
use palisade::tls::flows::{Flows, HELLO_TIMEOUT, MAX_PENDING, Step};
use palisade::tls::{Category, EchPolicy, TlsMode};
use palisade_common::reason;
use palisade_common::tls::hello::{ClientHello, MAX_HELLO_LEN};
use palisade_common::tls::{Outcome, read_hello};

fn policy(text: &str) -> palisade::policy::model::Policy {
    parse_policy(text, "p.toml", Path::new("/nonexistent"))
        .unwrap_or_else(|e| panic!("{text}\n{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match parse_policy(text, "p.toml", Path::new("/nonexistent")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn compiled(text: &str) -> TlsPolicy {
    let p = policy(text);
    TlsPolicy::new(&p.tls, &p.dns.lists)
}

fn hello(spec: &ClientHelloSpec) -> Box<ClientHello> {
    let mut scratch = vec![0u8; MAX_HELLO_LEN];
    let mut h = Box::<ClientHello>::default();
    assert_eq!(
        read_hello(&spec.records(16_384), &mut scratch, &mut h),
        Outcome::Hello
    );
    h
}

fn reason_for(policy: &TlsPolicy, sni: Option<&str>) -> u32 {
    let mut spec = ClientHelloSpec::modern("x");
    spec.sni = sni.map(|s| s.as_bytes().to_vec());
    policy.decide(&hello(&spec)).reason
}

#[test]
fn section_defaults_and_keys() {
    let p = policy("");
    assert!(!p.tls.enabled);
    let p = policy(
        "[dns.lists.ads]\nnames = [\"ads.example\"]\n\
         [tls]\nmode = \"blocklist\"\nports = [443, 8443]\nblock = [\"*.bad.example\"]\n\
         lists = [\"ads\"]\nech = \"block\"\nquic = \"allow\"\naudit = true\n\
         ja4_block = [\"t13d1516h2_8DAAF6152771_e5627efa2ab1\"]\n",
    );
    let t = &p.tls;
    assert!(t.enabled);
    assert_eq!(t.mode, TlsMode::Blocklist);
    assert_eq!(t.ports, [443, 8443]);
    assert_eq!(t.names.len(), 1);
    assert_eq!(t.lists, [0]);
    assert_eq!(t.ech, EchPolicy::Block);
    assert_eq!(t.quic, Category::Allow);
    assert_eq!(t.no_sni, Category::Allow);
    assert_eq!(t.malformed, Category::Block);
    assert!(t.audit);
    assert_eq!(&t.ja4_block[0], b"t13d1516h2_8daaf6152771_e5627efa2ab1");
    // Allowlists refuse hellos without a name or with an address by default.
    let p = policy("[tls]\nmode = \"allowlist\"\nallow = [\"ok.example\"]\n");
    assert_eq!(p.tls.no_sni, Category::Block);
    assert_eq!(p.tls.ip_literal, Category::Block);
    assert_eq!(p.tls.ports, [443]);
}

#[test]
fn section_errors_are_located() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[tls]\nblock = [\"a.example\"]\n",
            &["p.toml:1:1: [tls] is missing `mode` (\"blocklist\" or \"allowlist\")"],
        ),
        (
            "[tls]\nmode = \"deny\"\n",
            &["p.toml:2:8: [tls] `mode` is \"blocklist\" or \"allowlist\", found \"deny\""],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nallow = [\"a.example\"]\n",
            &[
                "p.toml:3:9: [tls] `allow` does not apply with mode = \"blocklist\"; write the \
               names under `block`",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nblock = [\"a..example\", \"*\"]\n",
            &[
                "p.toml:3:10: `a..example` has an empty label (a leading dot or two dots in a row)",
                "p.toml:3:24: `*`: `*` alone would match every name; write `*.example.com` to \
                 match the names below a domain",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nlists = [\"nope\"]\n",
            &[
                "p.toml:3:10: [tls] `lists`: unknown DNS list `nope`; define it under \
               [dns.lists.nope]",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nports = [443, 443, 0]\n",
            &[
                "p.toml:3:15: [tls] port 443 is listed twice in `ports`",
                "p.toml:3:20: `ports` must be between 1 and 65535, found 0",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nports = [1,2,3,4,5,6,7,8,9]\n",
            &["p.toml:3:9: [tls] `ports` lists 9 ports (at most 8)"],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nno_sni = \"drop\"\nech = \"inner\"\n",
            &[
                "p.toml:3:10: [tls] `no_sni` is \"allow\" or \"block\", found \"drop\"",
                "p.toml:4:7: [tls] `ech` is \"outer\", \"allow\" or \"block\", found \"inner\"",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nja4_allow = [\"t13d1516h2_xyz\"]\n",
            &[
                "p.toml:3:14: [tls] `ja4_allow`: \"t13d1516h2_xyz\" is not a JA4 fingerprint (36 \
               characters: 10, `_`, 12 hex digits, `_`, 12 hex digits, as in \
               \"t13d1516h2_8daaf6152771_e5627efa2ab1\")",
            ],
        ),
        (
            "[tls]\nmode = \"blocklist\"\nsni = []\n",
            &[
                "p.toml:3:1: unknown key `sni` in [tls]; expected one of `mode`, `ports`, `block`, \
               `allow`, `lists`, `no_sni`, `ip_literal`, `ech`, `ja4_block`, `ja4_allow`, \
               `malformed`, `quic`, `audit`",
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(errors(text), *want, "{text}");
    }
}

/// The names match as the DNS lists match: exact, `*.` for the names strictly below,
/// `subdomains = true` for a name and those below, letter case and one trailing dot
/// ignored on both sides.
#[test]
fn names_match_like_dns_lists() {
    let p = compiled(
        "[dns.lists.corp]\nsubdomains = true\nnames = [\"Corp.Example.\"]\n\
         [tls]\nmode = \"blocklist\"\nblock = [\"exact.example\", \"*.wild.example\"]\n\
         lists = [\"corp\"]\n",
    );
    for (sni, blocked) in [
        ("exact.example", true),
        ("EXACT.Example.", true),
        ("www.exact.example", false),
        ("wild.example", false),
        ("a.wild.example", true),
        ("a.b.WILD.example", true),
        ("corp.example", true),
        ("x.corp.example", true),
        ("notcorp.example", false),
        ("other.example", false),
    ] {
        let want = if blocked {
            reason::TLS_SNI_BLOCKED
        } else {
            reason::PASS
        };
        assert_eq!(reason_for(&p, Some(sni)), want, "{sni}");
    }
    let p = compiled("[tls]\nmode = \"allowlist\"\nallow = [\"*.ok.example\"]\n");
    assert_eq!(reason_for(&p, Some("a.ok.example")), reason::PASS);
    assert_eq!(
        reason_for(&p, Some("ok.example")),
        reason::TLS_SNI_NOT_ALLOWED
    );
    assert_eq!(reason_for(&p, None), reason::TLS_NO_SNI);
    assert_eq!(reason_for(&p, Some("192.0.2.1")), reason::TLS_IP_LITERAL);
}

#[test]
fn categories() {
    let p = compiled(
        "[tls]\nmode = \"blocklist\"\nno_sni = \"block\"\nip_literal = \"block\"\n\
         block = [\"bad.example\"]\n",
    );
    let mut spec = ClientHelloSpec::modern("x");
    spec.sni = None;
    let d = p.decide(&hello(&spec));
    assert_eq!((d.reason, d.class), (reason::TLS_NO_SNI, NameClass::NoSni));
    for ip in ["192.0.2.1", "2001:db8::1", "[2001:db8::1]"] {
        let d = p.decide(&hello(&ClientHelloSpec::modern(ip)));
        assert_eq!(
            (d.reason, d.class),
            (reason::TLS_IP_LITERAL, NameClass::IpLiteral),
            "{ip}"
        );
    }
    // A name no list can hold (an empty label) is malformed.
    let d = p.decide(&hello(&ClientHelloSpec::modern("a..example")));
    assert_eq!(
        (d.reason, d.class),
        (reason::TLS_MALFORMED, NameClass::Invalid)
    );
    // ECH: decided by the outer name unless the policy says otherwise; flagged either way.
    let mut spec = ClientHelloSpec::modern("bad.example");
    spec.extensions.push((0xfe0d, vec![0; 40]));
    let d = p.decide(&hello(&spec));
    assert!(d.ech);
    assert_eq!(d.reason, reason::TLS_SNI_BLOCKED);
    let mut public = spec.clone();
    public.sni = Some(b"public.example".to_vec());
    assert_eq!(p.decide(&hello(&public)).reason, reason::PASS);
    let blocking = compiled("[tls]\nmode = \"blocklist\"\nech = \"block\"\n");
    assert_eq!(blocking.decide(&hello(&public)).reason, reason::TLS_ECH);
    let allowing =
        compiled("[tls]\nmode = \"blocklist\"\nech = \"allow\"\nblock = [\"bad.example\"]\n");
    assert_eq!(allowing.decide(&hello(&spec)).reason, reason::PASS);
}

#[test]
fn ja4_lists_and_events() {
    let spec = ClientHelloSpec::modern("www.example");
    let open = compiled("[tls]\nmode = \"blocklist\"\n");
    let d = open.decide(&hello(&spec));
    assert_eq!(d.reason, reason::PASS);
    assert_eq!(d.sni, "www.example");
    assert_eq!(d.alpn, "h2");
    assert_eq!(&d.ja4[..10], "t13d0707h2");
    let fp = d.ja4.clone();
    let p = compiled(&format!(
        "[tls]\nmode = \"blocklist\"\nja4_block = [\"{fp}\"]\n"
    ));
    assert_eq!(p.decide(&hello(&spec)).reason, reason::TLS_JA4_BLOCKED);
    let p = compiled(&format!(
        "[tls]\nmode = \"blocklist\"\nja4_allow = [\"{}\"]\n",
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    ));
    assert_eq!(p.decide(&hello(&spec)).reason, reason::TLS_JA4_NOT_ALLOWED);
    let p = compiled(&format!(
        "[tls]\nmode = \"blocklist\"\nja4_allow = [\"{fp}\"]\n"
    ));
    assert_eq!(p.decide(&hello(&spec)).reason, reason::PASS);
    // Audit: the reason is reported, the flow is not refused.
    let p = compiled("[tls]\nmode = \"blocklist\"\nblock = [\"www.example\"]\naudit = true\n");
    let d = p.decide(&hello(&spec));
    assert_eq!(d.reason, reason::TLS_SNI_BLOCKED);
    assert!(!d.blocks(&p));
}

/// The flow table: a hello in 1-byte segments out of order is decided with its last byte,
/// conflicting retransmissions and non-TLS bytes are malformed, overdue hellos incomplete,
/// and a full table decides new flows at once.
#[test]
fn pending_flows_within_bounds() {
    let p = compiled("[tls]\nmode = \"blocklist\"\nblock = [\"bad.example\"]\n");
    let stream = ClientHelloSpec::modern("bad.example").records(16_384);
    assert!(stream.len() > 1460);
    let mut flows: Flows<u32> = Flows::new();
    let t0 = Instant::now();
    let base = 0xffff_fff0u32;
    let order: Vec<usize> = (0..stream.len()).rev().collect();
    for (k, &i) in order.iter().enumerate() {
        let step = flows.segment(
            &p,
            &1,
            base,
            base.wrapping_add(i as u32),
            &stream[i..=i],
            t0,
        );
        if k + 1 < order.len() {
            assert_eq!(step, Step::Wait);
        } else {
            let Step::Decided(d) = step else {
                panic!("undecided")
            };
            assert_eq!(d.reason, reason::TLS_SNI_BLOCKED);
        }
    }
    assert!(flows.is_empty());

    // A retransmission that changes a byte.
    assert_eq!(
        flows.segment(&p, &2, 100, 100, &stream[..500], t0),
        Step::Wait
    );
    let mut forged = stream[400..600].to_vec();
    forged[0] ^= 0x20;
    let Step::Decided(d) = flows.segment(&p, &2, 100, 500, &forged, t0) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::TLS_MALFORMED);

    // Not TLS at all.
    let Step::Decided(d) = flows.segment(&p, &3, 1, 1, b"GET / HTTP/1.1\r\n", t0) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::TLS_MALFORMED);

    // Overdue: decided by the sweep, or by the next segment.
    assert_eq!(flows.segment(&p, &4, 1, 1, &stream[..10], t0), Step::Wait);
    assert_eq!(flows.segment(&p, &5, 1, 1, &stream[..10], t0), Step::Wait);
    assert!(flows.expire(&p, t0 + HELLO_TIMEOUT).is_empty());
    let late = t0 + HELLO_TIMEOUT + Duration::from_millis(1);
    let expired = flows.expire(&p, late);
    assert_eq!(expired.len(), 2);
    assert!(
        expired
            .iter()
            .all(|(_, d)| d.reason == reason::TLS_INCOMPLETE)
    );
    assert_eq!(flows.segment(&p, &6, 1, 1, &stream[..10], t0), Step::Wait);
    let Step::Decided(d) = flows.segment(&p, &6, 1, 11, &stream[10..20], late) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::TLS_INCOMPLETE);

    // Full: a new flow is decided at once, the waiting ones still complete.
    for k in 0..MAX_PENDING as u32 {
        assert_eq!(
            flows.segment(&p, &(1000 + k), 1, 1, &stream[..5], t0),
            Step::Wait
        );
    }
    let Step::Decided(d) = flows.segment(&p, &9, 1, 1, &stream[..5], t0) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::TLS_INCOMPLETE);
    let Step::Decided(d) = flows.segment(&p, &1000, 1, 6, &stream[5..], t0) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::TLS_SNI_BLOCKED);
    // `malformed = "allow"` lets what cannot be read through.
    let lax = compiled("[tls]\nmode = \"blocklist\"\nmalformed = \"allow\"\n");
    let Step::Decided(d) = flows.segment(&lax, &3, 1, 1, b"SSH-2.0-x\r\n", t0) else {
        panic!("undecided")
    };
    assert_eq!(d.reason, reason::PASS);
}
