//! Conversions between the server's types and the wire's: errors to gRPC statuses (and back, for
//! forwarded calls), timestamps, tokens, consistency levels, routes and rows. The one place they are
//! written; the gRPC service, routing and cluster membership use them.

use crate::error::{NodeError, Result};
use crate::hlc::Timestamp;
use crate::types::{Consistency, ReadOptions, Route, Token, Versioned};
use cairn_proto::kv;
use tonic::Status;

/// Maps a server error to a gRPC status (the REST mapping is [`NodeError::http_status`]).
pub fn status_of(e: NodeError) -> Status {
    let code = e.code();
    let mut status = status_code_of(e);
    // The stable code REST answers in its body, so that kinds sharing a gRPC code (not leader, retry)
    // stay apart.
    status.metadata_mut().insert(CODE_HEADER, tonic::metadata::MetadataValue::from_static(code));
    status
}

/// The metadata key of an error's stable code (as in REST error bodies: `not_leader`, `unavailable`, ...).
pub const CODE_HEADER: &str = "cairn-code";

fn status_code_of(e: NodeError) -> Status {
    let message = e.to_string();
    match e {
        NodeError::Misrouted(_) | NodeError::Engine(cairn_engine::Error::NotOwned { .. }) => {
            return Status::aborted(message);
        }
        NodeError::OutOfRange(_) => return Status::out_of_range(message),
        // Told apart from a misrouted request by its code header.
        NodeError::TxnRetry(_) => return Status::aborted(message),
        // Not UNAVAILABLE: clients retry that freely, and a write whose outcome is unknown is not
        // safe to send again blindly.
        NodeError::OutcomeUnknown(_) => return Status::unknown(message),
        NodeError::BelowGcThreshold(_) => return Status::failed_precondition(message),
        _ => {}
    }
    match e.http_status() {
        400 => Status::invalid_argument(message),
        404 => Status::not_found(message),
        408 => Status::deadline_exceeded(message),
        412 => Status::failed_precondition(message),
        413 => Status::resource_exhausted(message),
        503 => Status::unavailable(message),
        _ => {
            tracing::error!(error = %message, "gRPC request failed");
            Status::internal(message)
        }
    }
}

/// A meta-group refusal or failure as the REST API answers it (the same classes as [`meta_status`]).
pub fn meta_error(e: cairn_cluster::meta::MetaError) -> NodeError {
    use cairn_cluster::meta::MetaError as M;
    use cairn_cluster::placement::PlacementError as P;
    let message = e.to_string();
    match e {
        M::WrongCluster { .. }
        | M::NodeRemoved(_)
        | M::Placement(P::BadSplit { .. } | P::BadMerge { .. }) => NodeError::Precondition(message),
        M::DuplicateAddress { .. } | M::AlreadyInitialized(_) | M::AlreadyPlaced => {
            NodeError::Precondition(message)
        }
        M::Placement(P::UnknownShard(_)) | M::UnknownNode(_) => NodeError::NotFound(message),
        M::Invalid(_) | M::Placement(_) => NodeError::InvalidArgument(message),
        M::NotInitialized | M::Group(_) | M::Contended(_) => NodeError::Unavailable(message),
        M::Corrupt(_) => NodeError::Internal(message),
    }
}

/// The gRPC status of a meta-group refusal or failure (joins, init, cluster state).
pub fn meta_status(e: cairn_cluster::meta::MetaError) -> Status {
    use cairn_cluster::meta::MetaError as M;
    let message = e.to_string();
    match e {
        M::WrongCluster { .. } | M::NodeRemoved(_) => Status::failed_precondition(message),
        M::DuplicateAddress { .. } | M::AlreadyInitialized(_) | M::AlreadyPlaced => {
            Status::already_exists(message)
        }
        M::Placement(cairn_cluster::placement::PlacementError::UnknownShard(_)) => Status::not_found(message),
        M::Placement(
            cairn_cluster::placement::PlacementError::BadSplit { .. }
            | cairn_cluster::placement::PlacementError::BadMerge { .. },
        ) => Status::failed_precondition(message),
        M::Invalid(_) | M::Placement(_) => Status::invalid_argument(message),
        M::UnknownNode(_) => Status::not_found(message),
        M::NotInitialized | M::Group(_) | M::Contended(_) => Status::unavailable(message),
        M::Corrupt(_) => {
            tracing::error!(error = %message, "meta request failed");
            Status::internal(message)
        }
    }
}

pub fn ts_out(ts: Timestamp) -> kv::Timestamp {
    kv::Timestamp { wall_time: ts.wall_time, logical: ts.logical }
}

pub fn ts_in(ts: kv::Timestamp) -> Timestamp {
    Timestamp { wall_time: ts.wall_time, logical: ts.logical }
}

