//! cairn server: a node's store (several engine shards, MVCC with hybrid-logical-clock timestamps) and
//! the APIs over it: REST (this crate's `rest` module), health, Prometheus metrics and status.
//!
//! The seam between "serve a request" and "the shard that holds the key" is [`node::Node`]: the APIs
//! call it with keys, timestamps and consistency levels; it routes each key to its bucket's shard, which
//! is local (a standalone node) or this node's replica of the shard's Raft group
//! ([`replicated`]). The APIs do not change between the two.

pub mod error;
pub mod grpc;
pub mod hlc;
mod layout;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod replicated;
pub mod rest;
mod writer;

use crate::error::{NodeError, Result};
use crate::node::{Node, NodeConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
/// and closes the store cleanly. `on_ready` gets the bound addresses once the node is serving.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound) + Send,
) -> Result<()> {
    let node = Arc::new(Node::start(config.node.clone()).await?);
    let bind = |addr: SocketAddr, what: &'static str| async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Startup(format!("cannot listen for {what} on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| NodeError::Startup(e.to_string()))?;
        Ok::<_, NodeError>((listener, local))
    };
    let (http_listener, http) = bind(config.http_addr, "HTTP").await?;
    let (grpc_listener, grpc) = bind(config.grpc_addr, "gRPC").await?;
    let state = rest::AppState {
        node: Arc::clone(&node),
        http: Arc::new(metrics::HttpMetrics::default()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(rest::MAX_IN_FLIGHT)),
        shutting_down: Arc::new(AtomicBool::new(false)),
    };
    let flag = Arc::clone(&state.shutting_down);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::Release);
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grace_rx = stop_rx.clone();
    let app = rest::router(state);
    // Small responses must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(http_listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        |conn: std::io::Result<tokio::net::TcpStream>| {
            conn.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        },
    );
    let grpc_server = tonic::transport::Server::builder()
        .add_service(cairn_proto::kv::kv_server::KvServer::new(grpc::KvService::new(Arc::clone(&node))))
        // Peers' Raft traffic for every group on this node (a standalone node serves none).
        .add_optional_service(node.raft_service().map(|s| s.into_server()))
        .serve_with_incoming_shutdown(grpc_incoming, stopped(stop_rx));
    tracing::info!(%http, %grpc, store = %config.node.store.display(), "serving");
    on_ready(Bound { http, grpc });
    let servers = async { tokio::join!(http_server, grpc_server) };
    let grace_over = async move {
        stopped(grace_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        (http_result, grpc_result) = servers => {
            http_result.map_err(|e| NodeError::Internal(format!("HTTP server failed: {e}")))?;
            grpc_result.map_err(|e| NodeError::Internal(format!("gRPC server failed: {e}")))?;
        }
        () = grace_over => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace: closing them");
        }
    }
    node.stop_replication().await;
    // Every request task is done; handlers' blocking calls hold their own references until they end.
    let node = wait_for_last_reference(node).await;
    tokio::task::spawn_blocking(move || node.close())
        .await
        .map_err(|e| NodeError::Internal(format!("close task failed: {e}")))??;
    tracing::info!("store closed");
    Ok(())
}

async fn wait_for_last_reference(mut node: Arc<Node>) -> Node {
    loop {
        match Arc::try_unwrap(node) {
            Ok(node) => return node,
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
