//! Transactions' rows (issue 27; the plan is `docs/plans/transactions.md`): what a write intent and a
//! transaction record hold, and how they are stored. Evaluation (`evaluate_txn.rs`) writes them
//! (`Write::TxnPut`, `Write::ResolveIntents`, `Write::EndTxn`, `Write::CommitOnePhase`); the
//! coordinator (`cairn-server`'s `txn_coord.rs`) sends them.
//!
//! ```text
//! intent row  = 00 03 ++ escape(key) ++ 00 00                    (in the key's bucket)
//!   column 0  = the value as a version holds it (0x00 ++ value, or 0x01: a delete)
//!   column 1  = IntentMeta (postcard)
//! record row  = 00 04 ++ escape(anchor) ++ 00 01 ++ id (20 B)    (in the anchor key's bucket)
//!   column 0  = TxnRecord (postcard)
//! ```
//!
//! An intent is a row of its own, not a provisional version among the key's versions: every reader that
//! skips reserved rows ([`mvcc::is_reserved`]) cannot show uncommitted data, and a key's latest row keeps
//! meaning its newest *committed* version. Both rows live in their key's bucket, so splits, merges,
//! rescales and restores move them with the key. The record's anchor is the transaction's first written
//! key, so the record is on that key's shard.

use crate::hlc::Timestamp;
use crate::mvcc;
use serde::{Deserialize, Serialize};

/// The largest intent or record row a decoder accepts, in bytes (a value plus its metadata, or a
/// record with its lock keys): anything larger is corrupt.
pub const MAX_META_BYTES: usize = 16 << 20;

/// The engine key of `key`'s write intent: the intent prefix, then the key's latest-row key, so that
/// within a bucket intents sort in key order.
pub fn intent_key(key: &[u8]) -> Vec<u8> {
    let mut out = mvcc::INTENT_PREFIX.to_vec();
    out.extend_from_slice(&mvcc::latest_key(key));
    out
}

/// The user key of an intent row's engine key; `None` if it is not one.
pub fn parse_intent_key(engine_key: &[u8]) -> Option<Vec<u8>> {
    match mvcc::split_escaped(engine_key.strip_prefix(mvcc::INTENT_PREFIX)?)? {
        (key, 0x00, []) => Some(key),
        _ => None,
    }
}

/// The engine key of transaction `id`'s record, anchored at `anchor` (stored in its bucket).
pub fn record_key(anchor: &[u8], id: TxnId) -> Vec<u8> {
    let mut out = mvcc::TXN_RECORD_PREFIX.to_vec();
    out.extend_from_slice(&mvcc::key_prefix(anchor));
    out.extend_from_slice(&id.0);
    out
}

/// The anchor and transaction of a record row's engine key; `None` if it is not one.
pub fn parse_record_key(engine_key: &[u8]) -> Option<(Vec<u8>, TxnId)> {
    match mvcc::split_escaped(engine_key.strip_prefix(mvcc::TXN_RECORD_PREFIX)?)? {
        (anchor, 0x01, id) => Some((anchor, TxnId(id.try_into().ok()?))),
        _ => None,
    }
}

/// A transaction's id: the coordinating node's id, then the HLC timestamp it took as the transaction
/// began (unique per node: its clock never repeats a timestamp).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId(pub [u8; TXN_ID_BYTES]);

/// The bytes of a [`TxnId`]: node id (8), wall time (8), logical (4), all big-endian.
pub const TXN_ID_BYTES: usize = 20;

impl TxnId {
    /// The id of a transaction node `node` began at `ts`.
    pub fn new(node: u64, ts: Timestamp) -> TxnId {
        let mut id = [0u8; TXN_ID_BYTES];
        id[..8].copy_from_slice(&node.to_be_bytes());
        id[8..16].copy_from_slice(&ts.wall_time.to_be_bytes());
        id[16..].copy_from_slice(&ts.logical.to_be_bytes());
        TxnId(id)
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxnId({self})")
    }
}

