//! ingress end to end: real HTTP over loopback into the real SQLite queue.

use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::message::event::{EventKind, InboundEvent};
use waconnect_shared::service::config::{ConfigSource, Synchronous};
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{Limits, Queue};
use waconnect_shared::storage::sqlite::Db;
use waconnect_shared::twilio::signature::{self, Algorithm};
use waconnect_tests::twilio::{incoming_text, signed, status_callback};
use waconnect_tests::{customer, wait};

const TOKEN: &str = "test-auth-token";
/// What Twilio is configured with; deliberately not the local socket address.
const PUBLIC: &str = "https://wa.example.test";

struct TestIngress {
    local: String,
    queue: Arc<dyn Queue>,
    db_path: std::path::PathBuf,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), waconnect_ingress::IngressError>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn spawn_ingress(extra: &[(&str, &str)]) -> TestIngress {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("waconnect.db");
    let mut vars = vec![
        ("TWILIO_AUTH_TOKEN".to_owned(), TOKEN.to_owned()),
        ("WACONNECT_PUBLIC_BASE_URL".to_owned(), PUBLIC.to_owned()),
        (
            "WACONNECT_SQLITE_PATH".to_owned(),
            db_path.display().to_string(),
        ),
        (
            "WACONNECT_SQLITE_SYNCHRONOUS".to_owned(),
            "normal".to_owned(),
        ),
        (
            "WACONNECT_INGRESS_BIND".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "WACONNECT_QUEUE_DEPTH_INTERVAL".to_owned(),
            "50ms".to_owned(),
        ),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let config = IngressConfig::from_source(&ConfigSource::from_pairs(vars)).unwrap();
    let listener = TcpListener::bind(config.bind).await.unwrap();
    let local = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(waconnect_ingress::run(config, listener, shutdown.clone()));
    // The test reads the queue through its own connection, as the relay process would.
    let db = Db::open_path(&db_path, Synchronous::Normal).await.unwrap();
    let queue = Arc::new(
        SqliteQueue::open(db, "inbound", Limits::both(5))
            .await
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let ready = format!("{local}/readyz");
    wait::until("ingress to be ready", Duration::from_secs(10), || async {
        let res = http.get(&ready).send().await.ok()?;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
    TestIngress {
        local,
        queue,
        db_path,
        shutdown,
        server,
        http,
        _dir: dir,
    }
}

impl TestIngress {
    async fn post_signed(&self, path: &str, fields: &[(String, String)]) -> reqwest::Response {
        let (body, sig) = signed(TOKEN, &format!("{PUBLIC}{path}"), fields);
        self.post(path, body, Some(&sig)).await
    }

    async fn post(&self, path: &str, body: String, signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.local))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "TwilioProxy/1.1")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("x-twilio-signature", sig);
        }
        req.send().await.unwrap()
    }

    async fn queued(&self) -> Vec<InboundEvent> {
        let mut out = Vec::new();
        loop {
            let got = self
                .queue
                .receive(10, Duration::from_secs(60), Duration::ZERO)
                .await
                .unwrap();
            if got.is_empty() {
                return out;
            }
            for m in got {
                out.push(InboundEvent::from_json(&m.body).unwrap());
                self.queue.delete(&m.receipt).await.unwrap();
            }
        }
    }

    async fn depth(&self) -> u64 {
        let s = self.queue.stats().await.unwrap();
        s.visible + s.in_flight + s.delayed
    }
}

fn text(i: usize, sid: &str, body: &str) -> Vec<(String, String)> {
    incoming_text(sid, customer(i).as_str(), body)
}

