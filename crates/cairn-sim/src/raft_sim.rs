//! Deterministic simulation of one replicated shard group (optionally moving between nodes:
//! [`SimConfig::moves`]).
//!
//! Every replica runs its real code — node Raft log, engine state machine, openraft through
//! [`Replica`], messages through [`RaftService::handle`] — on one single-threaded tokio runtime whose
//! clock is virtual (it jumps to the next timer when every task waits), so seconds of simulated time
//! take milliseconds. The network is a [`Wire`] that the fault schedule controls: partitions, message
//! loss and delay. A crash stops a replica dead (its file system fails every call from that instant),
//! then drops what it had not synced ([`MemFs::crash`]); a restart reopens its storage. Snapshots live
//! on shared in-memory volumes (the object store every node can reach).
//!
//! One seed drives everything that is chosen at random — faults, client operations, message fates and
//! openraft's election timeouts (through [`with_seed`]) — so a run replays from its seed. Clients record
//! a history of reads (strong and lease), writes and compare-and-sets on a few keys, which
//! [`check_per_key`](crate::linearizability::check_per_key) judges. Operations whose outcome the client
//! could not learn are recorded as such: they may or may not have taken effect.

use crate::linearizability::{KeyedOperation, Operation, RegisterInput, RegisterOutput};
use cairn_cluster::raft::{
    CallError, CheckStatus, Command, GroupError, RaftCall, RaftReply, RaftService, ReadLevel, Replica,
    ReplicaConfig, RequestHandler, Role, ShardStateMachine, Wire, node_of, retire_stored, with_seed,
};
use cairn_cluster::raft_log::{RaftLog, RaftLogConfig};
use cairn_engine::fs::{FaultController, FaultFs, FileSystem, MemFs};
use cairn_engine::{Config, WriteBatch};
use cairn_kv::hlc::{Clock as Hlc, Physical, Timestamp};
use cairn_kv::{Condition as PutCondition, DbReader, LeaderStats, Leaders, Pending, Write, WriteError};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Drives every random choice.
    pub seed: u64,
    /// Replicas in the group (3 or 5).
    pub replicas: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Simulated time the clients run (faults are injected meanwhile).
    pub duration: Duration,
    /// Keys the clients share (few keys, many conflicts).
    pub keys: u64,
    /// Whether to inject faults (partitions, loss, delay, crashes).
    pub faults: bool,
    /// At the end, change one follower's engine behind Raft's back before a consistency check (which
    /// must then fence exactly that replica, which re-syncs from scratch as its next incarnation).
    pub corrupt: bool,
    /// Placement changes: the group starts with 3 of the `replicas` nodes as members, and a mover keeps
    /// moving a random member's replica to a node without one, the way the cluster re-creates a dead
    /// node's replicas ([`Replica::ask_to_join`], [`Replica::advance_move`], then the source retired).
    pub moves: bool,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Every client operation, keyed by register.
    pub history: Vec<KeyedOperation<u64>>,
    /// Operations acknowledged (a definite answer).
    pub acknowledged: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// After healing: each replica's (applied index, content digest).
    pub digests: BTreeMap<u64, (Option<u64>, String)>,
    /// Highest term reached (elections happened).
    pub term: u64,
    /// Snapshots installed from a leader (replicas that caught up by snapshot).
    pub snapshots_installed: u64,
    /// Every message sent: virtual time (µs), sender, receiver, kind, whether it was lost.
    pub trace: Vec<String>,
    /// Consistency checks that completed during the run (one every few simulated seconds).
    pub checks: u64,
    /// After the final consistency check: each replica's findings (divergences count earlier
    /// incarnations' too).
    pub check_status: BTreeMap<u64, CheckStatus>,
    /// At the end: each replica's incarnation (0 unless it re-synced from scratch).
    pub incarnations: BTreeMap<u64, u16>,
    /// The replica corrupted before the final check (`SimConfig::corrupt`).
    pub corrupted: Option<u64>,
    /// The final check's index.
    pub final_check: u64,
    /// Replica moves completed.
    pub moves: u64,
    /// Replica moves given up (their destination stayed down).
    pub abandoned: u64,
    /// The group's voters at the end (every node unless `SimConfig::moves`).
    pub voters: Vec<u64>,
    /// What the KV layer's writers did, summed over every node and restart.
    pub leaders: LeaderStats,
}

