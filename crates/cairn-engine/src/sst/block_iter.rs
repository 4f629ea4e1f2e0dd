//! A forward cursor over one [`Block`]. The current key is rebuilt in a reused buffer (prefix compression
//! means it cannot be a slice of the block); the value is a range of the block's bytes, so stepping never
//! allocates once the key buffer has grown to the longest key.

use super::block::{Block, BlockCorruption};
use crate::coding;
use crate::keys;
use std::cmp::Ordering;
use std::sync::Arc;

/// Result of block-level decoding; the table layer turns the error into `Error::Corruption`.
pub type BlockResult<T> = Result<T, BlockCorruption>;

/// Decoded header of one entry.
struct EntryHeader {
    shared: usize,
    key_start: usize,
    key_end: usize,
    value_end: usize,
}

/// Iterates a block in key order. Keys compare with [`keys::cmp_internal`] (data and index blocks both
/// hold internal keys). After an error the iterator is invalid.
#[derive(Debug)]
pub struct BlockIter {
    block: Arc<Block>,
    // INVARIANT: when valid, `key` is the full key of the entry at `current`, and the entry's value is
    // `block.data()[value_start..next]`.
    key: Vec<u8>,
    value_start: usize,
    // Offset of the entry after the current one (== restarts_offset after the last entry).
    next: usize,
    valid: bool,
}

impl BlockIter {
    /// An unpositioned iterator over `block`.
    pub fn new(block: Arc<Block>) -> BlockIter {
        BlockIter { block, key: Vec::new(), value_start: 0, next: 0, valid: false }
    }

    /// Switches to another block, keeping the key buffer's allocation. Leaves the iterator unpositioned.
    pub fn reset(&mut self, block: Arc<Block>) {
        self.block = block;
        self.key.clear();
        self.valid = false;
        self.next = 0;
    }

    /// The block being iterated.
    pub fn block(&self) -> &Arc<Block> {
        &self.block
    }

    /// True while positioned on an entry.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current key; only meaningful while valid.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value; only meaningful while valid.
    pub fn value(&self) -> &[u8] {
        if !self.valid {
            return &[];
        }
        &self.block.data()[self.value_start..self.next]
    }

    /// Positions on the first entry (invalid for an empty block).
    pub fn seek_to_first(&mut self) -> BlockResult<()> {
        self.key.clear();
        self.next = 0;
        self.parse_next()
    }

    /// Advances to the next entry. Must be valid. Named like [`crate::iter::InternalIterator::next`], whose
    /// fallible cursor contract `Iterator` cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> BlockResult<()> {
        debug_assert!(self.valid);
        self.parse_next()
    }

    /// Positions on the first entry whose key is `>= target`, or invalid if there is none.
    pub fn seek(&mut self, target: &[u8]) -> BlockResult<()> {
        // Binary search for the last restart whose key is < target (or restart 0); the answer lies at or
        // after it.
        self.valid = false;
        let (mut left, mut right) = (0, self.block.num_restarts() - 1);
        while left < right {
            let mid = left + (right - left).div_ceil(2);
            let key = restart_key(&self.block, mid)?;
            if keys::cmp_internal(key, target) == Ordering::Less {
                left = mid;
            } else {
                right = mid - 1;
            }
        }
        self.key.clear();
        self.next = self.block.restart(left);
        loop {
            self.parse_next()?;
            if !self.valid || keys::cmp_internal(&self.key, target) != Ordering::Less {
                return Ok(());
            }
        }
    }

    /// Leaves the iterator unpositioned (invalid).
    pub fn invalidate(&mut self) {
        self.key.clear();
        self.valid = false;
    }

    /// Positions on the entry at restart point `i` (`i < num_restarts`).
    pub fn seek_to_restart(&mut self, i: usize) -> BlockResult<()> {
        self.key.clear();
        self.next = self.block.restart(i.min(self.block.num_restarts() - 1));
        self.parse_next()
    }

    /// Decodes the entry at `self.next` on top of the current key.
    fn parse_next(&mut self) -> BlockResult<()> {
        let limit = self.block.restarts_offset();
        if self.next >= limit {
            self.valid = false;
            return Ok(());
        }
        let h = match decode_header(self.block.data(), self.next, limit) {
            Ok(h) if h.shared <= self.key.len() => h,
            Ok(_) => return self.fail(BlockCorruption("entry shares more than the previous key")),
            Err(e) => return self.fail(e),
        };
        self.key.truncate(h.shared);
        self.key.extend_from_slice(&self.block.data()[h.key_start..h.key_end]);
        self.value_start = h.key_end;
        self.next = h.value_end;
        self.valid = true;
        Ok(())
    }

    fn fail(&mut self, e: BlockCorruption) -> BlockResult<()> {
        self.valid = false;
        self.key.clear();
        Err(e)
    }
}

/// Walks a whole block checking that its keys are valid internal keys in strictly increasing order. An
/// expensive check: tables run it on every block they read only with debug assertions or the
/// `invariants` feature.
pub fn check_block_order(block: Arc<Block>) -> BlockResult<()> {
    let mut it = BlockIter::new(block);
    let mut prev: Vec<u8> = Vec::new();
    it.seek_to_first()?;
    while it.valid() {
        if !keys::is_valid_internal_key(it.key()) {
            return Err(BlockCorruption("malformed internal key"));
        }
        if !prev.is_empty() && keys::cmp_internal(&prev, it.key()).is_ge() {
            return Err(BlockCorruption("keys out of order"));
        }
        prev.clear();
        prev.extend_from_slice(it.key());
        it.next()?;
    }
    Ok(())
}

/// The full key stored at restart point `i` of `block` (`i < num_restarts`; its `shared` must be 0).
pub fn restart_key(block: &Block, i: usize) -> BlockResult<&[u8]> {
    let h = decode_header(block.data(), block.restart(i), block.restarts_offset())?;
    if h.shared != 0 {
        return Err(BlockCorruption("restart entry shares a prefix"));
    }
    Ok(&block.data()[h.key_start..h.key_end])
}

/// Decodes the header of the entry at `at`, checking that its key and value end by `limit`.
fn decode_header(data: &[u8], at: usize, limit: usize) -> BlockResult<EntryHeader> {
    let mut p = data.get(at..limit).ok_or(BlockCorruption("entry offset out of range"))?;
    let before = p.len();
    let (shared, unshared, value_len) = match p {
        // Fast path: all three varints fit in one byte each.
        [a, b, c, ..] if (a | b | c) < 0x80 => {
            p = &p[3..];
            (usize::from(*a), usize::from(*b), usize::from(*c))
        }
        _ => {
            let mut field = || {
                coding::get_varint(&mut p)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or(BlockCorruption("truncated entry header"))
            };
            (field()?, field()?, field()?)
        }
    };
    let key_start = at + (before - p.len());
    let key_end = key_start.checked_add(unshared).ok_or(BlockCorruption("entry length overflows"))?;
    let value_end = key_end.checked_add(value_len).ok_or(BlockCorruption("entry length overflows"))?;
    if value_end > limit {
        return Err(BlockCorruption("entry runs past the end of the block"));
    }
    Ok(EntryHeader { shared, key_start, key_end, value_end })
}
