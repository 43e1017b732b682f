//! Attaching the XDP firewall to interfaces: native mode first, generic as the fallback.

use std::{fs, io, net::Ipv4Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{Xdp, XdpMode};
use tracing::{info, warn};

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// Attaches `prog` to `iface`, trying native (driver) mode and falling back to generic mode
/// with a message that says so. `force_generic` skips the native attempt.
///
/// # Errors
/// When the interface does not exist or neither mode attaches.
pub fn attach_xdp(prog: &mut Xdp, iface: &str, force_generic: bool) -> Result<Mode> {
    if !force_generic {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(_) => {
                info!(iface, mode = "native", "XDP firewall attached");
                return Ok(Mode::Native);
            }
            Err(aya::programs::ProgramError::UnknownInterface { .. }) => {
                bail!("no network interface named {iface:?}")
            }
            Err(e) => {
                warn!(iface, error = %e, "native XDP not available on this interface; falling back to generic mode (slower, same policy)");
            }
        }
    }
    prog.attach(iface, XdpMode::Skb)
        .with_context(|| format!("attaching the XDP firewall to {iface} in generic mode"))?;
    info!(iface, mode = "generic", "XDP firewall attached");
    Ok(Mode::Generic)
}

/// The interface that carries the IPv4 default route (else the IPv6 one).
///
/// # Errors
/// When the routing table has no default route.
pub fn default_route_interface() -> Result<String> {
    if let Some(i) = v4_default(&fs::read_to_string("/proc/net/route").unwrap_or_default()) {
        return Ok(i);
    }
    if let Some(i) = v6_default(&fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default()) {
        return Ok(i);
    }
    Err(anyhow!(
        "no default route found; name the interfaces to guard with --iface"
    ))
}

/// Parses `/proc/net/route`: the first up route with destination 0 and mask 0.
fn v4_default(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
        let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
        (dest == 0 && mask == 0 && Ipv4Addr::from(dest).is_unspecified()).then(|| f[0].to_string())
    })
}

/// Parses `/proc/net/ipv6_route`: destination `::/0` not on loopback.
fn v6_default(table: &str) -> Option<String> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let is_default = f.first()?.chars().all(|c| c == '0') && *f.get(1)? == "00";
        let iface = *f.get(9)?;
        (is_default && iface != "lo").then(|| iface.to_string())
    })
}

/// Whether an interface exists (for early, clear errors).
#[must_use]
pub fn interface_exists(iface: &str) -> bool {
    fs::metadata(format!("/sys/class/net/{iface}")).is_ok()
}

/// Maps an I/O error to a short hint, for messages.
#[must_use]
pub fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied: run as root",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v4_default_route() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(v4_default(t).as_deref(), Some("eth0"));
        assert_eq!(v4_default("Iface\n"), None);
    }

    #[test]
    fn finds_v6_default_route_not_on_loopback() {
        let t = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                 00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth9\n";
        assert_eq!(v6_default(t).as_deref(), Some("eth9"));
    }
}
