//! The reconciler: keeps what a node runs in step with the shard map, and on a shard's leader takes the
//! shard's move under way one step further (steps 2 and 3 in the [module documentation](super)).

use super::{ControlEvent, Host, RETRY_PAUSE, epoch_of, record};
use crate::meta::MetaStore;
use crate::placement::{Move, ShardDescriptor, ShardId, ShardMap, SplitPlan, split_ranges};
use crate::raft::{Command, CommandResult, MoveStep, ReadLevel, Replica, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a shard leader waits for a membership change of its group (or to hand its leadership
/// over, when it is a move's source).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a split's leader waits for its flush ahead of the split ([`Host::flush_ahead_of_split`]).
const FLUSH_AHEAD_WAIT: Duration = Duration::from_secs(1);
/// Longest pause between two reconcile passes while nothing is under way.
pub const IDLE_RECONCILE: Duration = Duration::from_secs(5);

/// Keeps node `id` (`host`, held weakly: the node's shutdown waits for the last strong reference) in
/// step with the shard map until the node or the meta replica stops.
///
/// A pass runs whenever this node's meta replica applies a change, every [`RETRY_PAUSE`] while
/// something is under way here (a move, a learner to promote or remove, a pass that failed), and every
/// [`IDLE_RECONCILE`] otherwise (a replica cut off from the meta group sees no changes). A split's new
/// shard that a pass could not start yet (this node's replica of the splitting shard had not applied
/// the split) is started by a watcher as soon as that replica applies it, not at the next pass.
pub async fn reconcile<H: Host>(meta: MetaStore, host: Weak<H>, id: u64) {
    let mut seen = None;
    let watching = SplitWatchers::default();
    tokio::spawn(watch_splits(meta.clone(), host.clone(), id, Arc::clone(&watching)));
    loop {
        if meta.replica().is_stopped() {
            return;
        }
        let Some(node) = host.upgrade() else { return };
        let settled = match reconcile_once(&meta, &node, id, &watching).await {
            Ok(settled) => settled,
            Err(e) => {
                tracing::debug!(error = %e, "reconciling with the shard map failed; retrying");
                false
            }
        };
        drop(node);
        seen = meta.changed(seen, if settled { IDLE_RECONCILE } else { RETRY_PAUSE }).await;
    }
}

/// The split children a watcher waits for (by group), so a pass starts one watcher each.
type SplitWatchers = Arc<parking_lot::Mutex<BTreeSet<u64>>>;

/// Starts a watcher for each split under way in the map that makes a new shard on node `id`, as soon
/// as this node's meta replica applies the change that began it: apart from the passes, which can take
/// a while on a node with many shards while the moved buckets wait for the new shard's replicas. It
/// reads the local copy of the map (a watcher only starts a new shard once this node's replica of the
/// splitting one has applied the split, and nothing here retires anything).
async fn watch_splits<H: Host>(meta: MetaStore, host: Weak<H>, id: u64, watching: SplitWatchers) {
    let mut seen = None;
    loop {
        if meta.replica().is_stopped() {
            return;
        }
        let state = meta.read(ReadLevel::Eventual).await;
        let Some(node) = host.upgrade() else { return };
        if let Ok(state) = state
            && let Some(map) = &state.map
        {
            let held = node.groups();
            let children = map
                .shards
                .iter()
                .filter(|s| s.replicas.contains(&id))
                .filter_map(ShardDescriptor::split_child);
            for child in children.filter(|c| !held.contains(&c.id.group())) {
                if let Some(effects) =
                    child.split_from.and_then(|p| node.replica(p.group())).map(|p| p.effects())
                {
                    watch_split(&node, &child, effects, &watching);
                }
            }
        }
        seen = meta.changed(seen, IDLE_RECONCILE).await;
    }
}

/// Starts this node's replica of split child `child` at once if this node's replica of the splitting
/// shard has applied the split, or else as soon as `effects` (of that replica, subscribed to before
/// looking, so nothing is missed) show it applied; gives up after [`CHANGE_TIMEOUT`] (the next pass
/// looks again). One watcher per child.
fn watch_split<H: Host>(
    host: &Arc<H>,
    child: &ShardDescriptor,
    mut effects: tokio::sync::broadcast::Receiver<crate::raft::Effect>,
    watching: &SplitWatchers,
) {
    let group = child.id.group();
    if !watching.lock().insert(group) {
        return;
    }
    let (host, child, watching) = (Arc::downgrade(host), child.clone(), Arc::clone(watching));
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(node) = host.upgrade() {
            match node.add_split_replica(&child).await {
                Ok(true) => {
                    tracing::info!(shard = %child.id, "started a split's new shard by reference");
                    watching.lock().remove(&group);
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(shard = %child.id, error = %e, "cannot start a split's new shard"),
            }
            // Not applied here yet: the splitting shard's memtable is flushed meanwhile (not waited
            // for: the split may apply before it is done).
            if let Some(parent) = child.split_from {
                let (host, parent) = (Arc::downgrade(&node), parent.group());
                tokio::spawn(async move {
                    if let Some(node) = host.upgrade() {
                        node.flush_ahead_of_split(parent).await;
                    }
                });
            }
        }
        let applied = tokio::time::timeout(CHANGE_TIMEOUT, async {
            loop {
                match effects.recv().await {
                    Ok(crate::raft::Effect::Split(off)) if off.new_group == group => return true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                }
            }
        })
        .await;
        if let (Ok(true), Some(node)) = (applied, host.upgrade()) {
            match node.add_split_replica(&child).await {
                Ok(true) => tracing::info!(shard = %child.id, "started a split's new shard by reference"),
                Ok(false) => {}
                Err(e) => tracing::warn!(shard = %child.id, error = %e, "cannot start a split's new shard"),
            }
        }
        watching.lock().remove(&group);
    });
}

/// One pass of [`reconcile`]; whether nothing is left under way here.
async fn reconcile_once<H: Host>(
    meta: &MetaStore,
    host: &Arc<H>,
    id: u64,
    watching: &SplitWatchers,
) -> Result<bool, String> {
    let node = host.as_ref();
    // Before the map is read: a split's new shard a watcher opens meanwhile (from a map newer than the
    // one read here) is neither retired nor stopped from serving by this pass.
    let held = node.groups();
    // Through the leader: decisions to retire must not rest on a lagging copy of the map.
    let state = meta.read(ReadLevel::Strong).await.map_err(|e| e.to_string())?;
    let Some(map) = &state.map else { return Ok(true) };
    node.observe(&state);
    let addrs: BTreeMap<u64, String> = state.nodes.iter().map(|(id, n)| (*id, n.grpc_addr.clone())).collect();
    let incoming = |s: &ShardDescriptor| s.moving.is_some_and(|m| m.to == id);
    let serving: BTreeSet<u64> =
        map.shards.iter().filter(|s| s.replicas.contains(&id)).map(|s| s.id.group()).collect();
    // A split under way: its new shard, made from this node's replica of the splitting one.
    let children: Vec<ShardDescriptor> = map
        .shards
        .iter()
        .filter(|s| s.replicas.contains(&id))
        .filter_map(ShardDescriptor::split_child)
        .collect();
    let wanted: BTreeSet<u64> = map
        .shards
        .iter()
        .filter(|s| s.replicas.contains(&id) || incoming(s))
        .map(|s| s.id.group())
        .chain(children.iter().map(|c| c.id.group()))
        .collect();
    // Each shard on its own: one that cannot make progress (no quorum, a disk error) must not hold up
    // the others.
    for child in children.iter().filter(|c| !held.contains(&c.id.group())) {
        // Subscribed first: a split applied while the watcher looks still reaches it.
        if let Some(effects) = child.split_from.and_then(|p| node.replica(p.group())).map(|p| p.effects()) {
            watch_split(host, child, effects, watching);
        }
    }
    for s in map.shards.iter().filter(|s| wanted.contains(&s.id.group()) && !held.contains(&s.id.group())) {
        // A split's new shard this node's replica of the split shard made: by reference (only while
        // its group is the split's, not a replica moving here later).
        let from_split = s.split_from.is_some() && s.epoch == 1 && s.moving.is_none();
        if from_split && let Ok(true) = node.add_split_replica(s).await {
            tracing::info!(shard = %s.id, "started a split's new shard by reference");
            continue;
        }
        match node.add_replica(s).await {
            Ok(()) => tracing::info!(shard = %s.id, "started a replica placed on this node"),
            Err(e) => tracing::warn!(shard = %s.id, error = %e, "cannot start a replica placed here"),
        }
    }
    let mut merging = false;
    for group in held.difference(&wanted) {
        if awaits_merge(map, node, *group, id) {
            // This node's replica of the shard it merged into has not taken its buckets in yet.
            merging = true;
            continue;
        }
        match node.retire_replica(*group).await {
            Ok(()) => {
                tracing::info!(shard = group, "retired a replica of a shard that moved away");
                node.event(ControlEvent::ReplicaRetired { shard: ShardId(*group as u32) });
            }
            Err(e) => tracing::warn!(shard = group, error = %e, "cannot retire a replica"),
        }
    }
    // A split's new shard serves here as soon as it is started (its replica holds the moved buckets
    // from the split's entry on), before the map names it. Named whether held or not: the node serves
    // only what it holds, and one a watcher starts meanwhile must not be dropped.
    let opened_meanwhile: BTreeSet<u64> =
        node.groups().difference(&held).filter(|g| !wanted.contains(g)).copied().collect();
    let serving: BTreeSet<u64> =
        serving.into_iter().chain(children.iter().map(|c| c.id.group())).chain(opened_meanwhile).collect();
    node.serve_only(&serving);
    let mut settled = node.groups() == wanted && children.is_empty() && !merging;
    for s in &map.shards {
        let Some(replica) = node.replica(s.id.group()) else { continue };
        if let Err(e) = tend_shard(meta, node, &replica, map, s, &addrs, id).await {
            tracing::debug!(shard = %s.id, error = %e, "shard not reconciled this pass");
            settled = false;
        }
        let status = replica.status();
        // A move, a merge, or learners a leader promotes or removes: under way in the shard's group.
        settled &= s.moving.is_none() && (status.role != Role::Leader || status.learners.is_empty());
        settled &= !map.in_merge(s.id);
    }
    Ok(settled)
}

/// This node's part in shard `s`'s placement: a move's destination asks to join; the shard's leader
/// advances (or gives up) the move under way, promotes the map's replicas that re-synced as learners,
/// and removes learners the map does not name.
async fn tend_shard<H: Host>(
    meta: &MetaStore,
    node: &H,
    replica: &Replica,
    map: &ShardMap,
    s: &ShardDescriptor,
    addrs: &BTreeMap<u64, String>,
    id: u64,
) -> Result<(), String> {
    if let Some(mv) = s.moving
        && mv.to == id
    {
        // Asked while the move is under way: this replica's own view of whether it is in the group may
        // be stale (see `Replica::ask_to_join`); the leader answers at once if it is.
        let peers =
            s.replicas.iter().chain([&id]).filter_map(|n| Some((*n, addrs.get(n)?.clone()))).collect();
        if let Err(e) = replica.ask_to_join(peers).await {
            tracing::debug!(shard = %s.id, error = %e, "asking to join the shard's group");
        }
    }
    let status = replica.status();
    if status.role != Role::Leader {
        return Ok(());
    }
    match s.moving {
        Some(mv) if s.abandoning => abandon_move(meta, node, replica, mv).await?,
        Some(mv) => advance_move(meta, node, replica, mv).await?,
        None => {}
    }
    if let Some(plan) = s.splitting {
        split(meta, node, replica, s, plan, addrs).await?;
    }
    if let Some(left) = map.merging_into(s.id)
        && map.colocated(left.id)
    {
        freeze(replica, s).await?;
    }
    if let Some(right) = s.merging.and_then(|r| map.shard(r))
        && map.colocated(s.id)
    {
        merge(meta, node, replica, s, right).await?;
    }
    // A replica of the map's that re-synced from scratch votes again once it has caught up (not a move's
    // source, which is on its way out).
    let leaving = s.moving.map(|m| m.from);
    for n in status.learners.iter().filter(|n| s.replicas.contains(n) && Some(**n) != leaving) {
        if replica.promote(*n, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())? {
            tracing::info!(shard = %s.id, node = n, "re-synced replica promoted");
        }
    }
    // Learners the map does not name (left by a move given up while one was being added).
    let named = |n: &u64| s.replicas.contains(n) || s.moving.is_some_and(|m| m.to == *n);
    let strays: BTreeSet<u64> = status.learners.iter().copied().filter(|n| !named(n)).collect();
    if !strays.is_empty() {
        tokio::time::timeout(CHANGE_TIMEOUT, replica.remove_learners(strays.clone()))
            .await
            .map_err(|_| "removing stray learners timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tracing::info!(shard = %s.id, ?strays, "removed learners the map does not name");
    }
    Ok(())
}

/// On the shard's leader: splits shard `s` in its group as `plan` says (`Command::Split`, which every
/// replica applies at one index; proposing it again after a lost answer gives the same split), then
/// records the split in the map.
async fn split<H: Host>(
    meta: &MetaStore,
    node: &H,
    replica: &Replica,
    s: &ShardDescriptor,
    plan: SplitPlan,
    addrs: &BTreeMap<u64, String>,
) -> Result<(), String> {
    let ranges = split_ranges(&s.ranges, plan.at).1;
    let voters = s.replicas.iter().filter_map(|n| Some((*n, addrs.get(n)?.clone()))).collect::<Vec<_>>();
    if voters.len() != s.replicas.len() {
        return Err(format!("the map has no address for some of shard {}'s replicas", s.id));
    }
    let moved: Vec<cairn_engine::BucketRange> = ranges.iter().map(|&(f, l)| f..=l).collect();
    // What this replica owns once it has applied everything committed: a leader may not have applied
    // its log's tail yet (a merge that brought the buckets in), and must not take the split for done.
    replica.read_point(ReadLevel::Strong, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
    let owned = replica.state_machine().owned_buckets();
    if !moved.iter().any(|m| owned.iter().any(|o| o.start() <= m.end() && m.start() <= o.end())) {
        // This replica no longer owns them: the group split before (a snapshot taken after the split
        // replaced the record here). Record it.
        return finish(meta, node, s, plan).await;
    }
    // This node leads the new group's first term: it is the one that opens the group first.
    // The other replicas flush as their nodes see the split begin (their watchers); this one does too,
    // and waits, so that on every replica the split's shrink has little left to flush.
    // (At most FLUSH_AHEAD_WAIT: a running compaction the hold waits for may take much longer, and the
    // other shards on this node are not tended meanwhile.)
    let _ = tokio::time::timeout(FLUSH_AHEAD_WAIT, node.flush_ahead_of_split(s.id.group())).await;
    let command = Command::Split {
        new_group: plan.new.group(),
        ranges,
        voters,
        first_leader: crate::raft::node_of(replica.id()),
    };
    let written = replica.write(command, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
    if let CommandResult::Rejected(why) = &written.result {
        return Err(format!("the shard's group refused the split: {why}"));
    }
    // From here the moved buckets have no shard serving them until the new one has a leader.
    let applied_at = tokio::time::Instant::now();
    // The new shard's replica here starts (and campaigns) while the map records the split.
    let open_child = async {
        if let Some(child) = s.split_child()
            && let Err(e) = node.add_split_replica(&child).await
        {
            tracing::warn!(shard = %child.id, error = %e, "cannot start a split's new shard");
        }
        node.replica(plan.new.group()).map(|c| tokio::spawn(first_commit(c, applied_at)))
    };
    let (leader, recorded) = tokio::join!(open_child, async {
        let recorded = finish(meta, node, s, plan).await;
        (recorded, applied_at.elapsed().as_millis() as u64)
    });
    let (recorded, recorded_ms) = recorded;
    recorded?;
    if let Some(leader) = leader {
        let (shard, new) = (s.id, plan.new);
        tokio::spawn(async move {
            if let Ok(Some(committed_ms)) = leader.await {
                tracing::info!(
                    shard = %shard,
                    new = %new,
                    committed_ms,
                    recorded_ms,
                    "split's moved buckets served again"
                );
            }
        });
    }
    Ok(())
}

/// How long after `applied_at` (a split's entry applying on the old shard's leader) the new shard's
/// replica `child` knew a leader and an entry of its committed past the group's start (its leader's
/// first: a quorum of replicas runs the group, and from then a node holding a replica serves the moved
/// buckets); `None` if not within [`CHANGE_TIMEOUT`]. The split's leader logs it with the time the map
/// took to name the new shard (from then every node routes to it).
async fn first_commit(child: Replica, applied_at: tokio::time::Instant) -> Option<u64> {
    let mut watch = child.watch();
    let served = |s: crate::raft::GroupStatus| {
        s.leader.is_some() && s.committed > Some(crate::raft::SPLIT_START_INDEX)
    };
    let led = async {
        while !served(child.status()) {
            if !watch.changed().await {
                return false;
            }
        }
        true
    };
    let led = tokio::time::timeout_at(applied_at + CHANGE_TIMEOUT, led).await;
    led.is_ok_and(|led| led).then(|| applied_at.elapsed().as_millis() as u64)
}

/// Whether this node's replica of group `group`, which the map no longer names, is a shard merged into
/// another (frozen, or still to freeze as it catches up) whose buckets this node's replicas of the
/// map's shards have not all taken in yet: it is kept until then, as the left-hand replica imports from
/// it (one that cannot, fenced, re-syncs from a snapshot taken past the merge and takes the buckets in
/// so). The buckets may have moved on since (a later split spreads them over several shards, a move
/// takes some elsewhere), so each one whose shard is placed on this node must be owned by one of those
/// replicas that has applied something, whichever; the others do not hold it up.
fn awaits_merge<H: Host>(map: &ShardMap, node: &H, group: u64, id: u64) -> bool {
    let Some(replica) = node.replica(group) else { return false };
    let sm = replica.state_machine();
    let ranges: Vec<(u16, u16)> = match sm.frozen() {
        Some(frozen) => frozen.ranges,
        None => sm.owned_buckets().iter().map(|r| (*r.start(), *r.end())).collect(),
    };
    let Some(&(first, _)) = ranges.first() else { return false };
    let Some(into) = map.shard_for_bucket(first).filter(|s| s.id.group() != group) else { return false };
    // Only a merge gives the buckets of a shard that left the map to another (a move keeps the shard).
    if node.replica(into.id.group()).is_none() {
        return false;
    }
    // (Not a replica that has applied nothing yet: one placed here, started empty, owns its shard's
    // buckets before a snapshot brings their rows; the frozen replica may still be needed meanwhile.)
    let owned: Vec<cairn_engine::BucketRange> = map
        .shards
        .iter()
        .filter(|s| s.id.group() != group)
        .filter_map(|s| node.replica(s.id.group()))
        .filter(|r| r.status().applied.is_some())
        .flat_map(|r| r.state_machine().owned_buckets())
        .collect();
    let placed_here = |b: u16| {
        map.shard_for_bucket(b)
            .is_some_and(|s| s.replicas.contains(&id) || s.moving.is_some_and(|m| m.to == id))
    };
    !ranges
        .iter()
        .flat_map(|&(f, l)| f..=l)
        .filter(|b| placed_here(*b))
        .all(|b| owned.iter().any(|o| o.contains(&b)))
}

/// Whether `owned` covers every range of `ranges` (each range within one owned range).
fn owns(owned: &[cairn_engine::BucketRange], ranges: &[(u16, u16)]) -> bool {
    ranges.iter().all(|&(f, l)| owned.iter().any(|o| *o.start() <= f && l <= *o.end()))
}

/// On the leader of shard `s`, the right-hand shard of a merge whose replicas are co-located: freezes
/// it in its group (`Command::Freeze`), unless this replica froze already.
async fn freeze(replica: &Replica, s: &ShardDescriptor) -> Result<(), String> {
    if replica.state_machine().frozen().is_some() {
        return Ok(());
    }
    let command = Command::Freeze { ranges: s.ranges.clone() };
    let written = replica.write(command, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
    match written.result {
        CommandResult::Frozen { snapshot } => {
            tracing::info!(shard = %s.id, index = written.index, snapshot, "shard frozen for a merge");
            Ok(())
        }
        other => Err(format!("the shard's group refused the freeze: {other:?}")),
    }
}

/// On the leader of shard `s`, merging shard `right` in: once this node's replica of `right` froze,
/// takes its buckets in through the group (`Command::Merge`), then records the merge in the map.
async fn merge<H: Host>(
    meta: &MetaStore,
    node: &H,
    replica: &Replica,
    s: &ShardDescriptor,
    right: &ShardDescriptor,
) -> Result<(), String> {
    if !owns(&replica.state_machine().owned_buckets(), &right.ranges) {
        let frozen = node.replica(right.id.group()).and_then(|r| r.state_machine().frozen());
        if frozen.is_none() {
            return Err(format!("waiting for shard {} to freeze on this node", right.id));
        }
        let command = Command::Merge { right_group: right.id.group(), ranges: right.ranges.clone() };
        let written = replica.write(command, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
        if written.result != CommandResult::Merged {
            return Err(format!("the shard's group refused the merge: {:?}", written.result));
        }
        if !owns(&replica.state_machine().owned_buckets(), &right.ranges) {
            // This replica could not take them in (it fenced itself): another leader finishes.
            return Err(format!("this replica did not take shard {}'s buckets in", right.id));
        }
    }
    // A snapshot past the merge first: a replica that later starts from a snapshot must not need the
    // frozen shard, which the nodes retire once the map drops it.
    let applied = replica.status().applied;
    if replica.status().snapshot < applied {
        let _ = replica.raft().trigger().snapshot().await;
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        while replica.status().snapshot < applied {
            if tokio::time::Instant::now() >= deadline {
                return Err("no snapshot past the merge yet".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let recorded =
        record(meta, |state| state.finish_merge(s.id, right.id)).await.map_err(|e| e.to_string())?;
    if let Some(after) = recorded {
        let epoch = epoch_of(&after, s.id);
        tracing::info!(shard = %s.id, merged = %right.id, epoch, "shards merged");
        node.event(ControlEvent::ShardMerged { shard: s.id, merged: right.id, epoch });
    }
    Ok(())
}

/// Records shard `s`'s split as made.
async fn finish<H: Host>(
    meta: &MetaStore,
    node: &H,
    s: &ShardDescriptor,
    plan: SplitPlan,
) -> Result<(), String> {
    let recorded = record(meta, |state| state.finish_split(s.id)).await.map_err(|e| e.to_string())?;
    if let Some(after) = recorded {
        let epoch = epoch_of(&after, s.id);
        tracing::info!(shard = %s.id, new = %plan.new, at = plan.at, epoch, "shard split");
        node.event(ControlEvent::ShardSplit { shard: s.id, new: plan.new, at: plan.at, epoch });
    }
    Ok(())
}

/// On the shard's leader: gives up move `mv` once its destination holds no replica in the group, or
/// finishes it if the destination already votes (it is then a replica on a dead node, which the next
/// repair moves again).
async fn abandon_move<H: Host>(
    meta: &MetaStore,
    node: &H,
    replica: &Replica,
    mv: Move,
) -> Result<(), String> {
    match replica.undo_join(mv.to, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())? {
        None => Ok(()),
        Some(false) => advance_move(meta, node, replica, mv).await,
        Some(true) => {
            let given_up = record(meta, |s| s.abandon_move(&mv)).await.map_err(|e| e.to_string())?;
            if let Some(after) = given_up {
                let epoch = epoch_of(&after, mv.shard);
                tracing::warn!(shard = %mv.shard, from = mv.from, to = mv.to, epoch, "move given up");
                node.event(ControlEvent::ReplicaMoveAbandoned {
                    shard: mv.shard,
                    from: mv.from,
                    to: mv.to,
                    epoch,
                });
            }
            Ok(())
        }
    }
}

/// On the shard's leader: takes move `mv` one step further in the group ([`Replica::advance_move`]);
/// records it done once the group's membership is the map's after the move.
async fn advance_move<H: Host>(
    meta: &MetaStore,
    node: &H,
    replica: &Replica,
    mv: Move,
) -> Result<(), String> {
    let step = replica.advance_move(mv.from, mv.to, CHANGE_TIMEOUT).await.map_err(|e| e.to_string())?;
    match step {
        MoveStep::Promoted => {
            tracing::info!(shard = %mv.shard, to = mv.to, from = mv.from, "move: destination promoted")
        }
        MoveStep::Removed => tracing::info!(shard = %mv.shard, from = mv.from, "move: source removed"),
        _ => {}
    }
    if step != MoveStep::Done {
        return Ok(());
    }
    let finished = record(meta, |s| s.finish_move(&mv)).await.map_err(|e| e.to_string())?;
    if let Some(after) = finished {
        let epoch = epoch_of(&after, mv.shard);
        tracing::info!(shard = %mv.shard, from = mv.from, to = mv.to, epoch, "replica moved");
        node.event(ControlEvent::ReplicaMoved { shard: mv.shard, from: mv.from, to: mv.to, epoch });
    }
    Ok(())
}
