//! The XDP firewall, userspace side: compile a policy, install it, and the two classifiers
//! the kernel program is checked against.

pub mod apply;
pub mod classify;
pub mod compile;
pub mod reference;

/// The TC ingress program that sets the mark of `mark` rules (`palisade_common::action`).
pub const ACTION_INGRESS: &str = "palisade_action_ingress";
