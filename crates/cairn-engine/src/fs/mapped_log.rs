//! [`MappedLogFile`]: the write-ahead log's appending handle on local files. An append is a copy into a
//! shared memory mapping of the file instead of a `write` system call per commit: bytes copied into a
//! shared file mapping are in the kernel's page cache as soon as they are stored, so they survive a
//! crash of the process exactly as written bytes do (the durability contract of
//! [`WritableFile::append`](super::WritableFile::append)), at the cost of a memory copy instead of a
//! system call (~1.5 µs per commit here, half of a one-writer commit). `sync` is `fdatasync`, which
//! writes back pages dirtied through the mapping like any others.
//!
//! **Store order.** A `write` call is all-or-nothing against a process kill; a copy is not, and `memcpy`
//! does not store front to back. So the handle takes whole framed records (`crate::log`) and stores each
//! in a fixed order, with compiler fences between the steps: the record's length, then its payload
//! checksum and payload, then the length's checksum. Records go one after another. A process killed at
//! any instruction therefore leaves the records before the current one whole, the current one with a
//! length whose checksum is missing or partly stored, and zeros after it. The log reader takes exactly
//! that as a torn tail (docs/format.md, "Log framing"): a complete record is always the one the writer
//! finished, and any other damage is still `Corruption`.
//!
//! **Space.** One mapping from offset 0 covers the file (it is mapped again, twice as large, when
//! outgrown; a record never spans two mappings). The file grows [`GROW_BYTES`] at a time, first written
//! as zeros with a normal `write` (a full disk is an error there, never a `SIGBUS` on a page fault
//! later); only bytes inside the file are ever touched. The bytes after the last record are therefore
//! zeros, which the reader takes as a clean end; dropping the handle truncates the file to its records.

use crate::error::{Error, Result};
use crate::fs::WritableFile;
use crate::log::HEADER_BYTES;
use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};

/// Bytes the file grows by at a time.
pub(crate) const GROW_BYTES: u64 = 1 << 20;
/// The first mapping's size (address space only; the file is much shorter at first).
const FIRST_MAP_BYTES: u64 = 64 << 20;
/// Zeros written per `write` call while growing the file.
const ZERO_CHUNK: usize = 64 << 10;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// An appending handle over a shared mapping of the file.
pub(crate) struct MappedLogFile {
    file: File,
    path: PathBuf,
    // INVARIANT: `map`, when present, maps file offsets `0..map.len()`; `len <= file_len` and every
    // byte the handle touches lies below `file_len`, which the file holds (zeros past `len`).
    map: Option<MmapMut>,
    /// The file's length.
    file_len: u64,
    /// Bytes appended (the log's logical length).
    len: u64,
}

impl MappedLogFile {
    /// Wraps `file`, which was just created empty (truncated) for reading and writing.
    pub(crate) fn new(file: File, path: &Path) -> MappedLogFile {
        MappedLogFile { file, path: path.to_path_buf(), map: None, file_len: 0, len: 0 }
    }

    /// Makes `n` bytes after `len` writable through the mapping: grows the file with zeros and maps it
    /// again, larger, when needed. Returns the mapping.
    fn reserve(&mut self, n: usize) -> Result<&mut MmapMut> {
        let end = self.len + n as u64;
        if self.file_len < end {
            let target = end.next_multiple_of(GROW_BYTES);
            while self.file_len < target {
                self.file.write_all_at(&ZEROS, self.file_len).map_err(|e| Error::io(&self.path, e))?;
                self.file_len += ZERO_CHUNK as u64;
            }
        }
        let mapped = self.map.as_ref().map_or(0, |m| m.len() as u64);
        if mapped < end {
            // Unmap first: the dirty pages stay in the page cache, only the mapping goes.
            self.map = None;
            let size = (mapped * 2).max(FIRST_MAP_BYTES).max(end.next_multiple_of(GROW_BYTES));
            let size = usize::try_from(size).map_err(|_| Error::io(&self.path, too_large()))?;
            self.map = Some(map_file(&self.file, size).map_err(|e| Error::io(&self.path, e))?);
        }
        self.map.as_mut().ok_or_else(|| Error::io(&self.path, too_large()))
    }
}

fn too_large() -> std::io::Error {
    std::io::Error::other("write-ahead log larger than the address space")
}

/// Maps `size` bytes of `file` from offset 0, shared and writable.
#[allow(unsafe_code)]
fn map_file(file: &File, size: usize) -> std::io::Result<MmapMut> {
    // SAFETY: `MmapMut` is unsound only if the mapped bytes change underneath it or an access reaches
    // past the file's end (it faults). The file is a WAL this handle created and alone writes; the Db
    // holding it holds the directory's lock, so no other cairn process opens it, and nothing in this
    // process truncates it while mapped (`Drop` unmaps before truncating). The mapping may extend past
    // the file's end, but the handle touches only bytes below `file_len`, which the file holds.
    unsafe { MmapOptions::new().len(size).map_mut(file) }
}

/// Stores one framed record into `dst` (the same length, zeros before): length, then payload checksum
/// and payload, then the length's checksum; the fences keep the compiler from reordering the steps, and
/// a killed thread leaves a prefix of its stores in program order.
fn store_record(dst: &mut [u8], record: &[u8]) {
    dst[..4].copy_from_slice(&record[..4]);
    compiler_fence(Ordering::SeqCst);
    dst[8..].copy_from_slice(&record[8..]);
    compiler_fence(Ordering::SeqCst);
    dst[4..8].copy_from_slice(&record[4..8]);
}

