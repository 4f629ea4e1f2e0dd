//! Opening a shard: lock the directory, rebuild the version set from the manifest, replay WAL files
//! newer than the manifest's log number into L0, start a fresh WAL, and sweep files nothing references
//! (outputs of an interrupted flush or compaction, old manifests, flushed WALs).

use crate::block_cache::BlockCache;
use crate::bucket::BucketSet;
use crate::commit::{CommitQueue, insert_batch};
use crate::config::Config;
use crate::db::{DbInner, State};
use crate::error::{Error, Result};
use crate::log::{LogWriter, read_log};
use crate::memtable::Memtable;
use crate::metrics::Metrics;
use crate::table_cache::TableCache;
use crate::version::ObsoleteFiles;
use crate::version_edit::VersionEdit;
use crate::version_set::{CURRENT, DurableState, VersionSet, load_manifest, log_path};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";

/// The kinds of file a Db directory holds, parsed from a name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Table(u64),
    Log(u64),
    Manifest(u64),
    Other,
}

pub(crate) fn parse_file_name(name: &str) -> FileKind {
    let num = |s: &str| s.parse::<u64>().ok();
    if let Some(n) = name.strip_suffix(".sst").and_then(num) {
        FileKind::Table(n)
    } else if let Some(n) = name.strip_suffix(".log").and_then(num) {
        FileKind::Log(n)
    } else if let Some(n) = name.strip_prefix("MANIFEST-").and_then(num) {
        FileKind::Manifest(n)
    } else {
        FileKind::Other
    }
}

/// Opens the shard in `config.dir`: owning `owned` (a new shard is made; an existing one must own
/// exactly these), or `None`: an existing shard, owning what its manifest says.
pub(crate) fn open_inner(config: Config, owned: Option<BucketSet>) -> Result<DbInner> {
    let fs = Arc::clone(&config.fs);
    let dir = config.dir.clone();
    if owned.is_none() && !fs.exists(&dir.join(CURRENT))? {
        return Err(Error::InvalidArgument(format!("no shard in {}", dir.display())));
    }
    fs.create_dir_all(&dir)?;
    let lock = fs.lock(&dir.join(LOCK_FILE))?;
    let obsolete = Arc::new(ObsoleteFiles::default());
    let mut versions = if fs.exists(&dir.join(CURRENT))? {
        let vs = VersionSet::recover(Arc::clone(&fs), &dir, Arc::clone(&obsolete))?;
        if vs.state().total_buckets != config.total_buckets {
            return Err(Error::InvalidArgument(format!(
                "shard was created with total_buckets {}, opened with {}",
                vs.state().total_buckets,
                config.total_buckets
            )));
        }
        if let Some(owned) = &owned
            && vs.state().owned != *owned
        {
            return Err(Error::InvalidArgument(format!(
                "shard owns buckets {:?}, opened with {:?}",
                vs.state().owned.ranges(),
                owned.ranges()
            )));
        }
        vs
    } else {
        let Some(owned) = owned else {
            return Err(Error::InvalidArgument(format!("no shard in {}", dir.display())));
        };
        let state = DurableState::new(crate::snapshot::new_db_id(), config.total_buckets, owned);
        VersionSet::create(Arc::clone(&fs), &dir, state, Arc::clone(&obsolete))?
    };

    let names = fs.list(&dir)?;
    for name in &names {
        if let FileKind::Table(n) | FileKind::Log(n) | FileKind::Manifest(n) = parse_file_name(name) {
            versions.mark_file_number_used(n);
        }
    }
    // Replay WAL files the manifest does not cover, oldest first, flushing into L0 as memtables fill.
    let floor = versions.state().log_number;
    let mut logs: Vec<u64> = names
        .iter()
        .filter_map(|n| match parse_file_name(n) {
            FileKind::Log(n) if n >= floor => Some(n),
            _ => None,
        })
        .collect();
    logs.sort_unstable();
    let mut last_seq = versions.state().last_sequence;
    let mut edit = VersionEdit::default();
    let mut mem = Arc::new(Memtable::new(0));
    let flush_mem = |mem: &Arc<Memtable>, versions: &mut VersionSet, edit: &mut VersionEdit| -> Result<()> {
        let number = versions.new_file_number();
        if let Some(meta) = crate::flush::write_table_at(&config, mem, number)? {
            edit.added.push((0, meta));
        }
        Ok(())
    };
    for &number in &logs {
        let path = log_path(&dir, number);
        let contents = read_log(fs.as_ref(), &path)?;
        for payload in contents.payloads() {
            let end = insert_batch(&mem, payload).map_err(|e| Error::corruption(&path, e))?;
            last_seq = last_seq.max(end);
            if mem.approximate_bytes() >= config.memtable_bytes {
                flush_mem(&mem, &mut versions, &mut edit)?;
                mem = Arc::new(Memtable::new(0));
            }
        }
    }
    flush_mem(&mem, &mut versions, &mut edit)?;
    drop(mem);

    // A fresh WAL for new writes; the edit makes the replayed logs obsolete.
    let wal = if config.wal {
        let number = versions.new_file_number();
        let w = LogWriter::create_wal(fs.as_ref(), &log_path(&dir, number))?;
        fs.sync_dir(&dir)?;
        edit.log_number = Some(number);
        Some((w, number))
    } else {
        None
    };
    edit.last_sequence = Some(last_seq);
    let version = versions.log_and_apply(edit)?;

    sweep(&config, &names, &versions)?;
    let log_number = wal.as_ref().map_or(0, |(_, n)| *n);
    let opened = Opened { versions, version, log_number, last_seq, poisoned: None };
    Ok(assemble(config, opened, wal.map(|(w, _)| w), obsolete, Some(lock)))
}

