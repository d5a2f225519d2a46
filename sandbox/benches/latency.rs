//! Latency the bridge adds, end to end on the embedded engine, and the capacity of one
//! box, measured against the simulators' own timestamps:
//!
//! * inbound: the customer's webhook accepted by ingress → the agent has it (the Connect
//!   simulator's item time);
//! * outbound: the agent's message (its item time) → Twilio's Messages API called (the
//!   Twilio simulator's creation time).
//!
//! Both ways at once, at each of `BENCH_RATES` (default 20, 50, 100, 200, 500, 1000, 2000)
//! messages/s each way, over `BENCH_CUSTOMERS` (default 200) customers, for `BENCH_SECONDS`
//! (default 5) each, and at least long enough for 600 messages each way (30 s at 20 msg/s:
//! a p99 over 100 messages is merely the second slowest); the sweep stops at the first rate
//! whose p99 passes 1 s (the box is saturated). Reports p50/p95/p99 per rate, the cores the
//! process used and the SQLite thread's share, and the highest rate whose p99 stays within
//! 50 ms both ways. Everything runs in this one process — services, simulators and the load
//! — as on one box. The sender's limit is raised to 100,000/s (a WhatsApp sender allows
//! 80/s). `BENCH_TLS=1` puts the simulators behind HTTPS and WSS (a test CA, as Twilio and
//! Connect speak TLS). `BENCH_ENGINE=aws` runs on SQS and DynamoDB on moto instead (moto's
//! own latency then dominates; compare settings within one engine), and `BENCH_GATHER` sets
//! `WACONNECT_RECEIVE_GATHER`, `BENCH_VARS` any other variable (`NAME=value,…`). Writes
//! `target/bench/latency.json` (`latency-tls.json` with TLS, `latency-aws.json` on moto).
//!
//! A reply Twilio got twice, or over 1 s after the agent wrote it, is named on stderr
//! (`DOUBLED`, `SLOW`); `RUST_LOG` turns the services' logs on to follow it.

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use waconnect_sandbox::{Options, Sandbox};
use waconnect_tests::{bench_setting, customer, procfs, write_bench_report};

#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

/// A rate whose p99 passes this has saturated the box: higher ones only queue more.
const SATURATED_MS: f64 = 1000.0;
/// The latency a rate must keep, both ways, to count as carried.
const TARGET_P99_MS: f64 = 50.0;
/// Messages each way a rate runs for at least, so that its p99 rests on a few of them.
const MIN_MESSAGES: u64 = 600;
/// How often the results are polled: rarely, so the polling does not load the box.
const POLL: Duration = Duration::from_millis(250);

fn summary(name: &str, rate: u32, h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "{name:<9} at {rate:>3} msg/s: p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} messages)",
        q(0.5),
        q(0.95),
        q(0.99),
        h.max() as f64 / 1000.0,
        h.len()
    );
    json!({ "rate": rate, "messages": h.len(), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": h.max() as f64 / 1000.0 })
}

fn micros(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_microseconds().unwrap_or(0).max(0) as u64
}

/// Polls `check` every [`POLL`] until it yields `Some`, or panics naming `what`.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    waconnect_sim::wait::until_every(what, deadline, POLL, check).await
}

/// Customers write at `rate` for `seconds`; the latency of each to the agent.
async fn inbound(
    sandbox: &Sandbox,
    contacts: &[String],
    rate: u32,
    seconds: u64,
    round: usize,
) -> Histogram<u64> {
    let (phone, desk) = (sandbox.phone(), sandbox.desk());
    let total = rate as usize * seconds as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sends = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let phone = phone.clone();
        let from = customer(seq % contacts.len());
        sends.push(tokio::spawn(async move {
            let body = format!("r{round} in {seq}");
            let (_, status) = phone.text(from.as_str(), &body).await.unwrap();
            assert_eq!(status, 200);
            (body, Utc::now())
        }));
    }
    let mut accepted: HashMap<String, DateTime<Utc>> = HashMap::new();
    for s in sends {
        let (body, at) = s.await.unwrap();
        accepted.insert(body, at);
    }
    let seen = poll(
        "the agent to have every message",
        Duration::from_secs(300),
        || async {
            let mut seen = HashMap::new();
            for c in contacts {
                for item in desk.transcript(c).await.ok()? {
                    if let Some(body) = item.content.filter(|b| accepted.contains_key(b)) {
                        seen.insert(
                            body,
                            DateTime::parse_from_rfc3339(&item.absolute_time)
                                .ok()?
                                .with_timezone(&Utc),
                        );
                    }
                }
            }
            (seen.len() == total).then_some(seen)
        },
    )
    .await;
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (body, at) in &seen {
        // The item time has millisecond precision; the acceptance, microseconds.
        h.record(micros(
            accepted[body],
            *at + chrono::Duration::microseconds(500),
        ))
        .unwrap();
    }
    h
}

