//! Restores of a backup (`cairn restore`, `cairn start --restore-from`): every key's versions at or
//! below the backup's timestamp T, written at their own timestamps through the target's own shards, so
//! a cluster of any size and shard count (even another bucket space) takes any backup.
//!
//! The node asked fetches each shard snapshot of the backup from the URL into a scratch directory of
//! its store (whole files), turns its rows into key histories at or below T
//! ([`cairn_kv::as_of::histories`]; versions above T are left out), groups them by the target's buckets and writes each group as one [`cairn_kv::Write::Restore`] through the
//! bucket's shard: here if it serves the bucket, else through a node of the shard (`RestoreRows`). A
//! restore writes only keys the target does not hold (a restore that stopped part way can be run
//! again: keys it restored are recognised and left alone), so a target with live keys is refused
//! unless asked to overwrite.

use super::{blocking, destination, engine_error};
use crate::cluster::Membership;
use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::types::{Consistency, ReadOptions};
use cairn_engine::{Config, Db, DbCoordinator};
use cairn_kv::hlc::Timestamp;
use cairn_proto::backup as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes of key histories one restore write carries at most (far below a Raft command's limit).
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the writes.
const READ_AHEAD: usize = 4;
/// Where in a store a restore fetches shard snapshots to read them.
const SCRATCH_DIR: &str = "restore-scratch";
/// Restore writes in flight at once (each to one bucket: independent of the others).
const PARALLEL_WRITES: usize = 16;
/// Rounds over a bucket's shard's replicas.
const ROUNDS: u32 = 8;
/// How long one restore write to another node may take.
const ROWS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where restored rows go: this node's shards, and through the cluster's map, other nodes'.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) node: Arc<Node>,
    pub(crate) membership: Option<Arc<Membership>>,
}

/// Restores backup `id` at `from` into `target` (see the module documentation); progress messages
/// arrive on the receiver, the last one `done`, or an error. The run goes on if the receiver is
/// dropped.
pub(crate) fn restore(
    target: Target,
    from: String,
    id: u64,
    overwrite: bool,
) -> mpsc::Receiver<Result<pb::RestoreProgress>> {
    restore_checked(target, from, id, overwrite, true)
}

/// [`restore`]; `check_empty` false skips the check that the target holds no live keys (a restore
/// resumed after a crash: keys it restored are recognised).
fn restore_checked(
    target: Target,
    from: String,
    id: u64,
    overwrite: bool,
    check_empty: bool,
) -> mpsc::Receiver<Result<pb::RestoreProgress>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let outcome = run(&target, &tx, from, id, overwrite, check_empty).await;
        let _ = tx.send(outcome).await;
    });
    rx
}

