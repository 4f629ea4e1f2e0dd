//! cairn cluster layer: replicated shard groups, shard map and placement over cairn-engine.

pub mod control;
pub mod meta;
pub mod placement;
pub mod raft;
pub mod raft_log;
