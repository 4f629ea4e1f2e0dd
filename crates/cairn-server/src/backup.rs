//! Backups of a whole cluster at one timestamp T, to a `file://` or `s3://` URL (`cairn backup`).
//!
//! The node a backup is asked of coordinates it:
//! 1. It picks T (the request's, or its clock's now) and protects it from garbage collection through
//!    the meta group (owner `backup <url>`), for at most [`BACKUP_LIMIT`]: no shard's GC threshold
//!    passes T while the run lasts. A T shards may already have collected is refused then.
//! 2. It takes the URL's coordinator lock (the storage engine's [`DbCoordinator`]), one backup per URL
//!    at a time, and deletes what runs that never finished left there. It shows it is alive there
//!    every [`HEARTBEAT_EVERY`]: a lock a crashed coordinator left on object storage (a file lock dies
//!    with its process) is broken once its holder was silent for [`STALE_LOCK`].
//! 3. It waits until its clock has passed T by twice the maximum clock offset, then asks each shard's
//!    leader for a snapshot holding every write at or below T, written to the URL by that node (see
//!    `node_backup.rs` for why it holds them all); a node that does not lead sends it to the next
//!    replica. Files a backup at the URL already holds are not uploaded again.
//! 4. It assembles the shard snapshots into one global manifest labelled with T and the cluster's id,
//!    which checks that they cover every bucket exactly once (a split or merge meanwhile sends it
//!    round again with the new map), and writes it atomically after checking every shard snapshot is
//!    complete at the URL: a backup is listed only once whole. Retention (`keep`) then applies.
//! 5. It releases the protection, whatever happened.
//!
//! A backup holds versions newer than T too (a shard snapshot is taken after T): a restore drops them.

use crate::cluster::Membership;
use crate::error::{NodeError, Result};
use crate::node::Node;
use cairn_engine::{
    CoordinatorConfig, DbCoordinator, GlobalSnapshotManifest, ShardSnapshotInput, Volume, VolumeRole,
};
use cairn_kv::hlc::Timestamp;
use cairn_proto::backup as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[path = "backup_restore.rs"]
mod restore;
pub(crate) use restore::{Target, restore, restore_at_start};

/// The longest a backup may run (and so how long its protected timestamp lasts).
pub const BACKUP_LIMIT: Duration = Duration::from_secs(3600);
/// How often a running backup shows it is alive at its URL.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A lock at a URL whose holder showed no sign of life for this long was left by a crashed run.
const STALE_LOCK: Duration = Duration::from_secs(60);
/// Passes over the shards when a split or merge changed the map under a backup.
const MAX_PASSES: usize = 3;
/// Rounds over a shard's replicas looking for its leader.
const LEADER_ROUNDS: u32 = 8;
/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Progress messages buffered for a slow watcher (later ones wait).
const PROGRESS_BUFFER: usize = 64;
/// Labels of a backup's global manifest.
const LABEL_AS_OF: &str = "as_of";
const LABEL_CLUSTER: &str = "cluster_id";
const LABEL_UPLOADED: &str = "bytes_uploaded";
/// Prefix of the label naming a shard snapshot's shard: `shard.<db_id>` = shard id.
const LABEL_SHARD: &str = "shard.";

/// What a backup URL's `PURPOSE` file says (see `DbCoordinator::claim`).
const PURPOSE: &str = "cairn backups";