#[tokio::test]
async fn accepted_webhook_is_enqueued_before_the_answer() {
    let app = spawn_ingress(&[]).await;
    let mut fields = text(1, "SM0001", "Hola, ¿me ayudan? & gracias");
    fields.push(("FieldTwilioAddsNextYear".into(), "kept".into()));
    let res = app.post_signed("/twilio/messages", &fields).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/xml");
    assert!(res.text().await.unwrap().contains("<Response/>"));
    // Enqueued before the answer: no waiting needed.
    let raw = app
        .queue
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    // The conversation's group: the business number written to and the customer.
    assert_eq!(raw[0].group_id, waconnect_tests::key(1).storage());
    assert_eq!(raw[0].dedup_id, "SM0001");
    let event = InboundEvent::from_json(&raw[0].body).unwrap();
    assert_eq!(event.kind, EventKind::Message);
    assert_eq!(event.fields, fields, "fields not kept verbatim");
    assert_eq!(event.body(), "Hola, ¿me ayudan? & gracias");
}

#[tokio::test]
async fn twilio_retries_do_not_duplicate() {
    let app = spawn_ingress(&[]).await;
    let fields = text(1, "SM0002", "once");
    for _ in 0..3 {
        assert_eq!(
            app.post_signed("/twilio/messages", &fields).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(app.queued().await.len(), 1);
}

#[tokio::test]
async fn bad_or_missing_signatures_are_refused_and_nothing_is_queued() {
    let app = spawn_ingress(&[]).await;
    let fields = text(1, "SM0003", "hi");
    let path = "/twilio/messages";
    let (body, _) = signed(TOKEN, &format!("{PUBLIC}{path}"), &fields);
    let (_, wrong_token) = signed("another-token", &format!("{PUBLIC}{path}"), &fields);
    // Signed for the local socket address instead of the public URL Twilio was given.
    let (_, local_url) = signed(TOKEN, &format!("{}{path}", app.local), &fields);
    let mut tampered = fields.clone();
    tampered[7].1 = "send money".into();
    let (tampered_body, _) = signed(TOKEN, &format!("{PUBLIC}{path}"), &tampered);
    let (_, good) = signed(TOKEN, &format!("{PUBLIC}{path}"), &fields);
    for (body, sig) in [
        (body.clone(), None),
        (body.clone(), Some(wrong_token.as_str())),
        (body.clone(), Some(local_url.as_str())),
        (body.clone(), Some("")),
        (tampered_body, Some(good.as_str())),
    ] {
        let res = app.post(path, body, sig).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(app.depth().await, 0);
}

/// Posts `fields` signed with `key` and `algorithm`, with the settings header when given.
async fn post_signed_with(
    app: &TestIngress,
    algorithm: Algorithm,
    key: &str,
    settings: Option<&str>,
    fields: &[(String, String)],
) -> StatusCode {
    let path = "/twilio/messages";
    let (body, _) = signed(key, &format!("{PUBLIC}{path}"), fields);
    let sig = signature::compute_with(algorithm, key, &format!("{PUBLIC}{path}"), fields);
    let mut req = app
        .http
        .post(format!("{}{path}", app.local))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(body);
    if let Some(settings) = settings {
        req = req.header("x-twilio-webhooks-signature-settings", settings);
    }
    req.send().await.unwrap().status()
}

/// Accounts whose Webhooks Rules sign with a SharedKey (HMAC-SHA256), and auth tokens
/// being rotated, are accepted; nothing else is.
#[tokio::test]
async fn shared_key_signatures_and_a_secondary_token_are_accepted() {
    let app = spawn_ingress(&[
        ("TWILIO_AUTH_TOKEN_SECONDARY", "next-token"),
        ("TWILIO_WEBHOOK_SHARED_KEYS", "old-shared, shared-secret"),
    ])
    .await;
    let settings = Some("key=KS00000000000000000000000000000000,algorithm=HMAC_SHA256");
    let sha256 = Algorithm::HmacSha256;
    let cases = [
        (sha256, "shared-secret", settings, StatusCode::OK),
        (sha256, "old-shared", settings, StatusCode::OK),
        (Algorithm::HmacSha1, "next-token", None, StatusCode::OK),
        (Algorithm::HmacSha1, TOKEN, None, StatusCode::OK),
        // A shared key's signature without the header, or the token's with it: refused.
        (sha256, "shared-secret", None, StatusCode::FORBIDDEN),
        (Algorithm::HmacSha1, TOKEN, settings, StatusCode::FORBIDDEN),
        (
            sha256,
            "shared-secret",
            Some("key=KS1,algorithm=MD5"),
            StatusCode::FORBIDDEN,
        ),
        (sha256, "someone-else", settings, StatusCode::FORBIDDEN),
    ];
    for (i, (algorithm, key, settings, expected)) in cases.into_iter().enumerate() {
        let fields = text(1, &format!("SM01{i:02}"), "hi");
        let status = post_signed_with(&app, algorithm, key, settings, &fields).await;
        assert_eq!(status, expected, "case {i}: {key} {settings:?}");
    }
    assert_eq!(app.queued().await.len(), 4);
}

/// Without a shared key configured, a SharedKey-signed webhook cannot be checked: 503 (so
/// Twilio may retry once the operator sets it), never accepted.
#[tokio::test]
async fn shared_key_signatures_without_a_configured_key_are_503() {
    let app = spawn_ingress(&[]).await;
    let settings = Some("key=KS1,algorithm=HMAC_SHA256");
    let fields = text(1, "SM0200", "hi");
    let status = post_signed_with(&app, Algorithm::HmacSha256, "anything", settings, &fields).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.depth().await, 0);
}

#[tokio::test]
async fn signature_for_the_url_with_its_default_port_is_accepted() {
    let app = spawn_ingress(&[]).await;
    let fields = text(1, "SM0004", "port");
    let (body, sig) = signed(
        TOKEN,
        "https://wa.example.test:443/twilio/messages",
        &fields,
    );
    assert_eq!(
        app.post("/twilio/messages", body, Some(&sig))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_forms_and_missing_fields_are_400() {
    let app = spawn_ingress(&[]).await;
    let path = "/twilio/messages";
    let sig_for = |fields: &[(String, String)]| signed(TOKEN, &format!("{PUBLIC}{path}"), fields);
    let (_, sig) = sig_for(&[]);
    let res = app.post(path, "Body=%ZZ&From=x".into(), Some(&sig)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for missing in ["MessageSid", "From", "To"] {
        let fields: Vec<_> = text(1, "SM0005", "x")
            .into_iter()
            .filter(|(k, _)| k != missing)
            .collect();
        let res = app.post_signed(path, &fields).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "without {missing}");
        assert!(res.text().await.unwrap().contains(missing));
    }
    let bad_from = incoming_text("SM0006", "whatsapp:+12", "x");
    assert_eq!(
        app.post_signed(path, &bad_from).await.status(),
        StatusCode::BAD_REQUEST
    );
    // Signed, but counts and addresses no webhook carries: refused, never looped over.
    for (field, value) in [("NumMedia", "999999999"), ("To", "whatsapp:+1")] {
        let mut fields: Vec<_> = text(1, "SM0007", "x")
            .into_iter()
            .filter(|(k, _)| k != field)
            .collect();
        fields.push((field.into(), value.into()));
        let res = app.post_signed(path, &fields).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}={value}");
        assert!(res.text().await.unwrap().contains(field));
    }
    assert_eq!(app.depth().await, 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_wrong_content_types_415() {
    let app = spawn_ingress(&[("WACONNECT_INGRESS_MAX_BODY_BYTES", "2048")]).await;
    let fields = text(1, "SM0007", &"x".repeat(4096));
    assert_eq!(
        app.post_signed("/twilio/messages", &fields).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let res = app
        .http
        .post(format!("{}/twilio/messages", app.local))
        .header("content-type", "application/json")
        .body(r#"{"MessageSid":"SM1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.depth().await, 0);
}

#[tokio::test]
async fn non_whatsapp_senders_are_refused_unless_allowed() {
    let sms = incoming_text("SM0008", "+15550001111", "sms");
    let app = spawn_ingress(&[]).await;
    assert_eq!(
        app.post_signed("/twilio/messages", &sms).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.depth().await, 0);
    let allowing = spawn_ingress(&[("WACONNECT_ALLOW_NON_WHATSAPP", "true")]).await;
    assert_eq!(
        allowing
            .post_signed("/twilio/messages", &sms)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(allowing.queued().await.len(), 1);
}

/// With a routing file, only the numbers it lists are served: a message to any other is
/// refused (404, so Twilio's debugger shows it) with a log line and a metric, and nothing
/// is queued.
#[tokio::test]
async fn messages_to_a_number_no_route_lists_are_refused_and_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let routing = dir.path().join("routing.toml");
    std::fs::write(
        &routing,
        format!(
            "[[route]]\nname = \"acme\"\nnumbers = [\"{}\"]\n",
            waconnect_tests::BUSINESS
        ),
    )
    .unwrap();
    let app = spawn_ingress(&[("WACONNECT_ROUTING_FILE", routing.to_str().unwrap())]).await;
    let served = text(1, "SM0101", "to acme");
    assert_eq!(
        app.post_signed("/twilio/messages", &served).await.status(),
        StatusCode::OK
    );
    let mut elsewhere = text(1, "SM0102", "to a number nobody serves");
    for (k, v) in &mut elsewhere {
        if k == "To" {
            *v = "whatsapp:+15557654321".into();
        }
    }
    let refused = app.post_signed("/twilio/messages", &elsewhere).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("whatsapp:+15557654321")
    );
    // A receipt for a message sent from an unknown number is refused too.
    let mut receipt = status_callback("SM0103", customer(1).as_str(), "read");
    for (k, v) in &mut receipt {
        if k == "From" {
            *v = "whatsapp:+15557654321".into();
        }
    }
    assert_eq!(
        app.post_signed("/twilio/status", &receipt).await.status(),
        StatusCode::NOT_FOUND
    );
    let queued = app.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].body(), "to acme");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.local))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "waconnect_ingress_requests_total{route=\"message\",outcome=\"unknown_number\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn status_callbacks_are_keyed_on_sid_and_status() {
    let app = spawn_ingress(&[]).await;
    let to = customer(2);
    for status in ["sent", "delivered", "read", "read"] {
        let res = app
            .post_signed(
                "/twilio/status",
                &status_callback("SM0009", to.as_str(), status),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let events = app.queued().await;
    let statuses: Vec<_> = events.iter().map(|e| e.message_status().unwrap()).collect();
    // "sent" is acknowledged but not queued: nothing acts on it.
    assert_eq!(statuses, ["delivered", "read"]);
    assert!(events.iter().all(|e| e.kind == EventKind::Status));
    assert!(events.iter().all(|e| e.customer().unwrap() == to));
}

/// A receipt waiting on a Connect hiccup must not hold up the customer's next message:
/// both are deliverable at once, each in its own FIFO group.
#[tokio::test]
async fn receipts_never_queue_behind_or_ahead_of_messages() {
    let app = spawn_ingress(&[]).await;
    let who = customer(3);
    let status = status_callback("SM0010", who.as_str(), "read");
    assert_eq!(
        app.post_signed("/twilio/status", &status).await.status(),
        StatusCode::OK
    );
    let message = text(3, "SM0011", "are you there?");
    assert_eq!(
        app.post_signed("/twilio/messages", &message).await.status(),
        StatusCode::OK
    );
    // The receipt is received and left in flight (its handler is stuck on Connect)...
    let stuck = app
        .queue
        .receive(1, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        InboundEvent::from_json(&stuck[0].body).unwrap().kind,
        EventKind::Status
    );
    // ...and the customer's message is still deliverable.
    let next = app
        .queue
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "the message waits behind the receipt");
    let event = InboundEvent::from_json(&next[0].body).unwrap();
    assert_eq!(
        (event.kind, event.body()),
        (EventKind::Message, "are you there?")
    );
}

#[tokio::test]
async fn custom_paths_are_served() {
    let app = spawn_ingress(&[
        ("WACONNECT_INGRESS_MESSAGE_PATH", "/wa/in"),
        ("WACONNECT_INGRESS_STATUS_PATH", "/wa/status"),
    ])
    .await;
    assert_eq!(
        app.post_signed("/wa/in", &text(1, "SM0010", "x"))
            .await
            .status(),
        StatusCode::OK
    );
    let res = app
        .post_signed("/twilio/messages", &text(1, "SM0011", "x"))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forwarded_headers_are_used_only_when_trusted() {
    let path = "/twilio/messages";
    let proxied = "https://edge.example.test";
    for (trusted, expected) in [(false, StatusCode::FORBIDDEN), (true, StatusCode::OK)] {
        let app = spawn_ingress(&[(
            "WACONNECT_TRUST_FORWARDED_HEADERS",
            if trusted { "true" } else { "false" },
        )])
        .await;
        let fields = text(1, "SM0012", "x");
        let (body, sig) = signed(TOKEN, &format!("{proxied}{path}"), &fields);
        let res = app
            .http
            .post(format!("{}{path}", app.local))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "edge.example.test")
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "trusted={trusted}");
    }
}

#[tokio::test]
async fn queue_unavailable_is_503_then_twilios_retry_lands_once() {
    let app = spawn_ingress(&[("WACONNECT_INGRESS_ENQUEUE_TIMEOUT", "300ms")]).await;
    let fields = text(1, "SM0013", "while the disk is locked");
    // Another process holds the database's write lock.
    let blocker = rusqlite::Connection::open(&app.db_path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let res = app.post_signed("/twilio/messages", &fields).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    // The write given up on may still land once the lock is free (the database thread
    // finishes what it started): then Twilio's retry is a duplicate, never a second copy.
    let res = app.post_signed("/twilio/messages", &fields).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.queued().await.len(), 1);
}

#[tokio::test]
async fn concurrent_webhooks_are_all_enqueued() {
    let app = Arc::new(spawn_ingress(&[]).await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let fields = text(i % 20, &format!("SMc{i:05}"), &format!("msg {i}"));
                app.post_signed("/twilio/messages", &fields).await.status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.queued().await.len(), 200);
}

#[tokio::test]
async fn probes_and_metrics() {
    let app = spawn_ingress(&[]).await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", app.local);
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(get("/readyz").await.status(), StatusCode::OK);
    app.post_signed("/twilio/messages", &text(1, "SM0014", "x"))
        .await;
    app.post("/twilio/messages", "Body=x".into(), Some("bad"))
        .await;
    let metrics = wait::until("queue depth gauges", Duration::from_secs(10), || async {
        let text = get("/metrics").await.text().await.unwrap();
        text.contains("waconnect_queue_messages{queue=\"inbound\",state=\"visible\"}")
            .then_some(text)
    })
    .await;
    for expected in [
        "waconnect_ingress_requests_total{route=\"message\",outcome=\"accepted\"}",
        "waconnect_ingress_requests_total{route=\"message\",outcome=\"bad_signature\"}",
        "waconnect_ingress_enqueue_duration_seconds_bucket",
        "waconnect_queue_sent_total{queue=\"inbound\",outcome=\"new\"}",
        "waconnect_queue_messages{queue=\"inbound-dlq\",state=\"visible\"}",
        "waconnect_ingress_insecure_mode 0",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let app = spawn_ingress(&[]).await;
    app.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server).await;
    stopped.expect("ingress did not stop").unwrap().unwrap();
}

/// Reads until the server closes the connection (or `within` passes); what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut got)).await {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

async fn healthz_answers(app: &TestIngress) {
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        app.http.get(format!("{}/healthz", app.local)).send(),
    )
    .await
    .expect("healthz did not answer")
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Slowloris: connections that trickle their headers are closed after the header timeout,
/// and the process answers everyone else meanwhile.
#[tokio::test]
async fn clients_that_never_finish_their_headers_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_ingress(&[("WACONNECT_INGRESS_HEADER_TIMEOUT", "300ms")]).await;
    let address = app.local.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(&address).await.unwrap();
        s.write_all(b"POST /twilio/messages HTTP/1.1\r\nHost: x\r\nX-A: ")
            .await
            .unwrap();
        slow.push(s);
    }
    healthz_answers(&app).await;
    for s in &mut slow {
        assert!(
            read_until_closed(s, Duration::from_secs(5)).await.is_some(),
            "a slow client was never cut off"
        );
    }
    // Idle keep-alive connections go the same way.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );
}

