//! Serving the REST router over HTTP/1.1 with every resource a client can hold bounded: connections
//! (at most [`HttpLimits::max_connections`]; more wait in the listen backlog), the request head (all of
//! it within [`HttpLimits::header_read_timeout`] of the connection starting to wait for a request, so a
//! client trickling header bytes, slowloris-style, or sitting idle on a kept-alive connection is cut
//! off), the head's size ([`HttpLimits::max_header_bytes`]; 431 beyond) and a body's arrival
//! ([`HttpLimits::body_read_timeout`], in the handlers). axum's own `serve` sets none of these.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one HTTP client may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once (default 1024); further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A request's head must arrive whole within this long of the connection starting to wait for it
    /// (default 10 s): this is also how long a kept-alive connection may sit idle.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes (default 128 KiB; at least 8 KiB).
    /// A URL is at most 65,534 bytes whatever this is (414 beyond).
    pub max_header_bytes: usize,
    /// A request body must arrive whole within this long (default 30 s; 408 after).
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 128 << 10,
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets the connections finish their requests
/// (the caller bounds how long).
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 << 10));
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small responses must not wait for Nagle's algorithm (40 ms with delayed ACKs).
        let _ = tcp.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