/// A task aborted if dropped before it finished (a run that panicked leaves no heartbeat behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task to end.
    async fn finish(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The coordinator config of backups at `url` (one volume: manifests and shard snapshots).
fn destination(url: &str, keep: Option<usize>) -> Result<CoordinatorConfig> {
    if !(url.starts_with("file:///") || url.starts_with("s3://")) {
        return Err(NodeError::InvalidArgument(format!(
            "a backup URL is file:///absolute/path or s3://bucket/prefix?endpoint=...&region=... (got {url:?})"
        )));
    }
    let mut config = CoordinatorConfig::new(vec![Volume::new(url, VolumeRole::Meta)]);
    config.snapshot_retention = keep;
    // Resolving checks the URL's form (and that this build reaches object storage).
    config.meta_volume().map_err(engine_error)?;
    Ok(config)
}

/// A storage error of a backup as the client should see it.
fn engine_error(e: cairn_engine::Error) -> NodeError {
    use cairn_engine::Error as E;
    match e {
        E::GlobalSnapshotNotFound { id, volume } => {
            NodeError::NotFound(format!("no backup {id} at {volume}"))
        }
        E::InvalidArgument(m) | E::InvalidConfig(m) => NodeError::InvalidArgument(m),
        E::Locked(path) => NodeError::Precondition(format!(
            "another backup to this URL is running (it holds {}); wait for it (on S3, the lock of a \
             coordinator that crashed is broken a minute after its last heartbeat)",
            path.display()
        )),
        e => NodeError::Engine(e),
    }
}

/// Runs blocking storage work (object storage blocks on its own runtime) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(format!("backup task failed: {e}")))?
}

/// The owner a run's protected timestamp carries: its URL without the query (no credentials).
fn owner_of(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let owner = format!("backup {base}");
    let mut end = owner.len().min(256);
    while !owner.is_char_boundary(end) {
        end -= 1;
    }
    owner[..end].to_string()
}

/// A backup's description from its manifest.
pub fn info(m: &GlobalSnapshotManifest) -> pb::BackupInfo {
    let label = |k: &str| m.labels.get(k).cloned().unwrap_or_default();
    pb::BackupInfo {
        id: m.id,
        as_of: label(LABEL_AS_OF),
        created_at_ms: m.created_at_ms,
        cluster_id: label(LABEL_CLUSTER),
        total_buckets: m.total_buckets,
        bytes_uploaded: label(LABEL_UPLOADED).parse().unwrap_or(0),
        shards: m
            .shard_snapshots
            .iter()
            .map(|s| pb::BackupShard {
                shard: label(&format!("{LABEL_SHARD}{}", s.db_id)).parse().unwrap_or(0),
                ranges: s
                    .bucket_ranges
                    .iter()
                    .flat_map(|r| [u32::from(*r.start()), u32::from(*r.end())])
                    .collect(),
                files: s.files,
                bytes: s.size_bytes,
                rows: s.rows,
            })
            .collect(),
    }
}

/// Starts a backup to `to` at `as_of` (now if `None`), keeping the newest `keep` at `to`: progress
/// messages arrive on the receiver, the last holding the backup, or an error. The run goes on if the
/// receiver is dropped (a client that disconnected): it finishes, or cleans up after itself.
pub(crate) fn create(
    membership: Arc<Membership>,
    node: Arc<Node>,
    to: String,
    as_of: Option<Timestamp>,
    keep: Option<usize>,
) -> mpsc::Receiver<Result<pb::BackupProgress>> {
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    tokio::spawn(async move {
        let outcome = Run { membership, node, tx: tx.clone(), to, keep }.go(as_of).await;
        let _ = tx.send(outcome).await;
    });
    rx
}

struct Run {
    membership: Arc<Membership>,
    node: Arc<Node>,
    tx: mpsc::Sender<Result<pb::BackupProgress>>,
    to: String,
    keep: Option<usize>,
}

impl Run {
    async fn progress(&self, done: usize, total: usize, bytes: u64, message: String) {
        tracing::info!(to = %owner_of(&self.to), done, total, bytes, "{message}");
        let p = pb::BackupProgress {
            shards_done: done as u32,
            shards_total: total as u32,
            bytes_uploaded: bytes,
            message,
            done: None,
        };
        // A watcher that does not read its stream misses messages rather than stalling the run.
        let _ = self.tx.try_send(Ok(p));
    }

