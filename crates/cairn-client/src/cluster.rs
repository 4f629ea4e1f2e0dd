//! [`ClusterClient`]: a client that caches a cluster's shard map and sends each request straight to a
//! node holding the key's shard (its leader, when known), tagged with the shard's epoch, so no node
//! has to forward it.
//!
//! The map and node addresses come from any node's `cairn.cluster.v1.Cluster/State`; the leader hints
//! from the nodes' KV status. A node refuses a request routed by a stale epoch, or one for a shard it
//! holds no replica of, with `ABORTED`: nothing was done, so the client refreshes its map and sends it
//! again (at most [`MAX_ATTEMPTS`] times). A stale leader hint costs one hop inside the shard's Raft
//! group, never a wrong answer. A write whose connection fails is not re-sent (its outcome is unknown:
//! the error says so) unless the connection was refused (nothing was sent); a read is retried at the
//! shard's other replicas.

use crate::{Client, ClientError, Versioned, kv};
use cairn_proto::cluster::{StateRequest, cluster_client::ClusterClient as StateClient};
use std::collections::{BTreeMap, HashMap};

/// Sends of one request (the first, then re-sends after a refresh).
pub const MAX_ATTEMPTS: usize = 3;
/// How long connecting to a node, or a status call while loading the map, may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One shard as the client routes to it.
#[derive(Clone, Debug)]
struct ShardRoute {
    id: u32,
    epoch: u64,
    replicas: Vec<u64>,
    leader: Option<u64>,
}

/// The cached map.
#[derive(Clone, Debug, Default)]
struct Routes {
    total_buckets: u32,
    shards: Vec<ShardRoute>,
    /// Every shard's bucket ranges (first, last, index in `shards`), in bucket order.
    ranges: Vec<(u16, u16, usize)>,
    addrs: BTreeMap<u64, String>,
}

#[derive(serde::Deserialize)]
struct StateNode {
    grpc_addr: String,
}

#[derive(serde::Deserialize)]
struct StateShard {
    id: u32,
    #[serde(alias = "buckets", deserialize_with = "ranges_or_pair")]
    ranges: Vec<(u16, u16)>,
    replicas: Vec<u64>,
    epoch: u64,
}

/// A shard's ranges: a list of pairs, or the one pair of a map written before shards had several.
fn ranges_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(u16, u16)>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Ranges {
        Several(Vec<(u16, u16)>),
        One((u16, u16)),
    }
    Ok(match <Ranges as serde::Deserialize>::deserialize(d)? {
        Ranges::Several(ranges) => ranges,
        Ranges::One(range) => vec![range],
    })
}

#[derive(serde::Deserialize)]
struct StateMap {
    total_buckets: u32,
    shards: Vec<StateShard>,
}

#[derive(serde::Deserialize)]
struct State {
    nodes: BTreeMap<u64, StateNode>,
    map: Option<StateMap>,
}

/// A client of a whole cluster (see the module doc).
#[derive(Debug)]
pub struct ClusterClient {
    seeds: Vec<String>,
    routes: Routes,
    conns: HashMap<String, Client>,
    /// Spreads eventual reads over a shard's replicas.
    turn: usize,
}

fn routing(message: impl Into<String>) -> ClientError {
    ClientError::Routing(message.into())
}

impl ClusterClient {
    /// Connects through the first of `seeds` (nodes' gRPC addresses) that answers, and loads the map.
    pub async fn connect(seeds: &[String]) -> Result<ClusterClient, ClientError> {
        if seeds.is_empty() {
            return Err(routing("no seed addresses"));
        }
        let mut client = ClusterClient {
            seeds: seeds.to_vec(),
            routes: Routes::default(),
            conns: HashMap::new(),
            turn: 0,
        };
        client.refresh().await?;
        Ok(client)
    }

