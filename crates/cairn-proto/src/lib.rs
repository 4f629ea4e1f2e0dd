//! cairn wire types: the messages clients and nodes exchange, and the gRPC services (generated from
//! `proto/*.proto` at build time).

pub mod codec;

/// Default limit of one gRPC message, either way, between clients and nodes and between nodes (Raft
/// batches, forwarded requests, snapshot chunks, scans). Every node of a cluster must use the same.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The largest message limit a node may be set up with; clients accept messages up to this size, so
/// whatever a node is set up with, its answers reach them.
pub const MAX_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// True if a call failed with `status` because its connection could not be made (refused, or no
/// route to the node): the request never left, so it may go to another replica even if it writes.
pub fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable,
            };
            return matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            );
        }
        source = e.source();
    }
    false
}

/// The bucket `key` belongs to in a bucket space of `total_buckets`: xxh3-64 of the key's bytes modulo
/// the space. Part of the protocol: clients that route by key compute it exactly as nodes do.
pub fn bucket_of(key: &[u8], total_buckets: u32) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(total_buckets.max(1))) as u16
}

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

/// Backups of a whole cluster at one timestamp (`cairn.backup.v1`).
pub mod backup {
    #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("cairn.backup.v1");
}
