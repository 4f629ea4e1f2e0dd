//! The internal iterator contract shared by memtables, SST files, merging and level iterators.

use crate::error::Result;

/// A cursor over internal entries in [`crate::keys::cmp_internal`] order.
///
/// Positioning calls return an error for I/O failures or corruption; after an error the iterator is
/// invalid. `key` and `value` may only be called while `valid()` is true.
pub trait InternalIterator: Send {
    /// True while positioned on an entry.
    fn valid(&self) -> bool;
    /// Positions on the first entry.
    fn seek_to_first(&mut self) -> Result<()>;
    /// Positions on the first entry whose internal key is `>= target`.
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    /// Advances to the next entry.
    fn next(&mut self) -> Result<()>;
    /// The current internal key.
    fn key(&self) -> &[u8];
    /// The current value.
    fn value(&self) -> &[u8];
}
