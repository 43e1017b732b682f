//! Palisade: an eBPF network guard.
//!
//! The kernel programs live in the `palisade-ebpf` crate and are embedded in this one; the
//! types both sides share live in `palisade-common`.

pub mod api;
pub mod attach;
pub mod capacity;
pub mod cli;
pub mod commands;
pub mod conntrack;
pub mod craft;
pub mod daemon;
pub mod datapath;
pub mod dga;
pub mod dhcp;
pub mod dlp;
pub mod dns;
pub mod dnsbind;
pub mod events;
pub mod firewall;
pub mod fleet;
pub mod geoip;
pub mod guard;
pub mod ids;
pub mod intel;
pub mod kernel;
pub mod keyhash;
pub mod lb;
pub mod learn;
pub mod live;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod nat;
pub mod pin;
pub mod pod;
pub mod policy;
pub mod replay;
pub mod rng;
pub mod scrub;
pub mod shield;
pub mod stats;
pub mod testrun;
pub mod tls;
pub mod top;
