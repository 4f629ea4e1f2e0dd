//! Table round trips, seeks, lookups and corruption handling, on Vec-backed files.

use super::test_files::{VecFile, VecWriter};
use super::*;
use crate::block_cache::BlockCache;
use crate::error::Error;
use crate::iter::InternalIterator;
use crate::keys::{self, Kind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PATH: &str = "/db/000042.sst";

type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// A lookup target and what a clean table returns for it.
type Probe = (Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

/// `n` user keys across several buckets, each with 1-4 versions of mixed kinds, in table order.
fn entries(n: usize) -> Entries {
    let mut out = Vec::new();
    for i in 0..n {
        let uk = keys::user_key((i / 300) as u16, format!("user-key-{:07}", i * 3).as_bytes());
        let versions = 1 + i % 4;
        for v in 0..versions {
            let seq = 10_000 + (i * 7) as u64 - v as u64;
            let kind = [Kind::Set, Kind::Merge, Kind::Delete][(i + v) % 3];
            let value = match kind {
                Kind::Delete => Vec::new(),
                _ => format!("value {i} version {v} ").repeat(1 + i % 5).into_bytes(),
            };
            out.push((keys::internal_key(&uk, seq, kind), value));
        }
    }
    out
}

fn build(entries: &Entries, options: TableOptions) -> (Vec<u8>, TableProperties) {
    let writer = VecWriter::new();
    let (data, syncs) = (Arc::clone(&writer.data), Arc::clone(&writer.syncs));
    let mut b = TableBuilder::new(Box::new(writer), PathBuf::from(PATH), options);
    for (k, v) in entries {
        b.add(k, v).unwrap();
    }
    assert_eq!(b.num_entries(), entries.len() as u64);
    let estimate = b.estimated_file_bytes();
    let (props, size) = b.finish().unwrap();
    let bytes = data.lock().clone();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(*syncs.lock(), 1, "finish syncs once");
    assert!(estimate >= props.data_bytes, "estimate {estimate} below data bytes {}", props.data_bytes);
    (bytes, props)
}

fn open(bytes: Vec<u8>, cache: Option<Arc<BlockCache>>) -> crate::Result<Arc<Table>> {
    Table::open(Arc::new(VecFile(bytes)), PathBuf::from(PATH), 42, cache).map(Arc::new)
}

fn scan(table: &Arc<Table>) -> crate::Result<Entries> {
    let mut it = table.iter();
    it.seek_to_first()?;
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next()?;
    }
    Ok(out)
}

/// The first entry `>= target`, by brute force.
fn first_at_or_after<'a>(entries: &'a Entries, target: &[u8]) -> Option<&'a (Vec<u8>, Vec<u8>)> {
    let i = entries.partition_point(|(k, _)| keys::cmp_internal(k, target).is_lt());
    entries.get(i)
}

