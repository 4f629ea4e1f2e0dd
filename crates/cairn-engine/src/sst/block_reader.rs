//! Reads one block from a table file: bounds-checks the handle, verifies the trailer's checksum, then
//! decompresses. The checksum is checked before the type byte is interpreted, so a flipped bit anywhere in
//! a block or its trailer is reported as corruption.

use super::compression::{Compression, DecompressError};
use super::format::{BLOCK_TRAILER_BYTES, BlockHandle, MAX_BLOCK_BYTES};
use crate::coding;
use crate::error::{Error, Result};
use crate::fs::RandomAccessFile;
use std::path::Path;

/// Returns the uncompressed contents of the block at `handle`, which must end (trailer included) by `limit`.
pub fn read_block(
    file: &dyn RandomAccessFile,
    path: &Path,
    handle: BlockHandle,
    limit: u64,
) -> Result<Vec<u8>> {
    let end = handle.end_with_trailer();
    if end.is_none_or(|end| end > limit) || handle.size > MAX_BLOCK_BYTES as u64 {
        return Err(Error::corruption(
            path,
            format!("block handle {}+{} out of range (limit {limit})", handle.offset, handle.size),
        ));
    }
    // Bounded by MAX_BLOCK_BYTES above.
    let size = handle.size as usize;
    // Stored bytes land in a per-thread buffer: a compressed block (the default) then needs only the
    // allocation of its decompressed contents.
    READ_BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        buf.resize(size + BLOCK_TRAILER_BYTES, 0);
        let result = check_and_decode(file, path, handle, buf);
        if buf.capacity() > KEPT_READ_BUFFER_BYTES {
            *buf = Vec::new();
        }
        result
    })
}

/// Largest read buffer a thread keeps between reads; a larger block's buffer is freed after use.
const KEPT_READ_BUFFER_BYTES: usize = 256 * 1024;

thread_local! {
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads the block at `handle` into `buf` (sized to the block plus trailer), checks its checksum and
/// returns its uncompressed contents.
fn check_and_decode(
    file: &dyn RandomAccessFile,
    path: &Path,
    handle: BlockHandle,
    buf: &mut [u8],
) -> Result<Vec<u8>> {
    let size = buf.len() - BLOCK_TRAILER_BYTES;
    file.read_exact_at(handle.offset, buf)?;
    let mut crc_bytes = &buf[size + 1..];
    let stored_crc = coding::get_u32(&mut crc_bytes).unwrap_or(0);
    let actual_crc = coding::masked_crc(&buf[..size + 1]);
    if stored_crc != actual_crc {
        return Err(Error::corruption(
            path,
            format!(
                "block checksum mismatch at offset {} (stored {stored_crc:#x}, actual {actual_crc:#x})",
                handle.offset
            ),
        ));
    }
    let type_byte = buf[size];
    let compression = Compression::from_u8(type_byte).ok_or_else(|| {
        Error::corruption(path, format!("unknown compression type {type_byte} at offset {}", handle.offset))
    })?;
    if compression == Compression::None {
        return Ok(buf[..size].to_vec());
    }
    compression.decompress(&buf[..size]).map_err(|e| match e {
        DecompressError::Corrupt(detail) => {
            Error::corruption(path, format!("block at offset {}: {detail}", handle.offset))
        }
        DecompressError::Unsupported(what) => Error::InvalidArgument(format!("{}: {what}", path.display())),
    })
}
