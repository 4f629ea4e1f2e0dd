//! The types the server's modules share: reads, writes and their options, tokens, consistency levels
//! and routes. A leaf: it imports no other module of this crate but the error and parameter parsing,
//! so the handlers, routing and the node all depend on it and not on each other.

use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;

pub use cairn_kv::{Condition, Versioned};

/// Options of a read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read the newest version at or below this timestamp (`None`: the newest).
    pub at: Option<Timestamp>,
    /// How fresh the read must be (replicated stores).
    pub consistency: Consistency,
    /// Tokens of earlier writes an eventual read must see (read-your-writes).
    pub after: Vec<Token>,
    /// Set on a request another cluster node forwarded here (see the routing module).
    pub route: Option<Route>,
}

/// What a read returns, and how stale it may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read<T> {
    /// The answer.
    pub value: T,
    /// Eventual reads of a replicated store: committed entries the answering replica had not applied
    /// (the most over the shards read). 0 otherwise.
    pub behind: u64,
}

/// An acknowledged write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The version's timestamp.
    pub timestamp: Timestamp,
    /// Replicated stores: where the write is in its shard's log (for read-your-writes).
    pub token: Option<Token>,
}

/// Largest `limit` of one range request.
pub const MAX_SCAN_LIMIT: usize = 10_000;
/// Default `limit` of a range request.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Live keys in order, each with its version.
    pub rows: Vec<(Vec<u8>, Versioned)>,
    /// Where the next page starts, if the scan stopped before the end of its range.
    pub resume: Option<Vec<u8>>,
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

/// The shard a forwarded request routed to, and that shard's epoch in the sender's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The shard.
    pub shard: cairn_cluster::placement::ShardId,
    /// Its epoch in the sender's map.
    pub epoch: u64,
}
