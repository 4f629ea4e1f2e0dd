//! cairn's KV layer: what a key's versions mean and how a request becomes writes.
//!
//! - [`hlc`]: the hybrid logical clock, bounded by a maximum clock offset, and the uncertainty
//!   interval reads will use;
//! - [`mvcc`]: how a key's versions are laid out as engine rows (and which rows are reserved);
//! - [`reader`]: reading a key's newest version, or its version at a timestamp, from a shard;
//! - [`latch`]: a shard leader's locks on the keys a request touches, from evaluation until apply;
//! - [`leader`]: writes to a replicated shard, evaluated by its Raft group's leader;
//! - [`pending`]: a node's writes in flight, for reads at a timestamp to wait for;
//! - [`txn`]: what transactions' write intents and records hold, and their rows;
//! - [`tscache`]: a shard leader's record of transactions' reads, which writes below them move above;
//! - [`evaluate`](mod@evaluate): the one place the write rules are decided — conditions, tombstones,
//!   and a write that would land below a newer version (write-too-old) — turning a request into an
//!   engine write batch, an outcome, and the reads it depended on; transactions' writes (intents, their
//!   resolution, the end of a transaction at its record) included.
//!
//! The server's standalone writer and its replicated shards both evaluate with [`evaluate()`]; nothing
//! above this crate decides an MVCC rule. It uses cairn-cluster's shard groups ([`leader`]); nothing in
//! cairn-cluster knows MVCC, and nothing here knows the APIs.

pub mod as_of;
pub mod error;
pub mod evaluate;
pub mod hlc;
pub mod latch;
pub mod leader;
pub mod mvcc;
pub mod pending;
pub mod reader;
pub mod tscache;
pub mod txn;

pub use evaluate::{
    Condition, Depends, Evaluated, KvError, Outcome, Overlay, Restored, RestoredVersion, Write, evaluate,
};
pub use hlc::{Clock, Timestamp, TimestampAhead, Uncertainty};
pub use latch::{LatchGuard, Latches};
pub use leader::{Committed, LeaderStats, Leaders, WriteError};
pub use mvcc::Stored;
pub use pending::Pending;
pub use reader::{DbReader, Latest, Reader, Versioned};
