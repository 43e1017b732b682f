//! Three network namespaces in a row, a routed path between a guarded host and the outside:
//!
//! ```text
//! guarded [veth-g] --- [veth-rg] router [veth-ro] --- [veth-o] outside
//!         10.71.1.1    10.71.1.254     10.71.2.254    10.71.2.1
//!         fd71:1::1    fd71:1::fe      fd71:2::fe     fd71:2::1
//! ```
//!
//! The router forwards both families. Its link towards the outside has a smaller MTU
//! ([`Routed::NARROW_MTU`]) than the guarded host's, and the outside host advertises a TCP MSS
//! that fits the wide links only (route `advmss`), so the guarded host's full-size segments
//! reach the narrow link with DF set and the router answers them with ICMP "fragmentation
//! needed" / ICMPv6 "packet too big": path MTU discovery has to work through the guarded
//! host's firewall.
//!
//! Addresses are the same in every instance (the namespaces keep them apart); the namespace
//! names are unique per guard. Everything is removed when the guard drops, also on panic.

use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::{command_in, exec_in};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Routed {
    pub guarded: String,
    pub router: String,
    pub outside: String,
}

/// Runs `ip` with `args` (in the caller's namespace) and asserts it succeeded.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sysctl(ns: &str, setting: &str) {
    let out = exec_in(ns, "sysctl", &["-qw", setting]);
    assert!(
        out.status.success(),
        "sysctl {setting} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Routed {
    /// The guarded host's interface (where Palisade attaches).
    pub const GUARDED_IF: &'static str = "veth-g";
    /// The outside host's interface.
    pub const OUTSIDE_IF: &'static str = "veth-o";
    pub const GUARDED_V4: &'static str = "10.71.1.1";
    pub const GUARDED_V6: &'static str = "fd71:1::1";
    pub const ROUTER_IN_V4: &'static str = "10.71.1.254";
    pub const ROUTER_IN_V6: &'static str = "fd71:1::fe";
    pub const ROUTER_OUT_V4: &'static str = "10.71.2.254";
    pub const ROUTER_OUT_V6: &'static str = "fd71:2::fe";
    pub const OUTSIDE_V4: &'static str = "10.71.2.1";
    pub const OUTSIDE_V6: &'static str = "fd71:2::1";
    /// MTU of the router's link towards the outside (the IPv6 minimum).
    pub const NARROW_MTU: u32 = 1280;

    #[must_use]
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let r = Self {
            guarded: format!("pal-g-{tag}"),
            router: format!("pal-r-{tag}"),
            outside: format!("pal-o-{tag}"),
        };
        // From here on Drop removes whatever was created.
        for ns in [&r.guarded, &r.router, &r.outside] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let narrow = Self::NARROW_MTU.to_string();
        for (left_ns, left_if, right_ns, right_if, mtu) in [
            (&r.guarded, Self::GUARDED_IF, &r.router, "veth-rg", "1500"),
            (
                &r.router,
                "veth-ro",
                &r.outside,
                Self::OUTSIDE_IF,
                narrow.as_str(),
            ),
        ] {
            // Created in the left namespace directly, the peer moved to the right one: no
            // temporary name ever appears in the host's namespace.
            ip(&[
                "-n", left_ns, "link", "add", left_if, "mtu", mtu, "type", "veth", "peer", "name",
                right_if, "mtu", mtu, "netns", right_ns,
            ]);
        }
        for (ns, iface, v4, v6) in [
            (
                &r.guarded,
                Self::GUARDED_IF,
                Self::GUARDED_V4,
                Self::GUARDED_V6,
            ),
            (&r.router, "veth-rg", Self::ROUTER_IN_V4, Self::ROUTER_IN_V6),
            (
                &r.router,
                "veth-ro",
                Self::ROUTER_OUT_V4,
                Self::ROUTER_OUT_V6,
            ),
            (
                &r.outside,
                Self::OUTSIDE_IF,
                Self::OUTSIDE_V4,
                Self::OUTSIDE_V6,
            ),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", iface]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                iface,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", iface, "up"]);
        }
        sysctl(&r.router, "net.ipv4.ip_forward=1");
        sysctl(&r.router, "net.ipv6.conf.all.forwarding=1");
        ip(&[
            "-n",
            &r.guarded,
            "route",
            "add",
            "default",
            "via",
            Self::ROUTER_IN_V4,
        ]);
        ip(&[
            "-n",
            &r.guarded,
            "-6",
            "route",
            "add",
            "default",
            "via",
            Self::ROUTER_IN_V6,
        ]);
        // The outside host advertises the MSS of a 1500-byte path, not of its own narrow link.
        ip(&[
            "-n",
            &r.outside,
            "route",
            "add",
            "default",
            "via",
            Self::ROUTER_OUT_V4,
            "advmss",
            "1460",
        ]);
        ip(&[
            "-n",
            &r.outside,
            "-6",
            "route",
            "add",
            "default",
            "via",
            Self::ROUTER_OUT_V6,
            "advmss",
            "1440",
        ]);
        r.resolve_neighbours();
        r
    }

    /// Pings across both links in both directions, both families, so that every neighbour
    /// entry exists before a test sends anything: the first neighbour solicitation on a fresh
    /// link is often lost, which would delay a test's first IPv6 packet by a second.
    fn resolve_neighbours(&self) {
        let pings: Vec<_> = [
            (&self.guarded, Self::ROUTER_IN_V4),
            (&self.guarded, Self::ROUTER_IN_V6),
            (&self.router, Self::GUARDED_V4),
            (&self.router, Self::GUARDED_V6),
            (&self.router, Self::OUTSIDE_V4),
            (&self.router, Self::OUTSIDE_V6),
            (&self.outside, Self::ROUTER_OUT_V4),
            (&self.outside, Self::ROUTER_OUT_V6),
        ]
        .into_iter()
        .map(|(ns, addr)| {
            let child = command_in(ns, "ping")
                .args(["-c", "1", "-W", "5", addr])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ping");
            (ns, addr, child)
        })
        .collect();
        for (ns, addr, child) in pings {
            let out = child.wait_with_output().expect("wait ping");
            assert!(
                out.status.success(),
                "no answer from {addr} to {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth ends, and with them their peers.
        for ns in [&self.guarded, &self.router, &self.outside] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
    }
}

/// Runs `program` with `args` in namespace `ns`, asserts it succeeded and returns its
/// standard output.
pub fn run_ok(ns: &str, program: &str, args: &[&str]) -> String {
    let out = exec_in(ns, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// More ports on the router, for the actions that send traffic somewhere else than the
/// routing table would.
impl Routed {
    /// A veth pair inside the router, both ends up: `port` leads nowhere but to `peer`, where
    /// a packet socket sees what the router sends into `port`.
    pub fn add_router_port(&self, port: &str, peer: &str) {
        run_ok(
            &self.router,
            "ip",
            &["link", "add", port, "type", "veth", "peer", "name", peer],
        );
        for i in [port, peer] {
            run_ok(&self.router, "ip", &["link", "set", i, "up"]);
        }
    }

    /// A second link from the router (`port`) to the outside host (`peer`) with MTU `mtu`;
    /// the addresses are `(v4/len, v6/len)` of each end.
    pub fn add_uplink(
        &self,
        (port, peer): (&str, &str),
        mtu: &str,
        router_addrs: (&str, &str),
        outside_addrs: (&str, &str),
    ) {
        run_ok(
            &self.router,
            "ip",
            &[
                "link",
                "add",
                port,
                "mtu",
                mtu,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "mtu",
                mtu,
                "netns",
                &self.outside,
            ],
        );
        for (ns, iface, (v4, v6)) in [
            (&self.router, port, router_addrs),
            (&self.outside, peer, outside_addrs),
        ] {
            run_ok(ns, "ip", &["addr", "add", v4, "dev", iface]);
            run_ok(ns, "ip", &["-6", "addr", "add", v6, "dev", iface, "nodad"]);
            run_ok(ns, "ip", &["link", "set", iface, "up"]);
        }
    }

    /// Routes `dst` in the router's routing table `table` out of `dev`, through `via` when
    /// given; `family` is `-4` or `-6`.
    pub fn route_in_table(
        &self,
        family: &str,
        table: &str,
        dst: &str,
        via: Option<&str>,
        dev: &str,
    ) {
        let mut args = vec![family, "route", "add", dst];
        if let Some(gateway) = via {
            args.extend(["via", gateway]);
        }
        args.extend(["dev", dev, "table", table]);
        run_ok(&self.router, "ip", &args);
    }
}

/// A Python script in a namespace that watches traffic until a stop file exists: it prints
/// `ready` once it listens, and what it saw when it stops.
pub struct Listener {
    child: std::process::Child,
    stop: std::path::PathBuf,
}

impl Listener {
    /// Starts `script` with `args` (which name `stop`) in `ns` and waits for its `ready`.
    pub fn start(ns: &str, script: &str, args: &[&str], stop: std::path::PathBuf) -> Self {
        use std::io::BufRead as _;
        let _ = std::fs::remove_file(&stop);
        let mut child = command_in(ns, "python3")
            .args(["-c", script])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn listener");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self { child, stop }
    }

    /// Creates the stop file and returns what the script printed after `ready`.
    pub fn finish(mut self) -> String {
        use std::io::Read as _;
        std::fs::write(&self.stop, b"").unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.child.wait();
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
