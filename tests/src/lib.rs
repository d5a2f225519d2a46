//! Test equipment for waconnect: the contract suites every storage engine must pass, the
//! engines' test factories (moto included), and helpers shared by the end-to-end tests
//! and benches. The simulated Twilio and Connect are their own crate, `waconnect-sim`,
//! which the sandbox ships too.

pub mod aws_faults;
pub mod balancer;
pub mod chaos;
pub mod contract;
pub mod engines;
pub mod full_loop;
pub mod moto;
pub mod processes;
pub mod procfs;
pub mod twilio;
pub mod upstream;

use waconnect_shared::{BusinessNumber, ConversationKey, CustomerAddress};
pub use waconnect_sim::wait;

/// A distinct, valid WhatsApp customer for test number `i`.
pub fn customer(i: usize) -> CustomerAddress {
    CustomerAddress::parse(&format!("whatsapp:+1555{i:07}")).expect("valid test number")
}

/// The business number test customers write to: the simulated sender's.
pub const BUSINESS: &str = "whatsapp:+14155238886";

pub fn business() -> BusinessNumber {
    BusinessNumber::parse(BUSINESS).expect("valid business number")
}

/// Test customer `i`'s conversation with [`BUSINESS`].
pub fn key(i: usize) -> ConversationKey {
    key_of(&customer(i))
}

/// `customer`'s conversation with [`BUSINESS`].
pub fn key_of(customer: &CustomerAddress) -> ConversationKey {
    ConversationKey::new(business(), customer.clone())
}

/// A loopback address nobody listens on right now, for a process that binds it itself.
///
/// Picked below the kernel's ephemeral range (32768 and up), so nothing that binds port 0
/// meanwhile (the simulators, moto, client sockets) can take it before its process
/// starts, and never handed out twice by one test process.
pub async fn free_port() -> String {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static GIVEN: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);
    for _ in 0..1000 {
        let port: u16 = rand::random_range(20_000..32_000);
        if !GIVEN.lock().expect("ports lock").insert(port) {
            continue;
        }
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener.local_addr().expect("bound address").to_string();
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// A bench knob from the environment, or its default.
pub fn bench_setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where every bench writes its JSON report (`target/bench`).
pub fn bench_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// Writes a bench's figures to `target/bench/<name>.json` and says where.
pub fn write_bench_report(name: &str, report: &serde_json::Value) {
    let out = bench_dir();
    std::fs::create_dir_all(&out).expect("create target/bench");
    let file = out.join(format!("{name}.json"));
    // Where the figures come from, so a table of them can say it.
    let mut report = report.clone();
    if let Some(fields) = report.as_object_mut() {
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        fields.insert("measured_at".into(), chrono::Utc::now().to_rfc3339().into());
        fields.insert("commit".into(), commit.into());
        fields.entry("cores").or_insert_with(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .into()
        });
    }
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&report).expect("JSON serialises"),
    )
    .expect("write the bench report");
    println!("wrote {}", file.display());
}
