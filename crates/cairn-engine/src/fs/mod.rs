//! The file-system seam. The engine performs every I/O call through [`FileSystem`]; nothing else in the
//! crate touches `std::fs`. Three implementations:
//! - [`StdFs`]: the real one, positioned reads and plain appends on local files (write-ahead logs append
//!   through a shared memory mapping: `mapped_log`);
//! - [`MemFs`]: in memory, modelling what is durable (synced file bytes, synced directory entries) so a
//!   test can [`MemFs::crash`] and keep only what a power loss would keep;
//! - [`FaultFs`]: wraps another file system and fails chosen operations on command;
//! - `ObjectFs` (cargo feature `s3`): an S3 bucket, for snapshot and meta volumes.
//!
//! Durability contract the engine relies on: `WritableFile::append` hands bytes to the OS (they survive a
//! process crash); `WritableFile::sync` makes the file's bytes durable; a created, renamed or removed name
//! is durable only after `sync_dir` on its parent directory.

mod fault_fs;
mod mapped_log;
mod mem_fs;
#[cfg(feature = "s3")]
mod object_fs;
mod std_fs;

pub use fault_fs::{FaultController, FaultFs, FaultKind};
pub use mem_fs::MemFs;
#[cfg(feature = "s3")]
pub(crate) use object_fs::S3Url;
#[cfg(feature = "s3")]
pub use object_fs::{ObjectFs, PART_BYTES};
pub use std_fs::StdFs;

use crate::error::Result;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

/// A file open for appending. Written bytes are never rewritten in place.
pub trait WritableFile: Send + Sync {
    /// Appends `data` at the end of the file and hands it to the OS.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Makes every appended byte durable (fdatasync).
    fn sync(&mut self) -> Result<()>;
    /// Bytes appended so far (the file's length).
    fn len(&self) -> u64;
    /// True if nothing was appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file open for positioned reads, shareable across threads.
pub trait RandomAccessFile: Send + Sync {
    /// Fills `buf` from `offset`. Reading past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held while a directory is in use; dropping it releases the lock.
pub trait FileLock: Send + Sync {}

/// Everything the engine needs from a file system.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `path` (truncating any existing file) for appending.
    fn create(&self, path: &Path) -> Result<Box<dyn WritableFile>>;
    /// Creates `path` (truncating any existing file) for a log of framed records (the WAL): appended
    /// many times, whole records at a time, read back only by recovery. Same contract as
    /// [`FileSystem::create`], except that an append must be whole framed records (`crate::log`), a
    /// record a crash cut short may be left with its length checksum zero, and the file may hold zeros
    /// after the appended bytes until the handle is dropped (the log reader takes both as a clean end).
    /// Defaults to `create`.
    fn create_log(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        self.create(path)
    }
    /// Opens an existing file for positioned reads.
    fn open(&self, path: &Path) -> Result<Arc<dyn RandomAccessFile>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> Result<()>;
    /// Makes `to` a second name (a hard link) of the existing file `from`: no bytes are copied. The new
    /// name is durable after `sync_dir` on its directory. Fails if `to` exists or if the two paths are on
    /// different devices (callers then copy).
    fn link(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> Result<()>;
    /// Names (not paths) of the entries in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> Result<Vec<String>>;
    /// True if `path` exists.
    fn exists(&self, path: &Path) -> Result<bool>;
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Makes the creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> Result<()>;
    /// Takes an exclusive lock on `path` (creating it), failing with `Error::Locked` if it is held.
    fn lock(&self, path: &Path) -> Result<Box<dyn FileLock>>;
    /// Names the namespace the files live in: two file systems with one identity see the same files, so
    /// a [`FileSystem::link`] can join them. Wrappers return their inner file system's.
    fn identity(&self) -> usize;
    /// True if a created file becomes visible only when synced, and then whole (object stores). A
    /// copy onto such a file system needs no temporary name to never leave a torn file.
    fn creates_whole_files(&self) -> bool {
        false
    }

    /// Reads a whole file.
    fn read_all(&self, path: &Path) -> Result<Vec<u8>> {
        let file = self.open(path)?;
        let len = usize::try_from(file.len()).map_err(|_| {
            crate::Error::corruption(path, format!("file of {} bytes does not fit in memory", file.len()))
        })?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }
}
