//! Palisade's kernel programs. Each `#[xdp]`/`#[classifier]`/`#[cgroup_skb]` entry point is
//! thin: it calls into one module per concern and maps the result to a verdict in exactly one
//! place, where the fail-open or fail-closed choice for that hook is made.

#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in `core::sync::atomic` (its spec says
// `atomic-cas: false`), but the kernel has had the instructions since 5.12: `atomic` reaches
// them through the compiler's intrinsics.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic intrinsics, see `atomic`")]
// Inline assembly on this target: unaligned packet loads (`bytes::load_word`, `load_half`).
#![feature(asm_experimental_arch)]

mod atomic;
mod bench;
mod bytes;
mod ct;
mod dhcp;
mod dlp;
mod dns;
mod dnsbind;
mod firewall;
mod ids;
mod intel;
mod lb;
mod maps;
mod nat;
mod scrub;
mod shield;
mod tls;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_skb, cgroup_sock_addr, classifier, xdp},
    programs::{SkBuffContext, SockAddrContext, TcContext, XdpContext},
};

/// XDP ingress firewall.
///
/// Fail-closed for malformed IP packets (they are dropped with a reason), fail-open for
/// internal errors (a map that cannot be read): a broken load must never cut the operator off.
#[xdp]
pub fn palisade_firewall(ctx: XdpContext) -> u32 {
    firewall::run(&ctx)
}

/// DNS inspection of queries arriving on the guarded interfaces; entered by tail call from
/// [`palisade_firewall`] for packets it allowed to a DNS port.
#[xdp]
pub fn palisade_dns_ingress(ctx: XdpContext) -> u32 {
    dns::ingress::run(&ctx)
}

/// DNS policy for queries sent by local processes.
#[cgroup_skb]
pub fn palisade_dns_egress(ctx: SkBuffContext) -> i32 {
    dns::egress::run(&ctx)
}

/// DNS binding, answer path: binds the addresses of DNS answers delivered to a cgroup in
/// bind mode. Never drops.
#[cgroup_skb]
pub fn palisade_bind_answer(ctx: SkBuffContext) -> i32 {
    dnsbind::answer::run(&ctx)
}

/// DNS binding, `connect()` of IPv4 sockets: refused (`EPERM`) unless the destination was
/// resolved by the cgroup or is allowed explicitly.
#[cgroup_sock_addr(connect4)]
pub fn palisade_bind_connect4(ctx: SockAddrContext) -> i32 {
    dnsbind::connect::run(&ctx, false)
}

/// DNS binding, `connect()` of IPv6 sockets (v4-mapped destinations included).
#[cgroup_sock_addr(connect6)]
pub fn palisade_bind_connect6(ctx: SockAddrContext) -> i32 {
    dnsbind::connect::run(&ctx, true)
}

/// DNS binding, `sendmsg()` with a destination on unconnected IPv4 UDP sockets.
#[cgroup_sock_addr(sendmsg4)]
pub fn palisade_bind_sendmsg4(ctx: SockAddrContext) -> i32 {
    dnsbind::connect::run(&ctx, false)
}

/// DNS binding, `sendmsg()` with a destination on unconnected IPv6 UDP sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn palisade_bind_sendmsg6(ctx: SockAddrContext) -> i32 {
    dnsbind::connect::run(&ctx, true)
}

/// Connection tracking of packets arriving on the guarded interfaces; entered by tail call
/// from [`palisade_firewall`] when the policy tracks connections.
#[xdp]
pub fn palisade_ct_ingress(ctx: XdpContext) -> u32 {
    ct::ingress::run(&ctx)
}

/// The firewall's rules, after the tracker; entered by tail call from
/// [`palisade_ct_ingress`].
#[xdp]
pub fn palisade_rules(ctx: XdpContext) -> u32 {
    firewall::run_rules(&ctx)
}

/// The SYN-cookie answer of the SYN shield; entered by tail call from the rules when they
/// allowed a SYN to a port whose cookies are engaged.
#[xdp]
pub fn palisade_syncookie(ctx: XdpContext) -> u32 {
    shield::syncookie::run(&ctx)
}

/// The load balancer: entered by tail call from the firewall for an allowed packet to a VIP
/// of `[[lb.service]]`. Fail-open for internal errors; a service with no backend drops.
#[xdp]
pub fn palisade_lb(ctx: XdpContext) -> u32 {
    lb::run(&ctx)
}

