//! Quiescence: a group with nothing to do stops its Raft timers, so a node can hold a thousand idle
//! groups for next to nothing (CockroachDB's quiescent ranges, TiKV's hibernate regions).
//!
//! The leader decides ([`ReplicaConfig::quiesce_after`](super::ReplicaConfig) without a new entry,
//! every follower on a live node holding and having applied the whole log, no learner, the membership
//! committed): it asks each such follower to go quiet at (term, leader, last index); a follower agrees
//! only if it is at exactly that point, and then stops its ticker (no election timeouts). Once every
//! one agreed, the leader stops its own ticker (no heartbeats). A quiet group sends nothing.
//!
//! It wakes on its own: any change of a replica's log, term or leader (a write, a vote, a transfer)
//! restarts that replica's ticker. A follower's append already renewed its view of the leader, so a
//! woken follower does not campaign before the woken leader's heartbeats reach it; the leader sees its
//! own log move as soon as a write arrives. Failures wake it too: when the node's liveness view
//! ([`DownNodes`], fed by the cluster's meta leader) says a quiet follower's leader is down, or a request
//! the follower forwarded to it failed, the follower asks the leader whether it still leads (a ping):
//! if it does not answer, the follower restarts its ticker, its election timeout has long passed, and
//! it campaigns at once. A quiet leader wakes when a follower it left out (its node was down) is up
//! again, to catch it up, and when a replica that knows no leader (one that just started) asks the
//! voters to wake: the leader's heartbeats then reach it before its election timeout, so a node that
//! restarts does not set off an election in every quiet group it holds.

use super::{GroupError, Incarnation, Replica, node_of};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often a quiet replica looks at the liveness view (changes of its own state wake it at once).
pub(super) const QUIET_TEND_EVERY: Duration = Duration::from_secs(1);
/// How long a leader waits for a follower to agree to go quiet, or a follower for a ping's answer.
const QUIET_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The nodes the cluster believes down, shared by every replica of a node and updated by the node
/// (from the meta leader's liveness view). Quiet followers of a leader on such a node check whether
/// it still leads.
#[derive(Clone, Debug, Default)]
pub struct DownNodes(Arc<parking_lot::RwLock<BTreeSet<u64>>>);

impl DownNodes {
    /// Replaces the set of nodes believed down.
    pub fn set(&self, down: BTreeSet<u64>) {
        let mut current = self.0.write();
        if *current != down {
            *current = down;
        }
    }

    /// Whether node `node` is believed down.
    pub fn contains(&self, node: u64) -> bool {
        self.0.read().contains(&node)
    }
}

