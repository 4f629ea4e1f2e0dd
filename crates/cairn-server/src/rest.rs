//! The REST API, shaped like early CockroachDB's (seed 003), plus `/health`, `/metrics` and `/_status`.
//!
//! Keys in paths and query strings are bytes, percent-encoded (`%00`..`%FF`; any byte may be escaped,
//! unreserved ASCII need not be). In query strings `+` means a space, as in HTML forms. Values go in
//! and out as raw bytes (request bodies) and base64 (JSON responses). Timestamps are
//! `{"wall_time": ns, "logical": n}` in JSON and `WALL.LOGICAL` in query strings.
//!
//! Reads of a replicated store take `consistency=strong|lease|eventual` (default strong) and
//! `after=TOKENS` (the `token`s earlier writes returned, comma-separated: an eventual read first waits
//! for them, which gives read-your-writes); eventual reads report `behind` in their header.

use crate::error::NodeError;
use crate::hlc::Timestamp;
use crate::metrics::{self, HttpMetrics};
use crate::node::Node;
use crate::params::{self, ParamError, Params};
use crate::types::{Ack, Condition, Consistency, DEFAULT_SCAN_LIMIT, Read, ReadOptions, Token, Versioned};
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Requests served at once; more get 503.
pub const MAX_IN_FLIGHT: usize = 4096;
const ENTRY_PREFIX: &str = "/kv/rest/entry/";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub node: Arc<Node>,
    /// Request metrics.
    pub http: Arc<HttpMetrics>,
    /// Bounds the requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// Set once shutdown starts: new requests get 503, `/health?ready=1` fails.
    pub shutting_down: Arc<AtomicBool>,
    /// A cluster member's membership (for `/health/cluster`).
    pub(crate) cluster: Option<Arc<crate::cluster::Membership>>,
    /// A request body must arrive within this long.
    pub body_read_timeout: std::time::Duration,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/kv/rest/entry/{*key}",
            get(get_entry).head(head_entry).post(put_entry).put(put_entry).delete(delete_entry),
        )
        .route("/kv/rest/entry/", any(empty_key))
        .route("/kv/rest/txn", post(txn_routes::txn))
        .route("/kv/rest/range", get(range))
        .route("/kv/rest/range/", get(range))
        .route("/health", get(health))
        .route("/health/cluster", get(cluster_health))
        .route("/metrics", get(metrics_text))
        .route("/_status", get(status))
        .route("/events", get(events))
        .route("/admin/shards", get(admin::list_shards))
        .route("/admin/shards/{id}/split", post(admin::split_shard))
        .route("/admin/shards/{id}/merge", post(admin::merge_shards))
        .route("/admin/settings", get(admin::settings))
        .route("/admin/protected", get(admin::protected).post(admin::protect))
        .route("/admin/protected/{id}", axum::routing::delete(admin::release_protected))
        .route("/admin/settings/{name}", axum::routing::put(admin::set_setting))
        .route("/admin/backups", get(backup_routes::list).post(backup_routes::create))
        .route("/admin/backups/{id}", get(backup_routes::show).delete(backup_routes::delete))
        .route("/admin/backups/{id}/verify", axum::routing::post(backup_routes::verify))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// An error as the API returns it.
struct ApiError(NodeError);

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self.0, "request failed");
        }
        (status, Json(json!({"code": self.0.code(), "message": self.0.to_string()}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(NodeError::InvalidArgument(msg.into()))
}

/// Counts and times every request; refuses new ones when overloaded or shutting down.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Handles that outlive the request without copying (a method clone and a shared path).
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let is_health = route == "/health";
    let params_ok = Params::parse(request.uri().query(), allowed_params(route, request.method()));
    let response = if let Err(e) = params_ok {
        ApiError::from(e).into_response()
    } else if state.shutting_down.load(Ordering::Acquire) && !is_health {
        ApiError(NodeError::Unavailable("the node is shutting down".into())).into_response()
    } else {
        match Arc::clone(&state.in_flight).try_acquire_owned() {
            Ok(_permit) => next.run(request).await,
            Err(_) => ApiError(NodeError::Unavailable("too many requests in flight".into())).into_response(),
        }
    };
    state.http.record(route, method.as_str(), response.status().as_u16(), started.elapsed());
    response
}

/// What a GET or HEAD of an entry takes.
const ENTRY_READ_PARAMS: &[&str] = &["timestamp", "consistency", "after"];
/// What a PUT or POST of an entry takes.
const ENTRY_WRITE_PARAMS: &[&str] = &["if_absent", "if_timestamp"];
/// What a range takes.
const RANGE_PARAMS: &[&str] = &["start", "end", "limit", "timestamp", "consistency", "after"];

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        bad(e.0)
    }
}

