//! Backups of a running 3-node cluster at one timestamp, to a directory and to a real S3-compatible
//! server (moto on 127.0.0.1, through `scripts/s3-test-server`), restored into a single node and into
//! a 3-node cluster of another shard count: each holds exactly what a scan at the backup's timestamp
//! returned (history included, nothing written after it), a backup is incremental on S3, retention,
//! verify and delete work, damage is found, and a backup whose coordinator was killed is never listed
//! and leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{S3_ENV, S3Server, Server, cairn, three_nodes_env, three_nodes_with, wait_until};
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
    let backup = cli(&nodes[1], &["backup", "create", "--to", &url]);
    let (id, as_of) = (backup["id"].as_u64().unwrap(), backup["as_of"].as_str().unwrap().to_string());
    assert_eq!(backup["shards"].as_array().unwrap().len(), 4, "{backup}");
    // Written after the backup's timestamp: in no restore.
    for i in 0..20 {
        put(&nodes[2], &format!("k{i:03}"), "three");
    }
    put(&nodes[0], "later", "x");
    let at_backup = rows(&nodes[0], Some(&as_of));
    let at_first = rows(&nodes[2], Some(&first));
    assert_eq!(at_backup.len(), 170);

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
    assert_eq!(one.call("GET", "/kv/rest/entry/later", b"").status, 404);
    one.stop();
    // Started again with the same flags, it serves what it restored.
    let one = Server::start(&single, &restore_args);
    assert_eq!(rows(&one, None), at_backup);
    one.stop();

    // Another cluster, of 2 shards: the same.
    let other = three_nodes_with(&|i| tmp.path().join(format!("m{i}")), 2);
    let restored = cli(&other[1], &["restore", "--from", &url, "--backup", &id.to_string()]);
    assert_eq!(restored["keys"], 200, "{restored}");
    assert_eq!(rows(&other[0], None), at_backup);
    assert_eq!(rows(&other[2], Some(&first)), at_first);
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
    let mut running = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["backup", "create", "--to", &url2, "--addr", &n3.grpc.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(running.stderr.take().unwrap()).read_line(&mut first_line).unwrap();
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
