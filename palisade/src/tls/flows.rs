//! The flows whose ClientHello is being gathered: the client's first bytes per flow,
//! within fixed bounds.
//!
//! - at most [`MAX_PENDING`] flows at once; a flow that does not fit is decided at once as
//!   incomplete (refused under `malformed = "block"`), never queued unbounded;
//! - at most [`palisade_common::tls::stream::WINDOW`] bytes per flow (17 KiB: a 16 KiB
//!   hello and its record headers); segments in any order, any size, repeated;
//! - at most [`HELLO_TIMEOUT`] from a flow's first segment to its complete hello.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use palisade_common::reason;
use palisade_common::tls::hello::{ClientHello, MAX_HELLO_LEN};
use palisade_common::tls::stream::{FirstBytes, Insert};
use palisade_common::tls::{Outcome, read_hello};

use super::decide::{Decision, TlsPolicy};

/// Flows gathering a hello at once (each holds about 19 KiB while it waits: 35 MiB in all
/// when full).
pub const MAX_PENDING: usize = 2048;
/// How often the daemon looks for overdue hellos (and drains the segment ring).
pub const EXPIRE_INTERVAL_MS: u64 = 250;
/// From a flow's first segment to its complete hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

struct Pending {
    first: Box<FirstBytes>,
    since: Instant,
}

/// What a segment did to its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The hello is not whole yet.
    Wait,
    /// The flow is decided (and forgotten by this table).
    Decided(Decision),
}

/// The pending flows, keyed by whatever identifies a flow to the caller.
pub struct Flows<K> {
    pending: HashMap<K, Pending>,
    scratch: Box<[u8]>,
    hello: Box<ClientHello>,
}

impl<K: Hash + Eq + Clone> Default for Flows<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> Flows<K> {
    #[must_use]
    pub fn new() -> Self {
        Self {
            pending: HashMap::new(),
            scratch: vec![0u8; MAX_HELLO_LEN].into_boxed_slice(),
            hello: Box::default(),
        }
    }

    /// Flows waiting for their hello.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A client segment of flow `key`: `base` is the sequence number of the flow's first
    /// byte (its SYN's plus one), `seq` that of the segment's first byte.
    pub fn segment(
        &mut self,
        policy: &TlsPolicy,
        key: &K,
        base: u32,
        seq: u32,
        data: &[u8],
        now: Instant,
    ) -> Step {
        if !self.pending.contains_key(key) {
            if self.pending.len() >= MAX_PENDING {
                return Step::Decided(policy.unreadable(reason::TLS_INCOMPLETE));
            }
            self.pending.insert(
                key.clone(),
                Pending {
                    first: Box::new(FirstBytes::new(base)),
                    since: now,
                },
            );
        }
        let Some(flow) = self.pending.get_mut(key) else {
            return Step::Wait;
        };
        if flow.first.insert(seq, data) == Insert::Conflict {
            self.pending.remove(key);
            return Step::Decided(policy.unreadable(reason::TLS_MALFORMED));
        }
        match read_hello(flow.first.contiguous(), &mut self.scratch, &mut self.hello) {
            Outcome::NeedMore if now.duration_since(flow.since) <= HELLO_TIMEOUT => Step::Wait,
            Outcome::NeedMore => {
                self.pending.remove(key);
                Step::Decided(policy.unreadable(reason::TLS_INCOMPLETE))
            }
            Outcome::Invalid(_) => {
                self.pending.remove(key);
                Step::Decided(policy.unreadable(reason::TLS_MALFORMED))
            }
            Outcome::Hello => {
                self.pending.remove(key);
                Step::Decided(policy.decide(&self.hello))
            }
        }
    }

    /// Forgets the flows whose hello is overdue, with their decisions.
    pub fn expire(&mut self, policy: &TlsPolicy, now: Instant) -> Vec<(K, Decision)> {
        let overdue: Vec<K> = self
            .pending
            .iter()
            .filter(|(_, f)| now.duration_since(f.since) > HELLO_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        overdue
            .into_iter()
            .map(|k| {
                self.pending.remove(&k);
                (k, policy.unreadable(reason::TLS_INCOMPLETE))
            })
            .collect()
    }

    /// Forgets a flow (closed before its hello was whole).
    pub fn forget(&mut self, key: &K) {
        self.pending.remove(key);
    }
}
