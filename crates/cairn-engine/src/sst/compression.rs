//! Block compression. A compressed block is `varint uncompressed_len ++ codec bytes`; storing the length
//! ourselves lets the reader bound the allocation ([`MAX_BLOCK_BYTES`]) before decompressing and check that
//! the codec produced exactly that many bytes.

use super::format::MAX_BLOCK_BYTES;
use crate::coding;

/// How a block's bytes are stored. The discriminant is the trailer's type byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 block format (`lz4_flex`): fast, the default.
    #[default]
    Lz4,
    /// Zstandard; needs the crate feature `zstd` to write or read.
    Zstd,
}

/// The zstd level used for blocks: fast, still better than lz4.
#[cfg(feature = "zstd")]
const ZSTD_LEVEL: i32 = 3;

/// Why a compressed block could not be turned back into its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecompressError {
    /// The stored bytes are malformed.
    Corrupt(String),
    /// The block uses a codec this build does not include.
    Unsupported(&'static str),
}

impl Compression {
    /// The trailer type byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    /// Decodes a trailer type byte; `None` for an unknown one.
    pub fn from_u8(b: u8) -> Option<Compression> {
        match b {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// True if this build can write and read blocks of this kind.
    pub fn is_supported(self) -> bool {
        match self {
            Compression::None | Compression::Lz4 => true,
            Compression::Zstd => cfg!(feature = "zstd"),
        }
    }

    /// Compresses `raw` into `out` (cleared first) as `varint len ++ codec bytes`. Returns `false` (and
    /// leaves `out` unspecified) when the codec is unavailable; `Compression::None` never compresses.
    pub fn compress(self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        match self {
            Compression::None => false,
            Compression::Lz4 => {
                coding::put_varint(out, raw.len() as u64);
                let header = out.len();
                out.resize(header + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
                match lz4_flex::block::compress_into(raw, &mut out[header..]) {
                    Ok(n) => {
                        out.truncate(header + n);
                        true
                    }
                    Err(_) => false,
                }
            }
            Compression::Zstd => compress_zstd(raw, out),
        }
    }

    /// Reverses [`Compression::compress`] for a block stored with this codec.
    pub fn decompress(self, stored: &[u8]) -> Result<Vec<u8>, DecompressError> {
        match self {
            Compression::None => Ok(stored.to_vec()),
            Compression::Lz4 => {
                let (len, body) = split_length(stored)?;
                let mut out = vec![0u8; len];
                let n = lz4_flex::block::decompress_into(body, &mut out)
                    .map_err(|e| DecompressError::Corrupt(format!("lz4: {e}")))?;
                if n != len {
                    return Err(DecompressError::Corrupt(format!("lz4 produced {n} bytes, expected {len}")));
                }
                Ok(out)
            }
            Compression::Zstd => {
                let (len, body) = split_length(stored)?;
                decompress_zstd(body, len)
            }
        }
    }
}

/// Splits off the stored uncompressed length, bounded by [`MAX_BLOCK_BYTES`].
fn split_length(stored: &[u8]) -> Result<(usize, &[u8]), DecompressError> {
    let mut buf = stored;
    let len = coding::get_varint(&mut buf)
        .ok_or_else(|| DecompressError::Corrupt("truncated uncompressed length".into()))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_BLOCK_BYTES)
        .ok_or_else(|| DecompressError::Corrupt(format!("block claims {len} uncompressed bytes")))?;
    Ok((len, buf))
}

#[cfg(feature = "zstd")]
fn compress_zstd(raw: &[u8], out: &mut Vec<u8>) -> bool {
    coding::put_varint(out, raw.len() as u64);
    match zstd::bulk::compress(raw, ZSTD_LEVEL) {
        Ok(c) => {
            out.extend_from_slice(&c);
            true
        }
        Err(_) => false,
    }
}

#[cfg(not(feature = "zstd"))]
fn compress_zstd(_raw: &[u8], _out: &mut Vec<u8>) -> bool {
    false
}

#[cfg(feature = "zstd")]
fn decompress_zstd(buf: &[u8], len: usize) -> Result<Vec<u8>, DecompressError> {
    let out = zstd::bulk::decompress(buf, len).map_err(|e| DecompressError::Corrupt(format!("zstd: {e}")))?;
    if out.len() != len {
        return Err(DecompressError::Corrupt(format!("zstd produced {} bytes, expected {len}", out.len())));
    }
    Ok(out)
}

#[cfg(not(feature = "zstd"))]
fn decompress_zstd(_buf: &[u8], _len: usize) -> Result<Vec<u8>, DecompressError> {
    Err(DecompressError::Unsupported(
        "block is zstd-compressed but cairn-engine was built without feature `zstd`",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..5000u32).flat_map(|i| (i % 97).to_le_bytes()).collect()
    }

    #[test]
    fn lz4_round_trips() {
        let raw = sample();
        let mut out = Vec::new();
        assert!(Compression::Lz4.compress(&raw, &mut out));
        assert!(out.len() < raw.len());
        assert_eq!(Compression::Lz4.decompress(&out).unwrap(), raw);
    }

    #[test]
    fn lz4_rejects_oversized_length_and_garbage() {
        let mut out = Vec::new();
        coding::put_varint(&mut out, MAX_BLOCK_BYTES as u64 + 1);
        assert!(matches!(Compression::Lz4.decompress(&out), Err(DecompressError::Corrupt(_))));
        let mut out = Vec::new();
        coding::put_varint(&mut out, 100);
        out.extend_from_slice(&[0xff; 7]);
        assert!(matches!(Compression::Lz4.decompress(&out), Err(DecompressError::Corrupt(_))));
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trips() {
        let raw = sample();
        let mut out = Vec::new();
        assert!(Compression::Zstd.compress(&raw, &mut out));
        assert_eq!(Compression::Zstd.decompress(&out).unwrap(), raw);
    }

    #[cfg(not(feature = "zstd"))]
    #[test]
    fn zstd_is_unsupported_without_the_feature() {
        let mut out = Vec::new();
        assert!(!Compression::Zstd.compress(&sample(), &mut out));
        assert!(!Compression::Zstd.is_supported());
        assert!(matches!(Compression::Zstd.decompress(&[4, 1, 2, 3]), Err(DecompressError::Unsupported(_))));
    }

    #[test]
    fn type_bytes_round_trip() {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            assert_eq!(Compression::from_u8(c.to_u8()), Some(c));
        }
        assert_eq!(Compression::from_u8(3), None);
    }
}