impl PartialEq for DownNodes {
    fn eq(&self, other: &DownNodes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DownNodes {}

/// What one replica asks another about quiescence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum QuietCall {
    /// The leader (member `leader`, in `term`, whose log ends at `index`) asks a follower to go quiet.
    Quiesce { term: u64, leader: u64, index: Option<u64> },
    /// A quiet follower asks its leader whether it still leads in `term`.
    Ping { term: u64 },
    /// A replica that knows no leader (or just started) asks a voter to wake if it leads.
    Wake,
    /// A leader whose hand-over did not finish asks a follower to restart its ticker, so the group
    /// elects a leader (openraft's fallback for a lost hand-over).
    Resume,
}

/// The point a replica went quiet at: anything else seen later wakes it.
#[derive(Clone, Debug)]
struct QuietAt {
    term: u64,
    leader: Option<u64>,
    last_log: Option<u64>,
    /// On the leader: nodes left out because they were down.
    left_out: BTreeSet<u64>,
}

/// A replica's quiescence state.
#[derive(Debug)]
pub(super) struct Quiet {
    at: parking_lot::Mutex<Option<QuietAt>>,
    /// Since when the leader has seen no new entry, and its last log index then.
    idle: parking_lot::Mutex<Option<(Option<u64>, Instant)>>,
    /// A request forwarded to the leader failed: check whether it still leads.
    suspect: AtomicBool,
    /// When the leader was last pinged, or (knowing no leader) the voters last asked to wake.
    pinged: parking_lot::Mutex<Option<Instant>>,
    /// Pings in a row the leader did not answer.
    failed_pings: std::sync::atomic::AtomicU32,
    /// When this replica's current Raft node started: for a while after, it asks the voters to wake
    /// whichever leads (a restarted follower knows its old leader from its vote, not that it is quiet).
    started: parking_lot::Mutex<Instant>,
    /// A leadership hand-over that did not finish in this term: openraft's leader then neither
    /// heartbeats nor takes writes until an election, so the group must not go quiet before one.
    unfinished_transfer: parking_lot::Mutex<Option<u64>>,
    /// Elections held off after a restart (see [`Replica::hold_elections`]).
    electing_held: parking_lot::Mutex<bool>,
}

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet {
            at: parking_lot::Mutex::default(),
            idle: parking_lot::Mutex::default(),
            suspect: AtomicBool::default(),
            pinged: parking_lot::Mutex::default(),
            failed_pings: std::sync::atomic::AtomicU32::default(),
            started: parking_lot::Mutex::new(Instant::now()),
            unfinished_transfer: parking_lot::Mutex::default(),
            electing_held: parking_lot::Mutex::default(),
        }
    }
}

/// How long after its Raft node starts a follower asks the voters to wake whichever leads.
const STARTUP_WAKE: Duration = Duration::from_secs(3);
/// How long [`Replica::campaign`] keeps asking for votes.
const CAMPAIGN_FOR: Duration = Duration::from_secs(2);
/// How long [`Replica::campaign`] gives a round of votes (a vote is a round trip and a synced write)
/// before it starts another: longer makes a round that found a peer not ready yet cost more, shorter
/// risks cutting off a round a loaded machine is slow to finish.
const CAMPAIGN_ROUND: Duration = Duration::from_millis(150);
/// How often [`Replica::campaign`] looks for the round's leader.
const CAMPAIGN_POLL: Duration = Duration::from_millis(10);

impl Replica {
    /// Whether this replica's group is quiet (its ticker stopped).
    pub fn is_quiet(&self) -> bool {
        self.shared.quiet.at.lock().is_some()
    }

    /// Answers a [`QuietCall`] from another replica of the group.
    pub(crate) fn answer_quiet(&self, call: QuietCall) -> bool {
        let Incarnation { raft, id } = self.current();
        let m = raft.metrics().borrow_watched().clone();
        match call {
            QuietCall::Ping { term } => m.current_leader == Some(id) && m.current_term == term,
            QuietCall::Wake => {
                let leads = m.current_leader == Some(id);
                if leads {
                    self.wake("a replica that knows no leader asked");
                }
                leads
            }
            QuietCall::Resume => {
                self.wake("the leader's hand-over did not finish");
                true
            }
            QuietCall::Quiesce { term, leader, index } => {
                let at_point = m.current_term == term
                    && m.current_leader == Some(leader)
                    && m.state == ServerState::Follower
                    && m.last_log_index == index
                    && m.last_applied.map(|l| l.index) == index;
                if at_point && self.shared.config.quiesce_after > Duration::ZERO {
                    *self.shared.quiet.at.lock() = Some(QuietAt {
                        term,
                        leader: Some(leader),
                        last_log: index,
                        left_out: BTreeSet::new(),
                    });
                    raft.runtime_config().tick(false);
                }
                at_point
            }
        }
    }

