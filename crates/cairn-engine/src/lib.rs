//! cairn-engine: an embeddable LSM storage engine whose shards own ranges of a fixed bucket space.

pub mod coding;
pub mod error;
pub mod fs;
pub mod iter;
pub mod keys;

pub use error::{Error, Result};
