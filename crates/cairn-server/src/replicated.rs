//! Replicated shards: each of the node's shards is one Raft group with a replica on every member of the
//! static membership (`--node-id`, `--peers`), its state machine the shard's engine (WAL off: the node's
//! Raft log is the log).
//!
//! A write is evaluated ([`cairn_kv::evaluate`]) by the shard's leader, at a timestamp from the
//! leader node's hybrid-logical clock, under latches on its keys, and proposed as rows stamped with
//! the leader's term (see [`Leaders`]); a node that does not lead the shard hands the write to the one
//! that does. Every replica applies the rows, or refuses them alike if the leadership changed before
//! they were appended. A client learns its write's outcome or, if it cannot be known before the request
//! timeout, gets a 503 `outcome_unknown`.
//!
//! Reads pick a consistency level per request; every replica serves every level (a follower asks the
//! leader for a read index, then waits to apply it; see [`cairn_cluster::raft::Replica::read_point`]).

use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::mvcc;
use crate::node::Condition as PutCondition;
use crate::writer::Pending;
use cairn_cluster::raft::{
    Command, CommandResult, GroupError, PeerChannels, RaftService, ReadLevel, ReadPoint, Replica,
    ReplicaConfig, RequestHandler, Written,
};
use cairn_engine::WriteBatch;
use cairn_kv::{DbReader, Evaluated, KvError, LatchGuard, Latches, Outcome, Write};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a node takes part in replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// This node's id (never reused for another node).
    pub node_id: u64,
    /// Every member's gRPC address (node id → `host:port`), this node's included. Every shard has a
    /// replica on each member: the replication factor is the member count (1, 3 or 5).
    pub members: BTreeMap<u64, String>,
    /// How often each shard's leader runs a consistency check through the log (zero: never).
    pub check_interval: Duration,
    /// How long a write or a linearizable read waits for a leader before answering 503.
    pub request_timeout: Duration,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeouts are drawn from this range.
    pub election_timeout: (Duration, Duration),
    /// A Raft snapshot is taken after this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    pub keep_behind_snapshot: u64,
    /// Shard leaders promote re-synced replicas on their own (see [`ReplicaConfig::promote_resynced`]);
    /// off for a cluster member's shards, whose voters the shard map decides.
    pub promote_resynced: bool,
}

impl ReplicationConfig {
    /// Defaults for node `node_id` of `members`.
    pub fn new(node_id: u64, members: BTreeMap<u64, String>) -> ReplicationConfig {
        let raft = ReplicaConfig::default();
        ReplicationConfig {
            node_id,
            members,
            check_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            heartbeat: raft.heartbeat,
            election_timeout: raft.election_timeout,
            snapshot_every: raft.snapshot_every,
            keep_behind_snapshot: raft.keep_behind_snapshot,
            promote_resynced: raft.promote_resynced,
        }
    }

    /// Checks the membership: this node among the members, 1 to 7 of them, ids above zero.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NodeError::Startup(m));
        if !(1..=7).contains(&self.members.len()) {
            return bad(format!(
                "a group has 1 to 7 members (1, 3 or 5 advised), not {}",
                self.members.len()
            ));
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every must be at least 1".into());
        }
        if self.members.contains_key(&0) {
            return bad("node ids start at 1".into());
        }
        if !self.members.contains_key(&self.node_id) {
            return bad(format!("node {} is not among the members {:?}", self.node_id, self.members));
        }
        let mut addrs: Vec<&String> = self.members.values().collect();
        addrs.sort();
        addrs.dedup();
        if addrs.len() != self.members.len() {
            return bad("two members share an address".into());
        }
        Ok(())
    }

    /// Raft settings of every group.
    pub(crate) fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            heartbeat: self.heartbeat,
            election_timeout: self.election_timeout,
            snapshot_every: self.snapshot_every,
            keep_behind_snapshot: self.keep_behind_snapshot,
            check_every: self.check_interval,
            promote_resynced: self.promote_resynced,
            ..ReplicaConfig::default()
        }
    }
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_members(text: &str) -> std::result::Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a node id"))?;
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(members)
}

