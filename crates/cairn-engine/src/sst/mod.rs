//! Sorted string tables: immutable files of internal-key-ordered entries, modelled on LevelDB/Pebble
//! tables. Format version [`FORMAT_VERSION`] (= 1); `docs/format.md` has the same description.
//!
//! ```text
//! file      = data_block* [filter_block] index_block properties_block footer
//! block     = stored bytes ++ trailer
//! trailer   = type: u8 (0 none, 1 lz4, 2 zstd) ++ masked_crc32c(stored bytes ++ type): u32 LE
//! stored    = raw block (type 0) | varint uncompressed_len ++ codec output (types 1, 2)
//! footer    = filter, index, properties handles: (offset u64 LE, size u64 LE) * 3   -- 48 bytes
//!             format_version u32 LE ++ masked_crc32c(previous 52 bytes) u32 LE ++ magic u64 LE
//!             ("cairnsst")                                                      -- 64 bytes total
//! ```
//!
//! - **Data and index blocks** share one format ([`block`]): prefix-compressed entries
//!   `varint shared, varint unshared, varint value_len, key[shared..], value`, a restart point (shared = 0)
//!   every `restart_interval` entries (16 for data, 1 for the index), then `u32 LE` restart offsets and a
//!   `u32 LE` restart count. Keys are internal keys in strictly increasing [`crate::keys::cmp_internal`]
//!   order.
//! - **Index**: one entry per data block, in file order; key = a separator `>=` the block's last key and
//!   `<` the next block's first key (the last block's is its last key); value = `varint offset, varint
//!   size` of the block.
//! - **Filter** (absent when `bloom_bits_per_key` = 0, or the table is empty; its footer handle is then
//!   0/0): a bloom filter over the table's distinct user keys, see [`bloom`]. Never compressed.
//! - **Properties**: see [`properties`]. Never compressed.
//! - A block is stored compressed only if that saves at least 1/8 of its bytes.
//!
//! Invariants a reader checks before trusting bytes: the footer's magic, CRC and version; the handles tile
//! the file (data, filter, index, properties, footer back to back); every block's checksum before its type
//! byte is read; no block (stored or uncompressed) exceeds [`MAX_BLOCK_BYTES`]; index entries are valid,
//! increasing keys whose handles are contiguous from offset 0 to the first metadata block, one per data
//! block; data blocks are non-empty and their keys are valid internal keys. Anything else is
//! `Error::Corruption` naming the file.

pub mod block;
pub mod block_builder;
pub mod block_iter;
mod block_reader;
mod block_writer;
pub mod bloom;
pub mod bloom_builder;
pub mod compression;
pub mod format;
pub mod options;
pub mod properties;
pub mod table;
pub mod table_builder;
pub mod table_iter;

#[cfg(test)]
mod table_tests;
#[cfg(test)]
pub(crate) mod test_files;

pub use block::Block;
pub use compression::Compression;
pub use format::{BlockHandle, FORMAT_VERSION, Footer, MAX_BLOCK_BYTES};
pub use options::TableOptions;
pub use properties::TableProperties;
pub use table::Table;
pub use table_builder::TableBuilder;
pub use table_iter::TableIter;
