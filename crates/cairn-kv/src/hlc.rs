//! Hybrid logical clock: timestamps `{wall_time, logical}` that follow the physical clock but never go
//! backwards and never repeat, so every write on a node gets a distinct, increasing timestamp.
//!
//! The clock is bounded: a timestamp from a client or a peer more than the maximum clock offset ahead
//! of the physical clock is refused ([`Clock::observe`], [`Clock::check`]) and never moves the clock, so
//! one request cannot push every later write into the future. Wall times stay within `i64`
//! nanoseconds (year 2262); a logical counter that would overflow advances the wall time instead.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A hybrid-logical-clock timestamp: nanoseconds since the Unix epoch, then a counter that orders
/// events within one nanosecond (or while the physical clock lags behind the last timestamp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Nanoseconds since the Unix epoch.
    pub wall_time: u64,
    /// Orders timestamps with the same `wall_time`.
    pub logical: u32,
}

/// Bytes of an encoded timestamp.
pub const TIMESTAMP_BYTES: usize = 12;

/// The largest wall time a timestamp may carry: `i64::MAX` nanoseconds (what other systems and
/// languages can hold), far beyond any clock within the maximum offset.
pub const MAX_WALL_TIME: u64 = i64::MAX as u64;

/// Default maximum clock offset between nodes (and between a client's timestamps and this node).
pub const DEFAULT_MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);

/// Largest maximum clock offset a cluster may be set up with.
pub const MAX_MAX_CLOCK_OFFSET: Duration = Duration::from_secs(60);

/// A timestamp from outside further ahead of this node's clock than the maximum offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {given} is {ahead_ms} ms ahead of this node's clock ({now}), more than the maximum clock \
     offset of {max_offset_ms} ms"
)]
pub struct TimestampAhead {
    /// The timestamp given.
    pub given: Timestamp,
    /// This node's physical time then.
    pub now: Timestamp,
    /// How far ahead it was.
    pub ahead_ms: u64,
    /// The maximum clock offset.
    pub max_offset_ms: u64,
}

impl Timestamp {
    /// The largest timestamp.
    pub const MAX: Timestamp = Timestamp { wall_time: u64::MAX, logical: u32::MAX };

    /// Big-endian bytes, bitwise inverted: newer timestamps sort first.
    pub fn encode_descending(&self) -> [u8; TIMESTAMP_BYTES] {
        let mut out = [0u8; TIMESTAMP_BYTES];
        out[..8].copy_from_slice(&(!self.wall_time).to_be_bytes());
        out[8..].copy_from_slice(&(!self.logical).to_be_bytes());
        out
    }

    /// Inverse of [`Timestamp::encode_descending`]; `None` unless `bytes` has the right length.
    pub fn decode_descending(bytes: &[u8]) -> Option<Timestamp> {
        let wall: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let logical: [u8; 4] = bytes.get(8..TIMESTAMP_BYTES)?.try_into().ok()?;
        (bytes.len() == TIMESTAMP_BYTES).then_some(Timestamp {
            wall_time: !u64::from_be_bytes(wall),
            logical: !u32::from_be_bytes(logical),
        })
    }

    /// The smallest timestamp above this one (the logical counter, or the next nanosecond once it is
    /// saturated).
    pub fn next(&self) -> Timestamp {
        match self.logical.checked_add(1) {
            Some(logical) => Timestamp { wall_time: self.wall_time, logical },
            None => Timestamp { wall_time: self.wall_time.saturating_add(1), logical: 0 },
        }
    }

    /// Parses `WALL` or `WALL.LOGICAL` (decimal digits only, wall time at most [`MAX_WALL_TIME`]).
    pub fn parse(text: &str) -> Option<Timestamp> {
        let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
        let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(wall) || !digits(logical) {
            return None;
        }
        let ts = Timestamp { wall_time: wall.parse().ok()?, logical: logical.parse().ok()? };
        (ts.wall_time <= MAX_WALL_TIME).then_some(ts)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_time, self.logical)
    }
}

/// A physical time source: nanoseconds since the Unix epoch.
pub type Physical = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// The node's clock.
pub struct Clock {
    last: Mutex<Timestamp>,
    // INVARIANT: at most MAX_MAX_CLOCK_OFFSET.
    max_offset: Duration,
    // `None`: the system's clock.
    physical: Option<Physical>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("last", &*self.last.lock())
            .field("max_offset", &self.max_offset)
            .finish()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new(DEFAULT_MAX_CLOCK_OFFSET)
    }
}

