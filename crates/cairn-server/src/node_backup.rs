//! A shard's part in a cluster backup (see the `backup` module): a snapshot of a shard this node leads that
//! holds every write at or below the backup's timestamp, exported to the backup's volume.
//!
//! Why the snapshot holds every write at or below `at`: the coordinator asks only once its physical
//! clock has passed `at` by the maximum clock offset, so every node's clock is past `at` and no write
//! evaluated from then on gets a timestamp at or below it. Writes evaluated before are either this
//! leader's, still in flight ([`Pending`](cairn_kv::pending::Pending): waited for), or an earlier
//! leader's, whose entries precede this leader's first entry in the log or never apply. A read point
//! confirmed by a quorum after that wait covers them all, and the snapshot is taken at or past it.

use super::Node;
use crate::error::{NodeError, Result};
use cairn_engine::ShardSnapshotInput;
use cairn_kv::hlc::Timestamp;
use std::time::{Duration, Instant};

impl Node {
    /// Snapshots group `group` (which this node's replica must lead) with every write at or below `at`,
    /// and exports it to the volume at `to`, copying at most `max_bytes_per_sec` (0: no limit; the
    /// rate holds for all of this node's exports together). Returns the snapshot's descriptor there and
    /// the bytes uploaded. `NotLeader` if this replica does not lead; `BelowGcThreshold` if the shard
    /// may have collected versions a read at `at` needs.
    pub(crate) async fn snapshot_for_backup(
        &self,
        group: u64,
        at: Timestamp,
        to: String,
        timeout: Duration,
        max_bytes_per_sec: u64,
    ) -> Result<(ShardSnapshotInput, u64)> {
        let replica = self
            .replica(group)
            .ok_or_else(|| NodeError::Misrouted(format!("shard {group} has no replica on this node")))?;
        let deadline = Instant::now() + timeout;
        let term = match replica.leading_term(Duration::ZERO).await {
            Ok(term) => term,
            Err(e) => {
                return Err(NodeError::NotLeader(format!("this node does not lead shard {group}: {e}")));
            }
        };
        // The coordinator waited out the offset; this clock may still trail it by up to the offset.
        let clock = self.pending.clock();
        let behind = Duration::from_nanos(at.wall_time.saturating_sub(clock.physical()));
        if behind > clock.max_offset() * 2 {
            return Err(NodeError::OutOfRange(format!(
                "backup timestamp {at} is {behind:?} ahead of this node's clock (more than twice the maximum \
                 offset)"
            )));
        }
        tokio::time::sleep(behind).await;
        let pending = std::sync::Arc::clone(&self.pending);
        let settled = tokio::task::spawn_blocking(move || pending.wait_below(at, deadline))
            .await
            .map_err(|e| NodeError::Internal(format!("backup wait task failed: {e}")))?;
        if !settled {
            return Err(NodeError::Unavailable(format!(
                "writes at or below {at} were still in flight on shard {group} when the backup's time ran out"
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        replica.read_point(cairn_cluster::raft::ReadLevel::Strong, left).await.map_err(|e| {
            NodeError::NotLeader(format!("shard {group}'s leader could not confirm its lead: {e}"))
        })?;
        // Still the leader of the same term: a newer leader's writes in flight are in its own node's
        // pending set, not waited for here.
        if replica.leading_term(Duration::ZERO).await.ok() != Some(term) {
            return Err(NodeError::NotLeader(format!(
                "this node lost the lead of shard {group} during the backup"
            )));
        }
        let db = replica.db();
        let threshold = db.filter_threshold();
        if at.wall_time < threshold {
            return Err(NodeError::BelowGcThreshold(format!(
                "backup timestamp {at} is below the GC threshold of shard {group} ({threshold}.0): older \
                 versions may be gone"
            )));
        }
        // At most EXPORTS_PER_NODE exports at once (a coordinator that gave up on one may ask again
        // while it still runs).
        let permit = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            std::sync::Arc::clone(&self.export_slots).acquire_owned(),
        )
        .await
        .map_err(|_| {
            NodeError::Unavailable(format!(
                "{EXPORTS_PER_NODE} backup exports were still running on this node when the backup's time \
                 ran out"
            ))
        })?
        .map_err(|_| NodeError::Internal("the backup export slots are closed".into()))?;
        self.backup_pace.set_rate(max_bytes_per_sec);
        let pace = std::sync::Arc::clone(&self.backup_pace);
        // A task of its own: a caller that goes away (the coordinator's call timed out) does not stop it
        // between taking the snapshot and removing it.
        tokio::spawn(async move {
            let _permit = permit;
            export(db, group, to, pace).await
        })
        .await
        .map_err(|e| NodeError::Internal(format!("backup export task failed: {e}")))?
    }
}

/// Backup exports that may run on one node at once.
const EXPORTS_PER_NODE: usize = 2;

/// The slots of [`EXPORTS_PER_NODE`].
pub(crate) fn export_slots() -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(EXPORTS_PER_NODE))
}

/// Snapshots `db` (shard `group`), exports the snapshot to `to` at `pace`, then removes the local
/// snapshot whatever the export did.
async fn export(
    db: std::sync::Arc<cairn_engine::Db>,
    group: u64,
    to: String,
    pace: std::sync::Arc<cairn_engine::bulk::Pacer>,
) -> Result<(ShardSnapshotInput, u64)> {
    let snapshot_db = std::sync::Arc::clone(&db);
    let snapshot_id = tokio::task::spawn_blocking(move || snapshot_db.snapshot())
        .await
        .map_err(|e| NodeError::Internal(format!("backup snapshot task failed: {e}")))??;
    // The export reads every row of the snapshot (its digest) and copies its files: bulk work, on a
    // thread of its own at a lower CPU priority than the node's requests.
    let export_db = std::sync::Arc::clone(&db);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new().name("cairn-backup".into()).spawn(move || {
        cairn_engine::bulk::lower_this_thread();
        let _receiver_gone = tx.send(export_db.export_snapshot(snapshot_id, &to, &pace));
    });
    let exported = match started {
        Ok(_) => match rx.await {
            Ok(exported) => exported.map_err(NodeError::from),
            Err(_) => Err(NodeError::Internal("the backup export thread panicked".into())),
        },
        Err(e) => Err(NodeError::Internal(format!("could not start a backup export thread: {e}"))),
    };
    // The local copy only held links for the export: let go of them either way (at the node's normal
    // priority: the removal takes the shard's snapshot lock).
    tokio::task::spawn_blocking(move || {
        if let Err(e) = db.remove_snapshot(snapshot_id) {
            tracing::warn!(shard = group, snapshot_id, error = %e, "could not remove a backup's local snapshot");
        }
    })
    .await
    .map_err(|e| NodeError::Internal(format!("backup cleanup task failed: {e}")))?;
    exported
}

impl Node {
    /// Writes key histories restored from a backup (see [`cairn_kv::Write::Restore`]), all in
    /// `bucket`, through the bucket's shard here: `Misrouted` if this node holds none that serves it.
    pub(crate) async fn restore_rows(
        &self,
        bucket: u16,
        keys: Vec<cairn_kv::Restored>,
        overwrite: bool,
    ) -> Result<()> {
        if let Some(k) = keys.iter().find(|k| cairn_kv::mvcc::bucket_of(&k.key, self.total_buckets) != bucket)
        {
            return Err(NodeError::InvalidArgument(format!("key {:?} is not in bucket {bucket}", k.key)));
        }
        for k in &keys {
            self.check_new_key(&k.key)?;
        }
        let shard = self.set().of_bucket(bucket).map_err(|e| NodeError::Misrouted(e.to_string()))?;
        self.write(&shard, cairn_kv::Write::Restore { keys, overwrite }).await.map(|_| ())
    }
}
