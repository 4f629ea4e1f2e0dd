//! Evaluation of transactions' writes (part of [`evaluate`](super)): intents, their resolution, and the
//! end of a transaction at its record. The rules (`docs/plans/transactions.md` §2):
//!
//! - [`TxnGet`] reads a key as the transaction sees it ([`DbReader::read`]): its own write, else the
//!   version at its read timestamp; another transaction's intent in the way is a
//!   [`KvError::LockConflict`], a version in its uncertainty interval a [`KvError::Uncertain`]. A read
//!   that found its version is recorded in the leader's timestamp cache.
//! - [`TxnPut`] leaves a write intent: the value and the transaction's metadata in the key's intent row,
//!   at the transaction's write timestamp moved up past three things: the key's newest committed
//!   version, the highest read of the key by another transaction (the timestamp cache), and the
//!   closed timestamp (the leader's physical time less the maximum clock offset, which a read at a
//!   timestamp waits for every clock to pass: no intent lands where such a read already looked).
//!   Another transaction's intent on the key is a [`KvError::LockConflict`] (nothing written). A
//!   committed version newer than the transaction's read timestamp is a write-too-old: snapshot
//!   isolation and conditional puts must restart ([`KvError::TxnRetry`]); a serializable
//!   transaction writes above it and is told to refresh its reads before it commits. A put whose
//!   sequence number the intent already holds is a replay and writes nothing; a later one of the
//!   same epoch keeps the earlier value in the intent's history; one of a newer epoch replaces an
//!   older epoch's intent. The transaction's first put also writes its record (pending).
//! - [`EndTxn`] moves a pending record to committed (at its write timestamp, pushed or not) or to
//!   aborted, and answers a repeated end from the record as it stands. A serializable transaction
//!   commits only at the timestamp it read at: otherwise the record is left pending and the answer
//!   names the timestamp to refresh the reads to before committing again. A missing record on a
//!   commit means the transaction was aborted (records are written with the first intent).
//! - [`ResolveIntents`] turns a committed transaction's intents of its final epoch into versions at the
//!   commit timestamp and deletes the rest; for a transaction still running it moves its intents up
//!   to its pushed write timestamp. Intents of other transactions are left alone, so a resolve is
//!   idempotent. A committed transaction's coordinator has its last resolve (on the record's shard,
//!   after every other) also delete the record: no intent refers to it any more. (A pusher that saw an
//!   intent just before its resolution may write a record back, which nothing collects yet; aborted
//!   records stay, so that a write still on its way cannot start a pending record.)
//!
//! - [`Refresh`] moves a serializable transaction's reads from one timestamp to a later one: it fails
//!   ([`KvError::TxnRetry`]) if any key read has a committed version in between or another
//!   transaction's intent at or below the new timestamp; otherwise the reads are recorded at the new
//!   timestamp, as if they had been made there.
//! - [`PushTxn`] asks a transaction that holds a key to make way: to commit above a timestamp, or to
//!   abort. The pusher wins against an abandoned record (no heartbeat for [`txn::EXPIRY`]: it is
//!   aborted, whatever the push asked), with a strictly higher priority, when forced (a deadlock's
//!   victim), and with a timestamp push against snapshot isolation (which commits wherever its writes
//!   land). A final record answers as it is. A pusher that loses writes nothing and waits.
//! - [`CommitOnePhase`] commits a transaction whose writes all fall in one shard, and that wrote no
//!   intent before, in one command (1PC): versions at one commit timestamp, moved up past the same
//!   three things as an intent, with conditions checked as a [`TxnPut`]'s; no record (like a plain
//!   batch, its first write's version witnesses whether it applied). A serializable transaction
//!   whose commit timestamp moved above its read timestamp commits only if the command carries its
//!   reads (all on this shard) and none of them changed in between, as a [`Refresh`] checks;
//!   otherwise nothing is written and the answer names the timestamp to refresh the reads to before
//!   trying again.
//! - [`HeartbeatTxn`] keeps a pending record alive, and answers with it: how the coordinator learns
//!   that its transaction was pushed or aborted.
//!
//! Every command here but [`CommitOnePhase`] is idempotent, so a leader that cannot tell whether one
//! applied evaluates it again; a one-phase commit is settled, like a plain batch, by whether its first
//! write's version is there.

