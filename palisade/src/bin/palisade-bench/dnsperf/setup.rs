//! Setting up the servers: each in its own pair of namespaces, holding the same list, and kept
//! running across the rounds of one list size.

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::XdpMode;
use palisade::{
    guard::{DNS_INGRESS, FIREWALL},
    policy::{
        model::{AnswerBudget, Dns, DnsAction, DnsMode, DnsScope, NameList, Policy},
        namelist,
    },
};

use super::{
    Server,
    events::EventReader,
    measure::{probe, proc_rss, set_affinity},
};
use crate::{
    harness::{FLOOR_DROP, FLOOR_PASS, Loaded},
    inspect,
    netns::Netns,
    workload,
};

pub const CLIENT_IF: &str = "dpc0";
pub const SERVER_IF: &str = "dps0";
/// A name the resolvers answer from their own data (NOERROR): it tells a server that drops
/// listed names is up and serving.
const ALLOWED_NAME: &str = "allowed.test";
const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;
/// The CPU the servers run on; dnsperf runs on CPU 0.
const SERVER_CPU: usize = 1;

/// A client namespace and a server namespace joined by a veth pair.
pub struct Pair {
    pub client: Netns,
    pub server: Netns,
    pub client_addr: String,
    pub server_addr: String,
}

impl Pair {
    /// Pair number `slot`, tagged `tag`: 198.18.53.0/24 (in the benchmarking range
    /// 198.18.0.0/15) cut into /30s, one per pair, so that each server has addresses of its
    /// own. Nothing is routed anywhere else.
    fn create(slot: usize, tag: &str) -> Result<Self> {
        if slot >= 64 {
            bail!("no /30 left in 198.18.53.0/24 for pair {slot}");
        }
        let client = Netns::create(&format!("dnsperf-{tag}-c"))?;
        let server = Netns::create(&format!("dnsperf-{tag}-s"))?;
        let pair = Self {
            client_addr: format!("198.18.53.{}", 4 * slot + 1),
            server_addr: format!("198.18.53.{}", 4 * slot + 2),
            client,
            server,
        };
        pair.client.ip(&[
            "link",
            "add",
            CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &pair.server.name,
        ])?;
        for (ns, ifname, addr) in [
            (&pair.client, CLIENT_IF, &pair.client_addr),
            (&pair.server, SERVER_IF, &pair.server_addr),
        ] {
            let _ = ns
                .command("sysctl")
                .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .status();
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", ifname])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        // Permanent neighbour entries both ways: behind the XDP_DROP floor the client's ARP
        // requests would never be answered, and its queries would die in the client's
        // neighbour table instead of crossing the veth. The same for every pair.
        let client_mac = mac(&pair.client, CLIENT_IF)?;
        let server_mac = mac(&pair.server, SERVER_IF)?;
        for (ns, addr, lladdr, ifname) in [
            (&pair.client, &pair.server_addr, &server_mac, CLIENT_IF),
            (&pair.server, &pair.client_addr, &client_mac, SERVER_IF),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                lladdr,
                "dev",
                ifname,
                "nud",
                "permanent",
            ])?;
        }
        Ok(pair)
    }
}

