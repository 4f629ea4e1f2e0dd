//! Range scans of a node's store: every bucket's live keys at a timestamp, merged in key order
//! across buckets, shards and (for a cluster member) the nodes holding the other shards.
//!
//! A scan stops at its row limit or once its rows hold the node's byte budget
//! ([`NodeConfig::max_scan_bytes`](super::NodeConfig), at least one row), and then names the key the
//! next page starts at, so a response's memory is bounded by configuration, not by the data. Parts
//! scanned separately (shards on other nodes) merge exactly: rows at or past the smallest key where a
//! part stopped are left for the next page.
//!
//! A transaction's intent on a key in the range, at or below the scan's timestamp (for a scan of the
//! newest versions: below this node's clock as the scan began), stands in the scan's way: the scan
//! pushes that transaction above it, resolves the intent, and scans again (as a point read does).

use super::replicas::engine_ranges;
use super::{Located, Node, Shard};
use crate::error::{NodeError, Result};
use crate::hlc::{TIMESTAMP_BYTES, Timestamp};
use crate::mvcc;
use crate::types::{MAX_SCAN_LIMIT, Read, ReadOptions, Scanned, Versioned};
use cairn_kv::reader::{intent_bounds, intent_of, version_of};
use cairn_kv::txn::TxnMeta;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most shards on other nodes one scan asks at once.
const MAX_REMOTE_PARTS_AT_ONCE: usize = 8;

/// Key and value bytes of a row (what the byte budget counts).
fn row_bytes(key: &[u8], v: &Versioned) -> usize {
    key.len() + v.value.len()
}

