//! The shared Raft log against a model: random appends (with overwrites), truncations, purges and votes
//! over several groups with small segments (so rotation and segment collection run), reopens, simulated
//! power losses, corruption, and fsync batching across groups. Randomized tests print their seed;
//! `CAIRN_SEED=<n>` replays one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_cluster::raft_log::{LogEntry, LogPosition, RaftLog, RaftLogConfig, RaftLogError};
use cairn_engine::fs::{FaultFs, FileLock, FileSystem, MemFs, RandomAccessFile, WritableFile};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
    });
    println!("seed {seed} (replay with CAIRN_SEED={seed})");
    seed | 1
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ModelGroup {
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    vote: Option<Vec<u8>>,
    purged: Option<LogPosition>,
}

impl ModelGroup {
    fn first(&self) -> u64 {
        self.purged.map_or(0, |p| p.index + 1)
    }

    fn next(&self) -> u64 {
        self.entries.keys().next_back().map_or(self.first(), |i| i + 1)
    }
}

type Model = BTreeMap<u64, ModelGroup>;

/// One operation, applied to both the log and the model.
#[derive(Clone, Debug)]
enum Op {
    Append(u64, Vec<LogEntry>),
    Vote(u64, Vec<u8>),
    Truncate(u64, Option<u64>),
    Purge(u64, LogPosition),
}

fn random_op(rng: &mut Rng, model: &Model, groups: u64) -> Op {
    let group = rng.below(groups);
    let g = model.get(&group).cloned().unwrap_or_default();
    let (first, next) = (g.first(), g.next());
    match rng.below(10) {
        0..=5 => {
            // Mostly at the end; sometimes overwriting a suffix.
            let start = if rng.below(4) == 0 { first + rng.below(next - first + 1) } else { next };
            let term = rng.below(5) + 1;
            let n = 1 + rng.below(4);
            let entries = (start..start + n)
                .map(|index| LogEntry {
                    index,
                    term,
                    payload: vec![(index % 251) as u8; rng.below(300) as usize],
                })
                .collect();
            Op::Append(group, entries)
        }
        6 => Op::Vote(group, rng.next().to_be_bytes().to_vec()),
        7 => {
            let after = first.saturating_sub(1) + rng.below(next - first + 1);
            Op::Truncate(group, if after == 0 && rng.below(2) == 0 { None } else { Some(after) })
        }
        _ => {
            // Purge up to an entry the group holds (or nothing new).
            let Some((&last, _)) = g.entries.iter().next_back() else {
                return Op::Vote(group, vec![1]);
            };
            let index = first + rng.below(last - first + 1);
            let term = g.entries.get(&index).map_or(0, |e| e.0);
            Op::Purge(group, LogPosition { term, index })
        }
    }
}

fn apply_model(model: &mut Model, op: &Op) {
    match op {
        Op::Append(group, entries) => {
            let g = model.entry(*group).or_default();
            if let Some(first) = entries.first() {
                g.entries.split_off(&first.index);
            }
            for e in entries {
                g.entries.insert(e.index, (e.term, e.payload.clone()));
            }
        }
        Op::Vote(group, v) => model.entry(*group).or_default().vote = Some(v.clone()),
        Op::Truncate(group, after) => {
            let g = model.entry(*group).or_default();
            g.entries.split_off(&after.map_or(0, |i| i + 1));
        }
        Op::Purge(group, upto) => {
            let g = model.entry(*group).or_default();
            g.entries = g.entries.split_off(&(upto.index + 1));
            g.purged = Some(*upto);
        }
    }
}

/// Applies `op` to the log; returns a receiver that yields once an append is durable.
fn apply_log(log: &RaftLog, op: &Op) -> Result<Option<mpsc::Receiver<Result<(), String>>>, RaftLogError> {
    match op {
        Op::Append(group, entries) => {
            let (tx, rx) = mpsc::channel();
            log.append(
                *group,
                entries.clone(),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )?;
            Ok(Some(rx))
        }
        Op::Vote(group, v) => log.save_vote(*group, v).map(|()| None),
        Op::Truncate(group, after) => log.truncate_after(*group, *after).map(|()| None),
        Op::Purge(group, upto) => log.purge(*group, *upto).map(|()| None),
    }
}

