//! Fidelity of the Connect simulator: the real AWS SDK clients round-trip every operation
//! and error type through `endpoint_url`, and the websocket frames have docs/architecture.md §6's
//! shapes.

use aws_sdk_connect::error::ProvideErrorMetadata;
use aws_sdk_connect::types::{ParticipantDetails, PersistentChat, RehydrationType};
use aws_sdk_connectparticipant::types::{ConnectionType, ScanDirection, SortKey, StartPosition};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use waconnect_shared::service::config::ConfigSource;
use waconnect_sim::connect::{ConnectSim, SimOptions};

const FLOW: &str = "flow-1";

struct Clients {
    connect: aws_sdk_connect::Client,
    participant: aws_sdk_connectparticipant::Client,
}

/// The SDK clients exactly as the relay builds them, pointed at the simulator, with the
/// SDK's own retries off so every modelled error reaches the test.
async fn clients(sim: &ConnectSim) -> Clients {
    let source = ConfigSource::from_pairs([
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDSIMULATOR"),
        ("AWS_SECRET_ACCESS_KEY", "simulator-secret"),
    ]);
    let mut r = source.reader();
    let aws = waconnect_shared::service::aws::AwsConfig::read(&mut r, &Default::default());
    r.finish().unwrap();
    let sdk = aws.load().await;
    let no_retries = aws_sdk_connect::config::retry::RetryConfig::disabled();
    let connect = aws_sdk_connect::config::Builder::from(&sdk)
        .endpoint_url(sim.endpoint())
        .retry_config(no_retries.clone())
        .build();
    let participant = aws_sdk_connectparticipant::config::Builder::from(&sdk)
        .endpoint_url(sim.endpoint())
        .retry_config(no_retries)
        .build();
    Clients {
        connect: aws_sdk_connect::Client::from_conf(connect),
        participant: aws_sdk_connectparticipant::Client::from_conf(participant),
    }
}

/// A StartChatContact request with the required fields filled in.
/// A chat that continues `old`'s transcript (Connect's persistent chat).
fn rehydrate(
    c: &Clients,
    sim: &ConnectSim,
    old: &str,
) -> aws_sdk_connect::operation::start_chat_contact::builders::StartChatContactFluentBuilder {
    chat_request(c, sim).persistent_chat(
        PersistentChat::builder()
            .rehydration_type(RehydrationType::EntirePastSession)
            .source_contact_id(old)
            .build(),
    )
}

async fn stop(
    c: &Clients,
    sim: &ConnectSim,
    contact: &str,
) -> Result<
    aws_sdk_connect::operation::stop_contact::StopContactOutput,
    aws_sdk_connect::error::SdkError<aws_sdk_connect::operation::stop_contact::StopContactError>,
> {
    c.connect
        .stop_contact()
        .instance_id(sim.instance_id())
        .contact_id(contact)
        .send()
        .await
}

fn chat_request(
    c: &Clients,
    sim: &ConnectSim,
) -> aws_sdk_connect::operation::start_chat_contact::builders::StartChatContactFluentBuilder {
    c.connect
        .start_chat_contact()
        .instance_id(sim.instance_id())
        .contact_flow_id(FLOW)
        .participant_details(
            ParticipantDetails::builder()
                .display_name("Ana")
                .build()
                .unwrap(),
        )
}

async fn start_chat(
    c: &Clients,
    sim: &ConnectSim,
    token: &str,
) -> aws_sdk_connect::operation::start_chat_contact::StartChatContactOutput {
    chat_request(c, sim)
        .attributes("Channel", "WhatsApp")
        .client_token(token)
        .supported_messaging_content_types("text/plain")
        .send()
        .await
        .unwrap()
}

/// (connection token, websocket url)
async fn connect(c: &Clients, participant_token: &str) -> (String, String) {
    let out = c
        .participant
        .create_participant_connection()
        .participant_token(participant_token)
        .r#type(ConnectionType::Websocket)
        .r#type(ConnectionType::ConnectionCredentials)
        .connect_participant(true)
        .send()
        .await
        .unwrap();
    let creds = out.connection_credentials().unwrap();
    assert!(creds.expiry().unwrap().ends_with('Z'));
    let ws = out.websocket().unwrap();
    (
        creds.connection_token().unwrap().to_owned(),
        ws.url().unwrap().to_owned(),
    )
}

