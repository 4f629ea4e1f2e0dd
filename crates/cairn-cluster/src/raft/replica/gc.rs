//! Garbage collection of old versions on a replicated shard: its leader proposes the shard's GC
//! threshold, `now - gc_ttl`, through the log ([`Command::GcThreshold`]); every replica applies it at the
//! same entry, and compactions then drop the versions no read at or above it sees.

use super::Replica;
use crate::raft::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a shard leader's GC threshold may not pass besides `now - gc_ttl`: the lowest protected
/// timestamp, read linearizably from the meta group *after* `read_at` was taken from the clock (see
/// `meta_protected.rs`). `threshold = min(read_at - ttl, floor)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcFloor {
    /// The wall time (nanoseconds since the Unix epoch) read before the protected timestamps were.
    pub read_at: u64,
    /// The lowest live protected timestamp's wall time, if any.
    pub floor: Option<u64>,
}

/// Reads a [`GcFloor`]; `None` if it cannot now (no meta leader): then no threshold is proposed.
pub type GcFloorSource = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<GcFloor>> + Send>> + Send + Sync,
>;

/// Where a node's replicas take protected timestamps from.
#[derive(Clone, Default)]
enum Floors {
    /// Nowhere: a fixed group (`--peers`) has no meta group and no protected timestamps.
    #[default]
    None,
    /// A cluster member whose source is not set yet: no threshold is proposed until it is.
    Awaited,
    /// From here.
    Source(GcFloorSource),
}

/// How a node's replicas collect old versions: how long versions stay readable (a cluster setting,
/// changed at run time: whole seconds, 0 for never collected; unset, never collected, until first set)
/// and where protected timestamps come from. Shared by the node's replicas.
#[derive(Clone)]
pub struct GcPolicy {
    ttl: Arc<AtomicU64>,
    floors: Arc<parking_lot::RwLock<Floors>>,
}

impl std::fmt::Debug for GcPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floors = match &*self.floors.read() {
            Floors::None => "none",
            Floors::Awaited => "awaited",
            Floors::Source(_) => "source",
        };
        f.debug_struct("GcPolicy").field("ttl", &self.ttl()).field("floors", &floors).finish()
    }
}

/// Two policies are equal if they are the same one (shared by the same replicas).
impl PartialEq for GcPolicy {
    fn eq(&self, other: &GcPolicy) -> bool {
        Arc::ptr_eq(&self.ttl, &other.ttl)
    }
}

impl Eq for GcPolicy {}

/// What an unset TTL holds.
const UNSET: u64 = u64::MAX;

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy { ttl: Arc::new(AtomicU64::new(UNSET)), floors: Arc::default() }
    }
}

impl GcPolicy {
    /// A policy with TTL `ttl` (zero: never collect) and no protected timestamps.
    pub fn new(ttl: Duration) -> GcPolicy {
        let t = GcPolicy::default();
        t.set_ttl(ttl);
        t
    }

