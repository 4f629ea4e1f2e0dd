//! [`StdFs`]: the real file system. Appends go straight to the OS with no userspace buffer, so once
//! `append` returns the bytes survive a process crash (logs: copied into a shared mapping, see
//! `mapped_log`); `sync` is `fdatasync`; reads are positioned
//! (`pread`) so one open file serves many threads without a shared cursor.

use super::mapped_log::MappedLogFile;
use super::{FileLock, FileSystem, RandomAccessFile, WritableFile};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Local files through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl StdFs {
    /// The real file system.
    pub fn new() -> StdFs {
        StdFs
    }
}

/// An appending handle. `len` counts bytes appended through it, which is the file's length because
/// `create` truncated it and nothing else writes to it.
struct StdWritableFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl WritableFile for StdWritableFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(|e| Error::io(&self.path, e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// A positioned reader; the length is captured at open because engine files are immutable once read.
struct StdRandomAccessFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl RandomAccessFile for StdRandomAccessFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io(&self.path, e))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Keeps the locked file open: the OS releases the lock when the descriptor closes.
struct StdFileLock {
    _file: File,
}

impl FileLock for StdFileLock {}

/// Creates (or truncates) `path`, open for reading and writing (a mapping needs both).
pub(super) fn create_truncated(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

impl FileSystem for StdFs {
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        let file = create_truncated(path)?;
        Ok(Box::new(StdWritableFile { file, path: path.to_path_buf(), len: 0 }))
    }

    fn create_log(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        Ok(Box::new(MappedLogFile::new(create_truncated(path)?, path)))
    }

    fn open(&self, path: &Path) -> Result<Arc<dyn RandomAccessFile>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(Arc::new(StdRandomAccessFile { file, path: path.to_path_buf(), len }))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| Error::io(from, e))
    }

    fn remove(&self, path: &Path) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))
    }

    fn identity(&self) -> usize {
        // Every StdFs sees the one operating-system namespace.
        0
    }

    fn link(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::hard_link(from, to).map_err(|e| Error::io(to, e))
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        path.try_exists().map_err(|e| Error::io(path, e))
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn FileLock>> {
        // No truncation: the lock file's content is irrelevant and another holder may be using it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdFileLock { _file: file })),
            Err(TryLockError::WouldBlock) => Err(Error::Locked(path.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    fn io_kind(e: &Error) -> Option<ErrorKind> {
        match e {
            Error::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    #[test]
    fn round_trip_list_rename_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let dir = tmp.path().join("db");
        fs.create_dir_all(&dir).unwrap();
        let a = dir.join("a.tmp");

        let mut w = fs.create(&a).unwrap();
        assert!(w.is_empty());
        w.append(b"hello ").unwrap();
        w.append(b"world").unwrap();
        w.sync().unwrap();
        assert_eq!(w.len(), 11);
        drop(w);

        let r = fs.open(&a).unwrap();
        assert_eq!(r.len(), 11);
        let mut buf = [0u8; 5];
        r.read_exact_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        let err = r.read_exact_at(8, &mut buf).unwrap_err();
        assert_eq!(io_kind(&err), Some(ErrorKind::UnexpectedEof));
        assert!(err.to_string().contains("a.tmp"), "{err}");

        let b = dir.join("b.sst");
        fs.rename(&a, &b).unwrap();
        fs.sync_dir(&dir).unwrap();
        assert!(!fs.exists(&a).unwrap());
        assert_eq!(fs.read_all(&b).unwrap(), b"hello world");
        assert_eq!(fs.list(&dir).unwrap(), vec!["b.sst".to_string()]);

        // `create` truncates an existing file.
        let w = fs.create(&b).unwrap();
        drop(w);
        assert_eq!(fs.read_all(&b).unwrap(), b"");

        fs.remove(&b).unwrap();
        assert!(fs.list(&dir).unwrap().is_empty());
        let err = fs.open(&b).err().unwrap();
        assert_eq!(io_kind(&err), Some(ErrorKind::NotFound));
        assert!(err.to_string().contains("b.sst"), "{err}");
    }

    #[test]
    fn second_lock_conflicts_until_first_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let path = tmp.path().join("LOCK");
        let guard = fs.lock(&path).unwrap();
        match fs.lock(&path) {
            Err(Error::Locked(p)) => assert_eq!(p, path),
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        drop(guard);
        let _again = fs.lock(&path).unwrap();
    }
}