/// A write's place in its shard's log: a read with this token sees it (read-your-writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token {
    /// The shard (its Raft group).
    pub shard: usize,
    /// The write's log index.
    pub index: u64,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.shard, self.index)
    }
}

/// Most tokens one read accepts.
pub const MAX_TOKENS: usize = 1024;

impl Token {
    /// Parses `SHARD:INDEX,...` (decimal digits; empty: none).
    pub fn parse_list(text: &str) -> Result<Vec<Token>> {
        let bad = || NodeError::InvalidArgument(format!("{text:?} is not a list of SHARD:INDEX tokens"));
        let number = |t: &str| crate::params::parse_number("a token", t, u64::MAX).map_err(|_| bad());
        let mut out = Vec::new();
        if text.is_empty() {
            return Ok(out);
        }
        for part in text.split(',') {
            let (shard, index) = part.split_once(':').ok_or_else(bad)?;
            out.push(Token {
                shard: usize::try_from(number(shard)?).map_err(|_| bad())?,
                index: number(index)?,
            });
            if out.len() > MAX_TOKENS {
                return Err(NodeError::InvalidArgument(format!("at most {MAX_TOKENS} tokens per read")));
            }
        }
        Ok(out)
    }
}

/// A read's required freshness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable through a quorum round (the default).
    #[default]
    Strong,
    /// Linearizable while the leader's lease holds.
    Lease,
    /// Whatever the answering replica applied (after the read's tokens).
    Eventual,
}

impl Consistency {
    /// `strong`, `lease` or `eventual`.
    pub fn parse(text: &str) -> Result<Consistency> {
        match text {
            "strong" | "linearizable" => Ok(Consistency::Strong),
            "lease" => Ok(Consistency::Lease),
            "eventual" | "stale" => Ok(Consistency::Eventual),
            other => Err(NodeError::InvalidArgument(format!(
                "consistency must be strong, lease or eventual, not {other:?}"
            ))),
        }
    }
}

/// Maps a group error to what the API reports.
pub(crate) fn group_error(e: GroupError) -> NodeError {
    match e {
        GroupError::Fenced(why) => NodeError::Unavailable(format!("this replica is fenced: {why}")),
        GroupError::InvalidConfig(why) | GroupError::Membership(why) => NodeError::Internal(why),
        GroupError::OutcomeUnknown(why) => {
            NodeError::OutcomeUnknown(format!("the outcome is unknown: {why}"))
        }
        e @ GroupError::BeyondCommitted { .. } => {
            NodeError::InvalidArgument(format!("bad token: {e} (tokens come from this cluster's writes)"))
        }
        e => NodeError::Unavailable(e.to_string()),
    }
}

/// Waits until shard `replica` may serve a read at `consistency` (after `token`, if any); retries
/// while no leader is known, until the request timeout.
pub(crate) async fn read_point(
    replica: &Replica,
    consistency: Consistency,
    token: Option<u64>,
    timeout: Duration,
) -> Result<ReadPoint> {
    let level = match (consistency, token) {
        (Consistency::Strong, _) => ReadLevel::Strong,
        (Consistency::Lease, _) => ReadLevel::Lease,
        (Consistency::Eventual, Some(index)) => ReadLevel::AtLeast(index),
        (Consistency::Eventual, None) => ReadLevel::Eventual,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match replica.read_point(level, left).await {
            Ok(point) => return Ok(point),
            // An election is under way (or the leader just moved): try again shortly.
            Err(GroupError::NotLeader { .. } | GroupError::Timeout(_))
                if tokio::time::Instant::now() + backoff < deadline =>
            {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(group_error(e)),
        }
    }
}

/// What a replicated write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Committed {
    /// The version's timestamp; `None` for a delete of an absent key (nothing written).
    pub timestamp: Option<Timestamp>,
    /// The log index that decided it.
    pub index: u64,
}

/// A write another node hands to this node's leader replica: the write and how long it may take (ms).
#[derive(Serialize, Deserialize)]
struct Forwarded {
    write: Write,
    timeout_ms: u64,
}

/// Most rounds one write makes to find the leader (a pause after each that found none, or reached a
/// leader that had just lost the role: nothing was proposed then).
const MAX_ROUNDS: usize = 16;
/// Most evaluations of one write on the leader: a second when the first landed above a newer version
/// an earlier leader's clock stamped (see [`Leaders::evaluate`]).
const MAX_EVALUATIONS: usize = 2;

