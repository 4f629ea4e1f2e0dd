//! A node's shards as a set that changes: a cluster member starts replicas the map places on it,
//! serves the ones the map names it for, and retires those that moved away ([`ShardSet`] and the
//! [`Node`] methods that change it), plus starting one replica and retiring stored ones.

use super::{Backend, NOT_HERE, Node, NodeConfig, ReplicaPlan, Shard, open_error, shard_config};
use crate::error::{NodeError, Result};
use crate::replicated::{self, Plumbing, ReplicationConfig};
use cairn_cluster::raft::{Replica, ReplicaConfig, ShardStateMachine};
use cairn_cluster::raft_log::RaftLog;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// The file marking a shard directory whose replica was retired ([`Node::retire_replica`]).
pub(super) const RETIRED_FILE: &str = "RETIRED";

/// The shards a node holds, and which of them serves each bucket. A cluster member's set changes as
/// replicas move ([`Node::add_replica`], [`Node::retire_replica`]): requests take the set as it is when
/// they start.
pub(super) struct ShardSet {
    pub(super) list: Vec<Arc<Shard>>,
    /// Per bucket, the index in `list` of the shard serving it (`NOT_HERE`: none here). A replica that is
    /// still catching up (a move's destination) is in `list` but serves no bucket.
    pub(super) owner: Vec<u16>,
}

impl ShardSet {
    /// `list`, with the shards `serving` picks serving their buckets.
    pub(super) fn new(
        list: Vec<Arc<Shard>>,
        total_buckets: u32,
        serving: impl Fn(&Shard) -> bool,
    ) -> ShardSet {
        let mut owner = vec![NOT_HERE; total_buckets as usize];
        for (i, shard) in list.iter().enumerate().filter(|(_, s)| serving(s)) {
            for range in &shard.ranges {
                for b in range.clone() {
                    owner[usize::from(b)] = i as u16;
                }
            }
        }
        ShardSet { list, owner }
    }

    /// Index of the shard serving `bucket`.
    pub(super) fn index_of_bucket(&self, bucket: u16) -> Result<usize> {
        match self.owner.get(usize::from(bucket)) {
            Some(&i) if i != NOT_HERE => Ok(usize::from(i)),
            _ => Err(NodeError::Unavailable(format!(
                "bucket {bucket}'s shard has no replica on this node: ask a node that holds it \
                 (cairn status lists them)"
            ))),
        }
    }

    /// The shard serving `bucket`.
    pub(super) fn of_bucket(&self, bucket: u16) -> Result<Arc<Shard>> {
        Ok(Arc::clone(&self.list[self.index_of_bucket(bucket)?]))
    }

    /// True if `list[i]` serves its buckets.
    pub(super) fn serves(&self, i: usize) -> bool {
        self.list[i].ranges.first().is_some_and(|r| self.owner[usize::from(*r.start())] == i as u16)
    }

    /// The shards serving their buckets.
    pub(super) fn serving(&self) -> Vec<Arc<Shard>> {
        (0..self.list.len()).filter(|i| self.serves(*i)).map(|i| Arc::clone(&self.list[i])).collect()
    }

    /// The serving shard of group `group`.
    pub(super) fn serving_group(&self, group: u64) -> Option<Arc<Shard>> {
        (0..self.list.len())
            .find(|i| self.list[*i].group == group && self.serves(*i))
            .map(|i| Arc::clone(&self.list[i]))
    }

