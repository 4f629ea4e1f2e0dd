//! Keeping a replica in shape: consistency checks (compared with the majority's digest), membership
//! changes, and [`Replica::tend`], which re-syncs a fenced replica as its next incarnation, takes
//! re-synced replicas back into the group and purges the log behind verified positions.

use super::Role;
use super::{CheckOutcome, ForwardError, GroupError, GroupStatus, Incarnation, Replica, stopped};
use crate::raft::{
    Check, Command, CommandResult, ShardRaft, TypeConfig, decode, encode, incarnation_of, log_key, node_of,
    replica_id,
};
use crate::raft::{DigestState, HASH_BYTES_PER_SECOND, ShardStateMachine};
use crate::raft_log::RaftLog;
use cairn_proto::raft::RaftCallKind;
use openraft::alias::StoredMembershipOf;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::Precondition;
use openraft::{BasicNode, ChangeMembers, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Entries a learner may lag the leader's log and still be promoted to voter.
const PROMOTE_WITHIN: u64 = 64;
/// A move's destination is promoted only if it acknowledged the leader this recently.
const MOVE_ANSWERED_WITHIN: Duration = Duration::from_secs(3);
/// How often [`Replica::tend`] looks at the replica.
const TEND_EVERY: Duration = Duration::from_millis(100);
/// Least time between two attempts of a tending step that talks to others.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long past its timeout a consistency check waits for voters that are still hashing.
const MAX_CHECK_WAIT: Duration = Duration::from_secs(3600);
/// How many bytes of rows a byte of SST file may hold, at most, as [`Replica::check_timeout`] counts
/// (blocks are compressed; repetitive values compress about fivefold).
const COMPRESSION_ALLOWANCE: u64 = 8;

impl Replica {
    /// Runs a consistency check through the log: every replica hashes its shard at one entry; this
    /// replica then asks the voters for their hashes there, and once a majority of them agree, a second
    /// entry carries that hash; a replica whose hash differs fences itself (see
    /// [`GroupStatus::checks`]), the leader included. Returns where and what the majority hashed; fails
    /// if no majority agrees within `timeout` (then nobody is fenced).
    pub async fn check_consistency(&self, timeout: Duration) -> Result<CheckOutcome, GroupError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let recorded = self.write(Command::check(Check::Record), timeout).await?;
        if recorded.result != CommandResult::Recorded {
            return Err(GroupError::OutcomeUnknown(format!("check record answered {:?}", recorded.result)));
        }
        let digest = self.majority_digest(recorded.index, deadline).await?;
        let compare = Command::check(Check::Compare { index: recorded.index, digest: digest.clone() });
        // Its own wait: a check that waited out hashing voters is past `deadline` by now.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.write(compare, left.max(self.shared.config.election_timeout.1 * 4)).await?;
        Ok(CheckOutcome { index: recorded.index, digest })
    }

    /// How long a consistency check may take: four election timeouts, plus the time to hash this
    /// replica's shard at [`HASH_BYTES_PER_SECOND`] (every replica hashes its own copy, in the
    /// background, at the same entry; a shard of tens of GB takes minutes). The shard's rows are
    /// counted as [`COMPRESSION_ALLOWANCE`] times its files' bytes plus its memtables. Voters still
    /// hashing then keep the check going, up to [`MAX_CHECK_WAIT`] longer.
    pub fn check_timeout(&self) -> Duration {
        let m = self.db().metrics();
        let rows = m.sst_bytes() * COMPRESSION_ALLOWANCE + m.memtable_bytes;
        self.shared.config.election_timeout.1 * 4
            + Duration::from_secs_f64(rows as f64 / HASH_BYTES_PER_SECOND as f64)
    }

    /// The digest a majority of the group's voters recorded at check entry `index`, asking each voter
    /// (this replica reads its own) until a majority agrees or `deadline` passes.
    async fn majority_digest(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<String, GroupError> {
        let (me, members) = {
            let Incarnation { raft, id } = self.current();
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: Vec<(u64, Option<String>)> = membership
                .voter_ids()
                .map(|v| (v, membership.get_node(&v).map(|n| n.addr.clone())))
                .collect();
            (id, voters)
        };
        let quorum = members.len() / 2 + 1;
        // Past `deadline`, the check goes on while voters still hash, until this.
        let last_resort = deadline + MAX_CHECK_WAIT;
        let mut answers: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            let mut hashing = 0;
            for (voter, addr) in &members {
                if answers.contains_key(voter) {
                    continue;
                }
                let state = if *voter == me {
                    self.shared.sm.digest_state(index)
                } else if let Some(addr) = addr {
                    let payload = encode(&index).map_err(GroupError::Timeout)?;
                    let wait = self.shared.config.election_timeout.0;
                    match self.send(*voter, addr.clone(), RaftCallKind::Digest, payload, wait).await {
                        // An answer that does not decode (a node of another version) counts as none.
                        Ok(reply) => decode::<DigestState>(&reply).unwrap_or(DigestState::Absent),
                        Err(_) => DigestState::Absent,
                    }
                } else {
                    DigestState::Absent
                };
                match state {
                    DigestState::Done(digest) => {
                        answers.insert(*voter, digest);
                    }
                    DigestState::Hashing => hashing += 1,
                    DigestState::Absent => {}
                }
            }
            let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
            for digest in answers.values() {
                *counts.entry(digest).or_default() += 1;
            }
            let largest = counts.values().copied().max().unwrap_or(0);
            if let Some((digest, _)) = counts.into_iter().find(|(_, n)| *n >= quorum) {
                return Ok(digest.clone());
            }
            let now = tokio::time::Instant::now();
            // Voters still hashing may yet make a majority with the largest agreeing group: a hash
            // slowed by a busy node (digest threads run at a low priority) delays the check rather
            // than failing it.
            let may_agree = hashing > 0 && largest + hashing >= quorum;
            if self.shared.stopped.load(Ordering::Acquire) {
                return Err(stopped("the replica stopped during a consistency check"));
            }
            if now >= deadline && !(may_agree && now < last_resort) {
                if answers.len() == members.len() {
                    tracing::error!(
                        group = self.shared.group,
                        index,
                        ?answers,
                        "consistency check: no majority of replicas agrees on the contents"
                    );
                }
                return Err(GroupError::Timeout(format!(
                    "no majority digest at index {index} (answers: {answers:?})"
                )));
            }
            // Past the deadline the wait is long: ask less often.
            let pause = if now < deadline { Duration::from_millis(20) } else { Duration::from_secs(1) };
            tokio::time::sleep(pause).await;
        }
    }

    /// Adds node `node`'s first incarnation at `addr` as a learner and waits until it has caught up with
    /// the log.
    pub async fn add_learner(&self, node: u64, addr: String) -> Result<(), GroupError> {
        self.awake(self.shared.config.election_timeout.1)
            .await
            .add_learner(replica_id(node, 0), BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(|e| GroupError::Membership(e.to_string()))
    }

    /// Makes the current replicas of nodes `voters` the voting members (learners among them are
    /// promoted, voters not in it become learners). Changes are serialized by Raft: one at a time,
    /// each through joint consensus, and each only if the membership is still the one it was decided
    /// on.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), GroupError> {
        let raft = self.awake(self.shared.config.election_timeout.1).await;
        let membership = raft.metrics().borrow_watched().membership_config.clone();
        let mut ids = BTreeSet::new();
        for node in voters {
            let id = membership
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| node_of(*id) == node)
                .max()
                .ok_or_else(|| GroupError::Membership(format!("node {node} has no replica in the group")))?;
            ids.insert(id);
        }
        change_membership(&raft, &membership, ChangeMembers::ReplaceAllVoters(ids), true).await
    }

    /// Removes nodes `nodes`' replicas from the group; they must be learners already (demote voters
    /// with [`Replica::change_voters`] first). Guarded like every membership change.
    pub async fn remove_learners(&self, nodes: BTreeSet<u64>) -> Result<(), GroupError> {
        let raft = self.awake(self.shared.config.election_timeout.1).await;
        let membership = raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        let mut ids = BTreeSet::new();
        for (id, _) in membership.membership().nodes() {
            if nodes.contains(&node_of(*id)) {
                if voters.contains(id) {
                    return Err(GroupError::Membership(format!(
                        "node {} is a voter: demote it first",
                        node_of(*id)
                    )));
                }
                ids.insert(*id);
            }
        }
        if ids.is_empty() {
            return Err(GroupError::Membership(format!("no learner of nodes {nodes:?} in the group")));
        }
        change_membership(&raft, &membership, ChangeMembers::RemoveNodes(ids), false).await
    }

    /// On the leader: adds member `new` (a replica that re-synced from scratch, at `addr`) as a learner
    /// and removes its node's other incarnations from the group. Refused for the leader's own node and
    /// for an incarnation older than one the group already has.
    pub(crate) async fn replace_here(&self, new: u64, addr: String) -> Result<(), GroupError> {
        let raft = self.awake(self.shared.config.election_timeout.1).await;
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Err(GroupError::NotLeader { leader: metrics.current_leader });
        }
        if node_of(new) == self.shared.node {
            return Err(GroupError::Membership("the leader's own node cannot be replaced".into()));
        }
        let same_node = |m: &StoredMembershipOf<TypeConfig>| -> Vec<u64> {
            m.membership().nodes().map(|(id, _)| *id).filter(|id| node_of(*id) == node_of(new)).collect()
        };
        if same_node(&metrics.membership_config).iter().any(|id| incarnation_of(*id) > incarnation_of(new)) {
            return Err(GroupError::Membership(format!(
                "node {} already has a later incarnation than {}",
                node_of(new),
                incarnation_of(new)
            )));
        }
        let mut membership = metrics.membership_config.clone();
        if membership.membership().get_node(&new).is_some() && same_node(&membership).len() == 1 {
            return Ok(()); // already in, alone for its node: a repeated request
        }
        if membership.membership().get_node(&new).is_none() {
            let add = ChangeMembers::AddNodes(BTreeMap::from([(new, BasicNode::new(addr))]));
            change_membership(&raft, &membership, add, true).await?;
            membership = raft.metrics().borrow_watched().membership_config.clone();
        }
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        let (stale_voters, stale_learners): (BTreeSet<u64>, BTreeSet<u64>) =
            same_node(&membership).into_iter().filter(|id| *id != new).partition(|id| voters.contains(id));
        if !stale_voters.is_empty() {
            change_membership(&raft, &membership, ChangeMembers::RemoveVoters(stale_voters), false).await?;
            membership = raft.metrics().borrow_watched().membership_config.clone();
        }
        if !stale_learners.is_empty() {
            change_membership(&raft, &membership, ChangeMembers::RemoveNodes(stale_learners), false).await?;
        }
        tracing::info!(
            group = self.shared.group,
            node = node_of(new),
            incarnation = incarnation_of(new),
            "replica replaced by a new incarnation"
        );
        Ok(())
    }

    /// Keeps this replica in shape until it stops: re-syncs it from scratch (as a new incarnation) once
    /// a consistency check fenced it; asks the leader to take a new incarnation into the group; on the
    /// leader, promotes learners that caught up on nodes without a voter and runs a consistency check
    /// after each snapshot and every [`ReplicaConfig::check_every`](super::ReplicaConfig); everywhere, drops the log only up to the last position both in a snapshot
    /// and verified by a check (seed 004's verified compaction), keeping the configured tail.
    pub async fn tend(&self) {
        let mut last_announce: Option<tokio::time::Instant> = None;
        // The last merge this replica applied (see `Replica::purge_verified`).
        let mut merged_at: Option<u64> = None;
        let mut last_check: Option<tokio::time::Instant> = None;
        // The periodic check's clock starts now, not at the first check.
        let mut last_periodic = tokio::time::Instant::now();
        let check_every = self.shared.config.check_every;
        // Whether a check this replica started is still running.
        let checking = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = |last: Option<tokio::time::Instant>| last.is_none_or(|t| t.elapsed() >= RETRY_AFTER);
        let mut effects = self.effects();
        let mut gc = super::gc::GcTracker::default();
        // The current incarnation's metrics: a quiet replica looks again as soon as they change.
        let mut watched = (self.id(), self.raft().metrics());
        while !self.shared.stopped.load(Ordering::Acquire) {
            if watched.0 != self.id() {
                watched = (self.id(), self.raft().metrics());
            }
            // (A change seen before the replica went quiet wakes the first quiet look for nothing.)
            let quiet = self.is_quiet();
            let pause = if quiet { super::quiet::QUIET_TEND_EVERY } else { TEND_EVERY };
            // A fencing is acted on at once; everything else at the next look.
            tokio::select! {
                biased;
                effect = effects.recv() => {
                    match effect {
                        Ok(effect @ crate::raft::Effect::Fenced { .. }) => {
                            tracing::debug!(group = self.shared.group, ?effect, "acting on a fencing");
                        }
                        Ok(crate::raft::Effect::Merged { index }) => {
                            // A snapshot past the merge, so no replica needs the frozen neighbour.
                            tracing::info!(group = self.shared.group, index, "snapshot after a merge");
                            let _ = self.raft().trigger().snapshot().await;
                            merged_at = Some(index);
                        }
                        _ => {}
                    }
                }
                _ = watched.1.changed(), if quiet => {}
                () = tokio::time::sleep(pause) => {}
            }
            if self.shared.stopped.load(Ordering::Acquire) {
                return;
            }
            self.end_election_hold();
            if quiet && self.tend_quiet().await {
                continue;
            }
            let status = self.status();
            let group = self.shared.group;
            self.wake_leader(&status).await;
            self.watch_replication(&status);
            if status.checks.fenced.is_some() {
                if status.role == Role::Leader {
                    // A fenced leader hands its role to another voter first, then re-syncs as a follower.
                    self.step_down(&status).await;
                } else if let Err(e) = self.resync().await {
                    tracing::warn!(group, error = %e, "re-sync failed");
                }
                continue;
            }
            if self.incarnation() > 0 && !self.in_membership() && due(last_announce) {
                last_announce = Some(tokio::time::Instant::now());
                match self.announce(self.known_peers()).await {
                    Ok(()) => tracing::info!(group, incarnation = self.incarnation(), "joined as a learner"),
                    Err(e) => tracing::debug!(group, error = %e, "asking to rejoin"),
                }
            }
            if status.role == Role::Leader && self.shared.config.promote_resynced {
                self.promote_caught_up().await;
            }
            if status.role == Role::Leader {
                let unverified_snapshot = status.snapshot.unwrap_or(0) > status.checks.verified.unwrap_or(0);
                // (Not on a group that applied nothing since its last verified check: it stays quiet.)
                let moved = status.applied > status.checks.verified;
                let periodic = !check_every.is_zero() && last_periodic.elapsed() >= check_every && moved;
                let idle = !checking.load(Ordering::Acquire);
                if (unverified_snapshot || periodic) && due(last_check) && idle {
                    last_check = Some(tokio::time::Instant::now());
                    last_periodic = tokio::time::Instant::now();
                    // In a task of its own: a check waits for every replica's hash, which on a large
                    // shard of a busy node takes long, and tending goes on meanwhile.
                    checking.store(true, Ordering::Release);
                    let (replica, checking) = (self.clone(), Arc::clone(&checking));
                    tokio::spawn(async move {
                        match replica.check_consistency(replica.check_timeout()).await {
                            Ok(outcome) => {
                                tracing::info!(group, index = outcome.index, "consistency check passed")
                            }
                            // Leadership moved during the check: the new leader runs the next one.
                            Err(e @ GroupError::NotLeader { .. }) => {
                                tracing::debug!(group, error = %e, "consistency check skipped")
                            }
                            Err(e) => tracing::warn!(group, error = %e, "consistency check failed"),
                        }
                        checking.store(false, Ordering::Release);
                    });
                }
            }
            self.purge_verified(&status, merged_at).await;
            if status.role == Role::Leader && status.checks.fenced.is_none() {
                self.raise_gc_threshold(&mut gc);
            }
            if status.role == Role::Leader {
                let busy = checking.load(Ordering::Acquire) || status.checks.fenced.is_some();
                if let Err(e) = self.maybe_quiesce(busy).await {
                    tracing::debug!(group, error = %e, "not quiet");
                }
            }
        }
    }

    /// On the leader, notes each follower's progress and says when a replication stream stalls or moves
    /// again (see [`StallWatch`](super::stalls::StallWatch)); on other replicas, forgets it.
    fn watch_replication(&self, status: &GroupStatus) {
        use super::stalls::Follower;
        let group = self.shared.group;
        let mut watch = self.shared.stalls.lock();
        if status.role != Role::Leader {
            watch.clear();
            return;
        }
        let heard = self.heard_from().unwrap_or_default();
        let last = status.last_log.map_or(0, |l| l + 1);
        let followers = status
            .lag
            .iter()
            .map(|(node, lag)| {
                let answering =
                    heard.get(node).copied().flatten().is_some_and(|ago| ago < MOVE_ANSWERED_WITHIN);
                (*node, Follower { matched: last.saturating_sub(*lag), behind: *lag > 0, answering })
            })
            .collect();
        let changes = watch.observe(std::time::Instant::now(), &followers);
        for (node, matched) in changes.stalled {
            tracing::warn!(
                group,
                node,
                matched,
                leader_log = last,
                "replication to node {node} stalled: it answers heartbeats but took no entry for {} s",
                super::STALL_AFTER.as_secs()
            );
        }
        for node in changes.recovered {
            tracing::info!(group, node, "replication to node {node} is no longer stalled");
        }
    }

    /// Hands leadership to the voter that has the most of the log (this replica is fenced).
    async fn step_down(&self, status: &GroupStatus) {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        let me = m.id;
        let target = m.membership_config.membership().voter_ids().filter(|v| *v != me).max_by_key(|v| {
            m.replication.as_ref().and_then(|r| r.get(v)).and_then(|l| l.as_ref()).map_or(0, |l| l.index + 1)
        });
        if let Some(target) = target {
            tracing::warn!(
                group = status.group,
                to = node_of(target),
                "fenced leader handing over leadership"
            );
            let _ = raft.trigger().transfer_leader(target).await;
        }
    }

    /// True if the current incarnation is a member (voter or learner) of the membership it knows.
    fn in_membership(&self) -> bool {
        let Incarnation { raft, id } = self.current();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).is_some()
    }

    /// Drops the log up to the newest position that is both in this replica's snapshot and verified by
    /// a consistency check, minus the configured tail kept for lagging followers; but always through
    /// the last merge this replica applied (`merged_at`) once that is covered. A merge entry applies
    /// only where the node still holds the right-hand shard's frozen replica, which nodes retire once
    /// merged: a replica that lags, or starts afresh, must catch up past it by snapshot, not by log.
    async fn purge_verified(&self, status: &GroupStatus, merged_at: Option<u64>) {
        let (Some(snapshot), Some(verified)) = (status.snapshot, status.checks.verified) else { return };
        let covered = snapshot.min(verified);
        let mut upto = covered.saturating_sub(self.shared.config.keep_behind_snapshot);
        if let Some(merged) = merged_at.filter(|m| *m <= covered) {
            upto = upto.max(merged);
        }
        if upto > 0 && status.purged.is_none_or(|p| p < upto) {
            let _ = self.raft().trigger().purge_log(upto).await;
        }
    }

    /// Replaces the fenced incarnation by a new, empty one that the group fills again: the old Raft
    /// node stops (its member id is never used again), the state machine records the next incarnation
    /// durably and starts empty, and a Raft node with a fresh log starts under the new id. The leader
    /// then takes it in ([`Replica::announce`]).
    async fn resync(&self) -> Result<(), GroupError> {
        let _guard = self.shared.lifecycle.lock().await;
        if self.shared.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let Incarnation { raft: old, id: old_id } = self.current();
        let sm = &self.shared.sm;
        let peers = self.known_peers();
        let why = sm.check_status().fenced.unwrap_or_default();
        tracing::warn!(group = self.shared.group, incarnation = incarnation_of(old_id), why = %why,
            "re-syncing a fenced replica from scratch");
        old.shutdown().await.map_err(stopped)?;
        let divergences = sm.check_status().divergences;
        let incarnation = sm.begin_incarnation(peers).map_err(stopped)?;
        self.shared.earlier_divergences.fetch_add(divergences, Ordering::Relaxed);
        let id = replica_id(self.shared.node, incarnation);
        let raft = (self.shared.start_raft)(id, incarnation).await?;
        *self.shared.current.write() = Incarnation { raft, id };
        self.note_started();
        self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
        // The old incarnation's log is never read again.
        let old_key = log_key(self.shared.group, incarnation_of(old_id));
        if let (_, Some(last)) = self.shared.log.state(old_key)
            && let Err(e) = self.shared.log.purge(old_key, last)
        {
            tracing::warn!(group = self.shared.group, error = %e, "cannot drop the old incarnation's log");
        }
        Ok(())
    }

    /// The addresses of the group's nodes this replica knows (node id → address): those recorded when
    /// its incarnation began, updated by the membership it knows now.
    fn known_peers(&self) -> BTreeMap<u64, String> {
        let mut peers = self.shared.sm.incarnation_peers();
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        for (id, node) in m.membership_config.membership().nodes() {
            peers.insert(node_of(*id), node.addr.clone());
        }
        peers
    }

    /// Asks the group's leader to take this replica in as a learner (a replica started empty on a node
    /// a move brings the shard to): every peer in `peers` (node id → address, this node's own among
    /// them) and those this replica knows, in turn. Harmless when it is a member already. The replica's
    /// own view of the membership is not trusted for that: a learner added by a leader whose
    /// membership change was then lost still believes it is one.
    pub async fn ask_to_join(&self, peers: BTreeMap<u64, String>) -> Result<(), GroupError> {
        let mut known = self.known_peers();
        known.extend(peers);
        self.announce(known).await
    }

    /// On the group's leader: takes the move of node `from`'s replica to node `to` one step further
    /// (each step one guarded membership change, each waiting at most `timeout`) and says where it
    /// stands. `to`'s replica must first have asked to join ([`Replica::ask_to_join`]); once it has
    /// caught up and answers, it becomes a voter in `from`'s place, then `from` is removed. A leader
    /// that is `from` hands its leadership over instead (a leader does not remove itself). Safe to call
    /// again after any step, on any leader.
    pub async fn advance_move(&self, from: u64, to: u64, timeout: Duration) -> Result<MoveStep, GroupError> {
        let status = self.status();
        if status.role != Role::Leader {
            return Ok(MoveStep::NotLeader);
        }
        if status.node == from {
            return Ok(if self.hand_over(timeout).await { MoveStep::HandedOver } else { MoveStep::Waiting });
        }
        let change = |what: &'static str, voters: Option<BTreeSet<u64>>| async move {
            let changed = match voters {
                Some(voters) => tokio::time::timeout(timeout, self.change_voters(voters)).await,
                None => tokio::time::timeout(timeout, self.remove_learners(BTreeSet::from([from]))).await,
            };
            changed.map_err(|_| GroupError::Timeout(format!("{what} took over {timeout:?}")))?
        };
        if !self.membership_committed() {
            // A change (maybe a predecessor's) is not committed yet: decide on the committed one.
            return Ok(MoveStep::Waiting);
        }
        let (voters, learners) = (&status.voters, &status.learners);
        if !voters.contains(&to) {
            if !learners.contains(&to) || !self.ready_to_vote(&status, to) {
                return Ok(MoveStep::Waiting);
            }
            let mut next = voters.clone();
            next.remove(&from);
            next.insert(to);
            change("promoting the destination", Some(next)).await?;
            return Ok(MoveStep::Promoted);
        }
        if voters.contains(&from) {
            let mut next = voters.clone();
            next.remove(&from);
            change("demoting the source", Some(next)).await?;
            return Ok(MoveStep::Demoted);
        }
        if learners.contains(&from) {
            change("removing the source", None).await?;
            return Ok(MoveStep::Removed);
        }
        Ok(MoveStep::Done)
    }

    /// On the group's leader, for a move being given up: takes node `to`'s replica out of the group if it
    /// is only a learner. `None`: this replica does not lead; `Some(true)`: `to` has no replica in the
    /// group (any more), so the move can be given up; `Some(false)`: `to` already votes, so the move
    /// must be finished instead.
    pub async fn undo_join(&self, to: u64, timeout: Duration) -> Result<Option<bool>, GroupError> {
        let status = self.status();
        if status.role != Role::Leader {
            return Ok(None);
        }
        if status.voters.contains(&to) {
            return Ok(Some(false));
        }
        if status.learners.contains(&to) {
            tokio::time::timeout(timeout, self.remove_learners(BTreeSet::from([to])))
                .await
                .map_err(|_| GroupError::Timeout(format!("removing a learner took over {timeout:?}")))??;
            return Ok(None); // look again once the removal is committed
        }
        if !self.membership_committed() {
            return Ok(None);
        }
        Ok(Some(true))
    }

    /// On the group's leader: makes node `node`'s replica, a learner, a voter as well, if it has
    /// caught up and answers (a cluster's re-synced replica of a shard the map places on its node).
    /// `Ok(false)`: not now (not the leader, not a learner, not ready).
    pub async fn promote(&self, node: u64, timeout: Duration) -> Result<bool, GroupError> {
        let status = self.status();
        if status.role != Role::Leader
            || !status.learners.contains(&node)
            || !self.membership_committed()
            || !self.ready_to_vote(&status, node)
        {
            return Ok(false);
        }
        let mut voters = status.voters.clone();
        voters.insert(node);
        tokio::time::timeout(timeout, self.change_voters(voters))
            .await
            .map_err(|_| GroupError::Timeout(format!("promoting node {node} took over {timeout:?}")))??;
        Ok(true)
    }

    /// On the leader: whether node `node`'s replica has caught up with the log and acknowledged the
    /// leader recently (promoting one that is down could cost the group its quorum).
    fn ready_to_vote(&self, status: &GroupStatus, node: u64) -> bool {
        let caught_up = status.lag.get(&node).is_some_and(|lag| *lag <= PROMOTE_WITHIN);
        let answering = self
            .heard_from()
            .and_then(|h| h.get(&node).copied().flatten())
            .is_some_and(|d| d < MOVE_ANSWERED_WITHIN);
        caught_up && answering
    }

    /// True if the membership this replica goes by is committed (applied here): a leader may still
    /// carry its predecessor's uncommitted change, which a later leader could drop.
    fn membership_committed(&self) -> bool {
        let raft = self.raft();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let at = m.membership_config.log_id().as_ref().map(|id| id.index);
        at.is_none_or(|at| m.last_applied.as_ref().is_some_and(|applied| applied.index >= at))
    }

    /// Stops this replica for good on this node (its shard moved away): the Raft node stops, the state
    /// machine begins its next incarnation empty (so a later return of the shard to this node joins the
    /// group afresh, under a member id never used before), the old incarnation's log is dropped and the
    /// old contents' files are deleted.
    pub async fn retire(&self) -> Result<(), GroupError> {
        self.shared.stopped.store(true, Ordering::Release);
        let _guard = self.shared.lifecycle.lock().await;
        self.raft().shutdown().await.map_err(stopped)?;
        retire_stored(&self.shared.log, &self.shared.sm, self.shared.group).map_err(stopped)?;
        tracing::info!(group = self.shared.group, "replica retired from this node");
        Ok(())
    }

    /// Asks the group's leader to add this incarnation as a learner in place of its node's earlier
    /// ones: every peer in `peers` in turn, following a "not the leader" answer to the leader it names.
    async fn announce(&self, peers: BTreeMap<u64, String>) -> Result<(), GroupError> {
        let own = peers.get(&self.shared.node).cloned().ok_or_else(|| {
            GroupError::Membership(format!("node {}'s own address is unknown", self.shared.node))
        })?;
        let timeout = self.shared.config.election_timeout.1;
        let payload = encode(&(self.id(), own)).map_err(GroupError::Membership)?;
        let mut queue: Vec<u64> = peers.keys().copied().filter(|n| *n != self.shared.node).collect();
        let mut last = GroupError::Membership("no peer to ask".into());
        let mut asked = 0;
        while let Some(node) = queue.pop() {
            asked += 1;
            if asked > 2 * peers.len() {
                break;
            }
            let Some(addr) = peers.get(&node).cloned() else { continue };
            match self.forward::<()>(0, addr, RaftCallKind::Replace, payload.clone(), timeout).await {
                Ok(()) => return Ok(()),
                Err(ForwardError::Answered(GroupError::NotLeader { leader: Some(l) })) => {
                    queue.push(node_of(l));
                    last = GroupError::NotLeader { leader: Some(l) };
                }
                Err(ForwardError::Answered(e)) => last = e,
                Err(ForwardError::Transport(why)) => last = GroupError::Timeout(why),
            }
        }
        Err(last)
    }

    /// On the leader: promotes a re-synced replica (a later incarnation) that has caught up, on a node
    /// that has no voter, taking its node's place again.
    async fn promote_caught_up(&self) {
        let raft = self.raft();
        let m = raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voter_nodes: BTreeSet<u64> = membership.voter_ids().map(node_of).collect();
        let last = m.last_log_index.unwrap_or(0);
        let heard = self.heard_from().unwrap_or_default();
        let caught_up = |id: &u64| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id)).and_then(|l| l.as_ref());
            let answering =
                heard.get(&node_of(*id)).copied().flatten().is_some_and(|d| d < MOVE_ANSWERED_WITHIN);
            matched.is_some_and(|l| l.index + PROMOTE_WITHIN >= last) && answering
        };
        // Only re-synced replicas (a later incarnation) are promoted on their own: a first incarnation
        // is a learner because someone made it one.
        let promote: BTreeSet<u64> = membership
            .learner_ids()
            .filter(|id| incarnation_of(*id) > 0 && !voter_nodes.contains(&node_of(*id)) && caught_up(id))
            .collect();
        if promote.is_empty() {
            return;
        }
        let config = m.membership_config.clone();
        match change_membership(&raft, &config, ChangeMembers::AddVoterIds(promote.clone()), true).await {
            Ok(()) => {
                tracing::info!(group = self.shared.group, ?promote, "caught-up learners promoted to voters")
            }
            Err(e) => tracing::debug!(group = self.shared.group, error = %e, "promotion postponed"),
        }
    }
}