/// The MAC address of `ifname` in `ns`.
fn mac(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.get(0)
        .and_then(|l| l.get("address")?.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no MAC address for {ifname}"))
}

/// A server process, stopped when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `program` in the server namespace, pinned to the servers' CPU.
    fn spawn(ns: &Netns, program: &str, args: &[&str]) -> Result<Self> {
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: sched_setaffinity only, async-signal-safe.
        unsafe { cmd.pre_exec(|| set_affinity(SERVER_CPU)) };
        Ok(Self {
            child: cmd.spawn().with_context(|| format!("starting {program}"))?,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server, set up and serving.
pub struct Running {
    pub server: Server,
    /// Palisade: the thread reading its event ring, as the daemon would.
    events: Option<EventReader>,
    /// Palisade: its object, the policy installed and the firewall attached to the server's
    /// veth end. Fields drop in order: the programs go before the processes and the
    /// namespaces.
    palisade: Option<Loaded>,
    procs: Vec<Proc>,
    pub pair: Pair,
    /// From starting the server to it serving the list (Palisade: loading the object,
    /// compiling and installing the list, attaching; for NXDOMAIN up to the first answer).
    /// `None` for the floor, which has nothing to load.
    pub ready_s: Option<f64>,
}

/// What a server's memory is, read after its runs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    /// Resolver RSS; for Palisade the `memlock` of the DNS inspector's maps.
    pub bytes: u64,
    /// For Palisade: RSS of the unbound behind it.
    pub backend_rss_bytes: Option<u64>,
}

impl Running {
    /// The server's processes (for Palisade: the unbound behind it).
    pub fn server_pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// Threads of this process that work for the server (Palisade's event reader).
    pub fn server_threads(&self) -> Vec<u32> {
        self.events.iter().map(EventReader::tid).collect()
    }

    /// Palisade: event records read so far.
    pub fn events_read(&self) -> Option<u64> {
        self.events.as_ref().map(EventReader::read)
    }

    pub const fn palisade(&self) -> Option<&Loaded> {
        self.palisade.as_ref()
    }

    /// The server's memory now.
    ///
    /// # Errors
    /// When Palisade's maps cannot be inspected.
    pub fn memory(&self) -> Result<Memory> {
        let rss: u64 = self.server_pids().into_iter().map(proc_rss).sum();
        Ok(match &self.palisade {
            Some(l) => Memory {
                bytes: inspect::maps_of(&l.ebpf, DNS_INGRESS)?
                    .values()
                    .map(|m| m.memlock_bytes)
                    .sum(),
                backend_rss_bytes: Some(rss),
            },
            None => Memory {
                bytes: rss,
                backend_rss_bytes: None,
            },
        })
    }
}

/// How setting up a server ended.
pub enum Start {
    Up(Box<Running>),
    /// The server did not serve in time; why.
    Skipped(String),
}

/// Sets up `server` with `list` in pair number `slot`. `base` provides the floor programs:
/// XDP_PASS on every client end (veth hands an `XDP_TX` frame to its peer only when the peer
/// runs XDP, so every configuration gets the same client path) and XDP_DROP on the floor's
/// server end.
///
/// # Errors
/// When the namespaces, the programs or the processes cannot be set up, or a drop
/// configuration answers a listed name.
pub fn start(
    server: Server,
    slot: usize,
    list: &[String],
    base: &mut Loaded,
    dir: &Path,
    timeout: Duration,
) -> Result<Start> {
    let pair = Pair::create(slot, server.slug())?;
    attach(base, &pair.client, FLOOR_PASS, CLIENT_IF)?;
    let sub = dir.join(server.slug());
    fs::create_dir_all(&sub)?;
    let listed = list.first().ok_or_else(|| anyhow!("empty list"))?;
    let mut running = Running {
        server,
        events: None,
        palisade: None,
        procs: Vec::new(),
        pair,
        ready_s: None,
    };
    let pair = &running.pair;
    match server {
        Server::PalisadeNxdomain | Server::PalisadeDrop => {
            // unbound behind, with no list, answering the allowed name: up before the clock
            // starts, so that the time is Palisade's alone.
            let conf = unbound_conf(&sub, &pair.server_addr, &[], "always_nxdomain")?;
            let mut behind = Proc::spawn(
                &pair.server,
                "unbound",
                &["-d", "-c", &conf.display().to_string()],
            )?;
            let up = wait_until(Some(&mut behind.child), timeout, || {
                Ok(probe(pair, ALLOWED_NAME)? == Some(NOERROR))
            })?;
            if up.is_none() {
                bail!("the unbound behind Palisade did not answer within {timeout:?}");
            }
            running.procs.push(behind);
            let t = Instant::now();
            let mut loaded = Loaded::new(true).context("loading the kernel object")?;
            if let Some(f) = loaded.failures.iter().find(|f| f.program == DNS_INGRESS) {
                bail!("{DNS_INGRESS} failed to load: {}", f.summary);
            }
            let action = if server == Server::PalisadeNxdomain {
                DnsAction::Nxdomain
            } else {
                DnsAction::Drop
            };
            loaded
                .install(&policy(list, action)?)
                .context("installing")?;
            attach(&mut loaded, &pair.server, FIREWALL, SERVER_IF)?;
            running.ready_s = if action == DnsAction::Nxdomain {
                wait_until(None, timeout, || Ok(probe(pair, listed)? == Some(NXDOMAIN)))?
                    .map(|w| t.elapsed().as_secs_f64().max(w))
            } else {
                // Attaching is synchronous: the program is in effect once it returns.
                Some(t.elapsed().as_secs_f64())
            };
            running.events = Some(EventReader::start(&mut loaded.ebpf, SERVER_CPU)?);
            running.palisade = Some(loaded);
            if running.ready_s.is_none() {
                bail!("Palisade did not answer NXDOMAIN for a listed name");
            }
        }
        Server::UnboundNxdomain | Server::UnboundDeny | Server::Dnsmasq => {
            let t = Instant::now();
            let mut proc = if server == Server::Dnsmasq {
                let conf = dnsmasq_conf(&sub, &pair.server_addr, list)?;
                Proc::spawn(
                    &pair.server,
                    "dnsmasq",
                    &["-k", "-C", &conf.display().to_string()],
                )?
            } else {
                let zone = if server == Server::UnboundDeny {
                    "deny"
                } else {
                    "always_nxdomain"
                };
                let conf = unbound_conf(&sub, &pair.server_addr, list, zone)?;
                Proc::spawn(
                    &pair.server,
                    "unbound",
                    &["-d", "-c", &conf.display().to_string()],
                )?
            };
            // A resolver that drops listed names shows it is serving by answering the allowed
            // name; one that answers NXDOMAIN, by answering a listed name.
            let (name, rcode) = if server == Server::UnboundDeny {
                (ALLOWED_NAME, NOERROR)
            } else {
                (listed.as_str(), NXDOMAIN)
            };
            let served = wait_until(Some(&mut proc.child), timeout, || {
                Ok(probe(pair, name)? == Some(rcode))
            })?;
            if served.is_none() {
                return Ok(Start::Skipped(format!(
                    "did not serve within {} s of starting (config written and parsed \
                     included)",
                    timeout.as_secs()
                )));
            }
            running.ready_s = Some(t.elapsed().as_secs_f64());
            running.procs.push(proc);
        }
        Server::FloorDrop => {
            attach(base, &pair.server, FLOOR_DROP, SERVER_IF)?;
        }
    }
    // A drop configuration must be silent on a listed name and, where a resolver is there,
    // still answer others: it drops what is listed, not everything.
    if server.drops() {
        if probe(&running.pair, listed)?.is_some() {
            bail!("{} answered a listed name", server.label());
        }
        if server != Server::FloorDrop && probe(&running.pair, ALLOWED_NAME)? != Some(NOERROR) {
            bail!("{} did not answer an allowed name", server.label());
        }
    }
    Ok(Start::Up(Box::new(running)))
}

fn attach(loaded: &mut Loaded, ns: &Netns, prog: &'static str, ifname: &str) -> Result<()> {
    let p = loaded.xdp_mut(prog)?;
    ns.enter(|| p.attach(ifname, XdpMode::Driver))?
        .map_err(|e| anyhow!("attaching {prog} to {ifname}: {e}"))?;
    Ok(())
}

/// Polls `ready` until it holds (the time it took), the server process exits (an error) or
/// `timeout` passes (`None`).
fn wait_until(
    mut child: Option<&mut Child>,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<Option<f64>> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(Some(start.elapsed().as_secs_f64()));
        }
        if let Some(c) = child.as_deref_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("server exited ({status}) before serving");
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Palisade's policy for `list`: the firewall allowing everything, and a DNS ingress
/// blocklist with `action` whose names match as in a list file loaded with
/// `subdomains = true`: each name and every name below it. That is what unbound's
/// `local-zone` and dnsmasq's `address=/name/` do with the same list, and what a user moving
/// such a list to Palisade would write (one line per name, not a name and a `*.name` each).
///
/// # Errors
/// When a name is not valid.
pub fn policy(list: &[String], action: DnsAction) -> Result<Policy> {
    let entries = list
        .iter()
        .map(|n| namelist::entry(n, true, 0).map_err(|e| anyhow!("{n}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut p = workload::empty_policy();
    p.dns = Dns {
        rate_prefix: Default::default(),
        capacity_names: 0,
        bind: None,
        dga: None,
        cache: None,
        events: palisade::policy::model::DnsEvents::EVERY_QUERY,
        ports: vec![53],
        answers: AnswerBudget::UNLIMITED,
        ingress: Some(DnsScope {
            mode: DnsMode::Blocklist,
            action,
            audit: false,
            lists: vec![0],
            block_malformed: false,
            rate: None,
            log_allowed: false,
        }),
        egress: None,
        lists: vec![NameList {
            name: "dnsperf".into(),
            entries,
        }],
    };
    Ok(p)
}

/// unbound on `addr` with one `local-zone: "<name>." <zone>` per blocked name (`zone` is
/// `always_nxdomain` or `deny`; either applies to the name and every name below it), refusing
/// everything else but the allowed test name.
fn unbound_conf(dir: &Path, addr: &str, blocked: &[String], zone: &str) -> Result<PathBuf> {
    let d = dir.display();
    let mut conf = format!(
        "server:\n\
         \x20   interface: {addr}\n\
         \x20   port: 53\n\
         \x20   do-daemonize: no\n\
         \x20   use-systemd: no\n\
         \x20   username: \"\"\n\
         \x20   chroot: \"\"\n\
         \x20   directory: \"{d}\"\n\
         \x20   pidfile: \"{d}/unbound.pid\"\n\
         \x20   logfile: \"{d}/unbound.log\"\n\
         \x20   use-syslog: no\n\
         \x20   verbosity: 0\n\
         \x20   num-threads: 1\n\
         \x20   so-reuseport: no\n\
         \x20   interface-automatic: no\n\
         \x20   do-ip4: yes\n\
         \x20   do-ip6: no\n\
         \x20   do-udp: yes\n\
         \x20   do-tcp: yes\n\
         \x20   access-control: 0.0.0.0/0 allow\n\
         \x20   module-config: \"iterator\"\n\
         \x20   do-not-query-localhost: yes\n\
         \x20   local-zone: \".\" refuse\n\
         \x20   local-zone: \"{ALLOWED_NAME}.\" static\n\
         \x20   local-data: \"{ALLOWED_NAME}. 60 IN A 192.0.2.1\"\n"
    );
    conf.reserve(blocked.len() * 48);
    for n in blocked {
        let _ = writeln!(conf, "    local-zone: \"{n}.\" {zone}");
    }
    conf += "remote-control:\n    control-enable: no\n";
    let path = dir.join("unbound.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

/// dnsmasq on `addr` with `address=/<name>/` (no address: NXDOMAIN for the name and every name
/// below it) per blocked name, and nothing upstream.
fn dnsmasq_conf(dir: &Path, addr: &str, blocked: &[String]) -> Result<PathBuf> {
    let mut conf = format!(
        "port=53\nlisten-address={addr}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
         user=root\npid-file=\nlog-facility={}/dnsmasq.log\n",
        dir.display()
    );
    conf.reserve(blocked.len() * 24);
    for n in blocked {
        let _ = writeln!(conf, "address=/{n}/");
    }
    let path = dir.join("dnsmasq.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use palisade::policy::model::NameMatch;

    use super::*;

    #[test]
    fn the_policy_blocks_each_name_and_everything_below_it() {
        let p = policy(&["ads.example.com".into(), "t.io".into()], DnsAction::Drop).unwrap();
        let entries = &p.dns.lists[0].entries;
        assert_eq!(entries.len(), 2);
        assert!(
            entries
                .iter()
                .all(|e| e.kind == NameMatch::ApexAndSubdomains)
        );
        assert_eq!(
            entries[0].labels,
            vec![b"ads".to_vec(), b"example".to_vec(), b"com".to_vec()]
        );
        let scope = p.dns.ingress.unwrap();
        assert_eq!(
            (scope.action, scope.mode),
            (DnsAction::Drop, DnsMode::Blocklist)
        );
    }
}