    /// Fails unless every bucket's shard serves here.
    pub(super) fn check_all_here(&self) -> Result<()> {
        match self.owner.iter().position(|&o| o == NOT_HERE) {
            Some(b) => self.index_of_bucket(b as u16).map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Node {
    /// Starts this node's replica of `plan`'s group (a replica the map places here, or a move's
    /// destination, which serves requests only once [`Node::serve_only`] names it). Nothing happens if
    /// the node already holds a replica of the group.
    pub(crate) async fn add_replica(&self, plan: ReplicaPlan) -> Result<()> {
        let (Some(r), Some(rc)) = (&self.replication, &self.config.replication) else {
            return Err(NodeError::Internal("a standalone node holds no replicas".into()));
        };
        // One at a time with a split's new shard: a watcher may be opening this very group by
        // reference while a pass starts it empty.
        let _one_at_a_time = self.opening.lock().await;
        if self.replica(plan.group).is_some() {
            return Ok(());
        }
        let (group, starts_serving) = (plan.group, plan.serving);
        let shard = Arc::new(start_replica(&self.config, rc, &r.plumbing, self.total_buckets, plan).await?);
        self.change_set(|list, serving| {
            list.push(shard);
            if starts_serving {
                serving.insert(group);
            }
        });
        Ok(())
    }

    /// Starts this node's replica of group `new_group`, which a split of group `parent` made, from this
    /// node's replica of `parent` (if its last split gave exactly `ranges` away), by reference
    /// ([`ShardStateMachine::open_split`]), with the voters the split recorded. False if no replica
    /// here applied that split (the node then gets a replica the ordinary way,
    /// empty, once the map names the new shard).
    pub(crate) async fn add_split_replica(
        &self,
        parent: u64,
        new_group: u64,
        ranges: &[(u16, u16)],
    ) -> Result<bool> {
        let (Some(r), Some(rc)) = (&self.replication, &self.config.replication) else {
            return Err(NodeError::Internal("a standalone node holds no replicas".into()));
        };
        let asked = std::time::Instant::now();
        let _one_at_a_time = self.opening.lock().await;
        let waited_ms = asked.elapsed().as_millis() as u64;
        if self.replica(new_group).is_some() {
            return Ok(true);
        }
        let Some(off) = self.replica(parent).and_then(|p| p.state_machine().split_off(new_group, ranges))
        else {
            return Ok(false);
        };
        let first_leader = off.first_leader;
        let (config, total_buckets, log) =
            (self.config.clone(), self.total_buckets, Arc::clone(&r.plumbing.log));
        let began = std::time::Instant::now();
        let sm = tokio::task::spawn_blocking(move || {
            let template = shard_config(&config, total_buckets, new_group);
            let (sm, stats) = ShardStateMachine::open_split(template.dir.clone(), template, &off)
                .map_err(|e| open_error(&config, new_group, e))?;
            let voted = cairn_cluster::raft::prepare_split_log(&log, new_group, first_leader)
                .map_err(|e| NodeError::Startup(format!("cannot start shard {new_group}'s log: {e}")))?;
            tracing::info!(
                shard = new_group,
                from = parent,
                imported = stats.files_imported,
                copied = stats.bytes_copied,
                waited_ms,
                opened_ms = began.elapsed().as_millis() as u64,
                "made a split's new shard"
            );
            Ok::<_, NodeError>((sm, voted))
        })
        .await
        .map_err(|e| NodeError::Internal(format!("split task failed: {e}")))??;
        let (sm, voted) = sm;
        let leads = voted && first_leader == Some(rc.node_id);
        let shard = Arc::new(launch(rc, &r.plumbing, new_group, sm, None, Some(leads)).await?);
        tracing::info!(
            shard = new_group,
            started_ms = began.elapsed().as_millis() as u64,
            leads,
            "split's new shard runs"
        );
        // The node the split named leads the new group at once (its log starts with the vote). A split
        // that named no one (written before splits did) has the node that led the split shard ask for
        // votes at once: the moved buckets wait for one round of votes, not an election timeout.
        if let (None, Some(parent), Backend::Replicated(child)) =
            (first_leader, self.replica(parent), &shard.backend)
            && parent.status().role == cairn_cluster::raft::Role::Leader
        {
            child.campaign();
        }
        // The new shard serves its buckets here at once (requests wait for its first leader), before
        // the map names it: requests this node routes by its own shards reach it. The parent serves
        // what its engine kept.
        self.change_set(|list, serving| {
            refresh_ranges(list);
            list.push(shard);
            serving.insert(new_group);
        });
        Ok(true)
    }

    /// Makes exactly the replicas of `groups` (among those held here) serve requests, each for the
    /// buckets its engine owns now (a split or a merge changed them).
    pub(crate) fn serve_only(&self, groups: &BTreeSet<u64>) {
        self.change_set(|list, serving| {
            refresh_ranges(list);
            *serving = groups.clone();
        });
    }

    /// Makes this node's replica of `group` (if held) serve requests too.
    pub(super) fn serve_also(&self, group: u64) {
        self.change_set(|_, serving| {
            serving.insert(group);
        });
    }

    /// True if `shard` is still held here (not retired since it was looked up; its ranges may have
    /// changed, which keeps the replica and its leadership counter).
    pub(super) fn still_held(&self, shard: &Arc<Shard>) -> bool {
        self.set().list.iter().any(|s| Arc::ptr_eq(&s.leader_changes, &shard.leader_changes))
    }

    /// Stops this node's replica of group `group` for good (the shard moved away): it stops serving, its
    /// Raft node stops and its contents are dropped ([`Replica::retire`]).
    pub(crate) async fn retire_replica(&self, group: u64) -> Result<()> {
        let Some(r) = &self.replication else { return Ok(()) };
        let retired = self.change_set(|list, _| {
            let i = list.iter().position(|s| s.group == group)?;
            Some(list.remove(i))
        });
        let Some(retired) = retired else { return Ok(()) };
        r.plumbing.service.unregister(group);
        r.plumbing.frozen.remove(group);
        if let Backend::Replicated(replica) = &retired.backend {
            replica
                .retire()
                .await
                .map_err(|e| NodeError::Internal(format!("retiring shard {group}: {e}")))?;
        }
        mark_retired(self.config.store.join(format!("shard-{group}"))).await
    }

    /// Changes the shard set under its lock: `edit` gets the shards held and the groups serving, and
    /// the set is rebuilt if either changed (only held groups serve).
    fn change_set<T>(&self, edit: impl FnOnce(&mut Vec<Arc<Shard>>, &mut BTreeSet<u64>) -> T) -> T {
        let mut set = self.shards.write();
        let mut list = set.list.clone();
        let before: BTreeSet<u64> = set.serving().iter().map(|s| s.group).collect();
        let mut serving = before.clone();
        let out = edit(&mut list, &mut serving);
        serving.retain(|g| list.iter().any(|s| s.group == *g));
        let same_list =
            list.len() == set.list.len() && list.iter().zip(&set.list).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same_list || serving != before {
            *set = Arc::new(ShardSet::new(list, self.total_buckets, |s| serving.contains(&s.group)));
            self.reshaped.notify_waiters();
        }
        out
    }

    /// This node's replica of group `group`, if it holds one.
    pub(crate) fn replica(&self, group: u64) -> Option<Replica> {
        self.set().list.iter().find(|s| s.group == group).and_then(|s| match &s.backend {
            Backend::Replicated(replica) => Some(replica.clone()),
            Backend::Local { .. } => None,
        })
    }

    /// The groups this node holds a replica of.
    pub(crate) fn groups(&self) -> BTreeSet<u64> {
        self.set().list.iter().map(|s| s.group).collect()
    }
}

/// Makes each replica in `list` serve the buckets its engine owns (a split gave some up, a merge took
/// some in, a freeze gave all up).
fn refresh_ranges(list: &mut [Arc<Shard>]) {
    for shard in list.iter_mut() {
        let Backend::Replicated(replica) = &shard.backend else { continue };
        let owned = replica.state_machine().owned_buckets();
        if owned != shard.ranges {
            let now = Shard {
                group: shard.group,
                ranges: owned,
                backend: Backend::Replicated(replica.clone()),
                leader_changes: Arc::clone(&shard.leader_changes),
            };
            *shard = Arc::new(now);
        }
    }
}

/// Longest a replica holds its compactions ahead of a split of its shard (`flush_ahead_of_split`):
/// long enough for the split to apply, short enough that level 0 does not pile up if it never does.
const SPLIT_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// The node as the control plane's reconciler acts on it.
impl cairn_cluster::control::Host for Node {
    type Error = NodeError;

    fn event(&self, event: cairn_cluster::control::ControlEvent) {
        self.events().emit(event.into());
    }

    fn observe(&self, state: &cairn_cluster::meta::ClusterState) {
        self.observe_map(state);
    }

    fn groups(&self) -> BTreeSet<u64> {
        Node::groups(self)
    }

    fn replica(&self, group: u64) -> Option<Replica> {
        Node::replica(self, group)
    }

    fn serve_only(&self, groups: &BTreeSet<u64>) {
        Node::serve_only(self, groups);
    }

    async fn add_replica(&self, shard: &cairn_cluster::placement::ShardDescriptor) -> Result<()> {
        let plan = ReplicaPlan {
            group: shard.id.group(),
            ranges: shard.ranges.clone(),
            bootstrap: None,
            serving: false,
        };
        Node::add_replica(self, plan).await
    }

    async fn add_split_replica(&self, shard: &cairn_cluster::placement::ShardDescriptor) -> Result<bool> {
        let Some(parent) = shard.split_from else { return Ok(false) };
        Node::add_split_replica(self, parent.group(), shard.id.group(), &shard.ranges).await
    }

    async fn retire_replica(&self, group: u64) -> Result<()> {
        Node::retire_replica(self, group).await
    }

    /// Also holds the replica's compactions until it applies the split (at most [`SPLIT_HOLD`]): the
    /// split's shrink waits for a running compaction, which on a big shard takes longer than the flush.
    async fn flush_ahead_of_split(&self, group: u64) {
        let Some(replica) = Node::replica(self, group) else { return };
        // Subscribed first: a split that applies while this flushes still ends the hold.
        let mut effects = replica.effects();
        let db = replica.state_machine().db();
        let began = std::time::Instant::now();
        // The flush first: a writer stalled on a full level 0 holds the commit path until a compaction
        // runs, so a flush under a hold could wait for good.
        let held = tokio::task::spawn_blocking(move || {
            db.flush()?;
            db.hold_compactions()
        })
        .await;
        let hold = match held {
            Ok(Ok(Some(hold))) => hold,
            Ok(Ok(None)) => {
                return tracing::debug!(
                    shard = group,
                    "level 0 too full to hold compactions ahead of a split"
                );
            }
            Ok(Err(e)) => return tracing::warn!(shard = group, error = %e, "cannot flush ahead of a split"),
            Err(e) => return tracing::warn!(shard = group, error = %e, "flush ahead of a split failed"),
        };
        let flush_ms = began.elapsed().as_millis() as u64;
        tracing::debug!(shard = group, flush_ms, "flushed ahead of a split");
        tokio::spawn(async move {
            let split = async {
                loop {
                    match effects.recv().await {
                        // (Effects missed: the split may be among them.)
                        Ok(cairn_cluster::raft::Effect::Split(_)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(SPLIT_HOLD, split).await;
            drop(hold);
        });
    }
}

/// Retires the replicas a cluster member left on disk for the shards in `stale` (group → its buckets),
/// before it starts any: shards that are not (or no longer) its own, which moved away while it was down.
/// Each begins its next incarnation empty, so if the shard is moving back here it joins afresh.
/// Returns the groups retired.
pub(crate) async fn retire_stale(
    config: &NodeConfig,
    total_buckets: u32,
    log: Arc<RaftLog>,
    stale: Vec<(u64, Vec<(u16, u16)>)>,
) -> Result<Vec<u64>> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<u64>> {
        let mut retired = Vec::new();
        for (group, ranges) in stale {
            let template = shard_config(&config, total_buckets, group);
            let dir = template.dir.clone();
            if !dir.exists() || dir.join(RETIRED_FILE).exists() {
                continue;
            }
            let sm =
                ShardStateMachine::open(dir.clone(), template, engine_ranges(&ranges), meta_bucket(&ranges))
                    .map_err(|e| open_error(&config, group, e))?;
            cairn_cluster::raft::retire_stored(&log, &sm, group)
                .map_err(|e| NodeError::Internal(format!("retiring shard {group}: {e}")))?;
            drop(sm);
            write_marker(&dir)?;
            retired.push(group);
        }
        Ok(retired)
    })
    .await
    .map_err(|e| NodeError::Internal(format!("retire task failed: {e}")))?
}

/// The groups whose replica directory (`shard-<group>`) `store` holds, retired ones left out.
pub(crate) fn replicas_on_disk(store: &std::path::Path) -> BTreeSet<u64> {
    let Ok(entries) = std::fs::read_dir(store) else { return BTreeSet::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.path().join(RETIRED_FILE).exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("shard-")?.parse().ok())
        .collect()
}

/// A shard's bucket ranges as the engine takes them.
pub(super) fn engine_ranges(ranges: &[(u16, u16)]) -> Vec<cairn_engine::BucketRange> {
    ranges.iter().map(|&(first, last)| first..=last).collect()
}

/// The bucket a shard keeps its applied position in: its first.
fn meta_bucket(ranges: &[(u16, u16)]) -> u16 {
    ranges.first().map_or(0, |r| r.0)
}

/// Marks the shard directory `dir` retired (its replica is empty; nothing to retire at the next start).
async fn mark_retired(dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || write_marker(&dir))
        .await
        .map_err(|e| NodeError::Internal(format!("retire task failed: {e}")))?
}

fn write_marker(dir: &std::path::Path) -> Result<()> {
    std::fs::write(dir.join(RETIRED_FILE), b"retired\n")
        .map_err(|e| NodeError::Internal(format!("marking {} retired: {e}", dir.display())))
}

/// Starts this node's replica of `plan`'s group (see [`Node::start_replicas`]) and the tasks that tend
/// it.
pub(super) async fn start_replica(
    config: &NodeConfig,
    rc: &ReplicationConfig,
    plumbing: &Plumbing,
    total_buckets: u32,
    plan: ReplicaPlan,
) -> Result<Shard> {
    let group = plan.group;
    let (ranges, meta) = (engine_ranges(&plan.ranges), meta_bucket(&plan.ranges));
    let sm = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let template = shard_config(&config, total_buckets, group);
            // A replica that returns to a retired shard directory starts (empty) as its next incarnation.
            let marker = template.dir.join(RETIRED_FILE);
            if marker.exists() {
                std::fs::remove_file(&marker)
                    .map_err(|e| NodeError::Startup(format!("cannot clear {}: {e}", marker.display())))?;
            }
            if ranges.is_empty() {
                // A shard the map no longer names, as stored (see `control::boot_plan`).
                return ShardStateMachine::open_stored(template.dir.clone(), template)
                    .map_err(|e| open_error(&config, group, e))?
                    .ok_or_else(|| {
                        NodeError::Startup(format!("shard {group}'s replica here keeps no meta bucket"))
                    });
            }
            ShardStateMachine::open(template.dir.clone(), template, ranges, meta)
                .map_err(|e| open_error(&config, group, e))
        })
        .await
        .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))??
    };
    launch(rc, plumbing, group, sm, plan.bootstrap, None).await
}