use super::{Condition, Evaluated, KvError, Outcome, above, check_condition};
use crate::hlc::Timestamp;
use crate::mvcc;
use crate::reader::{DbReader, Found, ReadAt, Reader};
use crate::tscache::TsCache;
use crate::txn::{self, Intent, IntentMeta, Isolation, TxnMeta, TxnRecord, TxnReply, TxnStatus};
use cairn_engine::WriteBatch;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashSet;

/// What bounds a transactional command's timestamps on a leader.
pub struct TxnBounds<'a> {
    /// The leader's clock.
    pub now: Timestamp,
    /// The clock's bound: no write lands beyond it.
    pub limit: Timestamp,
    /// No intent lands below this: the leader's physical time less the maximum clock offset.
    pub closed: Timestamp,
    /// The leader's timestamp cache of the shard.
    pub reads: &'a mut TsCache,
    /// The leader's clock, which observes every transactional read's timestamp, so that the plain
    /// writes it stamps afterwards land above those reads.
    pub clock: &'a crate::hlc::Clock,
}

/// A transaction's read of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnGet {
    /// The transaction.
    pub txn: TxnMeta,
    /// Its read timestamp.
    pub read_ts: Timestamp,
    /// Its uncertainty limit (at least `read_ts`).
    pub limit: Timestamp,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// A transaction's write of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPut {
    /// The transaction, with the write timestamp it is at.
    pub txn: TxnMeta,
    /// The timestamp its reads are at (at most `txn.write_ts`).
    pub read_ts: Timestamp,
    /// The write's sequence number within the transaction (higher is later).
    pub seq: u32,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` deletes the key.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Checked against what the transaction sees: its own write of the key, else the newest committed
    /// version (which must not be newer than its read timestamp).
    pub condition: Condition,
    /// Also write the transaction's record (pending) if there is none: its first write, whose key is
    /// its anchor.
    pub create_record: bool,
}

/// Resolves a transaction's intents on keys of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveIntents {
    /// The transaction as its record says: epoch and (commit or pushed) write timestamp.
    pub txn: TxnMeta,
    /// Committed, aborted, or still running (pending or staging: move the intents up to
    /// `txn.write_ts`).
    pub status: TxnStatus,
    /// The keys.
    pub keys: Vec<ByteBuf>,
    /// Also delete the transaction's record (on this shard), if it is committed or aborted: every
    /// intent it lists is resolved, here or before.
    pub forget: bool,
}

/// Commits or aborts a transaction at its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndTxn {
    /// The transaction: its epoch and the write timestamp to commit at.
    pub txn: TxnMeta,
    /// The timestamp its reads are at (a serializable commit needs it equal to the commit timestamp).
    pub read_ts: Timestamp,
    /// Commit (`true`) or abort.
    pub commit: bool,
    /// The keys it holds intents on, kept in the record until they are resolved.
    pub lock_keys: Vec<ByteBuf>,
}

/// Moves a transaction's reads of keys of one shard from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    /// The transaction.
    pub txn: TxnMeta,
    /// The keys it read.
    pub keys: Vec<ByteBuf>,
    /// Its read timestamp so far.
    pub from: Timestamp,
    /// The timestamp to read at instead.
    pub to: Timestamp,
}

/// What a push asks of the transaction pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushKind {
    /// Commit, if at all, at or above this timestamp (a reader's, so that its read stays valid).
    Timestamp(Timestamp),
    /// Abort (a writer that needs the key).
    Abort,
}

/// Pushes a transaction at its record (see the module's description).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTxn {
    /// The transaction pushed, as its intent names it.
    pub pushee: TxnMeta,
    /// The pusher's priority.
    pub priority: u32,
    /// What the pusher asks.
    pub kind: PushKind,
    /// Win whatever the priorities (the victim chosen to break a deadlock).
    pub force: bool,
}

/// Commits a transaction whose writes all fall in one shard in one command (see the module's
/// description).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOnePhase {
    /// The transaction (its anchor, the first write's key, routes the command), with the write
    /// timestamp it is at.
    pub txn: TxnMeta,
    /// The timestamp its reads are at (at most `txn.write_ts`).
    pub read_ts: Timestamp,
    /// The writes, each key once.
    pub writes: Vec<CommitWrite>,
    /// The keys a serializable transaction read, when all are on this shard: the commit may then move
    /// above `read_ts` if none of them changed in between. `None`: it commits at `read_ts` or not now.
    pub reads: Option<Vec<ByteBuf>>,
}

/// One write of a [`CommitOnePhase`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitWrite {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` deletes the key.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Checked against the key's newest committed version, as a [`TxnPut`]'s is.
    pub condition: Condition,
}

