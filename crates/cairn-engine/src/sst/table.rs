//! Reads a table. `open` reads the footer and the metadata blocks (index, filter, properties), checks them
//! and keeps them in memory; data blocks are read on demand through the optional [`BlockCache`]. Every
//! handle is checked against the file layout before use, every block's checksum before its bytes are
//! interpreted.

use super::block::Block;
use super::block_iter::{self, BlockIter};
use super::block_reader::read_block;
use super::bloom::BloomFilter;
use super::format::{BLOCK_TRAILER_BYTES, BlockHandle, FOOTER_BYTES, Footer};
use super::properties::TableProperties;
use super::table_iter::TableIter;
use crate::block_cache::BlockCache;
use crate::error::{Error, Result};
use crate::fs::RandomAccessFile;
use crate::keys;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open, immutable SST file. Shared behind an `Arc` by readers on any thread.
pub struct Table {
    file: Arc<dyn RandomAccessFile>,
    path: PathBuf,
    file_number: u64,
    cache: Option<Arc<BlockCache>>,
    // INVARIANT: entries are valid internal keys in strictly increasing order whose values are handles of
    // non-overlapping, contiguous data blocks covering exactly 0..data_end; entry i is restart point i.
    index: Arc<Block>,
    summary: IndexSummary,
    filter: Option<BloomFilter>,
    properties: TableProperties,
    // Offset where the data blocks end and the metadata blocks begin.
    data_end: u64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("file_number", &self.file_number)
            .field("num_entries", &self.properties.num_entries)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Opens the table in `file`, verifying its footer, index, filter and properties. `file_number` keys
    /// the table's blocks in `cache`; it must be unique among the tables sharing the cache.
    pub fn open(
        file: Arc<dyn RandomAccessFile>,
        path: PathBuf,
        file_number: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let len = file.len();
        let Some(footer_offset) = len.checked_sub(FOOTER_BYTES as u64) else {
            return Err(Error::corruption(&path, format!("file of {len} bytes is shorter than the footer")));
        };
        let mut footer_bytes = [0u8; FOOTER_BYTES];
        file.read_exact_at(footer_offset, &mut footer_bytes)?;
        let footer = Footer::decode(&footer_bytes).map_err(|e| Error::corruption(&path, e.to_string()))?;
        let data_end = check_layout(&footer, footer_offset).map_err(|d| Error::corruption(&path, d))?;

        let index_bytes = read_block(&*file, &path, footer.index, footer_offset)?;
        let index = Block::new(index_bytes).map_err(|e| e.into_error(&path))?;
        let filter = if footer.filter.is_none() {
            None
        } else {
            let bits = read_block(&*file, &path, footer.filter, footer_offset)?;
            Some(BloomFilter::new(bits).map_err(|d| Error::corruption(&path, format!("bad filter: {d}")))?)
        };
        let props_bytes = read_block(&*file, &path, footer.properties, footer_offset)?;
        let properties = TableProperties::decode(&props_bytes)
            .map_err(|d| Error::corruption(&path, format!("bad properties: {d}")))?;
        if properties.format_version != footer.format_version {
            return Err(Error::corruption(&path, "properties and footer disagree on the format version"));
        }
        let index = Arc::new(index);
        let summary = check_index(&index, data_end, &properties).map_err(|d| Error::corruption(&path, d))?;
        Ok(Table { file, path, file_number, cache, index, summary, filter, properties, data_end })
    }

    /// The table's properties.
    pub fn properties(&self) -> &TableProperties {
        &self.properties
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number keying this table's blocks in the block cache.
    pub fn file_number(&self) -> u64 {
        self.file_number
    }

    /// False only if no entry of `user_key` is in the table (true when the table has no filter).
    pub fn may_contain(&self, user_key: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.may_contain(user_key))
    }

    /// The first entry whose internal key is `>= target`, if the bloom filter admits `target`'s user key.
    /// A point lookup passes [`keys::lookup_key`] and checks that the returned key has its user key.
    pub fn get(&self, target: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.may_contain(keys::user_key_of(target)) {
            return Ok(None);
        }
        let block = self.find_block(target)?;
        let Some(handle) = self.summary.handle(block) else {
            return Ok(None);
        };
        let mut data = BlockIter::new(self.read_data_block(handle, true)?);
        data.seek(target).map_err(|e| e.into_error(&self.path))?;
        if !data.valid() {
            // Every key of that block is < target (its separator may exceed its last key): the answer is
            // the first entry of the next block.
            let Some(handle) = self.summary.handle(block + 1) else {
                return Ok(None);
            };
            data.reset(self.read_data_block(handle, true)?);
            data.seek_to_first().map_err(|e| e.into_error(&self.path))?;
        }
        self.check_entry(&data)?;
        Ok(Some((data.key().to_vec(), data.value().to_vec())))
    }

