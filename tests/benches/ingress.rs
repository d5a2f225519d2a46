//! Ingress hot path: signed webhooks per second through `ingress` into the SQLite queue,
//! side by side in one run with a bare axum handler that only reads the body and answers
//! 200. Client and servers share this machine's cores, equally for every target.
//!
//! `cargo bench -p waconnect-tests --bench ingress` — prints a table and writes
//! `target/bench/ingress.json`. `BENCH_SECONDS` (default 5, each target's total, taken in
//! 1 s turns) and `BENCH_CONCURRENCY` (default `64,256`: one pass per number of clients)
//! tune the run. The first pass is the headline figure; at 64 clients a durable request
//! spends most of its time waiting for a commit, so the second pass, with enough clients
//! that the cores rather than the commits are the limit, shows what ingress carries then.
//!
//! A fourth target, ingress in front of a queue that keeps nothing, splits ingress's
//! cost between HTTP with the webhook checks and the durable enqueue.
//!
//! Besides throughput it reports the whole process's CPU time per request in each
//! target's turns (client included) and the SQLite threads' share: the ratio swings with
//! the machine's other tenants, the CPU cost per request much less.

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::config::ConfigSource;
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{
    DeadLetter, FailOutcome, Limits, NewMessage, Queue, QueueError, QueueStats, Receipt,
    ReceivedMessage, Sent, Take,
};
use waconnect_shared::storage::sqlite::Db;
use waconnect_tests::twilio::{incoming_text, signed};
use waconnect_tests::{bench_setting, customer, procfs, write_bench_report};

// Ingress runs in this process: on the allocator the binaries ship with.
#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

const TOKEN: &str = "bench-token";
const PUBLIC: &str = "https://wa.example.test";
const PATH: &str = "/twilio/messages";
/// The name (as the kernel shortens it) of the embedded engine's database threads.
const SQLITE_THREAD: &str = "waconnect-sqlit";

struct Outcome {
    ok: u64,
    failed: u64,
    seconds: f64,
    latency: Histogram<u64>,
    /// CPU ticks of the whole process, and of its SQLite threads, during the turns.
    cpu_ticks: u64,
    sqlite_ticks: u64,
}

impl Outcome {
    fn report(&self, name: &str) -> serde_json::Value {
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1000.0;
        let rps = self.ok as f64 / self.seconds;
        let per_request = |ticks: u64| {
            ticks as f64 / procfs::clock_ticks_per_second() * 1e6 / self.ok.max(1) as f64
        };
        let (cpu, sqlite) = (per_request(self.cpu_ticks), per_request(self.sqlite_ticks));
        println!(
            "{name:<22} {rps:>9.0} req/s   p50 {:>6.2} ms   p90 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   failed {}   CPU {cpu:>5.1} µs/req (SQLite {sqlite:.1})",
            q(0.5),
            q(0.9),
            q(0.99),
            self.latency.max() as f64 / 1000.0,
            self.failed
        );
        json!({
            "requests_per_second": rps,
            "ok": self.ok,
            "failed": self.failed,
            "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": self.latency.max() as f64 / 1000.0 },
            "cpu_us_per_request": cpu,
            "sqlite_thread_cpu_us_per_request": sqlite,
        })
    }
}

/// Drives `base` with `concurrency` keep-alive clients for `duration`, every request a new
/// signed webhook with a unique MessageSid.
async fn load(
    base: String,
    concurrency: usize,
    duration: Duration,
    counter: Arc<AtomicU64>,
) -> Outcome {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (http, base, counter) = (http.clone(), base.clone(), counter.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let fields = incoming_text(
                        &format!("SM{n:032x}"),
                        customer(w * 1000 + (n as usize % 7)).as_str(),
                        "Hello, I need help with my order",
                    );
                    let (body, sig) = signed(TOKEN, &format!("{PUBLIC}{PATH}"), &fields);
                    let t = Instant::now();
                    let res = http
                        .post(format!("{base}{PATH}"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("x-twilio-signature", sig)
                        .body(body)
                        .send()
                        .await;
                    let good = match res {
                        Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    if good { ok += 1 } else { failed += 1 }
                }
                (ok, failed, hist)
            })
        })
        .collect();
    let pid = std::process::id();
    let (cpu_before, sqlite_before) = (
        procfs::cpu_ticks(pid),
        procfs::thread_cpu_ticks(pid, SQLITE_THREAD),
    );
    let mut total = Outcome::empty();
    for w in workers {
        let (ok, failed, hist) = w.await.unwrap();
        total.ok += ok;
        total.failed += failed;
        total.latency.add(hist).unwrap();
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.cpu_ticks = procfs::cpu_ticks(pid) - cpu_before;
    total.sqlite_ticks = procfs::thread_cpu_ticks(pid, SQLITE_THREAD) - sqlite_before;
    total
}

