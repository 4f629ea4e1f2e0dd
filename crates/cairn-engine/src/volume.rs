//! Volumes: where shard snapshots and global snapshot manifests live, named by URL.
//!
//! - `file:///abs/path`: a directory, accessed through the engine's [`FileSystem`] (so tests can put a
//!   volume on a [`MemFs`](crate::fs::MemFs) or a [`FaultFs`](crate::fs::FaultFs));
//! - `memory://name`: an in-process [`MemFs`] shared by every user of the same name (tests, examples);
//! - `s3://bucket/prefix?option=value&...` (cargo feature `s3`): objects in an S3-compatible bucket, through
//!   `ObjectFs`. Options are object_store's S3 settings (`endpoint`, `region`, `allow_http`, ...);
//!   credentials never go in the URL, they come from the `AWS_*` environment or an instance role.
//!
//! A file moves onto a volume by [`transfer`]: a hard link when source and destination share a file
//! system (no bytes copied), otherwise a streamed copy that is synced before it counts.

use crate::error::{Error, Result};
use crate::fs::{FileSystem, MemFs};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// What a volume is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeRole {
    /// A shard's own files (its `Config::dir`).
    Data,
    /// Global snapshot manifests (the coordinator's).
    Meta,
    /// Shard snapshots: their manifests and (links to or copies of) their files.
    Snapshot,
}

/// A volume: a URL and the role it plays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// `file:///abs/path`, `memory://name` or `s3://bucket/prefix`.
    pub url: String,
    /// What the volume holds.
    pub role: VolumeRole,
}

impl Volume {
    /// A volume with `role` at `url`.
    pub fn new(url: impl Into<String>, role: VolumeRole) -> Volume {
        Volume { url: url.into(), role }
    }

    /// The `file://` URL of a local directory.
    pub fn file_url(dir: &Path) -> String {
        format!("file://{}", dir.display())
    }
}

/// A volume URL resolved to a file system and the directory that is its root.
#[derive(Clone, Debug)]
pub struct ResolvedVolume {
    /// The URL it was resolved from (normalised).
    pub url: String,
    /// The file system holding it.
    pub fs: Arc<dyn FileSystem>,
    /// Its root directory on `fs`.
    pub root: PathBuf,
}

