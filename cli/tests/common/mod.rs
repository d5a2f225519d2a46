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

/// A span as an OTLP collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub parent_span_id: String,
}

/// An OpenTelemetry collector's OTLP/HTTP traces endpoint on loopback: it decodes what
/// it is sent (protobuf, as the services export) and keeps each span, and the headers.
pub struct Collector {
    pub url: String,
    pub spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    pub headers: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Collector {
    pub async fn start() -> Self {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>> = Default::default();
        let headers: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let (kept, seen) = (spans.clone(), headers.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |h: HeaderMap, body: Bytes| {
                let (kept, seen) = (kept.clone(), seen.clone());
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    seen.lock().unwrap().extend(h.iter().map(|(k, v)| {
                        (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                    }));
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref()?.value.as_ref())
                            .map(|v| match v {
                                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.lock().unwrap().push(ReceivedSpan {
                                    service: service.clone(),
                                    name: span.name,
                                    trace_id: hex::encode(&span.trace_id),
                                    parent_span_id: hex::encode(&span.parent_span_id),
                                });
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            spans,
            headers,
        }
    }

    /// The names of the spans received in trace `trace_id`, sorted.
    pub fn names_in(&self, trace_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .map(|s| s.name.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