impl WritableFile for MappedLogFile {
    /// Appends whole framed records; anything else is refused (the WAL writes only records).
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let n =
                rest.get(..4).map(|l| HEADER_BYTES + u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
            let Some(record) = n.and_then(|n| rest.get(..n)) else {
                return Err(Error::io(
                    &self.path,
                    std::io::Error::other("a mapped log takes whole framed records only"),
                ));
            };
            let at = self.len as usize;
            let map = self.reserve(record.len())?;
            store_record(&mut map[at..at + record.len()], record);
            self.len += record.len() as u64;
            rest = &rest[record.len()..];
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        // fdatasync writes back every dirty page of the file, including those dirtied through mappings
        // (current or already unmapped), and the file's size.
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
    use crate::log::{LogWriter, parse_log, read_log};

    fn mapped(path: &Path) -> MappedLogFile {
        MappedLogFile::new(crate::fs::std_fs::create_truncated(path).unwrap(), path)
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut framed = Vec::new();
        LogWriter::encode_record(&mut framed, payload);
        framed
    }

    #[test]
    fn records_read_back_exactly_across_growth_and_remapping() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let path = tmp.path().join("000001.log");
        let mut w = mapped(&path);
        let mut expected = Vec::new();
        // Small appends of one or several records, then one record larger than the first mapping.
        for i in 0..1000u32 {
            let mut group = record(&vec![(i % 251) as u8 + 1; 1 + (i as usize * 37) % 300]);
            if i % 3 == 0 {
                group.extend_from_slice(&record(format!("second {i}").as_bytes()));
            }
            w.append(&group).unwrap();
            expected.extend_from_slice(&group);
        }
        let big: Vec<u8> = (0..(FIRST_MAP_BYTES as usize + 12_345)).map(|i| (i % 253) as u8 + 1).collect();
        let big = record(&big);
        w.append(&big).unwrap();
        expected.extend_from_slice(&big);
        let tail = record(b"tail");
        w.append(&tail).unwrap();
        expected.extend_from_slice(&tail);
        w.sync().unwrap();
        assert_eq!(w.len(), expected.len() as u64);

        // While open (what a killed process leaves), the file holds the records, then zeros.
        let live = fs.read_all(&path).unwrap();
        assert!(live.len() > expected.len());
        assert_eq!(&live[..expected.len()], &expected[..]);
        assert!(live[expected.len()..].iter().all(|b| *b == 0));
        assert_eq!(read_log(&fs, &path).unwrap().records.len(), 1000 + 334 + 2);

        drop(w);
        assert_eq!(fs.read_all(&path).unwrap(), expected, "dropping truncates to what was appended");
    }

    #[test]
    fn anything_but_whole_records_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = mapped(&tmp.path().join("000002.log"));
        let whole = record(b"payload");
        assert!(w.append(&whole[..whole.len() - 1]).is_err());
        assert!(w.append(&whole[..3]).is_err());
        assert_eq!(w.len(), 0);
        w.append(&whole).unwrap();
        assert_eq!(w.len(), whole.len() as u64);
    }

    /// Every state `store_record`'s order can leave when the process dies between two stores (the
    /// body's bytes in any order, as `memcpy` stores them) reads back as exactly the records before the
    /// one cut short: never `Corruption`, never a record that was not whole.
    #[test]
    fn a_record_cut_short_at_any_store_is_a_clean_end() {
        let seed = 0x5eed_u64;
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let payloads: Vec<Vec<u8>> = (0..6u8)
            .map(|i| (0..(1 + i as usize * 29)).map(|j| (j as u8).wrapping_mul(7) ^ i).collect())
            .collect();
        let records: Vec<Vec<u8>> = payloads.iter().map(|p| record(p)).collect();
        let path = Path::new("/000003.log");
        for (k, rec) in records.iter().enumerate() {
            let before: Vec<u8> = records[..k].concat();
            for trial in 0..200 {
                // The length is stored; then a random subset of the checksum and payload.
                let mut cut = vec![0u8; rec.len()];
                cut[..4].copy_from_slice(&rec[..4]);
                if trial > 0 {
                    for i in 8..rec.len() {
                        if next() % 2 == 0 {
                            cut[i] = rec[i];
                        }
                    }
                }
                for stored in [&cut[..4], &cut[..]] {
                    let mut image = before.clone();
                    image.extend_from_slice(stored);
                    image.resize(image.len() + (rec.len() - stored.len()) + 64, 0);
                    let parsed = parse_log(image, path)
                        .unwrap_or_else(|e| panic!("seed {seed:#x} record {k} trial {trial}: {e}"));
                    assert_eq!(parsed.records.len(), k, "seed {seed:#x} record {k} trial {trial}");
                }
            }
            // Nothing of it stored yet, and all of it.
            let mut image = before.clone();
            image.resize(image.len() + 64, 0);
            assert_eq!(parse_log(image, path).unwrap().records.len(), k);
            let mut image = records[..=k].concat();
            image.resize(image.len() + 64, 0);
            assert_eq!(parse_log(image, path).unwrap().records.len(), k + 1);
        }
    }
}
