//! Writes a table: entries go into data blocks cut at `block_bytes`; each cut adds an index entry once the
//! next key is known (so its separator can be shortened); `finish` appends the filter, index, properties and
//! footer and syncs. The file layout is documented in [`super`].

use super::block::RESTART_SLOT_BYTES;
use super::block_builder::BlockBuilder;
use super::block_writer::BlockWriter;
use super::bloom_builder::BloomBuilder;
use super::compression::Compression;
use super::format::{BLOCK_TRAILER_BYTES, BlockHandle, FORMAT_VERSION, Footer, MAX_BLOCK_BYTES};
use super::options::TableOptions;
use super::properties::TableProperties;
use crate::error::{Error, Result};
use crate::fs::WritableFile;
use crate::keys::{self, Kind};
use std::path::PathBuf;

/// Builds one SST file. Keys must be added in strictly increasing [`keys::cmp_internal`] order.
/// After an error the builder must be dropped and its file discarded.
pub struct TableBuilder {
    writer: BlockWriter,
    options: TableOptions,
    data_block: BlockBuilder,
    index_block: BlockBuilder,
    bloom: Option<BloomBuilder>,
    // INVARIANT: the last key added (empty before the first add).
    last_key: Vec<u8>,
    // The data block written last, whose index entry waits for the next key to pick a separator.
    pending_index: Option<BlockHandle>,
    separator: Vec<u8>,
    handle_buf: Vec<u8>,
    props: TableProperties,
}

impl TableBuilder {
    /// A builder writing to `file` (empty) at `path`. Options are clamped to sane values; call
    /// [`TableOptions::validate`] first to reject nonsense with a clear message.
    pub fn new(file: Box<dyn WritableFile>, path: PathBuf, options: TableOptions) -> TableBuilder {
        let options = TableOptions {
            block_bytes: options.block_bytes.clamp(1, MAX_BLOCK_BYTES / 2),
            restart_interval: options.restart_interval.max(1),
            ..options
        };
        let bloom = (options.bloom_bits_per_key > 0).then(|| BloomBuilder::new(options.bloom_bits_per_key));
        TableBuilder {
            writer: BlockWriter::new(file, path),
            data_block: BlockBuilder::new(options.restart_interval),
            // Restart at every index entry: seeks binary-search the whole index without scanning.
            index_block: BlockBuilder::new(1),
            bloom,
            options,
            last_key: Vec::new(),
            pending_index: None,
            separator: Vec::new(),
            handle_buf: Vec::new(),
            props: TableProperties { format_version: FORMAT_VERSION, ..TableProperties::default() },
        }
    }