/// Starts node `rc.node_id`'s replica of `group` over `sm` (making the group with `bootstrap` as its
/// members if given and the replica is new), with its leadership watch and its tending. A split's new
/// shard made here from the split entry is `Some(leads)`: true if its log started now with this
/// node's vote (it starts as the leader, see [`cairn_cluster::raft::prepare_split_log`]).
async fn launch(
    rc: &ReplicationConfig,
    plumbing: &Plumbing,
    group: u64,
    sm: ShardStateMachine,
    bootstrap: Option<cairn_cluster::control::Bootstrap>,
    split_child: Option<bool>,
) -> Result<Shard> {
    sm.link(&plumbing.frozen, group)
        .map_err(|e| NodeError::Startup(format!("cannot open shard {group}'s replica: {e}")))?;
    let config = ReplicaConfig { leads_from_start: split_child == Some(true), ..rc.replica_config() };
    let replica =
        Replica::start(rc.node_id, group, Arc::clone(&plumbing.log), sm, plumbing.wire.clone(), config)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot start shard {group}'s replica: {e}")))?;
    plumbing.service.register_replica(&replica);
    // A replica coming back with state of its own (this node restarted) waits before it campaigns:
    // its group may be quiet, and the wake it asks for brings the leader's heartbeats first. Not a
    // split's new shard: its group has no leader yet.
    if !replica.is_new() && split_child.is_none() {
        replica.hold_elections();
    }
    // A group this node has never heard of (new, or this node is new to it), and not a replica that
    // re-synced from scratch (its group exists).
    if let Some(b) = bootstrap {
        replica
            .form(b.members, b.first)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot make shard {group}'s group: {e}")))?;
    }
    let leader_changes = Arc::new(AtomicU64::new(0));
    tokio::spawn(replicated::watch_leadership(
        group.to_string(),
        replica.clone(),
        Some(Arc::clone(&leader_changes)),
        Arc::clone(&plumbing.events),
    ));
    // Runs consistency checks (periodic and after snapshots) on the groups this node leads, re-syncs a
    // fenced replica, takes re-synced ones back in and purges verified log; ends when the replica stops.
    let tended = replica.clone();
    tokio::spawn(async move { tended.tend().await });
    // What the replica's engine owns (its manifest), which a plan from an older map may not know yet.
    let ranges = replica.state_machine().owned_buckets();
    Ok(Shard { group, ranges, backend: Backend::Replicated(replica), leader_changes })
}
