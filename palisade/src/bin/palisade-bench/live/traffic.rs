//! The sending side: the frames, and a pinned thread that sends them with XDP live frames and
//! counts the CPU it took.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use palisade::craft::{Frame, L4};

use crate::{inspect, netns::Netns, rng::Rng, workload::public_v4};

/// Must match `BENCH_FRAME_LEN` and `BENCH_TEMPLATES` in `palisade-ebpf/src/bench.rs`.
pub const FRAME_LEN: usize = 64;
pub const TEMPLATES: u32 = 64;
/// Frames per batch in live mode (the kernel's default NAPI weight).
const BATCH: u32 = 64;

/// `n` distinct public /32 sources.
pub fn blocklist(n: usize, seed: u64) -> Vec<std::net::Ipv4Addr> {
    let mut rng = Rng::new(seed ^ 0x11fe ^ n as u64);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = public_v4(&mut rng);
        if seen.insert(a) {
            out.push(a);
        }
    }
    out
}

/// 64 frames from sources spread evenly over the list (so a linear chain matches, on
/// average, halfway down), half UDP, half TCP SYN, each exactly [`FRAME_LEN`] bytes.
pub fn templates(list: &[std::net::Ipv4Addr], rng: &mut Rng) -> Vec<[u8; FRAME_LEN]> {
    (0..TEMPLATES as usize)
        .map(|k| {
            let src = list[k * list.len() / TEMPLATES as usize];
            let dst = std::net::Ipv4Addr::from(0xc612_0000 | (rng.u32() & 0x0001_ffff));
            let sport = 32_768 + (rng.u16() >> 1);
            let l4 = if k % 2 == 0 {
                L4::Udp { sport, dport: 9 }
            } else {
                L4::Tcp {
                    sport,
                    dport: 80,
                    flags: 0x02,
                }
            };
            let mut f = Frame::new(src.into(), dst.into(), l4);
            let header = f.build().len();
            f.payload = vec![0x5a; FRAME_LEN - header];
            let bytes = f.build();
            let mut out = [0u8; FRAME_LEN];
            out.copy_from_slice(&bytes);
            out
        })
        .collect()
}

/// Nanoseconds a thread has spent on a CPU, from `/proc/<pid>/schedstat`; 0 once it is gone.
pub fn schedstat_ns(pid: u32) -> u64 {
    inspect::schedstat_ns(std::path::Path::new(&format!("/proc/{pid}/schedstat"))).unwrap_or(0)
}

pub fn ksoftirqd(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (fs::read_to_string(e.path().join("comm")).ok()?.trim() == want).then_some(pid)
    })
}

pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One measurement window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub packets: u64,
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// The sending side: a thread pinned to one CPU, inside the namespace.
pub struct Generator<'a> {
    pub prog: &'a Xdp,
    pub ns: &'a Netns,
    pub cpu: usize,
    pub nice: i32,
    pub softirqd: Option<u32>,
    /// Frames per test run, tuned to about 50 ms of work.
    pub chunk: u32,
    /// Every frame sent so far.
    pub sent: u64,
}

impl Generator<'_> {
    pub fn send(&self, frames: u32) -> Result<()> {
        let frame = [0u8; FRAME_LEN];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.repeat = frames;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        self.prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        Ok(())
    }

    /// Sends for `warmup`, then measures `windows` windows of `len`.
    pub fn run(&mut self, warmup: Duration, len: Duration, windows: usize) -> Result<Vec<Window>> {
        let (cpu, nice, ns) = (self.cpu, self.nice, self.ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Vec<Window>> {
                    inspect::pin_to_cpu(cpu)?;
                    if nice != 0 {
                        let _ = inspect::raise_priority(nice);
                    }
                    ns.enter(|| {
                        self.timed(warmup)?;
                        (0..windows).map(|_| self.timed(len)).collect()
                    })?
                })
                .join()
                .map_err(|_| anyhow!("the generator thread panicked"))?
        })
    }

    pub fn timed(&mut self, len: Duration) -> Result<Window> {
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        let soft0 = self.softirqd.map_or(0, schedstat_ns);
        let mut packets = 0u64;
        while start.elapsed() < len {
            let t = Instant::now();
            self.send(self.chunk)?;
            packets += u64::from(self.chunk);
            let took = t.elapsed().as_secs_f64().max(1e-6);
            self.chunk = ((f64::from(self.chunk) * 0.05 / took) as u32).clamp(BATCH, 1 << 22);
        }
        self.sent += packets;
        let cpu =
            thread_cpu_ns() - cpu0 + self.softirqd.map_or(0, schedstat_ns).saturating_sub(soft0);
        Ok(Window {
            packets,
            wall_s: start.elapsed().as_secs_f64(),
            cpu_s: cpu as f64 / 1e9,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_frame_sized_and_from_the_list() {
        let list = blocklist(1000, 1);
        let t = templates(&list, &mut Rng::new(2));
        assert_eq!(t.len(), TEMPLATES as usize);
        for f in &t {
            let Ok(palisade_common::packet::Frame::Ip(p)) = palisade_common::packet::parse(&f[..])
            else {
                panic!("template does not parse");
            };
            let src = std::net::Ipv4Addr::new(p.src[12], p.src[13], p.src[14], p.src[15]);
            assert!(list.contains(&src));
        }
    }
}
