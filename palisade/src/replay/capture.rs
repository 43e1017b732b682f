//! Reading packet captures: pcap (either byte order, micro- or nanosecond timestamps) and
//! pcapng (section header, interface description, enhanced and simple packet blocks, any
//! number of interfaces), with Ethernet, Linux cooked (SLL) and Linux cooked v2 (SLL2) link
//! types. Cooked frames are turned into Ethernet frames, which is what the XDP programs take.
//!
//! A capture that is malformed or cut short is an error that names the packet and the byte
//! offset where reading stopped; nothing in a capture can make the reader panic.

use std::fmt;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;
/// `LINKTYPE_LINUX_SLL`.
pub const LINKTYPE_LINUX_SLL: u16 = 113;
/// `LINKTYPE_LINUX_SLL2`.
pub const LINKTYPE_LINUX_SLL2: u16 = 276;

/// Cooked headers' packet type for a packet the host sent (`PACKET_OUTGOING`).
pub const PACKET_OUTGOING: u16 = 4;

/// The largest packet a record may hold: bigger lengths are taken for corruption.
pub const MAX_PACKET: usize = 256 * 1024;

const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;
const ETH_HLEN: usize = 14;

const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const PCAP_HEADER: usize = 24;
const PCAP_RECORD: usize = 16;

const NG_SHB: u32 = 0x0a0d_0d0a;
const NG_IDB: u32 = 1;
const NG_SPB: u32 = 3;
const NG_EPB: u32 = 6;
const NG_BYTE_ORDER: u32 = 0x1a2b_3c4d;
const NG_OPT_TSRESOL: u16 = 9;

/// One packet of a capture, as an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based position in the capture.
    pub number: usize,
    /// Byte offset of the record (pcap) or block (pcapng) in the file.
    pub offset: usize,
    /// pcapng interface id (0 for pcap).
    pub interface: u32,
    /// Capture time in nanoseconds since the epoch.
    pub timestamp_ns: u64,
    /// True when a cooked header says the host sent the packet.
    pub outgoing: bool,
    /// The frame, starting at its Ethernet header.
    pub frame: Vec<u8>,
}

/// Why a capture could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// The 1-based packet being read, when reading had reached the packets.
    pub packet: Option<usize>,
    /// Byte offset in the file.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.packet {
            Some(n) => write!(
                f,
                "packet {n} (byte offset {}): {}",
                self.offset, self.message
            ),
            None => write!(f, "byte offset {}: {}", self.offset, self.message),
        }
    }
}

impl std::error::Error for CaptureError {}

fn err(packet: Option<usize>, offset: usize, message: impl Into<String>) -> CaptureError {
    CaptureError {
        packet,
        offset,
        message: message.into(),
    }
}

/// Byte order of a pcap file or pcapng section.
#[derive(Clone, Copy)]
struct Order(bool);

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.0 {
            u16::from_be_bytes(s)
        } else {
            u16::from_le_bytes(s)
        })
    }
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.0 {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }
}

/// Reads every packet of a pcap or pcapng capture.
///
/// # Errors
/// When the file is neither format, uses an unsupported link type, or is malformed or cut
/// short; the error names the packet and the byte offset.
pub fn read(data: &[u8]) -> Result<Vec<Record>, CaptureError> {
    let Some(magic) = data.get(..4) else {
        return Err(err(None, 0, "too short to be a capture (no magic number)"));
    };
    let le = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
    let be = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    if le == NG_SHB {
        return read_pcapng(data);
    }
    for (value, order) in [(le, Order(false)), (be, Order(true))] {
        if value == PCAP_MAGIC_US || value == PCAP_MAGIC_NS {
            return read_pcap(data, order, value == PCAP_MAGIC_NS);
        }
    }
    Err(err(
        None,
        0,
        format!("not a pcap or pcapng capture (magic number {be:#010x})"),
    ))
}

