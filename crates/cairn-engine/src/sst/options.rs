//! Knobs for writing tables. Readers need none: everything they must know is in the file.

use super::compression::Compression;
use super::format::MAX_BLOCK_BYTES;
use crate::error::{Error, Result};

/// Most bloom bits per key accepted; beyond ~30 the false-positive rate no longer improves meaningfully.
pub const MAX_BLOOM_BITS_PER_KEY: u32 = 64;

/// How a [`super::TableBuilder`] lays out a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableOptions {
    /// Target uncompressed size of a data block; a block is cut once it reaches this. Default 4096.
    pub block_bytes: usize,
    /// Entries between restart points in data blocks (index blocks use 1). Default 8.
    pub restart_interval: usize,
    /// Bloom filter bits per distinct user key; 0 writes no filter. Default 10 (about 1% false positives).
    pub bloom_bits_per_key: u32,
    /// Codec for data and index blocks. Default [`Compression::Lz4`].
    pub compression: Compression,
}

impl Default for TableOptions {
    fn default() -> TableOptions {
        TableOptions {
            block_bytes: 4096,
            restart_interval: 8,
            bloom_bits_per_key: 10,
            compression: Compression::Lz4,
        }
    }
}

impl TableOptions {
    /// Rejects options a builder cannot honour.
    pub fn validate(&self) -> Result<()> {
        if self.block_bytes == 0 || self.block_bytes > MAX_BLOCK_BYTES / 2 {
            return Err(Error::InvalidConfig(format!(
                "block_bytes {} must be in 1..={}",
                self.block_bytes,
                MAX_BLOCK_BYTES / 2
            )));
        }
        if self.restart_interval == 0 || self.restart_interval > 1024 {
            return Err(Error::InvalidConfig(format!(
                "restart_interval {} must be in 1..=1024",
                self.restart_interval
            )));
        }
        if self.bloom_bits_per_key > MAX_BLOOM_BITS_PER_KEY {
            return Err(Error::InvalidConfig(format!(
                "bloom_bits_per_key {} must be at most {MAX_BLOOM_BITS_PER_KEY}",
                self.bloom_bits_per_key
            )));
        }
        if !self.compression.is_supported() {
            return Err(Error::InvalidConfig(format!(
                "compression {:?} is not compiled into this build (enable the `zstd` feature)",
                self.compression
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_not() {
        TableOptions::default().validate().unwrap();
        assert!(TableOptions { block_bytes: 0, ..Default::default() }.validate().is_err());
        assert!(TableOptions { restart_interval: 0, ..Default::default() }.validate().is_err());
        assert!(TableOptions { bloom_bits_per_key: 1000, ..Default::default() }.validate().is_err());
    }
}