/// Opens a complete shard directory that nothing may modify (a snapshot): reads its manifest, takes no
/// lock, replays no WAL, writes nothing. Reads see exactly the manifest's files.
pub(crate) fn open_read_only_inner(config: Config) -> Result<DbInner> {
    let fs = Arc::clone(&config.fs);
    let obsolete = Arc::new(ObsoleteFiles::default());
    let loaded = load_manifest(fs.as_ref(), &config.dir, &obsolete)?;
    let last_seq = loaded.state.last_sequence;
    let version = Arc::new(loaded.version);
    let versions =
        VersionSet::read_only(fs, &config.dir, Arc::clone(&version), loaded.state, Arc::clone(&obsolete));
    let opened =
        Opened { versions, version, log_number: 0, last_seq, poisoned: Some("read-only snapshot".into()) };
    Ok(assemble(config, opened, None, obsolete, None))
}

/// What opening read from disk, for [`assemble`].
struct Opened {
    versions: VersionSet,
    version: Arc<crate::version::Version>,
    /// WAL number of the fresh memtable.
    log_number: u64,
    last_seq: u64,
    poisoned: Option<String>,
}

/// Builds the in-memory Db around a recovered (or read-only) version set: empty memtable, caches,
/// commit queue.
fn assemble(
    config: Config,
    opened: Opened,
    wal: Option<LogWriter>,
    obsolete: Arc<ObsoleteFiles>,
    lock: Option<Box<dyn crate::fs::FileLock>>,
) -> DbInner {
    let Opened { versions, version, log_number, last_seq, poisoned } = opened;
    let state = State {
        mem: Arc::new(Memtable::new(log_number)),
        imm: VecDeque::new(),
        version,
        owned: Arc::new(versions.state().owned.clone()),
        pinned: BTreeMap::new(),
        poisoned,
        closing: false,
        manual_compaction: false,
        bg_generation: 0,
        compacting: false,
        compaction_holds: 0,
    };
    let table_cache = Arc::new(TableCache::new(
        Arc::clone(&config.fs),
        config.dir.clone(),
        config.table_cache_files,
        Arc::new(BlockCache::new(config.block_cache_bytes)),
    ));
    DbInner {
        db_id: versions.state().db_id.clone(),
        snapshot_lock: Mutex::new(()),
        rescale_lock: Mutex::new(()),
        ownership_gate: parking_lot::RwLock::new(()),
        commit: CommitQueue::new(wal, last_seq),
        state: Mutex::new(state),
        bg_cv: Condvar::new(),
        versions: Mutex::new(versions),
        visible_seq: AtomicU64::new(last_seq),
        filter_threshold: AtomicU64::new(0),
        table_cache,
        obsolete,
        metrics: Metrics::default(),
        _lock: lock,
        config,
    }
}

/// Deletes files the manifest does not reference: tables outside the current version, WALs below the
/// log number, manifests other than the current one.
fn sweep(config: &Config, names: &[String], versions: &VersionSet) -> Result<()> {
    let live: HashSet<u64> = versions.current().all_files().map(|f| f.meta.number).collect();
    let log_floor = versions.state().log_number;
    let manifest = versions.manifest_path().map(Path::to_path_buf);
    for name in names {
        let path = config.dir.join(name);
        let dead = match parse_file_name(name) {
            FileKind::Table(n) => !live.contains(&n),
            FileKind::Log(n) => n < log_floor,
            FileKind::Manifest(_) => Some(&path) != manifest.as_ref(),
            FileKind::Other => name == "CURRENT.tmp",
        };
        if dead {
            config.fs.remove(&path)?;
        }
    }
    config.fs.sync_dir(&config.dir)
}
