//! The compaction thread and the compaction job.
//!
//! A job merges its input files and writes the output level, keeping for every user key one entry per
//! *snapshot stripe* (the versions between two pinned read sequences look identical to every reader, so
//! they fold into one). Row tombstones and merges resolve at the bottom of the tree; the compaction
//! filter sees complete rows no pinned view can see an older state of. Output files split only between
//! user keys, so a key never spans two files of a level.

use crate::compaction_filter::{CompactionContext, CompactionFilter, FilterDecision};
use crate::compaction_picker::{self, LAST_LEVEL, PickerConfig, TreeShape};
use crate::db::DbInner;
use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::keys::{self, Kind};
use crate::level_iter::LevelIter;
use crate::merging_iter::MergingIter;
use crate::metrics::Metrics;
use crate::row::{self, Row, RowFolder};
use crate::sst::TableBuilder;
use crate::version::{TableFile, Version};
use crate::version_edit::{FileMeta, VersionEdit};
use crate::version_set::table_path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

/// Starts the compaction thread.
pub(crate) fn spawn(db: Arc<DbInner>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cairn-compact".into())
        .spawn(move || run(&db))
        .map_err(|e| Error::io("<thread>", e))
}

/// The inputs and output level of one job.
struct Job {
    start_level: usize,
    output_level: usize,
    inputs: Vec<Arc<TableFile>>,
    outputs_overlap: Vec<Arc<TableFile>>,
    bottommost: bool,
    /// Rewrite even a lone input with nothing below it (a trivial move would keep its hidden entries).
    rewrite: bool,
}

fn picker_config(db: &DbInner) -> PickerConfig {
    PickerConfig {
        l0_compaction_trigger: db.config.l0_compaction_trigger,
        level_base_bytes: db.config.level_base_bytes,
        level_multiplier: db.config.level_multiplier,
    }
}

fn shape(v: &Version) -> TreeShape {
    TreeShape { level_bytes: v.level_bytes(), level_files: v.level_files() }
}

fn run(db: &Arc<DbInner>) {
    let mut cursor: [Vec<u8>; LAST_LEVEL + 1] = Default::default();
    loop {
        let job = {
            let mut state = db.state.lock();
            loop {
                if state.closing || state.poisoned.is_some() {
                    state.compacting = false;
                    return;
                }
                if state.compaction_holds > 0 {
                    // A rescale step edits file filters and ownership: no job may straddle it.
                    state.compacting = false;
                    db.bg_cv.notify_all();
                    db.bg_cv.wait(&mut state);
                    continue;
                }
                let manual = state.manual_compaction;
                if let Some(job) = choose(&state.version, &picker_config(db), manual, &mut cursor) {
                    state.compacting = true;
                    break job;
                }
                if manual {
                    state.manual_compaction = false;
                    state.bg_generation += 1;
                    db.bg_cv.notify_all();
                }
                state.compacting = false;
                db.bg_cv.wait(&mut state);
            }
        };
        if let Err(e) = execute(db, job) {
            db.poison(format!("compaction failed: {e}"));
            db.state.lock().compacting = false;
            db.bg_cv.notify_all();
            return;
        }
    }
}

