//! The relay-worker binary refuses a bad configuration, naming each variable.

use std::process::Command;

#[test]
fn refuses_to_start_and_names_the_bad_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .env_clear()
        .env("WACONNECT_RELAY_OPS_BIND", "not-an-address")
        .env("WACONNECT_MAX_RECEIVES", "zero")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WACONNECT_RELAY_OPS_BIND"), "{stderr}");
    assert!(stderr.contains("WACONNECT_MAX_RECEIVES"), "{stderr}");
    for required in [
        "AWS_REGION",
        "WACONNECT_CONNECT_INSTANCE_ID",
        "WACONNECT_CONNECT_CONTACT_FLOW_ID",
    ] {
        assert!(stderr.contains(required), "{required} not named: {stderr}");
    }
}
