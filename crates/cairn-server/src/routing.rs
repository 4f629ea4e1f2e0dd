//! Routing in a cluster (ARCHITECTURE decision 37): a key whose shard has no replica on this node is
//! forwarded, over the gRPC KV API, to a node that holds one.
//!
//! Each node keeps a view of the shard map (from its meta replica). A forwarded request carries a
//! [`Route`]: the shard it routed to and that shard's epoch in the sender's view. The receiver serves it
//! from its own replica, never forwards it again, and refuses it ([`NodeError::Misrouted`], gRPC
//! `ABORTED`) if it holds no replica of the shard or the epoch is not the shard's current one in its
//! own view (refreshed first when the sender's is newer or names a shard it does not know). A sender
//! that is refused tries the shard's other replicas (a split's new shard starts serving on each node as
//! that node's replica applies the split), then refreshes its view and routes again, at most
//! [`MAX_ROUTE_ATTEMPTS`] times.
//!
//! Reads try the shard's replicas in turn when one is unreachable. A write goes to the next replica
//! only if its connection was refused (nothing was sent); if the connection fails after the request may
//! have left, the outcome is unknown and the client gets a retryable 503 saying so (re-sending a
//! conditional put elsewhere could apply it twice).

use crate::error::{NodeError, Result};
use crate::types::{Ack, Condition, Read, ReadOptions, Route, Scanned, Versioned};
use crate::wire::{after_out, consistency_out, remote, token_in, ts_out, ts_required};
use cairn_cluster::meta::{ClusterState, MetaStore};
use cairn_cluster::placement::{NodeId, ShardDescriptor, ShardId, ShardMap};
use cairn_cluster::raft::ReadLevel;
use cairn_kv::{Committed, Write, WriteError};
use cairn_proto::kv;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Routings of one request (the first, and re-routings after a refusal).
pub const MAX_ROUTE_ATTEMPTS: usize = 3;
/// How long one forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's view of where shards are.
#[derive(Debug)]
pub(crate) struct View {
    pub map: ShardMap,
    pub addrs: BTreeMap<NodeId, String>,
    /// Every shard id below this one is or was in the map (ids are never reused).
    pub next_shard: u32,
}

impl View {
    fn of(state: &ClusterState) -> Option<View> {
        let map = state.map.clone()?;
        let addrs = state.nodes.iter().map(|(id, n)| (*id, n.grpc_addr.clone())).collect();
        let next_shard = state.next_shard_id.max(next_after(&map));
        Some(View { map, addrs, next_shard })
    }

    /// Whether shard `group` (named by a read's read-your-writes token) may hold writes to buckets of
    /// `ranges` that a replica of another shard, which serves those buckets on this node, has not
    /// seen: the group is a split's new shard this view does not know or does not show finished yet
    /// (the replica here may not have applied the split), or the map gives it some of those buckets
    /// (the replica here is behind the map). A shard a merge retired is neither: the shard that took
    /// its buckets took its writes, and serves them only once it applied the merge.
    pub fn may_hold_writes_for(&self, group: u64, ranges: &[(u16, u16)]) -> bool {
        let Ok(id) = u32::try_from(group) else { return true };
        let overlaps = |d: &ShardDescriptor| {
            d.ranges.iter().any(|&(f, l)| ranges.iter().any(|&(rf, rl)| f <= rl && rf <= l))
        };
        match self.map.shard(ShardId(id)) {
            Some(shard) => overlaps(shard),
            None => {
                id >= self.next_shard
                    || self.map.shards.iter().any(|s| s.splitting.is_some_and(|p| p.new == ShardId(id)))
            }
        }
    }
}

/// The id after every id `map` names (its shards' and the new shards of its splits under way).
fn next_after(map: &ShardMap) -> u32 {
    let ids = map.shards.iter().flat_map(|s| [Some(s.id), s.splitting.map(|p| p.new)]).flatten();
    ids.map(|id| id.0.saturating_add(1)).max().unwrap_or(0)
}

/// Routes requests for shards this node holds no replica of.
pub(crate) struct Router {
    node_id: NodeId,
    meta: MetaStore,
    view: parking_lot::RwLock<Arc<View>>,
    /// Woken whenever the view changes.
    changed: tokio::sync::Notify,
    channels: crate::channels::Channels,
    /// The cluster's message limit, both ways.
    max_message_bytes: usize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("node_id", &self.node_id).finish()
    }
}

