//! Replicated shards: each of the node's shards is one Raft group with a replica on every member of the
//! static membership (`--node-id`, `--peers`), its state machine the shard's engine (WAL off: the node's
//! Raft log is the log).
//!
//! A write is evaluated ([`cairn_kv::evaluate`]) on the node that received it, against its replica,
//! at a timestamp from its hybrid-logical clock, and proposed as rows with conditions that what the
//! evaluation read still holds (see [`Proposer::write`]): every replica then applies it or refuses it
//! alike, a key's latest row only moves forward, and a copy proposed twice applies once. A client learns
//! its write's outcome or, if no leader answers before the request timeout, gets a retryable 503 saying
//! the outcome is unknown.
//!
//! Reads pick a consistency level per request; every replica serves every level (a follower asks the
//! leader for a read index, then waits to apply it; see [`cairn_cluster::raft::Replica::read_point`]).

use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::mvcc;
use crate::node::Condition as PutCondition;
use crate::writer::Pending;
use cairn_cluster::raft::{
    Command, CommandResult, Condition, GroupError, PeerChannels, RaftService, ReadLevel, ReadPoint, Replica,
    ReplicaConfig, Written,
};
use cairn_engine::{Db, WriteBatch};
use cairn_kv::{DbReader, Depends, KvError, Outcome, Write};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The version's timestamp; `None` for a delete of an absent key (nothing written).
    pub timestamp: Option<Timestamp>,
    /// The log index that decided it.
    pub index: u64,
}

/// Proposes writes to one shard's group.
pub(crate) struct Proposer<'a> {
    pub replica: &'a Replica,
    pub pending: &'a Pending,
    pub total_buckets: u32,
    pub timeout: Duration,
    /// The largest command that fits in one message (and so always replicates).
    pub max_command_bytes: usize,
}

/// Most proposals one write makes that found no leader or got no answer (each after a growing pause).
const MAX_ATTEMPTS: usize = 16;
/// Most times one write is evaluated again, at once, at a later timestamp because a newer version of a
/// key it writes was applied first (a hot key written through several nodes: this replica had not
/// applied the newest version when it evaluated).
const MAX_CLOCK_RETRIES: usize = 64;

/// A write evaluated on this replica.
enum Proposal {
    /// Rows to propose, written at this timestamp if their evaluation's reads still hold at apply.
    Rows(Command, Timestamp),
    /// Nothing to write.
    Nothing,
}

