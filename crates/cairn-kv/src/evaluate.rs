//! Request evaluation: the one place cairn decides what a write does.
//!
//! [`evaluate()`] reads what it needs through a [`Reader`] and turns a [`Write`] proposed at a timestamp
//! into engine rows (added to a write batch), an [`Outcome`], and what it [`Depends`] on. The rules:
//!
//! - a put's [`Condition`] is checked against the key's newest *live* version (a tombstone counts as
//!   absent); a failed condition writes nothing and is an error ([`KvError::ConditionFailed`]);
//! - a delete of a key without a live value writes nothing ([`Outcome::Unchanged`]); otherwise it
//!   writes a tombstone version;
//! - every key's versions only move forward: a write that would land at or below the key's newest
//!   version (a clock behind another node's, a restart after the clock stepped back) is moved to just
//!   above it (write-too-old), unless that is beyond `limit` (the clock's bound: more than the maximum
//!   clock offset ahead), which is refused ([`KvError::TooFarAhead`]);
//! - a batch writes every key at one timestamp, atomically;
//! - a key holding another transaction's write intent is not written ([`KvError::LockConflict`]);
//!   transactions' own writes (intents, their resolution, their records) follow the rules in
//!   `evaluate_txn.rs` ([`TxnPut`], [`ResolveIntents`], [`EndTxn`]).
//!
//! Evaluation is deterministic: the same write, reads and timestamp give the same rows and outcome.
//! The standalone writer evaluates a group of writes in order over an [`Overlay`] of the group's
//! earlier writes and commits them as one batch. A replicated shard evaluates on the proposing node
//! and proposes the rows; [`Depends`] lists what must still hold when the command applies, so that
//! every replica applies it only if the evaluation's reads are still current.

pub use crate::error::KvError;
use crate::hlc::Timestamp;
use crate::mvcc;
pub use crate::mvcc::add_version;
use crate::reader::{DbReader, Latest, Reader};
use crate::txn::{self, Intent, TxnId, TxnRecord, TxnReply};
use cairn_engine::WriteBatch;
use std::collections::HashMap;

#[path = "evaluate_txn.rs"]
mod txn_eval;
pub use txn_eval::{
    CommitOnePhase, CommitWrite, EndTxn, HeartbeatTxn, PushKind, PushTxn, Refresh, ResolveIntents, TxnBounds,
    TxnGet, TxnPut,
};

/// A write, validated by the caller (key and value sizes; one shard for a batch). Serializable: a node
/// hands it to the shard leader's node to be evaluated there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// Write `value` as the key's newest version if `condition` holds.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// When to write.
        condition: Condition,
    },
    /// Write a tombstone if the key has a live value.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Puts (`Some`) and deletes (`None`) at one timestamp, atomically.
    Batch {
        /// The keys and what to write.
        #[serde(with = "byte_pairs")]
        ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    /// Keys' histories from a backup, written at their own timestamps (all older than the write's),
    /// atomically, under keys without a version yet. A key whose newest version is already the newest
    /// restored one was restored before (a retried restore) and is left as it is. A deleted key, and
    /// with `overwrite` one with a live value, gets its newest restored state as a new version instead;
    /// without `overwrite` a key with a live value fails the whole write.
    Restore {
        /// The keys and their versions, each key's oldest first.
        keys: Vec<Restored>,
        /// Write over keys that hold versions (as new versions, at the write's timestamp).
        overwrite: bool,
    },
    /// A transaction's write of one key: a write intent (see [`TxnPut`]).
    TxnPut(TxnPut),
    /// Commits, aborts or moves up a transaction's intents on keys of one shard (see
    /// [`ResolveIntents`]).
    ResolveIntents(ResolveIntents),
    /// Commits or aborts a transaction at its record (see [`EndTxn`]).
    EndTxn(EndTxn),
    /// Asks a transaction to make way (see [`PushTxn`]).
    PushTxn(PushTxn),
    /// Keeps a transaction's record alive (see [`HeartbeatTxn`]).
    HeartbeatTxn(HeartbeatTxn),
    /// A transaction's read of one key, on the leader (see [`TxnGet`]): it writes nothing, but is
    /// latched and evaluated like a write so that the leader's timestamp cache records it.
    TxnGet(TxnGet),
    /// Moves a transaction's reads to a later timestamp (see [`Refresh`]); writes nothing.
    Refresh(Refresh),
    /// Commits a transaction whose writes all fall in one shard in one command (see
    /// [`CommitOnePhase`]).
    CommitOnePhase(CommitOnePhase),
}

