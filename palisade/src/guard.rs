//! Putting a policy into the kernel: compile everything, then install it in one generation
//! switch. Shared by `palisade run`, the tests and the benchmarks.

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, maps::ProgramArray, programs::Xdp};
use palisade_common::firewall::Control;

use crate::{
    capacity::Room,
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
/// The XDP connection tracker, entered by tail call from the firewall.
pub const CT_INGRESS: &str = "palisade_ct_ingress";
/// The XDP rules stage after the tracker.
pub const RULES: &str = "palisade_rules";
/// The XDP SYN-cookie answer of the SYN shield, entered by tail call from the rules.
pub const SYNCOOKIE: &str = "palisade_syncookie";
/// The XDP stage of the load balancer, entered by tail call once the rules allowed a packet
/// to a VIP.
pub const LB: &str = "palisade_lb";
/// Slots of `XDP_TAILS` and their programs (see the kernel's `maps::TAIL_*`).
pub const TAILS: [(u32, &str); 5] = [
    (0, DNS_INGRESS),
    (1, CT_INGRESS),
    (2, RULES),
    (3, SYNCOOKIE),
    (4, LB),
];

/// Compiles `policy` completely, then installs it. Nothing changes in the kernel unless the
/// whole policy compiled.
///
/// # Errors
/// When the policy cannot be compiled or written; the running policy is then unchanged.
pub fn install(ebpf: &mut Ebpf, policy: &Policy) -> Result<Control> {
    install_with(ebpf, policy, &crate::lb::Live::default())
}

/// [`install`], with the load balancer's run-time changes (drains, health, live backends)
/// applied to the policy's services.
///
/// # Errors
/// As [`install`].
pub fn install_with(
    ebpf: &mut Ebpf,
    policy: &Policy,
    lb_live: &crate::lb::Live,
) -> Result<Control> {
    // What the load balancer's tables cannot hold is refused before anything changes.
    crate::lb::fits(&crate::lb::view(&policy.lb, lb_live))?;
    if let Some(b) = &policy.dns.bind {
        crate::dnsbind::fits(b)?;
    }
    let firewall = compile::compile(policy).context("compiling the firewall policy")?;
    let key = apply::hash_key(ebpf)?;
    let dns = dns::compile::compile(policy, &key, &dns::compile::Clock::now())
        .context("compiling the DNS policy")?;
    // A policy past what a generation's tables may hold is refused here, before anything
    // changes; below that, the idle generation's tables are sized for it.
    let need = Room::needed(&firewall, &dns);
    Room::check(need, Room::limits())?;
    let room = Room::sized(need, Room::configured(policy));
    // The tracker's timeouts apply at once (they are not part of a generation); the flows
    // themselves carry over every policy change.
    // The interface and addresses NAT needs are looked up before anything is written: a
    // policy naming a missing interface is refused with the running one untouched.
    let nat = policy
        .nat
        .datapath(&crate::nat::ThisHost)
        .context("resolving [nat]")?;
    crate::conntrack::write_config(ebpf, &crate::policy::conntrack::ct_config(policy))?;
    // The idle generation was live until the last install: packets that read the generation
    // before that switch may still be running on it. Wait for them before rewriting it.
    crate::kernel::wait_for_readers();
    // The shields of the generation about to go live; the live one's stay as they are.
    let idle = (apply::control(ebpf)?.active_gen ^ 1) & 1;
    // The sketch's seed comes from the hash key: random, and kept with the pinned state.
    let mut shield = policy.shield.datapath(key.k[1] as u32, || {
        crate::shield::host_wscale(std::path::Path::new("/proc/sys"))
    });
    crate::shield::within_scrub(&mut shield, &policy.scrub);
    let sketch = policy.shield.sources_on();
    if sketch {
        crate::shield::ensure_sketch(ebpf)?;
    }
    crate::shield::write_config(ebpf, idle, &shield)?;
    crate::scrub::write_config(ebpf, idle, &policy.scrub.datapath())?;
    crate::tls::write_config(ebpf, idle, &policy.tls.gate())?;
    crate::dhcp::write_config(ebpf, idle, &policy.dhcp)?;
    crate::nat::write_config(ebpf, idle, &nat, &policy.nat)?;
    crate::dns::cache::write_config(ebpf, idle, policy.dns.cache.as_ref())?;
    let control = apply::install(ebpf, &firewall, &dns, &room)?;
    // The generation that may have used the sketch is no longer live.
    if !sketch {
        crate::shield::drop_sketch(ebpf)?;
    }
    // The load balancer's tables switch on their own slot, right after the rules that let
    // VIP traffic in.
    // The wait above covers the load balancer's slot too: its last switch came before it.
    crate::lb::install_after_wait(ebpf, &policy.lb, lb_live)
        .context("installing the load balancer's tables")?;
    crate::dnsbind::write_config(ebpf, policy.dns.bind.as_ref())?;
    Ok(control)
}

/// Puts the (already loaded) tail-call stages into the firewall's tail-call table.
///
/// # Errors
/// When a program is not loaded or the table cannot be written.
pub fn link_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    for (slot, name) in TAILS {
        let fd = {
            let prog: &Xdp = ebpf
                .program(name)
                .ok_or_else(|| anyhow!("kernel object has no program {name}"))?
                .try_into()?;
            prog.fd()?.try_clone()?
        };
        let mut tails: ProgramArray<&mut aya::maps::MapData> =
            ProgramArray::try_from(map_mut(ebpf, "XDP_TAILS")?)?;
        tails.set(slot, &fd, 0)?;
    }
    Ok(())
}
