//! A node's store: several engine shards over the bucket space, MVCC on top, and the one seam the APIs
//! call ("serve a request" → "the shard that holds the key").
//!
//! A standalone node's shards are local: writes go through each shard's writer thread
//! ([`crate::writer`]); the `*_async` methods wait for them without holding a thread, the plain ones
//! block. A replicated node's shards are Raft groups ([`crate::replicated`]): writes are proposed through
//! the group, reads wait for the consistency level they ask for; only the `*_async` methods serve them.
//! Reads of the newest version are one point read and run on the caller's thread; reads at an explicit
//! timestamp may wait for writes in flight below it, so they run on blocking tasks.

use crate::config::command_bytes;
pub use crate::config::{
    DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_SCAN_BYTES, DEFAULT_MAX_VALUE_BYTES, MAX_BATCH_OPS, MAX_MAX_KEY_BYTES,
    MESSAGE_OVERHEAD_BYTES, NodeConfig,
};
use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::layout::load_layout;
use crate::mvcc;
use crate::replicated::{self, Plumbing};
use crate::routing::Router;
use crate::types::Route;
pub use crate::types::{Ack, Condition, MAX_SCAN_LIMIT, Read, ReadOptions, Scanned, Versioned};
use crate::types::{Consistency, Token};
use crate::writer::ShardWriter;
use cairn_cluster::raft::{GroupStatus, PeerChannels, RaftService, Replica, RequestHandler, Role};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::{BucketRange, Config, Db, MetricsSnapshot};
use cairn_kv::DbReader;
use cairn_kv::reader::{Found, ReadAt};
use cairn_kv::{Leaders, Pending};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a clean stop waits for the writes its leaders proposed to be decided before it hands the
/// leaderships over (new writes go to the next leaders meanwhile).
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// How long a read at an explicit timestamp waits for writes below it to finish.
const PENDING_WAIT: Duration = Duration::from_secs(5);

/// A shard's status.
#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    /// Index of the shard on this node.
    pub shard: usize,
    /// Its buckets.
    pub buckets: Vec<BucketRange>,
    /// Bytes in SST files.
    pub sst_bytes: u64,
    /// Bytes in memtables.
    pub memtable_bytes: u64,
    /// Bytes of live data in the buckets it owns, about ([`Db::bucket_bytes`]).
    pub live_bytes: u64,
    /// The bucket that halves `live_bytes`, where a split by size cuts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_split_at: Option<u16>,
    /// Requests per second served here, smoothed over the last seconds.
    pub requests_per_sec: f64,
    /// The bucket that halves the requests, where a split by load cuts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_split_at: Option<u16>,
    /// Files per level.
    pub level_files: Vec<usize>,
    /// Whether it serves requests (a replica a move brings here catches up first).
    pub serving: bool,
    /// Replicated stores: this node's replica of the shard's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<GroupStatus>,
}

/// What serves a shard on this node.
enum Backend {
    /// The shard alone, with its writer thread (which shares the `Db`).
    Local { db: Arc<Db>, writer: ShardWriter },
    /// This node's replica of the shard's Raft group.
    Replicated(Replica),
}

struct Shard {
    /// The shard's id (its Raft group's, when replicated).
    group: u64,
    ranges: Vec<BucketRange>,
    backend: Backend,
    /// Leader changes this node has seen in the shard's group.
    leader_changes: Arc<AtomicU64>,
}

impl Shard {
    fn db(&self) -> Arc<Db> {
        match &self.backend {
            Backend::Local { db, .. } => Arc::clone(db),
            Backend::Replicated(replica) => replica.db(),
        }
    }

    /// Fails if the replica was stopped: a read from [`Shard::db`] that this follows may have seen the
    /// empty engine a retired replica begins (its shard moved or merged away), so it must not answer.
    fn still_running(&self) -> Result<()> {
        match &self.backend {
            Backend::Replicated(replica) if replica.is_stopped() => Err(NodeError::Unavailable(format!(
                "shard {}'s replica here was stopped while it was read (it moved or merged away): try again",
                self.group
            ))),
            _ => Ok(()),
        }
    }
}