fn physical_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Clock {
    /// A clock starting at the physical time that refuses timestamps more than `max_offset` ahead
    /// (capped at [`MAX_MAX_CLOCK_OFFSET`]).
    pub fn new(max_offset: Duration) -> Clock {
        Clock {
            last: Mutex::new(Timestamp::default()),
            max_offset: max_offset.min(MAX_MAX_CLOCK_OFFSET),
            physical: None,
        }
    }

    /// Like [`Clock::new`], reading the physical time from `physical` (a simulation's virtual time,
    /// skewed per node).
    pub fn with_physical(max_offset: Duration, physical: Physical) -> Clock {
        Clock { physical: Some(physical), ..Clock::new(max_offset) }
    }

    fn physical_now(&self) -> u64 {
        match &self.physical {
            Some(physical) => physical(),
            None => physical_now(),
        }
    }

    /// The physical time (nanoseconds since the Unix epoch), which no observed timestamp moves: what
    /// waits for every clock to pass a timestamp count on.
    pub fn physical(&self) -> u64 {
        self.physical_now()
    }

    /// The maximum clock offset.
    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// A fresh timestamp, larger than every one handed out or observed before.
    pub fn now(&self) -> Timestamp {
        let physical = self.physical_now();
        let mut last = self.last.lock();
        let next = if physical > last.wall_time {
            Timestamp { wall_time: physical, logical: 0 }
        } else if last.logical < u32::MAX {
            Timestamp { wall_time: last.wall_time, logical: last.logical + 1 }
        } else {
            // The wall time stays within the offset bound of the physical clock (observe refuses
            // more), so one more nanosecond cannot overflow.
            Timestamp { wall_time: last.wall_time + 1, logical: 0 }
        };
        *last = next;
        next
    }

    /// The largest timestamp this node accepts now: the physical time plus the maximum offset (within
    /// [`MAX_WALL_TIME`]), with the largest logical counter.
    pub fn limit(&self) -> Timestamp {
        let offset = u64::try_from(self.max_offset.as_nanos()).unwrap_or(u64::MAX);
        Timestamp {
            wall_time: self.physical_now().saturating_add(offset).min(MAX_WALL_TIME),
            logical: u32::MAX,
        }
    }

    /// Refuses `given` if it is more than the maximum offset ahead of the physical clock.
    pub fn check(&self, given: Timestamp) -> Result<(), TimestampAhead> {
        let physical = self.physical_now();
        let bound = physical.saturating_add(u64::try_from(self.max_offset.as_nanos()).unwrap_or(u64::MAX));
        if given.wall_time <= bound.min(MAX_WALL_TIME) {
            return Ok(());
        }
        Err(TimestampAhead {
            given,
            now: Timestamp { wall_time: physical, logical: 0 },
            ahead_ms: given.wall_time.saturating_sub(physical) / 1_000_000,
            max_offset_ms: u64::try_from(self.max_offset.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Moves the clock past `seen` (a timestamp from a client, another node or storage), unless it is
    /// more than the maximum offset ahead ([`Clock::check`]): then the clock stays where it is.
    pub fn observe(&self, seen: Timestamp) -> Result<(), TimestampAhead> {
        self.check(seen)?;
        let mut last = self.last.lock();
        if seen > *last {
            *last = seen;
        }
        Ok(())
    }
}

/// The uncertainty interval of a read at `read`: a version above `read` but at or below `limit` (the
/// read's time plus the maximum clock offset) may have been written before the read began on a node
/// whose clock ran ahead, so a transaction reading at `read` that meets one cannot tell whether it
/// precedes it and must move its read timestamp above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uncertainty {
    /// The read's timestamp.
    pub read: Timestamp,
    /// The interval's upper end.
    pub limit: Timestamp,
}

impl Uncertainty {
    /// The interval of a read at `read` with clocks at most `max_offset` apart.
    pub fn new(read: Timestamp, max_offset: Duration) -> Uncertainty {
        let offset = u64::try_from(max_offset.as_nanos()).unwrap_or(u64::MAX);
        let limit = Timestamp { wall_time: read.wall_time.saturating_add(offset), logical: u32::MAX };
        Uncertainty { read, limit: limit.max(read) }
    }

    /// Whether a version at `version` is uncertain for this read (above it, within the interval).
    pub fn is_uncertain(&self, version: Timestamp) -> bool {
        version > self.read && version <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_increase_and_encode_descending() {
        let clock = Clock::default();
        let mut prev = clock.now();
        for _ in 0..10_000 {
            let t = clock.now();
            assert!(t > prev);
            assert!(t.encode_descending() < prev.encode_descending());
            assert_eq!(Timestamp::decode_descending(&t.encode_descending()), Some(t));
            prev = t;
        }
        assert_eq!(Timestamp::parse("12.3"), Some(Timestamp { wall_time: 12, logical: 3 }));
        assert_eq!(Timestamp::parse("12"), Some(Timestamp { wall_time: 12, logical: 0 }));
        for bad in ["x", "", ".", "1.", ".1", "+1", "-1", "1.+2", " 1", "1e3", "9223372036854775808"] {
            assert_eq!(Timestamp::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Timestamp::parse("18446744073709551615.4294967295"), None);
        assert_eq!(
            Timestamp::parse("9223372036854775807"),
            Some(Timestamp { wall_time: MAX_WALL_TIME, logical: 0 })
        );
    }

    // Regression: one read at a far-future timestamp moved the clock 10 years ahead, and a read at
    // u64::MAX made later timestamps go backwards.
    #[test]
    fn timestamps_beyond_the_offset_are_refused_and_never_observed() {
        let clock = Clock::new(Duration::from_millis(500));
        let before = clock.now();
        let now = physical_now();
        for far in [now + 2_000_000_000, now + 10 * 365 * 24 * 3600 * 1_000_000_000, MAX_WALL_TIME, u64::MAX]
        {
            let ts = Timestamp { wall_time: far, logical: u32::MAX };
            let e = clock.observe(ts).unwrap_err();
            assert_eq!(e.max_offset_ms, 500);
            assert!(e.to_string().contains("ahead of this node's clock"), "{e}");
        }
        let after = clock.now();
        assert!(after > before && after.wall_time < physical_now() + 1_000_000_000);
        // Within the offset: observed, and later timestamps are above it.
        let near = Timestamp { wall_time: physical_now() + 200_000_000, logical: 9 };
        clock.observe(near).unwrap();
        assert!(clock.now() > near);
    }

    #[test]
    fn next_and_uncertainty_intervals() {
        let t = Timestamp { wall_time: 10, logical: 3 };
        assert_eq!(t.next(), Timestamp { wall_time: 10, logical: 4 });
        assert_eq!(
            Timestamp { wall_time: 10, logical: u32::MAX }.next(),
            Timestamp { wall_time: 11, logical: 0 }
        );
        let u = Uncertainty::new(Timestamp { wall_time: 1_000, logical: 0 }, Duration::from_nanos(500));
        assert!(
            !u.is_uncertain(Timestamp { wall_time: 1_000, logical: 0 }),
            "the read's own time is certain"
        );
        assert!(!u.is_uncertain(Timestamp { wall_time: 999, logical: 9 }));
        assert!(u.is_uncertain(Timestamp { wall_time: 1_000, logical: 1 }));
        assert!(u.is_uncertain(Timestamp { wall_time: 1_500, logical: u32::MAX }));
        assert!(!u.is_uncertain(Timestamp { wall_time: 1_501, logical: 0 }));
        let clock = Clock::new(Duration::from_millis(500));
        assert!(clock.check(clock.limit()).is_ok());
        assert!(clock.limit() > clock.now());
    }

    #[test]
    fn a_saturated_logical_counter_advances_the_wall_time() {
        let clock = Clock::new(Duration::from_millis(500));
        let ahead = Timestamp { wall_time: physical_now() + 400_000_000, logical: u32::MAX - 1 };
        clock.observe(ahead).unwrap();
        let a = clock.now();
        let b = clock.now();
        assert_eq!(a, Timestamp { wall_time: ahead.wall_time, logical: u32::MAX });
        assert_eq!(b, Timestamp { wall_time: ahead.wall_time + 1, logical: 0 });
        assert!(b > a);
    }
}
