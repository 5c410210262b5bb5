//! The data store's HTTP/JSON API, for `curl` and for programs without a
//! gRPC client (`--listen-http-url`; `zongheng dev` serves it on each node's
//! client port + 2).
//!
//! Every call is one transaction of the store (see `store::client`), run in
//! the node that took the request, with no gRPC hop:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/store/keys/{key}` | | `{"key", "value"}`, or 404 `ZH_STORE_KEY_NOT_FOUND` |
//! | `PUT /v1/store/keys/{key}` | the value (raw bytes) | `{"commit_ts"}` |
//! | `DELETE /v1/store/keys/{key}` | | `{"commit_ts"}` |
//! | `GET /v1/store/scan?prefix=P` or `?start=S&end=E`, `&limit=N` (1000) | | `{"rows": [{"key", "value"}], "count"}` |
//! | `POST /v1/store/batch-get` | `{"keys": [...]}` | `{"values": [value or null, ...]}` in the order asked |
//! | `POST /v1/store/batch-put` | `{"pairs": {"key": "value", ...}}` | `{"commit_ts", "keys"}` |
//! | `GET /v1/store/shard-map` | | the map as `zongheng store status --json` prints it |
//!
//! Reads take `?consistency=l|f|s` (linearizable, follower, stale) and
//! `&max_staleness_ms=` (default 5000), as the CLI does. Keys in paths are
//! percent-decoded UTF-8; values that are not UTF-8 come back as
//! `value_base64` instead of `value`.
//!
//! Errors are JSON, `{"code": "ZH_...", "error": "what happened"}`, with an
//! HTTP status that says how to react: 400 bad input (do not retry), 404 no
//! such key, 409 a write conflict (retry the transaction), 413 a batch over
//! the limit, 503 unavailable (retry), 504 outcome unknown (a write may or
//! may not have been applied).
//!
//! Why axum: tonic already builds it (its routes are axum's), so the JSON
//! API costs no new dependency tree, and its extractors turn bad paths,
//! queries and bodies into 400s without hand-written parsing. Served with
//! hyper's HTTP/1.1 server on the node's injected transport
//! (`net::serve::serve_http1`), like the gRPC servers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::{LocalStore, StoreService};
use crate::store::client::{StoreError, Transaction, TxnOptions};
use crate::store::group::ReadMode;
use crate::store::request::BATCH_KEYS_MAX;

/// Largest request body (a batch of values), in bytes.
pub const HTTP_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Rows a scan returns unless `limit` says otherwise, and at most.
pub const HTTP_SCAN_ROWS_DEFAULT: usize = 1_000;
pub const HTTP_SCAN_ROWS_MAX: usize = 100_000;

