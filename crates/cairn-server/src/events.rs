//! The node's event stream: leader changes of its shard and meta replicas, snapshots they
//! installed, nodes joining, the shards being placed, and nodes going down and coming back up (as the
//! meta group's leader sees them, polled by every node). Served over gRPC (`Cluster/Events`, server
//! streaming) and as server-sent events (`GET /events`).
//!
//! Bounded: events go through a broadcast channel of [`CAPACITY`]; a subscriber that falls that far
//! behind gets a `lagged` event saying how many it missed and carries on from the oldest kept one.

use cairn_cluster::control::ControlEvent;
use cairn_cluster::placement::ShardId;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, watch};

/// Events kept for slow subscribers.
pub const CAPACITY: usize = 1024;
/// Frames a [`Events::pump`] holds for a reader that is behind.
pub const PUMP_BUFFER: usize = 64;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A group's leader changed (`group`: a shard id, or `"meta"`).
    LeaderChanged { group: String, term: u64, leader: Option<u64> },
    /// A replica installed a snapshot from its leader (it was too far behind for the log).
    SnapshotInstalled { group: String, installs: u64 },
    /// The meta group admitted a node.
    NodeJoined { node: u64, grpc_addr: String },
    /// The shards were placed (the map's version).
    ShardsPlaced { version: u64 },
    /// A node stopped acknowledging the meta leader's heartbeats.
    NodeDown { node: u64 },
    /// A node acknowledges the meta leader's heartbeats (again).
    NodeUp { node: u64 },
    /// A replica move started: `to` gets a replica of the shard in place of `from`'s (at `epoch`).
    ReplicaMoving { shard: ShardId, from: u64, to: u64, epoch: u64 },
    /// A replica move finished: `to` holds the replica, `from` left the shard's group (at `epoch`).
    ReplicaMoved { shard: ShardId, from: u64, to: u64, epoch: u64 },
    /// A shard split: `new` took its buckets from `at` on (`shard` is at `epoch` after it).
    ShardSplit { shard: ShardId, new: ShardId, at: u16, epoch: u64 },
    /// Shard `merged` was merged into `shard`, which took its buckets (at `epoch` after it).
    ShardMerged { shard: ShardId, merged: ShardId, epoch: u64 },
    /// A replica move was given up (its destination died before it could take the replica over).
    ReplicaMoveAbandoned { shard: ShardId, from: u64, to: u64, epoch: u64 },
    /// This node dropped its replica of a shard that moved away while it was down or partitioned.
    ReplicaRetired { shard: ShardId },
    /// A consistency check found this node's replica of a group differs from the majority's at check
    /// entry `index`: it refuses reads and re-syncs from scratch.
    ReplicaFenced { group: String, index: u64 },
    /// This subscriber fell behind and missed this many events.
    Lagged { missed: u64 },
}

impl From<ControlEvent> for EventKind {
    fn from(event: ControlEvent) -> EventKind {
        match event {
            ControlEvent::ShardsPlaced { version } => EventKind::ShardsPlaced { version },
            ControlEvent::ReplicaMoving { shard, from, to, epoch } => {
                EventKind::ReplicaMoving { shard, from, to, epoch }
            }
            ControlEvent::ReplicaMoved { shard, from, to, epoch } => {
                EventKind::ReplicaMoved { shard, from, to, epoch }
            }
            ControlEvent::ReplicaMoveAbandoned { shard, from, to, epoch } => {
                EventKind::ReplicaMoveAbandoned { shard, from, to, epoch }
            }
            ControlEvent::ReplicaRetired { shard } => EventKind::ReplicaRetired { shard },
            ControlEvent::ShardSplit { shard, new, at, epoch } => {
                EventKind::ShardSplit { shard, new, at, epoch }
            }
            ControlEvent::ShardMerged { shard, merged, epoch } => {
                EventKind::ShardMerged { shard, merged, epoch }
            }
        }
    }
}