    async fn go(self, as_of: Option<Timestamp>) -> Result<pb::BackupProgress> {
        let config = destination(&self.to, self.keep)?;
        let at = match as_of {
            Some(at) => {
                self.node.pending_clock().observe(at).map_err(|e| NodeError::OutOfRange(e.to_string()))?;
                at
            }
            None => self.node.now(),
        };
        let started = Instant::now();
        let protection = self
            .membership
            .protect(at.wall_time, BACKUP_LIMIT.as_secs(), &owner_of(&self.to))
            .await
            .map_err(|e| match crate::wire::meta_error(e) {
                NodeError::InvalidArgument(m) => {
                    NodeError::InvalidArgument(format!("cannot protect backup timestamp {at}: {m}"))
                }
                e => e,
            })?;
        let outcome = self.locked(config, at, started).await;
        if let Err(e) = self.membership.release_protected(protection.id).await {
            tracing::warn!(id = protection.id, error = %e, "a backup's protected timestamp was not released: it expires");
        }
        outcome
    }

    /// Steps 2 to 4 (see the module documentation), holding the URL's lock.
    async fn locked(
        &self,
        config: CoordinatorConfig,
        at: Timestamp,
        started: Instant,
    ) -> Result<pb::BackupProgress> {
        let coordinator = Arc::new(self.lock(config).await?);
        let claim = Arc::clone(&coordinator);
        blocking(move || claim.claim(PURPOSE).map_err(engine_error)).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let beating = Arc::clone(&coordinator);
        let heartbeat = AbortOnDrop(tokio::spawn(async move {
            loop {
                let c = Arc::clone(&beating);
                if let Err(e) = blocking(move || c.heartbeat().map_err(engine_error)).await {
                    tracing::warn!(error = %e, "a backup's heartbeat failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                    _ = stopped.changed() => return,
                }
            }
        }));
        let outcome = self.assemble(&coordinator, at, started).await;
        // The lock goes with the last reference: the heartbeat's ends before the answer is sent.
        let _ = stop.send(true);
        heartbeat.finish().await;
        outcome
    }

    /// Steps 3 and 4 (see the module documentation), holding `coordinator`.
    async fn assemble(
        &self,
        coordinator: &Arc<DbCoordinator>,
        at: Timestamp,
        started: Instant,
    ) -> Result<pb::BackupProgress> {
        let removed = blocking({
            let c = Arc::clone(coordinator);
            move || c.collect_unreferenced().map_err(engine_error)
        })
        .await?;
        if removed > 0 {
            tracing::info!(removed, "deleted shard snapshots unfinished backups left");
        }
        let offset = self.node.pending_clock().max_offset();
        // A millisecond more: a clock exactly at T's wall time could still stamp T's own wall time.
        let physical = self.node.pending_clock().physical();
        // Twice the offset: every clock then passed T by the offset, so no leader's closed timestamp
        // (its physical time less the offset) lets an intent land at or below T.
        let wait = Duration::from_nanos(at.wall_time.saturating_sub(physical))
            + offset * 2
            + Duration::from_millis(1);
        self.progress(0, 0, 0, format!("backup at {at}: waiting {wait:?} for every clock to pass it")).await;
        tokio::time::sleep(wait).await;
        let deadline = started + BACKUP_LIMIT;
        let mut last = String::new();
        for _ in 0..MAX_PASSES {
            let state = self
                .membership
                .meta()?
                .read(cairn_cluster::raft::ReadLevel::Strong)
                .await
                .map_err(|e| NodeError::Unavailable(format!("cannot read the shard map: {e}")))?;
            let map = state
                .map
                .clone()
                .ok_or_else(|| NodeError::Unavailable("the cluster has no shards yet".into()))?;
            let total = map.shards.len();
            let mut inputs = Vec::with_capacity(total);
            let mut labels = std::collections::BTreeMap::new();
            let mut uploaded = 0;
            for (i, shard) in map.shards.iter().enumerate() {
                let (input, bytes) = self.snapshot_shard(&state, shard, at, deadline).await?;
                uploaded += bytes;
                labels.insert(format!("{LABEL_SHARD}{}", input.db_id), shard.id.0.to_string());
                inputs.push(input);
                self.progress(i + 1, total, uploaded, format!("shard {} written", shard.id)).await;
            }
            labels.insert(LABEL_AS_OF.into(), at.to_string());
            labels.insert(LABEL_CLUSTER.into(), state.cluster_id.clone());
            labels.insert(LABEL_UPLOADED.into(), uploaded.to_string());
            let c = Arc::clone(coordinator);
            let total_buckets = map.total_buckets;
            let recorded = blocking(move || {
                let mut manifest = match c.take_global_snapshot(total_buckets, inputs) {
                    Ok(m) => m,
                    // The map changed under the pass (a split or merge): go round again.
                    Err(cairn_engine::Error::InvalidArgument(why)) => return Ok(Err(why)),
                    Err(e) => return Err(engine_error(e)),
                };
                manifest.labels = labels;
                let stats = c.materialize_global_snapshot(&manifest).map_err(engine_error)?;
                if let Some(e) = stats.gc_error {
                    tracing::warn!(error = %e, "backup retention did not finish: the next backup retries it");
                }
                Ok(Ok(manifest))
            })
            .await?;
            match recorded {
                Ok(manifest) => {
                    let info = info(&manifest);
                    tracing::info!(id = info.id, %at, shards = total, uploaded, "backup complete");
                    return Ok(pb::BackupProgress {
                        shards_done: total as u32,
                        shards_total: total as u32,
                        bytes_uploaded: uploaded,
                        message: format!("backup {} complete", info.id),
                        done: Some(info),
                    });
                }
                Err(why) => {
                    self.progress(
                        0,
                        total,
                        uploaded,
                        format!("the shards changed during the backup ({why}): again"),
                    )
                    .await;
                    last = why;
                }
            }
        }
        Err(NodeError::Unavailable(format!("the shards kept changing during the backup ({last}): retry")))
    }

    /// The URL's coordinator lock; one a crashed run left (on object storage a lock outlives its
    /// holder) is broken once its holder has shown no sign of life for [`STALE_LOCK`].
    async fn lock(&self, config: CoordinatorConfig) -> Result<DbCoordinator> {
        let open = |config: CoordinatorConfig| blocking(move || Ok(DbCoordinator::open(config)));
        match open(config.clone()).await? {
            Ok(c) => return Ok(c),
            Err(cairn_engine::Error::Locked(_)) => {}
            Err(e) => return Err(engine_error(e)),
        }
        // A file lock dies with its holder: `Locked` there means a live one.
        if !self.to.starts_with("s3://") {
            return open(config).await?.map_err(engine_error);
        }
        let probe = config.clone();
        let idle = blocking(move || DbCoordinator::lock_idle_ms(&probe).map_err(engine_error)).await?;
        if idle.is_none_or(|ms| ms < STALE_LOCK.as_millis() as u64) {
            return open(config).await?.map_err(engine_error);
        }
        tracing::warn!(to = %owner_of(&self.to), idle_ms = idle, "breaking the lock a crashed backup left");
        let breaking = config.clone();
        blocking(move || DbCoordinator::break_lock(&breaking).map_err(engine_error)).await?;
        open(config).await?.map_err(engine_error)
    }

    /// Shard `shard`'s snapshot at `at`, from whichever of its replicas leads.
    async fn snapshot_shard(
        &self,
        state: &cairn_cluster::meta::ClusterState,
        shard: &cairn_cluster::placement::ShardDescriptor,
        at: Timestamp,
        deadline: Instant,
    ) -> Result<(ShardSnapshotInput, u64)> {
        let mut why = String::from("it has no replicas");
        for round in 0..LEADER_ROUNDS {
            for node_id in &shard.replicas {
                let Some(addr) = state.nodes.get(node_id).map(|n| n.grpc_addr.clone()) else { continue };
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(NodeError::Unavailable(format!(
                        "the backup ran out of time at shard {}",
                        shard.id
                    )));
                }
                let request = pb::SnapshotShardRequest {
                    shard: shard.id.0,
                    at: at.to_string(),
                    to: self.to.clone(),
                    timeout_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    max_bytes_per_sec: state.settings.backup_rate_bytes,
                };
                match call_snapshot_shard(&addr, request, left).await {
                    Ok(reply) => {
                        let input: ShardSnapshotInput =
                            serde_json::from_str(&reply.input_json).map_err(|e| {
                                NodeError::Internal(format!(
                                    "node {node_id} answered a shard snapshot that does not decode: {e}"
                                ))
                            })?;
                        return Ok((input, reply.bytes_uploaded));
                    }
                    // Not the leader, unreachable, or moved: the next replica.
                    Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Aborted) => {
                        why = format!("node {node_id}: {}", s.message());
                    }
                    Err(s) => {
                        let why =
                            format!("node {node_id} could not snapshot shard {}: {}", shard.id, s.message());
                        return Err(match s.code() {
                            tonic::Code::FailedPrecondition => NodeError::BelowGcThreshold(why),
                            tonic::Code::InvalidArgument => NodeError::InvalidArgument(why),
                            tonic::Code::OutOfRange => NodeError::OutOfRange(why),
                            _ => NodeError::Unavailable(why),
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100) * (round + 1)).await;
        }
        Err(NodeError::Unavailable(format!("no leader of shard {} took the backup ({why})", shard.id)))
    }
}

/// A `Backup` client of the node at `addr` whose calls time out after `timeout` (a connection of
/// its own: a backup call may outlast the node's shared channels' timeout).
fn node_client(
    addr: &str,
    timeout: Duration,
) -> std::result::Result<pb::backup_client::BackupClient<tonic::transport::Channel>, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("bad node address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout);
    Ok(pb::backup_client::BackupClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES))
}

async fn call_snapshot_shard(
    addr: &str,
    request: pb::SnapshotShardRequest,
    timeout: Duration,
) -> std::result::Result<pb::SnapshotShardReply, tonic::Status> {
    node_client(addr, timeout)?.snapshot_shard(request).await.map(tonic::Response::into_inner)
}

/// The complete backups at `url`, oldest first.
pub async fn list(url: String) -> Result<Vec<pb::BackupInfo>> {
    let config = destination(&url, None)?;
    blocking(move || {
        let mut out = Vec::new();
        for id in DbCoordinator::list_global_snapshots_at(&config).map_err(engine_error)? {
            out.push(info(&DbCoordinator::load_global_snapshot_at(&config, id).map_err(engine_error)?));
        }
        Ok(out)
    })
    .await
}

/// Backup `id` at `url`.
pub async fn show(url: String, id: u64) -> Result<pb::BackupInfo> {
    let config = destination(&url, None)?;
    blocking(move || Ok(info(&DbCoordinator::load_global_snapshot_at(&config, id).map_err(engine_error)?)))
        .await
}

/// What reading a backup back found.
pub enum Verified {
    /// Whole: what was checked.
    Whole(pb::VerifyBackupReply),
    /// Damaged: how.
    Damaged(String),
}

/// Reads backup `id` at `url` back (see [`DbCoordinator::verify_global_snapshot_at`]).
pub async fn verify(url: String, id: u64) -> Result<Verified> {
    let config = destination(&url, None)?;
    blocking(move || match DbCoordinator::verify_global_snapshot_at(&config, id) {
        Ok(r) => Ok(Verified::Whole(pb::VerifyBackupReply {
            shards: r.shards as u32,
            files: r.files,
            bytes: r.bytes,
            rows: r.rows,
        })),
        Err(
            e @ (cairn_engine::Error::Corruption { .. }
            | cairn_engine::Error::MissingFile { .. }
            | cairn_engine::Error::SnapshotNotFound { .. }),
        ) => Ok(Verified::Damaged(format!("backup {id} is damaged: {e}"))),
        Err(e) => Err(engine_error(e)),
    })
    .await
}

/// Deletes backup `id` at `url` and the shard snapshots no other backup there needs.
pub async fn delete(url: String, id: u64) -> Result<pb::DeleteBackupReply> {
    let config = destination(&url, None)?;
    blocking(move || {
        let c = DbCoordinator::open(config).map_err(engine_error)?;
        c.claim(PURPOSE).map_err(engine_error)?;
        let removed = c.delete_global_snapshot(id).map_err(engine_error)?;
        Ok(pb::DeleteBackupReply { shard_snapshots_removed: removed })
    })
    .await
}

/// The gRPC `Backup` service.
#[derive(Clone)]
pub struct BackupService {
    membership: Arc<Membership>,
    node: Arc<parking_lot::RwLock<Option<Arc<Node>>>>,
}

impl BackupService {
    /// A service answering `UNAVAILABLE` until [`BackupService::ready`].
    pub(crate) fn starting(membership: Arc<Membership>) -> BackupService {
        BackupService { membership, node: Arc::default() }
    }

