//! Read-index rounds shared by concurrent linearizable reads of one replica.
//!
//! A linearizable read needs a read index obtained *after* the read arrived: the leader's commit index
//! once a quorum has confirmed it still leads (a follower asks the leader for one). Under load every read
//! asking on its own costs a call to the leader and a heartbeat round each. Instead, at most one round
//! runs at a time per replica and kind; a read that arrives while one runs joins the *next* round, which
//! starts when the running one ends (a round already under way may have started before the read
//! arrived, so its index could miss a write the read must see). Every round thus starts after each of
//! its readers arrived, and one round serves all of them. At most two rounds exist at a time.

use super::super::GroupError;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::sync::Arc;

/// One round's read index, awaited by every read that joined it.
pub(super) type Round = Shared<BoxFuture<'static, Result<u64, GroupError>>>;

/// The rounds of one replica and kind (quorum-confirmed or lease-confirmed reads).
#[derive(Default)]
pub(super) struct ReadRounds {
    state: parking_lot::Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    next_id: u64,
    // The round under way.
    running: Option<(u64, Round)>,
    // The round that starts once `running` ends; reads that arrive meanwhile join it.
    queued: Option<(u64, Round)>,
}

impl ReadRounds {
    /// A round that starts no earlier than this call: a new one if none runs, else the queued one
    /// (queued now, to run `run`, if there is none yet). `run` performs one read-index round.
    pub(super) fn join<F>(self: &Arc<Self>, run: F) -> Round
    where
        F: FnOnce() -> BoxFuture<'static, Result<u64, GroupError>> + Send + 'static,
    {
        let mut state = self.state.lock();
        if let (Some(_), Some((_, queued))) = (&state.running, &state.queued) {
            return queued.clone();
        }
        let id = state.next_id;
        state.next_id += 1;
        let after = state.running.as_ref().map(|(_, running)| running.clone());
        let queued = after.is_some();
        let rounds = Arc::clone(self);
        let round = async move {
            if let Some(previous) = after {
                // Its outcome is not ours: it may have started before our readers arrived.
                let _ = previous.await;
            }
            if queued {
                // From now on, arriving reads queue behind this round instead of joining it.
                rounds.promote(id);
            }
            let index = run().await;
            rounds.finish(id);
            index
        }
        .boxed()
        .shared();
        let slot = if queued { &mut state.queued } else { &mut state.running };
        *slot = Some((id, round.clone()));
        round
    }

    /// Round `id` (queued) starts: it becomes the running one.
    fn promote(&self, id: u64) {
        let mut state = self.state.lock();
        if state.queued.as_ref().is_some_and(|(q, _)| *q == id) {
            state.running = state.queued.take();
        }
    }

    /// Round `id` has its index: a read arriving now needs a round of its own.
    fn finish(&self, id: u64) {
        let mut state = self.state.lock();
        if state.running.as_ref().is_some_and(|(r, _)| *r == id) {
            state.running = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Notify;

    /// A round that counts itself, waits for `gate`, and returns its number.
    fn counted(
        started: &Arc<AtomicU64>,
        gate: &Arc<Notify>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u64, GroupError>> + Send + 'static {
        let (started, gate) = (Arc::clone(started), Arc::clone(gate));
        move || {
            async move {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                gate.notified().await;
                Ok(n)
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn reads_arriving_during_a_round_share_the_next_one() {
        let rounds = Arc::new(ReadRounds::default());
        let started = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Notify::new());
        let first = tokio::spawn(rounds.join(counted(&started, &gate)));
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Three reads arrive while round 1 runs: they share round 2, which waits for round 1.
        let later: Vec<_> = (0..3).map(|_| tokio::spawn(rounds.join(counted(&started, &gate)))).collect();
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "round 2 started before round 1 ended");
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Ok(1));
        while started.load(Ordering::SeqCst) == 1 {
            tokio::task::yield_now().await;
        }
        // Round 2 runs; a read arriving now queues round 3 instead of joining round 2.
        let last = tokio::spawn(rounds.join(counted(&started, &gate)));
        tokio::task::yield_now().await;
        gate.notify_one();
        for read in later {
            assert_eq!(read.await.unwrap(), Ok(2));
        }
        while started.load(Ordering::SeqCst) == 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(last.await.unwrap(), Ok(3));
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_read_after_a_round_ended_starts_a_new_one() {
        let rounds = Arc::new(ReadRounds::default());
        let started = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Notify::new());
        for expected in 1..=3 {
            let read = tokio::spawn(rounds.join(counted(&started, &gate)));
            while started.load(Ordering::SeqCst) < expected {
                tokio::task::yield_now().await;
            }
            gate.notify_one();
            assert_eq!(read.await.unwrap(), Ok(expected));
        }
    }

    #[tokio::test]
    async fn a_round_whose_readers_gave_up_is_finished_by_the_next() {
        let rounds = Arc::new(ReadRounds::default());
        let started = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Notify::new());
        // Round 1's only reader drops it mid-way; round 2's reader drives round 1 on to its end.
        let mut first = rounds.join(counted(&started, &gate));
        assert!(futures_util::poll!(&mut first).is_pending());
        let second = tokio::spawn(rounds.join(counted(&started, &gate)));
        drop(first);
        tokio::task::yield_now().await;
        gate.notify_one();
        while started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(second.await.unwrap(), Ok(2));
    }
}
