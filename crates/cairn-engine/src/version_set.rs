//! The version set: the current version plus the manifest that makes it durable.
//!
//! The manifest is a log of [`VersionEdit`]s; `CURRENT` names the live manifest. A new manifest starts
//! with one edit describing the whole state; `CURRENT` is switched by writing `CURRENT.tmp`, syncing it,
//! renaming it over `CURRENT` and syncing the directory, so a crash leaves either the old or the new
//! manifest current. An edit is applied in memory only after it is durable in the manifest.

use crate::bucket::{BucketRange, BucketSet};
use crate::coding::masked_crc;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::log::{LogWriter, read_log};
use crate::version::{ObsoleteFiles, TableFile, Version};
use crate::version_edit::VersionEdit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the file naming the live manifest.
pub const CURRENT: &str = "CURRENT";
/// A manifest grows to this size before the next edit rolls it over into a fresh one.
const MANIFEST_ROLLOVER_BYTES: u64 = 16 << 20;

/// Paths of the files in a Db directory.
pub fn table_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

/// Path of a WAL file.
pub fn log_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}

/// Path of a manifest file.
pub fn manifest_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("MANIFEST-{number:06}"))
}

/// The state the manifest makes durable, besides the file lists.
#[derive(Clone, Debug)]
pub struct DurableState {
    /// WAL files below this number are flushed.
    pub log_number: u64,
    /// Next file number to hand out.
    pub next_file_number: u64,
    /// Largest sequence number in SST files.
    pub last_sequence: u64,
    /// Buckets the shard owns.
    pub owned: BucketSet,
    /// Size of the bucket space.
    pub total_buckets: u32,
    /// The shard's identity (32 hex digits), fixed when it is created.
    pub db_id: String,
    /// Next shard snapshot id to hand out.
    pub next_snapshot_id: u64,
    /// In a shard snapshot's manifest: (snapshot id, created at ms since the Unix epoch).
    pub snapshot: Option<(u64, u64)>,
    /// The shard snapshot (db_id, snapshot_id) this shard was restored from.
    pub restored_from: Option<(String, u64)>,
    /// The latest shrink: its pre-shrink snapshot id and the ranges it released.
    pub last_release: Option<(u64, Vec<BucketRange>)>,
}

impl DurableState {
    /// The state of a brand-new shard.
    pub fn new(db_id: String, total_buckets: u32, owned: BucketSet) -> DurableState {
        DurableState {
            log_number: 0,
            next_file_number: 2,
            last_sequence: 0,
            owned,
            total_buckets,
            db_id,
            next_snapshot_id: 1,
            snapshot: None,
            restored_from: None,
            last_release: None,
        }
    }

    /// The edit that records every scalar (the first record of a fresh manifest).
    fn full_edit(&self, version: &Version) -> VersionEdit {
        let mut edit = version.snapshot_edit();
        edit.log_number = Some(self.log_number);
        edit.next_file_number = Some(self.next_file_number);
        edit.last_sequence = Some(self.last_sequence);
        edit.owned_buckets = Some(self.owned.ranges().to_vec());
        edit.total_buckets = Some(self.total_buckets);
        edit.db_id = Some(self.db_id.clone());
        edit.next_snapshot_id = Some(self.next_snapshot_id);
        edit.snapshot = self.snapshot;
        edit.restored_from = self.restored_from.clone();
        edit.last_release = self.last_release.clone();
        edit
    }
}

/// A manifest read back: the version it describes, its scalars and its file number.
pub struct LoadedManifest {
    /// The files, by level.
    pub version: Version,
    /// The scalars.
    pub state: DurableState,
    /// The manifest's own file number.
    pub number: u64,
}

/// Reads `CURRENT` and the manifest it names, without writing anything.
pub fn load_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    obsolete: &Arc<ObsoleteFiles>,
) -> Result<LoadedManifest> {
    let manifest_name = read_current(fs, dir)?;
    let path = dir.join(&manifest_name);
    let contents = read_log(fs, &path)?;
    let corrupt = |detail: String| Error::corruption(&path, detail);
    let mut version = Version::default();
    let mut state = DurableState::new(String::new(), 0, BucketSet::default());
    state.next_file_number = 0;
    state.next_snapshot_id = 1;
    let mut owned: Option<Vec<BucketRange>> = None;
    for payload in contents.payloads() {
        let edit = VersionEdit::decode(payload).map_err(corrupt)?;
        version = version.apply(&edit, |m| TableFile::new(m, Arc::clone(obsolete))).map_err(corrupt)?;
        apply_scalars(&mut state, &edit);
        if let Some(o) = edit.owned_buckets {
            owned = Some(o);
        }
    }
    if state.total_buckets == 0 || state.next_file_number == 0 {
        return Err(corrupt("manifest lacks total_buckets or next_file_number".into()));
    }
    state.owned = BucketSet::new(&owned.unwrap_or_default(), state.total_buckets)
        .map_err(|e| corrupt(format!("bad owned buckets: {e}")))?;
    let number =
        manifest_name.strip_prefix("MANIFEST-").and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| {
            Error::corruption(dir.join(CURRENT), format!("bad manifest name {manifest_name:?}"))
        })?;
    state.next_file_number = state.next_file_number.max(number + 1);
    Ok(LoadedManifest { version, state, number })
}

