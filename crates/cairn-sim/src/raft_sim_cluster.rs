//! Deterministic simulation of a whole cluster that changes shape: three nodes, each running the real
//! meta group replica, the control plane's driver and reconciler ([`cairn_cluster::control`]) and its
//! shard replicas, over the simulated network and disks of [`super`]. A reshaper records splits and
//! merges in the meta group as an operator's commands do, at random times, while clients read, write
//! and compare-and-set registers through whichever node they pick (routed by that node's copy of the
//! shard map, refused and sent again when a split or merge moved the bucket) and the fault schedule
//! partitions, drops, delays, crashes and restarts.
//!
//! [`run_cluster`] runs such a schedule; [`run_crash_step`] runs one split or merge with one node's
//! disk dying after exactly a given number of changes to it (so every step of the operation, from the
//! meta update through the log entry and the engine's shrink, snapshot and import to the map's final
//! update, can be hit in turn), then restarts that node. Either way the run ends by healing, letting
//! every started split and merge finish, reading every register back and checking that every bucket is
//! owned by exactly one shard, on every node, as the map says, and that each shard's replicas hold the
//! same contents.

use super::clients::{Attempt, Workload, attempt, disturb, register_key};
use super::*;
use cairn_cluster::control::{self, Bootstrap, ControlEvent, Host, ReplicaPlan};
use cairn_cluster::meta::{
    ClusterSettings, ClusterState, JoinRequest, META_BUCKET, META_GROUP, META_TOTAL_BUCKETS, MetaStore,
};
use cairn_cluster::placement::{ShardDescriptor, ShardId, ShardMap};
use cairn_cluster::raft::{Effect, FrozenShards, prepare_split_log};
use cairn_kv::mvcc::bucket_of;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Drives every random choice.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Simulated time the clients run.
    pub duration: Duration,
    /// Registers the clients share (spread over the buckets).
    pub keys: u64,
    /// Whether to inject faults (partitions, loss, delay, crashes of one node at a time).
    pub faults: bool,
    /// Whether a reshaper splits and merges shards meanwhile.
    pub reshape: bool,
}

/// What a cluster run produced.
#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    /// Every client operation, keyed by register.
    pub history: Vec<KeyedOperation<u64>>,
    /// Operations acknowledged (a definite answer).
    pub acknowledged: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Splits and merges the reshaper recorded.
    pub splits_begun: u64,
    /// (as above)
    pub merges_begun: u64,
    /// Splits and merges the shards' leaders finished (the map recorded them).
    pub splits: u64,
    /// (as above)
    pub merges: u64,
    /// Bytes copied by every split's new shard on every node (made by reference: 0).
    pub bytes_copied: u64,
    /// The shards at the end: (group, ranges).
    pub shards: Vec<(u64, Vec<(u16, u16)>)>,
    /// Every message and event (for finding where two runs of one seed part).
    pub trace: Vec<String>,
    /// Crash-step runs: whether the chosen node's disk died during the operation.
    pub crashed: bool,
    /// Crash-step runs: changes made to the chosen node's disk from the operation's start until it
    /// finished (counted when nothing crashed).
    pub changes: u64,
    /// Crash-step runs: what the map said of the operation when the disk died.
    pub crashed_at: String,
}

const NODES: u64 = 3;
/// The shards the cluster starts with (each over half of [`BUCKETS`]).
const INITIAL_SHARDS: usize = 2;
/// How long the end of a run waits for the cluster to settle (virtual time).
const SETTLE: Duration = Duration::from_secs(60);

/// One node's part in the run: its disk, and what runs on it while it is up.
struct ClusterNode {
    disk: MemFs,
    power: FaultController,
    host: Option<Arc<SimHost>>,
    meta: Option<MetaStore>,
    leaders: Option<Arc<Leaders>>,
    boot: Option<tokio::task::JoinHandle<()>>,
}

struct ClusterSim {
    net: Arc<Mutex<Net>>,
    nodes: BTreeMap<u64, ClusterNode>,
    raft_config: ReplicaConfig,
    seeds: SimRng,
    report: ClusterReport,
    tally: Arc<Mutex<Tally>>,
}

type SharedCluster = Arc<tokio::sync::Mutex<ClusterSim>>;

