//! Putting a policy into the kernel: compile everything, then install it in one generation
//! switch. Shared by `palisade run`, the tests and the benchmarks.

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, maps::ProgramArray, programs::Xdp};
use palisade_common::firewall::Control;

use crate::{
    dns,
    firewall::{apply, compile},
    maps::map_mut,
    policy::model::Policy,
};

/// The XDP firewall program.
pub const FIREWALL: &str = "palisade_firewall";
/// The XDP DNS inspector, entered by tail call from the firewall.
pub const DNS_INGRESS: &str = "palisade_dns_ingress";
/// The cgroup_skb egress DNS program.
pub const DNS_EGRESS: &str = "palisade_dns_egress";
/// Slot of the DNS inspector in `XDP_TAILS` (see the kernel's `maps::TAIL_DNS`).
const TAIL_DNS: u32 = 0;

/// Compiles `policy` completely, then installs it. Nothing changes in the kernel unless the
/// whole policy compiled.
///
/// # Errors
/// When the policy cannot be compiled or written; the running policy is then unchanged.
pub fn install(ebpf: &mut Ebpf, policy: &Policy) -> Result<Control> {
    let firewall = compile::compile(policy).context("compiling the firewall policy")?;
    let key = apply::hash_key(ebpf)?;
    let dns = dns::compile::compile(policy, &key, &dns::compile::Clock::now())
        .context("compiling the DNS policy")?;
    apply::install(ebpf, &firewall, &dns)
}

/// Puts the (already loaded) DNS inspector into the firewall's tail-call table.
///
/// # Errors
/// When the program is not loaded or the table cannot be written.
pub fn link_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    let fd = {
        let prog: &Xdp = ebpf
            .program(DNS_INGRESS)
            .ok_or_else(|| anyhow!("kernel object has no program {DNS_INGRESS}"))?
            .try_into()?;
        prog.fd()?.try_clone()?
    };
    let mut tails: ProgramArray<&mut aya::maps::MapData> =
        ProgramArray::try_from(map_mut(ebpf, "XDP_TAILS")?)?;
    tails.set(TAIL_DNS, &fd, 0)?;
    Ok(())
}