/// The routes, over the node's store service.
pub fn router(store: Arc<StoreService>) -> Router {
    Router::new()
        .route("/v1/store/keys/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/store/scan", get(scan))
        .route("/v1/store/batch-get", post(batch_get))
        .route("/v1/store/batch-put", post(batch_put))
        .route("/v1/store/shard-map", get(shard_map))
        .layer(axum::extract::DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .with_state(store)
}

/// An error as the API answers it.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"code": self.code, "error": self.message}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match &error {
            StoreError::Txn(crate::store::txn::TxnError::TooManyKeys { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::Txn(txn) if txn.retryable() => StatusCode::CONFLICT,
            StoreError::Txn(_) | StoreError::Refused(_) => StatusCode::BAD_REQUEST,
            StoreError::Partition(_) | StoreError::Unavailable(_) | StoreError::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::Unknown(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError {
            status,
            code: error.code(),
            message: error.to_string(),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = status
            .metadata()
            .get(super::status::ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(|code| match code {
                "ZH_STORE_DISABLED" => "ZH_STORE_DISABLED",
                "ZH_STORE_NOT_READY" => "ZH_STORE_NOT_READY",
                _ => "ZH_STORE_UNAVAILABLE",
            })
            .unwrap_or("ZH_STORE_UNAVAILABLE");
        let http = match status.code() {
            tonic::Code::FailedPrecondition => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError {
            status: http,
            code,
            message: status.message().to_string(),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "ZH_STORE_BAD_REQUEST",
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct ReadQuery {
    consistency: Option<String>,
    max_staleness_ms: Option<u64>,
}

impl ReadQuery {
    fn options(&self) -> Result<TxnOptions, ApiError> {
        let read_mode = match self.consistency.as_deref().unwrap_or("l") {
            "l" | "linearizable" => ReadMode::Linearizable,
            "f" | "follower" => ReadMode::Follower,
            "s" | "stale" => ReadMode::Stale {
                max_staleness_ms: self.max_staleness_ms.unwrap_or(5_000),
            },
            other => return Err(bad_request(format!("consistency {other:?} is not l, f or s"))),
        };
        Ok(TxnOptions {
            read_mode,
            ..TxnOptions::default()
        })
    }
}

/// A value as JSON: a string when it is UTF-8, base64 otherwise.
fn value_json(key: &[u8], value: &[u8]) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
    match std::str::from_utf8(value) {
        Ok(text) => object.insert("value".into(), text.into()),
        Err(_) => object.insert("value_base64".into(), base64(value).into()),
    };
    Value::Object(object)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = u32::from(chunk[0]) << 16
            | u32::from(chunk.get(1).copied().unwrap_or(0)) << 8
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(ALPHABET[(word >> (18 - 6 * position) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn store(service: &Arc<StoreService>) -> Result<LocalStore, ApiError> {
    Ok(LocalStore::new(service.clone()).await?)
}

async fn get_key(
    State(service): State<Arc<StoreService>>,
    Path(key): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&service).await?;
    let txn = Transaction::begin(&store, query.options()?).await?;
    match txn.get(key.as_bytes()).await? {
        Some(value) => Ok(Json(value_json(key.as_bytes(), &value))),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "ZH_STORE_KEY_NOT_FOUND",
            message: format!("no key {key:?}"),
        }),
    }
}

async fn put_key(
    State(service): State<Arc<StoreService>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let store = store(&service).await?;
    let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
    txn.put(key.into_bytes(), body.to_vec());
    let commit_ts = txn.commit().await?;
    Ok(Json(json!({"commit_ts": commit_ts.0})))
}

async fn delete_key(
    State(service): State<Arc<StoreService>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&service).await?;
    let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
    txn.delete(key.into_bytes());
    let commit_ts = txn.commit().await?;
    Ok(Json(json!({"commit_ts": commit_ts.0})))
}

#[derive(Deserialize)]
struct ScanQuery {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    #[serde(flatten)]
    read: ReadQuery,
}

async fn scan(
    State(service): State<Arc<StoreService>>,
    Query(query): Query<ScanQuery>,
) -> Result<Json<Value>, ApiError> {
    let (start, end) = match (&query.prefix, &query.start) {
        (Some(prefix), None) => {
            let start = prefix.as_bytes().to_vec();
            let end = crate::cli::store::prefix_end(&start);
            (start, end)
        }
        (None, Some(start)) => (
            start.as_bytes().to_vec(),
            query.end.clone().map(String::into_bytes).unwrap_or_default(),
        ),
        _ => return Err(bad_request("give either prefix, or start (and maybe end)")),
    };
    if !end.is_empty() && end <= start {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "ZH_STORE_INVERTED_RANGE",
            message: "the range end is not after its start".into(),
        });
    }
    let limit = query.limit.unwrap_or(HTTP_SCAN_ROWS_DEFAULT);
    if limit > HTTP_SCAN_ROWS_MAX {
        return Err(bad_request(format!("limit {limit} is above {HTTP_SCAN_ROWS_MAX}")));
    }
    let store = store(&service).await?;
    let txn = Transaction::begin(&store, query.read.options()?).await?;
    let rows = txn.scan(&start, &end, limit).await?;
    let count = rows.len();
    let rows: Vec<Value> = rows.iter().map(|(key, value)| value_json(key, value)).collect();
    Ok(Json(json!({"rows": rows, "count": count})))
}

#[derive(Deserialize)]
struct BatchGetBody {
    keys: Vec<String>,
}

async fn batch_get(
    State(service): State<Arc<StoreService>>,
    Query(query): Query<ReadQuery>,
    Json(body): Json<BatchGetBody>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&service).await?;
    let txn = Transaction::begin(&store, query.options()?).await?;
    let keys: Vec<Vec<u8>> = body.keys.iter().map(|key| key.as_bytes().to_vec()).collect();
    let values = txn.batch_get(&keys).await?;
    let values: Vec<Value> = keys
        .iter()
        .zip(values)
        .map(|(key, value)| match value {
            Some(value) => value_json(key, &value),
            None => Value::Null,
        })
        .collect();
    Ok(Json(json!({"values": values})))
}

#[derive(Deserialize)]
struct BatchPutBody {
    pairs: BTreeMap<String, String>,
}

async fn batch_put(
    State(service): State<Arc<StoreService>>,
    Json(body): Json<BatchPutBody>,
) -> Result<Json<Value>, ApiError> {
    if body.pairs.len() > BATCH_KEYS_MAX {
        return Err(StoreError::Txn(crate::store::txn::TxnError::TooManyKeys {
            count: body.pairs.len(),
            limit: BATCH_KEYS_MAX,
        })
        .into());
    }
    let store = store(&service).await?;
    let mut txn = Transaction::begin(&store, TxnOptions::default()).await?;
    let count = body.pairs.len();
    for (key, value) in body.pairs {
        txn.put(key.into_bytes(), value.into_bytes());
    }
    let commit_ts = txn.commit().await?;
    Ok(Json(json!({"commit_ts": commit_ts.0, "keys": count})))
}

async fn shard_map(State(service): State<Arc<StoreService>>) -> Result<Json<Value>, ApiError> {
    let store = store(&service).await?;
    let map = store.service().shard_map_json().await?;
    Ok(Json(map))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