impl Node {
    /// Up to `limit` live keys in `[start, end)` (`end` `None`: to the last key) in key order, each with
    /// its newest version at or below `at`, merged across every shard and bucket, within the byte
    /// budget. Every shard must be held here (a cluster member's [`Node::scan_async`] asks other nodes
    /// for the rest).
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        at: Option<Timestamp>,
    ) -> Result<Scanned> {
        self.check_scan(start, end, limit)?;
        let set = self.set();
        set.check_all_here()?;
        let parts: Vec<ScanPart> =
            set.serving().into_iter().map(|s| (Arc::clone(&s), s.ranges.clone())).collect();
        match self.scan_shards(&parts, start, end, limit, (at, self.now()))? {
            Ok(page) => Ok(page),
            // A standalone store holds no transactions' intents.
            Err(locked) => {
                Err(NodeError::Internal(format!("{} intents in a standalone store", locked.len())))
            }
        }
    }

    fn check_scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<()> {
        self.check_bound(start)?;
        if let Some(end) = end {
            self.check_bound(end)?;
            if end < start {
                return Err(NodeError::InvalidArgument("range end is below its start".into()));
            }
        }
        if limit == 0 {
            // A page of no rows could only name its own start as the next: a pager would never end.
            return Err(NodeError::InvalidArgument("limit must be at least 1".into()));
        }
        if limit > MAX_SCAN_LIMIT {
            return Err(NodeError::InvalidArgument(format!(
                "limit {limit} is over the maximum {MAX_SCAN_LIMIT}"
            )));
        }
        Ok(())
    }

    /// [`Node::scan`] over the local shards `shards` only, each over the ranges given with it: the
    /// page, or the intents in its way (key and holder, at most [`MAX_LOCKED`]).
    fn scan_shards(
        &self,
        shards: &[ScanPart],
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        (at, now): (Option<Timestamp>, Timestamp),
    ) -> Result<std::result::Result<Scanned, Locked>> {
        let at = self.check_read_ts(at)?;
        // The newest scan: intents up to this node's clock as it began stand in its way.
        let in_the_way = if at == Timestamp::MAX { now } else { at };
        let lo = mvcc::key_prefix(start);
        let hi = end.map(mvcc::key_prefix);
        let (intents_lo, intents_hi) = intent_bounds(start, end);
        let mut page = PageBuilder::new(limit, self.config.max_scan_bytes);
        let mut locked = Vec::new();
        for (shard, ranges) in shards {
            let db = shard.db();
            for range in ranges {
                // One iterator per bucket range, repositioned on each bucket: a bucket costs one seek
                // for its intents and one for its keys.
                let mut rows = db.scan_buckets(range.clone())?;
                for bucket in range.clone() {
                    rows.seek(bucket, &intents_lo, Some(&intents_hi));
                    intents_in_the_way(&mut rows, in_the_way, &mut locked)?;
                    if locked.len() >= MAX_LOCKED {
                        // Which of them the page covers is not known yet: clear them all.
                        return Ok(Err(locked));
                    }
                    rows.seek(bucket, &lo, hi.as_deref());
                    live_keys(&mut rows, at, &mut page)?;
                }
            }
            shard.still_running()?;
            super::check_gc(shard, &db, at)?;
        }
        // Only intents on keys the page covers (below its resume key) stand in its way.
        let page = page.finish();
        locked.retain(|(key, _)| page.resume.as_ref().is_none_or(|resume| key < resume));
        Ok(if locked.is_empty() { Ok(page) } else { Err(locked) })
    }

    /// Pushes and resolves the intents `locked` (a scan's way) once each (see [`Node::clear_intent`]),
    /// waiting at most until `deadline`.
    async fn clear_intents(
        &self,
        locked: Locked,
        above: Timestamp,
        deadline: tokio::time::Instant,
        pause: &mut std::time::Duration,
    ) -> Result<()> {
        for (key, holder) in locked {
            let push = Node::push_above(above);
            if !self.clear_intent(&key, &holder, (push, 0), deadline, pause).await? {
                return Err(NodeError::Unavailable(format!(
                    "key {key:?} is locked by transaction {}, which has not finished: retry",
                    holder.id
                )));
            }
        }
        Ok(())
    }

    /// [`Node::scan`] at the consistency `options` ask for (every shard is read at that level). A
    /// cluster member scans the shards it holds and asks a node holding each other one, then merges.
    pub async fn scan_async(
        self: &Arc<Self>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        options: ReadOptions,
    ) -> Result<Read<Scanned>> {
        self.check_scan(&start, end.as_deref(), limit)?;
        let mut local = Vec::new();
        let mut remote = Vec::new();
        let set = self.set();
        match (options.route, &self.router) {
            (Some(route), router) => {
                // The shard's first bucket, from the map if it does not serve here (yet).
                let here =
                    set.serving_group(route.shard.group()).and_then(|s| s.ranges.first().map(|r| *r.start()));
                let placed =
                    router.as_ref().and_then(|r| r.view().map.shard(route.shard).map(|s| s.first_bucket()));
                let bucket = here.or(placed).unwrap_or(0);
                match self.locate(bucket, Some(route)).await? {
                    Located::Here(shard) => {
                        let ranges = router.as_ref().and_then(|r| mapped(&r.view().map, route.shard));
                        local.push((Arc::clone(&shard), ranges.unwrap_or_else(|| shard.ranges.clone())));
                    }
                    Located::There => {
                        return Err(NodeError::Internal("a routed scan located elsewhere".into()));
                    }
                }
            }
            (None, Some(router)) => {
                for placed in &router.view().map.shards {
                    match set.serving_group(placed.id.group()) {
                        Some(shard) => local.push((shard, engine_ranges(&placed.ranges))),
                        None => remote.push(placed.first_bucket()),
                    }
                }
            }
            (None, None) => {
                set.check_all_here()?;
                local = set.serving().into_iter().map(|s| (Arc::clone(&s), s.ranges.clone())).collect();
            }
        }
        drop(set);
        let mut behind = 0;
        for (shard, _) in &local {
            behind = behind.max(self.ready_to_read(shard, &options).await?);
        }
        let mut parts = Vec::with_capacity(remote.len() + 1);
        if let Some(router) = &self.router {
            // The other nodes' shards at once, a few at a time (each part is bounded by the byte budget).
            use futures_util::stream::{self, StreamExt, TryStreamExt};
            let asks = remote
                .into_iter()
                .map(|first_bucket| router.scan(first_bucket, &start, end.as_deref(), limit, &options));
            let answers: Vec<_> =
                stream::iter(asks).buffer_unordered(MAX_REMOTE_PARTS_AT_ONCE).try_collect().await?;
            for part in answers {
                behind = behind.max(part.behind);
                parts.push(part.value);
            }
        }
        let at = options.at;
        let local_check = local.clone();
        let local = Arc::new(local);
        let (start, end) = (Arc::new(start), Arc::new(end));
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        let now = self.now();
        let mut pause = super::txn::FIRST_PUSH_PAUSE;
        let here = loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Unavailable(
                    "the scan's keys stayed locked by transactions: retry".into(),
                ));
            }
            let (node, local, start, end) =
                (Arc::clone(self), Arc::clone(&local), Arc::clone(&start), Arc::clone(&end));
            let scanned = tokio::task::spawn_blocking(move || {
                node.scan_shards(&local, &start, end.as_ref().as_deref(), limit, (at, now))
            })
            .await
            .map_err(|e| NodeError::Internal(format!("scan task failed: {e}")))??;
            match scanned {
                Ok(page) => break page,
                Err(locked) => self.clear_intents(locked, at.unwrap_or(now), deadline, &mut pause).await?,
            }
        };
        // A replica retired meanwhile (its shard moved away) was emptied: its part cannot be trusted.
        if let Some((gone, _)) = local_check.iter().find(|(s, _)| !self.still_held(s)) {
            return Err(NodeError::Unavailable(format!(
                "shard {} moved away from this node during the scan: retry",
                gone.group
            )));
        }
        parts.push(here);
        Ok(Read { value: merge_pages(parts, limit, self.config.max_scan_bytes), behind })
    }
}