/// Writes a fresh manifest (`MANIFEST-{number}`) describing `version` and `state` into `dir` and points
/// `CURRENT` at it. Used for new shards, snapshots and restores.
pub fn write_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    number: u64,
    version: &Version,
    state: &DurableState,
) -> Result<LogWriter> {
    let path = manifest_path(dir, number);
    let mut manifest = LogWriter::create(fs, &path)?;
    let mut edit = state.full_edit(version);
    edit.next_file_number = Some(state.next_file_number.max(number + 1));
    manifest.add_record(&edit.encode())?;
    manifest.sync()?;
    set_current(fs, dir, number)?;
    Ok(manifest)
}

/// The current version and its manifest.
pub struct VersionSet {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// The live manifest; `None` for a read-only version set, which refuses edits.
    manifest: Option<LogWriter>,
    current: Arc<Version>,
    state: DurableState,
    obsolete: Arc<ObsoleteFiles>,
}

impl VersionSet {
    /// Creates the manifest of a brand-new shard.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        state: DurableState,
        obsolete: Arc<ObsoleteFiles>,
    ) -> Result<VersionSet> {
        VersionSet::write_new_manifest(fs, dir, 1, Arc::new(Version::default()), state, obsolete)
    }

    /// Rebuilds the version set from `CURRENT` and its manifest, then rolls over into a fresh manifest.
    pub fn recover(fs: Arc<dyn FileSystem>, dir: &Path, obsolete: Arc<ObsoleteFiles>) -> Result<VersionSet> {
        let LoadedManifest { version, mut state, .. } = load_manifest(fs.as_ref(), dir, &obsolete)?;
        if state.db_id.is_empty() {
            // Shards created before identities existed get one now; the fresh manifest records it.
            state.db_id = crate::snapshot::new_db_id();
        }
        let number = state.next_file_number;
        state.next_file_number += 1;
        VersionSet::write_new_manifest(fs, dir, number, Arc::new(version), state, obsolete)
    }

    fn write_new_manifest(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        number: u64,
        current: Arc<Version>,
        state: DurableState,
        obsolete: Arc<ObsoleteFiles>,
    ) -> Result<VersionSet> {
        let manifest = write_manifest(fs.as_ref(), dir, number, &current, &state)?;
        let mut state = state;
        state.next_file_number = state.next_file_number.max(number + 1);
        Ok(VersionSet { fs, dir: dir.to_path_buf(), manifest: Some(manifest), current, state, obsolete })
    }

    /// Makes `edit` durable, then applies it. Returns the new current version. On a manifest I/O error
    /// nothing is applied and the caller must poison the Db: the manifest's tail is unknown.
    ///
    /// The edit is checked against the current version before anything is written, on throwaway file
    /// handles: if the write then fails, the edit may still be in the manifest (its bytes reached the OS,
    /// or a new manifest is current) and be replayed by the next open, so the files it adds must not be
    /// reported obsolete (and deleted) just because the in-memory version was not installed.
    pub fn log_and_apply(&mut self, mut edit: VersionEdit) -> Result<Arc<Version>> {
        edit.next_file_number = Some(self.state.next_file_number);
        let scratch = Arc::new(ObsoleteFiles::default());
        let checked = self
            .current
            .apply(&edit, |m| TableFile::new(m, Arc::clone(&scratch)))
            .map_err(|e| Error::InvalidArgument(format!("rejected version edit: {e}")))?;
        let Some(manifest) = self.manifest.as_mut() else {
            return Err(Error::InvalidArgument("a read-only shard takes no version edits".into()));
        };
        let mut state = self.state.clone();
        apply_scalars(&mut state, &edit);
        if let Some(o) = &edit.owned_buckets {
            state.owned = BucketSet::new(o, state.total_buckets)?;
        }
        if manifest.len() > MANIFEST_ROLLOVER_BYTES {
            let number = state.next_file_number;
            state.next_file_number += 1;
            let old = manifest.path().to_path_buf();
            let fresh = write_manifest(self.fs.as_ref(), &self.dir, number, &checked, &state)?;
            state.next_file_number = state.next_file_number.max(number + 1);
            self.manifest = Some(fresh);
            // The old manifest is no longer current; failing to remove it only wastes space.
            let _ = self.fs.remove(&old);
        } else {
            manifest.add_record(&edit.encode())?;
            manifest.sync()?;
        }
        drop(checked);
        let obsolete = Arc::clone(&self.obsolete);
        let next = self
            .current
            .apply(&edit, |m| TableFile::new(m, Arc::clone(&obsolete)))
            .map_err(|e| Error::InvalidArgument(format!("rejected version edit: {e}")))?;
        self.state = state;
        self.current = Arc::new(next);
        Ok(Arc::clone(&self.current))
    }

    /// The current version.
    pub fn current(&self) -> &Arc<Version> {
        &self.current
    }

    /// The durable scalars.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// Hands out a new file number (WAL, SST or manifest). It becomes durable with the next edit.
    pub fn new_file_number(&mut self) -> u64 {
        let n = self.state.next_file_number;
        self.state.next_file_number += 1;
        n
    }

    /// Makes sure later file numbers are above `number` (recovery found it on disk).
    pub fn mark_file_number_used(&mut self, number: u64) {
        self.state.next_file_number = self.state.next_file_number.max(number + 1);
    }

    /// A version set over a loaded manifest that refuses edits (read-only snapshots).
    pub fn read_only(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        current: Arc<Version>,
        state: DurableState,
        obsolete: Arc<ObsoleteFiles>,
    ) -> VersionSet {
        VersionSet { fs, dir: dir.to_path_buf(), manifest: None, current, state, obsolete }
    }

    /// The live manifest's path (`None` when read-only).
    pub fn manifest_path(&self) -> Option<&Path> {
        self.manifest.as_ref().map(|m| m.path())
    }
}

