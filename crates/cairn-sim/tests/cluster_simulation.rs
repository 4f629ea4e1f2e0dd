//! Deterministic simulation of a three-node cluster whose shards split and merge (see
//! `cairn_sim::raft_sim::cluster`): the real meta group, control plane and shard replicas of every
//! node, clients routing by each node's map, and a reshaper recording splits and merges at random,
//! under partitions, message loss and delay, and crashes. Client histories must be linearizable (final
//! reads after healing included: no acknowledged write is lost), every bucket owned by exactly one
//! shard on every node as the map says, each shard's replicas equal, and splits must copy no bytes.
//!
//! A crash at every step: one split and one merge are run again and again with one node's disk
//! dying after 0, 1, 2, … changes to it (the node leading the shard, or another), across the meta
//! update, the log entry, the engine's shrink, snapshot and import, the new group's start and the
//! map's final update; the node restarts and the operation must finish with every write readable.
//! By default the steps are sampled (a stride over the changes the operation makes, offset by the
//! seed); `CAIRN_CRASH_STRIDE=1` runs every one, `CAIRN_CRASH_AFTER=<n>` (with `CAIRN_SEED`) one.
//!
//! Each run prints its seed; `CAIRN_SEED=<n>` replays its schedule (faults, operations, message fates,
//! election timeouts). Not always exactly: the engines compact on threads of their own, so a snapshot
//! may hold more or fewer files from one run to the next, and its transfer takes as many messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_sim::linearizability::{Register, Verdict, check_per_key, first_failure};
use cairn_sim::raft_sim::cluster::{ClusterConfig, ClusterReport, CrashStep, run_cluster, run_crash_step};
use std::time::Duration;