/// The reverse translation of DNAT services (TC egress): replies of their backends leave
/// with the VIP as source. Never drops.
#[classifier]
pub fn palisade_lb_reverse(ctx: TcContext) -> i32 {
    lb::reverse::run(&ctx)
}

/// Decapsulation of DSR packets on a backend without IPIP / IP6IP6 tunnel devices (TC
/// ingress there; never attached by the daemon on the balancer). Never drops.
#[classifier]
pub fn palisade_lb_decap(ctx: TcContext) -> i32 {
    lb::decap::run(&ctx)
}

/// Connection tracking of what the host sends on the guarded interfaces (TC egress). Never
/// drops: fail-open for everything, including internal errors.
#[classifier]
pub fn palisade_ct_egress(ctx: TcContext) -> i32 {
    ct::egress::run(&ctx)
}

/// Scrub of what arrives on the guarded interfaces (TC ingress, after the XDP firewall let
/// it in). Never drops: fail-open for everything, see `scrub`.
#[classifier]
pub fn palisade_scrub_ingress(ctx: TcContext) -> i32 {
    scrub::run(&ctx, palisade_common::scrub::SCRUB_INGRESS)
}

/// The mark of a `mark` rule, left by the XDP firewall in the frame's metadata, set on the
/// socket buffer (TC ingress). Never drops: fail-open, see `firewall::action`.
#[classifier]
pub fn palisade_action_ingress(ctx: TcContext) -> i32 {
    firewall::action::ingress(&ctx)
}

/// A `steer` rule's packet on the CPU it was handed to (the CPU map's program): counted per
/// CPU, then on to the stack.
#[xdp(map = "cpumap")]
pub fn palisade_steer_cpu(_ctx: XdpContext) -> u32 {
    maps::bump(&maps::STEER_STATS, palisade_common::steer::SS_ARRIVED);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Scrub of what leaves through the guarded interfaces (TC egress). Never drops.
#[classifier]
pub fn palisade_scrub_egress(ctx: TcContext) -> i32 {
    scrub::run(&ctx, palisade_common::scrub::SCRUB_EGRESS)
}

/// NAT of what arrives on the outside interface (TC ingress, after the XDP firewall and
/// tracker): replies of masqueraded flows and new flows to port forwards get their
/// destination translated. Fail-open, but for a new forwarded flow that cannot be mapped
/// (dropped with its reason); see `nat`.
#[classifier]
pub fn palisade_nat_ingress(ctx: TcContext) -> i32 {
    nat::run(&ctx, true)
}

/// NAT of what leaves through the outside interface (TC egress, before the egress tracker):
/// sources translated; a new flow from a masqueraded subnet that cannot get a port is
/// dropped with `nat-port-exhausted` (fail-closed), anything NAT does not handle passes.
#[classifier]
pub fn palisade_nat_egress(ctx: TcContext) -> i32 {
    nat::run(&ctx, false)
}

/// The `[tls]` gate on what arrives on the guarded interfaces (TC ingress): holds flows to
/// the policy's ports until the daemon has read the ClientHello, then enforces its verdict.
/// Fail-open for what it cannot parse and for flows it does not know; fail-closed for
/// refused flows and for server data before the verdict (see `tls`).
#[classifier]
pub fn palisade_tls_ingress(ctx: TcContext) -> i32 {
    tls::run(&ctx)
}

/// The `[tls]` gate on what leaves through the guarded interfaces (TC egress): the same
/// program, for a host that is itself the client or the server.
#[classifier]
pub fn palisade_tls_egress(ctx: TcContext) -> i32 {
    tls::run(&ctx)
}

/// DHCP snooping of what leaves through the guarded interfaces (TC egress): DHCP, DHCPv6
/// and router advertisements copied to the daemon; a rogue server's message or router
/// advertisement dropped under `[dhcp] rogue = "block"`. Fail-open otherwise (see `dhcp`).
#[classifier]
pub fn palisade_dhcp_egress(ctx: TcContext) -> i32 {
    dhcp::run(&ctx)
}

/// The `[intel]` check of what leaves through the guarded interfaces (TC egress): the
/// destination against the indicators when the policy says `egress = true`. Fail-open for
/// what it cannot parse and for internal errors; a listed destination of a drop feed is
/// dropped (`intel-drop`).
#[classifier]
pub fn palisade_intel_egress(ctx: TcContext) -> i32 {
    intel::egress::run(&ctx)
}

/// The DNS response cache's fill (TC egress): the configured resolver's answers to queries
/// seen at XDP ingress are stored (`[dns.cache]`). Never drops: fail-open for everything.
#[classifier]
pub fn palisade_dns_cache_fill(ctx: TcContext) -> i32 {
    dns::cache::fill(&ctx)
}

/// Removes expired (or flushed) flows and counts the rest; run by userspace through
/// `BPF_PROG_TEST_RUN`, never attached.
#[xdp]
pub fn palisade_ct_sweep(ctx: XdpContext) -> u32 {
    ct::sweep::run(&ctx)
}

/// The smallest XDP program: passes everything. Loaded by the benchmarks as the cost floor.
#[xdp]
pub fn palisade_floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops everything: the floor for the drop path in benchmarks.
#[xdp]
pub fn palisade_floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The smallest cgroup_skb program: passes everything. The floor of the DNS binding
/// benchmark's answer path.
#[cgroup_skb]
pub fn palisade_floor_skb(_ctx: SkBuffContext) -> i32 {
    1
}

/// DLP: entry of `SSL_write`, `SSL_write_ex`, `SSL_read`, `SSL_read_ex` and `SSL_free` (which
/// one comes from the attach cookie); captures writes. Observes only: fail-open for everything.
#[aya_ebpf::macros::uprobe]
pub fn palisade_dlp_enter(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
    dlp::enter(&ctx)
}

/// DLP: return of `SSL_read` and `SSL_read_ex`; hands the plaintext the call moved to
/// userspace.
#[aya_ebpf::macros::uretprobe]
pub fn palisade_dlp_leave(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
    dlp::leave(&ctx)
}

/// DLP: the flow of the `SSL_*` call in progress on this thread (tracepoints
/// `sock:sock_send_length` and `sock:sock_recv_length`).
#[aya_ebpf::macros::tracepoint]
pub fn palisade_dlp_sock(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
    dlp::on_sock(&ctx)
}

/// DLP: the flow of a TCP send inside an `SSL_*` call (raw tracepoint
/// `tcp:tcp_sendmsg_locked`, Linux 6.8 and later: no trace record is built, and only TCP
/// sends run it). On kernels without it, `palisade_dlp_sock` takes `sock:sock_send_length`.
#[aya_ebpf::macros::raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn palisade_dlp_tcp_send(ctx: aya_ebpf::programs::RawTracePointContext) -> u32 {
    dlp::on_tcp_send(&ctx)
}

