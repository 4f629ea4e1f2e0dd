//! A Rust client for cairn over its gRPC API (`cairn.kv.v1.Kv`). [`Client`] talks to one node (which
//! forwards what it does not hold); [`ClusterClient`] caches a cluster's shard map and sends each
//! request to a node holding the key's shard. [`Client::txn`] runs a closure in a transaction,
//! retried while the cluster says it must run again.

mod cluster;
mod txn;

pub use cairn_proto::kv;
use cairn_proto::kv::kv_client::KvClient;
pub use cluster::{ClusterClient, MAX_ATTEMPTS};
use tonic::transport::Channel;
pub use txn::{MAX_TXN_ATTEMPTS, Transaction, must_retry};

/// Rows a scan returns when no limit is given.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
/// Most rows a node returns in one scan page (its `limit` maximum); larger scans take several pages.
const MAX_PAGE_ROWS: u32 = 10_000;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The node answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The cluster's shard map could not be loaded or routed by.
    #[error("routing: {0}")]
    Routing(String),
    /// The node answered something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A connection to one node.
#[derive(Clone, Debug)]
pub struct Client {
    inner: KvClient<Channel>,
    channel: Channel,
}

/// A version as the API returns it: the value and its timestamp.
pub type Versioned = (Vec<u8>, kv::Timestamp);

impl Client {
    /// Connects to `addr` (`host:port` or a URL).
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let failed =
            |e: &dyn std::fmt::Display| ClientError::Connect { addr: url.clone(), message: e.to_string() };
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| failed(&e))?
            .connect()
            .await
            .map_err(|e| failed(&e))?;
        let inner = KvClient::new(channel.clone())
            // A node answers messages of up to its configured limit: accept up to the largest one.
            .max_decoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES);
        Ok(Client { inner, channel })
    }

    /// The newest version of `key` (at or below `at`), `None` if it has no live value. A strong
    /// (linearizable) read; [`Client::get_request`] takes other consistency levels.
    pub async fn get(
        &mut self,
        key: &[u8],
        at: Option<kv::Timestamp>,
    ) -> Result<Option<Versioned>, ClientError> {
        self.get_request(kv::GetRequest { key: key.to_vec(), timestamp: at, ..Default::default() }).await
    }

    /// A read with its options set in `request`.
    pub async fn get_request(&mut self, request: kv::GetRequest) -> Result<Option<Versioned>, ClientError> {
        match self.inner.get(request).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some((r.value, r.value_timestamp.unwrap_or_default())))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Writes `value` as `key`'s newest version; returns its timestamp.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<kv::Timestamp, ClientError> {
        self.put_request(kv::PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })
            .await
    }

    /// A put with its conditions set in `request`.
    pub async fn put_request(&mut self, request: kv::PutRequest) -> Result<kv::Timestamp, ClientError> {
        Ok(self.inner.put(request).await?.into_inner().timestamp.unwrap_or_default())
    }

    /// Deletes `key`; `None` if it had no live value.
    pub async fn delete(&mut self, key: &[u8]) -> Result<Option<kv::Timestamp>, ClientError> {
        self.delete_request(kv::DeleteRequest { key: key.to_vec(), route: None }).await
    }

    /// A delete as given in `request`.
    pub async fn delete_request(
        &mut self,
        request: kv::DeleteRequest,
    ) -> Result<Option<kv::Timestamp>, ClientError> {
        match self.inner.delete(request).await {
            Ok(r) => Ok(Some(r.into_inner().timestamp.unwrap_or_default())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Live keys in `[start, end)` in key order, at most `limit` (0: the default, 1000), read page by
    /// page (a node ends a page at its byte budget). Each page reads the newest versions (or those at
    /// `at`: give a timestamp for one consistent view across pages).
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        at: Option<kv::Timestamp>,
    ) -> Result<Vec<kv::Row>, ClientError> {
        let limit = if limit == 0 { DEFAULT_SCAN_LIMIT } else { limit };
        let (mut rows, mut from) = (Vec::new(), start.to_vec());
        loop {
            let left = limit - u32::try_from(rows.len()).unwrap_or(limit);
            let (page, resume) = self.scan_page(&from, end, left.min(MAX_PAGE_ROWS), at).await?;
            let progressed = !page.is_empty();
            rows.extend(page);
            match resume {
                // A page must move on (a node that answers an empty page with a resume key would
                // otherwise be asked the same forever).
                Some(next) if rows.len() < limit as usize && progressed && next > from => from = next,
                Some(_) if rows.len() < limit as usize => {
                    return Err(ClientError::Protocol("a scan page did not move past its start".into()));
                }
                _ => return Ok(rows),
            }
        }
    }

    /// One page of a scan: its rows and the key the next page starts at (`None`: the range is done).
    pub async fn scan_page(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
        at: Option<kv::Timestamp>,
    ) -> Result<(Vec<kv::Row>, Option<Vec<u8>>), ClientError> {
        let request = kv::ScanRequest {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit,
            timestamp: at,
            ..Default::default()
        };
        let mut stream = self.inner.scan(request).await?.into_inner();
        let (mut rows, mut resume) = (Vec::new(), None);
        while let Some(chunk) = stream.message().await? {
            rows.extend(chunk.rows);
            resume = chunk.resume_key;
        }
        Ok((rows, resume))
    }

    /// Applies `ops` atomically (all keys in one shard).
    pub async fn batch(&mut self, ops: Vec<kv::BatchOp>) -> Result<kv::Timestamp, ClientError> {
        Ok(self
            .inner
            .batch(kv::BatchRequest { ops, route: None })
            .await?
            .into_inner()
            .timestamp
            .unwrap_or_default())
    }

    /// The node's status.
    pub async fn status(&mut self) -> Result<kv::StatusResponse, ClientError> {
        Ok(self.inner.status(kv::StatusRequest {}).await?.into_inner())
    }
}
