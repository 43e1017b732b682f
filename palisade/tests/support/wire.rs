//! Raw packets on a namespace's wire: sending a crafted IP packet as it is, and capturing
//! what arrives on an interface, with no tool other than the kernel's sockets.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use super::netns::in_netns;

fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Sends `packet` (starting at the IP header, checksums filled in) from namespace `ns`, routed
/// by that namespace's tables to the packet's destination, header and all as given.
pub fn send_ip(ns: &str, packet: &[u8], dst: IpAddr) {
    let packet = packet.to_vec();
    in_netns(ns, move || {
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket call; the fd is owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        check(fd, "raw socket");
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // IPPROTO_RAW sockets of both families send the header the caller wrote.
        let rc = match dst {
            IpAddr::V4(a) => {
                // SAFETY: zeroed sockaddr_in is a valid value.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                // SAFETY: the buffer and the address outlive the call.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of_val(&sa) as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(a) => {
                // SAFETY: zeroed sockaddr_in6 is a valid value.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = a.octets();
                // SAFETY: the buffer and the address outlive the call.
                unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const sa).cast(),
                        std::mem::size_of_val(&sa) as libc::socklen_t,
                    )
                }
            }
        };
        assert_eq!(
            rc,
            packet.len() as isize,
            "sending a raw packet in {}: {}",
            dst,
            std::io::Error::last_os_error()
        );
    });
}

/// Captures every packet that arrives on one interface of a namespace (a packet socket, so it
/// sees what comes in before any local socket or firewall of that namespace looks at it).
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Starts capturing on `iface` in namespace `ns`. Only packets arriving after this call
    /// are seen.
    #[must_use]
    pub fn start(ns: &str, iface: &str) -> Self {
        let iface = std::ffi::CString::new(iface).unwrap();
        let fd = in_netns(ns, move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket call; the fd is owned right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
            check(fd, "packet socket");
            // SAFETY: fd was just created and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
            assert!(index != 0, "no interface {iface:?}");
            // SAFETY: zeroed sockaddr_ll is a valid value.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = proto;
            sa.sll_ifindex = index as i32;
            // SAFETY: the address outlives the call.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sa).cast(),
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            };
            check(rc, "bind packet socket");
            fd
        });
        Self { fd }
    }

    /// The IP packets (from the IP header on) that arrived, read until `quiet` passes with
    /// nothing more to read. Packets the namespace sent itself are left out.
    #[must_use]
    pub fn incoming(&self, quiet: Duration) -> Vec<Vec<u8>> {
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: setting a socket option with a value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of_val(&tv) as libc::socklen_t,
            )
        };
        check(rc, "SO_RCVTIMEO");
        let mut out = Vec::new();
        let mut last = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while last.elapsed() < quiet {
            // SAFETY: zeroed sockaddr_ll is a valid value.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sa) as libc::socklen_t;
            // SAFETY: the buffer and the address outlive the call; sizes are theirs.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sa).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ),
                    "capture: {e}"
                );
                continue;
            }
            last = Instant::now();
            if sa.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }
}

/// A TCP segment read from a captured IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

/// The TCP segment in `packet` (an IPv4 packet, or an IPv6 packet with no extension
/// headers), if it is one.
#[must_use]
pub fn tcp_segment(packet: &[u8]) -> Option<Segment> {
    let version = packet.first()? >> 4;
    let (src, dst, l4) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < ihl + 20 || packet[9] != 6 {
                return None;
            }
            let s: [u8; 4] = packet[12..16].try_into().ok()?;
            let d: [u8; 4] = packet[16..20].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), &packet[ihl..])
        }
        6 => {
            if packet.len() < 60 || packet[6] != 6 {
                return None;
            }
            let s: [u8; 16] = packet[8..24].try_into().ok()?;
            let d: [u8; 16] = packet[24..40].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), &packet[40..])
        }
        _ => return None,
    };
    Some(Segment {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        flags: l4[13],
    })
}
