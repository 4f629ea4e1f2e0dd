//! How a node's store is set up ([`NodeConfig`]), and the limits it enforces.

use crate::error::{NodeError, Result};
use crate::replicated::ReplicationConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Default largest key, in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = 16 * 1024;
/// The largest key limit a node may be set up with: a key's engine rows hold it escaped (a zero byte
/// takes two) plus 14 bytes, within the engine's 64 KiB key limit.
pub const MAX_MAX_KEY_BYTES: usize = 32_000;
/// Default largest value, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Room a Raft command and its message need besides the keys and values they carry (conditions,
/// timestamps, row encoding, the message envelope).
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// Default byte budget of one range scan page.
pub const DEFAULT_MAX_SCAN_BYTES: usize = 4 << 20;
/// Most operations in one batch request.
pub const MAX_BATCH_OPS: usize = 10_000;
/// Bytes a write's Raft command spends per key besides the key and value: a key appears escaped (up to
/// twice its length) in its version row, its latest row and two conditions; plus timestamps and tags.
const COMMAND_BYTES_PER_KEY: usize = 8;
const COMMAND_BYTES_PER_OP: usize = 96;

/// How a node's store is set up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    /// The store directory (one subdirectory per shard).
    pub store: PathBuf,
    /// Shards a new store is split into (an existing store keeps its layout).
    pub shards: usize,
    /// Size of the bucket space of a new store.
    pub total_buckets: u32,
    /// Fsync every write before acknowledging it (group commit makes this cheap).
    pub sync: bool,
    /// Largest key accepted, in bytes (default 16 KiB, at most [`MAX_MAX_KEY_BYTES`]).
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Largest gRPC message this node sends or accepts, from clients and from peers (default 16 MiB;
    /// the same on every node of a cluster). A write's Raft command must fit in one, so the largest
    /// key and value must, with [`MESSAGE_OVERHEAD_BYTES`] to spare.
    pub max_message_bytes: usize,
    /// How far ahead of this node's clock a timestamp from a client or peer may be (default 500 ms);
    /// a cluster member takes its cluster's setting.
    pub max_clock_offset: Duration,
    /// A range scan stops once its rows hold this many key and value bytes (default 4 MiB; at least
    /// one row) and answers where the next page starts: a response's memory is bounded by this, not by
    /// the data.
    pub max_scan_bytes: usize,
    /// Versions older than this stay readable; older ones are dropped by compaction.
    pub gc_ttl: Duration,
    /// Block cache per shard, in bytes.
    pub block_cache_bytes: u64,
    /// Replicate every shard across these members (`None`: a standalone node).
    pub replication: Option<ReplicationConfig>,
}

impl NodeConfig {
    /// Defaults for a store in `store`.
    pub fn new(store: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            store: store.into(),
            shards: 4,
            total_buckets: 1024,
            sync: true,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_message_bytes: cairn_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_clock_offset: crate::hlc::DEFAULT_MAX_CLOCK_OFFSET,
            max_scan_bytes: DEFAULT_MAX_SCAN_BYTES,
            gc_ttl: Duration::from_secs(24 * 3600),
            block_cache_bytes: 32 << 20,
            replication: None,
        }
    }

    /// Refuses limits that do not fit together: a key over [`MAX_MAX_KEY_BYTES`], a message limit
    /// outside 1 MiB..=[`cairn_proto::MAX_MAX_MESSAGE_BYTES`], a largest write that would not fit in
    /// one message, a clock offset over [`crate::hlc::MAX_MAX_CLOCK_OFFSET`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NodeError::Startup(m));
        if !(1..=MAX_MAX_KEY_BYTES).contains(&self.max_key_bytes) {
            return bad(format!("max_key_bytes must be 1..={MAX_MAX_KEY_BYTES}, not {}", self.max_key_bytes));
        }
        if !((1 << 20)..=cairn_proto::MAX_MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return bad(format!(
                "max_message_bytes must be {}..={}, not {}",
                1 << 20,
                cairn_proto::MAX_MAX_MESSAGE_BYTES,
                self.max_message_bytes
            ));
        }
        if self.max_value_bytes == 0 || self.largest_write() > self.max_command_bytes() {
            return bad(format!(
                "max_value_bytes {} with max_key_bytes {} does not fit in a message of max_message_bytes {} \
                 (a value may take at most {} bytes)",
                self.max_value_bytes,
                self.max_key_bytes,
                self.max_message_bytes,
                self.max_command_bytes().saturating_sub(command_bytes(self.max_key_bytes, 0)) / 2
            ));
        }
        if !(1..=self.max_command_bytes()).contains(&self.max_scan_bytes) {
            return bad(format!(
                "max_scan_bytes must be 1..={} (a page must fit in a message), not {}",
                self.max_command_bytes(),
                self.max_scan_bytes
            ));
        }
        if self.max_clock_offset < Duration::from_millis(1)
            || self.max_clock_offset > crate::hlc::MAX_MAX_CLOCK_OFFSET
        {
            return bad(format!(
                "the maximum clock offset must be 1 ms to {:?}, not {:?}",
                crate::hlc::MAX_MAX_CLOCK_OFFSET,
                self.max_clock_offset
            ));
        }
        Ok(())
    }

    /// The largest Raft command a write may make: one message less its envelope.
    pub fn max_command_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(MESSAGE_OVERHEAD_BYTES)
    }

    /// The command bytes of a put of the largest key and value.
    fn largest_write(&self) -> usize {
        command_bytes(self.max_key_bytes, self.max_value_bytes)
    }
}

/// An upper bound of the Raft command bytes one put (or batch operation) of a `key`-byte key and a
/// `value`-byte value takes: the value is written twice, in its version row and its key's latest row.
pub(crate) fn command_bytes(key: usize, value: usize) -> usize {
    key * COMMAND_BYTES_PER_KEY + 2 * value + COMMAND_BYTES_PER_OP
}
