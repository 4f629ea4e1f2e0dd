//! Record framing shared by the WAL and the manifest.
//!
//! ```text
//! record = u32 LE payload length | u32 LE masked crc32c(length bytes) | u32 LE masked crc32c(payload) | payload
//! ```
//!
//! The length has its own checksum so a damaged length is told apart from a torn tail. Recovery rules
//! (see docs/format.md): a header or payload that runs past the end of the file is a torn tail from a
//! crash and ends the log; an all-zero header followed only by zeros ends the log (a zero-filled tail after
//! a power loss, or the unused part of a mapped WAL); a record whose length checksum is still zero and
//! after which only zeros follow is one the mapped WAL was killed in the middle of storing, and ends the
//! log too (`fs/mapped_log.rs` stores the length checksum last); anything else that fails a checksum is
//! `Corruption` naming the file: records are only ever appended, so a complete record that is wrong was
//! damaged after it was written, and dropping it (and everything after it) would silently lose
//! acknowledged writes.

use crate::coding::masked_crc;
use crate::error::{Error, Result};
use crate::fs::{FileSystem, WritableFile};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 12;
/// The largest record payload a log may hold. Below 535,274,309, the one 4-byte length whose masked
/// checksum is zero, so a length checksum not yet stored (zero) never passes for a right one.
pub const MAX_RECORD_BYTES: usize = 500 << 20;

/// Appends framed records to a file.
pub struct LogWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
}

impl LogWriter {
    /// Creates a new, empty log at `path`.
    pub fn create(fs: &dyn FileSystem, path: &Path) -> Result<LogWriter> {
        Ok(LogWriter { file: fs.create(path)?, path: path.to_path_buf() })
    }

    /// Creates a new, empty write-ahead log at `path` ([`FileSystem::create_log`]).
    pub fn create_wal(fs: &dyn FileSystem, path: &Path) -> Result<LogWriter> {
        Ok(LogWriter { file: fs.create_log(path)?, path: path.to_path_buf() })
    }

    /// Frames `payload` into `out` (so several records can go to the OS in one append).
    pub fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
        debug_assert!(payload.len() <= MAX_RECORD_BYTES);
        let len = (payload.len() as u32).to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc(&len).to_le_bytes());
        out.extend_from_slice(&masked_crc(payload).to_le_bytes());
        out.extend_from_slice(payload);
    }

    /// Appends already framed bytes.
    pub fn append_framed(&mut self, framed: &[u8]) -> Result<()> {
        self.file.append(framed)
    }

    /// Frames and appends one record.
    pub fn add_record(&mut self, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + HEADER_BYTES);
        LogWriter::encode_record(&mut buf, payload);
        self.file.append(&buf)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// True if nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The records of a whole log file.
#[derive(Debug)]
pub struct LogContents {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Payload ranges inside `data`, in order.
    pub records: Vec<Range<usize>>,
}

impl LogContents {
    /// Payloads in order.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|r| &self.data[r.clone()])
    }
}

/// Reads and verifies a whole log file.
pub fn read_log(fs: &dyn FileSystem, path: &Path) -> Result<LogContents> {
    let data = fs.read_all(path)?;
    parse_log(data, path)
}

/// Splits log bytes into records following the recovery rules in the module doc.
pub fn parse_log(data: Vec<u8>, path: &Path) -> Result<LogContents> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        // A header cut short is a torn tail: the log ends before it.
        let Some(header) = data.get(pos..pos + HEADER_BYTES) else { break };
        if header.iter().all(|b| *b == 0) {
            if data[pos..].iter().any(|b| *b != 0) {
                // Zeros followed by data is not a zero-filled tail.
                return Err(Error::corruption(
                    path,
                    format!("zeroed record header at offset {pos} before more data"),
                ));
            }
            break;
        }
        let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let len = word(0) as usize;
        if masked_crc(&header[..4]) != word(4) {
            // A length checksum not stored yet, and no later record begun: an append cut short.
            let end = (pos + HEADER_BYTES).saturating_add(len).min(data.len());
            if word(4) == 0 && data[end..].iter().all(|b| *b == 0) {
                break;
            }
            return Err(Error::corruption(path, format!("record length checksum mismatch at offset {pos}")));
        }
        let crc = word(8);
        let start = pos + HEADER_BYTES;
        if len > MAX_RECORD_BYTES {
            return Err(Error::corruption(path, format!("record at offset {pos} claims {len} bytes")));
        }
        // A payload cut short is a torn tail too.
        let Some(payload) = data.get(start..start + len) else { break };
        if masked_crc(payload) != crc {
            return Err(Error::corruption(path, format!("record checksum mismatch at offset {pos}")));
        }
        records.push(start..start + len);
        pos = start + len;
    }
    Ok(LogContents { data, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            LogWriter::encode_record(&mut out, p);
        }
        out
    }

    #[test]
    fn torn_tails_end_the_log_and_flips_are_corruption() {
        let data = framed(&[b"one", b"two", b"three"]);
        let path = Path::new("/x.log");
        let all = parse_log(data.clone(), path).unwrap();
        assert_eq!(all.payloads().collect::<Vec<_>>(), vec![&b"one"[..], b"two", b"three"]);
        for cut in 0..data.len() {
            let c = parse_log(data[..cut].to_vec(), path).unwrap();
            // Exactly the records that were wholly written survive.
            assert_eq!(c.records.len(), all.records.iter().filter(|r| r.end <= cut).count());
        }
        for byte in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[byte] ^= 1 << bit;
                let err = parse_log(d, path).expect_err("a flipped bit must not go unnoticed");
                assert!(err.is_corruption());
            }
        }
    }

    #[test]
    fn a_record_without_its_length_checksum_ends_the_log_only_at_the_end() {
        let path = Path::new("/x.log");
        let mut data = framed(&[b"one", b"two"]);
        let last = data.len() - (HEADER_BYTES + 3);
        data[last + 4..last + 8].fill(0);
        data.extend_from_slice(&[0u8; 32]);
        assert_eq!(parse_log(data.clone(), path).unwrap().records.len(), 1);
        // With a record after it, it is damage.
        data.truncate(last + HEADER_BYTES + 3);
        LogWriter::encode_record(&mut data, b"three");
        assert!(parse_log(data, path).unwrap_err().is_corruption());
    }

    #[test]
    fn no_valid_length_has_a_zero_length_checksum() {
        // CRC-32C of a 4-byte input is affine in its bits; if its linear part has full rank it is a
        // bijection, and so is the masking (a rotation and an addition). Then exactly one 4-byte length
        // has a masked checksum of zero, and it lies above every valid length.
        let raw = |x: u32| crc32c::crc32c(&x.to_le_bytes());
        let mut basis = [0u32; 32];
        for i in 0..32 {
            let mut v = raw(1 << i) ^ raw(0);
            while v != 0 {
                let top = 31 - v.leading_zeros() as usize;
                if basis[top] == 0 {
                    basis[top] = v;
                    break;
                }
                v ^= basis[top];
            }
            assert_ne!(v, 0, "the linear part is singular");
        }
        let zero = 535_274_309u32;
        assert_eq!(masked_crc(&zero.to_le_bytes()), 0);
        assert!(zero as usize > MAX_RECORD_BYTES);
    }

    #[test]
    fn zero_filled_tail_is_clean_end() {
        let mut data = framed(&[b"a"]);
        data.extend_from_slice(&[0u8; 64]);
        let c = parse_log(data, Path::new("/x.log")).unwrap();
        assert_eq!(c.records.len(), 1);
    }
}
