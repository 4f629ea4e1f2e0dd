//! Telling a stalled replication stream from a slow or a down one, on the leader: a follower that
//! answers heartbeats, lags the leader's log, and whose matched index has not moved for
//! [`STALL_AFTER`] is stalled (its appends keep failing: an entry the transport refuses, a follower
//! that cannot store what it is sent). A down follower is not stalled, it is down (the cluster's
//! liveness reports it); a follower catching up moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long an answering follower's matched index may stay put while it lags before it counts as
/// stalled. Longer than any healthy pause (an election, a large batch on a slow disk); a snapshot
/// install that takes longer shows up too, which an operator also wants to see.
pub const STALL_AFTER: Duration = Duration::from_secs(15);

/// The leader's view of one follower at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Follower {
    /// Entries the follower is known to hold (its matched index + 1; 0 for none).
    pub matched: u64,
    /// The leader's log is ahead of it.
    pub behind: bool,
    /// It acknowledged the leader recently.
    pub answering: bool,
}

/// What changed at one observation.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// Followers that just became stalled, with how far they got.
    pub stalled: Vec<(u64, u64)>,
    /// Followers that were stalled and moved again.
    pub recovered: Vec<u64>,
}

#[derive(Debug)]
struct Progress {
    matched: u64,
    since: Instant,
    stalled: bool,
}

/// The followers' progress as the leader saw it at its last observations.
#[derive(Debug, Default)]
pub(super) struct StallWatch {
    progress: BTreeMap<u64, Progress>,
}

impl StallWatch {
    /// Takes the leader's view of its followers at `now`.
    pub fn observe(&mut self, now: Instant, followers: &BTreeMap<u64, Follower>) -> Changes {
        let mut changes = Changes::default();
        self.progress.retain(|node, p| {
            let gone = !followers.contains_key(node);
            if gone && p.stalled {
                changes.recovered.push(*node);
            }
            !gone
        });
        for (node, f) in followers {
            let p = self.progress.entry(*node).or_insert(Progress {
                matched: f.matched,
                since: now,
                stalled: false,
            });
            if f.matched != p.matched || !f.behind {
                if p.stalled {
                    changes.recovered.push(*node);
                }
                *p = Progress { matched: f.matched, since: now, stalled: false };
            } else if f.answering && !p.stalled && now.saturating_duration_since(p.since) >= STALL_AFTER {
                p.stalled = true;
                changes.stalled.push((*node, f.matched));
            }
        }
        changes
    }

    /// This replica no longer leads: it knows nothing about the followers' progress.
    pub fn clear(&mut self) -> Vec<u64> {
        let was: Vec<u64> = self.stalled().into_iter().collect();
        self.progress.clear();
        was
    }

    /// The followers stalled now.
    pub fn stalled(&self) -> BTreeSet<u64> {
        self.progress.iter().filter(|(_, p)| p.stalled).map(|(node, _)| *node).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(u64, u64, bool, bool)]) -> BTreeMap<u64, Follower> {
        entries
            .iter()
            .map(|&(node, matched, behind, answering)| (node, Follower { matched, behind, answering }))
            .collect()
    }

    #[test]
    fn only_an_answering_lagging_follower_that_does_not_move_is_stalled() {
        let mut watch = StallWatch::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Node 2 is stuck at 10 and answers; node 3 is stuck at 10 but down; node 4 is caught up.
        let stuck = view(&[(2, 10, true, true), (3, 10, true, false), (4, 40, false, true)]);
        assert_eq!(watch.observe(at(0), &stuck), Changes::default());
        assert_eq!(watch.observe(at(14), &stuck), Changes::default());
        let changes = watch.observe(at(15), &stuck);
        assert_eq!(changes.stalled, vec![(2, 10)]);
        assert_eq!(watch.stalled(), BTreeSet::from([2]));
        // Said once, not at every observation.
        assert_eq!(watch.observe(at(16), &stuck), Changes::default());
        // Node 2 moves again: recovered, and its clock restarts.
        let moving = view(&[(2, 11, true, true), (3, 10, true, false), (4, 40, false, true)]);
        assert_eq!(watch.observe(at(17), &moving).recovered, vec![2]);
        assert!(watch.stalled().is_empty());
        assert_eq!(watch.observe(at(31), &moving), Changes::default());
        // A follower catching up steadily is never stalled, however long it lags.
        let mut watch = StallWatch::default();
        for s in 0..100 {
            let changes = watch.observe(at(s), &view(&[(2, s, true, true)]));
            assert_eq!(changes, Changes::default());
        }
        // Leadership lost: whatever was stalled is no longer this replica's to report.
        let mut watch = StallWatch::default();
        watch.observe(at(0), &stuck);
        watch.observe(at(20), &stuck);
        assert_eq!(watch.clear(), vec![2]);
        assert!(watch.stalled().is_empty());
        // A follower removed from the group while stalled is reported recovered (no longer stalled).
        watch.observe(at(0), &stuck);
        watch.observe(at(20), &stuck);
        assert_eq!(watch.observe(at(21), &view(&[(4, 40, false, true)])).recovered, vec![2]);
    }
}
