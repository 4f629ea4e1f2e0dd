//! Shard snapshots: durable point-in-time images of one shard, made of its immutable SST files.
//!
//! `Db::snapshot` flushes the memtables, pins the version that holds exactly the writes committed up to
//! that point, and writes a snapshot directory on the shard's snapshot volume:
//!
//! ```text
//! <volume>/<db_id>/<snapshot_id:010>/
//!     NNNNNN.sst       hard links to the shard's files (copies only across file systems)
//!     MANIFEST-NNNNNN  one version edit: the files by level, owned buckets, sequence, snapshot id and time
//!     CURRENT          written last: a snapshot directory without it is incomplete and ignored
//!     DIGEST           the content digest, written the first time it is asked for
//! ```
//!
//! A snapshot directory is itself a valid read-only shard directory, so [`ReadOnlyDb`] opens it as it
//! is and restore links its files into a fresh shard. Because every file is a link, the live shard's
//! compactions never touch a snapshot, and deleting a snapshot directory frees only files no one else
//! links.

use crate::bucket::{BucketRange, BucketSet};
use crate::bulk::{Pacer, UNPACED};
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::read_only::ReadOnlyDb;
use crate::recovery::{FileKind, parse_file_name};
use crate::version::ObsoleteFiles;
use crate::version_edit::{FileMeta, VersionEdit};
use crate::version_set::{CURRENT, LoadedManifest, load_manifest, table_path, write_manifest};
use crate::volume::{self, ResolvedVolume};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the file holding a snapshot's content digest.
pub const DIGEST_FILE: &str = "DIGEST";

/// What the coordinator needs to know about one shard snapshot. Serializable, so it can travel between
/// processes (e.g. from each shard to the coordinator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSnapshotInput {
    /// The shard's identity.
    pub db_id: String,
    /// The snapshot's id within the shard (increasing, never reused).
    pub snapshot_id: u64,
    /// Size of the bucket space.
    pub total_buckets: u32,
    /// The buckets the shard owned at the snapshot.
    pub bucket_ranges: Vec<BucketRange>,
    /// URL of the volume holding the snapshot.
    pub volume: String,
    /// The snapshot's manifest, relative to the volume's root.
    pub manifest_path: String,
    /// Every write with a sequence number up to this one is in the snapshot; none after.
    pub sequence: u64,
    /// Number of SST files.
    pub files: u64,
    /// Their total size in bytes.
    pub size_bytes: u64,
    /// Row count (live rows, after folding versions).
    pub rows: u64,
    /// Hash of the logical contents (see [`ContentDigest`]), 32 hex digits.
    pub digest: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Rows whose key starts with this are a replica's own bookkeeping, not content it shares with other
/// replicas (which of its own snapshots holds what a split gave away): [`ContentDigest`]s leave them
/// out, so replicas that took their snapshots at different times still hash alike.
pub const LOCAL_KEY_PREFIX: &[u8] = b"\x00\x02local/";

/// A deterministic hash of a shard's logical contents: every live row as (bucket, key, columns in
/// order, values), in key order, but for the rows under [`LOCAL_KEY_PREFIX`]. Sequence numbers, file boundaries, levels, compression and how writes
/// were batched do not enter it, so two shards holding the same rows have the same digest however their
/// trees are shaped. xxh3-128: it detects divergence between replicas, it is not a defence against an
/// adversary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentDigest {
    /// The 128-bit hash.
    pub hash: u128,
    /// Live rows hashed.
    pub rows: u64,
}

impl ContentDigest {
    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        format!("{:032x}", self.hash)
    }
}

