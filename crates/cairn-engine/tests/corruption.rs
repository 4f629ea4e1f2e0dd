//! Media corruption: for each kind of file (SST, WAL, MANIFEST, CURRENT) a small shard is built on
//! `MemFs`, one bit of that file is flipped, and the shard is reopened and read in full (scan and point
//! reads). The outcome must be an `Error::Corruption` naming that file, or, where the flipped bit is one
//! the engine never reads, exactly the right data. Never a panic, never wrong data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::fs::{FileSystem, MemFs};
use cairn_engine::{Config, Db, Error, WriteOptions};
use common::{Model, Rng};
use std::path::Path;
use std::sync::Arc;

const BUCKETS: u16 = 4;

fn config(fs: &MemFs) -> Config {
    let mut c = Config::new("/db").with_fs(Arc::new(fs.clone()));
    c.total_buckets = u32::from(BUCKETS);
    c.memtable_bytes = 64 << 10;
    c.block_bytes = 512;
    c
}

fn open(fs: &MemFs) -> cairn_engine::Result<Db> {
    Db::open(config(fs), vec![0..=BUCKETS - 1])
}

/// Every file of `/db` with its bytes.
type Snapshot = Vec<(String, Vec<u8>)>;

/// Builds a shard with a few hundred rows; `flush` moves them into an SST, otherwise they stay in the
/// WAL. Returns the closed shard's files and the rows it holds.
fn build(flush: bool) -> (Snapshot, Model) {
    let fs = MemFs::new();
    let db = open(&fs).unwrap();
    let mut rng = Rng::new(42);
    let mut model = Model::new();
    for i in 0..120 {
        let ops = common::random_ops(&mut rng, BUCKETS, 60, 200);
        db.write(common::to_batch(&ops), WriteOptions { sync: i % 10 == 0 }).unwrap();
        common::apply(&mut model, &ops);
    }
    if flush {
        db.flush().unwrap();
    }
    db.close().unwrap();
    let dir = Path::new("/db");
    let mut files: Snapshot =
        fs.list(dir).unwrap().into_iter().map(|n| (n.clone(), fs.read_all(&dir.join(&n)).unwrap())).collect();
    files.sort();
    (files, model)
}

/// A fresh file system holding `files`, all durable.
fn restore(files: &Snapshot) -> MemFs {
    let fs = MemFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    for (name, data) in files {
        let mut f = fs.create(&dir.join(name)).unwrap();
        f.append(data).unwrap();
        f.sync().unwrap();
    }
    fs.sync_dir(dir).unwrap();
    fs
}

/// Opens the shard and reads everything, returning the rows a full scan and point reads agree on.
fn read_everything(fs: &MemFs, model: &Model) -> cairn_engine::Result<Model> {
    let db = open(fs)?;
    let scanned = common::scan_all(&db, BUCKETS)?;
    for ((b, k), cols) in model {
        let got = db.get(*b, k)?.map(|r| r.columns().map(|(c, v)| (c, v.to_vec())).collect());
        assert_eq!(got.as_ref(), Some(cols), "get({b}, {k:?}) disagrees with the model");
    }
    db.close()?;
    Ok(scanned)
}

/// Flips bits of the one file named by `pick` at many offsets and checks each outcome.
fn flip_each(flush: bool, pick: impl Fn(&str) -> bool) {
    let (files, model) = build(flush);
    // The unflipped shard reads back exactly.
    assert!(read_everything(&restore(&files), &model).unwrap() == model);
    let targets: Vec<_> = files.iter().filter(|(n, d)| pick(n) && !d.is_empty()).collect();
    assert_eq!(
        targets.len(),
        1,
        "expected one target file among {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let (name, data) = targets[0];
    let len = data.len() as u64;
    let mut rng = Rng::new(len);
    // Small files: every bit. Large ones: a spread of offsets plus the whole tail (footer, index).
    let mut flips: Vec<(u64, u8)> = Vec::new();
    if len <= 256 {
        flips.extend((0..len).flat_map(|o| (0..8).map(move |b| (o, b))));
    } else {
        flips.extend((0..1500).map(|i| (i * len / 1500, rng.range(0, 8) as u8)));
        flips.extend((len.saturating_sub(96)..len).map(|o| (o, rng.range(0, 8) as u8)));
    }
    let (mut detected, mut harmless) = (0, 0);
    for (offset, bit) in flips {
        let fs = restore(&files);
        let path = Path::new("/db").join(name);
        fs.flip_bit(&path, offset, bit).unwrap();
        match read_everything(&fs, &model) {
            Ok(got) => {
                assert!(got == model, "{name}: flipping bit {bit} of byte {offset} returned wrong data");
                harmless += 1;
            }
            Err(Error::Corruption { file, detail }) => {
                assert_eq!(
                    file.file_name().and_then(|f| f.to_str()),
                    Some(name.as_str()),
                    "{name}: flipping bit {bit} of byte {offset} blamed {} ({detail})",
                    file.display()
                );
                detected += 1;
            }
            Err(e) => panic!("{name}: flipping bit {bit} of byte {offset} gave a non-corruption error: {e}"),
        }
    }
    println!("{name}: {len} bytes, {detected} flips detected, {harmless} harmless");
    assert!(detected > 0);
}

#[test]
fn flipped_bit_in_sst_is_detected() {
    flip_each(true, |n| n.ends_with(".sst"));
}

#[test]
fn flipped_bit_in_wal_is_detected() {
    flip_each(false, |n| n.ends_with(".log"));
}

#[test]
fn flipped_bit_in_manifest_is_detected() {
    flip_each(true, |n| n.starts_with("MANIFEST-"));
}

#[test]
fn flipped_bit_in_current_is_detected() {
    flip_each(true, |n| n == "CURRENT");
}
