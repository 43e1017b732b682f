//! A two-instruction `XDP_PASS` program attached to an interface in a namespace.
//!
//! Why the DNS tests need it: a veth delivers a frame sent back with `XDP_TX` into its peer's
//! XDP ring and wakes the peer's NAPI only when the peer has an XDP program of its own
//! (`veth_xdp_flush`). Without one the frame is dropped (`rx_queue_0_xdp_tx_errors`) or, with
//! GRO enabled on the peer, left in the ring until other traffic happens to wake it. So for
//! Palisade's NXDOMAIN answers (`XDP_TX` on the resolver's veth) to reach the client over a
//! veth pair, the client end needs an XDP program; this one passes everything.
//!
//! Loaded with raw `bpf(2)` calls and attached through a bpf_link, so it goes away when the
//! guard drops (the link fd closes) or the namespace is deleted.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// `bpf_attr` is a union of at most a few hundred bytes; the kernel accepts a larger buffer as
/// long as the tail is zero.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Self {
        Self([0; 160])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

pub struct XdpPass {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl XdpPass {
    /// Attaches the pass program (native mode) to `iface` in namespace `ns`.
    pub fn attach(ns: &str, iface: &str) -> Self {
        let ns_path = format!("/run/netns/{ns}");
        let iface = iface.to_string();
        // setns() changes only the calling thread's namespace: do it on a thread of its own.
        thread::spawn(move || -> Result<Self, String> {
            let nsf = File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
            // SAFETY: plain syscall on an fd we own; affects this short-lived thread only.
            if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "setns {ns_path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let cname = CString::new(iface.clone()).unwrap();
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            if ifindex == 0 {
                return Err(format!("no interface {iface} in {ns_path}"));
            }
            // r0 = XDP_PASS; exit
            let insns: [u64; 2] = [
                u64::from_ne_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
                u64::from_ne_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
            ];
            let license = b"GPL\0";
            let mut attr = Attr::new();
            attr.put_u32(0, BPF_PROG_TYPE_XDP);
            attr.put_u32(4, insns.len() as u32);
            attr.put_u64(8, insns.as_ptr() as u64);
            attr.put_u64(16, license.as_ptr() as u64);
            attr.0[48..48 + 9].copy_from_slice(b"test_pass");
            let prog =
                bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| format!("load XDP pass program: {e}"))?;
            let mut attr = Attr::new();
            attr.put_u32(0, prog.as_raw_fd() as u32);
            attr.put_u32(4, ifindex);
            attr.put_u32(8, BPF_XDP);
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .map_err(|e| format!("attach XDP pass program to {iface}: {e}"))?;
            Ok(Self {
                _link: link,
                _prog: prog,
            })
        })
        .join()
        .expect("XDP attach thread")
        .unwrap_or_else(|e| panic!("{e}"))
    }
}
