//! cairn-engine: an embeddable LSM storage engine whose shards own ranges of a fixed bucket space.

pub mod block_cache;
pub mod coding;
pub mod error;
pub mod fs;
pub mod iter;
pub mod keys;
pub mod sst;

pub use error::{Error, Result};
