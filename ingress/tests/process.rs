//! The ingress binary as operators run it: configuration from the environment, JSON logs,
//! SIGTERM to stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ingress(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
    cmd.env_clear().envs(vars.iter().copied());
    cmd
}

#[test]
fn refuses_to_start_and_names_every_missing_variable() {
    let out = ingress(&[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TWILIO_AUTH_TOKEN"), "{stderr}");
    assert!(stderr.contains("WACONNECT_PUBLIC_BASE_URL"), "{stderr}");
}

#[test]
fn insecure_mode_cannot_be_switched_on_by_accident() {
    let out = ingress(&[("WACONNECT_INSECURE_SKIP_SIGNATURE", "true")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WACONNECT_INSECURE_SKIP_SIGNATURE"),
        "{stderr}"
    );
}

#[test]
fn serves_logs_json_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let mut child = ingress(&[
        ("TWILIO_AUTH_TOKEN", "super-secret-auth-token"),
        ("WACONNECT_PUBLIC_BASE_URL", "https://wa.example.test"),
        ("WACONNECT_INGRESS_BIND", "127.0.0.1:0"),
        ("WACONNECT_SQLITE_PATH", db.to_str().unwrap()),
        ("RUST_LOG", "debug"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let address = loop {
        let line = lines
            .next()
            .expect("ingress exited before listening")
            .unwrap();
        seen.push(line.clone());
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if json["message"] == "ingress listening" {
            break json["address"].as_str().unwrap().to_owned();
        }
    };
    let (status, _) = http_get::get(&format!("http://{address}/healthz"));
    assert_eq!(status, 200);
    // A fresh process: anything recorded before the recorder was installed would be lost.
    let (_, metrics) = http_get::get(&format!("http://{address}/metrics"));
    assert!(
        metrics.contains("waconnect_ingress_insecure_mode 0"),
        "{metrics}"
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    seen.extend(lines.map_while(Result::ok));
    let logs = seen.join("\n");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains("super-secret-auth-token"),
        "secret in logs:\n{logs}"
    );
}

mod http_get {
    /// A dependency-free GET for a test that runs outside an async runtime: status and body.
    pub fn get(url: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}
