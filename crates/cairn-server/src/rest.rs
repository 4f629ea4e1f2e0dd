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
use crate::node::{Ack, Condition, Node, Read, ReadOptions, Versioned};
use crate::replicated::{Consistency, Token};
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Requests served at once; more get 503.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Default `limit` of a range request.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;
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
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/kv/rest/entry/{*key}",
            get(get_entry).head(head_entry).post(put_entry).put(put_entry).delete(delete_entry),
        )
        .route("/kv/rest/entry/", any(empty_key))
        .route("/kv/rest/range", get(range))
        .route("/kv/rest/range/", get(range))
        .route("/health", get(health))
        .route("/health/cluster", get(cluster_health))
        .route("/metrics", get(metrics_text))
        .route("/_status", get(status))
        .route("/events", get(events))
        .fallback(unknown_route)
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
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let is_health = route == "/health";
    let response = if state.shutting_down.load(Ordering::Acquire) && !is_health {
        ApiError(NodeError::Unavailable("the node is shutting down".into())).into_response()
    } else {
        match Arc::clone(&state.in_flight).try_acquire_owned() {
            Ok(_permit) => next.run(request).await,
            Err(_) => ApiError(NodeError::Unavailable("too many requests in flight".into())).into_response(),
        }
    };
    state.http.record(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// Decodes `%XX` escapes into bytes (`plus_is_space` for query strings).
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The key of an entry URL, decoded.
fn entry_key(uri: &Uri) -> ApiResult<Vec<u8>> {
    let raw = uri.path().strip_prefix(ENTRY_PREFIX).unwrap_or_default();
    if raw.is_empty() {
        return Err(bad("the key is empty"));
    }
    percent_decode(raw, false).ok_or_else(|| bad("the key is not valid percent-encoding"))
}

/// Query parameters, decoded to bytes; repeated names are refused.
fn query(uri: &Uri) -> ApiResult<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    for pair in uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value, true)
            .ok_or_else(|| bad(format!("parameter {name:?} is not valid percent-encoding")))?;
        if out.insert(name.to_string(), value).is_some() {
            return Err(bad(format!("parameter {name:?} is given twice")));
        }
    }
    Ok(out)
}

fn text_param<'a>(params: &'a HashMap<String, Vec<u8>>, name: &str) -> ApiResult<Option<&'a str>> {
    params
        .get(name)
        .map(|v| std::str::from_utf8(v).map_err(|_| bad(format!("parameter {name:?} is not text"))))
        .transpose()
}

fn timestamp_param(params: &HashMap<String, Vec<u8>>, name: &str) -> ApiResult<Option<Timestamp>> {
    text_param(params, name)?
        .map(|t| {
            Timestamp::parse(t).ok_or_else(|| {
                bad(format!("parameter {name:?} is not a timestamp (WALL or WALL.LOGICAL): {t:?}"))
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
fn read_options(params: &HashMap<String, Vec<u8>>) -> ApiResult<ReadOptions> {
    Ok(ReadOptions {
        at: timestamp_param(params, "timestamp")?,
        consistency: match text_param(params, "consistency")? {
            Some(c) => Consistency::parse(c)?,
            None => Consistency::default(),
        },
        after: match text_param(params, "after")? {
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
    let options = read_options(&query(uri)?)?;
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
    let params = query(&uri)?;
    let max = state.node.config().max_value_bytes;
    let value: Bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError(NodeError::TooLarge(format!("the value is over the limit of {max} bytes"))))?;
    let condition = match (text_param(&params, "if_absent")?, timestamp_param(&params, "if_timestamp")?) {
        (Some(_), Some(_)) => return Err(bad("give at most one of if_absent and if_timestamp")),
        (Some("true" | "1" | ""), None) => Condition::IfAbsent,
        (Some(other), None) => return Err(bad(format!("if_absent must be true, not {other:?}"))),
        (None, Some(ts)) => Condition::IfTimestamp(ts),
        (None, None) => Condition::None,
    };
    let ack = state.node.put_async(key, value.to_vec(), condition, None).await.map_err(ApiError)?;
    Ok(Json(ack_json(&ack)))
}

async fn delete_entry(State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let key = entry_key(&uri)?;
    match state.node.delete_async(key, None).await.map_err(ApiError)? {
        Some(ack) => Ok(Json(ack_json(&ack))),
        None => Err(ApiError(NodeError::NotFound("no value for this key".into()))),
    }
}

async fn range(State(state): State<AppState>, uri: Uri) -> ApiResult<Json<Value>> {
    let params = query(&uri)?;
    for name in params.keys() {
        if !["start", "end", "limit", "timestamp", "consistency", "after"].contains(&name.as_str()) {
            return Err(bad(format!(
                "unknown parameter {name:?} (start, end, limit, timestamp, consistency, after)"
            )));
        }
    }
    let start = params.get("start").cloned().unwrap_or_default();
    let end = params.get("end").cloned();
    let limit = match text_param(&params, "limit")? {
        Some(l) => l.parse::<usize>().map_err(|_| bad(format!("limit {l:?} is not a number")))?,
        None => DEFAULT_SCAN_LIMIT,
    };
    let options = read_options(&params)?;
    let read = state.node.scan_async(start, end, limit, options.clone()).await?;
    let rows: Vec<Value> =
        read.value.iter().map(|(k, v)| json!({"key": B64.encode(k), "value": version_json(v)})).collect();
    Ok(Json(json!({"header": header(&state.node, &read, &options), "rows": rows})))
}

async fn health(State(state): State<AppState>, uri: Uri) -> Response {
    let ready = query(&uri).ok().and_then(|p| p.get("ready").cloned()).is_some_and(|v| v != b"0");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_any_byte_and_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%00b%ff", false), Some(vec![b'a', 0, b'b', 0xff]));
        assert_eq!(percent_decode("a+b", false), Some(b"a+b".to_vec()));
        assert_eq!(percent_decode("a+b", true), Some(b"a b".to_vec()));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
    }
}