/// Agents write at `rate` for `seconds`; the latency of each to Twilio's Messages API.
async fn outbound(
    sandbox: &Sandbox,
    contacts: &[String],
    rate: u32,
    seconds: u64,
    round: usize,
) -> Histogram<u64> {
    let (phone, desk) = (sandbox.phone(), sandbox.desk());
    let total = rate as usize * seconds as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut writes = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let (desk, contact) = (desk.clone(), contacts[seq % contacts.len()].clone());
        writes.push(tokio::spawn(async move {
            let body = format!("r{round} out {seq}");
            let item = desk.send(&contact, &body).await.unwrap();
            (
                body,
                DateTime::parse_from_rfc3339(&item.absolute_time)
                    .unwrap()
                    .with_timezone(&Utc),
            )
        }));
    }
    let mut written: HashMap<String, DateTime<Utc>> = HashMap::new();
    for w in writes {
        let (body, at) = w.await.unwrap();
        written.insert(body, at);
    }
    let called = poll(
        "Twilio to have every reply",
        Duration::from_secs(300),
        || async {
            let sent = phone.sent().await.ok()?;
            let called: HashMap<String, DateTime<Utc>> = sent
                .iter()
                .filter_map(|s| {
                    let body = s["body"].as_str().filter(|b| written.contains_key(*b))?;
                    let at: DateTime<Utc> = s["created_at"].as_str()?.parse().ok()?;
                    Some((body.to_owned(), at))
                })
                .collect();
            (called.len() == total).then_some(called)
        },
    )
    .await;
    // Every reply once: a body Twilio was asked to send twice is a doubled message.
    if let Ok(sent) = phone.sent().await {
        let mut times: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &sent {
            if let (Some(body), Some(at)) = (s["body"].as_str(), s["created_at"].as_str())
                && written.contains_key(body)
            {
                times.entry(body).or_default().push(at);
            }
        }
        for (body, at) in times.iter().filter(|(_, at)| at.len() > 1) {
            eprintln!("DOUBLED {body}: written {}, sent at {at:?}", written[*body]);
        }
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut slow = 0;
    for (body, at) in &called {
        let latency = micros(written[body] + chrono::Duration::microseconds(500), *at);
        if latency > 1_000_000 {
            // A few name the messages to follow in the logs; a saturated rate has many.
            if slow < SLOW_SHOWN {
                eprintln!("SLOW {body}: written {}, sent at {at}", written[body]);
            }
            slow += 1;
        }
        h.record(latency).unwrap();
    }
    if slow > SLOW_SHOWN {
        eprintln!("SLOW: {slow} replies in all took over 1 s");
    }
    h
}

/// Replies over 1 s named one by one, at most, per rate.
const SLOW_SHOWN: usize = 5;

