//! The simulated node the cluster simulation's control plane drives: [`SimHost`] implements
//! [`control::Host`] over the simulated disks and network, as a server's node does over real ones.

use super::*;

/// Events the nodes' control planes reported, and bytes their splits copied.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) splits: u64,
    pub(super) merges: u64,
    pub(super) bytes_copied: u64,
}

/// A node as the control plane's reconciler acts on it: the replicas it runs, which serve, and its
/// copy of the map.
pub(super) struct SimHost {
    pub(super) id: u64,
    pub(super) fs: Arc<dyn FileSystem>,
    pub(super) log: Arc<RaftLog>,
    pub(super) service: RaftService,
    pub(super) frozen: FrozenShards,
    pub(super) wire: SimWire,
    pub(super) config: ReplicaConfig,
    pub(super) seeds: Mutex<SimRng>,
    pub(super) replicas: Mutex<BTreeMap<u64, Replica>>,
    pub(super) serving: Mutex<BTreeSet<u64>>,
    pub(super) map: Mutex<Option<(u64, ShardMap)>>,
    pub(super) tally: Arc<Mutex<Tally>>,
    /// Held while a replica is added (a reconciler pass and a split's watcher may both try to open a
    /// split's new shard).
    pub(super) opening: tokio::sync::Mutex<()>,
}

const RETIRED: &str = "RETIRED";

impl SimHost {
    pub(super) fn dir(group: u64) -> String {
        format!("/shard-{group}")
    }

    pub(super) fn template(&self, group: u64) -> Config {
        let mut template = Config::new(SimHost::dir(group));
        template.fs = Arc::clone(&self.fs);
        template.wal = false;
        template.total_buckets = BUCKETS;
        // Snapshots on the node's disk (`file://`), as a server keeps them: a split's new shard and a
        // merge link their files; another node's replica fetches them from the leader.
        template
    }

    pub(super) fn note(&self, event: String) {
        let mut net = self.wire.net.lock();
        let at = net.start.elapsed().as_micros();
        net.trace.push(format!("{at} node {}: {event}", self.id));
    }

    pub(super) fn exists(&self, path: &str) -> bool {
        self.fs.exists(std::path::Path::new(path)).unwrap_or(false)
    }

    pub(super) fn mark_retired(&self, group: u64) -> Result<(), String> {
        let path = format!("{}/{RETIRED}", SimHost::dir(group));
        let mut file = self.fs.create(std::path::Path::new(&path)).map_err(|e| e.to_string())?;
        file.append(b"retired\n").map_err(|e| e.to_string())?;
        file.sync().map_err(|e| e.to_string())
    }

    /// Opens group `group`'s engine over `ranges` (a retired one starts empty, as its next incarnation;
    /// none: as stored, a shard the map no longer names).
    pub(super) fn open(&self, group: u64, ranges: &[(u16, u16)]) -> Result<ShardStateMachine, String> {
        if ranges.is_empty() {
            return ShardStateMachine::open_stored(SimHost::dir(group).into(), self.template(group))
                .map_err(|e| format!("node {} shard {group}: {e}", self.id))?
                .ok_or_else(|| format!("node {} shard {group} keeps no meta bucket", self.id));
        }
        let marker = format!("{}/{RETIRED}", SimHost::dir(group));
        if self.exists(&marker) {
            self.fs.remove(std::path::Path::new(&marker)).map_err(|e| e.to_string())?;
        }
        let engine_ranges = ranges.iter().map(|&(f, l)| f..=l).collect();
        let meta_bucket = ranges.first().map_or(0, |r| r.0);
        ShardStateMachine::open(SimHost::dir(group).into(), self.template(group), engine_ranges, meta_bucket)
            .map_err(|e| format!("node {} shard {group}: {e}", self.id))
    }

