//! A proxy in front of moto that fails AWS calls as SQS, DynamoDB and S3 fail them at
//! fleet scale: throttling (nothing done), server errors before the request was applied
//! and — the one that tests idempotency — after it was, the answer lost; and slow answers.
//! moto itself never fails, so without this the AWS engines' retries, conditional writes
//! that meet their own earlier attempt, and dedup after a lost answer go untried under
//! chaos. A throttled DynamoDB batch (BatchWriteItem, BatchGetItem) is throttled as
//! DynamoDB throttles one: some of its items are done and the rest come back unprocessed
//! (`UnprocessedItems`, `UnprocessedKeys`), the call itself a success; only a batch of one
//! fails whole.
//!
//! DynamoDB's reads are eventually consistent unless they ask otherwise, and moto's are
//! not: through the proxy, a GetItem or BatchGetItem that does not ask for a consistent
//! read misses an item created less than [`REPLICATION_LAG`] ago, as a replica that has
//! not seen the write yet would, at all times (it is how DynamoDB always is, not a fault).
//!
//! Each service answers in its own protocol, as the SDKs parse it: DynamoDB and SQS in
//! JSON 1.0 (`__type`; SQS also names the code in `x-amzn-query-error`), S3 in XML. A
//! presigned GET (Twilio fetching an agent's file) is passed through untouched: it is not
//! the bridge's call.

use crate::upstream::{MAX_BODY, Upstream, header};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new item stays unseen by eventually consistent reads ("usually within a
/// second", DynamoDB's documentation says).
pub const REPLICATION_LAG: Duration = Duration::from_secs(1);

/// What the proxy does to the calls that pass it now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// One call in `n` is throttled (nothing done).
    Throttle(u32),
    /// One call in `n` fails with 500: half of them before moto sees it, half after it
    /// was applied (the answer lost).
    ServerErrors(u32),
    /// Every call held up to this long before it is passed on.
    Slow(Duration),
}

/// Calls failed so far, by how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failed {
    pub throttled: u64,
    /// DynamoDB batches answered with some of their items left unprocessed.
    pub partial: u64,
    pub before: u64,
    /// Applied by moto, answered with 500.
    pub after: u64,
    /// Eventually consistent reads that missed an item created moments before (not a
    /// failure: how DynamoDB answers them).
    pub stale_reads: u64,
}

pub struct AwsFaults {
    /// Where the services are told AWS is.
    pub endpoint: String,
    state: Arc<Shared>,
}

struct Shared {
    moto: Upstream,
    fault: Mutex<Fault>,
    rng: Mutex<StdRng>,
    throttled: AtomicU64,
    partial: AtomicU64,
    before: AtomicU64,
    after: AtomicU64,
    stale_reads: AtomicU64,
    /// DynamoDB items (`pk`) by when moto created them, while they are that young; and
    /// every item written since the proxy started, to tell a creation from an update.
    young: Mutex<HashMap<String, Instant>>,
    written: Mutex<HashSet<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    DynamoDb,
    Sqs,
    S3,
}

impl AwsFaults {
    /// Listens on a loopback port of its own and passes everything on to `target`; its
    /// random draws are seeded, so a chaos seed draws the same fault pattern.
    pub async fn start(target: &str, seed: u64) -> Self {
        let state = Arc::new(Shared {
            // Longer than any long poll the services make.
            moto: Upstream::new(target, Duration::from_secs(60)),
            fault: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            throttled: AtomicU64::default(),
            partial: AtomicU64::default(),
            before: AtomicU64::default(),
            after: AtomicU64::default(),
            stale_reads: AtomicU64::default(),
            young: Mutex::default(),
            written: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(pass_on).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, state }
    }

    /// From now on, until the next call.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    pub fn failed(&self) -> Failed {
        Failed {
            throttled: self.state.throttled.load(Ordering::SeqCst),
            partial: self.state.partial.load(Ordering::SeqCst),
            before: self.state.before.load(Ordering::SeqCst),
            after: self.state.after.load(Ordering::SeqCst),
            stale_reads: self.state.stale_reads.load(Ordering::SeqCst),
        }
    }
}

/// What to do with one call.
enum Plan {
    Pass(Duration),
    Throttle,
    Fail { after: bool },
}

impl Shared {
    fn plan(&self) -> Plan {
        let fault = *self.fault.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        match fault {
            Fault::None => Plan::Pass(Duration::ZERO),
            Fault::Throttle(n) if rng.random_ratio(1, n.max(1)) => Plan::Throttle,
            Fault::ServerErrors(n) if rng.random_ratio(1, n.max(1)) => Plan::Fail {
                after: rng.random_bool(0.5),
            },
            Fault::Slow(max) => Plan::Pass(max.mul_f64(rng.random::<f64>())),
            _ => Plan::Pass(Duration::ZERO),
        }
    }
}