    /// This replica's Raft node, ready to act as the leader: a quiet leader restarts its ticker and
    /// renews its lease by a quorum round first (a leader whose lease lapsed refuses writes and
    /// membership changes). A quiet follower stays quiet (its view of the leader is old: with its
    /// ticker running it would campaign at once); it wakes once the leader's entries reach it.
    pub(crate) async fn awake(&self, timeout: Duration) -> super::ShardRaft {
        use openraft::rt::Instant as _;
        let Incarnation { raft, id } = self.current();
        let (leads, lapsed) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            let single = m.membership_config.membership().voter_ids().count() <= 1;
            // Half openraft's own lease (the longest election timeout), so it is renewed in time.
            let lease = self.shared.config.election_timeout.1 / 2;
            let lapsed = !single && m.last_quorum_acked.as_ref().is_none_or(|t| t.elapsed() >= lease);
            (m.current_leader == Some(id), lapsed)
        };
        // Not only the first request after a quiet spell: every one that finds the lease lapsed
        // renews it (each would be refused until the first heartbeat is answered).
        if leads && (self.is_quiet() || lapsed) {
            self.wake("a request to the leader");
            // A failed round leaves the caller to find out (the write or change is then refused).
            let round = timeout.min(self.shared.config.election_timeout.1 * 2);
            // (Boxed: this rare path would otherwise deepen every caller's future type.)
            let _ = Box::pin(super::read_index_here(&raft, None, round)).await;
        }
        raft
    }

    /// Notes that a call to the leader failed: a quiet follower checks at its next look whether the
    /// leader still leads.
    pub(super) fn suspect_leader(&self) {
        if self.is_quiet() {
            self.shared.quiet.suspect.store(true, Ordering::Release);
        }
    }

    /// Restarts the ticker of a quiet replica.
    fn wake(&self, why: &str) {
        if self.shared.quiet.at.lock().take().is_some() {
            tracing::debug!(group = self.shared.group, why, "group wakes");
            self.raft().runtime_config().tick(true);
        }
        *self.shared.quiet.idle.lock() = None;
        self.shared.quiet.suspect.store(false, Ordering::Release);
    }

    /// One look of a quiet replica: wakes it if its log, term or leader moved, if it is the leader and
    /// a follower it left out is up again, or if it follows a leader believed down (or that a forwarded
    /// request failed to reach) that does not answer a ping. Returns whether it is still quiet.
    pub(super) async fn tend_quiet(&self) -> bool {
        let Some(at) = self.shared.quiet.at.lock().clone() else { return false };
        let m = self.raft().metrics().borrow_watched().clone();
        if m.current_term != at.term || m.current_leader != at.leader || m.last_log_index != at.last_log {
            self.wake("its log, term or leader moved");
            return false;
        }
        let down = &self.shared.config.down_nodes;
        if m.state == ServerState::Leader {
            if at.left_out.iter().any(|node| !down.contains(*node)) {
                self.wake("a follower left out is up again");
                return false;
            }
            return true;
        }
        let Some(leader) = at.leader else { return true };
        let suspect = self.shared.quiet.suspect.swap(false, Ordering::AcqRel);
        let due = self.shared.quiet.pinged.lock().is_none_or(|t| t.elapsed() >= QUIET_TEND_EVERY);
        if !(suspect || down.contains(node_of(leader))) || !due {
            return true;
        }
        *self.shared.quiet.pinged.lock() = Some(Instant::now());
        let leads = self.ask_quiet(leader, QuietCall::Ping { term: at.term }).await;
        let failed = if leads {
            self.shared.quiet.failed_pings.store(0, Ordering::Release);
            0
        } else {
            self.shared.quiet.failed_pings.fetch_add(1, Ordering::AcqRel) + 1
        };
        // One unanswered ping is enough when the cluster also believes the leader's node down;
        // otherwise (a failed forward) two in a row, so one slow answer does not start an election.
        if failed >= 2 || (failed == 1 && down.contains(node_of(leader))) {
            tracing::info!(
                group = self.shared.group,
                leader = node_of(leader),
                "quiet group's leader is gone"
            );
            self.shared.quiet.failed_pings.store(0, Ordering::Release);
            self.wake("its leader does not answer");
            return false;
        }
        true
    }

    /// On a replica of a group that may go quiet, knowing no leader and not campaigning: asks the
    /// other voters (at most once per [`QUIET_TEND_EVERY`]) to wake whichever of them leads, so its
    /// heartbeats reach this replica before an election timeout does.
    pub(super) async fn wake_leader(&self, status: &super::GroupStatus) {
        if self.shared.config.quiesce_after.is_zero() || status.role != super::Role::Follower {
            return;
        }
        let starting = self.shared.quiet.started.lock().elapsed() < STARTUP_WAKE;
        if status.leader.is_some() && !starting {
            return;
        }
        {
            let mut pinged = self.shared.quiet.pinged.lock();
            if pinged.is_some_and(|t| t.elapsed() < QUIET_TEND_EVERY) {
                return;
            }
            *pinged = Some(Instant::now());
        }
        for voter in self.other_voters() {
            if self.ask_quiet(voter, QuietCall::Wake).await {
                return;
            }
        }
    }

    /// On a leader that is not quiet: once the log has not moved for `quiesce_after`, every voter on a
    /// live node holds all of it, and nothing else is under way (`busy`), asks the followers to go quiet
    /// and, once all agreed, goes quiet itself.
    pub(super) async fn maybe_quiesce(&self, busy: bool) -> Result<(), GroupError> {
        let after = self.shared.config.quiesce_after;
        let Incarnation { raft, id } = self.current();
        let m = raft.metrics().borrow_watched().clone();
        if after.is_zero() || m.current_leader != Some(id) || self.is_quiet() {
            return Ok(());
        }
        let idle_since = {
            let mut idle = self.shared.quiet.idle.lock();
            match *idle {
                Some((log, since)) if log == m.last_log_index => since,
                _ => {
                    *idle = Some((m.last_log_index, Instant::now()));
                    return Ok(());
                }
            }
        };
        let membership = m.membership_config.membership();
        let settled = membership.get_joint_config().len() == 1 && membership.learner_ids().next().is_none();
        let applied = m.last_applied.map(|l| l.index) == m.last_log_index;
        let transferring = *self.shared.quiet.unfinished_transfer.lock() == Some(m.current_term);
        if busy || transferring || idle_since.elapsed() < after || !settled || !applied {
            return Ok(());
        }
        let down = &self.shared.config.down_nodes;
        let matched = |member: u64| {
            m.replication.as_ref().and_then(|r| r.get(&member).cloned().flatten()).map(|l| l.index)
        };
        let mut asked = Vec::new();
        let mut left_out = BTreeSet::new();
        // A follower the liveness view lists down but that answered this leader lately is up (the
        // view can lag, e.g. right after the meta leader changed): it is asked like the others.
        let heard_lately = |member: u64| {
            use openraft::rt::Instant as _;
            m.heartbeat
                .as_ref()
                .and_then(|h| h.get(&member).cloned().flatten())
                .is_some_and(|t| t.elapsed() < self.shared.config.election_timeout.1)
        };
        for voter in membership.voter_ids().filter(|v| *v != id) {
            if down.contains(node_of(voter)) && !heard_lately(voter) {
                left_out.insert(node_of(voter));
            } else if matched(voter) != m.last_log_index {
                return Ok(());
            } else {
                asked.push(voter);
            }
        }
        let call = QuietCall::Quiesce { term: m.current_term, leader: id, index: m.last_log_index };
        for voter in asked {
            if !self.ask_quiet(voter, call).await {
                // It wakes on its own once the group moves; the next look tries again.
                *self.shared.quiet.idle.lock() = None;
                return Ok(());
            }
        }
        // A write that arrived meanwhile moved the log: the next look sees it and wakes this replica.
        *self.shared.quiet.at.lock() =
            Some(QuietAt { term: m.current_term, leader: Some(id), last_log: m.last_log_index, left_out });
        raft.runtime_config().tick(false);
        tracing::debug!(group = self.shared.group, index = ?m.last_log_index, "group quiet");
        Ok(())
    }
}

