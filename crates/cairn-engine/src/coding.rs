//! Little helpers to encode and decode integers. Decoders return `None` on truncated input so callers can
//! turn it into a `Corruption` error naming their file.

/// The longest encoding of a `u64` varint.
pub const MAX_VARINT_BYTES: usize = 10;

/// Bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    // One byte per started 7-bit group; 0 still takes a byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes a varint from the front of `buf`, advancing it.
pub fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut result = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        result |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(result);
        }
    }
    None
}

/// Appends a varint length followed by the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Decodes a length-prefixed byte string from the front of `buf`, advancing it.
pub fn get_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(get_varint(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Some(head)
}

/// Decodes a fixed little-endian u32 from the front of `buf`, advancing it.
pub fn get_u32(buf: &mut &[u8]) -> Option<u32> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    *buf = rest;
    Some(u32::from_le_bytes(*head))
}

/// Decodes a fixed little-endian u64 from the front of `buf`, advancing it.
pub fn get_u64(buf: &mut &[u8]) -> Option<u64> {
    let (head, rest) = buf.split_first_chunk::<8>()?;
    *buf = rest;
    Some(u64::from_le_bytes(*head))
}

/// A CRC32C, masked as LevelDB does so that a checksum stored inside checksummed data stays robust.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Extends a masked CRC over two pieces without concatenating them.
pub fn masked_crc2(a: &[u8], b: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(a), b);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
        assert_eq!(varint_len(u64::MAX), MAX_VARINT_BYTES);
    }

    #[test]
    fn varints_round_trip_and_reject_truncation() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut s = &out[..];
            assert_eq!(get_varint(&mut s), Some(v));
            assert!(s.is_empty());
            let mut short = &out[..out.len() - 1];
            assert_eq!(get_varint(&mut short), None);
        }
    }

    #[test]
    fn bytes_reject_overlong_length() {
        let mut out = Vec::new();
        put_varint(&mut out, 10);
        out.extend_from_slice(b"abc");
        assert_eq!(get_bytes(&mut &out[..]), None);
    }
}
