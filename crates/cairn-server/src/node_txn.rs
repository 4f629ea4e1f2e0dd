//! A node's part in transactions (issue 27): sending a transaction's request to the leader of its key's
//! shard, here or on another node, and clearing another transaction's intent out of a request's way by
//! pushing that transaction at its record and resolving the intent.

use super::{Backend, Located, Node, Shard};
use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::mvcc;
use crate::types::Route;
use cairn_kv::evaluate::{PushKind, PushTxn, Refresh, ResolveIntents};
use cairn_kv::txn::{TxnMeta, TxnStatus};
use cairn_kv::{Committed, Write, WriteError};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::time::Instant;

/// A leader's answer to a transaction's request: done, or refused for a reason the transaction acts on
/// (a lock, a retry, an abort, an uncertain read, a failed condition).
pub(crate) type TxnAnswer = std::result::Result<Committed, WriteError>;

/// How the transactions a node coordinated ended (counters since it started).
#[derive(Debug, Default)]
pub struct TxnStats {
    /// Committed in one command on one shard (1PC).
    pub one_phase: AtomicU64,
    /// Committed at their record, after writing intents.
    pub with_intents: AtomicU64,
    /// Committed without writing anything.
    pub read_only: AtomicU64,
    /// Ended by a retryable error (a conflict): rolled back, to run again.
    pub retries: AtomicU64,
}

/// The first pause after a push of a transaction that did not make way.
pub(crate) const FIRST_PUSH_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between two pushes of a transaction that did not make way.
const MAX_PUSH_PAUSE: Duration = Duration::from_millis(100);

impl Node {
    /// The largest Raft command a shard takes.
    pub(crate) fn max_command_bytes(&self) -> usize {
        self.config.max_command_bytes()
    }

    /// How the transactions coordinated here ended.
    pub fn txn_stats(&self) -> &TxnStats {
        &self.txn_stats
    }

    /// Sends `command` (a transaction's request) to the leader of the shard of `key`'s bucket, through a
    /// replica here or another node: the leader's answer. Routing and transport failures are the
    /// outer error.
    pub(crate) async fn txn_request(&self, key: &[u8], command: &Write) -> Result<TxnAnswer> {
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        self.sent_again_when_moved(None, || Box::pin(self.txn_request_once(bucket, command, None))).await
    }

    /// A transaction's request another node routed here (`route`).
    pub(crate) async fn txn_request_routed(&self, command: Write, route: Route) -> Result<TxnAnswer> {
        let key = command.route_key().to_vec();
        let bucket = mvcc::bucket_of(&key, self.total_buckets);
        self.txn_request_once(bucket, &command, Some(route)).await
    }

    async fn txn_request_once(
        &self,
        bucket: u16,
        command: &Write,
        route: Option<Route>,
    ) -> Result<TxnAnswer> {
        match self.locate(bucket, route).await? {
            Located::Here(shard) => self.txn_here(&shard, command).await,
            Located::There => self.router()?.txn_command(bucket, command).await,
        }
    }

    /// Evaluates `command` through `shard`'s group here (handed to its leader's node if that is
    /// elsewhere).
    async fn txn_here(&self, shard: &Shard, command: &Write) -> Result<TxnAnswer> {
        let (Backend::Replicated(replica), Some(replication)) = (&shard.backend, &self.replication) else {
            return Err(NodeError::InvalidArgument("transactions need a replicated cluster".into()));
        };
        match replication.leaders.write(replica, command).await {
            Err(WriteError::NotOwned { bucket }) => {
                Err(NodeError::Engine(cairn_engine::Error::NotOwned { bucket }))
            }
            Err(
                e @ (WriteError::NotLeader(_)
                | WriteError::OutOfRange(_)
                | WriteError::TooLarge(_)
                | WriteError::InvalidArgument(_)
                | WriteError::Unavailable(_)
                | WriteError::OutcomeUnknown(_)
                | WriteError::Internal(_)),
            ) => Err(e.into()),
            answer => Ok(answer),
        }
    }

