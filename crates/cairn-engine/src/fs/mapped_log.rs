//! [`MappedLogFile`]: the write-ahead log's appending handle on local files. An append is a copy into a
//! shared memory mapping of the file instead of a `write` system call per commit: bytes copied into a
//! shared file mapping are in the kernel's page cache as soon as the copy ends, so they survive a crash
//! of the process exactly as written bytes do (the durability contract of
//! [`WritableFile::append`](super::WritableFile::append)), at the cost of a memory copy instead of a
//! system call (~1.5 µs per commit here, half of a one-writer commit). `sync` is `fdatasync`, which
//! writes back pages dirtied through the mapping like any others.
//!
//! The file grows a window at a time: the next [`WINDOW_BYTES`] are first written as zeros with a
//! normal `write` (so a full disk is an error there, never a `SIGBUS` on a page fault later) and then
//! mapped. The bytes after the last record are therefore zeros, which the log reader takes as a clean
//! end (docs/format.md, "Record framing"); dropping the handle truncates the file to what was appended.

use crate::error::{Error, Result};
use crate::fs::WritableFile;
use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes the file grows by, and the size of one mapping.
pub(crate) const WINDOW_BYTES: u64 = 1 << 20;
/// Zeros written per `write` call while growing the file.
const ZERO_CHUNK: usize = 64 << 10;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// An appending handle over windows of a shared file mapping.
pub(crate) struct MappedLogFile {
    file: File,
    path: PathBuf,
    // INVARIANT: `map` covers file bytes `window_start..window_start + WINDOW_BYTES`, all of which exist
    // in the file (written as zeros before mapping); `len - window_start <= WINDOW_BYTES` when mapped.
    map: Option<MmapMut>,
    window_start: u64,
    /// Bytes appended (the log's logical length; the file may be longer, zero-filled).
    len: u64,
}

impl MappedLogFile {
    /// Wraps `file`, which was just created empty (truncated) for reading and writing.
    pub(crate) fn new(file: File, path: &Path) -> MappedLogFile {
        MappedLogFile { file, path: path.to_path_buf(), map: None, window_start: 0, len: 0 }
    }

    /// Grows the file by one window of zeros starting at `len` and maps it (the caller has taken the
    /// old mapping out; its pages stay dirty in the page cache, only the mapping goes).
    fn map_next_window(&mut self) -> Result<MmapMut> {
        let start = self.len;
        let mut offset = start;
        while offset < start + WINDOW_BYTES {
            self.file.write_all_at(&ZEROS, offset).map_err(|e| Error::io(&self.path, e))?;
            offset += ZERO_CHUNK as u64;
        }
        let map = map_window(&self.file, start).map_err(|e| Error::io(&self.path, e))?;
        self.window_start = start;
        Ok(map)
    }
}

/// Maps `WINDOW_BYTES` of `file` from `offset`, shared and writable.
#[allow(unsafe_code)]
fn map_window(file: &File, offset: u64) -> std::io::Result<MmapMut> {
    // SAFETY: `MmapMut` is unsound only if the mapped bytes change underneath it or the file shrinks
    // below the mapping (the access then faults). The file is a WAL this handle created and alone
    // writes; the Db holding it holds the directory's lock, so no other cairn process opens it, and
    // nothing in this process truncates it while mapped (`Drop` unmaps before truncating). The window's
    // bytes were written (as zeros) before this call, so the whole mapping lies inside the file.
    unsafe { MmapOptions::new().offset(offset).len(WINDOW_BYTES as usize).map_mut(file) }
}

impl WritableFile for MappedLogFile {
    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let mut map = match self.map.take() {
                Some(map) if self.len - self.window_start < WINDOW_BYTES => map,
                full_or_none => {
                    drop(full_or_none);
                    self.map_next_window()?
                }
            };
            let used = (self.len - self.window_start) as usize;
            let n = (map.len() - used).min(data.len());
            map[used..used + n].copy_from_slice(&data[..n]);
            self.map = Some(map);
            self.len += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        // fdatasync writes back every dirty page of the file, including those dirtied through mappings
        // (current or already unmapped windows), and the file's size.
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for MappedLogFile {
    fn drop(&mut self) {
        self.map = None;
        // Best effort: the zeros past `len` read as a clean end of the log anyway.
        let _ = self.file.set_len(self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, StdFs};

    fn mapped(path: &Path) -> MappedLogFile {
        MappedLogFile::new(crate::fs::std_fs::create_truncated(path).unwrap(), path)
    }
    use crate::log::{LogWriter, read_log};

    #[test]
    fn appends_cross_windows_and_read_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let path = tmp.path().join("000001.log");
        let mut w = mapped(&path);
        let mut expected = Vec::new();
        // Small appends, one that straddles a window boundary, and one larger than two windows.
        for i in 0..1000u32 {
            let chunk = vec![(i % 251) as u8 + 1; 1 + (i as usize * 37) % 300];
            w.append(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        let big: Vec<u8> = (0..(2 * WINDOW_BYTES as usize + 12_345)).map(|i| (i % 253) as u8 + 1).collect();
        w.append(&big).unwrap();
        expected.extend_from_slice(&big);
        w.append(b"tail").unwrap();
        expected.extend_from_slice(b"tail");
        w.sync().unwrap();
        assert_eq!(w.len(), expected.len() as u64);

        // While open, the file holds the bytes and then zeros up to the end of the mapped window.
        let live = fs.read_all(&path).unwrap();
        assert!(live.len() as u64 >= expected.len() as u64);
        assert_eq!(&live[..expected.len()], &expected[..]);
        assert!(live[expected.len()..].iter().all(|b| *b == 0));

        drop(w);
        assert_eq!(fs.read_all(&path).unwrap(), expected, "dropping truncates to what was appended");
    }

    #[test]
    fn log_records_read_back_with_zero_tail_while_open() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let path = tmp.path().join("000002.log");
        let mut w = mapped(&path);
        for i in 0..5000u32 {
            let mut framed = Vec::new();
            LogWriter::encode_record(&mut framed, format!("record {i}").as_bytes());
            w.append(&framed).unwrap();
        }
        // Not dropped: this is what a killed process leaves (appended bytes, then zeros).
        let contents = read_log(&fs, &path).unwrap();
        assert_eq!(contents.records.len(), 5000);
        assert_eq!(contents.payloads().nth(4321).unwrap(), b"record 4321");
        drop(w);
        assert_eq!(read_log(&fs, &path).unwrap().records.len(), 5000);
    }
}
