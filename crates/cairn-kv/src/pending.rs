//! The timestamps of a node's writes in flight: handed out by its clock, so that a read at an explicit
//! timestamp can wait for every write that may still land at or below it.

use crate::hlc::{Clock, Timestamp};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::time::Instant;

/// Timestamps handed to writes not yet committed, so that a read at an explicit timestamp can wait for
/// every write that may land at or below it.
#[derive(Debug)]
pub struct Pending {
    clock: Clock,
    stamps: Mutex<BTreeMap<Timestamp, u32>>,
    done: Condvar,
}

impl Pending {
    /// No write in flight; a clock starting at the physical time, refusing timestamps more than
    /// `max_clock_offset` ahead of it.
    pub fn new(max_clock_offset: std::time::Duration) -> Pending {
        Pending::with_clock(Clock::new(max_clock_offset))
    }

    /// No write in flight; timestamps from `clock`.
    pub fn with_clock(clock: Clock) -> Pending {
        Pending { clock, stamps: Mutex::new(BTreeMap::new()), done: Condvar::new() }
    }

    /// The node's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A fresh timestamp for a write, registered as in flight.
    pub fn begin(&self) -> Timestamp {
        let mut stamps = self.stamps.lock();
        let ts = self.clock.now();
        *stamps.entry(ts).or_insert(0) += 1;
        ts
    }

    /// Marks the writes at `stamps` committed (or failed).
    pub fn end(&self, done: &[Timestamp]) {
        if done.is_empty() {
            return;
        }
        let mut stamps = self.stamps.lock();
        for ts in done {
            if let Some(n) = stamps.get_mut(ts) {
                *n -= 1;
                if *n == 0 {
                    stamps.remove(ts);
                }
            }
        }
        drop(stamps);
        self.done.notify_all();
    }

    /// Waits until no write at or below `at` is in flight; false if `deadline` passed first.
    pub fn wait_below(&self, at: Timestamp, deadline: Instant) -> bool {
        let mut stamps = self.stamps.lock();
        while stamps.keys().next().is_some_and(|&t| t <= at) {
            if self.done.wait_until(&mut stamps, deadline).timed_out() {
                return false;
            }
        }
        true
    }
}
