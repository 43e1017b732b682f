//! Connection tracking, userspace side: the tracker's settings, the sweep that expires
//! entries, reading the tables, and what `palisade ct`, `status` and the metrics report. The datapath and the
//! state machine are described in `docs/design/conntrack.md`.

pub mod carry;
pub mod filter;
pub mod overload;
pub mod report;
pub mod table;

pub use filter::FlowFilter;
pub use table::{
    Balance, Flow, balance, census, flows, read_stats, sweep, sweep_program, sweep_timed,
    write_config,
};

/// The sweep program (XDP, run through `BPF_PROG_TEST_RUN`, never attached).
pub const SWEEP: &str = "palisade_ct_sweep";
/// The TC egress program that tracks what the host sends.
pub const EGRESS: &str = "palisade_ct_egress";
/// How often the daemon sweeps: entries expire within their timeout plus this.
pub const SWEEP_INTERVAL_MS: u64 = 1000;