/// Evaluates the writes of the shard groups this node leads: its own clients' and those other nodes
/// hand over ([`RequestHandler`]). The leader picks each write's timestamp from this node's clock,
/// evaluates it ([`cairn_kv::evaluate`]) against its replica while it holds latches on the write's
/// keys, and proposes the rows as a [`Command::Evaluated`] of its term; the latches are held until
/// the command applies, so the next write on those keys reads what this one wrote, and a command
/// whose leader lost the role before it was appended is refused at apply
/// ([`CommandResult::WrongTerm`]) rather than applied against a state it was not evaluated on.
pub(crate) struct Leaders {
    pending: Arc<Pending>,
    total_buckets: u32,
    timeout: Duration,
    /// The largest command that fits in one message (and so always replicates).
    max_command_bytes: usize,
    latches: parking_lot::Mutex<std::collections::HashMap<u64, Arc<Latches>>>,
}

impl std::fmt::Debug for Leaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaders").field("groups", &self.latches.lock().len()).finish()
    }
}

/// How a round of a write ended when it did not answer the client.
enum Round {
    /// Evaluate again, wherever the leader now is (nothing of this round will apply).
    Again(String),
    /// Answer the client.
    Done(Result<Committed>),
}

impl Leaders {
    pub(crate) fn new(
        pending: Arc<Pending>,
        total_buckets: u32,
        timeout: Duration,
        max_command_bytes: usize,
    ) -> Arc<Leaders> {
        Arc::new(Leaders { pending, total_buckets, timeout, max_command_bytes, latches: Default::default() })
    }

    fn latches(&self, group: u64) -> Arc<Latches> {
        Arc::clone(self.latches.lock().entry(group).or_default())
    }

    /// Writes `op` through `replica`'s group: evaluated here if this replica leads, otherwise handed to
    /// the leader's node, which evaluates it and answers. Goes round again, after a pause, while no
    /// leader is known or the one reached had just lost the role (nothing was proposed then).
    pub(crate) async fn write(self: &Arc<Self>, replica: &Replica, op: Write) -> Result<Committed> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut why = String::from("no leader is known");
        let mut backoff = Duration::from_millis(10);
        for _ in 0..MAX_ROUNDS {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let round = match replica.leading_term(left).await {
                Ok(term) => self.lead(replica, &op, term, deadline).await,
                Err(GroupError::NotLeader { leader: Some(_) }) => self.forward(replica, &op, left).await,
                Err(GroupError::NotLeader { leader: None }) => Round::Again("no leader is known".into()),
                Err(GroupError::Timeout(w)) => Round::Again(w),
                Err(e) => Round::Done(Err(group_error(e))),
            };
            match round {
                Round::Done(outcome) => return outcome,
                Round::Again(w) => why = w,
            }
            if tokio::time::Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(NodeError::Unavailable(format!("no leader took the write in time ({why}): retry")))
    }

    /// Hands `op` to the leader's node.
    async fn forward(&self, replica: &Replica, op: &Write, left: Duration) -> Round {
        let request =
            Forwarded { write: op.clone(), timeout_ms: left.as_millis().try_into().unwrap_or(u64::MAX) };
        let request = match postcard::to_stdvec(&request) {
            Ok(r) => r,
            Err(e) => return Round::Done(Err(NodeError::Internal(format!("cannot encode a write: {e}")))),
        };
        match replica.forward_request(request, left).await {
            Ok(answer) => match postcard::from_bytes::<std::result::Result<Committed, WireError>>(&answer) {
                Ok(Ok(committed)) => Round::Done(Ok(committed)),
                Ok(Err(WireError::NotLeader(why))) => Round::Again(why),
                Ok(Err(e)) => Round::Done(Err(e.into())),
                Err(e) => {
                    Round::Done(Err(NodeError::Internal(format!("the leader's answer does not decode: {e}"))))
                }
            },
            Err(GroupError::NotLeader { .. }) => {
                Round::Again("the leader's node did not take the write".into())
            }
            Err(e) => Round::Done(Err(group_error(e))),
        }
    }