fn settings() -> ClusterSettings {
    ClusterSettings {
        replication_factor: 3,
        shards: INITIAL_SHARDS,
        total_buckets: BUCKETS,
        // No node is declared dead (three nodes, three replicas: nowhere to move one to).
        dead_after_secs: 3600,
        rebalance: true,
        max_clock_offset_ms: MAX_CLOCK_OFFSET.as_millis() as u64,
        reshape: cairn_cluster::meta::ReshapeSettings {
            // Only the reshaper splits and merges.
            split_size_bytes: 0,
            split_qps: 0,
            auto_merge: false,
            ..Default::default()
        },
        gc_ttl_secs: cairn_cluster::meta::DEFAULT_GC_TTL_SECS,
        gc_ttl_before_secs: 0,
        gc_ttl_raised_ms: 0,
        backup_rate_bytes: cairn_cluster::meta::DEFAULT_BACKUP_RATE_BYTES,
    }
}

impl ClusterSim {
    fn new(config: &ClusterConfig) -> ClusterSim {
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
        let nodes = (1..=NODES)
            .map(|id| {
                let node = ClusterNode {
                    disk: MemFs::new(),
                    power: FaultController::default(),
                    host: None,
                    meta: None,
                    leaders: None,
                    boot: None,
                };
                (id, node)
            })
            .collect();
        let raft_config = ReplicaConfig {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_every: 40,
            keep_behind_snapshot: 10,
            // Snapshots are fetched from the leader over the (slow, lossy) network, as between servers.
            snapshot_timeout: Duration::from_secs(5),
            check_every: Duration::from_secs(3),
            // The map decides who votes.
            promote_resynced: false,
            // Groups stay awake (quiescence needs the server's liveness view).
            quiesce_after: Duration::ZERO,
            ..ReplicaConfig::default()
        };
        ClusterSim {
            seeds: SimRng::new(config.seed ^ 0x7365_6564),
            net: Arc::new(Mutex::new(net)),
            nodes,
            raft_config,
            report: ClusterReport::default(),
            tally: Arc::default(),
        }
    }