/// Both ways at once at `rate`; with the CPU the process spent meanwhile.
async fn run(
    sandbox: &Sandbox,
    contacts: &[String],
    rate: u32,
    seconds: u64,
    round: usize,
) -> serde_json::Value {
    let pid = std::process::id();
    let (ticks, db_ticks) = (
        procfs::cpu_ticks(pid),
        procfs::thread_cpu_ticks(pid, "waconnect-sqlit"),
    );
    let started = tokio::time::Instant::now();
    let (inbound, outbound) = tokio::join!(
        inbound(sandbox, contacts, rate, seconds, round),
        outbound(sandbox, contacts, rate, seconds, round)
    );
    let elapsed = started.elapsed().as_secs_f64();
    let per_second = procfs::clock_ticks_per_second() * elapsed;
    let cores = (procfs::cpu_ticks(pid) - ticks) as f64 / per_second;
    let db_cores =
        (procfs::thread_cpu_ticks(pid, "waconnect-sqlit") - db_ticks) as f64 / per_second;
    println!(
        "          at {rate:>4} msg/s: {cores:.2} cores busy, the SQLite thread {:.0}% of one",
        db_cores * 100.0
    );
    json!({
        "rate": rate,
        "seconds": seconds,
        "inbound": summary("inbound", rate, &inbound),
        "outbound": summary("outbound", rate, &outbound),
        "cores_busy": cores,
        "sqlite_thread_share": db_cores,
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seconds: u64 = bench_setting("BENCH_SECONDS", 5);
        let customers: usize = bench_setting("BENCH_CUSTOMERS", 200);
        let rates: Vec<u32> =
            bench_setting("BENCH_RATES", "20,50,100,200,500,1000,2000".to_owned())
                .split(',')
                .filter_map(|r| r.trim().parse().ok())
                .collect();
        let aws = bench_setting("BENCH_ENGINE", String::new()) == "aws";
        let tls = bench_setting("BENCH_TLS", 0u8) == 1;
        let mut storage = if aws {
            waconnect_tests::moto::Moto::env(
                &waconnect_tests::moto::Moto::shared()
                    .fresh("latency", 50)
                    .await,
            )
        } else {
            Vec::new()
        };
        // Any other service variables, `NAME=value,NAME=value` (e.g. the concurrencies).
        for pair in bench_setting("BENCH_VARS", String::new()).split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                storage.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let gather = bench_setting("BENCH_GATHER", String::new());
        if !gather.is_empty() {
            storage.push(("WACONNECT_RECEIVE_GATHER".into(), gather.clone()));
        }
        let mut options = Options {
            sender_rate: 100_000,
            tls,
            ..Options::headless(storage)
        };
        // Errors only unless `RUST_LOG` asks for more (to follow a slow message).
        if let Ok(filter) = std::env::var("RUST_LOG") {
            options.telemetry.log_filter = filter;
            waconnect_shared::service::telemetry::init_logging(&options.telemetry, "latency")
                .unwrap();
        }
        let sandbox = Sandbox::start(options).await.unwrap();
        // Warm up: every customer's chat started, accepted and held.
        let numbers: Vec<_> = (0..customers).map(customer).collect();
        let contacts = sandbox.open_chats(&numbers, Duration::from_secs(300)).await;
        // And one reply through to Twilio: a sender's first second holds its sends (it
        // cannot know what a predecessor sent in its last second), which would otherwise
        // land in the first rate's figures as a start-up cost, not a steady one.
        sandbox.desk().send(&contacts[0], "warm").await.unwrap();
        poll("the warm-up reply", Duration::from_secs(60), || async {
            let sent = sandbox.phone().sent().await.ok()?;
            sent.iter().any(|s| s["body"] == "warm").then_some(())
        })
        .await;
        let mut results = Vec::new();
        let mut saturated_at = None;
        for (round, rate) in rates.iter().copied().enumerate() {
            let r = run(
                &sandbox,
                &contacts,
                rate,
                seconds.max(MIN_MESSAGES.div_ceil(rate as u64)),
                round,
            )
            .await;
            let p99 = |way: &str| r[way]["p99_ms"].as_f64().unwrap_or(f64::MAX);
            let worst = p99("inbound").max(p99("outbound"));
            results.push(r);
            if worst > SATURATED_MS {
                saturated_at = Some(rate);
                break;
            }
        }
        let carried = results
            .iter()
            .filter(|r| {
                ["inbound", "outbound"]
                    .iter()
                    .all(|w| r[*w]["p99_ms"].as_f64().is_some_and(|p| p <= TARGET_P99_MS))
            })
            .filter_map(|r| r["rate"].as_u64())
            .max();
        println!(
            "highest rate with p99 <= {TARGET_P99_MS} ms both ways: {}",
            carried.map_or("none".to_owned(), |r| format!("{r} msg/s each way"))
        );
        let name = match (aws, tls) {
            (true, _) => "latency-aws",
            (false, true) => "latency-tls",
            (false, false) => "latency",
        };
        write_bench_report(
            name,
            &json!({
                "runs": results,
                "seconds": seconds,
                "customers": customers,
                "engine": if aws { "aws" } else { "embedded" },
                "tls": tls,
                "gather": gather,
                "highest_rate_p99_within_50ms": carried,
                "saturated_at": saturated_at,
            }),
        );
        sandbox.stop().await;
    });
}