/// A SplitMix64 generator: small, seedable, and the same everywhere.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = self.0;
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// The seeds a test runs: `CAIRN_SEED` alone, or `count` seeds derived from the clock.
pub fn seeds(count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("CAIRN_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let base =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    (0..count).map(|i| base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect()
}

/// Where two runs of seed `seed` part, if they do: the first event that differs, with the few before
/// it (two traces of one seed must be equal).
pub fn parting(seed: u64, first: &[String], second: &[String]) -> Option<String> {
    if let Some(i) = first.iter().zip(second).position(|(a, b)| a != b) {
        return Some(format!(
            "seed {seed}: the runs part at event {i}: {:?} vs {:?}, after {:?}",
            first[i],
            second[i],
            &first[i.saturating_sub(5)..i]
        ));
    }
    (first.len() != second.len())
        .then(|| format!("seed {seed}: one run has {} events, the other {}", first.len(), second.len()))
}

/// The network's state: which nodes are up, which links are cut, how lossy and slow it is.
struct Net {
    rng: SimRng,
    services: HashMap<u64, RaftService>,
    // Directed links that drop everything.
    cut: BTreeSet<(u64, u64)>,
    loss_percent: u64,
    max_delay_ms: u64,
    // Every message's fate, in order (for finding where two runs of one seed part).
    trace: Vec<String>,
    start: tokio::time::Instant,
    // Each node's disk switch: a node whose disk died (a crash at a chosen step) sends and answers
    // nothing from that instant, before the simulation notices and stops it.
    power: HashMap<u64, FaultController>,
}

impl Net {
    fn dead(&self, node: u64) -> bool {
        self.power.get(&node).is_some_and(FaultController::is_dead)
    }
}

#[derive(Clone)]
struct SimWire {
    from: u64,
    net: Arc<Mutex<Net>>,
}

impl Wire for SimWire {
    async fn call(
        &self,
        target: u64,
        addr: &str,
        call: RaftCall,
        timeout: Duration,
    ) -> Result<RaftReply, CallError> {
        // Nodes are addressed `n<id>`; a call names a replica (node and incarnation) or only the address.
        let target = match target {
            0 => addr
                .strip_prefix('n')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| CallError::NotSent(format!("bad address {addr}")))?,
            replica => node_of(replica),
        };
        let (there, back, lost) = {
            let mut net = self.net.lock();
            let max = net.max_delay_ms;
            let there = net.rng.millis(0, max);
            let back = net.rng.millis(0, max);
            let loss = net.loss_percent;
            let lost = net.cut.contains(&(self.from, target))
                || net.rng.chance(loss)
                || net.dead(self.from)
                || net.dead(target);
            let at = net.start.elapsed().as_micros();
            net.trace.push(format!("{at} {} -> {target} call {} lost {lost}", self.from, call.kind));
            (there, back, lost)
        };
        if lost {
            tokio::time::sleep(timeout).await;
            return Err(CallError::Lost(format!("message {} -> {target} lost", self.from)));
        }
        tokio::time::sleep(there).await;
        let service = self.net.lock().services.get(&target).cloned();
        let Some(service) = service else {
            tokio::time::sleep(timeout.saturating_sub(there)).await;
            return Err(CallError::NotSent(format!("node {target} is down")));
        };
        let reply = match tokio::time::timeout(timeout.saturating_sub(there), service.handle(call)).await {
            Ok(reply) => reply,
            Err(_) => return Err(CallError::Lost(format!("node {target} did not answer in time"))),
        };
        tokio::time::sleep(back).await;
        let lost = {
            let mut net = self.net.lock();
            let loss = net.loss_percent;
            net.cut.contains(&(target, self.from)) || net.rng.chance(loss) || net.dead(target)
        };
        if lost {
            return Err(CallError::Lost(format!("reply {target} -> {} lost", self.from)));
        }
        Ok(reply)
    }
}

/// One simulated node: its disk survives crashes (minus what was not synced).
struct Node {
    disk: MemFs,
    power: FaultController,
    replica: Option<Replica>,
    /// Evaluates the writes of the group while this node's replica leads it, and hands them to the
    /// leader otherwise: clients write through it.
    leaders: Option<Arc<Leaders>>,
}