    /// Visits the entries of `lookup`'s user key from `lookup` on (newest first, as of `lookup`'s sequence
    /// number, see [`keys::lookup_key`]) while `visit` returns true. Walks on across data blocks with one
    /// cursor; allocates nothing when the blocks are cached.
    pub fn for_each_version(
        &self,
        lookup: &[u8],
        mut visit: impl FnMut(keys::Kind, &[u8]) -> bool,
    ) -> Result<()> {
        let user_key = keys::user_key_of(lookup);
        if !self.may_contain(user_key) {
            return Ok(());
        }
        let mut block = self.find_block(lookup)?;
        let mut first = true;
        while let Some(handle) = self.summary.handle(block) {
            let mut data = BlockIter::new(self.read_data_block(handle, true)?);
            let positioned = if first { data.seek(lookup) } else { data.seek_to_first() };
            positioned.map_err(|e| e.into_error(&self.path))?;
            first = false;
            while data.valid() {
                self.check_entry(&data)?;
                if keys::user_key_of(data.key()) != user_key {
                    return Ok(());
                }
                let kind = keys::kind_of(data.key()).ok_or_else(|| self.corruption("unknown entry kind"))?;
                if !visit(kind, data.value()) {
                    return Ok(());
                }
                data.next().map_err(|e| e.into_error(&self.path))?;
            }
            block += 1;
        }
        Ok(())
    }

