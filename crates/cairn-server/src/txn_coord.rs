//! A transaction's coordinator on the node a client sent it to (issue 27; `docs/plans/transactions.md`).
//!
//! [`Txn`] holds what the transaction is (its id, timestamps, epoch, isolation), the keys it holds
//! intents on, its writes not sent yet, and its next write's sequence number. Every read is sent to the
//! leader of its key's shard ([`Node::txn_request`]). An unconditional write (and one whose condition is
//! over the transaction's own unsent write) waits at the coordinator until commit; a conditional one is
//! sent at once, as an intent. The first intent also writes the transaction's record, anchored at its
//! key. From then on a task heartbeats the record, so other transactions do not take it for abandoned;
//! a heartbeat that finds the record aborted (a push won) marks the transaction aborted.
//!
//! Another transaction's intent in the way is pushed (a read asks it to commit above the read, a write
//! asks it to abort) and, once it makes way, resolved; after a push that loses, the request is tried
//! again (the intent may be gone: its transaction finished), with growing pauses, for up to
//! [`LOCK_WAIT`], after which this transaction gives up with a retryable error: that is also
//! how a deadlock ends.
//!
//! A serializable transaction commits at the timestamp it read at. When its write timestamp moves (a
//! write landed above another transaction's read or a newer version, or a reader pushed its record)
//! or a read meets a version in its uncertainty interval, it *refreshes*: every key it read is checked
//! for changes between the old read timestamp and the new one ([`Node::refresh_reads`]); if none
//! changed, its reads move there and it goes on, otherwise it must run again (a retryable error, also
//! after it read more than [`MAX_TXN_KEYS`] keys). Under snapshot isolation only a write-write
//! conflict (a version newer than the read timestamp on a key it writes) makes it run again; it
//! commits wherever its writes land.
//!
//! Commit takes one of two paths. A transaction that wrote no intent and whose writes all fall in one
//! shard commits in one Raft command there (1PC: [`CommitOnePhase`], which also refreshes its reads
//! when they are all on that shard too). Otherwise its unsent writes go out as intents (the first
//! alone, if it has no record yet, the rest at once), and then the record is written as committed (one
//! Raft command on the anchor's shard). Either way the coordinator waits until this node's clock has
//! passed the commit timestamp (so no later transaction anywhere starts below it), and resolves the
//! intents before answering, so that every later read finds versions, not intents.
//! Rollback writes the record as aborted and removes the intents; a transaction dropped while open is
//! rolled back in the background.

use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::node::Node;
use crate::types::Condition;
use cairn_kv::evaluate::{CommitOnePhase, CommitWrite, EndTxn, HeartbeatTxn, PushKind, TxnGet, TxnPut};
use cairn_kv::txn::{HEARTBEAT_INTERVAL, Isolation, NORMAL_PRIORITY, TxnId, TxnMeta, TxnReply, TxnStatus};
use cairn_kv::{Committed, Write, WriteError};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long a transaction waits for another's intent to make way before it gives up (retryable).
pub const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Most refreshes one commit makes before it gives up (retryable).
const MAX_COMMIT_REFRESHES: usize = 4;

/// Most of a transaction's writes sent at once at commit.
const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Most keys one transaction may write (its record lists them), and most it may read and still refresh.
pub const MAX_TXN_KEYS: usize = 10_000;

/// Where a transaction stands, as its coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Reads and writes may follow.
    Open,
    /// Committed at this timestamp.
    Committed(Timestamp),
    /// Rolled back, or aborted by another transaction.
    Aborted,
}