/// Where a replica move stands, as [`Replica::advance_move`] left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// This replica does not lead its group: nothing done.
    NotLeader,
    /// This leader is the move's source: it handed its leadership to another voter.
    HandedOver,
    /// The destination has not joined yet, is catching up, or is not answering: nothing done.
    Waiting,
    /// The destination became a voter in the source's place.
    Promoted,
    /// The source stopped being a voter.
    Demoted,
    /// The source left the group.
    Removed,
    /// The group's membership is the one after the move.
    Done,
}

/// What [`Replica::retire`] does to a replica's storage, for one no Raft node runs on (a replica left on
/// disk by a shard that moved away while its node was down): the state machine begins its next
/// incarnation empty, the old incarnation's log is dropped and the old contents' files deleted.
pub fn retire_stored(log: &RaftLog, sm: &ShardStateMachine, group: u64) -> std::io::Result<()> {
    let old = sm.incarnation();
    sm.begin_incarnation(BTreeMap::new())?;
    let old_key = log_key(group, old);
    if let (_, Some(last)) = log.state(old_key) {
        log.purge(old_key, last).map_err(std::io::Error::other)?;
    }
    sm.drop_old_generations()
}

/// Proposes a membership change on `raft` (the leader) only while its membership is still `decided_on`,
/// so concurrent changes are serialized rather than overwriting each other.
async fn change_membership(
    raft: &ShardRaft,
    decided_on: &StoredMembershipOf<TypeConfig>,
    change: ChangeMembers<u64, BasicNode>,
    retain: bool,
) -> Result<(), GroupError> {
    let guard = Precondition::LastMembershipLogId { last_membership_log_id: *decided_on.log_id() };
    match raft.change_membership_if(change, retain, [guard]).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(GroupError::NotLeader { leader: f.leader_id })
        }
        Err(e) => Err(GroupError::Membership(e.to_string())),
    }
}
