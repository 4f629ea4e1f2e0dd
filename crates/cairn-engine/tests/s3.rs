//! Object-storage volumes against a real S3-compatible server: moto in server mode on 127.0.0.1, installed
//! (if missing) and started by `scripts/s3-test-server`, stopped when the test ends. No mocks: every call
//! goes over HTTP with signed requests.
//!
//! Each test starts its own server, then runs its body in a child process of this test binary with the
//! credentials in the child's environment (`AWS_ACCESS_KEY_ID`, ...), which is how a deployment gives
//! them to cairn; the URL carries only the endpoint and region.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_engine::fs::{FaultFs, FaultKind, FileSystem, PART_BYTES, StdFs};
use cairn_engine::{Db, DbCoordinator, Error, ReadOnlyDb, Reader, SingleDb, Volume, resolve_volume};
use common::snapdata::{TOTAL, bucket_of, coordinator_config, key, shard_config, value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CHILD_ENV: &str = "CAIRN_S3_CHILD";
const BUCKET: &str = "cairn-test";
/// Installing moto on a fresh machine downloads a few packages; starting it takes about a second.
const SERVER_START_LIMIT: Duration = Duration::from_secs(300);

/// A moto server; stops when dropped (its stdin closes).
struct S3Server {
    child: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        // Cargo sets the manifest directory when it runs the test; the compile-time one may name another
        // checkout that shared the target directory.
        let manifest =
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let script = Path::new(&manifest).join("../../scripts/s3-test-server");
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(&script)
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(SERVER_START_LIMIT).unwrap_or_default();
        let Some(endpoint) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            let mut text = String::new();
            let _ = log.reopen().unwrap().read_to_string(&mut text);
            panic!("scripts/s3-test-server did not start (said {line:?}); its log:\n{text}");
        };
        S3Server { stdin: child.stdin.take(), endpoint: endpoint.to_string(), child }
    }

    /// Runs `scenario` in a child process with the server's credentials in its environment.
    fn run(&self, scenario: &str) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{scenario} {}", self.endpoint))
            .env("AWS_ACCESS_KEY_ID", "cairn-test")
            .env("AWS_SECRET_ACCESS_KEY", "cairn-test")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}");
        assert!(out.status.success(), "scenario {scenario} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains(&format!("scenario {scenario} passed")), "{stdout}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: runs the scenario `CAIRN_S3_CHILD` names (a no-op in a normal test run).
#[test]
fn child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else { return };
    let (scenario, endpoint) = arg.split_once(' ').unwrap();
    let url =
        |prefix: &str| format!("s3://{BUCKET}/{prefix}?endpoint={endpoint}&allow_http=true&region=us-east-1");
    match scenario {
        "files" => files(&url("files")),
        "walkthrough" => walkthrough(&url("walkthrough")),
        "restore" => interrupted_restore(&url("restore")),
        "single" => single_db(&url("single")),
        other => panic!("unknown scenario {other}"),
    }
    println!("scenario {scenario} passed");
}

#[test]
fn s3_files_behave_like_files() {
    S3Server::start().run("files");
}

#[test]
fn s3_seed_walkthrough_with_incremental_upload_readers_and_retention() {
    S3Server::start().run("walkthrough");
}

#[test]
fn s3_interrupted_restore_resumes_downloading_only_what_is_missing() {
    S3Server::start().run("restore");
}

#[test]
fn s3_single_db_snapshots_and_resumes() {
    S3Server::start().run("single");
}

