//! Isolation of transactions on a running 3-node cluster, checked Elle's way: clients on every node run
//! random list-append transactions (read a key's list; append a unique value to one) over the
//! interactive gRPC API, and the history (what each transaction read and appended, and whether it
//! committed) is checked by `cairn_sim::elle` for cycles the isolation level forbids: none may exist
//! under serializable isolation, and only write skew (G2-item) under snapshot isolation. And the
//! write-skew pattern itself: two transactions that read two keys and each write one commit both
//! under snapshot isolation, while serializable isolation makes one of them run again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_client::{Client, kv::Isolation, must_retry};
use cairn_sim::elle::{self, Level, Op, Outcome};
use common::three_nodes;
use std::time::Instant;

const KEYS: u64 = 6;
const CLIENTS: u64 = 4;
const TXNS_PER_CLIENT: u64 = 25;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn list_of(value: Option<(Vec<u8>, cairn_client::kv::Timestamp)>) -> Vec<u64> {
    match value {
        None => Vec::new(),
        Some((bytes, _)) => {
            let text = String::from_utf8(bytes).unwrap();
            if text.is_empty() { Vec::new() } else { text.split(',').map(|v| v.parse().unwrap()).collect() }
        }
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("list-{k}").into_bytes()
}

/// One transaction's plan: reads and appends (the value unique to this client and transaction).
fn plan(rng: &mut u64, client: u64, n: u64) -> Vec<Op> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let ops = 1 + next() % 3;
    (0..ops)
        .map(|i| {
            let key = next() % KEYS;
            if next() % 2 == 0 {
                Op::Read { key, list: None }
            } else {
                Op::Append { key, value: client * 1_000_000 + n * 10 + i + 1 }
            }
        })
        .collect()
}

/// Runs `ops` as one transaction: the ops with the lists read filled in, and the outcome.
async fn run(client: &Client, isolation: Isolation, ops: &[Op]) -> (Vec<Op>, Outcome) {
    let mut done = Vec::with_capacity(ops.len());
    let Ok(mut t) = client.begin(isolation).await else { return (ops.to_vec(), Outcome::Aborted) };
    for op in ops {
        let step = match op {
            Op::Read { key: k, .. } => {
                t.get(&key(*k)).await.map(|v| Op::Read { key: *k, list: Some(list_of(v)) })
            }
            Op::Append { key: k, value } => match t.get(&key(*k)).await {
                Ok(v) => {
                    let mut list = list_of(v);
                    list.push(*value);
                    let text: Vec<String> = list.iter().map(u64::to_string).collect();
                    t.put(&key(*k), text.join(",").as_bytes()).await.map(|()| op.clone())
                }
                Err(e) => Err(e),
            },
        };
        match step {
            Ok(op) => done.push(op),
            Err(e) => {
                if !must_retry(&e) {
                    let _ = t.rollback().await;
                }
                return (ops.to_vec(), Outcome::Aborted);
            }
        }
    }
    match t.commit().await {
        Ok(_) => (done, Outcome::Committed),
        Err(e) if must_retry(&e) => (ops.to_vec(), Outcome::Aborted),
        // The commit's outcome is not known.
        Err(_) => (ops.to_vec(), Outcome::Unknown),
    }
}