    /// Evaluates a write another node handed over, if this replica still leads (otherwise the sender
    /// goes round again).
    async fn serve(self: Arc<Self>, replica: Replica, request: Vec<u8>) -> Vec<u8> {
        let answer = match postcard::from_bytes::<Forwarded>(&request) {
            Err(e) => Err(WireError::Internal(format!("a forwarded write does not decode: {e}"))),
            Ok(Forwarded { write, timeout_ms }) => {
                let timeout = Duration::from_millis(timeout_ms).min(self.timeout);
                let deadline = tokio::time::Instant::now() + timeout;
                let round = match replica.leading_term(timeout).await {
                    Ok(term) => self.lead(&replica, &write, term, deadline).await,
                    Err(e) => Round::Again(e.to_string()),
                };
                match round {
                    Round::Done(outcome) => outcome.map_err(WireError::from),
                    Round::Again(why) => Err(WireError::NotLeader(why)),
                }
            }
        };
        postcard::to_stdvec(&answer).unwrap_or_default()
    }

    /// One evaluation of `op` as the leader of `term`, and its proposal.
    async fn lead(&self, replica: &Replica, op: &Write, term: u64, deadline: tokio::time::Instant) -> Round {
        if let Write::Put { condition: PutCondition::IfTimestamp(want), .. } = op {
            // The new version must sort after the one it replaces.
            if let Err(e) = self.pending.clock().observe(*want) {
                return Round::Done(Err(e.into()));
            }
        }
        let latches = self.latches(replica.group()).acquire(op.keys()).await;
        let mut stamps = Vec::new();
        let evaluated = self.evaluate(replica, op, term, &mut stamps, deadline).await;
        let round = match evaluated {
            Ok(Some((command, at))) => self.propose(replica, op, command, at, latches, deadline).await,
            Ok(None) => {
                // Nothing to write: this replica's state is current for the latched keys.
                let index = replica.status().applied.unwrap_or_default();
                Round::Done(Ok(Committed { timestamp: None, index }))
            }
            Err(e) => Round::Done(Err(e)),
        };
        self.pending.end(&stamps);
        round
    }

