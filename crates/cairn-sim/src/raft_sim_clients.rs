//! The simulation's clients and fault schedule: clients read, write and compare-and-set registers
//! through the KV layer at random replicas and record the history; the fault loop partitions, delays,
//! crashes and restarts; the check loop runs consistency checks at random times.

use super::*;

/// The user key of register `key`.
pub(super) fn register_key(key: u64) -> Vec<u8> {
    format!("reg-{key}").into_bytes()
}

/// The engine key and bucket of register `key` written as a raw row (the catch-up run's writes).
pub(super) fn register(key: u64) -> (u16, Vec<u8>) {
    ((key % u64::from(BUCKETS)) as u16, format!("reg-{key}").into_bytes())
}

fn decode(value: Option<&[u8]>) -> Result<Option<u64>, String> {
    value
        .map(|v| v.try_into().map(u64::from_be_bytes).map_err(|_| format!("bad register value {v:?}")))
        .transpose()
}

/// A client's view: which node it believes leads, and the timestamp of the version it last read of
/// each register.
pub(super) struct Client {
    pub(super) id: u64,
    pub(super) rng: SimRng,
    pub(super) leader: u64,
    pub(super) seen: HashMap<u64, Option<Timestamp>>,
}

/// Global event clock for the history: calls and returns in the order they happened.
#[derive(Clone, Default)]
pub(super) struct Clock(Arc<AtomicU64>);

impl Clock {
    pub(super) fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One try of an operation at one replica.
#[derive(Debug)]
pub(super) enum Attempt {
    /// A definite answer.
    Done(RegisterOutput),
    /// Proposed, outcome unknown.
    Unknown,
    /// Certainly without effect.
    NoEffect,
    /// Not the leader; try this one.
    Redirect(Option<u64>),
}

/// One try of `input` on register `key` through node `gateway`: reads at its replica, writes through
/// the KV layer ([`Leaders::write`]: evaluated by the group's leader). A compare-and-set expecting a
/// value is a put conditional on the timestamp of that value's version (`seen`: every value is written
/// once, so the newest version has that timestamp exactly when the register holds that value); one
/// expecting nothing is a put if absent. A read records the timestamp of what it read in `seen`.
pub(super) async fn attempt(
    (replica, leaders): &(Replica, Arc<Leaders>),
    rng: &mut SimRng,
    key: u64,
    input: RegisterInput,
    seen: &mut Option<Timestamp>,
) -> Attempt {
    let user_key = register_key(key);
    let (condition, new) = match input {
        RegisterInput::Read => {
            let level = if rng.chance(30) { ReadLevel::Lease } else { ReadLevel::Strong };
            return match replica.read_point(level, READ_TIMEOUT).await {
                Err(GroupError::NotLeader { leader }) => Attempt::Redirect(leader),
                Err(_) => Attempt::NoEffect,
                // Nothing runs between the wait and this read (one thread): it sees the state the
                // wait established, or newer.
                Ok(_) => {
                    let db = replica.db();
                    let reader = DbReader { db: &db, total_buckets: BUCKETS };
                    match reader.newest(&user_key) {
                        // Retired meanwhile (its shard merged away): what it read may be the next
                        // incarnation's empty engine.
                        Ok(_) if replica.is_stopped() => Attempt::NoEffect,
                        Ok(version) => {
                            *seen = version.as_ref().map(|v| v.timestamp);
                            match decode(version.as_ref().map(|v| v.value.as_slice())) {
                                Ok(v) => Attempt::Done(RegisterOutput::Read(v)),
                                Err(_) => Attempt::NoEffect,
                            }
                        }
                        Err(_) => Attempt::NoEffect,
                    }
                }
            };
        }
        RegisterInput::Write(v) => (None, v),
        RegisterInput::Cas { expect: None, new } => (Some(PutCondition::IfAbsent), new),
        RegisterInput::Cas { expect: Some(_), new } => match *seen {
            Some(ts) => (Some(PutCondition::IfTimestamp(ts)), new),
            None => return Attempt::NoEffect,
        },
        RegisterInput::Delete => return Attempt::NoEffect,
    };
    let op = Write::Put {
        key: user_key,
        value: new.to_be_bytes().to_vec(),
        condition: condition.unwrap_or(PutCondition::None),
    };
    match leaders.write(replica, &op).await {
        Ok(_) if condition.is_some() => Attempt::Done(RegisterOutput::Cas(true)),
        Ok(_) => Attempt::Done(RegisterOutput::Done),
        Err(WriteError::ConditionFailed(_)) => Attempt::Done(RegisterOutput::Cas(false)),
        // Nothing was proposed, or what was is known not to have applied.
        Err(WriteError::Unavailable(_) | WriteError::NotLeader(_) | WriteError::NotOwned { .. }) => {
            Attempt::NoEffect
        }
        Err(_) => Attempt::Unknown,
    }
}

/// Runs one operation to a definite answer (`Ok(Some)`) or an unknown outcome (`Ok(None)`), following
/// leader hints a bounded number of times. `Err` means it certainly took no effect (it is left out of
/// the history).
pub(super) async fn perform(
    sim: &SharedSim,
    client: &mut Client,
    key: u64,
    input: RegisterInput,
) -> Result<Option<RegisterOutput>, ()> {
    let replicas = sim.lock().await.config.replicas;
    for _ in 0..4 {
        let gateway = sim.lock().await.gateway(client.leader);
        let Some(gateway) = gateway else {
            client.leader = 1 + client.rng.below(replicas);
            continue;
        };
        sim.lock().await.note(format!("client {} key {key} {input:?} at node {}", client.id, client.leader));
        let seen = client.seen.entry(key).or_default();
        let outcome = attempt(&gateway, &mut client.rng, key, input, seen).await;
        sim.lock().await.note(format!("client {} key {key} {input:?} -> {outcome:?}", client.id));
        match outcome {
            Attempt::Done(output) => return Ok(Some(output)),
            Attempt::Unknown => return Ok(None),
            Attempt::NoEffect => return Err(()),
            Attempt::Redirect(leader) => {
                client.leader = leader.unwrap_or_else(|| 1 + client.rng.below(replicas))
            }
        }
    }
    Err(())
}

/// A client's random workload: reads, writes and compare-and-sets (expecting the value it last read)
/// of random registers, a few dozen milliseconds apart, and the history they make.
#[derive(Default)]
pub(super) struct Workload {
    pub(super) history: Vec<KeyedOperation<u64>>,
    last_seen: HashMap<u64, Option<u64>>,
    n: u64,
}

impl Workload {
    /// Waits a moment, then picks the next operation: its register and input.
    pub(super) async fn next(&mut self, client: &mut Client, keys: u64) -> (u64, RegisterInput) {
        self.n += 1;
        tokio::time::sleep(client.rng.millis(0, 50)).await;
        let key = client.rng.below(keys);
        let value = client.id * 1_000_000 + self.n;
        let input = match client.rng.below(10) {
            0..=3 => RegisterInput::Read,
            4..=6 => RegisterInput::Write(value),
            _ => RegisterInput::Cas { expect: self.last_seen.get(&key).copied().flatten(), new: value },
        };
        (key, input)
    }

