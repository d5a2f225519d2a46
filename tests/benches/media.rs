//! Media relaying, both ways, over the full loop of real (release) processes, with
//! `BENCH_TRANSFERS` (default 20) files of `BENCH_MB` (default 16) MiB at once each way
//! (at most 15 MiB to the customer: WhatsApp takes documents up to 16 MB through Twilio),
//! into chats that already exist:
//!
//! - customer → agent: every customer sends a document; the relay fetches it from the
//!   Twilio simulator (Basic auth, redirect) and attaches it in the Connect simulator
//!   (Start, PUT, Complete).
//! - agent → customer: every agent sends a document, which Connect's scanning approves at
//!   one instant for all; the relay fetches it (GetAttachment), keeps it in the media
//!   store, the sender gives Twilio its URL, and the Twilio simulator fetches it from
//!   ingress as Twilio does before the phone shows it.
//!
//! Reports, per direction, the relay's added resident memory per transfer in flight (its
//! peak RSS during the burst over its RSS before, over the transfers: streamed, it stays
//! far under the file size; for agent → customer also ingress's, which serves the files)
//! and the time of the burst next to a plain copy of the same bytes over loopback right
//! after it: the same number of concurrent GETs from the simulator the files come from,
//! streamed into PUTs to a sink that keeps them, as the simulators do. An agent's file
//! travels twice by design (Connect's URL expires in minutes, so the relay keeps the file
//! before Twilio fetches it from us), so that direction is also set against the two plain
//! copies it makes: the copy above, then every kept file fetched back from the sink at
//! once. `BENCH_ROUNDS` (default 3) bursts each way; the ratios reported are their
//! median. Also the CPU time each of our services spent per MiB relayed (median of the
//! rounds): the burst's wall time swings with the machine's other tenants and with the
//! simulators sharing its two cores, the CPU it took much less. Writes
//! `target/bench/media.json`. The services run with `synchronous=full`, the default, so an
//! agent's file is on disk before Twilio gets its URL (`BENCH_SYNCHRONOUS=normal` to
//! compare).
//!
//! `cargo build --release --bins && cargo bench -p waconnect-tests --bench media`.

use std::time::{Duration, Instant, SystemTime};
use waconnect_sim::connect::Scan;
use waconnect_sim::twilio::{CustomerMessage, Media};
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::procfs::{self, reset_peak, status_kib};
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

/// The plain copies, all at once: each file fetched from its simulator's storage (with
/// `auth`, and any redirect) and streamed into a PUT to a sink, which keeps it in memory
/// as the simulators do with what they receive, so both paths pay the same at the far
/// end. With `and_fetch` (an agent's file, which travels twice by design: into the media
/// store, then to Twilio), every kept file is then fetched back from the sink into memory
/// as Twilio fetches it. Wall time of the first copy, and of both.
async fn plain_copies(
    urls: &[String],
    auth: Option<(String, String)>,
    and_fetch: bool,
) -> (Duration, Duration) {
    use axum::extract::{Path, State};
    use axum::routing::{get, put};
    type Kept = std::sync::Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>;
    let kept = Kept::default();
    let sink = axum::Router::new()
        .route(
            "/sink",
            put(
                |State(kept): State<Kept>, body: axum::body::Bytes| async move {
                    let len = body.len();
                    let mut kept = kept.lock().unwrap();
                    kept.push(body);
                    format!("{len} {}", kept.len() - 1)
                },
            )
            .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/sink/{i}",
            get(
                |State(kept): State<Kept>, Path(i): Path<usize>| async move {
                    kept.lock().unwrap()[i].clone()
                },
            ),
        )
        .with_state(kept);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}/sink", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, sink).await });
    let http = reqwest::Client::new();
    let started = Instant::now();
    let copies = urls.iter().map(|url| {
        let (http, url, sink_url, auth) =
            (http.clone(), url.clone(), sink_url.clone(), auth.clone());
        tokio::spawn(async move {
            let mut get = http.get(&url);
            if let Some((user, password)) = auth {
                get = get.basic_auth(user, Some(password));
            }
            let got = get.send().await.unwrap().error_for_status().unwrap();
            let len = got.content_length().unwrap();
            let body = reqwest::Body::wrap_stream(got.bytes_stream());
            let put = http
                .put(&sink_url)
                .header("content-length", len)
                .body(body)
                .send()
                .await
                .unwrap();
            let answer = put.text().await.unwrap();
            let (stored, index) = answer.split_once(' ').unwrap();
            assert_eq!(stored, len.to_string());
            (index.to_owned(), len)
        })
    });
    let mut stored = Vec::new();
    for c in copies.collect::<Vec<_>>() {
        stored.push(c.await.unwrap());
    }
    let first = started.elapsed();
    if and_fetch {
        let fetches = stored.into_iter().map(|(index, len)| {
            let (http, url) = (http.clone(), format!("{sink_url}/{index}"));
            tokio::spawn(async move {
                let got = http
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap();
                assert_eq!(got.bytes().await.unwrap().len() as u64, len);
            })
        });
        for f in fetches.collect::<Vec<_>>() {
            f.await.unwrap();
        }
    }
    let both = started.elapsed();
    // The sink and what it kept go before the next copy.
    server.abort();
    (first, both)
}

