//! The simulation's replica mover ([`SimConfig::moves`](super::SimConfig::moves)): it moves a random
//! member's replica to a node outside the group with the calls a cluster uses, and gives up a move
//! whose destination stays down.

use super::{SharedSim, SimRng, WRITE_TIMEOUT};
use cairn_cluster::raft::MoveStep;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A move under way: the node losing its replica, the node gaining one, and for how many steps in a
/// row the latter has been down.
type Moving = Option<(u64, u64, u32)>;

/// Steps a move's destination may stay down before the move is given up.
const GIVE_UP_AFTER_STEPS: u32 = 6;

/// Moves replicas until `done` (see [`SimConfig::moves`]): every few hundred milliseconds, one step of
/// the move under way, or a new one. Returns the move still under way and the generator.
pub(super) async fn move_loop(
    sim: SharedSim,
    mut rng: SimRng,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Moving, SimRng), String> {
    let mut current = None;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(100, 400)).await;
        move_step(&sim, &mut rng, &mut current, true).await?;
    }
    Ok((current, rng))
}

/// Takes the move under way to its end (bounded, in virtual time), starting none.
pub(super) async fn finish_moves(
    sim: &SharedSim,
    mut rng: SimRng,
    mut current: Moving,
) -> Result<(), String> {
    for _ in 0..300 {
        if current.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        move_step(sim, &mut rng, &mut current, false).await?;
    }
    let s = sim.lock().await;
    let statuses: Vec<_> = s.up().into_iter().filter_map(|id| s.replica(id)).map(|r| r.status()).collect();
    let moves: Vec<String> = s.net.lock().trace.iter().filter(|e| e.contains("move")).cloned().collect();
    let moves = moves[moves.len().saturating_sub(30)..].join("\n");
    Err(format!(
        "the move {current:?} did not finish in 30 s after healing: {statuses:?}\nlast move steps:\n{moves}"
    ))
}

/// One step of replica moves, as the cluster takes them: with none under way (and `start_new`), pick a
/// voter's replica to move to an up node outside the group; otherwise the destination asks to join,
/// the leader advances the move, and once it is done the source's replica is retired (now, or when
/// its node next starts).
async fn move_step(
    sim: &SharedSim,
    rng: &mut SimRng,
    current: &mut Moving,
    start_new: bool,
) -> Result<(), String> {
    let (leader, destination, peers) = {
        let s = sim.lock().await;
        let peers: BTreeMap<u64, String> = (1..=s.config.replicas).map(|id| (id, format!("n{id}"))).collect();
        (s.leader(), current.and_then(|(_, to, _)| s.replica(to)), peers)
    };
    let Some((from, to, down_for)) = *current else {
        let Some(leader) = leader.filter(|_| start_new) else { return Ok(()) };
        let status = leader.status();
        let s = sim.lock().await;
        let members: BTreeSet<u64> = status.voters.union(&status.learners).copied().collect();
        let free: Vec<u64> = s
            .up()
            .into_iter()
            .filter(|id| !members.contains(id) && !s.retire_on_start.contains(id))
            .collect();
        let voters: Vec<u64> = status.voters.iter().copied().collect();
        if free.is_empty() || voters.is_empty() {
            return Ok(());
        }
        let from = voters[rng.below(voters.len() as u64) as usize];
        let to = free[rng.below(free.len() as u64) as usize];
        *current = Some((from, to, 0));
        s.note(format!("move {from} -> {to} begins"));
        return Ok(());
    };
    if destination.is_none() && start_new {
        // Its destination is down: after a while the move is given up, as the cluster does for a dead
        // destination (the leader takes it out of the group unless it already votes).
        *current = Some((from, to, down_for + 1));
        if down_for + 1 < GIVE_UP_AFTER_STEPS {
            return Ok(());
        }
        let Some(leader) = leader else { return Ok(()) };
        let undone = leader.undo_join(to, WRITE_TIMEOUT).await;
        let mut s = sim.lock().await;
        s.note(format!("move {from} -> {to}: giving up: {undone:?}"));
        if let Ok(Some(true)) = undone {
            *current = None;
            s.report.abandoned += 1;
            s.retire_on_start.insert(to);
        }
        return Ok(());
    }
    // The leader's view decides whether the destination is in (its own view may be stale).
    let listed = leader.as_ref().is_some_and(|l| {
        let status = l.status();
        status.voters.contains(&to) || status.learners.contains(&to)
    });
    if let Some(replica) = destination.filter(|_| !listed) {
        let asked = replica.ask_to_join(peers).await;
        sim.lock().await.note(format!("move {from} -> {to}: asked to join: {asked:?}"));
    }
    let Some(leader) = leader else { return Ok(()) };
    let step = leader.advance_move(from, to, WRITE_TIMEOUT).await;
    let mut s = sim.lock().await;
    s.note(format!("move {from} -> {to}: {step:?}"));
    if let Ok(MoveStep::Done) = step {
        *current = None;
        s.report.moves += 1;
        s.retire_on_start.insert(from);
        // Its node restarts at once to retire it (a replica left out of its group has nothing to keep).
        if s.replica(from).is_some() {
            s.power_off(from).await;
            s.start(from).await?;
        }
    }
    Ok(())
}

/// The voters of the group's leader, once one leads (bounded, in virtual time).
pub(super) async fn current_voters(sim: &SharedSim) -> Result<Vec<u64>, String> {
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(leader) = sim.lock().await.leader() {
            return Ok(leader.status().voters.into_iter().collect());
        }
    }
    Err("no leader 30 s after healing".into())
}
