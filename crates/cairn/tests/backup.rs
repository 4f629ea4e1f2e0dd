//! Backups of a running 3-node cluster at one timestamp, to a directory and to a real S3-compatible
//! server (moto on 127.0.0.1, through `scripts/s3-test-server`), restored into a single node and into
//! a 3-node cluster of another shard count: each holds exactly what a scan at the backup's timestamp
//! returned (history included, nothing written after it), a backup is incremental on S3, retention,
//! verify and delete work, damage is found, and a backup whose coordinator was killed is never listed
//! and leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{READY, S3_ENV, S3Server, Server, cairn, node_id, serves_keys, three_nodes_env, wait_until};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every row a scan of `server` returns (`timestamp`: as of it), each as its JSON (key, value and
/// version timestamp).
fn rows(server: &Server, timestamp: Option<&str>) -> BTreeSet<String> {
    let at = timestamp.map(|t| format!("&timestamp={t}")).unwrap_or_default();
    let r = server.call("GET", &format!("/kv/rest/range?limit=10000{at}"), b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert!(body.get("resume").is_none_or(Value::is_null), "one page holds every row");
    body["rows"].as_array().unwrap().iter().map(|row| row.to_string()).collect()
}

/// The write's timestamp as `WALL.LOGICAL`.
fn put(server: &Server, key: &str, value: &str) -> String {
    let r = server.call("PUT", &format!("/kv/rest/entry/{key}"), value.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ts = &r.json()["header"]["timestamp"];
    format!("{}.{}", ts["wall_time"], ts["logical"])
}

/// `cairn ARGS... --json --addr ADDR`, which must succeed: its JSON.
fn cli(server: &Server, args: &[&str]) -> Value {
    let addr = server.grpc.to_string();
    let (ok, out, err) = cairn(&[args, &["--json", "--addr", &addr]].concat());
    assert!(ok, "cairn {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("cairn {args:?} said {out:?}: {e}"))
}

/// `cairn ARGS...` running, once it printed its first progress line (returned) on stderr.
fn started(args: &[&str]) -> (std::process::Child, String) {
    let mut running = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(running.stderr.take().unwrap()).read_line(&mut first_line).unwrap();
    (running, first_line)
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Some `.sst` file under `dir`.
fn some_table(dir: &Path) -> std::path::PathBuf {
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "sst") {
            return entry;
        }
    }
    panic!("no table file under {}", dir.display());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Five nodes started with `--join`, a cluster made by `cairn init` on the first (3 replicas, `shards`
/// shards), every node serving keys.
fn five_nodes(store: &dyn Fn(usize) -> std::path::PathBuf, shards: u32) -> Vec<Server> {
    let start = |i: usize, join: &str| Server::start(&store(i), &["--join", join]);
    let n1 = start(1, "");
    let n1_grpc = n1.grpc.to_string();
    let shards = shards.to_string();
    let init = [
        "init",
        "--addr",
        &n1_grpc,
        "--replication-factor",
        "3",
        "--shards",
        &shards,
        "--dead-after-secs",
        "2",
    ];
    let (ok, _, err) = cairn(&init);
    assert!(ok, "init failed: {err}");
    let mut nodes = vec![n1];
    for i in 2..=5 {
        let n = start(i, &n1_grpc);
        wait_until("the node is admitted", READY, || node_id(&n) == i as u64);
        nodes.push(n);
    }
    for n in &nodes {
        wait_until("every node serves keys", READY, || serves_keys(n));
    }
    nodes
}

#[test]
fn a_backup_at_one_timestamp_restores_exactly_that_state_into_one_node_and_into_another_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("cairn-backups");
    let nodes = three_nodes_env(&|i| tmp.path().join(format!("n{i}")), 4, &[], &S3_ENV);

    // History: 200 keys, half overwritten, 30 deleted.
    let mut first = String::new();
    for i in 0..200 {
        first = put(&nodes[i % 3], &format!("k{i:03}"), &format!("one-{i}"));
    }
    for i in 0..100 {
        put(&nodes[i % 3], &format!("k{i:03}"), &format!("two-{i}"));
    }
    for i in 150..180 {
        assert_eq!(nodes[0].call("DELETE", &format!("/kv/rest/entry/k{i:03}"), b"").status, 200);
    }
    let dir = tmp.path().join("backups");
    let url = file_url(&dir);
    // The backup is taken under a write load; the acknowledged writes, with their timestamps, are the
    // model of what it must hold.
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Stops the writers however the scope ends (a failed assertion must not leave them running).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let (backup, acked) = std::thread::scope(|s| {
        let _stop = Stop(&stop);
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (node, stop) = (&nodes[w], &stop);
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                        let (key, value) = (format!("w{:02}", (n * 7 + w) % 60), format!("{w}-{n}"));
                        let r = node.call("PUT", &format!("/kv/rest/entry/{key}"), value.as_bytes());
                        if r.status == 200 {
                            let ts = &r.json()["header"]["timestamp"];
                            acked.push((
                                key,
                                value,
                                (ts["wall_time"].as_u64().unwrap(), ts["logical"].as_u64().unwrap()),
                            ));
                        }
                        n += 1;
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let backup = cli(&nodes[1], &["backup", "create", "--to", &url]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked: Vec<_> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        (backup, acked)
    });
    let (id, as_of) = (backup["id"].as_u64().unwrap(), backup["as_of"].as_str().unwrap().to_string());
    assert_eq!(backup["shards"].as_array().unwrap().len(), 4, "{backup}");
    let (wall, logical) = as_of.split_once('.').unwrap();
    let t = (wall.parse::<u64>().unwrap(), logical.parse::<u64>().unwrap());
    // Each load key's newest acknowledged value at or below the backup's timestamp.
    let mut model: std::collections::BTreeMap<String, (String, (u64, u64))> = Default::default();
    for (key, value, at) in &acked {
        if *at <= t && model.get(key).is_none_or(|(_, seen)| seen < at) {
            model.insert(key.clone(), (value.clone(), *at));
        }
    }
    let (before, after) =
        (acked.iter().filter(|a| a.2 <= t).count(), acked.iter().filter(|a| a.2 > t).count());
    println!("write load: {before} acknowledged writes at or below the backup's timestamp, {after} above");
    assert!(before > 0 && after > 0, "the load ran across the backup's timestamp");
    let holds_model = |server: &Server| {
        use base64::Engine;
        for (key, (value, (wall, logical))) in &model {
            let r = server.call("GET", &format!("/kv/rest/entry/{key}"), b"");
            assert_eq!(r.status, 200, "key {key}");
            let got = &r.json()["value"];
            let want = base64::engine::general_purpose::STANDARD.encode(value);
            assert_eq!(got["bytes"].as_str(), Some(want.as_str()), "key {key}");
            assert_eq!(
                (got["timestamp"]["wall_time"].as_u64(), got["timestamp"]["logical"].as_u64()),
                (Some(*wall), Some(*logical))
            );
        }
    };
    // Written after the backup's timestamp: in no restore.
    for i in 0..20 {
        put(&nodes[2], &format!("k{i:03}"), "three");
    }
    put(&nodes[0], "later", "x");
    let at_backup = rows(&nodes[0], Some(&as_of));
    let at_first = rows(&nodes[2], Some(&first));
    assert_eq!(at_backup.len(), 170 + model.len());

    let listed = cli(&nodes[2], &["backup", "list", "--from", &url]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["as_of"], as_of.as_str());
    let verified = cli(&nodes[0], &["backup", "verify", &id.to_string(), "--from", &url]);
    assert_eq!(verified["shards"], 4, "{verified}");
    // The same over REST.
    let encoded: String = url.bytes().map(|b| format!("%{b:02X}")).collect();
    let listed = nodes[1].call("GET", &format!("/admin/backups?url={encoded}"), b"");
    assert_eq!(
        listed.json()["backups"][0]["as_of"],
        as_of.as_str(),
        "{}",
        String::from_utf8_lossy(&listed.body)
    );
    let shown = nodes[2].call("GET", &format!("/admin/backups/{id}?url={encoded}"), b"");
    assert_eq!(shown.json()["shards"].as_array().map(Vec::len), Some(4));
    let checked = nodes[0].call("POST", &format!("/admin/backups/{id}/verify?url={encoded}"), b"");
    assert_eq!(checked.json()["shards"], 4, "{}", String::from_utf8_lossy(&checked.body));
    let missing = nodes[0].call("GET", &format!("/admin/backups/99?url={encoded}"), b"");
    assert_eq!(missing.status, 404);

    // A cluster that holds keys is not restored into unless asked.
    let addr = nodes[0].grpc.to_string();
    let (ok, _, err) = cairn(&["restore", "--from", &url, "--backup", &id.to_string(), "--addr", &addr]);
    assert!(!ok && err.contains("holds keys"), "{err}");

    // One node, restored at its start: exactly the state at the backup's timestamp, history included.
    let single = tmp.path().join("single");
    let restore_args = ["--restore-from", url.as_str(), "--backup", &id.to_string()];
    let one = Server::start(&single, &restore_args);
    assert_eq!(rows(&one, None), at_backup);
    assert_eq!(rows(&one, Some(&first)), at_first);
    holds_model(&one);
    assert_eq!(one.call("GET", "/kv/rest/entry/later", b"").status, 404);
    one.stop();
    // Started again with the same flags, it serves what it restored.
    let one = Server::start(&single, &restore_args);
    assert_eq!(rows(&one, None), at_backup);
    one.stop();

    // A cluster of 5 nodes and 3 shards, its restore's coordinator killed part way, then run again
    // (with --overwrite, as the cluster now holds keys): the same.
    let mut other = five_nodes(&|i| tmp.path().join(format!("m{i}")), 3);
    let id_text = id.to_string();
    let addr4 = other[4].grpc.to_string();
    let (mut running, first_line) =
        started(&["restore", "--from", &url, "--backup", &id_text, "--addr", &addr4]);
    other.pop().unwrap().kill9();
    let interrupted = !running.wait().unwrap().success();
    println!("restore interrupted after {first_line:?}: {interrupted}");
    let restored = cli(&other[1], &["restore", "--from", &url, "--backup", &id_text, "--overwrite"]);
    assert_eq!(restored["keys"].as_u64(), Some(200 + model.len() as u64), "{restored}");
    assert_eq!(rows(&other[0], None), at_backup);
    assert_eq!(rows(&other[2], Some(&first)), at_first);
    holds_model(&other[3]);
    drop(other);

    // On S3: the second backup uploads only what changed; retention keeps the newest.
    let s3_url =
        format!("s3://cairn-backups/cluster?endpoint={}&region=us-east-1&allow_http=true", s3.endpoint);
    let b1 = cli(&nodes[0], &["backup", "create", "--to", &s3_url]);
    put(&nodes[0], "after-b1", "y");
    let b2 = cli(&nodes[2], &["backup", "create", "--to", &s3_url]);
    let (up1, up2) = (b1["bytes_uploaded"].as_u64().unwrap(), b2["bytes_uploaded"].as_u64().unwrap());
    let total2: u64 = b2["shards"].as_array().unwrap().iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    println!("S3 backups uploaded {up1} bytes, then {up2} of {total2}");
    assert!(up1 > 0 && up2 < total2 && up2 < up1, "uploaded {up1} then {up2} of {total2}");
    let verified = cli(&nodes[1], &["backup", "verify", &b2["id"].to_string(), "--from", &s3_url]);
    assert_eq!(verified["shards"], 4, "{verified}");
    let from_s3 = Server::start_env(
        &tmp.path().join("single-s3"),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--restore-from",
            &s3_url,
            "--backup",
            &b2["id"].to_string(),
        ],
        &S3_ENV,
    );
    let b2_at = b2["as_of"].as_str().unwrap();
    assert_eq!(rows(&from_s3, None), rows(&nodes[0], Some(b2_at)));
    from_s3.stop();
    cli(&nodes[1], &["backup", "create", "--to", &s3_url, "--keep", "1"]);
    let listed = cli(&nodes[1], &["backup", "list", "--from", &s3_url]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let b3 = listed[0]["id"].to_string();
    let (ok, out, err) = cairn(&["backup", "delete", &b3, "--from", &s3_url, "--addr", &addr]);
    assert!(ok, "{out} {err}");
    assert_eq!(cli(&nodes[1], &["backup", "list", "--from", &s3_url]), serde_json::json!([]));

    // Damage is found.
    let table = some_table(&dir);
    let bytes = std::fs::read(&table).unwrap();
    // A backup's files on the nodes' file system are links to the shards' own: replace the file rather
    // than write through the link.
    std::fs::remove_file(&table).unwrap();
    std::fs::write(&table, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = cairn(&["backup", "verify", &id.to_string(), "--from", &url, "--addr", &addr]);
    assert!(!ok && err.contains("damaged"), "{err}");

    // A backup whose coordinator is killed part way is never listed; what it and other unfinished
    // runs left is deleted by the next backup to the URL.
    let dir2 = tmp.path().join("backups2");
    let url2 = file_url(&dir2);
    cli(&nodes[0], &["backup", "create", "--to", &url2]);
    let complete = walk(&dir2).into_iter().find(|p| p.ends_with("CURRENT")).unwrap();
    let orphan = dir2.join("0123456789abcdef0123456789abcdef").join("0000000007");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::copy(complete.with_file_name("DIGEST"), orphan.join("DIGEST")).unwrap();
    let [n1, n2, n3] = nodes;
    let (mut running, first_line) =
        started(&["backup", "create", "--to", &url2, "--addr", &n3.grpc.to_string()]);
    assert!(first_line.contains("waiting"), "{first_line}");
    n3.kill9();
    assert!(!running.wait().unwrap().success());
    assert_eq!(cli(&n1, &["backup", "list", "--from", &url2]).as_array().unwrap().len(), 1);
    wait_until("a backup with one node down", Duration::from_secs(60), || {
        let (ok, _, _) = cairn(&["backup", "create", "--to", &url2, "--addr", &n2.grpc.to_string()]);
        ok
    });
    assert!(!orphan.exists(), "an unfinished run's shard snapshot is left");
    let listed = cli(&n1, &["backup", "list", "--from", &url2]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    for b in listed.as_array().unwrap() {
        cli(&n2, &["backup", "verify", &b["id"].to_string(), "--from", &url2]);
    }
}