/// Records that a transaction's coordinator is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatTxn {
    /// The transaction.
    pub txn: TxnMeta,
}

/// Refuses a timestamp a request carries beyond the leader's clock bound `limit`.
fn within(ts: Timestamp, limit: Timestamp) -> Result<(), KvError> {
    if ts > limit {
        return Err(KvError::TooFarAhead { latest: ts, limit });
    }
    Ok(())
}

fn reply(reply: TxnReply) -> Evaluated {
    Evaluated { outcome: Outcome::Txn(Box::new(reply)), depends: Vec::new() }
}

fn invalid(why: String) -> KvError {
    KvError::Invalid(why)
}

fn encoded(bytes: Result<Vec<u8>, txn::BadRow>) -> Result<Vec<u8>, KvError> {
    bytes.map_err(|e| invalid(e.to_string()))
}

/// Evaluates a [`TxnGet`] (see the module's description).
pub(super) fn get(
    g: &TxnGet,
    reader: &DbReader<'_>,
    bounds: &mut TxnBounds<'_>,
) -> Result<Evaluated, KvError> {
    within(g.read_ts, bounds.limit)?;
    // Plain writes this leader stamps from now on land above the read (within the bound just checked).
    let _ = bounds.clock.observe(g.read_ts);
    let read = ReadAt { ts: g.read_ts, limit: g.limit.max(g.read_ts), txn: Some((g.txn.id, g.txn.epoch)) };
    match reader.read(&g.key, &read)? {
        Found::Locked(intent) => {
            Err(KvError::LockConflict { key: g.key.clone(), holder: Box::new(intent.meta.txn) })
        }
        Found::Uncertain(ts) => Err(KvError::Uncertain { key: g.key.clone(), ts }),
        Found::Version(version) => {
            bounds.reads.add(&g.key, g.read_ts, Some(g.txn.id));
            let value = version.map(|v| (ByteBuf::from(v.value), v.timestamp));
            Ok(reply(TxnReply { value, ..TxnReply::default() }))
        }
    }
}

/// Evaluates a [`TxnPut`] (see the module's description).
pub(super) fn put(
    p: &TxnPut,
    reader: &impl Reader,
    bounds: &TxnBounds<'_>,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let TxnPut { txn, read_ts, seq, key, value, condition, create_record } = p;
    check_write_ts(txn, *read_ts, bounds.limit)?;
    if *create_record && *key != txn.anchor {
        return Err(invalid(format!("transaction {}: its record is anchored at its first key", txn.id)));
    }
    let own = match reader.intent(key)? {
        Some(i) if i.meta.txn.id != txn.id => {
            return Err(KvError::LockConflict { key: key.clone(), holder: Box::new(i.meta.txn) });
        }
        Some(i) if i.meta.txn.epoch > txn.epoch => {
            return Err(KvError::TxnRetry(format!(
                "key {key:?} holds this transaction's write of a later attempt (epoch {} > {})",
                i.meta.txn.epoch, txn.epoch
            )));
        }
        Some(i) if i.meta.txn.epoch == txn.epoch && i.meta.seq >= *seq => return replay(&i, p),
        other => other,
    };
    // This attempt's earlier write of the key, which its conditions see.
    let earlier = own.as_ref().filter(|i| i.meta.txn.epoch == txn.epoch);
    let latest = reader.latest(key)?;
    let newer = latest.filter(|l| l.timestamp > *read_ts);
    match earlier {
        Some(i) => check_own(*condition, i)?,
        None => check_committed(key, (txn, *read_ts), *condition, latest)?,
    }
    let mut at = land(key, txn.write_ts.max(bounds.closed), latest, txn.id, bounds)?;
    if let Some(i) = &own {
        // An intent only moves up.
        at = at.max(i.meta.txn.write_ts);
    }
    let mut history = Vec::new();
    if let Some(i) = earlier {
        history.clone_from(&i.meta.history);
        history.push((i.meta.seq, i.value.clone().map(ByteBuf::from)));
    }
    let meta = IntentMeta { txn: TxnMeta { write_ts: at, ..txn.clone() }, seq: *seq, history };
    let bucket = mvcc::bucket_of(key, total_buckets);
    let meta = encoded(meta.encode())?;
    let column = mvcc::encode_value(value.as_deref());
    if *create_record {
        begin_record(txn, *read_ts, bounds.now, reader, total_buckets, batch)?;
    }
    batch.put_row(bucket, &txn::intent_key(key), &[(0, &column), (1, &meta)]);
    Ok(reply(TxnReply { ts: Some(at), write_too_old: newer.is_some(), ..TxnReply::default() }))
}