    /// Resolves `keys` (of any shards) for `txn` (as its record stands: `status`), one request per
    /// shard. With `forget` (the coordinator, once the transaction is over, resolving every key it
    /// wrote) the record's shard goes last and also deletes the record: only once every other shard
    /// resolved, as an intent left without its record would be taken for an abandoned transaction's.
    pub(crate) async fn resolve_intents(
        &self,
        txn: &TxnMeta,
        status: TxnStatus,
        keys: &[Vec<u8>],
        forget: bool,
    ) -> Result<()> {
        let mut groups = self.by_shard(keys)?;
        if forget {
            let home = self.shard_id(mvcc::bucket_of(&txn.anchor, self.total_buckets))?;
            let at = groups.iter().position(|(shard, _)| *shard == home);
            let last = at.map_or_else(Vec::new, |at| groups.remove(at).1);
            groups.push((home, last));
        }
        let count = groups.len();
        for (i, (_, keys)) in groups.into_iter().enumerate() {
            let forget = forget && i + 1 == count;
            let route = keys.first().map_or_else(|| txn.anchor.clone(), |k| k.to_vec());
            let resolve = Write::ResolveIntents(ResolveIntents { txn: txn.clone(), status, keys, forget });
            self.txn_request(&route, &resolve).await?.map_err(NodeError::from)?;
        }
        Ok(())
    }

    /// Moves `txn`'s reads of `keys` (of any shards) from `from` to `to`, one request per shard: a
    /// retryable error if any of them changed in between.
    pub(crate) async fn refresh_reads(
        &self,
        txn: &TxnMeta,
        keys: &[Vec<u8>],
        from: Timestamp,
        to: Timestamp,
    ) -> Result<()> {
        for (_, keys) in self.by_shard(keys)? {
            let first = keys[0].to_vec();
            let refresh = Write::Refresh(Refresh { txn: txn.clone(), keys, from, to });
            self.txn_request(&first, &refresh).await?.map_err(NodeError::from)?;
        }
        Ok(())
    }

    /// Whether `keys` all belong to one shard (as this node routes them now).
    pub(crate) fn one_shard<'k>(&self, keys: impl IntoIterator<Item = &'k Vec<u8>>) -> Result<bool> {
        let mut shard = None;
        for key in keys {
            let owner = self.shard_id(mvcc::bucket_of(key, self.total_buckets))?;
            if *shard.get_or_insert(owner) != owner {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `keys` grouped by the shard that owns them (its id).
    fn by_shard(&self, keys: &[Vec<u8>]) -> Result<Vec<(u64, Vec<serde_bytes::ByteBuf>)>> {
        let mut by_shard: BTreeMap<u64, Vec<serde_bytes::ByteBuf>> = BTreeMap::new();
        for key in keys {
            let shard = self.shard_id(mvcc::bucket_of(key, self.total_buckets))?;
            by_shard.entry(shard).or_default().push(serde_bytes::ByteBuf::from(key.clone()));
        }
        Ok(by_shard.into_iter().collect())
    }

    /// Clears `holder`'s intent on `key` out of the way, once: pushes `holder` (`kind`, with
    /// `priority`) and, if it made way (committed, aborted, or its timestamp pushed as asked), resolves
    /// the intent; if it did not, waits `pause` (doubled for the next time, up to a bound). True: look
    /// at the key again (the intent may also be gone because its transaction finished meanwhile);
    /// false: `deadline` would pass first.
    pub(crate) async fn clear_intent(
        &self,
        key: &[u8],
        holder: &TxnMeta,
        (kind, priority): (PushKind, u32),
        deadline: Instant,
        pause: &mut Duration,
    ) -> Result<bool> {
        let push = Write::PushTxn(PushTxn { pushee: holder.clone(), priority, kind, force: false });
        let answer = self.txn_request(&holder.anchor, &push).await?.map_err(NodeError::from)?;
        let reply =
            answer.txn.ok_or_else(|| NodeError::Internal("a push answered without a reply".into()))?;
        if reply.pushed {
            let record =
                reply.record.ok_or_else(|| NodeError::Internal("a push answered without a record".into()))?;
            self.resolve_intents(&record.meta, record.status, &[key.to_vec()], false).await?;
            return Ok(true);
        }
        if Instant::now() + *pause >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(MAX_PUSH_PAUSE);
        Ok(true)
    }

    /// How long a replicated request may take.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.config.replication.as_ref().map_or(Duration::from_secs(5), |rc| rc.request_timeout)
    }

    /// The timestamp a read at `at` pushes a transaction's intent above.
    pub(crate) fn push_above(at: Timestamp) -> PushKind {
        PushKind::Timestamp(at.next())
    }
}
