//! Writes to a node's store: puts (with their conditions), deletes and single-shard batches, checked
//! against the node's limits, then handed to the shard's writer thread (standalone) or to its Raft
//! group's leader ([`cairn_kv::Leaders`]).

use super::{
    Ack, Backend, Condition, Located, MAX_BATCH_OPS, MESSAGE_OVERHEAD_BYTES, Node, Shard, Token,
    command_bytes,
};
use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::mvcc;
use crate::types::Route;
use crate::writer::{ShardWriter, WriteOutcome};
use cairn_kv::Write as WriteOp;
use cairn_kv::WriteError;
use cairn_kv::evaluate::PushKind;
use std::sync::Arc;
use std::time::Duration;

/// How often a request this node routed is sent again after the shard it reached gave the key's bucket
/// up (see [`Node::sent_again_when_moved`]).
const MOVED_RETRIES: usize = 3;
/// How long such a request waits for this node's map to show where the bucket went, each time.
const MOVED_WAIT: Duration = Duration::from_secs(1);

impl Node {
    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.config.max_value_bytes {
            return Err(NodeError::TooLarge(format!(
                "value of {} bytes is over the limit of {} bytes",
                value.len(),
                self.config.max_value_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a condition naming a version further ahead than the maximum clock offset (no write
    /// could have stamped it).
    fn check_condition(&self, condition: Condition) -> Result<()> {
        match condition {
            Condition::IfTimestamp(want) => Ok(self.pending.clock().check(want)?),
            Condition::None | Condition::IfAbsent => Ok(()),
        }
    }

    /// Checks a transaction's read or delete of `key` (`value` `None`), or its write of `value` with
    /// `condition`, against this node's limits.
    pub(crate) fn check_txn_op(&self, key: &[u8], value: Option<&[u8]>, condition: Condition) -> Result<()> {
        match value {
            Some(value) => {
                self.check_new_key(key)?;
                self.check_value(value)?;
            }
            None => self.check_key(key)?,
        }
        self.check_condition(condition)
    }

    pub(super) fn shard_of_key(&self, key: &[u8]) -> Result<Arc<Shard>> {
        self.shard_of(mvcc::bucket_of(key, self.total_buckets))
    }

    fn local_writer(shard: &Shard) -> Result<&ShardWriter> {
        match &shard.backend {
            Backend::Local { writer, .. } => Ok(writer),
            Backend::Replicated(_) => {
                Err(NodeError::Internal("a replicated store takes writes through the async methods".into()))
            }
        }
    }

    /// Writes `op` to `shard`: through its writer, or proposed through its group.
    pub(super) async fn write(
        &self,
        shard: &Shard,
        op: WriteOp,
    ) -> Result<(Option<Timestamp>, Option<Token>)> {
        match (&shard.backend, &self.replication) {
            (Backend::Replicated(replica), Some(replication)) => {
                // A transaction's intent on a key waits the write until that transaction makes way.
                let deadline = tokio::time::Instant::now() + self.request_timeout();
                let mut pause = super::txn::FIRST_PUSH_PAUSE;
                let committed = loop {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(NodeError::Unavailable(
                            "the key stayed locked by transactions: retry".into(),
                        ));
                    }
                    match replication.leaders.write(replica, &op).await {
                        Err(WriteError::LockConflict { key, holder }) => {
                            let push = (PushKind::Abort, 0);
                            let cleared =
                                self.clear_intent(&key, &holder, push, deadline, &mut pause).await?;
                            if !cleared {
                                return Err(NodeError::Unavailable(format!(
                                    "key {key:?} is locked by transaction {}, which has not finished: retry",
                                    holder.id
                                )));
                            }
                        }
                        answer => break answer?,
                    }
                };
                let shard = shard.group as usize;
                Ok((committed.timestamp, Some(Token { shard, index: committed.index })))
            }
            _ => Ok((Node::local_writer(shard)?.write(op).await?, None)),
        }
    }

    /// Writes `value` as the newest version of `key`, if `condition` holds; returns its timestamp. Blocks
    /// until the write is durable (as configured). Standalone stores only; async callers (and replicated
    /// stores) use [`Node::put_async`].
    pub fn put(&self, key: &[u8], value: &[u8], condition: Condition) -> Result<Timestamp> {
        self.check_new_key(key)?;
        self.check_value(value)?;
        self.check_condition(condition)?;
        let op = WriteOp::Put { key: key.to_vec(), value: value.to_vec(), condition };
        let shard = self.shard_of_key(key)?;
        written(Node::local_writer(&shard)?.write_blocking(op))
    }

    /// [`Node::put`] for async callers: waits without holding a thread.
    /// `route` is set on a request another cluster node forwarded here.
    pub async fn put_async(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        condition: Condition,
        route: Option<Route>,
    ) -> Result<Ack> {
        self.check_new_key(&key)?;
        self.check_value(&value)?;
        self.check_condition(condition)?;
        let bucket = mvcc::bucket_of(&key, self.total_buckets);
        let (key, value) = (&key, &value);
        self.sent_again_when_moved(route, || async move {
            match self.locate(bucket, route).await? {
                Located::Here(shard) => {
                    let op = WriteOp::Put { key: key.clone(), value: value.clone(), condition };
                    self.write(&shard, op).await.and_then(acked)
                }
                Located::There => self.router()?.put(bucket, key.clone(), value.clone(), condition).await,
            }
        })
        .await
    }

    /// Runs `once` (one try of a request routed by this node) again while [`Node::moved_on`] says so,
    /// and answers the last try's outcome.
    pub(super) async fn sent_again_when_moved<T, F, Fut>(
        &self,
        route: Option<Route>,
        mut once: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            // What this node routes by before the try (`None` outside a cluster).
            let seen = self.router.as_ref().map(|r| (r.view().map.version, self.set()));
            let outcome = once().await;
            if !self.moved_on(&outcome, route, seen, &mut tries).await {
                return outcome;
            }
        }
    }

    /// Whether to try again a request this node routed (`route` is `None`: not forwarded to it),
    /// whose `outcome` says the shard it reached no longer owns the key's bucket (a split or merge
    /// moved it; nothing was written or read): yes once this node's shards or its map have changed
    /// since `seen` (waiting up to [`MOVED_WAIT`] for that), at most [`MOVED_RETRIES`] times (`tries`
    /// counts them). The client sees the split as a short delay, not an error. A forwarded request is
    /// left to the node that forwarded it (which routes it again).
    async fn moved_on<T>(
        &self,
        outcome: &Result<T>,
        route: Option<Route>,
        seen: Option<(u64, Arc<super::ShardSet>)>,
        tries: &mut usize,
    ) -> bool {
        let (Some(router), None, Some((version, set))) = (&self.router, route, seen) else { return false };
        let moved = matches!(outcome, Err(NodeError::Engine(cairn_engine::Error::NotOwned { .. })));
        if *tries >= MOVED_RETRIES || !moved {
            return false;
        }
        *tries += 1;
        let reshaped = self.reshaped.notified();
        if Arc::ptr_eq(&set, &self.set()) {
            tokio::select! {
                () = router.moved_past(version, MOVED_WAIT) => {}
                () = reshaped => {}
            }
        }
        true
    }

    /// Deletes `key` (writes a tombstone version); `None` if it had no live value. Standalone stores
    /// only (see [`Node::put`]).
    pub fn delete(&self, key: &[u8]) -> Result<Option<Timestamp>> {
        self.check_key(key)?;
        let shard = self.shard_of_key(key)?;
        Node::local_writer(&shard)?.write_blocking(WriteOp::Delete { key: key.to_vec() })
    }

    /// [`Node::delete`] for async callers.
    pub async fn delete_async(&self, key: Vec<u8>, route: Option<Route>) -> Result<Option<Ack>> {
        self.check_key(&key)?;
        let bucket = mvcc::bucket_of(&key, self.total_buckets);
        let key = &key;
        self.sent_again_when_moved(route, || async move {
            match self.locate(bucket, route).await? {
                Located::Here(shard) => match self.write(&shard, WriteOp::Delete { key: key.clone() }).await?
                {
                    (None, _) => Ok(None),
                    written => acked(written).map(Some),
                },
                Located::There => self.router()?.delete(bucket, key.clone()).await,
            }
        })
        .await
    }

    /// Applies `ops` (key, `Some(value)` to put, `None` to delete) atomically at one timestamp. Every key
    /// must belong to one shard (cross-shard atomicity comes with transactions). Standalone stores only
    /// (see [`Node::put`]).
    pub fn batch(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<Timestamp> {
        let shard = self.shard_of(self.check_batch(&ops)?)?;
        written(Node::local_writer(&shard)?.write_blocking(WriteOp::Batch { ops }))
    }

    /// [`Node::batch`] for async callers.
    pub async fn batch_async(
        &self,
        ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        route: Option<Route>,
    ) -> Result<Ack> {
        let bucket = self.check_batch(&ops)?;
        let ops = &ops;
        self.sent_again_when_moved(route, || async move {
            match self.locate(bucket, route).await? {
                Located::Here(shard) => {
                    self.write(&shard, WriteOp::Batch { ops: ops.clone() }).await.and_then(acked)
                }
                Located::There => self.router()?.batch(bucket, ops.clone()).await,
            }
        })
        .await
    }

    /// Checks a batch's size, keys and values, and that all its keys belong to one shard; returns the
    /// first key's bucket.
    fn check_batch(&self, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<u16> {
        let Some((first, _)) = ops.first() else {
            return Err(NodeError::InvalidArgument("the batch is empty".into()));
        };
        if ops.len() > MAX_BATCH_OPS {
            return Err(NodeError::InvalidArgument(format!(
                "a batch holds at most {MAX_BATCH_OPS} operations, not {}",
                ops.len()
            )));
        }
        let bucket = mvcc::bucket_of(first, self.total_buckets);
        let shard = self.shard_id(bucket)?;
        let mut bytes = 0usize;
        for (key, value) in ops {
            match value {
                Some(v) => {
                    self.check_new_key(key)?;
                    self.check_value(v)?;
                }
                None => self.check_key(key)?,
            }
            bytes += command_bytes(key.len(), value.as_ref().map_or(0, Vec::len));
            let other = self.shard_id(mvcc::bucket_of(key, self.total_buckets))?;
            if other != shard {
                return Err(NodeError::InvalidArgument(format!(
                    "the batch's keys belong to shards {shard} and {other}: a batch must stay within one shard"
                )));
            }
        }
        if bytes > self.config.max_command_bytes() {
            return Err(NodeError::TooLarge(format!(
                "the batch takes up to {bytes} bytes as one Raft command, over the limit of {} bytes \
                 (max_message_bytes less {MESSAGE_OVERHEAD_BYTES}): split it",
                self.config.max_command_bytes()
            )));
        }
        Ok(bucket)
    }
}

/// The timestamp of a put or batch (which always write).
fn written(outcome: WriteOutcome) -> Result<Timestamp> {
    outcome?.ok_or_else(|| NodeError::Internal("a write reported nothing written".into()))
}

/// The acknowledgement of a put or batch (which always write).
fn acked((timestamp, token): (Option<Timestamp>, Option<Token>)) -> Result<Ack> {
    let timestamp =
        timestamp.ok_or_else(|| NodeError::Internal("a write reported nothing written".into()))?;
    Ok(Ack { timestamp, token })
}