/// Refuses a transaction's write timestamp below its read timestamp or its start, or beyond the
/// leader's clock bound `limit`.
fn check_write_ts(txn: &TxnMeta, read_ts: Timestamp, limit: Timestamp) -> Result<(), KvError> {
    if txn.write_ts < read_ts || txn.write_ts < txn.min_ts {
        return Err(invalid(format!(
            "transaction {}: write timestamp {} below its read timestamp {read_ts} or its start {}",
            txn.id, txn.write_ts, txn.min_ts
        )));
    }
    within(txn.write_ts, limit)
}

/// Checks a transaction's write of `key` (not over its own earlier write) against the key's newest
/// committed version `latest`: one newer than the read timestamp is a write-too-old that snapshot
/// isolation and a conditional write must restart for; then the condition.
fn check_committed(
    key: &[u8],
    (txn, read_ts): (&TxnMeta, Timestamp),
    condition: Condition,
    latest: Option<crate::reader::Latest>,
) -> Result<(), KvError> {
    if let Some(l) = latest.filter(|l| l.timestamp > read_ts)
        && (txn.isolation == Isolation::Snapshot || condition != Condition::None)
    {
        return Err(KvError::TxnRetry(format!(
            "key {key:?} has a version at {} after the transaction's read timestamp {read_ts} \
             (write-too-old)",
            l.timestamp
        )));
    }
    check_condition(condition, latest.filter(|l| l.live).map(|l| l.timestamp))
}

/// Where a transaction's write of `key` lands, from `at` (at least the closed timestamp): above
/// another transaction's read of the key, and above its newest committed version `latest`.
fn land(
    key: &[u8],
    mut at: Timestamp,
    latest: Option<crate::reader::Latest>,
    id: txn::TxnId,
    bounds: &TxnBounds<'_>,
) -> Result<Timestamp, KvError> {
    let read = bounds.reads.lookup(key);
    if read.ts >= at && read.txn != Some(id) {
        at = read.ts.next();
    }
    // Read (or closed) that far ahead only by a leader's first evaluations: the clock catches up.
    within(at, bounds.limit)?;
    above(at, latest, bounds.limit)
}

/// A put the intent already holds (its sequence number or a later one): nothing to write, if it wrote
/// the same value.
fn replay(intent: &Intent, p: &TxnPut) -> Result<Evaluated, KvError> {
    let written = if intent.meta.seq == p.seq {
        Some(intent.value.as_deref())
    } else {
        intent.meta.history.iter().find(|(s, _)| *s == p.seq).map(|(_, v)| v.as_deref().map(|v| &v[..]))
    };
    if written != Some(p.value.as_deref()) {
        return Err(invalid(format!(
            "write {} of transaction {} to key {:?} was sent again with another value",
            p.seq, p.txn.id, p.key
        )));
    }
    Ok(reply(TxnReply { ts: Some(intent.meta.txn.write_ts), ..TxnReply::default() }))
}

/// A condition over the transaction's own earlier write of the key (uncommitted, so it has no version
/// timestamp to match).
fn check_own(condition: Condition, own: &Intent) -> Result<(), KvError> {
    match (condition, &own.value) {
        (Condition::None, _) | (Condition::IfAbsent, None) => Ok(()),
        (Condition::IfAbsent, Some(_)) => {
            Err(KvError::ConditionFailed("key exists (written by this transaction)".into()))
        }
        (Condition::IfTimestamp(want), _) => Err(KvError::ConditionFailed(format!(
            "key holds this transaction's own write, not the version at {want}"
        ))),
    }
}