const GROUP: u64 = 1;
const BUCKETS: u32 = 16;
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The clocks' maximum offset, and how far ahead of the virtual time each node's clock runs (at most).
const MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);
const MAX_CLOCK_SKEW_NS: u64 = 250_000_000;
/// The virtual time's start as a wall time (2026-01-01).
const SIM_EPOCH_NS: u64 = 1_767_225_600_000_000_000;
/// The largest command (a register write is a few dozen bytes).
const MAX_COMMAND_BYTES: usize = 1 << 20;
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Times a final read of a key is tried before the run fails.
const FINAL_READ_TRIES: usize = 10;

/// Distinguishes runs in one process (memory volumes are process-wide).
static RUN: AtomicU64 = AtomicU64::new(0);

struct Sim {
    config: SimConfig,
    run: u64,
    net: Arc<Mutex<Net>>,
    nodes: BTreeMap<u64, Node>,
    raft_config: ReplicaConfig,
    seeds: SimRng,
    report: SimReport,
    /// Nodes whose replica left the group: retired (emptied, next incarnation) when they next start.
    retire_on_start: BTreeSet<u64>,
}

impl Drop for Sim {
    // Each run's snapshot volumes live in the process-wide memory:// registry: freed with the run.
    fn drop(&mut self) {
        cairn_engine::forget_memory_volumes(&format!("sim{}-{}-", self.run, self.config.seed));
    }
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let net = Net {
            rng: SimRng::new(config.seed ^ 0x6e65_7477),
            services: HashMap::new(),
            cut: BTreeSet::new(),
            loss_percent: 0,
            max_delay_ms: 2,
            trace: Vec::new(),
            start: tokio::time::Instant::now(),
            power: HashMap::new(),
        };
        let nodes = (1..=config.replicas)
            .map(|id| {
                (
                    id,
                    Node {
                        disk: MemFs::new(),
                        power: FaultController::default(),
                        replica: None,
                        leaders: None,
                    },
                )
            })
            .collect();
        let raft_config = ReplicaConfig {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            // Snapshot and purge often, so lagging replicas catch up by snapshot.
            snapshot_every: 40,
            keep_behind_snapshot: 10,
            // Snapshots install straight from the shared in-memory volume: openraft's default.
            snapshot_timeout: Duration::from_millis(200),
            // `check_loop` runs the periodic checks, at random times.
            check_every: Duration::ZERO,
            // With moves, the mover decides who votes (as a cluster's shard map does).
            promote_resynced: !config.moves,
            // Groups never go quiet here: the workload writes all the time.
            ..ReplicaConfig::default()
        };
        Sim {
            seeds: SimRng::new(config.seed ^ 0x7365_6564),
            config,
            run: RUN.fetch_add(1, Ordering::Relaxed),
            net: Arc::new(Mutex::new(net)),
            nodes,
            raft_config,
            report: SimReport::default(),
            retire_on_start: BTreeSet::new(),
        }
    }

    /// Starts every replica and makes them one group.
    async fn boot(config: SimConfig) -> Result<SharedSim, String> {
        let mut sim = Sim::new(config);
        let replicas = sim.config.replicas;
        for id in 1..=replicas {
            sim.start(id).await?;
        }
        let members = (1..=sim.config.first_voters()).map(|id| (id, format!("n{id}"))).collect();
        sim.replica(1).ok_or("node 1 is down")?.bootstrap(members).await.map_err(|e| e.to_string())?;
        Ok(Arc::new(tokio::sync::Mutex::new(sim)))
    }

    /// Opens node `id`'s storage and starts its replica.
    async fn start(&mut self, id: u64) -> Result<(), String> {
        let seed = self.seeds.next_u64();
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        let faulty = FaultFs::new(Arc::new(node.disk.clone()));
        node.power = faulty.controller();
        let fs: Arc<dyn FileSystem> = Arc::new(faulty);
        let mut log_config = RaftLogConfig::new("/raft", Arc::clone(&fs));
        log_config.flush_inline = true;
        let log = Arc::new(RaftLog::open(log_config).map_err(|e| format!("node {id} raft log: {e}"))?);
        let mut template = Config::new("/shard");
        template.fs = fs;
        template.wal = false;
        template.total_buckets = BUCKETS;
        template.snapshot_volume = Some(format!("memory://sim{}-{}-n{id}", self.run, self.config.seed));
        let sm = ShardStateMachine::open("/shard".into(), template, vec![0..=(BUCKETS - 1) as u16], 0)
            .map_err(|e| format!("node {id} shard: {e}"))?;
        sm.hash_checks_inline();
        if self.retire_on_start.remove(&id) {
            retire_stored(&log, &sm, GROUP).map_err(|e| format!("node {id} retire: {e}"))?;
            let mut net = self.net.lock();
            let at = net.start.elapsed().as_micros();
            net.trace.push(format!("{at} node {id} retired its replica"));
        }
        let wire = SimWire { from: id, net: Arc::clone(&self.net) };
        let replica = with_seed(seed, Replica::start(id, GROUP, log, sm, wire, self.raft_config.clone()))
            .await
            .map_err(|e| format!("node {id} start: {e}"))?;
        let service = RaftService::default();
        service.register_replica_sharing_volume(&replica);
        // The node's clock: virtual time, skewed by up to half the maximum offset (so one node's
        // versions can be ahead of another's clock: writes land above them).
        let skew = self.seeds.below(MAX_CLOCK_SKEW_NS);
        let start = self.net.lock().start;
        let physical: Physical = Arc::new(move || {
            SIM_EPOCH_NS + u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX) + skew
        });
        let pending = Arc::new(Pending::with_clock(Hlc::with_physical(MAX_CLOCK_OFFSET, physical)));
        let leaders = Leaders::new(pending, BUCKETS, WRITE_TIMEOUT, MAX_COMMAND_BYTES);
        service.set_request_handler(Arc::clone(&leaders) as Arc<dyn RequestHandler>);
        node.leaders = Some(leaders);
        self.net.lock().services.insert(id, service);
        tokio::spawn({
            let replica = replica.clone();
            async move { replica.tend().await }
        });
        node.replica = Some(replica);
        self.note(format!("node {id} started"));
        Ok(())
    }

    /// Kills node `id` at once: every file-system call fails from now on, then unsynced data is lost.
    async fn crash(&mut self, id: u64) {
        self.power_off(id).await;
        *self.report.faults.entry("crash").or_default() += 1;
        self.note(format!("node {id} crashed"));
    }

    /// Stops node `id` the hard way (what [`Sim::crash`] does, without counting a fault).
    async fn power_off(&mut self, id: u64) {
        self.net.lock().services.remove(&id);
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.power.fail_all();
        if let Some(leaders) = node.leaders.take() {
            self.report.leaders += leaders.stats();
        }
        if let Some(replica) = node.replica.take() {
            let _ = replica.shutdown().await;
        }
        node.disk.crash();
    }

    /// Adds `event` to the trace.
    fn note(&self, event: String) {
        let mut net = self.net.lock();
        let at = net.start.elapsed().as_micros();
        net.trace.push(format!("{at} {event}"));
    }

    fn replica(&self, id: u64) -> Option<Replica> {
        self.nodes.get(&id).and_then(|n| n.replica.clone())
    }

    /// Node `id`'s replica and the writer in front of it, if the node is up.
    fn gateway(&self, id: u64) -> Option<(Replica, Arc<Leaders>)> {
        let node = self.nodes.get(&id)?;
        Some((node.replica.clone()?, node.leaders.clone()?))
    }

    fn up(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.replica.is_some()).map(|(id, _)| *id).collect()
    }

    /// The replica of an up node that leads the group, if one does.
    fn leader(&self) -> Option<Replica> {
        self.up().into_iter().filter_map(|id| self.replica(id)).find(|r| r.status().role == Role::Leader)
    }
}

