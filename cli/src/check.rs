//! `waconnect check`: is this configuration ready to go live? Every variable and the
//! routing file first (as each service reads them at start), and whether ingress will
//! take the status callbacks where the sender has Twilio post them; then — unless
//! `--offline` — each dependency, with read-only calls: Twilio's account with the
//! credentials given, every route's contact flows in its Connect instance, and the storage
//! (the SQLite file, or the SQS queues, the DynamoDB table and the S3 bucket). A table of
//! what passed and what to fix; a non-zero exit when anything failed.

use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource, StorageConfig};

/// Bound on each dependency's answer.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub check: String,
    pub ok: bool,
    /// What was found, or what to fix.
    pub detail: String,
}

impl Row {
    fn new(check: impl Into<String>, outcome: Result<String, String>) -> Self {
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Self {
            check: check.into(),
            ok,
            detail,
        }
    }
}

fn named(errors: &ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| format!("{}: {}", e.variable, e.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every check, in order.
pub async fn run(source: &ConfigSource, offline: bool) -> Vec<Row> {
    let ingress = IngressConfig::from_source(source);
    let relay = waconnect_relay_worker::config_from(source);
    let sender = waconnect_outbound_sender::config_from(source);
    let mut rows = Vec::new();
    for (service, errors) in [
        ("ingress", ingress.as_ref().err()),
        ("relay-worker", relay.as_ref().err()),
        ("outbound-sender", sender.as_ref().err()),
    ] {
        rows.push(Row::new(
            format!("configuration: {service}"),
            match errors {
                None => Ok("every variable valid".into()),
                Some(e) => Err(named(e)),
            },
        ));
    }
    if let Ok(relay) = &relay {
        let routing = relay.routes.routing();
        let names: Vec<&str> = routing.routes().iter().map(|r| r.name.as_str()).collect();
        rows.push(Row::new(
            "routing",
            Ok(if routing.from_file() {
                format!(
                    "{} route(s) from the routing file: {}",
                    names.len(),
                    names.join(", ")
                )
            } else {
                "no routing file: one route for every number".into()
            }),
        ));
    }
    if let (Ok(ingress), Ok(sender)) = (&ingress, &sender) {
        rows.push(callbacks(ingress, sender));
    }
    if offline {
        return rows;
    }
    if let Ok(sender) = &sender {
        rows.push(twilio(sender).await);
    }
    if let Ok(relay) = &relay {
        rows.extend(flows(relay).await);
    }
    // Storage once, as whichever service read it first saw it.
    let common = match (&relay, &sender, &ingress) {
        (Ok(r), _, _) => Some(r.worker.common.clone()),
        (_, Ok(s), _) => Some(s.worker.common.clone()),
        (_, _, Ok(i)) => Some(i.common.clone()),
        _ => None,
    };
    if let Some(common) = common {
        rows.extend(storage(&common.storage).await);
    }
    rows
}

/// Where Twilio posts each reply's statuses, and whether ingress will take them there:
/// Twilio signs the URL the sender gives it, and ingress checks that signature against its
/// public base URL and status path, so any other host, port or path has every callback
/// refused (403) — no receipts, and no failure WhatsApp reports late, reach an agent.
fn callbacks(
    ingress: &IngressConfig,
    sender: &waconnect_outbound_sender::config::SenderConfig,
) -> Row {
    use waconnect_ingress::config::SignatureCheck;
    let Some(given) = &sender.twilio.status_callback_url else {
        return Row::new(
            "configuration: status callbacks",
            Err("WACONNECT_STATUS_CALLBACK_URL is not set: agents see no delivered or read receipts, and no failure WhatsApp reports after the sender's confirm wait".into()),
        );
    };
    let retries = given.split_once('#').map_or(
        waconnect_outbound_sender::twilio::CALLBACK_RETRIES,
        |(_, f)| f,
    );
    let posted =
        format!("Twilio posts receipts and failures to {given}, tried again as #{retries} says");
    let expected = match &ingress.signature {
        SignatureCheck::Verify {
            public_base_url,
            trust_forwarded_headers: false,
            ..
        } => format!("{public_base_url}{}", ingress.status_path),
        // Checked against the proxy's headers, or not at all: nothing to compare here.
        _ => return Row::new("configuration: status callbacks", Ok(posted)),
    };
    Row::new(
        "configuration: status callbacks",
        if same_endpoint(given, &expected) {
            Ok(posted)
        } else {
            Err(format!(
                "WACONNECT_STATUS_CALLBACK_URL is {given}, but ingress checks each callback's signature against {expected} (WACONNECT_PUBLIC_BASE_URL and WACONNECT_INGRESS_STATUS_PATH): every callback would be refused with 403"
            ))
        },
    )
}

/// Whether Twilio, posting to `given`, signs what ingress expects at `expected`: the same
/// scheme, host, port (a default one written or not, as ingress accepts both) and path;
/// the query and fragment are the sender's own.
fn same_endpoint(given: &str, expected: &str) -> bool {
    match (url::Url::parse(given), url::Url::parse(expected)) {
        (Ok(g), Ok(e)) => {
            g.scheme() == e.scheme()
                && g.host_str() == e.host_str()
                && g.port_or_known_default() == e.port_or_known_default()
                && g.path() == e.path()
        }
        _ => false,
    }
}

/// Twilio's account resource, read with the sender's credentials.
async fn twilio(sender: &waconnect_outbound_sender::config::SenderConfig) -> Row {
    let t = &sender.twilio;
    let url = format!("{}/2010-04-01/Accounts/{}.json", t.api_base, t.account_sid);
    let answer = async {
        sender
            .worker
            .common
            .tls
            .reqwest(reqwest::Client::builder())
            .build()?
            .get(&url)
            .basic_auth(&t.username, Some(t.password.expose()))
            .timeout(TIMEOUT)
            .send()
            .await
    }
    .await;
    Row::new(
        "twilio: credentials",
        match answer {
            Ok(r) if r.status().is_success() => Ok(format!("account {} answers", t.account_sid)),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Err(format!(
                "Twilio refuses the credentials ({}): check TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID / TWILIO_API_KEY_SECRET) for TWILIO_ACCOUNT_SID",
                r.status()
            )),
            Ok(r) => Err(format!("Twilio answered {}", r.status())),
            Err(e) => Err(format!(
                "cannot reach {} ({}): check WACONNECT_TWILIO_API_BASE and the network",
                t.api_base,
                e.without_url()
            )),
        },
    )
}

/// Each route's inbound flow and call-me flow, in its instance.
async fn flows(relay: &waconnect_relay_worker::config::RelayConfig) -> Vec<Row> {
    use waconnect_relay_worker::connect::{ConnectApi, ErrorKind};
    let api = ConnectApi::new(&relay.aws.load().await, relay.connect.clone()).with_attempts(1);
    let mut asked = BTreeSet::new();
    let mut rows = Vec::new();
    for route in relay.routes.all() {
        let mut wanted = vec![("inbound flow", &route.contact_flow_id)];
        if let Some(call_me) = &route.call_me {
            wanted.push(("call-me flow", &call_me.contact_flow_id));
        }
        for (what, flow) in wanted {
            if !asked.insert((route.instance_id.clone(), flow.clone())) {
                continue;
            }
            let check = format!("connect: route {}: {what}", route.name);
            let found =
                tokio::time::timeout(TIMEOUT, api.describe_flow(&route.instance_id, flow)).await;
            rows.push(Row::new(
                check,
                match found {
                    Ok(Ok(name)) => Ok(format!("{flow} ({name}) in instance {}", route.instance_id)),
                    Ok(Err(e)) if e.code == "ResourceNotFoundException" => Err(format!(
                        "no contact flow {flow} in instance {}: fix the route's flow (WACONNECT_ROUTING_FILE, or WACONNECT_CONNECT_CONTACT_FLOW_ID / WACONNECT_CALLME_CONTACT_FLOW_ID) or WACONNECT_CONNECT_INSTANCE_ID",
                        route.instance_id
                    )),
                    Ok(Err(e)) if e.kind == ErrorKind::AccessDenied => Err(format!(
                        "not allowed to read the flow ({}): grant connect:DescribeContactFlow, and check AWS_REGION and the credentials",
                        e.code
                    )),
                    Ok(Err(e)) if e.kind == ErrorKind::Network => Err(
                        "cannot reach Connect: check AWS_REGION, WACONNECT_CONNECT_ENDPOINT and the network".into(),
                    ),
                    Ok(Err(e)) => Err(format!("Connect answered {}: {}", e.code, e.message)),
                    Err(_) => Err(format!(
                        "Connect did not answer within {TIMEOUT:?}: check AWS_REGION, WACONNECT_CONNECT_ENDPOINT and the network"
                    )),
                },
            ));
        }
    }
    rows
}

/// The queues, the table and the bucket, or the SQLite file.
async fn storage(storage: &StorageConfig) -> Vec<Row> {
    match storage {
        StorageConfig::Embedded(e) => {
            let opened =
                waconnect_shared::storage::sqlite::Db::open_path(&e.path, e.synchronous).await;
            vec![Row::new(
                "storage: SQLite file",
                opened
                    .map(|_| format!("{} opens for writing", e.path.display()))
                    .map_err(|err| {
                        format!(
                            "{}: {err}: check WACONNECT_SQLITE_PATH and the directory's permissions",
                            e.path.display()
                        )
                    }),
            )]
        }
        StorageConfig::Aws(a) => {
            let (sqs, dynamodb, s3) = waconnect_shared::storage::backend::aws_clients(a).await;
            let mut rows = Vec::new();
            for (name, variable, url) in [
                (
                    "inbound",
                    "WACONNECT_INBOUND_QUEUE_URL",
                    &a.inbound_queue_url,
                ),
                (
                    "outbound",
                    "WACONNECT_OUTBOUND_QUEUE_URL",
                    &a.outbound_queue_url,
                ),
            ] {
                let got = sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::FifoQueue)
                    .send()
                    .await;
                rows.push(Row::new(
                    format!("storage: {name} queue"),
                    match got {
                        Ok(out) => {
                            let fifo = out.attributes().is_some_and(|m| {
                                m.get(&aws_sdk_sqs::types::QueueAttributeName::FifoQueue)
                                    .is_some_and(|v| v == "true")
                            });
                            if fifo {
                                Ok(format!("{url} is a FIFO queue"))
                            } else {
                                Err(format!(
                                    "{url} is not a FIFO queue: {variable} must name one"
                                ))
                            }
                        }
                        Err(e) => Err(format!(
                            "{url}: {}: check {variable} and sqs:GetQueueAttributes",
                            aws_error(&e)
                        )),
                    },
                ));
            }
            let table = dynamodb.describe_table().table_name(&a.table).send().await;
            rows.push(Row::new(
                "storage: table",
                table.map(|_| format!("{} exists", a.table)).map_err(|e| {
                    format!(
                        "{}: {}: check WACONNECT_TABLE and dynamodb:DescribeTable",
                        a.table,
                        aws_error(&e)
                    )
                }),
            ));
            if let Some(bucket) = &a.media_bucket {
                let head = s3.head_bucket().bucket(bucket).send().await;
                rows.push(Row::new(
                    "storage: media bucket",
                    head.map(|_| format!("{bucket} exists")).map_err(|e| {
                        format!(
                            "{bucket}: {}: check WACONNECT_MEDIA_BUCKET and s3:ListBucket",
                            aws_error(&e)
                        )
                    }),
                ));
            }
            rows
        }
    }
}

/// An AWS error as its code, else its message.
fn aws_error<E, R>(e: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    match e.code() {
        Some(code) => code.to_owned(),
        None => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}

/// The rows as a table for people.
pub fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {}  {}\n",
            r.check,
            if r.ok { "ok  " } else { "FAIL" },
            r.detail
        ));
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    out.push_str(&if failed == 0 {
        format!("\nall {} checks passed\n", rows.len())
    } else {
        format!("\n{failed} of {} checks failed\n", rows.len())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::same_endpoint;

    #[test]
    fn a_callback_url_matches_where_ingress_checks_it_default_port_or_not() {
        let ingress = "https://wa.example.com/twilio/status";
        assert!(same_endpoint(
            "https://wa.example.com:443/twilio/status?x=1#rc=1",
            ingress
        ));
        assert!(!same_endpoint(
            "https://wa.example.com:8443/twilio/status",
            ingress
        ));
        assert!(!same_endpoint(
            "http://wa.example.com/twilio/status",
            ingress
        ));
        assert!(!same_endpoint(
            "https://wa.example.com/twilio/messages",
            ingress
        ));
    }
}
