//! Writes to a replicated shard, evaluated by its Raft group's leader.
//!
//! [`Leaders`] evaluates the writes of the groups a node leads: its own clients' and those other nodes
//! hand over (it is the node's [`RequestHandler`]). The leader picks each write's timestamp from its
//! node's clock, evaluates it ([`evaluate()`]) against its replica while it holds
//! [latches](crate::latch) on the write's keys, and proposes the rows as a [`Command::Evaluated`] of its
//! term. The latches are held until the command applies, so the next write on those keys reads what
//! this one wrote; a leader evaluates only once it has applied an entry of its own term (every earlier
//! leader's writes), and a command whose leader lost the role before it was appended is refused at
//! apply ([`CommandResult::WrongTerm`]) rather than applied against a state it was not evaluated on.
//!
//! A write's outcome is definite except when the leader's node cannot learn it in time: then the
//! client is told it is unknown ([`WriteError::OutcomeUnknown`]).

use crate::evaluate::{Condition, Evaluated, KvError, Outcome, TxnBounds, Write, evaluate, evaluate_txn};
use crate::hlc::Timestamp;
use crate::latch::{LatchGuard, Latches};
use crate::mvcc;
use crate::pending::Pending;
use crate::reader::DbReader;
use crate::tscache::{self, TsCache};
use crate::txn::{TxnMeta, TxnReply};
use cairn_cluster::raft::{Command, CommandResult, GroupError, ReadLevel, Replica, RequestHandler, Written};
use cairn_engine::WriteBatch;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a replicated write was not done, or may not have been. Serializable: the leader's node answers
/// with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// The replica asked does not lead the group (any more): nothing was proposed.
    #[error("{0}")]
    NotLeader(String),
    /// A put's condition does not hold.
    #[error("{0}")]
    ConditionFailed(String),
    /// A timestamp beyond the clock's bound (see [`KvError::TooFarAhead`]).
    #[error("{0}")]
    OutOfRange(String),
    /// A write over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A write the shard cannot take (an unowned bucket, a bad row).
    #[error("{0}")]
    InvalidArgument(String),
    /// No leader took the write in time, or the store is shutting down: retry.
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied: read before retrying.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A bug or corruption.
    #[error("{0}")]
    Internal(String),
    /// The key's bucket is no longer the shard's (it split, merged or moved): nothing was written;
    /// route the write again. (Last: the variants' order is their encoding.)
    #[error("bucket {bucket} is no longer this shard's (it split or moved): send the write again")]
    NotOwned {
        /// The bucket.
        bucket: u16,
    },
    /// The key holds another transaction's write intent (see [`KvError::LockConflict`]).
    #[error("key {key:?} is locked by transaction {}", holder.id)]
    LockConflict {
        /// The key.
        key: Vec<u8>,
        /// The transaction holding it.
        holder: Box<TxnMeta>,
    },
    /// The transaction must restart (see [`KvError::TxnRetry`]).
    #[error("the transaction must restart: {0}")]
    TxnRetry(String),
    /// The transaction was aborted (see [`KvError::TxnAborted`]).
    #[error("the transaction was aborted: {0}")]
    TxnAborted(String),
    /// A transaction's read met a version in its uncertainty interval (see [`KvError::Uncertain`]).
    #[error("key {key:?} has a version at {ts}, inside the transaction's uncertainty interval")]
    Uncertain {
        /// The key.
        key: Vec<u8>,
        /// The version's timestamp.
        ts: Timestamp,
    },
}

impl From<KvError> for WriteError {
    fn from(e: KvError) -> WriteError {
        match e {
            KvError::ConditionFailed(m) => WriteError::ConditionFailed(m),
            e @ KvError::TooFarAhead { .. } => WriteError::OutOfRange(e.to_string()),
            KvError::LockConflict { key, holder } => WriteError::LockConflict { key, holder },
            KvError::TxnRetry(m) => WriteError::TxnRetry(m),
            KvError::TxnAborted(m) => WriteError::TxnAborted(m),
            KvError::Invalid(m) => WriteError::InvalidArgument(m),
            KvError::Uncertain { key, ts } => WriteError::Uncertain { key, ts },
            KvError::Malformed(m) => WriteError::Internal(m),
            KvError::Engine(e @ cairn_engine::Error::InvalidArgument(_)) => {
                WriteError::InvalidArgument(e.to_string())
            }
            KvError::Engine(e @ (cairn_engine::Error::Poisoned(_) | cairn_engine::Error::Closed)) => {
                WriteError::Unavailable(format!("storage error: {e}"))
            }
            KvError::Engine(cairn_engine::Error::NotOwned { bucket }) => WriteError::NotOwned { bucket },
            KvError::Engine(e) => WriteError::Internal(format!("storage error: {e}")),
        }
    }
}