impl SimConfig {
    /// Nodes the group starts with as members.
    fn first_voters(&self) -> u64 {
        if self.moves { self.replicas.min(3) } else { self.replicas }
    }
}

type SharedSim = Arc<tokio::sync::Mutex<Sim>>;

/// A single-threaded runtime with a virtual clock whose randomness follows `seed`.
fn runtime(seed: u64) -> Result<tokio::runtime::Runtime, String> {
    // tokio's own randomness (which of a watch channel's waiter lists a waiter joins, so the order
    // waiters wake) must follow the seed too.
    // Seeding it is an unstable tokio API: the workspace's .cargo/config.toml sets `--cfg
    // tokio_unstable`, but a RUSTFLAGS variable in the environment replaces that setting. The
    // simulation still runs then, but a seed may not replay exactly: say so rather than fail to build.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    #[cfg(not(tokio_unstable))]
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!(
                "cairn-sim: built without `--cfg tokio_unstable` (RUSTFLAGS in the environment replaces \
                 .cargo/config.toml's flags), so tokio's RNG is not seeded and seed {seed} may not replay \
                 exactly; add `--cfg tokio_unstable` to RUSTFLAGS for exact replays"
            );
        });
    }
    builder.build().map_err(|e| format!("runtime: {e}"))
}