/// Chooses the next job: the picker's choice; during a manual compaction, any level above the bottom
/// that still holds files; otherwise a file with a bucket filter, rewritten to drop the entries it hides
/// (data a shrink released, or the part of an imported file outside the imported ranges).
fn choose(v: &Version, cfg: &PickerConfig, manual: bool, cursor: &mut [Vec<u8>]) -> Option<Job> {
    let base = || compaction_picker::level_targets(&shape(v), cfg).base_level;
    let mut marked = None;
    let (start_level, output_level) = match compaction_picker::pick(&shape(v), cfg) {
        Some(p) => (p.start_level, p.output_level),
        None => match (0..LAST_LEVEL).find(|&l| manual && !v.levels[l].is_empty()) {
            Some(level) => (level, if level == 0 { base() } else { (level + 1).max(base()) }),
            None => {
                let (level, file) = (0..=LAST_LEVEL)
                    .find_map(|l| v.levels[l].iter().find(|f| f.filter.is_some()).map(|f| (l, f)))?;
                if level > 0 {
                    marked = Some(Arc::clone(file));
                }
                let output = match level {
                    0 => base(),
                    LAST_LEVEL => LAST_LEVEL,
                    l => (l + 1).max(base()),
                };
                (level, output)
            }
        },
    };
    let inputs: Vec<Arc<TableFile>> = if let Some(file) = &marked {
        vec![Arc::clone(file)]
    } else if start_level == 0 {
        v.levels[0].clone()
    } else {
        let files = &v.levels[start_level];
        let after = &cursor[start_level];
        let pick = files.iter().find(|f| f.smallest_user_key() > after.as_slice()).or(files.first())?;
        cursor[start_level] = pick.largest_user_key().to_vec();
        vec![Arc::clone(pick)]
    };
    let lo = inputs.iter().map(|f| f.smallest_user_key()).min()?.to_vec();
    let hi = inputs.iter().map(|f| f.largest_user_key()).max()?.to_vec();
    let is_input = |f: &Arc<TableFile>| inputs.iter().any(|i| i.meta.number == f.meta.number);
    let outputs_overlap: Vec<_> =
        v.overlapping(output_level, Some(&lo), Some(&hi)).into_iter().filter(|f| !is_input(f)).collect();
    let bottommost =
        ((output_level + 1)..=LAST_LEVEL).all(|l| v.overlapping(l, Some(&lo), Some(&hi)).is_empty());
    // A manual compaction's last hop rewrites even a lone file (a move would keep its shadowed versions and
    // skip the compaction filter), as do files with bucket filters (a move would keep the hidden entries).
    let rewrite = (manual && output_level == LAST_LEVEL) || inputs.iter().any(|f| f.filter.is_some());
    Some(Job { start_level, output_level, inputs, outputs_overlap, bottommost, rewrite })
}

fn execute(db: &Arc<DbInner>, job: Job) -> Result<()> {
    let trivial = job.outputs_overlap.is_empty() && job.inputs.len() == 1 && !job.rewrite;
    let mut edit = VersionEdit::default();
    for f in &job.inputs {
        edit.deleted.push((job.start_level, f.meta.number));
    }
    for f in &job.outputs_overlap {
        edit.deleted.push((job.output_level, f.meta.number));
    }
    if trivial {
        edit.added.push((job.output_level, job.inputs[0].meta.clone()));
        Metrics::add(&db.metrics.trivial_moves, 1);
    } else {
        let outputs = merge(db, &job)?;
        for meta in outputs {
            edit.added.push((job.output_level, meta));
        }
        Metrics::add(&db.metrics.compactions, 1);
    }
    let mut versions = db.versions.lock();
    let version = versions.log_and_apply(edit)?;
    {
        let mut state = db.state.lock();
        state.version = version;
        state.bg_generation += 1;
    }
    drop(versions);
    drop(job);
    db.bg_cv.notify_all();
    db.purge_obsolete_files();
    Ok(())
}

/// Merges the job's inputs into new files of the output level.
fn merge(db: &Arc<DbInner>, job: &Job) -> Result<Vec<FileMeta>> {
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    let read_bytes: u64 = job.inputs.iter().chain(&job.outputs_overlap).map(|f| f.meta.size).sum();
    Metrics::add(&db.metrics.compaction_bytes_read, read_bytes);
    if job.start_level == 0 {
        for f in &job.inputs {
            children.push(Box::new(LevelIter::new_no_fill(Arc::clone(&db.table_cache), vec![Arc::clone(f)])));
        }
    } else {
        children.push(Box::new(LevelIter::new_no_fill(Arc::clone(&db.table_cache), job.inputs.clone())));
    }
    if !job.outputs_overlap.is_empty() {
        children
            .push(Box::new(LevelIter::new_no_fill(Arc::clone(&db.table_cache), job.outputs_overlap.clone())));
    }
    let mut input = MergingIter::new(children);
    input.seek_to_first()?;

    let snapshots: Vec<u64> = {
        let state = db.state.lock();
        state.pinned.keys().copied().collect()
    };
    let filter = db.config.compaction_filter.as_ref().map(|f| {
        f.create(CompactionContext {
            output_level: job.output_level,
            bottommost: job.bottommost,
            threshold: db.filter_threshold.load(Ordering::Acquire),
        })
    });
    let mut writer = OutputWriter { db, builder: None, outputs: Vec::new(), current: 0 };
    let mut resolver = KeyResolver::new(snapshots, job.bottommost, filter);
    let mut out: Vec<(u64, Kind, Vec<u8>)> = Vec::new();
    while input.valid() {
        let ukey = keys::user_key_of(input.key()).to_vec();
        resolver.start_key();
        while input.valid() && keys::user_key_of(input.key()) == ukey.as_slice() {
            let ikey = input.key();
            let kind = keys::kind_of(ikey).ok_or_else(|| Error::corruption(job_name(job), "unknown kind"))?;
            resolver.add(keys::seq_of(ikey), kind, input.value(), &mut out)?;
            input.next()?;
        }
        resolver.finish_key(&ukey, &mut out)?;
        if !out.is_empty() {
            writer.maybe_split()?;
            for (seq, kind, value) in out.drain(..) {
                writer.add(&keys::internal_key(&ukey, seq, kind), &value)?;
            }
        }
        if db.state.lock().closing {
            return Err(Error::Closed);
        }
    }
    writer.finish()
}