impl From<GroupError> for WriteError {
    fn from(e: GroupError) -> WriteError {
        match e {
            GroupError::NotLeader { .. } => WriteError::NotLeader(e.to_string()),
            GroupError::OutcomeUnknown(why) => {
                WriteError::OutcomeUnknown(format!("the outcome is unknown: {why}"))
            }
            GroupError::InvalidConfig(why) | GroupError::Membership(why) => WriteError::Internal(why),
            GroupError::Fenced(why) => WriteError::Unavailable(format!("this replica is fenced: {why}")),
            e => WriteError::Unavailable(e.to_string()),
        }
    }
}

/// What a replicated write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The version's timestamp; `None` for a delete of an absent key (nothing written). A
    /// transaction's put: its intent's; its commit: the commit timestamp.
    pub timestamp: Option<Timestamp>,
    /// The log index that decided it.
    pub index: u64,
    /// A transactional write's answer.
    pub txn: Option<Box<TxnReply>>,
}

/// What a leader's evaluation decided.
enum Evaluation {
    /// Nothing to write (with a transactional write's answer).
    Nothing(Option<TxnReply>),
    /// Rows to propose.
    Propose {
        /// The command.
        command: Command,
        /// The write's timestamp.
        at: Option<Timestamp>,
        /// A transactional write's answer.
        reply: Option<TxnReply>,
    },
}

/// A write another node hands to this node's leader replica: the write and how long it may take (ms).
#[derive(Serialize, Deserialize)]
struct Forwarded {
    write: Write,
    timeout_ms: u64,
}

/// Most rounds one write makes to find the leader (a pause after each that found none, or reached a
/// leader that had just lost the role: nothing was proposed then).
const MAX_ROUNDS: usize = 16;
/// Most evaluations of one write on the leader: a second when the first landed above a newer version
/// an earlier leader's clock stamped (see [`Leaders::evaluate`]).
const MAX_EVALUATIONS: usize = 2;

/// Evaluates the writes of the shard groups this node leads (see the module documentation), and hands
/// those of the groups it does not lead to their leaders.
pub struct Leaders {
    pending: Arc<Pending>,
    total_buckets: u32,
    timeout: Duration,
    /// The largest command that fits in one message (and so always replicates).
    max_command_bytes: usize,
    latches: parking_lot::Mutex<std::collections::HashMap<u64, Arc<Latches>>>,
    // Each group's timestamp cache, and the term it was started in.
    reads: parking_lot::Mutex<std::collections::HashMap<u64, GroupReads>>,
    stats: Stats,
    // Set when the node hands its leaderships over (a clean stop): no new evaluation starts here.
    draining: std::sync::atomic::AtomicBool,
    // Proposals whose outcome the group has not decided yet.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// A group's timestamp cache and what it was started for (`None`: not started).
type GroupReads = Arc<parking_lot::Mutex<(Option<CacheEra>, TsCache)>>;

/// What a group's timestamp cache was started for: a term, and the buckets the shard owned then.
type CacheEra = (u64, Vec<cairn_engine::BucketRange>);

/// What a node's [`Leaders`] did, counted since it started.
#[derive(Debug, Default)]
struct Stats {
    evaluated: AtomicU64,
    forwarded: AtomicU64,
    served: AtomicU64,
    pushed: AtomicU64,
    wrong_term: AtomicU64,
    settled: AtomicU64,
}

impl std::ops::AddAssign for LeaderStats {
    fn add_assign(&mut self, more: LeaderStats) {
        self.evaluated += more.evaluated;
        self.forwarded += more.forwarded;
        self.served += more.served;
        self.pushed += more.pushed;
        self.wrong_term += more.wrong_term;
        self.settled += more.settled;
    }
}

/// A copy of a node's [`Leaders`] counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderStats {
    /// Writes evaluated here as the leader (each evaluation counted).
    pub evaluated: u64,
    /// Writes handed to the leader's node.
    pub forwarded: u64,
    /// Writes other nodes handed here.
    pub served: u64,
    /// Evaluations that landed above a newer version stamped by another node's clock, evaluated again.
    pub pushed: u64,
    /// Commands refused at apply for a change of leadership, and evaluated again.
    pub wrong_term: u64,
    /// Proposals whose outcome was learned after the leader lost the role.
    pub settled: u64,
}

