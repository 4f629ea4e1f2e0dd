//! Transactions on a running 3-node cluster through `POST /kv/rest/txn`: writes to keys of every shard
//! commit together and read back from every node; a failed condition writes nothing; and a bank of
//! accounts spread over the shards keeps its total while clients on every node move money between
//! accounts concurrently (read the balances in one transaction, then write both in another whose
//! writes are conditioned on the versions read — the etcd way), with every audit (all balances read in
//! one transaction) seeing the same total. Interactive transactions over gRPC (the Rust client's retry
//! helper, `cairn txn`), and a transaction whose gateway is killed midway: its record expires, and the
//! first reader after that aborts it and clears its intents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, cairn, three_nodes, try_http, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

fn txn(server: &Server, body: &Value) -> (u16, Value) {
    let r = server.call("POST", "/kv/rest/txn", body.to_string().as_bytes());
    let value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, value)
}

fn text(v: &Value) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["bytes"].as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn writes_to_every_shard_commit_together_and_a_failed_condition_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let keys: Vec<String> = (0..16).map(|i| format!("t-{i}")).collect();
    let puts: Vec<Value> =
        keys.iter().map(|k| json!({"op": "put", "key": k, "value": format!("v-{k}")})).collect();
    let (status, answer) = txn(&nodes[0], &json!({"ops": puts}));
    assert_eq!(status, 200, "{answer}");
    let committed = answer["timestamp"].clone();
    for n in &nodes {
        for k in &keys {
            let r = n.call("GET", &format!("/kv/rest/entry/{k}"), b"");
            assert_eq!(r.status, 200, "{k} on {}", n.addr);
            assert_eq!(text(&r.json()["value"]), format!("v-{k}"));
            assert_eq!(r.json()["value"]["timestamp"], committed, "one commit timestamp");
        }
    }
    // Keys of every shard: intents, then the record.
    assert_eq!(commits(&nodes[0]), [("one_phase", 0), ("intents", 1), ("read_only", 0)]);
    // A read-modify-write of one key: one command on its shard (1PC), which also moves the read.
    let ops = json!([{"op": "get", "key": "t-5"}, {"op": "put", "key": "t-5", "value": "once"}]);
    let (status, answer) = txn(&nodes[0], &json!({"ops": ops}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(commits(&nodes[0]), [("one_phase", 1), ("intents", 1), ("read_only", 0)]);
    // Reads see the transaction's own writes; a snapshot-isolation transaction too.
    for isolation in ["serializable", "snapshot"] {
        let ops = json!([
            {"op": "put", "key": "t-0", "value": "own"},
            {"op": "get", "key": "t-0"},
            {"op": "get", "key": "t-1"},
            {"op": "get", "key": "absent"},
        ]);
        let (status, answer) = txn(&nodes[1], &json!({"isolation": isolation, "ops": ops}));
        assert_eq!(status, 200, "{answer}");
        let results = answer["results"].as_array().unwrap();
        assert_eq!(text(&results[1]), "own");
        assert_eq!(text(&results[2]), "v-t-1");
        assert!(results[3].is_null());
    }
    // A failed condition: 412, and nothing of the transaction is written.
    let ops = json!([
        {"op": "put", "key": "t-2", "value": "lost"},
        {"op": "delete", "key": "t-3"},
        {"op": "put", "key": "t-4", "value": "x", "if_absent": true},
    ]);
    let (status, answer) = txn(&nodes[2], &json!({"ops": ops}));
    assert_eq!((status, answer["code"].as_str()), (412, Some("failed_precondition")), "{answer}");
    for (k, want) in [("t-2", "v-t-2"), ("t-3", "v-t-3")] {
        let r = nodes[0].call("GET", &format!("/kv/rest/entry/{k}"), b"");
        assert_eq!(text(&r.json()["value"]), want);
    }
    // Plain writes of the keys work as ever (no intent left behind).
    let r = nodes[0].call("PUT", "/kv/rest/entry/t-2", b"plain");
    assert_eq!(r.status, 200);
    // Bad requests.
    for bad in [
        json!({"ops": [{"op": "get"}]}),
        json!({"ops": [{"op": "put", "key": "k"}]}),
        json!({"isolation": "x", "ops": []}),
    ] {
        assert_eq!(txn(&nodes[0], &bad).0, 400, "{bad}");
    }
}

/// How many transactions `server` coordinated committed, by path (`cairn_txn_commits_total`).
fn commits(server: &Server) -> Vec<(&'static str, u64)> {
    let metrics = String::from_utf8(server.call("GET", "/metrics", b"").body).unwrap();
    ["one_phase", "intents", "read_only"]
        .into_iter()
        .map(|path| {
            let series = format!("cairn_txn_commits_total{{path=\"{path}\"}} ");
            let line = metrics.lines().find_map(|l| l.strip_prefix(&series[..]));
            (path, line.unwrap_or_else(|| panic!("no {series}in {metrics}")).parse().unwrap())
        })
        .collect()
}

const ACCOUNTS: usize = 8;
const START: i64 = 1_000;

/// The balances and their versions, read in one transaction on `server` (again while it conflicts or
/// waits too long, for up to a minute).
fn balances(server: &Server) -> Vec<(i64, Value)> {
    let ops: Vec<Value> = (0..ACCOUNTS).map(|a| json!({"op": "get", "key": format!("acct-{a}")})).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = txn(server, &json!({"ops": ops}));
        if (status == 409 || status == 503) && std::time::Instant::now() < deadline {
            continue;
        }
        assert_eq!(status, 200, "{answer}");
        return answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (text(v).parse().unwrap(), v["timestamp"].clone()))
            .collect();
    }
}