async fn run(
    target: &Target,
    tx: &mpsc::Sender<Result<pb::RestoreProgress>>,
    from: String,
    id: u64,
    overwrite: bool,
    check_empty: bool,
) -> Result<pb::RestoreProgress> {
    let config = destination(&from, None)?;
    let manifest = {
        let config = config.clone();
        blocking(move || DbCoordinator::load_global_snapshot_at(&config, id).map_err(engine_error)).await?
    };
    let as_of = manifest.labels.get("as_of").map(String::as_str).unwrap_or_default();
    let at = Timestamp::parse(as_of).ok_or_else(|| {
        NodeError::InvalidArgument(format!(
            "{from} holds no cairn backup {id} (its manifest names no timestamp)"
        ))
    })?;
    if !overwrite
        && check_empty
        && let Some(key) = first_key(&target.node).await?
    {
        return Err(NodeError::Precondition(format!(
            "the cluster holds keys (such as {:?}): restore into an empty cluster, or ask to overwrite",
            String::from_utf8_lossy(&key)
        )));
    }
    let total = manifest.shard_snapshots.len();
    let mut progress = pb::RestoreProgress { shards_total: total as u32, ..Default::default() };
    for (i, shard) in manifest.shard_snapshots.iter().enumerate() {
        let (chunks_tx, mut chunks) = mpsc::channel::<(u16, Vec<cairn_kv::Restored>)>(READ_AHEAD);
        // The shard snapshot is fetched whole into a scratch directory of the store (whole files: one
        // request each on object storage, not one per block), read, then deleted.
        let scratch = target.node.config().store.join(SCRATCH_DIR).join(&shard.db_id);
        let mut config = Config::new(&scratch);
        config.total_buckets = manifest.total_buckets;
        // Read where the backup is now (the URL given), whatever URL it was taken to.
        config.snapshot_volume = Some(from.clone());
        let (db_id, snapshot_id) = (shard.db_id.clone(), shard.snapshot_id);
        let reader = tokio::task::spawn_blocking(move || -> Result<cairn_kv::as_of::Histories> {
            let _ = std::fs::remove_dir_all(&scratch);
            let read = read_snapshot(config, db_id, snapshot_id, at, &chunks_tx);
            let _ = std::fs::remove_dir_all(&scratch);
            read
        });
        let mut writing = tokio::task::JoinSet::new();
        while let Some((_, keys)) = chunks.recv().await {
            // Keys of one backup bucket may fall in several of the target's (another bucket space).
            let mut by_bucket: BTreeMap<u16, Vec<cairn_kv::Restored>> = BTreeMap::new();
            for k in keys {
                by_bucket
                    .entry(cairn_kv::mvcc::bucket_of(&k.key, target.node.total_buckets()))
                    .or_default()
                    .push(k);
            }
            for (bucket, keys) in by_bucket {
                while writing.len() >= PARALLEL_WRITES {
                    joined(writing.join_next().await)?;
                }
                let target = target.clone();
                writing.spawn(async move { Box::pin(write_bucket(&target, bucket, keys, overwrite)).await });
            }
        }
        while !writing.is_empty() {
            joined(writing.join_next().await)?;
        }
        let stats =
            reader.await.map_err(|e| NodeError::Internal(format!("restore read task failed: {e}")))??;
        progress.shards_done = (i + 1) as u32;
        progress.keys += stats.keys;
        progress.versions += stats.versions;
        progress.versions_trimmed += stats.versions_trimmed;
        progress.message = format!("shard snapshot {} of {total} restored ({} keys)", i + 1, stats.keys);
        tracing::info!(from = %from.split('?').next().unwrap_or_default(), id, keys = progress.keys, "{}", progress.message);
        let _ = tx.send(Ok(progress.clone())).await;
    }
    progress.done = true;
    progress.message =
        format!("restored backup {id} as of {at}: {} keys, {} versions", progress.keys, progress.versions);
    Ok(progress)
}

/// The first live key `node` (and, a cluster member, the cluster) holds, if any.
async fn first_key(node: &Arc<Node>) -> Result<Option<Vec<u8>>> {
    let options = ReadOptions { at: None, consistency: Consistency::Strong, after: Vec::new(), route: None };
    // Boxed: inline, its future nests too deep for the compiler's layout queries.
    let held = Box::pin(node.scan_async(Vec::new(), None, 1, options)).await?;
    Ok(held.value.rows.into_iter().next().map(|(key, _)| key))
}

/// Fetches shard snapshot `db_id`/`snapshot_id` from `config`'s snapshot volume into `config.dir`
/// and hands its key histories at or below `at` to `chunks`, bucket by bucket.
fn read_snapshot(
    config: Config,
    db_id: String,
    snapshot_id: u64,
    at: Timestamp,
    chunks: &mpsc::Sender<(u16, Vec<cairn_kv::Restored>)>,
) -> Result<cairn_kv::as_of::Histories> {
    let db = Db::open_from_snapshot(config, snapshot_id, db_id).map_err(engine_error)?;
    let view = db.view();
    let mut stats = cairn_kv::as_of::Histories::default();
    for range in db.owned_buckets() {
        let rows = view.scan_buckets(range).map_err(engine_error)?;
        let read = cairn_kv::as_of::histories(rows, at, CHUNK_BYTES, |bucket, keys| {
            chunks
                .blocking_send((bucket, keys))
                .map_err(|_| NodeError::Unavailable("the restore stopped writing".into()))
        })?;
        stats.keys += read.keys;
        stats.versions += read.versions;
        stats.versions_trimmed += read.versions_trimmed;
    }
    Ok(stats)
}

/// The outcome of a finished restore write.
fn joined(done: Option<std::result::Result<Result<()>, tokio::task::JoinError>>) -> Result<()> {
    match done {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => Err(NodeError::Internal(format!("a restore write task failed: {e}"))),
        None => Ok(()),
    }
}