/// One key's history in a [`Write::Restore`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its versions, oldest first: a value (`Some`) or a tombstone (`None`) at a timestamp.
    pub versions: Vec<RestoredVersion>,
}

/// One version of a [`Restored`] key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoredVersion {
    /// When it was written.
    pub timestamp: Timestamp,
    /// The value, or `None` for a delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// A batch's operations with their keys and values encoded as byte strings (in postcard one length
/// and one copy each, not one call per byte).
mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(ops.iter().map(|(k, v)| (Bytes::new(k), v.as_deref().map(Bytes::new))))
    }

    type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ops, D::Error> {
        let ops = Vec::<(ByteBuf, Option<ByteBuf>)>::deserialize(d)?;
        Ok(ops.into_iter().map(|(k, v)| (k.into_vec(), v.map(ByteBuf::into_vec))).collect())
    }
}

impl Write {
    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        match self {
            Write::Put { key, value, .. } => key.len() + value.len(),
            Write::Delete { key } => key.len(),
            Write::Batch { ops } => ops.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum(),
            Write::Restore { keys, .. } => keys
                .iter()
                .map(|k| {
                    k.key.len()
                        + k.versions.iter().map(|v| 12 + v.value.as_ref().map_or(0, Vec::len)).sum::<usize>()
                })
                .sum(),
            Write::TxnPut(p) => p.key.len() + p.value.as_ref().map_or(0, Vec::len) + p.txn.anchor.len(),
            Write::ResolveIntents(r) => r.txn.anchor.len() + r.keys.iter().map(|k| k.len()).sum::<usize>(),
            Write::EndTxn(e) => e.txn.anchor.len() + e.lock_keys.iter().map(|k| k.len()).sum::<usize>(),
            Write::PushTxn(p) => p.pushee.anchor.len(),
            Write::HeartbeatTxn(h) => h.txn.anchor.len(),
            Write::TxnGet(g) => g.key.len(),
            Write::Refresh(r) => r.keys.iter().map(|k| k.len()).sum(),
            Write::CommitOnePhase(c) => {
                c.txn.anchor.len()
                    + c.writes
                        .iter()
                        .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len))
                        .sum::<usize>()
                    + c.reads.iter().flatten().map(|k| k.len()).sum::<usize>()
            }
        }
    }

    /// The key whose shard evaluates it: the key it writes or reads (a batch's, a restore's or a
    /// resolve's first: all are on one shard), or a transaction's record's anchor. Empty for an empty
    /// batch.
    pub fn route_key(&self) -> &[u8] {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => key,
            Write::Batch { ops } => ops.first().map_or(&[][..], |(k, _)| k),
            Write::Restore { keys, .. } => keys.first().map_or(&[][..], |k| &k.key),
            Write::TxnPut(p) => &p.key,
            Write::TxnGet(g) => &g.key,
            Write::Refresh(r) => r.keys.first().map_or(&[][..], |k| k),
            Write::CommitOnePhase(c) => &c.txn.anchor,
            Write::ResolveIntents(r) => r.keys.first().map_or(&r.txn.anchor[..], |k| k),
            Write::EndTxn(e) => &e.txn.anchor,
            Write::PushTxn(p) => &p.pushee.anchor,
            Write::HeartbeatTxn(h) => &h.txn.anchor,
        }
    }

    /// Whether it is a transaction's write (which only a replicated shard's leader evaluates).
    pub fn is_transactional(&self) -> bool {
        matches!(
            self,
            Write::TxnPut(_)
                | Write::ResolveIntents(_)
                | Write::EndTxn(_)
                | Write::PushTxn(_)
                | Write::HeartbeatTxn(_)
                | Write::TxnGet(_)
                | Write::Refresh(_)
                | Write::CommitOnePhase(_)
        )
    }

    /// The keys it reads and writes (what its latches cover). A transaction's record is latched under
    /// its record row's engine key: were a user key to equal one, the two would only wait for each
    /// other.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        match self {
            Write::Put { key, .. } | Write::Delete { key } => vec![key.clone()],
            Write::Batch { ops } => ops.iter().map(|(k, _)| k.clone()).collect(),
            Write::Restore { keys, .. } => keys.iter().map(|k| k.key.clone()).collect(),
            Write::TxnPut(p) if p.create_record => vec![p.key.clone(), record_latch(&p.txn.anchor, p.txn.id)],
            Write::TxnPut(p) => vec![p.key.clone()],
            Write::ResolveIntents(r) => {
                let record = r.forget.then(|| record_latch(&r.txn.anchor, r.txn.id));
                r.keys.iter().map(|k| k.to_vec()).chain(record).collect()
            }
            Write::EndTxn(e) => vec![record_latch(&e.txn.anchor, e.txn.id)],
            Write::PushTxn(p) => vec![record_latch(&p.pushee.anchor, p.pushee.id)],
            Write::HeartbeatTxn(h) => vec![record_latch(&h.txn.anchor, h.txn.id)],
            Write::TxnGet(g) => vec![g.key.clone()],
            Write::Refresh(r) => r.keys.iter().map(|k| k.to_vec()).collect(),
            Write::CommitOnePhase(c) => c
                .writes
                .iter()
                .map(|w| w.key.clone())
                .chain(c.reads.iter().flatten().map(|k| k.to_vec()))
                .chain([record_latch(&c.txn.anchor, c.txn.id)])
                .collect(),
        }
    }

    /// The key whose version row shows whether the write was applied, and that row's column 0 when it
    /// was (see [`crate::mvcc`]): a batch's last operation (a key written twice in a batch keeps its
    /// last value).
    pub fn witness(&self) -> Option<(&[u8], Vec<u8>)> {
        match self {
            Write::Put { key, value, .. } => Some((key, mvcc::encode_value(Some(value)))),
            Write::Delete { key } => Some((key, mvcc::encode_value(None))),
            Write::Batch { ops } => {
                ops.last().map(|(key, value)| (key.as_slice(), mvcc::encode_value(value.as_deref())))
            }
            // Versions at the commit timestamp, as a batch's.
            Write::CommitOnePhase(c) => {
                c.writes.first().map(|w| (w.key.as_slice(), mvcc::encode_value(w.value.as_deref())))
            }
            // Its versions are not at the write's timestamp; a retry finds restored keys as they are.
            // A transaction's writes are idempotent: evaluated again, a replayed intent, resolution or
            // end finds its own rows and writes nothing more.
            Write::Restore { .. }
            | Write::TxnPut(_)
            | Write::ResolveIntents(_)
            | Write::EndTxn(_)
            | Write::PushTxn(_)
            | Write::HeartbeatTxn(_)
            | Write::TxnGet(_)
            | Write::Refresh(_) => None,
        }
    }
}