/// A transaction coordinated by this node (see the module's description).
pub struct Txn {
    node: Arc<Node>,
    meta: TxnMeta,
    read_ts: Timestamp,
    // The uncertainty limit: the start plus the maximum clock offset.
    limit: Timestamp,
    seq: u32,
    locks: BTreeSet<Vec<u8>>,
    // Writes not sent yet: each key's last value (`None`: a delete) and the condition its first write
    // set on the key's committed version.
    unsent: BTreeMap<Vec<u8>, (Option<Vec<u8>>, Condition)>,
    // The keys read (at most MAX_TXN_KEYS; `None` once over it: no refresh is possible).
    reads: Option<BTreeSet<Vec<u8>>>,
    // A write's outcome is unknown: only a rollback may follow.
    ambiguous: bool,
    state: State,
    // Set by the heartbeat task when it finds the record aborted.
    aborted: Arc<AtomicBool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("id", &self.meta.id).field("state", &self.state).finish()
    }
}

fn retry(why: impl Into<String>) -> NodeError {
    NodeError::TxnRetry(why.into())
}

impl Txn {
    /// Begins a transaction at this node's clock.
    pub fn begin(node: Arc<Node>, isolation: Isolation) -> Result<Txn> {
        let node_id = node
            .node_id()
            .ok_or_else(|| NodeError::InvalidArgument("transactions need a replicated cluster".into()))?;
        let clock = node.pending_clock();
        let now = clock.now();
        let offset = u64::try_from(clock.max_offset().as_nanos()).unwrap_or(u64::MAX);
        let meta = TxnMeta {
            id: TxnId::new(node_id, now),
            anchor: Vec::new(),
            epoch: 0,
            write_ts: now,
            min_ts: now,
            priority: NORMAL_PRIORITY,
            isolation,
        };
        let limit = Timestamp { wall_time: now.wall_time.saturating_add(offset), logical: now.logical };
        Ok(Txn {
            node,
            meta,
            read_ts: now,
            limit,
            seq: 0,
            locks: BTreeSet::new(),
            unsent: BTreeMap::new(),
            reads: Some(BTreeSet::new()),
            ambiguous: false,
            state: State::Open,
            aborted: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
        })
    }

    /// The transaction's id.
    pub fn id(&self) -> TxnId {
        self.meta.id
    }

    /// Where it stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The timestamp its reads are at.
    pub fn read_ts(&self) -> Timestamp {
        self.read_ts
    }

    fn check_open(&self) -> Result<()> {
        if self.ambiguous {
            return Err(retry("a write's outcome is unknown: the transaction can only roll back"));
        }
        if self.aborted.load(Ordering::Acquire) {
            return Err(retry(format!("transaction {} was aborted by a conflicting one", self.meta.id)));
        }
        match self.state {
            State::Open => Ok(()),
            State::Committed(_) => Err(NodeError::InvalidArgument("the transaction is committed".into())),
            State::Aborted => Err(retry("the transaction was rolled back")),
        }
    }

    /// Sends `command` to the leader of `key`'s shard; another transaction's intent in the way is
    /// pushed (`kind`) and resolved, for up to [`LOCK_WAIT`]. The leader's answer.
    async fn send(
        &self,
        key: &[u8],
        command: &Write,
        kind: PushKind,
    ) -> Result<std::result::Result<Committed, WriteError>> {
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = crate::node::FIRST_PUSH_PAUSE;
        loop {
            if Instant::now() >= deadline {
                return Err(retry(format!("key {key:?} stayed locked for {LOCK_WAIT:?}")));
            }
            match self.node.txn_request(key, command).await? {
                Err(WriteError::LockConflict { key, holder }) => {
                    let push = (kind, self.meta.priority);
                    let cleared = self.node.clear_intent(&key, &holder, push, deadline, &mut pause).await?;
                    if !cleared {
                        return Err(retry(format!(
                            "key {key:?} stayed locked by transaction {} for {LOCK_WAIT:?}",
                            holder.id
                        )));
                    }
                }
                answer => return Ok(answer),
            }
        }
    }

    /// Moves the reads to `to` (see the module's description); a retryable error if they changed.
    async fn refresh_to(&mut self, to: Timestamp) -> Result<()> {
        if to <= self.read_ts {
            return Ok(());
        }
        let Some(reads) = &self.reads else {
            return Err(retry(format!("over {MAX_TXN_KEYS} keys were read: the reads cannot be refreshed")));
        };
        let keys: Vec<Vec<u8>> = reads.iter().cloned().collect();
        self.node.refresh_reads(&self.meta, &keys, self.read_ts, to).await?;
        self.read_ts = to;
        self.meta.write_ts = self.meta.write_ts.max(to);
        Ok(())
    }

