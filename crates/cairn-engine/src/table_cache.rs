//! The open-file cache: SST readers by file number, bounded by `Config::table_cache_files`. Readers share
//! the block cache.

use crate::block_cache::BlockCache;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::sst::Table;
use crate::version_set::table_path;
use std::path::PathBuf;
use std::sync::Arc;

/// Open SST readers.
pub struct TableCache {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    tables: quick_cache::sync::Cache<u64, Arc<Table>>,
    block_cache: Arc<BlockCache>,
}

impl TableCache {
    /// A cache of at most `capacity` open files in `dir`.
    pub fn new(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        capacity: usize,
        block_cache: Arc<BlockCache>,
    ) -> TableCache {
        TableCache { fs, dir, tables: quick_cache::sync::Cache::new(capacity), block_cache }
    }

    /// The reader for file `number`, opening it if needed. `size` is what the manifest recorded; a
    /// different size on disk is corruption.
    pub fn get(&self, number: u64, size: u64) -> Result<Arc<Table>> {
        self.tables.get_or_insert_with(&number, || {
            let path = table_path(&self.dir, number);
            let file = self.fs.open(&path)?;
            if file.len() != size {
                return Err(Error::corruption(
                    &path,
                    format!("file is {} bytes, manifest says {size}", file.len()),
                ));
            }
            Ok(Arc::new(Table::open(file, path, number, Some(Arc::clone(&self.block_cache)))?))
        })
    }

    /// Drops the reader of a deleted file.
    pub fn evict(&self, number: u64) {
        self.tables.remove(&number);
    }

    /// The shared block cache.
    pub fn block_cache(&self) -> &Arc<BlockCache> {
        &self.block_cache
    }
}