    /// Starts every node, makes the meta group of all three with the cluster's first state, and
    /// waits until the shards are placed and every group has a leader.
    async fn boot(config: ClusterConfig) -> Result<SharedCluster, String> {
        let mut sim = ClusterSim::new(&config);
        let mut state = ClusterState::new("sim", settings()).map_err(|e| e.to_string())?;
        for id in 1..=NODES {
            let request = JoinRequest {
                cluster_id: "sim".into(),
                token: format!("token-{id}"),
                grpc_addr: format!("n{id}"),
                http_addr: format!("h{id}"),
            };
            let (next, _) = state.join(&request).map_err(|e| e.to_string())?;
            state = next.ok_or("a join changed nothing")?;
        }
        for id in 1..=NODES {
            sim.start(id).await?;
        }
        let members = (1..=NODES).map(|id| (id, format!("n{id}"))).collect();
        let meta = sim.nodes[&1].meta.clone().ok_or("node 1 has no meta replica")?;
        meta.replica().bootstrap(members).await.map_err(|e| e.to_string())?;
        let mut stored = false;
        for _ in 0..100 {
            if meta.bootstrap(&state).await.is_ok() {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !stored {
            return Err("the meta group took no first state in 10 s".into());
        }
        let shared = Arc::new(tokio::sync::Mutex::new(sim));
        settle(&shared).await?;
        Ok(shared)
    }

    /// Opens node `id`'s storage, starts its meta replica, writer and control plane, and (in the
    /// background, once it can read the map) its shard replicas.
    async fn start(&mut self, id: u64) -> Result<(), String> {
        let seed = self.seeds.next_u64();
        let disk = self.nodes.get(&id).ok_or("no such node")?.disk.clone();
        let faulty = FaultFs::new(Arc::new(disk));
        let power = faulty.controller();
        let fs: Arc<dyn FileSystem> = Arc::new(faulty);
        let mut log_config = RaftLogConfig::new("/raft", Arc::clone(&fs));
        log_config.flush_inline = true;
        let log = Arc::new(RaftLog::open(log_config).map_err(|e| format!("node {id} raft log: {e}"))?);
        let mut template = Config::new("/meta");
        template.fs = Arc::clone(&fs);
        template.wal = false;
        template.total_buckets = META_TOTAL_BUCKETS;
        let sm =
            ShardStateMachine::open("/meta".into(), template, vec![META_BUCKET..=META_BUCKET], META_BUCKET)
                .map_err(|e| format!("node {id} meta: {e}"))?;
        sm.hash_checks_inline();
        let wire = SimWire { from: id, net: Arc::clone(&self.net) };
        let start =
            Replica::start(id, META_GROUP, Arc::clone(&log), sm, wire.clone(), self.raft_config.clone());
        let meta_replica = with_seed(seed, start).await.map_err(|e| format!("node {id} meta start: {e}"))?;
        let service = RaftService::default();
        service.register_replica(&meta_replica);
        let tended = meta_replica.clone();
        tokio::spawn(async move { tended.tend().await });
        let meta = MetaStore::new(meta_replica, WRITE_TIMEOUT);
        let skew = self.seeds.below(MAX_CLOCK_SKEW_NS);
        let begin = self.net.lock().start;
        let physical: Physical = Arc::new(move || {
            SIM_EPOCH_NS + u64::try_from(begin.elapsed().as_nanos()).unwrap_or(u64::MAX) + skew
        });
        let pending = Arc::new(Pending::with_clock(Hlc::with_physical(MAX_CLOCK_OFFSET, physical)));
        let leaders = Leaders::new(pending, BUCKETS, WRITE_TIMEOUT, MAX_COMMAND_BYTES);
        service.set_request_handler(Arc::clone(&leaders) as Arc<dyn RequestHandler>);
        let host = Arc::new(SimHost {
            id,
            fs,
            log,
            service: service.clone(),
            frozen: FrozenShards::default(),
            wire,
            config: self.raft_config.clone(),
            seeds: Mutex::new(SimRng::new(self.seeds.next_u64())),
            replicas: Mutex::default(),
            serving: Mutex::default(),
            map: Mutex::default(),
            tally: Arc::clone(&self.tally),
            opening: tokio::sync::Mutex::new(()),
        });
        let noted = Arc::downgrade(&host);
        let sink: control::EventSink = Arc::new(move |e| {
            if let Some(host) = noted.upgrade() {
                host.note(format!("driver: {e:?}"));
            }
        });
        tokio::spawn(control::drive(meta.clone(), sink));
        {
            let mut net = self.net.lock();
            net.services.insert(id, service);
            net.power.insert(id, power.clone());
        }
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        node.power = power;
        node.boot = Some(tokio::spawn(Arc::clone(&host).boot(meta.clone())));
        node.host = Some(host);
        node.meta = Some(meta);
        node.leaders = Some(leaders);
        self.note(format!("node {id} started"));
        Ok(())
    }

    /// Kills node `id` at once (see [`ClusterSim::power_off`]), counted as a fault.
    async fn crash(&mut self, id: u64) {
        self.power_off(id).await;
        *self.report.faults.entry("crash").or_default() += 1;
        self.note(format!("node {id} crashed"));
    }

    /// Stops node `id` the hard way: every file-system call fails from now on, then unsynced data is
    /// lost.
    async fn power_off(&mut self, id: u64) {
        self.net.lock().services.remove(&id);
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.power.fail_all();
        if let Some(boot) = node.boot.take() {
            boot.abort();
        }
        node.leaders = None;
        if let Some(host) = node.host.take() {
            host.stop().await;
        }
        if let Some(meta) = node.meta.take() {
            let _ = meta.replica().shutdown().await;
        }
        node.disk.crash();
    }

    fn note(&self, event: String) {
        let mut net = self.net.lock();
        let at = net.start.elapsed().as_micros();
        net.trace.push(format!("{at} {event}"));
    }

    fn up(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.host.is_some()).map(|(id, _)| *id).collect()
    }

    /// Node `id`'s replica serving register `key` and its writer, by the node's map.
    fn gateway(&self, id: u64, key: u64) -> Option<(Replica, Arc<Leaders>)> {
        let node = self.nodes.get(&id)?;
        let bucket = bucket_of(&register_key(key), BUCKETS);
        Some((node.host.as_ref()?.route(bucket)?, node.leaders.clone()?))
    }

    /// A meta store of an up node (the first from `from`), to record changes through.
    fn meta_from(&self, from: u64) -> Option<MetaStore> {
        let up = self.up();
        let id = up.iter().copied().find(|id| *id >= from).or_else(|| up.first().copied())?;
        self.nodes.get(&id)?.meta.clone()
    }
}

/// Runs one operation through node `client.leader`, routed by its map: to a definite answer
/// (`Ok(Some)`), an unknown outcome (`Ok(None)`) or certainly no effect (`Err`), trying other nodes a
/// bounded number of times (a split or merge moved the bucket, the node is down or not the leader).
async fn perform(
    sim: &SharedCluster,
    client: &mut Client,
    key: u64,
    input: RegisterInput,
) -> Result<Option<RegisterOutput>, ()> {
    for _ in 0..4 {
        let gateway = sim.lock().await.gateway(client.leader, key);
        let Some(gateway) = gateway else {
            client.leader = 1 + client.rng.below(NODES);
            continue;
        };
        let before = gateway.0.status();
        let seen = client.seen.entry(key).or_default();
        let outcome = attempt(&gateway, &mut client.rng, key, input, seen).await;
        let after = gateway.0.status();
        let owned = gateway.0.state_machine().owned_buckets();
        sim.lock().await.note(format!(
            "client {} key {key} {input:?} at {} shard {} ({:?} applied {:?}..{:?} of {:?}, incarnation {}, \
             owns {owned:?}) -> {outcome:?}",
            client.id,
            client.leader,
            before.group,
            after.role,
            before.applied,
            after.applied,
            after.committed,
            after.incarnation
        ));
        match outcome {
            Attempt::Done(output) => return Ok(Some(output)),
            Attempt::Unknown => return Ok(None),
            // Nothing happened (the bucket moved, no leader in time): another node, maybe.
            Attempt::NoEffect => client.leader = 1 + client.rng.below(NODES),
            Attempt::Redirect(leader) => {
                client.leader = leader.map_or_else(|| 1 + client.rng.below(NODES), node_of)
            }
        }
    }
    Err(())
}

async fn client_loop(
    sim: SharedCluster,
    mut client: Client,
    clock: Clock,
    until: tokio::time::Instant,
    keys: u64,
) -> Vec<KeyedOperation<u64>> {
    let mut workload = Workload::default();
    while tokio::time::Instant::now() < until {
        let (key, input) = workload.next(&mut client, keys).await;
        let call = clock.tick();
        let Ok(output) = perform(&sim, &mut client, key, input).await else { continue };
        workload.record(&clock, client.id, key, input, call, output);
    }
    workload.history
}

/// Faults until `done`: network faults, and crashes and restarts of one node at a time.
async fn fault_loop(
    sim: SharedCluster,
    mut rng: SimRng,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), String> {
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(100, 1500)).await;
        let mut sim = sim.lock().await;
        let up = sim.up();
        let kind = match rng.below(7) {
            k @ 0..=4 => disturb(&mut sim.net.lock(), &mut rng, k, NODES),
            5 if up.len() as u64 == NODES => {
                let victim = up[rng.below(up.len() as u64) as usize];
                sim.crash(victim).await;
                continue;
            }
            _ => {
                let Some(id) = (1..=NODES).find(|id| !up.contains(id)) else { continue };
                sim.start(id).await?;
                "restart"
            }
        };
        *sim.report.faults.entry(kind).or_default() += 1;
        let state = {
            let net = sim.net.lock();
            format!("{kind}: cut {:?} loss {}% delay <= {} ms", net.cut, net.loss_percent, net.max_delay_ms)
        };
        sim.note(state);
    }
    Ok(())
}