fn read_pcap(data: &[u8], order: Order, nanos: bool) -> Result<Vec<Record>, CaptureError> {
    if data.len() < PCAP_HEADER {
        return Err(err(
            None,
            data.len(),
            "the pcap file header is cut short (24 bytes needed)",
        ));
    }
    let link = order.u32(data, 20).unwrap_or_default();
    // The upper bits may carry the FCS length; the link type is the low 16 bits.
    let link = (link & 0xffff) as u16;
    check_link(link, None, 20)?;
    let mut out = Vec::new();
    let mut at = PCAP_HEADER;
    while at < data.len() {
        let number = out.len() + 1;
        let here = Some(number);
        if data.len() - at < PCAP_RECORD {
            return Err(err(
                here,
                at,
                format!(
                    "the record header is cut short ({} of 16 bytes)",
                    data.len() - at
                ),
            ));
        }
        let secs = u64::from(order.u32(data, at).unwrap_or_default());
        let frac = u64::from(order.u32(data, at + 4).unwrap_or_default());
        let incl = order.u32(data, at + 8).unwrap_or_default() as usize;
        if incl > MAX_PACKET {
            return Err(err(
                here,
                at + 8,
                format!("captured length {incl} is larger than {MAX_PACKET} bytes"),
            ));
        }
        let body = at + PCAP_RECORD;
        let Some(bytes) = data.get(body..body + incl) else {
            return Err(err(
                here,
                body,
                format!(
                    "the packet is cut short ({} of {incl} bytes)",
                    data.len() - body
                ),
            ));
        };
        let ns = if nanos { frac } else { frac * 1000 };
        let (frame, outgoing) = to_ethernet(link, bytes).map_err(|m| err(here, body, m))?;
        out.push(Record {
            number,
            offset: at,
            interface: 0,
            timestamp_ns: secs.wrapping_mul(1_000_000_000).wrapping_add(ns),
            outgoing,
            frame,
        });
        at = body + incl;
    }
    Ok(out)
}

/// A pcapng interface: its link type, snap length and timestamp units per second.
#[derive(Clone, Copy)]
struct Interface {
    link: u16,
    snaplen: u32,
    /// Timestamp units per second (10^6 unless `if_tsresol` says otherwise).
    units: u64,
}