/// A condition on a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    /// Always write.
    None,
    /// Write only if the key has no live value.
    IfAbsent,
    /// Write only if the key's newest version is a value with this timestamp.
    IfTimestamp(Timestamp),
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its versions were written at this timestamp.
    Written(Timestamp),
    /// Nothing to write (a delete of a key without a live value).
    Unchanged,
    /// A transactional write's answer; its rows, if any, are in the batch (none: a replay, or nothing
    /// left to do).
    Txn(Box<TxnReply>),
}

/// The latch key of transaction `id`'s record.
fn record_latch(anchor: &[u8], id: TxnId) -> Vec<u8> {
    txn::record_key(anchor, id)
}

/// Refuses a non-transactional write of `key` while a transaction holds an intent on it.
fn unlocked(reader: &impl Reader, key: &[u8]) -> Result<(), KvError> {
    match reader.intent(key)? {
        None => Ok(()),
        Some(Intent { meta, .. }) => {
            Err(KvError::LockConflict { key: key.to_vec(), holder: Box::new(meta.txn) })
        }
    }
}

/// A read an evaluation depended on, which must still hold for its rows to be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Depends {
    /// The key's newest version is still this one (`None`: the key was never written).
    Unchanged {
        /// The key.
        key: Vec<u8>,
        /// Its newest version's timestamp when evaluated.
        latest: Option<Timestamp>,
    },
    /// The key's newest version, if any, is still older than `ts` (the write's own timestamp).
    OlderThan {
        /// The key.
        key: Vec<u8>,
        /// The write's timestamp.
        ts: Timestamp,
    },
}