/// A split of a random shard at a random bucket of its, or a merge of two random neighbours, as
/// an operator's command records it (neither touching a shard already changing shape).
fn plan_reshape(map: &ShardMap, rng: &mut SimRng) -> Option<(ShardId, Option<ShardId>, u16)> {
    let idle = |s: &ShardDescriptor| {
        s.splitting.is_none() && s.merging.is_none() && s.moving.is_none() && !map.in_merge(s.id)
    };
    if rng.chance(55) {
        let splittable: Vec<&ShardDescriptor> = map
            .shards
            .iter()
            .filter(|s| idle(s) && s.ranges.iter().map(|(f, l)| u32::from(l - f) + 1).sum::<u32>() >= 2)
            .collect();
        let s = splittable.get(rng.below(splittable.len() as u64) as usize)?;
        let buckets: Vec<u16> = s.ranges.iter().flat_map(|&(f, l)| f..=l).skip(1).collect();
        let at = buckets[rng.below(buckets.len() as u64) as usize];
        return Some((s.id, None, at));
    }
    let pairs: Vec<(ShardId, ShardId)> =
        map.shards.windows(2).filter(|w| idle(&w[0]) && idle(&w[1])).map(|w| (w[0].id, w[1].id)).collect();
    let (left, right) = pairs.get(rng.below(pairs.len() as u64) as usize)?;
    Some((*left, Some(*right), 0))
}