fn memory_volumes() -> &'static Mutex<HashMap<String, MemFs>> {
    static VOLUMES: OnceLock<Mutex<HashMap<String, MemFs>>> = OnceLock::new();
    VOLUMES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forgets every `memory://` volume whose name starts with `prefix` (a test or simulation run that is
/// done with its volumes): the next `resolve` of such a name gets a new, empty volume, and the old
/// one's memory is freed once no handle to it is left. Returns how many were forgotten.
pub fn forget_memory_volumes(prefix: &str) -> usize {
    let mut volumes = memory_volumes().lock();
    let before = volumes.len();
    volumes.retain(|name, _| !name.starts_with(prefix));
    before - volumes.len()
}

/// Resolves `url`; `file://` volumes use `fs`.
pub fn resolve(url: &str, fs: &Arc<dyn FileSystem>) -> Result<ResolvedVolume> {
    let bad = |why: &str| Error::InvalidArgument(format!("volume URL {url:?}: {why}"));
    if let Some(path) = url.strip_prefix("file://") {
        let root = PathBuf::from(path);
        if !root.is_absolute() {
            return Err(bad("a file:// volume needs an absolute path (file:///abs/path)"));
        }
        return Ok(ResolvedVolume { url: url.trim_end_matches('/').to_string(), fs: Arc::clone(fs), root });
    }
    if let Some(name) = url.strip_prefix("memory://") {
        if name.is_empty() || name.contains('/') {
            return Err(bad("a memory:// volume needs a name without '/' (memory://name)"));
        }
        let memfs = memory_volumes().lock().entry(name.to_string()).or_default().clone();
        return Ok(ResolvedVolume { url: url.to_string(), fs: Arc::new(memfs), root: PathBuf::from("/vol") });
    }
    if url.starts_with("s3://") {
        return resolve_s3(url);
    }
    Err(bad("unknown scheme (expected file://, memory:// or s3://)"))
}

#[cfg(feature = "s3")]
fn resolve_s3(url: &str) -> Result<ResolvedVolume> {
    let parsed = crate::fs::S3Url::parse(url)?;
    let fs = crate::fs::ObjectFs::for_url(&parsed)?;
    Ok(ResolvedVolume { url: parsed.normalized(), fs: Arc::new(fs), root: parsed.root() })
}

#[cfg(not(feature = "s3"))]
fn resolve_s3(url: &str) -> Result<ResolvedVolume> {
    Err(Error::InvalidArgument(format!(
        "volume URL {url:?}: this build has no object-storage support (build cairn-engine with the `s3` feature)"
    )))
}

impl ResolvedVolume {
    /// True if both name the same storage (same URL).
    pub fn same_as(&self, other: &ResolvedVolume) -> bool {
        self.url == other.url
    }
}

/// True if `a` and `b` hold their files in one namespace (so a hard link can join them).
pub(crate) fn same_fs(a: &Arc<dyn FileSystem>, b: &Arc<dyn FileSystem>) -> bool {
    a.identity() == b.identity()
}

/// Bytes in one copy chunk: copying never holds more than this in memory.
const COPY_CHUNK: usize = 1 << 20;

/// Puts the file `src` (on `src_fs`) at `dst` (on `dst_fs`): a hard link when they share a file system,
/// else a streamed, synced copy. Returns the bytes copied (0 for a link). A copy is written under a
/// temporary name and renamed into place once synced (unless `dst_fs` only ever shows whole files), so a
/// file at `dst` always holds all of `src`'s bytes, even after a power loss. The caller syncs `dst`'s
/// directory. `dst` must not exist.
pub(crate) fn transfer(
    src_fs: &Arc<dyn FileSystem>,
    src: &Path,
    dst_fs: &Arc<dyn FileSystem>,
    dst: &Path,
) -> Result<u64> {
    if same_fs(src_fs, dst_fs) && src_fs.link(src, dst).is_ok() {
        return Ok(0);
    }
    copy(src_fs, src, dst_fs, dst, &crate::bulk::UNPACED)
}

/// The copy half of [`transfer`]: streams `src` into `dst`, staged and synced as described there.
pub(crate) fn copy(
    src_fs: &Arc<dyn FileSystem>,
    src: &Path,
    dst_fs: &Arc<dyn FileSystem>,
    dst: &Path,
    pace: &crate::bulk::Pacer,
) -> Result<u64> {
    let input = src_fs.open(src)?;
    let len = input.len();
    let staging = if dst_fs.creates_whole_files() { dst.to_path_buf() } else { tmp_path(dst) };
    let mut out = dst_fs.create(&staging)?;
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(len).unwrap_or(COPY_CHUNK))];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        pace.take(n as u64);
        input.read_exact_at(offset, &mut buf[..n])?;
        out.append(&buf[..n])?;
        offset += n as u64;
    }
    out.sync()?;
    drop(out);
    if staging != dst {
        dst_fs.rename(&staging, dst)?;
    }
    Ok(len)
}

/// `path` with `.tmp` appended: where a file is staged before it is renamed into place.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Removes every file in `dir`, then `dir` itself. Subdirectories are not expected (volumes hold flat
/// snapshot directories); one is reported as an error.
pub(crate) fn remove_dir_all(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    for name in fs.list(dir)? {
        fs.remove(&dir.join(&name))?;
    }
    fs.remove_dir(dir)
}

/// Writes `contents` to `path` atomically: a synced temporary file renamed over `path`, then the directory
/// synced (or, where files only ever appear whole, one synced write). A crash leaves the old contents or
/// the new, never a mix.
pub(crate) fn write_atomic(fs: &dyn FileSystem, path: &Path, contents: &[u8]) -> Result<()> {
    let dir =
        path.parent().ok_or_else(|| Error::InvalidArgument(format!("{} has no parent", path.display())))?;
    let staging = if fs.creates_whole_files() { path.to_path_buf() } else { tmp_path(path) };
    let mut f = fs.create(&staging)?;
    f.append(contents)?;
    f.sync()?;
    drop(f);
    if staging != path {
        fs.rename(&staging, path)?;
    }
    fs.sync_dir(dir)
}