/// What a transaction promises its reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// Serializable snapshot isolation (the default): a transaction whose timestamp moved refreshes its
    /// reads, and restarts if they changed.
    #[default]
    Serializable,
    /// Snapshot isolation: only write-write conflicts abort (write skew is allowed).
    Snapshot,
}

/// What every intent and record of a transaction says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    /// The transaction.
    pub id: TxnId,
    /// The key its record is stored under (its first written key).
    #[serde(with = "serde_bytes")]
    pub anchor: Vec<u8>,
    /// Incremented at each restart: intents of an older epoch are the restarted attempt's leftovers.
    pub epoch: u32,
    /// Where its writes land (at or above its read timestamp; pushes move it up).
    pub write_ts: Timestamp,
    /// Its first timestamp: no intent of it is below this, and its uncertainty interval starts here.
    pub min_ts: Timestamp,
    /// Decides pushes between transactions (higher wins).
    pub priority: u32,
    /// Its isolation level.
    pub isolation: Isolation,
}

/// Column 1 of an intent row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentMeta {
    /// The transaction holding the key; its `write_ts` is where this intent would commit.
    pub txn: TxnMeta,
    /// The transaction's sequence number of the write that left this value.
    pub seq: u32,
    /// Values the transaction wrote here earlier in the same epoch (sequence number, value; `None`: a
    /// delete), oldest first, for a replay or a rollback to a savepoint.
    pub history: Vec<(u32, Option<serde_bytes::ByteBuf>)>,
}

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// Running: its intents may still commit or abort.
    Pending,
    /// Its commit was asked for with writes in flight (parallel commits): committed once all of them
    /// are durable.
    Staging,
    /// Committed at its record's `write_ts`.
    Committed,
    /// Aborted: its intents are to be removed.
    Aborted,
}

impl TxnStatus {
    /// Whether the transaction's outcome is decided.
    pub fn is_final(self) -> bool {
        matches!(self, TxnStatus::Committed | TxnStatus::Aborted)
    }
}

/// Column 0 of a transaction record row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// The transaction (its `write_ts` as pushes left it).
    pub meta: TxnMeta,
    /// Where it stands.
    pub status: TxnStatus,
    /// The timestamp its reads were taken at.
    pub read_ts: Timestamp,
    /// The last heartbeat from its coordinator: a pending record not heard from for long enough is
    /// abandoned, and may be aborted by anyone.
    pub last_heartbeat: Timestamp,
    /// Keys it holds intents on, for resolving them once it is final.
    pub lock_keys: Vec<serde_bytes::ByteBuf>,
    /// While staging: the writes (key, sequence number) whose being durable commits it.
    pub in_flight: Vec<(serde_bytes::ByteBuf, u32)>,
}

/// How often a transaction's coordinator heartbeats its record.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a pending record may go without a heartbeat before it counts as abandoned: any push then
/// aborts it (five missed heartbeats).
pub const EXPIRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The priority of an ordinary transaction; a push by priority wins only against a strictly lower one,
/// so two ordinary transactions wait for each other rather than abort each other.
pub const NORMAL_PRIORITY: u32 = 1 << 16;

/// A write intent as a reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Its metadata (column 1).
    pub meta: IntentMeta,
    /// Its value (`None`: a delete).
    pub value: Option<Vec<u8>>,
}

/// What a transactional write did, beyond its rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReply {
    /// A put: the timestamp its intent is at (above the transaction's write timestamp if it was pushed);
    /// an end or a one-phase commit: the commit timestamp, when it committed.
    pub ts: Option<Timestamp>,
    /// A put found a committed version newer than the transaction's read timestamp and wrote above it: a
    /// serializable transaction must refresh its reads before it commits.
    pub write_too_old: bool,
    /// An end: the transaction's record as it now stands.
    pub record: Option<TxnRecord>,
    /// A resolve: how many of the transaction's intents it resolved.
    pub resolved: u32,
    /// A push: whether it won (the record is then aborted, or at or above the pushed timestamp, or
    /// was final already).
    pub pushed: bool,
    /// A get: the value it read and the timestamp it was written at (`None`: absent or deleted).
    pub value: Option<(serde_bytes::ByteBuf, Timestamp)>,
    /// A one-phase commit: whether it committed (at `ts`; otherwise `ts` is where the reads must move
    /// before it is tried again).
    pub committed: bool,
}

