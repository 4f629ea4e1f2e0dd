//! Point reads: consult the memtable, the immutable memtables, L0 newest first, then one file per lower
//! level, folding row deltas until a complete row or a tombstone ends the search.

use crate::db::{DbInner, SuperVersion};
use crate::error::{Error, Result};
use crate::keys::{self, Kind};
use crate::memtable::Memtable;
use crate::row::{Row, RowFolder};
use crate::version::TableFile;
use std::sync::Arc;

/// Accumulates versions of one row, newest first.
#[derive(Default)]
struct Fold {
    folder: RowFolder,
    done: bool,
    malformed: bool,
}

impl Fold {
    /// Adds one version; returns true to keep reading older versions.
    fn add(&mut self, kind: Kind, value: &[u8]) -> bool {
        match kind {
            Kind::Delete => self.done = true,
            Kind::Set | Kind::Merge => {
                if !self.folder.add_older(value) {
                    self.malformed = true;
                    self.done = true;
                }
                self.done |= kind == Kind::Set;
            }
        }
        !self.done
    }
}

/// Reads `user_key` as of `seq`.
pub(crate) fn get(db: &DbInner, sv: &SuperVersion, seq: u64, user_key: &[u8]) -> Result<Option<Row>> {
    let mut fold = Fold::default();
    let mems = std::iter::once(&sv.mem).chain(sv.imm.iter().rev());
    for mem in mems {
        from_memtable(mem, user_key, seq, &mut fold);
        if fold.done {
            return finish(fold, || "<memtable>".into());
        }
    }
    let lookup = keys::lookup_key(user_key, seq);
    for file in &sv.version.levels[0] {
        if file.overlaps(Some(user_key), Some(user_key)) {
            from_table(db, file, &lookup, &mut fold)?;
            if fold.done {
                return finish(fold, || file_name(file));
            }
        }
    }
    for level in 1..sv.version.levels.len() {
        if let Some(file) = sv.version.file_for_key(level, user_key) {
            from_table(db, file, &lookup, &mut fold)?;
            if fold.done {
                return finish(fold, || file_name(file));
            }
        }
    }
    finish(fold, || "<tree>".into())
}

fn file_name(file: &TableFile) -> String {
    format!("{:06}.sst", file.meta.number)
}

/// The folded row; `source` names where a malformed value came from (only called then).
fn finish(fold: Fold, source: impl FnOnce() -> String) -> Result<Option<Row>> {
    if fold.malformed {
        return Err(Error::corruption(source(), "malformed row value"));
    }
    let row = fold.folder.into_row();
    Ok(if row.is_empty() { None } else { Some(row) })
}

fn from_memtable(mem: &Memtable, user_key: &[u8], seq: u64, fold: &mut Fold) {
    mem.for_each_version(user_key, seq, |kind, value| fold.add(kind, value));
}

/// Folds the versions `file` holds of the user key of `lookup` (a [`keys::lookup_key`]).
fn from_table(db: &DbInner, file: &Arc<TableFile>, lookup: &[u8], fold: &mut Fold) -> Result<()> {
    if !file.shows(keys::bucket_of(keys::user_key_of(lookup))) {
        return Ok(());
    }
    let table = db.table_cache.get(file.meta.number, file.meta.size)?;
    table.for_each_version(lookup, |kind, value| fold.add(kind, value))
}