/// Removes the temporary files (`*.tmp`) a crash left in `dir`.
pub(crate) fn remove_tmp_files(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    for name in fs.list(dir)? {
        if name.ends_with(".tmp") {
            fs.remove(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// Encodes `value` as a JSON line followed by a line with its masked crc32c (hex), so a torn or flipped
/// descriptor is detected rather than misread.
pub(crate) fn encode_checked_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let json =
        serde_json::to_vec(value).map_err(|e| Error::InvalidArgument(format!("cannot encode: {e}")))?;
    let mut out = json;
    let crc = crate::coding::masked_crc(&out);
    out.extend_from_slice(format!("\n{crc:08x}\n").as_bytes());
    Ok(out)
}

/// Decodes what [`encode_checked_json`] wrote; errors are `Corruption` naming `path`.
pub(crate) fn decode_checked_json<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::corruption(path, "descriptor is not UTF-8"))?;
    let mut lines = text.split('\n');
    let (Some(json), Some(crc), Some(""), None) = (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(Error::corruption(path, "descriptor is not a JSON line and a checksum line"));
    };
    if format!("{:08x}", crate::coding::masked_crc(json.as_bytes())) != crc {
        return Err(Error::corruption(path, "descriptor checksum mismatch"));
    }
    serde_json::from_str(json).map_err(|e| Error::corruption(path, format!("bad descriptor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    #[test]
    fn urls_resolve_or_are_rejected_with_the_reason() {
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let v = resolve("file:///tmp/x/", &fs).unwrap();
        assert_eq!(v.root, PathBuf::from("/tmp/x/"));
        assert_eq!(v.url, "file:///tmp/x");
        assert!(resolve("memory://a", &fs).is_ok());
        for bad in ["file://relative", "memory://", "memory://a/b", "ftp://x", "s3://B/p", "/tmp"] {
            let e = resolve(bad, &fs).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_paced_copy_takes_each_chunk_from_its_pacer() {
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let v = resolve("memory://paced-copy", &fs).unwrap();
        v.fs.create_dir_all(&v.root).unwrap();
        let (src, dst) = (v.root.join("src"), v.root.join("dst"));
        let bytes = vec![7u8; 3 * COPY_CHUNK];
        write_atomic(v.fs.as_ref(), &src, &bytes).unwrap();
        // Ten chunks a second: the first goes at once, the other two 100 ms apart.
        let pace = crate::bulk::Pacer::new(10 * COPY_CHUNK as u64);
        let start = std::time::Instant::now();
        assert_eq!(copy(&v.fs, &src, &v.fs, &dst, &pace).unwrap(), bytes.len() as u64);
        let took = start.elapsed();
        assert!(took >= std::time::Duration::from_millis(200), "3 chunks at 10 a second took {took:?}");
        assert_eq!(v.fs.read_all(&dst).unwrap(), bytes);
        forget_memory_volumes("paced-copy");
    }

    #[test]
    fn memory_volumes_are_shared_by_name() {
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let a = resolve("memory://shared-by-name", &fs).unwrap();
        a.fs.create_dir_all(&a.root).unwrap();
        write_atomic(a.fs.as_ref(), &a.root.join("f"), b"hello").unwrap();
        let b = resolve("memory://shared-by-name", &fs).unwrap();
        assert_eq!(b.fs.read_all(&b.root.join("f")).unwrap(), b"hello");
        // Forgotten (by prefix), the name names a new, empty volume.
        let _other = resolve("memory://shared-by-nam", &fs).unwrap();
        assert_eq!(forget_memory_volumes("shared-by-name"), 1);
        let c = resolve("memory://shared-by-name", &fs).unwrap();
        assert!(c.fs.read_all(&c.root.join("f")).is_err());
        assert_eq!(forget_memory_volumes("shared-by-nam"), 2);
    }

    #[test]
    fn transfer_links_on_one_fs_and_copies_across() {
        let a: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let b: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let mut f = a.create(Path::new("/src")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        f.append(&data).unwrap();
        drop(f);
        assert_eq!(transfer(&a, Path::new("/src"), &a, Path::new("/linked")).unwrap(), 0);
        assert_eq!(transfer(&a, Path::new("/src"), &b, Path::new("/copied")).unwrap(), data.len() as u64);
        assert_eq!(a.read_all(Path::new("/linked")).unwrap(), data);
        assert_eq!(b.read_all(Path::new("/copied")).unwrap(), data);
    }

    #[test]
    fn checked_json_detects_damage() {
        let enc = encode_checked_json(&vec![1u32, 2, 3]).unwrap();
        let p = Path::new("/d");
        assert_eq!(decode_checked_json::<Vec<u32>>(p, &enc).unwrap(), vec![1, 2, 3]);
        let mut bad = enc.clone();
        bad[1] ^= 0x04;
        assert!(decode_checked_json::<Vec<u32>>(p, &bad).unwrap_err().is_corruption());
        assert!(decode_checked_json::<Vec<u32>>(p, &enc[..enc.len() - 3]).unwrap_err().is_corruption());
    }
}
