//! The meta group's state: cluster identity, membership, the shard map and settings (ARCHITECTURE
//! decision 35).
//!
//! The meta group is an ordinary replicated shard ([`Replica`], group [`META_GROUP`]) whose engine holds
//! the [`ClusterState`] one row per part: a header (identity and settings), one row per node and one
//! per shard descriptor (the layout is in `meta_rows.rs`). Every change is a compare-and-set through
//! the group's log ([`MetaStore::update`]): read the state linearizably, compute the next one with a
//! pure function of [`ClusterState`], propose the rows that differ on the condition that the rows it
//! was decided on still hold what was read. Every replica decides the condition the same way at the
//! same log position, so concurrent changes from any nodes serialise where they touch the same rows
//! (and changes of different shards go through side by side), and a loser re-reads and recomputes
//! instead of overwriting. Snapshots, verified log compaction and re-syncs come with the shard
//! machinery unchanged. Nodes follow changes by watching their own replica's applied index
//! ([`MetaStore::changed`]).
//!
//! The transitions themselves ([`ClusterState::join`], [`ClusterState::place_initial`],
//! [`ClusterState::begin_move`], [`ClusterState::finish_move`], [`ClusterState::remove_node`]) are pure and tested without nodes. They
//! are written to be safe to re-run: a change whose outcome was unknown (a leader change mid-proposal) is
//! retried by re-reading and recomputing, and a join carries a token so a retried join finds the id the
//! first attempt got instead of taking a second one.

use crate::placement::{self, Move, NodeId, PlacementError, ShardId, ShardMap};
use crate::raft::{Command, CommandResult, GroupError, MAX_NODE_ID, ReadLevel, Replica};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[path = "meta_protected.rs"]
mod protected;
#[path = "meta_rows.rs"]
mod rows;
pub use protected::{
    MAX_OWNER_BYTES, MAX_PROTECT_SECS, MAX_PROTECTED, PROTECT_COMMIT_SLACK, ProtectedTimestamp,
};
pub use rows::LEGACY_KEY;
/// A cluster state with nodes joined, for other modules' tests.
#[cfg(test)]
pub(crate) use rows::tests::joined;

/// The meta group's Raft group id: the top of the group id space, so shard groups keep `0..`.
pub const META_GROUP: u64 = MAX_NODE_ID;
/// The bucket of the meta group's engine that holds the state row (its only bucket).
pub const META_BUCKET: u16 = 0;
/// Buckets of the meta group's engine.
pub const META_TOTAL_BUCKETS: u32 = 1;
/// The column every meta row keeps its value in.
pub const STATE_COLUMN: u16 = 0;
/// Compare-and-set rounds [`MetaStore::update`] tries before giving up with [`MetaError::Contended`].
pub const MAX_UPDATE_ATTEMPTS: u32 = 16;
/// Longest cluster id accepted.
pub const MAX_CLUSTER_ID_BYTES: usize = 64;
/// Longest `dead_after_secs` accepted (a day).
pub const MAX_DEAD_AFTER_SECS: u64 = 86_400;
/// Longest node address accepted.
pub const MAX_ADDRESS_BYTES: usize = 256;

/// Whether a node is part of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// A member: may hold replicas.
    Active,
    /// Removed for good; its id is never given out again.
    Removed,
}

/// One node as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Address of the node's gRPC listener (Raft traffic and the KV service).
    pub grpc_addr: String,
    /// Address of the node's HTTP listener (REST, health, metrics).
    pub http_addr: String,
    /// The token the node joined with: a retried join with the same token gets the same id.
    pub token: String,
    /// Member or removed.
    pub state: NodeState,
}