/// What the log holds, in the model's shape.
fn read_back(log: &RaftLog) -> Model {
    let mut out = Model::new();
    for group in log.groups() {
        let (purged, _) = log.state(group);
        let entries =
            log.entries(group, 0..u64::MAX).into_iter().map(|e| (e.index, (e.term, e.payload))).collect();
        let g = ModelGroup { entries, vote: log.vote(group), purged };
        if g != ModelGroup::default() {
            out.insert(group, g);
        }
    }
    out
}

fn normalized(model: &Model) -> Model {
    model.iter().filter(|(_, g)| **g != ModelGroup::default()).map(|(k, g)| (*k, g.clone())).collect()
}

fn config(fs: &Arc<MemFs>, segment_bytes: u64) -> RaftLogConfig {
    let fs: Arc<dyn FileSystem> = Arc::clone(fs) as Arc<dyn FileSystem>;
    let mut c = RaftLogConfig::new("/raft", fs);
    c.segment_bytes = segment_bytes;
    c
}

fn segment_files(fs: &MemFs) -> usize {
    fs.list(Path::new("/raft")).map_or(0, |names| names.iter().filter(|n| n.ends_with(".rlog")).count())
}

#[test]
fn matches_a_model_across_reopens_rotations_and_collection() {
    model_run(false);
}

#[test]
fn flushing_inline_matches_the_model_too() {
    model_run(true);
}

/// Random operations against the model, with reopens; `inline`: records are flushed by the caller.
fn model_run(inline: bool) {
    let seed = seed();
    let mut rng = Rng(seed);
    let fs = Arc::new(MemFs::new());
    let config =
        |fs: &Arc<MemFs>, segment_bytes| RaftLogConfig { flush_inline: inline, ..config(fs, segment_bytes) };
    let mut log = RaftLog::open(config(&fs, 4096)).unwrap();
    let mut model = Model::new();
    for step in 0..3000 {
        let op = random_op(&mut rng, &model, 4);
        apply_log(&log, &op).unwrap_or_else(|e| panic!("seed {seed} step {step} {op:?}: {e}"));
        apply_model(&mut model, &op);
        assert_eq!(read_back(&log), normalized(&model), "seed {seed} step {step} after {op:?}");
        if rng.below(300) == 0 {
            log.close().unwrap();
            log = RaftLog::open(config(&fs, 4096)).unwrap();
            assert_eq!(read_back(&log), normalized(&model), "seed {seed} step {step}: after reopen");
        }
    }
    // Purge everything: old segments go.
    let before = segment_files(&fs);
    for group in log.groups() {
        if let (_, Some(last)) = log.state(group) {
            log.purge(group, last).unwrap();
        }
    }
    // Fill a few segments so rotation (and with it collection) runs.
    for i in 0..200u64 {
        let (tx, rx) = mpsc::channel();
        let next = log.state(9).1.map_or(0, |p| p.index + 1);
        let e = LogEntry { index: next, term: 1, payload: vec![0; 200] };
        log.append(9, vec![e], Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        if i % 20 == 0 {
            log.purge(9, LogPosition { term: 1, index: next }).unwrap();
        }
    }
    log.sync().unwrap();
    if segment_files(&fs) > 4 {
        for g in log.groups() {
            eprintln!("group {g}: state {:?}", log.state(g));
        }
        eprintln!("{:?}", fs.list(Path::new("/raft")).unwrap());
    }
    assert!(segment_files(&fs) <= 4, "seed {seed}: {before} segments before, {} after", segment_files(&fs));
    let kept = read_back(&log);
    log.close().unwrap();
    assert_eq!(read_back(&RaftLog::open(config(&fs, 4096)).unwrap()), kept, "seed {seed}");
}

#[test]
fn power_loss_keeps_every_acknowledged_write_and_a_prefix_of_the_rest() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x5151);
    for round in 0..30 {
        let fs = Arc::new(MemFs::new());
        // The log writes through a fault layer so that the "crash" can also stop it dead: a crashed
        // process does nothing after the power goes.
        let faults = FaultFs::new(Arc::clone(&fs) as Arc<dyn FileSystem>);
        let ctl = faults.controller();
        let mut crashing = RaftLogConfig::new("/raft", Arc::new(faults));
        crashing.segment_bytes = 2048;
        let log = RaftLog::open(crashing).unwrap();
        let mut model = Model::new();
        // Model state after each operation; the recovered log must equal one of them, at or after the
        // last acknowledged operation.
        let mut states = vec![Model::new()];
        let mut acked = 0usize;
        let mut waiting: Vec<(usize, mpsc::Receiver<Result<(), String>>)> = Vec::new();
        let steps = 20 + rng.below(150) as usize;
        for step in 1..=steps {
            let op = random_op(&mut rng, &model, 3);
            let rx = apply_log(&log, &op).unwrap();
            apply_model(&mut model, &op);
            states.push(normalized(&model));
            match (&op, rx) {
                (_, Some(rx)) => waiting.push((step, rx)),
                (Op::Vote(..), None) => acked = step,
                _ => {}
            }
            if rng.below(3) == 0 {
                // Some appends are awaited, as Raft awaits them before replying.
                for (s, rx) in waiting.drain(..) {
                    if rx.recv().unwrap().is_ok() {
                        acked = acked.max(s);
                    }
                }
            }
        }
        for (s, rx) in waiting.drain(..) {
            if let Ok(Ok(())) = rx.try_recv() {
                acked = acked.max(s);
            }
        }
        ctl.fail_all();
        fs.crash();
        drop(log);
        let recovered = read_back(&RaftLog::open(config(&fs, 2048)).unwrap());
        let matched = (acked..states.len()).find(|&i| states[i] == recovered);
        assert!(
            matched.is_some(),
            "seed {seed} round {round}: recovered state is not the state after any operation from {acked} on"
        );
    }
}

