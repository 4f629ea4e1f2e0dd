//! The meta group's rows: the [`ClusterState`] stored one row per part, so a change rewrites only the
//! parts it changes and is decided by compare-and-set on those rows (ARCHITECTURE decision 35).
//!
//! Rows of bucket [`META_BUCKET`]; each value is the row's revision (8 bytes, big-endian) followed by
//! the part as JSON:
//!
//! | key                      | part                                                    |
//! |--------------------------|---------------------------------------------------------|
//! | `h`                      | the header: cluster id, next node id, settings          |
//! | `m`                      | the map's header, once placed: bucket space, replicas   |
//! | `n/` + node id (u64 BE)  | one node's record                                       |
//! | `s/` + shard id (u32 BE) | one shard's descriptor                                  |
//! | `p/` + id (u64 BE)       | one protected timestamp                                 |
//!
//! A row's revision is the state version that last wrote it; a state's version is the largest
//! revision, its map's the largest among the map rows (`m` and `s/`). A row is rewritten only on the
//! condition that it still holds what the change read, so each row's revisions grow, and so does the
//! state's version along the log; but a change of one shard decided on an older read (or at the same
//! time as another's) writes a revision no larger than the current version, so two states may share a
//! version: a version orders states, shard epochs tell them apart.
//!
//! Which rows a change is conditioned on ([`Change::between`]): every row it writes, both headers and
//! every node row; and every row if it changes anything but existing shard rows (a join, a removal,
//! a setting, the first placement). So changes of different shards go through side by side, while a
//! change of membership or settings is decided on the whole state, as it reads the whole state.
//!
//! Stores written before the rows hold the whole state as one JSON row, [`LEGACY_KEY`]; it is read as
//! such, and the first change replaces it with rows.

use super::{ClusterSettings, ClusterState, META_BUCKET, MetaError, NodeRecord, STATE_COLUMN};
use crate::placement::{NodeId, ShardDescriptor, ShardMap};
use crate::raft::Condition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The key of the one row that stores written before the rows hold the whole state in.
pub const LEGACY_KEY: &[u8] = b"cluster";
const HEADER_KEY: &[u8] = b"h";
const MAP_KEY: &[u8] = b"m";
const NODE_PREFIX: &[u8] = b"n/";
const SHARD_PREFIX: &[u8] = b"s/";
const PROTECTED_PREFIX: &[u8] = b"p/";
/// Bytes of a row's revision.
const REVISION_BYTES: usize = 8;

/// Rows by key, as stored (revision and JSON).
pub(crate) type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

type Result<T> = std::result::Result<T, MetaError>;

/// The header row's part.
#[derive(Serialize, Deserialize)]
struct Header {
    cluster_id: String,
    next_node_id: NodeId,
    settings: ClusterSettings,
    #[serde(default, skip_serializing_if = "is_zero")]
    next_shard_id: u32,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    next_protected_id: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The map header row's part.
#[derive(Serialize, Deserialize)]
struct MapHeader {
    total_buckets: u32,
    replication_factor: usize,
}

fn node_key(id: NodeId) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()].concat()
}

fn shard_key(id: u32) -> Vec<u8> {
    [SHARD_PREFIX, &id.to_be_bytes()].concat()
}

fn json<T: Serialize>(part: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(part).map_err(|e| MetaError::Corrupt(format!("cannot encode a meta row: {e}")))
}

fn corrupt(key: &[u8], why: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt(format!("meta row {:?}: {why}", String::from_utf8_lossy(key)))
}

/// A stored row's revision and part.
fn split<'a>(key: &[u8], value: &'a [u8]) -> Result<(u64, &'a [u8])> {
    let (revision, part) = value
        .split_first_chunk::<REVISION_BYTES>()
        .ok_or_else(|| corrupt(key, "shorter than its revision"))?;
    Ok((u64::from_be_bytes(*revision), part))
}

fn parse<'a, T: Deserialize<'a>>(key: &[u8], part: &'a [u8]) -> Result<T> {
    serde_json::from_slice(part).map_err(|e| corrupt(key, e))
}