/// A request's read options.
pub(crate) fn read_options(
    at: Option<kv::Timestamp>,
    consistency: i32,
    after: &str,
    route: Option<kv::Route>,
) -> Result<ReadOptions, Status> {
    let consistency = match kv::Consistency::try_from(consistency) {
        Ok(kv::Consistency::Strong) => Consistency::Strong,
        Ok(kv::Consistency::Lease) => Consistency::Lease,
        Ok(kv::Consistency::Eventual) => Consistency::Eventual,
        Err(_) => return Err(Status::invalid_argument(format!("unknown consistency {consistency}"))),
    };
    let after = Token::parse_list(after).map_err(status_of)?;
    Ok(ReadOptions { at: at.map(ts_in), consistency, after, route: route.map(route_in) })
}

pub(crate) fn route_in(r: kv::Route) -> Route {
    Route { shard: cairn_cluster::placement::ShardId(r.shard), epoch: r.epoch }
}

pub(crate) fn token_text(token: Option<Token>) -> String {
    token.map(|t| t.to_string()).unwrap_or_default()
}

pub(crate) fn row(key: Vec<u8>, v: Versioned) -> kv::Row {
    kv::Row { key, value: v.value, timestamp: Some(ts_out(v.timestamp)) }
}

/// The error a forwarded call's status stands for (the answering node's, as it mapped it).
pub(crate) fn remote(status: &tonic::Status, addr: &str) -> NodeError {
    let message = format!("{} (from {addr})", status.message());
    let code = status.metadata().get(CODE_HEADER).and_then(|c| c.to_str().ok());
    if code == Some("not_leader") {
        return NodeError::NotLeader(message);
    }
    if code == Some("below_gc_threshold") {
        return NodeError::BelowGcThreshold(message);
    }
    if code == Some("transaction_retry") {
        return NodeError::TxnRetry(message);
    }
    match status.code() {
        tonic::Code::InvalidArgument => NodeError::InvalidArgument(message),
        // tonic also answers OUT_OF_RANGE for a message over a size limit (its own, not a node's).
        tonic::Code::OutOfRange if status.message().contains("message length too large") => {
            NodeError::Internal(message)
        }
        tonic::Code::OutOfRange => NodeError::OutOfRange(message),
        tonic::Code::NotFound => NodeError::NotFound(message),
        tonic::Code::FailedPrecondition => NodeError::Precondition(message),
        tonic::Code::ResourceExhausted => NodeError::TooLarge(message),
        tonic::Code::Aborted => NodeError::Misrouted(message),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            NodeError::Unavailable(message)
        }
        tonic::Code::Unknown => NodeError::OutcomeUnknown(message),
        _ => NodeError::Internal(message),
    }
}

/// A forwarded answer's timestamp (always set by the node that answered).
pub(crate) fn ts_required(ts: Option<kv::Timestamp>) -> Result<Timestamp> {
    ts.map(ts_in).ok_or_else(|| NodeError::Internal("a forwarded answer has no timestamp".into()))
}

pub(crate) fn token_in(text: &str) -> Result<Option<Token>> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Token::parse_list(text)?.into_iter().next())
}

pub(crate) fn consistency_out(c: Consistency) -> i32 {
    (match c {
        Consistency::Strong => kv::Consistency::Strong,
        Consistency::Lease => kv::Consistency::Lease,
        Consistency::Eventual => kv::Consistency::Eventual,
    }) as i32
}

pub(crate) fn after_out(options: &ReadOptions) -> String {
    options.after.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    // "Retry" and "the outcome is unknown" were one kind, told apart only by the message.
    #[test]
    fn retry_and_outcome_unknown_are_distinct_kinds() {
        let retry = NodeError::Unavailable("no leader accepted the write in time: retry".into());
        let unknown = NodeError::OutcomeUnknown("the write's outcome is unknown".into());
        assert_eq!((retry.http_status(), retry.code()), (503, "unavailable"));
        assert_eq!((unknown.http_status(), unknown.code()), (503, "outcome_unknown"));
        let not_leader = NodeError::NotLeader("node 2 no longer leads shard 1".into());
        assert_eq!((not_leader.http_status(), not_leader.code()), (503, "not_leader"));
        for (e, code, kind) in [
            (retry, tonic::Code::Unavailable, "unavailable"),
            (unknown, tonic::Code::Unknown, "outcome_unknown"),
            (not_leader, tonic::Code::Unavailable, "not_leader"),
        ] {
            let status = status_of(e);
            assert_eq!(status.code(), code);
            assert_eq!(status.metadata().get(CODE_HEADER).unwrap(), kind);
        }
    }
}