/// Records a split (`right` none: of `shard` at `at`) or a merge (of `shard` and `right`) through an up
/// node's meta store (the first from `from`): what was recorded, or why not.
async fn record_reshape(
    sim: &SharedCluster,
    from: u64,
    shard: ShardId,
    right: Option<ShardId>,
    at: u16,
) -> Result<String, String> {
    let meta = sim.lock().await.meta_from(from).ok_or("no node is up")?;
    let recorded = match right {
        None => meta
            .update(|s| s.begin_split(shard, at))
            .await
            .map(|(_, new)| format!("split of {shard} at {at} into {new}")),
        Some(right) => meta
            .update(|s| s.begin_merge(shard, right).map(|next| (next, ())))
            .await
            .map(|_| format!("merge of {shard} and {right}")),
    };
    let recorded = recorded.map_err(|e| e.to_string());
    sim.lock().await.note(format!("reshaper: {recorded:?}"));
    recorded
}

/// Splits and merges shards until `done`, one every few hundred milliseconds.
async fn reshape_loop(sim: SharedCluster, mut rng: SimRng, done: Arc<std::sync::atomic::AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(300, 1500)).await;
        let from = 1 + rng.below(NODES);
        let map = {
            let s = sim.lock().await;
            s.nodes.get(&from).and_then(|n| n.host.as_ref()).and_then(|h| h.map.lock().clone())
        };
        let Some((_, map)) = map else { continue };
        let Some((shard, right, at)) = plan_reshape(&map, &mut rng) else { continue };
        if record_reshape(&sim, from, shard, right, at).await.is_ok() {
            let mut s = sim.lock().await;
            if right.is_some() {
                s.report.merges_begun += 1;
            } else {
                s.report.splits_begun += 1;
            }
        }
    }
}

/// Waits (bounded, in virtual time) until every node is up and runs exactly the replicas the map
/// gives it, no split, merge or move is under way, and every shard's group has one leader with every
/// replica applied to its last entry. Returns the map.
async fn settle(sim: &SharedCluster) -> Result<ShardMap, String> {
    let mut last = String::new();
    let rounds = SETTLE.as_millis() / 100;
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = sim.lock().await;
        let Some(meta) = s.meta_from(1) else { continue };
        drop(s);
        let state = match meta.read(ReadLevel::Strong).await {
            Ok(state) => state,
            Err(e) => {
                last = format!("meta read: {e}");
                continue;
            }
        };
        let Some(map) = state.map else { continue };
        let s = sim.lock().await;
        match settled(&s, &map) {
            Ok(()) => return Ok(map),
            Err(why) => last = why,
        }
    }
    Err(format!("the cluster did not settle in {SETTLE:?}: {last}"))
}

