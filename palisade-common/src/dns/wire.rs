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

/// RCODE NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// RCODE NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// RCODE REFUSED.
pub const RCODE_REFUSED: u8 = 5;
/// Query type A.
pub const TYPE_A: u16 = 1;
/// Query type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// A sinkhole answer record for an A question: a pointer to the question's name, type,
/// class, TTL, RDLENGTH and the IPv4 address.
pub const SINKHOLE_RECORD_V4: usize = 16;
/// The same for an AAAA question, with the IPv6 address.
pub const SINKHOLE_RECORD_V6: usize = 28;
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
    make_response_header(h, RCODE_NXDOMAIN, 0);
}

/// Turns a query header into a response header in place: QR set, opcode and RD kept, AA and
/// TC clear, RA set, CD kept, `rcode`, one question, `answers` answer records and no
/// authority or additional records.
#[inline(always)]
pub fn make_response_header(h: &mut [u8; HEADER_LEN], rcode: u8, answers: u8) {
    h[2] = 0x80 | (h[2] & 0x79);
    h[3] = 0x80 | (h[3] & 0x10) | (rcode & 0x0f);
    h[4] = 0;
    h[5] = 1;
    let mut i = 6;
    while i < HEADER_LEN {
        h[i] = 0;
        i += 1;
    }
    h[7] = answers;
}

/// What a sinkhole gives a question: the answer record's length, 0 for none (NODATA).
/// An A question of class IN gets the IPv4 address, an AAAA question of class IN the IPv6
/// address; any other question gets NOERROR with no answer.
#[inline(always)]
#[must_use]
pub const fn sinkhole_record_len(qtype: u16, qclass: u16) -> usize {
    if qclass != CLASS_IN {
        0
    } else if qtype == TYPE_A {
        SINKHOLE_RECORD_V4
    } else if qtype == TYPE_AAAA {
        SINKHOLE_RECORD_V6
    } else {
        0
    }
}

/// Writes the sinkhole answer record into `out` (its first [`sinkhole_record_len`] bytes):
/// the owner is a compression pointer to the question's name (offset 12, right after the
/// header), then type, class IN, `ttl`, RDLENGTH and the address (`v4` for A, `v6` for
/// AAAA).
#[inline(always)]
pub fn sinkhole_record(
    out: &mut [u8; SINKHOLE_RECORD_V6],
    qtype: u16,
    ttl: u32,
    v4: &[u8; 4],
    v6: &[u8; 16],
) {
    out[0] = 0xc0;
    out[1] = HEADER_LEN as u8;
    out[2..4].copy_from_slice(&qtype.to_be_bytes());
    out[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
    out[6..10].copy_from_slice(&ttl.to_be_bytes());
    if qtype == TYPE_A {
        out[10..12].copy_from_slice(&4u16.to_be_bytes());
        out[12..16].copy_from_slice(v4);
        let mut i = 16;
        while i < SINKHOLE_RECORD_V6 {
            out[i] = 0;
            i += 1;
        }
    } else {
        out[10..12].copy_from_slice(&16u16.to_be_bytes());
        out[12..28].copy_from_slice(v6);
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
pub fn fold_checksum(sum: u64) -> u16 {
    !fold16(sum)
}

/// `sum` folded into 16 bits, one's-complement style, not inverted.
#[inline(always)]
#[must_use]
pub fn fold16(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_keep_what_the_query_asked() {
        // ID 0x1234, RD and CD set, AA, TC, Z and AD set on purpose, OPT announced.
        let q = [0x12, 0x34, 0x07, 0x70, 0, 1, 0, 0, 0, 0, 0, 1];
        let mut h = q;
        make_response_header(&mut h, RCODE_REFUSED, 0);
        assert_eq!(h, [0x12, 0x34, 0x81, 0x95, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut h = q;
        make_response_header(&mut h, RCODE_NOERROR, 1);
        assert_eq!(h, [0x12, 0x34, 0x81, 0x90, 0, 1, 0, 1, 0, 0, 0, 0]);
        let mut h = q;
        make_nxdomain_header(&mut h);
        assert_eq!(h, [0x12, 0x34, 0x81, 0x93, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn sinkhole_records() {
        assert_eq!(sinkhole_record_len(TYPE_A, CLASS_IN), SINKHOLE_RECORD_V4);
        assert_eq!(sinkhole_record_len(TYPE_AAAA, CLASS_IN), SINKHOLE_RECORD_V6);
        assert_eq!(sinkhole_record_len(15, CLASS_IN), 0);
        assert_eq!(sinkhole_record_len(TYPE_A, 3), 0);
        assert_eq!(sinkhole_record_len(TYPE_AAAA, 255), 0);
        let v4 = [192, 0, 2, 1];
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[15] = 7;
        let mut rr = [0xee; SINKHOLE_RECORD_V6];
        sinkhole_record(&mut rr, TYPE_A, 0x0102_0304, &v4, &v6);
        assert_eq!(
            rr[..SINKHOLE_RECORD_V4],
            [0xc0, 12, 0, 1, 0, 1, 1, 2, 3, 4, 0, 4, 192, 0, 2, 1]
        );
        assert!(rr[SINKHOLE_RECORD_V4..].iter().all(|&b| b == 0));
        sinkhole_record(&mut rr, TYPE_AAAA, 60, &v4, &v6);
        assert_eq!(rr[..12], [0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        assert_eq!(rr[12..], v6);
    }

    #[test]
    fn fold16_is_the_uninverted_checksum() {
        for sum in [0u64, 1, 0xffff, 0x1_0000, 0x1234_5678, u64::from(u32::MAX)] {
            assert_eq!(fold_checksum(sum), !fold16(sum));
        }
        assert_eq!(fold16(0x1_fffe), 0xffff);
    }

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
