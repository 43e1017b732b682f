//! Palisade: an eBPF network guard.
//!
//! The kernel programs live in the `palisade-ebpf` crate and are embedded in this one; the
//! types both sides share live in `palisade-common`.

pub mod attach;
pub mod cli;
pub mod craft;
pub mod dns;
pub mod daemon;
pub mod events;
pub mod firewall;
pub mod guard;
pub mod loader;
pub mod maps;
pub mod policy;
pub mod stats;
pub mod testrun;
