//! cairn wire types: the messages clients and nodes exchange, and the gRPC services (generated from
//! `proto/*.proto` at build time).

/// The client KV API (`cairn.kv.v1`).
pub mod kv {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("cairn.kv.v1");
}

/// Raft traffic between nodes (`cairn.raft.v1`).
pub mod raft {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("cairn.raft.v1");
}

/// Cluster membership: init, join, state (`cairn.cluster.v1`).
pub mod cluster {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("cairn.cluster.v1");
}
