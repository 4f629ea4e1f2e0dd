//! [`FaultFs`]: wraps another file system and fails chosen kinds of operation on command, so tests can
//! check how the engine reacts to a failed write, sync, rename and so on.
//!
//! Each [`FaultKind`] has a call counter and at most one rule. A rule lets a number of further calls
//! succeed and then fails either every call (until [`FaultController::clear`]) or exactly one. A failed
//! call does not reach the wrapped file system.

use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use crate::error::{Error, Result};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The operations that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `RandomAccessFile::read_exact_at`.
    Read,
    /// `WritableFile::append`.
    Write,
    /// `WritableFile::sync`.
    Sync,
    /// `FileSystem::sync_dir`.
    SyncDir,
    /// `FileSystem::create` and `FileSystem::link`.
    Create,
    /// `FileSystem::rename`.
    Rename,
    /// `FileSystem::remove` and `FileSystem::remove_dir`.
    Remove,
    /// `FileSystem::open`.
    Open,
}

impl FaultKind {
    const COUNT: usize = 8;
    const ALL: [FaultKind; FaultKind::COUNT] = [
        FaultKind::Read,
        FaultKind::Write,
        FaultKind::Sync,
        FaultKind::SyncDir,
        FaultKind::Create,
        FaultKind::Rename,
        FaultKind::Remove,
        FaultKind::Open,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether a call of this kind changes what the disk holds.
    fn changes_disk(self) -> bool {
        !matches!(self, FaultKind::Read | FaultKind::Open)
    }
}

/// When a kind starts failing.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Calls still allowed to succeed before the failure.
    successes_left: u64,
    /// Fail one call and drop the rule, rather than failing every call from then on.
    once: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct KindState {
    /// Calls seen, failed ones included.
    calls: u64,
    rule: Option<Rule>,
}

/// Shared switchboard of a [`FaultFs`]: clones control the same file system.
#[derive(Debug, Clone, Default)]
pub struct FaultController {
    kinds: Arc<Mutex<[KindState; FaultKind::COUNT]>>,
    // Held (shared) by every call from its check until the wrapped file system has done it, and
    // (exclusive) by `fail_all`: once that returns, no call that passed its check is still under way.
    gate: Arc<RwLock<()>>,
    // Kinds whose calls wait (before their check) until released: `hold`/`release`.
    held: Arc<(Mutex<[bool; FaultKind::COUNT]>, parking_lot::Condvar)>,
    // Calls that change the disk still allowed before every call fails (`fail_all_after_changes`).
    changes_left: Arc<Mutex<Option<u64>>>,
    // Set once every call fails: `fail_all`, or `fail_all_after_changes` ran out.
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultController {
    /// The next `n` calls of `kind` succeed; every later one fails until [`FaultController::clear`].
    pub fn fail_after(&self, kind: FaultKind, n: u64) {
        self.kinds.lock()[kind.index()].rule = Some(Rule { successes_left: n, once: false });
    }

    /// The next `n` calls of `kind` succeed, the one after fails, and later ones succeed again.
    pub fn fail_once_after(&self, kind: FaultKind, n: u64) {
        self.kinds.lock()[kind.index()].rule = Some(Rule { successes_left: n, once: true });
    }

    /// Every call of every kind fails from now on (until [`FaultController::clear`]): the process
    /// behind this file system is dead, as after `kill -9`.
    pub fn fail_all(&self) {
        // A call that passed its check just before must not reach the wrapped file system after the
        // caller goes on (to `MemFs::crash`, say): wait for the calls under way.
        let _no_calls = self.gate.write();
        for kind in FaultKind::ALL {
            self.fail_after(kind, 0);
        }
        self.dead.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The next `n` calls that change the disk (writes, syncs, creates, links, renames, removes)
    /// succeed; from the one after, every call of every kind fails: the process dies at exactly that
    /// step. [`FaultController::is_dead`] tells when it has.
    pub fn fail_all_after_changes(&self, n: u64) {
        *self.changes_left.lock() = Some(n);
    }

    /// Whether every call fails now ([`FaultController::fail_all`], or
    /// [`FaultController::fail_all_after_changes`] ran out).
    pub fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Calls of `kind` wait from now on until [`FaultController::release`]: a slow or stuck device, to
    /// show what does or does not wait for it.
    pub fn hold(&self, kind: FaultKind) {
        self.held.0.lock()[kind.index()] = true;
    }

    /// Lets the held calls of `kind` go on, and later ones through.
    pub fn release(&self, kind: FaultKind) {
        self.held.0.lock()[kind.index()] = false;
        self.held.1.notify_all();
    }

    /// Removes every rule; counters keep counting.
    pub fn clear(&self) {
        for kind in self.kinds.lock().iter_mut() {
            kind.rule = None;
        }
        *self.changes_left.lock() = None;
        self.dead.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Calls that change the disk (writes, syncs, creates, links, renames, removes) seen so far.
    pub fn changes(&self) -> u64 {
        let kinds = self.kinds.lock();
        FaultKind::ALL.iter().filter(|k| k.changes_disk()).map(|k| kinds[k.index()].calls).sum()
    }

    /// Calls of `kind` seen so far, failed ones included.
    pub fn count(&self, kind: FaultKind) -> u64 {
        self.kinds.lock()[kind.index()].calls
    }

    /// Counts a call of `kind` on `path` and fails it if a rule says so; the call holds the returned
    /// guard while it runs.
    fn check(&self, kind: FaultKind, path: &Path) -> Result<RwLockReadGuard<'_, ()>> {
        {
            let mut held = self.held.0.lock();
            while held[kind.index()] {
                self.held.1.wait(&mut held);
            }
        }
        let admitted = self.gate.read_recursive();
        let mut kinds = self.kinds.lock();
        if kind.changes_disk() {
            let mut left = self.changes_left.lock();
            match left.as_mut() {
                Some(0) => {
                    *left = None;
                    for state in kinds.iter_mut() {
                        state.rule = Some(Rule { successes_left: 0, once: false });
                    }
                    self.dead.store(true, std::sync::atomic::Ordering::Release);
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        let state = &mut kinds[kind.index()];
        state.calls += 1;
        let Some(rule) = state.rule.as_mut() else { return Ok(admitted) };
        if rule.successes_left > 0 {
            rule.successes_left -= 1;
            return Ok(admitted);
        }
        if rule.once {
            state.rule = None;
        }
        Err(Error::io(path, io::Error::other(format!("injected fault: {kind:?}"))))
    }
}

/// A file system that fails operations when its [`FaultController`] says so.
#[derive(Debug, Clone)]
pub struct FaultFs {
    inner: Arc<dyn FileSystem>,
    ctl: FaultController,
}

impl FaultFs {
    /// Wraps `inner`; nothing fails until a rule is set through [`FaultFs::controller`].
    pub fn new(inner: Arc<dyn FileSystem>) -> FaultFs {
        FaultFs { inner, ctl: FaultController::default() }
    }

    /// The switchboard; keep a clone to inject faults after handing the file system to the engine.
    pub fn controller(&self) -> FaultController {
        self.ctl.clone()
    }
}

struct FaultWritableFile {
    inner: Box<dyn WritableFile>,
    ctl: FaultController,
    path: PathBuf,
}

impl WritableFile for FaultWritableFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Write, &self.path)?;
        self.inner.append(data)
    }

    fn sync(&mut self) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Sync, &self.path)?;
        self.inner.sync()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

struct FaultRandomAccessFile {
    inner: Arc<dyn RandomAccessFile>,
    ctl: FaultController,
    path: PathBuf,
}

impl RandomAccessFile for FaultRandomAccessFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Read, &self.path)?;
        self.inner.read_exact_at(offset, buf)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl FileSystem for FaultFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        let _admitted = self.ctl.check(FaultKind::Create, path)?;
        let inner = self.inner.create(path)?;
        Ok(Box::new(FaultWritableFile { inner, ctl: self.ctl.clone(), path: path.to_path_buf() }))
    }