/// Hashes the rows `next` yields (bucket, key, row), in order.
pub(crate) fn digest_rows(
    mut next: impl FnMut(&mut dyn FnMut(u16, &[u8], crate::RowRef<'_>)) -> Result<bool>,
) -> Result<ContentDigest> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut rows = 0u64;
    let mut scratch = Vec::with_capacity(64);
    loop {
        let more = next(&mut |bucket, key, row| {
            rows += 1;
            scratch.clear();
            scratch.extend_from_slice(&bucket.to_be_bytes());
            crate::coding::put_varint(&mut scratch, key.len() as u64);
            scratch.extend_from_slice(key);
            crate::coding::put_varint(&mut scratch, row.len() as u64);
            hasher.update(&scratch);
            for (column, value) in row.columns() {
                scratch.clear();
                scratch.extend_from_slice(&column.to_be_bytes());
                crate::coding::put_varint(&mut scratch, value.len() as u64);
                hasher.update(&scratch);
                hasher.update(value);
            }
        })?;
        if !more {
            break;
        }
    }
    Ok(ContentDigest { hash: hasher.digest128(), rows })
}

/// A fresh shard identity: 32 hex digits, unique across processes and machines in practice (it hashes
/// the time, the process id, a per-process counter and a stack address).
pub fn new_db_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let local = 0u8;
    let mut seed = Vec::with_capacity(48);
    seed.extend_from_slice(&nanos.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    seed.extend_from_slice(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&seed))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks that `db_id` can name a directory: 1..=64 ASCII letters, digits, '-' or '_'.
pub(crate) fn check_db_id(db_id: &str) -> Result<()> {
    let ok = !db_id.is_empty()
        && db_id.len() <= 64
        && db_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(Error::InvalidArgument(format!("bad db id {db_id:?}"))) }
}

/// Directory of shard `db_id`'s snapshots on a volume.
pub(crate) fn shard_dir(volume: &ResolvedVolume, db_id: &str) -> PathBuf {
    volume.root.join(db_id)
}

/// The directory of shard `db_id`'s snapshot `snapshot_id` on `volume`.
pub fn snapshot_dir(volume: &ResolvedVolume, db_id: &str, snapshot_id: u64) -> PathBuf {
    shard_dir(volume, db_id).join(format!("{snapshot_id:010}"))
}

/// True if the snapshot directory is complete (its `CURRENT` exists).
pub(crate) fn is_complete(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    fs.exists(&dir.join(CURRENT))
}

/// Loads a complete snapshot's manifest, or `SnapshotNotFound`.
pub(crate) fn load_snapshot(
    volume: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
) -> Result<(PathBuf, LoadedManifest)> {
    check_db_id(db_id)?;
    let dir = snapshot_dir(volume, db_id, snapshot_id);
    if !is_complete(volume.fs.as_ref(), &dir)? {
        return Err(Error::SnapshotNotFound {
            db_id: db_id.to_string(),
            snapshot_id,
            volume: volume.url.clone(),
        });
    }
    let loaded = load_manifest(volume.fs.as_ref(), &dir, &Arc::new(ObsoleteFiles::default()))?;
    if loaded.state.snapshot.map(|(id, _)| id) != Some(snapshot_id) || loaded.state.db_id != db_id {
        return Err(Error::corruption(
            dir.join(CURRENT),
            format!(
                "directory of snapshot {db_id}/{snapshot_id} holds {:?} of {}",
                loaded.state.snapshot, loaded.state.db_id
            ),
        ));
    }
    Ok((dir, loaded))
}

/// Loads a complete snapshot for use: `total_buckets` must match and every file must be present with
/// its recorded size.
pub(crate) fn load_verified_snapshot(
    volume: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
    total_buckets: u32,
) -> Result<(PathBuf, LoadedManifest)> {
    let (dir, loaded) = load_snapshot(volume, db_id, snapshot_id)?;
    if loaded.state.total_buckets != total_buckets {
        return Err(Error::InvalidArgument(format!(
            "snapshot {db_id}/{snapshot_id} has total_buckets {}, {total_buckets} was expected",
            loaded.state.total_buckets
        )));
    }
    check_files(volume.fs.as_ref(), &dir, &loaded)?;
    Ok((dir, loaded))
}

/// Checks every file the manifest lists is present with its recorded size: `MissingFile` otherwise.
fn check_files(fs: &dyn FileSystem, dir: &Path, loaded: &LoadedManifest) -> Result<()> {
    for file in loaded.version.all_files() {
        let path = table_path(dir, file.meta.number);
        let Some(len) = file_len(fs, &path)? else {
            return Err(Error::MissingFile { path });
        };
        if len != file.meta.size {
            return Err(Error::corruption(
                &path,
                format!("file has {len} bytes, the manifest says {}", file.meta.size),
            ));
        }
    }
    Ok(())
}

