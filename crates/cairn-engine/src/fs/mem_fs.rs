//! [`MemFs`]: an in-memory file system that models what a power loss keeps, so crash-recovery tests can
//! check that the engine syncs what it relies on.
//!
//! Model:
//! - a file is a node holding its bytes and `synced_len`, the prefix that `WritableFile::sync` made
//!   durable;
//! - names live in two maps: the live namespace (what the running process sees) and the durable one
//!   (what survives power loss). `create`, `rename` and `remove` change the live map only; `sync_dir`
//!   copies the live entries of that directory's direct children into the durable map;
//! - [`MemFs::crash`] replaces the live map with the durable one, truncates every file to its
//!   `synced_len`, releases every lock and bumps a generation so that handles opened before the crash
//!   fail, as a dead process's descriptors would.
//!
//! Directories are durable as soon as `create_dir_all` makes them (or `remove_dir` removes them). `link`
//! adds a second live name for the same node, as a hard link does. A process crash without power loss is
//! modelled by not calling `crash`: every appended byte and every live name stays.

use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file's contents.
#[derive(Debug, Default)]
struct Node {
    data: Vec<u8>,
    // INVARIANT: synced_len <= data.len().
    synced_len: usize,
}

type NodeRef = Arc<Mutex<Node>>;

/// Everything behind the one lock. Lock order: `State`, then a `Node`.
#[derive(Debug)]
struct State {
    /// Names the running process sees.
    live: BTreeMap<PathBuf, NodeRef>,
    /// Names that survive a power loss.
    durable: BTreeMap<PathBuf, NodeRef>,
    /// Existing directories (always durable).
    dirs: BTreeSet<PathBuf>,
    /// Bumped by every crash; handles remember the generation they were opened in.
    generation: u64,
    /// Held locks: path to the token of the guard holding it.
    locks: HashMap<PathBuf, u64>,
    next_lock_token: u64,
}

/// An in-memory file system with a power-loss model. Clones share the same files.
#[derive(Debug, Clone)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

impl Default for MemFs {
    fn default() -> MemFs {
        MemFs::new()
    }
}

/// Paths compare by components, so `/db/./a` and `/db//a` name the same file as `/db/a`.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The directory holding `path`; the empty path (a relative file's parent) counts as a directory.
fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn not_found(path: &Path) -> Error {
    Error::io(path, io::Error::from(io::ErrorKind::NotFound))
}

fn crashed(path: &Path) -> Error {
    Error::io(path, io::Error::other("file handle invalidated by simulated crash"))
}

impl State {
    fn dir_exists(&self, dir: &Path) -> bool {
        dir.as_os_str().is_empty() || self.dirs.contains(dir)
    }

    /// Fails unless the directory that would hold `path` exists, as `open(2)` does.
    fn check_parent(&self, path: &Path) -> Result<()> {
        if self.dir_exists(&parent_of(path)) { Ok(()) } else { Err(not_found(path)) }
    }

    fn live_node(&self, path: &Path) -> Result<NodeRef> {
        self.live.get(path).cloned().ok_or_else(|| not_found(path))
    }
}

impl MemFs {
    /// An empty file system holding only the root directory `/`.
    pub fn new() -> MemFs {
        let state = State {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            dirs: BTreeSet::from([PathBuf::from("/")]),
            generation: 0,
            locks: HashMap::new(),
            next_lock_token: 0,
        };
        MemFs { state: Arc::new(Mutex::new(state)) }
    }

    /// Simulates a power loss: only synced bytes under synced names survive, every lock is released and
    /// every handle opened before now fails from here on.
    pub fn crash(&self) {
        let mut state = self.state.lock();
        state.live = state.durable.clone();
        for node in state.durable.values() {
            let mut node = node.lock();
            let synced_len = node.synced_len;
            node.data.truncate(synced_len);
        }
        state.locks.clear();
        state.generation += 1;
    }