impl std::fmt::Debug for Leaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaders").field("groups", &self.latches.lock().len()).finish()
    }
}

/// The timestamps one write took from the node's clock, registered as in flight ([`Pending`]) until the
/// guard drops: when the write is decided, or, if the client stops waiting first, when its proposal
/// is (the proposal's task owns the guard then), so a read at a timestamp never skips a write that may
/// still land below it, and a request dropped midway leaves nothing registered.
struct Stamps {
    pending: Arc<Pending>,
    list: Vec<Timestamp>,
}

impl Drop for Stamps {
    fn drop(&mut self) {
        self.pending.end(&self.list);
    }
}

/// Counts a proposal in flight while it lives.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Time a leader keeps back from a forwarded write's budget, so its answer reaches the sender before
/// the sender's own deadline (at most a quarter of the budget).
const FORWARD_MARGIN: Duration = Duration::from_millis(250);

/// How a round of a write ended when it did not answer the client.
enum Round {
    /// Evaluate again, wherever the leader now is (nothing of this round will apply).
    Again(String),
    /// Answer the client.
    Done(Result<Committed, WriteError>),
}

impl Leaders {
    pub fn new(
        pending: Arc<Pending>,
        total_buckets: u32,
        timeout: Duration,
        max_command_bytes: usize,
    ) -> Arc<Leaders> {
        Arc::new(Leaders {
            pending,
            total_buckets,
            timeout,
            max_command_bytes,
            latches: Default::default(),
            reads: Default::default(),
            stats: Stats::default(),
            draining: Default::default(),
            in_flight: Default::default(),
        })
    }

