//! The services' own client libraries against the simulators: if Twilio's Python library,
//! AWS's (boto3) or Amazon's chat client (amazon-connect-chatjs, in Chromium) can tell a
//! simulator from the real service — a field they cannot parse, an error they do not
//! recognise, a page they cannot follow, a signature they reject, a socket they cannot
//! keep — the simulator is kinder or stranger than the service, and the product's tests
//! on it prove less. The scripts (tests/official/, tests/browser/chatjs.mjs) do what an
//! application using each library does, and fail with the reason.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use waconnect_sim::connect::ConnectSim;
use waconnect_sim::twilio::{TwilioOptions, TwilioSim};
use waconnect_tests::moto::python;

/// Runs `script` (under tests/official/) with the venv's Python and `env`.
async fn run(script: &str, env: &[(&str, String)]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("official")
        .join(script);
    let mut command = tokio::process::Command::new(python());
    command.arg(&path).envs(env.iter().map(|(k, v)| (k, v)));
    finish(script, command).await;
}

/// Runs `command` and fails with its output unless it passes within a minute.
async fn finish(name: &str, mut command: tokio::process::Command) {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {name} ({e}); tests/run prepares the venv and tests/browser's packages")
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within 60 s"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed:\n{text}");
    println!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_s_library_cannot_tell_the_simulator_from_twilio() {
    let twilio = TwilioSim::start_with(TwilioOptions::default()).await;
    let o = twilio.options();
    run(
        "twilio_library.py",
        &[
            ("TWILIO_API", twilio.api_base()),
            ("TWILIO_ACCOUNT_SID", o.account_sid.clone()),
            ("TWILIO_AUTH_TOKEN", o.auth_token.clone()),
            ("TWILIO_SENDER", o.sender.clone()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_s_sdk_cannot_tell_the_simulator_from_connect() {
    let connect = ConnectSim::start().await;
    run(
        "boto3_connect.py",
        &[
            ("CONNECT_ENDPOINT", connect.endpoint()),
            ("CONNECT_INSTANCE_ID", connect.instance_id().to_owned()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amazon_s_chat_client_cannot_tell_the_simulator_from_connect() {
    let connect = ConnectSim::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/chatjs.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .arg(connect.endpoint())
        .arg(connect.instance_id());
    finish("chatjs.mjs", command).await;
}