/// The query parameters `route` takes with `method` (every other one is refused, on every route).
fn allowed_params(route: &str, method: &Method) -> &'static [&'static str] {
    match route {
        "/kv/rest/entry/{*key}" if method == Method::GET || method == Method::HEAD => ENTRY_READ_PARAMS,
        "/kv/rest/entry/{*key}" if method == Method::PUT || method == Method::POST => ENTRY_WRITE_PARAMS,
        "/kv/rest/range" | "/kv/rest/range/" => RANGE_PARAMS,
        "/health" => &["ready"],
        "/admin/shards/{id}/split" => &["at"],
        "/admin/shards/{id}/merge" => &["with"],
        "/admin/backups" if method == Method::GET => &["url"],
        "/admin/backups/{id}" | "/admin/backups/{id}/verify" => &["url"],
        _ => &[],
    }
}

/// The key of an entry URL, decoded.
fn entry_key(uri: &Uri) -> ApiResult<Vec<u8>> {
    Ok(params::entry_key(uri.path().strip_prefix(ENTRY_PREFIX).unwrap_or_default())?)
}

/// The query's parameters, each one of `allowed`.
fn query(uri: &Uri, allowed: &[&str]) -> ApiResult<Params> {
    Ok(Params::parse(uri.query(), allowed)?)
}

fn timestamp_param(params: &Params, name: &str) -> ApiResult<Option<Timestamp>> {
    params
        .text(name)?
        .map(|t| {
            Timestamp::parse(t).ok_or_else(|| {
                bad(format!(
                    "parameter {name:?} is not a timestamp (WALL or WALL.LOGICAL, decimal, wall time at most \
                     {}): {t:?}",
                    crate::hlc::MAX_WALL_TIME
                ))
            })
        })
        .transpose()
}

fn ts_json(ts: Timestamp) -> Value {
    json!({"wall_time": ts.wall_time, "logical": ts.logical})
}

fn header<T>(node: &Node, read: &Read<T>, options: &ReadOptions) -> Value {
    let mut header = json!({"timestamp": ts_json(node.now())});
    if options.consistency == Consistency::Eventual {
        header["behind"] = json!(read.behind);
    }
    header
}

fn ack_json(ack: &Ack) -> Value {
    let mut header = json!({"timestamp": ts_json(ack.timestamp)});
    if let Some(token) = ack.token {
        header["token"] = json!(token.to_string());
    }
    json!({"header": header})
}

/// The read options in a query string.
fn read_options(params: &Params) -> ApiResult<ReadOptions> {
    Ok(ReadOptions {
        at: timestamp_param(params, "timestamp")?,
        consistency: match params.text("consistency")? {
            Some(c) => Consistency::parse(c)?,
            None => Consistency::default(),
        },
        after: match params.text("after")? {
            Some(t) => Token::parse_list(t)?,
            None => Vec::new(),
        },
        route: None,
    })
}

fn version_json(v: &Versioned) -> Value {
    json!({"bytes": B64.encode(&v.value), "timestamp": ts_json(v.timestamp)})
}

/// The version an entry URL (`?timestamp=`, `consistency=`, `after=` optional) names, if any.
async fn read_entry(state: &AppState, uri: &Uri) -> ApiResult<(Read<Option<Versioned>>, ReadOptions)> {
    let key = entry_key(uri)?;
    let options = read_options(&query(uri, ENTRY_READ_PARAMS)?)?;
    Ok((state.node.get_async(key, options.clone()).await?, options))
}

async fn get_entry(State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let (read, options) = read_entry(&state, &uri).await?;
    let v =
        read.value.as_ref().ok_or_else(|| ApiError(NodeError::NotFound("no value for this key".into())))?;
    Ok(Json(json!({"header": header(&state.node, &read, &options), "value": version_json(v)})))
}

async fn head_entry(State(state): State<AppState>, uri: Uri) -> ApiResult<Response> {
    let found = read_entry(&state, &uri).await?.0.value;
    let mut response = if found.is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND }.into_response();
    if let Some(v) = found
        && let Ok(ts) = HeaderValue::from_str(&v.timestamp.to_string())
    {
        response.headers_mut().insert("x-cairn-timestamp", ts);
    }
    Ok(response)
}

async fn put_entry(State(state): State<AppState>, uri: Uri, body: Body) -> ApiResult<Json<Value>> {
    let key = entry_key(&uri)?;
    let params = query(&uri, ENTRY_WRITE_PARAMS)?;
    let condition = match (params.flag("if_absent")?, timestamp_param(&params, "if_timestamp")?) {
        (true, Some(_)) => return Err(bad("give at most one of if_absent and if_timestamp")),
        (true, None) => Condition::IfAbsent,
        (false, Some(ts)) => Condition::IfTimestamp(ts),
        (false, None) => Condition::None,
    };
    let max = state.node.config().max_value_bytes;
    let value: Bytes = tokio::time::timeout(state.body_read_timeout, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| ApiError(NodeError::Timeout("the request body did not arrive in time".into())))?
        .map_err(|e| body_error(&e, max))?;
    let ack = state.node.put_async(key, value.to_vec(), condition, None).await.map_err(ApiError)?;
    Ok(Json(ack_json(&ack)))
}

