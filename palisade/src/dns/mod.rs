//! DNS policy, userspace side: compile the DNS part of a policy into name-map entries, the
//! reference inspector the kernel is checked against, and name formatting.

pub mod cache;
pub mod compile;
pub mod reference;
pub mod summary;