    /// The number of the first index entry (= data block) whose key is `>= target`; the number of data
    /// blocks if there is none. The summary narrows the search to the entries whose fence equals the
    /// target's; only those keys are decoded.
    fn find_block(&self, target: &[u8]) -> Result<usize> {
        let (mut lo, mut hi) = self.summary.narrow(keys::user_key_of(target));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let key = block_iter::restart_key(&self.index, mid).map_err(|e| e.into_error(&self.path))?;
            if keys::cmp_internal(key, target) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Positions `index` (an iterator over this table's index block) on the first entry `>= target`.
    pub(crate) fn seek_index(&self, index: &mut BlockIter, target: &[u8]) -> Result<()> {
        let block = self.find_block(target)?;
        if block == self.summary.num_blocks() {
            index.invalidate();
            return Ok(());
        }
        index.seek_to_restart(block).map_err(|e| e.into_error(&self.path))
    }

    /// An iterator over all entries, reading data blocks through the cache.
    pub fn iter(self: &Arc<Self>) -> TableIter {
        TableIter::new(Arc::clone(self), true)
    }

    /// An iterator that uses cached blocks but does not add the blocks it reads to the cache: for
    /// compaction, whose one pass over its inputs would otherwise evict what readers use.
    pub fn iter_no_fill(self: &Arc<Self>) -> TableIter {
        TableIter::new(Arc::clone(self), false)
    }

    /// Roughly where in the file the entries `>= ikey` start: the offset of the data block that would hold
    /// `ikey`, or the end of the data blocks if `ikey` is after every entry.
    pub fn approximate_offset_of(&self, ikey: &[u8]) -> u64 {
        match self.find_block(ikey) {
            Ok(block) => self.summary.block_starts.get(block).copied().unwrap_or(self.data_end),
            Err(_) => self.data_end,
        }
    }

    /// The in-memory index block.
    pub(crate) fn index(&self) -> &Arc<Block> {
        &self.index
    }

    /// Reads the data block an index entry's value points to: from the cache if there, else from the file,
    /// adding it to the cache if `fill_cache`.
    pub(crate) fn read_data_block_of(&self, index_value: &[u8], fill_cache: bool) -> Result<Arc<Block>> {
        let handle = BlockHandle::decode_varint(index_value)
            .ok_or_else(|| Error::corruption(&self.path, "bad block handle in index"))?;
        self.read_data_block(handle, fill_cache)
    }

    /// Reads the data block at `handle`: from the cache if there, else from the file, adding it to the
    /// cache if `fill_cache`.
    fn read_data_block(&self, handle: BlockHandle, fill_cache: bool) -> Result<Arc<Block>> {
        if let Some(block) = self.cache.as_ref().and_then(|c| c.get(self.file_number, handle.offset)) {
            return Ok(block);
        }
        let bytes = read_block(&*self.file, &self.path, handle, self.data_end)?;
        let block = Block::new(bytes).map_err(|e| e.into_error(&self.path))?;
        if block.is_empty() {
            return Err(Error::corruption(
                &self.path,
                format!("empty data block at offset {}", handle.offset),
            ));
        }
        let block = Arc::new(block);
        #[cfg(any(debug_assertions, feature = "invariants"))]
        super::block_iter::check_block_order(Arc::clone(&block)).map_err(|e| e.into_error(&self.path))?;
        if let Some(cache) = self.cache.as_ref().filter(|_| fill_cache) {
            cache.insert(self.file_number, handle.offset, Arc::clone(&block));
        }
        Ok(block)
    }

    /// Checks that a positioned data iterator sits on a well-formed entry.
    pub(crate) fn check_entry(&self, data: &BlockIter) -> Result<()> {
        if !data.valid() {
            return Err(Error::corruption(&self.path, "data block ended where an entry was expected"));
        }
        if !keys::is_valid_internal_key(data.key()) {
            return Err(Error::corruption(&self.path, "malformed internal key in data block"));
        }
        Ok(())
    }

    /// A corruption report naming this table's file.
    pub(crate) fn corruption(&self, detail: impl Into<String>) -> Error {
        Error::corruption(&self.path, detail)
    }
}

/// Checks that the footer describes the layout the builder writes — data blocks, then the filter (if any),
/// index and properties back to back, then the footer — and returns where the data blocks end.
fn check_layout(footer: &Footer, footer_offset: u64) -> Result<u64, String> {
    let bad = || format!("footer handles do not tile the file ({footer:?}, footer at {footer_offset})");
    if footer.filter.is_none() && footer.filter.offset != 0 {
        return Err(bad());
    }
    let filter = (!footer.filter.is_none()).then_some(footer.filter);
    let mut at = footer_offset;
    for handle in [Some(footer.properties), Some(footer.index), filter].into_iter().flatten() {
        if handle.size == 0 || handle.end_with_trailer() != Some(at) {
            return Err(bad());
        }
        at = handle.offset;
    }
    Ok(at)
}

/// The first [`FENCE_WORDS`] words of a key, big-endian and zero-padded: fences order as their keys do
/// whenever they differ (see [`keys::head_word`]).
type Fence = [u64; FENCE_WORDS];

/// Words per fence: 24 bytes tell apart the keys of most tables once their shared prefix is dropped
/// (say a 2-byte bucket and a 16-byte key), for 24 bytes of memory per data block.
const FENCE_WORDS: usize = 3;

fn fence_of(key: &[u8]) -> Fence {
    std::array::from_fn(|i| keys::head_word(key, i))
}

/// Checks the index against the data region and the properties: keys valid and strictly increasing, a
/// restart point at every entry, handles contiguous from offset 0 to `data_end`, one entry per data block,
/// the last key covering the largest key. Returns the index's summary.
fn check_index(index: &Arc<Block>, data_end: u64, props: &TableProperties) -> Result<IndexSummary, String> {
    let bad_block = |e: super::block::BlockCorruption| format!("bad index block: {}", e.0);
    let mut it = BlockIter::new(Arc::clone(index));
    it.seek_to_first().map_err(bad_block)?;
    // Index keys are sorted, so all share the prefix their first and last user keys share.
    let prefix: Box<[u8]> = if it.valid() {
        let last = block_iter::restart_key(index, index.num_restarts() - 1).map_err(bad_block)?;
        let (first, last) = (keys::user_key_of(it.key()), keys::user_key_of(last));
        let shared = first.iter().zip(last).take_while(|(a, b)| a == b).count();
        first[..shared].into()
    } else {
        Box::default()
    };
    let mut fences = Vec::new();
    let mut block_starts = Vec::new();
    let mut prev: Vec<u8> = Vec::new();
    let (mut count, mut next_offset) = (0u64, 0u64);
    while it.valid() {
        let key = it.key();
        if !keys::is_valid_internal_key(key) || (count > 0 && keys::cmp_internal(&prev, key).is_ge()) {
            return Err(format!("index entry {count} has a malformed or out-of-order key"));
        }
        let handle = BlockHandle::decode_varint(it.value())
            .ok_or_else(|| format!("index entry {count} has a bad block handle"))?;
        if handle.offset != next_offset || handle.size == 0 {
            return Err(format!("index entry {count} points to {handle:?}, expected offset {next_offset}"));
        }
        let restart = usize::try_from(count).ok().filter(|&i| i < index.num_restarts());
        match restart.map(|i| block_iter::restart_key(index, i)) {
            Some(Ok(at_restart)) if at_restart == key => {}
            _ => return Err(format!("index entry {count} is not a restart point")),
        }
        block_starts.push(handle.offset);
        next_offset = handle.end_with_trailer().ok_or("block handle overflows")?;
        fences.push(fence_of(keys::user_key_of(key).get(prefix.len()..).unwrap_or_default()));
        prev.clear();
        prev.extend_from_slice(key);
        count += 1;
        it.next().map_err(bad_block)?;
    }
    if next_offset != data_end || count != props.num_data_blocks {
        return Err(format!(
            "index covers {count} blocks ending at {next_offset}; expected {} ending at {data_end}",
            props.num_data_blocks
        ));
    }
    if count > 0 && keys::cmp_internal(&prev, &props.largest_key).is_lt() {
        return Err("last index key is before the largest key".into());
    }
    if fences.len() != index.num_restarts() && !index.is_empty() {
        return Err(format!("index has {} restart points for {count} entries", index.num_restarts()));
    }
    block_starts.push(data_end);
    Ok(IndexSummary { prefix, fences: fences.into(), block_starts: block_starts.into() })
}

/// How many of `tail` (sorted, each `>= fence`) equal `fence`. Runs of equal fences are short (keys that
/// agree on 24 bytes past the shared prefix), so this gallops from the front instead of binary-searching
/// the whole tail: the first probes stay on the cache lines the search for `lo` just read, and a long run
/// still costs only a logarithmic number of probes.
fn equal_run(tail: &[Fence], fence: Fence) -> usize {
    let mut bound = 1;
    while bound <= tail.len() && tail[bound - 1] == fence {
        bound *= 2;
    }
    // tail[..bound / 2] are equal; the first unequal entry lies before `bound` (or there is none).
    let start = bound / 2;
    start + tail[start..bound.min(tail.len())].partition_point(|&f| f == fence)
}

/// What a point lookup needs of the index, decoded once when the table opens, so that finding a block
/// mostly searches one compact array and decodes no index entry.
struct IndexSummary {
    // The user-key prefix all index keys share.
    prefix: Box<[u8]>,
    // INVARIANT: fences[i] is the fence of index entry i's user key past `prefix`, so fences are
    // non-decreasing; fences.len() is the number of data blocks.
    fences: Box<[Fence]>,
    // INVARIANT: block_starts.len() == fences.len() + 1; data block i and its trailer span
    // block_starts[i]..block_starts[i + 1], each at least one byte more than a trailer; the last is
    // `data_end`.
    block_starts: Box<[u64]>,
}

impl IndexSummary {
    fn num_blocks(&self) -> usize {
        self.fences.len()
    }

    /// `(lo, hi)` such that index entries before `lo` have keys below every internal key of `user_key`,
    /// and entries from `hi` on have keys above them: only entries `lo..hi` need their keys compared.
    fn narrow(&self, user_key: &[u8]) -> (usize, usize) {
        let n = self.num_blocks();
        let p = self.prefix.len();
        let head = &user_key[..user_key.len().min(p)];
        match head.cmp(&self.prefix[..head.len()]) {
            Ordering::Less => return (0, 0),
            Ordering::Greater => return (n, n),
            // A proper prefix of the shared prefix sorts before every index key.
            Ordering::Equal if head.len() < p => return (0, 0),
            Ordering::Equal => {}
        }
        let fence = fence_of(&user_key[p..]);
        let lo = self.fences.partition_point(|&f| f < fence);
        (lo, lo + equal_run(&self.fences[lo..], fence))
    }

    /// The handle of data block `i`, or `None` past the last block.
    fn handle(&self, i: usize) -> Option<BlockHandle> {
        let (start, end) = (*self.block_starts.get(i)?, *self.block_starts.get(i + 1)?);
        Some(BlockHandle { offset: start, size: end - start - BLOCK_TRAILER_BYTES as u64 })
    }
}

#[cfg(test)]
mod equal_run_tests {
    use super::*;

    #[test]
    fn counts_the_leading_run_of_every_length() {
        for len in 0..70usize {
            for run in 0..=len {
                // `run` copies of the fence, then larger fences.
                let fence = [7, 7, 7];
                let tail: Vec<Fence> =
                    (0..len).map(|i| if i < run { fence } else { [7, 8, i as u64] }).collect();
                assert_eq!(equal_run(&tail, fence), run, "len {len}");
            }
        }
    }
}