async fn send(c: &Clients, token: &str, text: &str, client_token: &str) -> Result<String, String> {
    c.participant
        .send_message()
        .connection_token(token)
        .content_type("text/plain")
        .content(text)
        .client_token(client_token)
        .send()
        .await
        .map(|o| o.id().unwrap().to_owned())
        .map_err(|e| e.code().unwrap_or("no code").to_owned())
}

#[tokio::test]
async fn chats_start_idempotently_and_messages_round_trip() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let first = start_chat(&c, &sim, "token-1").await;
    let again = start_chat(&c, &sim, "token-1").await;
    assert_eq!(
        first.contact_id(),
        again.contact_id(),
        "ClientToken not honoured"
    );
    let other = start_chat(&c, &sim, "token-2").await;
    assert_ne!(first.contact_id(), other.contact_id());
    let contact = first.contact_id().unwrap();
    let (token, _) = connect(&c, first.participant_token().unwrap()).await;

    let a = send(&c, &token, "hello", "m1").await.unwrap();
    assert_eq!(
        send(&c, &token, "hello", "m1").await.unwrap(),
        a,
        "SendMessage ClientToken"
    );
    send(&c, &token, &"x".repeat(1024), "m2").await.unwrap();
    assert_eq!(
        send(&c, &token, &"x".repeat(1025), "m3").await,
        Err("ValidationException".into())
    );
    assert!(send(&c, &token, "hi", "m4").await.is_ok());
    let event = c
        .participant
        .send_event()
        .connection_token(&token)
        .content_type("application/vnd.amazonaws.connect.event.typing")
        .send()
        .await
        .unwrap();
    assert!(event.absolute_time().unwrap().ends_with('Z'));

    let desk = sim.desk();
    desk.accept(contact).await.unwrap();
    desk.send(contact, "how can I help?").await.unwrap();
    assert_eq!(desk.customer_texts(contact).await.unwrap().len(), 3);
    assert_eq!(desk.customer_events(contact).await.unwrap().len(), 1);

    // Forward paging from an item, two per page, ascending.
    let mut ids = Vec::new();
    let mut next = None;
    loop {
        let page = c
            .participant
            .get_transcript()
            .connection_token(&token)
            .contact_id(contact)
            .max_results(2)
            .scan_direction(ScanDirection::Forward)
            .sort_order(SortKey::Ascending)
            .start_position(StartPosition::builder().id(&a).build())
            .set_next_token(next.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(page.initial_contact_id(), Some(contact));
        ids.extend(page.transcript().iter().map(|i| i.id().unwrap().to_owned()));
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    let all: Vec<String> = desk
        .transcript(contact)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let from_a = all.iter().position(|i| *i == a).unwrap();
    assert_eq!(
        ids,
        all[from_a..],
        "forward scan from StartPosition, inclusive"
    );
    // Backward, newest first: the most recent two.
    let newest = c
        .participant
        .get_transcript()
        .connection_token(&token)
        .max_results(2)
        .sort_order(SortKey::Descending)
        .send()
        .await
        .unwrap();
    let got: Vec<&str> = newest
        .transcript()
        .iter()
        .map(|i| i.id().unwrap())
        .collect();
    assert_eq!(
        got,
        [all[all.len() - 1].as_str(), all[all.len() - 2].as_str()]
    );
    assert!(newest.next_token().is_some());

    c.participant
        .disconnect_participant()
        .connection_token(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        send(&c, &token, "late", "m5").await,
        Err("AccessDeniedException".into())
    );
    let refused = c
        .participant
        .create_participant_connection()
        .participant_token(first.participant_token().unwrap())
        .r#type(ConnectionType::ConnectionCredentials)
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("AccessDeniedException"));
}

