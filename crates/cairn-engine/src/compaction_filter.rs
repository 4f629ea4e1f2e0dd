//! The compaction-filter hook: lets the layer above drop rows while compaction rewrites them, e.g. MVCC
//! versions older than a GC horizon. Compaction visits rows in key order, so one filter instance (created
//! per compaction) can keep state across consecutive keys.
//!
//! A filter is only consulted for row versions that no live snapshot can see any more; a removed row
//! becomes a tombstone (or disappears at the bottom level).

use crate::row::Row;

/// What to do with one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterDecision {
    /// Keep the row as it is.
    Keep,
    /// Drop the row.
    Remove,
}

/// Decides per row during one compaction.
pub trait CompactionFilter: Send {
    /// Called once per row (in key order within the compaction's output) with the row's complete value.
    fn filter(&mut self, bucket: u16, key: &[u8], row: &Row) -> FilterDecision;
}

/// Context handed to the factory.
#[derive(Clone, Copy, Debug)]
pub struct CompactionContext {
    /// The level the compaction writes to.
    pub output_level: usize,
    /// True if the output is the bottom of the tree for its key range.
    pub bottommost: bool,
    /// The shard's filter threshold ([`crate::Db::raise_filter_threshold`]; 0 until its owner sets
    /// one), e.g. the GC threshold a replicated shard's log decided.
    pub threshold: u64,
}

/// Creates one filter per compaction.
pub trait CompactionFilterFactory: Send + Sync {
    /// A fresh filter for a compaction.
    fn create(&self, ctx: CompactionContext) -> Box<dyn CompactionFilter>;
}