/// Cluster-wide settings, fixed at bootstrap for now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Replicas per shard.
    pub replication_factor: usize,
    /// Shards the bucket space is split into at initial placement.
    pub shards: usize,
    /// Size of the bucket space.
    pub total_buckets: u32,
    /// How long a node may go unheard before its replicas are re-created elsewhere.
    pub dead_after_secs: u64,
    /// Move replicas onto nodes that hold fewer than others (one that joined later, or came back), one
    /// move at a time, while every node is up.
    #[serde(default = "rebalance_default")]
    pub rebalance: bool,
    /// How far ahead of a node's clock a timestamp from a client or another node may be, in
    /// milliseconds; further is refused (default 500, at most 60 000).
    #[serde(default = "max_clock_offset_ms_default")]
    pub max_clock_offset_ms: u64,
    /// When shards split and merge on their own.
    #[serde(default)]
    pub reshape: ReshapeSettings,
    /// How long old versions stay readable, in seconds (`gc_ttl`, default 4 h; 0: never collected):
    /// shard leaders raise their GC thresholds to `now - gc_ttl`.
    #[serde(default = "gc_ttl_default")]
    pub gc_ttl_secs: u64,
    /// The `gc_ttl` before its last raise, and when that was (milliseconds since the Unix epoch): for
    /// a TTL after a raise, shards' thresholds may still be as the old one left them (see
    /// [`ClusterState::earliest_protectable`]).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub gc_ttl_before_secs: u64,
    /// (See `gc_ttl_before_secs`.)
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub gc_ttl_raised_ms: u64,
    /// Bytes per second each node's backup exports may copy (`backup_rate`, default 32 MiB; 0: no
    /// limit).
    #[serde(default = "backup_rate_default")]
    pub backup_rate_bytes: u64,
}

fn backup_rate_default() -> u64 {
    DEFAULT_BACKUP_RATE_BYTES
}

/// The default `backup_rate`: 32 MiB per second per node.
pub const DEFAULT_BACKUP_RATE_BYTES: u64 = 32 << 20;
/// The lowest `backup_rate` but 0 (no limit).
pub const MIN_BACKUP_RATE_BYTES: u64 = 64 << 10;

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn gc_ttl_default() -> u64 {
    DEFAULT_GC_TTL_SECS
}

/// The default `gc_ttl`: 4 hours (CockroachDB's default is 4 h too since 23.1).
pub const DEFAULT_GC_TTL_SECS: u64 = 4 * 3600;
/// The longest `gc_ttl`: ten years.
pub const MAX_GC_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// When shards split and merge on their own (`cairn settings set NAME VALUE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshapeSettings {
    /// Split a shard holding more live bytes than this (`split_size`, default 256 MiB; 0: never by
    /// size), at the bucket that halves them.
    pub split_size_bytes: u64,
    /// Split a shard serving more requests per second than this (`split_qps`, default 2500; 0: never
    /// by load)...
    pub split_qps: u64,
    /// ...for this many seconds on end (`split_load_secs`, default 30), at the bucket that halves the
    /// load.
    pub split_load_secs: u64,
    /// Merge neighbouring shards that together hold under a quarter of `split_size` and are cold
    /// (`auto_merge`, default on).
    pub auto_merge: bool,
    /// A shard whose ranges changed (a split or merge made it) in the last this many seconds is not
    /// merged on its own (`merge_delay_secs`, default 300), so a split is not undone while its halves
    /// are still settling (their sizes drop as memtables flush to compressed files).
    #[serde(default = "merge_delay_default")]
    pub merge_delay_secs: u64,
}

fn merge_delay_default() -> u64 {
    300
}

/// The default size a shard splits at.
pub const DEFAULT_SPLIT_SIZE_BYTES: u64 = 256 << 20;
/// The smallest `split_size` (for tests and demos; production shards are far larger).
pub const MIN_SPLIT_SIZE_BYTES: u64 = 4 << 10;

impl Default for ReshapeSettings {
    fn default() -> ReshapeSettings {
        ReshapeSettings {
            split_size_bytes: DEFAULT_SPLIT_SIZE_BYTES,
            split_qps: 2500,
            split_load_secs: 30,
            auto_merge: true,
            merge_delay_secs: merge_delay_default(),
        }
    }
}

impl ReshapeSettings {
    /// The planner's view of them.
    pub fn auto(&self) -> placement::AutoSettings {
        placement::AutoSettings {
            split_size_bytes: self.split_size_bytes,
            split_qps: self.split_qps,
            split_load_secs: self.split_load_secs,
            merge: self.auto_merge,
            merge_delay_secs: self.merge_delay_secs,
        }
    }
}

/// The settings `cairn settings set` changes, with what each takes.
pub const SETTABLE: &[(&str, &str)] = &[
    ("split_size", "bytes, with an optional KiB, MiB or GiB suffix; 0 turns splits by size off"),
    ("split_qps", "requests per second; 0 turns splits by load off"),
    ("split_load_secs", "seconds, 1 to 3600"),
    ("auto_merge", "true or false"),
    ("merge_delay_secs", "seconds, 0 to 86400"),
    ("rebalance", "true or false"),
    ("dead_after_secs", "seconds, 1 to 86400"),
    ("gc_ttl", "seconds old versions stay readable (0: never collected), at most ten years"),
    (
        "backup_rate",
        "bytes per second each node's backup exports may copy, with an optional KiB, MiB or GiB suffix; \
         at least 64KiB, or 0 for no limit",
    ),
];