/// Runs one simulation on a fresh single-threaded runtime with a virtual clock.
pub fn run(config: SimConfig) -> Result<SimReport, String> {
    runtime(config.seed)?.block_on(run_async(config))
}

/// What [`run_catch_up`] found about the replica that was down.
#[derive(Clone, Debug)]
pub struct CatchUp {
    /// Snapshots the leader took while the replica was down.
    pub snapshots_while_down: u64,
    /// The leader's purge point when the replica came back.
    pub purged: Option<u64>,
    /// The replica's applied index when it stopped.
    pub applied_when_stopped: Option<u64>,
    /// Snapshots the replica installed after it came back.
    pub installed: u64,
    /// Every replica's (applied index, digest) at the end.
    pub digests: BTreeMap<u64, (Option<u64>, String)>,
}

/// A follower is crashed while the other two take `writes` writes (several snapshots, the log purged
/// behind them), then restarted: it must catch up by installing a snapshot and end equal to the others.
pub fn run_catch_up(seed: u64, writes: u64) -> Result<CatchUp, String> {
    runtime(seed)?.block_on(async move {
        let config = SimConfig {
            seed,
            replicas: 3,
            clients: 0,
            duration: Duration::ZERO,
            keys: 1,
            faults: false,
            corrupt: false,
            moves: false,
        };
        let shared = Sim::boot(config).await?;
        let leader_id = converge(&shared, &[1, 2, 3]).await?;
        let mut sim = shared.lock().await;
        let leader = sim.replica(leader_id).ok_or("the leader is down")?;
        let victim = (1..=3).find(|id| *id != leader_id).ok_or("no follower")?;
        let applied_when_stopped = sim.replica(victim).ok_or("the victim is down")?.status().applied;
        let snapshot_before = leader.status().snapshot;
        sim.crash(victim).await;
        let mut snapshots = 0;
        let mut last_snapshot = snapshot_before;
        for n in 0..writes {
            let (bucket, key) = register(n % 16);
            let mut batch = WriteBatch::new();
            batch.put(bucket, &key, 0, &n.to_be_bytes());
            leader
                .write(Command::write(&batch), WRITE_TIMEOUT)
                .await
                .map_err(|e| format!("write {n}: {e}"))?;
            let now = leader.status().snapshot;
            if now != last_snapshot {
                snapshots += 1;
                last_snapshot = now;
            }
        }
        // Purging runs after the snapshot, in the background: wait (bounded) until the log the stopped
        // replica needs is gone.
        for _ in 0..100 {
            if leader.status().purged > applied_when_stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let purged = leader.status().purged;
        sim.start(victim).await?;
        drop(sim);
        converge(&shared, &[1, 2, 3]).await?;
        let sim = shared.lock().await;
        let installed = sim.replica(victim).ok_or("the victim is down")?.status().snapshots_installed;
        let mut digests = BTreeMap::new();
        for id in 1..=3 {
            let replica = sim.replica(id).ok_or_else(|| format!("node {id} is down"))?;
            digests.insert(id, replica.state_machine().digest().map_err(|e| e.to_string())?);
        }
        for id in 1..=3 {
            if let Some(r) = sim.replica(id) {
                let _ = r.shutdown().await;
            }
        }
        Ok(CatchUp { snapshots_while_down: snapshots, purged, applied_when_stopped, installed, digests })
    })
}

async fn run_async(config: SimConfig) -> Result<SimReport, String> {
    let sim = Sim::boot(config.clone()).await?;
    let clock = Clock::default();
    let mut rng = SimRng::new(config.seed);
    let mut clients = Vec::new();
    let until = tokio::time::Instant::now() + config.duration;
    for id in 1..=config.clients {
        let client = Client {
            id,
            rng: SimRng::new(rng.next_u64()),
            leader: 1 + rng.below(config.replicas),
            seen: HashMap::new(),
        };
        clients.push(tokio::spawn(client_loop(Arc::clone(&sim), client, clock.clone(), until, config.keys)));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faults = config
        .faults
        .then(|| tokio::spawn(fault_loop(Arc::clone(&sim), SimRng::new(rng.next_u64()), Arc::clone(&done))));
    let checks = tokio::spawn(check_loop(Arc::clone(&sim), SimRng::new(rng.next_u64()), Arc::clone(&done)));
    let mover = config
        .moves
        .then(|| tokio::spawn(move_loop(Arc::clone(&sim), SimRng::new(rng.next_u64()), Arc::clone(&done))));
    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.map_err(|e| format!("client task: {e}"))?);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(f) = faults {
        f.await.map_err(|e| format!("fault task: {e}"))??;
    }
    checks.await.map_err(|e| format!("check task: {e}"))?;
    let (in_flight, mover_rng) = match mover {
        Some(m) => m.await.map_err(|e| format!("mover task: {e}"))??,
        None => (None, SimRng::new(0)),
    };

    // Heal everything, restart every replica, and let the group converge.
    {
        let mut s = sim.lock().await;
        {
            let mut net = s.net.lock();
            net.cut.clear();
            net.loss_percent = 0;
        }
        for id in 1..=config.replicas {
            if s.replica(id).is_none() {
                s.start(id).await?;
            }
        }
    }
    let voters: Vec<u64> = if config.moves {
        // The move under way finishes once the network heals; then its group is the voters.
        finish_moves(&sim, mover_rng, in_flight).await?;
        current_voters(&sim).await?
    } else {
        (1..=config.replicas).collect()
    };
    let converged = converge(&sim, &voters).await?;

    // Final strong reads of every key join the history: every acknowledged write must show.
    let mut reader =
        Client { id: 0, rng: SimRng::new(rng.next_u64()), leader: converged, seen: HashMap::new() };
    for key in 0..config.keys {
        let call = clock.tick();
        // A read that found no quorum in time (a membership change just committed, messages still
        // delayed or lost) has no effect: it is tried again, a bounded number of times.
        let mut output = Err(());
        for _ in 0..FINAL_READ_TRIES {
            output = perform(&sim, &mut reader, key, RegisterInput::Read).await;
            if output.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Ok(output) = output else {
            let s = sim.lock().await;
            let net = s.net.lock();
            let recent: Vec<&String> = net.trace.iter().filter(|e| !e.contains(" call ")).collect();
            let tail = recent[recent.len().saturating_sub(40)..].iter().map(|e| format!("\n  | {e}"));
            return Err(format!(
                "final read of key {key} failed; the last events:{}",
                tail.collect::<String>()
            ));
        };
        let ret = output.map(|_| clock.tick());
        history.push((key, Operation { client: 0, call, ret, input: RegisterInput::Read, output }));
    }

    // A final consistency check, after which every replica has compared (one possibly corrupted first).
    let leader = sim.lock().await.replica(converged).ok_or("the leader is down")?;
    if config.corrupt {
        let victim = voters.iter().copied().find(|id| *id != converged).ok_or("no follower")?;
        let (bucket, key) = register(0);
        let s = sim.lock().await;
        let db = s.replica(victim).ok_or("the victim is down")?.db();
        db.put(bucket, &key, 0, &u64::MAX.to_be_bytes())
            .map_err(|e| format!("corrupting node {victim}: {e}"))?;
        drop(s);
        sim.lock().await.report.corrupted = Some(victim);
        sim.lock().await.note(format!("node {victim} corrupted"));
    }
    let mut outcome =
        leader.check_consistency(WRITE_TIMEOUT).await.map_err(|e| format!("final check: {e}"))?;
    let corrupted = sim.lock().await.report.corrupted;
    if let Some(victim) = corrupted {
        // The corrupted replica fences itself, re-syncs from scratch as its next incarnation, asks to
        // be taken back, catches up as a learner and is promoted; then a check must find all equal.
        rejoined(&sim, victim, &voters).await?;
        outcome =
            leader.check_consistency(WRITE_TIMEOUT).await.map_err(|e| format!("check after re-sync: {e}"))?;
    }
    converge(&sim, &voters).await?;

    let mut s = sim.lock().await;
    s.report.final_check = outcome.index;
    s.report.voters = voters.clone();
    for &id in &voters {
        let status = s.replica(id).ok_or_else(|| format!("node {id} is down at the end"))?.status();
        s.report.check_status.insert(id, status.checks);
        s.report.incarnations.insert(id, status.incarnation);
    }
    s.report.acknowledged = history.iter().filter(|(_, op)| op.output.is_some()).count() as u64;
    s.report.unknown = history.len() as u64 - s.report.acknowledged;
    s.report.history = history;
    for &id in &voters {
        let replica = s.replica(id).ok_or_else(|| format!("node {id} is down at the end"))?;
        let digest = replica.state_machine().digest().map_err(|e| format!("node {id} digest: {e}"))?;
        s.report.digests.insert(id, digest);
        let status = replica.status();
        s.report.term = s.report.term.max(status.term);
        s.report.snapshots_installed += replica.state_machine().snapshots_installed();
    }
    for id in 1..=config.replicas {
        if let Some(leaders) = s.nodes.get(&id).and_then(|n| n.leaders.clone()) {
            s.report.leaders += leaders.stats();
        }
        if let Some(r) = s.replica(id) {
            let _ = r.shutdown().await;
        }
    }
    let trace = std::mem::take(&mut s.net.lock().trace);
    s.report.trace = trace;
    Ok(std::mem::take(&mut s.report))
}

/// Waits (bounded, in virtual time) until node `victim` runs a later incarnation that is a voter again,
/// with no learner left in the group of `nodes`.
async fn rejoined(sim: &SharedSim, victim: u64, nodes: &[u64]) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = sim.lock().await;
        let statuses: Vec<_> = nodes.iter().filter_map(|id| s.replica(*id)).map(|r| r.status()).collect();
        let back =
            statuses.iter().any(|st| st.node == victim && st.incarnation > 0 && st.role == Role::Follower)
                && statuses
                    .iter()
                    .filter(|st| st.role == Role::Leader)
                    .any(|st| st.voters.contains(&victim) && st.learners.is_empty());
        if back {
            return Ok(());
        }
        last = format!("{statuses:?}");
    }
    Err(format!("node {victim} did not rejoin in 30 s: {last}"))
}

