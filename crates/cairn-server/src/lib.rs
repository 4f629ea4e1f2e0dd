//! cairn server: a node's store (several engine shards, MVCC with hybrid-logical-clock timestamps) and
//! the APIs over it: REST (this crate's `rest` module), health, Prometheus metrics and status.
//!
//! The seam between "serve a request" and "the shard that holds the key" is [`node::Node`]: the APIs
//! call it with keys and timestamps; it routes each key to its bucket's shard. Replication (the next
//! issues) replaces what is behind it, not the APIs.

pub mod error;
pub mod hlc;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod rest;

use crate::error::{NodeError, Result};
use crate::node::{Node, NodeConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Everything `cairn start` configures.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The store.
    pub node: NodeConfig,
    /// Where the HTTP API listens (port 0: any free port).
    pub http_addr: SocketAddr,
}

/// Opens the store, serves HTTP until `shutdown` resolves, then lets in-flight requests finish and
/// closes the store cleanly. `on_ready` gets the bound address once the node is serving.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    let node_config = config.node.clone();
    let node = tokio::task::spawn_blocking(move || Node::open(node_config))
        .await
        .map_err(|e| NodeError::Startup(format!("startup task failed: {e}")))??;
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| NodeError::Startup(format!("cannot listen on {}: {e}", config.http_addr)))?;
    let addr = listener.local_addr().map_err(|e| NodeError::Startup(e.to_string()))?;
    let state = rest::AppState {
        node: Arc::clone(&node),
        http: Arc::new(metrics::HttpMetrics::default()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(rest::MAX_IN_FLIGHT)),
        shutting_down: Arc::new(AtomicBool::new(false)),
    };
    let flag = Arc::clone(&state.shutting_down);
    let app = rest::router(state);
    tracing::info!(%addr, store = %config.node.store.display(), "serving HTTP");
    on_ready(addr);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            flag.store(true, Ordering::Release);
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await
        .map_err(|e| NodeError::Internal(format!("HTTP server failed: {e}")))?;
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