async fn pass_on(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let presigned = parts
        .uri
        .query()
        .is_some_and(|q| q.contains("X-Amz-Signature="));
    let service = match header(&parts.headers, "x-amz-target") {
        t if t.starts_with("DynamoDB_") => Service::DynamoDb,
        t if t.starts_with("AmazonSQS.") => Service::Sqs,
        _ => Service::S3,
    };
    let plan = if presigned {
        Plan::Pass(Duration::ZERO)
    } else {
        state.plan()
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    match plan {
        Plan::Throttle => {
            if service == Service::DynamoDb
                && let Some(batch) = Batch::of(&header(&parts.headers, "x-amz-target"))
                && let Some((kept, held)) = state.split(batch, &body)
            {
                state.partial.fetch_add(1, Ordering::SeqCst);
                let response = state.through_moto(service, parts, kept.into()).await;
                return unprocessed(batch, response, held).await;
            }
            state.throttled.fetch_add(1, Ordering::SeqCst);
            return throttled(service);
        }
        Plan::Fail { after: false } => {
            state.before.fetch_add(1, Ordering::SeqCst);
            return server_error(service);
        }
        Plan::Pass(delay) => tokio::time::sleep(delay).await,
        Plan::Fail { after: true } => {}
    }
    let response = state.through_moto(service, parts, body).await;
    if matches!(plan, Plan::Fail { after: true }) {
        // moto applied it; the caller never hears so.
        state.after.fetch_add(1, Ordering::SeqCst);
        return server_error(service);
    }
    response
}

impl Shared {
    /// moto's answer to the call, as DynamoDB's own would read: the items it creates are
    /// noted, and an eventually consistent read misses those still young.
    async fn through_moto(
        &self,
        service: Service,
        parts: axum::http::request::Parts,
        body: axum::body::Bytes,
    ) -> Response {
        if service != Service::DynamoDb {
            return self.moto.pass_on(parts, body).await;
        }
        let target = header(&parts.headers, "x-amz-target");
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        let request: Value = serde_json::from_slice(&body).unwrap_or_default();
        let response = self.moto.pass_on(parts, body).await;
        if !response.status().is_success() {
            return response;
        }
        match operation.as_str() {
            "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" => {
                self.note_writes(&operation, &request);
                response
            }
            "GetItem" | "BatchGetItem" => self.as_a_replica_reads(&request, response).await,
            _ => response,
        }
    }

    fn note_writes(&self, operation: &str, request: &Value) {
        let pk = |v: &Value| v["pk"]["S"].as_str().map(str::to_owned);
        let (mut put, mut deleted) = (Vec::new(), Vec::new());
        match operation {
            "PutItem" => put.extend(pk(&request["Item"])),
            "UpdateItem" => put.extend(pk(&request["Key"])),
            "DeleteItem" => deleted.extend(pk(&request["Key"])),
            _ => {
                let tables = request["RequestItems"].as_object().into_iter().flatten();
                for write in tables.flat_map(|(_, w)| w.as_array().into_iter().flatten()) {
                    put.extend(pk(&write["PutRequest"]["Item"]));
                    deleted.extend(pk(&write["DeleteRequest"]["Key"]));
                }
            }
        }
        let now = Instant::now();
        let mut written = self.written.lock().unwrap();
        let mut young = self.young.lock().unwrap();
        young.retain(|_, at| now.duration_since(*at) < REPLICATION_LAG);
        for key in deleted {
            written.remove(&key);
            young.remove(&key);
        }
        for key in put {
            if written.insert(key.clone()) {
                young.insert(key, now);
            }
        }
    }

    /// The read's answer without the items a replica would not have yet, unless the read
    /// asked for consistency.
    async fn as_a_replica_reads(&self, request: &Value, response: Response) -> Response {
        let young: HashSet<String> = {
            let mut young = self.young.lock().unwrap();
            young.retain(|_, at| at.elapsed() < REPLICATION_LAG);
            young.keys().cloned().collect()
        };
        let consistent = |r: &Value| r["ConsistentRead"].as_bool() == Some(true);
        let single = request.get("Key").is_some();
        if young.is_empty() || (single && consistent(request)) {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
            return Response::from_parts(parts, body.into());
        };
        let is_young = |item: &Value| item["pk"]["S"].as_str().is_some_and(|k| young.contains(k));
        let mut missed = 0;
        if single {
            // By the key asked for: a projection may leave it out of the item.
            if answer.get("Item").is_some() && is_young(&request["Key"]) {
                answer.as_object_mut().expect("an object").remove("Item");
                missed += 1;
            }
        } else if let Some(tables) = answer["Responses"].as_object_mut() {
            // (A batch's items are told by their key, which a projection may leave out:
            // such reads are not made stale. None of ours project.)
            for (table, items) in tables.iter_mut() {
                if consistent(&request["RequestItems"][table]) {
                    continue;
                }
                if let Some(items) = items.as_array_mut() {
                    let before = items.len();
                    items.retain(|i| !is_young(i));
                    missed += before - items.len();
                }
            }
        }
        if missed == 0 {
            return Response::from_parts(parts, body.into());
        }
        self.stale_reads.fetch_add(missed as u64, Ordering::SeqCst);
        parts.headers.remove("x-amz-crc32");
        Response::from_parts(parts, answer.to_string().into())
    }
}

#[derive(Clone, Copy)]
enum Batch {
    Write,
    Get,
}

impl Batch {
    /// The batch a DynamoDB call (its `x-amz-target`) is, if it is one.
    fn of(target: &str) -> Option<Self> {
        match target.rsplit('.').next() {
            Some("BatchWriteItem") => Some(Batch::Write),
            Some("BatchGetItem") => Some(Batch::Get),
            _ => None,
        }
    }

    /// A table's items in a request: the write requests, or the keys to get.
    fn items(self, table: &mut Value) -> Option<&mut Vec<Value>> {
        match self {
            Batch::Write => table.as_array_mut(),
            Batch::Get => table.get_mut("Keys")?.as_array_mut(),
        }
    }

    fn count(self, table: &Value) -> usize {
        match self {
            Batch::Write => table.as_array(),
            Batch::Get => table.get("Keys").and_then(|k| k.as_array()),
        }
        .map_or(0, Vec::len)
    }

    /// Where the answer hands back what was not done.
    fn unprocessed(self) -> &'static str {
        match self {
            Batch::Write => "UnprocessedItems",
            Batch::Get => "UnprocessedKeys",
        }
    }
}

