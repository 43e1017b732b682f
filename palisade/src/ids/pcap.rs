//! A reader for classic pcap files (either byte order, micro- or nanosecond stamps; Ethernet
//! with 802.1Q tags, or raw IP) that yields the packets the IDS engine takes.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};

/// One decoded IP packet.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6, 17, 1, 58, ...).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub flags: u8,
    pub seq: u32,
    pub payload: Vec<u8>,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Reads every packet of a pcap file; packets that are not IP, or malformed, are counted in
/// the second value and skipped.
pub fn read(path: &std::path::Path) -> Result<(Vec<Packet>, u64)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&data).with_context(|| format!("parsing {}", path.display()))
}

pub fn parse(data: &[u8]) -> Result<(Vec<Packet>, u64)> {
    if data.len() < 24 {
        bail!("shorter than a pcap header");
    }
    let magic = u32::from_le_bytes(data[0..4].try_into()?);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("not a classic pcap file (magic {magic:#x}); pcapng is not read"),
    };
    let u32_at = |b: &[u8]| -> u32 {
        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(&data[20..24]);
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let caplen = u32_at(&data[pos + 8..pos + 12]) as usize;
        pos += 16;
        if pos + caplen > data.len() {
            bail!("a record runs past the end of the file");
        }
        let frame = &data[pos..pos + caplen];
        pos += caplen;
        let ip = match linktype {
            1 => ethernet_payload(frame),
            101 | 228 | 229 => Some(frame),
            other => bail!("link type {other} is not read (Ethernet or raw IP only)"),
        };
        match ip.and_then(decode_ip) {
            Some(p) => out.push(p),
            None => skipped += 1,
        }
    }
    Ok((out, skipped))
}

fn ethernet_payload(f: &[u8]) -> Option<&[u8]> {
    let mut off = 12;
    loop {
        let et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        match et {
            0x8100 | 0x88a8 => off += 4,
            0x0800 | 0x86dd => return f.get(off + 2..),
            _ => return None,
        }
    }
}

fn decode_ip(b: &[u8]) -> Option<Packet> {
    let version = b.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
            let frag = u16::from_be_bytes([*b.get(6)?, *b.get(7)?]);
            if ihl < 20 || total < ihl || total > b.len() || frag & 0x3fff != 0 {
                return None;
            }
            let src: [u8; 4] = b.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = b.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), b[9], &b[ihl..total])
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([*b.get(4)?, *b.get(5)?]));
            let src: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = b.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                *b.get(6)?,
                b.get(40..40 + plen)?,
            )
        }
        _ => return None,
    };
    let mut p = Packet {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        flags: 0,
        seq: 0,
        payload: Vec::new(),
    };
    match proto {
        6 => {
            let off = usize::from(l4.get(12)? >> 4) * 4;
            if off < 20 || off > l4.len() {
                return None;
            }
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
            p.seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            p.flags = l4[13];
            p.payload = l4[off..].to_vec();
        }
        17 => {
            p.sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
            p.dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            p.payload = l4.get(8..)?.to_vec();
        }
        1 | 58 => p.payload = l4.get(8..)?.to_vec(),
        _ => p.payload = l4.to_vec(),
    }
    Some(p)
}