/// Refuses a read of `shard` at `at` done so far through engine `db` if `at` is below the GC threshold
/// `db`'s compactions run with. Checked after the read: the read's view was taken earlier, when the
/// threshold was at most what it is now, and compaction keeps everything a view sees; so a threshold
/// at or below `at` now means the read saw every version it needed. (The engine the read used, not
/// the shard's current one: a snapshot install may have swapped it meanwhile.)
fn check_gc(shard: &Shard, db: &cairn_engine::Db, at: Timestamp) -> Result<()> {
    if !matches!(shard.backend, Backend::Replicated(_)) {
        return Ok(());
    }
    let threshold = db.filter_threshold();
    if at.wall_time < threshold {
        return Err(NodeError::BelowGcThreshold(format!(
            "read timestamp {at} is below the GC threshold of shard {} ({threshold}.0): older versions may be gone",
            shard.group
        )));
    }
    Ok(())
}

/// A replicated node's Raft plumbing.
struct Replication {
    plumbing: Plumbing,
    /// Evaluates writes for the groups this node leads.
    leaders: Arc<Leaders>,
}

/// The local store.
pub struct Node {
    config: NodeConfig,
    total_buckets: u32,
    shards: parking_lot::RwLock<Arc<ShardSet>>,
    /// The clock, and the timestamps of writes not yet committed.
    pending: Arc<Pending>,
    writer_threads: Mutex<Vec<JoinHandle<()>>>,
    replication: Option<Replication>,
    /// A cluster member's routing to shards it holds no replica of.
    router: Option<Router>,
    /// What this node saw happen.
    events: Arc<crate::events::Events>,
    /// Requests served here, per bucket.
    load: crate::load::BucketLoad,
    /// Woken whenever the shards served here change.
    reshaped: tokio::sync::Notify,
    /// Held while a replica is being added (a pass of the reconciler and a split's watcher may both try
    /// to open a split's new shard: only one opens it).
    opening: tokio::sync::Mutex<()>,
    /// The byte rate this node's backup exports share (the cluster's `backup_rate`).
    backup_pace: Arc<cairn_engine::bulk::Pacer>,
    /// Bounds the backup exports running here at once.
    export_slots: Arc<tokio::sync::Semaphore>,
    /// How the transactions coordinated here ended.
    txn_stats: txn::TxnStats,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("store", &self.config.store)
            .field("shards", &self.shard_count())
            .finish()
    }
}

/// The engine settings of shard `i`.
fn shard_config(config: &NodeConfig, total_buckets: u32, shard: u64) -> Config {
    let mut c = Config::new(config.store.join(format!("shard-{shard}")));
    c.total_buckets = total_buckets;
    // Room for the tag byte, the timestamp column and the row encoding around a full-size value.
    c.max_value_bytes = config.max_value_bytes + 64;
    c.block_cache_bytes = config.block_cache_bytes;
    if config.replication.is_none() {
        c.compaction_filter = Some(Arc::new(mvcc::GcFilterFactory { ttl: config.gc_ttl }));
    } else {
        // Replicas compact at different times, so garbage collection by each one's clock would make
        // their contents (and digests) differ: it collects below the threshold decided through the log.
        c.compaction_filter = Some(Arc::new(mvcc::ThresholdGcFilterFactory));
        // The Raft log is the log.
        c.wal = false;
    }
    c
}

fn open_error(config: &NodeConfig, i: u64, e: cairn_engine::Error) -> NodeError {
    match e {
        cairn_engine::Error::Locked(_) => {
            NodeError::Startup(format!("store {} is in use by another cairn process", config.store.display()))
        }
        e => NodeError::Startup(format!("cannot open shard {i} of {}: {e}", config.store.display())),
    }
}

/// `store` as an absolute path (snapshot volumes are named by absolute paths, so that other replicas
/// can read them).
pub(crate) fn absolute_store(store: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(store).map_err(|e| NodeError::Startup(format!("store {}: {e}", store.display())))
}

/// Opens the node's Raft log (every group's entries) in `<store>/raft`.
pub(crate) fn open_raft_log(store: &std::path::Path) -> Result<RaftLog> {
    let fs: Arc<dyn cairn_engine::fs::FileSystem> = Arc::new(cairn_engine::fs::StdFs::new());
    RaftLog::open(RaftLogConfig::new(store.join("raft"), fs))
        .map_err(|e| NodeError::Startup(format!("cannot open the Raft log of {}: {e}", store.display())))
}

