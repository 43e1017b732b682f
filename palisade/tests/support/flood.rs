//! A flood generator for `BPF_PROG_TEST_RUN` in XDP live-frames mode: every frame comes
//! from a source address not seen before, or, cycling, from one of a fixed set of sources
//! in turn (established flows).
//!
//! Live frames run one frame over and over, and the kernel recycles the frames' pages without
//! restoring their bytes, so a program that rewrites its packet (a SYN answered in place with
//! a SYN-ACK) would find its own answer in the next frame. The generator, a small program in
//! raw BPF instructions (the tests and the bench need no program of their own in the object),
//! therefore writes the whole template's headers into each frame, stamps the next source
//! address (a base plus a counter) with both checksums corrected, and then hands the frame
//! on: by tail call into a program (the firewall), or to the stack (`XDP_PASS`), or it drops
//! it (the generator's own cost).
//!
//! Run with an ingress interface ([`Generator::send_on`]), the frames arrive as if received
//! by that interface: `XDP_PASS` hands them to its stack and `XDP_TX` sends them out of it.
//!
//! Used by `conntrack_flood.rs`, `shield_flood.rs`, the bench's SYN-flood suite and its
//! load-balancer suite's live frames.
//!
//! Some kernels refuse live-frames test runs (`EPERM`). There [`Generator::send`] runs the
//! same programs in the test run's copy mode instead ([`live_frames`] says which): every
//! frame is stamped and goes through the generator and the program it hands on to, with all
//! the state that program keeps, but a frame's verdict ends the run: nothing reaches the
//! stack or leaves by `XDP_TX`.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

use super::rawbpf::{BPF_PROG_TYPE_XDP, BPF_XDP, insn};

