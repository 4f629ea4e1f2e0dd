//! A two-level iterator over a table: an iterator over the in-memory index block picks data blocks, an
//! iterator over the current data block yields entries. Moving to another block reuses the data iterator's
//! key buffer, so a scan allocates only when it reads a block that is not cached.

use super::block_iter::BlockIter;
use super::table::Table;
use crate::error::Result;
use crate::iter::InternalIterator;
use std::sync::Arc;

/// Iterates every entry of a [`Table`] in internal-key order.
pub struct TableIter {
    table: Arc<Table>,
    index: BlockIter,
    data: BlockIter,
    // The index value (encoded handle) of the block `data` iterates, to skip re-reading it on a seek
    // that lands in the same block. Empty when no block is loaded.
    loaded: Vec<u8>,
    // INVARIANT: true only if the last positioning call succeeded and `data` is on a checked entry.
    valid: bool,
    // Whether blocks read from the file are added to the block cache.
    fill_cache: bool,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>, fill_cache: bool) -> TableIter {
        let index = BlockIter::new(Arc::clone(table.index()));
        let data = BlockIter::new(Arc::new(super::block::Block::empty()));
        TableIter { table, index, data, loaded: Vec::new(), valid: false, fill_cache }
    }

    /// The table being iterated.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// Points `data` at the block the index iterator is on (which must be valid), unpositioned.
    fn load_block(&mut self) -> Result<()> {
        if self.loaded.as_slice() == self.index.value() {
            return Ok(());
        }
        self.loaded.clear();
        let block = self.table.read_data_block_of(self.index.value(), self.fill_cache)?;
        self.data.reset(block);
        self.loaded.extend_from_slice(self.index.value());
        Ok(())
    }

    /// Moves to the first entry of the next data block, or becomes invalid after the last block.
    fn next_block(&mut self) -> Result<()> {
        self.index.next().map_err(|e| e.into_error(self.table.path()))?;
        if !self.index.valid() {
            return Ok(());
        }
        self.load_block()?;
        self.data.seek_to_first().map_err(|e| e.into_error(self.table.path()))?;
        if !self.data.valid() {
            return Err(self.table.corruption("empty data block"));
        }
        Ok(())
    }

    /// Runs a positioning step and records whether the iterator ended on a checked entry.
    fn settle(&mut self, step: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        self.valid = false;
        let result = step(self).and_then(|()| {
            if self.index.valid() && self.data.valid() { self.table.check_entry(&self.data) } else { Ok(()) }
        });
        if result.is_err() {
            // The data iterator may hold a half-read block; force a reload on the next seek.
            self.loaded.clear();
        }
        self.valid = result.is_ok() && self.index.valid() && self.data.valid();
        result
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.valid
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.settle(|it| {
            it.index.seek_to_first().map_err(|e| e.into_error(it.table.path()))?;
            if !it.index.valid() {
                return Ok(());
            }
            it.load_block()?;
            it.data.seek_to_first().map_err(|e| e.into_error(it.table.path()))?;
            if !it.data.valid() {
                return Err(it.table.corruption("empty data block"));
            }
            Ok(())
        })
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.settle(|it| {
            it.table.seek_index(&mut it.index, target)?;
            if !it.index.valid() {
                return Ok(());
            }
            it.load_block()?;
            it.data.seek(target).map_err(|e| e.into_error(it.table.path()))?;
            if it.data.valid() {
                return Ok(());
            }
            // Every key of that block is < target (its separator may exceed its last key).
            it.next_block()
        })
    }

    fn next(&mut self) -> Result<()> {
        debug_assert!(self.valid);
        if !self.valid {
            return Ok(());
        }
        self.settle(|it| {
            it.data.next().map_err(|e| e.into_error(it.table.path()))?;
            if it.data.valid() {
                return Ok(());
            }
            it.next_block()
        })
    }

    fn key(&self) -> &[u8] {
        self.data.key()
    }

    fn value(&self) -> &[u8] {
        self.data.value()
    }
}
