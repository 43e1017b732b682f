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
/// The EDNS(0) OPT pseudo-record type (RFC 6891).
pub const TYPE_OPT: u16 = 41;
/// An OPT record before its options: root owner, type, class, TTL and RDLENGTH.
pub const OPT_FIXED_LEN: usize = 11;

/// Why a query is not inspectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The QR bit says response.
    NotAQuery,
    /// An opcode other than QUERY.
    Opcode,
    /// QDCOUNT is not 1.
    QdCount,
    /// Answer or authority records, or more than one additional record.
    Records,
    /// What follows the question is not exactly what ARCOUNT announces: bytes after the
    /// question without an OPT record, a record that is not OPT, or an OPT record that does
    /// not end exactly at the end of the message.
    Trailing,
}

/// Checks a query header: QR = 0, opcode QUERY, exactly one question, no answer or
/// authority records and at most one additional record (the OPT record, checked by
/// [`check_additional`]).
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
    if h[6] != 0 || h[7] != 0 || h[8] != 0 || h[9] != 0 || h[10] != 0 || h[11] > 1 {
        return Err(HeaderError::Records);
    }
    Ok(())
}

/// Checks what follows the question, `after` bytes in all, of which `opt` holds the first
/// [`OPT_FIXED_LEN`] (zeros past the end). With ARCOUNT 0 nothing may follow; with
/// ARCOUNT 1 exactly one OPT record must: root owner, type 41, its RDATA ending exactly at
/// the end of the message. Resolvers differ in what they make of anything else (some
/// ignore trailing bytes, some read names in them), so anything else is refused.
#[inline(always)]
pub fn check_additional(
    h: &[u8; HEADER_LEN],
    opt: &[u8; OPT_FIXED_LEN],
    after: usize,
) -> Result<(), HeaderError> {
    if h[10] != 0 || h[11] > 1 {
        return Err(HeaderError::Records);
    }
    if h[11] == 0 {
        return if after == 0 {
            Ok(())
        } else {
            Err(HeaderError::Trailing)
        };
    }
    if after < OPT_FIXED_LEN || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT {
        return Err(HeaderError::Trailing);
    }
    let rdlength = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
    if after != OPT_FIXED_LEN + rdlength {
        return Err(HeaderError::Trailing);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ar: u8) -> [u8; HEADER_LEN] {
        [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, ar]
    }

    fn opt(rdlength: u16) -> [u8; OPT_FIXED_LEN] {
        let r = rdlength.to_be_bytes();
        [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, r[0], r[1]]
    }

    #[test]
    fn counts() {
        assert_eq!(check_query_header(&header(0)), Ok(()));
        assert_eq!(check_query_header(&header(1)), Ok(()));
        assert_eq!(check_query_header(&header(2)), Err(HeaderError::Records));
        let mut h = header(0);
        h[7] = 1;
        assert_eq!(check_query_header(&h), Err(HeaderError::Records));
        let mut h = header(0);
        h[8] = 1;
        assert_eq!(check_query_header(&h), Err(HeaderError::Records));
    }

    #[test]
    fn what_may_follow_the_question() {
        let none = [0; OPT_FIXED_LEN];
        assert_eq!(check_additional(&header(0), &none, 0), Ok(()));
        assert_eq!(
            check_additional(&header(0), &none, 1),
            Err(HeaderError::Trailing)
        );
        assert_eq!(
            check_additional(&header(1), &none, 0),
            Err(HeaderError::Trailing)
        );
        assert_eq!(check_additional(&header(1), &opt(0), 11), Ok(()));
        assert_eq!(check_additional(&header(1), &opt(12), 23), Ok(()));
        for after in [22, 24, 10] {
            assert_eq!(
                check_additional(&header(1), &opt(12), after),
                Err(HeaderError::Trailing),
                "{after}"
            );
        }
        let mut not_opt = opt(0);
        not_opt[2] = 1;
        assert_eq!(
            check_additional(&header(1), &not_opt, 11),
            Err(HeaderError::Trailing)
        );
        let mut owner = opt(0);
        owner[0] = 1;
        assert_eq!(
            check_additional(&header(1), &owner, 11),
            Err(HeaderError::Trailing)
        );
    }
}
