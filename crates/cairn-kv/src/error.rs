//! Why a write was not evaluated into rows (the KV layer's storage-level error).

use crate::hlc::Timestamp;
use crate::txn::TxnMeta;

/// Why a write was not evaluated into rows.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A put's condition does not hold.
    #[error("{0}")]
    ConditionFailed(String),
    /// A key's newest version is so far ahead that a write ordered after it would be beyond `limit`,
    /// the clock's bound (the physical time plus the maximum clock offset). Only a version stamped
    /// before timestamps were bounded, or by a clock far ahead of this one, can be.
    #[error(
        "the key's newest version is at {latest}, {} ms beyond this node's clock plus the maximum clock \
         offset ({limit}): a write cannot be ordered after it",
        latest.wall_time.saturating_sub(limit.wall_time) / 1_000_000
    )]
    TooFarAhead {
        /// The key's newest version.
        latest: Timestamp,
        /// The bound.
        limit: Timestamp,
    },
    /// The key holds another transaction's write intent: nothing was written. The writer waits for
    /// that transaction, or pushes it, and tries again.
    #[error("key {key:?} is locked by transaction {}", holder.id)]
    LockConflict {
        /// The key.
        key: Vec<u8>,
        /// The transaction holding it.
        holder: Box<TxnMeta>,
    },
    /// The transaction cannot go on at its timestamps and must restart (a retryable error: the client
    /// runs the whole transaction again).
    #[error("the transaction must restart: {0}")]
    TxnRetry(String),
    /// The transaction was aborted (by a conflicting transaction, or its coordinator): nothing it wrote
    /// is kept. Retryable as a new transaction.
    #[error("the transaction was aborted: {0}")]
    TxnAborted(String),
    /// A transaction's read found a committed version of the key above its read timestamp but within
    /// its uncertainty interval: it may have been written before the transaction began, so the
    /// transaction moves its read timestamp above it (refreshing its reads, or restarting).
    #[error("key {key:?} has a version at {ts}, inside the transaction's uncertainty interval")]
    Uncertain {
        /// The key.
        key: Vec<u8>,
        /// The version's timestamp.
        ts: Timestamp,
    },
    /// A request that makes no sense (a transaction's write that contradicts its own state).
    #[error("{0}")]
    Invalid(String),
    /// The store holds something it never wrote.
    #[error("{0}")]
    Malformed(String),
    /// The engine failed.
    #[error("storage error: {0}")]
    Engine(#[from] cairn_engine::Error),
}
