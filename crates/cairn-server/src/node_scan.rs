//! Range scans of a node's store: every bucket's live keys at a timestamp, merged in key order
//! across buckets, shards and (for a cluster member) the nodes holding the other shards.

use super::{Located, MAX_SCAN_LIMIT, Node, Read, ReadOptions, Shard, Versioned, version_of};
use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::mvcc;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::iter::Peekable;
use std::sync::Arc;

impl Node {
    /// Up to `limit` live keys in `[start, end)` (`end` `None`: to the last key) in key order, each with
    /// its newest version at or below `at`, merged across every shard and bucket. Every shard must be
    /// held here (a cluster member's [`Node::scan_async`] asks other nodes for the rest).
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        at: Option<Timestamp>,
    ) -> Result<Vec<(Vec<u8>, Versioned)>> {
        self.check_scan(start, end, limit)?;
        let set = self.set();
        set.check_all_here()?;
        self.scan_shards(&set.serving(), start, end, limit, at)
    }

    fn check_scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<()> {
        self.check_key(start)?;
        if let Some(end) = end {
            self.check_key(end)?;
            if end < start {
                return Err(NodeError::InvalidArgument("range end is below its start".into()));
            }
        }
        if limit > MAX_SCAN_LIMIT {
            return Err(NodeError::InvalidArgument(format!(
                "limit {limit} is over the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        Ok(())
    }

    /// [`Node::scan`] over the local shards `shards` only.
    fn scan_shards(
        &self,
        shards: &[Arc<Shard>],
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        at: Option<Timestamp>,
    ) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let at = self.check_read_ts(at)?;
        let lo = mvcc::key_prefix(start);
        let hi = end.map(mvcc::key_prefix);
        let mut cursors = Vec::new();
        for shard in shards {
            let db = shard.db();
            for range in &shard.ranges {
                for bucket in range.clone() {
                    let it = match &hi {
                        Some(hi) => db.scan(bucket, &lo[..]..&hi[..])?,
                        None => db.scan(bucket, &lo[..]..)?,
                    };
                    cursors.push(BucketCursor { rows: it.peekable(), at });
                }
            }
        }
        // k-way merge by key: each cursor yields its bucket's live keys in order.
        let mut heap = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some((key, v)) = c.next_live()? {
                heap.push(Reverse((key, i, v.timestamp, v.value)));
            }
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((key, i, timestamp, value))) = heap.pop() else { break };
            out.push((key, Versioned { value, timestamp }));
            if let Some((key, v)) = cursors[i].next_live()? {
                heap.push(Reverse((key, i, v.timestamp, v.value)));
            }
        }
        Ok(out)
    }

    /// [`Node::scan`] at the consistency `options` ask for (every shard is read at that level). A
    /// cluster member scans the shards it holds and asks a node holding each other one, then merges.
    pub async fn scan_async(
        self: &Arc<Self>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        options: ReadOptions,
    ) -> Result<Read<Vec<(Vec<u8>, Versioned)>>> {
        self.check_scan(&start, end.as_deref(), limit)?;
        let mut local = Vec::new();
        let mut remote = Vec::new();
        let set = self.set();
        match (options.route, &self.router) {
            (Some(route), router) => {
                // The shard's first bucket, from the map if it does not serve here (yet).
                let here = set
                    .serving_group(u64::from(route.shard))
                    .and_then(|s| s.ranges.first().map(|r| *r.start()));
                let placed =
                    router.as_ref().and_then(|r| r.view().map.shard(route.shard).map(|s| s.buckets.0));
                let bucket = here.or(placed).unwrap_or(0);
                match self.locate(bucket, Some(route)).await? {
                    Located::Here(shard) => local.push(shard),
                    Located::There => {
                        return Err(NodeError::Internal("a routed scan located elsewhere".into()));
                    }
                }
            }
            (None, Some(router)) => {
                for placed in &router.view().map.shards {
                    match set.serving_group(u64::from(placed.id)) {
                        Some(shard) => local.push(shard),
                        None => remote.push(placed.buckets.0),
                    }
                }
            }
            (None, None) => {
                set.check_all_here()?;
                local = set.serving();
            }
        }
        drop(set);
        let mut behind = 0;
        for shard in &local {
            behind = behind.max(self.ready_to_read(shard, &options).await?);
        }
        let mut parts = Vec::with_capacity(remote.len() + 1);
        if let Some(router) = &self.router {
            for first_bucket in remote {
                let part = router.scan(first_bucket, &start, end.as_deref(), limit, &options).await?;
                behind = behind.max(part.behind);
                parts.push(part.value);
            }
        }
        let node = Arc::clone(self);
        let at = options.at;
        let local_check = local.clone();
        let here =
            tokio::task::spawn_blocking(move || node.scan_shards(&local, &start, end.as_deref(), limit, at))
                .await
                .map_err(|e| NodeError::Internal(format!("scan task failed: {e}")))??;
        // A replica retired meanwhile (its shard moved away) was emptied: its part cannot be trusted.
        if let Some(gone) = local_check.iter().find(|s| !self.still_held(s)) {
            return Err(NodeError::Unavailable(format!(
                "shard {} moved away from this node during the scan: retry",
                gone.group
            )));
        }
        parts.push(here);
        Ok(Read { value: merge_sorted(parts, limit), behind })
    }
}

/// Merges key-ordered row lists (of disjoint keys) into the first `limit` rows in key order.
fn merge_sorted(parts: Vec<Vec<(Vec<u8>, Versioned)>>, limit: usize) -> Vec<(Vec<u8>, Versioned)> {
    if parts.len() == 1 {
        return parts.into_iter().flatten().take(limit).collect();
    }
    let mut rows: Vec<_> = parts.into_iter().flatten().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.truncate(limit);
    rows
}

/// One bucket's rows, reduced to live keys at a timestamp.
struct BucketCursor {
    rows: Peekable<cairn_engine::DbIter>,
    at: Timestamp,
}

impl BucketCursor {
    /// The next key with a live version at or below `at`, and that version.
    fn next_live(&mut self) -> Result<Option<(Vec<u8>, Versioned)>> {
        loop {
            let Some(item) = self.rows.next() else { return Ok(None) };
            let (_, engine_key, row) = item?;
            if engine_key.starts_with(mvcc::SYSTEM_PREFIX) {
                continue; // a replicated shard's own rows (its applied position)
            }
            let (key, ts) = match mvcc::parse_engine_key(&engine_key) {
                Some((key, Some(ts))) => (key, ts),
                Some((_, None)) => continue, // a latest row: scans read the versions
                None => return Err(NodeError::Internal("malformed version key in the store".into())),
            };
            // Versions come newest first: take the first at or below `at`, skip the key's others.
            let mut chosen = (ts <= self.at).then_some((engine_key, row));
            while let Some(Ok((_, next_key, _))) = self.rows.peek() {
                match mvcc::decode_version_key(next_key) {
                    Some((k, t)) if k == key => {
                        let Some(Ok((_, next_key, next_row))) = self.rows.next() else { break };
                        if chosen.is_none() && t <= self.at {
                            chosen = Some((next_key, next_row));
                        }
                    }
                    _ => break,
                }
            }
            if let Some((engine_key, row)) = chosen
                && let Some(v) = version_of(&engine_key, &row)?
            {
                return Ok(Some((key, v)));
            }
        }
    }
}
