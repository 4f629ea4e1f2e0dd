//! Bucket ranges. A shard owns a set of non-overlapping inclusive `u16` ranges of a fixed bucket space
//! `0..total_buckets`. [`BucketSet`] keeps them normalized: sorted, disjoint and non-adjacent.

use crate::error::{Error, Result};
use std::ops::RangeInclusive;

/// An inclusive range of buckets, as the seeds write them (`0..=511`).
pub type BucketRange = RangeInclusive<u16>;

/// The most buckets a bucket space can have (`u16` buckets).
pub const MAX_TOTAL_BUCKETS: u32 = 1 << 16;

/// A normalized set of bucket ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSet {
    // INVARIANT: sorted by start, each range non-empty, consecutive ranges separated by at least one
    // bucket (overlapping or adjacent ranges are merged).
    ranges: Vec<BucketRange>,
}

impl BucketSet {
    /// Builds a set from ranges that must lie inside `0..total_buckets` and must not overlap each other.
    pub fn new(ranges: &[BucketRange], total_buckets: u32) -> Result<BucketSet> {
        let mut sorted: Vec<BucketRange> = ranges.to_vec();
        for r in &sorted {
            if r.start() > r.end() {
                return Err(Error::InvalidArgument(format!(
                    "empty bucket range {}..={}",
                    r.start(),
                    r.end()
                )));
            }
            if u32::from(*r.end()) >= total_buckets {
                return Err(Error::InvalidArgument(format!(
                    "bucket range {}..={} exceeds total_buckets {total_buckets}",
                    r.start(),
                    r.end()
                )));
            }
        }
        sorted.sort_by_key(|r| *r.start());
        for pair in sorted.windows(2) {
            if pair[1].start() <= pair[0].end() {
                return Err(Error::InvalidArgument(format!(
                    "bucket ranges {}..={} and {}..={} overlap",
                    pair[0].start(),
                    pair[0].end(),
                    pair[1].start(),
                    pair[1].end()
                )));
            }
        }
        Ok(BucketSet::from_sorted_disjoint(sorted))
    }

    /// Every bucket of a `total_buckets` space.
    pub fn full(total_buckets: u32) -> BucketSet {
        if total_buckets == 0 {
            return BucketSet::default();
        }
        let last = (total_buckets.min(MAX_TOTAL_BUCKETS) - 1) as u16;
        BucketSet { ranges: vec![0..=last] }
    }

    fn from_sorted_disjoint(sorted: Vec<BucketRange>) -> BucketSet {
        let mut ranges: Vec<BucketRange> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match ranges.last_mut() {
                Some(last) if u32::from(*last.end()) + 1 >= u32::from(*r.start()) => {
                    *last = *last.start()..=(*last.end()).max(*r.end());
                }
                _ => ranges.push(r),
            }
        }
        BucketSet { ranges }
    }

    /// True if `bucket` is in the set.
    pub fn contains(&self, bucket: u16) -> bool {
        let idx = self.ranges.partition_point(|r| *r.end() < bucket);
        self.ranges.get(idx).is_some_and(|r| r.contains(&bucket))
    }

    /// True if every bucket of `range` is in the set.
    pub fn contains_range(&self, range: &BucketRange) -> bool {
        let idx = self.ranges.partition_point(|r| r.end() < range.start());
        self.ranges.get(idx).is_some_and(|r| r.start() <= range.start() && range.end() <= r.end())
    }

    /// True if any bucket of `range` is in the set.
    pub fn intersects(&self, range: &BucketRange) -> bool {
        let idx = self.ranges.partition_point(|r| r.end() < range.start());
        self.ranges.get(idx).is_some_and(|r| r.start() <= range.end())
    }

    /// The normalized ranges.
    pub fn ranges(&self) -> &[BucketRange] {
        &self.ranges
    }

    /// True if the set holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of buckets in the set.
    pub fn len(&self) -> u32 {
        self.ranges.iter().map(|r| u32::from(*r.end()) - u32::from(*r.start()) + 1).sum()
    }

    /// The set with `other`'s buckets added.
    pub fn union(&self, other: &BucketSet) -> BucketSet {
        let mut all: Vec<BucketRange> = self.ranges.iter().chain(other.ranges.iter()).cloned().collect();
        all.sort_by_key(|r| *r.start());
        BucketSet::from_sorted_disjoint(all)
    }

    /// The buckets in both sets.
    pub fn intersect(&self, other: &BucketSet) -> BucketSet {
        self.subtract(&self.subtract(other))
    }

    /// The smallest bucket of the set that is `>= bucket`.
    pub fn first_at_or_after(&self, bucket: u16) -> Option<u16> {
        let idx = self.ranges.partition_point(|r| *r.end() < bucket);
        self.ranges.get(idx).map(|r| (*r.start()).max(bucket))
    }

    /// A set of one range (which must be non-empty).
    pub fn of(range: BucketRange) -> BucketSet {
        BucketSet { ranges: if range.start() <= range.end() { vec![range] } else { Vec::new() } }
    }

    /// The set with `other`'s buckets removed.
    pub fn subtract(&self, other: &BucketSet) -> BucketSet {
        let mut out = Vec::new();
        for r in &self.ranges {
            let (mut start, end) = (u32::from(*r.start()), u32::from(*r.end()));
            for o in &other.ranges {
                let (os, oe) = (u32::from(*o.start()), u32::from(*o.end()));
                if oe < start || os > end {
                    continue;
                }
                if os > start {
                    out.push(start as u16..=(os - 1) as u16);
                }
                start = oe + 1;
                if start > end {
                    break;
                }
            }
            if start <= end {
                out.push(start as u16..=end as u16);
            }
        }
        BucketSet::from_sorted_disjoint(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_overlap_out_of_space_and_empty() {
        assert!(BucketSet::new(&[0..=10, 10..=20], 1024).is_err());
        assert!(BucketSet::new(&[0..=1024], 1024).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert!(BucketSet::new(&[empty], 1024).is_err());
    }

    #[test]
    fn merges_adjacent_and_answers_membership() {
        let s = BucketSet::new(&[512..=1023, 0..=10, 11..=20], 1024).unwrap();
        assert_eq!(s.ranges(), &[0..=20, 512..=1023]);
        assert!(s.contains(0) && s.contains(20) && !s.contains(21) && s.contains(1023));
        assert!(s.contains_range(&(512..=600)) && !s.contains_range(&(15..=30)));
        assert!(s.intersects(&(15..=30)) && !s.intersects(&(21..=511)));
        assert_eq!(s.len(), 21 + 512);
    }

    #[test]
    fn subtract_and_union_are_inverse_on_disjoint_parts() {
        let all = BucketSet::full(1024);
        let a = BucketSet::new(&[342..=511, 700..=710], 1024).unwrap();
        let rest = all.subtract(&a);
        assert_eq!(rest.ranges(), &[0..=341, 512..=699, 711..=1023]);
        assert_eq!(rest.union(&a), all);
        assert_eq!(a.intersect(&BucketSet::of(500..=705)).ranges(), &[500..=511, 700..=705]);
        assert_eq!(rest.intersect(&BucketSet::of(500..=705)).ranges(), &[512..=699]);
        assert_eq!(a.first_at_or_after(0), Some(342));
        assert_eq!(a.first_at_or_after(400), Some(400));
        assert_eq!(a.first_at_or_after(512), Some(700));
        assert_eq!(a.first_at_or_after(711), None);
    }
}