/// A file system whose fsyncs wait while a gate is closed: a stand-in for a slow disk that lets a test
/// queue appends while the flusher is inside an fsync, without timing assumptions.
#[derive(Debug)]
struct GatedFs {
    inner: Arc<dyn FileSystem>,
    gate: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
}

struct GatedFile {
    inner: Box<dyn WritableFile>,
    gate: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
}

impl WritableFile for GatedFile {
    fn append(&mut self, data: &[u8]) -> cairn_engine::Result<()> {
        self.inner.append(data)
    }

    fn sync(&mut self) -> cairn_engine::Result<()> {
        let (closed, cv) = &*self.gate;
        let mut closed = closed.lock();
        while *closed {
            cv.wait(&mut closed);
        }
        drop(closed);
        self.inner.sync()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl FileSystem for GatedFs {
    fn create(&self, path: &Path) -> cairn_engine::Result<Box<dyn WritableFile>> {
        Ok(Box::new(GatedFile { inner: self.inner.create(path)?, gate: Arc::clone(&self.gate) }))
    }
    fn open(&self, path: &Path) -> cairn_engine::Result<Arc<dyn RandomAccessFile>> {
        self.inner.open(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> cairn_engine::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> cairn_engine::Result<()> {
        self.inner.remove(path)
    }
    fn link(&self, from: &Path, to: &Path) -> cairn_engine::Result<()> {
        self.inner.link(from, to)
    }
    fn remove_dir(&self, dir: &Path) -> cairn_engine::Result<()> {
        self.inner.remove_dir(dir)
    }
    fn list(&self, dir: &Path) -> cairn_engine::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn exists(&self, path: &Path) -> cairn_engine::Result<bool> {
        self.inner.exists(path)
    }
    fn create_dir_all(&self, dir: &Path) -> cairn_engine::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> cairn_engine::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> cairn_engine::Result<Box<dyn FileLock>> {
        self.inner.lock(path)
    }
    fn identity(&self) -> usize {
        self.inner.identity()
    }
}

#[test]
fn appends_of_many_groups_share_fsyncs() {
    let gate = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
    let fs = GatedFs { inner: Arc::new(MemFs::new()), gate: Arc::clone(&gate) };
    let log = RaftLog::open(RaftLogConfig::new("/raft", Arc::new(fs))).unwrap();
    *gate.0.lock() = true;
    let (tx, rx) = mpsc::channel();
    let append = |group: u64, index: u64| {
        let tx = tx.clone();
        let e = LogEntry { index, term: 1, payload: vec![group as u8; 64] };
        log.append(group, vec![e], Box::new(move |r| tx.send(r).unwrap())).unwrap();
    };
    // The flusher takes this one and waits in its fsync...
    append(0, 0);
    // ...while 8 groups queue 10 appends each, readable at once.
    for group in 1..=8 {
        for index in 0..10 {
            append(group, index);
        }
        assert_eq!(log.entries(group, 0..10).len(), 10);
    }
    assert_eq!(log.syncs(), 0);
    *gate.0.lock() = false;
    gate.1.notify_all();
    for _ in 0..81 {
        rx.recv().unwrap().unwrap();
    }
    // 81 appends of 9 groups, durable after at most two fsyncs: the one in progress and one for the rest.
    assert!(log.syncs() <= 2, "{} fsyncs", log.syncs());
}

#[test]
fn damage_is_corruption_and_a_torn_tail_is_not() {
    let fs = Arc::new(MemFs::new());
    let log = RaftLog::open(config(&fs, 1 << 20)).unwrap();
    for index in 0..50u64 {
        let e = LogEntry { index, term: 1, payload: vec![7; 100] };
        log.append(1, vec![e], Box::new(|_| {})).unwrap();
    }
    log.save_vote(1, b"vote").unwrap();
    log.close().unwrap();
    let names = fs.list(Path::new("/raft")).unwrap();
    let last = names.iter().filter(|n| n.ends_with(".rlog")).max().unwrap().clone();
    let path = Path::new("/raft").join(&last);
    let len = fs.file_len(&path).unwrap();

    // A torn tail (a record cut short by a crash) ends the log: everything before it is there.
    fs.truncate(&path, len - 3).unwrap();
    let log = RaftLog::open(config(&fs, 1 << 20)).unwrap();
    assert_eq!(log.entries(1, 0..100).len(), 50);
    assert_eq!(log.vote(1), None, "the torn record was the vote");
    log.close().unwrap();

    // A flipped bit inside a sealed segment is corruption naming the file, not lost data.
    fs.flip_bit(&path, 40, 2).unwrap();
    match RaftLog::open(config(&fs, 1 << 20)) {
        Err(RaftLogError::Storage(e)) => assert!(e.to_string().contains(&last), "{e}"),
        Err(RaftLogError::Corruption { file, .. }) => assert!(file.contains(&last), "{file}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn bad_requests_are_refused_without_changing_the_log() {
    let fs = Arc::new(MemFs::new());
    let log = RaftLog::open(config(&fs, 1 << 20)).unwrap();
    let e = |index| LogEntry { index, term: 1, payload: vec![] };
    log.append(1, vec![e(0), e(1)], Box::new(|_| {})).unwrap();
    let hole = log.append(1, vec![e(3)], Box::new(|_| {}));
    assert!(matches!(hole, Err(RaftLogError::InvalidArgument(_))), "{hole:?}");
    let gap = log.append(1, vec![e(2), e(4)], Box::new(|_| {}));
    assert!(matches!(gap, Err(RaftLogError::InvalidArgument(_))), "{gap:?}");
    log.purge(1, LogPosition { term: 1, index: 1 }).unwrap();
    let behind = log.purge(1, LogPosition { term: 1, index: 0 });
    assert!(matches!(behind, Err(RaftLogError::InvalidArgument(_))), "{behind:?}");
    let purged = log.append(1, vec![e(1)], Box::new(|_| {}));
    assert!(matches!(purged, Err(RaftLogError::InvalidArgument(_))), "{purged:?}");
    assert_eq!(
        log.state(1),
        (Some(LogPosition { term: 1, index: 1 }), Some(LogPosition { term: 1, index: 1 }))
    );
}
