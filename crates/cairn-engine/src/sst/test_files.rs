//! Vec-backed files for tests: a writer whose bytes a test can take back, and a reader over bytes.

use crate::error::{Error, Result};
use crate::fs::{RandomAccessFile, WritableFile};
use parking_lot::Mutex;
use std::sync::Arc;

/// Appends into a shared buffer; `sync` only counts calls.
pub struct VecWriter {
    pub data: Arc<Mutex<Vec<u8>>>,
    pub syncs: Arc<Mutex<u32>>,
}

impl VecWriter {
    pub fn new() -> VecWriter {
        VecWriter { data: Arc::new(Mutex::new(Vec::new())), syncs: Arc::new(Mutex::new(0)) }
    }
}

impl WritableFile for VecWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.data.lock().extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        *self.syncs.lock() += 1;
        Ok(())
    }
    fn len(&self) -> u64 {
        self.data.lock().len() as u64
    }
}

/// Positioned reads over bytes.
pub struct VecFile(pub Vec<u8>);

impl RandomAccessFile for VecFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.checked_add(buf.len());
        match end.and_then(|end| self.0.get(start..end)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(Error::io(
                "vecfile",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end of file"),
            )),
        }
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}