    /// Starts this node's replica of `group` over `sm` (making the group with `bootstrap` if new).
    pub(super) async fn launch(
        &self,
        group: u64,
        sm: ShardStateMachine,
        bootstrap: Option<Bootstrap>,
        split_child: Option<bool>,
    ) -> Result<Replica, String> {
        sm.link(&self.frozen, group).map_err(|e| e.to_string())?;
        // Checks hash on this thread, not a background one: runs replay from their seed.
        sm.hash_checks_inline();
        let seed = self.seeds.lock().next_u64();
        let config = ReplicaConfig { leads_from_start: split_child == Some(true), ..self.config.clone() };
        let start = Replica::start(self.id, group, Arc::clone(&self.log), sm, self.wire.clone(), config);
        let replica =
            with_seed(seed, start).await.map_err(|e| format!("node {} shard {group}: {e}", self.id))?;
        self.service.register_replica(&replica);
        if !replica.is_new() && split_child.is_none() {
            replica.hold_elections();
        }
        if let Some(b) = bootstrap {
            replica.form(b.members, b.first).await.map_err(|e| e.to_string())?;
        }
        let tended = replica.clone();
        tokio::spawn(async move { tended.tend().await });
        // The replica's fences, splits and merges join the trace.
        let (mut effects, watched, wire, id) =
            (replica.effects(), replica.clone(), self.wire.clone(), self.id);
        tokio::spawn(async move {
            while let Ok(effect) = effects.recv().await {
                if matches!(effect, Effect::Verified { .. }) {
                    continue;
                }
                let fenced = watched.state_machine().check_status().fenced;
                // (Not the shard's engine id, which is random.)
                let effect = match effect {
                    Effect::Split(off) => format!(
                        "split at {} into {} of {:?} from snapshot {}",
                        off.index, off.new_group, off.ranges, off.snapshot
                    ),
                    other => format!("{other:?}"),
                };
                let mut net = wire.net.lock();
                let at = net.start.elapsed().as_micros();
                net.trace.push(format!("{at} node {id}: shard {group}: {effect} (fenced: {fenced:?})"));
            }
        });
        self.replicas.lock().insert(group, replica.clone());
        Ok(replica)
    }