pub(crate) use cairn_cluster::control::ReplicaPlan;

/// `ShardSet::owner`'s mark for a bucket whose shard has no replica on this node.
const NOT_HERE: u16 = u16::MAX;

/// Where a request for a bucket is served.
enum Located {
    /// By this node's shard.
    Here(Arc<Shard>),
    /// By another node (a cluster member forwards it).
    There,
}

impl Node {
    /// Opens (or creates) a standalone store ([`Node::start`] opens either kind).
    pub fn open(config: NodeConfig) -> Result<Node> {
        if config.replication.is_some() {
            return Err(NodeError::Startup("a replicated store is opened with Node::start".into()));
        }
        config.validate()?;
        let layout = load_layout(&config)?;
        let mut shards = Vec::with_capacity(layout.shards.len());
        let pending = Arc::new(Pending::new(config.max_clock_offset));
        let mut writer_threads = Vec::with_capacity(layout.shards.len());
        for (i, &(start, end)) in layout.shards.iter().enumerate() {
            let db = Db::open(shard_config(&config, layout.total_buckets, i as u64), vec![start..=end])
                .map_err(|e| open_error(&config, i as u64, e))?;
            let db = Arc::new(db);
            let (writer, thread) = ShardWriter::start(
                i,
                Arc::clone(&db),
                Arc::clone(&pending),
                layout.total_buckets,
                config.sync,
            )?;
            writer_threads.push(thread);
            shards.push(Arc::new(Shard {
                group: i as u64,
                ranges: vec![start..=end],
                backend: Backend::Local { db, writer },
                leader_changes: Arc::default(),
            }));
        }
        Ok(Node {
            total_buckets: layout.total_buckets,
            shards: parking_lot::RwLock::new(Arc::new(ShardSet::new(shards, layout.total_buckets, |_| true))),
            config,
            pending,
            writer_threads: Mutex::new(writer_threads),
            replication: None,
            router: None,
            events: crate::events::Events::new(),
            load: crate::load::BucketLoad::new(layout.total_buckets),
            reshaped: tokio::sync::Notify::new(),
            opening: tokio::sync::Mutex::new(()),
            backup_pace: Arc::new(cairn_engine::bulk::Pacer::new(0)),
            export_slots: backup::export_slots(),
            txn_stats: txn::TxnStats::default(),
        })
    }