impl Proposer<'_> {
    fn bucket(&self, key: &[u8]) -> u16 {
        mvcc::bucket_of(key, self.total_buckets)
    }

    /// The apply-time check that what evaluation read of `key` still holds.
    fn condition(&self, depends: Depends) -> Condition {
        let column_is = |key: &[u8], value: Option<Vec<u8>>| Condition::ColumnIs {
            bucket: self.bucket(key),
            key: mvcc::latest_key(key),
            column: 1,
            value,
        };
        match depends {
            Depends::Unchanged { key, latest } => {
                column_is(&key, latest.map(|t| mvcc::encode_timestamp(t).to_vec()))
            }
            // No version yet, or the newest is older.
            Depends::OlderThan { key, ts } => Condition::Any(vec![
                column_is(&key, None),
                Condition::ColumnBelow {
                    bucket: self.bucket(&key),
                    key: mvcc::latest_key(&key),
                    column: 1,
                    value: mvcc::encode_timestamp(ts).to_vec(),
                },
            ]),
        }
    }

    /// Evaluates `op` at `ts` on this replica's shard as it has applied it.
    fn evaluate(&self, op: &Write, ts: Timestamp) -> std::result::Result<Proposal, KvError> {
        let db = self.replica.db();
        let reader = DbReader { db: &db, total_buckets: self.total_buckets };
        let mut batch = WriteBatch::new();
        let limit = self.pending.clock().limit();
        let evaluated = cairn_kv::evaluate(op, &reader, ts, limit, self.total_buckets, &mut batch)?;
        Ok(match evaluated.outcome {
            Outcome::Unchanged => Proposal::Nothing,
            Outcome::Written(at) => {
                let conditions = evaluated.depends.into_iter().map(|d| self.condition(d)).collect();
                Proposal::Rows(Command::conditional(conditions, &batch), at)
            }
        })
    }

    /// Whether `db` holds the write of `op` at `ts`.
    fn applied(&self, db: &Db, op: &Write, ts: Timestamp) -> Result<bool> {
        let Some((key, column)) = op.witness() else { return Ok(false) };
        let row = db.get(self.bucket(key), &mvcc::version_key(key, ts))?;
        Ok(row.as_ref().and_then(|r| r.column(0)) == Some(column.as_slice()))
    }

    /// Waits until this replica has applied everything committed when the call began (or at least
    /// `index`): what it then reads is current. Returns the applied index.
    async fn catch_up(&self, index: Option<u64>, deadline: tokio::time::Instant) -> Result<u64> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let point = match index {
            Some(index) => self.replica.read_point(ReadLevel::AtLeast(index), left).await,
            None => self.replica.read_point(ReadLevel::Strong, left).await,
        };
        Ok(point.map_err(group_error)?.applied)
    }

    /// Writes `op` through the group.
    ///
    /// The write is evaluated ([`cairn_kv::evaluate`]) on this replica and proposed with conditions
    /// that its reads still hold when it applies, so every replica decides alike; a replica that had
    /// not applied the newest versions evaluates again once it has. An outcome that writes nothing (a
    /// failed condition, a delete of an absent key) is only answered from a replica that has caught up
    /// with the leader. The conditions also make a command idempotent: once applied, a second copy
    /// fails them. So a write whose outcome is unknown (the leader changed, a reply was lost) is
    /// proposed again, unchanged; the copy that commits either applies (the first never will: Raft's
    /// log matching) or fails its conditions, and then the key's version row at the write's timestamp
    /// tells whether the first applied.
    pub(crate) async fn write(&self, op: &Write) -> Result<Committed> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if let Write::Put { condition: PutCondition::IfTimestamp(want), .. } = op {
            // The new version must sort after the one it replaces.
            self.pending.clock().observe(*want)?;
        }
        let mut stamps = Vec::new();
        let outcome = self.evaluations(op, &mut stamps, deadline).await;
        self.pending.end(&stamps);
        outcome
    }

    async fn evaluations(
        &self,
        op: &Write,
        stamps: &mut Vec<Timestamp>,
        deadline: tokio::time::Instant,
    ) -> Result<Committed> {
        // The log index this replica had applied, known to be current, when it last evaluated.
        let mut current: Option<u64> = None;
        let mut waited_for_clock = false;
        for _ in 0..=MAX_CLOCK_RETRIES {
            let ts = self.pending.begin();
            stamps.push(ts);
            let (command, at) = match self.evaluate(op, ts) {
                Ok(Proposal::Rows(_, at)) if at > ts => {
                    // Written above a newer version: evaluated again at a timestamp of this node's own
                    // clock past it, never at the pushed one, which another write evaluated against the
                    // same version would share (and the witness below could not tell them apart).
                    let _ = self.pending.clock().observe(at);
                    continue;
                }
                Ok(Proposal::Rows(command, at)) => (command, at),
                Ok(Proposal::Nothing) | Err(KvError::ConditionFailed(_)) if current.is_none() => {
                    current = Some(self.catch_up(None, deadline).await?);
                    continue;
                }
                Ok(Proposal::Nothing) => {
                    return Ok(Committed { timestamp: None, index: current.unwrap_or_default() });
                }
                Err(KvError::TooFarAhead { latest, limit }) if !waited_for_clock => {
                    // Another node may have stamped the version up to the maximum offset ahead of its
                    // own clock, which may itself run ahead of this one's: a version up to twice the
                    // offset ahead is waited for (the physical clock catches up; the clock never jumps
                    // past its bound); one further ahead is refused.
                    let ahead = Duration::from_nanos(latest.wall_time.saturating_sub(limit.wall_time));
                    if ahead > self.pending.clock().max_offset() {
                        return Err(KvError::TooFarAhead { latest, limit }.into());
                    }
                    waited_for_clock = true;
                    let wake = deadline.min(tokio::time::Instant::now() + ahead + Duration::from_millis(1));
                    tokio::time::sleep_until(wake).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match self.propose(command, deadline).await? {
                Written { index, result: CommandResult::Applied } => {
                    return Ok(Committed { timestamp: Some(at), index });
                }
                Written { index, result: CommandResult::ConditionFailed } => {
                    // The entry was applied on the leader; once this replica has got there too, it
                    // either holds the write (an earlier copy applied) or evaluates again on what
                    // changed, at once (a pause would only let newer writes by).
                    current = Some(self.catch_up(Some(index), deadline).await?);
                    if self.applied(&self.replica.db(), op, at)? {
                        return Ok(Committed { timestamp: Some(at), index });
                    }
                }
                Written { result, .. } => {
                    return Err(NodeError::Internal(format!("the shard refused a write: {result:?}")));
                }
            }
        }
        Err(NodeError::Unavailable(format!(
            "{MAX_CLOCK_RETRIES} newer versions of the key were written first, each while this write was on \
             its way to the leader: retry"
        )))
    }

    /// Proposes `command` until the group decides it: again, unchanged, while no leader is known or
    /// none answers (see [`Proposer::write`]).
    async fn propose(&self, command: Command, deadline: tokio::time::Instant) -> Result<Written> {
        if command.approx_bytes() > self.max_command_bytes {
            // The request checks keep writes well under this: a guard, not a path.
            return Err(NodeError::TooLarge(format!(
                "the write takes {} bytes as a Raft command, over the limit of {} bytes",
                command.approx_bytes(),
                self.max_command_bytes
            )));
        }
        let mut unknown: Option<String> = None;
        let mut backoff = Duration::from_millis(10);
        for _ in 0..MAX_ATTEMPTS {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.replica.write(command.clone(), left).await {
                Ok(written) => return Ok(written),
                Err(GroupError::OutcomeUnknown(why)) => unknown = Some(why),
                Err(GroupError::NotLeader { .. } | GroupError::Timeout(_)) => {}
                Err(e) => return Err(group_error(e)),
            }
            // No leader, or no answer: the same command again, shortly.
            if tokio::time::Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(match unknown {
            Some(why) => NodeError::OutcomeUnknown(format!(
                "the write's outcome is unknown ({why}) and no leader confirmed it in time: read the key \
                 before retrying"
            )),
            None => NodeError::Unavailable("no leader accepted the write in time: retry".into()),
        })
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