#[test]
fn a_bank_keeps_its_total_under_concurrent_transfers_from_every_node() {
    bank(false);
}

#[test]
fn a_bank_keeps_its_total_when_a_node_is_killed_amid_the_transfers() {
    bank(true);
}

/// Transfers from clients on every node, with audits, and (`kill`) node 3 killed after a few audits:
/// its transactions' outcomes are unknown to their clients, but every audit adds up.
fn bank(kill: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let [n1, n2, n3] = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let open: Vec<Value> = (0..ACCOUNTS)
        .map(|a| json!({"op": "put", "key": format!("acct-{a}"), "value": START.to_string()}))
        .collect();
    assert_eq!(txn(&n1, &json!({"ops": open})).0, 200);
    let total = START * ACCOUNTS as i64;
    let addrs = [n1.addr, n2.addr, n3.addr];
    let mut n3 = Some(n3);
    let clients: Vec<_> = (0..6)
        .map(|c| {
            std::thread::spawn(move || {
                let mut moved = 0;
                let mut rng = c as u64 * 7919 + 1;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for i in 0..25 {
                    let addr = addrs[(c + i) % 3];
                    let (from, to) = (next() as usize % ACCOUNTS, next() as usize % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    let (a, b) = (format!("acct-{from}"), format!("acct-{to}"));
                    let read = json!({"ops": [{"op": "get", "key": a}, {"op": "get", "key": b}]});
                    // A killed node answers nothing: the transfer's outcome is unknown to its client.
                    let Ok(r) = try_http(addr, "POST", "/kv/rest/txn", read.to_string().as_bytes()) else { continue };
                    if r.status != 200 {
                        continue;
                    }
                    let got = r.json()["results"].clone();
                    let (va, vb): (i64, i64) = (text(&got[0]).parse().unwrap(), text(&got[1]).parse().unwrap());
                    let amount = (next() % 50) as i64;
                    if va < amount {
                        continue;
                    }
                    let write = json!({"ops": [
                        {"op": "put", "key": a, "value": (va - amount).to_string(), "if_timestamp": got[0]["timestamp"]},
                        {"op": "put", "key": b, "value": (vb + amount).to_string(), "if_timestamp": got[1]["timestamp"]},
                    ]});
                    let Ok(r) = try_http(addr, "POST", "/kv/rest/txn", write.to_string().as_bytes()) else { continue };
                    match r.status {
                        200 => moved += 1,
                        // Another transfer wrote one of the accounts since the read; a conflict that
                        // outlasted the retries; a lock or a leader not there in time.
                        412 | 409 | 503 => {}
                        s => panic!("transfer answered {s}: {}", String::from_utf8_lossy(&r.body)),
                    }
                }
                moved
            })
        })
        .collect();
    // Audits while the transfers run: every snapshot of all accounts adds up.
    let live = [&n1, &n2];
    let mut audits = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        if kill && audits == 3 {
            n3.take().unwrap().kill9();
        }
        let b = balances(live[audits % 2]);
        assert_eq!(b.iter().map(|(v, _)| v).sum::<i64>(), total, "audit {audits}: {b:?}");
        assert!(b.iter().all(|(v, _)| *v >= 0), "{b:?}");
        audits += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(moved > 0, "no transfer went through");
    for n in live {
        let b = balances(n);
        assert_eq!(b.iter().map(|(v, _)| v).sum::<i64>(), total);
    }
    // And plain reads agree with the transactions' view.
    let sum: i64 =
        (0..ACCOUNTS).map(|a| read_text(&n2, &format!("acct-{a}")).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(sum, total);
    eprintln!("{moved} transfers, {audits} audits{}", if kill { ", node 3 killed after 3" } else { "" });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `key`'s value read through `server`'s REST API, as text (`None`: absent), once it answers.
/// Writes `value` to `key` in `t` on the condition that the key is as `t` reads it: a conditional write
/// takes the key's lock (its intent) at once, where a plain one waits at the coordinator until commit.
fn lock(rt: &tokio::runtime::Runtime, t: &mut cairn_client::Transaction, key: &[u8], value: &[u8]) {
    let read = rt.block_on(t.get(key)).unwrap();
    let request = cairn_client::kv::TxnPutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        if_absent: read.is_none(),
        if_timestamp: read.map(|(_, at)| at),
        ..Default::default()
    };
    rt.block_on(t.put_request(request)).unwrap();
}

fn read_text(server: &Server, key: &str) -> Option<String> {
    let mut last = String::new();
    for _ in 0..200 {
        let r = server.call("GET", &format!("/kv/rest/entry/{key}"), b"");
        match r.status {
            200 => return Some(text(&r.json()["value"])),
            404 => return None,
            _ => last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{key} did not read: {last}");
}

#[test]
fn interactive_transactions_retry_and_a_killed_gateways_transaction_is_aborted_once_it_expires() {
    use cairn_client::{Client, kv::Isolation};
    let tmp = tempfile::tempdir().unwrap();
    let [n1, n2, n3] = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let rt = runtime();
    // The client's helper: a read-modify-write of two keys, committed.
    let client = rt.block_on(Client::connect(&n1.grpc.to_string())).unwrap();
    assert_eq!(n1.call("PUT", "/kv/rest/entry/i-a", b"10").status, 200);
    let ((), _) = rt
        .block_on(client.txn(Isolation::Serializable, async |t| {
            let (a, _) = t.get(b"i-a").await?.unwrap();
            let a: i64 = String::from_utf8(a).unwrap().parse().unwrap();
            t.put(b"i-a", (a - 3).to_string().as_bytes()).await?;
            t.put(b"i-b", b"3").await?;
            Ok(())
        }))
        .unwrap();
    assert_eq!(read_text(&n2, "i-a").as_deref(), Some("7"));
    assert_eq!(read_text(&n3, "i-b").as_deref(), Some("3"));
    // `cairn txn`.
    let addr = n2.grpc.to_string();
    let (ok, out, err) =
        cairn(&["txn", "--addr", &addr, "put:i-c=cli", "get:i-c", "get:i-a", "del:i-b", "get:i-b"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["i-c\tcli", "i-a\t7", "i-b\t(none)"], "{out}");
    assert!(lines[3].starts_with("committed "), "{out}");
    assert_eq!(read_text(&n1, "i-b"), None);
    let (ok, _, err) = cairn(&["txn", "--addr", &addr, "bogus"]);
    assert!(!ok && err.contains("bad operation"), "{err}");

    // A transaction left open on node 3, which is then killed: its intents stay, its record stops
    // being heartbeated.
    assert_eq!(n1.call("PUT", "/kv/rest/entry/ab-1", b"before").status, 200);
    let gateway = rt.block_on(Client::connect(&n3.grpc.to_string())).unwrap();
    let mut t = rt.block_on(gateway.begin(Isolation::Serializable)).unwrap();
    lock(&rt, &mut t, b"ab-1", b"uncommitted");
    lock(&rt, &mut t, b"ab-2", b"uncommitted");
    let killed = std::time::Instant::now();
    n3.kill9();
    drop((t, gateway));
    // Reads are never blocked for good: the intents are not committed, so readers either pass them (an
    // intent above the reader's clock) or wait until the record expires and abort it.
    assert_eq!(read_text(&n1, "ab-1").as_deref(), Some("before"));
    assert_eq!(read_text(&n2, "ab-2"), None);
    // A write of a locked key waits for the transaction, and aborts it once its record expires (5 s
    // after its last heartbeat); until then it answers 503 (retry).
    let mut waited = Duration::ZERO;
    wait_until("the abandoned transaction's lock is cleared", Duration::from_secs(30), || {
        let r = n2.call("PUT", "/kv/rest/entry/ab-1", b"after");
        assert!(r.status == 200 || r.status == 503, "{} {}", r.status, String::from_utf8_lossy(&r.body));
        waited = killed.elapsed();
        r.status == 200
    });
    assert!(waited >= Duration::from_secs(3), "the lock was cleared before the record expired: {waited:?}");
    assert_eq!(read_text(&n1, "ab-1").as_deref(), Some("after"));
    assert_eq!(read_text(&n1, "ab-2"), None, "the aborted transaction's other write is gone");
    assert_eq!(n1.call("PUT", "/kv/rest/entry/ab-2", b"free").status, 200);
    eprintln!("the abandoned transaction was cleared {waited:?} after its gateway died");
}

/// The keys and values of a plain range scan of `[start, end)` through `server`, and its resume key.
fn range(server: &Server, query: &str) -> (Vec<(String, String)>, Value) {
    let r = server.call("GET", &format!("/kv/rest/range?{query}"), b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let rows = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.decode(row["key"].as_str().unwrap()).unwrap();
            (String::from_utf8(key).unwrap(), text(&row["value"]))
        })
        .collect();
    (rows, body["header"]["resume_key"].clone())
}

#[test]
fn a_scan_pushes_intents_in_its_page_and_passes_those_beyond_it() {
    use cairn_client::{Client, kv::Isolation};
    let tmp = tempfile::tempdir().unwrap();
    let [n1, n2, _n3] = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    for k in ["sc-a", "sc-b", "sc-c"] {
        assert_eq!(n1.call("PUT", &format!("/kv/rest/entry/{k}"), b"old").status, 200);
    }
    let rt = runtime();
    let client = rt.block_on(Client::connect(&n1.grpc.to_string())).unwrap();
    // A serializable transaction holds sc-c (beyond the page), a snapshot-isolation one sc-b (in it).
    let mut beyond = rt.block_on(client.begin(Isolation::Serializable)).unwrap();
    lock(&rt, &mut beyond, b"sc-c", b"ssi");
    let mut within = rt.block_on(client.begin(Isolation::Snapshot)).unwrap();
    lock(&rt, &mut within, b"sc-b", b"si");
    let started = std::time::Instant::now();
    let (rows, resume) = range(&n2, "start=sc-&end=sc-z&limit=2");
    assert_eq!(rows, [("sc-a".into(), "old".into()), ("sc-b".into(), "old".into())]);
    assert!(!resume.is_null());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the scan waited for the transaction beyond its page: {took:?}");
    // The pushed snapshot-isolation transaction commits above the scan; the other rolls back.
    rt.block_on(within.commit()).unwrap();
    rt.block_on(beyond.rollback()).unwrap();
    let (rows, _) = range(&n2, "start=sc-&end=sc-z");
    let values: Vec<&str> = rows.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["old", "si", "old"]);
}