/// Writes the transaction's record, pending, unless it has one already.
fn begin_record(
    txn: &TxnMeta,
    read_ts: Timestamp,
    now: Timestamp,
    reader: &impl Reader,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<(), KvError> {
    match reader.txn_record(&txn.anchor, txn.id)? {
        Some(r) if r.status == TxnStatus::Aborted => {
            Err(KvError::TxnAborted(format!("transaction {} was aborted", txn.id)))
        }
        Some(r) if r.status.is_final() => {
            Err(invalid(format!("transaction {} is committed: it cannot write", txn.id)))
        }
        Some(_) => Ok(()),
        None => {
            let record = TxnRecord {
                meta: txn.clone(),
                status: TxnStatus::Pending,
                read_ts,
                last_heartbeat: now,
                lock_keys: Vec::new(),
                in_flight: Vec::new(),
            };
            put_record(&record, total_buckets, batch)
        }
    }
}

fn put_record(record: &TxnRecord, total_buckets: u32, batch: &mut WriteBatch) -> Result<(), KvError> {
    let bucket = mvcc::bucket_of(&record.meta.anchor, total_buckets);
    batch.put_row(bucket, &record.key(), &[(0, &encoded(record.encode())?)]);
    Ok(())
}

/// Evaluates a [`ResolveIntents`] (see the module's description).
pub(super) fn resolve(
    r: &ResolveIntents,
    reader: &impl Reader,
    limit: Timestamp,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let ResolveIntents { txn, status, keys, forget } = r;
    within(txn.write_ts, limit)?;
    let mut resolved = 0u32;
    let mut seen = HashSet::new();
    for key in keys.iter().filter(|k| seen.insert(&k[..])) {
        let Some(intent) = reader.intent(key)? else { continue };
        if intent.meta.txn.id != txn.id {
            continue;
        }
        let bucket = mvcc::bucket_of(key, total_buckets);
        match status {
            TxnStatus::Committed if intent.meta.txn.epoch == txn.epoch => {
                let commit = txn.write_ts;
                if let Some(l) = reader.latest(key)?
                    && l.timestamp >= commit
                {
                    return Err(KvError::Malformed(format!(
                        "key {key:?} has a committed version at {} while transaction {} holds its intent, \
                         to commit at {commit}",
                        l.timestamp, txn.id
                    )));
                }
                mvcc::add_version(batch, bucket, key, commit, intent.value.as_deref());
                batch.delete(bucket, &txn::intent_key(key));
            }
            // An earlier attempt's write that the committed one did not repeat, or an aborted one.
            TxnStatus::Committed | TxnStatus::Aborted => batch.delete(bucket, &txn::intent_key(key)),
            TxnStatus::Pending | TxnStatus::Staging => {
                if intent.meta.txn.write_ts >= txn.write_ts {
                    continue;
                }
                let mut meta = intent.meta;
                meta.txn.write_ts = txn.write_ts;
                let column = mvcc::encode_value(intent.value.as_deref());
                batch.put_row(bucket, &txn::intent_key(key), &[(0, &column), (1, &encoded(meta.encode())?)]);
            }
        }
        resolved += 1;
    }
    if *forget
        && let Some(record) = reader.txn_record(&txn.anchor, txn.id)?
        && record.status.is_final()
    {
        batch.delete(mvcc::bucket_of(&txn.anchor, total_buckets), &record.key());
    }
    Ok(reply(TxnReply { resolved, ..TxnReply::default() }))
}

/// Evaluates an [`EndTxn`] (see the module's description).
pub(super) fn end(
    e: &EndTxn,
    reader: &impl Reader,
    limit: Timestamp,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let EndTxn { txn, read_ts, commit, lock_keys } = e;
    let id = txn.id;
    within(txn.write_ts.max(*read_ts), limit)?;
    let Some(record) = reader.txn_record(&txn.anchor, id)? else {
        if *commit {
            return Err(KvError::TxnAborted(format!(
                "transaction {id} has no record: it was aborted (and its record removed), or never wrote"
            )));
        }
        // Aborted before its first write applied: an aborted record keeps that write from creating a
        // pending one later.
        let record = TxnRecord {
            meta: txn.clone(),
            status: TxnStatus::Aborted,
            read_ts: *read_ts,
            last_heartbeat: txn.min_ts,
            lock_keys: lock_keys.clone(),
            in_flight: Vec::new(),
        };
        put_record(&record, total_buckets, batch)?;
        return Ok(reply(TxnReply { record: Some(record), ..TxnReply::default() }));
    };
    let answer = |record: TxnRecord| {
        let ts = (record.status == TxnStatus::Committed).then_some(record.meta.write_ts);
        Ok(reply(TxnReply { ts, record: Some(record), ..TxnReply::default() }))
    };
    match (record.status, *commit) {
        // A repeated end.
        (TxnStatus::Committed, true) | (TxnStatus::Aborted, false) => return answer(record),
        (TxnStatus::Aborted, true) => {
            return Err(KvError::TxnAborted(format!("transaction {id} was aborted by a conflicting one")));
        }
        (TxnStatus::Committed, false) => {
            return Err(invalid(format!("transaction {id} is committed: it cannot be rolled back")));
        }
        (TxnStatus::Staging, _) => {
            return Err(invalid(format!("transaction {id} is staging: parallel commits are not built yet")));
        }
        (TxnStatus::Pending, _) => {}
    }
    if txn.epoch < record.meta.epoch {
        return Err(invalid(format!(
            "transaction {id}: an end of attempt {} after attempt {} began",
            txn.epoch, record.meta.epoch
        )));
    }
    let write_ts = txn.write_ts.max(record.meta.write_ts);
    if *commit && txn.isolation == Isolation::Serializable && write_ts != *read_ts {
        // Its reads must move to the commit timestamp first: the record, pending, says where.
        let ts = Some(write_ts);
        return Ok(reply(TxnReply { ts, record: Some(record), ..TxnReply::default() }));
    }
    let ended = TxnRecord {
        meta: TxnMeta { write_ts, ..txn.clone() },
        status: if *commit { TxnStatus::Committed } else { TxnStatus::Aborted },
        read_ts: *read_ts,
        last_heartbeat: record.last_heartbeat,
        lock_keys: lock_keys.clone(),
        in_flight: Vec::new(),
    };
    put_record(&ended, total_buckets, batch)?;
    answer(ended)
}

/// Evaluates a [`PushTxn`] at the leader's clock `now` (see the module's description).
pub(super) fn push(
    p: &PushTxn,
    reader: &impl Reader,
    (now, limit): (Timestamp, Timestamp),
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let PushTxn { pushee, priority, kind, force } = p;
    if let PushKind::Timestamp(to) = kind {
        within(*to, limit)?;
    }
    let answer = |record: TxnRecord, pushed| {
        Ok(reply(TxnReply { record: Some(record), pushed, ..TxnReply::default() }))
    };
    // No record: the pushee's first write has not applied, or it finished and its record was deleted
    // (then this intent is resolved already, and the record written back is only garbage). One as of
    // its start.
    let record = reader.txn_record(&pushee.anchor, pushee.id)?.unwrap_or_else(|| TxnRecord {
        meta: pushee.clone(),
        status: TxnStatus::Pending,
        read_ts: pushee.min_ts,
        last_heartbeat: pushee.min_ts,
        lock_keys: Vec::new(),
        in_flight: Vec::new(),
    });
    match (record.status, kind) {
        (status, _) if status.is_final() => return answer(record, true),
        (TxnStatus::Staging, _) => {
            return Err(invalid(format!(
                "transaction {} is staging: parallel commits are not built yet",
                pushee.id
            )));
        }
        (_, PushKind::Timestamp(to)) if record.meta.write_ts >= *to => return answer(record, true),
        _ => {}
    }
    let expired = record.expired(now);
    let tolerates = matches!(kind, PushKind::Timestamp(_)) && record.meta.isolation == Isolation::Snapshot;
    if !(expired || *force || tolerates || *priority > record.meta.priority) {
        return answer(record, false);
    }
    let mut pushed = record;
    match kind {
        PushKind::Timestamp(to) if !expired => pushed.meta.write_ts = pushed.meta.write_ts.max(*to),
        // Abandoned: aborted whatever the push asked, so that its intents can be cleaned up.
        _ => pushed.status = TxnStatus::Aborted,
    }
    put_record(&pushed, total_buckets, batch)?;
    answer(pushed, true)
}

/// Evaluates a [`HeartbeatTxn`] at the leader's clock `now`: the record, its heartbeat moved up to
/// `now` if it is pending; no record (it finished, and its record was deleted) answers `None`.
pub(super) fn heartbeat(
    h: &HeartbeatTxn,
    reader: &impl Reader,
    now: Timestamp,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let mut record = reader.txn_record(&h.txn.anchor, h.txn.id)?;
    if let Some(r) = record.as_mut().filter(|r| !r.status.is_final() && r.last_heartbeat < now) {
        r.last_heartbeat = now;
        put_record(r, total_buckets, batch)?;
    }
    Ok(reply(TxnReply { record, ..TxnReply::default() }))
}

/// Evaluates a [`Refresh`] (see the module's description).
pub(super) fn refresh(
    r: &Refresh,
    reader: &DbReader<'_>,
    bounds: &mut TxnBounds<'_>,
) -> Result<Evaluated, KvError> {
    within(r.to, bounds.limit)?;
    unchanged(reader, r.txn.id, &r.keys, r.from, r.to)?;
    for key in &r.keys {
        bounds.reads.add(key, r.to, Some(r.txn.id));
    }
    let _ = bounds.clock.observe(r.to);
    Ok(reply(TxnReply { ts: Some(r.to), ..TxnReply::default() }))
}

/// Checks that transaction `id`'s reads of `keys` at `from` hold at `to` too: no committed version in
/// between, and no other transaction's intent at or below `to` (a retryable error otherwise).
fn unchanged(
    reader: &DbReader<'_>,
    id: txn::TxnId,
    keys: &[ByteBuf],
    from: Timestamp,
    to: Timestamp,
) -> Result<(), KvError> {
    for key in keys {
        if let Some(intent) = reader.intent(key)?
            && intent.meta.txn.id != id
            && intent.meta.txn.write_ts <= to
        {
            return Err(KvError::TxnRetry(format!(
                "key {:?}, read at {from}, holds transaction {}'s intent at or below {to}",
                &key[..],
                intent.meta.txn.id,
            )));
        }
        if let Some(ts) = reader.version_ts_at(key, to)?
            && ts > from
        {
            return Err(KvError::TxnRetry(format!(
                "key {:?}, read at {from}, was written at {ts}: the reads cannot move to {to}",
                &key[..],
            )));
        }
    }
    Ok(())
}

/// Evaluates a [`CommitOnePhase`] (see the module's description).
pub(super) fn commit_one_phase(
    c: &CommitOnePhase,
    reader: &DbReader<'_>,
    bounds: &mut TxnBounds<'_>,
    total_buckets: u32,
    batch: &mut WriteBatch,
) -> Result<Evaluated, KvError> {
    let CommitOnePhase { txn, read_ts, writes, reads } = c;
    if writes.first().is_none_or(|w| w.key != txn.anchor) {
        return Err(invalid(format!("transaction {}: its record is anchored at its first write", txn.id)));
    }
    check_write_ts(txn, *read_ts, bounds.limit)?;
    let mut seen = HashSet::new();
    let mut at = txn.write_ts.max(bounds.closed);
    let mut too_old = false;
    for CommitWrite { key, condition, .. } in writes {
        if !seen.insert(&key[..]) {
            return Err(invalid(format!("transaction {}: key {key:?} written twice in one commit", txn.id)));
        }
        if let Some(i) = reader.intent(key)? {
            if i.meta.txn.id == txn.id {
                return Err(invalid(format!(
                    "transaction {} wrote intents: it commits at its record",
                    txn.id
                )));
            }
            return Err(KvError::LockConflict { key: key.clone(), holder: Box::new(i.meta.txn) });
        }
        let latest = reader.latest(key)?;
        check_committed(key, (txn, *read_ts), *condition, latest)?;
        too_old |= latest.is_some_and(|l| l.timestamp > *read_ts);
        at = land(key, at, latest, txn.id, bounds)?;
    }
    if txn.isolation == Isolation::Serializable && at != *read_ts {
        let Some(reads) = reads else {
            // The reads move first, at the coordinator: nothing written.
            return Ok(reply(TxnReply { ts: Some(at), write_too_old: too_old, ..TxnReply::default() }));
        };
        unchanged(reader, txn.id, reads, *read_ts, at)?;
        for key in reads {
            bounds.reads.add(key, at, Some(txn.id));
        }
    }
    let _ = bounds.clock.observe(at);
    for CommitWrite { key, value, .. } in writes {
        mvcc::add_version(batch, mvcc::bucket_of(key, total_buckets), key, at, value.as_deref());
    }
    Ok(reply(TxnReply { ts: Some(at), write_too_old: too_old, committed: true, ..TxnReply::default() }))
}
