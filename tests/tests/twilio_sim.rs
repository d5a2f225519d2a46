//! Fidelity of the Twilio simulator: the Messages API's auth, answers and error bodies,
//! signed status callbacks, the 24-hour window, the customer's signed webhooks with the
//! retry fragment, and every fault.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use waconnect_shared::twilio::{form, signature};
use waconnect_sim::twilio::{TwilioOptions, TwilioSim};
use waconnect_tests::wait;

/// A webhook receiver that checks Twilio's signature and answers the given statuses in
/// turn (then 200).
/// One webhook's form fields.
type Form = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Form>>>,
    answers: Arc<Mutex<Vec<u16>>>,
}

async fn receive(
    State((r, token, base)): State<(Receiver, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Twilio signs the URL it was given, query included.
    let url = format!("{base}{}", uri.path_and_query().map_or("", |p| p.as_str()));
    let fields = form::decode(&body).unwrap();
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        signature::validate(&token, &url, &fields, sig),
        "bad signature for {url}"
    );
    r.got.lock().unwrap().push(fields);
    let next = r.answers.lock().unwrap().pop();
    StatusCode::from_u16(next.unwrap_or(200)).unwrap()
}

async fn receiver(token: &str, path: &str) -> (Receiver, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = format!("{base}{path}");
    let r = Receiver::default();
    let app =
        Router::new()
            .route(path, post(receive))
            .with_state((r.clone(), token.to_owned(), base));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

async fn create(sim: &TwilioSim, auth: (&str, &str), form: &[(&str, &str)]) -> (u16, Value) {
    let o = sim.options();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            sim.api_base(),
            o.account_sid
        ))
        .basic_auth(auth.0, Some(auth.1))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_messages_api_answers_and_refuses_as_twilio_does() {
    let sim = TwilioSim::start_with(TwilioOptions {
        window_always_open: true,
        sender_rate: 3,
        ..TwilioOptions::default()
    })
    .await;
    let o = sim.options().clone();
    let auth = (o.account_sid.as_str(), o.auth_token.as_str());
    let to = "whatsapp:+15551230000";
    let (status, body) = create(
        &sim,
        (&o.account_sid, "wrong"),
        &[("To", to), ("From", &o.sender), ("Body", "x")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (401, Some(20003)));
    for key in ["code", "message", "more_info", "status"] {
        assert!(body.get(key).is_some(), "error body lacks {key}: {body}");
    }
    let (status, body) = create(
        &sim,
        auth,
        &[("To", to), ("From", &o.sender), ("Body", "hello")],
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        body["sid"].as_str().unwrap().starts_with("SM")
            && body["sid"].as_str().unwrap().len() == 34
    );
    assert_eq!(body["status"], "queued");
    for key in [
        "to",
        "from",
        "body",
        "num_media",
        "error_code",
        "error_message",
        "date_created",
        "uri",
    ] {
        assert!(body.get(key).is_some(), "answer lacks {key}: {body}");
    }
    let (status, body) = create(
        &sim,
        auth,
        &[("To", "+1555"), ("From", &o.sender), ("Body", "x")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21211)));
    let long = "x".repeat(1601);
    let (status, body) = create(
        &sim,
        auth,
        &[("To", to), ("From", &o.sender), ("Body", &long)],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21617)));
    sim.phone().opt_out("whatsapp:+15550000001").await.unwrap();
    let (status, body) = create(
        &sim,
        auth,
        &[
            ("To", "whatsapp:+15550000001"),
            ("From", &o.sender),
            ("Body", "x"),
        ],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(21610)));
    // The per-sender rate (3/s here): Twilio takes the sends over it (201) and reports
    // 63018 later, in their status callbacks, as WhatsApp refuses them.
    let mut sids = Vec::new();
    for _ in 0..4 {
        let (status, body) = create(
            &sim,
            auth,
            &[("To", to), ("From", &o.sender), ("Body", "burst")],
        )
        .await;
        assert_eq!(status, 201, "{body}");
        sids.push(body["sid"].as_str().unwrap().to_owned());
    }
    let http = reqwest::Client::new();
    let fetch = |sid: String| {
        let (http, base) = (http.clone(), sim.api_base());
        let account = o.account_sid.clone();
        async move {
            http.get(format!(
                "{base}/2010-04-01/Accounts/{account}/Messages/{sid}.json"
            ))
            .basic_auth(auth.0, Some(auth.1))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
        }
    };
    wait::until("a 63018 failure", Duration::from_secs(5), || async {
        for sid in &sids {
            let m = fetch(sid.clone()).await;
            if m["status"] == "failed" && m["error_code"] == 63018 {
                assert_eq!(m["body"], "burst");
                return Some(());
            }
        }
        None
    })
    .await;
    // Another From than the account's WhatsApp sender has no channel.
    let (status, body) = create(
        &sim,
        auth,
        &[("To", to), ("From", "whatsapp:+15550009999"), ("Body", "x")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(63007)));
    sim.phone().fail(1).await.unwrap();
    let (status, _) = create(
        &sim,
        auth,
        &[("To", to), ("From", &o.sender), ("Body", "x")],
    )
    .await;
    assert_eq!(status, 500);
    sim.phone().storm(0.5).await.unwrap();
    let (status, body) = create(
        &sim,
        auth,
        &[("To", to), ("From", &o.sender), ("Body", "x")],
    )
    .await;
    assert_eq!((status, body["code"].as_u64()), (429, Some(20429)));
}