/// A local shard to scan, and the ranges to scan it over: the map's for the shard, not what the node
/// last saw the replica own, so a split or merge in between is refused by the engine (`NotOwned`, a
/// retryable error) instead of leaving buckets out.
type ScanPart = (Arc<Shard>, Vec<cairn_engine::BucketRange>);

/// The ranges `map` gives shard `id`, as the engine takes them.
fn mapped(
    map: &cairn_cluster::placement::ShardMap,
    id: cairn_cluster::placement::ShardId,
) -> Option<Vec<cairn_engine::BucketRange>> {
    map.shard(id).map(|s| engine_ranges(&s.ranges))
}

/// Merges pages of disjoint key ranges' scans into one page of at most `limit` rows and about
/// `max_bytes` (at least one row): rows at or past the smallest key where a part stopped are left to
/// the next page, since that part's rows from there on are not here.
fn merge_pages(parts: Vec<Scanned>, limit: usize, max_bytes: usize) -> Scanned {
    let cut = parts.iter().filter_map(|p| p.resume.clone()).min();
    let mut rows: Vec<_> = parts.into_iter().flat_map(|p| p.rows).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut bytes = 0usize;
    let mut keep = 0;
    for (key, v) in &rows {
        if keep == limit || bytes >= max_bytes || cut.as_ref().is_some_and(|c| key >= c) {
            break;
        }
        bytes += row_bytes(key, v);
        keep += 1;
    }
    let resume = match rows.get(keep) {
        Some((key, _)) => Some(cut.map_or_else(|| key.clone(), |c| c.min(key.clone()))),
        None => cut,
    };
    rows.truncate(keep);
    Scanned { rows, resume }
}

/// The rows of a page being gathered bucket by bucket (keys hash to buckets, so any bucket may hold the
/// page's next key): the smallest keys seen, and no more of them than the page and the key after it
/// (its resume key) can need, by count and by bytes.
struct PageBuilder {
    rows: BTreeMap<Vec<u8>, Versioned>,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
}

