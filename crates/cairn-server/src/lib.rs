//! cairn server: a node's store (several engine shards, MVCC with hybrid-logical-clock timestamps) and
//! the APIs over it: REST (this crate's `rest` module), health, Prometheus metrics and status.
//!
//! The seam between "serve a request" and "the shard that holds the key" is [`node::Node`]: the APIs
//! call it with keys, timestamps and consistency levels; it routes each key to its bucket's shard, which
//! is local (a standalone node) or this node's replica of the shard's Raft group
//! ([`replicated`]). The APIs do not change between the two.

pub mod backup;
mod channels;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod grpc;
pub mod grpc_txn;
pub mod http_server;
mod layout;
mod load;
pub mod metrics;
pub mod node;
pub mod params;
pub mod replicated;
pub mod rest;
pub mod routing;
pub mod txn_coord;
pub mod types;
pub mod wire;
mod writer;

pub use cairn_cluster::raft::Role;
/// The clock and the MVCC codec live in the KV layer.
pub use cairn_kv::{hlc, mvcc};

use crate::error::{NodeError, Result};
use crate::node::{Node, NodeConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How long shutdown waits for another replica to take over each group this node leads.
const HAND_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often an idle gRPC connection is probed (an HTTP/2 ping).
const GRPC_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a probe may go unanswered before the connection is dropped.
const GRPC_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long shutdown waits for requests and connections to finish before closing them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything `cairn start` configures.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The store.
    pub node: NodeConfig,
    /// Where the HTTP API listens (port 0: any free port).
    pub http_addr: SocketAddr,
    /// Where the gRPC API listens (port 0: any free port).
    pub grpc_addr: SocketAddr,
    /// Run as a member of a cluster (`cairn start --join`); `None`: standalone, or statically
    /// replicated by `node.replication`.
    pub cluster: Option<cluster::ClusterConfig>,
    /// What one HTTP client may hold (connections, timeouts, head size).
    pub http: http_server::HttpLimits,
    /// A standalone node restores this backup (URL, id) into its empty store before it serves
    /// (`cairn start --restore-from`).
    pub restore_from: Option<(String, u64)>,
}

/// The addresses a running node serves on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// HTTP (REST, health, metrics, status).
    pub http: SocketAddr,
    /// gRPC (`cairn.kv.v1.Kv`).
    pub grpc: SocketAddr,
}