/// Runs the workload at `isolation` on a fresh cluster: the history.
fn history(isolation: Isolation) -> Vec<elle::Txn> {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let start = Instant::now();
    let addrs: Vec<String> = nodes.iter().map(|n| n.grpc.to_string()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addrs[c as usize % 3].clone();
            std::thread::spawn(move || {
                let rt = runtime();
                let client = rt.block_on(Client::connect(&addr)).unwrap();
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (c + 1);
                let mut txns = Vec::new();
                for n in 0..TXNS_PER_CLIENT {
                    let ops = plan(&mut rng, c, n);
                    let invoked = start.elapsed().as_nanos() as u64;
                    let (ops, outcome) = rt.block_on(run(&client, isolation, &ops));
                    let completed = (outcome != Outcome::Unknown).then(|| start.elapsed().as_nanos() as u64);
                    txns.push(elle::Txn { ops, outcome, invoked, completed });
                }
                txns
            })
        })
        .collect();
    let mut history: Vec<elle::Txn> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    // A final read of every list, after everything: the longest reads order each key's appends.
    let rt = runtime();
    let client = rt.block_on(Client::connect(&addrs[0])).unwrap();
    let reads: Vec<Op> = (0..KEYS).map(|key| Op::Read { key, list: None }).collect();
    let invoked = start.elapsed().as_nanos() as u64;
    let (ops, outcome) = rt.block_on(run(&client, Isolation::Serializable, &reads));
    assert_eq!(outcome, Outcome::Committed);
    history.push(elle::Txn { ops, outcome, invoked, completed: Some(start.elapsed().as_nanos() as u64) });
    history
}

fn check(isolation: Isolation, level: Level) {
    let history = history(isolation);
    let committed = history.iter().filter(|t| t.outcome == Outcome::Committed).count();
    let report = elle::check(&history);
    let violations = report.violations(level);
    assert!(violations.is_empty(), "{isolation:?}: {violations:#?}");
    assert!(committed > history.len() / 3, "only {committed} of {} transactions committed", history.len());
    let strict = report.violations(Level::StrictSerializable).len();
    eprintln!(
        "{isolation:?}: {committed} of {} committed; {} anomalies found, none forbidden at {level:?} ({strict} against strict serializability)",
        history.len(),
        report.anomalies.len()
    );
}

#[test]
fn serializable_list_append_histories_have_no_dependency_cycle() {
    check(Isolation::Serializable, Level::Serializable);
}

#[test]
fn snapshot_isolation_list_append_histories_allow_only_write_skew() {
    check(Isolation::Snapshot, Level::SnapshotIsolation);
}

#[test]
fn write_skew_commits_under_snapshot_isolation_and_not_under_serializable() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = three_nodes(&|i| tmp.path().join(format!("n{i}")));
    let rt = runtime();
    let client = rt.block_on(Client::connect(&nodes[0].grpc.to_string())).unwrap();
    for (round, isolation) in [Isolation::Snapshot, Isolation::Serializable].into_iter().enumerate() {
        let (x, y) = (format!("oncall-{round}-x"), format!("oncall-{round}-y"));
        rt.block_on(client.txn(Isolation::Serializable, async |t| {
            t.put(x.as_bytes(), b"on").await?;
            t.put(y.as_bytes(), b"on").await
        }))
        .unwrap();
        // Both doctors see both on call, and each goes off call if the other is on.
        let outcomes = rt.block_on(async {
            let mut t1 = client.begin(isolation).await.unwrap();
            let mut t2 = client.begin(isolation).await.unwrap();
            for t in [&mut t1, &mut t2] {
                assert!(t.get(x.as_bytes()).await.unwrap().is_some());
                assert!(t.get(y.as_bytes()).await.unwrap().is_some());
            }
            let w1 = t1.delete(x.as_bytes()).await;
            let w2 = t2.delete(y.as_bytes()).await;
            let c1 = match w1 {
                Ok(()) => t1.commit().await.map(|_| ()),
                Err(e) => Err(e),
            };
            let c2 = match w2 {
                Ok(()) => t2.commit().await.map(|_| ()),
                Err(e) => Err(e),
            };
            [c1, c2]
        });
        let committed = outcomes.iter().filter(|o| o.is_ok()).count();
        for o in &outcomes {
            if let Err(e) = o {
                assert!(must_retry(e), "{e}");
            }
        }
        match isolation {
            Isolation::Snapshot => assert_eq!(committed, 2, "snapshot isolation allows write skew"),
            _ => assert_eq!(committed, 1, "serializable isolation lets one of them commit: {outcomes:?}"),
        }
    }
}
