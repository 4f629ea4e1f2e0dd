//! The engines under comparison, behind one small trait.
//!
//! Every adapter gets the same calls with the same bytes: a key is cairn-bench's 16-byte zero-padded
//! decimal key index, a value is cairn-bench's 100-byte half-compressible value. cairn and cobble take the
//! key's bucket as a separate argument (their native addressing: 1024 buckets, one column); RocksDB and
//! fjall store the key as it is. The bucket mapping preserves key order, so every engine's full scan
//! returns the same keys in the same order.

mod cairn;
mod cobble;
mod fjall;
mod rocksdb;

use std::path::Path;

/// Errors are strings: a benchmark reports them and stops, it never branches on them.
pub type Result<T> = std::result::Result<T, String>;

/// Buckets in the bucket space of the engines that have one (cairn, cobble); the same as cairn-bench.
pub const TOTAL_BUCKETS: u32 = 1024;

/// One open database. Shared by reference between writer threads (fillsync16), hence `Sync`.
pub trait Engine: Sync {
    /// Writes `key → value` through the engine's write-ahead log. `sync`: the write is durable (fsynced)
    /// when this returns; otherwise it has reached the OS (or the engine's WAL buffer, see the notes).
    fn put(&self, bucket: u16, key: &[u8], value: &[u8], sync: bool) -> Result<()>;

    /// Reads `key` and returns the length of its value, or `None` if absent. Returning only the length
    /// lets engines that can hand out a borrowed value (RocksDB's pinned slices) skip a copy.
    fn get(&self, bucket: u16, key: &[u8]) -> Result<Option<usize>>;

    /// Scans every row in key order, calling `visit(key, value)` for each, and returns the row count.
    fn scan_all(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64>;

    /// Flushes the memtable(s) and compacts everything the engine lets a caller compact, blocking until
    /// done (see each engine's notes for what "everything" means there).
    fn flush_and_compact(&self) -> Result<()>;

    /// Closes the database, waiting for its background work.
    fn close(self: Box<Self>) -> Result<()>;
}

/// The engines this binary knows, by the names `--engines` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    RocksDb,
    RocksDbTuned,
    Fjall,
    Cobble,
}

/// Every engine, in the default order (cairn first: every ratio is against it).
pub const ALL: &[Kind] = &[Kind::Cairn, Kind::RocksDb, Kind::RocksDbTuned, Kind::Fjall, Kind::Cobble];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cairn => "cairn",
            Kind::RocksDb => "rocksdb",
            Kind::RocksDbTuned => "rocksdb-tuned",
            Kind::Fjall => "fjall",
            Kind::Cobble => "cobble",
        }
    }

    pub fn parse(name: &str) -> Result<Kind> {
        ALL.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
            format!("unknown engine {name:?}; known: {}", known.join(","))
        })
    }

    /// How this engine is configured and where its semantics differ from the others': printed under
    /// the results so that a ratio is never read without its caveats.
    pub fn notes(self) -> &'static [&'static str] {
        match self {
            Kind::Cairn => cairn::NOTES,
            Kind::RocksDb => rocksdb::NOTES_DEFAULTS,
            Kind::RocksDbTuned => rocksdb::NOTES_TUNED,
            Kind::Fjall => fjall::NOTES,
            Kind::Cobble => cobble::NOTES,
        }
    }

    /// Opens a fresh database in `dir` (which must not hold one yet).
    pub fn open(self, dir: &Path) -> Result<Box<dyn Engine>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        match self {
            Kind::Cairn => cairn::open(dir),
            Kind::RocksDb => rocksdb::open(dir, false),
            Kind::RocksDbTuned => rocksdb::open(dir, true),
            Kind::Fjall => fjall::open(dir),
            Kind::Cobble => cobble::open(dir),
        }
    }
}

/// Formats an engine error with what was being done.
pub(crate) fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}