#[tokio::test]
async fn status_callbacks_are_signed_ordered_or_shuffled_and_the_window_is_kept() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let auth = (o.account_sid.as_str(), o.auth_token.as_str());
    let (callbacks, url) = receiver(&o.auth_token, "/status").await;
    let callback = format!("{url}?item=i-1");
    // Nobody wrote first: outside the 24 h window a free-form text fails with 63016,
    let to = "whatsapp:+15551230001";
    create(
        &sim,
        auth,
        &[
            ("To", to),
            ("From", &o.sender),
            ("Body", "late"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    // but a template passes.
    create(
        &sim,
        auth,
        &[
            ("To", to),
            ("From", &o.sender),
            ("ContentSid", "HX1"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    let got = wait::until("five callbacks", Duration::from_secs(10), || async {
        let got = callbacks.got.lock().unwrap().clone();
        (got.len() >= 5).then_some(got)
    })
    .await;
    let statuses: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|f| (field(f, "MessageStatus").unwrap(), field(f, "ErrorCode")))
        .collect();
    assert!(
        statuses.contains(&("failed", Some("63016"))),
        "{statuses:?}"
    );
    assert!(statuses.contains(&("read", None)), "{statuses:?}");

    sim.phone().shuffle_statuses(true).await.unwrap();
    callbacks.got.lock().unwrap().clear();
    create(
        &sim,
        auth,
        &[
            ("To", to),
            ("From", &o.sender),
            ("ContentSid", "HX1"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    let got = wait::until("three callbacks", Duration::from_secs(10), || async {
        let got = callbacks.got.lock().unwrap().clone();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let order: Vec<&str> = got
        .iter()
        .map(|f| field(f, "MessageStatus").unwrap())
        .collect();
    assert_eq!(order, ["read", "delivered", "sent"]);
    // Advancing the simulated clock closes a window the customer had opened.
    let (webhooks, hook) = receiver(&o.auth_token, "/messages").await;
    let phone = sim.phone();
    phone.set_webhook(&hook).await.unwrap();
    let writer = "whatsapp:+15551230002";
    phone.text(writer, "hi").await.unwrap();
    assert_eq!(webhooks.got.lock().unwrap().len(), 1);
    phone.advance_clock(25 * 3600).await.unwrap();
    sim.phone().shuffle_statuses(false).await.unwrap();
    callbacks.got.lock().unwrap().clear();
    create(
        &sim,
        auth,
        &[
            ("To", writer),
            ("From", &o.sender),
            ("Body", "too late"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    wait::until("the 63016", Duration::from_secs(10), || async {
        callbacks
            .got
            .lock()
            .unwrap()
            .iter()
            .any(|f| field(f, "ErrorCode") == Some("63016"))
            .then_some(())
    })
    .await;
}

/// Twilio's status callbacks are best effort: with the fault on, one in N is lost, while
/// the API still shows each message's status, and a failure's code and description.
#[tokio::test]
async fn status_callbacks_can_be_lost_while_the_api_shows_every_status() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let auth = (o.account_sid.as_str(), o.auth_token.as_str());
    let (callbacks, url) = receiver(&o.auth_token, "/status").await;
    let to = "whatsapp:+15551230003";
    let send = |form: (&'static str, &'static str)| {
        let (sim, url) = (&sim, &url);
        async move {
            let from = &sim.options().sender;
            let (_, created) = create(
                sim,
                auth,
                &[("To", to), ("From", from), form, ("StatusCallback", url)],
            )
            .await;
            created["sid"].as_str().unwrap().to_owned()
        }
    };
    let http = reqwest::Client::new();
    let fetch = |sid: &str| {
        let request = http
            .get(format!(
                "{}/2010-04-01/Accounts/{}/Messages/{sid}.json",
                sim.api_base(),
                o.account_sid
            ))
            .basic_auth(auth.0, Some(auth.1));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let statuses = || {
        let got = callbacks.got.lock().unwrap().clone();
        got.iter()
            .map(|f| field(f, "MessageStatus").unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // A template goes sent, delivered, read: the second of the three is lost. The read
    // callback comes last, after the others were posted or lost.
    sim.phone().lose_statuses(2).await.unwrap();
    let template = send(("ContentSid", "HX1")).await;
    wait::until("the read callback", Duration::from_secs(10), || async {
        statuses().contains(&"read".to_owned()).then_some(())
    })
    .await;
    assert_eq!(statuses(), ["sent", "read"]);
    assert_eq!(fetch(&template).await["status"], "read");
    // Outside the window a text fails; the API names the code and what it means.
    sim.phone().lose_statuses(0).await.unwrap();
    let late = send(("Body", "outside the window")).await;
    let failed = wait::until("the failure", Duration::from_secs(10), || async {
        let m = fetch(&late).await;
        (m["status"] == "failed").then_some(m)
    })
    .await;
    assert_eq!(failed["error_code"], 63016);
    assert!(
        failed["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("outside the allowed window")),
        "{failed}"
    );
}

/// A status callback is tried again as its URL's fragment says, as an inbound webhook is,
/// while the message moves on to its next status; without a fragment, a 5xx is final and
/// that status is lost.
#[tokio::test]
async fn status_callbacks_are_tried_again_as_their_fragment_says() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let auth = (o.account_sid.as_str(), o.auth_token.as_str());
    let (callbacks, url) = receiver(&o.auth_token, "/status").await;
    // A template, which passes outside the customer's window; its first callback gets 503.
    let send = |callback: String| {
        let (sim, callbacks, sender) = (&sim, &callbacks, o.sender.clone());
        async move {
            callbacks.answers.lock().unwrap().push(503);
            let form = [
                ("To", "whatsapp:+15551230001"),
                ("From", sender.as_str()),
                ("ContentSid", "HX1"),
                ("StatusCallback", callback.as_str()),
            ];
            let (_, message) = create(sim, auth, &form).await;
            message["sid"].as_str().unwrap().to_owned()
        }
    };
    let retried = send(format!("{url}?item=a#rc=2&rp=5xx")).await;
    assert_eq!(
        statuses_of(&callbacks, &retried, 4).await,
        ["delivered", "read", "sent", "sent"]
    );
    let plain = send(format!("{url}?item=b")).await;
    assert_eq!(
        statuses_of(&callbacks, &plain, 3).await,
        ["delivered", "read", "sent"]
    );
    // A later message's retry comes after the one the plain callback would have had.
    let later = send(format!("{url}?item=c#rc=1&rp=5xx")).await;
    statuses_of(&callbacks, &later, 4).await;
    assert_eq!(
        statuses_of(&callbacks, &plain, 3).await.len(),
        3,
        "a 503 was tried again without a fragment asking for it"
    );
}

/// The statuses, sorted, of every callback `r` got for message `sid`, once there are `n`.
async fn statuses_of(r: &Receiver, sid: &str, n: usize) -> Vec<String> {
    wait::until("the callbacks", Duration::from_secs(10), || async {
        let got = r.got.lock().unwrap().clone();
        let mut statuses: Vec<String> = got
            .iter()
            .filter(|f| field(f, "MessageSid") == Some(sid))
            .map(|f| field(f, "MessageStatus").unwrap().to_owned())
            .collect();
        statuses.sort();
        (statuses.len() >= n).then_some(statuses)
    })
    .await
}

#[tokio::test]
async fn the_customer_posts_signed_webhooks_and_retries_as_the_fragment_says() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let (webhooks, url) = receiver(&o.auth_token, "/twilio/messages").await;
    let phone = sim.phone();
    phone
        .set_webhook(&format!("{url}#rc=2&rp=5xx"))
        .await
        .unwrap();
    webhooks.answers.lock().unwrap().extend([503, 503]);
    let (sid, status) = phone
        .text("whatsapp:+15551239999", "where is my order?")
        .await
        .unwrap();
    assert_eq!(status, 200, "retries did not reach the third attempt");
    let got = webhooks.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let fields = &got[0];
    assert_eq!(field(fields, "MessageSid"), Some(sid.as_str()));
    assert_eq!(field(fields, "From"), Some("whatsapp:+15551239999"));
    assert_eq!(field(fields, "WaId"), Some("15551239999"));
    assert_eq!(field(fields, "To"), Some(o.sender.as_str()));
    assert_eq!(field(fields, "Body"), Some("where is my order?"));
    assert_eq!(field(fields, "NumMedia"), Some("0"));
    // Without the fragment, a 5xx is not retried.
    phone.set_webhook(&url).await.unwrap();
    webhooks.answers.lock().unwrap().push(500);
    let (_, status) = phone.text("whatsapp:+15551239999", "again").await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(webhooks.got.lock().unwrap().len(), 4);
    // Media and a location, with Twilio's fields.
    let (sid, _) = phone
        .send(&waconnect_sim::twilio::CustomerMessage {
            from: "whatsapp:+15551239999".into(),
            media: vec![waconnect_sim::twilio::Media {
                url: "https://example.test/p.jpg".into(),
                content_type: "image/jpeg".into(),
                sid: None,
            }],
            location: Some(waconnect_sim::twilio::Location {
                latitude: 51.5,
                longitude: -0.12,
                label: Some("Office".into()),
                address: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(sid.starts_with("MM"));
    let fields = webhooks.got.lock().unwrap().last().unwrap().clone();
    assert_eq!(field(&fields, "NumMedia"), Some("1"));
    assert_eq!(field(&fields, "MediaContentType0"), Some("image/jpeg"));
    assert_eq!(field(&fields, "Latitude"), Some("51.5"));
    assert_eq!(field(&fields, "MessageType"), Some("location"));
}

/// A customer's file is Twilio's Media resource: fetching it needs the account's Basic
/// auth and redirects to a short-lived storage URL that needs none; DELETE removes it.
#[tokio::test]
async fn customer_files_need_auth_redirect_to_storage_and_can_be_deleted() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let (webhooks, url) = receiver(&o.auth_token, "/twilio/messages").await;
    let phone = sim.phone();
    phone.set_webhook(&url).await.unwrap();
    let photo = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];
    let (sid, _) = phone
        .send_file(
            "whatsapp:+15551239999",
            photo.clone(),
            "image/jpeg",
            "broken",
        )
        .await
        .unwrap();
    let fields = webhooks.got.lock().unwrap().last().unwrap().clone();
    assert!(sid.starts_with("MM"));
    assert_eq!(field(&fields, "Body"), Some("broken"));
    assert_eq!(field(&fields, "MessageType"), Some("image"));
    let media_url = field(&fields, "MediaUrl0").unwrap().to_owned();
    assert!(
        media_url.starts_with(&format!(
            "{}/2010-04-01/Accounts/{}/Messages/{sid}/Media/ME",
            sim.api_base(),
            o.account_sid
        )),
        "{media_url}"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let anonymous = http.get(&media_url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let redirect = http
        .get(&media_url)
        .basic_auth(&o.account_sid, Some(&o.auth_token))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    let storage = redirect.headers()["location"].to_str().unwrap().to_owned();
    let file = http.get(&storage).send().await.unwrap();
    assert_eq!(file.headers()["content-type"], "image/jpeg");
    assert_eq!(file.bytes().await.unwrap().to_vec(), photo);
    let forged = storage.replace("media-content/", "media-content/x");
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    let delete = |auth: bool| {
        let mut request = http.delete(format!("{media_url}.json"));
        if auth {
            request = request.basic_auth(&o.account_sid, Some(&o.auth_token));
        }
        request.send()
    };
    assert_eq!(delete(false).await.unwrap().status(), 401);
    assert_eq!(delete(true).await.unwrap().status(), 204);
    assert_eq!(delete(true).await.unwrap().status(), 404);
    let gone = http
        .get(&media_url)
        .basic_auth(&o.account_sid, Some(&o.auth_token))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

/// Twilio takes a message with a file (201), then fetches `MediaUrl` itself: a file it
/// cannot fetch fails the message with 63019, a type WhatsApp does not take with 12300,
/// one too large with 11751 — by status callback, not in the answer.
#[tokio::test]
async fn files_are_fetched_after_the_send_and_refused_by_status() {
    let sim = TwilioSim::start_with(TwilioOptions {
        window_always_open: true,
        ..TwilioOptions::default()
    })
    .await;
    let o = sim.options().clone();
    // Files as a server would offer them.
    let files = Router::new()
        .route(
            "/ok.pdf",
            axum::routing::get(|| async { ([("content-type", "application/pdf")], "%PDF-1.4") }),
        )
        .route(
            "/rates.csv",
            axum::routing::get(|| async { ([("content-type", "text/csv")], "a,b") }),
        )
        .route(
            "/big.jpg",
            axum::routing::get(|| async {
                ([("content-type", "image/jpeg")], vec![0u8; 6 * 1024 * 1024])
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, files).await });
    let mut sids = Vec::new();
    for file in ["ok.pdf", "missing.pdf", "rates.csv", "big.jpg"] {
        let url = format!("{base}/{file}");
        let (status, body) = create(
            &sim,
            (&o.account_sid, &o.auth_token),
            &[
                ("To", "whatsapp:+15551239999"),
                ("From", &o.sender),
                ("MediaUrl", &url),
            ],
        )
        .await;
        assert_eq!(status, 201, "{file}: {body}");
        sids.push(body["sid"].as_str().unwrap().to_owned());
    }
    let phone = sim.phone();
    let outcome = wait::until("every file fetched", Duration::from_secs(10), || async {
        let sent = phone.sent().await.ok()?;
        let codes: Vec<Value> = sids
            .iter()
            .map(|sid| {
                let m = sent.iter().find(|m| m["sid"] == sid.as_str()).unwrap();
                m["error_code"].clone()
            })
            .collect();
        let settled = sids.iter().all(|sid| {
            let m = sent.iter().find(|m| m["sid"] == sid.as_str()).unwrap();
            m["status"] != "queued"
        });
        settled.then_some(codes)
    })
    .await;
    assert_eq!(
        outcome,
        [Value::Null, 63019.into(), 12300.into(), 11751.into()]
    );
    let (content_type, _, bytes) = phone.received_file(&sids[0], 0).await.unwrap();
    assert_eq!(content_type, "application/pdf");
    assert_eq!(bytes, b"%PDF-1.4");
}

/// The account's message history on the simulator, read with `password`.
fn history_of(sim: &TwilioSim, password: &str) -> waconnect_shared::twilio::history::History {
    let o = sim.options();
    waconnect_shared::twilio::history::History::new(
        waconnect_shared::twilio::account::TwilioAccount {
            account_sid: o.account_sid.clone(),
            username: o.account_sid.clone(),
            password: password.to_owned().into(),
        },
        &sim.api_base(),
        &Default::default(),
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn the_history_lists_what_customers_sent_page_by_page_with_their_files() {
    use waconnect_shared::twilio::history::HistoryError;
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let (webhooks, url) = receiver(&o.auth_token, "/twilio/messages").await;
    let phone = sim.phone();
    phone.set_webhook(&url).await.unwrap();
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let customer = "whatsapp:+15551239999";
    let mut sids = Vec::new();
    for n in 0..4 {
        sids.push(phone.text(customer, &format!("text {n}")).await.unwrap().0);
    }
    let (file, _) = phone
        .send_file(
            customer,
            b"%PDF-1.4".to_vec(),
            "application/pdf",
            "the bill",
        )
        .await
        .unwrap();
    sids.push(file.clone());
    // The business's own message is in the same list, and is not the customer's.
    let (status, _) = create(
        &sim,
        (&o.account_sid, &o.auth_token),
        &[("To", customer), ("From", &o.sender), ("Body", "hi")],
    )
    .await;
    assert_eq!(status, 201);
    let until = chrono::Utc::now() + chrono::Duration::seconds(1);

    let history = history_of(&sim, &o.auth_token).with_page_size(2);
    let received = history.received(None, since, until, 100).await.unwrap();
    assert_eq!(
        received.iter().map(|m| m.sid.clone()).collect::<Vec<_>>(),
        sids,
        "every customer message, oldest first, across pages"
    );
    assert_eq!(received[0].body, "text 0");
    assert_eq!(received[4].num_media, 1);

    // What the webhook carried, the history gives back.
    let files = history.files(&received[4]).await.unwrap();
    let webhook = webhooks.got.lock().unwrap().last().unwrap().clone();
    let event = received[4].event(&o.account_sid, &files);
    for name in [
        "MessageSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        "MediaUrl0",
        "MediaContentType0",
        "AccountSid",
        "WaId",
    ] {
        assert_eq!(event.field(name), field(&webhook, name), "{name}");
    }

    // A range before anything was sent is empty; a cap below the count is refused.
    let empty = history
        .received(None, since - chrono::Duration::hours(1), since, 100)
        .await
        .unwrap();
    assert!(empty.is_empty());
    assert!(matches!(
        history.received(None, since, until, 3).await,
        Err(HistoryError::TooMany(3))
    ));
    let refused = history_of(&sim, "wrong");
    assert!(matches!(
        refused.received(None, since, until, 100).await,
        Err(HistoryError::Auth(401))
    ));
}

#[tokio::test]
async fn the_history_pages_only_until_the_list_passes_the_range() {
    let sim = TwilioSim::start().await;
    let o = sim.options().clone();
    let (_webhooks, url) = receiver(&o.auth_token, "/twilio/messages").await;
    let phone = sim.phone();
    phone.set_webhook(&url).await.unwrap();
    let customer = "whatsapp:+15551239998";
    for n in 0..8 {
        phone.text(customer, &format!("old {n}")).await.unwrap();
    }
    // Twilio's dates are to the second: the range starts at the next one.
    let since =
        chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::TimeDelta::seconds(1))
            .unwrap()
            + chrono::TimeDelta::seconds(1);
    tokio::time::sleep((since - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let (new, _) = phone.text(customer, "new").await.unwrap();
    let history = history_of(&sim, &o.auth_token).with_page_size(2);
    // The whole day is listed (the filters are to the day), newest first: the first page
    // already goes past the range's start, so the eight older messages are never paged
    // through — they would count past the cap (four times `max` listed).
    let received = history
        .received(None, since, chrono::Utc::now(), 1)
        .await
        .unwrap();
    assert_eq!(
        received.iter().map(|m| m.sid.clone()).collect::<Vec<_>>(),
        [new]
    );
}
