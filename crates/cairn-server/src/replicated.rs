//! Replicated shards: each of the node's shards is one Raft group with a replica on every member of the
//! static membership (`--node-id`, `--peers`), its state machine the shard's engine (WAL off: the node's
//! Raft log is the log).
//!
//! A write is evaluated ([`cairn_kv::evaluate`]) by the shard's leader, at a timestamp from the
//! leader node's hybrid-logical clock, under latches on its keys, and proposed as rows stamped with
//! the leader's term (see [`cairn_kv::Leaders`]); a node that does not lead the shard hands the write
//! to the one that does. Every replica applies the rows, or refuses them alike if the leadership changed before
//! they were appended. A client learns its write's outcome or, if it cannot be known before the request
//! timeout, gets a 503 `outcome_unknown`.
//!
//! Reads pick a consistency level per request; every replica serves every level (a follower asks the
//! leader for a read index, then waits to apply it; see [`cairn_cluster::raft::Replica::read_point`]).

use crate::error::{NodeError, Result};
use crate::types::Consistency;
use cairn_cluster::raft::{
    DownNodes, GcPolicy, GroupError, PeerChannels, RaftService, ReadLevel, ReadPoint, Replica, ReplicaConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a node takes part in replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// This node's id (never reused for another node).
    pub node_id: u64,
    /// Every member's gRPC address (node id → `host:port`), this node's included. Every shard has a
    /// replica on each member: the replication factor is the member count (1, 3 or 5).
    pub members: BTreeMap<u64, String>,
    /// How often each shard's leader runs a consistency check through the log (zero: never).
    pub check_interval: Duration,
    /// How long a write or a linearizable read waits for a leader before answering 503.
    pub request_timeout: Duration,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeouts are drawn from this range.
    pub election_timeout: (Duration, Duration),
    /// A Raft snapshot is taken after this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    pub keep_behind_snapshot: u64,
    /// Shard leaders promote re-synced replicas on their own (see [`ReplicaConfig::promote_resynced`]);
    /// off for a cluster member's shards, whose voters the shard map decides.
    pub promote_resynced: bool,
    /// Shard groups idle this long go quiet (see [`ReplicaConfig::quiesce_after`]); zero: never. A
    /// cluster member's shards use it, fed the meta leader's liveness view through `down_nodes`.
    #[serde(default)]
    pub quiesce_after: Duration,
    /// The nodes this node believes down (shared by its replicas; see [`DownNodes`]).
    #[serde(skip)]
    pub down_nodes: DownNodes,
    /// How old versions are collected on this node's shards (shared by its replicas, whose leaders
    /// propose GC thresholds from it; a cluster member's follows the `gc_ttl` setting and the meta
    /// group's protected timestamps).
    #[serde(skip)]
    pub gc: GcPolicy,
}

impl ReplicationConfig {
    /// Defaults for node `node_id` of `members`.
    pub fn new(node_id: u64, members: BTreeMap<u64, String>) -> ReplicationConfig {
        let raft = ReplicaConfig::default();
        ReplicationConfig {
            node_id,
            members,
            check_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            heartbeat: raft.heartbeat,
            election_timeout: raft.election_timeout,
            snapshot_every: raft.snapshot_every,
            keep_behind_snapshot: raft.keep_behind_snapshot,
            promote_resynced: raft.promote_resynced,
            quiesce_after: raft.quiesce_after,
            down_nodes: DownNodes::default(),
            gc: GcPolicy::default(),
        }
    }

    /// Checks the membership: this node among the members, 1 to 7 of them, ids above zero.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NodeError::Startup(m));
        if !(1..=7).contains(&self.members.len()) {
            return bad(format!(
                "a group has 1 to 7 members (1, 3 or 5 advised), not {}",
                self.members.len()
            ));
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every must be at least 1".into());
        }
        if self.members.contains_key(&0) {
            return bad("node ids start at 1".into());
        }
        if !self.members.contains_key(&self.node_id) {
            return bad(format!("node {} is not among the members {:?}", self.node_id, self.members));
        }
        let mut addrs: Vec<&String> = self.members.values().collect();
        addrs.sort();
        addrs.dedup();
        if addrs.len() != self.members.len() {
            return bad("two members share an address".into());
        }
        Ok(())
    }

    /// Raft settings of every group.
    pub(crate) fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            heartbeat: self.heartbeat,
            election_timeout: self.election_timeout,
            snapshot_every: self.snapshot_every,
            keep_behind_snapshot: self.keep_behind_snapshot,
            check_every: self.check_interval,
            promote_resynced: self.promote_resynced,
            quiesce_after: self.quiesce_after,
            down_nodes: self.down_nodes.clone(),
            gc: self.gc.clone(),
            ..ReplicaConfig::default()
        }
    }
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_members(text: &str) -> std::result::Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a node id"))?;
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(members)
}