    /// Flips bit `bit` (0..8) of the byte at `byte_offset` in `path`, to simulate media corruption.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> Result<()> {
        let path = normalize(path);
        let node = self.state.lock().live_node(&path)?;
        let mut node = node.lock();
        let byte = usize::try_from(byte_offset).ok().and_then(|i| node.data.get_mut(i));
        match (byte, bit) {
            (Some(byte), 0..8) => {
                *byte ^= 1 << bit;
                Ok(())
            }
            _ => Err(Error::io(
                &path,
                io::Error::new(io::ErrorKind::InvalidInput, format!("no bit {bit} at byte {byte_offset}")),
            )),
        }
    }

    /// Cuts `path` down to `len` bytes (no-op if it is shorter), to simulate a torn write.
    pub fn truncate(&self, path: &Path, len: u64) -> Result<()> {
        let path = normalize(path);
        let node = self.state.lock().live_node(&path)?;
        let mut node = node.lock();
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(node.data.len());
        node.data.truncate(len);
        node.synced_len = node.synced_len.min(len);
        Ok(())
    }

    /// The live length of `path`, or `None` if it does not exist.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let node = self.state.lock().live.get(&normalize(path)).cloned()?;
        let len = node.lock().data.len();
        Some(len as u64)
    }

    fn generation(&self) -> u64 {
        self.state.lock().generation
    }
}

/// An appending handle; dead once a crash bumps the generation past the one it was opened in.
struct MemWritableFile {
    fs: MemFs,
    node: NodeRef,
    path: PathBuf,
    generation: u64,
}

impl MemWritableFile {
    /// Runs `f` on the node if the handle survived every crash. Holding the state lock while doing so
    /// keeps a concurrent `crash` from interleaving with the write.
    fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> T) -> Result<T> {
        let state = self.fs.state.lock();
        if state.generation != self.generation {
            return Err(crashed(&self.path));
        }
        let mut node = self.node.lock();
        Ok(f(&mut node))
    }
}

impl WritableFile for MemWritableFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.with_node(|node| node.data.extend_from_slice(data))
    }

    fn sync(&mut self) -> Result<()> {
        self.with_node(|node| node.synced_len = node.data.len())
    }

    fn len(&self) -> u64 {
        self.node.lock().data.len() as u64
    }
}

/// A reader over a shared node. Files are append-only, so the bytes below `len` never change (unless a
/// test helper corrupts them on purpose).
struct MemRandomAccessFile {
    fs: MemFs,
    node: NodeRef,
    path: PathBuf,
    len: u64,
    generation: u64,
}