fn job_name(job: &Job) -> PathBuf {
    PathBuf::from(format!("<compaction L{}→L{}>", job.start_level, job.output_level))
}

/// Writes output files, cutting at `target_file_bytes` between user keys.
struct OutputWriter<'a> {
    db: &'a Arc<DbInner>,
    builder: Option<TableBuilder>,
    outputs: Vec<FileMeta>,
    current: u64,
}

impl OutputWriter<'_> {
    fn maybe_split(&mut self) -> Result<()> {
        if self.builder.as_ref().is_some_and(|b| b.estimated_file_bytes() >= self.db.config.target_file_bytes)
        {
            self.close_current()?;
        }
        Ok(())
    }

    fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        if self.builder.is_none() {
            self.current = self.db.versions.lock().new_file_number();
            let path = table_path(&self.db.config.dir, self.current);
            let file = self.db.config.fs.create(&path)?;
            self.builder = Some(TableBuilder::new(file, path, self.db.config.table_options()));
        }
        match self.builder.as_mut() {
            Some(b) => b.add(ikey, value),
            None => Ok(()),
        }
    }

    fn close_current(&mut self) -> Result<()> {
        let Some(b) = self.builder.take() else { return Ok(()) };
        let (props, size) = b.finish()?;
        Metrics::add(&self.db.metrics.compaction_bytes_written, size);
        self.outputs.push(FileMeta::of_table(self.current, size, props));
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<FileMeta>> {
        self.close_current()?;
        if !self.outputs.is_empty() {
            self.db.config.fs.sync_dir(&self.db.config.dir)?;
        }
        Ok(self.outputs)
    }
}

/// Resolves the versions of one user key into the entries compaction keeps.
struct KeyResolver {
    // Sorted pinned read sequences.
    snapshots: Vec<u64>,
    bottommost: bool,
    filter: Option<Box<dyn CompactionFilter>>,
    // Per-stripe fold state.
    stripe: usize,
    newest_seq: u64,
    folder: RowFolder,
    terminal: Option<Kind>,
    pending: bool,
}

impl KeyResolver {
    fn new(snapshots: Vec<u64>, bottommost: bool, filter: Option<Box<dyn CompactionFilter>>) -> KeyResolver {
        KeyResolver {
            snapshots,
            bottommost,
            filter,
            stripe: 0,
            newest_seq: 0,
            folder: RowFolder::default(),
            terminal: None,
            pending: false,
        }
    }

    /// The stripe of `seq`: index of the first pinned sequence >= seq (or past the end).
    fn stripe_of(&self, seq: u64) -> usize {
        self.snapshots.partition_point(|&s| s < seq)
    }

    fn start_key(&mut self) {
        self.pending = false;
        self.folder.clear();
        self.terminal = None;
    }

