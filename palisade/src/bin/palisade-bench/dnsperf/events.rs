//! Palisade's event stream, read while the suite runs, as the daemon reads it.
//!
//! Every query Palisade blocks is reported on the `EVENTS` ring buffer. Nobody reading it
//! would flatter Palisade: once the ring is full the kernel refuses each record at once, which
//! costs less than writing it, and nothing in userspace wakes up to decode it. So each Palisade
//! server gets a reader thread, pinned to the servers' CPU, that does per record what the
//! daemon does (decode it, render its JSON and text forms), and its CPU time counts with the
//! server's. Lost records (`events_lost`) are counted by the measurements.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use palisade::events::decode_dns;
use palisade_common::event::EVENT_DRAIN_INTERVAL_MS;

use super::measure::set_affinity;

/// How long the reader sleeps in `poll` when not woken: the kernel wakes it only for batches,
/// and the daemon drains at this interval too.
const POLL_MS: i32 = EVENT_DRAIN_INTERVAL_MS as i32;

/// A thread draining one Palisade object's event ring.
pub struct EventReader {
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    tid: u32,
    thread: Option<JoinHandle<()>>,
}

impl EventReader {
    /// Takes the `EVENTS` map out of `ebpf` and starts reading it on `cpu`.
    ///
    /// # Errors
    /// When the object has no event ring or the thread cannot start.
    pub fn start(ebpf: &mut Ebpf, cpu: usize) -> Result<Self> {
        let map = ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("no EVENTS map"))?;
        let mut ring = RingBuf::try_from(map).context("opening the event ring")?;
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = {
            let (stop, read) = (Arc::clone(&stop), Arc::clone(&read));
            thread::Builder::new()
                .name("palisade-events".into())
                .spawn(move || {
                    let _ = set_affinity(cpu);
                    // SAFETY: gettid has no preconditions.
                    let _ = tid_tx.send(unsafe { libc::gettid() } as u32);
                    drain(&mut ring, &stop, &read);
                })
                .context("starting the event reader")?
        };
        let tid = tid_rx
            .recv()
            .map_err(|_| anyhow!("the event reader stopped at once"))?;
        Ok(Self {
            stop,
            read,
            tid,
            thread: Some(thread),
        })
    }

    /// The reader thread's id, for its CPU time.
    pub const fn tid(&self) -> u32 {
        self.tid
    }

    /// Records read so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for records and handles each one until `stop` is set.
fn drain(ring: &mut RingBuf<MapData>, stop: &AtomicBool, read: &AtomicU64) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&raw mut pfd, 1, POLL_MS) };
        while let Some(item) = ring.next() {
            if let Some(ev) = decode_dns(&item) {
                // What the daemon renders for every record (printing aside).
                let rendered = (
                    serde_json::to_string(&ev).unwrap_or_default(),
                    ev.to_string(),
                );
                std::hint::black_box(rendered);
            }
            read.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// CPU time of thread `tid` of this process, in seconds (scheduler runtime); 0 once it is gone.
pub fn thread_runtime(tid: u32) -> f64 {
    let path = format!("/proc/self/task/{tid}/schedstat");
    crate::inspect::schedstat_ns(std::path::Path::new(&path)).map_or(0.0, |ns| ns as f64 / 1e9)
}