fn assert_corruption_of_file(err: &Error) {
    match err {
        Error::Corruption { file, .. } => assert_eq!(file, Path::new(PATH)),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn round_trips_ten_thousand_entries_with_each_compression() {
    let es = entries(4000);
    assert!(es.len() >= 10_000);
    for compression in [Compression::Lz4, Compression::None] {
        let (bytes, props) = build(&es, TableOptions { compression, ..TableOptions::default() });
        let table = open(bytes.clone(), None).unwrap();
        assert_eq!(table.properties(), &props);
        assert_eq!(props.num_entries, es.len() as u64);
        assert_eq!(
            props.num_deletions,
            es.iter().filter(|(k, _)| keys::kind_of(k) == Some(Kind::Delete)).count() as u64
        );
        assert_eq!(props.smallest_key, es[0].0);
        assert_eq!(props.largest_key, es[es.len() - 1].0);
        assert_eq!((props.min_bucket, props.max_bucket), (0, (3999 / 300) as u16));
        assert_eq!(props.raw_value_bytes, es.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
        assert!(props.num_data_blocks > 50);
        assert!(props.data_bytes + props.filter_bytes + props.index_bytes + 64 < bytes.len() as u64);
        assert_eq!(scan(&table).unwrap(), es);
        if compression == Compression::Lz4 {
            assert!((bytes.len() as u64) < props.raw_key_bytes + props.raw_value_bytes, "lz4 saved nothing");
        }
        for (k, v) in &es {
            let found = table.get(k).unwrap().unwrap();
            assert_eq!((&found.0, &found.1), (k, v));
        }
    }
}

#[test]
fn lookups_find_the_visible_version_or_the_next_entry() {
    let es = entries(1500);
    let (bytes, _) = build(&es, TableOptions { block_bytes: 512, ..TableOptions::default() });
    let table = open(bytes, Some(Arc::new(BlockCache::new(1 << 20)))).unwrap();
    let mut it = table.iter();
    for (k, _) in &es {
        let uk = keys::user_key_of(k);
        let seq = keys::seq_of(k);
        // As of this version's sequence, and as of just before it (an older version, or the next key).
        for target in
            [keys::lookup_key(uk, seq), keys::lookup_key(uk, seq - 1), keys::lookup_key(uk, u64::MAX >> 8)]
        {
            let want = first_at_or_after(&es, &target);
            let got = table.get(&target).unwrap();
            assert_eq!(got.as_ref().map(|(k, v)| (k, v)), want.map(|(k, v)| (k, v)));
            it.seek(&target).unwrap();
            assert_eq!(it.valid().then(|| it.key().to_vec()), want.map(|e| e.0.clone()));
            if let Some((wk, wv)) = want {
                assert_eq!((it.key(), it.value()), (&wk[..], &wv[..]));
            }
        }
    }
    // Absent user keys: None, or (bloom false positive) the next entry in the file.
    let mut false_positives = 0;
    for i in 0..1500 {
        let uk = keys::user_key((i / 300) as u16, format!("user-key-{:07}", i * 3 + 1).as_bytes());
        let target = keys::lookup_key(&uk, keys::MAX_SEQUENCE);
        if let Some((k, _)) = table.get(&target).unwrap() {
            false_positives += 1;
            assert_eq!(Some(&k), first_at_or_after(&es, &target).map(|e| &e.0));
        }
    }
    assert!(false_positives < 60, "{false_positives} false positives in 1500");
    // Past the end.
    it.seek(&keys::internal_key(&[0xff, 0xff], 1, Kind::Set)).unwrap();
    assert!(!it.valid());
    assert!(table.get(&keys::internal_key(&keys::user_key(4000, b"z"), 1, Kind::Set)).unwrap().is_none());
}

#[test]
fn lookups_agree_with_brute_force_when_index_fences_tie() {
    // All keys share a long prefix, and differ only after the bytes a fence holds, so many index entries
    // share a fence and the search must compare keys; probes also fall before, inside and after the
    // shared prefix.
    let long = "p".repeat(40);
    let es: Entries = (0..600u32)
        .map(|i| {
            let uk = keys::user_key(3, format!("{long}{}-{:05}", "q".repeat(30), i * 2).as_bytes());
            (keys::internal_key(&uk, 9, Kind::Set), vec![b'v'; 30])
        })
        .collect();
    let (bytes, _) =
        build(&es, TableOptions { block_bytes: 256, bloom_bits_per_key: 0, ..Default::default() });
    let table = open(bytes, None).unwrap();
    let mut it = table.iter();
    let mut probes: Vec<Vec<u8>> = (0..1201u32)
        .map(|i| keys::user_key(3, format!("{long}{}-{i:05}", "q".repeat(30)).as_bytes()))
        .collect();
    for other in [&b""[..], b"p", b"pp", &long.as_bytes()[..20], b"o", b"q", b"\xff"] {
        for bucket in [2u16, 3, 4] {
            probes.push(keys::user_key(bucket, other));
        }
    }
    for uk in probes {
        for target in [keys::lookup_key(&uk, 100), keys::lookup_key(&uk, 1)] {
            let want = first_at_or_after(&es, &target).map(|e| e.0.clone());
            assert_eq!(table.get(&target).unwrap().map(|e| e.0), want, "get {uk:?}");
            it.seek(&target).unwrap();
            assert_eq!(it.valid().then(|| it.key().to_vec()), want, "seek {uk:?}");
        }
    }
}

#[test]
fn seeks_between_blocks_land_on_the_next_block() {
    // Keys whose user keys differ early give shortened separators above each block's last key.
    let es: Entries = (0..400u32)
        .map(|i| {
            let uk = keys::user_key(1, format!("{:03}-{}", i * 2, "x".repeat(40)).as_bytes());
            (keys::internal_key(&uk, 5, Kind::Set), vec![b'v'; 20])
        })
        .collect();
    let (bytes, _) =
        build(&es, TableOptions { block_bytes: 300, bloom_bits_per_key: 0, ..Default::default() });
    let table = open(bytes, None).unwrap();
    let mut it = table.iter();
    for i in 0..400u32 {
        let uk = keys::user_key(1, format!("{:03}", i * 2 + 1).as_bytes());
        let target = keys::lookup_key(&uk, 100);
        let want = first_at_or_after(&es, &target).map(|e| e.0.clone());
        it.seek(&target).unwrap();
        assert_eq!(it.valid().then(|| it.key().to_vec()), want);
        assert_eq!(table.get(&target).unwrap().map(|e| e.0), want);
    }
}

#[test]
fn block_cache_serves_repeated_reads() {
    let es = entries(500);
    let (bytes, props) = build(&es, TableOptions::default());
    let cache = Arc::new(BlockCache::new(8 << 20));
    let table = open(bytes, Some(Arc::clone(&cache))).unwrap();
    assert_eq!(scan(&table).unwrap(), es);
    assert_eq!(cache.misses(), props.num_data_blocks);
    assert_eq!(cache.hits(), 0);
    assert_eq!(scan(&table).unwrap(), es);
    assert_eq!(cache.hits(), props.num_data_blocks);
    assert!(cache.usage_bytes() > 0);
}

#[test]
fn empty_table_and_table_without_filter() {
    let (bytes, props) = build(&Vec::new(), TableOptions::default());
    assert_eq!((props.num_entries, props.filter_bytes, props.num_data_blocks), (0, 0, 0));
    let table = open(bytes, None).unwrap();
    assert!(scan(&table).unwrap().is_empty());
    assert!(table.get(&keys::lookup_key(b"\0\0a", 1)).unwrap().is_none());

    let es = entries(100);
    let (bytes, props) = build(&es, TableOptions { bloom_bits_per_key: 0, ..Default::default() });
    assert_eq!(props.filter_bytes, 0);
    let table = open(bytes, None).unwrap();
    assert!(table.may_contain(b"anything"));
    assert_eq!(scan(&table).unwrap(), es);
}

#[test]
fn large_values_get_blocks_of_their_own() {
    let es: Entries = (0..20u32)
        .map(|i| {
            (
                keys::internal_key(&keys::user_key(0, &i.to_be_bytes()), 1, Kind::Set),
                vec![i as u8; 10_000 + i as usize],
            )
        })
        .collect();
    let (bytes, props) = build(&es, TableOptions { compression: Compression::None, ..Default::default() });
    assert_eq!(props.num_data_blocks, 20);
    let table = open(bytes, None).unwrap();
    assert_eq!(scan(&table).unwrap(), es);
}

#[test]
fn approximate_offsets_increase_through_the_file() {
    let es = entries(2000);
    let (bytes, props) = build(&es, TableOptions::default());
    let table = open(bytes, None).unwrap();
    let offsets: Vec<u64> = es.iter().step_by(100).map(|(k, _)| table.approximate_offset_of(k)).collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(
        table.approximate_offset_of(&keys::internal_key(&[0xff, 0xff], 0, Kind::Set)),
        props.data_bytes
    );
}

#[test]
fn builder_rejects_bad_keys() {
    let writer = VecWriter::new();
    let mut b = TableBuilder::new(Box::new(writer), PathBuf::from(PATH), TableOptions::default());
    let k1 = keys::internal_key(&keys::user_key(1, b"b"), 5, Kind::Set);
    b.add(&k1, b"v").unwrap();
    assert!(matches!(b.add(&k1, b"v"), Err(Error::InvalidArgument(_))), "duplicate key");
    let older_first = keys::internal_key(&keys::user_key(1, b"a"), 9, Kind::Set);
    assert!(matches!(b.add(&older_first, b"v"), Err(Error::InvalidArgument(_))), "smaller key");
    assert!(matches!(b.add(b"short", b"v"), Err(Error::InvalidArgument(_))), "malformed key");
    let huge = vec![0u8; MAX_BLOCK_BYTES];
    let k2 = keys::internal_key(&keys::user_key(1, b"c"), 5, Kind::Set);
    assert!(matches!(b.add(&k2, &huge), Err(Error::InvalidArgument(_))), "oversized entry");
}

#[cfg(not(feature = "zstd"))]
#[test]
fn zstd_without_the_feature_is_a_clear_error() {
    let writer = VecWriter::new();
    let options = TableOptions { compression: Compression::Zstd, ..TableOptions::default() };
    assert!(options.validate().is_err());
    let mut b = TableBuilder::new(Box::new(writer), PathBuf::from(PATH), options);
    let es = entries(10);
    let mut result = Ok(());
    for (k, v) in &es {
        result = result.and_then(|()| b.add(k, v));
    }
    let result = result.and_then(|()| b.finish().map(|_| ()));
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");

    // A file whose block says zstd (with a valid checksum) fails to read with a message naming the file.
    let (mut bytes, _) = build(&es, TableOptions { compression: Compression::None, ..Default::default() });
    let table = open(bytes.clone(), None).unwrap();
    let first = table.approximate_offset_of(&es[0].0);
    assert_eq!(first, 0);
    let size = {
        let mut it = block_iter::BlockIter::new(Arc::clone(table.index()));
        it.seek_to_first().unwrap();
        BlockHandle::decode_varint(it.value()).unwrap().size as usize
    };
    bytes[size] = Compression::Zstd.to_u8();
    let crc = crate::coding::masked_crc(&bytes[..size + 1]);
    bytes[size + 1..size + 5].copy_from_slice(&crc.to_le_bytes());
    let table = open(bytes, None).unwrap();
    match scan(&table) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains(PATH) && msg.contains("zstd"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Opens, scans and probes a (possibly damaged) table; returns false if any step reported corruption,
/// and fails the test on any other error or on any wrong answer.
fn check_damaged(bytes: Vec<u8>, es: &Entries, probes: &[Probe]) -> bool {
    let table = match open(bytes, None) {
        Ok(t) => t,
        Err(e) => {
            assert_corruption_of_file(&e);
            return false;
        }
    };
    let mut intact = true;
    match scan(&table) {
        Ok(got) => assert_eq!(&got, es, "a scan returned wrong data"),
        Err(e) => {
            assert_corruption_of_file(&e);
            intact = false;
        }
    }
    for (target, want) in probes {
        match table.get(target) {
            Ok(got) => assert_eq!(&got, want, "a get returned wrong data"),
            Err(e) => {
                assert_corruption_of_file(&e);
                intact = false;
            }
        }
    }
    intact
}

#[test]
fn every_bit_flip_is_detected_or_harmless() {
    let es = entries(25);
    let (bytes, _) = build(&es, TableOptions { block_bytes: 256, ..Default::default() });
    assert!(bytes.len() > 1500, "table of {} bytes is too small to cover all block kinds", bytes.len());
    let clean = open(bytes.clone(), None).unwrap();
    assert!(clean.properties().num_data_blocks >= 4);
    let probes: Vec<_> = es
        .iter()
        .step_by(3)
        .map(|(k, _)| keys::lookup_key(keys::user_key_of(k), keys::seq_of(k)))
        .map(|t| {
            let want = clean.get(&t).unwrap();
            (t, want)
        })
        .collect();
    assert!(check_damaged(bytes.clone(), &es, &probes));
    let mut undetected = 0;
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        if check_damaged(damaged, &es, &probes) {
            undetected += 1;
        }
    }
    // Every byte of the file is covered by a checksum or the magic, so no flip goes unnoticed.
    assert_eq!(undetected, 0);
}

#[test]
fn truncated_files_are_corrupt() {
    let es = entries(25);
    let (bytes, _) = build(&es, TableOptions { block_bytes: 256, ..Default::default() });
    for len in 0..bytes.len() {
        match open(bytes[..len].to_vec(), None) {
            Err(e) => assert_corruption_of_file(&e),
            Ok(_) => panic!("opened a table truncated to {len} of {} bytes", bytes.len()),
        }
    }
}

#[test]
fn tables_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Table>();
    check::<BlockCache>();
    fn check_send<T: Send>() {}
    check_send::<TableIter>();
}
