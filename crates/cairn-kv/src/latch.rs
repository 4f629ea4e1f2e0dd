//! Latches: a shard leader's in-memory locks on the keys a request reads and writes, held from its
//! evaluation until its command has applied, so that a request evaluated later reads what an earlier
//! one on the same keys wrote (the leader evaluates against its applied state, and a command in
//! flight is not applied yet). Requests on different keys do not wait for each other.
//!
//! A request takes all its latches in key order (so two requests never wait for each other in a
//! circle); a latch is freed when its guard drops, and its table entry with it once nobody waits.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// One shard's latches.
#[derive(Debug, Default)]
pub struct Latches {
    table: parking_lot::Mutex<HashMap<Vec<u8>, Arc<Mutex<()>>>>,
}

/// The latches one request holds; dropping it frees them. It owns a reference to its table, so it
/// can outlive the request (a command whose outcome is not known yet keeps its keys latched).
#[derive(Debug)]
pub struct LatchGuard {
    latches: Arc<Latches>,
    held: Vec<(Vec<u8>, OwnedMutexGuard<()>)>,
}

impl Latches {
    /// Waits for, and takes, the latches of `keys` (in any order, repeats allowed).
    pub async fn acquire(self: &Arc<Self>, mut keys: Vec<Vec<u8>>) -> LatchGuard {
        keys.sort_unstable();
        keys.dedup();
        let mut guard = LatchGuard { latches: Arc::clone(self), held: Vec::with_capacity(keys.len()) };
        for key in keys {
            let latch = Arc::clone(self.table.lock().entry(key.clone()).or_default());
            let held = Waiting { latches: self, key, taken: false }.wait(latch).await;
            guard.held.push(held);
        }
        guard
    }

    /// Keys with a latch held or waited for.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// True if no latch is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops `key`'s table entry if nobody holds or waits for its latch (`latch` was the caller's
    /// reference, already given up).
    fn release(&self, key: &[u8]) {
        let mut table = self.table.lock();
        if table.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            table.remove(key);
        }
    }
}

/// A request waiting for one latch; if the request is dropped while it waits, the table entry it
/// made is cleaned up all the same.
struct Waiting<'a> {
    latches: &'a Latches,
    key: Vec<u8>,
    taken: bool,
}

impl Waiting<'_> {
    async fn wait(mut self, latch: Arc<Mutex<()>>) -> (Vec<u8>, OwnedMutexGuard<()>) {
        let held = latch.lock_owned().await;
        self.taken = true;
        (std::mem::take(&mut self.key), held)
    }
}

impl Drop for Waiting<'_> {
    // Dropped while waiting (the request gave up): the lock future, holding its own reference, is
    // dropped first (a suspended future drops its pending await before the arguments it captured),
    // so nobody else waiting means the count is back to the table's one. Were it not, the entry
    // would only linger until the key's next release.
    fn drop(&mut self) {
        if !self.taken {
            self.latches.release(&self.key);
        }
    }
}

impl Drop for LatchGuard {
    fn drop(&mut self) {
        for (key, held) in self.held.drain(..) {
            drop(held);
            self.latches.release(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_latch_waits_for_its_holder_and_other_keys_do_not() {
        let latches = Arc::new(Latches::default());
        let a = latches.acquire(vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()]).await;
        assert_eq!(latches.len(), 2);
        // Another key: taken at once.
        let c = latches.acquire(vec![b"c".to_vec()]).await;
        // A key held: waits.
        let mut blocked = Box::pin(latches.acquire(vec![b"b".to_vec()]));
        assert!(futures_poll_once(blocked.as_mut()).is_none());
        drop(a);
        let b = futures_poll_once(blocked.as_mut()).expect("free once the holder drops");
        drop((b, c));
        assert!(latches.is_empty(), "entries go with their last holder");
        // A waiter dropped while it waits leaves nothing behind.
        let held = latches.acquire(vec![b"x".to_vec()]).await;
        let mut gave_up = Box::pin(latches.acquire(vec![b"x".to_vec()]));
        assert!(futures_poll_once(gave_up.as_mut()).is_none());
        drop(gave_up);
        drop(held);
        assert!(latches.is_empty());
    }

    fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = f;
        match std::pin::Pin::new(&mut f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
