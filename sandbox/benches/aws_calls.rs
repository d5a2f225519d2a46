//! AWS API calls per delivered message, each way, on the AWS engines (SQS FIFO and
//! DynamoDB on moto) beside the embedded engine in the same run. Every call the three
//! services make counts (`waconnect_aws_calls_total`: SQS, DynamoDB, Connect and the
//! Participant API, retries included), idle work too: lease renewals, sweeps, depth
//! samples and empty long polls that fall inside a phase. moto's absolute times mean
//! little; the call profile is what carries over to AWS.
//!
//! Per engine: 20 customers with chats held, then an inbound phase (customers write, the
//! agents receive) and an outbound phase (agents write, Twilio is called; the delivery
//! receipts that come back are part of its cost). A second run per engine, with Twilio
//! asked for no status callbacks, measures the outbound message alone; the difference is
//! what its receipts cost (a receipt is an inbound event: ingress, the inbound queue,
//! Connect's SendEvent). `BENCH_MESSAGES` per phase (default 400) at `BENCH_RATE`
//! messages/s (default 50). Writes `target/bench/aws_calls.json`.

use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use waconnect_sandbox::{Options, Sandbox};
use waconnect_tests::moto::Moto;
use waconnect_tests::{bench_setting, customer, wait, write_bench_report};

const CUSTOMERS: usize = 20;

/// `service/operation` → calls so far.
fn calls() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in waconnect_shared::service::telemetry::render_metrics().lines() {
        let Some(rest) = line.strip_prefix("waconnect_aws_calls_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let key = format!("{}/{}", label("service"), label("operation"));
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    per: usize,
) -> serde_json::Value {
    let mut by_call = serde_json::Map::new();
    let mut by_service: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            by_call.insert(k.clone(), json!(d / per as f64));
            *by_service
                .entry(k.split('/').next().unwrap_or_default().to_owned())
                .or_default() += d;
            total += d;
        }
    }
    json!({
        "per_message": total / per as f64,
        "by_service": by_service.into_iter().map(|(k, v)| (k, json!(v / per as f64))).collect::<serde_json::Map<_, _>>(),
        "by_call": by_call,
    })
}

async fn phase(
    name: &str,
    messages: usize,
    rate: u32,
    send: impl AsyncFn(usize),
    arrived: impl AsyncFn() -> usize,
) -> serde_json::Value {
    let before = calls();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    for seq in 0..messages {
        tick.tick().await;
        send(seq).await;
    }
    wait::until(name, Duration::from_secs(300), || async {
        (arrived().await >= messages).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let report = delta(&before, &calls(), messages);
    println!(
        "  {name:<8} {messages} messages in {:>5.1} s: {:.2} AWS calls per message {}",
        elapsed.as_secs_f64(),
        report["per_message"].as_f64().unwrap_or(0.0),
        report["by_service"]
    );
    json!({ "seconds": elapsed.as_secs_f64(), "calls": report })
}

/// Which phases an engine run has.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// Inbound, then outbound with its delivery receipts.
    Full,
    /// Outbound only, and no status callbacks asked of Twilio.
    OutboundWithoutReceipts,
}

async fn engine(
    name: &str,
    mut storage: Vec<(String, String)>,
    messages: usize,
    rate: u32,
    run: Run,
) -> serde_json::Value {
    println!("{name}:");
    if run == Run::OutboundWithoutReceipts {
        // Empty is unset: the sender then asks Twilio for no status callbacks.
        storage.push(("WACONNECT_STATUS_CALLBACK_URL".into(), String::new()));
    }
    // Production's periodic work, not the sandbox's brisker page-friendly settings.
    for (k, v) in [
        ("WACONNECT_QUEUE_DEPTH_INTERVAL", "10s"),
        ("WACONNECT_RELAY_SWEEP_INTERVAL", "5s"),
    ] {
        storage.push((k.to_owned(), v.to_owned()));
    }
    let sandbox = Sandbox::start(Options::headless(storage)).await.unwrap();
    let (phone, desk) = (sandbox.phone(), sandbox.desk());
    let contacts = sandbox
        .open_chats(
            &(0..CUSTOMERS).map(customer).collect::<Vec<_>>(),
            Duration::from_secs(120),
        )
        .await;
    let inbound = if run == Run::Full {
        phase(
            "inbound",
            messages,
            rate,
            async |seq| {
                let phone = phone.clone();
                tokio::spawn(async move {
                    phone
                        .text(customer(seq % CUSTOMERS).as_str(), &format!("in {seq}"))
                        .await
                        .unwrap();
                });
            },
            async || {
                let mut n = 0;
                for c in &contacts {
                    n += desk
                        .transcript(c)
                        .await
                        .map(|t| {
                            t.iter()
                                .filter(|i| {
                                    i.content.as_deref().is_some_and(|b| b.starts_with("in "))
                                })
                                .count()
                        })
                        .unwrap_or(0);
                }
                n
            },
        )
        .await
    } else {
        serde_json::Value::Null
    };
    let outbound = phase(
        "outbound",
        messages,
        rate,
        async |seq| {
            let (desk, contact) = (desk.clone(), contacts[seq % CUSTOMERS].clone());
            tokio::spawn(async move {
                desk.send(&contact, &format!("out {seq}")).await.unwrap();
            });
        },
        async || {
            phone
                .sent()
                .await
                .map(|s| {
                    s.iter()
                        .filter(|m| m["body"].as_str().is_some_and(|b| b.starts_with("out ")))
                        .count()
                })
                .unwrap_or(0)
        },
    )
    .await;
    sandbox.stop().await;
    match run {
        Run::Full => json!({ "inbound": inbound, "outbound": outbound }),
        Run::OutboundWithoutReceipts => outbound,
    }
}

/// Per-message calls of the outbound run with receipts, less the one without: the
/// receipts' share.
fn receipts_share(full: &serde_json::Value, alone: &serde_json::Value) -> f64 {
    let per = |v: &serde_json::Value| v["calls"]["per_message"].as_f64().unwrap_or(0.0);
    per(&full["outbound"]) - per(alone)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The recorder must be in place before the services count anything.
    waconnect_shared::service::telemetry::metrics();
    runtime.block_on(async {
        let messages: usize = bench_setting("BENCH_MESSAGES", 400);
        let rate: u32 = bench_setting("BENCH_RATE", 50);
        let mut report = serde_json::Map::new();
        for (key, label) in [
            ("embedded", "embedded (SQLite)"),
            ("aws", "aws (SQS + DynamoDB on moto)"),
        ] {
            let storage = || async {
                if key == "aws" {
                    Moto::env(&Moto::shared().fresh("bench", 50).await)
                } else {
                    Vec::new()
                }
            };
            let mut full = engine(label, storage().await, messages, rate, Run::Full).await;
            let alone = engine(
                &format!("{label}, no receipts"),
                storage().await,
                messages,
                rate,
                Run::OutboundWithoutReceipts,
            )
            .await;
            let receipts = receipts_share(&full, &alone);
            println!("  receipts {receipts:.2} AWS calls per outbound message");
            full["outbound_message_alone"] = alone;
            full["receipts_per_outbound_message"] = json!(receipts);
            report.insert(key.to_owned(), full);
        }
        report.insert("messages".into(), json!(messages));
        report.insert("rate".into(), json!(rate));
        report.insert("customers".into(), json!(CUSTOMERS));
        write_bench_report("aws_calls", &serde_json::Value::Object(report));
    });
}