    /// Reloads the shard map, node addresses and leader hints.
    pub async fn refresh(&mut self) -> Result<(), ClientError> {
        let mut last = None;
        let mut addrs: Vec<String> = self.routes.addrs.values().cloned().collect();
        addrs.extend(self.seeds.iter().cloned());
        for addr in addrs {
            match self.load(&addr).await {
                Ok(routes) => {
                    self.routes = routes;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| routing("no node answered")))
    }

    async fn load(&mut self, addr: &str) -> Result<Routes, ClientError> {
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let unanswered = |url: &str| ClientError::Connect {
            addr: url.to_string(),
            message: format!("no answer in {CALL_TIMEOUT:?}"),
        };
        let mut state_client = tokio::time::timeout(CALL_TIMEOUT, StateClient::connect(url.clone()))
            .await
            .map_err(|_| unanswered(&url))?
            .map_err(|e| ClientError::Connect { addr: url.clone(), message: e.to_string() })?;
        let request = StateRequest { linearizable: false, forwarded: false };
        let reply = tokio::time::timeout(CALL_TIMEOUT, state_client.state(request))
            .await
            .map_err(|_| unanswered(&url))??;
        let state: State = serde_json::from_slice(&reply.into_inner().state_json)
            .map_err(|e| routing(format!("{addr} has no cluster state: {e}")))?;
        let map = state.map.ok_or_else(|| routing("the cluster has not placed its shards yet"))?;
        let addrs: BTreeMap<u64, String> = state.nodes.into_iter().map(|(id, n)| (id, n.grpc_addr)).collect();
        let mut ranges = Vec::new();
        let mut shards = Vec::with_capacity(map.shards.len());
        for (i, s) in map.shards.into_iter().enumerate() {
            ranges.extend(s.ranges.iter().map(|&(first, last)| (first, last, i)));
            shards.push(ShardRoute { id: s.id, epoch: s.epoch, replicas: s.replicas, leader: None });
        }
        ranges.sort_unstable();
        // Leader hints: each node reports the leader of every shard it holds a replica of (a node that
        // does not answer in time gives none).
        for (node, addr) in &addrs {
            if !shards.iter().any(|s| s.replicas.contains(node)) {
                continue;
            }
            let Ok(conn) = self.conn(addr).await else { continue };
            let asked = tokio::time::timeout(CALL_TIMEOUT, conn.status()).await;
            let Ok(Ok(status)) = asked else { continue };
            for reported in status.shards {
                let Some(r) = reported.replication else { continue };
                if let Some(s) = shards.iter_mut().find(|s| s.id == reported.shard)
                    && r.leader != 0
                    && s.leader.is_none()
                {
                    s.leader = Some(r.leader);
                }
            }
        }
        Ok(Routes { total_buckets: map.total_buckets, shards, ranges, addrs })
    }

    async fn conn(&mut self, addr: &str) -> Result<&mut Client, ClientError> {
        if !self.conns.contains_key(addr) {
            let client =
                tokio::time::timeout(CALL_TIMEOUT, Client::connect(addr)).await.map_err(|_| {
                    ClientError::Connect {
                        addr: addr.to_string(),
                        message: format!("no answer in {CALL_TIMEOUT:?}"),
                    }
                })??;
            self.conns.insert(addr.to_string(), client);
        }
        self.conns.get_mut(addr).ok_or_else(|| routing("connection vanished"))
    }

    /// The id of the shard owning `key`, as the cached map says.
    pub fn shard_of(&self, key: &[u8]) -> Option<u32> {
        let bucket = cairn_proto::bucket_of(key, self.routes.total_buckets);
        let i = self.routes.ranges.partition_point(|r| r.1 < bucket);
        let range = self.routes.ranges.get(i).filter(|r| r.0 <= bucket)?;
        self.routes.shards.get(range.2).map(|s| s.id)
    }

    /// The ids of the shards in the cached map.
    pub fn shard_ids(&self) -> Vec<u32> {
        self.routes.shards.iter().map(|s| s.id).collect()
    }

    /// The shard owning `key`, and the node addresses to try, best first (`spread`: start at the next
    /// replica in turn instead of the leader).
    fn targets(&mut self, key: &[u8], spread: bool) -> Result<(kv::Route, Vec<String>), ClientError> {
        let bucket = cairn_proto::bucket_of(key, self.routes.total_buckets);
        let i = self.routes.ranges.partition_point(|r| r.1 < bucket);
        let shard = (self.routes.ranges.get(i))
            .filter(|r| r.0 <= bucket)
            .and_then(|r| self.routes.shards.get(r.2))
            .ok_or_else(|| routing(format!("no shard owns bucket {bucket}")))?;
        let mut order = shard.replicas.clone();
        if spread && !order.is_empty() {
            self.turn = self.turn.wrapping_add(1);
            let by = self.turn % order.len();
            order.rotate_left(by);
        } else if let Some(leader) = shard.leader
            && let Some(at) = order.iter().position(|r| *r == leader)
        {
            order.swap(0, at);
        }
        let addrs = order.iter().filter_map(|n| self.routes.addrs.get(n).cloned()).collect();
        Ok((kv::Route { shard: shard.id, epoch: shard.epoch }, addrs))
    }

    /// Sends a request for `key` with `call`, re-routing after refusals; `retry_elsewhere`: a node
    /// that cannot be reached is skipped for the shard's next replica (reads only).
    async fn send<T, F, Fut>(
        &mut self,
        key: &[u8],
        spread: bool,
        retry_elsewhere: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Client, kv::Route) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let (route, addrs) = self.targets(key, spread)?;
            let mut refused = false;
            for addr in addrs {
                let client = match self.conn(&addr).await {
                    Ok(c) => c.clone(),
                    // Nothing was sent: any request may go to the next replica.
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                match call(client, route).await {
                    Err(ClientError::Status(s)) if s.code() == tonic::Code::Aborted => {
                        last = Some(ClientError::Status(s));
                        refused = true;
                        break;
                    }
                    // Reads try the next replica; writes only if nothing was sent.
                    Err(ClientError::Status(s))
                        if s.code() == tonic::Code::Unavailable
                            && (retry_elsewhere || cairn_proto::never_sent(&s)) =>
                    {
                        self.conns.remove(&addr);
                        last = Some(ClientError::Status(s));
                    }
                    other => return other,
                }
            }
            if !refused && !retry_elsewhere && !matches!(last, Some(ClientError::Connect { .. })) {
                break;
            }
            // A node that cannot be reached may have been replaced: reload the map (if any node answers).
            if let Err(e) = self.refresh().await {
                last = Some(e);
            }
        }
        Err(last.unwrap_or_else(|| routing("no replica answered")))
    }

    /// The newest version of `key` at `consistency`; `None` if it has no live value.
    pub async fn get(
        &mut self,
        key: &[u8],
        consistency: kv::Consistency,
    ) -> Result<Option<Versioned>, ClientError> {
        let spread = consistency == kv::Consistency::Eventual;
        self.send(key, spread, true, |mut client, route| {
            let request = kv::GetRequest {
                key: key.to_vec(),
                consistency: consistency as i32,
                route: Some(route),
                ..Default::default()
            };
            async move { client.get_request(request).await }
        })
        .await
    }

    /// Writes `value` as `key`'s newest version; returns its timestamp.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<kv::Timestamp, ClientError> {
        self.send(key, false, false, |mut client, route| {
            let request = kv::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                route: Some(route),
                ..Default::default()
            };
            async move { client.put_request(request).await }
        })
        .await
    }

    /// Deletes `key`; `None` if it had no live value.
    pub async fn delete(&mut self, key: &[u8]) -> Result<Option<kv::Timestamp>, ClientError> {
        self.send(key, false, false, |mut client, route| {
            let request = kv::DeleteRequest { key: key.to_vec(), route: Some(route) };
            async move { client.delete_request(request).await }
        })
        .await
    }
}