/// One event as subscribers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Counts this node's events from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, when this node saw it.
    pub at_ms: u64,
    /// The node that saw it (0 before it has an id).
    pub observer: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event's type name (the `type` field of its JSON).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EventKind::LeaderChanged { .. } => "leader_changed",
            EventKind::SnapshotInstalled { .. } => "snapshot_installed",
            EventKind::NodeJoined { .. } => "node_joined",
            EventKind::ShardsPlaced { .. } => "shards_placed",
            EventKind::NodeDown { .. } => "node_down",
            EventKind::NodeUp { .. } => "node_up",
            EventKind::ReplicaMoving { .. } => "replica_moving",
            EventKind::ReplicaMoved { .. } => "replica_moved",
            EventKind::ReplicaMoveAbandoned { .. } => "replica_move_abandoned",
            EventKind::ReplicaRetired { .. } => "replica_retired",
            EventKind::ReplicaFenced { .. } => "replica_fenced",
            EventKind::ShardSplit { .. } => "shard_split",
            EventKind::ShardMerged { .. } => "shard_merged",
            EventKind::Lagged { .. } => "lagged",
        }
    }

    /// The event as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The node's events.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
    observer: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            tx: broadcast::Sender::new(CAPACITY),
            seq: AtomicU64::new(0),
            observer: AtomicU64::new(0),
            stop: watch::Sender::new(false),
        }
    }
}

impl Events {
    /// A new stream.
    pub fn new() -> Arc<Events> {
        Arc::new(Events::default())
    }

    /// Names the node that sees the events (once it has an id).
    pub fn set_observer(&self, node: u64) {
        self.observer.store(node, Ordering::Relaxed);
    }

    /// Publishes `kind` to every subscriber (none: dropped).
    pub fn emit(&self, kind: EventKind) {
        tracing::debug!(?kind, "event");
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let observer = self.observer.load(Ordering::Relaxed);
        let _ = self.tx.send(Event { seq, at_ms, observer, kind });
    }

    /// Ends every subscription (shutdown).
    pub fn close(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once [`Events::close`] was called.
    pub async fn closed(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    /// A stream of `frame(event)` for every event from now on, ending when the node shuts down or the
    /// reader goes away; a reader that stops reading holds at most [`PUMP_BUFFER`] frames and does not
    /// keep the stream open past shutdown.
    pub fn pump<T: Send + 'static>(
        self: &Arc<Self>,
        frame: impl Fn(Event) -> T + Send + 'static,
    ) -> tokio_stream::wrappers::ReceiverStream<T> {
        let mut subscription = self.subscribe();
        let events = Arc::clone(self);
        let (tx, rx) = tokio::sync::mpsc::channel(PUMP_BUFFER);
        tokio::spawn(async move {
            while let Some(e) = subscription.next().await {
                tokio::select! {
                    sent = tx.send(frame(e)) => if sent.is_err() { return },
                    () = events.closed() => return,
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// A subscription from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription { rx: self.tx.subscribe(), stop: self.stop.subscribe(), events: Arc::clone(self) }
    }
}

/// One subscriber's view.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    stop: watch::Receiver<bool>,
    events: Arc<Events>,
}

impl Subscription {
    /// The next event; `None` once the node shuts down.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(event) => return Some(event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let observer = self.events.observer.load(Ordering::Relaxed);
                        return Some(Event { seq: 0, at_ms: 0, observer, kind: EventKind::Lagged { missed } });
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order_learn_what_they_missed_and_end_at_close() {
        let events = Events::new();
        events.set_observer(7);
        let mut early = events.subscribe();
        events.emit(EventKind::NodeUp { node: 2 });
        events.emit(EventKind::LeaderChanged { group: "3".into(), term: 4, leader: Some(2) });
        let first = early.next().await.unwrap();
        assert_eq!((first.seq, first.observer, first.type_name()), (1, 7, "node_up"));
        assert!(first.json().contains(r#""type":"node_up""#), "{}", first.json());
        assert_eq!(early.next().await.unwrap().seq, 2);

        let mut slow = events.subscribe();
        for node in 0..(CAPACITY as u64 + 10) {
            events.emit(EventKind::NodeDown { node });
        }
        assert_eq!(slow.next().await.unwrap().kind, EventKind::Lagged { missed: 10 });
        assert_eq!(slow.next().await.unwrap().kind, EventKind::NodeDown { node: 10 });

        events.close();
        assert_eq!(slow.next().await, None);
        assert_eq!(early.next().await, None);
    }
}
