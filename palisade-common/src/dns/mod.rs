//! DNS in the kernel: the pieces both the kernel programs and the userspace reference use.
//!
//! - [`cache`]: the response cache: key, entry, the answer walk and aging.
//! - [`wire`]: DNS header fields and the NXDOMAIN header rewrite.
//! - [`name`]: the QNAME walker, one byte per step, case-folding and hashing as it goes.
//! - [`hash`]: keyed 128-bit label and suffix hashes (the keys of the name maps).
//! - [`entropy`]: Shannon entropy in fixed point.
//! - [`maps`]: map keys and values.
//! - [`stream`]: DNS over TCP as a stream (which segments are judged, message splitting).

pub mod cache;
pub mod entropy;
pub mod hash;
pub mod maps;
pub mod name;
pub mod stream;
pub mod wire;