    /// Stops evaluating writes here (they go round to the next leader) and waits, up to `timeout`,
    /// for the proposals in flight to be decided: a clean stop calls it before handing its
    /// leaderships over, so no write is left waiting on a leader that is going away. True if none is
    /// left.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// What this node's leaders did so far.
    pub fn stats(&self) -> LeaderStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LeaderStats {
            evaluated: get(&s.evaluated),
            forwarded: get(&s.forwarded),
            served: get(&s.served),
            pushed: get(&s.pushed),
            wrong_term: get(&s.wrong_term),
            settled: get(&s.settled),
        }
    }

    fn latches(&self, group: u64) -> Arc<Latches> {
        Arc::clone(self.latches.lock().entry(group).or_default())
    }

    /// `group`'s timestamp cache; started afresh in a new term, or when the shard's buckets changed (a
    /// merge brings in keys another group's leader served reads of), with a low water above every
    /// read an earlier leader can have served (see [`TsCache::new`]).
    fn reads(&self, group: u64) -> GroupReads {
        // Replaced at the group's first evaluation.
        let fresh = || parking_lot::Mutex::new((None, TsCache::new(Timestamp::MAX, 1)));
        Arc::clone(self.reads.lock().entry(group).or_insert_with(|| Arc::new(fresh())))
    }

    /// The timestamp below which no intent lands, at the clock's physical time now: a read at a
    /// timestamp waits until its clock passed it by twice the maximum offset, so every leader's closed
    /// timestamp is past it.
    fn closed(&self) -> Timestamp {
        let clock = self.pending.clock();
        let offset = u64::try_from(clock.max_offset().as_nanos()).unwrap_or(u64::MAX);
        Timestamp { wall_time: clock.physical().saturating_sub(offset), logical: 0 }
    }

    /// Evaluates a transaction's request in `term`, with `group`'s timestamp cache.
    fn evaluate_txn(
        &self,
        op: &Write,
        reader: &DbReader<'_>,
        (group, term): (u64, u64),
        ts: Timestamp,
        batch: &mut WriteBatch,
    ) -> Result<Evaluated, KvError> {
        let clock = self.pending.clock();
        let reads = self.reads(group);
        let mut reads = reads.lock();
        let era = (term, reader.db.owned_buckets());
        if reads.0.as_ref() != Some(&era) {
            let offset = u64::try_from(clock.max_offset().as_nanos()).unwrap_or(u64::MAX);
            let low = Timestamp {
                wall_time: clock.physical().saturating_add(offset.saturating_mul(2)),
                logical: 0,
            };
            *reads = (Some(era), TsCache::new(low, tscache::DEFAULT_CAPACITY));
        }
        let mut bounds =
            TxnBounds { now: ts, limit: clock.limit(), closed: self.closed(), reads: &mut reads.1, clock };
        evaluate_txn(op, reader, &mut bounds, self.total_buckets, batch)
    }

    /// Writes `op` through `replica`'s group: evaluated here if this replica leads, otherwise handed to
    /// the leader's node, which evaluates it and answers. Goes round again, after a pause, while no
    /// leader is known or the one reached had just lost the role (nothing was proposed then).
    pub async fn write(self: &Arc<Self>, replica: &Replica, op: &Write) -> Result<Committed, WriteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut why = String::from("no leader is known");
        let mut backoff = Duration::from_millis(10);
        for _ in 0..MAX_ROUNDS {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let round = match replica.leading_term(left).await {
                Ok(term) => self.lead(replica, op, term, deadline).await,
                Err(GroupError::NotLeader { leader: Some(_) }) => self.forward(replica, op, left).await,
                Err(GroupError::NotLeader { leader: None }) => Round::Again("no leader is known".into()),
                Err(GroupError::Timeout(w)) => Round::Again(w),
                Err(e) => Round::Done(Err(WriteError::from(e))),
            };
            match round {
                Round::Done(outcome) => return outcome,
                Round::Again(w) => why = w,
            }
            if tokio::time::Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(WriteError::Unavailable(format!("no leader took the write in time ({why}): retry")))
    }

    /// Hands `op` to the leader's node.
    async fn forward(&self, replica: &Replica, op: &Write, left: Duration) -> Round {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let request =
            Forwarded { write: op.clone(), timeout_ms: left.as_millis().try_into().unwrap_or(u64::MAX) };
        let request = match postcard::to_stdvec(&request) {
            Ok(r) => r,
            Err(e) => return Round::Done(Err(WriteError::Internal(format!("cannot encode a write: {e}")))),
        };
        match replica.forward_request(request, left).await {
            Ok(answer) => match postcard::from_bytes::<Result<Committed, WriteError>>(&answer) {
                Ok(Ok(committed)) => Round::Done(Ok(committed)),
                Ok(Err(WriteError::NotLeader(why))) => Round::Again(why),
                Ok(Err(e)) => Round::Done(Err(e)),
                Err(e) => Round::Done(Err(WriteError::Internal(format!(
                    "the leader's answer does not decode: {e}"
                )))),
            },
            Err(GroupError::NotLeader { .. }) => {
                Round::Again("the leader's node did not take the write".into())
            }
            Err(e) => Round::Done(Err(WriteError::from(e))),
        }
    }

    /// Evaluates a write another node handed over, if this replica still leads (otherwise the sender
    /// goes round again).
    async fn serve(self: Arc<Self>, replica: Replica, request: Vec<u8>) -> Vec<u8> {
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        let answer = match postcard::from_bytes::<Forwarded>(&request) {
            Err(e) => Err(WriteError::Internal(format!("a forwarded write does not decode: {e}"))),
            Ok(Forwarded { write, timeout_ms }) => {
                // Answer while the sender still waits: a definite answer (even "not the leader")
                // beats its timing out and reporting an unknown outcome.
                let timeout = Duration::from_millis(timeout_ms).min(self.timeout);
                let budget = timeout.saturating_sub(FORWARD_MARGIN.min(timeout / 4));
                let deadline = tokio::time::Instant::now() + budget;
                let round = match replica.leading_term(budget).await {
                    Ok(term) => self.lead(&replica, &write, term, deadline).await,
                    Err(e @ (GroupError::NotLeader { .. } | GroupError::Timeout(_))) => {
                        Round::Again(e.to_string())
                    }
                    Err(e) => Round::Done(Err(WriteError::from(e))),
                };
                match round {
                    Round::Done(outcome) => outcome,
                    Round::Again(why) => Err(WriteError::NotLeader(why)),
                }
            }
        };
        postcard::to_stdvec(&answer).unwrap_or_default()
    }

    /// One evaluation of `op` as the leader of `term`, and its proposal.
    async fn lead(&self, replica: &Replica, op: &Write, term: u64, deadline: tokio::time::Instant) -> Round {
        if self.draining.load(Ordering::Acquire) {
            return Round::Again("this node is handing its leaderships over".into());
        }
        if let Write::Put { condition: Condition::IfTimestamp(want), .. } = op {
            // The new version must sort after the one it replaces.
            if let Err(e) = self.pending.clock().observe(*want) {
                return Round::Done(Err(WriteError::OutOfRange(e.to_string())));
            }
        }
        let latches = self.latches(replica.group());
        let Ok(latches) = tokio::time::timeout_at(deadline, latches.acquire(op.keys())).await else {
            return Round::Done(Err(WriteError::Unavailable(
                "earlier writes of the same keys held them until this write's deadline: nothing was written, \
                 retry"
                    .into(),
            )));
        };
        let mut stamps = Stamps { pending: Arc::clone(&self.pending), list: Vec::new() };
        let evaluated = self.evaluate(replica, op, term, &mut stamps.list, deadline).await;
        if matches!(evaluated, Ok(Evaluation::Propose { .. })) && tokio::time::Instant::now() >= deadline {
            return Round::Done(Err(WriteError::Unavailable(
                "the write's deadline passed before it was proposed: nothing was written, retry".into(),
            )));
        }
        match evaluated {
            Ok(Evaluation::Propose { command, at, reply }) => {
                self.propose(replica, op, command, (at, reply), (latches, stamps), deadline).await
            }
            // Nothing to write (a delete of an absent key, a replayed transactional write), or a failed
            // condition or a lock: answered from this replica's state, which is current for the
            // latched keys as long as it still leads.
            Ok(Evaluation::Nothing(txn)) => match self.still_leading(replica, term, deadline).await {
                Ok(index) => {
                    let timestamp = txn.as_ref().and_then(|r| r.ts);
                    Round::Done(Ok(Committed { timestamp, index, txn: txn.map(Box::new) }))
                }
                Err(why) => Round::Again(why),
            },
            Err(
                e @ (WriteError::ConditionFailed(_)
                | WriteError::LockConflict { .. }
                | WriteError::TxnRetry(_)
                | WriteError::TxnAborted(_)
                | WriteError::Uncertain { .. }),
            ) => match self.still_leading(replica, term, deadline).await {
                Ok(_) => Round::Done(Err(e)),
                Err(why) => Round::Again(why),
            },
            Err(e) => Round::Done(Err(e)),
        }
    }

    /// Confirms, after an evaluation in `term` that writes nothing, that this replica still leads in
    /// that term (a quorum round, shared with concurrent reads): a leader cut off from the others may
    /// not know that a newer leader has written since, and must not answer from its state. Returns the
    /// index a read-your-writes token names.
    async fn still_leading(
        &self,
        replica: &Replica,
        term: u64,
        deadline: tokio::time::Instant,
    ) -> Result<u64, String> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match replica.read_point(ReadLevel::Strong, left).await {
            Ok(point) if replica.leading_term(Duration::ZERO).await == Ok(term) => Ok(point.applied),
            Ok(_) => Err(format!("this replica no longer leads in term {term}")),
            Err(e) => Err(format!("this replica could not confirm it still leads: {e}")),
        }
    }

    /// Evaluates `op` on the leader's replica at a timestamp of this node's clock: the command to
    /// propose and the write's timestamp, or nothing to write.
    async fn evaluate(
        &self,
        replica: &Replica,
        op: &Write,
        term: u64,
        stamps: &mut Vec<Timestamp>,
        deadline: tokio::time::Instant,
    ) -> Result<Evaluation, WriteError> {
        let mut waited_for_clock = false;
        for _ in 0..MAX_EVALUATIONS + 1 {
            let ts = self.pending.begin();
            stamps.push(ts);
            self.stats.evaluated.fetch_add(1, Ordering::Relaxed);
            let db = replica.db();
            let reader = DbReader { db: &db, total_buckets: self.total_buckets };
            let mut batch = WriteBatch::new();
            let limit = self.pending.clock().limit();
            let evaluated = if op.is_transactional() {
                self.evaluate_txn(op, &reader, (replica.group(), term), ts, &mut batch)
            } else {
                evaluate(op, &reader, ts, limit, self.total_buckets, &mut batch)
            };
            match evaluated {
                Ok(Evaluated { outcome: Outcome::Unchanged, .. }) => return Ok(Evaluation::Nothing(None)),
                // A transaction's write lands where its transaction's timestamps say, not at `ts`.
                Ok(Evaluated { outcome: Outcome::Txn(reply), .. }) if batch.is_empty() => {
                    return Ok(Evaluation::Nothing(Some(*reply)));
                }
                Ok(Evaluated { outcome: Outcome::Txn(reply), .. }) => {
                    let command = self.command(term, &batch)?;
                    return Ok(Evaluation::Propose { command, at: reply.ts, reply: Some(*reply) });
                }
                Ok(Evaluated { outcome: Outcome::Written(at), .. }) if at > ts => {
                    // Above a newer version an earlier leader's clock stamped: evaluated again at a
                    // timestamp of this node's clock past it, never at the pushed one, which another
                    // write evaluated against the same version could share.
                    let _ = self.pending.clock().observe(at);
                    self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Evaluated { outcome: Outcome::Written(at), .. }) => {
                    let command = self.command(term, &batch)?;
                    return Ok(Evaluation::Propose { command, at: Some(at), reply: None });
                }
                Err(KvError::TooFarAhead { latest, limit }) if !waited_for_clock => {
                    // A version up to twice the maximum offset ahead (another node's clock may run
                    // that far ahead of this one's) is waited for: the physical clock catches up, the
                    // clock never jumps past its bound. One further ahead is refused.
                    let ahead = Duration::from_nanos(latest.wall_time.saturating_sub(limit.wall_time));
                    if ahead > self.pending.clock().max_offset() {
                        return Err(KvError::TooFarAhead { latest, limit }.into());
                    }
                    waited_for_clock = true;
                    let wake = deadline.min(tokio::time::Instant::now() + ahead + Duration::from_millis(1));
                    tokio::time::sleep_until(wake).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Unavailable("the write's keys kept moving ahead of this node's clock: retry".into()))
    }

    /// The command of `batch`, evaluated in `term`, if it fits in one message.
    fn command(&self, term: u64, batch: &WriteBatch) -> Result<Command, WriteError> {
        let command = Command::evaluated(term, batch);
        if command.approx_bytes() > self.max_command_bytes {
            // The request checks keep writes well under this: a guard, not a path.
            return Err(WriteError::TooLarge(format!(
                "the write takes {} bytes as a Raft command, over the limit of {} bytes",
                command.approx_bytes(),
                self.max_command_bytes
            )));
        }
        Ok(command)
    }

    /// Proposes `command` (the evaluation of `op` at `at`, answering `reply`) and waits for its outcome
    /// until `deadline`.
    /// The proposal runs in a task of its own holding the write's latches and timestamps until the group
    /// decides it: a client that stops waiting (its deadline passed) does not free the keys of a
    /// command that may still apply.
    async fn propose(
        &self,
        replica: &Replica,
        op: &Write,
        command: Command,
        (at, reply): (Option<Timestamp>, Option<TxnReply>),
        held: (LatchGuard, Stamps),
        deadline: tokio::time::Instant,
    ) -> Round {
        let proposer = replica.clone();
        let in_flight = InFlight::new(Arc::clone(&self.in_flight));
        let proposal = tokio::spawn(async move {
            let _held = (held, in_flight);
            // No timeout of its own: openraft answers once the entry applied or the leader lost the
            // role.
            proposer.propose_here(command, Duration::MAX).await
        });
        let outcome = match tokio::time::timeout_at(deadline, proposal).await {
            Err(_) => {
                return Round::Done(Err(WriteError::OutcomeUnknown(
                    "the write was proposed but not applied in time: read the key before retrying".into(),
                )));
            }
            Ok(Err(e)) => {
                // The command may have been appended before the task ended.
                return Round::Done(Err(WriteError::OutcomeUnknown(format!(
                    "the write's proposal task ended ({e}): read the key before retrying"
                ))));
            }
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            Ok(Written { index, result: CommandResult::Applied }) => {
                Round::Done(Ok(Committed { timestamp: at, index, txn: reply.map(Box::new) }))
            }
            Ok(Written { result: CommandResult::WrongTerm { evaluated, appended }, .. }) => {
                self.stats.wrong_term.fetch_add(1, Ordering::Relaxed);
                Round::Again(format!("evaluated in term {evaluated}, appended in term {appended}"))
            }
            // Nothing was written: the bucket left the shard between evaluation and apply.
            Ok(Written { result: CommandResult::NotOwned { bucket }, .. }) => {
                Round::Done(Err(WriteError::NotOwned { bucket }))
            }
            Ok(Written { result, .. }) => {
                Round::Done(Err(WriteError::Internal(format!("the shard refused a write: {result:?}"))))
            }
            // Nothing was appended.
            Err(GroupError::NotLeader { .. }) => Round::Again("this replica lost the leadership".into()),
            Err(GroupError::OutcomeUnknown(why)) => {
                self.stats.settled.fetch_add(1, Ordering::Relaxed);
                self.settle(replica, op, at, why, deadline).await
            }
            Err(e) => Round::Done(Err(WriteError::from(e))),
        }
    }

    /// Finds out whether a command appended while this replica led, whose leader lost the role before
    /// it applied, was applied after all: once this replica has applied what the current leader has
    /// committed (at least its first entry, after any entry of the old term that survives), the key's
    /// version row at `at` tells. If the command did not apply, it never will, and the write goes
    /// round again.
    async fn settle(
        &self,
        replica: &Replica,
        op: &Write,
        at: Option<Timestamp>,
        why: String,
        deadline: tokio::time::Instant,
    ) -> Round {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let point = match replica.read_point(ReadLevel::Strong, left).await {
            Ok(point) => point,
            Err(e) => {
                return Round::Done(Err(WriteError::OutcomeUnknown(format!(
                    "the write's outcome is unknown ({why}) and no leader confirmed it in time ({e}): read \
                     the key before retrying"
                ))));
            }
        };
        let (Some(at), Some((key, column))) = (at, op.witness()) else {
            return Round::Again(why);
        };
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        match replica.db().get(bucket, &mvcc::version_key(key, at)) {
            Ok(row) if row.as_ref().and_then(|r| r.column(0)) == Some(column.as_slice()) => {
                Round::Done(Ok(Committed { timestamp: Some(at), index: point.applied, txn: None }))
            }
            Ok(_) => Round::Again(why),
            Err(e) => Round::Done(Err(WriteError::OutcomeUnknown(format!(
                "the write's outcome is unknown ({why}) and this replica cannot read whether it applied \
                 ({e}): read the key before retrying"
            )))),
        }
    }
}

impl RequestHandler for Leaders {
    // In a task of its own: a sender that stops waiting (its call timed out or was dropped) does not
    // cancel an evaluation halfway.
    fn handle(self: Arc<Self>, replica: Replica, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        Box::pin(async move {
            match tokio::spawn(self.serve(replica, request)).await {
                Ok(answer) => answer,
                Err(e) => {
                    let failed: Result<Committed, WriteError> = Err(WriteError::OutcomeUnknown(format!(
                        "the leader's evaluation task ended ({e}): read the key before retrying"
                    )));
                    postcard::to_stdvec(&failed).unwrap_or_default()
                }
            }
        })
    }
}