    /// Records an operation called at `call` that may have taken effect (`output` none: unknown).
    pub(super) fn record(
        &mut self,
        clock: &Clock,
        client: u64,
        key: u64,
        input: RegisterInput,
        call: u64,
        output: Option<RegisterOutput>,
    ) {
        let ret = output.map(|_| clock.tick());
        if let Some(RegisterOutput::Read(v)) = output {
            self.last_seen.insert(key, v);
        }
        self.history.push((key, Operation { client, call, ret, input, output }));
    }
}

pub(super) async fn client_loop(
    sim: SharedSim,
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

/// Injects faults until `done`: partitions and heals, loss, delay, crashes (a minority at a time) and
/// restarts.
pub(super) async fn fault_loop(
    sim: SharedSim,
    mut rng: SimRng,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), String> {
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(100, 1200)).await;
        let mut sim = sim.lock().await;
        let n = sim.config.replicas;
        let up = sim.up();
        let kind = match rng.below(7) {
            k @ 0..=4 => disturb(&mut sim.net.lock(), &mut rng, k, n),
            5 if (n - up.len() as u64) < (n - 1) / 2 || up.len() as u64 == n => {
                let victim = up[rng.below(up.len() as u64) as usize];
                sim.crash(victim).await;
                continue;
            }
            _ => {
                let down: Vec<u64> = (1..=n).filter(|id| !up.contains(id)).collect();
                if down.is_empty() {
                    continue;
                }
                let id = down[rng.below(down.len() as u64) as usize];
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

/// A network fault of kind `kind` (0 to 4) among nodes `1..=n`: a random partition, a heal, message
/// loss or delay. Returns its name.
pub(super) fn disturb(net: &mut Net, rng: &mut SimRng, kind: u64, n: u64) -> &'static str {
    match kind {
        0 => {
            let side: BTreeSet<u64> = (1..=n).filter(|_| rng.chance(50)).collect();
            for a in 1..=n {
                for b in 1..=n {
                    if side.contains(&a) != side.contains(&b) {
                        net.cut.insert((a, b));
                    }
                }
            }
            "partition"
        }
        1 | 2 => {
            net.cut.clear();
            "heal"
        }
        3 => {
            net.loss_percent = rng.below(20);
            "loss"
        }
        _ => {
            net.max_delay_ms = rng.below(60);
            "delay"
        }
    }
}

/// Runs a consistency check through the current leader every few simulated seconds until `done`.
pub(super) async fn check_loop(sim: SharedSim, mut rng: SimRng, done: Arc<std::sync::atomic::AtomicBool>) {
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(1000, 3000)).await;
        let leader = {
            let s = sim.lock().await;
            s.up().into_iter().filter_map(|id| s.replica(id)).find(|r| r.status().role == Role::Leader)
        };
        if let Some(leader) = leader {
            let outcome = leader.check_consistency(WRITE_TIMEOUT).await;
            let mut s = sim.lock().await;
            if outcome.is_ok() {
                s.report.checks += 1;
            }
            s.note(format!("consistency check: {outcome:?}"));
        }
    }
}
