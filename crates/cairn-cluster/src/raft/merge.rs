//! What a node knows of its shards frozen for a merge ([`Command::Freeze`](super::Command::Freeze)):
//! where each one's frozen contents are, so the node's replica of the left-hand neighbour can import
//! them when it applies the merge ([`Command::Merge`](super::Command::Merge)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a replica applying a merge waits for its node's replica of the right-hand shard to apply
/// the freeze (a node that restarted reopens it; one that lagged catches up) before it gives up and
/// fences itself.
pub const MERGE_WAIT: Duration = Duration::from_secs(30);

/// A frozen replica's contents: the pre-shrink snapshot of its engine, which holds every bucket it
/// gave up, as of the freeze entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenShard {
    /// The frozen replica's engine identity.
    pub db_id: String,
    /// Its pre-shrink snapshot.
    pub snapshot: u64,
    /// The snapshot's volume.
    pub volume: String,
    /// The ranges it gave up (everything it owned).
    pub ranges: Vec<(u16, u16)>,
}

/// One node's frozen replicas, by group; clones share it. A replica registers when it applies its
/// freeze or opens frozen, and leaves when its node retires it.
#[derive(Clone, Debug)]
pub struct FrozenShards(Arc<tokio::sync::watch::Sender<BTreeMap<u64, FrozenShard>>>);

impl Default for FrozenShards {
    fn default() -> FrozenShards {
        FrozenShards(Arc::new(tokio::sync::watch::channel(BTreeMap::new()).0))
    }
}

impl FrozenShards {
    /// Group `group`'s frozen replica here, if any.
    pub fn get(&self, group: u64) -> Option<FrozenShard> {
        self.0.borrow().get(&group).cloned()
    }

    /// Records group `group`'s replica here as frozen.
    pub(crate) fn insert(&self, group: u64, frozen: FrozenShard) {
        self.0.send_if_modified(|m| m.insert(group, frozen.clone()).is_none_or(|old| old != frozen));
    }

    /// Forgets group `group`'s replica (retired).
    pub fn remove(&self, group: u64) {
        self.0.send_if_modified(|m| m.remove(&group).is_some());
    }

    /// Group `group`'s frozen replica here, waiting up to `timeout` for it to freeze.
    pub async fn wait(&self, group: u64, timeout: Duration) -> Option<FrozenShard> {
        let mut changes = self.0.subscribe();
        let found = tokio::time::timeout(timeout, changes.wait_for(|m| m.contains_key(&group))).await;
        found.ok()?.ok().and_then(|m| m.get(&group).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_sees_a_freeze_registered_later_and_gives_up_in_time() {
        let shards = FrozenShards::default();
        let frozen =
            FrozenShard { db_id: "d".into(), snapshot: 3, volume: "file:///v".into(), ranges: vec![(4, 7)] };
        assert_eq!(shards.wait(2, Duration::from_millis(20)).await, None);
        let waiting = {
            let shards = shards.clone();
            tokio::spawn(async move { shards.wait(2, Duration::from_secs(60)).await })
        };
        shards.insert(2, frozen.clone());
        assert_eq!(waiting.await.unwrap(), Some(frozen.clone()));
        assert_eq!(shards.get(2), Some(frozen));
        shards.remove(2);
        assert_eq!(shards.get(2), None);
    }
}
