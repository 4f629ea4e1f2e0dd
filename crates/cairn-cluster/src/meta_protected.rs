//! Protected timestamps (issue 26): records in the meta group, each holding every shard's GC threshold
//! at or below its timestamp until it is released or expires, so that the versions a backup (or, later,
//! a transaction or a change feed) reads at that timestamp stay readable however far `gc_ttl` moves on.
//!
//! A shard's leader reads the records linearizably *after* reading its clock for `now - gc_ttl`, and
//! proposes the lower of the two (`GcFloor`, `raft/replica/gc.rs`). A record created after that read
//! began is therefore not seen, and is safe only if its timestamp is above any threshold computed from a
//! clock read before it committed: [`ClusterState::earliest_protectable`] refuses anything older than
//! `now - gc_ttl + max(gc_ttl / 2, 2 * max_clock_offset + PROTECT_COMMIT_SLACK)`, capped at `now` (the
//! clocks of the node judging it and of a shard leader differ by at most the offset each way; one that
//! takes longer to commit is released and refused); `gc_ttl` is the one before its last raise until the
//! new one has run its course. With a `gc_ttl` under about 12 s the cap at `now` leaves no such margin.
//! A protection that came too late anyway costs availability, never correctness: reads below a shard's
//! threshold are refused.

use super::{ClusterState, MAX_GC_TTL_SECS, MetaError, Result, check_text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most protected timestamps a cluster holds at once (expired ones do not count).
pub const MAX_PROTECTED: usize = 1024;
/// Longest owner accepted.
pub const MAX_OWNER_BYTES: usize = 256;
/// Longest time a protected timestamp may hold GC back without being renewed: thirty days.
pub const MAX_PROTECT_SECS: u64 = 30 * 24 * 3600;
/// Longest a protected timestamp may take to commit after it was judged against the clock: one that
/// took longer is released again and refused (a threshold may have passed it meanwhile).
pub const PROTECT_COMMIT_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// One protected timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedTimestamp {
    /// Its id (never reused).
    pub id: u64,
    /// The wall time it protects, in nanoseconds since the Unix epoch: every version a read at this
    /// wall time sees stays readable on every shard.
    pub wall_time: u64,
    /// When it stops holding GC back, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Who holds it (a backup's id, an operator's name).
    pub owner: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl ProtectedTimestamp {
    /// Whether it still holds GC back at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// The protected timestamps still live at `now_ms`.
fn live_only(
    protected: &BTreeMap<u64, ProtectedTimestamp>,
    now_ms: u64,
) -> BTreeMap<u64, ProtectedTimestamp> {
    protected.iter().filter(|(_, p)| p.live(now_ms)).map(|(id, p)| (*id, p.clone())).collect()
}

impl ClusterState {
    /// The oldest wall time (nanoseconds) a protected timestamp made at `now_ns` may hold: one that
    /// no shard's GC threshold can have passed, nor be about to pass (see the module documentation).
    /// Anything with `gc_ttl` 0 (nothing collected from now on; a threshold raised before stays, and
    /// reads below it are refused).
    pub fn earliest_protectable(&self, now_ns: u64) -> u64 {
        let s = &self.settings;
        // After a raise (or 0: collect nothing), shards' thresholds trail by the old TTL until the new
        // one has run its course (and thresholds never come back down).
        let raised_for = if s.gc_ttl_secs == 0 { MAX_GC_TTL_SECS } else { s.gc_ttl_secs };
        let raise_settled = s.gc_ttl_raised_ms.saturating_add(raised_for.saturating_mul(1000));
        let ttl_secs = match (s.gc_ttl_before_secs, s.gc_ttl_secs) {
            (0, now_ttl) => now_ttl,
            (_, now_ttl) if now_ns / 1_000_000 >= raise_settled => now_ttl,
            (before, 0) => before,
            (before, now_ttl) => before.min(now_ttl),
        };
        let ttl = ttl_secs.saturating_mul(1_000_000_000);
        if ttl == 0 {
            return 0;
        }
        // Room for the clocks' offset (the meta leader's and a shard leader's), and for the time the
        // record takes to commit after it is judged (`PROTECT_COMMIT_SLACK`, checked by the caller).
        let offset = self.settings.max_clock_offset_ms.saturating_mul(1_000_000);
        let slack = u64::try_from(PROTECT_COMMIT_SLACK.as_nanos()).unwrap_or(u64::MAX);
        let margin = (ttl / 2).max(offset.saturating_mul(2).saturating_add(slack));
        now_ns.saturating_sub(ttl).saturating_add(margin).min(now_ns)
    }

    /// Makes a protected timestamp of `wall_time` for `owner`, live for `secs` from `now_ns`: the next
    /// state and the record. Expired records are dropped on the way.
    pub fn protect(
        &self,
        wall_time: u64,
        secs: u64,
        owner: &str,
        now_ns: u64,
    ) -> Result<(ClusterState, ProtectedTimestamp)> {
        check_text("an owner", owner, MAX_OWNER_BYTES)?;
        if !(1..=MAX_PROTECT_SECS).contains(&secs) {
            return Err(MetaError::Invalid(format!(
                "a protected timestamp lives 1 to {MAX_PROTECT_SECS} seconds, not {secs}"
            )));
        }
        let earliest = self.earliest_protectable(now_ns);
        if wall_time < earliest {
            return Err(MetaError::Invalid(format!(
                "timestamp {wall_time}.0 is older than {earliest}.0: shards may collect versions that old before \
                 the protection reaches them (gc_ttl is {} s)",
                self.settings.gc_ttl_secs
            )));
        }
        let ahead = self.settings.max_clock_offset_ms.saturating_mul(1_000_000);
        if wall_time > now_ns.saturating_add(ahead) {
            return Err(MetaError::Invalid(format!(
                "timestamp {wall_time}.0 is ahead of the clock ({now_ns}.0) by more than the maximum offset"
            )));
        }
        let now_ms = now_ns / 1_000_000;
        let live = live_only(&self.protected, now_ms);
        if live.len() >= MAX_PROTECTED {
            return Err(MetaError::Invalid(format!(
                "the cluster holds {MAX_PROTECTED} protected timestamps already: release some"
            )));
        }
        let id = self.next_protected_id.max(1);
        let record = ProtectedTimestamp {
            id,
            wall_time,
            expires_at_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
            owner: owner.to_string(),
            created_at_ms: now_ms,
        };
        let next = self.changed(|next| {
            next.protected = live;
            next.protected.insert(id, record.clone());
            next.next_protected_id = id + 1;
        });
        Ok((next, record))
    }

    /// Releases protected timestamp `id` (and drops expired ones): the next state, `None` if `id` is
    /// not held (released before, expired, or never made).
    pub fn release_protected(&self, id: u64, now_ms: u64) -> Option<ClusterState> {
        if !self.protected.get(&id).is_some_and(|p| p.live(now_ms)) {
            return None;
        }
        let mut live = live_only(&self.protected, now_ms);
        live.remove(&id);
        Some(self.changed(|next| next.protected = live))
    }

    /// The protected timestamps live at `now_ms`, by id.
    pub fn protected_at(&self, now_ms: u64) -> Vec<&ProtectedTimestamp> {
        self.protected.values().filter(|p| p.live(now_ms)).collect()
    }

    /// The lowest wall time a live protected timestamp holds at `now_ms`: no shard's GC threshold may
    /// pass it.
    pub fn protected_floor(&self, now_ms: u64) -> Option<u64> {
        self.protected_at(now_ms).iter().map(|p| p.wall_time).min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::meta::rows::tests::joined;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_protection_holds_a_floor_until_released_or_expired_and_never_below_what_gc_may_reach() {
        let mut state = joined(3);
        state.settings.gc_ttl_secs = 100;
        let now = 1_000_000 * S;
        // Half the TTL ahead of `now - ttl`: what a threshold read before now cannot reach.
        assert_eq!(state.earliest_protectable(now), now - 50 * S);
        assert!(state.protect(now - 51 * S, 60, "backup", now).is_err());
        assert!(state.protect(now + 2 * S, 60, "backup", now).is_err(), "ahead of the clock");
        assert!(state.protect(now, 0, "backup", now).is_err(), "no lifetime");
        assert!(state.protect(now, 60, "", now).is_err(), "no owner");
        let (one, first) = state.protect(now - 50 * S, 60, "backup", now).unwrap();
        let (two, second) = one.protect(now - 10 * S, 10, "txn", now).unwrap();
        assert_eq!((first.id, second.id), (1, 2));
        let now_ms = now / 1_000_000;
        assert_eq!(two.protected_floor(now_ms), Some(now - 50 * S));
        // The first released, the second holds until it expires.
        let released = two.release_protected(1, now_ms).unwrap();
        assert_eq!(released.release_protected(1, now_ms), None, "released once");
        assert_eq!(released.protected_floor(now_ms), Some(now - 10 * S));
        assert_eq!(released.protected_floor(now_ms + 10_000), None, "expired");
        // Ids are never reused; expired records are dropped as others are made.
        let (three, third) = released.protect(now + 20 * S, 60, "b", now + 20 * S).unwrap();
        assert_eq!(third.id, 3);
        assert_eq!(three.protected.keys().copied().collect::<Vec<_>>(), vec![3]);
        // GC off: anything (a threshold raised before still refuses reads below it).
        let mut off = joined(3);
        off.settings.gc_ttl_secs = 0;
        assert_eq!(off.earliest_protectable(now), 0);
        // After a raise from 100 s to 1000 s, thresholds still trail by 100 s until 1000 s have passed.
        let raised = state.set_setting_at("gc_ttl", "1000", now / 1_000_000).unwrap().unwrap();
        assert_eq!(raised.earliest_protectable(now + S), now + S - 50 * S);
        assert_eq!(raised.earliest_protectable(now + 1000 * S), now + 1000 * S - 500 * S);
        let lowered = raised.set_setting_at("gc_ttl", "10", now / 1_000_000).unwrap().unwrap();
        assert_eq!(lowered.earliest_protectable(now), now - 10 * S + 6 * S, "no wait for a lowered TTL");
        // Turned off: thresholds stay where the last TTL left them.
        let off = state.set_setting_at("gc_ttl", "0", now / 1_000_000).unwrap().unwrap();
        assert_eq!(off.earliest_protectable(now + 3600 * S), now + 3600 * S - 50 * S);
        // A TTL under the offsets and the commit slack: nothing older than now.
        let mut short = joined(3);
        short.settings.gc_ttl_secs = 1;
        assert_eq!(short.earliest_protectable(now), now);
    }
}