fn read_pcapng(data: &[u8]) -> Result<Vec<Record>, CaptureError> {
    let mut out = Vec::new();
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut order = Order(false);
    let mut at = 0;
    while at < data.len() {
        let here = Some(out.len() + 1);
        if data.len() - at < 12 {
            return Err(err(here, at, "a block header is cut short"));
        }
        let raw_type = Order(false).u32(data, at).unwrap_or_default();
        if raw_type == NG_SHB {
            // The section's byte order comes from its byte-order magic.
            let bom = data.get(at + 8..at + 12).unwrap_or_default();
            order = match bom {
                [0x4d, 0x3c, 0x2b, 0x1a] => Order(false),
                [0x1a, 0x2b, 0x3c, 0x4d] => Order(true),
                _ => {
                    return Err(err(
                        here,
                        at + 8,
                        "section header block without a valid byte-order magic",
                    ));
                }
            };
            debug_assert_eq!(order.u32(data, at + 8), Some(NG_BYTE_ORDER));
            interfaces.clear();
        }
        let kind = order.u32(data, at).unwrap_or_default();
        let len = order.u32(data, at + 4).unwrap_or_default() as usize;
        if len < 12 || !len.is_multiple_of(4) || len > MAX_PACKET + 64 {
            return Err(err(here, at + 4, format!("invalid block length {len}")));
        }
        let Some(block) = data.get(at..at + len) else {
            return Err(err(
                here,
                at,
                format!(
                    "the block is cut short ({} of {len} bytes)",
                    data.len() - at
                ),
            ));
        };
        if order.u32(block, len - 4) != Some(len as u32) {
            return Err(err(
                here,
                at + len - 4,
                "the block's trailing length differs from its leading length",
            ));
        }
        let body = &block[8..len - 4];
        match kind {
            NG_SHB => {}
            NG_IDB => {
                let link = order
                    .u16(body, 0)
                    .ok_or_else(|| err(here, at + 8, "interface description cut short"))?;
                let snaplen = order.u32(body, 4).unwrap_or_default();
                check_link(link, Some(interfaces.len()), at + 8)?;
                let units = tsresol(body.get(8..).unwrap_or_default(), order)
                    .map_err(|m| err(here, at, m))?;
                interfaces.push(Interface {
                    link,
                    snaplen,
                    units,
                });
            }
            NG_EPB => {
                let id = order
                    .u32(body, 0)
                    .ok_or_else(|| err(here, at + 8, "enhanced packet block cut short"))?;
                let iface = *interfaces.get(id as usize).ok_or_else(|| {
                    err(
                        here,
                        at + 8,
                        format!("interface {id} was not described before its packets"),
                    )
                })?;
                let hi = u64::from(order.u32(body, 4).unwrap_or_default());
                let lo = u64::from(order.u32(body, 8).unwrap_or_default());
                let caplen = order.u32(body, 12).unwrap_or_default() as usize;
                let Some(bytes) = body.get(20..20 + caplen) else {
                    return Err(err(
                        here,
                        at + 28,
                        format!("captured length {caplen} runs past the end of its block"),
                    ));
                };
                let ts = (hi << 32) | lo;
                let ns = u128::from(ts) * 1_000_000_000 / u128::from(iface.units);
                push(
                    &mut out,
                    iface,
                    id,
                    at,
                    u64::try_from(ns).unwrap_or(u64::MAX),
                    bytes,
                )?;
            }
            NG_SPB => {
                let iface = *interfaces.first().ok_or_else(|| {
                    err(
                        here,
                        at + 8,
                        "simple packet block before any interface description",
                    )
                })?;
                let orig = order.u32(body, 0).unwrap_or_default() as usize;
                let mut caplen = orig.min(body.len().saturating_sub(4));
                if iface.snaplen != 0 {
                    caplen = caplen.min(iface.snaplen as usize);
                }
                let bytes = body.get(4..4 + caplen).unwrap_or_default();
                push(&mut out, iface, 0, at, 0, bytes)?;
            }
            // Name resolution, statistics, custom and obsolete blocks carry no packets here.
            _ => {}
        }
        at += len;
    }
    Ok(out)
}

fn push(
    out: &mut Vec<Record>,
    iface: Interface,
    id: u32,
    at: usize,
    timestamp_ns: u64,
    bytes: &[u8],
) -> Result<(), CaptureError> {
    let number = out.len() + 1;
    let (frame, outgoing) = to_ethernet(iface.link, bytes).map_err(|m| err(Some(number), at, m))?;
    out.push(Record {
        number,
        offset: at,
        interface: id,
        timestamp_ns,
        outgoing,
        frame,
    });
    Ok(())
}

