//! Deterministic simulation of replicated shard groups (3 and 5 replicas, and a 3-replica group moving
//! between 5 nodes) under partitions, message loss
//! and delay, crashes that drop unsynced writes, and restarts: client histories of reads, writes and
//! compare-and-sets must be linearizable (final reads after healing included, so no acknowledged write is
//! lost), and every replica must end with the same contents. Clients write through the KV layer
//! (`cairn_kv::Leaders`: evaluated by the group's leader, handed to it by other nodes, each node's
//! clock skewed), so re-evaluation after a change of leadership, outcomes learned after the leader
//! lost the role, and writes landing above a version from a clock ahead are all checked. A fixed
//! corpus of seeds (`tests/seeds.txt`) runs every time, besides fresh seeds drawn from the clock. Each
//! run prints its seed; `CAIRN_SEED=<n>` replays one run exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_sim::linearizability::{Register, Verdict, check_per_key, first_failure};
#[cfg(tokio_unstable)]
use cairn_sim::raft_sim::parting;
use cairn_sim::raft_sim::{SimConfig, SimReport, run, run_catch_up, seeds};
use std::time::Duration;

fn config(seed: u64, replicas: u64, faults: bool) -> SimConfig {
    SimConfig {
        seed,
        replicas,
        clients: 4,
        duration: Duration::from_secs(20),
        keys: 4,
        faults,
        corrupt: false,
        moves: false,
    }
}

/// Runs `config` and checks everything a run must satisfy; returns the report.
fn run_and_check(config: SimConfig) -> SimReport {
    let seed = config.seed;
    println!(
        "seed {seed}, {} nodes{} (replay with CAIRN_SEED={seed})",
        config.replicas,
        if config.moves { ", replicas moving" } else { "" }
    );
    let report = run(config.clone()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!(
        "seed {seed}: {} ops ({} acknowledged, {} unknown), faults {:?}, term {}, snapshots installed {}, \
         consistency checks {}, replica moves {} ({} given up; final voters {:?}), writers {:?}",
        report.history.len(),
        report.acknowledged,
        report.unknown,
        report.faults,
        report.term,
        report.snapshots_installed,
        report.checks,
        report.moves,
        report.abandoned,
        report.voters,
        report.leaders
    );
    let (verdict, key) = check_per_key(&report.history, 2_000_000);
    if verdict != Verdict::Linearizable {
        explain(seed, &report, key);
    }
    // Every replica of the final group ends equal: a corrupted one re-synced from scratch, a moved one
    // filled from the others.
    let digests: std::collections::BTreeSet<_> = report.digests.values().collect();
    assert_eq!(digests.len(), 1, "seed {seed}: replicas differ: {:?}", report.digests);
    // The final consistency check: every replica compared and matched. Only a corrupted replica
    // diverged, and it is the only one that started a new incarnation.
    let corrupted = report.corrupted;
    for (id, status) in &report.check_status {
        assert_eq!(status.fenced, None, "seed {seed}: node {id} fenced: {status:?}");
        // (A check the leader runs after a snapshot may have verified a later index since.)
        assert!(status.verified >= Some(report.final_check), "seed {seed}: node {id}: {status:?}");
        let incarnation = report.incarnations[id];
        if Some(*id) == corrupted {
            assert!(status.divergences >= 1, "seed {seed}: corruption of node {id} not seen: {status:?}");
            assert!(incarnation >= 1, "seed {seed}: node {id} did not re-sync: {status:?}");
        } else {
            assert_eq!(status.divergences, 0, "seed {seed}: node {id}: {status:?}");
            // (With moves, a node whose replica moved away and came back runs a later incarnation.)
            assert!(config.moves || incarnation == 0, "seed {seed}: node {id} re-synced without cause");
        }
    }
    assert!(report.acknowledged >= config.keys, "seed {seed}: no progress");
    if config.moves {
        assert_eq!(report.voters.len(), 3, "seed {seed}: the group ended with voters {:?}", report.voters);
        // Moves ran: at least one completed, and others completed or were given up (a schedule that
        // keeps destinations down gives moves up, as the cluster does; seed 13197298341106563183).
        assert!(report.moves >= 1, "seed {seed}: no replica move completed");
        assert!(
            report.moves + report.abandoned >= 2,
            "seed {seed}: only {} replica moves ended",
            report.moves
        );
    }
    report
}

/// Fails the test with the operations around the moment the history of `key` stopped being
/// linearizable, and the simulation's events (faults, client calls) up to then.
fn explain(seed: u64, report: &SimReport, key: Option<u64>) -> ! {
    let Some(key) = key else { panic!("seed {seed}: the check ran out of steps") };
    let ops: Vec<_> = report.history.iter().filter(|(k, _)| *k == key).map(|(_, op)| op.clone()).collect();
    let Some(t) = first_failure(&Register, &ops, 2_000_000) else {
        panic!("seed {seed}: key {key} is not linearizable (no failing prefix found within the budget)")
    };
    let mut window: Vec<_> = ops.iter().filter(|op| op.call + 200 >= t && op.call <= t).collect();
    window.sort_by_key(|op| op.call);
    for op in &window {
        eprintln!("  {op:?}");
    }
    for event in report.trace.iter().filter(|e| !e.contains(" call ")) {
        eprintln!("  | {event}");
    }
    panic!("seed {seed}: key {key} stops being linearizable at event {t} (operations and trace above)");
}

#[test]
fn a_quiet_group_is_linearizable_and_replicas_agree() {
    for seed in seeds(1) {
        run_and_check(config(seed, 3, false));
    }
}

#[test]
fn three_replicas_under_faults() {
    for seed in seeds(6) {
        run_and_check(config(seed, 3, true));
    }
}

#[test]
fn five_replicas_under_faults() {
    for seed in seeds(3) {
        run_and_check(config(seed, 5, true));
    }
}

/// Five nodes, a 3-replica group, and a mover that keeps moving a random replica to a node outside the
/// group (the destination joins as a learner and catches up, the leader swaps it in for the source and
/// removes the source, whose replica is then retired) while partitions, loss, delay and crashes hit
/// every node: the history stays linearizable and no acknowledged write is lost.
#[test]
fn five_nodes_with_replicas_moving_under_faults() {
    for seed in seeds(3) {
        run_and_check(SimConfig { moves: true, duration: Duration::from_secs(30), ..config(seed, 5, true) });
    }
}

/// The fixed seed corpus (`tests/seeds.txt`), every run: `CAIRN_SEED` runs that one seed instead.
#[test]
fn the_seed_corpus() {
    if std::env::var("CAIRN_SEED").is_ok() {
        return;
    }
    let corpus = include_str!("seeds.txt");
    let mut runs = 0;
    for line in corpus.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let seed: u64 =
            fields.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
        let replicas: u64 =
            fields.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
        run_and_check(config(seed, replicas, true));
        runs += 1;
    }
    assert!(runs >= 50, "the corpus holds {runs} seeds");
}