impl Replica {
    /// Notes that this replica's Raft node (re)started now (see `Quiet::started`).
    pub(super) fn note_started(&self) {
        *self.shared.quiet.started.lock() = Instant::now();
    }

    /// For a replica that comes back with state of its own (its node restarted), in a group that may
    /// go quiet: no campaigning for [`STARTUP_WAKE`]. openraft counts a restarted replica's view of
    /// its leader as expired, so it would campaign at its first tick, before the wake it asks for
    /// (see [`Replica::wake_leader`]) brings a quiet leader's heartbeats, and win. Its tending lets it
    /// campaign again once the time is up.
    pub fn hold_elections(&self) {
        if self.shared.config.quiesce_after.is_zero() {
            return;
        }
        self.note_started();
        *self.shared.quiet.electing_held.lock() = true;
        self.raft().runtime_config().elect(false);
    }

    /// Campaigns at once, in the background: for a split's new group, whose replicas all start at one
    /// log position with no leader. The node that led the split shard asks first, so the moved buckets
    /// wait for one round of votes rather than an election timeout. A round that finds no leader (a
    /// peer that has not opened its replica yet cannot vote) is followed by another once it has had
    /// [`CAMPAIGN_ROUND`] to finish, until a leader is known, for at most [`CAMPAIGN_FOR`].
    /// Nothing happens once the group has moved past its first position (it has had a leader).
    pub fn campaign(&self) {
        let replica = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + CAMPAIGN_FOR;
            let round = CAMPAIGN_ROUND.min(replica.shared.config.election_timeout.0);
            while tokio::time::Instant::now() < deadline && !replica.is_stopped() {
                let status = replica.status();
                if status.leader.is_some() || status.last_log > Some(crate::raft::SPLIT_START_INDEX) {
                    return;
                }
                let _ = replica.raft().trigger().elect(false).await;
                let until = tokio::time::Instant::now() + round;
                while tokio::time::Instant::now() < until && replica.status().leader.is_none() {
                    tokio::time::sleep(CAMPAIGN_POLL).await;
                }
            }
        });
    }

    /// Ends a hold of [`Replica::hold_elections`] once its time is up.
    pub(super) fn end_election_hold(&self) {
        let mut held = self.shared.quiet.electing_held.lock();
        if *held && self.shared.quiet.started.lock().elapsed() >= STARTUP_WAKE {
            *held = false;
            self.raft().runtime_config().elect(true);
        }
    }

    /// After a leadership hand-over that did not finish: keeps the group from going quiet in this
    /// term and asks the other voters to restart their tickers, so that they elect a leader.
    pub(super) async fn transfer_unfinished(&self) {
        let term = self.raft().metrics().borrow_watched().current_term;
        *self.shared.quiet.unfinished_transfer.lock() = Some(term);
        if self.shared.config.quiesce_after.is_zero() {
            return;
        }
        for voter in self.other_voters() {
            self.ask_quiet(voter, QuietCall::Resume).await;
        }
    }

    /// The group's voters other than this replica, as it knows the membership.
    fn other_voters(&self) -> Vec<u64> {
        let Incarnation { raft, id } = self.current();
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().voter_ids().filter(|v| *v != id).collect()
    }

    /// Sends `call` to member `member` and returns its answer; false if it could not be asked.
    async fn ask_quiet(&self, member: u64, call: QuietCall) -> bool {
        let Some(addr) = self.address_of(member) else { return false };
        let Ok(payload) = crate::raft::encode(&call) else { return false };
        let kind = cairn_proto::raft::RaftCallKind::Quiet;
        let answer = self.send(member, addr, kind, payload, QUIET_CALL_TIMEOUT).await;
        answer.ok().and_then(|bytes| crate::raft::decode::<bool>(&bytes).ok()).unwrap_or(false)
    }
}
