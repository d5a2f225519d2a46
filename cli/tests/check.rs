//! `waconnect check` against the simulators and moto: a good configuration passes; a wrong
//! Twilio token, a missing contact flow and a missing queue are each named with what to
//! fix; `--offline` checks the variables and calls nothing.

mod common;

use common::{Sims, WACONNECT};
use serde_json::Value;
use waconnect_sim::connect::SimOptions;
use waconnect_tests::moto::Moto;

fn sims_options() -> SimOptions {
    SimOptions {
        // The instance has this one flow: any other is ResourceNotFound, as in Connect.
        contact_flows: vec![waconnect_sim::wiring::CONTACT_FLOW.into()],
        ..SimOptions::default()
    }
}

async fn check(vars: &[(String, String)], args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(WACONNECT)
        .arg("check")
        .args(args)
        .env_clear()
        .envs(vars.iter().cloned())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn set(vars: &mut Vec<(String, String)>, name: &str, value: &str) {
    vars.retain(|(k, _)| k != name);
    vars.push((name.to_owned(), value.to_owned()));
}

/// The row named `check`, from `--json` output.
fn row<'a>(rows: &'a [Value], check: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no row {check} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_configuration_passes_on_sqlite_and_on_aws() {
    let sims = Sims::start(sims_options()).await;
    let (ok, printed) = check(&sims.vars(), &[]).await;
    assert!(ok, "{printed}");
    assert!(printed.contains("checks passed"), "{printed}");
    assert!(printed.contains("storage: SQLite file"), "{printed}");

    let storage = Moto::shared().fresh("check", 5).await;
    let mut vars = sims.vars();
    vars.extend(Moto::env(&storage));
    let (ok, printed) = check(&vars, &["--json"]).await;
    let rows: Vec<Value> = serde_json::from_str(&printed).unwrap();
    assert!(ok, "{printed}");
    for name in [
        "twilio: credentials",
        "connect: route default: inbound flow",
        "storage: inbound queue",
        "storage: outbound queue",
        "storage: table",
        "storage: media bucket",
    ] {
        assert_eq!(row(&rows, name)["ok"], true, "{name}: {printed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_a_missing_flow_and_a_missing_queue_are_named() {
    let sims = Sims::start(sims_options()).await;
    let storage = Moto::shared().fresh("check-bad", 5).await;
    let mut vars = sims.vars();
    vars.extend(Moto::env(&storage));
    set(&mut vars, "TWILIO_AUTH_TOKEN", "not-the-token");
    set(
        &mut vars,
        "WACONNECT_CONNECT_CONTACT_FLOW_ID",
        "no-such-flow",
    );
    let missing = storage.inbound_queue_url.replace("-inbound", "-nowhere");
    set(&mut vars, "WACONNECT_INBOUND_QUEUE_URL", &missing);
    let (ok, printed) = check(&vars, &["--json"]).await;
    assert!(!ok, "{printed}");
    let rows: Vec<Value> = serde_json::from_str(&printed).unwrap();
    let failed = |name: &str, says: &str| {
        let r = row(&rows, name);
        assert_eq!(r["ok"], false, "{name}: {r}");
        let detail = r["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{name}: {detail}");
    };
    failed("twilio: credentials", "TWILIO_AUTH_TOKEN");
    failed("connect: route default: inbound flow", "no-such-flow");
    failed("storage: inbound queue", "WACONNECT_INBOUND_QUEUE_URL");
    assert_eq!(row(&rows, "storage: outbound queue")["ok"], true);
    assert_eq!(row(&rows, "storage: table")["ok"], true);
    // The token is a secret: the report never shows it.
    assert!(!printed.contains("not-the-token"));
}

#[tokio::test]
async fn offline_checks_the_variables_and_calls_nothing() {
    let sims = Sims::start(sims_options()).await;
    let mut vars = sims.vars();
    set(&mut vars, "WACONNECT_RELAY_LEASE", "5s");
    // Unreachable endpoints: offline, nothing is asked of them.
    set(&mut vars, "WACONNECT_TWILIO_API_BASE", "http://127.0.0.1:9");
    let (ok, printed) = check(&vars, &[]).await;
    assert!(!ok);
    assert!(
        printed.contains("configuration: relay-worker")
            && printed.contains("WACONNECT_RELAY_LEASE"),
        "{printed}"
    );
    set(&mut vars, "WACONNECT_RELAY_LEASE", "30s");
    let (ok, printed) = check(&vars, &["--offline"]).await;
    assert!(ok, "{printed}");
    assert!(!printed.contains("twilio:"), "{printed}");
    let stats = sims.connect.desk().stats().await.unwrap();
    assert_eq!(stats.calls_to("DescribeContactFlow"), 0);
}

/// Twilio signs each status callback for the URL the sender gives it; ingress checks the
/// signature against its own public URL. A URL elsewhere would have every callback
/// refused, and no URL at all means no receipts: both fail the check, offline.
#[tokio::test]
async fn a_status_callback_url_ingress_would_refuse_or_none_fails() {
    let sims = Sims::start(sims_options()).await;
    let mut vars = sims.vars();
    let base = vars
        .iter()
        .find(|(k, _)| k == "WACONNECT_PUBLIC_BASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let status_row = |printed: &str| {
        let rows: Vec<Value> = serde_json::from_str(printed).unwrap();
        row(&rows, "configuration: status callbacks").clone()
    };
    let (ok, printed) = check(&vars, &["--offline", "--json"]).await;
    assert!(ok, "{printed}");
    let r = status_row(&printed);
    assert!(
        r["detail"].as_str().unwrap().contains("#rc=5&rp=5xx,ct,rt"),
        "{r}"
    );

    let elsewhere = base.replace("127.0.0.1", "localhost");
    set(
        &mut vars,
        "WACONNECT_STATUS_CALLBACK_URL",
        &format!("{elsewhere}/twilio/status"),
    );
    let (ok, printed) = check(&vars, &["--offline", "--json"]).await;
    assert!(!ok, "{printed}");
    let r = status_row(&printed);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("WACONNECT_PUBLIC_BASE_URL"),
        "{r}"
    );

    vars.retain(|(k, _)| k != "WACONNECT_STATUS_CALLBACK_URL");
    let (ok, printed) = check(&vars, &["--offline", "--json"]).await;
    assert!(!ok, "{printed}");
    let r = status_row(&printed);
    assert!(r["detail"].as_str().unwrap().contains("receipts"), "{r}");
}