#[tokio::test]
async fn every_modelled_error_reaches_the_sdk() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let desk = sim.desk();
    let wrong_instance = c
        .connect
        .start_chat_contact()
        .instance_id("not-the-instance")
        .contact_flow_id(FLOW)
        .participant_details(
            ParticipantDetails::builder()
                .display_name("A")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(wrong_instance.code(), Some("ResourceNotFoundException"));
    assert_eq!(
        wrong_instance.raw_response().unwrap().status().as_u16(),
        404
    );
    let duration = chat_request(&c, &sim)
        .chat_duration_in_minutes(10)
        .send()
        .await
        .unwrap_err();
    assert_eq!(duration.code(), Some("InvalidParameterException"));
    let types = chat_request(&c, &sim)
        .supported_messaging_content_types("text/markdown")
        .send()
        .await
        .unwrap_err();
    assert_eq!(types.code(), Some("InvalidRequestException"));

    desk.throttle(1, Some(&["StartChatContact"])).await.unwrap();
    let throttled = chat_request(&c, &sim).send().await.unwrap_err();
    assert_eq!(throttled.code(), Some("LimitExceededException"));
    assert_eq!(throttled.raw_response().unwrap().status().as_u16(), 429);
    desk.fail(1, Some(&["StartChatContact"])).await.unwrap();
    let failed = chat_request(&c, &sim).send().await.unwrap_err();
    assert_eq!(failed.code(), Some("InternalServiceException"));

    let chat = start_chat(&c, &sim, "ok").await;
    let (token, _) = connect(&c, chat.participant_token().unwrap()).await;
    desk.throttle(2, Some(&["SendMessage"])).await.unwrap();
    assert_eq!(
        send(&c, &token, "a", "1").await,
        Err("ThrottlingException".into())
    );
    assert_eq!(
        send(&c, &token, "a", "1").await,
        Err("ThrottlingException".into())
    );
    desk.fail(1, None).await.unwrap();
    assert_eq!(
        send(&c, &token, "a", "1").await,
        Err("InternalServerException".into())
    );
    assert!(
        send(&c, &token, "a", "1").await.is_ok(),
        "faults outlived their budget"
    );
    assert_eq!(
        send(&c, "ctok-bogus", "a", "2").await,
        Err("AccessDeniedException".into())
    );
    desk.reject_containing(Some("POISON")).await.unwrap();
    assert_eq!(
        send(&c, &token, "a POISON b", "3").await,
        Err("ValidationException".into())
    );
    assert!(send(&c, &token, "fine", "4").await.is_ok());
    let quota = c
        .participant
        .start_attachment_upload()
        .connection_token(&token)
        .content_type("image/png")
        .attachment_size_in_bytes(1 << 30)
        .attachment_name("huge.png")
        .client_token("up-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        quota.code(),
        Some("ValidationException"),
        "over the size limit"
    );
    let unfinished = c
        .participant
        .start_attachment_upload()
        .connection_token(&token)
        .content_type("image/png")
        .attachment_size_in_bytes(3)
        .attachment_name("a.png")
        .client_token("up-2")
        .send()
        .await
        .unwrap();
    let conflict = c
        .participant
        .complete_attachment_upload()
        .connection_token(&token)
        .attachment_ids(unfinished.attachment_id().unwrap())
        .client_token("c-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some("ConflictException"));

    desk.delay(300).await.unwrap();
    let started = std::time::Instant::now();
    assert!(send(&c, &token, "slow", "5").await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delay not applied"
    );
    desk.clear_faults().await.unwrap();

    // Expired connection tokens are refused until a new connection is made.
    assert_eq!(
        desk.expire_tokens(Some(chat.contact_id().unwrap()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        send(&c, &token, "a", "6").await,
        Err("AccessDeniedException".into())
    );
    let (fresh, _) = connect(&c, chat.participant_token().unwrap()).await;
    assert!(send(&c, &fresh, "a", "6").await.is_ok());
}

#[tokio::test]
async fn persistent_chat_rehydrates_the_past_session_and_calls_are_recorded() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let desk = sim.desk();
    let first = start_chat(&c, &sim, "t1").await;
    let old = first.contact_id().unwrap();
    let (token, _) = connect(&c, first.participant_token().unwrap()).await;
    send(&c, &token, "first session", "m").await.unwrap();
    desk.accept(old).await.unwrap();
    desk.send(old, "agent said").await.unwrap();

    let still_live = rehydrate(&c, &sim, old).send().await.unwrap_err();
    assert_eq!(still_live.code(), Some("InvalidRequestException"));
    stop(&c, &sim, old).await.unwrap();
    let gone = stop(&c, &sim, "no-such-contact").await.unwrap_err();
    assert_eq!(gone.code(), Some("ResourceNotFoundException"));

    let second = rehydrate(&c, &sim, old).send().await.unwrap();
    assert_eq!(second.continued_from_contact_id(), Some(old));
    let new_id = second.contact_id().unwrap();
    assert_ne!(new_id, old);
    let (token, _) = connect(&c, second.participant_token().unwrap()).await;
    let transcript = c
        .participant
        .get_transcript()
        .connection_token(&token)
        .scan_direction(ScanDirection::Forward)
        .max_results(100)
        .send()
        .await
        .unwrap();
    let texts: Vec<&str> = transcript
        .transcript()
        .iter()
        .filter_map(|i| i.content())
        .collect();
    assert_eq!(texts, ["first session", "agent said"]);
    assert!(transcript.transcript().iter().any(
        |i| i.content_type() == Some("application/vnd.amazonaws.connect.event.chat.rehydrated")
    ));
    assert!(
        desk.chats(Some("waiting"))
            .await
            .unwrap()
            .iter()
            .any(|s| s.contact_id == new_id && s.continued_from.as_deref() == Some(old))
    );

    let call = || {
        c.connect
            .start_outbound_voice_contact()
            .instance_id(sim.instance_id())
            .contact_flow_id("voice-flow")
            .destination_phone_number("+15551230000")
            .source_phone_number("+15550009999")
            .client_token("call-1")
            .send()
    };
    let a = call().await.unwrap();
    let b = call().await.unwrap();
    assert_eq!(a.contact_id(), b.contact_id(), "outbound voice ClientToken");
    let calls = desk.calls().await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["destination"], "+15551230000");
    assert_eq!(calls[0]["contact_flow_id"], "voice-flow");
    let refused = c
        .connect
        .start_outbound_voice_contact()
        .instance_id(sim.instance_id())
        .contact_flow_id("voice-flow")
        .destination_phone_number("12")
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("DestinationNotAllowedException"));
    let forbidden = c
        .connect
        .start_outbound_voice_contact()
        .instance_id(sim.instance_id())
        .contact_flow_id("voice-flow")
        .destination_phone_number("+99912345678")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        forbidden.code(),
        Some("OutboundContactNotPermittedException")
    );
}