impl Shared {
    /// The batch request with a random part of its items held back (at least one), and
    /// the `RequestItems` held back, shaped as the answer's unprocessed part; `None` for a
    /// batch of fewer than two items, which DynamoDB throttles whole.
    fn split(&self, batch: Batch, body: &[u8]) -> Option<(Vec<u8>, Value)> {
        let mut request: Value = serde_json::from_slice(body).ok()?;
        let tables = request.get_mut("RequestItems")?.as_object_mut()?;
        let total: usize = tables.values().map(|t| batch.count(t)).sum();
        if total < 2 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        // Each item held back by a coin, but at least one held and one done.
        let first_held = rng.random_range(0..total);
        let mut draws: Vec<bool> = (0..total)
            .map(|i| i == first_held || rng.random_bool(0.5))
            .collect();
        if draws.iter().all(|h| *h) {
            draws[(first_held + 1) % total] = false;
        }
        let mut draws = draws.into_iter();
        let mut held = serde_json::Map::new();
        for (name, table) in tables.iter_mut() {
            let mut unprocessed = table.clone();
            let Some(items) = batch.items(table) else {
                continue;
            };
            let (back, done): (Vec<_>, Vec<_>) = std::mem::take(items)
                .into_iter()
                .partition(|_| draws.next().unwrap_or(false));
            *items = done;
            if !back.is_empty() {
                *batch.items(&mut unprocessed).expect("the same shape") = back;
                held.insert(name.clone(), unprocessed);
            }
        }
        // A table left with nothing to do may not be named at all.
        tables.retain(|_, t| batch.count(t) > 0);
        let kept = serde_json::to_vec(&request).ok()?;
        Some((kept, Value::Object(held)))
    }
}

/// moto's answer to the part of a batch passed on, with what was held back added as
/// unprocessed.
async fn unprocessed(batch: Batch, response: Response, held: Value) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut answer: Value = match serde_json::from_slice(&body) {
        Ok(a) if parts.status.is_success() => a,
        // moto refused it: that answer stands.
        _ => return Response::from_parts(parts, body.into()),
    };
    let field = batch.unprocessed();
    let mut all = answer[field].as_object().cloned().unwrap_or_default();
    for (table, items) in held.as_object().into_iter().flatten() {
        match all.get_mut(table) {
            Some(theirs) => {
                let extra = batch.items(&mut items.clone()).cloned().unwrap_or_default();
                if let Some(list) = batch.items(theirs) {
                    list.extend(extra);
                }
            }
            None => {
                all.insert(table.clone(), items.clone());
            }
        }
    }
    answer[field] = Value::Object(all);
    // The body changed: a checksum of the old one would be wrong.
    parts.headers.remove("x-amz-crc32");
    Response::from_parts(parts, answer.to_string().into())
}

fn throttled(service: Service) -> Response {
    match service {
        Service::DynamoDb => json(
            StatusCode::BAD_REQUEST,
            "com.amazonaws.dynamodb.v20120810#ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
            None,
        ),
        Service::Sqs => json(
            StatusCode::BAD_REQUEST,
            "com.amazonaws.sqs#RequestThrottled",
            "Request is throttled.",
            Some("RequestThrottled;Sender"),
        ),
        Service::S3 => xml(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
    }
}

fn server_error(service: Service) -> Response {
    match service {
        Service::DynamoDb => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "com.amazonaws.dynamodb.v20120810#InternalServerError",
            "Internal server error",
            None,
        ),
        Service::Sqs => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "com.amazonaws.sqs#InternalError",
            "We encountered an internal error. Please try again.",
            Some("InternalError;Receiver"),
        ),
        Service::S3 => xml(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    }
}

fn json(status: StatusCode, kind: &str, message: &str, query_error: Option<&str>) -> Response {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    headers.insert("x-amzn-requestid", HeaderValue::from_static("aws-faults"));
    if let Some(q) = query_error {
        headers.insert(
            "x-amzn-query-error",
            HeaderValue::from_str(q).expect("a header value"),
        );
    }
    response
}

fn xml(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>aws-faults</RequestId></Error>"
    );
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    response
}
