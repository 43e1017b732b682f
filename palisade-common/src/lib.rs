//! Types and pure logic shared by Palisade's kernel programs and its userspace.
//!
//! Everything here is `no_std` and allocation-free so the same code runs in the kernel and in
//! the userspace reference. Map keys and values are `#[repr(C)]`, `Copy`, with explicit padding
//! and no `bool`/`Option`/data-carrying enums, because the kernel and userspace read them as raw
//! bytes.

#![no_std]

pub mod action;
pub mod conntrack;
pub mod dhcp;
pub mod dlp;
pub mod dns;
pub mod dnsbind;
pub mod dnscanary;
pub mod event;
pub mod firewall;
pub mod geoip;
pub mod ids;
pub mod intel;
pub mod lb;
pub mod nat;
pub mod packet;
pub mod reason;
pub mod redirect;
pub mod scrub;
pub mod shield;
pub mod stats;
pub mod steer;
pub mod tls;

/// Implements `aya::Pod` for map types when the `user` feature is on, and checks the size
/// that the kernel side and the userspace side both rely on.
macro_rules! map_type {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
        #[cfg(feature = "user")]
        // SAFETY: the type is `repr(C)`, `Copy`, has explicit padding and no invalid bit patterns.
        unsafe impl aya::Pod for $ty {}
    };
}
pub(crate) use map_type;

/// `want` rounded up to a power of two, within `min` and `max` (both powers of two): the
/// size of a filter sized by its keys.
#[must_use]
pub const fn pow2_within(want: u32, min: u32, max: u32) -> u32 {
    let n = if want <= min {
        min
    } else {
        want.next_power_of_two()
    };
    if n > max { max } else { n }
}
