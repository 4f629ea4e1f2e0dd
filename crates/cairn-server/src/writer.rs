//! One writer thread per shard. Every write to a shard is a request on the shard's bounded channel; the
//! writer takes the requests waiting (up to [`MAX_GROUP`] requests or [`MAX_GROUP_BYTES`]), checks their
//! conditions in arrival order against the store and the writes before them in the group, commits all of
//! them as one engine batch (one WAL append and, with `sync`, one fsync), then answers each.
//!
//! Why a thread per shard rather than the engine's group commit alone: a request handler hands its write
//! over and waits on a channel, so no runtime or blocking-pool thread sits out an fsync, and a group costs
//! one wake-up of the writer instead of one per request. One writer per shard also orders every write to a
//! key, so conditional writes need no locks.

use crate::error::{NodeError, Result};
use crate::hlc::{Clock, Timestamp};
use crate::mvcc::{self, Stored};
use crate::node::{Condition, Versioned};
use cairn_engine::{Db, WriteBatch, WriteOptions};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Requests a shard's channel holds before senders wait.
pub(crate) const QUEUE_DEPTH: usize = 1024;
/// Most requests committed as one batch.
pub(crate) const MAX_GROUP: usize = 256;
/// A group stops taking requests once it holds this many bytes of keys and values.
pub(crate) const MAX_GROUP_BYTES: usize = 4 << 20;

/// A write, validated by the caller (key and value sizes, one shard for a batch).
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// Write `value` as the key's newest version if `condition` holds.
    Put { key: Vec<u8>, value: Vec<u8>, condition: Condition },
    /// Write a tombstone if the key has a live value.
    Delete { key: Vec<u8> },
    /// Puts (`Some`) and deletes (`None`) at one timestamp, atomically.
    Batch { ops: Vec<(Vec<u8>, Option<Vec<u8>>)> },
}

impl WriteOp {
    fn bytes(&self) -> usize {
        match self {
            WriteOp::Put { key, value, .. } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
            WriteOp::Batch { ops } => ops.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum(),
        }
    }
}

/// The timestamp a write was committed at; `None` for a delete of an absent key (nothing written).
pub(crate) type WriteOutcome = Result<Option<Timestamp>>;

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<WriteOutcome>,
}

/// Timestamps handed to writes not yet committed, so that a read at an explicit timestamp can wait for
/// every write that may land at or below it.
#[derive(Debug)]
pub(crate) struct Pending {
    clock: Clock,
    stamps: Mutex<BTreeMap<Timestamp, u32>>,
    done: Condvar,
}

impl Pending {
    /// No write in flight; a clock starting at the physical time, refusing timestamps more than
    /// `max_clock_offset` ahead of it.
    pub(crate) fn new(max_clock_offset: std::time::Duration) -> Pending {
        Pending {
            clock: Clock::new(max_clock_offset),
            stamps: Mutex::new(BTreeMap::new()),
            done: Condvar::new(),
        }
    }

    /// The node's clock.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A fresh timestamp for a write, registered as in flight.
    pub(crate) fn begin(&self) -> Timestamp {
        let mut stamps = self.stamps.lock();
        let ts = self.clock.now();
        *stamps.entry(ts).or_insert(0) += 1;
        ts
    }

    /// Marks the writes at `stamps` committed (or failed).
    pub(crate) fn end(&self, done: &[Timestamp]) {
        if done.is_empty() {
            return;
        }
        let mut stamps = self.stamps.lock();
        for ts in done {
            if let Some(n) = stamps.get_mut(ts) {
                *n -= 1;
                if *n == 0 {
                    stamps.remove(ts);
                }
            }
        }
        drop(stamps);
        self.done.notify_all();
    }

    /// Waits until no write at or below `at` is in flight; false if `deadline` passed first.
    pub(crate) fn wait_below(&self, at: Timestamp, deadline: Instant) -> bool {
        let mut stamps = self.stamps.lock();
        while stamps.keys().next().is_some_and(|&t| t <= at) {
            if self.done.wait_until(&mut stamps, deadline).timed_out() {
                return false;
            }
        }
        true
    }
}

