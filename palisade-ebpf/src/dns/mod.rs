//! DNS policy in the kernel: the inspector shared by every hook, and the hooks.

pub mod egress;
pub mod ingress;
pub mod inspect;
mod nxdomain;
pub mod report;
mod stream;
