//! cairn deterministic simulation and history checking (tests only).

pub mod linearizability;
pub mod raft_sim;