/// Copies a complete snapshot directory onto another volume, files first and `CURRENT` last, moving as
/// few bytes as it can (see [`place_table`]): incremental snapshots upload only new files. Returns the
/// bytes copied from `from`. Idempotent: a crash part way leaves an incomplete directory that the next
/// call completes, reusing the files already placed.
pub(crate) fn copy_snapshot(
    from: &ResolvedVolume,
    to: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
    pace: &Pacer,
) -> Result<u64> {
    let (src_dir, loaded) = load_snapshot(from, db_id, snapshot_id)?;
    let dst_dir = snapshot_dir(to, db_id, snapshot_id);
    if is_complete(to.fs.as_ref(), &dst_dir)? {
        return Ok(0);
    }
    to.fs.create_dir_all(&dst_dir)?;
    volume::remove_tmp_files(to.fs.as_ref(), &dst_dir)?;
    let held = held_tables(to, db_id, snapshot_id)?;
    let mut copied = 0;
    for file in loaded.version.all_files() {
        copied += place_table(&from.fs, &src_dir, to, &dst_dir, &held, &file.meta, pace)?;
    }
    let digest = src_dir.join(DIGEST_FILE);
    if from.fs.exists(&digest)? && file_len(to.fs.as_ref(), &dst_dir.join(DIGEST_FILE))?.is_none() {
        copied += volume::transfer(&from.fs, &digest, &to.fs, &dst_dir.join(DIGEST_FILE))?;
    }
    to.fs.sync_dir(&dst_dir)?;
    write_manifest(to.fs.as_ref(), &dst_dir, loaded.number, &loaded.version, &loaded.state)?;
    to.fs.sync_dir(&shard_dir(to, db_id))?;
    Ok(copied)
}

