//! The gRPC KV service (`cairn.kv.v1.Kv`), over the same [`Node`] as the REST API, and the one place
//! server errors become gRPC status codes.

use crate::node::Node;
use crate::types::{Condition, Scanned};
pub use crate::wire::{CODE_HEADER, meta_status, status_of};
use crate::wire::{read_options, route_in, row, token_text, ts_in, ts_out};
use cairn_proto::kv;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Most rows per streamed scan chunk.
const SCAN_CHUNK: usize = 256;
/// Most bytes of a streamed scan chunk's rows (a larger row goes alone). Half the smallest message
/// limit, so a chunk fits in a message whatever the node's limit (which the largest row fits in too).
const SCAN_CHUNK_BYTES: usize = 512 << 10;
/// Bytes a row takes in a chunk besides its key and value (field tags, lengths, timestamp).
const SCAN_ROW_OVERHEAD: usize = 32;

/// The service.
#[derive(Clone, Debug)]
pub struct KvService {
    // Set once the node's shards are up (a cluster member serves gRPC before that, for joins and Raft),
    // cleared at shutdown (connection tasks may outlive the server and must not keep the node open).
    node: Arc<parking_lot::RwLock<Option<Arc<Node>>>>,
}

impl KvService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> KvService {
        KvService { node: Arc::new(parking_lot::RwLock::new(Some(node))) }
    }

    /// A service that answers `UNAVAILABLE` until [`KvService::ready`] gives it its node.
    pub fn starting() -> KvService {
        KvService { node: Arc::new(parking_lot::RwLock::new(None)) }
    }

    /// Starts serving `node`.
    pub fn ready(&self, node: Arc<Node>) {
        *self.node.write() = Some(node);
    }

    /// Stops serving (every clone): later calls answer `UNAVAILABLE`, and the node is let go.
    pub fn retire(&self) {
        *self.node.write() = None;
    }

    pub(crate) fn node(&self) -> Result<Arc<Node>, Status> {
        self.node.read().clone().ok_or_else(|| {
            Status::unavailable(
                "the node is not serving keys (starting: the cluster has not placed its shards yet; or shutting down)",
            )
        })
    }
}

/// A scan page as stream chunks of at most [`SCAN_CHUNK`] rows and [`SCAN_CHUNK_BYTES`] (a larger row
/// alone): `behind` on the first, the resume key on the last.
fn scan_chunks(page: Scanned, behind: u64) -> Vec<kv::ScanResponse> {
    let mut chunks = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0usize);
    for (key, v) in page.rows {
        let size = key.len() + v.value.len() + SCAN_ROW_OVERHEAD;
        if !chunk.is_empty() && (chunk.len() == SCAN_CHUNK || bytes + size > SCAN_CHUNK_BYTES) {
            chunks.push(kv::ScanResponse { rows: std::mem::take(&mut chunk), behind: 0, resume_key: None });
            bytes = 0;
        }
        bytes += size;
        chunk.push(row(key, v));
    }
    if !chunk.is_empty() || chunks.is_empty() {
        chunks.push(kv::ScanResponse { rows: chunk, behind: 0, resume_key: None });
    }
    if let Some(first) = chunks.first_mut() {
        first.behind = behind;
    }
    if let Some(last) = chunks.last_mut() {
        last.resume_key = page.resume;
    }
    chunks
}

#[tonic::async_trait]
impl kv::kv_server::Kv for KvService {
    async fn get(&self, request: Request<kv::GetRequest>) -> Result<Response<kv::GetResponse>, Status> {
        let r = request.into_inner();
        let options = read_options(r.timestamp, r.consistency, &r.after, r.route)?;
        let read = self.node()?.get_async(r.key, options).await.map_err(status_of)?;
        let v = read.value.ok_or_else(|| Status::not_found("no value for this key"))?;
        Ok(Response::new(kv::GetResponse {
            header: Some(ts_out(self.node()?.now())),
            value: v.value,
            value_timestamp: Some(ts_out(v.timestamp)),
            behind: read.behind,
        }))
    }

    async fn put(&self, request: Request<kv::PutRequest>) -> Result<Response<kv::PutResponse>, Status> {
        let r = request.into_inner();
        let condition = match (r.if_absent, r.if_timestamp) {
            (true, Some(_)) => {
                return Err(Status::invalid_argument("give at most one of if_absent and if_timestamp"));
            }
            (true, None) => Condition::IfAbsent,
            (false, Some(ts)) => Condition::IfTimestamp(ts_in(ts)),
            (false, None) => Condition::None,
        };
        let ack = self
            .node()?
            .put_async(r.key, r.value, condition, r.route.map(route_in))
            .await
            .map_err(status_of)?;
        Ok(Response::new(kv::PutResponse {
            timestamp: Some(ts_out(ack.timestamp)),
            token: token_text(ack.token),
        }))
    }

    async fn txn_command(
        &self,
        request: Request<kv::TxnCommandRequest>,
    ) -> Result<Response<kv::TxnCommandResponse>, Status> {
        let r = request.into_inner();
        let route = r
            .route
            .map(route_in)
            .ok_or_else(|| Status::invalid_argument("a transaction's request needs a route"))?;
        let command: cairn_kv::Write = postcard::from_bytes(&r.command)
            .map_err(|e| Status::invalid_argument(format!("a transaction's request does not decode: {e}")))?;
        if !command.is_transactional() {
            return Err(Status::invalid_argument("not a transaction's request"));
        }
        let answer = self.node()?.txn_request_routed(command, route).await.map_err(status_of)?;
        let answer = postcard::to_stdvec(&answer)
            .map_err(|e| Status::internal(format!("cannot encode a transaction's answer: {e}")))?;
        Ok(Response::new(kv::TxnCommandResponse { answer }))
    }