/// An evaluated write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluated {
    /// What it did (its rows are in the batch given to [`evaluate()`]).
    pub outcome: Outcome,
    /// What must still hold when the rows apply.
    pub depends: Vec<Depends>,
}

/// Whether a put with `condition` may go ahead given the key's newest live version's timestamp.
pub fn check_condition(condition: Condition, live: Option<Timestamp>) -> Result<(), KvError> {
    let failed = |m: String| Err(KvError::ConditionFailed(m));
    match (condition, live) {
        (Condition::None, _) | (Condition::IfAbsent, None) => Ok(()),
        (Condition::IfAbsent, Some(ts)) => failed(format!("key exists (current version {ts})")),
        (Condition::IfTimestamp(want), Some(ts)) if ts == want => Ok(()),
        (Condition::IfTimestamp(want), Some(ts)) => failed(format!("current version is {ts}, not {want}")),
        (Condition::IfTimestamp(want), None) => failed(format!("key is absent, not at version {want}")),
    }
}

/// The timestamp a write proposed at `ts` lands at, given the key's newest version `latest`: `ts`, or
/// just above `latest` if that is not older (write-too-old), within `limit`.
fn above(ts: Timestamp, latest: Option<Latest>, limit: Timestamp) -> Result<Timestamp, KvError> {
    let Some(latest) = latest.map(|l| l.timestamp) else { return Ok(ts) };
    if latest < ts {
        return Ok(ts);
    }
    let next = latest.next();
    if next > limit {
        return Err(KvError::TooFarAhead { latest, limit });
    }
    Ok(next)
}

