//! One writer thread per shard. Every write to a shard is a request on the shard's bounded channel; the
//! writer takes the requests waiting (up to [`MAX_GROUP`] requests or [`MAX_GROUP_BYTES`]), evaluates them
//! in arrival order ([`cairn_kv::evaluate`], over the store and the writes before them in the group),
//! commits all of them as one engine batch (one WAL append and, with `sync`, one fsync), then answers each.
//!
//! Why a thread per shard rather than the engine's group commit alone: a request handler hands its write
//! over and waits on a channel, so no runtime or blocking-pool thread sits out an fsync, and a group costs
//! one wake-up of the writer instead of one per request. One writer per shard also orders every write to a
//! key, so conditional writes need no locks.

use crate::error::{NodeError, Result};
use cairn_engine::{Db, WriteBatch, WriteOptions};
use cairn_kv::{DbReader, Outcome, Overlay, Pending, Timestamp, Write};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Requests a shard's channel holds before senders wait.
pub(crate) const QUEUE_DEPTH: usize = 1024;
/// Most requests committed as one batch.
pub(crate) const MAX_GROUP: usize = 256;
/// A group stops taking requests once it holds this many bytes of keys and values.
pub(crate) const MAX_GROUP_BYTES: usize = 4 << 20;

/// The timestamp a write was committed at; `None` for a delete of an absent key (nothing written).
pub(crate) type WriteOutcome = Result<Option<Timestamp>>;

struct WriteRequest {
    op: Write,
    reply: oneshot::Sender<WriteOutcome>,
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
    pub(crate) async fn write(&self, op: Write) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.tx.send(WriteRequest { op, reply }).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Submits `op` and blocks until its outcome. Not for async contexts (use [`ShardWriter::write`]).
    pub(crate) fn write_blocking(&self, op: Write) -> WriteOutcome {
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

    /// Evaluates every request of `group` in order (each sees the ones before it), commits the writes
    /// as one batch and answers all.
    fn commit_group(&self, group: &mut Vec<WriteRequest>) {
        let mut batch = WriteBatch::new();
        let store = DbReader { db: &self.db, total_buckets: self.total_buckets };
        let mut overlay = Overlay::new(&store);
        let mut decisions = Vec::with_capacity(group.len());
        let mut stamps = Vec::with_capacity(group.len());
        for request in group.iter() {
            let ts = self.pending.begin();
            stamps.push(ts);
            let clock = self.pending.clock();
            // A transaction's request is refused: only a replicated shard's leader evaluates them.
            let decision =
                cairn_kv::evaluate(&request.op, &overlay, ts, clock.limit(), self.total_buckets, &mut batch);
            if let Ok(e) = &decision {
                overlay.record(&request.op, &e.outcome);
                if let Outcome::Written(at) = e.outcome
                    && at > ts
                {
                    // Written above a newer version (the clock stepped back): later writes go above it.
                    let _ = clock.observe(at);
                }
            }
            decisions.push(decision);
        }
        let written = decisions.iter().any(|d| matches!(d, Ok(e) if e.outcome != Outcome::Unchanged));
        let committed = if written { self.db.write(batch, WriteOptions { sync: self.sync }) } else { Ok(()) };
        self.pending.end(&stamps);
        // Answers wait for the commit even where nothing was written: a condition may have been judged
        // against a write of this group, which must not be reported before it is durable.
        let mut failure = committed.err();
        for (request, decision) in group.drain(..).zip(decisions) {
            let outcome = match (&mut failure, decision) {
                (None, Ok(e)) => Ok(match e.outcome {
                    Outcome::Written(ts) => Some(ts),
                    Outcome::Unchanged | Outcome::Txn(_) => None,
                }),
                (None, Err(e)) => Err(e.into()),
                (Some(e), _) => Err(NodeError::Engine(cairn_engine::Error::Poisoned(format!(
                    "the write group failed: {e}"
                )))),
            };
            // A requester that stopped waiting does not care.
            let _ = request.reply.send(outcome);
        }
    }
}
