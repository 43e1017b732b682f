//! TLS server-name and JA4 policy (`[tls]`): the section's model, the decision on a
//! ClientHello ([`decide`]), and the table of flows whose ClientHello is being gathered
//! ([`flows`]). The ClientHello reader and JA4 live in [`palisade_common::tls`], shared with
//! the kernel side. `docs/design/tls.md` explains the design.

pub mod decide;
pub mod flows;

use crate::policy::model::NameEntry;

/// `ports`: at most this many TCP ports carry TLS for the policy.
pub const MAX_TLS_PORTS: usize = 8;
/// Names in `block`/`allow` and the DNS lists `[tls]` uses, together.
pub const MAX_TLS_NAMES: usize = 1 << 20;
/// Fingerprints in `ja4_block` and `ja4_allow`, together.
pub const MAX_JA4: usize = 4096;

/// Which names may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Names on the block lists are refused; every other name connects.
    Blocklist,
    /// Only names on the allow lists connect.
    Allowlist,
}

/// What happens to one category of ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Allow,
    Block,
}

/// ClientHellos with Encrypted Client Hello, whose visible name is the outer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchPolicy {
    /// Decided by the outer name like any other hello (and reported as outer-only).
    Outer,
    Allow,
    Block,
}

/// The `[tls]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Whether the section is present.
    pub enabled: bool,
    pub mode: TlsMode,
    /// TCP destination ports whose flows are inspected; UDP to them is QUIC.
    pub ports: Vec<u16>,
    /// The names of the mode's lists: `block` or `allow`, written in the section.
    pub names: Vec<NameEntry>,
    /// Indexes of `[dns.lists.NAME]` tables whose names join `names`.
    pub lists: Vec<usize>,
    pub no_sni: Category,
    pub ip_literal: Category,
    pub ech: EchPolicy,
    /// JA4 fingerprints (36 ASCII bytes each) that are refused whatever the name.
    pub ja4_block: Vec<[u8; 36]>,
    /// When not empty, only these fingerprints may connect.
    pub ja4_allow: Vec<[u8; 36]>,
    /// Hellos that cannot be read, and flows whose hello never completes.
    pub malformed: Category,
    /// QUIC (UDP to `ports`).
    pub quic: Category,
    /// Decide and report, but never block.
    pub audit: bool,
    /// Line of the section header (0 when absent).
    pub line: usize,
}

impl Default for Tls {
    /// No `[tls]` section: nothing inspected.
    fn default() -> Self {
        Self {
            enabled: false,
            mode: TlsMode::Blocklist,
            ports: vec![443],
            names: Vec::new(),
            lists: Vec::new(),
            no_sni: Category::Allow,
            ip_literal: Category::Allow,
            ech: EchPolicy::Outer,
            ja4_block: Vec::new(),
            ja4_allow: Vec::new(),
            malformed: Category::Block,
            quic: Category::Block,
            audit: false,
            line: 0,
        }
    }
}
