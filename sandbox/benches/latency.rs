//! Latency the bridge adds, end to end on the embedded engine, measured against the
//! simulators' own timestamps:
//!
//! * inbound: the customer's webhook accepted by ingress → the agent has it (the Connect
//!   simulator's item time);
//! * outbound: the agent's message (its item time) → Twilio's Messages API called (the
//!   Twilio simulator's creation time).
//!
//! At `BENCH_RATES` (default 20 and 500) messages/s over 50 customers, for `BENCH_SECONDS`
//! (default 10) each. The sender's rate limit is raised to 1,000/s for this (a WhatsApp
//! sender allows 80/s by default). `BENCH_ENGINE=aws` runs it on SQS and DynamoDB on moto
//! instead (moto's own latency then dominates; compare settings within one engine), and
//! `BENCH_GATHER` sets `WACONNECT_RECEIVE_GATHER`. Writes `target/bench/latency.json`
//! (`latency-aws.json` on moto).

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use waconnect_sandbox::{Options, Sandbox};
use waconnect_tests::{bench_setting, customer, wait, write_bench_report};

const CUSTOMERS: usize = 50;

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

async fn run(
    sandbox: &Sandbox,
    contacts: &[String],
    rate: u32,
    seconds: u64,
    round: usize,
) -> serde_json::Value {
    let (phone, desk) = (sandbox.phone(), sandbox.desk());
    let total = rate as usize * seconds as usize;
    // Inbound.
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sends = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let phone = phone.clone();
        sends.push(tokio::spawn(async move {
            let body = format!("r{round} in {seq}");
            let (_, status) = phone
                .text(customer(seq % CUSTOMERS).as_str(), &body)
                .await
                .unwrap();
            assert_eq!(status, 200);
            (body, Utc::now())
        }));
    }
    let mut accepted: HashMap<String, DateTime<Utc>> = HashMap::new();
    for s in sends {
        let (body, at) = s.await.unwrap();
        accepted.insert(body, at);
    }
    let seen = wait::until(
        "the agent to have every message",
        Duration::from_secs(120),
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
    let mut inbound = Histogram::<u64>::new(3).unwrap();
    for (body, at) in &seen {
        // The item time has millisecond precision; the acceptance, microseconds.
        inbound
            .record(micros(
                accepted[body],
                *at + chrono::Duration::microseconds(500),
            ))
            .unwrap();
    }
    // Outbound.
    let mut writes = Vec::with_capacity(total);
    for seq in 0..total {
        tick.tick().await;
        let (desk, contact) = (desk.clone(), contacts[seq % CUSTOMERS].clone());
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
    let called = wait::until(
        "Twilio to have every reply",
        Duration::from_secs(120),
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
    let mut outbound = Histogram::<u64>::new(3).unwrap();
    for (body, at) in &called {
        outbound
            .record(micros(
                written[body] + chrono::Duration::microseconds(500),
                *at,
            ))
            .unwrap();
    }
    json!({
        "inbound": summary("inbound", rate, &inbound),
        "outbound": summary("outbound", rate, &outbound),
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let seconds: u64 = bench_setting("BENCH_SECONDS", 10);
        let rates: Vec<u32> = bench_setting("BENCH_RATES", "20,500".to_owned())
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        let aws = bench_setting("BENCH_ENGINE", String::new()) == "aws";
        let mut storage = if aws {
            waconnect_tests::moto::Moto::env(
                &waconnect_tests::moto::Moto::shared()
                    .fresh("latency", 50)
                    .await,
            )
        } else {
            Vec::new()
        };
        let gather = bench_setting("BENCH_GATHER", String::new());
        if !gather.is_empty() {
            storage.push(("WACONNECT_RECEIVE_GATHER".into(), gather.clone()));
        }
        let sandbox = Sandbox::start(Options::headless(storage))
        .await
        .unwrap();
        // Warm up: every customer's chat started, accepted and held.
        let contacts = sandbox.open_chats(&(0..CUSTOMERS).map(customer).collect::<Vec<_>>(), Duration::from_secs(60)).await;
        let results: Vec<serde_json::Value> = {
            let mut r = Vec::new();
            for (round, rate) in rates.iter().copied().enumerate() {
                r.push(run(&sandbox, &contacts, rate, seconds, round).await);
            }
            r
        };
        write_bench_report(
            if aws { "latency-aws" } else { "latency" },
            &json!({ "runs": results, "seconds": seconds, "engine": if aws { "aws" } else { "embedded" }, "gather": gather }),
        );
        sandbox.stop().await;
    });
}