/// Timestamp units per second from an IDB's options.
fn tsresol(mut opts: &[u8], order: Order) -> Result<u64, String> {
    while opts.len() >= 4 {
        let code = order.u16(opts, 0).unwrap_or_default();
        let len = usize::from(order.u16(opts, 2).unwrap_or_default());
        if code == 0 {
            break;
        }
        let Some(value) = opts.get(4..4 + len) else {
            return Err("an interface option runs past its block".into());
        };
        if code == NG_OPT_TSRESOL && len == 1 {
            let v = value[0];
            let (base, exp) = if v & 0x80 == 0 {
                (10u64, u32::from(v))
            } else {
                (2u64, u32::from(v & 0x7f))
            };
            return base
                .checked_pow(exp)
                .filter(|&u| u > 0)
                .ok_or_else(|| format!("if_tsresol {v:#04x} is out of range"));
        }
        opts = opts.get(4 + len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(1_000_000)
}

fn check_link(link: u16, interface: Option<usize>, offset: usize) -> Result<(), CaptureError> {
    match link {
        LINKTYPE_ETHERNET | LINKTYPE_LINUX_SLL | LINKTYPE_LINUX_SLL2 => Ok(()),
        _ => {
            let which = interface.map_or_else(String::new, |i| format!(" of interface {i}"));
            Err(err(
                None,
                offset,
                format!(
                    "link type {link}{which} is not supported (Ethernet 1, Linux cooked 113 and \
                     276 are)"
                ),
            ))
        }
    }
}

/// The packet as an Ethernet frame, and whether the host sent it.
fn to_ethernet(link: u16, bytes: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let (hlen, pkttype, addr, proto) = match link {
        LINKTYPE_ETHERNET => return Ok((bytes.to_vec(), false)),
        LINKTYPE_LINUX_SLL => {
            let Some(h) = bytes.get(..SLL_LEN) else {
                return Err(format!(
                    "the Linux cooked header is cut short ({} of {SLL_LEN} bytes)",
                    bytes.len()
                ));
            };
            let alen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            (
                SLL_LEN,
                u16::from_be_bytes([h[0], h[1]]),
                (alen == 6).then(|| [h[6], h[7], h[8], h[9], h[10], h[11]]),
                [h[14], h[15]],
            )
        }
        _ => {
            let Some(h) = bytes.get(..SLL2_LEN) else {
                return Err(format!(
                    "the Linux cooked v2 header is cut short ({} of {SLL2_LEN} bytes)",
                    bytes.len()
                ));
            };
            (
                SLL2_LEN,
                u16::from(h[10]),
                (h[11] == 6).then(|| [h[12], h[13], h[14], h[15], h[16], h[17]]),
                [h[0], h[1]],
            )
        }
    };
    let mut frame = Vec::with_capacity(ETH_HLEN + bytes.len() - hlen);
    // The destination is not recorded: a locally administered address stands in for it.
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&addr.unwrap_or([0x02, 0, 0, 0, 0, 0x02]));
    frame.extend_from_slice(&proto);
    frame.extend_from_slice(&bytes[hlen..]);
    Ok((frame, pkttype == PACKET_OUTGOING))
}

/// Writers for tests and tools: the capture formats this module reads.
pub mod write {
    use super::{LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, NG_EPB, NG_IDB, NG_SHB, NG_SPB};

    /// A pcap file with `link` frames, in little- or big-endian order, with micro- or
    /// nanosecond timestamps; each packet is `(timestamp_ns, bytes)`.
    #[must_use]
    pub fn pcap(link: u16, big_endian: bool, nanos: bool, packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let w = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let h = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&w(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        out.extend_from_slice(&h(2));
        out.extend_from_slice(&h(4));
        out.extend_from_slice(&w(0));
        out.extend_from_slice(&w(0));
        out.extend_from_slice(&w(65535));
        out.extend_from_slice(&w(u32::from(link)));
        for (ts, p) in packets {
            let frac = if nanos {
                ts % 1_000_000_000
            } else {
                ts % 1_000_000_000 / 1000
            };
            out.extend_from_slice(&w((ts / 1_000_000_000) as u32));
            out.extend_from_slice(&w(frac as u32));
            out.extend_from_slice(&w(p.len() as u32));
            out.extend_from_slice(&w(p.len() as u32));
            out.extend_from_slice(p);
        }
        out
    }

    /// A pcapng section (little-endian) with one interface per entry of `links`; each
    /// packet is `(interface, timestamp_ns, bytes)`, written as an enhanced packet block
    /// (nanosecond resolution), or as a simple packet block when `interface` is `None`.
    #[must_use]
    pub fn pcapng(links: &[u16], packets: &[(Option<u32>, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let block = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
            let len = 12 + body.len().next_multiple_of(4);
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(body);
            out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
            out.extend_from_slice(&(len as u32).to_le_bytes());
        };
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1a2b_3c4d_u32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        block(&mut out, NG_SHB, &shb);
        for &link in links {
            let mut idb = Vec::new();
            idb.extend_from_slice(&link.to_le_bytes());
            idb.extend_from_slice(&0u16.to_le_bytes());
            idb.extend_from_slice(&0u32.to_le_bytes());
            // if_tsresol = 9 (nanoseconds), then the end of options.
            idb.extend_from_slice(&9u16.to_le_bytes());
            idb.extend_from_slice(&1u16.to_le_bytes());
            idb.extend_from_slice(&[9, 0, 0, 0]);
            idb.extend_from_slice(&[0, 0, 0, 0]);
            block(&mut out, NG_IDB, &idb);
        }
        for (iface, ts, p) in packets {
            let mut body = Vec::new();
            if let Some(id) = iface {
                body.extend_from_slice(&id.to_le_bytes());
                body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
                body.extend_from_slice(&(*ts as u32).to_le_bytes());
                body.extend_from_slice(&(p.len() as u32).to_le_bytes());
                body.extend_from_slice(&(p.len() as u32).to_le_bytes());
                body.extend_from_slice(p);
                block(&mut out, NG_EPB, &body);
            } else {
                body.extend_from_slice(&(p.len() as u32).to_le_bytes());
                body.extend_from_slice(p);
                block(&mut out, NG_SPB, &body);
            }
        }
        out
    }

    /// An Ethernet frame wrapped as Linux cooked (SLL) with `pkttype` (0 to us, 4 sent).
    #[must_use]
    pub fn sll(frame: &[u8], pkttype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&pkttype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&6u16.to_be_bytes());
        out.extend_from_slice(frame.get(6..12).unwrap_or(&[0; 6]));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(frame.get(12..14).unwrap_or(&[0; 2]));
        out.extend_from_slice(frame.get(14..).unwrap_or_default());
        out
    }

    /// An Ethernet frame wrapped as Linux cooked v2 (SLL2) with `pkttype`.
    #[must_use]
    pub fn sll2(frame: &[u8], pkttype: u8) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(frame.get(12..14).unwrap_or(&[0; 2]));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.push(pkttype);
        out.push(6);
        out.extend_from_slice(frame.get(6..12).unwrap_or(&[0; 6]));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(frame.get(14..).unwrap_or_default());
        out
    }

    /// The link types the cooked writers produce, for callers that name them.
    pub const COOKED: [u16; 2] = [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2];
}

#[cfg(test)]
mod tests {
    use super::{write::*, *};

    fn frames() -> Vec<Vec<u8>> {
        vec![
            crate::craft::Frame::tcp("192.0.2.1", "198.51.100.2", 40000, 80, 0x02).build(),
            crate::craft::Frame::udp("2001:db8::1", "2001:db8::2", 5353, 53).build(),
        ]
    }

    #[test]
    fn pcap_in_both_byte_orders_and_resolutions() {
        let f = frames();
        let pk: Vec<(u64, Vec<u8>)> = f
            .iter()
            .enumerate()
            .map(|(i, p)| (1_700_000_000_123_456_789 + i as u64, p.clone()))
            .collect();
        for be in [false, true] {
            for ns in [false, true] {
                let recs = read(&pcap(LINKTYPE_ETHERNET, be, ns, &pk)).expect("valid pcap");
                assert_eq!(recs.len(), 2);
                for (r, (ts, p)) in recs.iter().zip(&pk) {
                    assert_eq!(&r.frame, p);
                    let want = if ns { *ts } else { ts / 1000 * 1000 };
                    assert_eq!(r.timestamp_ns, want, "be {be} ns {ns}");
                    assert!(!r.outgoing);
                }
                assert_eq!(recs[1].number, 2);
                assert_eq!(recs[1].offset, 24 + 16 + f[0].len());
            }
        }
    }

    #[test]
    fn cooked_captures_become_the_same_ethernet_payload() {
        let f = frames();
        let sll_pk = vec![(0, sll(&f[0], 4)), (0, sll(&f[1], 0))];
        let recs = read(&pcap(LINKTYPE_LINUX_SLL, false, false, &sll_pk)).expect("sll");
        let recs2 = read(&pcapng(
            &[LINKTYPE_LINUX_SLL2],
            &[(Some(0), 5, sll2(&f[0], 4)), (Some(0), 6, sll2(&f[1], 0))],
        ))
        .expect("sll2");
        for rs in [&recs, &recs2] {
            assert_eq!(rs.len(), 2);
            assert!(rs[0].outgoing && !rs[1].outgoing);
            for (r, orig) in rs.iter().zip(&f) {
                // Source address, ethertype and everything after are kept.
                assert_eq!(r.frame[6..], orig[6..]);
            }
        }
        assert_eq!(recs2[1].timestamp_ns, 6);
    }

    #[test]
    fn pcapng_with_several_interfaces_and_simple_blocks() {
        let f = frames();
        let raw = pcapng(
            &[LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL],
            &[
                (Some(1), 1, sll(&f[0], 0)),
                (None, 0, f[1].clone()),
                (Some(0), 3_000_000_000, f[0].clone()),
            ],
        );
        let recs = read(&raw).expect("pcapng");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].interface, 1);
        assert_eq!(recs[0].frame[6..], f[0][6..]);
        assert_eq!(recs[1].frame, f[1]);
        assert_eq!(recs[2].frame, f[0]);
        assert_eq!(recs[2].timestamp_ns, 3_000_000_000);
    }

    #[test]
    fn truncation_and_garbage_name_the_place() {
        let f = frames();
        let raw = pcap(
            LINKTYPE_ETHERNET,
            false,
            false,
            &[(0, f[0].clone()), (0, f[1].clone())],
        );
        let second = 24 + 16 + f[0].len();
        // Every cut of the file either reads a prefix cleanly or names packet 1 or 2.
        for cut in 0..raw.len() {
            match read(&raw[..cut]) {
                Ok(recs) => assert!(cut == 24 || cut == second, "cut {cut}: {} read", recs.len()),
                Err(e) => {
                    let want = if cut < 24 {
                        None
                    } else if cut < second {
                        Some(1)
                    } else {
                        Some(2)
                    };
                    assert_eq!(e.packet, want, "cut {cut}: {e}");
                }
            }
        }
        let e = read(&raw[..second + 20]).expect_err("cut in packet 2");
        assert_eq!(
            e.to_string(),
            format!(
                "packet 2 (byte offset {}): the packet is cut short (4 of {} bytes)",
                second + 16,
                f[1].len()
            )
        );
        let ng = pcapng(
            &[LINKTYPE_ETHERNET],
            &[(Some(0), 0, f[0].clone()), (Some(3), 0, f[1].clone())],
        );
        let e = read(&ng).expect_err("unknown interface");
        assert_eq!(e.packet, Some(2));
        assert!(e.to_string().contains("interface 3"), "{e}");
        for cut in 0..ng.len() {
            let _ = read(&ng[..cut]);
        }
        let mut bad = ng.clone();
        bad[4] = 13;
        assert!(
            read(&bad)
                .unwrap_err()
                .to_string()
                .contains("invalid block length 13")
        );
        assert!(
            read(b"hello world")
                .unwrap_err()
                .to_string()
                .contains("not a pcap")
        );
        let other = pcap(105, false, false, &[]);
        assert!(
            read(&other)
                .unwrap_err()
                .to_string()
                .contains("link type 105")
        );
        // Random bytes after a valid header never panic.
        let mut seed = 0x1234_5678_u32;
        for _ in 0..2000 {
            let mut buf = raw[..24].to_vec();
            for _ in 0..(seed % 97) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.push((seed >> 16) as u8);
            }
            let _ = read(&buf);
            buf[..4].copy_from_slice(&NG_SHB.to_le_bytes());
            let _ = read(&buf);
        }
    }
}