/// `text` as a byte size: digits, then an optional `KiB`, `MiB` or `GiB` (or `K`, `M`, `G`).
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "KB" => 10,
        "M" | "MiB" | "MB" => 20,
        "G" | "GiB" | "GB" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn rebalance_default() -> bool {
    true
}

/// The default maximum clock offset, in milliseconds.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;
/// The largest maximum clock offset, in milliseconds.
pub const MAX_MAX_CLOCK_OFFSET_MS: u64 = 60_000;

fn max_clock_offset_ms_default() -> u64 {
    DEFAULT_MAX_CLOCK_OFFSET_MS
}

/// Everything the meta group holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's id: a node started with another one is refused.
    pub cluster_id: String,
    /// Bumped by every change.
    pub version: u64,
    /// The id the next joining node gets (ids are never reused).
    pub next_node_id: NodeId,
    /// Every node ever admitted, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The shard map, once the initial placement was made.
    pub map: Option<ShardMap>,
    /// The id the next shard a split makes gets (ids are never reused; 0 in states from before
    /// splits: then one past the largest id in the map).
    #[serde(default)]
    pub next_shard_id: u32,
    /// Settings.
    pub settings: ClusterSettings,
    /// Protected timestamps, by id: each holds every shard's GC threshold at or below its timestamp.
    #[serde(default)]
    pub protected: BTreeMap<u64, ProtectedTimestamp>,
    /// The id the next protected timestamp gets (ids are never reused; 0 counts as 1).
    #[serde(default)]
    pub next_protected_id: u64,
}

/// A node's request to join (or, with the same token, its retry or restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The cluster the node believes it joins.
    pub cluster_id: String,
    /// A random token the node keeps in its data directory.
    pub token: String,
    /// Its gRPC address.
    pub grpc_addr: String,
    /// Its HTTP address.
    pub http_addr: String,
}

