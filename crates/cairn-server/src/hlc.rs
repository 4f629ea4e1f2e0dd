//! Hybrid logical clock: timestamps `{wall_time, logical}` that follow the physical clock but never go
//! backwards and never repeat, so every write on a node gets a distinct, increasing timestamp.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

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

    /// Parses `WALL` or `WALL.LOGICAL` (decimal).
    pub fn parse(text: &str) -> Option<Timestamp> {
        let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
        Some(Timestamp { wall_time: wall.parse().ok()?, logical: logical.parse().ok()? })
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_time, self.logical)
    }
}

/// The node's clock.
#[derive(Debug, Default)]
pub struct Clock {
    last: Mutex<Timestamp>,
}

fn physical_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Clock {
    /// A clock starting at the physical time.
    pub fn new() -> Clock {
        Clock::default()
    }

    /// A fresh timestamp, larger than every one handed out or observed before.
    pub fn now(&self) -> Timestamp {
        let physical = physical_now();
        let mut last = self.last.lock();
        let next = if physical > last.wall_time {
            Timestamp { wall_time: physical, logical: 0 }
        } else if last.logical < u32::MAX {
            Timestamp { wall_time: last.wall_time, logical: last.logical + 1 }
        } else {
            Timestamp { wall_time: last.wall_time.saturating_add(1), logical: 0 }
        };
        *last = next;
        next
    }

    /// Moves the clock past `seen` (a timestamp read from storage or another node).
    pub fn observe(&self, seen: Timestamp) {
        let mut last = self.last.lock();
        if seen > *last {
            *last = seen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_increase_and_encode_descending() {
        let clock = Clock::new();
        let mut prev = clock.now();
        for _ in 0..10_000 {
            let t = clock.now();
            assert!(t > prev);
            assert!(t.encode_descending() < prev.encode_descending());
            assert_eq!(Timestamp::decode_descending(&t.encode_descending()), Some(t));
            prev = t;
        }
        clock.observe(Timestamp { wall_time: u64::MAX - 1, logical: 7 });
        assert!(clock.now() > Timestamp { wall_time: u64::MAX - 1, logical: 7 });
        assert_eq!(Timestamp::parse("12.3"), Some(Timestamp { wall_time: 12, logical: 3 }));
        assert_eq!(Timestamp::parse("12"), Some(Timestamp { wall_time: 12, logical: 0 }));
        assert_eq!(Timestamp::parse("x"), None);
    }
}
