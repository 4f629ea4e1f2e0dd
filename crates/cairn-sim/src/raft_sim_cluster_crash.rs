//! A crash at one step of a split or a merge (see [`run_crash_step`]): the cluster simulation's
//! second kind of run.

use super::*;

/// Which operation a crash-step run makes, and whose disk dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashStep {
    /// Split shard 0 (buckets 0 to 7) at bucket 4; the disk of the node leading it dies.
    SplitLeader,
    /// (as above), the disk of a node that does not lead it.
    SplitFollower,
    /// Merge shards 0 and 1; the disk of the node leading shard 0 dies.
    MergeLeader,
    /// (as above), the disk of a node that leads neither.
    MergeFollower,
}

/// A crash at one step of a split or merge: boots a cluster, writes every register, then records
/// `step`'s operation with the chosen node's disk set to die after `after` more changes (never, if
/// `None`: the run counts the changes the operation makes there). A node whose disk died is stopped
/// and restarted; then the operation must finish, every register read back what was last written to
/// it, and ownership and contents check (see [`finish`]).
pub fn run_crash_step(seed: u64, step: CrashStep, after: Option<u64>) -> Result<ClusterReport, String> {
    let config =
        ClusterConfig { seed, clients: 0, duration: Duration::ZERO, keys: 12, faults: false, reshape: false };
    runtime(seed)?.block_on(async move {
        let sim = ClusterSim::boot(config.clone()).await?;
        let clock = Clock::default();
        let mut rng = SimRng::new(seed);
        let mut writer = Client { id: 1, rng: SimRng::new(rng.next_u64()), leader: 1, seen: HashMap::new() };
        let mut history = Vec::new();
        for key in 0..config.keys {
            let input = RegisterInput::Write(1_000_000 + key);
            let call = clock.tick();
            let output = perform(&sim, &mut writer, key, input).await.map_err(|()| format!("write of key {key} failed"))?;
            let ret = output.map(|_| clock.tick());
            history.push((key, Operation { client: 1, call, ret, input, output }));
        }
        let (left, right) = (ShardId(0), ShardId(1));
        let victim = {
            let s = sim.lock().await;
            let led = s.nodes.values().filter_map(|n| n.host.as_ref()?.replica(left.group())).find_map(|r| r.status().leader.map(node_of));
            let led = led.ok_or("shard 0 has no leader")?;
            match step {
                CrashStep::SplitLeader | CrashStep::MergeLeader => led,
                CrashStep::SplitFollower | CrashStep::MergeFollower => {
                    let led_right = s.nodes.values().filter_map(|n| n.host.as_ref()?.replica(right.group())).find_map(|r| r.status().leader.map(node_of));
                    (1..=NODES).find(|id| *id != led && Some(*id) != led_right).or_else(|| (1..=NODES).find(|id| *id != led)).ok_or("no follower")?
                }
            }
        };
        let power = sim.lock().await.nodes[&victim].power.clone();
        let before = power.changes();
        if let Some(n) = after {
            power.fail_all_after_changes(n);
        }
        sim.lock().await.note(format!("crash step {step:?} on node {victim} after {after:?} changes"));
        let (shard, other, at) = match step {
            CrashStep::SplitLeader | CrashStep::SplitFollower => (left, None, 4),
            CrashStep::MergeLeader | CrashStep::MergeFollower => (left, Some(right), 0),
        };
        // Through another node's meta replica (the victim's may be the one whose disk dies).
        let from = 1 + victim % NODES;
        let mut recorded = Err(String::new());
        for _ in 0..50 {
            recorded = record_reshape(&sim, from, shard, other, at).await;
            if recorded.is_ok() {
                break;
            }
            // A try whose answer was lost may have been recorded, and the operation made since.
            let meta = sim.lock().await.meta_from(from);
            if let Some(meta) = meta
                && let Ok(state) = meta.read(ReadLevel::Strong).await
                && let Some(map) = &state.map
            {
                let done = match other {
                    None => map.shard_for_bucket(at).is_some_and(|s| s.id != shard),
                    Some(right) => map.shard(right).is_none(),
                };
                let under_way = map.shard(shard).is_some_and(|s| s.splitting.is_some() || s.merging.is_some());
                if done || under_way {
                    recorded = Ok("recorded by a try whose answer was lost".into());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = recorded {
            return Err(explain_tail(&sim, format!("the operation could not be recorded: {e}")));
        }
        // Until the disk dies or the operation is over (bounded).
        let mut crashed_at = None;
        for _ in 0..(SETTLE.as_millis() / 5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if power.is_dead() {
                let mut s = sim.lock().await;
                // Where the operation stood: the map (as the other node last read it) and the victim's
                // replica of the shard.
                let map = s.nodes.get(&from).and_then(|n| n.host.as_ref()).and_then(|h| h.map.lock().clone());
                let recorded = map.map(|(_, m)| format!("{:?}", m.shards.iter().map(|d| (d.id.group(), d.splitting.is_some(), d.merging)).collect::<Vec<_>>()));
                let replica = s.nodes.get(&victim).and_then(|n| n.host.as_ref()).and_then(|h| h.replica(left.group()));
                let what = match replica {
                    Some(r) => format!(
                        "map (shard, splitting, merging with): {recorded:?}; victim's shard {left}: applied {:?}, owns {:?}, frozen {}",
                        r.status().applied,
                        r.state_machine().owned_buckets(),
                        r.state_machine().frozen().is_some()
                    ),
                    None => format!("map: {recorded:?}; victim has no replica of shard {left}"),
                };
                s.crash(victim).await;
                crashed_at = Some(what);
                break;
            }
            let s = sim.lock().await;
            let map = s.nodes.get(&from).and_then(|n| n.host.as_ref()).and_then(|h| h.map.lock().clone());
            if let Some((_, map)) = map
                && settled(&s, &map).is_ok()
                && map.shards.len() != INITIAL_SHARDS
            {
                break;
            }
        }
        let total = power.changes() - before;
        if crashed_at.is_none() && power.is_dead() {
            // It died just as the operation settled: stopped all the same.
            sim.lock().await.crash(victim).await;
            crashed_at = Some("after the operation settled".into());
        } else if crashed_at.is_none() {
            // The operation made fewer changes there than the step asked for this time: no crash.
            power.clear();
        }
        if crashed_at.is_some() {
            sim.lock().await.start(victim).await?;
        }
        let mut report = finish(&sim, &clock, &mut rng, config.keys, history).await?;
        let expected = if other.is_some() { 1 } else { INITIAL_SHARDS + 1 };
        if report.shards.len() != expected {
            return Err(format!("the operation did not finish: shards {:?}", report.shards));
        }
        report.crashed = crashed_at.is_some();
        report.crashed_at = crashed_at.unwrap_or_default();
        report.changes = total;
        Ok(report)
    })
}
