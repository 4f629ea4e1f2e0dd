//! The gRPC `Txn` service: interactive transactions coordinated by the node that began them.
//!
//! Each open transaction is held here by its handle (its id) until it commits or rolls back. At most
//! [`MAX_OPEN_TXNS`] are open at once; one idle for [`IDLE_TIMEOUT`] is rolled back (a sweep every
//! [`SWEEP_INTERVAL`], while any is open). A request whose transaction must run again (code `transaction_retry`) ends it: it is rolled
//! back and forgotten.

use crate::error::NodeError;
use crate::grpc::KvService;
use crate::txn_coord::{State, Txn};
use crate::types::Condition;
use crate::wire::{row, status_of, ts_in, ts_out};
use cairn_kv::reader::Versioned;
use cairn_kv::txn::{Isolation, TXN_ID_BYTES, TxnId};
use cairn_proto::kv;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Most transactions open on one node at once.
pub const MAX_OPEN_TXNS: usize = 10_000;
/// How long an open transaction may go without a request before it is rolled back.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle transactions are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

struct Open {
    txn: Arc<tokio::sync::Mutex<Txn>>,
    last_used: Instant,
}

/// The service (shares its node with the KV service).
#[derive(Clone)]
pub struct TxnService {
    kv: KvService,
    open: Arc<Mutex<HashMap<TxnId, Open>>>,
    // Whether a sweeper task runs (it ends once no transaction is open).
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for TxnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnService").field("open", &self.open.lock().len()).finish()
    }
}

impl TxnService {
    /// The service of `kv`'s node.
    pub fn new(kv: KvService) -> TxnService {
        TxnService { kv, open: Arc::default(), sweeping: Arc::default() }
    }

    /// Starts the sweeper unless it runs: every [`SWEEP_INTERVAL`] it drops the transactions idle for
    /// [`IDLE_TIMEOUT`] (each rolls back as it drops), and ends once none is open.
    fn sweep(&self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (open, sweeping) = (Arc::downgrade(&self.open), Arc::clone(&self.sweeping));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(open) = open.upgrade() else { break };
                let idle: Vec<Open> = {
                    let mut open = open.lock();
                    let ids: Vec<TxnId> = open
                        .iter()
                        .filter(|(_, o)| o.last_used.elapsed() >= IDLE_TIMEOUT)
                        .map(|(id, _)| *id)
                        .collect();
                    let idle = ids.iter().filter_map(|id| open.remove(id)).collect();
                    if open.is_empty() {
                        sweeping.store(false, Ordering::Release);
                        drop(open);
                        drop(idle);
                        break;
                    }
                    idle
                };
                drop(idle);
            }
        });
    }

    /// The open transaction `handle` names.
    fn find(&self, handle: &[u8]) -> Result<Arc<tokio::sync::Mutex<Txn>>, Status> {
        let id: [u8; TXN_ID_BYTES] =
            handle.try_into().map_err(|_| Status::invalid_argument("a transaction handle is 20 bytes"))?;
        let id = TxnId(id);
        let mut open = self.open.lock();
        match open.get_mut(&id) {
            Some(o) => {
                o.last_used = Instant::now();
                Ok(Arc::clone(&o.txn))
            }
            None => Err(Status::failed_precondition(format!(
                "transaction {id} is not open on this node: it ended, was idle for over {IDLE_TIMEOUT:?}, or \
                 began on another node (send its requests to that one)"
            ))),
        }
    }

    fn forget(&self, id: TxnId) {
        self.open.lock().remove(&id);
    }

    /// Runs `op` on the transaction `handle` names; a retryable error ends it.
    async fn with<T>(
        &self,
        handle: &[u8],
        op: impl AsyncFnOnce(&mut Txn) -> crate::error::Result<T>,
    ) -> Result<T, Status> {
        let txn = self.find(handle)?;
        let mut txn = txn.lock().await;
        let outcome = op(&mut txn).await;
        if matches!(outcome, Err(NodeError::TxnRetry(_))) || txn.state() != State::Open {
            let _ = txn.rollback().await;
            self.forget(txn.id());
        }
        outcome.map_err(status_of)
    }
}