    fn note_read(&mut self, key: &[u8]) {
        if let Some(reads) = &mut self.reads {
            if reads.len() >= MAX_TXN_KEYS {
                self.reads = None;
            } else {
                reads.insert(key.to_vec());
            }
        }
    }

    /// Fails with a retryable error, rolled back, after `outcome` failed so.
    async fn or_rollback<T>(&mut self, outcome: Result<T>) -> Result<T> {
        if let Err(NodeError::TxnRetry(_)) = &outcome {
            self.node.txn_stats().retries.fetch_add(1, Ordering::Relaxed);
            self.rollback().await?;
        }
        outcome
    }

    /// [`Txn::or_rollback`], also after a condition checked at commit failed.
    async fn or_rollback_at_commit<T>(&mut self, outcome: Result<T>) -> Result<T> {
        if let Err(NodeError::Precondition(_)) = &outcome {
            self.rollback().await?;
        }
        self.or_rollback(outcome).await
    }

    /// `key`'s value as this transaction sees it: its own write, else the version at its read timestamp.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Timestamp)>> {
        self.check_open()?;
        if let Some((value, _)) = self.unsent.get(key) {
            return Ok(value.clone().map(|v| (v, self.meta.write_ts)));
        }
        let outcome = self.get_once(key).await;
        self.or_rollback(outcome).await
    }

    async fn get_once(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Timestamp)>> {
        // The uncertainty interval only shrinks as the read timestamp moves up to its limit.
        loop {
            let get = Write::TxnGet(TxnGet {
                txn: self.meta.clone(),
                read_ts: self.read_ts,
                limit: self.limit,
                key: key.to_vec(),
            });
            // A reader asks the holder to commit above it, and above its uncertainty limit (an intent
            // under the limit stands in its way).
            match self.send(key, &get, PushKind::Timestamp(self.limit.max(self.read_ts).next())).await? {
                Ok(committed) => {
                    self.note_read(key);
                    return Ok(reply(committed)?.value.map(|(v, ts)| (v.into_vec(), ts)));
                }
                // Possibly written before this transaction began: read above it.
                Err(WriteError::Uncertain { ts, .. }) => self.refresh_to(ts).await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes `value` to `key` (`None`: deletes it) if `condition` holds against what this transaction
    /// sees: at commit, or now (so that a failed condition says so at once) if the condition needs the
    /// key's committed version.
    pub async fn put(&mut self, key: &[u8], value: Option<Vec<u8>>, condition: Condition) -> Result<()> {
        if condition == Condition::None || self.unsent.contains_key(key) {
            return self.put_at_commit(key, value, condition);
        }
        self.check_open()?;
        self.check_room(key)?;
        self.put_now(key, value, condition).await
    }

    /// [`Txn::put`], with a condition on the key's committed version checked at commit (where a failed
    /// one rolls the whole transaction back): every write can then wait for the commit, and go with
    /// it in one command when all fall in one shard.
    pub fn put_at_commit(&mut self, key: &[u8], value: Option<Vec<u8>>, condition: Condition) -> Result<()> {
        self.check_open()?;
        self.check_room(key)?;
        match self.unsent.get_mut(key) {
            Some(own) => {
                check_own(condition, own.0.as_ref())?;
                own.0 = value;
            }
            None => {
                self.unsent.insert(key.to_vec(), (value, condition));
            }
        }
        Ok(())
    }

    fn check_room(&self, key: &[u8]) -> Result<()> {
        let known = self.locks.contains(key) || self.unsent.contains_key(key);
        if !known && self.locks.len() + self.unsent.len() >= MAX_TXN_KEYS {
            return Err(NodeError::TooLarge(format!("a transaction writes at most {MAX_TXN_KEYS} keys")));
        }
        Ok(())
    }

    /// Sends a write at once, as an intent: the first one begins the transaction's record (anchored at
    /// its key) and its heartbeats.
    async fn put_now(&mut self, key: &[u8], value: Option<Vec<u8>>, condition: Condition) -> Result<()> {
        let (put, first) = self.intent(key, value, condition);
        let answer = self.send(key, &put, PushKind::Abort).await;
        let written = self.took(key, first, answer);
        self.or_rollback(written).await?;
        self.refresh_after_writes().await
    }

    /// The intent of a write, and whether it is the transaction's first (which writes its record).
    fn intent(&mut self, key: &[u8], value: Option<Vec<u8>>, condition: Condition) -> (Write, bool) {
        let first = self.meta.anchor.is_empty();
        if first {
            self.meta.anchor = key.to_vec();
        }
        self.seq += 1;
        let put = Write::TxnPut(TxnPut {
            txn: self.meta.clone(),
            read_ts: self.read_ts,
            seq: self.seq,
            key: key.to_vec(),
            value,
            condition,
            create_record: first,
        });
        (put, first)
    }

    /// Takes in the leader's answer to a write of `key`: the key is locked unless the write was
    /// refused for certain, and the write timestamp moves up to where the intent landed.
    fn took(
        &mut self,
        key: &[u8],
        first: bool,
        answer: Result<std::result::Result<Committed, WriteError>>,
    ) -> Result<()> {
        let answer = match answer {
            Ok(Ok(committed)) => reply(committed),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e),
        };
        match &answer {
            // Refused for certain: nothing was written.
            Err(
                NodeError::TxnRetry(_)
                | NodeError::Precondition(_)
                | NodeError::InvalidArgument(_)
                | NodeError::TooLarge(_)
                | NodeError::OutOfRange(_),
            ) if first => {
                // Nothing holds the record's key yet: the next write anchors it.
                self.meta.anchor.clear();
            }
            Err(NodeError::TxnRetry(_) | NodeError::Precondition(_) | NodeError::InvalidArgument(_)) => {}
            Err(_) => {
                // The write may have left an intent this transaction cannot place: it may only roll
                // back now (which removes the intent, if any).
                self.locks.insert(key.to_vec());
                self.ambiguous = true;
            }
            Ok(_) => {}
        }
        let answer = answer?;
        self.locks.insert(key.to_vec());
        if first {
            self.heartbeat = Some(self.start_heartbeat());
        }
        if let Some(at) = answer.ts
            && at > self.meta.write_ts
        {
            self.meta.write_ts = at;
        }
        Ok(())
    }

    /// A serializable transaction whose intents landed above its read timestamp moves its reads there.
    async fn refresh_after_writes(&mut self) -> Result<()> {
        if self.meta.isolation == Isolation::Serializable && self.meta.write_ts > self.read_ts {
            let refreshed = self.refresh_to(self.meta.write_ts).await;
            self.or_rollback(refreshed).await?;
        }
        Ok(())
    }

    /// Sends the unsent writes as intents: the first alone if the transaction has no record yet (it
    /// writes the record), the others at once.
    async fn flush(&mut self) -> Result<()> {
        let mut unsent = std::mem::take(&mut self.unsent).into_iter();
        if self.meta.anchor.is_empty()
            && let Some((key, (value, condition))) = unsent.next()
        {
            let (put, first) = self.intent(&key, value, condition);
            let answer = self.send(&key, &put, PushKind::Abort).await;
            self.took(&key, first, answer)?;
        }
        let puts: Vec<(Vec<u8>, Write)> = unsent
            .map(|(key, (value, condition))| {
                let (put, _) = self.intent(&key, value, condition);
                (key, put)
            })
            .collect();
        let mut answers = Vec::with_capacity(puts.len());
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        for (key, put) in &puts {
            if in_flight.len() >= MAX_WRITES_IN_FLIGHT
                && let Some(answer) = in_flight.next().await
            {
                answers.push(answer);
            }
            in_flight.push_back(self.send(key, put, PushKind::Abort));
        }
        while let Some(answer) = in_flight.next().await {
            answers.push(answer);
        }
        drop(in_flight);
        // Every answer is taken in (so that a rollback knows every intent) before any refusal counts.
        let mut outcome = Ok(());
        for ((key, _), answer) in puts.iter().zip(answers) {
            let took = self.took(key, false, answer);
            if outcome.is_ok() {
                outcome = took;
            }
        }
        outcome
    }

    fn start_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let (node, aborted) = (Arc::clone(&self.node), Arc::clone(&self.aborted));
        let beat = Write::HeartbeatTxn(HeartbeatTxn { txn: self.meta.clone() });
        let anchor = self.meta.anchor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A heartbeat that fails to arrive is tried at the next tick: five in a row must fail
                // before others may take the record for abandoned.
                if let Ok(Ok(Committed { txn: Some(reply), .. })) = node.txn_request(&anchor, &beat).await
                    && reply.record.is_none_or(|r| r.status == TxnStatus::Aborted)
                {
                    aborted.store(true, Ordering::Release);
                    return;
                }
            }
        })
    }

    fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// Commits (see the module's description): the commit timestamp. A read-only transaction commits
    /// at its read timestamp without a record.
    ///
    /// A commit that fails with an error other than a retryable one or a failed condition may have
    /// committed: the transaction can then only roll back (which undoes nothing that applied).
    pub async fn commit(&mut self) -> Result<Timestamp> {
        self.check_open()?;
        let node = Arc::clone(&self.node);
        let stats = node.txn_stats();
        if self.meta.anchor.is_empty() && self.unsent.is_empty() {
            stats.read_only.fetch_add(1, Ordering::Relaxed);
            self.state = State::Committed(self.read_ts);
            return Ok(self.read_ts);
        }
        let mut one_phase = None;
        let unsent_bytes =
            || command_bytes(self.unsent.iter().map(|(k, (v, _))| k.len() + v.as_ref().map_or(0, Vec::len)));
        if self.meta.anchor.is_empty()
            && unsent_bytes() <= self.node.max_command_bytes() / 2
            && self.node.one_shard(self.unsent.keys())?
        {
            let outcome = self.commit_one_phase().await;
            one_phase = self.or_rollback_at_commit(outcome).await?;
        }
        let (at, record) = match one_phase {
            Some(at) => {
                stats.one_phase.fetch_add(1, Ordering::Relaxed);
                (at, None)
            }
            None => {
                if let Err(e) = self.flush().await {
                    // Its writes left the coordinator: whatever went wrong, nothing of it commits.
                    if matches!(e, NodeError::TxnRetry(_)) {
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    self.rollback().await?;
                    return Err(e);
                }
                self.refresh_after_writes().await?;
                let outcome = self.end_committed().await;
                let record = self.or_rollback(outcome).await?;
                stats.with_intents.fetch_add(1, Ordering::Relaxed);
                (record.meta.write_ts, Some(record))
            }
        };
        self.stop_heartbeat();
        self.state = State::Committed(at);
        // Commit-wait: no later transaction starts below the commit, wherever it begins. The commit is
        // within its leader's clock bound, so this is at most a few maximum offsets.
        let clock = self.node.pending_clock();
        let ahead = at.wall_time.saturating_sub(clock.physical());
        if ahead > 0 {
            tokio::time::sleep(Duration::from_nanos(ahead)).await;
        }
        let _ = clock.observe(at);
        // Committed: resolving is a courtesy to later readers (who resolve what is left themselves),
        // so its failure is logged, never reported as the commit's.
        let keys: Vec<Vec<u8>> = self.locks.iter().cloned().collect();
        if let Some(record) = record
            && let Err(e) = self.node.resolve_intents(&record.meta, TxnStatus::Committed, &keys, true).await
        {
            tracing::warn!(txn = %self.meta.id, error = %e, "resolving a committed transaction's intents failed");
        }
        Ok(at)
    }

    /// Commits the unsent writes (all in one shard; no intent written) in one command: the commit
    /// timestamp, or `None` if the writes no longer fall in one shard (a split: nothing was written).
    async fn commit_one_phase(&mut self) -> Result<Option<Timestamp>> {
        let writes: Vec<CommitWrite> = self
            .unsent
            .iter()
            .map(|(key, (value, condition))| CommitWrite {
                key: key.clone(),
                value: value.clone(),
                condition: *condition,
            })
            .collect();
        let Some(anchor) = writes.first().map(|w| w.key.clone()) else {
            return Err(NodeError::Internal("a one-phase commit without writes".into()));
        };
        // A push can land between a refresh and the next try: a few rounds at most, then run again.
        for _ in 0..MAX_COMMIT_REFRESHES {
            // The leader refreshes the reads itself if they are on its shard.
            let reads = match &self.reads {
                Some(reads)
                    if self.meta.isolation == Isolation::Serializable
                        && command_bytes(reads.iter().map(Vec::len)) <= self.node.max_command_bytes() / 4
                        && self.node.one_shard(reads.iter().chain([&anchor]))? =>
                {
                    Some(reads.iter().map(|k| serde_bytes::ByteBuf::from(k.clone())).collect())
                }
                _ => None,
            };
            let commit = Write::CommitOnePhase(CommitOnePhase {
                txn: TxnMeta { anchor: anchor.clone(), ..self.meta.clone() },
                read_ts: self.read_ts,
                writes: writes.clone(),
                reads,
            });
            let answer = match self.send(&anchor, &commit, PushKind::Abort).await {
                Err(NodeError::Engine(cairn_engine::Error::NotOwned { .. })) => return Ok(None),
                Ok(Err(e)) => Err(NodeError::from(e)),
                Ok(Ok(answer)) => Ok(answer),
                Err(e) => Err(e),
            };
            let answer = match answer {
                Ok(answer) => answer,
                // Refused for certain: nothing was written.
                Err(
                    e @ (NodeError::TxnRetry(_)
                    | NodeError::Precondition(_)
                    | NodeError::InvalidArgument(_)
                    | NodeError::TooLarge(_)
                    | NodeError::OutOfRange(_)),
                ) => return Err(e),
                // It may have committed: sent again it could apply twice, so only a rollback (which
                // leaves what did apply) may follow.
                Err(e) => {
                    self.ambiguous = true;
                    return Err(NodeError::OutcomeUnknown(format!(
                        "the commit's outcome is unknown ({e}): read its keys before running it again"
                    )));
                }
            };
            match answer {
                // Its leader found it applied after an unknown outcome: committed at its timestamp.
                Committed { timestamp: Some(at), txn: None, .. } => return Ok(Some(at)),
                answer => match reply(answer)? {
                    TxnReply { committed: true, ts: Some(at), .. } => return Ok(Some(at)),
                    // Serializable, above its read timestamp: the reads move first. At least to this
                    // node's clock, so that the next try is not below the leader's closed timestamp
                    // again.
                    TxnReply { committed: false, ts: Some(to), .. } => {
                        let now = self.node.pending_clock().now();
                        self.refresh_to(to.max(now)).await?;
                    }
                    other => {
                        return Err(NodeError::Internal(format!(
                            "a one-phase commit answered unexpectedly: {other:?}"
                        )));
                    }
                },
            }
        }
        Err(retry("the transaction kept being pushed while it committed"))
    }

    /// Writes the record as committed, refreshing the reads first whenever the record says the
    /// transaction was pushed (serializable): the committed record.
    async fn end_committed(&mut self) -> Result<cairn_kv::txn::TxnRecord> {
        // A push can land between a refresh and the next end: a few rounds at most, then run again.
        for _ in 0..MAX_COMMIT_REFRESHES {
            let end = Write::EndTxn(EndTxn {
                txn: self.meta.clone(),
                read_ts: self.read_ts,
                commit: true,
                lock_keys: self.locks.iter().map(|k| serde_bytes::ByteBuf::from(k.clone())).collect(),
            });
            let answer = self.node.txn_request(&self.meta.anchor, &end).await?.map_err(NodeError::from);
            match reply(answer?)? {
                TxnReply { record: Some(record), .. } if record.status == TxnStatus::Committed => {
                    return Ok(record);
                }
                TxnReply { record: Some(record), ts: Some(to), .. }
                    if record.status == TxnStatus::Pending =>
                {
                    self.refresh_to(to).await?;
                }
                other => {
                    return Err(NodeError::Internal(format!(
                        "a commit answered an unexpected record: {other:?}"
                    )));
                }
            }
        }
        Err(retry("the transaction kept being pushed while it committed"))
    }

    /// Rolls back: nothing it wrote is kept.
    pub async fn rollback(&mut self) -> Result<()> {
        self.ambiguous = false;
        self.unsent.clear();
        if matches!(self.state, State::Committed(_) | State::Aborted) {
            return Ok(());
        }
        self.stop_heartbeat();
        self.state = State::Aborted;
        if self.meta.anchor.is_empty() {
            return Ok(());
        }
        abort(&self.node, &self.meta, self.read_ts, &self.locks).await
    }
}

