//! Media relaying, customer → agent, over the full loop of real (release) processes:
//! `BENCH_TRANSFERS` (default 20) customers each send a `BENCH_MB` (default 16) MB document
//! at once, into chats that already exist; the relay fetches each from the Twilio simulator (Basic auth, redirect) and
//! attaches it in the Connect simulator (Start, PUT, Complete).
//!
//! Reports the relay's added resident memory per transfer in flight (its peak RSS during
//! the burst over its RSS before, over the transfers: streamed, it stays far under the
//! file size) and the time per transfer next to a plain copy of the same bytes over
//! loopback in the same run (20 concurrent GETs from the Twilio simulator's storage
//! streamed into PUTs to a sink that keeps them, as the Connect simulator does; the
//! mean of two such copies after the relay's run). Writes `target/bench/media.json`.
//!
//! `cargo build --release --bins && cargo bench -p waconnect-tests --bench media`.

use std::time::{Duration, Instant};
use waconnect_sim::twilio::{CustomerMessage, Media};
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::procfs::status_kib;
use waconnect_tests::{bench_setting, customer, wait, write_bench_report};

/// The services run as release processes, built beforehand (a bench does not build
/// other packages' binaries).
fn ensure_release_binaries() {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|d| d.parent()).unwrap();
    for binary in ["ingress", "relay-worker", "outbound-sender"] {
        assert!(
            release.join(binary).exists(),
            "{binary} is not built: run `cargo build --release --bins` first"
        );
    }
}

fn document(mb: usize, seed: u8) -> Vec<u8> {
    let mut bytes = b"%PDF-1.4\n".to_vec();
    bytes.extend((0..mb * 1024 * 1024).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

/// The plain copy: each file fetched from the Twilio simulator's storage (the same auth
/// and redirect) and streamed into a PUT to a sink, all at once. Wall time.
async fn plain_copies(lp: &FullLoop, urls: &[String]) -> Duration {
    use axum::routing::put;
    // The sink keeps each file in memory, as the Connect simulator's upload URL does, so
    // both paths pay the same at the far end.
    let sink = axum::Router::new().route(
        "/sink",
        put(|body: axum::body::Bytes| async move {
            let kept = body.to_vec();
            kept.len().to_string()
        })
        .layer(axum::extract::DefaultBodyLimit::disable()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}/sink", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, sink).await });
    let o = lp.twilio.options().clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let copies = urls.iter().map(|url| {
        let (http, url, sink_url, o) = (http.clone(), url.clone(), sink_url.clone(), o.clone());
        tokio::spawn(async move {
            let got = http
                .get(&url)
                .basic_auth(&o.account_sid, Some(&o.auth_token))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
            let len = got.content_length().unwrap();
            let body = reqwest::Body::wrap_stream(got.bytes_stream());
            let put = http
                .put(&sink_url)
                .header("content-length", len)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(put.text().await.unwrap(), len.to_string());
        })
    });
    for c in copies.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    started.elapsed()
}

fn file_message(from: &str, media_sid: &str) -> CustomerMessage {
    CustomerMessage {
        from: from.to_owned(),
        media: vec![Media {
            url: String::new(),
            content_type: "application/pdf".into(),
            sid: Some(media_sid.to_owned()),
        }],
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    ensure_release_binaries();
    let transfers: usize = bench_setting("BENCH_TRANSFERS", 20);
    let mb: usize = bench_setting("BENCH_MB", 16);
    let lp = FullLoop::start(LoopOptions::default()).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let relay_pid = lp.relay.id().expect("the relay runs");
    // Warm up: one small file, so the relay's pools and buffers exist before the baseline.
    let warm = customer(1000);
    let sid = phone
        .upload(document(0, 0), "application/pdf")
        .await
        .unwrap();
    wait::until(
        "ingress to take the webhook",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone.send(&file_message(warm.as_str(), &sid)).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    wait::until("the warm-up file", Duration::from_secs(30), || async {
        let stats = desk.stats().await.ok()?;
        (stats.calls_to("CompleteAttachmentUpload") >= 1).then_some(())
    })
    .await;
    // Every customer's chat exists before the burst: the bench times file transfers, not
    // chat starts (a first message starts the chat whatever it carries).
    for c in 0..transfers {
        let hello = CustomerMessage {
            from: customer(c).as_str().to_owned(),
            body: "hello".into(),
            ..Default::default()
        };
        let (_, status) = phone.send(&hello).await.unwrap();
        assert_eq!(status, 200);
    }
    wait::until("every chat started", Duration::from_secs(60), || async {
        let stats = desk.stats().await.ok()?;
        (stats.calls_to("SendMessage") >= transfers as u64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_kib = status_kib(relay_pid, "VmRSS:");

    // The burst: every customer's file at once.
    let mut sids = Vec::new();
    for c in 0..transfers {
        sids.push(
            phone
                .upload(document(mb, c as u8), "application/pdf")
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let sends = sids.iter().enumerate().map(|(c, sid)| {
        let (phone, message) = (phone.clone(), file_message(customer(c).as_str(), sid));
        tokio::spawn(async move {
            let (message_sid, status) = phone.send(&message).await.unwrap();
            assert_eq!(status, 200);
            message_sid
        })
    });
    let mut message_sids = Vec::new();
    for s in sends.collect::<Vec<_>>() {
        message_sids.push(s.await.unwrap());
    }
    wait::until("every file attached", Duration::from_secs(300), || async {
        let stats = desk.stats().await.ok()?;
        (stats.calls_to("CompleteAttachmentUpload") > transfers as u64).then_some(())
    })
    .await;
    let relayed = started.elapsed();
    // The relay's peak resident memory: the burst is the largest thing it ever did.
    let peak_kib = status_kib(relay_pid, "VmHWM:");
    let per_transfer_kib = peak_kib.saturating_sub(baseline_kib) as f64 / transfers as f64;

    // The same bytes copied plainly, from the same simulator storage.
    let urls: Vec<String> = message_sids
        .iter()
        .zip(&sids)
        .map(|(message, media)| {
            format!(
                "{}/2010-04-01/Accounts/{}/Messages/{message}/Media/{media}",
                lp.twilio.api_base(),
                lp.twilio.options().account_sid
            )
        })
        .collect();
    let plain = (plain_copies(&lp, &urls).await + plain_copies(&lp, &urls).await) / 2;
    let ratio = relayed.as_secs_f64() / plain.as_secs_f64();
    println!(
        "{transfers} × {mb} MB, customer → agent: relayed in {:.2} s, plain copy {:.2} s ({ratio:.2}×); relay RSS {baseline_kib} KiB before, peak {peak_kib} KiB: {per_transfer_kib:.0} KiB per transfer in flight",
        relayed.as_secs_f64(),
        plain.as_secs_f64()
    );
    write_bench_report(
        "media",
        &serde_json::json!({
            "transfers": transfers,
            "file_mb": mb,
            "relayed_seconds": relayed.as_secs_f64(),
            "plain_copy_seconds": plain.as_secs_f64(),
            "time_ratio": ratio,
            "relay_rss_before_kib": baseline_kib,
            "relay_rss_peak_kib": peak_kib,
            "added_kib_per_transfer": per_transfer_kib,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        }),
    );
}