/// With `CAIRN_SIM_LOG=<filter>` (say `cairn_cluster=info`) the replicas' logs go to stderr.
fn seeds(count: u64) -> Vec<u64> {
    if let Ok(filter) = std::env::var("CAIRN_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    cairn_sim::raft_sim::seeds(count)
}

/// The history of `report` is linearizable per register, and splits copied nothing.
fn check(seed: u64, report: &ClusterReport) {
    let (verdict, key) = check_per_key(&report.history, 2_000_000);
    if verdict != Verdict::Linearizable {
        let Some(key) = key else { panic!("seed {seed}: the check ran out of steps") };
        let ops: Vec<_> =
            report.history.iter().filter(|(k, _)| *k == key).map(|(_, op)| op.clone()).collect();
        let failed = first_failure(&Register, &ops, 2_000_000);
        let around = |e: &String| {
            !e.contains(" call ") && (!e.contains("client") || e.contains(&format!("key {key} ")))
        };
        for event in report.trace.iter().filter(|e| around(e)) {
            eprintln!("  | {event}");
        }
        if let Some(t) = failed {
            let mut window: Vec<_> = ops.iter().filter(|op| op.call + 100 >= t && op.call <= t).collect();
            window.sort_by_key(|op| op.call);
            for op in &window {
                eprintln!("  {op:?}");
            }
        }
        panic!(
            "seed {seed}: register {key} is not linearizable at event {failed:?} (operations and trace above)"
        );
    }
    if report.bytes_copied != 0 {
        for event in report.trace.iter().filter(|e| e.contains("made split")) {
            eprintln!("  | {event}");
        }
        panic!("seed {seed}: splits copied {} bytes (their new shards above)", report.bytes_copied);
    }
}

fn run_and_check(config: ClusterConfig) -> ClusterReport {
    let seed = config.seed;
    println!("seed {seed}, faults {} (replay with CAIRN_SEED={seed})", config.faults);
    let report = run_cluster(config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!(
        "seed {seed}: {} ops ({} acknowledged, {} unknown), faults {:?}, splits {} of {} begun, merges {} of \
         {} begun, shards at the end {:?}",
        report.history.len(),
        report.acknowledged,
        report.unknown,
        report.faults,
        report.splits,
        report.splits_begun,
        report.merges,
        report.merges_begun,
        report.shards
    );
    check(seed, &report);
    report
}

fn config(seed: u64, faults: bool) -> ClusterConfig {
    ClusterConfig { seed, clients: 4, duration: Duration::from_secs(20), keys: 8, faults, reshape: true }
}

#[test]
fn shards_split_and_merge_under_load() {
    for seed in seeds(1) {
        let report = run_and_check(config(seed, false));
        assert!(report.splits >= 2, "seed {seed}: {} splits", report.splits);
        assert!(report.merges >= 1, "seed {seed}: {} merges", report.merges);
        assert!(report.acknowledged >= 100, "seed {seed}: little progress");
    }
}

/// Splits and merges while nodes crash and restart and the network partitions, drops and delays
/// messages; three fresh seeds a run (seed 6151288794697816501 once found a split recorded before the
/// shard's leader had applied the merge that brought its buckets in: it now applies everything
/// committed before it looks). Seed 1796650739516872332, run every time, once found a node retiring
/// its frozen replica of a merged shard, which its partitioned replica of the shard it merged into
/// still needed, because an empty replica of a later split's new shard, waiting for a snapshot, owned
/// the buckets: both replicas fenced and re-synced, and the group lost its quorum.
#[test]
fn shards_split_and_merge_under_faults() {
    let regressions = if std::env::var("CAIRN_SEED").is_ok() { vec![] } else { vec![1796650739516872332] };
    for seed in regressions.into_iter().chain(seeds(3)) {
        let report = run_and_check(config(seed, true));
        assert!(report.splits + report.merges >= 1, "seed {seed}: no split or merge finished");
        assert!(report.acknowledged >= 8, "seed {seed}: no progress");
    }
}

/// Runs `step` with a crash after every `stride`-th change of those the operation makes on the chosen
/// node (every one with `CAIRN_CRASH_STRIDE=1`).
fn crash_at_every_step(step: CrashStep, points: u64) {
    for seed in seeds(1) {
        println!("{step:?}: seed {seed} (replay with CAIRN_SEED={seed})");
        let baseline = run_crash_step(seed, step, None).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        check(seed, &baseline);
        let total = baseline.changes;
        assert!(total > 0, "seed {seed}: the operation changed nothing on the node");
        let stride = std::env::var("CAIRN_CRASH_STRIDE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or((total / points).max(1));
        let (mut crashed, mut runs) = (0, 0);
        // `CAIRN_CRASH_AFTER=<n>` replays one step.
        let only: Option<u64> = std::env::var("CAIRN_CRASH_AFTER").ok().and_then(|s| s.parse().ok());
        let mut after = only.unwrap_or(seed % stride);
        while after < total {
            eprintln!("  crash after {after} of {total} changes: running");
            let report = run_crash_step(seed, step, Some(after))
                .unwrap_or_else(|e| panic!("seed {seed}, crash after {after} of {total} changes: {e}"));
            check(seed, &report);
            println!(
                "  crash after {after} of {total} changes: crashed {} ({})",
                report.crashed, report.crashed_at
            );
            crashed += u64::from(report.crashed);
            runs += 1;
            if only.is_some() {
                break;
            }
            after += stride;
        }
        println!(
            "{step:?}: seed {seed}: {runs} runs, {crashed} crashed, stride {stride} over {total} changes"
        );
        assert!(crashed * 2 >= runs, "seed {seed}: most runs did not crash ({crashed} of {runs})");
    }
}

#[test]
fn a_crash_at_every_step_of_a_split_on_its_leader() {
    crash_at_every_step(CrashStep::SplitLeader, 24);
}

#[test]
fn a_crash_at_every_step_of_a_split_on_a_follower() {
    crash_at_every_step(CrashStep::SplitFollower, 24);
}

#[test]
fn a_crash_at_every_step_of_a_merge_on_its_leader() {
    crash_at_every_step(CrashStep::MergeLeader, 24);
}

#[test]
fn a_crash_at_every_step_of_a_merge_on_a_follower() {
    crash_at_every_step(CrashStep::MergeFollower, 24);
}