    /// Starts serving `node`.
    pub(crate) fn ready(&self, node: Arc<Node>) {
        *self.node.write() = Some(node);
    }

    /// Stops serving: the node is let go.
    pub(crate) fn retire(&self) {
        *self.node.write() = None;
    }

    fn node(&self) -> std::result::Result<Arc<Node>, tonic::Status> {
        self.node
            .read()
            .clone()
            .ok_or_else(|| tonic::Status::unavailable("the node is not serving (starting or stopping)"))
    }

    /// The tonic server of the service.
    pub(crate) fn into_server(self, max_message: usize) -> pb::backup_server::BackupServer<BackupService> {
        pb::backup_server::BackupServer::new(self)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
    }
}

fn parse_ts(text: &str, what: &str) -> std::result::Result<Option<Timestamp>, tonic::Status> {
    if text.is_empty() {
        return Ok(None);
    }
    Timestamp::parse(text)
        .map(Some)
        .ok_or_else(|| tonic::Status::invalid_argument(format!("{what} {text:?} is not WALL.LOGICAL")))
}

/// A run's progress messages as a gRPC stream. A client that goes away does not stop the run: its
/// messages are drained here.
fn stream_of<T: Send + 'static>(
    mut progress: mpsc::Receiver<Result<T>>,
) -> tokio_stream::wrappers::ReceiverStream<std::result::Result<T, tonic::Status>> {
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    tokio::spawn(async move {
        while let Some(p) = progress.recv().await {
            if tx.send(p.map_err(crate::wire::status_of)).await.is_err() {
                while progress.recv().await.is_some() {}
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

type Stream = tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::BackupProgress, tonic::Status>>;

#[tonic::async_trait]
impl pb::backup_server::Backup for BackupService {
    type CreateStream = Stream;

    async fn create(
        &self,
        request: tonic::Request<pb::CreateBackupRequest>,
    ) -> std::result::Result<tonic::Response<Stream>, tonic::Status> {
        let r = request.into_inner();
        let as_of = parse_ts(&r.as_of, "as_of")?;
        let keep = (r.keep > 0).then_some(r.keep as usize);
        let progress = create(Arc::clone(&self.membership), self.node()?, r.to, as_of, keep);
        Ok(tonic::Response::new(stream_of(progress)))
    }

    async fn list(
        &self,
        request: tonic::Request<pb::ListBackupsRequest>,
    ) -> std::result::Result<tonic::Response<pb::ListBackupsReply>, tonic::Status> {
        let backups = list(request.into_inner().url).await.map_err(crate::wire::status_of)?;
        Ok(tonic::Response::new(pb::ListBackupsReply { backups }))
    }

    async fn show(
        &self,
        request: tonic::Request<pb::BackupRequest>,
    ) -> std::result::Result<tonic::Response<pb::BackupInfo>, tonic::Status> {
        let r = request.into_inner();
        Ok(tonic::Response::new(show(r.url, r.id).await.map_err(crate::wire::status_of)?))
    }

    async fn verify(
        &self,
        request: tonic::Request<pb::BackupRequest>,
    ) -> std::result::Result<tonic::Response<pb::VerifyBackupReply>, tonic::Status> {
        let r = request.into_inner();
        match verify(r.url, r.id).await {
            Ok(Verified::Whole(reply)) => Ok(tonic::Response::new(reply)),
            Ok(Verified::Damaged(m)) => Err(tonic::Status::data_loss(m)),
            Err(e) => Err(crate::wire::status_of(e)),
        }
    }

    async fn delete(
        &self,
        request: tonic::Request<pb::BackupRequest>,
    ) -> std::result::Result<tonic::Response<pb::DeleteBackupReply>, tonic::Status> {
        let r = request.into_inner();
        Ok(tonic::Response::new(delete(r.url, r.id).await.map_err(crate::wire::status_of)?))
    }

    type RestoreStream =
        tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::RestoreProgress, tonic::Status>>;

    async fn restore(
        &self,
        request: tonic::Request<pb::RestoreRequest>,
    ) -> std::result::Result<tonic::Response<Self::RestoreStream>, tonic::Status> {
        let r = request.into_inner();
        let target = Target { node: self.node()?, membership: Some(Arc::clone(&self.membership)) };
        Ok(tonic::Response::new(stream_of(restore(target, r.from, r.id, r.overwrite))))
    }

    async fn restore_rows(
        &self,
        request: tonic::Request<pb::RestoreRowsRequest>,
    ) -> std::result::Result<tonic::Response<pb::RestoreRowsReply>, tonic::Status> {
        let r = request.into_inner();
        let bucket = u16::try_from(r.bucket)
            .map_err(|_| tonic::Status::invalid_argument(format!("bucket {} is out of range", r.bucket)))?;
        let keys: Vec<cairn_kv::Restored> = postcard::from_bytes(&r.rows)
            .map_err(|e| tonic::Status::invalid_argument(format!("restored rows do not decode: {e}")))?;
        self.node()?.restore_rows(bucket, keys, r.overwrite).await.map_err(crate::wire::status_of)?;
        Ok(tonic::Response::new(pb::RestoreRowsReply {}))
    }

    async fn snapshot_shard(
        &self,
        request: tonic::Request<pb::SnapshotShardRequest>,
    ) -> std::result::Result<tonic::Response<pb::SnapshotShardReply>, tonic::Status> {
        let r = request.into_inner();
        let at = parse_ts(&r.at, "at")?
            .ok_or_else(|| tonic::Status::invalid_argument("a shard snapshot needs `at`"))?;
        destination(&r.to, None).map_err(crate::wire::status_of)?;
        let timeout = Duration::from_millis(r.timeout_ms).min(BACKUP_LIMIT);
        // A peer's rate is held to what the setting accepts (0: no limit).
        let rate = match r.max_bytes_per_sec {
            0 => 0,
            n => n.max(cairn_cluster::meta::MIN_BACKUP_RATE_BYTES),
        };
        let (input, bytes) = self
            .node()?
            .snapshot_for_backup(u64::from(r.shard), at, r.to, timeout, rate)
            .await
            .map_err(crate::wire::status_of)?;
        let input_json = serde_json::to_string(&input).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::SnapshotShardReply { input_json, bytes_uploaded: bytes }))
    }
}