    /// What a node does when it starts, once it can read the map: retires the replicas of shards the
    /// map no longer gives it, starts the others, and follows the map from then on.
    pub(super) async fn boot(self: Arc<SimHost>, meta: MetaStore) {
        let state = loop {
            match meta.read(ReadLevel::Strong).await {
                Ok(state) if state.map.is_some() => break state,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        self.observe(&state);
        for (group, ranges) in control::stale_shards(&state, self.id) {
            let dir = SimHost::dir(group);
            if !self.exists(&dir) || self.exists(&format!("{dir}/{RETIRED}")) {
                continue;
            }
            let retired = self.open(group, &ranges).and_then(|sm| {
                retire_stored(&self.log, &sm, group).map_err(|e| e.to_string())?;
                drop(sm);
                self.mark_retired(group)
            });
            self.note(format!("retired stale shard {group} at start: {retired:?}"));
        }
        let on_disk: BTreeSet<u64> = self
            .fs
            .list(std::path::Path::new("/"))
            .unwrap_or_default()
            .iter()
            .filter_map(|name| name.strip_prefix("shard-")?.parse().ok())
            .filter(|group| !self.exists(&format!("{}/{RETIRED}", SimHost::dir(*group))))
            .collect();
        let plans = control::boot_plan(&state, self.id, &on_disk);
        for ReplicaPlan { group, ranges, bootstrap, serving } in plans {
            let started = match self.open(group, &ranges) {
                Ok(sm) => self.launch(group, sm, bootstrap, None).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                self.note(format!("cannot start shard {group}: {e}"));
            } else if serving {
                self.serving.lock().insert(group);
            }
        }
        let id = self.id;
        tokio::spawn(control::reconcile(meta, Arc::downgrade(&self), id));
    }

    /// Stops every replica the node runs (its disk has already failed).
    pub(super) async fn stop(&self) {
        let replicas: Vec<Replica> = std::mem::take(&mut *self.replicas.lock()).into_values().collect();
        for replica in replicas {
            let _ = replica.shutdown().await;
        }
    }

    /// The replica serving `bucket` here, if any, found as a server finds it: a serving replica whose
    /// engine owns the bucket (a split's new shard serves before the map names it), else the map's.
    pub(super) fn route(&self, bucket: u16) -> Option<Replica> {
        let serving = self.serving.lock().clone();
        let local = serving
            .iter()
            .filter_map(|g| self.replicas.lock().get(g).cloned())
            .find(|r| r.state_machine().owned_buckets().iter().any(|owned| owned.contains(&bucket)));
        if local.is_some() {
            return local;
        }
        let group = self.map.lock().as_ref()?.1.shard_for_bucket(bucket)?.id.group();
        if !serving.contains(&group) {
            return None;
        }
        self.replicas.lock().get(&group).cloned()
    }
}

impl Host for SimHost {
    type Error = String;

    fn event(&self, event: ControlEvent) {
        match &event {
            ControlEvent::ShardSplit { .. } => self.tally.lock().splits += 1,
            ControlEvent::ShardMerged { .. } => self.tally.lock().merges += 1,
            _ => {}
        }
        self.note(format!("{event:?}"));
    }

    fn observe(&self, state: &ClusterState) {
        let Some(map) = &state.map else { return };
        let mut mine = self.map.lock();
        if mine.as_ref().is_none_or(|(version, _)| *version < state.version) {
            *mine = Some((state.version, map.clone()));
        }
    }

    fn groups(&self) -> BTreeSet<u64> {
        self.replicas.lock().keys().copied().collect()
    }

    fn replica(&self, group: u64) -> Option<Replica> {
        self.replicas.lock().get(&group).cloned()
    }

    fn serve_only(&self, groups: &BTreeSet<u64>) {
        let held = self.groups();
        *self.serving.lock() = groups.intersection(&held).copied().collect();
    }

    async fn add_replica(&self, shard: &ShardDescriptor) -> Result<(), String> {
        let group = shard.id.group();
        let _one_at_a_time = self.opening.lock().await;
        if self.replica(group).is_some() {
            return Ok(());
        }
        let sm = self.open(group, &shard.ranges)?;
        self.launch(group, sm, None, None).await.map(drop)
    }

    async fn add_split_replica(&self, shard: &ShardDescriptor) -> Result<bool, String> {
        let (Some(parent), group) = (shard.split_from, shard.id.group()) else { return Ok(false) };
        let _one_at_a_time = self.opening.lock().await;
        if self.replica(group).is_some() {
            return Ok(true);
        }
        let off =
            self.replica(parent.group()).and_then(|p| p.state_machine().split_off(group, &shard.ranges));
        let Some(off) = off else { return Ok(false) };
        let (sm, stats) =
            ShardStateMachine::open_split(SimHost::dir(group).into(), self.template(group), &off)
                .map_err(|e| format!("node {} split shard {group}: {e}", self.id))?;
        let voted = prepare_split_log(&self.log, group, off.first_leader).map_err(|e| e.to_string())?;
        self.tally.lock().bytes_copied += stats.bytes_copied;
        self.note(format!("made split shard {group} from {parent}: {stats:?}"));
        let leads = voted && off.first_leader == Some(self.id);
        let child = self.launch(group, sm, None, Some(leads)).await?;
        // As a server does: the node the split named leads at once; for a split that named no one, the
        // node that led the split shard asks for votes at once.
        if off.first_leader.is_none()
            && self.replica(parent.group()).is_some_and(|p| p.status().role == Role::Leader)
        {
            child.campaign();
        }
        // As a server does: it serves its buckets at once, before the map names it.
        self.serving.lock().insert(group);
        Ok(true)
    }

    async fn retire_replica(&self, group: u64) -> Result<(), String> {
        let Some(replica) = self.replicas.lock().remove(&group) else { return Ok(()) };
        self.serving.lock().remove(&group);
        self.service.unregister(group);
        self.frozen.remove(group);
        replica.retire().await.map_err(|e| e.to_string())?;
        self.mark_retired(group)
    }
}
