//! gRPC channels to other nodes: one per address, made on first use and reused by every later call
//! (a channel reconnects by itself after its peer comes back), so routine calls — forwarding, liveness
//! and status checks — do not open a connection each.

use crate::error::{NodeError, Result};
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;

/// Channels by address, each with one call timeout.
#[derive(Debug)]
pub(crate) struct Channels {
    timeout: Duration,
    map: parking_lot::Mutex<HashMap<String, Channel>>,
}

impl Channels {
    /// No channel yet; calls on the channels made time out after `timeout` (connecting too).
    pub(crate) fn new(timeout: Duration) -> Channels {
        Channels { timeout, map: parking_lot::Mutex::new(HashMap::new()) }
    }

    /// The channel to `addr` (`host:port`), made now if there is none.
    pub(crate) fn get(&self, addr: &str) -> Result<Channel> {
        let mut map = self.map.lock();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| NodeError::Internal(format!("bad node address {addr:?}: {e}")))?
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
