//! Real process kills: the test binary re-executes itself as a child that writes `k{n}` (every fourth
//! with `sync: true`, the others with `sync: false`: a process crash must lose neither) and prints every
//! acknowledged `n`; the parent SIGKILLs it after a random number of acknowledgements,
//! reopens the shard on the real file system and checks that every acknowledged key is there with its
//! value. The next cycle resumes in the same directory. Seeded by `CAIRN_SEED` (printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::{Config, Db, WriteBatch, WriteOptions};
use common::Rng;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CAIRN_KILL_CHILD";
const CYCLES: usize = 20;
/// Cycles stop early after this much time (at least `MIN_CYCLES` always run).
const TIME_BUDGET: Duration = Duration::from_secs(20);
const MIN_CYCLES: usize = 20;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.total_buckets = 16;
    c.memtable_bytes = 64 << 10;
    c.l0_compaction_trigger = 2;
    c.target_file_bytes = 64 << 10;
    c.level_base_bytes = 64 << 10;
    c.level_multiplier = 2;
    c
}

fn key(n: u64) -> Vec<u8> {
    format!("k{n:09}").into_bytes()
}

fn value(n: u64) -> Vec<u8> {
    // Large enough that a memtable fills every ~150 writes, so flushes and compactions get killed too.
    let mut v = format!("v{n}-").into_bytes();
    v.resize(400, b'a' + (n % 26) as u8);
    v
}

/// The highest `n` present, or `None` for an empty shard.
fn highest(db: &Db) -> Option<u64> {
    let mut max = None;
    for item in db.scan(0, ..).unwrap() {
        let (_, k, _) = item.unwrap();
        let n: u64 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
        max = max.max(Some(n));
    }
    max
}

/// The child: a no-op unless `CAIRN_KILL_CHILD` names a directory. Writes forever; the parent kills it.
#[test]
fn kill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let db = Db::open(config(Path::new(&dir)), vec![0..=15]).unwrap();
    let start = highest(&db).map_or(0, |n| n + 1);
    let mut out = std::io::stdout().lock();
    for n in start.. {
        let mut b = WriteBatch::new();
        b.put(0, &key(n), 0, &value(n));
        db.write(b, WriteOptions { sync: n % 4 == 0 }).unwrap();
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed = common::seeds(1)[0];
    println!("seed {seed} (replay with CAIRN_SEED={seed})");
    let mut rng = Rng::new(seed.wrapping_add(0x6b11));
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut max_acked: Option<u64> = None;
    let mut cycle = 0;
    while cycle < MIN_CYCLES || (cycle < CYCLES * 2 && started.elapsed() < TIME_BUDGET) {
        let target = rng.range(50, 1500);
        let mut child = Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acks = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(n) = line.strip_prefix("ack ") else { continue };
            let n: u64 = n.parse().unwrap();
            assert!(max_acked.is_none_or(|m| n > m), "cycle {cycle}: child acknowledged {n} twice");
            max_acked = Some(n);
            acks += 1;
            if acks == target {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if acks < target {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("cycle {cycle}: child stopped after {acks} acknowledgements: {err}");
        }

        let db = Db::open(config(dir.path()), vec![0..=15]).unwrap();
        let max = max_acked.unwrap();
        for n in 0..=max {
            let row = db.get(0, &key(n)).unwrap();
            assert_eq!(
                row.as_ref().and_then(|r| r.column(0)),
                Some(&value(n)[..]),
                "cycle {cycle}: acknowledged key {n} (of 0..={max}) missing or wrong"
            );
        }
        // The child may have written (unread) acknowledgements past the target before the kill landed,
        // so more keys can be present; they must be gap-free and correct too.
        let high = highest(&db).unwrap();
        for n in max + 1..=high {
            let row = db.get(0, &key(n)).unwrap();
            assert_eq!(row.as_ref().and_then(|r| r.column(0)), Some(&value(n)[..]), "cycle {cycle}: key {n}");
        }
        max_acked = Some(high);
        let tables = db.metrics().level_files.iter().sum::<usize>();
        println!("cycle {cycle}: {acks} acks, keys 0..={high}, {tables} table files");
        db.close().unwrap();
        cycle += 1;
    }
    println!("{cycle} cycles in {:?}", started.elapsed());
}