    fn create_log(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        let _admitted = self.ctl.check(FaultKind::Create, path)?;
        let inner = self.inner.create_log(path)?;
        Ok(Box::new(FaultWritableFile { inner, ctl: self.ctl.clone(), path: path.to_path_buf() }))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn RandomAccessFile>> {
        let _admitted = self.ctl.check(FaultKind::Open, path)?;
        let inner = self.inner.open(path)?;
        Ok(Arc::new(FaultRandomAccessFile { inner, ctl: self.ctl.clone(), path: path.to_path_buf() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Rename, from)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Remove, path)?;
        self.inner.remove(path)
    }

    fn identity(&self) -> usize {
        self.inner.identity()
    }

    fn creates_whole_files(&self) -> bool {
        self.inner.creates_whole_files()
    }

    fn link(&self, from: &Path, to: &Path) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Create, to)?;
        self.inner.link(from, to)
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::Remove, dir)?;
        self.inner.remove_dir(dir)
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        self.inner.exists(path)
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let _admitted = self.ctl.check(FaultKind::SyncDir, dir)?;
        self.inner.sync_dir(dir)
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn FileLock>> {
        self.inner.lock(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    fn setup() -> (FaultFs, FaultController, Box<dyn WritableFile>) {
        let fs = FaultFs::new(Arc::new(MemFs::new()));
        fs.create_dir_all(Path::new("/db")).unwrap();
        let ctl = fs.controller();
        let w = fs.create(Path::new("/db/log")).unwrap();
        (fs, ctl, w)
    }

    fn is_injected(result: Result<()>) -> bool {
        matches!(result, Err(Error::Io { source, .. }) if source.to_string().starts_with("injected fault"))
    }

    #[test]
    fn fail_after_fails_every_call_until_cleared() {
        let (fs, ctl, mut w) = setup();
        ctl.fail_after(FaultKind::Write, 2);
        w.append(b"a").unwrap();
        w.append(b"b").unwrap();
        assert!(is_injected(w.append(b"c")));
        assert!(is_injected(w.append(b"d")));
        // Syncs are unaffected by a write rule; failed appends never reached the inner file.
        w.sync().unwrap();
        assert_eq!(fs.read_all(Path::new("/db/log")).unwrap(), b"ab");
        ctl.clear();
        w.append(b"e").unwrap();
        assert_eq!(ctl.count(FaultKind::Write), 5);
        assert_eq!(ctl.count(FaultKind::Sync), 1);
    }

    #[test]
    fn the_disk_dies_after_exactly_n_changes() {
        let (fs, ctl, mut w) = setup();
        ctl.fail_all_after_changes(2);
        // Reads and opens are not changes.
        fs.open(Path::new("/db/log")).unwrap();
        w.append(b"a").unwrap();
        w.sync().unwrap();
        assert!(!ctl.is_dead());
        // The third change fails, and from then on every call of every kind.
        assert!(is_injected(w.append(b"b")));
        assert!(ctl.is_dead());
        assert!(fs.open(Path::new("/db/log")).is_err());
        assert!(fs.sync_dir(Path::new("/db")).is_err());
        ctl.clear();
        assert!(!ctl.is_dead());
        assert_eq!(fs.read_all(Path::new("/db/log")).unwrap(), b"a");
    }

    #[test]
    fn fail_once_after_fails_exactly_one_call() {
        let (_fs, ctl, mut w) = setup();
        ctl.fail_once_after(FaultKind::Sync, 1);
        w.sync().unwrap();
        assert!(is_injected(w.sync()));
        w.sync().unwrap();
        w.sync().unwrap();
        assert_eq!(ctl.count(FaultKind::Sync), 4);
    }

    #[test]
    fn fail_after_zero_fails_the_next_call_and_names_the_path() {
        let (fs, ctl, _w) = setup();
        ctl.fail_after(FaultKind::SyncDir, 0);
        let err = fs.sync_dir(Path::new("/db")).unwrap_err();
        assert!(err.to_string().contains("/db") && err.to_string().contains("SyncDir"), "{err}");
        ctl.fail_once_after(FaultKind::Read, 0);
        let r = fs.open(Path::new("/db/log")).unwrap();
        assert!(is_injected(r.read_exact_at(0, &mut [])));
        r.read_exact_at(0, &mut []).unwrap();
        assert_eq!(ctl.count(FaultKind::Open), 1);
        assert_eq!(ctl.count(FaultKind::Create), 1);
    }
}