fn condition(if_absent: bool, if_timestamp: Option<kv::Timestamp>) -> Result<Condition, Status> {
    match (if_absent, if_timestamp) {
        (true, Some(_)) => Err(Status::invalid_argument("give at most one of if_absent and if_timestamp")),
        (true, None) => Ok(Condition::IfAbsent),
        (false, Some(ts)) => Ok(Condition::IfTimestamp(ts_in(ts))),
        (false, None) => Ok(Condition::None),
    }
}

#[tonic::async_trait]
impl kv::txn_server::Txn for TxnService {
    async fn begin(
        &self,
        request: Request<kv::TxnBeginRequest>,
    ) -> Result<Response<kv::TxnBeginResponse>, Status> {
        let isolation = match kv::Isolation::try_from(request.into_inner().isolation) {
            Ok(kv::Isolation::Serializable) => Isolation::Serializable,
            Ok(kv::Isolation::Snapshot) => Isolation::Snapshot,
            Err(_) => return Err(Status::invalid_argument("unknown isolation")),
        };
        let txn = Txn::begin(self.kv.node()?, isolation).map_err(status_of)?;
        let (id, read_ts) = (txn.id(), txn.read_ts());
        {
            let mut open = self.open.lock();
            if open.len() >= MAX_OPEN_TXNS {
                // Idle ones are rolled back as they drop (their coordinator's background rollback).
                open.retain(|_, o| o.last_used.elapsed() < IDLE_TIMEOUT);
            }
            if open.len() >= MAX_OPEN_TXNS {
                return Err(Status::resource_exhausted(format!(
                    "{MAX_OPEN_TXNS} transactions are open on this node: commit or roll back some"
                )));
            }
            open.insert(id, Open { txn: Arc::new(tokio::sync::Mutex::new(txn)), last_used: Instant::now() });
        }
        self.sweep();
        Ok(Response::new(kv::TxnBeginResponse { txn: id.0.to_vec(), read_timestamp: Some(ts_out(read_ts)) }))
    }

    async fn get(&self, request: Request<kv::TxnGetRequest>) -> Result<Response<kv::TxnGetResponse>, Status> {
        let r = request.into_inner();
        let key = r.key;
        self.kv.node()?.check_txn_op(&key, None, Condition::None).map_err(status_of)?;
        let found = self.with(&r.txn, async |t| t.get(&key).await).await?;
        let row = found.map(|(value, timestamp)| row(key, Versioned { value, timestamp }));
        Ok(Response::new(kv::TxnGetResponse { row }))
    }

    async fn put(&self, request: Request<kv::TxnPutRequest>) -> Result<Response<kv::TxnPutResponse>, Status> {
        let r = request.into_inner();
        let condition = condition(r.if_absent, r.if_timestamp)?;
        let (key, value) = (r.key, r.value);
        self.kv.node()?.check_txn_op(&key, Some(&value), condition).map_err(status_of)?;
        self.with(&r.txn, async |t| t.put(&key, Some(value), condition).await).await?;
        Ok(Response::new(kv::TxnPutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<kv::TxnDeleteRequest>,
    ) -> Result<Response<kv::TxnPutResponse>, Status> {
        let r = request.into_inner();
        let key = r.key;
        self.kv.node()?.check_txn_op(&key, None, Condition::None).map_err(status_of)?;
        self.with(&r.txn, async |t| t.put(&key, None, Condition::None).await).await?;
        Ok(Response::new(kv::TxnPutResponse {}))
    }

    async fn commit(
        &self,
        request: Request<kv::TxnEndRequest>,
    ) -> Result<Response<kv::TxnCommitResponse>, Status> {
        let handle = request.into_inner().txn;
        let at = self.with(&handle, async |t| t.commit().await).await?;
        Ok(Response::new(kv::TxnCommitResponse { timestamp: Some(ts_out(at)) }))
    }

    async fn rollback(
        &self,
        request: Request<kv::TxnEndRequest>,
    ) -> Result<Response<kv::TxnRollbackResponse>, Status> {
        let handle = request.into_inner().txn;
        self.with(&handle, async |t| t.rollback().await).await?;
        Ok(Response::new(kv::TxnRollbackResponse {}))
    }
}