/// Writes `meta`'s record as aborted and removes its intents on `locks`.
async fn abort(node: &Node, meta: &TxnMeta, read_ts: Timestamp, locks: &BTreeSet<Vec<u8>>) -> Result<()> {
    let end = Write::EndTxn(EndTxn {
        txn: meta.clone(),
        read_ts,
        commit: false,
        lock_keys: locks.iter().map(|k| serde_bytes::ByteBuf::from(k.clone())).collect(),
    });
    match node.txn_request(&meta.anchor, &end).await?.map_err(NodeError::from) {
        // Aborted, or already aborted by a push: either way, its intents go.
        Ok(_) | Err(NodeError::TxnRetry(_)) => {}
        Err(e) => return Err(e),
    }
    let keys: Vec<Vec<u8>> = locks.iter().cloned().collect();
    // The aborted record stays: it keeps a write of the transaction still on its way from writing a
    // pending record later.
    node.resolve_intents(meta, TxnStatus::Aborted, &keys, false).await
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if self.state == State::Open && !self.meta.anchor.is_empty() {
            // Left open: rolled back in the background (or, failing that, aborted by the first push
            // once its record expires).
            let (node, meta, read_ts, locks) =
                (Arc::clone(&self.node), self.meta.clone(), self.read_ts, std::mem::take(&mut self.locks));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = abort(&node, &meta, read_ts, &locks).await {
                        tracing::warn!(txn = %meta.id, error = %e, "rolling back an abandoned transaction failed");
                    }
                });
            }
        }
    }
}

/// About the bytes a command carrying keys and values of these sizes takes (each value is written
/// twice: as a version and as the key's newest).
fn command_bytes(sizes: impl Iterator<Item = usize>) -> usize {
    sizes.map(|n| 2 * n + 64).sum()
}

/// Checks `condition` against the transaction's own unsent write of the key (`None`: a delete), which
/// has no version timestamp to match.
fn check_own(condition: Condition, own: Option<&Vec<u8>>) -> Result<()> {
    match (condition, own) {
        (Condition::None, _) | (Condition::IfAbsent, None) => Ok(()),
        (Condition::IfAbsent, Some(_)) => {
            Err(NodeError::Precondition("key exists (written by this transaction)".into()))
        }
        (Condition::IfTimestamp(want), _) => Err(NodeError::Precondition(format!(
            "key holds this transaction's own write, not the version at {want}"
        ))),
    }
}

/// A transactional request's reply.
fn reply(committed: Committed) -> Result<TxnReply> {
    committed
        .txn
        .map(|r| *r)
        .ok_or_else(|| NodeError::Internal("a transaction's request answered without a reply".into()))
}