/// Why a meta operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The request names another cluster.
    #[error("wrong cluster: this is cluster {expected:?}, the request names {given:?}")]
    WrongCluster {
        /// This cluster's id.
        expected: String,
        /// The id given.
        given: String,
    },
    /// Another node already uses this address.
    #[error("address {addr} is already node {node}'s")]
    DuplicateAddress {
        /// The address.
        addr: String,
        /// The node using it.
        node: NodeId,
    },
    /// No such node.
    #[error("no node {0}")]
    UnknownNode(NodeId),
    /// The node was removed from the cluster; it cannot come back under its old id.
    #[error("node {0} was removed from the cluster")]
    NodeRemoved(NodeId),
    /// A malformed request (empty or oversized id, address or token, bad settings).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The meta group holds no cluster yet.
    #[error("the cluster is not initialised")]
    NotInitialized,
    /// The meta group already holds a cluster.
    #[error("the cluster is already initialised (cluster {0:?})")]
    AlreadyInitialized(String),
    /// The initial placement was already made.
    #[error("the shards are already placed")]
    AlreadyPlaced,
    /// A placement change was refused.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The meta group could not do it (no leader, timeout, stopped).
    #[error("meta group: {0}")]
    Group(#[from] GroupError),
    /// Other changes kept winning the compare-and-set.
    #[error("gave up after {0} contended attempts")]
    Contended(u32),
    /// The stored state does not decode, or a replica rejected the change.
    #[error("corrupt meta state: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, MetaError>;

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(MetaError::Invalid(format!(
            "{what} must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

impl ClusterState {
    /// A new cluster with no nodes and no shard map.
    pub fn new(cluster_id: &str, settings: ClusterSettings) -> Result<ClusterState> {
        check_text("a cluster id", cluster_id, MAX_CLUSTER_ID_BYTES)?;
        placement::check_layout(settings.total_buckets, settings.shards, settings.replication_factor)?;
        if !(1..=MAX_DEAD_AFTER_SECS).contains(&settings.dead_after_secs) {
            return Err(MetaError::Invalid(format!(
                "dead_after_secs must be 1 to {MAX_DEAD_AFTER_SECS}, not {}",
                settings.dead_after_secs
            )));
        }
        if !(1..=MAX_MAX_CLOCK_OFFSET_MS).contains(&settings.max_clock_offset_ms) {
            return Err(MetaError::Invalid(format!(
                "max_clock_offset_ms must be 1 to {MAX_MAX_CLOCK_OFFSET_MS}, not {}",
                settings.max_clock_offset_ms
            )));
        }
        Ok(ClusterState {
            cluster_id: cluster_id.to_string(),
            version: 1,
            next_node_id: 1,
            nodes: BTreeMap::new(),
            map: None,
            next_shard_id: 0,
            settings,
            protected: BTreeMap::new(),
            next_protected_id: 0,
        })
    }

    /// Changes setting `name` to `value` (see [`SETTABLE`]); `None` if it already was.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<Option<ClusterState>> {
        self.set_setting_at(name, value, 0)
    }

    /// [`ClusterState::set_setting`] at wall time `now_ms` (milliseconds since the Unix epoch), which a
    /// raise of `gc_ttl` records.
    pub fn set_setting_at(&self, name: &str, value: &str, now_ms: u64) -> Result<Option<ClusterState>> {
        let bad = |want: &str| MetaError::Invalid(format!("{name} takes {want}, not {value:?}"));
        let want = SETTABLE.iter().find(|(n, _)| *n == name).map(|(_, w)| *w).ok_or_else(|| {
            let names: Vec<&str> = SETTABLE.iter().map(|(n, _)| *n).collect();
            MetaError::Invalid(format!("no setting {name:?}: the settings are {}", names.join(", ")))
        })?;
        let flag = || match value {
            "true" | "on" => Ok(true),
            "false" | "off" => Ok(false),
            _ => Err(bad(want)),
        };
        let number = |range: std::ops::RangeInclusive<u64>| {
            value.trim().parse::<u64>().ok().filter(|n| range.contains(n)).ok_or_else(|| bad(want))
        };
        let mut settings = self.settings.clone();
        match name {
            "split_size" => {
                let bytes = parse_bytes(value).ok_or_else(|| bad(want))?;
                if bytes != 0 && bytes < MIN_SPLIT_SIZE_BYTES {
                    return Err(MetaError::Invalid(format!(
                        "split_size must be 0 or at least {MIN_SPLIT_SIZE_BYTES} bytes, not {bytes}"
                    )));
                }
                settings.reshape.split_size_bytes = bytes;
            }
            "split_qps" => settings.reshape.split_qps = number(0..=u64::from(u32::MAX))?,
            "split_load_secs" => settings.reshape.split_load_secs = number(1..=3600)?,
            "auto_merge" => settings.reshape.auto_merge = flag()?,
            "merge_delay_secs" => settings.reshape.merge_delay_secs = number(0..=86_400)?,
            "rebalance" => settings.rebalance = flag()?,
            "backup_rate" => {
                let bytes = parse_bytes(value).ok_or_else(|| bad(want))?;
                if bytes != 0 && bytes < MIN_BACKUP_RATE_BYTES {
                    return Err(MetaError::Invalid(format!(
                        "backup_rate must be 0 or at least {MIN_BACKUP_RATE_BYTES} bytes per second, not {bytes}"
                    )));
                }
                settings.backup_rate_bytes = bytes;
            }
            "gc_ttl" => {
                let ttl = number(0..=MAX_GC_TTL_SECS)?;
                let before = settings.gc_ttl_secs;
                // 0 collects nothing: a raise from anything to 0, and from 0 to anything (as from the
                // TTL before 0 was set: that one is kept).
                if before != 0 && (ttl == 0 || ttl > before) {
                    settings.gc_ttl_before_secs = before;
                    settings.gc_ttl_raised_ms = now_ms;
                }
                settings.gc_ttl_secs = ttl;
            }
            _ => settings.dead_after_secs = number(1..=MAX_DEAD_AFTER_SECS)?,
        }
        if settings == self.settings {
            return Ok(None);
        }
        Ok(Some(self.changed(|next| next.settings = settings)))
    }

    /// Admits a node, or finds the one that joined with the same token (a retry or a restart, whose
    /// addresses are updated). Returns the next state (`None`: unchanged) and the node's id.
    pub fn join(&self, req: &JoinRequest) -> Result<(Option<ClusterState>, NodeId)> {
        if req.cluster_id != self.cluster_id {
            return Err(MetaError::WrongCluster {
                expected: self.cluster_id.clone(),
                given: req.cluster_id.clone(),
            });
        }
        check_text("a join token", &req.token, MAX_CLUSTER_ID_BYTES)?;
        check_text("a gRPC address", &req.grpc_addr, MAX_ADDRESS_BYTES)?;
        check_text("an HTTP address", &req.http_addr, MAX_ADDRESS_BYTES)?;
        if req.grpc_addr == req.http_addr {
            return Err(MetaError::Invalid(format!("gRPC and HTTP both at {}", req.grpc_addr)));
        }
        let mine = self.nodes.iter().find(|(_, n)| n.token == req.token);
        for (&id, node) in &self.nodes {
            if Some(id) == mine.map(|(&m, _)| m) || node.state == NodeState::Removed {
                continue;
            }
            for addr in [&req.grpc_addr, &req.http_addr] {
                if *addr == node.grpc_addr || *addr == node.http_addr {
                    return Err(MetaError::DuplicateAddress { addr: addr.clone(), node: id });
                }
            }
        }
        let record = NodeRecord {
            grpc_addr: req.grpc_addr.clone(),
            http_addr: req.http_addr.clone(),
            token: req.token.clone(),
            state: NodeState::Active,
        };
        let (id, fresh) = match mine {
            Some((&id, node)) if node.state == NodeState::Removed => return Err(MetaError::NodeRemoved(id)),
            Some((&id, node)) if *node == record => return Ok((None, id)),
            Some((&id, _)) => (id, false),
            None if self.next_node_id > MAX_NODE_ID => {
                return Err(MetaError::Invalid("node ids are exhausted".into()));
            }
            None => (self.next_node_id, true),
        };
        let next = self.changed(|next| {
            next.next_node_id += u64::from(fresh);
            next.nodes.insert(id, record);
        });
        Ok((Some(next), id))
    }

    /// The active nodes' ids.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.state == NodeState::Active).map(|(id, _)| *id).collect()
    }

    /// Makes the initial shard map over the active nodes (see [`ShardMap::initial`]).
    pub fn place_initial(&self) -> Result<ClusterState> {
        if self.map.is_some() {
            return Err(MetaError::AlreadyPlaced);
        }
        let s = &self.settings;
        let map = ShardMap::initial(s.total_buckets, s.shards, &self.active_nodes(), s.replication_factor)?;
        Ok(self.changed(|next| next.map = Some(map)))
    }

    /// Records a replica move (which bumps the shard's epoch); the destination must be an active node.
    pub fn apply_move(&self, mv: &Move) -> Result<ClusterState> {
        let mut map = self.map_for_move(mv)?;
        map.apply(mv)?;
        Ok(self.changed(|next| next.map = Some(map)))
    }

    /// Starts a replica move ([`ShardMap::begin_move`]); the destination must be an active node.
    /// Returns the next state and the move as recorded.
    pub fn begin_move(&self, mv: &Move) -> Result<(ClusterState, Move)> {
        let mut map = self.map_for_move(mv)?;
        let begun = map.begin_move(mv)?;
        Ok((self.changed(|next| next.map = Some(map)), begun))
    }

    /// Completes the replica move under way `mv` ([`ShardMap::finish_move`]); `None` if it was already
    /// completed (a retry).
    pub fn finish_move(&self, mv: &Move) -> Result<Option<ClusterState>> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        if map.shard(mv.shard).is_some_and(|s| s.moving.is_none() && s.replicas.contains(&mv.to)) {
            return Ok(None);
        }
        let mut map = map.clone();
        map.finish_move(mv)?;
        Ok(Some(self.changed(|next| next.map = Some(map))))
    }

    /// Asks for the move under way `mv` to be given up ([`ShardMap::request_abandon`]); `None` if it
    /// already was, or the move is over (finished or given up meanwhile).
    pub fn request_abandon(&self, mv: &Move) -> Result<Option<ClusterState>> {
        let Some(mut map) = self.map_moving(mv)? else { return Ok(None) };
        Ok(map.request_abandon(mv)?.then(|| self.changed(|next| next.map = Some(map))))
    }

    /// Gives up the move under way `mv` ([`ShardMap::abandon_move`]); `None` if it is over already.
    pub fn abandon_move(&self, mv: &Move) -> Result<Option<ClusterState>> {
        let Some(mut map) = self.map_moving(mv)? else { return Ok(None) };
        map.abandon_move(mv)?;
        Ok(Some(self.changed(|next| next.map = Some(map))))
    }

    /// A copy of the map if `mv` is its shard's move under way (`None`: the move is over).
    fn map_moving(&self, mv: &Move) -> Result<Option<ShardMap>> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        Ok(map.shard(mv.shard).is_some_and(|s| s.moving == Some(*mv)).then(|| map.clone()))
    }

    /// A copy of the map for a move to `mv.to`, which must be an active node.
    fn map_for_move(&self, mv: &Move) -> Result<ShardMap> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        match self.nodes.get(&mv.to).map(|n| n.state) {
            None => Err(MetaError::UnknownNode(mv.to)),
            Some(NodeState::Removed) => Err(MetaError::NodeRemoved(mv.to)),
            Some(NodeState::Active) => Ok(map.clone()),
        }
    }

    /// The id the next split's new shard gets: never one a shard has or had.
    fn next_shard(&self) -> u32 {
        let used =
            self.map.iter().flat_map(|m| &m.shards).flat_map(|s| [Some(s.id), s.splitting.map(|p| p.new)]);
        let past = used.flatten().map(|id| id.0 + 1).max().unwrap_or(0);
        self.next_shard_id.max(past)
    }

    /// Starts splitting shard `shard` at bucket `at` ([`ShardMap::begin_split`]) under a new shard id.
    /// Returns the next state (`None`: this split is under way already) and the new shard's id.
    pub fn begin_split(&self, shard: ShardId, at: u16) -> Result<(Option<ClusterState>, ShardId)> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        if let Some(plan) = map.shard(shard).and_then(|s| s.splitting).filter(|p| p.at == at) {
            return Ok((None, plan.new));
        }
        let new = ShardId(self.next_shard());
        let mut map = map.clone();
        map.begin_split(shard, at, new)?;
        let next = self.changed(|next| {
            next.map = Some(map);
            next.next_shard_id = new.0 + 1;
        });
        Ok((Some(next), new))
    }

    /// [`ClusterState::begin_split`], planned by automatic splitting: the new shard is one an automatic
    /// merge may join back.
    pub fn begin_auto_split(&self, shard: ShardId, at: u16) -> Result<(Option<ClusterState>, ShardId)> {
        let (next, new) = self.begin_split(shard, at)?;
        let next = next.map(|mut next| {
            if let Some(plan) =
                next.map.as_mut().and_then(|m| m.shard_mut(shard).ok()).and_then(|s| s.splitting.as_mut())
            {
                plan.automatic = true;
            }
            next
        });
        Ok((next, new))
    }

    /// Makes the split under way of shard `shard` ([`ShardMap::finish_split`]); `None` if none is (a
    /// retry after it was made).
    pub fn finish_split(&self, shard: ShardId) -> Result<Option<ClusterState>> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        if map.shard(shard).is_none_or(|s| s.splitting.is_none()) {
            return Ok(None);
        }
        let mut map = map.clone();
        map.finish_split(shard)?;
        Ok(Some(self.changed(|next| next.map = Some(map))))
    }

    /// Starts merging shard `right` into shard `left` ([`ShardMap::begin_merge`]); `None` if this
    /// merge is under way already.
    pub fn begin_merge(&self, left: ShardId, right: ShardId) -> Result<Option<ClusterState>> {
        let mut map = self.map.as_ref().ok_or(MetaError::NotInitialized)?.clone();
        if !map.begin_merge(left, right)? {
            return Ok(None);
        }
        Ok(Some(self.changed(|next| next.map = Some(map))))
    }

    /// Makes the merge of shard `right` into shard `left` ([`ShardMap::finish_merge`]); `None` if that
    /// merge is not under way (a retry after it was made: a decision taken on an older map never
    /// finishes another merge of `left`'s).
    pub fn finish_merge(&self, left: ShardId, right: ShardId) -> Result<Option<ClusterState>> {
        let map = self.map.as_ref().ok_or(MetaError::NotInitialized)?;
        if map.shard(left).is_none_or(|s| s.merging != Some(right)) {
            return Ok(None);
        }
        let mut map = map.clone();
        map.finish_merge(left)?;
        // The right-hand shard's id is never given out again, even if it was the largest.
        let next_shard_id = self.next_shard();
        Ok(Some(self.changed(|next| {
            next.map = Some(map);
            next.next_shard_id = next_shard_id;
        })))
    }

    /// Removes a node for good. It must hold no replica any more (move them off first).
    pub fn remove_node(&self, id: NodeId) -> Result<Option<ClusterState>> {
        let node = self.nodes.get(&id).ok_or(MetaError::UnknownNode(id))?;
        if node.state == NodeState::Removed {
            return Ok(None);
        }
        let holds = |s: &&crate::placement::ShardDescriptor| {
            s.replicas.contains(&id) || s.moving.is_some_and(|m| m.to == id)
        };
        if let Some(shard) = self.map.iter().flat_map(|m| &m.shards).find(holds) {
            return Err(MetaError::Invalid(format!("node {id} still holds a replica of shard {}", shard.id)));
        }
        let mut removed = node.clone();
        removed.state = NodeState::Removed;
        Ok(Some(self.changed(|next| {
            next.nodes.insert(id, removed);
        })))
    }

    /// A copy of this state with `edit` applied and the version bumped (the map's too, to the same
    /// number, if the map changed): every transition's result.
    fn changed(&self, edit: impl FnOnce(&mut ClusterState)) -> ClusterState {
        let mut next = self.clone();
        edit(&mut next);
        next.version += 1;
        if next.map != self.map
            && let Some(map) = &mut next.map
        {
            map.version = next.version;
        }
        next
    }

    /// Checks the state's invariants: ids below `next_node_id`, the map valid, its replicas on known
    /// nodes, its bucket space the settings'.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.keys().any(|&id| id == 0 || id >= self.next_node_id) {
            return Err(MetaError::Corrupt(format!("node ids outside 1..{}", self.next_node_id)));
        }
        if self.protected.iter().any(|(&id, p)| id == 0 || id >= self.next_protected_id || p.id != id) {
            return Err(MetaError::Corrupt(format!(
                "protected timestamp ids outside 1..{}",
                self.next_protected_id
            )));
        }
        if let Some(map) = &self.map {
            map.validate()?;
            if map.total_buckets != self.settings.total_buckets {
                return Err(MetaError::Corrupt("the map and the settings disagree on total_buckets".into()));
            }
            let placed =
                map.shards.iter().flat_map(|s| s.replicas.iter().copied().chain(s.moving.map(|m| m.to)));
            if let Some(n) = placed.into_iter().find(|n| !self.nodes.contains_key(n)) {
                return Err(MetaError::Corrupt(format!("the map places a replica on unknown node {n}")));
            }
            let ids = map.shards.iter().flat_map(|s| [Some(s.id), s.splitting.map(|p| p.new)]).flatten();
            if self.next_shard_id != 0
                && let Some(id) = ids.into_iter().find(|id| id.0 >= self.next_shard_id)
            {
                return Err(MetaError::Corrupt(format!(
                    "shard {id} is at or past the next shard id {}",
                    self.next_shard_id
                )));
            }
        }
        Ok(())
    }

    /// The state as stored.
    pub fn encode(&self) -> Result<Vec<u8>> {
        // Plain data with string keys: a failure would be a bug, reported, never an empty state stored.
        serde_json::to_vec(self)
            .map_err(|e| MetaError::Corrupt(format!("cannot encode the cluster state: {e}")))
    }

    /// Decodes and validates a stored state.
    pub fn decode(bytes: &[u8]) -> Result<ClusterState> {
        let state: ClusterState =
            serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt(format!("undecodable: {e}")))?;
        state.validate()?;
        Ok(state)
    }
}