/// One burst of one direction, and its plain copy right after.
struct Round {
    relayed: Duration,
    plain: Duration,
    /// The copies an agent's file needs by design (into the store, then to Twilio), done
    /// plainly one after the other.
    plain_twice: Option<Duration>,
    /// Added resident KiB per transfer in flight, by process.
    added_kib: Vec<(&'static str, f64)>,
    /// CPU seconds each of our processes spent on the burst.
    cpu_seconds: Vec<(&'static str, f64)>,
}

/// Our services' CPU ticks, to set against the same after a burst: CPU time per MiB
/// moves far less with the machine's other tenants than the burst's wall time does.
struct CpuMark(Vec<(&'static str, u32, u64)>);

impl CpuMark {
    fn now(processes: &[(&'static str, u32)]) -> Self {
        Self(
            processes
                .iter()
                .map(|&(name, pid)| (name, pid, procfs::cpu_ticks(pid)))
                .collect(),
        )
    }

    fn seconds_since(&self) -> Vec<(&'static str, f64)> {
        self.0
            .iter()
            .map(|&(name, pid, before)| {
                let ticks = procfs::cpu_ticks(pid).saturating_sub(before);
                (name, ticks as f64 / procfs::clock_ticks_per_second())
            })
            .collect()
    }
}

impl Round {
    fn ratio(&self) -> f64 {
        self.relayed.as_secs_f64() / self.plain.as_secs_f64()
    }

    fn ratio_twice(&self) -> Option<f64> {
        Some(self.relayed.as_secs_f64() / self.plain_twice?.as_secs_f64())
    }
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A direction's rounds: the median ratio (this machine is shared and noisy; one burst
/// of half a second says little alone), the largest added memory.
fn report(rounds: &[Round], direction: &str, transfers: usize, mb: usize) -> serde_json::Value {
    let ratio = median(rounds.iter().map(Round::ratio).collect());
    let relayed = median(rounds.iter().map(|r| r.relayed.as_secs_f64()).collect());
    let plain = median(rounds.iter().map(|r| r.plain.as_secs_f64()).collect());
    let mut memory = Vec::new();
    let mut report = serde_json::json!({
        "relayed_seconds": relayed,
        "plain_copy_seconds": plain,
        "time_ratio": ratio,
        "round_ratios": rounds.iter().map(Round::ratio).collect::<Vec<_>>(),
    });
    let mut twice = String::new();
    if let Some(ratios) = rounds
        .iter()
        .map(Round::ratio_twice)
        .collect::<Option<Vec<_>>>()
    {
        let seconds = median(
            rounds
                .iter()
                .filter_map(|r| r.plain_twice)
                .map(|d| d.as_secs_f64())
                .collect(),
        );
        let ratio_twice = median(ratios.clone());
        report["plain_two_copies_seconds"] = serde_json::json!(seconds);
        report["time_ratio_to_two_copies"] = serde_json::json!(ratio_twice);
        report["round_ratios_to_two_copies"] = serde_json::json!(ratios);
        twice = format!(
            "; against the two plain copies it makes by design ({seconds:.2} s) {ratio_twice:.2}×"
        );
    }
    for (i, (process, _)) in rounds[0].added_kib.iter().enumerate() {
        let kib = rounds.iter().map(|r| r.added_kib[i].1).fold(0.0, f64::max);
        memory.push(format!("{process} {kib:.0} KiB"));
        report[format!("{process}_added_kib_per_transfer")] = serde_json::json!(kib);
    }
    let mib = (transfers * mb) as f64;
    let mut cpu = Vec::new();
    for (i, (process, _)) in rounds[0].cpu_seconds.iter().enumerate() {
        let ms = median(rounds.iter().map(|r| r.cpu_seconds[i].1).collect()) * 1000.0 / mib;
        cpu.push(format!("{process} {ms:.2} ms"));
        report[format!("{process}_cpu_ms_per_mib")] = serde_json::json!(ms);
    }
    let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.ratio())).collect();
    println!(
        "{transfers} × {mb} MiB, {direction}: relayed in {relayed:.2} s, plain copy {plain:.2} s, median of {} rounds {ratio:.2}× ({}){twice}; added per transfer in flight, at most: {}; CPU per MiB relayed, median: {}",
        rounds.len(),
        ratios.join(", "),
        memory.join(", "),
        cpu.join(", ")
    );
    report
}

/// A process's peak resident memory since the last [`reset_peak`] over its RSS then
/// (`before`), per transfer.
fn added_per_transfer(pid: u32, before: u64, transfers: usize) -> f64 {
    status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / transfers as f64
}

/// Resets `pid`'s peak and gives its resident memory now.
fn baseline(pid: u32) -> u64 {
    reset_peak(pid);
    status_kib(pid, "VmRSS:")
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
    let rounds: usize = bench_setting("BENCH_ROUNDS", 3);
    // As deployed by default: each commit, and each agent's file in the media directory,
    // on disk before it is acknowledged. `BENCH_SYNCHRONOUS=normal` sets it against that.
    let synchronous = match bench_setting("BENCH_SYNCHRONOUS", String::from("full")).as_str() {
        "normal" => "normal",
        _ => "full",
    };
    let lp = FullLoop::start(LoopOptions {
        synchronous: Some(synchronous),
        ..LoopOptions::default()
    })
    .await;
    // Every customer's chat exists, accepted by an agent, before either burst: the bench
    // times file transfers, not chat starts.
    let contacts = lp.customers_write_and_agents_accept(transfers, 1).await;
    let inbound = customer_to_agent(&lp, transfers, mb, rounds).await;
    // WhatsApp takes documents up to 16 MB through Twilio.
    let outbound_mb = mb.min(15);
    let outbound = agent_to_customer(&lp, &contacts, outbound_mb, rounds).await;
    let mut report = serde_json::json!({
        "transfers": transfers,
        "file_mb": mb,
        "agent_file_mb": outbound_mb,
        "rounds": rounds,
        "synchronous": synchronous,
        "customer_to_agent": report(&inbound, "customer → agent", transfers, mb),
        "agent_to_customer": report(&outbound, "agent → customer", transfers, outbound_mb),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    // The headline keys of earlier reports: the customer → agent direction.
    report["time_ratio"] = report["customer_to_agent"]["time_ratio"].clone();
    report["added_kib_per_transfer"] =
        report["customer_to_agent"]["relay_added_kib_per_transfer"].clone();
    write_bench_report("media", &report);
}

async fn customer_to_agent(
    lp: &FullLoop,
    transfers: usize,
    mb: usize,
    rounds: usize,
) -> Vec<Round> {
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let relay_pid = lp.relay.id().expect("the relay runs");
    let processes = [
        ("relay", relay_pid),
        ("ingress", lp.ingress.id().expect("ingress runs")),
    ];
    // Warm up: one small file, so the relay's pools and buffers exist before the baseline.
    let sid = phone
        .upload(document(0, 0), "application/pdf")
        .await
        .unwrap();
    let (_, status) = phone
        .send(&file_message(customer(0).as_str(), &sid))
        .await
        .unwrap();
    assert_eq!(status, 200);
    wait::until("the warm-up file", Duration::from_secs(30), || async {
        let stats = desk.stats().await.ok()?;
        (stats.calls_to("CompleteAttachmentUpload") >= 1).then_some(())
    })
    .await;
    let mut done = Vec::new();
    for round in 0..rounds {
        let mut sids = Vec::new();
        for c in 0..transfers {
            let seed = (c + round * transfers) as u8;
            sids.push(
                phone
                    .upload(document(mb, seed), "application/pdf")
                    .await
                    .unwrap(),
            );
        }
        let before = baseline(relay_pid);

        // The burst: every customer's file at once.
        let cpu = CpuMark::now(&processes);
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
        let attached = 1 + (transfers * (round + 1)) as u64;
        wait::until("every file attached", Duration::from_secs(300), || async {
            let stats = desk.stats().await.ok()?;
            (stats.calls_to("CompleteAttachmentUpload") >= attached).then_some(())
        })
        .await;
        let relayed = started.elapsed();
        let cpu_seconds = cpu.seconds_since();
        let added_kib = vec![("relay", added_per_transfer(relay_pid, before, transfers))];

        // The same bytes copied plainly, from the same simulator storage.
        let o = lp.twilio.options();
        let urls: Vec<String> = message_sids
            .iter()
            .zip(&sids)
            .map(|(message, media)| {
                format!(
                    "{}/2010-04-01/Accounts/{}/Messages/{message}/Media/{media}",
                    lp.twilio.api_base(),
                    o.account_sid
                )
            })
            .collect();
        let auth = Some((o.account_sid.clone(), o.auth_token.clone()));
        let (plain, _) = plain_copies(&urls, auth, false).await;
        done.push(Round {
            relayed,
            plain,
            plain_twice: None,
            added_kib,
            cpu_seconds,
        });
    }
    done
}

/// How long before the agents' files are approved they are uploaded to the simulator
/// (which takes well under a second for 20 × 15 MiB here).
const UPLOAD_LEAD: Duration = Duration::from_secs(5);

async fn agent_to_customer(
    lp: &FullLoop,
    contacts: &[String],
    mb: usize,
    rounds: usize,
) -> Vec<Round> {
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let transfers = contacts.len();
    let pids = [
        ("relay", lp.relay.id().expect("the relay runs")),
        ("ingress", lp.ingress.id().expect("ingress runs")),
    ];
    let processes = [
        pids[0],
        pids[1],
        ("sender", lp.sender.id().expect("the sender runs")),
    ];
    let fetched = |sent: &[serde_json::Value]| {
        let files: Vec<&serde_json::Value> = sent
            .iter()
            .filter(|m| m["media_urls"].as_array().is_some_and(|u| !u.is_empty()))
            .collect();
        assert!(
            files.iter().all(|m| m["status"] != "failed"),
            "Twilio failed a file: {files:?}"
        );
        files
            .iter()
            .filter(|m| matches!(m["status"].as_str(), Some("sent" | "delivered" | "read")))
            .count()
    };
    // Warm up: one small file through the whole path (media store, sender, ingress).
    desk.send_file(
        &contacts[0],
        "warm.pdf",
        "application/pdf",
        document(0, 0),
        "APPROVED",
    )
    .await
    .unwrap();
    wait::until("the warm-up file", Duration::from_secs(30), || async {
        (fetched(&phone.sent().await.ok()?) >= 1).then_some(())
    })
    .await;
    let mut done = Vec::new();
    for round in 0..rounds {
        let befores: Vec<u64> = pids.iter().map(|(_, pid)| baseline(*pid)).collect();
        // Taken before the uploads, during which our services have nothing to do.
        let cpu = CpuMark::now(&processes);
        // The burst: every agent's file, approved at one instant.
        let approve_at = SystemTime::now() + UPLOAD_LEAD;
        let started = Instant::now() + UPLOAD_LEAD;
        let uploads = contacts.iter().enumerate().map(|(c, contact)| {
            let (desk, contact) = (desk.clone(), contact.clone());
            let seed = (100 + c + round * transfers) as u8;
            tokio::spawn(async move {
                let item = desk
                    .send_scanned_file(
                        &contact,
                        &format!("manual-{c}.pdf"),
                        "application/pdf",
                        document(mb, seed),
                        "APPROVED",
                        Some(Scan::Until(approve_at)),
                    )
                    .await
                    .unwrap();
                item.attachments[0].attachment_id.clone()
            })
        });
        let mut attachment_ids = Vec::new();
        for u in uploads.collect::<Vec<_>>() {
            attachment_ids.push(u.await.unwrap());
        }
        assert!(
            Instant::now() < started,
            "the agents' uploads took longer than {UPLOAD_LEAD:?}: the burst would not start at once"
        );
        let on_phones = 1 + transfers * (round + 1);
        wait::until(
            "every file on the phone",
            Duration::from_secs(300),
            || async { (fetched(&phone.sent().await.ok()?) >= on_phones).then_some(()) },
        )
        .await;
        let relayed = started.elapsed();
        let cpu_seconds = cpu.seconds_since();
        let added_kib = pids
            .iter()
            .zip(&befores)
            .map(|((name, pid), before)| (*name, added_per_transfer(*pid, *before, transfers)))
            .collect();

        // The same bytes copied plainly, from Connect's storage.
        let urls: Vec<String> = attachment_ids
            .iter()
            .map(|id| format!("{}/attachments/{id}", lp.connect.endpoint()))
            .collect();
        let (plain, twice) = plain_copies(&urls, None, true).await;
        done.push(Round {
            relayed,
            plain,
            plain_twice: Some(twice),
            added_kib,
            cpu_seconds,
        });
    }
    done
}