fn io_kind(e: &Error) -> Option<std::io::ErrorKind> {
    match e {
        Error::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

/// `ObjectFs` keeps the `FileSystem` contract the engine relies on.
fn files(url: &str) {
    let local: Arc<dyn FileSystem> = Arc::new(StdFs);
    let vol = resolve_volume(url, &local).unwrap();
    let fs = &vol.fs;
    let dir = vol.root.join("d");
    // A multipart object (two full parts and a tail) appears only when synced, whole.
    let big: Vec<u8> = (0..(2 * PART_BYTES + 12_345) as u32).map(|i| (i % 251) as u8).collect();
    let mut w = fs.create(&dir.join("big")).unwrap();
    for chunk in big.chunks(1 << 20) {
        w.append(chunk).unwrap();
    }
    assert!(!fs.exists(&dir.join("big")).unwrap(), "object visible before sync");
    w.sync().unwrap();
    assert!(w.append(b"more").is_err(), "appending after sync must fail");
    drop(w);
    let r = fs.open(&dir.join("big")).unwrap();
    assert_eq!(r.len(), big.len() as u64);
    for (offset, len) in [(0usize, 10usize), (PART_BYTES - 5, 10), (big.len() - 7, 7)] {
        let mut buf = vec![0; len];
        r.read_exact_at(offset as u64, &mut buf).unwrap();
        assert_eq!(buf, big[offset..offset + len]);
    }
    let mut past = vec![0; 8];
    assert!(r.read_exact_at(big.len() as u64 - 4, &mut past).is_err());
    assert_eq!(fs.read_all(&dir.join("big")).unwrap(), big);
    // Dropped unsynced writers leave nothing behind, multipart or not.
    let mut w = fs.create(&dir.join("abandoned-big")).unwrap();
    w.append(&big).unwrap();
    drop(w);
    let mut w = fs.create(&dir.join("abandoned-small")).unwrap();
    w.append(b"x").unwrap();
    drop(w);
    // Small objects, listing, directories.
    for name in ["a", "sub/b"] {
        let mut w = fs.create(&dir.join(name)).unwrap();
        w.append(name.as_bytes()).unwrap();
        w.sync().unwrap();
    }
    let mut names = fs.list(&dir).unwrap();
    names.sort();
    assert_eq!(names, ["a", "big", "sub"]);
    assert!(fs.exists(&dir.join("sub")).unwrap());
    assert!(!fs.exists(&dir.join("nothing")).unwrap());
    assert_eq!(io_kind(&fs.open(&dir.join("nothing")).err().unwrap()), Some(std::io::ErrorKind::NotFound));
    assert!(fs.remove_dir(&dir.join("sub")).is_err(), "removing a non-empty prefix must fail");
    // Link is a server-side copy, refused onto an existing object; rename replaces.
    fs.link(&dir.join("a"), &dir.join("a2")).unwrap();
    assert_eq!(fs.read_all(&dir.join("a2")).unwrap(), b"a");
    assert!(fs.link(&dir.join("a"), &dir.join("a2")).is_err());
    fs.rename(&dir.join("a2"), &dir.join("sub/b")).unwrap();
    assert_eq!(fs.read_all(&dir.join("sub/b")).unwrap(), b"a");
    assert!(!fs.exists(&dir.join("a2")).unwrap());
    fs.remove(&dir.join("sub/b")).unwrap();
    fs.remove_dir(&dir.join("sub")).unwrap();
    // Locks are exclusive until dropped.
    let lock = fs.lock(&dir.join("LOCK")).unwrap();
    match fs.lock(&dir.join("LOCK")) {
        Err(Error::Locked(path)) => assert!(path.display().to_string().starts_with("s3://"), "{path:?}"),
        other => panic!("second lock: {:?}", other.map(|_| ())),
    }
    drop(lock);
    drop(fs.lock(&dir.join("LOCK")).unwrap());
    // Two URLs for one bucket share an identity (so links between their prefixes are server-side).
    let other = resolve_volume(&url.replace("/files?", "/elsewhere?"), &local).unwrap();
    assert_eq!(other.fs.identity(), fs.identity());
}

/// The seed's walkthrough with the coordinator's volumes on S3: two shards on local disks, a global
/// snapshot uploaded, an incremental one after 1% of keys change, readers straight from S3, retention,
/// and a restore of both shards from S3 into fresh directories.
fn walkthrough(url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let local = Volume::file_url(&tmp.path().join("local-snapshots"));
    let ranges = [0..=499u16, 500..=999];
    let shards: Vec<Db> = (0..2)
        .map(|s| {
            Db::open(shard_config(&tmp.path().join(format!("shard{s}")), &local), vec![ranges[s].clone()])
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let owner = |i: u64| usize::from(bucket_of(i) >= 500);
    const KEYS: u64 = 20_000;
    for i in 0..KEYS {
        shards[owner(i)].put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    // Settle the trees first: a compaction still due from the load would otherwise land between the two
    // snapshots and make the incremental upload carry its output (a flaky measure of "only new files").
    for db in &shards {
        db.compact().unwrap();
    }
    let coordinator = DbCoordinator::open(coordinator_config(url, Some(1))).unwrap();
    match DbCoordinator::open(coordinator_config(url, Some(1))) {
        Err(Error::Locked(_)) => {}
        other => panic!("a second coordinator on the same volume: {:?}", other.map(|_| ())),
    }
    let take = |round: u64| {
        let inputs: Vec<_> =
            shards.iter().map(|db| db.shard_snapshot_input(db.snapshot().unwrap()).unwrap()).collect();
        let manifest = coordinator.take_global_snapshot(TOTAL, inputs).unwrap();
        let stats = coordinator.materialize_global_snapshot(&manifest).unwrap();
        assert_eq!(stats.gc_error, None, "round {round}");
        (manifest, stats)
    };
    let (first, stats) = take(0);
    let data_bytes: u64 = first.shard_snapshots.iter().map(|s| s.size_bytes).sum();
    println!("first upload: {} bytes for {data_bytes} bytes of files", stats.bytes_copied);
    assert!(stats.bytes_copied >= data_bytes && stats.bytes_copied < data_bytes + 4096);
    // Change 1% of the keys: only the new files go up.
    for i in (0..KEYS).step_by(100) {
        shards[owner(i)].put(bucket_of(i), &key(i), 0, &value(i, 1)).unwrap();
    }
    let (second, stats) = take(1);
    let data_bytes: u64 = second.shard_snapshots.iter().map(|s| s.size_bytes).sum();
    println!(
        "incremental upload: {} bytes for {data_bytes} bytes of files ({:.2}%)",
        stats.bytes_copied,
        stats.bytes_copied as f64 * 100.0 / data_bytes as f64
    );
    assert!(stats.bytes_copied > 0 && stats.bytes_copied * 100 <= data_bytes * 5, "{stats:?}");
    // Retention 1: the first global snapshot and its shard snapshots are gone from S3.
    assert_eq!(coordinator.list_global_snapshots().unwrap(), vec![second.id]);
    assert_eq!(stats.shard_snapshots_removed, 2);
    let vol = coordinator.snapshot_volume().clone();
    for s in &first.shard_snapshots {
        let dirs = vol.fs.list(&vol.root.join(&s.db_id)).unwrap();
        assert!(!dirs.contains(&format!("{:010}", s.snapshot_id)), "{dirs:?}");
    }
    // Readers straight from S3: a shard snapshot, and the latest global snapshot.
    let config = shard_config(&tmp.path().join("unused"), url);
    for s in &second.shard_snapshots {
        let ro = ReadOnlyDb::open_at(&config, url, &s.db_id, s.snapshot_id).unwrap();
        assert_eq!(ro.content_digest().unwrap().to_hex(), s.digest);
    }
    let reader = Reader::open(config.clone(), coordinator_config(url, None)).unwrap();
    assert_eq!(reader.global_snapshot().id, second.id);
    for i in (0..KEYS).step_by(97) {
        let row = reader.get(bucket_of(i), &key(i)).unwrap().unwrap();
        assert_eq!(row.column(0), Some(value(i, u64::from(i % 100 == 0)).as_slice()));
    }
    // Later writes are not in the snapshot.
    for (db, range) in shards.iter().zip(&ranges) {
        db.put(*range.start(), b"after", 0, b"x").unwrap();
    }
    drop(shards);
    drop(coordinator);
    // Restore: coordinator first, then each shard from S3 into a fresh directory.
    let coordinator = DbCoordinator::open(coordinator_config(url, Some(1))).unwrap();
    let manifest = coordinator.current_global_snapshot().unwrap().unwrap();
    assert_eq!(manifest.id, second.id);
    let mut restored = Vec::new();
    for s in &manifest.shard_snapshots {
        let config = shard_config(&tmp.path().join(format!("restored-{}", s.db_id)), &s.volume);
        let stats = Db::restore_from_snapshot(&config, s.snapshot_id, &s.db_id).unwrap();
        assert_eq!((stats.files, stats.files_reused, stats.bytes_copied), (s.files, 0, s.size_bytes));
        restored.push(Db::open_from_snapshot(config, s.snapshot_id, s.db_id.clone()).unwrap());
    }
    for i in 0..KEYS {
        let row = restored[owner(i)].get(bucket_of(i), &key(i)).unwrap().unwrap();
        assert_eq!(row.column(0), Some(value(i, u64::from(i % 100 == 0)).as_slice()), "key {i}");
    }
    assert!(restored[0].get(0, b"after").unwrap().is_none());
    assert!(restored[1].get(500, b"after").unwrap().is_none());
}

/// A restore from S3 that fails part way keeps what it placed; the retry downloads only the rest.
fn interrupted_restore(url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(shard_config(&tmp.path().join("db"), url), vec![0..=999]).unwrap();
    for i in 0..20_000 {
        db.put(bucket_of(i), &key(i), 0, &value(i, 0)).unwrap();
    }
    let sid = db.snapshot().unwrap();
    let input = db.shard_snapshot_input(sid).unwrap();
    assert!(input.files >= 4, "{input:?}");
    let dir = tmp.path().join("restored");
    let faulty = FaultFs::new(Arc::new(StdFs));
    let ctl = faulty.controller();
    let mut config = shard_config(&dir, url);
    config.fs = Arc::new(faulty);
    // The marker is the first file created; let two tables through, fail the third.
    ctl.fail_after(FaultKind::Create, 3);
    let e = Db::restore_from_snapshot(&config, sid, &db.id()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(!dir.join("CURRENT").exists());
    ctl.clear();
    let stats = Db::restore_from_snapshot(&config, sid, &db.id()).unwrap();
    println!("resumed restore: {stats:?} of {} bytes", input.size_bytes);
    assert_eq!(stats.files, input.files);
    assert_eq!(stats.files_reused, 2);
    assert!(stats.bytes_copied < input.size_bytes);
    // Done: a further call moves nothing, and the shard holds every key.
    assert_eq!(Db::restore_from_snapshot(&config, sid, &db.id()).unwrap(), Default::default());
    let restored = Db::open_from_snapshot(config, sid, db.id()).unwrap();
    for i in (0..20_000).step_by(13) {
        assert_eq!(restored.get(bucket_of(i), &key(i)).unwrap().unwrap().column(0), Some(&value(i, 0)[..]));
    }
    assert!(!dir.join(cairn_engine::RESTORE_MARKER).exists());
}

/// `SingleDb` with its snapshot volume on S3: each `snapshot()` uploads the shard's new files (earlier
/// ones are copied server-side), and `resume` in a fresh directory downloads the snapshot.
fn single_db(url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let db = SingleDb::open(shard_config(&tmp.path().join("db"), url)).unwrap();
    for round in 0..3 {
        for i in (round * 5_000)..((round + 1) * 5_000) {
            db.put(bucket_of(i), &key(i), 0, &value(i, round)).unwrap();
        }
        db.snapshot().unwrap();
    }
    let last = db.coordinator().current_global_snapshot().unwrap().unwrap();
    db.put(1, b"not-in-snapshot", 0, b"x").unwrap();
    db.close().unwrap();
    let resumed = SingleDb::resume(shard_config(&tmp.path().join("resumed"), url), last.id).unwrap();
    for i in 0..15_000 {
        let row = resumed.get(bucket_of(i), &key(i)).unwrap().unwrap();
        assert_eq!(row.column(0), Some(&value(i, i / 5_000)[..]));
    }
    assert!(resumed.get(1, b"not-in-snapshot").unwrap().is_none());
}
