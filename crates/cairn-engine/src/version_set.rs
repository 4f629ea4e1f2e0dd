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
}

/// The current version and its manifest.
pub struct VersionSet {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    manifest: LogWriter,
    current: Arc<Version>,
    state: DurableState,
    obsolete: Arc<ObsoleteFiles>,
}

impl VersionSet {
    /// Creates the manifest of a brand-new shard.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        total_buckets: u32,
        owned: BucketSet,
        obsolete: Arc<ObsoleteFiles>,
    ) -> Result<VersionSet> {
        let state =
            DurableState { log_number: 0, next_file_number: 2, last_sequence: 0, owned, total_buckets };
        VersionSet::write_new_manifest(fs, dir, 1, Arc::new(Version::default()), state, obsolete)
    }

    /// Rebuilds the version set from `CURRENT` and its manifest, then rolls over into a fresh manifest.
    pub fn recover(fs: Arc<dyn FileSystem>, dir: &Path, obsolete: Arc<ObsoleteFiles>) -> Result<VersionSet> {
        let manifest_name = read_current(fs.as_ref(), dir)?;
        let path = dir.join(&manifest_name);
        let contents = read_log(fs.as_ref(), &path)?;
        let corrupt = |detail: String| Error::corruption(&path, detail);
        let mut version = Version::default();
        let mut state = DurableState {
            log_number: 0,
            next_file_number: 0,
            last_sequence: 0,
            owned: BucketSet::default(),
            total_buckets: 0,
        };
        let mut owned: Option<Vec<BucketRange>> = None;
        for payload in contents.payloads() {
            let edit = VersionEdit::decode(payload).map_err(corrupt)?;
            version = version.apply(&edit, |m| TableFile::new(m, Arc::clone(&obsolete))).map_err(corrupt)?;
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
        let manifest_number =
            manifest_name.strip_prefix("MANIFEST-").and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| {
                Error::corruption(dir.join(CURRENT), format!("bad manifest name {manifest_name:?}"))
            })?;
        state.next_file_number = state.next_file_number.max(manifest_number + 1);
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
        let path = manifest_path(dir, number);
        let mut manifest = LogWriter::create(fs.as_ref(), &path)?;
        let mut edit = current.snapshot_edit();
        edit.log_number = Some(state.log_number);
        edit.next_file_number = Some(state.next_file_number.max(number + 1));
        edit.last_sequence = Some(state.last_sequence);
        edit.owned_buckets = Some(state.owned.ranges().to_vec());
        edit.total_buckets = Some(state.total_buckets);
        manifest.add_record(&edit.encode())?;
        manifest.sync()?;
        set_current(fs.as_ref(), dir, number)?;
        let mut state = state;
        state.next_file_number = state.next_file_number.max(number + 1);
        Ok(VersionSet { fs, dir: dir.to_path_buf(), manifest, current, state, obsolete })
    }

    /// Makes `edit` durable, then applies it. Returns the new current version. On a manifest I/O error
    /// nothing is applied and the caller must poison the Db: the manifest's tail is unknown.
    pub fn log_and_apply(&mut self, mut edit: VersionEdit) -> Result<Arc<Version>> {
        edit.next_file_number = Some(self.state.next_file_number);
        let obsolete = Arc::clone(&self.obsolete);
        let next = self
            .current
            .apply(&edit, |m| TableFile::new(m, Arc::clone(&obsolete)))
            .map_err(|e| Error::InvalidArgument(format!("rejected version edit: {e}")))?;
        if self.manifest.len() > MANIFEST_ROLLOVER_BYTES {
            let mut state = self.state.clone();
            apply_scalars(&mut state, &edit);
            if let Some(o) = &edit.owned_buckets {
                state.owned = BucketSet::new(o, state.total_buckets)?;
            }
            let number = state.next_file_number;
            state.next_file_number += 1;
            let old = self.manifest.path().to_path_buf();
            let fresh = VersionSet::write_new_manifest(
                Arc::clone(&self.fs),
                &self.dir,
                number,
                Arc::new(next),
                state,
                Arc::clone(&self.obsolete),
            )?;
            *self = fresh;
            // The old manifest is no longer current; failing to remove it only wastes space.
            let _ = self.fs.remove(&old);
            return Ok(Arc::clone(&self.current));
        }
        self.manifest.add_record(&edit.encode())?;
        self.manifest.sync()?;
        apply_scalars(&mut self.state, &edit);
        if let Some(o) = &edit.owned_buckets {
            self.state.owned = BucketSet::new(o, self.state.total_buckets)?;
        }
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

    /// The live manifest's path.
    pub fn manifest_path(&self) -> &Path {
        self.manifest.path()
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
        state.last_sequence = n;
    }
    if let Some(n) = edit.total_buckets {
        state.total_buckets = n;
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
    let tmp = dir.join("CURRENT.tmp");
    let mut f = fs.create(&tmp)?;
    f.append(contents.as_bytes())?;
    f.sync()?;
    drop(f);
    fs.rename(&tmp, &dir.join(CURRENT))?;
    fs.sync_dir(dir)
}