/// Writes one bucket's restored keys: here if this node serves the bucket, else through a node of
/// its shard in the cluster's map.
async fn write_bucket(
    target: &Target,
    bucket: u16,
    keys: Vec<cairn_kv::Restored>,
    overwrite: bool,
) -> Result<()> {
    let Some(membership) = &target.membership else {
        return target.node.restore_rows(bucket, keys, overwrite).await;
    };
    let rows = postcard::to_stdvec(&keys)
        .map_err(|e| NodeError::Internal(format!("cannot encode restored rows: {e}")))?;
    let mut why = String::new();
    for round in 0..ROUNDS {
        match target.node.restore_rows(bucket, keys.clone(), overwrite).await {
            Ok(()) => return Ok(()),
            Err(NodeError::Misrouted(w)) => why = w,
            Err(e) => return Err(e),
        }
        let state = membership
            .meta()?
            .read(cairn_cluster::raft::ReadLevel::Strong)
            .await
            .map_err(|e| NodeError::Unavailable(format!("cannot read the shard map: {e}")))?;
        let replicas = state
            .map
            .as_ref()
            .and_then(|m| m.shards.iter().find(|s| s.ranges.iter().any(|r| (r.0..=r.1).contains(&bucket))))
            .map(|s| s.replicas.clone())
            .unwrap_or_default();
        for node_id in replicas {
            if Some(node_id) == target.node.node_id() {
                continue;
            }
            let Some(addr) = state.nodes.get(&node_id).map(|n| n.grpc_addr.clone()) else { continue };
            let request = pb::RestoreRowsRequest { bucket: u32::from(bucket), rows: rows.clone(), overwrite };
            match call_restore_rows(&addr, request).await {
                Ok(()) => return Ok(()),
                Err(s) if matches!(s.code(), tonic::Code::Aborted | tonic::Code::Unavailable) => {
                    why = format!("node {node_id}: {}", s.message());
                }
                Err(s) => {
                    return Err(NodeError::Unavailable(format!(
                        "node {node_id} refused restored rows: {}",
                        s.message()
                    )));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100) * (round + 1)).await;
    }
    Err(NodeError::Unavailable(format!("no node took the restored rows of bucket {bucket} ({why})")))
}

async fn call_restore_rows(
    addr: &str,
    request: pb::RestoreRowsRequest,
) -> std::result::Result<(), tonic::Status> {
    super::node_client(addr, ROWS_TIMEOUT)?.restore_rows(request).await.map(|_| ())
}

/// The file a standalone node that was restored from a backup keeps in its store: which one.
const RESTORED_FILE: &str = "RESTORED.json";
/// The file it keeps while the restore runs (a start that finds it resumes the restore).
const RESTORING_FILE: &str = "RESTORING.json";

/// What [`RESTORED_FILE`] holds.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Restored {
    from: String,
    id: u64,
}

/// `cairn start --restore-from`: restores backup `id` at `from` into standalone `node`'s empty store
/// before it serves, once: a store that records this restore starts as it is; one that holds keys (or
/// another restore) is refused.
pub(crate) async fn restore_at_start(
    node: Arc<Node>,
    store: &std::path::Path,
    from: &str,
    id: u64,
) -> Result<()> {
    let marker = store.join(RESTORED_FILE);
    let this = Restored { from: from.split('?').next().unwrap_or(from).to_string(), id };
    match crate::layout::read_json::<Restored>(&marker)? {
        Some(done) if done == this => {
            tracing::info!(from = %this.from, id, "the store was restored from this backup already");
            return Ok(());
        }
        Some(other) => {
            return Err(NodeError::Startup(format!(
                "the store was restored from backup {} at {}: start it without --restore-from",
                other.id, other.from
            )));
        }
        None => {}
    }
    let running = store.join(RESTORING_FILE);
    let resumed = match crate::layout::read_json::<Restored>(&running)? {
        Some(r) if r == this => true,
        Some(other) => {
            return Err(NodeError::Startup(format!(
                "the store holds part of a restore of backup {} at {}: finish that one",
                other.id, other.from
            )));
        }
        None => false,
    };
    if resumed {
        tracing::info!(from = %this.from, id, "resuming the restore a stop cut short");
    } else {
        // Before anything is written: a store that holds keys is refused now, never half restored.
        if first_key(&node).await?.is_some() {
            return Err(NodeError::Startup(
                "the store holds keys: --restore-from restores into an empty one".into(),
            ));
        }
        crate::layout::write_json(&running, &this)?;
    }
    let mut progress = restore_checked(Target { node, membership: None }, from.to_string(), id, false, false);
    while let Some(p) = progress.recv().await {
        let p = p.map_err(|e| NodeError::Startup(format!("restore of backup {id} failed: {e}")))?;
        if p.done {
            crate::layout::write_json(&marker, &this)?;
            std::fs::remove_file(&running)
                .map_err(|e| NodeError::Startup(format!("cannot remove {}: {e}", running.display())))?;
            return Ok(());
        }
    }
    Err(NodeError::Startup("the restore ended without an answer".into()))
}
