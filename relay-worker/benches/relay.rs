//! Relay-worker bench, against the Connect simulator, with the relay as a real process:
//!
//! * **Holding cost**: N idle conversations (N = 1k, 10k) adopted by one relay-worker;
//!   resident memory per conversation and CPU at idle (heartbeats and lease renewals
//!   only), as a share of one core — over plain `ws://` and over `wss://` (the simulator
//!   with its test CA, as Connect speaks TLS) in the same run.
//! * **Relay latency**: inbound queue → Connect SendMessage accepted (the simulator's
//!   item time), p50/p99 at 500 messages/s over 50 customers.
//!
//! Writes `target/bench/relay.json`. `BENCH_SIZES` (default `1000,10000`),
//! `BENCH_IDLE_SECONDS` (default 30) and `BENCH_RATE_SECONDS` (default 10) tune it.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Stack;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_tests::{bench_setting, customer, free_port, procfs, wait, write_bench_report};

async fn until_ready(ops: &str) {
    let http = reqwest::Client::new();
    let url = format!("http://{ops}/readyz");
    wait::until("the relay to be ready", Duration::from_secs(30), || async {
        http.get(&url)
            .send()
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
}

/// N live chats in the simulator with their records in the store, held by nobody.
async fn seed(stack: &Stack, n: usize) {
    let api = stack.connect_api().await;
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(n.div_ceil(32))
        .map(<[usize]>::to_vec)
        .collect();
    let tasks = chunks.into_iter().map(|chunk| {
        let api = api.clone();
        async move {
            for i in chunk {
                let key = waconnect_tests::key(i);
                stack.live_record(&api, key, &format!("bench-{i}")).await;
            }
        }
    });
    futures_util::future::join_all(tasks).await;
}

async fn holding(n: usize, idle: Duration, tls: bool) -> serde_json::Value {
    let stack = Stack::with(waconnect_sim::connect::SimOptions {
        tls,
        ..Default::default()
    })
    .await;
    let transport = if tls { "wss" } else { "ws" };
    let ops = free_port().await;
    let mut relay = stack.relay_process(
        "bench",
        &[
            ("WACONNECT_RELAY_OPS_BIND", &ops),
            ("WACONNECT_RELAY_LEASE", "30s"),
            ("WACONNECT_RELAY_HEARTBEAT", "10s"),
            ("WACONNECT_RELAY_SWEEP_INTERVAL", "200ms"),
            ("WACONNECT_RELAY_SWEEP_BATCH", "1000"),
            ("RUST_LOG", "error"),
        ],
    );
    let pid = relay.id().unwrap();
    until_ready(&ops).await;
    let rss_empty = procfs::status_kib(pid, "VmRSS:");
    let started = Instant::now();
    seed(&stack, n).await;
    wait::until(
        "every conversation held",
        Duration::from_secs(600),
        || async { (stack.desk.stats().await.ok()?.sockets >= n).then_some(()) },
    )
    .await;
    let adopted_in = started.elapsed();
    // Let adoption's backfills and first renewals finish before measuring idle.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss_held = procfs::status_kib(pid, "VmRSS:");
    let ticks_before = procfs::cpu_ticks(pid);
    let window = Instant::now();
    let heartbeats_before = stack.desk.stats().await.unwrap().calls_to("Heartbeat");
    tokio::time::sleep(idle).await;
    let seconds = window.elapsed().as_secs_f64();
    let cpu =
        (procfs::cpu_ticks(pid) - ticks_before) as f64 / procfs::clock_ticks_per_second() / seconds;
    let heartbeats = stack.desk.stats().await.unwrap().calls_to("Heartbeat") - heartbeats_before;
    let rss_peak = procfs::status_kib(pid, "VmHWM:");
    relay.start_kill().unwrap();
    let per_conversation_kib = (rss_held.saturating_sub(rss_empty)) as f64 / n as f64;
    let report = json!({
        "transport": transport,
        "conversations": n,
        "adopted_in_seconds": adopted_in.as_secs_f64(),
        "rss_empty_kib": rss_empty,
        "rss_held_kib": rss_held,
        "rss_peak_kib": rss_peak,
        "rss_per_conversation_kib": per_conversation_kib,
        "idle_window_seconds": seconds,
        "idle_cpu_share_of_one_core": cpu,
        "idle_cpu_share_per_10k": cpu * 10_000.0 / n as f64,
        "heartbeats_per_second": heartbeats as f64 / seconds,
    });
    println!(
        "holding {n:>6} over {transport:>3}: {per_conversation_kib:.1} KiB/conversation, idle CPU {:.2}% of a core ({:.2}% per 10k), adopted in {:.1} s",
        cpu * 100.0,
        cpu * 100.0 * 10_000.0 / n as f64,
        adopted_in.as_secs_f64()
    );
    report
}

async fn latency(rate: u32, seconds: u64) -> serde_json::Value {
    const CUSTOMERS: usize = 50;
    let stack = Stack::new().await;
    let ops = free_port().await;
    let mut relay = stack.relay_process(
        "bench",
        &[("WACONNECT_RELAY_OPS_BIND", &ops), ("RUST_LOG", "error")],
    );
    until_ready(&ops).await;
    for i in 0..CUSTOMERS {
        stack
            .customer_says(&customer(i), &format!("warm-{i}"), "warm")
            .await;
    }
    let mut contacts = Vec::new();
    for i in 0..CUSTOMERS {
        contacts.push(stack.contact_of(&customer(i)).await);
    }
    let total = rate as usize * seconds as usize;
    let mut sent_at: Vec<i64> = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    for seq in 0..total {
        tick.tick().await;
        sent_at.push(chrono::Utc::now().timestamp_millis());
        stack
            .customer_says(
                &customer(seq % CUSTOMERS),
                &format!("SM{seq}"),
                &format!("lat {seq}"),
            )
            .await;
    }
    let offered = total as f64 / start.elapsed().as_secs_f64();
    let accepted_at: HashMap<usize, i64> = wait::until(
        "every message in Connect",
        Duration::from_secs(120),
        || async {
            let mut accepted = HashMap::new();
            for contact in &contacts {
                for item in stack.desk.transcript(contact).await.ok()? {
                    if let Some(seq) = item.content.as_deref().and_then(|c| c.strip_prefix("lat "))
                    {
                        let t = chrono::DateTime::parse_from_rfc3339(&item.absolute_time).ok()?;
                        accepted.insert(seq.parse().ok()?, t.timestamp_millis());
                    }
                }
            }
            (accepted.len() == total).then_some(accepted)
        },
    )
    .await;
    relay.start_kill().unwrap();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for (seq, at) in &accepted_at {
        h.record((at - sent_at[*seq]).max(0) as u64).unwrap();
    }
    println!(
        "latency at {offered:.0} msg/s: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({total} messages)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
    json!({
        "offered_per_second": offered,
        "messages": total,
        "customers": CUSTOMERS,
        "p50_ms": h.value_at_quantile(0.5),
        "p90_ms": h.value_at_quantile(0.9),
        "p99_ms": h.value_at_quantile(0.99),
        "max_ms": h.max(),
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let idle = Duration::from_secs(bench_setting("BENCH_IDLE_SECONDS", 30));
        let mut holdings = Vec::new();
        for n in sizes {
            for tls in [false, true] {
                holdings.push(holding(n, idle, tls).await);
            }
        }
        let latency = latency(500, bench_setting("BENCH_RATE_SECONDS", 10)).await;
        let results = json!({ "holding": holdings, "latency": latency });
        write_bench_report("relay", &results);
    });
}