/// The length of the file at `path`, or `None` if there is none (one request on object storage).
pub(crate) fn file_len(fs: &dyn FileSystem, path: &Path) -> Result<Option<u64>> {
    match fs.open(path) {
        Ok(file) => Ok(Some(file.len())),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Table files that complete snapshots of `db_id` on `volume` (other than `except`) hold, by file
/// number; the newest snapshot's copy wins.
fn held_tables(volume: &ResolvedVolume, db_id: &str, except: u64) -> Result<HashMap<u64, PathBuf>> {
    let mut held = HashMap::new();
    for dir in files_held(volume, db_id, except)? {
        for name in volume.fs.list(&dir)? {
            if let FileKind::Table(number) = parse_file_name(&name) {
                held.entry(number).or_insert_with(|| dir.join(&name));
            }
        }
    }
    Ok(held)
}

/// Puts table `file` into `dst_dir` on `to`, moving as few bytes as it can:
/// 1. kept, if a whole copy is already there (a resumed copy);
/// 2. linked from `src_dir`, if the source shares `to`'s file system (no bytes move);
/// 3. linked from an earlier snapshot on `to` that holds it (`held`): a file number is never reused
///    within a shard and files never change, so the same number and size are the same bytes (on object
///    storage the link is a server-side copy: nothing passes through this process);
/// 4. otherwise copied from the source.
///
/// Returns the bytes copied from the source.
fn place_table(
    src_fs: &Arc<dyn FileSystem>,
    src_dir: &Path,
    to: &ResolvedVolume,
    dst_dir: &Path,
    held: &HashMap<u64, PathBuf>,
    file: &FileMeta,
    pace: &Pacer,
) -> Result<u64> {
    let (number, size) = (file.number, file.size);
    let dst = table_path(dst_dir, number);
    match file_len(to.fs.as_ref(), &dst)? {
        Some(len) if len == size => return Ok(0),
        Some(_) => to.fs.remove(&dst)?,
        None => {}
    }
    let src = table_path(src_dir, number);
    if volume::same_fs(src_fs, &to.fs) && src_fs.link(&src, &dst).is_ok() {
        return Ok(0);
    }
    if let Some(earlier) = held.get(&number)
        && file_len(to.fs.as_ref(), earlier)? == Some(size)
    {
        volume::transfer(&to.fs, earlier, &to.fs, &dst)?;
        return Ok(0);
    }
    volume::copy(src_fs, &src, &to.fs, &dst, pace)
}

/// Complete snapshot directories of `db_id` on `volume` other than `except`, newest first.
fn files_held(volume: &ResolvedVolume, db_id: &str, except: u64) -> Result<Vec<PathBuf>> {
    let dir = shard_dir(volume, db_id);
    if !volume.fs.exists(&dir)? {
        return Ok(Vec::new());
    }
    let mut ids: Vec<u64> = volume.fs.list(&dir)?.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    for id in ids.into_iter().filter(|&id| id != except) {
        let path = snapshot_dir(volume, db_id, id);
        if is_complete(volume.fs.as_ref(), &path)? {
            out.push(path);
        }
    }
    Ok(out)
}

/// Removes incomplete snapshot directories of `db_id` (left by a crash during `snapshot`).
fn remove_incomplete(volume: &ResolvedVolume, db_id: &str) -> Result<()> {
    let dir = shard_dir(volume, db_id);
    if !volume.fs.exists(&dir)? {
        return Ok(());
    }
    for name in volume.fs.list(&dir)? {
        let path = dir.join(&name);
        if name.parse::<u64>().is_ok() && !is_complete(volume.fs.as_ref(), &path)? {
            volume::remove_dir_all(volume.fs.as_ref(), &path)?;
        }
    }
    Ok(())
}

impl Db {
    /// The shard's identity (32 hex digits), fixed when it was created.
    pub fn id(&self) -> String {
        self.inner.db_id.clone()
    }

    /// Takes a durable shard snapshot and returns its id. Every write acknowledged before the call is
    /// in it and none acknowledged after it returns. It flushes the memtables, then links the shard's
    /// immutable files into a snapshot directory on the snapshot volume: no data is copied when that
    /// volume shares the shard's file system (the default, `<dir>/snapshots`). On another volume (object
    /// storage, another device) only files no earlier snapshot of the shard there holds are uploaded.
    pub fn snapshot(&self) -> Result<u64> {
        let _one_at_a_time = self.inner.snapshot_lock.lock();
        let volume = self.inner.config.resolve_snapshot_volume()?;
        self.flush()?;
        // Allocate the id durably and pin the version in one step: after the flush the version holds
        // exactly the writes up to its last sequence (memtables flush oldest first).
        let (version, mut state, snapshot_id) = {
            let mut versions = self.inner.versions.lock();
            let id = versions.state().next_snapshot_id;
            let edit = VersionEdit { next_snapshot_id: Some(id + 1), ..VersionEdit::default() };
            let version = match versions.log_and_apply(edit) {
                Ok(v) => v,
                Err(e) => {
                    self.inner.poison(format!("manifest write failed: {e}"));
                    return Err(e);
                }
            };
            self.inner.state.lock().version = Arc::clone(&version);
            (version, versions.state().clone(), id)
        };
        state.snapshot = Some((snapshot_id, now_ms()));
        state.log_number = 0;
        let fs = &volume.fs;
        remove_incomplete(&volume, &state.db_id)?;
        let dir = snapshot_dir(&volume, &state.db_id, snapshot_id);
        fs.create_dir_all(&dir)?;
        let held = held_tables(&volume, &state.db_id, snapshot_id)?;
        let config = &self.inner.config;
        for file in version.all_files() {
            place_table(&config.fs, &config.dir, &volume, &dir, &held, &file.meta, &UNPACED)?;
        }
        fs.sync_dir(&dir)?;
        let manifest_number = state.next_file_number;
        state.next_file_number += 1;
        write_manifest(fs.as_ref(), &dir, manifest_number, &version, &state)?;
        fs.sync_dir(&shard_dir(&volume, &state.db_id))?;
        fs.sync_dir(&volume.root)?;
        Ok(snapshot_id)
    }

    /// Copies snapshot `snapshot_id` onto the volume at `to` (a backup): files first, `CURRENT` last,
    /// and only files no earlier snapshot of this shard there holds (an object store copies those on
    /// its side). Idempotent and resumable, like [`DbCoordinator`](crate::DbCoordinator)'s
    /// materialize. The bytes copied are taken from `pace` as they are read. Returns the snapshot's
    /// descriptor on `to` and the bytes copied.
    pub fn export_snapshot(
        &self,
        snapshot_id: u64,
        to: &str,
        pace: &Pacer,
    ) -> Result<(ShardSnapshotInput, u64)> {
        let from = self.inner.config.resolve_snapshot_volume()?;
        let to = crate::volume::resolve(to, &self.inner.config.fs)?;
        // The digest is computed from the local copy (and kept next to it), then copied with it.
        let mut input = self.shard_snapshot_input(snapshot_id)?;
        let copied = copy_snapshot(&from, &to, &self.inner.db_id, snapshot_id, pace)?;
        input.volume = to.url.clone();
        Ok((input, copied))
    }

    /// Deletes snapshot `snapshot_id` from the shard's snapshot volume (one taken for a backup, once
    /// exported): `CURRENT` first, so a crash part way leaves an incomplete directory, which the next
    /// snapshot removes. The shard's own files stay (the snapshot held links to them).
    pub fn remove_snapshot(&self, snapshot_id: u64) -> Result<()> {
        let _one_at_a_time = self.inner.snapshot_lock.lock();
        let volume = self.inner.config.resolve_snapshot_volume()?;
        let dir = snapshot_dir(&volume, &self.inner.db_id, snapshot_id);
        if volume.fs.exists(&dir)? {
            crate::coordinator::remove_snapshot_dir(volume.fs.as_ref(), &dir)?;
        }
        Ok(())
    }

    /// The descriptor of snapshot `snapshot_id` of this shard, with its content digest (computed by
    /// reading the snapshot the first time, then kept in the snapshot's `DIGEST` file).
    pub fn shard_snapshot_input(&self, snapshot_id: u64) -> Result<ShardSnapshotInput> {
        let volume = self.inner.config.resolve_snapshot_volume()?;
        shard_snapshot_input_at(&self.inner.config, &volume, &self.inner.db_id, snapshot_id)
    }
}

/// Builds the descriptor of a snapshot on `volume`, computing and storing its digest if needed.
pub(crate) fn shard_snapshot_input_at(
    config: &Config,
    volume: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
) -> Result<ShardSnapshotInput> {
    let (dir, loaded) = load_snapshot(volume, db_id, snapshot_id)?;
    let digest_path = dir.join(DIGEST_FILE);
    let digest = if volume.fs.exists(&digest_path)? {
        let bytes = volume.fs.read_all(&digest_path)?;
        let (hex, rows): (String, u64) = volume::decode_checked_json(&digest_path, &bytes)?;
        let hash =
            u128::from_str_radix(&hex, 16).map_err(|_| Error::corruption(&digest_path, "bad digest"))?;
        ContentDigest { hash, rows }
    } else {
        let ro = ReadOnlyDb::open_dir(config, volume, &dir)?;
        let digest = ro.content_digest()?;
        volume::write_atomic(
            volume.fs.as_ref(),
            &digest_path,
            &volume::encode_checked_json(&(digest.to_hex(), digest.rows))?,
        )?;
        digest
    };
    let files: Vec<_> = loaded.version.all_files().collect();
    let manifest = format!(
        "{db_id}/{}/MANIFEST-{:06}",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        loaded.number
    );
    let (_, created_at_ms) = loaded.state.snapshot.unwrap_or((snapshot_id, 0));
    Ok(ShardSnapshotInput {
        db_id: db_id.to_string(),
        snapshot_id,
        total_buckets: loaded.state.total_buckets,
        bucket_ranges: loaded.state.owned.ranges().to_vec(),
        volume: volume.url.clone(),
        manifest_path: manifest,
        sequence: loaded.state.last_sequence,
        files: files.len() as u64,
        size_bytes: files.iter().map(|f| f.meta.size).sum(),
        rows: digest.rows,
        digest: digest.to_hex(),
        created_at_ms,
    })
}

/// Name of the marker a restore keeps in the shard directory while it runs: it names the snapshot being
/// restored, so an interrupted restore of the same snapshot resumes with the files already in place.
pub const RESTORE_MARKER: &str = "RESTORING";

/// What a restore moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Files the snapshot has.
    pub files: u64,
    /// Of those, files already in the directory from an interrupted restore of the same snapshot.
    pub files_reused: u64,
    /// Bytes copied from the snapshot volume (0 when every file was linked).
    pub bytes_copied: u64,
}

/// Creates shard `config.dir` from snapshot `snapshot_id` of shard `db_id` found on `volume`: links (or
/// copies, when the volume is another file system or object storage) its files into the directory, then
/// writes a manifest naming a fresh identity. The manifest is written last, so a crash leaves either no
/// shard or a whole one; the next attempt at the same snapshot keeps the files already placed (each
/// appears under its name only once whole) and fetches only the missing ones.
pub(crate) fn restore_into(
    config: &Config,
    volume: &ResolvedVolume,
    db_id: &str,
    snapshot_id: u64,
) -> Result<(RestoreStats, BucketSet)> {
    let (src_dir, loaded) = load_verified_snapshot(volume, db_id, snapshot_id, config.total_buckets)?;
    let fs = &config.fs;
    let dir = &config.dir;
    fs.create_dir_all(dir)?;
    let _lock = fs.lock(&dir.join(crate::recovery::LOCK_FILE))?;
    let source = (db_id.to_string(), snapshot_id);
    let marker = dir.join(RESTORE_MARKER);
    let resuming = file_len(fs.as_ref(), &marker)?.is_some()
        && volume::decode_checked_json::<(String, u64)>(&marker, &fs.read_all(&marker)?).ok().as_ref()
            == Some(&source);
    let wanted: HashMap<u64, u64> =
        loaded.version.all_files().map(|f| (f.meta.number, f.meta.size)).collect();
    // Leftovers: partial copies always go; tables stay only when resuming this very restore.
    for name in fs.list(dir)? {
        let stale = name.ends_with(".tmp")
            || match parse_file_name(&name) {
                FileKind::Table(n) => !resuming || !wanted.contains_key(&n),
                FileKind::Manifest(_) => true,
                FileKind::Log(_) | FileKind::Other => false,
            };
        if stale {
            fs.remove(&dir.join(&name))?;
        }
    }
    if !resuming {
        volume::write_atomic(fs.as_ref(), &marker, &volume::encode_checked_json(&source)?)?;
    }
    let mut stats = RestoreStats::default();
    for file in loaded.version.all_files() {
        let (number, size) = (file.meta.number, file.meta.size);
        stats.files += 1;
        let dst = table_path(dir, number);
        match file_len(fs.as_ref(), &dst)? {
            Some(len) if len == size => {
                stats.files_reused += 1;
                continue;
            }
            Some(_) => fs.remove(&dst)?,
            None => {}
        }
        stats.bytes_copied += volume::transfer(&volume.fs, &table_path(&src_dir, number), fs, &dst)?;
    }
    fs.sync_dir(dir)?;
    let mut state = loaded.state.clone();
    state.db_id = new_db_id();
    state.snapshot = None;
    state.restored_from = Some(source);
    // The source's latest shrink is not this shard's: a shrink retry must not find it.
    state.last_release = None;
    state.next_snapshot_id = 1;
    state.log_number = 0;
    let number = state.next_file_number;
    state.next_file_number += 1;
    write_manifest(fs.as_ref(), dir, number, &loaded.version, &state)?;
    fs.remove(&marker)?;
    fs.sync_dir(dir)?;
    Ok((stats, state.owned))
}

impl Db {
    /// Creates shard `config.dir` from snapshot `snapshot_id` of shard `db_id`, found on the config's
    /// snapshot volume, without opening it. The new shard gets its own identity, owns the snapshot's
    /// buckets and shares the snapshot's files: links on the same file system (so the snapshot never
    /// changes when the new shard writes or compacts), copies from another volume, fetching only what an
    /// interrupted earlier attempt did not already place.
    ///
    /// A directory already restored from this snapshot is left as it is (all-zero stats); a directory
    /// holding any other shard is an error.
    pub fn restore_from_snapshot(config: &Config, snapshot_id: u64, db_id: &str) -> Result<RestoreStats> {
        Ok(restore(config, snapshot_id, db_id)?.0)
    }

    /// [`Db::restore_from_snapshot`], then opens the shard. Calling it again on a directory already
    /// restored from the same snapshot reopens that shard; a directory holding any other shard is an
    /// error.
    pub fn open_from_snapshot(config: Config, snapshot_id: u64, db_id: String) -> Result<Db> {
        let (_, owned) = restore(&config, snapshot_id, &db_id)?;
        Db::open(config, owned.ranges().to_vec())
    }
}

/// Restores (or finds already restored) `config.dir`; returns what moved and the buckets it owns.
fn restore(config: &Config, snapshot_id: u64, db_id: &str) -> Result<(RestoreStats, BucketSet)> {
    config.validate()?;
    let volume = config.resolve_snapshot_volume()?;
    if config.fs.exists(&config.dir.join(CURRENT))? {
        let existing = load_manifest(config.fs.as_ref(), &config.dir, &Arc::new(ObsoleteFiles::default()))?;
        if existing.state.restored_from.as_ref() != Some(&(db_id.to_string(), snapshot_id)) {
            return Err(Error::InvalidArgument(format!(
                "{} already holds shard {} (restored from {:?}), not a restore of {db_id}/{snapshot_id}",
                config.dir.display(),
                existing.state.db_id,
                existing.state.restored_from
            )));
        }
        // A crash between the manifest and the marker's removal leaves the marker: drop it.
        if config.fs.exists(&config.dir.join(RESTORE_MARKER))? {
            config.fs.remove(&config.dir.join(RESTORE_MARKER))?;
        }
        return Ok((RestoreStats::default(), existing.state.owned));
    }
    restore_into(config, &volume, db_id, snapshot_id)
}
