//! Garbage collection of old versions on a replicated shard: its leader proposes the shard's GC
//! threshold, `now - gc_ttl`, through the log ([`Command::GcThreshold`]); every replica applies it at the
//! same entry, and compactions then drop the versions no read at or above it sees.

use super::Replica;
use crate::raft::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long old versions stay readable, shared by a node's replicas and changed at run time (a
/// cluster setting): whole seconds, 0 for never collected; unset (never collected) until first set.
#[derive(Clone, Debug)]
pub struct GcTtl(Arc<AtomicU64>);

/// What an unset [`GcTtl`] holds.
const UNSET: u64 = u64::MAX;

impl Default for GcTtl {
    fn default() -> GcTtl {
        GcTtl(Arc::new(AtomicU64::new(UNSET)))
    }
}

impl GcTtl {
    /// A TTL of `ttl` (zero: never collect).
    pub fn new(ttl: Duration) -> GcTtl {
        let t = GcTtl::default();
        t.set(ttl);
        t
    }

    /// Sets the TTL (whole seconds; zero: never collect).
    pub fn set(&self, ttl: Duration) {
        self.0.store(ttl.as_secs().min(UNSET - 1), Ordering::Relaxed);
    }

    /// Sets the TTL to `ttl` unless it was set before (by a cluster setting, say).
    pub fn set_if_unset(&self, ttl: Duration) {
        let _ = self.0.compare_exchange(
            UNSET,
            ttl.as_secs().min(UNSET - 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The TTL (`None`: never collect).
    pub fn get(&self) -> Option<Duration> {
        let secs = self.0.load(Ordering::Relaxed);
        (secs != 0 && secs != UNSET).then(|| Duration::from_secs(secs))
    }
}

impl PartialEq for GcTtl {
    fn eq(&self, other: &GcTtl) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for GcTtl {}

/// Most time between a leader's looks at its shard's GC threshold.
const GC_EVERY_MAX: Duration = Duration::from_secs(60);
/// Least time between them.
const GC_EVERY_MIN: Duration = Duration::from_secs(1);

/// How often a leader looks at the threshold with `ttl`: an eighth of it, within
/// [`GC_EVERY_MIN`]..=[`GC_EVERY_MAX`] (a threshold trails `now - ttl` by at most that).
fn gc_every(ttl: Duration) -> Duration {
    (ttl / 8).clamp(GC_EVERY_MIN, GC_EVERY_MAX)
}

/// The threshold for `ttl` now: nanoseconds since the Unix epoch, `ttl` ago.
fn threshold_now(ttl: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(now.saturating_sub(ttl.as_nanos())).unwrap_or(0)
}

/// A leader's GC bookkeeping, kept by its tend loop.
#[derive(Debug, Default)]
pub(super) struct GcTracker {
    last_look: Option<tokio::time::Instant>,
    // The replica's count of row-writing commands at the last proposal.
    writes_then: Option<u64>,
}

impl Replica {
    /// On the leader, proposes a higher GC threshold when one is due: the TTL is set, the last look
    /// was [`gc_every`] ago, commands wrote rows since the last proposal, and `now - ttl` is above the
    /// applied threshold.
    pub(super) async fn raise_gc_threshold(&self, tracker: &mut GcTracker) {
        let Some(ttl) = self.shared.config.gc_ttl.get() else { return };
        if tracker.last_look.is_some_and(|t| t.elapsed() < gc_every(ttl)) {
            return;
        }
        tracker.last_look = Some(tokio::time::Instant::now());
        let writes = self.state_machine().writes_applied();
        if tracker.writes_then == Some(writes) {
            return;
        }
        let wall_time = threshold_now(ttl);
        if wall_time <= self.state_machine().gc_threshold() {
            return;
        }
        let timeout = self.shared.config.election_timeout.1 * 4;
        match self.write(Command::GcThreshold { wall_time }, timeout).await {
            Ok(_) => {
                tracker.writes_then = Some(writes);
                tracing::debug!(group = self.shared.group, wall_time, "GC threshold raised");
            }
            Err(e) => tracing::debug!(group = self.shared.group, error = %e, "GC threshold not raised"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_come_an_eighth_of_the_ttl_apart_within_bounds() {
        assert_eq!(gc_every(Duration::from_secs(4 * 3600)), GC_EVERY_MAX);
        assert_eq!(gc_every(Duration::from_secs(80)), Duration::from_secs(10));
        assert_eq!(gc_every(Duration::from_secs(2)), GC_EVERY_MIN);
        let ttl = GcTtl::default();
        assert_eq!(ttl.get(), None);
        ttl.set(Duration::ZERO);
        ttl.set_if_unset(Duration::from_secs(9));
        assert_eq!(ttl.get(), None, "set to never collect before");
        ttl.set(Duration::from_secs(5));
        assert_eq!(ttl.get(), Some(Duration::from_secs(5)));
        let fresh = GcTtl::default();
        fresh.set_if_unset(Duration::from_secs(9));
        assert_eq!(fresh.get(), Some(Duration::from_secs(9)));
        assert!(threshold_now(Duration::from_secs(5)) < threshold_now(Duration::ZERO));
    }
}
