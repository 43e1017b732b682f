//! Helpers shared by the integration tests that use real network namespaces.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod bulk;
pub mod daemon;
pub mod flood;
pub mod netns;
pub mod ntp;
pub mod otlp;
pub mod rawbpf;
pub mod routed;
pub mod vlan;
pub mod wire;
