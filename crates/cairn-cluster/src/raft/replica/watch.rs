//! Following a replica's status as it changes ([`StatusWatch`]), across its incarnations.

use super::{Incarnation, Replica};
use crate::raft::{TypeConfig, node_of};
use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Wakes when a replica's status (role, term, leader, log indexes) changes; follows the replica into a
/// new incarnation.
pub struct StatusWatch {
    replica: Replica,
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>,
    // The incarnation `rx` belongs to.
    id: u64,
}

impl StatusWatch {
    /// Waits for the next change; false once the replica has stopped.
    pub async fn changed(&mut self) -> bool {
        loop {
            if self.rx.changed().await.is_ok() {
                return true;
            }
            // That incarnation's Raft node stopped: follow the next one, unless the replica stopped.
            let _guard = self.replica.shared.lifecycle.lock().await;
            if self.replica.shared.stopped.load(Ordering::Acquire) || self.replica.id() == self.id {
                return false;
            }
            let current = self.replica.current();
            (self.rx, self.id) = (current.raft.metrics(), current.id);
        }
    }

    /// The last index applied as of the last change seen.
    pub fn applied(&self) -> Option<u64> {
        self.rx.borrow_watched().last_applied.map(|l| l.index)
    }

    /// The term and leader (node id) as of the last change seen.
    pub fn leadership(&self) -> (u64, Option<u64>) {
        let m = self.rx.borrow_watched();
        (m.current_term, m.current_leader.map(node_of))
    }
}

impl Replica {
    /// Follows this replica's status (see [`StatusWatch`]).
    pub fn watch(&self) -> StatusWatch {
        let Incarnation { raft, id } = self.current();
        StatusWatch { replica: self.clone(), rx: raft.metrics(), id }
    }

    /// Waits until this replica has applied an entry past `seen` (`None`: any entry) or `wait` passes
    /// (a re-sync into a new incarnation is followed; a replica whose Raft node stopped applies nothing
    /// more, and the whole wait passes); returns the last index it applied.
    pub async fn applied_past(&self, seen: Option<u64>, wait: Duration) -> Option<u64> {
        let mut watch = self.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let applied = watch.applied();
            if applied > seen {
                return applied;
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(true) => {}
                // The Raft node stopped (shut down, or failed on its disk): nothing will change, but
                // callers that loop on this must still wait, not spin.
                Ok(false) => {
                    tokio::time::sleep_until(deadline).await;
                    return applied;
                }
                Err(_) => return applied,
            }
        }
    }
}