/// Evaluates `write` proposed at `ts` against `reader`: adds its rows to `batch` and says what it did
/// and depended on (see the module's description). `limit` bounds how far a write-too-old may move the
/// timestamp; `total_buckets` places keys in buckets.
pub fn evaluate(
    write: &Write,
    reader: &impl Reader,
    ts: Timestamp,
    limit: Timestamp,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let bucket = |key: &[u8]| mvcc::bucket_of(key, total_buckets);
    match write {
        Write::Put { key, value, condition } => {
            unlocked(reader, key)?;
            let latest = reader.latest(key)?;
            check_condition(*condition, latest.filter(|l| l.live).map(|l| l.timestamp))?;
            let at = above(ts, latest, limit)?;
            add_version(batch, bucket(key), key, at, Some(value));
            let depends = match condition {
                // A blind put depends only on landing above the newest version.
                Condition::None => Depends::OlderThan { key: key.clone(), ts: at },
                Condition::IfAbsent | Condition::IfTimestamp(_) => {
                    Depends::Unchanged { key: key.clone(), latest: latest.map(|l| l.timestamp) }
                }
            };
            Ok(Evaluated { outcome: Outcome::Written(at), depends: vec![depends] })
        }
        Write::Delete { key } => {
            unlocked(reader, key)?;
            let latest = reader.latest(key)?;
            let depends = vec![Depends::Unchanged { key: key.clone(), latest: latest.map(|l| l.timestamp) }];
            if !latest.is_some_and(|l| l.live) {
                return Ok(Evaluated { outcome: Outcome::Unchanged, depends });
            }
            let at = above(ts, latest, limit)?;
            add_version(batch, bucket(key), key, at, None);
            Ok(Evaluated { outcome: Outcome::Written(at), depends })
        }
        Write::Batch { ops } => {
            let mut at = ts;
            for (key, _) in ops {
                unlocked(reader, key)?;
                at = at.max(above(ts, reader.latest(key)?, limit)?);
            }
            let mut depends = Vec::with_capacity(ops.len());
            for (key, value) in ops {
                add_version(batch, bucket(key), key, at, value.as_deref());
                depends.push(Depends::OlderThan { key: key.clone(), ts: at });
            }
            Ok(Evaluated { outcome: Outcome::Written(at), depends })
        }
        Write::Restore { keys, overwrite } => {
            restore(keys, *overwrite, reader, ts, limit, total_buckets, batch)
        }
        Write::TxnPut(_)
        | Write::ResolveIntents(_)
        | Write::EndTxn(_)
        | Write::PushTxn(_)
        | Write::HeartbeatTxn(_)
        | Write::TxnGet(_)
        | Write::Refresh(_)
        | Write::CommitOnePhase(_) => Err(KvError::Invalid(
            "a transaction's request is evaluated by its shard's leader, with its timestamp cache".into(),
        )),
    }
}

/// Evaluates a transaction's request (see `evaluate_txn.rs`) on a shard leader's replica `reader`:
/// adds its rows to `batch` and answers [`Outcome::Txn`]. Other writes go to [`evaluate()`].
pub fn evaluate_txn(
    write: &Write,
    reader: &DbReader<'_>,
    bounds: &mut TxnBounds<'_>,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let now = bounds.now;
    match write {
        Write::TxnPut(put) => txn_eval::put(put, reader, bounds, total_buckets, batch),
        Write::ResolveIntents(resolve) => {
            txn_eval::resolve(resolve, reader, bounds.limit, total_buckets, batch)
        }
        Write::EndTxn(end) => txn_eval::end(end, reader, bounds.limit, total_buckets, batch),
        Write::PushTxn(push) => txn_eval::push(push, reader, (now, bounds.limit), total_buckets, batch),
        Write::HeartbeatTxn(beat) => txn_eval::heartbeat(beat, reader, now, total_buckets, batch),
        Write::TxnGet(get) => txn_eval::get(get, reader, bounds),
        Write::Refresh(refresh) => txn_eval::refresh(refresh, reader, bounds),
        Write::CommitOnePhase(commit) => {
            txn_eval::commit_one_phase(commit, reader, bounds, total_buckets, batch)
        }
        Write::Put { .. } | Write::Delete { .. } | Write::Batch { .. } | Write::Restore { .. } => {
            evaluate(write, reader, now, bounds.limit, total_buckets, batch)
        }
    }
}