/// A body that never finishes is answered 408 after the body timeout, nothing queued.
#[tokio::test]
async fn bodies_that_never_finish_are_408() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_ingress(&[("WACONNECT_INGRESS_BODY_TIMEOUT", "300ms")]).await;
    let address = app.local.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&address).await.unwrap();
    s.write_all(
        b"POST /twilio/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: x\r\nContent-Length: 100\r\n\r\nMessageSid=SM1",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("no answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.depth().await, 0);
}

/// More idle connections than allowed: the extra ones are closed at once instead of
/// queueing in the backlog, and probes and webhooks are answered as soon as a slot frees.
#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let app = spawn_ingress(&[
        ("WACONNECT_INGRESS_MAX_CONNECTIONS", "20"),
        ("WACONNECT_INGRESS_HEADER_TIMEOUT", "1s"),
    ])
    .await;
    let address = app.local.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // The server has taken all twenty once one more is refused.
    let mut extra = tokio::net::TcpStream::connect(&address).await.unwrap();
    let closed = read_until_closed(&mut extra, Duration::from_millis(500)).await;
    assert_eq!(
        closed.as_deref(),
        Some(""),
        "the 21st connection was kept waiting"
    );
    // The idle ones time out, and the service answers again.
    for s in &mut held {
        assert!(read_until_closed(s, Duration::from_secs(5)).await.is_some());
    }
    healthz_answers(&app).await;
    let res = app
        .post_signed("/twilio/messages", &text(1, "SM0300", "still here"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// On one box ingress, the public endpoint, serves the agent's files that the relay put in
/// the media directory, under the signed paths the sender gives Twilio — and nothing else.
#[tokio::test]
async fn serves_the_agents_files_under_signed_paths_only() {
    use waconnect_shared::storage::media::MediaStore;
    use waconnect_shared::storage::media::directory::DirectoryStore;
    let app = spawn_ingress(&[]).await;
    // The relay's view of the same directory (the default, next to the database).
    let media = DirectoryStore::open(
        app.db_path.with_file_name("waconnect-media"),
        None,
        Some(PUBLIC.to_owned()),
    )
    .await
    .unwrap();
    let file = app.db_path.with_file_name("manual.pdf");
    std::fs::write(&file, b"%PDF-1.4 manual").unwrap();
    let meta = waconnect_shared::storage::media::FileMeta {
        content_type: "application/pdf".into(),
        file_name: "Manual.pdf".into(),
    };
    let file = tempfile::TempPath::try_from_path(file).unwrap();
    media.put("att-1.pdf", file, &meta).await.unwrap();
    let url = media
        .url("att-1.pdf", Duration::from_secs(60))
        .await
        .unwrap();
    let path = url.strip_prefix(PUBLIC).unwrap();
    let got = app
        .http
        .get(format!("{}{path}", app.local))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(
        got.headers()["content-disposition"],
        "inline; filename=\"Manual.pdf\""
    );
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"%PDF-1.4 manual");
    for forged in [
        path.replace("signature=", "signature=00"),
        path.replace("att-1.pdf", "att-2.pdf"),
        "/media/att-1.pdf".to_owned(),
    ] {
        let status = app
            .http
            .get(format!("{}{forged}", app.local))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{forged}: {status}");
    }
}