    fn add(&mut self, seq: u64, kind: Kind, value: &[u8], out: &mut Vec<(u64, Kind, Vec<u8>)>) -> Result<()> {
        let stripe = self.stripe_of(seq);
        if self.pending && stripe != self.stripe {
            self.emit_stripe(out);
        }
        if !self.pending {
            self.pending = true;
            self.stripe = stripe;
            self.newest_seq = seq;
            self.folder.clear();
            self.terminal = None;
        }
        if self.terminal.is_some() {
            return Ok(()); // Shadowed by a newer complete row or tombstone in the same stripe.
        }
        match kind {
            Kind::Delete => self.terminal = Some(Kind::Delete),
            Kind::Set | Kind::Merge => {
                if !self.folder.add_older(value) {
                    return Err(Error::corruption("<compaction input>", "malformed row value"));
                }
                if kind == Kind::Set {
                    self.terminal = Some(Kind::Set);
                }
            }
        }
        Ok(())
    }

    fn emit_stripe(&mut self, out: &mut Vec<(u64, Kind, Vec<u8>)>) {
        let mut value = Vec::new();
        let kind = match self.terminal {
            Some(Kind::Delete) if self.folder.is_empty() => Kind::Delete,
            Some(_) => {
                self.folder.encode(&mut value, true);
                Kind::Set
            }
            None => {
                self.folder.encode(&mut value, false);
                Kind::Merge
            }
        };
        out.push((self.newest_seq, kind, value));
        self.pending = false;
    }

    fn finish_key(&mut self, ukey: &[u8], out: &mut Vec<(u64, Kind, Vec<u8>)>) -> Result<()> {
        if self.pending {
            self.emit_stripe(out);
        }
        // At the bottom nothing older exists: the oldest entry resolves to a complete row or vanishes.
        if self.bottommost
            && let Some(last) = out.last_mut()
        {
            if last.1 == Kind::Merge {
                let mut f = RowFolder::default();
                if !f.add_older(&last.2) {
                    return Err(Error::corruption("<compaction input>", "malformed row value"));
                }
                last.2.clear();
                f.encode(&mut last.2, true);
                last.1 = Kind::Set;
            }
            if last.1 == Kind::Delete || (last.1 == Kind::Set && is_empty_row(&last.2)) {
                out.pop();
            }
        }
        self.apply_filter(ukey, out);
        // A bottom-level complete row that every view sees needs no sequence number: zeroing it (as
        // RocksDB does) makes the trailer compress to almost nothing. It still sorts after every newer
        // version above it, and reads at any sequence see it.
        if self.bottommost
            && let Some(last) = out.last_mut()
            && last.1 == Kind::Set
            && self.stripe_of(last.0) == 0
        {
            last.0 = 0;
        }
        Ok(())
    }

    /// Offers the newest version to the filter when no pinned view predates it and it is complete.
    fn apply_filter(&mut self, ukey: &[u8], out: &mut Vec<(u64, Kind, Vec<u8>)>) {
        let Some(first) = out.first() else { return };
        if first.1 != Kind::Set || self.stripe_of(first.0) != self.snapshots.len() {
            return;
        }
        let Some(filter) = self.filter.as_mut() else { return };
        let Some(delta) = row::decode_delta(&first.2) else { return };
        let row = Row::from_columns(delta.into_iter().filter_map(|(c, v)| v.map(|v| (c, v.to_vec()))));
        let bucket = keys::bucket_of(ukey);
        if filter.filter(bucket, &ukey[keys::BUCKET_BYTES..], &row) == FilterDecision::Remove {
            if out.len() == 1 && self.bottommost {
                out.clear();
            } else {
                out[0].1 = Kind::Delete;
                out[0].2.clear();
            }
        }
    }
}

fn is_empty_row(encoded: &[u8]) -> bool {
    row::decode_delta(encoded).is_some_and(|d| d.iter().all(|(_, v)| v.is_none()))
}

/// Asks for a full compaction and waits until every level above the bottom is empty.
pub(crate) fn compact_all_and_wait(db: &Arc<DbInner>) -> Result<()> {
    let mut state = db.state.lock();
    state.manual_compaction = true;
    db.bg_cv.notify_all();
    loop {
        if let Some(why) = &state.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if state.closing {
            return Err(Error::Closed);
        }
        if !state.manual_compaction && !state.compacting {
            return Ok(());
        }
        db.bg_cv.wait(&mut state);
    }
}