    /// Opens (or creates) the store, standalone or replicated. A replicated node starts its replica of
    /// every shard's group; the member with the lowest id makes each new group (the others wait to
    /// hear from it). The caller serves [`Node::raft_service`] on the gRPC address peers know it by.
    pub async fn start(mut config: NodeConfig) -> Result<Node> {
        let Some(rc) = config.replication.clone() else {
            return tokio::task::spawn_blocking(move || Node::open(config))
                .await
                .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))?;
        };
        rc.validate()?;
        // A cluster member's TTL is the cluster's setting (set before it starts, and as it changes);
        // a node of a fixed group's is its own.
        rc.gc.set_ttl_if_unset(config.gc_ttl);
        config.store = absolute_store(&config.store)?;
        let (layout, log) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let layout = load_layout(&config)?;
                Ok((layout, open_raft_log(&config.store)?))
            })
            .await
            .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))??
        };
        let plumbing = Plumbing {
            service: RaftService::default(),
            wire: PeerChannels::new(config.max_message_bytes),
            log: Arc::new(log),
            events: crate::events::Events::new(),
            frozen: cairn_cluster::raft::FrozenShards::default(),
        };
        plumbing.events.set_observer(rc.node_id);
        let first = rc.members.keys().next() == Some(&rc.node_id);
        let plans = (layout.shards.iter().enumerate())
            .map(|(i, &range)| ReplicaPlan {
                group: i as u64,
                ranges: vec![range],
                bootstrap: Some(cairn_cluster::control::Bootstrap { members: rc.members.clone(), first }),
                serving: true,
            })
            .collect();
        Node::start_replicas(config, plumbing, layout.total_buckets, plans).await
    }

    /// Starts this node's replicas of the groups `plans` name over the bucket space of `total_buckets`
    /// (buckets no plan covers are served elsewhere), sharing `plumbing` (the node's Raft log, peer
    /// connections and Raft service). `config.replication` must be set and `config.store` absolute.
    pub(crate) async fn start_replicas(
        config: NodeConfig,
        plumbing: Plumbing,
        total_buckets: u32,
        plans: Vec<ReplicaPlan>,
    ) -> Result<Node> {
        let rc = config
            .replication
            .clone()
            .ok_or_else(|| NodeError::Internal("replicas started without a replication config".into()))?;
        config.validate()?;
        let mut shards = Vec::with_capacity(plans.len());
        let serving: BTreeSet<u64> = plans.iter().filter(|p| p.serving).map(|p| p.group).collect();
        for plan in plans {
            let (group, orphan) = (plan.group, plan.ranges.is_empty());
            match start_replica(&config, &rc, &plumbing, total_buckets, plan).await {
                Ok(shard) => shards.push(Arc::new(shard)),
                // A replica of a shard the map no longer names is only kept for a merge to take its
                // buckets in: without it, this node's replica of the merged shard re-syncs instead.
                Err(e) if orphan => {
                    tracing::warn!(shard = group, error = %e, "not reopening a replica the map no longer names")
                }
                Err(e) => return Err(e),
            }
        }
        let set = ShardSet::new(shards, total_buckets, |s| serving.contains(&s.group));
        let pending = Arc::new(Pending::new(config.max_clock_offset));
        let leaders =
            Leaders::new(Arc::clone(&pending), total_buckets, rc.request_timeout, config.max_command_bytes());
        plumbing.service.set_request_handler(Arc::clone(&leaders) as Arc<dyn RequestHandler>);
        Ok(Node {
            total_buckets,
            shards: parking_lot::RwLock::new(Arc::new(set)),
            config,
            pending,
            writer_threads: Mutex::new(Vec::new()),
            events: Arc::clone(&plumbing.events),
            replication: Some(Replication { plumbing, leaders }),
            router: None,
            load: crate::load::BucketLoad::new(total_buckets),
            reshaped: tokio::sync::Notify::new(),
            opening: tokio::sync::Mutex::new(()),
            backup_pace: Arc::new(cairn_engine::bulk::Pacer::new(0)),
            export_slots: backup::export_slots(),
            txn_stats: txn::TxnStats::default(),
        })
    }

    /// The shards as they are now.
    fn set(&self) -> Arc<ShardSet> {
        Arc::clone(&self.shards.read())
    }

    /// Makes this node forward requests for shards it holds no replica of (a cluster member).
    pub(crate) fn set_router(&mut self, router: Router) {
        self.router = Some(router);
    }

    /// Routes by `state`'s map from now on if it is newer than the one routed by (a cluster member).
    pub(crate) fn observe_map(&self, state: &cairn_cluster::meta::ClusterState) {
        if let Some(router) = &self.router {
            router.observe(state);
        }
    }

    /// Where a request for `bucket` (forwarded here with `route`, if set) is served; one served here
    /// counts toward the bucket's load.
    async fn locate(&self, bucket: u16, route: Option<Route>) -> Result<Located> {
        let here = self.set().of_bucket(bucket).inspect(|_| self.load.record(bucket));
        match (route, &self.router) {
            (None, Some(_)) if here.is_err() => Ok(Located::There),
            (None, _) => here.map(Located::Here),
            (Some(_), None) => {
                Err(NodeError::InvalidArgument("a routed request to a node outside a cluster".into()))
            }
            (Some(route), Some(router)) => {
                router.check(route).await?;
                let group = route.shard.group();
                // A move's destination whose move the map (as just checked) shows finished serves at
                // once, before its reconciler gets to it.
                let placed_here = || {
                    let view = router.view();
                    view.map.shard(route.shard).is_some_and(|s| {
                        Some(s.epoch) == Some(route.epoch)
                            && self.node_id().is_some_and(|id| s.replicas.contains(&id))
                    })
                };
                let here = match here {
                    Err(_) if self.groups().contains(&group) && placed_here() => {
                        self.serve_also(group);
                        self.set().of_bucket(bucket)
                    }
                    here => here,
                };
                // A split's new shard serving here before the map (as just checked) names it: the
                // sender routed by the shard it split from, which gave the bucket up here already, and
                // the new shard's replica here holds it. Served by it, as a request routed here is.
                let ahead_of_map =
                    |shard: &Shard| router.view().map.shards.iter().all(|s| s.id.group() != shard.group);
                match here {
                    Ok(shard) if shard.group == route.shard.group() => Ok(Located::Here(shard)),
                    Ok(shard) if ahead_of_map(&shard) => Ok(Located::Here(shard)),
                    _ => Err(NodeError::Misrouted(format!(
                        "bucket {bucket} is not shard {}'s on this node",
                        route.shard
                    ))),
                }
            }
        }
    }

    /// The router (only called where [`Located::There`] was answered, which needs one).
    fn router(&self) -> Result<&Router> {
        self.router.as_ref().ok_or_else(|| NodeError::Internal("forwarding without a router".into()))
    }

    /// What this node saw happen (leader changes, snapshot installs; a cluster member's also joins,
    /// placements and node liveness).
    pub fn events(&self) -> Arc<crate::events::Events> {
        Arc::clone(&self.events)
    }

    /// Answers peers' Raft calls for this node's groups (`None`: a standalone node).
    pub fn raft_service(&self) -> Option<RaftService> {
        self.replication.as_ref().map(|r| r.plumbing.service.clone())
    }

    /// This node's id in its replication group (`None`: standalone).
    pub fn node_id(&self) -> Option<u64> {
        self.config.replication.as_ref().map(|r| r.node_id)
    }

    /// Hands the leadership of every group this node leads to another replica, all at once, each
    /// waiting at most `timeout` (a clean stop: the groups keep a leader instead of waiting out an
    /// election). First this node stops evaluating writes (they go to the next leaders) and waits
    /// briefly for those it proposed to be decided; it never evaluates again. Returns how many groups
    /// had to be handed over but were not.
    pub async fn hand_over_leadership(&self, timeout: Duration) -> usize {
        if let Some(r) = &self.replication
            && !r.leaders.drain(timeout.min(DRAIN_WAIT)).await
        {
            tracing::warn!("writes still in flight after {DRAIN_WAIT:?}; handing leaderships over anyway");
        }
        let mut tasks = Vec::new();
        for shard in &self.set().list {
            if let Backend::Replicated(replica) = &shard.backend
                && replica.status().role == Role::Leader
            {
                let replica = replica.clone();
                tasks.push(tokio::spawn(async move { replica.hand_over(timeout).await }));
            }
        }
        let mut failed = 0;
        for task in tasks {
            if !matches!(task.await, Ok(true)) {
                failed += 1;
            }
        }
        failed
    }

    /// Stops every replica (a standalone node has none). Call before [`Node::close`].
    pub async fn stop_replication(&self) {
        let Some(r) = &self.replication else { return };
        for shard in &self.set().list {
            if let Backend::Replicated(replica) = &shard.backend {
                r.plumbing.service.unregister(shard.group);
                if let Err(e) = replica.shutdown().await {
                    tracing::warn!(shard = shard.group, error = %e, "replica did not stop cleanly");
                }
            }
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's clock.
    pub(crate) fn pending_clock(&self) -> &cairn_kv::hlc::Clock {
        self.pending.clock()
    }

    /// A fresh timestamp (the response header's).
    pub fn now(&self) -> Timestamp {
        self.pending.clock().now()
    }

    /// The local shard serving `bucket`.
    fn shard_of(&self, bucket: u16) -> Result<Arc<Shard>> {
        self.set().of_bucket(bucket)
    }

    /// A key to read or delete: not empty, and no longer than any key a store may hold (a key written
    /// under a larger `max_key_bytes` stays readable and deletable after the limit is lowered).
    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(NodeError::InvalidArgument("the key is empty".into()));
        }
        self.check_bound(key)
    }

    /// A key to write: [`Node::check_key`], and within this node's `max_key_bytes`.
    fn check_new_key(&self, key: &[u8]) -> Result<()> {
        self.check_key(key)?;
        let max = self.config.max_key_bytes;
        if key.len() > max {
            return Err(NodeError::TooLarge(format!(
                "key of {} bytes is over the limit of {max} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// A range bound: empty (the first key) or no longer than any key a store may hold.
    fn check_bound(&self, key: &[u8]) -> Result<()> {
        if key.len() > MAX_MAX_KEY_BYTES {
            return Err(NodeError::TooLarge(format!(
                "key of {} bytes is over the limit of {MAX_MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_read_ts(&self, at: Option<Timestamp>) -> Result<Timestamp> {
        let Some(at) = at else { return Ok(Timestamp::MAX) };
        // A replicated shard's horizon is the GC threshold its log decided, checked after the read
        // (`Node::check_gc`); a single node's is its own clock's.
        let horizon = if self.config.replication.is_some() { 0 } else { mvcc::horizon(self.config.gc_ttl) };
        if at.wall_time < horizon {
            return Err(NodeError::InvalidArgument(format!(
                "read timestamp {at} is below the GC horizon ({horizon}.0): older versions may be gone"
            )));
        }
        // Wait until every write that may get a timestamp at or below `at` has committed. A timestamp
        // beyond the clock's offset bound is refused before it can move the clock.
        self.pending.clock().observe(at)?;
        if !self.pending.wait_below(at, Instant::now() + PENDING_WAIT) {
            return Err(NodeError::Unavailable("writes below the read timestamp are still in flight".into()));
        }
        Ok(at)
    }

    /// The newest version of `key` at or below `at` (the newest overall when `at` is `None`), read from
    /// this node's copy without any consistency wait (a replicated store's APIs use
    /// [`Node::get_async`]). Blocks while writes below `at` are in flight.
    pub fn get(&self, key: &[u8], at: Option<Timestamp>) -> Result<Option<Versioned>> {
        self.check_key(key)?;
        let at = self.check_read_ts(at)?;
        self.read_latest(key, at)
    }

    /// Waits until `shard` may serve a read with `options` here: how far behind it is.
    async fn ready_to_read(&self, shard: &Shard, options: &ReadOptions) -> Result<u64> {
        let (Backend::Replicated(replica), Some(rc)) = (&shard.backend, &self.config.replication) else {
            return Ok(0);
        };
        if let Some(at) = options.at {
            // A read at a timestamp takes its read point once every clock has passed it by the maximum
            // offset (this one by twice that): no node evaluates a write at or below it from then on,
            // and no leader writes an intent there (its closed timestamp, physical time less the
            // offset, is past it), so the point covers every write such a read can see, and the read
            // answers as a backup at `at` holds.
            let clock = self.pending.clock();
            clock.check(at)?;
            let offset = clock.max_offset().as_nanos() as u64;
            let past = at.wall_time.saturating_add(offset.saturating_mul(2)).saturating_add(1_000_000);
            let wait = std::time::Duration::from_nanos(past.saturating_sub(clock.physical()));
            tokio::time::sleep(wait).await;
        }
        let group = shard.group as usize;
        let token = options.after.iter().filter(|t| t.shard == group).map(|t| t.index).max();
        // A token of another shard that may hold writes to what this replica serves (a split's new
        // shard, which this replica may not have split off yet): only a quorum's read point makes this
        // replica apply what precedes that write (then, if the bucket moved, the engine refuses the
        // read and it is routed again, to the shard the token names).
        let consistency = match options.consistency {
            Consistency::Eventual if self.token_elsewhere(shard, &options.after) => Consistency::Strong,
            level => level,
        };
        let point = replicated::read_point(replica, consistency, token, rc.request_timeout).await?;
        Ok(if consistency == Consistency::Eventual { point.behind } else { 0 })
    }

    /// Whether a token in `after` names a shard other than `shard` that may hold writes to buckets
    /// `shard`'s replica serves here ([`crate::routing::View::may_hold_writes_for`]).
    fn token_elsewhere(&self, shard: &Shard, after: &[Token]) -> bool {
        let Some(router) = &self.router else { return false };
        let others = after.iter().filter(|t| t.shard as u64 != shard.group);
        let mut others = others.peekable();
        if others.peek().is_none() {
            return false;
        }
        let view = router.view();
        let ranges: Vec<(u16, u16)> = shard.ranges.iter().map(|r| (*r.start(), *r.end())).collect();
        others.any(|t| view.may_hold_writes_for(t.shard as u64, &ranges))
    }

    /// [`Node::get`] at the consistency `options` ask for.
    pub async fn get_async(
        self: &Arc<Self>,
        key: Vec<u8>,
        options: ReadOptions,
    ) -> Result<Read<Option<Versioned>>> {
        self.check_key(&key)?;
        let bucket = mvcc::bucket_of(&key, self.total_buckets);
        // Boxed: inline, its future nests too deep for the compiler's layout queries.
        self.sent_again_when_moved(options.route, || Box::pin(self.get_once(bucket, &key, &options))).await
    }

    /// One try of [`Node::get_async`].
    async fn get_once(
        self: &Arc<Self>,
        bucket: u16,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Read<Option<Versioned>>> {
        let shard = match self.locate(bucket, options.route).await? {
            Located::Here(shard) => shard,
            Located::There => return self.router()?.get(bucket, key.to_vec(), options).await,
        };
        let behind = self.ready_to_read(&shard, options).await?;
        // A transaction's intent in the read's way is pushed above the read and resolved; the read
        // waits for a transaction that does not make way (a serializable one, until it finishes).
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        // The newest read's time: intents up to it stand in its way, and are pushed above it.
        let now = self.now();
        let mut pause = txn::FIRST_PUSH_PAUSE;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "key {key:?} stayed locked by transactions: retry"
                )));
            }
            // From the shard whose read point was just established (a split or merge since may have
            // given the bucket to another: then the engine refuses it, and the read is routed again).
            let found = match options.at {
                // The newest version is one point read: served here, no hand-off.
                None => self.read_found(&shard, key, ReadAt::newest(now))?,
                at => {
                    let (node, shard, key) = (Arc::clone(self), Arc::clone(&shard), key.to_vec());
                    tokio::task::spawn_blocking(move || {
                        let at = node.check_read_ts(at)?;
                        node.read_found(&shard, &key, ReadAt::at(at))
                    })
                    .await
                    .map_err(|e| NodeError::Internal(format!("read task failed: {e}")))??
                }
            };
            let intent = match found {
                Found::Version(value) => return Ok(Read { value, behind }),
                Found::Locked(intent) => intent,
                Found::Uncertain(ts) => {
                    return Err(NodeError::Internal(format!("a read without uncertainty found one at {ts}")));
                }
            };
            let push = Node::push_above(options.at.unwrap_or(now));
            if !self.clear_intent(key, &intent.meta.txn, (push, 0), deadline, &mut pause).await? {
                return Err(NodeError::Unavailable(format!(
                    "key {key:?} is locked by transaction {}, which has not finished: retry",
                    intent.meta.txn.id
                )));
            }
        }
    }

    fn read_latest(&self, key: &[u8], at: Timestamp) -> Result<Option<Versioned>> {
        let shard = self.shard_of(mvcc::bucket_of(key, self.total_buckets))?;
        self.read_from(&shard, key, at)
    }

    /// The newest version of `key` at or below `at` in `shard`'s replica here (a standalone store's:
    /// no transaction holds a key there).
    fn read_from(&self, shard: &Shard, key: &[u8], at: Timestamp) -> Result<Option<Versioned>> {
        match self.read_found(shard, key, ReadAt::at(at))? {
            Found::Version(value) => Ok(value),
            Found::Locked(intent) => Err(NodeError::Unavailable(format!(
                "key {key:?} is locked by transaction {}: retry",
                intent.meta.txn.id
            ))),
            Found::Uncertain(ts) => {
                Err(NodeError::Internal(format!("a read without uncertainty found one at {ts}")))
            }
        }
    }

    /// `key` as `read` finds it in `shard`'s replica here.
    fn read_found(&self, shard: &Shard, key: &[u8], read: ReadAt) -> Result<Found> {
        let db = shard.db();
        let found = DbReader { db: &db, total_buckets: self.total_buckets }.read(key, &read)?;
        shard.still_running()?;
        check_gc(shard, &db, read.ts)?;
        Ok(found)
    }

    /// The id of the shard that owns `bucket` (held here or, for a cluster member, anywhere).
    fn shard_id(&self, bucket: u16) -> Result<u64> {
        match (self.shard_of(bucket), &self.router) {
            (Ok(shard), _) => Ok(shard.group),
            (Err(_), Some(router)) => router
                .view()
                .map
                .shard_for_bucket(bucket)
                .map(|s| s.id.group())
                .ok_or_else(|| NodeError::Internal(format!("no shard owns bucket {bucket}"))),
            (Err(e), None) => Err(e),
        }
    }

    /// Per-shard status.
    pub fn status(&self) -> Vec<ShardStatus> {
        let set = self.set();
        let load = self.load.rates();
        set.list
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let db = s.db();
                let m = db.metrics();
                let sizes: Vec<(u16, f64)> =
                    db.bucket_bytes().into_iter().map(|(b, n)| (b, n as f64)).collect();
                let rates = load.of(&s.ranges);
                ShardStatus {
                    shard: s.group as usize,
                    buckets: s.ranges.clone(),
                    sst_bytes: m.level_bytes.iter().sum(),
                    memtable_bytes: m.memtable_bytes,
                    live_bytes: sizes.iter().map(|(_, n)| *n as u64).sum(),
                    size_split_at: cairn_cluster::placement::halving_bucket(&sizes),
                    requests_per_sec: rates.iter().map(|(_, r)| r).sum(),
                    load_split_at: cairn_cluster::placement::halving_bucket(&rates),
                    level_files: m.level_files.clone(),
                    serving: set.serves(i),
                    replication: group_status(s),
                }
            })
            .collect()
    }

    /// Per shard held here (in [`Node::status`] order): its id, this node's view of its group (`None`:
    /// standalone) and the leader changes seen in it since the node started.
    pub fn group_statuses(&self) -> Vec<(u64, Option<GroupStatus>, u64)> {
        let set = self.set();
        set.list
            .iter()
            .map(|s| (s.group, group_status(s), s.leader_changes.load(Ordering::Relaxed)))
            .collect()
    }

    /// Number of shards held here (serving or catching up).
    pub fn shard_count(&self) -> usize {
        self.set().list.len()
    }

    /// Fsyncs of the node's Raft log (`None`: standalone).
    pub fn raft_log_syncs(&self) -> Option<u64> {
        self.replication.as_ref().map(|r| r.plumbing.log.syncs())
    }

    /// Engine metrics per shard held here, with the shard's id.
    pub fn engine_metrics(&self) -> Vec<(u64, MetricsSnapshot)> {
        self.set().list.iter().map(|s| (s.group, s.db().metrics())).collect()
    }

    /// Compacts every shard fully (old versions below the GC horizon are dropped on the way).
    pub fn compact(&self) -> Result<()> {
        for s in &self.set().list {
            s.db().compact()?;
        }
        Ok(())
    }

    /// Size of the bucket space.
    pub fn total_buckets(&self) -> u32 {
        self.total_buckets
    }

    /// Stops the writers (writes still queued are committed first) and closes every shard, flushing
    /// nothing extra: the WAL already holds every write.
    pub fn close(self) -> Result<()> {
        let Node { shards, writer_threads, .. } = self;
        let set = shards.into_inner();
        let list = Arc::try_unwrap(set).map_or_else(|set| set.list.clone(), |set| set.list);
        let mut dbs = Vec::with_capacity(list.len());
        for shard in list {
            let shard = Arc::try_unwrap(shard)
                .map_err(|_| NodeError::Internal("a shard is still in use while closing".into()))?;
            match shard.backend {
                Backend::Local { db, writer } => {
                    // Dropping the last sender ends the writer once its queue is drained.
                    drop(writer);
                    dbs.push(db);
                }
                // The Raft log holds every entry; the engine (WAL off) closes when its last user
                // lets go, and replays the log tail on the next start.
                Backend::Replicated(replica) => drop(replica),
            }
        }
        for thread in writer_threads.into_inner() {
            thread.join().map_err(|_| NodeError::Internal("a shard writer thread panicked".into()))?;
        }
        for db in dbs {
            let db = Arc::try_unwrap(db)
                .map_err(|_| NodeError::Internal("a shard is still in use while closing".into()))?;
            db.close()?;
        }
        Ok(())
    }
}

/// This node's view of `shard`'s group (`None`: standalone).
fn group_status(shard: &Shard) -> Option<GroupStatus> {
    match &shard.backend {
        Backend::Replicated(replica) => Some(replica.status()),
        Backend::Local { .. } => None,
    }
}

#[path = "node_write.rs"]
mod write;

#[path = "node_scan.rs"]
mod scan;

#[path = "node_replicas.rs"]
mod replicas;

#[path = "node_backup.rs"]
mod backup;

#[path = "node_txn.rs"]
mod txn;
use replicas::{ShardSet, start_replica};
pub(crate) use replicas::{replicas_on_disk, retire_stale};
pub(crate) use txn::FIRST_PUSH_PAUSE;

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