/// DLP: a process exec'd (tracepoint `sched:sched_process_exec`); userspace looks at it at
/// once instead of at its next scan of `/proc`.
#[aya_ebpf::macros::tracepoint]
pub fn palisade_dlp_exec(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
    dlp::on_exec(&ctx)
}

/// DLP `action = "reset"` (TC egress): drops the packets of flows whose plaintext matched.
/// Fail-open for anything not listed.
#[classifier]
pub fn palisade_dlp_reset(ctx: TcContext) -> i32 {
    dlp::reset::run(&ctx)
}

/// IDS preselection on what arrives on the guarded interfaces (TC ingress). Never drops.
#[classifier]
pub fn palisade_ids_ingress(ctx: TcContext) -> i32 {
    ids::run(&ctx)
}

/// IDS preselection on what leaves through the guarded interfaces (TC egress). Never drops.
#[classifier]
pub fn palisade_ids_egress(ctx: TcContext) -> i32 {
    ids::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: any reachable panic would have been rejected.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Resolver pinning, tcx egress: answers a pinned cgroup's query for Firefox's DoH canary
/// (`use-application-dns.net`) NXDOMAIN in place and redirects the answer to the
/// interface's ingress. Everything else continues unchanged.
#[classifier]
pub fn palisade_bind_canary(ctx: TcContext) -> i32 {
    dnsbind::canary::run(&ctx)
}

/// DNS binding, query path: records every DNS query a cgroup in bind mode sends, so that
/// only answers to them bind. Never drops.
#[cgroup_skb]
pub fn palisade_bind_query(ctx: SkBuffContext) -> i32 {
    dnsbind::query::run(&ctx)
}

/// The smallest tc program: lets every packet continue. The floor of the DoH canary's cost
/// in the benchmarks.
#[classifier]
pub fn palisade_floor_tc(_ctx: TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_UNSPEC
}