/// The newest version of `key` in `db` (one point read of its latest row); `None` if absent or deleted.
pub(crate) fn read_latest(db: &Db, total_buckets: u32, key: &[u8]) -> Result<Option<Versioned>> {
    Ok(match latest_version(db, total_buckets, key)? {
        Some((timestamp, Stored::Value(value))) => Some(Versioned { value, timestamp }),
        Some((_, Stored::Tombstone)) | None => None,
    })
}

/// The newest version of `key` in `db`, a tombstone included, and its timestamp; `None` if the key was
/// never written.
pub(crate) fn latest_version(db: &Db, total_buckets: u32, key: &[u8]) -> Result<Option<(Timestamp, Stored)>> {
    let bucket = mvcc::bucket_of(key, total_buckets);
    let Some(row) = db.get(bucket, &mvcc::latest_key(key))? else {
        return Ok(None);
    };
    let malformed = || NodeError::Internal("malformed latest row in the store".into());
    let timestamp = mvcc::decode_timestamp(&row).ok_or_else(malformed)?;
    Ok(Some((timestamp, mvcc::decode_value(&row).ok_or_else(malformed)?)))
}

/// Adds `key`'s version at `ts` and its latest row to `batch` (one atomic write).
pub(crate) fn add_version(
    batch: &mut WriteBatch,
    bucket: u16,
    key: &[u8],
    ts: Timestamp,
    value: Option<&[u8]>,
) {
    let encoded = mvcc::encode_value(value);
    batch.put(bucket, &mvcc::version_key(key, ts), 0, &encoded);
    // A whole-row write: a read of the latest row never folds through older deltas of a hot key.
    batch.put_row(bucket, &mvcc::latest_key(key), &[(0, &encoded), (1, &mvcc::encode_timestamp(ts))]);
}

/// The sending side of a shard's writer.
#[derive(Debug)]
pub(crate) struct ShardWriter {
    tx: mpsc::Sender<WriteRequest>,
}

