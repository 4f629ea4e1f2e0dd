//! Interactive transactions over the `Txn` service: [`Client::begin`] opens one on the client's node
//! (which coordinates it), and [`Client::txn`] runs a closure in one, again from the start while the
//! cluster answers that the transaction must run again (code `transaction_retry`), with backoff.

use crate::{Client, ClientError, Versioned};
use cairn_proto::kv;
use cairn_proto::kv::txn_client::TxnClient;
use std::time::Duration;
use tonic::transport::Channel;

/// Most runs of one [`Client::txn`] closure.
pub const MAX_TXN_ATTEMPTS: u32 = 20;

/// An open transaction; its requests go to the node that began it. Dropped without a commit or a
/// rollback, it is rolled back by that node once idle (or aborted by others once its record expires).
#[derive(Debug)]
pub struct Transaction {
    inner: TxnClient<Channel>,
    handle: Vec<u8>,
    read_timestamp: kv::Timestamp,
}

/// Whether `e` says the transaction must run again from its start.
pub fn must_retry(e: &ClientError) -> bool {
    matches!(e, ClientError::Status(s)
        if s.code() == tonic::Code::Aborted
            && s.metadata().get("cairn-code").is_some_and(|c| c == "transaction_retry"))
}

impl Transaction {
    /// The timestamp its reads are at.
    pub fn read_timestamp(&self) -> kv::Timestamp {
        self.read_timestamp
    }

    /// `key`'s value as the transaction sees it (its own write, else the version at its read
    /// timestamp); `None` if it has no live value.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>, ClientError> {
        let request = kv::TxnGetRequest { txn: self.handle.clone(), key: key.to_vec() };
        let row = self.inner.get(request).await?.into_inner().row;
        Ok(row.map(|r| (r.value, r.timestamp.unwrap_or_default())))
    }

    /// Writes `value` to `key`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.put_request(kv::TxnPutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() })
            .await
    }

    /// A put with its conditions set in `request` (its handle is filled in).
    pub async fn put_request(&mut self, mut request: kv::TxnPutRequest) -> Result<(), ClientError> {
        request.txn = self.handle.clone();
        self.inner.put(request).await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn delete(&mut self, key: &[u8]) -> Result<(), ClientError> {
        let request = kv::TxnDeleteRequest { txn: self.handle.clone(), key: key.to_vec() };
        self.inner.delete(request).await?;
        Ok(())
    }

    /// Commits: the commit timestamp.
    pub async fn commit(mut self) -> Result<kv::Timestamp, ClientError> {
        let request = kv::TxnEndRequest { txn: self.handle.clone() };
        Ok(self.inner.commit(request).await?.into_inner().timestamp.unwrap_or_default())
    }

    /// Rolls back: nothing it wrote is kept.
    pub async fn rollback(mut self) -> Result<(), ClientError> {
        self.inner.rollback(kv::TxnEndRequest { txn: self.handle.clone() }).await?;
        Ok(())
    }
}

impl Client {
    /// Begins a transaction on this client's node.
    pub async fn begin(&self, isolation: kv::Isolation) -> Result<Transaction, ClientError> {
        let mut inner = TxnClient::new(self.channel.clone())
            .max_decoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MAX_MESSAGE_BYTES);
        let r = inner.begin(kv::TxnBeginRequest { isolation: isolation as i32 }).await?.into_inner();
        Ok(Transaction { inner, handle: r.txn, read_timestamp: r.read_timestamp.unwrap_or_default() })
    }

    /// Runs `body` in a transaction and commits it: the body's result and the commit timestamp. While
    /// the transaction must run again ([`must_retry`]), it does, from a new begin, after a pause that
    /// doubles (from 2 ms up to 200 ms), at most [`MAX_TXN_ATTEMPTS`] times. Any other error of the
    /// body rolls the transaction back and is returned.
    pub async fn txn<T>(
        &self,
        isolation: kv::Isolation,
        mut body: impl AsyncFnMut(&mut Transaction) -> Result<T, ClientError>,
    ) -> Result<(T, kv::Timestamp), ClientError> {
        let mut pause = Duration::from_millis(2);
        let mut attempt = 1;
        loop {
            let mut t = self.begin(isolation).await?;
            let outcome = match body(&mut t).await {
                Ok(value) => {
                    let (mut inner, txn) = (t.inner.clone(), t.handle.clone());
                    let committed = t.commit().await;
                    if let Err(e) = &committed
                        && !must_retry(e)
                    {
                        // Not ended for sure: a rollback frees its locks now if it is still open, and
                        // is refused if it committed after all.
                        let _ = inner.rollback(kv::TxnEndRequest { txn }).await;
                    }
                    committed.map(|ts| (value, ts))
                }
                Err(e) => {
                    // Ended by the node already if it must run again; otherwise ours to end.
                    if !must_retry(&e) {
                        let _ = t.rollback().await;
                    }
                    Err(e)
                }
            };
            match outcome {
                Err(e) if must_retry(&e) && attempt < MAX_TXN_ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
