//! The flush thread: writes the oldest immutable memtable to an L0 SST file, records it in the manifest
//! together with the new WAL low-water mark, then drops the memtable and deletes WAL files it no longer
//! needs. Flushes run oldest first, so L0 files are ordered by the sequence numbers they hold.

use crate::config::Config;
use crate::db::DbInner;
use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::memtable::Memtable;
use crate::metrics::Metrics;
use crate::sst::TableBuilder;
use crate::version_edit::{FileMeta, VersionEdit};
use crate::version_set::{log_path, table_path};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Starts the flush thread.
pub(crate) fn spawn(db: Arc<DbInner>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cairn-flush".into())
        .spawn(move || run(&db))
        .map_err(|e| Error::io("<thread>", e))
}

fn run(db: &Arc<DbInner>) {
    loop {
        let mem = {
            let mut state = db.state.lock();
            loop {
                if state.closing || state.poisoned.is_some() {
                    return;
                }
                if let Some(m) = state.imm.front() {
                    break Arc::clone(m);
                }
                db.bg_cv.wait(&mut state);
            }
        };
        if let Err(e) = flush_one(db, &mem) {
            db.poison(format!("flush failed: {e}"));
            return;
        }
    }
}

fn flush_one(db: &Arc<DbInner>, mem: &Arc<Memtable>) -> Result<()> {
    let number = db.versions.lock().new_file_number();
    let meta = write_l0_table(db, mem, number)?;
    let mut versions = db.versions.lock();
    // WAL files below the next memtable's log are no longer needed once this edit is durable.
    let next_log = {
        let state = db.state.lock();
        state.imm.get(1).map_or(state.mem.log_number(), |m| m.log_number())
    };
    let mut edit = VersionEdit {
        log_number: db.config.wal.then_some(next_log),
        last_sequence: Some(versions.state().last_sequence.max(mem.max_seq())),
        ..VersionEdit::default()
    };
    if let Some(meta) = meta {
        Metrics::add(&db.metrics.flush_bytes, meta.size);
        edit.added.push((0, meta));
    }
    let version = versions.log_and_apply(edit)?;
    let old_log_floor = mem.log_number();
    {
        let mut state = db.state.lock();
        state.version = version;
        if state.imm.front().is_some_and(|m| Arc::ptr_eq(m, mem)) {
            state.imm.pop_front();
        }
        state.bg_generation += 1;
    }
    drop(versions);
    db.bg_cv.notify_all();
    Metrics::add(&db.metrics.flushes, 1);
    if db.config.wal {
        for n in old_log_floor..next_log {
            // Missing files are fine (never created or already removed); other failures leave garbage
            // the next open sweeps.
            let _ = db.config.fs.remove(&log_path(&db.config.dir, n));
        }
    }
    db.purge_obsolete_files();
    Ok(())
}

/// Writes `mem` to SST `number`, synced and with its directory entry durable. `None` if it was empty.
pub(crate) fn write_l0_table(db: &DbInner, mem: &Arc<Memtable>, number: u64) -> Result<Option<FileMeta>> {
    write_table_at(&db.config, mem, number)
}

/// Writes `mem` to SST `number` in `config.dir`; see [`write_l0_table`].
pub(crate) fn write_table_at(config: &Config, mem: &Arc<Memtable>, number: u64) -> Result<Option<FileMeta>> {
    if mem.is_empty() {
        return Ok(None);
    }
    let path = table_path(&config.dir, number);
    let file = config.fs.create(&path)?;
    let mut builder = TableBuilder::new(file, path.clone(), config.table_options());
    let mut it = mem.iter();
    it.seek_to_first()?;
    while it.valid() {
        builder.add(it.key(), it.value())?;
        it.next()?;
    }
    let (props, size) = builder.finish()?;
    config.fs.sync_dir(&config.dir)?;
    Ok(Some(FileMeta::of_table(number, size, props)))
}

/// Rotates the active memtable and waits until every memtable that held data is flushed.
pub(crate) fn flush_and_wait(db: &Arc<DbInner>) -> Result<()> {
    crate::commit::rotate_for_flush(db)?;
    let mut state = db.state.lock();
    loop {
        if let Some(why) = &state.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if state.imm.is_empty() {
            return Ok(());
        }
        if state.closing {
            return Err(Error::Closed);
        }
        db.bg_cv.wait(&mut state);
    }
}