fn apply_scalars(state: &mut DurableState, edit: &VersionEdit) {
    if let Some(n) = edit.log_number {
        state.log_number = n;
    }
    if let Some(n) = edit.next_file_number {
        state.next_file_number = state.next_file_number.max(n);
    }
    if let Some(n) = edit.last_sequence {
        // Sequence numbers only grow: an import raises the floor above another shard's sequences, and a
        // later flush of older writes must not lower it again.
        state.last_sequence = state.last_sequence.max(n);
    }
    if let Some(release) = &edit.last_release {
        state.last_release = Some(release.clone());
    }
    if let Some(n) = edit.total_buckets {
        state.total_buckets = n;
    }
    if let Some(id) = &edit.db_id {
        state.db_id.clone_from(id);
    }
    if let Some(n) = edit.next_snapshot_id {
        state.next_snapshot_id = state.next_snapshot_id.max(n);
    }
    if let Some(s) = edit.snapshot {
        state.snapshot = Some(s);
    }
    if let Some(r) = &edit.restored_from {
        state.restored_from = Some(r.clone());
    }
}

/// Reads `CURRENT`: `MANIFEST-NNNNNN\n` followed by the masked crc32c of that line in hex and `\n`.
pub fn read_current(fs: &dyn FileSystem, dir: &Path) -> Result<String> {
    let path = dir.join(CURRENT);
    let bytes = fs.read_all(&path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::corruption(&path, "CURRENT is not UTF-8"))?;
    let mut lines = text.split('\n');
    let (Some(name), Some(crc), Some(""), None) = (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(Error::corruption(&path, "CURRENT is not two lines"));
    };
    if format!("{:08x}", masked_crc(name.as_bytes())) != crc {
        return Err(Error::corruption(&path, "CURRENT checksum mismatch"));
    }
    if !name.starts_with("MANIFEST-") {
        return Err(Error::corruption(&path, format!("CURRENT names {name:?}")));
    }
    Ok(name.to_string())
}

/// Atomically points `CURRENT` at manifest `number`.
pub fn set_current(fs: &dyn FileSystem, dir: &Path, number: u64) -> Result<()> {
    let name = format!("MANIFEST-{number:06}");
    let contents = format!("{name}\n{:08x}\n", masked_crc(name.as_bytes()));
    crate::volume::write_atomic(fs, &dir.join(CURRENT), contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultFs, FaultKind, MemFs};
    use crate::version_edit::FileMeta;

    fn meta(number: u64) -> FileMeta {
        FileMeta {
            number,
            size: 100,
            smallest: crate::keys::internal_key(b"\0\0a", 1, crate::keys::Kind::Set),
            largest: crate::keys::internal_key(b"\0\0b", 1, crate::keys::Kind::Set),
            min_seq: 1,
            max_seq: 1,
            entries: 1,
            deletions: 0,
        }
    }

    /// A failed manifest sync leaves the edit's fate unknown (its bytes may be in the manifest and be
    /// replayed by the next open), so the files it added must not be reported obsolete and deleted.
    #[test]
    fn failed_manifest_write_does_not_make_added_files_obsolete() {
        let mem = MemFs::new();
        let fault = FaultFs::new(Arc::new(mem));
        let ctl = fault.controller();
        let fs: Arc<dyn FileSystem> = Arc::new(fault);
        fs.create_dir_all(Path::new("/db")).unwrap();
        let obsolete = Arc::new(ObsoleteFiles::default());
        let state = DurableState::new("00".into(), 4, BucketSet::full(4));
        let mut vs = VersionSet::create(fs, Path::new("/db"), state, Arc::clone(&obsolete)).unwrap();
        ctl.fail_after(FaultKind::Sync, 0);
        let edit = VersionEdit { added: vec![(1, meta(9))], ..VersionEdit::default() };
        assert!(vs.log_and_apply(edit).is_err());
        assert_eq!(obsolete.take(), Vec::<u64>::new());
    }
}
