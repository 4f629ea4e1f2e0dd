//! Appends blocks with their trailers to a table file and tracks the write offset.

use super::compression::Compression;
use super::format::{BLOCK_TRAILER_BYTES, BlockHandle, MAX_BLOCK_BYTES};
use crate::coding;
use crate::error::{Error, Result};
use crate::fs::WritableFile;
use std::path::{Path, PathBuf};

/// Writes `stored block bytes ++ type byte ++ masked crc(stored bytes ++ type byte)`.
pub struct BlockWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    // INVARIANT: bytes appended to `file` by this writer.
    offset: u64,
    scratch: Vec<u8>,
}

impl BlockWriter {
    /// A writer appending to an empty `file`.
    pub fn new(file: Box<dyn WritableFile>, path: PathBuf) -> BlockWriter {
        BlockWriter { offset: file.len(), file, path, scratch: Vec::new() }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one block, compressed with `compression` if that saves at least 1/8 of its bytes.
    pub fn write_block(&mut self, raw: &[u8], compression: Compression) -> Result<BlockHandle> {
        if raw.len() > MAX_BLOCK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "block of {} bytes exceeds the {MAX_BLOCK_BYTES}-byte limit in {}",
                raw.len(),
                self.path.display()
            )));
        }
        if !compression.is_supported() {
            return Err(Error::InvalidArgument(format!(
                "compression {compression:?} is not compiled into this build (enable the `zstd` feature)"
            )));
        }
        let compressed =
            compression.compress(raw, &mut self.scratch) && self.scratch.len() <= raw.len() - raw.len() / 8;
        let (stored, kind) =
            if compressed { (&self.scratch[..], compression) } else { (raw, Compression::None) };
        let handle = BlockHandle { offset: self.offset, size: stored.len() as u64 };
        let type_byte = kind.to_u8();
        let crc = coding::masked_crc2(stored, &[type_byte]);
        let mut trailer = [0u8; BLOCK_TRAILER_BYTES];
        trailer[0] = type_byte;
        trailer[1..].copy_from_slice(&crc.to_le_bytes());
        self.file.append(stored)?;
        self.file.append(&trailer)?;
        self.offset += (stored.len() + BLOCK_TRAILER_BYTES) as u64;
        Ok(handle)
    }

    /// Appends raw bytes (the footer).
    pub fn append_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.append(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything written durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync()
    }
}