#[test]
fn a_corrupted_replica_is_fenced_and_resyncs_as_a_new_incarnation() {
    for seed in seeds(1) {
        let report = run_and_check(SimConfig { corrupt: true, ..config(seed, 3, true) });
        assert!(report.corrupted.is_some(), "seed {seed}");
    }
}

#[test]
fn a_follower_down_through_several_snapshots_catches_up_by_snapshot() {
    for seed in seeds(1) {
        println!("seed {seed} (replay with CAIRN_SEED={seed})");
        let c = run_catch_up(seed, 200).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        println!("seed {seed}: {c:?}");
        assert!(c.snapshots_while_down >= 3, "seed {seed}: {c:?}");
        assert!(
            c.purged > c.applied_when_stopped,
            "seed {seed}: the log it needed is gone, so only a snapshot can catch it up: {c:?}"
        );
        assert!(c.installed >= 1, "seed {seed}: {c:?}");
        let digests: std::collections::BTreeSet<_> = c.digests.values().collect();
        assert_eq!(digests.len(), 1, "seed {seed}: {c:?}");
    }
}

// Exact replays need tokio's RNG seeded, an unstable tokio API (`--cfg tokio_unstable`, which the
// workspace's .cargo/config.toml sets unless RUSTFLAGS replaces it).
#[cfg(tokio_unstable)]
#[test]
fn a_seed_replays_exactly() {
    let seed = seeds(1)[0];
    let first = run_and_check(config(seed, 3, true));
    let second = run_and_check(config(seed, 3, true));
    if let Some(parting) = parting(seed, &first.trace, &second.trace) {
        panic!("{parting}");
    }
    assert_eq!(first.history, second.history, "seed {seed}: the history differs between two runs");
    assert_eq!(first.faults, second.faults, "seed {seed}");
    assert_eq!(first.term, second.term, "seed {seed}");
}
