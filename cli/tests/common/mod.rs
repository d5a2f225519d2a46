//! The simulators and the variables `waconnect` needs to run against them.
//! Each test binary uses a part of it.
#![allow(dead_code)]

use waconnect_sim::connect::{ConnectSim, SimOptions};
use waconnect_sim::twilio::{TwilioOptions, TwilioSim};
use waconnect_sim::wiring::{Wiring, pairs};
use waconnect_tests::free_port;

pub const WACONNECT: &str = env!("CARGO_BIN_EXE_waconnect");

/// `waconnect serve` with only `vars`; its logs (stdout) go to `logs`; killed on drop.
pub fn serve(vars: Vec<(String, String)>, logs: std::process::Stdio) -> tokio::process::Child {
    tokio::process::Command::new(WACONNECT)
        .arg("serve")
        .env_clear()
        .envs(vars)
        .stdout(logs)
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

pub struct Sims {
    pub dir: tempfile::TempDir,
    pub connect: ConnectSim,
    pub twilio: TwilioSim,
    pub ingress: String,
    ports: [String; 3],
}

impl Sims {
    pub async fn start(connect: SimOptions) -> Self {
        let connect = ConnectSim::start_with(connect).await;
        let ports = [free_port().await, free_port().await, free_port().await];
        let ingress = format!("http://{}", ports[0]);
        let twilio = TwilioSim::start_with(TwilioOptions {
            webhook_url: Some(format!("{ingress}/twilio/messages#rc=5&rp=5xx,ct")),
            ..TwilioOptions::default()
        })
        .await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            connect,
            twilio,
            ingress,
            ports,
        }
    }

    /// Every variable of the three services, pointed at the simulators and a SQLite file
    /// (moto's storage variables, added later, win).
    pub fn vars(&self) -> Vec<(String, String)> {
        let wiring = Wiring::new(&self.connect, &self.twilio, &self.ingress)
            .sqlite(&self.dir.path().join("waconnect.db"));
        let mut vars = wiring.all();
        vars.extend(pairs(&[
            ("RUST_LOG", "warn"),
            ("WACONNECT_INGRESS_BIND", &self.ports[0]),
            ("WACONNECT_RELAY_OPS_BIND", &self.ports[1]),
            ("WACONNECT_SENDER_OPS_BIND", &self.ports[2]),
        ]));
        vars
    }
}