/// Waits (bounded, in virtual time) until one leader is known to the replicas of `nodes` and each has
/// applied everything it committed; returns the leader.
async fn converge(sim: &SharedSim, nodes: &[u64]) -> Result<u64, String> {
    let mut last = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = sim.lock().await;
        let statuses: Vec<_> = nodes.iter().filter_map(|id| s.replica(*id)).map(|r| r.status()).collect();
        let leaders: BTreeSet<Option<u64>> = statuses.iter().map(|st| st.leader).collect();
        let applied: BTreeSet<Option<u64>> = statuses.iter().map(|st| st.applied).collect();
        let last_logs: BTreeSet<Option<u64>> = statuses.iter().map(|st| st.last_log).collect();
        if let ([Some(leader)], [_], [_]) = (
            leaders.iter().collect::<Vec<_>>().as_slice(),
            applied.iter().collect::<Vec<_>>().as_slice(),
            last_logs.iter().collect::<Vec<_>>().as_slice(),
        ) && applied == last_logs
        {
            return Ok(*leader);
        }
        last = format!("{statuses:?}");
    }
    Err(format!("the group did not converge in 30 s: {last}"))
}

#[path = "raft_sim_clients.rs"]
mod clients;
use clients::{Client, Clock, check_loop, client_loop, fault_loop, perform, register};

#[path = "raft_sim_moves.rs"]
mod moves;

#[path = "raft_sim_cluster.rs"]
pub mod cluster;
use moves::{current_voters, finish_moves, move_loop};