/// Evaluates a [`Write::Restore`] (see there).
fn restore(
    keys: &[Restored],
    overwrite: bool,
    reader: &impl Reader,
    ts: Timestamp,
    limit: Timestamp,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    // Every key is judged before any row is added: a refused write leaves nothing in `batch` (which
    // a writer shares with the other writes of its group).
    enum Plan {
        History,
        Above(Timestamp),
    }
    let mut plans = Vec::with_capacity(keys.len());
    for Restored { key, versions } in keys {
        let Some(newest) = versions.last() else { continue };
        if versions.windows(2).any(|w| w[0].timestamp >= w[1].timestamp) || newest.timestamp >= ts {
            return Err(KvError::ConditionFailed(format!(
                "the restored versions of key {key:?} are not in order below this node's clock ({ts}): the \
                 backup's timestamp is ahead of this cluster's clocks"
            )));
        }
        unlocked(reader, key)?;
        match reader.latest(key)? {
            None => plans.push((key, versions, Plan::History)),
            // Restored already (a retried write).
            Some(l) if l.timestamp == newest.timestamp => {}
            // A deleted key, or one to overwrite: its newest restored state, as a new version.
            Some(l) if overwrite || !l.live => {
                plans.push((key, versions, Plan::Above(above(ts, Some(l), limit)?)))
            }
            Some(_) => {
                return Err(KvError::ConditionFailed(format!(
                    "key {key:?} already holds versions: a restore writes only keys the cluster does not hold \
                     (restore with overwrite to replace them)"
                )));
            }
        }
    }
    let mut at = None;
    let mut depends = Vec::with_capacity(plans.len());
    for (key, versions, plan) in plans {
        let bucket = mvcc::bucket_of(key, total_buckets);
        match plan {
            Plan::History => {
                for v in versions {
                    add_version(batch, bucket, key, v.timestamp, v.value.as_deref());
                }
                at = at.max(Some(ts));
                depends.push(Depends::Unchanged { key: key.clone(), latest: None });
            }
            Plan::Above(key_at) => {
                let newest = versions.last().and_then(|v| v.value.as_deref());
                add_version(batch, bucket, key, key_at, newest);
                at = at.max(Some(key_at));
                depends.push(Depends::OlderThan { key: key.clone(), ts: key_at });
            }
        }
    }
    let outcome = at.map_or(Outcome::Unchanged, Outcome::Written);
    Ok(Evaluated { outcome, depends })
}

/// A reader of a base reader plus writes evaluated but not committed yet (a writer's group), so that
/// a later write in the group sees the earlier ones.
pub struct Overlay<'a, R> {
    base: &'a R,
    // Key → its newest version among the group's writes.
    written: HashMap<Vec<u8>, Latest>,
}

impl<'a, R: Reader> Overlay<'a, R> {
    /// Nothing written over `base` yet.
    pub fn new(base: &'a R) -> Overlay<'a, R> {
        Overlay { base, written: HashMap::new() }
    }

    /// Records what `write` wrote (its evaluation said `outcome`). Only non-transactional writes: they
    /// write no intents or records, so the base's stand (transactions need a replicated shard, whose
    /// leader evaluates each write on its own).
    pub fn record(&mut self, write: &Write, outcome: &Outcome) {
        let Outcome::Written(timestamp) = *outcome else { return };
        match write {
            Write::Put { key, .. } => {
                self.written.insert(key.clone(), Latest { timestamp, live: true });
            }
            Write::Delete { key } => {
                self.written.insert(key.clone(), Latest { timestamp, live: false });
            }
            Write::Batch { ops } => {
                for (key, value) in ops {
                    self.written.insert(key.clone(), Latest { timestamp, live: value.is_some() });
                }
            }
            Write::TxnPut(_)
            | Write::ResolveIntents(_)
            | Write::EndTxn(_)
            | Write::PushTxn(_)
            | Write::HeartbeatTxn(_)
            | Write::TxnGet(_)
            | Write::Refresh(_)
            | Write::CommitOnePhase(_) => {}
            // Restored keys hold their own timestamps (or, overwritten, at most the write's).
            Write::Restore { keys, .. } => {
                for k in keys {
                    if let Some(v) = k.versions.last() {
                        let at = if self.base.latest(&k.key).ok().flatten().is_some() {
                            timestamp
                        } else {
                            v.timestamp
                        };
                        self.written.insert(k.key.clone(), Latest { timestamp: at, live: v.value.is_some() });
                    }
                }
            }
        }
    }
}

impl<R: Reader> Reader for Overlay<'_, R> {
    fn latest(&self, key: &[u8]) -> Result<Option<Latest>, KvError> {
        match self.written.get(key) {
            Some(l) => Ok(Some(*l)),
            None => self.base.latest(key),
        }
    }