/// `bpf(2)` with `attr` as the attribute union.
fn bpf<T>(cmd: u32, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr`, valid for its size; the kernel
    // zero-extends shorter attributes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per live-frames batch (the kernel's NAPI weight).
pub const BATCH: u32 = 64;

const XDP_ABORTED: i32 = 0;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

/// Where the IPv4 header starts in a template (Ethernet, no VLAN tag).
const L3: usize = 14;
/// Offsets in the frame: IPv4 checksum and source address.
const IP_CSUM: usize = L3 + 10;
const IP_SRC: usize = L3 + 12;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as a test run's context: where the frame seems to come from.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a new descriptor the kernel just returned, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn map_create(map_type: u32, value_size: u32) -> OwnedFd {
    let mut attr = MapCreate {
        map_type,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: 0,
    };
    owned(bpf(BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE"))
}

/// The interface index of `name` in the calling thread's namespace.
#[must_use]
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

/// What the generator does with each frame once it is stamped.
#[derive(Clone, Copy)]
pub enum Then<'a> {
    /// Tail call into this XDP program.
    TailCall(BorrowedFd<'a>),
    /// `XDP_PASS`: to the stack of the ingress interface.
    Pass,
    /// `XDP_DROP`: what generating alone costs.
    Drop,
}

/// One's-complement sum of 16-bit big-endian words.
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The program's instructions, with jumps to the exit label patched at the end.
struct Asm {
    code: Vec<u64>,
    to_abort: Vec<usize>,
}

impl Asm {
    fn op(&mut self, i: u64) {
        self.code.push(i);
    }

    /// A conditional jump (`code` with `dst`, `src`/`imm`) to the abort label.
    fn jump_abort(&mut self, code: u8, dst: u8, src: u8, imm: i32) {
        self.to_abort.push(self.code.len());
        self.code.push(insn(code, dst, src, 0, imm));
    }

    /// `dst = map` (a two-slot `BPF_LD_IMM64` of a map descriptor).
    fn ld_map(&mut self, dst: u8, fd: &OwnedFd) {
        self.code.push(insn(0x18, dst, 1, 0, fd.as_raw_fd()));
        self.code.push(0);
    }

    /// `*(u16 *)(r7 + at) = ~fold(k + r2)`, big-endian: a checksum from its one's-complement
    /// sum without the source address (`k`) and the new address's two halves (`r2`).
    fn checksum(&mut self, at: usize, k: u32) {
        self.op(insn(0xbf, 1, 2, 0, 0)); // r1 = r2
        self.op(insn(0x07, 1, 0, 0, k as i32)); // r1 += k
        for _ in 0..2 {
            self.op(insn(0xbf, 3, 1, 0, 0)); // r3 = r1
            self.op(insn(0x77, 3, 0, 0, 16)); // r3 >>= 16
            self.op(insn(0x57, 1, 0, 0, 0xffff)); // r1 &= 0xffff
            self.op(insn(0x0f, 1, 3, 0, 0)); // r1 += r3
        }
        self.op(insn(0xa7, 1, 0, 0, 0xffff)); // r1 ^= 0xffff
        self.op(insn(0xdc, 1, 0, 0, 16)); // r1 = htobe16(r1)
        self.op(insn(0x6b, 7, 1, at as i16, 0)); // *(u16 *)(r7 + at) = r1
    }
}

/// The generator (see the module's documentation).
pub struct Generator {
    prog: OwnedFd,
    counter: OwnedFd,
    _target: OwnedFd,
    /// The program's attachment to a silent interface: a test run of an XDP program that
    /// is attached nowhere adds it to the kernel's XDP dispatcher and removes it again,
    /// waiting for RCU grace periods each time.
    _link: OwnedFd,
    template: Vec<u8>,
}

impl Generator {
    /// A generator of `template` (Ethernet, IPv4 without options, then TCP or UDP, with
    /// correct checksums) whose source address becomes `base` plus a counter on each frame.
    /// `park` is an interface of the calling thread's namespace that carries no traffic:
    /// the generator is attached there for the dispatcher's sake, never run by it.
    ///
    /// # Panics
    /// When the template is not of that shape or the kernel refuses the program.
    #[must_use]
    pub fn new(template: &[u8], base: std::net::Ipv4Addr, then: Then<'_>, park: &str) -> Self {
        Self::build(template, base, None, then, park)
    }

    /// A generator whose sources cycle through `flows` addresses from `base` (a power of
    /// two): the same flows again and again, as established traffic.
    ///
    /// # Panics
    /// As [`Generator::new`], and when `flows` is not a power of two.
    #[must_use]
    pub fn cycling(
        template: &[u8],
        base: std::net::Ipv4Addr,
        flows: u32,
        then: Then<'_>,
        park: &str,
    ) -> Self {
        assert!(flows.is_power_of_two(), "{flows} flows: not a power of two");
        Self::build(template, base, Some(flows - 1), then, park)
    }

    fn build(
        template: &[u8],
        base: std::net::Ipv4Addr,
        mask: Option<u32>,
        then: Then<'_>,
        park: &str,
    ) -> Self {
        assert!(
            template.len() >= L3 + 20 && template[12..14] == [0x08, 0x00] && template[L3] == 0x45,
            "the template is an untagged IPv4 frame without IP options"
        );
        let l4_csum = match template[L3 + 9] {
            6 => L3 + 20 + 16,
            17 => L3 + 20 + 6,
            p => panic!("the template's protocol {p} is neither TCP nor UDP"),
        };
        assert!(template.len() >= l4_csum + 2, "the template is truncated");
        let mut template = template.to_vec();
        template[IP_SRC..IP_SRC + 4].copy_from_slice(&base.octets());
        // Both checksums of the template recomputed for `base`, then split: the sum of
        // everything but the source address, which the program adds per frame.
        let ip_len = 20;
        template[IP_CSUM..IP_CSUM + 2].fill(0);
        let ip_rest = ones_sum(&template[L3..L3 + ip_len]) - ones_sum(&base.octets());
        let ip_csum = !fold(ones_sum(&template[L3..L3 + ip_len]));
        template[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
        let l4 = L3 + ip_len;
        let l4_len = u16::from_be_bytes([template[L3 + 2], template[L3 + 3]]) as usize - ip_len;
        assert_eq!(l4 + l4_len, template.len(), "the IP length is the frame's");
        template[l4_csum..l4_csum + 2].fill(0);
        let pseudo_rest = ones_sum(&template[IP_SRC + 4..IP_SRC + 8])
            + u32::from(template[L3 + 9])
            + l4_len as u32;
        let l4_rest = pseudo_rest + ones_sum(&template[l4..]);
        let l4_csum_value = !fold(l4_rest + ones_sum(&base.octets()));
        template[l4_csum..l4_csum + 2].copy_from_slice(&l4_csum_value.to_be_bytes());

        let counter = map_create(BPF_MAP_TYPE_ARRAY, 4);
        let target = map_create(BPF_MAP_TYPE_PROG_ARRAY, 4);
        if let Then::TailCall(fd) = then {
            let key = 0u32;
            let value = fd.as_raw_fd() as u32;
            let mut up = MapElem {
                map_fd: target.as_raw_fd() as u32,
                key: std::ptr::from_ref(&key) as u64,
                value: std::ptr::from_ref(&value) as u64,
                ..MapElem::default()
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut up).expect("putting the target in the generator's slot");
        }

        // Registers: r6 the context, r7 the frame's start, r8 the counter's old value.
        let mut a = Asm {
            code: Vec::new(),
            to_abort: Vec::new(),
        };
        a.op(insn(0xbf, 6, 1, 0, 0)); // r6 = r1
        a.op(insn(0x61, 2, 6, 0, 0)); // r2 = ctx->data
        a.op(insn(0x61, 3, 6, 4, 0)); // r3 = ctx->data_end
        a.op(insn(0xbf, 7, 2, 0, 0)); // r7 = r2
        a.op(insn(0x07, 2, 0, 0, template.len() as i32)); // r2 += template length
        a.jump_abort(0x2d, 2, 3, 0); // if r2 > r3 goto abort
        a.op(insn(0x62, 10, 0, -4, 0)); // *(u32 *)(r10 - 4) = 0
        a.op(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
        a.op(insn(0x07, 2, 0, 0, -4)); // r2 -= 4
        a.ld_map(1, &counter); // r1 = counter map
        a.op(insn(0x85, 0, 0, 0, 1)); // r0 = bpf_map_lookup_elem(r1, r2)
        a.jump_abort(0x15, 0, 0, 0); // if r0 == 0 goto abort
        a.op(insn(0xb7, 8, 0, 0, 1)); // r8 = 1
        a.op(insn(0xc3, 0, 8, 0, 1)); // r8 = atomic_fetch_add((u32 *)r0, r8)
        // The template's bytes, 4 at a time (stored as the CPU reads them), then the tail.
        let words = template.len() / 4;
        for w in 0..words {
            let b = &template[w * 4..w * 4 + 4];
            let v = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            a.op(insn(0x62, 7, 0, (w * 4) as i16, v)); // *(u32 *)(r7 + 4w) = v
        }
        for (i, &b) in template.iter().enumerate().skip(words * 4) {
            a.op(insn(0x72, 7, 0, i as i16, i32::from(b))); // *(u8 *)(r7 + i) = b
        }
        a.op(insn(0xbf, 9, 8, 0, 0)); // r9 = r8
        if let Some(mask) = mask {
            a.op(insn(0x54, 9, 0, 0, mask as i32)); // w9 &= mask
        }
        a.op(insn(0x04, 9, 0, 0, u32::from(base) as i32)); // w9 += base
        a.op(insn(0xbf, 1, 9, 0, 0)); // r1 = r9
        a.op(insn(0xdc, 1, 0, 0, 32)); // r1 = htobe32(r1)
        a.op(insn(0x63, 7, 1, IP_SRC as i16, 0)); // *(u32 *)(r7 + source) = r1
        a.op(insn(0xbf, 2, 9, 0, 0)); // r2 = r9
        a.op(insn(0x77, 2, 0, 0, 16)); // r2 >>= 16
        a.op(insn(0x57, 9, 0, 0, 0xffff)); // r9 &= 0xffff
        a.op(insn(0x0f, 2, 9, 0, 0)); // r2 += r9
        a.checksum(IP_CSUM, ip_rest);
        a.checksum(l4_csum, l4_rest);
        let verdict = match then {
            Then::TailCall(_) => {
                a.op(insn(0xbf, 1, 6, 0, 0)); // r1 = r6
                a.ld_map(2, &target); // r2 = target slot
                a.op(insn(0xb7, 3, 0, 0, 0)); // r3 = 0
                a.op(insn(0x85, 0, 0, 0, 12)); // bpf_tail_call(r1, r2, r3)
                // Reached only when the slot is empty.
                XDP_ABORTED
            }
            Then::Pass => XDP_PASS,
            Then::Drop => XDP_DROP,
        };
        a.op(insn(0xb7, 0, 0, 0, verdict)); // r0 = verdict
        a.op(insn(0x95, 0, 0, 0, 0)); // exit
        let abort = a.code.len();
        a.op(insn(0xb7, 0, 0, 0, XDP_ABORTED)); // abort: r0 = XDP_ABORTED
        a.op(insn(0x95, 0, 0, 0, 0)); // exit
        for &j in &a.to_abort {
            let off = (abort - j - 1) as i16;
            a.code[j] |= u64::from(off as u16) << 16;
        }

        let license = c"GPL";
        let mut log = vec![0u8; 256 * 1024];
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"flood_spoof");
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: a.code.len() as u32,
            insns: a.code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name,
            // The attach type aya gives XDP programs: a tail call slot takes only programs
            // of its first occupant's type and attach type.
            expected_attach_type: BPF_XDP,
            ..ProgLoad::default()
        };
        let prog = owned(bpf(BPF_PROG_LOAD, &mut attr).unwrap_or_else(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            panic!(
                "loading the flood generator: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }));
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex(park),
            attach_type: BPF_XDP,
            flags: 0,
        };
        let link = owned(bpf(BPF_LINK_CREATE, &mut attr).expect("attaching the flood generator"));
        Self {
            prog,
            counter,
            _target: target,
            _link: link,
            template,
        }
    }

    /// The template as the generator writes it, with the base address as its source.
    #[must_use]
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    /// Frames stamped so far (the next source is the base plus this, modulo the flows when
    /// cycling).
    #[must_use]
    pub fn stamped(&self) -> u32 {
        let key = 0u32;
        let mut value = 0u32;
        let mut attr = MapElem {
            map_fd: self.counter.as_raw_fd() as u32,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_mut(&mut value) as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).expect("reading the generator's counter");
        value
    }

    /// `count` frames, each from a new source, arriving on the loopback device of the
    /// calling thread's namespace.
    pub fn send(&self, count: u32) {
        self.run(count, None);
    }

    /// `count` frames, each from a new source, arriving on interface `ifindex` of the
    /// calling thread's namespace (which must have an XDP program attached in native mode,
    /// for the queue the frames claim to arrive on to exist for XDP).
    pub fn send_on(&self, count: u32, ifindex: u32) {
        self.run(count, Some(ifindex));
    }

    fn run(&self, count: u32, ifindex: Option<u32>) {
        let live = live_frames();
        let mut ctx = XdpMd {
            data_end: self.template.len() as u32,
            ingress_ifindex: ifindex.unwrap_or(0),
            ..XdpMd::default()
        };
        let mut attr = TestRun {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: self.template.len() as u32,
            data_in: self.template.as_ptr() as u64,
            repeat: count,
            flags: if live { BPF_F_TEST_XDP_LIVE_FRAMES } else { 0 },
            batch_size: if live { BATCH } else { 0 },
            ..TestRun::default()
        };
        if ifindex.is_some() {
            attr.ctx_size_in = size_of::<XdpMd>() as u32;
            attr.ctx_in = std::ptr::from_mut(&mut ctx) as u64;
        }
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN of the flood generator");
    }
}

/// Why a measurement that needs live frames was not made on a kernel that refuses them.
pub const LIVE_REFUSED: &str = "this kernel refuses BPF_PROG_TEST_RUN in XDP live-frames mode (EPERM): frames cannot be \
     injected into the stack";

/// Whether this kernel runs XDP test runs in live-frames mode (probed once, with a program
/// that drops its frame): some refuse it with `EPERM`.
#[must_use]
pub fn live_frames() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        // r0 = XDP_DROP; exit
        let code = [insn(0xb7, 0, 0, 0, XDP_DROP), insn(0x95, 0, 0, 0, 0)];
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_XDP,
            ..ProgLoad::default()
        };
        let Ok(prog) = bpf(BPF_PROG_LOAD, &mut attr).map(owned) else {
            return false;
        };
        let frame = [0u8; 64];
        let mut attr = TestRun {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: BATCH,
            ..TestRun::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).is_ok()
    })
}

/// A one's-complement sum folded to 16 bits.
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}
