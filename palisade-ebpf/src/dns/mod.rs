//! DNS policy in the kernel: the inspector shared by every hook, and the hooks.

mod answer;
pub mod cache;
pub mod egress;
pub mod ingress;
pub mod inspect;
pub mod report;
mod stream;
