//! The admin REST routes of a cluster member: the shards (`GET /admin/shards`, splits and merges), the
//! cluster settings (`GET /admin/settings`, `PUT /admin/settings/{name}`) and protected timestamps
//! (`GET` and `POST /admin/protected`, `DELETE /admin/protected/{id}`).

use super::{ApiError, ApiResult, AppState, bad, query};
use crate::error::NodeError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// The cluster membership behind an admin route (404 on a standalone node).
fn membership(state: &AppState) -> ApiResult<&Arc<crate::cluster::Membership>> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError(NodeError::NotFound("this node is not a cluster member".into())))
}

/// `GET /admin/shards`: the shard map as the meta group's leader holds it.
pub(super) async fn list_shards(State(state): State<AppState>) -> ApiResult<Response> {
    let map = membership(&state)?.shard_map().await.map_err(crate::wire::meta_error)?;
    Ok(Json(crate::cluster::admin::list_json(&map)).into_response())
}

/// `POST /admin/shards/{id}/split[?at=BUCKET]`: marks the shard to split at the bucket, by default the
/// one that halves its live data (answered once the split is under way, with the new shard's id and
/// the bucket).
pub(super) async fn split_shard(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let shard = id.parse::<u32>().map_err(|_| bad(format!("shard id {id:?} is not a number")))?;
    let params = query(&uri, &["at"])?;
    let at = match params.number("at", u64::from(u16::MAX))? {
        Some(at) => Some(u16::try_from(at).map_err(|_| bad(format!("bucket {at} is out of range")))?),
        None => None,
    };
    let shard = cairn_cluster::placement::ShardId(shard);
    let (new, at) = membership(&state)?.split_shard(shard, at).await.map_err(crate::wire::meta_error)?;
    let body = json!({"shard": shard.0, "at": at, "new_shard": new.0});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /admin/shards/{id}/merge?with=RIGHT`: marks shard RIGHT to merge into shard `id`, its
/// left-hand neighbour (answered once the merge is under way).
pub(super) async fn merge_shards(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let left = id.parse::<u32>().map_err(|_| bad(format!("shard id {id:?} is not a number")))?;
    let params = query(&uri, &["with"])?;
    let Some(right) = params.number("with", u64::from(u32::MAX))? else {
        return Err(bad("parameter \"with\" (the right-hand neighbour to merge in) is required"));
    };
    let (left, right) =
        (cairn_cluster::placement::ShardId(left), cairn_cluster::placement::ShardId(right as u32));
    membership(&state)?.merge_shards(left, right).await.map_err(crate::wire::meta_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"shard": left.0, "merging": right.0}))).into_response())
}

/// `GET /admin/settings`: the cluster settings as the meta group's leader holds them.
pub(super) async fn settings(State(state): State<AppState>) -> ApiResult<Response> {
    let settings = membership(&state)?.settings().await.map_err(crate::wire::meta_error)?;
    Ok(Json(json!(settings)).into_response())
}

/// `PUT /admin/settings/{name}` with the value as the body: changes one setting cluster-wide, through
/// the meta group (`cairn settings set`); answers the settings after the change.
pub(super) async fn set_setting(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let value = std::str::from_utf8(&body).map_err(|_| bad("the setting's value is not UTF-8"))?;
    let settings =
        membership(&state)?.set_setting(&name, value.trim()).await.map_err(crate::wire::meta_error)?;
    Ok(Json(json!(settings)).into_response())
}

/// `GET /admin/protected`: the protected timestamps held now.
pub(super) async fn protected(State(state): State<AppState>) -> ApiResult<Response> {
    let held = membership(&state)?.protected().await.map_err(crate::wire::meta_error)?;
    Ok(Json(json!({ "protected": held })).into_response())
}

/// The body of `POST /admin/protected`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectBody {
    /// `WALL.LOGICAL` as reads take it (the logical part is ignored: a protection holds a wall time);
    /// absent: now.
    timestamp: Option<String>,
    expires_in_secs: u64,
    owner: String,
}

/// `POST /admin/protected` with `{"timestamp": "WALL.LOGICAL", "expires_in_secs": N, "owner": "..."}`:
/// protects a timestamp from garbage collection on every shard (`cairn protect create`).
pub(super) async fn protect(State(state): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let body: ProtectBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("a protection is {{\"timestamp\", \"expires_in_secs\", \"owner\"}}: {e}"))
    })?;
    let wall_time = match &body.timestamp {
        Some(t) => {
            let at = crate::hlc::Timestamp::parse(t)
                .ok_or_else(|| bad(format!("not a timestamp (WALL or WALL.LOGICAL): {t:?}")))?;
            // 0 would mean "now".
            at.wall_time.max(1)
        }
        None => 0,
    };
    let record = membership(&state)?
        .protect(wall_time, body.expires_in_secs, &body.owner)
        .await
        .map_err(crate::wire::meta_error)?;
    Ok(Json(json!(record)).into_response())
}

/// `DELETE /admin/protected/{id}`: releases a protected timestamp; 404 if it is not held.
pub(super) async fn release_protected(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let id: u64 = id.parse().map_err(|_| bad("a protected timestamp's id is a number"))?;
    if membership(&state)?.release_protected(id).await.map_err(crate::wire::meta_error)? {
        Ok(Json(json!({ "released": id })).into_response())
    } else {
        Err(ApiError(NodeError::NotFound(format!("no protected timestamp {id} is held"))))
    }
}
