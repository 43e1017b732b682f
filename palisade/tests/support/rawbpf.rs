//! Tiny BPF programs for the test topologies, loaded with raw `bpf(2)` calls (no object file)
//! and attached through bpf_links, so they go away when their guard drops (the link fd
//! closes) or their namespace is deleted.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
pub const BPF_XDP: u32 = 37;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_F_BEFORE` with no relative program: first in the interface's tcx chain.
pub const BPF_F_BEFORE: u32 = 1 << 3;

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

/// One instruction: opcode, destination and source registers, offset, immediate.
#[must_use]
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    u64::from_le_bytes([code, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]])
}

/// A loaded program and the link attaching it.
pub struct Attached {
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// Loads `insns` as a program of `prog_type` named `name` and attaches it with a link of
/// `attach_type` (`flags` as `BPF_LINK_CREATE` takes them) to `iface` in namespace `ns`.
pub fn attach(
    ns: &str,
    iface: &str,
    prog_type: u32,
    attach_type: u32,
    flags: u32,
    name: &str,
    insns: &[u64],
) -> Attached {
    let ns_path = format!("/run/netns/{ns}");
    let iface = iface.to_string();
    let name = name.to_string();
    let insns = insns.to_vec();
    // setns() changes only the calling thread's namespace: do it on a thread of its own.
    thread::spawn(move || -> Result<Attached, String> {
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
        let license = b"GPL\0";
        let mut attr = Attr::new();
        attr.put_u32(0, prog_type);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        let n = name.len().min(15);
        attr.0[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
        let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| format!("load {name}: {e}"))?;
        let mut attr = Attr::new();
        attr.put_u32(0, prog.as_raw_fd() as u32);
        attr.put_u32(4, ifindex);
        attr.put_u32(8, attach_type);
        attr.put_u32(12, flags);
        let link = bpf(BPF_LINK_CREATE, &mut attr)
            .map_err(|e| format!("attach {name} to {iface}: {e}"))?;
        Ok(Attached {
            _link: link,
            _prog: prog,
        })
    })
    .join()
    .expect("attach thread")
    .unwrap_or_else(|e| panic!("{e}"))
}