    async fn delete(
        &self,
        request: Request<kv::DeleteRequest>,
    ) -> Result<Response<kv::DeleteResponse>, Status> {
        let r = request.into_inner();
        let ack = self.node()?.delete_async(r.key, r.route.map(route_in)).await.map_err(status_of)?;
        let ack = ack.ok_or_else(|| Status::not_found("no value for this key"))?;
        Ok(Response::new(kv::DeleteResponse {
            timestamp: Some(ts_out(ack.timestamp)),
            token: token_text(ack.token),
        }))
    }

    type ScanStream = Pin<Box<dyn Stream<Item = Result<kv::ScanResponse, Status>> + Send>>;

    async fn scan(&self, request: Request<kv::ScanRequest>) -> Result<Response<Self::ScanStream>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { crate::types::DEFAULT_SCAN_LIMIT } else { r.limit as usize };
        let options = read_options(r.timestamp, r.consistency, &r.after, r.route)?;
        let read = self.node()?.scan_async(r.start, r.end, limit, options).await.map_err(status_of)?;
        let chunks = scan_chunks(read.value, read.behind);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn batch(&self, request: Request<kv::BatchRequest>) -> Result<Response<kv::BatchResponse>, Status> {
        let r = request.into_inner();
        let route = r.route.map(route_in);
        let mut ops = Vec::with_capacity(r.ops.len());
        for (i, op) in r.ops.into_iter().enumerate() {
            match op.op {
                Some(kv::batch_op::Op::Put(value)) => ops.push((op.key, Some(value))),
                Some(kv::batch_op::Op::Delete(_)) => ops.push((op.key, None)),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "batch operation {i} is neither put nor delete"
                    )));
                }
            }
        }
        let ack = self.node()?.batch_async(ops, route).await.map_err(status_of)?;
        Ok(Response::new(kv::BatchResponse {
            timestamp: Some(ts_out(ack.timestamp)),
            token: token_text(ack.token),
        }))
    }

    async fn status(
        &self,
        _request: Request<kv::StatusRequest>,
    ) -> Result<Response<kv::StatusResponse>, Status> {
        let node = self.node()?;
        let shards = node
            .status()
            .into_iter()
            .map(|s| kv::ShardStatus {
                shard: s.shard as u32,
                first_bucket: s.buckets.first().map_or(0, |r| u32::from(*r.start())),
                last_bucket: s.buckets.last().map_or(0, |r| u32::from(*r.end())),
                sst_bytes: s.sst_bytes,
                memtable_bytes: s.memtable_bytes,
                live_bytes: s.live_bytes,
                size_split_at: s.size_split_at.map_or(0, u32::from),
                requests_per_sec: s.requests_per_sec,
                load_split_at: s.load_split_at.map_or(0, u32::from),
                replication: s.replication.map(|g| kv::Replication {
                    role: g.role.to_string(),
                    leader: g.leader.unwrap_or(0),
                    term: g.term,
                    committed: g.committed.unwrap_or(0),
                    applied: g.applied.unwrap_or(0),
                    fenced: g.checks.fenced.unwrap_or_default(),
                    lag: g.lag.into_iter().collect(),
                    stalled: g.stalled.into_iter().collect(),
                }),
            })
            .collect();
        Ok(Response::new(kv::StatusResponse {
            store: node.config().store.display().to_string(),
            total_buckets: node.total_buckets(),
            sync: node.config().sync,
            shards,
            node_id: node.node_id().unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::types::Versioned;
    use Scanned;

    // Regression: six 1 MiB rows made one 6 MiB chunk, over the client's 4 MiB message limit.
    #[test]
    fn scan_chunks_are_bounded_in_bytes() {
        let v = |n: usize| Versioned { value: vec![1; n], timestamp: Timestamp::default() };
        let rows = (0..6u8).map(|i| (vec![i], v(1 << 20))).collect();
        let chunks = scan_chunks(Scanned { rows, resume: Some(b"z".to_vec()) }, 7);
        assert_eq!(chunks.len(), 6);
        assert!(chunks.iter().all(|c| c.rows.len() == 1));
        assert_eq!((chunks[0].behind, chunks[1].behind), (7, 0));
        assert_eq!(chunks[5].resume_key.as_deref(), Some(&b"z"[..]));
        assert!(chunks[..5].iter().all(|c| c.resume_key.is_none()));
        let small = (0..600u16).map(|i| (i.to_be_bytes().to_vec(), v(10))).collect();
        let chunks = scan_chunks(Scanned { rows: small, resume: None }, 0);
        assert_eq!(chunks.iter().map(|c| c.rows.len()).collect::<Vec<_>>(), vec![256, 256, 88]);
        // Rows that fill a chunk partway close it before it would cross the budget.
        let mid = (0..5u8).map(|i| (vec![i], v(200 << 10))).collect();
        let chunks = scan_chunks(Scanned { rows: mid, resume: None }, 0);
        assert_eq!(chunks.iter().map(|c| c.rows.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        for c in &chunks {
            assert!(prost::Message::encoded_len(c) <= 1 << 20, "{}", prost::Message::encoded_len(c));
        }
        let empty = scan_chunks(Scanned::default(), 3);
        assert_eq!((empty.len(), empty[0].behind, empty[0].rows.len()), (1, 3, 0));
    }
}