/// Opens the store, serves HTTP and gRPC until `shutdown` resolves, then lets in-flight requests finish
/// and closes the store cleanly. `on_ready` gets the bound addresses once both listen.
///
/// A cluster member (`config.cluster`) serves gRPC (joins, Raft traffic) from the start but keys only
/// once it is a member and the cluster has placed its shards ([`cluster`]); its HTTP API starts then.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> Result<()> {
    // A standalone or statically replicated node opens its store first: a locked store fails fast.
    let early = match &config.cluster {
        None => Some(Arc::new(Node::start(config.node.clone()).await?)),
        Some(_) => None,
    };
    if let Some((from, id)) = &config.restore_from {
        let Some(node) = &early else {
            return Err(NodeError::Startup(
                "--restore-from restores a standalone node; restore a cluster with `cairn restore`".into(),
            ));
        };
        backup::restore_at_start(Arc::clone(node), &config.node.store, from, *id).await?;
    }
    let bind = |addr: SocketAddr, what: &'static str| async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot listen for {what} on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| NodeError::Startup(e.to_string()))?;
        Ok::<_, NodeError>((listener, local))
    };
    let (http_listener, http) = bind(config.http_addr, "HTTP").await?;
    let (grpc_listener, grpc) = bind(config.grpc_addr, "gRPC").await?;
    let membership = match &config.cluster {
        None => None,
        Some(cluster) => {
            let mut node = config.node.clone();
            node.store = node::absolute_store(&node.store)?;
            let advertise_grpc = cluster.advertise_grpc.clone().unwrap_or_else(|| grpc.to_string());
            let advertise_http = cluster.advertise_http.clone().unwrap_or_else(|| http.to_string());
            let replication = node
                .replication
                .clone()
                .unwrap_or_else(|| replicated::ReplicationConfig::new(1, std::collections::BTreeMap::new()));
            Some(
                cluster::Membership::open(
                    &node,
                    cluster.clone(),
                    advertise_grpc,
                    advertise_http,
                    replication,
                )
                .await?,
            )
        }
    };
    let events = match (&membership, &early) {
        (Some(m), _) => Arc::clone(&m.plumbing().events),
        (None, Some(node)) => node.events(),
        (None, None) => events::Events::new(),
    };
    let shutting_down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutting_down);
    // `requested`: a signal came; `stop`: the servers stop (after leadership was handed over, while
    // the Raft service still runs).
    let (requested_tx, requested_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::Release);
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = requested_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc_incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        |conn: std::io::Result<tokio::net::TcpStream>| {
            conn.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        },
    );
    let kv = grpc::KvService::starting();
    let backups = membership.as_ref().map(|m| backup::BackupService::starting(Arc::clone(m)));
    // Peers' Raft traffic for every group on this node (a standalone node serves none).
    let raft = match (&membership, &early) {
        (Some(m), _) => Some(m.plumbing().service.clone()),
        (None, Some(node)) => node.raft_service(),
        (None, None) => None,
    };
    let max_message = config.node.max_message_bytes;
    let grpc_server = tonic::transport::Server::builder()
        // A peer or client that vanished without closing its connection is found and dropped.
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_service(
            cairn_proto::kv::kv_server::KvServer::new(kv.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            cairn_proto::kv::txn_server::TxnServer::new(grpc_txn::TxnService::new(kv.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_optional_service(raft.map(|s| s.into_server(max_message)))
        .add_optional_service(membership.as_ref().map(|m| m.service(max_message)))
        .add_optional_service(backups.clone().map(|b| b.into_server(max_message)))
        .serve_with_incoming_shutdown(grpc_incoming, stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc_server);
    // Ends the gRPC server if its connections outlast the shutdown grace (the task holds the node).
    let grpc_abort = grpc_task.abort_handle();
    tracing::info!(%http, %grpc, store = %config.node.store.display(), "listening");
    on_ready(Bound { http, grpc });
    let node = match (early, &membership) {
        (Some(node), _) => node,
        (None, Some(m)) => {
            let started = async {
                let (id, state) = m.establish().await?;
                let (node_config, total_buckets, plans) = m.plan(&config.node, id, &state);
                let mut node_config = node_config;
                node_config.store = m.store().to_path_buf();
                m.retire_stale(&node_config, id, &state).await?;
                let mut node =
                    Node::start_replicas(node_config, m.plumbing().clone(), total_buckets, plans).await?;
                node.set_router(routing::Router::new(
                    id,
                    m.meta()?.clone(),
                    &state,
                    config.node.max_message_bytes,
                )?);
                Ok::<_, NodeError>((node, id))
            };
            let outcome = tokio::select! {
                node = started => node.map(Some),
                () = stopped(requested_rx.clone()) => {
                    tracing::info!("stopped before the node served keys");
                    Ok(None)
                }
            };
            match outcome {
                Ok(Some((node, id))) => {
                    let node = Arc::new(node);
                    // Replica moves: the node follows the map (holding it weakly: shutdown waits for
                    // the last strong reference).
                    let meta = m.meta()?.clone();
                    tokio::spawn(cairn_cluster::control::reconcile(meta, Arc::downgrade(&node), id));
                    node
                }
                // Stopped, or failed, before serving keys: take down what runs (shard replicas that
                // started are dropped with the failed start-up).
                other => {
                    events.close();
                    let _ = stop_tx.send(true);
                    m.stop().await;
                    // Stopped: let in-flight calls finish (bounded). Failed: nothing to wait for.
                    if other.is_err() || tokio::time::timeout(SHUTDOWN_GRACE, grpc_task).await.is_err() {
                        grpc_abort.abort();
                    }
                    return other.map(|_| ());
                }
            }
        }
        (None, None) => return Err(NodeError::Internal("no node and no cluster membership".into())),
    };
    kv.ready(Arc::clone(&node));
    if let Some(b) = &backups {
        b.ready(Arc::clone(&node));
    }
    {
        // On the signal: hand over the leadership of every group led here while peers can still reach
        // this node, then end the event streams (they never end on their own) and stop the servers.
        let (node, membership, events, requested) =
            (Arc::clone(&node), membership.clone(), Arc::clone(&events), requested_rx.clone());
        tokio::spawn(async move {
            stopped(requested).await;
            let meta = async {
                match &membership {
                    Some(m) => !m.hand_over(HAND_OVER_TIMEOUT).await,
                    None => false,
                }
            };
            let (failed, meta_kept) = tokio::join!(node.hand_over_leadership(HAND_OVER_TIMEOUT), meta);
            if failed > 0 || meta_kept {
                tracing::warn!(
                    groups = failed,
                    meta = meta_kept,
                    "leadership not handed over: peers elect anew"
                );
            }
            drop(node);
            events.close();
            let _ = stop_tx.send(true);
        });
    }
    let state = rest::AppState {
        node: Arc::clone(&node),
        http: Arc::new(metrics::HttpMetrics::default()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(rest::MAX_IN_FLIGHT)),
        shutting_down,
        cluster: membership.clone(),
        body_read_timeout: config.http.body_read_timeout,
    };
    let app = rest::router(state);
    let http_stop = stopped(stop_rx.clone());
    let http_server = async {
        http_server::serve(http_listener, app, config.http, http_stop).await;
        Ok::<(), std::convert::Infallible>(())
    };
    tracing::info!(%http, %grpc, shards = node.shard_count(), "serving");
    let servers = async {
        let (http_result, grpc_result) = tokio::join!(http_server, grpc_task);
        let grpc_result = match grpc_result {
            Ok(r) => r.map_err(|e| NodeError::Internal(format!("gRPC server failed: {e}"))),
            Err(e) => Err(NodeError::Internal(format!("gRPC server task failed: {e}"))),
        };
        (http_result, grpc_result)
    };
    let grace_over = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        (http_result, grpc_result) = servers => {
            http_result.map_err(|e| NodeError::Internal(format!("HTTP server failed: {e}")))?;
            grpc_result?;
        }
        () = grace_over => {
            grpc_abort.abort();
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace: closing them");
        }
    }
    node.stop_replication().await;
    if let Some(m) = &membership {
        m.stop().await;
    }
    // Connection tasks may outlive the server: they keep the service, not the node.
    kv.retire();
    if let Some(b) = &backups {
        b.retire();
    }
    // Every request task is done; handlers' blocking calls hold their own references until they end.
    let Some(node) = wait_for_last_reference(node).await else {
        tracing::error!(
            grace = ?SHUTDOWN_GRACE,
            "the store is still in use after the shutdown grace: exiting without closing it (the logs hold \
             every acknowledged write; the next start replays them)"
        );
        return Ok(());
    };
    tokio::task::spawn_blocking(move || node.close())
        .await
        .map_err(|e| NodeError::Internal(format!("close task failed: {e}")))??;
    tracing::info!("store closed");
    Ok(())
}

/// The node once nothing else holds it, or `None` if something still does after [`SHUTDOWN_GRACE`].
async fn wait_for_last_reference(mut node: Arc<Node>) -> Option<Node> {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    loop {
        match Arc::try_unwrap(node) {
            Ok(node) => return Some(node),
            Err(_) if tokio::time::Instant::now() >= deadline => return None,
            Err(shared) => {
                node = shared;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