/// With `renumber_rehydrated`, a persistent chat repeats the past items with their
/// times and contents but under new Ids.
#[tokio::test]
async fn rehydrated_items_can_come_back_with_new_ids() {
    let sim = ConnectSim::start_with(SimOptions {
        renumber_rehydrated: true,
        ..SimOptions::default()
    })
    .await;
    let c = clients(&sim).await;
    let desk = sim.desk();
    let transcript = |token: String| {
        let c = &c;
        async move {
            c.participant
                .get_transcript()
                .connection_token(token)
                .scan_direction(ScanDirection::Forward)
                .max_results(100)
                .send()
                .await
                .unwrap()
                .transcript()
                .iter()
                .filter(|i| i.content().is_some())
                .map(|i| {
                    (
                        i.id().unwrap().to_owned(),
                        i.absolute_time().unwrap().to_owned(),
                        i.content().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let first = start_chat(&c, &sim, "t1").await;
    let old = first.contact_id().unwrap();
    let (token, _) = connect(&c, first.participant_token().unwrap()).await;
    send(&c, &token, "first session", "m").await.unwrap();
    desk.accept(old).await.unwrap();
    desk.send(old, "agent said").await.unwrap();
    let before = transcript(token).await;
    stop(&c, &sim, old).await.unwrap();
    let second = rehydrate(&c, &sim, old).send().await.unwrap();
    let (token, _) = connect(&c, second.participant_token().unwrap()).await;
    let after = transcript(token).await;
    assert_eq!(after.len(), 2);
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old.0, new.0, "same Id");
        assert_eq!(
            (&old.1, &old.2),
            (&new.1, &new.2),
            "time or content changed"
        );
    }
}

#[tokio::test]
async fn attachments_upload_to_the_simulator_and_come_back() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let chat = start_chat(&c, &sim, "t").await;
    let (token, _) = connect(&c, chat.participant_token().unwrap()).await;
    let bytes = b"\x89PNG fake image".to_vec();
    let upload = c
        .participant
        .start_attachment_upload()
        .connection_token(&token)
        .content_type("image/png")
        .attachment_size_in_bytes(bytes.len() as i64)
        .attachment_name("photo.png")
        .client_token("u")
        .send()
        .await
        .unwrap();
    let meta = upload.upload_metadata().unwrap();
    let http = reqwest::Client::new();
    let mut put = http.put(meta.url().unwrap()).body(bytes.clone());
    for (k, v) in meta.headers_to_include().unwrap() {
        put = put.header(k, v);
    }
    assert!(put.send().await.unwrap().status().is_success());
    c.participant
        .complete_attachment_upload()
        .connection_token(&token)
        .attachment_ids(upload.attachment_id().unwrap())
        .client_token("c")
        .send()
        .await
        .unwrap();
    let got = c
        .participant
        .get_attachment()
        .connection_token(&token)
        .attachment_id(upload.attachment_id().unwrap())
        .url_expiry_in_seconds(60)
        .send()
        .await
        .unwrap();
    assert_eq!(got.attachment_size_in_bytes(), bytes.len() as i64);
    let fetched = http
        .get(got.url().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(fetched.as_ref(), bytes.as_slice());
    let items = sim
        .desk()
        .transcript(chat.contact_id().unwrap())
        .await
        .unwrap();
    let item = items.iter().find(|i| i.kind == "ATTACHMENT").unwrap();
    assert_eq!(item.attachments[0].attachment_name, "photo.png");
    // The same ClientTokens again: the same attachment, and no second item.
    let again = c
        .participant
        .start_attachment_upload()
        .connection_token(&token)
        .content_type("image/png")
        .attachment_size_in_bytes(bytes.len() as i64)
        .attachment_name("photo.png")
        .client_token("u")
        .send()
        .await
        .unwrap();
    assert_eq!(again.attachment_id(), upload.attachment_id());
    c.participant
        .complete_attachment_upload()
        .connection_token(&token)
        .attachment_ids(upload.attachment_id().unwrap())
        .client_token("c")
        .send()
        .await
        .unwrap();
    let files = sim
        .desk()
        .customer_files(chat.contact_id().unwrap())
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, bytes);
}

/// The upload URL is S3's: any header that differs from HeadersToInclude, or one more
/// signed header, is refused; types the instance does not allow are refused at Start;
/// a chat takes 35 attachments.
#[tokio::test]
async fn uploads_are_as_strict_as_s3_and_connects_limits() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let chat = start_chat(&c, &sim, "t").await;
    let (token, _) = connect(&c, chat.participant_token().unwrap()).await;
    let start = |name: &'static str, client_token: String| {
        c.participant
            .start_attachment_upload()
            .connection_token(&token)
            .content_type("image/png")
            .attachment_size_in_bytes(3)
            .attachment_name(name)
            .client_token(client_token)
            .send()
    };
    let voice = start("note.ogg", "ogg".into()).await.unwrap_err();
    assert_eq!(voice.code(), Some("ValidationException"));
    let http = reqwest::Client::new();
    let upload = start("a.png", "u0".into()).await.unwrap();
    let meta = upload.upload_metadata().unwrap();
    let headers = meta.headers_to_include().unwrap().clone();
    assert!(headers.len() > 1, "Connect signs more than the type");
    let put = |skip: Option<&str>, extra: Option<(&str, &str)>| {
        let mut request = http.put(meta.url().unwrap()).body(b"abc".to_vec());
        for (k, v) in &headers {
            if Some(k.as_str()) != skip {
                request = request.header(k, v);
            }
        }
        if let Some((k, v)) = extra {
            request = request.header(k, v);
        }
        request.send()
    };
    let missing = put(Some("x-amz-acl"), None).await.unwrap();
    assert_eq!(missing.status(), 403);
    assert!(
        missing
            .text()
            .await
            .unwrap()
            .contains("SignatureDoesNotMatch")
    );
    let unsigned = put(None, Some(("x-amz-meta-extra", "1"))).await.unwrap();
    assert_eq!(unsigned.status(), 403);
    assert!(put(None, None).await.unwrap().status().is_success());
    let complete = |id: String, client_token: String| {
        c.participant
            .complete_attachment_upload()
            .connection_token(&token)
            .attachment_ids(id)
            .client_token(client_token)
            .send()
    };
    complete(upload.attachment_id().unwrap().into(), "c0".into())
        .await
        .unwrap();
    for n in 1..35 {
        let u = start("a.png", format!("u{n}")).await.unwrap();
        let m = u.upload_metadata().unwrap();
        let mut request = http.put(m.url().unwrap()).body(b"abc".to_vec());
        for (k, v) in m.headers_to_include().unwrap() {
            request = request.header(k, v);
        }
        assert!(request.send().await.unwrap().status().is_success());
        complete(u.attachment_id().unwrap().into(), format!("c{n}"))
            .await
            .unwrap();
    }
    let over = start("a.png", "u35".into()).await.unwrap_err();
    assert_eq!(over.code(), Some("ServiceQuotaExceededException"));
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_frames_have_connects_shapes() {
    let sim = ConnectSim::start().await;
    let c = clients(&sim).await;
    let desk = sim.desk();
    let chat = start_chat(&c, &sim, "t").await;
    let contact = chat.contact_id().unwrap();
    let (_, url) = connect(&c, chat.participant_token().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"topic":"aws/subscribe","content":{"topics":["aws/chat"]}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic":"aws/subscribe","content":{"status":"success","topics":["aws/chat"]}})
    );
    ws.send(Message::text(r#"{"topic":"aws/heartbeat"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"topic":"aws/heartbeat"}));
    ws.send(Message::text(r#"{"topic":"aws/ping"}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"topic":"aws/ping","statusCode":200,"statusContent":"OK"})
    );
    ws.send(Message::text(r#"{"topic":"aws/unknown"}"#))
        .await
        .unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!(error["message"], "Forbidden");
    assert!(error["connectionId"].is_string() && error["requestId"].is_string());
    assert!(error.get("topic").is_none());

    desk.accept(contact).await.unwrap();
    let joined = next_json(&mut ws).await;
    assert_eq!(joined["topic"], "aws/chat");
    assert_eq!(joined["contentType"], "application/json");
    let item: Value = serde_json::from_str(joined["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        item["ContentType"],
        "application/vnd.amazonaws.connect.event.participant.joined"
    );
    assert_eq!(item["ParticipantRole"], "AGENT");
    desk.send(contact, "hi there").await.unwrap();
    let message: Value =
        serde_json::from_str(next_json(&mut ws).await["content"].as_str().unwrap()).unwrap();
    for field in [
        "AbsoluteTime",
        "Content",
        "ContentType",
        "Id",
        "Type",
        "ParticipantId",
        "DisplayName",
        "ParticipantRole",
        "InitialContactId",
        "ContactId",
    ] {
        assert!(
            message.get(field).is_some(),
            "item lacks {field}: {message}"
        );
    }
    assert_eq!(message["Type"], "MESSAGE");
    assert_eq!(message["Content"], "hi there");
    let time = message["AbsoluteTime"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.len() == 24,
        "{time}"
    );

    // Unanswered heartbeats: the socket stays open, pings still answer.
    desk.answer_heartbeats(false).await.unwrap();
    ws.send(Message::text(r#"{"topic":"aws/heartbeat"}"#))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"topic":"aws/ping"}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await["topic"],
        "aws/ping",
        "heartbeat answered"
    );
    desk.answer_heartbeats(true).await.unwrap();

    desk.end(contact).await.unwrap();
    let ended: Value =
        serde_json::from_str(next_json(&mut ws).await["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        ended["ContentType"],
        "application/vnd.amazonaws.connect.event.chat.ended"
    );
    assert!(
        ended.get("ParticipantRole").is_none(),
        "chat.ended carries no role"
    );
    assert!(matches!(
        ws.next().await,
        Some(Ok(Message::Close(_))) | None
    ));
}

#[tokio::test]
async fn sockets_drop_on_demand_and_urls_expire_unused() {
    let sim = ConnectSim::start_with(SimOptions {
        url_ttl: Duration::from_millis(300),
        ..SimOptions::default()
    })
    .await;
    let c = clients(&sim).await;
    let chat = start_chat(&c, &sim, "t").await;
    let (_, url) = connect(&c, chat.participant_token().unwrap()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"topic":"aws/subscribe","content":{"topics":["aws/chat"]}}"#,
    ))
    .await
    .unwrap();
    next_json(&mut ws).await;
    assert_eq!(sim.desk().drop_sockets(None).await.unwrap(), 1);
    assert!(matches!(
        ws.next().await,
        Some(Ok(Message::Close(_))) | None
    ));

    let (_, stale) = connect(&c, chat.participant_token().unwrap()).await;
    waconnect_tests::wait::until("the URL to expire", Duration::from_secs(5), || async {
        tokio_tungstenite::connect_async(stale.as_str())
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (_, fresh) = connect(&c, chat.participant_token().unwrap()).await;
    assert!(
        tokio_tungstenite::connect_async(fresh.as_str())
            .await
            .is_ok()
    );
}