impl PageBuilder {
    fn new(limit: usize, max_bytes: usize) -> PageBuilder {
        PageBuilder { rows: BTreeMap::new(), bytes: 0, limit, max_bytes }
    }

    fn largest_bytes(&self) -> usize {
        self.rows.last_key_value().map_or(0, |(k, v)| row_bytes(k, v))
    }

    /// True if a key above every row held would be dropped at once: the page and its resume key are
    /// among the rows held.
    fn full(&self) -> bool {
        self.rows.len() > self.limit
            || (!self.rows.is_empty() && self.bytes - self.largest_bytes() >= self.max_bytes)
    }

    /// Whether a row for `key` could still be in the page or be its resume key.
    fn wants(&self, key: &[u8]) -> bool {
        !self.full() || self.rows.last_key_value().is_some_and(|(last, _)| key < last.as_slice())
    }

    fn offer(&mut self, key: Vec<u8>, v: Versioned) {
        self.bytes += row_bytes(&key, &v);
        self.rows.insert(key, v);
        // Drop the largest row while the page and its resume key stand without it: more rows than the
        // page plus one, or the rows below the two largest already hold the byte budget.
        loop {
            let n = self.rows.len();
            let beyond = n > self.limit + 1
                || (n >= 3 && {
                    let mut top = self.rows.iter().rev().map(|(k, v)| row_bytes(k, v));
                    let two = top.next().unwrap_or(0) + top.next().unwrap_or(0);
                    self.bytes - two >= self.max_bytes
                });
            if !beyond {
                break;
            }
            if let Some((k, v)) = self.rows.pop_last() {
                self.bytes -= row_bytes(&k, &v);
            }
        }
    }

    /// The page: rows in key order up to the limit or until they hold the byte budget (at least one),
    /// and the next row's key to resume from.
    fn finish(self) -> Scanned {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        let mut rows = self.rows.into_iter();
        for (key, v) in rows.by_ref() {
            if out.len() == self.limit || bytes >= self.max_bytes {
                return Scanned { rows: out, resume: Some(key) };
            }
            bytes += row_bytes(&key, &v);
            out.push((key, v));
        }
        Scanned { rows: out, resume: None }
    }
}

/// The intents a scan met (key and holder).
type Locked = Vec<(Vec<u8>, TxnMeta)>;

/// Most intents one scan collects before it clears them and scans again.
const MAX_LOCKED: usize = 64;

/// Adds to `locked` the intents of the bucket `rows` is positioned on (its intent rows in the scan's
/// range) at or below `in_the_way`.
fn intents_in_the_way(
    rows: &mut cairn_engine::DbIter,
    in_the_way: Timestamp,
    locked: &mut Locked,
) -> Result<()> {
    while locked.len() < MAX_LOCKED && rows.advance()? {
        let (key, intent) = intent_of(rows.key(), &rows.row().to_row())?;
        if intent.meta.txn.write_ts <= in_the_way {
            locked.push((key, intent.meta.txn));
        }
    }
    Ok(())
}

