//! DNS message header (RFC 1035 §4.1.1).

/// Header length.
pub const HEADER_LEN: usize = 12;
/// Largest name in wire form, length bytes and the root byte included.
pub const MAX_NAME_WIRE: usize = 255;
/// Largest label.
pub const MAX_LABEL: usize = 63;
/// Most labels a 255-byte name can have.
pub const MAX_LABELS: usize = 127;
/// DNS message bytes copied for inspection: header + the largest question, rounded up.
pub const INSPECT_LEN: usize = 512;

/// RCODE NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;

/// Why a query is not inspectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The QR bit says response.
    NotAQuery,
    /// An opcode other than QUERY.
    Opcode,
    /// QDCOUNT is not 1.
    QdCount,
}

/// Checks a query header: QR = 0, opcode QUERY, exactly one question.
#[inline(always)]
pub fn check_query_header(h: &[u8; HEADER_LEN]) -> Result<(), HeaderError> {
    if h[2] & 0x80 != 0 {
        return Err(HeaderError::NotAQuery);
    }
    if (h[2] >> 3) & 0x0f != 0 {
        return Err(HeaderError::Opcode);
    }
    if h[4] != 0 || h[5] != 1 {
        return Err(HeaderError::QdCount);
    }
    Ok(())
}

/// Turns a query header into an NXDOMAIN response header in place: QR set, opcode and RD
/// kept, AA and TC clear, RA set, CD kept, RCODE 3, one question and no other records.
#[inline(always)]
pub fn make_nxdomain_header(h: &mut [u8; HEADER_LEN]) {
    h[2] = 0x80 | (h[2] & 0x79);
    h[3] = 0x80 | (h[3] & 0x10) | RCODE_NXDOMAIN;
    h[4] = 0;
    h[5] = 1;
    let mut i = 6;
    while i < HEADER_LEN {
        h[i] = 0;
        i += 1;
    }
}

/// One's-complement sum of `bytes` as big-endian 16-bit words, the first byte at an even
/// position. Not folded.
#[inline(always)]
#[must_use]
pub fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        sum += if i % 2 == 0 {
            u32::from(bytes[i]) << 8
        } else {
            u32::from(bytes[i])
        };
        i += 1;
    }
    sum
}

/// Folds a 32-bit sum into the final 16-bit checksum (complemented).
#[inline(always)]
#[must_use]
pub fn fold_checksum(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
