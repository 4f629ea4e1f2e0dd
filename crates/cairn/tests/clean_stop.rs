//! A clean stop (SIGTERM) of a node that leads a shard hands the leadership to a caught-up voter
//! before the node stops serving: a write loop against that shard, through another node, pauses for
//! no longer than a few heartbeats, not for an election timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{key_per_shard, three_nodes};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest a single write may wait while its shard's leader stops cleanly.
const MAX_PAUSE: Duration = Duration::from_millis(300);

/// Writes acknowledged before the stop, and again after it, for the loop to measure over.
const WRITES_EACH_SIDE: usize = 50;

#[test]
fn a_clean_stop_hands_over_leadership_and_writes_pause_briefly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = |i: usize| tmp.path().join(format!("node-{i}"));
    let mut nodes = Vec::from(three_nodes(&store));
    let (shard, key) = key_per_shard(&nodes[0]).remove(0);
    let leads = |n: &common::Server| {
        let status = n.call("GET", "/_status", b"").json();
        status["shards"].as_array().unwrap().iter().any(|s| {
            s["shard"].as_u64() == Some(shard) && s["replication"]["role"].as_str() == Some("leader")
        })
    };
    common::wait_until("the shard has a leader", common::READY, || nodes.iter().any(leads));
    let leader = nodes.remove(nodes.iter().position(leads).unwrap());
    let writer = nodes.remove(0);

    // (took, status) of every write, in order; `stop` ends the loop.
    let writes: Mutex<Vec<(Duration, u16)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let count = || writes.lock().unwrap().len();
    let before = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0.. {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let started = Instant::now();
                let r = writer.call("PUT", &format!("/kv/rest/entry/{key}"), i.to_string().as_bytes());
                writes.lock().unwrap().push((started.elapsed(), r.status));
            }
        });
        common::wait_until("writes flow", common::READY, || count() >= WRITES_EACH_SIDE);
        let before = count();
        leader.stop();
        let after = count();
        common::wait_until("writes flow after the stop", common::READY, || {
            count() >= after + WRITES_EACH_SIDE
        });
        stop.store(true, Ordering::Release);
        before
    });
    let writes = writes.into_inner().unwrap();
    let failed: Vec<_> = writes.iter().filter(|(_, status)| *status != 200).collect();
    assert!(failed.is_empty(), "writes failed across the stop: {failed:?}");
    let slowest = writes[before..].iter().map(|(took, _)| *took).max().unwrap();
    assert!(slowest <= MAX_PAUSE, "a write took {slowest:?} while shard {shard}'s leader stopped cleanly");
    // Another node leads the shard now.
    assert!(nodes.iter().chain([&writer]).any(leads), "no leader of shard {shard} after the stop");
}