impl RandomAccessFile for MemRandomAccessFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.fs.generation() != self.generation {
            return Err(crashed(&self.path));
        }
        let eof = || Error::io(&self.path, io::Error::from(io::ErrorKind::UnexpectedEof));
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.len).ok_or_else(eof)?;
        let node = self.node.lock();
        let range = usize::try_from(offset).ok().zip(usize::try_from(end).ok());
        let bytes = range.and_then(|(start, end)| node.data.get(start..end)).ok_or_else(eof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Releases its entry in the lock table, unless a crash already cleared it (the token then no longer
/// matches, so a lock taken after the crash stays held).
struct MemFileLock {
    fs: MemFs,
    path: PathBuf,
    token: u64,
}

impl FileLock for MemFileLock {}

impl Drop for MemFileLock {
    fn drop(&mut self) {
        let mut state = self.fs.state.lock();
        if state.locks.get(&self.path) == Some(&self.token) {
            state.locks.remove(&self.path);
        }
    }
}

impl FileSystem for MemFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        let path = normalize(path);
        let mut state = self.state.lock();
        state.check_parent(&path)?;
        if state.dirs.contains(&path) {
            return Err(Error::io(&path, io::Error::from(io::ErrorKind::IsADirectory)));
        }
        // Truncating an existing file empties the same node, as O_TRUNC empties the same inode: the
        // durable name (if any) then also sees the loss.
        let node = match state.live.get(&path) {
            Some(node) => {
                let mut n = node.lock();
                n.data.clear();
                n.synced_len = 0;
                drop(n);
                node.clone()
            }
            None => {
                let node = NodeRef::default();
                state.live.insert(path.clone(), node.clone());
                node
            }
        };
        let generation = state.generation;
        Ok(Box::new(MemWritableFile { fs: self.clone(), node, path, generation }))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn RandomAccessFile>> {
        let path = normalize(path);
        let state = self.state.lock();
        let node = state.live_node(&path)?;
        let len = node.lock().data.len() as u64;
        let generation = state.generation;
        Ok(Arc::new(MemRandomAccessFile { fs: self.clone(), node, path, len, generation }))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let mut state = self.state.lock();
        state.check_parent(&to)?;
        let node = state.live.remove(&from).ok_or_else(|| not_found(&from))?;
        state.live.insert(to, node);
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let path = normalize(path);
        self.state.lock().live.remove(&path).map(drop).ok_or_else(|| not_found(&path))
    }

    fn identity(&self) -> usize {
        // Clones share `state`; its address names the namespace (never 0, which is StdFs's).
        Arc::as_ptr(&self.state) as usize
    }

    fn link(&self, from: &Path, to: &Path) -> Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let mut state = self.state.lock();
        state.check_parent(&to)?;
        if state.live.contains_key(&to) || state.dirs.contains(&to) {
            return Err(Error::io(&to, io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        let node = state.live_node(&from)?;
        state.live.insert(to, node);
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        let dir = normalize(dir);
        let mut state = self.state.lock();
        if !state.dirs.contains(&dir) {
            return Err(not_found(&dir));
        }
        let inside = |p: &PathBuf| p.parent() == Some(dir.as_path());
        if state.live.keys().any(inside) || state.dirs.iter().any(inside) {
            return Err(Error::io(&dir, io::Error::from(io::ErrorKind::DirectoryNotEmpty)));
        }
        state.dirs.remove(&dir);
        // Directories are durable as soon as they change (see the module docs); so is their removal, and
        // the durable names that were under it go with it.
        state.durable.retain(|p, _| !inside(p));
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let dir = normalize(dir);
        let state = self.state.lock();
        if !state.dir_exists(&dir) {
            return Err(not_found(&dir));
        }
        let files = state.live.keys();
        let children = files.chain(state.dirs.iter()).filter(|p| p.parent() == Some(dir.as_path()));
        Ok(children.filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect())
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        let path = normalize(path);
        let state = self.state.lock();
        Ok(state.live.contains_key(&path) || state.dirs.contains(&path))
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let dir = normalize(dir);
        let mut state = self.state.lock();
        for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if state.live.contains_key(ancestor) {
                return Err(Error::io(ancestor, io::Error::from(io::ErrorKind::NotADirectory)));
            }
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let dir = normalize(dir);
        let mut state = self.state.lock();
        if !state.dir_exists(&dir) {
            return Err(not_found(&dir));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir.as_path());
        state.durable.retain(|p, _| !in_dir(p));
        let children: Vec<_> =
            state.live.iter().filter(|(p, _)| in_dir(p)).map(|(p, n)| (p.clone(), n.clone())).collect();
        state.durable.extend(children);
        Ok(())
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn FileLock>> {
        let path = normalize(path);
        let mut state = self.state.lock();
        if state.locks.contains_key(&path) {
            return Err(Error::Locked(path));
        }
        if !state.live.contains_key(&path) {
            state.check_parent(&path)?;
            state.live.insert(path.clone(), NodeRef::default());
        }
        let token = state.next_lock_token;
        state.next_lock_token += 1;
        state.locks.insert(path.clone(), token);
        Ok(Box::new(MemFileLock { fs: self.clone(), path, token }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_kind(e: &Error) -> Option<io::ErrorKind> {
        match e {
            Error::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// A file system with `/db` made and durable.
    fn fs_with_db() -> MemFs {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/db")).unwrap();
        fs
    }

    /// Creates `path` holding `data`, syncs it and its directory.
    fn write_durable(fs: &MemFs, path: &str, data: &[u8]) {
        let path = Path::new(path);
        let mut w = fs.create(path).unwrap();
        w.append(data).unwrap();
        w.sync().unwrap();
        fs.sync_dir(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn crash_keeps_synced_prefix_and_drops_the_rest() {
        let fs = fs_with_db();
        let path = Path::new("/db/000001.log");
        let mut w = fs.create(path).unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        w.append(b"synced").unwrap();
        w.sync().unwrap();
        w.append(b"-lost").unwrap();
        // Without a power loss (a process crash) every appended byte is there.
        assert_eq!(fs.read_all(path).unwrap(), b"synced-lost");
        fs.crash();
        assert_eq!(fs.read_all(path).unwrap(), b"synced");
        assert_eq!(fs.file_len(path), Some(6));
    }

    #[test]
    fn synced_file_in_unsynced_directory_vanishes() {
        let fs = fs_with_db();
        let path = Path::new("/db/000002.sst");
        let mut w = fs.create(path).unwrap();
        w.append(b"table").unwrap();
        w.sync().unwrap();
        fs.crash();
        assert!(!fs.exists(path).unwrap());
        assert!(fs.list(Path::new("/db")).unwrap().is_empty());
        assert_eq!(io_kind(&fs.open(path).err().unwrap()), Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let fs = fs_with_db();
        write_durable(&fs, "/db/CURRENT.tmp", b"MANIFEST-1");
        let (tmp, current) = (Path::new("/db/CURRENT.tmp"), Path::new("/db/CURRENT"));

        fs.rename(tmp, current).unwrap();
        assert!(fs.exists(current).unwrap() && !fs.exists(tmp).unwrap());
        fs.crash();
        assert!(!fs.exists(current).unwrap());
        assert_eq!(fs.read_all(tmp).unwrap(), b"MANIFEST-1");

        fs.rename(tmp, current).unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        fs.crash();
        assert!(!fs.exists(tmp).unwrap());
        assert_eq!(fs.read_all(current).unwrap(), b"MANIFEST-1");
    }

    #[test]
    fn remove_is_undone_by_crash_without_sync_dir() {
        let fs = fs_with_db();
        write_durable(&fs, "/db/000003.sst", b"old");
        let path = Path::new("/db/000003.sst");
        fs.remove(path).unwrap();
        assert!(!fs.exists(path).unwrap());
        fs.crash();
        assert_eq!(fs.read_all(path).unwrap(), b"old");

        fs.remove(path).unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        fs.crash();
        assert!(!fs.exists(path).unwrap());
    }

    #[test]
    fn handles_from_before_a_crash_are_dead() {
        let fs = fs_with_db();
        write_durable(&fs, "/db/a", b"abc");
        let path = Path::new("/db/a");
        let mut w = fs.create(Path::new("/db/b")).unwrap();
        let r = fs.open(path).unwrap();
        fs.crash();
        assert!(w.append(b"x").is_err());
        assert!(w.sync().is_err());
        let mut buf = [0u8; 3];
        assert!(r.read_exact_at(0, &mut buf).is_err());
        // Fresh handles work.
        fs.open(path).unwrap().read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn reader_sees_length_at_open() {
        let fs = fs_with_db();
        let path = Path::new("/db/log");
        let mut w = fs.create(path).unwrap();
        w.append(b"1234").unwrap();
        let r = fs.open(path).unwrap();
        w.append(b"5678").unwrap();
        assert_eq!(r.len(), 4);
        let mut buf = [0u8; 4];
        r.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"1234");
        let err = r.read_exact_at(2, &mut buf).unwrap_err();
        assert_eq!(io_kind(&err), Some(io::ErrorKind::UnexpectedEof));
        assert_eq!(fs.open(path).unwrap().len(), 8);
    }

    #[test]
    fn flip_bit_and_truncate_corrupt_live_bytes() {
        let fs = fs_with_db();
        write_durable(&fs, "/db/x", &[0u8, 0, 0]);
        let path = Path::new("/db/x");
        fs.flip_bit(path, 1, 3).unwrap();
        assert_eq!(fs.read_all(path).unwrap(), [0, 8, 0]);
        assert!(fs.flip_bit(path, 3, 0).is_err());
        assert!(fs.flip_bit(path, 0, 8).is_err());
        fs.truncate(path, 2).unwrap();
        assert_eq!(fs.file_len(path), Some(2));
        fs.crash();
        assert_eq!(fs.read_all(path).unwrap(), [0, 8]);
        assert_eq!(fs.file_len(Path::new("/db/missing")), None);
    }

    #[test]
    fn namespace_errors_and_listing() {
        let fs = fs_with_db();
        let err = fs.create(Path::new("/nodir/f")).err().unwrap();
        assert_eq!(io_kind(&err), Some(io::ErrorKind::NotFound));
        assert!(fs.rename(Path::new("/db/none"), Path::new("/db/x")).is_err());
        assert!(fs.remove(Path::new("/db/none")).is_err());
        fs.create_dir_all(Path::new("/db/sub")).unwrap();
        drop(fs.create(Path::new("/db/f")).unwrap());
        drop(fs.create(Path::new("/db/sub/g")).unwrap());
        let mut names = fs.list(Path::new("/db")).unwrap();
        names.sort();
        assert_eq!(names, ["f", "sub"]);
        assert!(fs.exists(Path::new("/db/./sub//g")).unwrap());
    }

    #[test]
    fn lock_conflicts_and_crash_releases_it() {
        let fs = fs_with_db();
        let path = Path::new("/db/LOCK");
        let first = fs.lock(path).unwrap();
        assert!(matches!(fs.lock(path), Err(Error::Locked(p)) if p == path));
        drop(first);
        let stale = fs.lock(path).unwrap();
        fs.crash();
        let fresh = fs.lock(path).unwrap();
        // The guard from before the crash must not release the lock taken after it.
        drop(stale);
        assert!(matches!(fs.lock(path), Err(Error::Locked(_))));
        drop(fresh);
        let _again = fs.lock(path).unwrap();
    }
}