/// Reads and changes the [`ClusterState`] through this node's replica of the meta group. Works on any
/// replica: reads wait for the leader's read index, writes are forwarded to the leader.
#[derive(Clone, Debug)]
pub struct MetaStore {
    replica: Replica,
    timeout: Duration,
}

impl MetaStore {
    /// A store over `replica` (of [`META_GROUP`]); each group call waits at most `timeout`.
    pub fn new(replica: Replica, timeout: Duration) -> MetaStore {
        MetaStore { replica, timeout }
    }

    /// The replica underneath.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The stored state and its rows as of a read at `level`; `None` before bootstrap.
    async fn load(&self, level: ReadLevel) -> Result<Option<(ClusterState, rows::Rows)>> {
        self.replica.read_point(level, self.timeout).await?;
        let failed = |e: cairn_engine::Error| MetaError::Corrupt(format!("reading the meta rows: {e}"));
        // One view: the rows as of one point.
        let view = self.replica.db().view();
        let mut stored = rows::Rows::new();
        for row in view.scan(META_BUCKET, ..).map_err(failed)? {
            let (_, key, row) = row.map_err(failed)?;
            // The shard machinery's own rows (the applied position) start with a zero byte.
            if key.first() == Some(&0) {
                continue;
            }
            if let Some(value) = row.column(STATE_COLUMN) {
                stored.insert(key, value.to_vec());
            }
        }
        Ok(rows::state_of(&stored)?.map(|state| (state, stored)))
    }