/// Why the cluster has not settled on `map` yet (see [`settle`]).
fn settled(s: &ClusterSim, map: &ShardMap) -> Result<(), String> {
    if let Some(busy) =
        map.shards.iter().find(|d| d.splitting.is_some() || d.merging.is_some() || d.moving.is_some())
    {
        return Err(format!("shard {} is changing: {busy:?}", busy.id));
    }
    for d in &map.shards {
        let statuses: Vec<_> = d
            .replicas
            .iter()
            .filter_map(|id| s.nodes.get(id)?.host.as_ref()?.replica(d.id.group()))
            .map(|r| r.status())
            .collect();
        let leaders: BTreeSet<Option<u64>> = statuses.iter().map(|st| st.leader).collect();
        let converged = leaders.len() == 1
            && !leaders.contains(&None)
            && statuses.iter().all(|st| st.applied == st.last_log)
            && statuses.iter().map(|st| st.applied).collect::<BTreeSet<_>>().len() == 1;
        if !converged {
            return Err(format!("shard {} has not converged: {statuses:?}", d.id));
        }
    }
    for (id, node) in &s.nodes {
        let host = node.host.as_ref().ok_or_else(|| format!("node {id} is down"))?;
        let wanted: BTreeSet<u64> =
            map.shards.iter().filter(|d| d.replicas.contains(id)).map(|d| d.id.group()).collect();
        let held = host.groups();
        if held != wanted {
            return Err(format!("node {id} holds {held:?}, the map gives it {wanted:?}"));
        }
        if host.map.lock().as_ref().is_none_or(|(_, m)| m != map) {
            return Err(format!("node {id} routes by an older map"));
        }
    }
    Ok(())
}

/// Every bucket belongs to exactly one shard of `map`, and on every node each shard's replica owns
/// exactly the shard's buckets (no other replica there owns any).
fn check_ownership(s: &ClusterSim, map: &ShardMap) -> Result<(), String> {
    let mut owner = vec![None; BUCKETS as usize];
    for d in &map.shards {
        for b in d.ranges.iter().flat_map(|&(f, l)| f..=l) {
            let slot = owner.get_mut(usize::from(b)).ok_or_else(|| format!("bucket {b} out of range"))?;
            if let Some(other) = slot.replace(d.id) {
                return Err(format!("bucket {b} is in shards {other} and {}", d.id));
            }
        }
    }
    if let Some(b) = owner.iter().position(Option::is_none) {
        return Err(format!("bucket {b} is in no shard"));
    }
    for (id, node) in &s.nodes {
        let host = node.host.as_ref().ok_or_else(|| format!("node {id} is down"))?;
        let mut owned_here = vec![None; BUCKETS as usize];
        for group in host.groups() {
            let replica = host.replica(group).ok_or("replica gone")?;
            for b in replica.state_machine().owned_buckets().into_iter().flatten() {
                if let Some(other) = owned_here[usize::from(b)].replace(group) {
                    return Err(format!("node {id}: bucket {b} is owned by shards {other} and {group}"));
                }
            }
        }
        for (b, shard) in owner.iter().enumerate() {
            let want = shard.map(ShardId::group);
            if owned_here[b] != want {
                return Err(format!(
                    "node {id}: bucket {b} is owned by {:?}, the map says {want:?}",
                    owned_here[b]
                ));
            }
        }
    }
    Ok(())
}