/// An intent or record that does not encode or decode (the caller names the key it was read from).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad {what}: {why}")]
pub struct BadRow {
    /// Which kind of row.
    pub what: &'static str,
    /// Why.
    pub why: String,
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, BadRow> {
    let bytes = postcard::to_stdvec(value).map_err(|e| BadRow { what, why: e.to_string() })?;
    if bytes.len() > MAX_META_BYTES {
        return Err(BadRow { what, why: format!("{} bytes, more than {MAX_META_BYTES}", bytes.len()) });
    }
    Ok(bytes)
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, BadRow> {
    if bytes.len() > MAX_META_BYTES {
        return Err(BadRow { what, why: format!("{} bytes, more than {MAX_META_BYTES}", bytes.len()) });
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(BadRow { what, why: format!("{} bytes left over", rest.len()) }),
        Err(e) => Err(BadRow { what, why: e.to_string() }),
    }
}

impl IntentMeta {
    /// Column 1's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BadRow> {
        encode("intent", self)
    }

    /// Decodes column 1 of an intent row.
    pub fn decode(bytes: &[u8]) -> Result<IntentMeta, BadRow> {
        decode("intent", bytes)
    }
}

impl TxnRecord {
    /// Whether a pending record has gone without a heartbeat for longer than [`EXPIRY`] at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        let heard = self.last_heartbeat.wall_time.max(self.meta.min_ts.wall_time);
        let expiry = u64::try_from(EXPIRY.as_nanos()).unwrap_or(u64::MAX);
        heard.saturating_add(expiry) < now.wall_time
    }