    /// Adds an entry. `ikey` must be a valid internal key greater than every key added before.
    pub fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        self.check_entry(ikey, value)?;
        if !self.data_block.is_empty()
            && self.data_block.size_estimate() + BlockBuilder::entry_size_bound(ikey, value) > MAX_BLOCK_BYTES
        {
            self.flush_data_block()?;
        }
        if let Some(handle) = self.pending_index.take() {
            shortest_separator(&mut self.separator, &self.last_key, ikey);
            self.add_index_entry(handle);
        }
        let user_key = keys::user_key_of(ikey);
        if let Some(bloom) = &mut self.bloom {
            bloom.add_key(user_key);
        }
        self.data_block.add(ikey, value);
        self.record(ikey, value);
        if self.data_block.size_estimate() >= self.options.block_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    /// Rejects malformed keys, out-of-order keys and entries too large for a block. Comparing with the last
    /// key costs one memcmp per entry; a bug upstream then fails the write instead of writing a table whose
    /// seeks silently miss entries.
    fn check_entry(&self, ikey: &[u8], value: &[u8]) -> Result<()> {
        if !keys::is_valid_internal_key(ikey) {
            return Err(Error::InvalidArgument(format!(
                "malformed internal key of {} bytes for {}",
                ikey.len(),
                self.writer.path().display()
            )));
        }
        if self.props.num_entries > 0 && keys::cmp_internal(ikey, &self.last_key).is_le() {
            return Err(Error::InvalidArgument(format!(
                "keys added out of order to {}",
                self.writer.path().display()
            )));
        }
        if BlockBuilder::entry_size_bound(ikey, value) + 2 * RESTART_SLOT_BYTES > MAX_BLOCK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "entry of {} bytes exceeds the {MAX_BLOCK_BYTES}-byte block limit",
                ikey.len() + value.len()
            )));
        }
        Ok(())
    }

    /// Updates the properties and the last key for an added entry.
    fn record(&mut self, ikey: &[u8], value: &[u8]) {
        let p = &mut self.props;
        let seq = keys::seq_of(ikey);
        let bucket = keys::bucket_of(keys::user_key_of(ikey));
        if p.num_entries == 0 {
            p.smallest_key = ikey.to_vec();
            p.min_seq = seq;
            p.max_seq = seq;
            p.min_bucket = bucket;
        }
        p.num_entries += 1;
        if keys::kind_of(ikey) == Some(Kind::Delete) {
            p.num_deletions += 1;
        }
        p.raw_key_bytes += ikey.len() as u64;
        p.raw_value_bytes += value.len() as u64;
        p.min_seq = p.min_seq.min(seq);
        p.max_seq = p.max_seq.max(seq);
        p.max_bucket = bucket;
        self.last_key.clear();
        self.last_key.extend_from_slice(ikey);
    }

    fn add_index_entry(&mut self, handle: BlockHandle) {
        self.handle_buf.clear();
        handle.encode_varint_to(&mut self.handle_buf);
        self.index_block.add(&self.separator, &self.handle_buf);
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data_block.is_empty() {
            return Ok(());
        }
        debug_assert!(self.pending_index.is_none());
        let handle = self.writer.write_block(self.data_block.finish(), self.options.compression)?;
        self.data_block.reset();
        self.props.num_data_blocks += 1;
        self.props.data_bytes += handle.size + BLOCK_TRAILER_BYTES as u64;
        self.pending_index = Some(handle);
        Ok(())
    }

    /// Entries added so far.
    pub fn num_entries(&self) -> u64 {
        self.props.num_entries
    }

    /// Roughly the size the file would have if finished now (before compressing the open block).
    pub fn estimated_file_bytes(&self) -> u64 {
        let filter = self.bloom.as_ref().map_or(0, BloomBuilder::estimated_bytes);
        self.writer.offset()
            + self.data_block.size_estimate() as u64
            + self.index_block.size_estimate() as u64
            + filter
            + 256
    }

    /// Writes the last data block, filter, index, properties and footer, syncs the file, and returns the
    /// properties and the file size.
    pub fn finish(mut self) -> Result<(TableProperties, u64)> {
        self.flush_data_block()?;
        if let Some(handle) = self.pending_index.take() {
            // The last block's separator is its last key: nothing follows to shorten against.
            self.separator.clear();
            self.separator.extend_from_slice(&self.last_key);
            self.add_index_entry(handle);
        }
        let filter = match &mut self.bloom {
            Some(bloom) if self.props.num_entries > 0 => {
                let bits = bloom.finish();
                self.writer.write_block(&bits, Compression::None)?
            }
            _ => BlockHandle::NONE,
        };
        self.props.filter_bytes = if filter.is_none() { 0 } else { filter.size + BLOCK_TRAILER_BYTES as u64 };
        let index = self.writer.write_block(self.index_block.finish(), self.options.compression)?;
        self.props.index_bytes = index.size + BLOCK_TRAILER_BYTES as u64;
        self.props.largest_key = std::mem::take(&mut self.last_key);
        let properties = self.writer.write_block(&self.props.encode(), Compression::None)?;
        let footer = Footer { filter, index, properties, format_version: FORMAT_VERSION };
        self.writer.append_raw(&footer.encode())?;
        self.writer.sync()?;
        Ok((self.props, self.writer.offset()))
    }
}

/// Sets `out` to a key `k` with `last <= k < next`, shorter than `last` when their user keys differ early:
/// the common prefix plus one incremented byte, with the largest trailer (so it sorts first among its user
/// key). The bucket prefix is kept whole so the separator is still a well-formed internal key.
fn shortest_separator(out: &mut Vec<u8>, last: &[u8], next: &[u8]) {
    out.clear();
    let (a, b) = (keys::user_key_of(last), keys::user_key_of(next));
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if n + 1 >= keys::BUCKET_BYTES
        && n < a.len()
        && n < b.len()
        && a[n] < u8::MAX
        && a[n] + 1 < b[n]
        && n + 1 < a.len()
    {
        out.extend_from_slice(&a[..n]);
        out.push(a[n] + 1);
        out.extend_from_slice(&keys::pack_trailer(keys::MAX_SEQUENCE, Kind::MAX).to_le_bytes());
        debug_assert!(keys::cmp_internal(last, out).is_lt() && keys::cmp_internal(out, next).is_lt());
        return;
    }
    out.extend_from_slice(last);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{internal_key, user_key};

    #[test]
    fn separators_sit_between_their_neighbours() {
        let cases = [
            (user_key(1, b"abcdef"), user_key(1, b"abzzzz")),
            (user_key(1, b"abc"), user_key(1, b"abd")),
            (user_key(1, b"zz"), user_key(2, b"aa")),
            (user_key(1, b"a"), user_key(1, b"a\x00")),
            (user_key(1, b"\xff\xff"), user_key(1, b"\xff\xff\x01")),
            (user_key(0, b""), user_key(9, b"")),
        ];
        let mut out = Vec::new();
        for (a, b) in cases {
            let last = internal_key(&a, 7, Kind::Set);
            let next = internal_key(&b, 3, Kind::Set);
            shortest_separator(&mut out, &last, &next);
            assert!(keys::cmp_internal(&last, &out).is_le(), "{a:?} {b:?}");
            assert!(keys::cmp_internal(&out, &next).is_lt(), "{a:?} {b:?}");
            assert!(keys::is_valid_internal_key(&out));
            assert!(out.len() <= last.len());
        }
        // Same user key: the separator is the last key itself.
        let uk = user_key(5, b"same");
        shortest_separator(&mut out, &internal_key(&uk, 9, Kind::Set), &internal_key(&uk, 8, Kind::Set));
        assert_eq!(out, internal_key(&uk, 9, Kind::Set));
    }
}
