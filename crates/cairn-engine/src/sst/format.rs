//! Fixed-layout pieces of an SST file: block handles, the block trailer and the footer, plus the limits every
//! reader enforces before trusting a length read from disk.

use crate::coding;

/// The SST format version written in every footer. Bump it on any change to the bytes on disk.
pub const FORMAT_VERSION: u32 = 1;

/// Identifies an SST file: the bytes `cairnsst` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"cairnsst");

/// The largest block, compressed or not, that a writer produces or a reader accepts. Bounds every
/// allocation whose size comes from file bytes.
pub const MAX_BLOCK_BYTES: usize = 64 * 1024 * 1024;

/// Bytes after every block on disk: a compression type byte and a masked CRC32C.
pub const BLOCK_TRAILER_BYTES: usize = 5;

/// Bytes in the footer: three fixed handles, version, CRC, magic.
pub const FOOTER_BYTES: usize = 3 * 16 + 4 + 4 + 8;

/// The longest varint-encoded [`BlockHandle`].
pub const MAX_ENCODED_HANDLE_BYTES: usize = 20;

/// Where a block lives in the file. `size` counts the stored block bytes only; the
/// [`BLOCK_TRAILER_BYTES`]-byte trailer follows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHandle {
    /// Offset of the block's first byte.
    pub offset: u64,
    /// Stored (possibly compressed) bytes, trailer excluded.
    pub size: u64,
}

impl BlockHandle {
    /// A handle of zero size marks an absent block (only the filter may be absent).
    pub const NONE: BlockHandle = BlockHandle { offset: 0, size: 0 };

    /// True for [`BlockHandle::NONE`]-like handles.
    pub fn is_none(&self) -> bool {
        self.size == 0
    }

    /// Offset just past the block's trailer, `None` on overflow.
    pub fn end_with_trailer(&self) -> Option<u64> {
        self.offset.checked_add(self.size)?.checked_add(BLOCK_TRAILER_BYTES as u64)
    }

    /// Appends the varint encoding used in index entries.
    pub fn encode_varint_to(&self, out: &mut Vec<u8>) {
        coding::put_varint(out, self.offset);
        coding::put_varint(out, self.size);
    }

    /// Decodes an index-entry value; the whole of `buf` must be the handle.
    pub fn decode_varint(mut buf: &[u8]) -> Option<BlockHandle> {
        let offset = coding::get_varint(&mut buf)?;
        let size = coding::get_varint(&mut buf)?;
        buf.is_empty().then_some(BlockHandle { offset, size })
    }

    fn encode_fixed_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
    }

    fn decode_fixed(buf: &mut &[u8]) -> Option<BlockHandle> {
        let offset = coding::get_u64(buf)?;
        let size = coding::get_u64(buf)?;
        Some(BlockHandle { offset, size })
    }
}

/// The last [`FOOTER_BYTES`] of every SST file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// The bloom filter block, [`BlockHandle::NONE`] when the table has no filter.
    pub filter: BlockHandle,
    /// The index block.
    pub index: BlockHandle,
    /// The properties block.
    pub properties: BlockHandle,
    /// The format the file was written in; readers accept only [`FORMAT_VERSION`].
    pub format_version: u32,
}

/// Why a footer was rejected; the table reader adds the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FooterError {
    /// The trailing magic is wrong: not an SST file, or its end was cut off.
    BadMagic,
    /// The footer's CRC does not match its bytes.
    BadChecksum,
    /// A format version this reader does not understand.
    UnsupportedVersion(u32),
}

impl std::fmt::Display for FooterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FooterError::BadMagic => write!(f, "bad footer magic (not an sst file, or truncated)"),
            FooterError::BadChecksum => write!(f, "footer checksum mismatch"),
            FooterError::UnsupportedVersion(v) => write!(f, "unsupported sst format version {v}"),
        }
    }
}

impl Footer {
    /// Encodes the footer: handles, version, masked CRC of those 52 bytes, magic.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FOOTER_BYTES);
        self.filter.encode_fixed_to(&mut out);
        self.index.encode_fixed_to(&mut out);
        self.properties.encode_fixed_to(&mut out);
        out.extend_from_slice(&self.format_version.to_le_bytes());
        let crc = coding::masked_crc(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        debug_assert_eq!(out.len(), FOOTER_BYTES);
        out
    }

    /// Decodes and verifies a footer. Handles are not range-checked here: that needs the file length.
    pub fn decode(bytes: &[u8; FOOTER_BYTES]) -> Result<Footer, FooterError> {
        let (body, tail) = bytes.split_at(FOOTER_BYTES - 12);
        let mut tail = tail;
        let crc = coding::get_u32(&mut tail).ok_or(FooterError::BadMagic)?;
        let magic = coding::get_u64(&mut tail).ok_or(FooterError::BadMagic)?;
        if magic != MAGIC {
            return Err(FooterError::BadMagic);
        }
        if coding::masked_crc(body) != crc {
            return Err(FooterError::BadChecksum);
        }
        let mut buf = body;
        let filter = BlockHandle::decode_fixed(&mut buf).ok_or(FooterError::BadChecksum)?;
        let index = BlockHandle::decode_fixed(&mut buf).ok_or(FooterError::BadChecksum)?;
        let properties = BlockHandle::decode_fixed(&mut buf).ok_or(FooterError::BadChecksum)?;
        let format_version = coding::get_u32(&mut buf).ok_or(FooterError::BadChecksum)?;
        if format_version != FORMAT_VERSION {
            return Err(FooterError::UnsupportedVersion(format_version));
        }
        Ok(Footer { filter, index, properties, format_version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            filter: BlockHandle { offset: 100, size: 20 },
            index: BlockHandle { offset: 125, size: 300 },
            properties: BlockHandle { offset: 430, size: 90 },
            format_version: FORMAT_VERSION,
        }
    }

    #[test]
    fn footer_round_trips() {
        let bytes: [u8; FOOTER_BYTES] = footer().encode().try_into().unwrap();
        assert_eq!(Footer::decode(&bytes), Ok(footer()));
    }

    #[test]
    fn footer_rejects_every_bit_flip() {
        let bytes: [u8; FOOTER_BYTES] = footer().encode().try_into().unwrap();
        for bit in 0..FOOTER_BYTES * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Footer::decode(&b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn footer_rejects_other_versions() {
        let mut f = footer();
        f.format_version = 2;
        let bytes: [u8; FOOTER_BYTES] = f.encode().try_into().unwrap();
        assert_eq!(Footer::decode(&bytes), Err(FooterError::UnsupportedVersion(2)));
    }

    #[test]
    fn handle_varint_rejects_trailing_bytes() {
        let h = BlockHandle { offset: 1 << 40, size: 4096 };
        let mut out = Vec::new();
        h.encode_varint_to(&mut out);
        assert!(out.len() <= MAX_ENCODED_HANDLE_BYTES);
        assert_eq!(BlockHandle::decode_varint(&out), Some(h));
        out.push(0);
        assert_eq!(BlockHandle::decode_varint(&out), None);
    }
}