    /// Column 0's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BadRow> {
        encode("transaction record", self)
    }

    /// Decodes column 0 of a record row.
    pub fn decode(bytes: &[u8]) -> Result<TxnRecord, BadRow> {
        decode("transaction record", bytes)
    }

    /// The engine key of this record's row.
    pub fn key(&self) -> Vec<u8> {
        record_key(&self.meta.anchor, self.meta.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(anchor: &[u8]) -> TxnMeta {
        let ts = Timestamp { wall_time: 1_700_000_000_000_000_000, logical: 3 };
        TxnMeta {
            id: TxnId::new(7, ts),
            anchor: anchor.to_vec(),
            epoch: 2,
            write_ts: Timestamp { wall_time: ts.wall_time + 5, logical: 0 },
            min_ts: ts,
            priority: 12345,
            isolation: Isolation::Snapshot,
        }
    }

    #[test]
    fn intents_and_records_are_reserved_rows_in_key_order_that_parse_back() {
        let keys: Vec<&[u8]> =
            vec![b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\x00b", b"ab", b"\xff"];
        let id = TxnId::new(3, Timestamp { wall_time: 42, logical: 1 });
        let mut intents = Vec::new();
        for k in &keys {
            let intent = intent_key(k);
            let record = record_key(k, id);
            assert!(mvcc::is_reserved(&intent) && mvcc::is_reserved(&record), "{k:?}");
            assert_eq!(mvcc::parse_engine_key(&intent), None);
            assert_eq!(mvcc::parse_engine_key(&record), None);
            assert_eq!(parse_intent_key(&intent), Some(k.to_vec()));
            assert_eq!(parse_record_key(&record), Some((k.to_vec(), id)));
            assert_eq!(parse_intent_key(&record), None);
            assert_eq!(parse_record_key(&intent), None);
            assert_eq!(parse_intent_key(&mvcc::latest_key(k)), None);
            // Nothing a key's own rows are, and nothing the GC filter drops.
            let row = cairn_engine::Row::from_columns([(0, vec![1])]);
            let mut gc = mvcc::GcFilter { horizon: u64::MAX, current: None, kept_below: true };
            assert_eq!(
                cairn_engine::CompactionFilter::filter(&mut gc, 0, &intent, &row),
                cairn_engine::FilterDecision::Keep
            );
            assert_eq!(
                cairn_engine::CompactionFilter::filter(&mut gc, 0, &record, &row),
                cairn_engine::FilterDecision::Keep
            );
            intents.push(intent);
        }
        let mut sorted = intents.clone();
        sorted.sort();
        assert_eq!(sorted, intents, "intents sort in key order");
        let short = &record_key(b"k", id)[..10];
        assert_eq!(parse_record_key(short), None, "a record key with a cut id");
    }

    #[test]
    fn ids_are_the_node_then_its_timestamp_in_order_and_print_as_hex() {
        let early = TxnId::new(1, Timestamp { wall_time: 10, logical: 9 });
        let later = TxnId::new(1, Timestamp { wall_time: 11, logical: 0 });
        assert!(early < later);
        assert_ne!(early, TxnId::new(2, Timestamp { wall_time: 10, logical: 9 }));
        assert_eq!(early.to_string(), "0000000000000001000000000000000a00000009");
    }

    #[test]
    fn intents_and_records_round_trip_and_refuse_anything_else() {
        let intent = IntentMeta {
            txn: meta(b"a\x00b"),
            seq: 4,
            history: vec![(1, Some(serde_bytes::ByteBuf::from(b"v1".to_vec()))), (2, None)],
        };
        let bytes = intent.encode().unwrap();
        assert_eq!(IntentMeta::decode(&bytes).unwrap(), intent);
        let record = TxnRecord {
            meta: meta(b"anchor"),
            status: TxnStatus::Staging,
            read_ts: Timestamp { wall_time: 9, logical: 1 },
            last_heartbeat: Timestamp { wall_time: 10, logical: 0 },
            lock_keys: vec![serde_bytes::ByteBuf::from(b"k".to_vec())],
            in_flight: vec![(serde_bytes::ByteBuf::from(b"k".to_vec()), 4)],
        };
        let bytes = record.encode().unwrap();
        assert_eq!(TxnRecord::decode(&bytes).unwrap(), record);
        assert_eq!(parse_record_key(&record.key()), Some((b"anchor".to_vec(), record.meta.id)));

        let mut longer = bytes.clone();
        longer.push(0);
        assert!(TxnRecord::decode(&longer).unwrap_err().why.contains("left over"));
        assert!(TxnRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(IntentMeta::decode(&[0xFF; 8]).is_err());
        assert!(IntentMeta::decode(&vec![0; MAX_META_BYTES + 1]).unwrap_err().why.contains("more than"));
        assert!(TxnStatus::Committed.is_final() && TxnStatus::Aborted.is_final());
        assert!(!TxnStatus::Pending.is_final() && !TxnStatus::Staging.is_final());
    }
}

#[cfg(test)]
mod key_props {
    use super::{TxnId, intent_key, parse_intent_key, parse_record_key, record_key};
    use crate::hlc::Timestamp;
    use crate::mvcc;
    use proptest::prelude::*;

    /// Keys heavy in the bytes the escaping treats specially.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..12)
    }

    proptest! {
        // Proptest prints the failing input, shrunk; it replays from that (no persistence file).
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn intent_and_record_keys_parse_back_and_keep_key_order(
            a in key(), b in key(), node in any::<u64>(), wall in any::<u64>(), logical in any::<u32>()
        ) {
            let id = TxnId::new(node, Timestamp { wall_time: wall, logical });
            prop_assert_eq!(parse_intent_key(&intent_key(&a)), Some(a.clone()));
            prop_assert_eq!(parse_record_key(&record_key(&a, id)), Some((a.clone(), id)));
            prop_assert_eq!(a.cmp(&b), intent_key(&a).cmp(&intent_key(&b)));
            prop_assert!(mvcc::is_reserved(&intent_key(&a)));
            prop_assert!(mvcc::is_reserved(&record_key(&a, id)));
        }
    }
}