/// Whether a failed call may be retried at another replica without risk of applying twice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: any failure to reach a replica tries the next.
    Reads,
    /// Writes: only a refused route is retried (nothing was applied).
    Writes,
}

impl Router {
    /// A router for node `node_id` with the map in `state`.
    pub(crate) fn new(
        node_id: NodeId,
        meta: MetaStore,
        state: &ClusterState,
        max_message_bytes: usize,
    ) -> Result<Router> {
        let view = View::of(state)
            .ok_or_else(|| NodeError::Internal("routing before the shards are placed".into()))?;
        Ok(Router {
            node_id,
            meta,
            view: parking_lot::RwLock::new(Arc::new(view)),
            changed: tokio::sync::Notify::new(),
            channels: crate::channels::Channels::new(FORWARD_TIMEOUT),
            max_message_bytes,
        })
    }

    /// The current view.
    pub(crate) fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read())
    }

    /// Re-reads the map through the meta group's leader.
    async fn refresh(&self) -> Result<Arc<View>> {
        let state = self
            .meta
            .read(ReadLevel::Strong)
            .await
            .map_err(|e| NodeError::Unavailable(format!("cannot refresh the shard map: {e}")))?;
        self.observe(&state).ok_or_else(|| NodeError::Internal("the shard map vanished".into()))
    }

    /// Takes `state`'s map as the view unless it is older; returns the view (`None`: `state` has no
    /// map). Map versions never go down along the meta log, but two states may share one (see
    /// `cairn_cluster::meta`), so at an equal version the one no shard's epoch went back in wins.
    pub(crate) fn observe(&self, state: &ClusterState) -> Option<Arc<View>> {
        let view = Arc::new(View::of(state)?);
        let mut current = self.view.write();
        let (new, old) = (&view.map, &current.map);
        let not_older = new.version > old.version
            || (new.version == old.version
                && old.shards.iter().all(|s| new.shard(s.id).is_some_and(|n| n.epoch >= s.epoch)));
        if not_older {
            let moved = view.map.version > current.map.version;
            *current = view;
            if moved {
                self.changed.notify_waiters();
            }
        }
        Some(Arc::clone(&current))
    }

    /// Waits (up to `wait`) until the view's map is past version `seen`.
    pub(crate) async fn moved_past(&self, seen: u64, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            if self.view().map.version > seen || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Checks a forwarded request's route against this node's view (refreshed first if the sender's
    /// is newer). The caller then checks that the shard is local.
    pub(crate) async fn check(&self, route: Route) -> Result<()> {
        let mut view = self.view();
        for attempt in 0..2 {
            // A shard this view does not know yet (a split's new shard the sender's newer map names)
            // is looked up again, as a newer epoch is.
            let Some(shard) = view.map.shard(route.shard) else {
                if attempt == 0 {
                    // Nothing was done: a failed refresh is a refusal the sender may route again.
                    view = self.refresh().await.map_err(|e| {
                        NodeError::Misrouted(format!("no shard {} in the map here ({e})", route.shard))
                    })?;
                    continue;
                }
                return Err(NodeError::Misrouted(format!("no shard {}", route.shard)));
            };
            if shard.epoch == route.epoch {
                return Ok(());
            }
            if shard.epoch > route.epoch {
                return Err(NodeError::Misrouted(format!(
                    "stale shard epoch: shard {} is at epoch {}, the request routed by {}",
                    route.shard, shard.epoch, route.epoch
                )));
            }
            view = self.refresh().await?;
        }
        Err(NodeError::Misrouted(format!(
            "shard {} epoch {} is newer than the map here",
            route.shard, route.epoch
        )))
    }

    /// Sends `call` for the shard owning `bucket` to a node holding a replica, re-routing (bounded) when
    /// refused.
    async fn forward<T, F, Fut>(&self, bucket: u16, retry: Retry, call: F) -> Result<T>
    where
        F: Fn(kv::kv_client::KvClient<Channel>, kv::Route) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut view = self.view();
        let mut last = None;
        for _ in 0..MAX_ROUTE_ATTEMPTS {
            let shard = view
                .map
                .shard_for_bucket(bucket)
                .ok_or_else(|| NodeError::Internal(format!("no shard owns bucket {bucket}")))?;
            match self.forward_to(&view, shard, retry, &call).await {
                Err(NodeError::Misrouted(why)) => {
                    last = Some(why);
                    view = self.refresh().await?;
                }
                other => return other,
            }
        }
        Err(NodeError::Unavailable(format!(
            "gave up routing after {MAX_ROUTE_ATTEMPTS} attempts: {}",
            last.unwrap_or_default()
        )))
    }

    async fn forward_to<T, F, Fut>(
        &self,
        view: &View,
        shard: &ShardDescriptor,
        retry: Retry,
        call: &F,
    ) -> Result<T>
    where
        F: Fn(kv::kv_client::KvClient<Channel>, kv::Route) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let route = kv::Route { shard: shard.id.0, epoch: shard.epoch };
        let mut last = NodeError::Unavailable(format!("shard {} has no replica on another node", shard.id));
        // A refusal by a live node says this view is stale: it outranks an unreachable one (a dead
        // node the map still names), so that the caller refreshes its view and routes again.
        let mut misrouted = None;
        for node in shard.replicas.iter().filter(|n| **n != self.node_id) {
            let Some(addr) = view.addrs.get(node) else { continue };
            let client = kv::kv_client::KvClient::new(self.channels.get(addr)?)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes);
            match call(client, route).await {
                Ok(t) => return Ok(t),
                Err(status) => {
                    let e = remote(&status, addr);
                    match (&e, retry) {
                        // That node does not serve the shard (yet: a split's new shard opens on each
                        // node as its replica applies the split): the next replica may; nothing was done.
                        (NodeError::Misrouted(_), _) => misrouted = Some(e),
                        (NodeError::Unavailable(_), Retry::Reads) => last = e,
                        // The connection was refused: nothing was sent, any request may go on.
                        (NodeError::Unavailable(_), Retry::Writes) if cairn_proto::never_sent(&status) => {
                            last = e
                        }
                        (NodeError::Unavailable(why), Retry::Writes) => {
                            return Err(NodeError::OutcomeUnknown(format!(
                                "forwarding the write to node {node} failed, its outcome is unknown: {why}"
                            )));
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Err(misrouted.unwrap_or(last))
    }

    pub(crate) async fn get(
        &self,
        bucket: u16,
        key: Vec<u8>,
        options: &ReadOptions,
    ) -> Result<Read<Option<Versioned>>> {
        let answer = self
            .forward(bucket, Retry::Reads, |mut c, route| {
                let request = kv::GetRequest {
                    key: key.clone(),
                    timestamp: options.at.map(ts_out),
                    consistency: consistency_out(options.consistency),
                    after: after_out(options),
                    route: Some(route),
                };
                async move { c.get(request).await.map(tonic::Response::into_inner) }
            })
            .await;
        match answer {
            Ok(r) => Ok(Read {
                value: Some(Versioned { value: r.value, timestamp: ts_required(r.value_timestamp)? }),
                behind: r.behind,
            }),
            Err(NodeError::NotFound(_)) => Ok(Read { value: None, behind: 0 }),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn put(
        &self,
        bucket: u16,
        key: Vec<u8>,
        value: Vec<u8>,
        condition: Condition,
    ) -> Result<Ack> {
        let (if_absent, if_timestamp) = match condition {
            Condition::None => (false, None),
            Condition::IfAbsent => (true, None),
            Condition::IfTimestamp(ts) => (false, Some(ts_out(ts))),
        };
        let r = self
            .forward(bucket, Retry::Writes, |mut c, route| {
                let request = kv::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    if_absent,
                    if_timestamp,
                    route: Some(route),
                };
                async move { c.put(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(Ack { timestamp: ts_required(r.timestamp)?, token: token_in(&r.token)? })
    }

    pub(crate) async fn delete(&self, bucket: u16, key: Vec<u8>) -> Result<Option<Ack>> {
        let answer = self
            .forward(bucket, Retry::Writes, |mut c, route| {
                let request = kv::DeleteRequest { key: key.clone(), route: Some(route) };
                async move { c.delete(request).await.map(tonic::Response::into_inner) }
            })
            .await;
        match answer {
            Ok(r) => Ok(Some(Ack { timestamp: ts_required(r.timestamp)?, token: token_in(&r.token)? })),
            Err(NodeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn batch(&self, bucket: u16, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<Ack> {
        let ops: Vec<kv::BatchOp> = ops
            .into_iter()
            .map(|(key, value)| kv::BatchOp {
                key,
                op: Some(match value {
                    Some(v) => kv::batch_op::Op::Put(v),
                    None => kv::batch_op::Op::Delete(true),
                }),
            })
            .collect();
        let r = self
            .forward(bucket, Retry::Writes, |mut c, route| {
                let request = kv::BatchRequest { ops: ops.clone(), route: Some(route) };
                async move { c.batch(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(Ack { timestamp: ts_required(r.timestamp)?, token: token_in(&r.token)? })
    }

    /// Sends a transaction's request to a node holding the shard of `bucket`: the leader's answer.
    pub(crate) async fn txn_command(
        &self,
        bucket: u16,
        command: &Write,
    ) -> Result<std::result::Result<Committed, WriteError>> {
        let command = postcard::to_stdvec(command)
            .map_err(|e| NodeError::Internal(format!("cannot encode a transaction's request: {e}")))?;
        let r = self
            .forward(bucket, Retry::Writes, |mut c, route| {
                let request = kv::TxnCommandRequest { command: command.clone(), route: Some(route) };
                async move { c.txn_command(request).await.map(tonic::Response::into_inner) }
            })
            .await?;
        postcard::from_bytes(&r.answer)
            .map_err(|e| NodeError::Internal(format!("a transaction's answer does not decode: {e}")))
    }

    /// Scans shard `shard` (by its first bucket) on a node holding it.
    pub(crate) async fn scan(
        &self,
        first_bucket: u16,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        options: &ReadOptions,
    ) -> Result<Read<Scanned>> {
        let limit = u32::try_from(limit).map_err(|_| NodeError::InvalidArgument("limit too large".into()))?;
        let chunks = self
            .forward(first_bucket, Retry::Reads, |mut c, route| {
                let request = kv::ScanRequest {
                    start: start.to_vec(),
                    end: end.map(<[u8]>::to_vec),
                    limit,
                    timestamp: options.at.map(ts_out),
                    consistency: consistency_out(options.consistency),
                    after: after_out(options),
                    route: Some(route),
                };
                async move {
                    // The channel's timeout covers the answer's start, not the stream: bound it all.
                    let drained = async {
                        let mut stream = c.scan(request).await?.into_inner();
                        let mut chunks = Vec::new();
                        while let Some(chunk) = stream.message().await? {
                            chunks.push(chunk);
                        }
                        Ok(chunks)
                    };
                    tokio::time::timeout(FORWARD_TIMEOUT, drained)
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::unavailable("the forwarded scan timed out")))
                }
            })
            .await?;
        let behind = chunks.first().map_or(0, |c| c.behind);
        let resume = chunks.last().and_then(|c| c.resume_key.clone());
        let mut rows = Vec::new();
        for row in chunks.into_iter().flat_map(|c| c.rows) {
            rows.push((row.key, Versioned { value: row.value, timestamp: ts_required(row.timestamp)? }));
        }
        Ok(Read { value: Scanned { rows, resume }, behind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(map: ShardMap) -> View {
        let next_shard = next_after(&map);
        View { map, addrs: BTreeMap::new(), next_shard }
    }

    #[test]
    fn tokens_of_split_shards_count_for_the_buckets_they_may_hold() {
        // Two shards over 1024 buckets: 0 holds 0..=511, 1 holds 512..=1023.
        let mut map = ShardMap::initial(1024, 2, &[1, 2, 3], 3).unwrap();
        let shard0 = [(0, 511)];
        // Another shard that holds none of shard 0's buckets: its token says nothing about them.
        assert!(!view(map.clone()).may_hold_writes_for(1, &shard0));
        // A shard this view has never seen (a split the map here does not show yet) may hold them.
        assert!(view(map.clone()).may_hold_writes_for(2, &shard0));
        assert!(view(map.clone()).may_hold_writes_for(u64::MAX, &shard0));
        // A split under way: its new shard may commit writes before the map records it.
        map.begin_split(ShardId(0), 256, ShardId(2)).unwrap();
        assert!(view(map.clone()).may_hold_writes_for(2, &shard0));
        // Recorded: it holds 256..=511, which a replica of shard 0 that has not applied the split
        // still serves here...
        map.finish_split(ShardId(0)).unwrap();
        assert!(view(map.clone()).may_hold_writes_for(2, &shard0));
        // ...and a replica that applied it no longer does.
        assert!(!view(map.clone()).may_hold_writes_for(2, &[(0, 255)]));
        // A shard a merge retired (an id below the next one, no longer in the map) holds nothing.
        let mut retired = view(map);
        retired.map.shards.retain(|s| s.id != ShardId(1));
        assert!(!retired.may_hold_writes_for(1, &shard0));
    }
}