    /// Sets the TTL (whole seconds; zero: never collect).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl.store(ttl.as_secs().min(UNSET - 1), Ordering::Relaxed);
    }

    /// Sets the TTL to `ttl` unless it was set before (by a cluster setting, say).
    pub fn set_ttl_if_unset(&self, ttl: Duration) {
        let secs = ttl.as_secs().min(UNSET - 1);
        let _ = self.ttl.compare_exchange(UNSET, secs, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The TTL (`None`: never collect).
    pub fn ttl(&self) -> Option<Duration> {
        let secs = self.ttl.load(Ordering::Relaxed);
        (secs != 0 && secs != UNSET).then(|| Duration::from_secs(secs))
    }

    /// Says protected timestamps will come from a source set later ([`GcPolicy::set_floors`]):
    /// until then no threshold is proposed.
    pub fn await_floors(&self) {
        let mut floors = self.floors.write();
        if matches!(*floors, Floors::None) {
            *floors = Floors::Awaited;
        }
    }

    /// Takes protected timestamps from `source`.
    pub fn set_floors(&self, source: GcFloorSource) {
        *self.floors.write() = Floors::Source(source);
    }

    /// The threshold to propose now with TTL `ttl`: `now - ttl`, held at or below the lowest protected
    /// timestamp; `None` if protected timestamps cannot be read now.
    async fn threshold(&self, ttl: Duration) -> Option<u64> {
        let floors = self.floors.read().clone();
        match floors {
            Floors::None => Some(threshold_at(wall_now(), ttl)),
            Floors::Awaited => None,
            Floors::Source(source) => {
                let GcFloor { read_at, floor } = source().await?;
                let threshold = threshold_at(read_at, ttl);
                Some(floor.map_or(threshold, |f| threshold.min(f)))
            }
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn wall_now() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(now).unwrap_or(u64::MAX)
}

/// Most time between a leader's looks at its shard's GC threshold.
const GC_EVERY_MAX: Duration = Duration::from_secs(60);
/// Least time between them.
const GC_EVERY_MIN: Duration = Duration::from_secs(1);

/// How often a leader looks at the threshold with `ttl`: an eighth of it, within
/// [`GC_EVERY_MIN`]..=[`GC_EVERY_MAX`] (a threshold trails `now - ttl` by at most that).
fn gc_every(ttl: Duration) -> Duration {
    (ttl / 8).clamp(GC_EVERY_MIN, GC_EVERY_MAX)
}

/// The threshold for `ttl` at wall time `now` (nanoseconds since the Unix epoch): `ttl` before it.
fn threshold_at(now: u64, ttl: Duration) -> u64 {
    now.saturating_sub(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// A leader's GC bookkeeping, kept by its tend loop.
#[derive(Debug, Default)]
pub(super) struct GcTracker {
    last_look: Option<tokio::time::Instant>,
    // The replica's count of row-writing commands at the last look, and the wall time it was last seen
    // to change (a leader's first look counts as a change: writes may have come before it led).
    writes_seen: Option<u64>,
    wrote_at: u64,
    // Whether a proposal is under way (in a task of its own: the tend loop never waits for one).
    proposing: Arc<std::sync::atomic::AtomicBool>,
}

impl Replica {
    /// On the leader, starts proposing a higher GC threshold when one is due: the TTL is set, the last
    /// look was [`gc_every`] ago, no proposal is under way, and the applied threshold is below the last
    /// time commands were seen writing rows (versions written before then may be collectable). The
    /// proposal, in a task of its own, is `now - ttl` held at or below the lowest protected timestamp,
    /// if that is above the applied threshold. A shard that stops taking writes thus goes on raising
    /// its threshold until it passes its last writes, then stays quiet.
    pub(super) fn raise_gc_threshold(&self, tracker: &mut GcTracker) {
        let Some(ttl) = self.shared.config.gc.ttl() else { return };
        if tracker.last_look.is_some_and(|t| t.elapsed() < gc_every(ttl)) {
            return;
        }
        tracker.last_look = Some(tokio::time::Instant::now());
        let writes = self.state_machine().writes_applied();
        if tracker.writes_seen != Some(writes) {
            tracker.writes_seen = Some(writes);
            tracker.wrote_at = wall_now();
        }
        if self.state_machine().gc_threshold() >= tracker.wrote_at
            || tracker.proposing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (replica, proposing) = (self.clone(), Arc::clone(&tracker.proposing));
        tokio::spawn(async move {
            replica.propose_gc_threshold(ttl).await;
            proposing.store(false, Ordering::Release);
        });
    }

    /// Proposes `now - ttl`, held at or below the lowest protected timestamp, if that is above the
    /// applied threshold.
    async fn propose_gc_threshold(&self, ttl: Duration) {
        let group = self.shared.group;
        let Some(wall_time) = self.shared.config.gc.threshold(ttl).await else {
            tracing::debug!(group, "GC threshold not raised: protected timestamps unknown");
            return;
        };
        if wall_time <= self.state_machine().gc_threshold() {
            return;
        }
        let timeout = self.shared.config.election_timeout.1 * 4;
        match self.write(Command::GcThreshold { wall_time }, timeout).await {
            Ok(_) => tracing::debug!(group, wall_time, "GC threshold raised"),
            Err(e) => tracing::debug!(group, error = %e, "GC threshold not raised"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_threshold_waits_for_protected_timestamps_and_stays_at_or_below_them() {
        let ttl = Duration::from_secs(10);
        let policy = GcPolicy::new(ttl);
        let before = wall_now();
        let t = policy.threshold(ttl).await.unwrap();
        assert!(t >= threshold_at(before, ttl) && t <= threshold_at(wall_now(), ttl));
        policy.await_floors();
        assert_eq!(policy.threshold(ttl).await, None, "a member waits for its source");
        let floor = Arc::new(std::sync::Mutex::new(None));
        let source = {
            let floor = Arc::clone(&floor);
            move || {
                let answer = *floor.lock().unwrap();
                Box::pin(async move { answer })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
            }
        };
        policy.set_floors(Arc::new(source));
        assert_eq!(policy.threshold(ttl).await, None, "the source cannot answer");
        let read_at = 100_000_000_000;
        *floor.lock().unwrap() = Some(GcFloor { read_at, floor: None });
        assert_eq!(policy.threshold(ttl).await, Some(90_000_000_000));
        *floor.lock().unwrap() = Some(GcFloor { read_at, floor: Some(42) });
        assert_eq!(policy.threshold(ttl).await, Some(42));
        *floor.lock().unwrap() = Some(GcFloor { read_at, floor: Some(95_000_000_000) });
        assert_eq!(policy.threshold(ttl).await, Some(90_000_000_000));
    }

    #[test]
    fn looks_come_an_eighth_of_the_ttl_apart_within_bounds() {
        assert_eq!(gc_every(Duration::from_secs(4 * 3600)), GC_EVERY_MAX);
        assert_eq!(gc_every(Duration::from_secs(80)), Duration::from_secs(10));
        assert_eq!(gc_every(Duration::from_secs(2)), GC_EVERY_MIN);
        let policy = GcPolicy::default();
        assert_eq!(policy.ttl(), None);
        policy.set_ttl(Duration::ZERO);
        policy.set_ttl_if_unset(Duration::from_secs(9));
        assert_eq!(policy.ttl(), None, "set to never collect before");
        policy.set_ttl(Duration::from_secs(5));
        assert_eq!(policy.ttl(), Some(Duration::from_secs(5)));
        let fresh = GcPolicy::default();
        fresh.set_ttl_if_unset(Duration::from_secs(9));
        assert_eq!(fresh.ttl(), Some(Duration::from_secs(9)));
        assert_eq!(threshold_at(10_000_000_000, Duration::from_secs(4)), 6_000_000_000);
        assert_eq!(threshold_at(1, Duration::from_secs(4)), 0);
    }
}
