//! cairn deterministic simulation and history checking (tests only).

pub mod elle;
pub mod linearizability;
pub mod raft_sim;
