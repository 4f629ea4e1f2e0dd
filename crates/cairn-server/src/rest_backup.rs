//! The backup REST routes of a cluster member (`cairn backup` over HTTP; see the `backup` module):
//! `POST /admin/backups` takes one (answered when it is complete), `GET /admin/backups?url=` lists
//! them, `GET /admin/backups/{id}?url=` shows one, `POST /admin/backups/{id}/verify?url=` reads one
//! back, `DELETE /admin/backups/{id}?url=` deletes one.

use super::{ApiError, ApiResult, AppState, bad, query};
use crate::backup;
use crate::error::NodeError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use cairn_proto::backup as pb;
use serde_json::{Value, json};
use std::sync::Arc;

fn membership(state: &AppState) -> ApiResult<&Arc<crate::cluster::Membership>> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError(NodeError::NotFound("backups are taken by cluster members".into())))
}

/// A backup as JSON.
pub(crate) fn info_json(b: &pb::BackupInfo) -> Value {
    let shards: Vec<Value> = b
        .shards
        .iter()
        .map(|s| {
            let ranges: Vec<[u32; 2]> =
                s.ranges.chunks(2).map(|r| [r[0], r.get(1).copied().unwrap_or(r[0])]).collect();
            json!({"shard": s.shard, "ranges": ranges, "files": s.files, "bytes": s.bytes, "rows": s.rows})
        })
        .collect();
    json!({
        "id": b.id,
        "as_of": b.as_of,
        "created_at_ms": b.created_at_ms,
        "cluster_id": b.cluster_id,
        "total_buckets": b.total_buckets,
        "bytes_uploaded": b.bytes_uploaded,
        "shards": shards,
    })
}

/// The body of `POST /admin/backups`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    to: String,
    #[serde(default)]
    as_of: Option<String>,
    #[serde(default)]
    keep: Option<usize>,
}

/// `POST /admin/backups` with `{"to": URL, "as_of": "WALL.LOGICAL", "keep": N}` (the last two
/// optional): takes a backup of the whole cluster and answers it once complete.
pub(super) async fn create(State(state): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let body: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("a backup is {{\"to\": URL, \"as_of\": \"WALL.LOGICAL\", \"keep\": N}}: {e}"))
    })?;
    let as_of = match body.as_of.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            cairn_kv::hlc::Timestamp::parse(t)
                .ok_or_else(|| bad(format!("as_of {t:?} is not WALL.LOGICAL")))?,
        ),
    };
    let membership = Arc::clone(membership(&state)?);
    let mut progress =
        backup::create(membership, Arc::clone(&state.node), body.to, as_of, body.keep.filter(|k| *k > 0));
    while let Some(p) = progress.recv().await {
        if let Some(done) = p?.done {
            return Ok(Json(info_json(&done)).into_response());
        }
    }
    Err(ApiError(NodeError::Internal("the backup ended without an answer".into())))
}

fn url_param(uri: &Uri) -> ApiResult<String> {
    let params = query(uri, &["url"])?;
    params
        .text("url")?
        .map(str::to_string)
        .ok_or_else(|| bad("parameter \"url\" (where the backups are) is required"))
}

fn id_of(id: &str) -> ApiResult<u64> {
    id.parse().map_err(|_| bad(format!("backup id {id:?} is not a number")))
}

/// `GET /admin/backups?url=URL`: the complete backups there, oldest first.
pub(super) async fn list(State(state): State<AppState>, uri: Uri) -> ApiResult<Response> {
    membership(&state)?;
    let backups = backup::list(url_param(&uri)?).await?;
    Ok(Json(json!({"backups": backups.iter().map(info_json).collect::<Vec<_>>()})).into_response())
}

/// `GET /admin/backups/{id}?url=URL`: one backup.
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    membership(&state)?;
    Ok(Json(info_json(&backup::show(url_param(&uri)?, id_of(&id)?).await?)).into_response())
}

/// `POST /admin/backups/{id}/verify?url=URL`: reads the backup back (500 if it is damaged).
pub(super) async fn verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    membership(&state)?;
    match backup::verify(url_param(&uri)?, id_of(&id)?).await? {
        backup::Verified::Whole(r) => {
            Ok(Json(json!({"shards": r.shards, "files": r.files, "bytes": r.bytes, "rows": r.rows}))
                .into_response())
        }
        backup::Verified::Damaged(m) => Err(ApiError(NodeError::Internal(m))),
    }
}

/// `DELETE /admin/backups/{id}?url=URL`: deletes the backup and what no other backup there shares.
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    membership(&state)?;
    let r = backup::delete(url_param(&uri)?, id_of(&id)?).await?;
    Ok(Json(json!({"deleted": id, "shard_snapshots_removed": r.shard_snapshots_removed})).into_response())
}