    /// The state as of a read at `level`; `None` before bootstrap.
    pub async fn read_if_any(&self, level: ReadLevel) -> Result<Option<ClusterState>> {
        Ok(self.load(level).await?.map(|(state, _)| state))
    }

    /// The state as of a read at `level`.
    pub async fn read(&self, level: ReadLevel) -> Result<ClusterState> {
        self.read_if_any(level).await?.ok_or(MetaError::NotInitialized)
    }

    /// Waits until this node's replica of the meta group has applied an entry past `seen` (an applied
    /// index this returned before; `None` at first), or `wait` passes. Returns the last applied index:
    /// read the state when it differs from `seen`. A replica that stops hearing from the group sees no
    /// changes: callers still read now and then.
    pub async fn changed(&self, seen: Option<u64>, wait: Duration) -> Option<u64> {
        self.replica.applied_past(seen, wait).await
    }

    /// Stores the first state of a new cluster. Refused if the group already holds one (by then
    /// whoever stored it won; a retry of the same bootstrap finds its own state and succeeds).
    pub async fn bootstrap(&self, state: &ClusterState) -> Result<ClusterState> {
        state.validate()?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            if let Some((current, _)) = self.load(ReadLevel::Strong).await? {
                return if current == *state {
                    Ok(current)
                } else {
                    Err(MetaError::AlreadyInitialized(current.cluster_id))
                };
            }
            let none = rows::Rows::new();
            let change = rows::Change::between(&none, &rows::rows_of(state, &none)?);
            if self.swap(&change).await? == Swap::Applied {
                return Ok(state.clone());
            }
        }
        Err(MetaError::Contended(MAX_UPDATE_ATTEMPTS))
    }

    /// Changes the state by compare-and-set: `change` computes the next state from the current one (or
    /// `None` for no change) and a result; a lost race re-reads and recomputes, up to
    /// [`MAX_UPDATE_ATTEMPTS`] times. Returns the state after the change as `change` computed it (rows
    /// it did not touch may have changed meanwhile: read again for the whole state) and `change`'s
    /// result.
    pub async fn update<T>(
        &self,
        change: impl Fn(&ClusterState) -> Result<(Option<ClusterState>, T)>,
    ) -> Result<(ClusterState, T)> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let (current, before) = self.load(ReadLevel::Strong).await?.ok_or(MetaError::NotInitialized)?;
            let (next, out) = change(&current)?;
            let Some(next) = next else {
                return Ok((current, out));
            };
            next.validate()?;
            let swap = rows::Change::between(&before, &rows::rows_of(&next, &before)?);
            match self.swap(&swap).await? {
                Swap::Applied => return Ok((next, out)),
                Swap::Lost => {}
                Swap::Unknown => {
                    // Revisions only grow, so finding exactly the rows proposed means this change applied.
                    let now = self.load(ReadLevel::Strong).await?;
                    if now.is_some_and(|(_, rows)| swap.is_in(&rows)) {
                        return Ok((next, out));
                    }
                }
            }
        }
        Err(MetaError::Contended(MAX_UPDATE_ATTEMPTS))
    }

    /// Proposes `change`.
    async fn swap(&self, change: &rows::Change) -> Result<Swap> {
        let command = Command::conditional(change.conditions.clone(), &change.batch());
        match self.replica.write(command, self.timeout).await {
            Ok(w) => match w.result {
                CommandResult::Applied => Ok(Swap::Applied),
                CommandResult::ConditionFailed => Ok(Swap::Lost),
                CommandResult::Rejected(why) => {
                    Err(MetaError::Corrupt(format!("the meta group rejected a change: {why}")))
                }
                other => Err(MetaError::Corrupt(format!("unexpected answer to a change: {other:?}"))),
            },
            Err(GroupError::OutcomeUnknown(_)) => Ok(Swap::Unknown),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a compare-and-set proposal came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Swap {
    /// The rows held what the change was decided on; its rows are stored.
    Applied,
    /// Some row held something else; nothing was written.
    Lost,
    /// No answer (leader change, timeout): it may apply or not; re-read to find out.
    Unknown,
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;