/// `state`'s parts as JSON, by row key.
fn parts(state: &ClusterState) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut parts = BTreeMap::new();
    let header = Header {
        cluster_id: state.cluster_id.clone(),
        next_node_id: state.next_node_id,
        settings: state.settings.clone(),
        next_shard_id: state.next_shard_id,
        next_protected_id: state.next_protected_id,
    };
    parts.insert(HEADER_KEY.to_vec(), json(&header)?);
    for (id, p) in &state.protected {
        parts.insert([PROTECTED_PREFIX, &id.to_be_bytes()].concat(), json(p)?);
    }
    for (id, node) in &state.nodes {
        parts.insert(node_key(*id), json(node)?);
    }
    if let Some(map) = &state.map {
        let header =
            MapHeader { total_buckets: map.total_buckets, replication_factor: map.replication_factor };
        parts.insert(MAP_KEY.to_vec(), json(&header)?);
        for shard in &map.shards {
            parts.insert(shard_key(shard.id.0), json(shard)?);
        }
    }
    Ok(parts)
}

/// The rows that store `state`, given the rows `before` it: a part unchanged keeps its row (and
/// revision); a changed or new one is written at `state.version`.
pub(crate) fn rows_of(state: &ClusterState, before: &Rows) -> Result<Rows> {
    let mut rows = Rows::new();
    for (key, part) in parts(state)? {
        let kept = before.get(&key).filter(|row| split(&key, row).is_ok_and(|(_, p)| p == part.as_slice()));
        let row = match kept {
            Some(row) => row.clone(),
            None => [&state.version.to_be_bytes()[..], &part].concat(),
        };
        rows.insert(key, row);
    }
    Ok(rows)
}

/// The state `rows` hold (`None`: no cluster yet), checked with [`ClusterState::validate`].
pub(crate) fn state_of(rows: &Rows) -> Result<Option<ClusterState>> {
    if let Some(legacy) = rows.get(LEGACY_KEY) {
        return ClusterState::decode(legacy).map(Some);
    }
    let Some(header_row) = rows.get(HEADER_KEY) else {
        return match rows.keys().next() {
            None => Ok(None),
            Some(key) => Err(corrupt(key, "a meta row without the header row")),
        };
    };
    let (mut version, part) = split(HEADER_KEY, header_row)?;
    let header: Header = parse(HEADER_KEY, part)?;
    let mut nodes = BTreeMap::new();
    let mut map_header: Option<MapHeader> = None;
    let mut shards = Vec::new();
    let mut map_version = 0;
    let mut protected = BTreeMap::new();
    for (key, row) in rows {
        let (revision, part) = split(key, row)?;
        version = version.max(revision);
        if key.as_slice() == HEADER_KEY {
            continue;
        } else if key.as_slice() == MAP_KEY {
            map_header = Some(parse(key, part)?);
        } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            let id = <[u8; 8]>::try_from(id).map_err(|_| corrupt(key, "a node id is 8 bytes"))?;
            nodes.insert(u64::from_be_bytes(id), parse::<NodeRecord>(key, part)?);
            continue;
        } else if let Some(id) = key.strip_prefix(PROTECTED_PREFIX) {
            let id =
                <[u8; 8]>::try_from(id).map_err(|_| corrupt(key, "a protected timestamp id is 8 bytes"))?;
            protected.insert(u64::from_be_bytes(id), parse::<crate::meta::ProtectedTimestamp>(key, part)?);
            continue;
        } else if let Some(id) = key.strip_prefix(SHARD_PREFIX) {
            let id = <[u8; 4]>::try_from(id).map_err(|_| corrupt(key, "a shard id is 4 bytes"))?;
            let shard: ShardDescriptor = parse(key, part)?;
            if shard.id.0 != u32::from_be_bytes(id) {
                return Err(corrupt(key, format!("holds shard {}", shard.id)));
            }
            shards.push(shard);
        } else {
            return Err(corrupt(key, "an unknown meta row"));
        }
        map_version = map_version.max(revision);
    }
    let map = match map_header {
        None if shards.is_empty() => None,
        None => return Err(MetaError::Corrupt("shard rows without the map's header row".into())),
        Some(h) => {
            shards.sort_by_key(ShardDescriptor::first_bucket);
            Some(ShardMap {
                total_buckets: h.total_buckets,
                replication_factor: h.replication_factor,
                shards,
                version: map_version,
            })
        }
    };
    let state = ClusterState {
        cluster_id: header.cluster_id,
        version,
        next_node_id: header.next_node_id,
        nodes,
        map,
        next_shard_id: header.next_shard_id,
        settings: header.settings,
        protected,
        next_protected_id: header.next_protected_id,
    };
    state.validate()?;
    Ok(Some(state))
}