    /// Evaluates `op` on the leader's replica at a timestamp of this node's clock: the command to
    /// propose and the write's timestamp, or `None` if it writes nothing.
    async fn evaluate(
        &self,
        replica: &Replica,
        op: &Write,
        term: u64,
        stamps: &mut Vec<Timestamp>,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(Command, Timestamp)>> {
        let mut waited_for_clock = false;
        for _ in 0..MAX_EVALUATIONS + 1 {
            let ts = self.pending.begin();
            stamps.push(ts);
            let db = replica.db();
            let reader = DbReader { db: &db, total_buckets: self.total_buckets };
            let mut batch = WriteBatch::new();
            let limit = self.pending.clock().limit();
            match cairn_kv::evaluate(op, &reader, ts, limit, self.total_buckets, &mut batch) {
                Ok(Evaluated { outcome: Outcome::Unchanged, .. }) => return Ok(None),
                Ok(Evaluated { outcome: Outcome::Written(at), .. }) if at > ts => {
                    // Above a newer version an earlier leader's clock stamped: evaluated again at a
                    // timestamp of this node's clock past it, never at the pushed one, which another
                    // write evaluated against the same version could share.
                    let _ = self.pending.clock().observe(at);
                }
                Ok(Evaluated { outcome: Outcome::Written(at), .. }) => {
                    let command = Command::evaluated(term, &batch);
                    if command.approx_bytes() > self.max_command_bytes {
                        // The request checks keep writes well under this: a guard, not a path.
                        return Err(NodeError::TooLarge(format!(
                            "the write takes {} bytes as a Raft command, over the limit of {} bytes",
                            command.approx_bytes(),
                            self.max_command_bytes
                        )));
                    }
                    return Ok(Some((command, at)));
                }
                Err(KvError::TooFarAhead { latest, limit }) if !waited_for_clock => {
                    // A version up to twice the maximum offset ahead (another node's clock may run
                    // that far ahead of this one's) is waited for: the physical clock catches up, the
                    // clock never jumps past its bound. One further ahead is refused.
                    let ahead = Duration::from_nanos(latest.wall_time.saturating_sub(limit.wall_time));
                    if ahead > self.pending.clock().max_offset() {
                        return Err(KvError::TooFarAhead { latest, limit }.into());
                    }
                    waited_for_clock = true;
                    let wake = deadline.min(tokio::time::Instant::now() + ahead + Duration::from_millis(1));
                    tokio::time::sleep_until(wake).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(NodeError::Unavailable("the write's keys kept moving ahead of this node's clock: retry".into()))
    }

    /// Proposes `command` (the evaluation of `op` at `at`) and waits for its outcome until `deadline`.
    /// The proposal runs in a task of its own holding `latches` until the group decides it: a client
    /// that stops waiting (its deadline passed) does not free the keys of a command that may still
    /// apply.
    async fn propose(
        &self,
        replica: &Replica,
        op: &Write,
        command: Command,
        at: Timestamp,
        latches: LatchGuard,
        deadline: tokio::time::Instant,
    ) -> Round {
        let proposer = replica.clone();
        let proposal = tokio::spawn(async move {
            let _latches = latches;
            // No timeout of its own: openraft answers once the entry applied or the leader lost the
            // role.
            proposer.propose_here(command, Duration::MAX).await
        });
        let outcome = match tokio::time::timeout_at(deadline, proposal).await {
            Err(_) => {
                return Round::Done(Err(NodeError::OutcomeUnknown(
                    "the write was proposed but not applied in time: read the key before retrying".into(),
                )));
            }
            Ok(Err(e)) => return Round::Done(Err(NodeError::Internal(format!("proposal task failed: {e}")))),
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            Ok(Written { index, result: CommandResult::Applied }) => {
                Round::Done(Ok(Committed { timestamp: Some(at), index }))
            }
            Ok(Written { result: CommandResult::WrongTerm { evaluated, appended }, .. }) => {
                Round::Again(format!("evaluated in term {evaluated}, appended in term {appended}"))
            }
            Ok(Written { result, .. }) => {
                Round::Done(Err(NodeError::Internal(format!("the shard refused a write: {result:?}"))))
            }
            // Nothing was appended.
            Err(GroupError::NotLeader { .. }) => Round::Again("this replica lost the leadership".into()),
            Err(GroupError::OutcomeUnknown(why)) => self.settle(replica, op, at, why, deadline).await,
            Err(e) => Round::Done(Err(group_error(e))),
        }
    }

    /// Finds out whether a command appended while this replica led, whose leader lost the role before
    /// it applied, was applied after all: once this replica has applied what the current leader has
    /// committed (at least its first entry, after any entry of the old term that survives), the key's
    /// version row at `at` tells. If the command did not apply, it never will, and the write goes
    /// round again.
    async fn settle(
        &self,
        replica: &Replica,
        op: &Write,
        at: Timestamp,
        why: String,
        deadline: tokio::time::Instant,
    ) -> Round {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let point = match replica.read_point(ReadLevel::Strong, left).await {
            Ok(point) => point,
            Err(e) => {
                return Round::Done(Err(NodeError::OutcomeUnknown(format!(
                    "the write's outcome is unknown ({why}) and no leader confirmed it in time ({e}): read \
                     the key before retrying"
                ))));
            }
        };
        let Some((key, column)) = op.witness() else {
            return Round::Again(why);
        };
        let bucket = mvcc::bucket_of(key, self.total_buckets);
        match replica.db().get(bucket, &mvcc::version_key(key, at)) {
            Ok(row) if row.as_ref().and_then(|r| r.column(0)) == Some(column.as_slice()) => {
                Round::Done(Ok(Committed { timestamp: Some(at), index: point.applied }))
            }
            Ok(_) => Round::Again(why),
            Err(e) => Round::Done(Err(e.into())),
        }
    }
}

impl RequestHandler for Leaders {
    fn handle(self: Arc<Self>, replica: Replica, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        Box::pin(self.serve(replica, request))
    }
}

/// A leader's refusal or failure, as it travels back to the node that handed it the write.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    /// The replica no longer leads: the sender goes round again.
    NotLeader(String),
    InvalidArgument(String),
    OutOfRange(String),
    TooLarge(String),
    Precondition(String),
    Unavailable(String),
    OutcomeUnknown(String),
    Internal(String),
}

impl From<NodeError> for WireError {
    fn from(e: NodeError) -> WireError {
        let message = e.to_string();
        match e {
            NodeError::NotLeader(_) => WireError::NotLeader(message),
            NodeError::InvalidArgument(_) => WireError::InvalidArgument(message),
            NodeError::OutOfRange(_) => WireError::OutOfRange(message),
            NodeError::TooLarge(_) => WireError::TooLarge(message),
            NodeError::Precondition(_) => WireError::Precondition(message),
            NodeError::OutcomeUnknown(_) => WireError::OutcomeUnknown(message),
            e if e.http_status() == 503 => WireError::Unavailable(message),
            e if e.http_status() == 400 => WireError::InvalidArgument(message),
            _ => WireError::Internal(message),
        }
    }
}

impl From<WireError> for NodeError {
    fn from(e: WireError) -> NodeError {
        match e {
            WireError::NotLeader(m) => NodeError::NotLeader(m),
            WireError::InvalidArgument(m) => NodeError::InvalidArgument(m),
            WireError::OutOfRange(m) => NodeError::OutOfRange(m),
            WireError::TooLarge(m) => NodeError::TooLarge(m),
            WireError::Precondition(m) => NodeError::Precondition(m),
            WireError::Unavailable(m) => NodeError::Unavailable(m),
            WireError::OutcomeUnknown(m) => NodeError::OutcomeUnknown(m),
            WireError::Internal(m) => NodeError::Internal(m),
        }
    }
}

/// The node's Raft plumbing shared by its groups.
#[derive(Clone)]
pub(crate) struct Plumbing {
    /// Answers peers' Raft calls for every group on this node.
    pub service: RaftService,
    /// One connection per peer, shared by every group.
    pub wire: PeerChannels,
    /// The node's Raft log.
    pub log: Arc<cairn_cluster::raft_log::RaftLog>,
    /// The node's event stream.
    pub events: Arc<crate::events::Events>,
}

/// Logs shard `shard`'s leader changes and counts them in `changes`, until its replica stops.
pub(crate) async fn watch_leadership(
    group: String,
    replica: Replica,
    changes: Option<Arc<std::sync::atomic::AtomicU64>>,
    events: Arc<crate::events::Events>,
) {
    use crate::events::EventKind;
    let mut watch = replica.watch();
    let mut last = watch.leadership();
    let mut installs = replica.status().snapshots_installed;
    while watch.changed().await {
        let (term, leader) = watch.leadership();
        if leader != last.1 && leader.is_some() {
            if let Some(c) = &changes {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::info!(group = %group, term, leader = ?leader, "leader changed");
            events.emit(EventKind::LeaderChanged { group: group.clone(), term, leader });
        }
        last = (term, leader);
        let now = replica.status().snapshots_installed;
        if now > installs {
            installs = now;
            events.emit(EventKind::SnapshotInstalled { group: group.clone(), installs });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_tokens_and_levels_parse_or_say_why_not() {
        let m = parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:1").unwrap();
        assert_eq!(m.len(), 3);
        assert!(parse_members("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_members("x=a:1").is_err());
        assert!(parse_members("1=nohost").is_err());
        let config = ReplicationConfig::new(4, m.clone());
        assert!(config.validate().unwrap_err().to_string().contains("not among"));
        ReplicationConfig::new(2, m).validate().unwrap();
        assert_eq!(
            Token::parse_list("0:5,3:17").unwrap(),
            vec![Token { shard: 0, index: 5 }, Token { shard: 3, index: 17 }]
        );
        assert_eq!(Token::parse_list("").unwrap(), vec![]);
        assert!(Token::parse_list("0:").is_err());
        for bad in [",", "0:1,", ",0:1", "+0:1", "0:+1", "0:1 ", "0:1:2"] {
            assert!(Token::parse_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Token { shard: 2, index: 9 }.to_string(), "2:9");
        assert_eq!(Consistency::parse("eventual").unwrap(), Consistency::Eventual);
        assert!(Consistency::parse("sometimes").is_err());
    }
}