/// One second of load before measuring: connections, caches and the allocator settle.
async fn warm_up(base: &str, concurrency: usize, counter: &Arc<AtomicU64>) -> Outcome {
    load(
        base.to_owned(),
        concurrency,
        Duration::from_secs(1),
        counter.clone(),
    )
    .await
}

async fn bare(listener: TcpListener, shutdown: CancellationToken) {
    let app = Router::new().route(PATH, post(|_body: Bytes| async { StatusCode::OK }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .unwrap();
}

fn config(sqlite_path: &str, synchronous: &str) -> IngressConfig {
    IngressConfig::from_source(&ConfigSource::from_pairs([
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("WACONNECT_PUBLIC_BASE_URL", PUBLIC),
        ("WACONNECT_INGRESS_BIND", "127.0.0.1:0"),
        ("WACONNECT_SQLITE_PATH", sqlite_path),
        ("WACONNECT_SQLITE_SYNCHRONOUS", synchronous),
    ]))
    .unwrap()
}

async fn ingress(
    dir: &std::path::Path,
    synchronous: &str,
) -> (String, CancellationToken, Arc<dyn Queue>) {
    let db_path = dir.join(format!("bench-{synchronous}.db"));
    let config = config(db_path.to_str().unwrap(), synchronous);
    let listener = TcpListener::bind(config.bind).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(waconnect_ingress::run(config, listener, shutdown.clone()));
    let db = Db::open_path(&db_path, synchronous.parse().unwrap())
        .await
        .unwrap();
    let queue: Arc<dyn Queue> = Arc::new(
        SqliteQueue::open(db, "inbound", Limits::both(5))
            .await
            .unwrap(),
    );
    (base, shutdown, queue)
}

/// Accepts every message and keeps none.
struct Discard;

#[async_trait]
impl Queue for Discard {
    fn name(&self) -> &str {
        "discard"
    }
    async fn send(&self, _: NewMessage) -> Result<Sent, QueueError> {
        Ok(Sent {
            message_id: String::new(),
            duplicate: Some(false),
        })
    }
    async fn receive(
        &self,
        _: usize,
        _: Duration,
        _: Duration,
    ) -> QueueResult<Vec<ReceivedMessage>> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &Receipt) -> QueueResult<()> {
        Ok(())
    }
    async fn change_visibility(&self, _: &Receipt, _: Duration) -> QueueResult<()> {
        Ok(())
    }
    async fn fail(&self, _: &Receipt, _: &str, _: Duration) -> QueueResult<FailOutcome> {
        Ok(FailOutcome::WillRetry)
    }
    async fn dead_letter(&self, _: &Receipt, _: &str) -> QueueResult<()> {
        Ok(())
    }
    async fn take_dead_letters(&self, _: &[String], _: Take) -> QueueResult<Vec<String>> {
        Ok(Vec::new())
    }
    async fn dead_letters(&self, _: usize) -> QueueResult<Vec<DeadLetter>> {
        Ok(Vec::new())
    }
    async fn stats(&self) -> QueueResult<QueueStats> {
        Ok(QueueStats::default())
    }
}

type QueueResult<T> = Result<T, QueueError>;

async fn ingress_without_queue() -> (String, CancellationToken) {
    // The file is never opened: `serve` takes the queue as it is.
    let config = config("unused.db", "full");
    let listener = TcpListener::bind(config.bind).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(waconnect_ingress::serve(
        config,
        Arc::new(Discard),
        None,
        listener,
        shutdown.clone(),
    ));
    (base, shutdown)
}

impl Outcome {
    fn empty() -> Self {
        Self {
            ok: 0,
            failed: 0,
            seconds: 0.0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            cpu_ticks: 0,
            sqlite_ticks: 0,
        }
    }

    fn add(&mut self, slice: Outcome) {
        self.ok += slice.ok;
        self.failed += slice.failed;
        self.seconds += slice.seconds;
        self.latency.add(slice.latency).unwrap();
        self.cpu_ticks += slice.cpu_ticks;
        self.sqlite_ticks += slice.sqlite_ticks;
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// One pass over every target at `concurrency` clients: a warm-up, then `seconds` rounds
/// of one second each, the targets taking turns so the machine's drift (other tenants,
/// clock changes) falls on all of them alike. Answers each target's totals, in `bases`'
/// order, the per-round ratio of ingress (synchronous=full) to bare, and each target's
/// requests answered 200 in the warm-up.
async fn pass(
    bases: &[(&str, String)],
    concurrency: usize,
    seconds: u64,
    counter: &Arc<AtomicU64>,
) -> (Vec<Outcome>, Vec<f64>, Vec<u64>) {
    let mut warmed = Vec::new();
    for (_, base) in bases {
        warmed.push(warm_up(base, concurrency, counter).await.ok);
    }
    let mut totals: Vec<Outcome> = bases.iter().map(|_| Outcome::empty()).collect();
    let mut round_ratios = Vec::new();
    for _ in 0..seconds {
        let mut rps = Vec::new();
        for ((_, base), total) in bases.iter().zip(&mut totals) {
            let slice = load(
                base.clone(),
                concurrency,
                Duration::from_secs(1),
                counter.clone(),
            )
            .await;
            rps.push(slice.rps());
            total.add(slice);
        }
        round_ratios.push(rps[1] / rps[0]);
    }
    round_ratios.sort_by(f64::total_cmp);
    (totals, round_ratios, warmed)
}

fn main() {
    let seconds: u64 = bench_setting("BENCH_SECONDS", 5);
    // The first is the figure the target is set at; with more clients the cores, not the
    // commit's wait, are the limit, which shows what ingress carries then.
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .filter(|l: &Vec<usize>| !l.is_empty())
        .unwrap_or_else(|| vec![64, 256]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_base = format!("http://{}", listener.local_addr().unwrap());
        let bare_stop = CancellationToken::new();
        tokio::spawn(bare(listener, bare_stop.clone()));
        let mut ingresses = Vec::new();
        for sync in ["full", "normal"] {
            ingresses.push((sync, ingress(dir.path(), sync).await));
        }
        let mut bases = vec![("bare", bare_base)];
        bases.extend(ingresses.iter().map(|(sync, (base, ..))| (*sync, base.clone())));
        let (discard_base, discard_stop) = ingress_without_queue().await;
        bases.push(("no queue", discard_base));
        let mut before = Vec::new();
        for (_, (_, _, queue)) in &ingresses {
            before.push(queue.stats().await.unwrap().visible);
        }
        // Requests answered 200 by each ingress, warm-ups included.
        let mut answered = vec![0u64; ingresses.len()];
        let mut results = json!({});
        for (level, &concurrency) in levels.iter().enumerate() {
            println!(
                "{concurrency} concurrent keep-alive clients, {seconds} s per target in 1 s slices taken in turn, {} cores",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            let (totals, round_ratios, warmed) = pass(&bases, concurrency, seconds, &counter).await;
            let mut figures = json!({ "bare": totals[0].report("bare axum 200") });
            for (i, (sync, _)) in ingresses.iter().enumerate() {
                let report = totals[i + 1].report(&format!("ingress sync={sync}"));
                figures[format!("ingress_synchronous_{sync}")] = report;
            }
            figures["ingress_no_queue"] = totals[3].report("ingress, no queue");
            let ratio = totals[1].rps() / totals[0].rps();
            println!(
                "ratio ingress (durable, synchronous=full) / bare = {:.1}% (per round: {})\n",
                ratio * 100.0,
                round_ratios
                    .iter()
                    .map(|r| format!("{:.1}%", r * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            figures["ratio_ingress_full_to_bare"] = json!(ratio);
            figures["ratio_per_round"] = json!(round_ratios);
            figures["concurrency"] = json!(concurrency);
            figures["seconds_per_target"] = json!(seconds);
            for (i, done) in answered.iter_mut().enumerate() {
                *done += warmed[i + 1] + totals[i + 1].ok;
            }
            if level == 0 {
                results = figures;
            } else {
                results[format!("at_{concurrency}_clients")] = figures;
            }
        }
        bare_stop.cancel();
        discard_stop.cancel();
        for (i, (_, (_, stop, queue))) in ingresses.iter().enumerate() {
            let after = queue.stats().await.unwrap().visible;
            stop.cancel();
            // Every 200 must be a message on the queue: nothing acknowledged and lost.
            assert_eq!(
                after - before[i],
                answered[i],
                "ingress answered 200 for messages not on the queue"
            );
        }
        write_bench_report("ingress", &results);
    });
}
