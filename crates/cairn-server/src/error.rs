//! The server's one error type, and how each case maps to HTTP (and, later, gRPC) status codes. Every
//! error a client sees is `{code, message}` with a stable `code`.

/// What can go wrong serving a request (or starting the node).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Malformed input: a bad key encoding, an inverted range, a limit over the maximum, ...
    #[error("{0}")]
    InvalidArgument(String),
    /// A timestamp from a client or peer too far ahead of this node's clock (more than the maximum
    /// clock offset): refused, never observed.
    #[error("{0}")]
    OutOfRange(String),
    /// A read at a timestamp below its shard's GC threshold, whose versions may be gone (REST 400, gRPC
    /// `FAILED_PRECONDITION`, code `below_gc_threshold`).
    #[error("{0}")]
    BelowGcThreshold(String),
    /// The client took too long to send its request.
    #[error("{0}")]
    Timeout(String),
    /// The key has no live value.
    #[error("{0}")]
    NotFound(String),
    /// A key or value over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// A conditional write whose condition does not hold.
    #[error("{0}")]
    Precondition(String),
    /// A transaction that must run again from its start: it was aborted, or its reads or writes
    /// conflicted (REST 409, gRPC `ABORTED`, code `transaction_retry`).
    #[error("{0}")]
    TxnRetry(String),
    /// Overload or shutdown: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A write that may or may not have been applied (its leader changed or a forwarded call failed
    /// after it was sent, and nothing confirmed it in time): read before retrying.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The replica asked to evaluate a write does not lead its shard's group (any more): nothing was
    /// proposed; the write may be sent again, to the leader.
    #[error("{0}")]
    NotLeader(String),
    /// A request another node forwarded here by a stale shard map, or to a node without the shard:
    /// the sender refreshes its map and routes again.
    #[error("{0}")]
    Misrouted(String),
    /// The store cannot be opened.
    #[error("{0}")]
    Startup(String),
    /// A bug or corruption: the store returned something it never wrote.
    #[error("{0}")]
    Internal(String),
    /// The engine failed.
    #[error("storage error: {0}")]
    Engine(#[from] cairn_engine::Error),
}

/// Shorthand.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

impl NodeError {
    /// The HTTP status.
    pub fn http_status(&self) -> u16 {
        match self {
            NodeError::InvalidArgument(_) | NodeError::OutOfRange(_) | NodeError::BelowGcThreshold(_) => 400,
            NodeError::NotFound(_) => 404,
            NodeError::Precondition(_) => 412,
            NodeError::TxnRetry(_) => 409,
            NodeError::Timeout(_) => 408,
            NodeError::TooLarge(_) => 413,
            NodeError::Unavailable(_)
            | NodeError::Misrouted(_)
            | NodeError::OutcomeUnknown(_)
            | NodeError::NotLeader(_) => 503,
            // The bucket's shard split (or moved) since the request was routed: route it again.
            NodeError::Engine(cairn_engine::Error::NotOwned { .. }) => 503,
            NodeError::Engine(cairn_engine::Error::InvalidArgument(_)) => 400,
            NodeError::Engine(cairn_engine::Error::Poisoned(_) | cairn_engine::Error::Closed) => 503,
            NodeError::Startup(_) | NodeError::Internal(_) | NodeError::Engine(_) => 500,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::OutOfRange(_) => return "out_of_range",
            NodeError::OutcomeUnknown(_) => return "outcome_unknown",
            NodeError::BelowGcThreshold(_) => return "below_gc_threshold",
            NodeError::NotLeader(_) => return "not_leader",
            NodeError::TxnRetry(_) => return "transaction_retry",
            _ => {}
        }
        match self.http_status() {
            400 => "invalid_argument",
            404 => "not_found",
            408 => "request_timeout",
            412 => "failed_precondition",
            413 => "too_large",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

impl From<crate::hlc::TimestampAhead> for NodeError {
    fn from(e: crate::hlc::TimestampAhead) -> NodeError {
        NodeError::OutOfRange(e.to_string())
    }
}

impl From<cairn_kv::WriteError> for NodeError {
    fn from(e: cairn_kv::WriteError) -> NodeError {
        use cairn_kv::WriteError as W;
        match e {
            W::NotLeader(m) => NodeError::NotLeader(m),
            W::ConditionFailed(m) => NodeError::Precondition(m),
            W::OutOfRange(m) => NodeError::OutOfRange(m),
            W::TooLarge(m) => NodeError::TooLarge(m),
            W::InvalidArgument(m) => NodeError::InvalidArgument(m),
            W::Unavailable(m) => NodeError::Unavailable(m),
            W::OutcomeUnknown(m) => NodeError::OutcomeUnknown(m),
            W::Internal(m) => NodeError::Internal(m),
            W::NotOwned { bucket } => NodeError::Engine(cairn_engine::Error::NotOwned { bucket }),
            // Until writes wait for transactions, a locked key is a retry later.
            e @ W::LockConflict { .. } => NodeError::Unavailable(format!("{e}: retry")),
            e @ (W::TxnRetry(_) | W::TxnAborted(_) | W::Uncertain { .. }) => {
                NodeError::TxnRetry(e.to_string())
            }
        }
    }
}

impl From<cairn_kv::KvError> for NodeError {
    fn from(e: cairn_kv::KvError) -> NodeError {
        use cairn_kv::KvError;
        match e {
            KvError::ConditionFailed(m) => NodeError::Precondition(m),
            e @ KvError::TooFarAhead { .. } => NodeError::OutOfRange(e.to_string()),
            KvError::Malformed(m) => NodeError::Internal(m),
            KvError::Engine(e) => NodeError::Engine(e),
            e @ KvError::LockConflict { .. } => NodeError::Unavailable(format!("{e}: retry")),
            e @ (KvError::TxnRetry(_) | KvError::TxnAborted(_) | KvError::Uncertain { .. }) => {
                NodeError::TxnRetry(e.to_string())
            }
            KvError::Invalid(m) => NodeError::InvalidArgument(m),
        }
    }
}
