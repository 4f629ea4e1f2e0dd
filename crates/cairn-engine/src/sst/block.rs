//! A decoded (uncompressed, checksum-verified) block in the data/index block format:
//!
//! ```text
//! entry*  restart: u32 LE * num_restarts  num_restarts: u32 LE
//! entry = varint shared, varint unshared, varint value_len, key[shared..] (unshared bytes), value
//! ```
//!
//! `shared` is the length of the prefix the entry's key shares with the previous key; it is 0 at restart
//! points, whose offsets the restart array lists so a seek can binary-search them.

use crate::error::Error;
use std::path::Path;

/// Bytes of one restart-array slot and of the trailing restart count.
pub const RESTART_SLOT_BYTES: usize = 4;

/// A block whose bytes failed to decode. Carries a static detail so hot paths need not allocate; the
/// table layer adds the file name with [`BlockCorruption::into_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCorruption(pub &'static str);

impl BlockCorruption {
    /// The engine error naming `path`.
    pub fn into_error(self, path: &Path) -> Error {
        Error::corruption(path, format!("bad block: {}", self.0))
    }
}

/// An immutable block, shared between the block cache and iterators.
#[derive(Debug)]
pub struct Block {
    data: Vec<u8>,
    // INVARIANT: restarts_offset + 4 * num_restarts + 4 == data.len().
    restarts_offset: usize,
    // INVARIANT: >= 1; restart 0 is at offset 0; restarts strictly increase; every restart is
    // < restarts_offset, or the block is empty (restarts_offset == 0) and has the single restart 0.
    num_restarts: usize,
}

impl Block {
    /// Validates the restart array of `data` and wraps it. Entries are checked lazily by iterators.
    pub fn new(data: Vec<u8>) -> Result<Block, BlockCorruption> {
        let len = data.len();
        if len < 2 * RESTART_SLOT_BYTES {
            return Err(BlockCorruption("block too short for a restart array"));
        }
        let num_restarts = read_u32(&data, len - RESTART_SLOT_BYTES) as usize;
        let max_restarts = (len - RESTART_SLOT_BYTES) / RESTART_SLOT_BYTES;
        if num_restarts == 0 || num_restarts > max_restarts {
            return Err(BlockCorruption("impossible restart count"));
        }
        let restarts_offset = len - RESTART_SLOT_BYTES * (num_restarts + 1);
        let block = Block { data, restarts_offset, num_restarts };
        if block.restart(0) != 0 {
            return Err(BlockCorruption("first restart is not at offset 0"));
        }
        if restarts_offset == 0 && num_restarts != 1 {
            return Err(BlockCorruption("empty block with several restarts"));
        }
        let mut prev = 0usize;
        for i in 1..num_restarts {
            let r = block.restart(i);
            if r <= prev || r >= restarts_offset {
                return Err(BlockCorruption("restart offsets out of order or out of range"));
            }
            prev = r;
        }
        Ok(block)
    }

    /// A block with no entries.
    pub fn empty() -> Block {
        let mut data = vec![0u8; 2 * RESTART_SLOT_BYTES];
        data[RESTART_SLOT_BYTES..].copy_from_slice(&1u32.to_le_bytes());
        Block { data, restarts_offset: 0, num_restarts: 1 }
    }

    /// True if the block holds no entries.
    pub fn is_empty(&self) -> bool {
        self.restarts_offset == 0
    }

    /// The block's bytes (entries and restart array).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of memory the block pins, for cache accounting.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    /// Offset where the entries end and the restart array begins.
    pub(crate) fn restarts_offset(&self) -> usize {
        self.restarts_offset
    }

    /// Number of restart points (>= 1).
    pub(crate) fn num_restarts(&self) -> usize {
        self.num_restarts
    }

    /// Offset of restart point `i`; `i < num_restarts`.
    pub(crate) fn restart(&self, i: usize) -> usize {
        debug_assert!(i < self.num_restarts);
        read_u32(&self.data, self.restarts_offset + i * RESTART_SLOT_BYTES) as usize
    }
}

/// Reads a little-endian u32 at `at`; callers guarantee `at + 4 <= data.len()`.
fn read_u32(data: &[u8], at: usize) -> u32 {
    let b = &data[at..at + RESTART_SLOT_BYTES];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_restarts(entries: usize, restarts: &[u32]) -> Vec<u8> {
        let mut data = vec![7u8; entries];
        for r in restarts {
            data.extend_from_slice(&r.to_le_bytes());
        }
        data.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        data
    }

    #[test]
    fn accepts_well_formed_restart_arrays() {
        assert!(Block::new(with_restarts(0, &[0])).unwrap().is_empty());
        let b = Block::new(with_restarts(30, &[0, 10, 20])).unwrap();
        assert_eq!((b.num_restarts(), b.restarts_offset(), b.restart(2)), (3, 30, 20));
        assert!(Block::empty().is_empty());
        assert!(Block::new(Block::empty().data().to_vec()).is_ok());
    }

    #[test]
    fn rejects_bad_restart_arrays() {
        for data in [
            vec![],
            vec![0, 0, 0],
            with_restarts(10, &[]),
            with_restarts(10, &[1]),
            with_restarts(10, &[0, 5, 5]),
            with_restarts(10, &[0, 10]),
            with_restarts(0, &[0, 0]),
            {
                let mut d = with_restarts(10, &[0]);
                let n = d.len();
                d[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
                d
            },
        ] {
            assert!(Block::new(data.clone()).is_err(), "accepted {data:?}");
        }
    }
}