/// A compare-and-set from one set of rows to another: the conditions (see the module documentation)
/// and the writes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// Each row the change is decided on, as it must still be (`None`: absent).
    pub conditions: Vec<Condition>,
    /// Each row the change writes, as it becomes (`None`: deleted).
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Change {
    /// The change from `before` to `after`.
    pub(crate) fn between(before: &Rows, after: &Rows) -> Change {
        let mut writes = BTreeMap::new();
        for key in before.keys().chain(after.keys()) {
            if before.get(key) != after.get(key) {
                writes.insert(key.clone(), after.get(key).cloned());
            }
        }
        let shards_only = writes
            .iter()
            .all(|(key, row)| key.starts_with(SHARD_PREFIX) && row.is_some() && before.contains_key(key));
        let decided_on = |key: &Vec<u8>| !shards_only || !key.starts_with(SHARD_PREFIX);
        let mut guarded: Vec<&Vec<u8>> = before.keys().filter(|k| decided_on(k)).collect();
        guarded.extend(writes.keys());
        guarded.sort();
        guarded.dedup();
        let conditions = guarded
            .into_iter()
            .map(|key| Condition::ColumnIs {
                bucket: META_BUCKET,
                key: key.clone(),
                column: STATE_COLUMN,
                value: before.get(key).cloned(),
            })
            .collect();
        Change { conditions, writes }
    }

    /// The engine writes.
    pub(crate) fn batch(&self) -> cairn_engine::WriteBatch {
        let mut batch = cairn_engine::WriteBatch::new();
        for (key, row) in &self.writes {
            match row {
                Some(row) => batch.put(META_BUCKET, key, STATE_COLUMN, row),
                None => batch.delete(META_BUCKET, key),
            }
        }
        batch
    }

    /// Whether `rows` hold everything this change writes (after an unknown outcome: it applied, or
    /// something wrote the very same rows).
    pub(crate) fn is_in(&self, rows: &Rows) -> bool {
        self.writes.iter().all(|(key, row)| rows.get(key) == row.as_ref())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::meta::JoinRequest;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            replication_factor: 3,
            shards: 4,
            total_buckets: 64,
            dead_after_secs: 30,
            rebalance: true,
            max_clock_offset_ms: 500,
            reshape: Default::default(),
            gc_ttl_secs: crate::meta::DEFAULT_GC_TTL_SECS,
            gc_ttl_before_secs: 0,
            gc_ttl_raised_ms: 0,
            backup_rate_bytes: crate::meta::DEFAULT_BACKUP_RATE_BYTES,
        }
    }

    /// `n` nodes joined to a new cluster of four shards over 64 buckets (not placed yet).
    pub(crate) fn joined(n: u64) -> ClusterState {
        let mut state = ClusterState::new("c", settings()).unwrap();
        for i in 0..n {
            let request = JoinRequest {
                cluster_id: "c".into(),
                token: format!("t{i}"),
                grpc_addr: format!("127.0.0.1:{}", 7000 + 2 * i),
                http_addr: format!("127.0.0.1:{}", 7001 + 2 * i),
            };
            state = state.join(&request).unwrap().0.unwrap();
        }
        state
    }

    fn keys(change: &Change) -> Vec<String> {
        let key = |c: &Condition| match c {
            Condition::ColumnIs { key, .. } => String::from_utf8_lossy(key).into_owned(),
            other => panic!("{other:?}"),
        };
        change.conditions.iter().map(key).collect()
    }

    #[test]
    fn a_state_round_trips_through_its_rows() {
        let state = joined(3);
        let placed = state.place_initial().unwrap();
        for s in [&state, &placed] {
            let rows = rows_of(s, &Rows::new()).unwrap();
            assert_eq!(state_of(&rows).unwrap().as_ref(), Some(s));
        }
        assert_eq!(state_of(&Rows::new()).unwrap(), None);
        let (protected, _) = placed.protect(1 << 60, 60, "backup", 1 << 60).unwrap();
        let rows = rows_of(&protected, &rows_of(&placed, &Rows::new()).unwrap()).unwrap();
        assert_eq!(state_of(&rows).unwrap().as_ref(), Some(&protected));
        // Stores from before the rows: the whole state in one JSON row.
        let legacy = Rows::from([(LEGACY_KEY.to_vec(), placed.encode().unwrap())]);
        assert_eq!(state_of(&legacy).unwrap(), Some(placed));
    }

    #[test]
    fn a_change_rewrites_only_the_rows_it_changes() {
        let state = joined(3).place_initial().unwrap();
        let before = rows_of(&state, &Rows::new()).unwrap();
        let map = state.map.as_ref().unwrap();
        let shard = &map.shards[1];
        let to = 4;
        let state4 = joined(4);
        let mut with_four = state.clone();
        with_four.nodes = state4.nodes.clone();
        with_four.next_node_id = state4.next_node_id;
        let from = shard.replicas[0];
        let mv = crate::placement::Move { shard: shard.id, epoch: shard.epoch, from, to };
        let (moved, _) = with_four.begin_move(&mv).unwrap();
        let base = rows_of(&with_four, &Rows::new()).unwrap();
        let after = rows_of(&moved, &base).unwrap();
        let change = Change::between(&base, &after);
        // One descriptor written, at the new version; decided on it, the headers and the node rows.
        assert_eq!(change.writes.len(), 1);
        let written = change.writes.keys().next().unwrap();
        assert_eq!(written, &shard_key(shard.id.0));
        assert_eq!(split(written, after[written].as_slice()).unwrap().0, moved.version);
        let expected: Vec<String> = ["h", "m", "n/", "n/", "n/", "n/", "s/"].map(String::from).to_vec();
        let got: Vec<String> = keys(&change).into_iter().map(|k| k.chars().take(2).collect()).collect();
        assert_eq!(got, expected);
        assert_eq!(state_of(&after).unwrap().unwrap(), moved);
        assert!(change.is_in(&after) && !change.is_in(&base));
        // A join changes the header and adds a node row: decided on every row.
        let (joining, _) = state
            .join(&JoinRequest {
                cluster_id: "c".into(),
                token: "new".into(),
                grpc_addr: "127.0.0.1:9000".into(),
                http_addr: "127.0.0.1:9001".into(),
            })
            .unwrap();
        let joining = joining.unwrap();
        let change = Change::between(&before, &rows_of(&joining, &before).unwrap());
        assert_eq!(change.writes.len(), 2);
        assert_eq!(change.conditions.len(), before.len() + 1, "every row, and the new one absent");
        // The first state of a cluster: every row must be absent.
        let first = Change::between(&Rows::new(), &rows_of(&state, &Rows::new()).unwrap());
        assert!(first.conditions.iter().all(|c| matches!(c, Condition::ColumnIs { value: None, .. })));
        assert_eq!(first.conditions.len(), before.len());
        // Replacing a legacy row deletes it, decided on it.
        let legacy = Rows::from([(LEGACY_KEY.to_vec(), state.encode().unwrap())]);
        let change = Change::between(&legacy, &rows_of(&moved, &legacy).unwrap());
        assert_eq!(change.writes.get(LEGACY_KEY), Some(&None));
        assert!(keys(&change).contains(&"cluster".to_string()));
    }

    #[test]
    fn malformed_rows_are_refused() {
        let rows = rows_of(&joined(1), &Rows::new()).unwrap();
        let mut short = rows.clone();
        short.insert(node_key(1), vec![1, 2]);
        assert!(matches!(state_of(&short), Err(MetaError::Corrupt(_))));
        let mut stray = rows.clone();
        stray.insert(b"x".to_vec(), [&[0u8; 8][..], b"{}"].concat());
        assert!(matches!(state_of(&stray), Err(MetaError::Corrupt(_))));
        let mut headless = rows;
        headless.remove(HEADER_KEY);
        assert!(matches!(state_of(&headless), Err(MetaError::Corrupt(_))));
    }
}