/// Maps a group error to what the API reports.
pub(crate) fn group_error(e: GroupError) -> NodeError {
    match e {
        GroupError::Fenced(why) => NodeError::Unavailable(format!("this replica is fenced: {why}")),
        GroupError::InvalidConfig(why) | GroupError::Membership(why) => NodeError::Internal(why),
        GroupError::OutcomeUnknown(why) => {
            NodeError::OutcomeUnknown(format!("the outcome is unknown: {why}"))
        }
        e @ GroupError::BeyondCommitted { .. } => {
            NodeError::InvalidArgument(format!("bad token: {e} (tokens come from this cluster's writes)"))
        }
        e => NodeError::Unavailable(e.to_string()),
    }
}

/// Waits until shard `replica` may serve a read at `consistency` (after `token`, if any); retries
/// while no leader is known, until the request timeout.
pub(crate) async fn read_point(
    replica: &Replica,
    consistency: Consistency,
    token: Option<u64>,
    timeout: Duration,
) -> Result<ReadPoint> {
    let level = match (consistency, token) {
        (Consistency::Strong, _) => ReadLevel::Strong,
        (Consistency::Lease, _) => ReadLevel::Lease,
        (Consistency::Eventual, Some(index)) => ReadLevel::AtLeast(index),
        (Consistency::Eventual, None) => ReadLevel::Eventual,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match replica.read_point(level, left).await {
            Ok(point) => return Ok(point),
            // An election is under way (or the leader just moved): try again shortly.
            Err(GroupError::NotLeader { .. } | GroupError::Timeout(_))
                if tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(group_error(e)),
        }
    }
}

/// The node's Raft plumbing shared by its groups.
#[derive(Clone)]
pub(crate) struct Plumbing {
    /// Answers peers' Raft calls for every group on this node.
    pub service: RaftService,
    /// One connection per peer, shared by every group.
    pub wire: PeerChannels,
    /// The node's Raft log.
    pub log: Arc<cairn_cluster::raft_log::RaftLog>,
    /// The node's event stream.
    pub events: Arc<crate::events::Events>,
    /// The node's shards frozen for a merge (see `Command::Freeze`).
    pub frozen: cairn_cluster::raft::FrozenShards,
}

/// Logs shard `shard`'s leader changes and counts them in `changes`, until its replica stops.
pub(crate) async fn watch_leadership(
    group: String,
    replica: Replica,
    changes: Option<Arc<std::sync::atomic::AtomicU64>>,
    events: Arc<crate::events::Events>,
) {
    use crate::events::EventKind;
    let mut watch = replica.watch();
    let mut effects = replica.effects();
    let mut last = watch.leadership();
    let mut installs = replica.status().snapshots_installed;
    loop {
        tokio::select! {
            changed = watch.changed() => if !changed { return },
            effect = effects.recv() => {
                if let Ok(cairn_cluster::raft::Effect::Fenced { index }) = effect {
                    events.emit(EventKind::ReplicaFenced { group: group.clone(), index });
                }
                continue;
            }
        }
        let (term, leader) = watch.leadership();
        if leader != last.1 && leader.is_some() {
            if let Some(c) = &changes {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::info!(group = %group, term, leader = ?leader, "leader changed");
            events.emit(EventKind::LeaderChanged { group: group.clone(), term, leader });
        }
        last = (term, leader);
        let now = replica.status().snapshots_installed;
        if now > installs {
            installs = now;
            events.emit(EventKind::SnapshotInstalled { group: group.clone(), installs });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Token;

    #[test]
    fn members_tokens_and_levels_parse_or_say_why_not() {
        let m = parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:1").unwrap();
        assert_eq!(m.len(), 3);
        assert!(parse_members("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_members("x=a:1").is_err());
        assert!(parse_members("1=nohost").is_err());
        let config = ReplicationConfig::new(4, m.clone());
        assert!(config.validate().unwrap_err().to_string().contains("not among"));
        ReplicationConfig::new(2, m).validate().unwrap();
        assert_eq!(
            Token::parse_list("0:5,3:17").unwrap(),
            vec![Token { shard: 0, index: 5 }, Token { shard: 3, index: 17 }]
        );
        assert_eq!(Token::parse_list("").unwrap(), vec![]);
        assert!(Token::parse_list("0:").is_err());
        for bad in [",", "0:1,", ",0:1", "+0:1", "0:+1", "0:1 ", "0:1:2"] {
            assert!(Token::parse_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Token { shard: 2, index: 9 }.to_string(), "2:9");
        assert_eq!(Consistency::parse("eventual").unwrap(), Consistency::Eventual);
        assert!(Consistency::parse("sometimes").is_err());
    }
}