    fn intent(&self, key: &[u8]) -> Result<Option<Intent>, KvError> {
        self.base.intent(key)
    }

    fn txn_record(&self, anchor: &[u8], id: TxnId) -> Result<Option<TxnRecord>, KvError> {
        self.base.txn_record(anchor, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A write travels to the shard leader's node in postcard; keys and values as byte strings.
    #[test]
    fn writes_round_trip_through_postcard_with_bytes_as_byte_strings() {
        let ts = Timestamp { wall_time: 7, logical: 2 };
        let writes = [
            Write::Put { key: b"k".to_vec(), value: vec![9; 300], condition: Condition::IfTimestamp(ts) },
            Write::Put { key: b"k".to_vec(), value: Vec::new(), condition: Condition::IfAbsent },
            Write::Delete { key: b"gone".to_vec() },
            Write::Batch { ops: vec![(b"a".to_vec(), Some(vec![1; 300])), (b"b".to_vec(), None)] },
        ];
        for write in writes {
            let bytes = postcard::to_stdvec(&write).unwrap();
            assert!(bytes.len() < write.bytes() + 16, "{} bytes for {write:?}", bytes.len());
            assert_eq!(postcard::from_bytes::<Write>(&bytes).unwrap(), write);
        }
    }

    /// Keys' newest versions, as a map.
    #[derive(Default)]
    struct Map(HashMap<Vec<u8>, Latest>);

    impl Reader for Map {
        fn latest(&self, key: &[u8]) -> Result<Option<Latest>, KvError> {
            Ok(self.0.get(key).copied())
        }

        fn intent(&self, _: &[u8]) -> Result<Option<Intent>, KvError> {
            Ok(None)
        }

        fn txn_record(&self, _: &[u8], _: TxnId) -> Result<Option<TxnRecord>, KvError> {
            Ok(None)
        }
    }

    fn ts(wall: u64) -> Timestamp {
        Timestamp { wall_time: wall, logical: 0 }
    }

    const LIMIT: Timestamp = Timestamp { wall_time: 1_000, logical: u32::MAX };

    fn put(key: &str, condition: Condition) -> Write {
        Write::Put { key: key.into(), value: b"v".to_vec(), condition }
    }

    fn run(write: &Write, reader: &Map, at: Timestamp) -> (Result<Evaluated, KvError>, WriteBatch) {
        let mut batch = WriteBatch::new();
        (evaluate(write, reader, at, LIMIT, 64, &mut batch), batch)
    }

    fn with(entries: &[(&str, u64, bool)]) -> Map {
        Map(entries
            .iter()
            .map(|&(k, w, live)| (k.as_bytes().to_vec(), Latest { timestamp: ts(w), live }))
            .collect())
    }

    #[test]
    fn conditions_are_checked_against_the_newest_live_version() {
        let map = with(&[("live", 5, true), ("dead", 5, false)]);
        let cases = [
            ("absent", Condition::None, true),
            ("live", Condition::None, true),
            ("absent", Condition::IfAbsent, true),
            ("dead", Condition::IfAbsent, true),
            ("live", Condition::IfAbsent, false),
            ("live", Condition::IfTimestamp(ts(5)), true),
            ("live", Condition::IfTimestamp(ts(4)), false),
            ("dead", Condition::IfTimestamp(ts(5)), false),
            ("absent", Condition::IfTimestamp(ts(5)), false),
        ];
        for (key, condition, holds) in cases {
            let (result, batch) = run(&put(key, condition), &map, ts(10));
            match result {
                Ok(e) => {
                    assert!(holds, "{key} {condition:?} wrote");
                    assert_eq!(e.outcome, Outcome::Written(ts(10)));
                    assert_eq!(batch.len(), 2, "a version row and the latest row");
                }
                Err(KvError::ConditionFailed(_)) => {
                    assert!(!holds, "{key} {condition:?} refused");
                    assert_eq!(batch.len(), 0, "a failed condition writes nothing");
                }
                Err(e) => panic!("{key} {condition:?}: {e}"),
            }
        }
    }

    #[test]
    fn deletes_write_a_tombstone_only_over_a_live_value() {
        let map = with(&[("live", 5, true), ("dead", 5, false)]);
        for (key, writes) in [("live", true), ("dead", false), ("absent", false)] {
            let (result, batch) = run(&Write::Delete { key: key.into() }, &map, ts(10));
            let e = result.unwrap();
            let latest = map.0.get(key.as_bytes()).map(|l| l.timestamp);
            assert_eq!(e.depends, vec![Depends::Unchanged { key: key.into(), latest }]);
            if writes {
                assert_eq!(e.outcome, Outcome::Written(ts(10)));
                assert_eq!(batch.len(), 2);
            } else {
                assert_eq!(e.outcome, Outcome::Unchanged);
                assert_eq!(batch.len(), 0);
            }
        }
    }

    #[test]
    fn a_write_at_or_below_the_newest_version_lands_just_above_it() {
        let map = with(&[("k", 50, true), ("far", 2_000, true), ("j", 7, false)]);
        let (e, _) = run(&put("k", Condition::None), &map, ts(40));
        let e = e.unwrap();
        let above = Timestamp { wall_time: 50, logical: 1 };
        assert_eq!(e.outcome, Outcome::Written(above));
        assert_eq!(e.depends, vec![Depends::OlderThan { key: b"k".to_vec(), ts: above }]);
        // Equal is not older either.
        assert_eq!(run(&put("k", Condition::None), &map, ts(50)).0.unwrap().outcome, Outcome::Written(above));
        // A conditional put that holds moves up too.
        let e = run(&put("k", Condition::IfTimestamp(ts(50))), &map, ts(20)).0.unwrap();
        assert_eq!(e.outcome, Outcome::Written(above));
        // A batch lands above every key's newest version, all at one timestamp.
        let batch = Write::Batch { ops: vec![(b"j".to_vec(), None), (b"k".to_vec(), Some(b"x".to_vec()))] };
        let e = run(&batch, &map, ts(10)).0.unwrap();
        assert_eq!(e.outcome, Outcome::Written(above));
        assert_eq!(e.depends.len(), 2);
        // Beyond the clock's bound: refused, nothing written.
        let (e, rows) = run(&put("far", Condition::None), &map, ts(10));
        assert!(matches!(e, Err(KvError::TooFarAhead { latest, .. }) if latest == ts(2_000)), "{e:?}");
        assert_eq!(rows.len(), 0);
    }

    #[test]
    fn an_overlay_shows_a_groups_earlier_writes() {
        let base = with(&[("k", 5, true)]);
        let mut overlay = Overlay::new(&base);
        let mut batch = WriteBatch::new();
        let del = Write::Delete { key: b"k".to_vec() };
        let e = evaluate(&del, &overlay, ts(10), LIMIT, 64, &mut batch).unwrap();
        overlay.record(&del, &e.outcome);
        // The key is gone for the group's next writes: a second delete does nothing, IfAbsent holds.
        let e = evaluate(&del, &overlay, ts(11), LIMIT, 64, &mut batch).unwrap();
        assert_eq!(e.outcome, Outcome::Unchanged);
        let e = evaluate(&put("k", Condition::IfAbsent), &overlay, ts(12), LIMIT, 64, &mut batch).unwrap();
        overlay.record(&put("k", Condition::IfAbsent), &e.outcome);
        assert_eq!(overlay.latest(b"k").unwrap(), Some(Latest { timestamp: ts(12), live: true }));
        assert_eq!(batch.len(), 4);
    }
}
