//! `POST /kv/rest/txn`: a list of reads, conditional writes and deletes run as one transaction,
//! retried from the start (up to [`MAX_ATTEMPTS`] times) while the transaction conflicts.
//!
//! ```text
//! {"isolation": "serializable" | "snapshot",            (optional; serializable by default)
//!  "ops": [{"op": "get", "key": "a"},
//!          {"op": "put", "key": "b", "value": "1", "if_absent": true},
//!          {"op": "put", "key": "c", "value_b64": "AAE=", "if_timestamp": "1700000000000000000.0"},
//!          (a timestamp also as the API answers it: {"wall_time": W, "logical": L})
//!          {"op": "delete", "key_b64": "AA=="}]}
//! ```
//!
//! Keys and values are UTF-8 strings (`key`, `value`) or base64 (`key_b64`, `value_b64`). The answer
//! lists each operation's result in order (a get's `value`, as `GET /kv/rest/entry` gives it, or
//! null), the commit timestamp and how many attempts it took. Writes wait for the commit, and go with
//! it in one Raft command when they all fall in one shard. A failed condition answers 412 and
//! nothing is written; a transaction that still conflicts after the last attempt answers 409
//! (`transaction_retry`).

use super::{ApiError, ApiResult, AppState, bad, ts_json, version_json};
use crate::error::NodeError;
use crate::hlc::Timestamp;
use crate::txn_coord::Txn;
use crate::types::{Condition, Versioned};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cairn_kv::txn::Isolation;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Most attempts of one transaction.
pub const MAX_ATTEMPTS: u32 = 20;
/// Most operations in one request.
pub const MAX_OPS: usize = 1_000;
/// The largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    isolation: Option<String>,
    ops: Vec<OpJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpJson {
    op: String,
    key: Option<String>,
    key_b64: Option<String>,
    value: Option<String>,
    value_b64: Option<String>,
    #[serde(default)]
    if_absent: bool,
    if_timestamp: Option<Value>,
}

/// A timestamp as the REST API writes it (`{"wall_time": W, "logical": L}`) or as a query parameter
/// takes it (`"W.L"`).
fn timestamp(v: &Value) -> ApiResult<Timestamp> {
    let parsed = match v {
        Value::String(t) => Timestamp::parse(t),
        Value::Object(o) if o.len() == 2 => {
            match (o.get("wall_time").and_then(Value::as_u64), o.get("logical")) {
                (Some(wall_time), Some(l)) => l
                    .as_u64()
                    .and_then(|l| u32::try_from(l).ok())
                    .map(|logical| Timestamp { wall_time, logical }),
                _ => None,
            }
        }
        _ => None,
    };
    parsed
        .ok_or_else(|| bad(format!("bad timestamp {v}: \"WALL.LOGICAL\" or {{\"wall_time\", \"logical\"}}")))
}

/// One operation, validated.
enum Op {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>, Condition),
    Delete(Vec<u8>),
}

fn bytes(text: Option<String>, b64: Option<String>, what: &str) -> ApiResult<Option<Vec<u8>>> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(bad(format!("give {what} or {what}_b64, not both"))),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => B64.decode(b).map(Some).map_err(|e| bad(format!("{what}_b64 is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

fn parse(body: TxnBody) -> ApiResult<(Isolation, Vec<Op>)> {
    let isolation = match body.isolation.as_deref() {
        None | Some("serializable") => Isolation::Serializable,
        Some("snapshot") => Isolation::Snapshot,
        Some(other) => return Err(bad(format!("unknown isolation {other:?}: serializable or snapshot"))),
    };
    if body.ops.len() > MAX_OPS {
        return Err(bad(format!("a transaction has at most {MAX_OPS} operations")));
    }
    let mut ops = Vec::with_capacity(body.ops.len());
    for op in body.ops {
        let key = bytes(op.key, op.key_b64, "key")?.ok_or_else(|| bad("an operation needs a key"))?;
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        let value = bytes(op.value, op.value_b64, "value")?;
        let condition = match (op.if_absent, op.if_timestamp) {
            (true, Some(_)) => return Err(bad("give at most one of if_absent and if_timestamp")),
            (true, None) => Condition::IfAbsent,
            (false, Some(t)) => Condition::IfTimestamp(timestamp(&t)?),
            (false, None) => Condition::None,
        };
        ops.push(match (op.op.as_str(), value) {
            ("get", None) if condition == Condition::None => Op::Get(key),
            ("put", Some(value)) => Op::Put(key, value, condition),
            ("delete", None) if condition == Condition::None => Op::Delete(key),
            ("get" | "delete", _) => return Err(bad(format!("a {} takes only a key", op.op))),
            ("put", None) => return Err(bad("a put needs a value")),
            (other, _) => return Err(bad(format!("unknown operation {other:?}: get, put or delete"))),
        });
    }
    Ok((isolation, ops))
}

/// Runs `ops` in `txn`: each get's value.
async fn run(txn: &mut Txn, ops: &[Op]) -> crate::error::Result<Vec<Value>> {
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            Op::Get(key) => match txn.get(key).await? {
                Some((value, timestamp)) => version_json(&Versioned { value, timestamp }),
                None => Value::Null,
            },
            // Every write waits for the commit (one command with it when all fall in one shard).
            Op::Put(key, value, condition) => {
                txn.put_at_commit(key, Some(value.clone()), *condition)?;
                Value::Null
            }
            Op::Delete(key) => {
                txn.put_at_commit(key, None, Condition::None)?;
                Value::Null
            }
        });
    }
    Ok(results)
}

/// `POST /kv/rest/txn` (see the module's description).
pub(super) async fn txn(State(state): State<AppState>, body: Body) -> ApiResult<Json<Value>> {
    let body = tokio::time::timeout(state.body_read_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError(NodeError::Timeout("the request body did not arrive in time".into())))?
        .map_err(|e| bad(format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}")))?;
    let body: TxnBody = serde_json::from_slice(&body).map_err(|e| bad(format!("bad transaction: {e}")))?;
    let (isolation, ops) = parse(body)?;
    for op in &ops {
        match op {
            Op::Get(key) | Op::Delete(key) => state.node.check_txn_op(key, None, Condition::None)?,
            Op::Put(key, value, condition) => state.node.check_txn_op(key, Some(value), *condition)?,
        }
    }
    let mut pause = Duration::from_millis(2);
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut txn = Txn::begin(std::sync::Arc::clone(&state.node), isolation)?;
        let outcome = match run(&mut txn, &ops).await {
            Ok(results) => txn.commit().await.map(|ts| (results, ts)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((results, ts)) => {
                return Ok(Json(json!({"results": results, "timestamp": ts_json(ts), "attempts": attempt})));
            }
            Err(e @ NodeError::TxnRetry(_)) => {
                txn.rollback().await?;
                last = Some(e);
            }
            Err(e) => {
                txn.rollback().await?;
                return Err(ApiError(e));
            }
        }
        // Apart, so that the transactions that conflicted do not meet again at once.
        let jitter = Duration::from_micros(u64::from(txn.id().0[19]) * 20);
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Err(ApiError(last.unwrap_or_else(|| NodeError::TxnRetry("the transaction kept conflicting".into()))))
}