/// A body that could not be read: over the limit (413), or malformed, such as a broken chunked
/// encoding (400).
fn body_error(e: &axum::Error, max: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ApiError(NodeError::TooLarge(format!("the value is over the limit of {max} bytes")));
        }
        source = s.source();
    }
    bad(format!("the request body could not be read: {e}"))
}

async fn delete_entry(State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let key = entry_key(&uri)?;
    match state.node.delete_async(key, None).await.map_err(ApiError)? {
        Some(ack) => Ok(Json(ack_json(&ack))),
        None => Err(ApiError(NodeError::NotFound("no value for this key".into()))),
    }
}

/// `GET /kv/rest/range`: one page of live keys in `[start, end)`. A page stops at `limit` rows or at
/// the node's byte budget; then the header's `resume_key` (base64) and `resume_start` (percent-encoded,
/// ready for `start=`) name where the next page starts.
async fn range(State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let params = query(&uri, RANGE_PARAMS)?;
    let start = params.bytes("start").unwrap_or_default().to_vec();
    let end = params.bytes("end").map(<[u8]>::to_vec);
    let limit = match params.number("limit", crate::types::MAX_SCAN_LIMIT as u64)? {
        Some(l) => usize::try_from(l).map_err(|_| bad("limit too large"))?,
        None => DEFAULT_SCAN_LIMIT,
    };
    let options = read_options(&params)?;
    let read = state.node.scan_async(start, end, limit, options.clone()).await?;
    let rows: Vec<Value> = read
        .value
        .rows
        .iter()
        .map(|(k, v)| json!({"key": B64.encode(k), "value": version_json(v)}))
        .collect();
    let mut header = header(&state.node, &read, &options);
    if let Some(resume) = &read.value.resume {
        header["resume_key"] = json!(B64.encode(resume));
        header["resume_start"] =
            json!(percent_encoding::percent_encode(resume, percent_encoding::NON_ALPHANUMERIC).to_string());
    }
    Ok(Json(json!({"header": header, "rows": rows})))
}

async fn health(State(state): State<AppState>, uri: Uri) -> Response {
    let ready = match query(&uri, &["ready"]).and_then(|p| Ok(p.flag("ready")?)) {
        Ok(ready) => ready,
        Err(e) => return e.into_response(),
    };
    if ready && state.shutting_down.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting_down"}))).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /health/cluster`: the cluster-wide summary ([`Membership::health`](crate::cluster::Membership));
/// 503 when some shard or the meta group has lost its majority.
async fn cluster_health(State(state): State<AppState>) -> Response {
    let Some(membership) = &state.cluster else {
        return ApiError(NodeError::NotFound("this node is not a cluster member".into())).into_response();
    };
    let (available, summary) = membership.health().await;
    let code = if available { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(summary)).into_response()
}

/// `GET /events`: the node's event stream as server-sent events (`event: TYPE`, `data: JSON`), until
/// the node shuts down or the client goes away.
async fn events(State(state): State<AppState>) -> Response {
    // A comment line first, so the client sees the stream open before any event.
    let opened = Bytes::from_static(b": cairn events\n\n");
    let frames = state.node.events().pump(|e| {
        let frame = format!("id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.type_name(), e.json());
        Ok::<_, std::convert::Infallible>(Bytes::from(frame))
    });
    let stream = tokio_stream::StreamExt::chain(tokio_stream::once(Ok(opened)), frames);
    let body = Body::from_stream(stream);
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let body = metrics::render(&state.http, &state.node);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    let node = &state.node;
    let mut about = json!({
        "store": node.config().store.display().to_string(),
        "total_buckets": node.total_buckets(),
        "sync": node.config().sync,
    });
    if let Some(r) = &node.config().replication {
        about["id"] = json!(r.node_id);
        about["members"] = json!(r.members);
    }
    Json(json!({"node": about, "shards": node.status()}))
}

async fn empty_key() -> ApiError {
    bad("the key is empty")
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError(NodeError::NotFound(format!("no route for {method} {}", uri.path())))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = json!({
        "code": "method_not_allowed",
        "message": format!("{} does not take {method}", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

#[path = "rest_admin.rs"]
mod admin;

#[path = "rest_backup.rs"]
mod backup_routes;

#[path = "rest_txn.rs"]
mod txn_routes;
