//! Merges several sorted internal iterators into one, smallest key first, using a binary min-heap of
//! child indices. Equal keys cannot occur across children (sequence numbers are unique), so ties only
//! arise for the same entry seen twice, which never happens.

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::keys::cmp_internal;
use std::cmp::Ordering;

/// The merge of several children.
pub struct MergingIter {
    children: Vec<Box<dyn InternalIterator>>,
    // INVARIANT: holds exactly the indices of valid children, heap-ordered by their current key.
    heap: Vec<usize>,
}

impl MergingIter {
    /// Merges `children`.
    pub fn new(children: Vec<Box<dyn InternalIterator>>) -> MergingIter {
        MergingIter { children, heap: Vec::new() }
    }

    fn less(&self, a: usize, b: usize) -> bool {
        cmp_internal(self.children[a].key(), self.children[b].key()) == Ordering::Less
    }

    fn rebuild(&mut self) {
        self.heap = (0..self.children.len()).filter(|&i| self.children[i].valid()).collect();
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if l < n && self.less(self.heap[l], self.heap[smallest]) {
                smallest = l;
            }
            if r < n && self.less(self.heap[r], self.heap[smallest]) {
                smallest = r;
            }
            if smallest == i {
                return;
            }
            self.heap.swap(i, smallest);
            i = smallest;
        }
    }
}

impl InternalIterator for MergingIter {
    fn valid(&self) -> bool {
        !self.heap.is_empty()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        for c in &mut self.children {
            c.seek_to_first()?;
        }
        self.rebuild();
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for c in &mut self.children {
            c.seek(target)?;
        }
        self.rebuild();
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        let Some(&top) = self.heap.first() else { return Ok(()) };
        if let Err(e) = self.children[top].next() {
            self.heap.clear();
            return Err(e);
        }
        if !self.children[top].valid() {
            let last = self.heap.len() - 1;
            self.heap.swap(0, last);
            self.heap.pop();
        }
        self.sift_down(0);
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.children[self.heap[0]].key()
    }

    fn value(&self) -> &[u8] {
        self.children[self.heap[0]].value()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{Kind, internal_key, user_key};

    /// A sorted in-memory iterator for tests.
    pub(crate) struct VecIter {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        pos: usize,
    }

    impl VecIter {
        pub(crate) fn new(mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> VecIter {
            entries.sort_by(|a, b| cmp_internal(&a.0, &b.0));
            let pos = entries.len();
            VecIter { entries, pos }
        }
    }

    impl InternalIterator for VecIter {
        fn valid(&self) -> bool {
            self.pos < self.entries.len()
        }
        fn seek_to_first(&mut self) -> Result<()> {
            self.pos = 0;
            Ok(())
        }
        fn seek(&mut self, target: &[u8]) -> Result<()> {
            self.pos = self.entries.partition_point(|e| cmp_internal(&e.0, target) == Ordering::Less);
            Ok(())
        }
        fn next(&mut self) -> Result<()> {
            self.pos += 1;
            Ok(())
        }
        fn key(&self) -> &[u8] {
            &self.entries[self.pos].0
        }
        fn value(&self) -> &[u8] {
            &self.entries[self.pos].1
        }
    }

    #[test]
    fn merges_in_internal_key_order() {
        let ik = |k: &[u8], s| (internal_key(&user_key(0, k), s, Kind::Set), vec![]);
        let a = VecIter::new(vec![ik(b"a", 1), ik(b"c", 5), ik(b"e", 2)]);
        let b = VecIter::new(vec![ik(b"b", 3), ik(b"c", 7), ik(b"f", 4)]);
        let c = VecIter::new(vec![]);
        let mut m = MergingIter::new(vec![Box::new(a), Box::new(b), Box::new(c)]);
        m.seek_to_first().unwrap();
        let mut seen = Vec::new();
        while m.valid() {
            seen.push(m.key().to_vec());
            m.next().unwrap();
        }
        let want =
            vec![ik(b"a", 1).0, ik(b"b", 3).0, ik(b"c", 7).0, ik(b"c", 5).0, ik(b"e", 2).0, ik(b"f", 4).0];
        assert_eq!(seen, want);
        m.seek(&ik(b"c", 6).0).unwrap();
        assert_eq!(m.key(), &ik(b"c", 5).0[..]);
    }
}