impl ShardWriter {
    /// Starts the writer thread of shard `shard`, committing into `db`.
    pub(crate) fn start(
        shard: usize,
        db: Arc<Db>,
        pending: Arc<Pending>,
        total_buckets: u32,
        sync: bool,
    ) -> Result<(ShardWriter, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer { db, pending, total_buckets, sync };
        let thread = std::thread::Builder::new()
            .name(format!("cairn-writer-{shard}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| NodeError::Startup(format!("cannot start the writer of shard {shard}: {e}")))?;
        Ok((ShardWriter { tx }, thread))
    }

    /// Submits `op` and waits for its outcome without holding a thread.
    pub(crate) async fn write(&self, op: WriteOp) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.tx.send(WriteRequest { op, reply }).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Submits `op` and blocks until its outcome. Not for async contexts (use [`ShardWriter::write`]).
    pub(crate) fn write_blocking(&self, op: WriteOp) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.tx.blocking_send(WriteRequest { op, reply }).map_err(|_| stopped())?;
        outcome.blocking_recv().map_err(|_| stopped())?
    }
}

fn stopped() -> NodeError {
    NodeError::Unavailable("the node is shutting down".into())
}

struct Writer {
    db: Arc<Db>,
    pending: Arc<Pending>,
    total_buckets: u32,
    sync: bool,
}

/// What a request in a group comes to before the commit.
enum Decision {
    /// Nothing to write; answer this.
    Answer(WriteOutcome),
    /// Written into the group's batch at this timestamp.
    Written(Timestamp),
}

impl Writer {
    /// Serves requests until every sender is gone.
    fn run(self, mut rx: mpsc::Receiver<WriteRequest>) {
        let mut group: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.op.bytes();
            group.push(first);
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                let Ok(next) = rx.try_recv() else { break };
                bytes += next.op.bytes();
                group.push(next);
            }
            self.commit_group(&mut group);
        }
    }

    /// Decides every request of `group` in order, commits the writes as one batch and answers all.
    fn commit_group(&self, group: &mut Vec<WriteRequest>) {
        let mut batch = WriteBatch::new();
        // Keys written earlier in this group: their newest timestamp, `None` once deleted.
        let mut written: HashMap<Vec<u8>, Option<Timestamp>> = HashMap::new();
        let mut decisions = Vec::with_capacity(group.len());
        let mut stamps = Vec::with_capacity(group.len());
        for request in group.iter() {
            let decision = self.decide(&request.op, &mut batch, &mut written);
            if let Decision::Written(ts) = decision {
                stamps.push(ts);
            }
            decisions.push(decision);
        }
        let committed =
            if stamps.is_empty() { Ok(()) } else { self.db.write(batch, WriteOptions { sync: self.sync }) };
        self.pending.end(&stamps);
        // Answers wait for the commit even where nothing was written: a condition may have been judged
        // against a write of this group, which must not be reported before it is durable.
        let mut failure = committed.err();
        for (request, decision) in group.drain(..).zip(decisions) {
            let outcome = match (&mut failure, decision) {
                (None, Decision::Answer(outcome)) => outcome,
                (None, Decision::Written(ts)) => Ok(Some(ts)),
                (Some(e), _) => Err(NodeError::Engine(cairn_engine::Error::Poisoned(format!(
                    "the write group failed: {e}"
                )))),
            };
            // A requester that stopped waiting does not care.
            let _ = request.reply.send(outcome);
        }
    }

    /// The newest live timestamp of `key`: from this group's earlier writes, else from the store.
    fn current(
        &self,
        key: &[u8],
        written: &HashMap<Vec<u8>, Option<Timestamp>>,
    ) -> Result<Option<Timestamp>> {
        match written.get(key) {
            Some(ts) => Ok(*ts),
            None => Ok(read_latest(&self.db, self.total_buckets, key)?.map(|v| v.timestamp)),
        }
    }

    fn decide(
        &self,
        op: &WriteOp,
        batch: &mut WriteBatch,
        written: &mut HashMap<Vec<u8>, Option<Timestamp>>,
    ) -> Decision {
        let bucket = |key: &[u8]| mvcc::bucket_of(key, self.total_buckets);
        match op {
            WriteOp::Put { key, value, condition } => {
                if *condition != Condition::None {
                    let current = match self.current(key, written) {
                        Ok(current) => current,
                        Err(e) => return Decision::Answer(Err(e)),
                    };
                    if let Err(e) = check_condition(*condition, current) {
                        return Decision::Answer(Err(e));
                    }
                }
                let ts = self.pending.begin();
                add_version(batch, bucket(key), key, ts, Some(value));
                written.insert(key.clone(), Some(ts));
                Decision::Written(ts)
            }
            WriteOp::Delete { key } => match self.current(key, written) {
                Err(e) => Decision::Answer(Err(e)),
                Ok(None) => Decision::Answer(Ok(None)),
                Ok(Some(_)) => {
                    let ts = self.pending.begin();
                    add_version(batch, bucket(key), key, ts, None);
                    written.insert(key.clone(), None);
                    Decision::Written(ts)
                }
            },
            WriteOp::Batch { ops } => {
                let ts = self.pending.begin();
                for (key, value) in ops {
                    add_version(batch, bucket(key), key, ts, value.as_deref());
                    written.insert(key.clone(), value.as_ref().map(|_| ts));
                }
                Decision::Written(ts)
            }
        }
    }
}

/// Whether a put with `condition` may go ahead given the key's current live timestamp.
pub(crate) fn check_condition(condition: Condition, current: Option<Timestamp>) -> Result<()> {
    match (condition, current) {
        (Condition::None, _) | (Condition::IfAbsent, None) => Ok(()),
        (Condition::IfAbsent, Some(ts)) => {
            Err(NodeError::Precondition(format!("key exists (current version {ts})")))
        }
        (Condition::IfTimestamp(want), Some(ts)) if ts == want => Ok(()),
        (Condition::IfTimestamp(want), Some(ts)) => {
            Err(NodeError::Precondition(format!("current version is {ts}, not {want}")))
        }
        (Condition::IfTimestamp(want), None) => {
            Err(NodeError::Precondition(format!("key is absent, not at version {want}")))
        }
    }
}