/// Each shard's replicas hold the same contents: their digests, taken at one instant once all have
/// applied the same index (a consistency check may append an entry at any time), are equal.
async fn check_contents(sim: &SharedCluster, map: &ShardMap) -> Result<(), String> {
    for d in &map.shards {
        let mut digests = BTreeMap::new();
        for _ in 0..100 {
            let s = sim.lock().await;
            digests.clear();
            for id in &d.replicas {
                let replica =
                    s.nodes.get(id).and_then(|n| n.host.as_ref()).and_then(|h| h.replica(d.id.group()));
                let replica = replica.ok_or_else(|| format!("node {id} has no replica of shard {}", d.id))?;
                digests.insert(*id, replica.state_machine().digest().map_err(|e| e.to_string())?);
            }
            if digests.values().map(|(applied, _)| applied).collect::<BTreeSet<_>>().len() == 1 {
                break;
            }
            drop(s);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if digests.values().collect::<BTreeSet<_>>().len() != 1 {
            return Err(format!("shard {}'s replicas differ: {digests:?}", d.id));
        }
    }
    Ok(())
}

/// Heals the network and restarts every node, lets the cluster settle, reads every register back into
/// `history` and checks ownership and contents; fills the report.
async fn finish(
    sim: &SharedCluster,
    clock: &Clock,
    rng: &mut SimRng,
    keys: u64,
    mut history: Vec<KeyedOperation<u64>>,
) -> Result<ClusterReport, String> {
    {
        let mut s = sim.lock().await;
        {
            let mut net = s.net.lock();
            net.cut.clear();
            net.loss_percent = 0;
        }
        for id in 1..=NODES {
            if s.nodes[&id].host.is_none() {
                s.start(id).await?;
            }
        }
    }
    let map = settle(sim).await.map_err(|e| explain_tail(sim, e))?;
    let mut reader = Client { id: 0, rng: SimRng::new(rng.next_u64()), leader: 1, seen: HashMap::new() };
    for key in 0..keys {
        let call = clock.tick();
        let mut output = Err(());
        for _ in 0..FINAL_READ_TRIES {
            output = perform(sim, &mut reader, key, RegisterInput::Read).await;
            if output.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let output = output.map_err(|()| explain_tail(sim, format!("final read of key {key} failed")))?;
        let ret = output.map(|_| clock.tick());
        history.push((key, Operation { client: 0, call, ret, input: RegisterInput::Read, output }));
    }
    check_contents(sim, &map).await.map_err(|e| explain_tail(sim, e))?;
    let mut s = sim.lock().await;
    check_ownership(&s, &map)?;
    let tally = std::mem::take(&mut *s.tally.lock());
    s.report.splits = tally.splits;
    s.report.merges = tally.merges;
    s.report.bytes_copied = tally.bytes_copied;
    s.report.shards = map.shards.iter().map(|d| (d.id.group(), d.ranges.clone())).collect();
    s.report.acknowledged = history.iter().filter(|(_, op)| op.output.is_some()).count() as u64;
    s.report.unknown = history.len() as u64 - s.report.acknowledged;
    s.report.history = history;
    for id in 1..=NODES {
        s.power_off(id).await;
    }
    let trace = std::mem::take(&mut s.net.lock().trace);
    s.report.trace = trace;
    Ok(std::mem::take(&mut s.report))
}

/// `error` with the run's last events.
fn explain_tail(sim: &SharedCluster, error: String) -> String {
    let Ok(s) = sim.try_lock() else { return error };
    let net = s.net.lock();
    let recent: Vec<&String> = net.trace.iter().filter(|e| !e.contains(" call ")).collect();
    if let Ok(path) = std::env::var("CAIRN_TRACE_FILE") {
        let all: String = recent.iter().map(|e| format!("{e}\n")).collect();
        let _ = std::fs::write(path, all);
    }
    let tail: String =
        recent[recent.len().saturating_sub(60)..].iter().map(|e| format!("\n  | {e}")).collect();
    format!("{error}; the last events:{tail}")
}

/// Runs one cluster simulation on a fresh single-threaded runtime with a virtual clock.
pub fn run_cluster(config: ClusterConfig) -> Result<ClusterReport, String> {
    runtime(config.seed)?.block_on(async move {
        let sim = ClusterSim::boot(config.clone()).await?;
        let clock = Clock::default();
        let mut rng = SimRng::new(config.seed);
        let until = tokio::time::Instant::now() + config.duration;
        let mut clients = Vec::new();
        for id in 1..=config.clients {
            let client = Client {
                id,
                rng: SimRng::new(rng.next_u64()),
                leader: 1 + rng.below(NODES),
                seen: HashMap::new(),
            };
            clients.push(tokio::spawn(client_loop(
                Arc::clone(&sim),
                client,
                clock.clone(),
                until,
                config.keys,
            )));
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let faults = config.faults.then(|| {
            tokio::spawn(fault_loop(Arc::clone(&sim), SimRng::new(rng.next_u64()), Arc::clone(&done)))
        });
        let reshaper = config.reshape.then(|| {
            tokio::spawn(reshape_loop(Arc::clone(&sim), SimRng::new(rng.next_u64()), Arc::clone(&done)))
        });
        let mut history = Vec::new();
        for c in clients {
            history.extend(c.await.map_err(|e| format!("client task: {e}"))?);
        }
        done.store(true, Ordering::Relaxed);
        if let Some(f) = faults {
            f.await.map_err(|e| format!("fault task: {e}"))??;
        }
        if let Some(r) = reshaper {
            r.await.map_err(|e| format!("reshaper task: {e}"))?;
        }
        finish(&sim, &clock, &mut rng, config.keys, history).await
    })
}

#[path = "raft_sim_cluster_crash.rs"]
mod crash;
#[path = "raft_sim_cluster_host.rs"]
mod host;
pub use crash::{CrashStep, run_crash_step};
use host::{SimHost, Tally};