/// Offers `page` each key of the bucket `rows` is positioned on that has a live version at or below
/// `at` (with that version), in key order, until the page wants no more of the bucket's keys.
fn live_keys(rows: &mut cairn_engine::DbIter, at: Timestamp, page: &mut PageBuilder) -> Result<()> {
    // The escaped key (with its terminator) whose version was decided: its older versions are skipped.
    let mut decided: Vec<u8> = Vec::new();
    while rows.advance()? {
        let engine_key = rows.key();
        if mvcc::is_reserved(engine_key) {
            continue; // a replicated shard's own rows (its applied position), and the like
        }
        if !decided.is_empty()
            && engine_key.len() == decided.len() + TIMESTAMP_BYTES
            && engine_key.starts_with(&decided)
        {
            continue;
        }
        let (key, ts) = match mvcc::parse_engine_key(engine_key) {
            Some((key, Some(ts))) => (key, ts),
            Some((_, None)) => continue, // a latest row: scans read the versions
            None => return Err(NodeError::Internal("malformed version key in the store".into())),
        };
        if !page.wants(&key) {
            return Ok(());
        }
        if ts > at {
            continue; // newer than the read; an older version may be visible
        }
        decided.clear();
        decided.extend_from_slice(&engine_key[..engine_key.len() - TIMESTAMP_BYTES]);
        let row = rows.row().to_row();
        if let Some(v) = version_of(engine_key, &row)? {
            page.offer(key, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], resume: Option<&str>) -> Scanned {
        let v = |k: &str| Versioned {
            value: vec![0; 10],
            timestamp: Timestamp { wall_time: k.len() as u64, logical: 0 },
        };
        Scanned {
            rows: keys.iter().map(|k| (k.as_bytes().to_vec(), v(k))).collect(),
            resume: resume.map(|r| r.as_bytes().to_vec()),
        }
    }

    fn keys(s: &Scanned) -> (Vec<String>, Option<String>) {
        (
            s.rows.iter().map(|(k, _)| String::from_utf8(k.clone()).unwrap()).collect(),
            s.resume.as_ref().map(|r| String::from_utf8(r.clone()).unwrap()),
        )
    }

    // A page gathered bucket by bucket (keys in any order across buckets, each bucket stopped once the
    // page wants none of its keys) is the page of all the rows in order.
    #[test]
    fn a_page_gathered_in_any_order_is_the_first_page_of_all_rows() {
        for seed in 0..500u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let limit = 1 + next(8) as usize;
            let max_bytes = 1 + next(200) as usize;
            let mut rows: BTreeMap<Vec<u8>, Versioned> = BTreeMap::new();
            for _ in 0..next(40) {
                let key = format!("k{:03}", next(100)).into_bytes();
                let v = Versioned { value: vec![0; next(50) as usize], timestamp: Timestamp::default() };
                rows.insert(key, v);
            }
            let all: Vec<_> = rows.clone().into_iter().collect();
            let want = merge_pages(vec![Scanned { rows: all.clone(), resume: None }], limit, max_bytes);
            // Deal the rows into "buckets", each in key order, visited one after another.
            let mut buckets: Vec<Vec<(Vec<u8>, Versioned)>> = vec![Vec::new(); 1 + next(5) as usize];
            for row in all {
                let b = next(buckets.len() as u64) as usize;
                buckets[b].push(row);
            }
            let mut page = PageBuilder::new(limit, max_bytes);
            for bucket in buckets {
                for (key, v) in bucket {
                    if !page.wants(&key) {
                        break;
                    }
                    page.offer(key, v);
                }
            }
            assert_eq!(page.finish(), want, "seed {seed}, limit {limit}, max_bytes {max_bytes}");
        }
    }

    #[test]
    fn pages_merge_up_to_the_first_part_that_stopped() {
        // Part 1 stopped before "d": its rows from "d" on are missing, so "e" waits for the next page.
        let merged = merge_pages(vec![page(&["a", "c"], Some("d")), page(&["b", "e"], None)], 10, 1 << 20);
        assert_eq!(keys(&merged), (vec!["a".into(), "b".into(), "c".into()], Some("d".into())));
        // The row limit cuts first: the next page starts at the first row not returned.
        let merged = merge_pages(vec![page(&["a", "c"], None), page(&["b", "e"], None)], 2, 1 << 20);
        assert_eq!(keys(&merged), (vec!["a".into(), "b".into()], Some("c".into())));
        // The byte budget: rows of 11 bytes, a budget of 15 takes two (the one that crosses it is kept).
        let merged = merge_pages(vec![page(&["a", "c"], None), page(&["b", "e"], None)], 10, 15);
        assert_eq!(keys(&merged), (vec!["a".into(), "b".into()], Some("c".into())));
        // Everything fits: no resume key.
        let merged = merge_pages(vec![page(&["a"], None), page(&["b"], None)], 10, 1 << 20);
        assert_eq!(keys(&merged), (vec!["a".into(), "b".into()], None));
    }
}
