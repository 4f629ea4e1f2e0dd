//! Snapshot files between nodes: the leader serves its current snapshot's files in chunks, a follower
//! stages them on its own volume (resuming per file) before installing.

use super::Replica;
use crate::raft::{ShardRaft, ShardSnapshotRef, ShardStateMachine, TypeConfig, decode, encode};
use cairn_proto::raft::RaftCallKind;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::SnapshotResponse;
use openraft::vote::RaftLeaderId;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A snapshot file request: shard db id, snapshot id, the file (`None`: the list) and the offset.
pub(crate) type SnapshotFileCall = (String, u64, Option<String>, u64);

/// Most bytes one snapshot file call returns.
const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Answers a follower's snapshot file call from this replica's current snapshot: the file list
/// (`Vec<(name, size)>`) or up to [`SNAPSHOT_CHUNK`] bytes of one file.
pub(crate) fn serve_snapshot_file(sm: &ShardStateMachine, call: SnapshotFileCall) -> Result<Vec<u8>, String> {
    let (db_id, snapshot_id, name, offset) = call;
    let (fs, dir) = sm.current_snapshot_dir(&db_id, snapshot_id)?;
    let names = fs.list(&dir).map_err(|e| e.to_string())?;
    let Some(name) = name else {
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let len = fs.open(&dir.join(&name)).map_err(|e| e.to_string())?.len();
            files.push((name, len));
        }
        return encode(&files);
    };
    // Only files of this snapshot, by their listed names.
    if !names.contains(&name) {
        return Err(format!("snapshot {db_id}/{snapshot_id} has no file {name:?}"));
    }
    let file = fs.open(&dir.join(&name)).map_err(|e| e.to_string())?;
    let len = file.len().saturating_sub(offset).min(SNAPSHOT_CHUNK);
    let mut chunk = vec![0u8; len as usize];
    file.read_exact_at(offset, &mut chunk).map_err(|e| e.to_string())?;
    encode(&serde_bytes::Bytes::new(&chunk))
}

impl Replica {
    /// Fetches snapshot `remote` from the leader that sent it, installs it on `raft` and clears the
    /// staged copies (the shard then links the files it needs). One fetch at a time per replica: a
    /// leader that re-sends while an earlier fetch still runs waits for it, then finds its files
    /// staged (or the snapshot installed). A failed fetch keeps what it staged for the retry.
    pub(crate) async fn fetch_and_install(
        &self,
        raft: &ShardRaft,
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        remote: ShardSnapshotRef,
    ) -> Result<SnapshotResponse<TypeConfig>, String> {
        let _one = self.shared.fetching.lock().await;
        let (group, leader) = (self.shared.group, *vote.leader_id().node_id());
        tracing::info!(group, leader, index = ?meta.last_log_id.map(|l| l.index), "fetching a snapshot from the leader");
        let timeout = self.snapshot_timeout();
        let staged = self.stage_snapshot(leader, &meta, remote, timeout).await.inspect_err(|e| {
            tracing::warn!(group, leader, error = %e, "snapshot fetch failed");
        })?;
        let snapshot = SnapshotOf::<TypeConfig, ShardSnapshotRef> { meta, snapshot: staged };
        let installed = raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string())?;
        self.clear_staging_except(None)?;
        Ok(installed)
    }

    /// Copies the files of snapshot `remote` from member `leader` into this replica's staging volume
    /// (see [`ShardStateMachine::staging_dir`]) and returns the snapshot as found there. Files already
    /// staged whole are kept, so an interrupted transfer resumes where it stopped (per file); memory
    /// holds one chunk at a time. `CURRENT` comes last, so a staged snapshot is complete only if whole.
    pub(crate) async fn stage_snapshot(
        &self,
        leader: u64,
        meta: &SnapshotMetaOf<TypeConfig>,
        remote: ShardSnapshotRef,
        timeout: Duration,
    ) -> Result<ShardSnapshotRef, String> {
        // A new replica knows no members yet: the snapshot's membership names the leader's address.
        let addr = meta.last_membership.membership().get_node(&leader).map(|n| n.addr.clone());
        let addr = addr
            .or_else(|| self.address_of(leader))
            .ok_or_else(|| format!("member {leader} is not in the group's membership"))?;
        let sm = &self.shared.sm;
        let fs = sm.fs();
        let staging = cairn_engine::resolve_volume(&cairn_engine::Volume::file_url(&sm.staging_dir()), &fs)
            .map_err(|e| e.to_string())?;
        let dir = cairn_engine::snapshot_dir(&staging, &remote.db_id, remote.snapshot_id);
        // What an earlier, failed fetch of another snapshot staged is of no use now.
        self.clear_staging_except(Some(&dir))?;
        fs.create_dir_all(&dir).map_err(|e| e.to_string())?;
        let call = |name: Option<String>, offset: u64| {
            let payload = encode(&(remote.db_id.clone(), remote.snapshot_id, name, offset));
            let addr = addr.clone();
            async move { self.send(leader, addr, RaftCallKind::SnapshotFile, payload?, timeout).await }
        };
        let mut files: Vec<(String, u64)> = decode(&call(None, 0).await?)?;
        files.sort_by_key(|(name, _)| name == "CURRENT");
        for (name, size) in files {
            if name.contains('/') || name.starts_with('.') || name.ends_with(".part") {
                return Err(format!("the leader listed a bad snapshot file name {name:?}"));
            }
            let path = dir.join(&name);
            if fs.exists(&path).map_err(|e| e.to_string())?
                && fs.open(&path).map_err(|e| e.to_string())?.len() == size
            {
                continue;
            }
            let part = dir.join(format!("{name}.part"));
            let mut out = fs.create(&part).map_err(|e| e.to_string())?;
            let mut offset = 0;
            while offset < size {
                let chunk =
                    decode::<serde_bytes::ByteBuf>(&call(Some(name.clone()), offset).await?)?.into_vec();
                if chunk.is_empty() {
                    return Err(format!("snapshot file {name} ended at {offset} of {size} bytes"));
                }
                out.append(&chunk).map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
                self.shared.snapshot_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            out.sync().map_err(|e| e.to_string())?;
            drop(out);
            fs.rename(&part, &path).map_err(|e| e.to_string())?;
        }
        fs.sync_dir(&dir).map_err(|e| e.to_string())?;
        Ok(ShardSnapshotRef { volume: staging.url, ..remote })
    }

    /// Removes every staged snapshot but the one in `keep` (after an install, none: the shard holds
    /// its own links to the files).
    fn clear_staging_except(&self, keep: Option<&std::path::Path>) -> Result<(), String> {
        let (fs, staging) = (self.shared.sm.fs(), self.shared.sm.staging_dir());
        let err = |e: cairn_engine::Error| e.to_string();
        if !fs.exists(&staging).map_err(err)? {
            return Ok(());
        }
        for shard in fs.list(&staging).map_err(err)? {
            let shard = staging.join(shard);
            let mut kept = false;
            for snapshot in fs.list(&shard).map_err(err)? {
                let snapshot = shard.join(snapshot);
                if keep == Some(snapshot.as_path()) {
                    kept = true;
                    continue;
                }
                for file in fs.list(&snapshot).map_err(err)? {
                    fs.remove(&snapshot.join(file)).map_err(err)?;
                }
                fs.remove_dir(&snapshot).map_err(err)?;
            }
            if !kept {
                fs.remove_dir(&shard).map_err(err)?;
            }
        }
        Ok(())
    }
}
