//! The Connect (`/contact/...`) and Participant (`/participant/...`) REST operations, in
//! restJson1 as the AWS SDKs send and parse them.

use super::Sim;
use super::model::{Attachment, ChatState, Connection, Contact, OutboundCall, WsUrl, iso, new_id};
use super::wire::{ApiError, AttachmentItem, Item, Service};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

type Answer = Result<Json<Value>, ApiError>;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/contact/chat", put(start_chat))
        .route(
            "/contact-flows/{instance}/{flow}",
            axum::routing::get(describe_contact_flow),
        )
        .route("/contact/outbound-voice", put(start_outbound_voice))
        .route("/contact/stop", post(stop_contact))
        .route("/participant/connection", post(create_connection))
        .route("/participant/message", post(send_message))
        .route("/participant/event", post(send_event))
        .route("/participant/transcript", post(get_transcript))
        .route("/participant/disconnect", post(disconnect))
        .route("/participant/start-attachment-upload", post(start_upload))
        .route(
            "/participant/complete-attachment-upload",
            post(complete_upload),
        )
        .route("/participant/attachment", post(get_attachment))
        .route(
            "/attachments/{id}",
            // An instance may allow attachments up to 100 MB.
            put(put_attachment_bytes)
                .get(get_attachment_bytes)
                .layer(axum::extract::DefaultBodyLimit::max(100 << 20)),
        )
}

/// Counts the call, applies the injected delay and returns an injected error if one is due.
async fn admit(sim: &Sim, service: Service, operation: &str) -> Result<(), ApiError> {
    let (delay, fault) = {
        let mut inner = sim.lock();
        inner.count(operation);
        let delay = inner.faults.delay;
        (delay, inner.faults.on_call(service, operation))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    fault.map_or(Ok(()), Err)
}

fn body(bytes: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::validation(
            "The request body is not a JSON object",
        )),
    }
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn required<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    text(m, key)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter(format!("{key} is required")))
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("x-amz-bearer")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::access_denied("Missing X-Amz-Bearer"))
}

async fn start_chat(State(sim): State<Arc<Sim>>, bytes: Bytes) -> Answer {
    admit(&sim, Service::Connect, "StartChatContact").await?;
    let m = body(&bytes)?;
    let instance = required(&m, "InstanceId")?;
    let flow = required(&m, "ContactFlowId")?.to_owned();
    let display_name = m
        .get("ParticipantDetails")
        .and_then(|p| p.get("DisplayName"))
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter("ParticipantDetails.DisplayName is required"))?
        .to_owned();
    if instance != sim.options.instance_id {
        return Err(ApiError::not_found("Instance not found"));
    }
    if !flow_exists(&sim, &flow) {
        return Err(ApiError::not_found("ContactFlow not found"));
    }
    let minutes = m
        .get("ChatDurationInMinutes")
        .and_then(Value::as_u64)
        .unwrap_or(1500);
    if !(60..=10080).contains(&minutes) {
        return Err(ApiError::invalid_parameter(
            "ChatDurationInMinutes must be between 60 and 10080",
        ));
    }
    let supported: Vec<String> = match m
        .get("SupportedMessagingContentTypes")
        .and_then(Value::as_array)
    {
        Some(types) if !types.iter().any(|t| t == "text/plain") => {
            return Err(ApiError::invalid_request(
                "SupportedMessagingContentTypes must include text/plain",
            ));
        }
        Some(types) => types
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => vec!["text/plain".to_owned()],
    };
    let attributes = m
        .get("Attributes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if serde_json::to_vec(&attributes).map_or(0, |v| v.len()) > 32 * 1024 {
        return Err(ApiError::invalid_parameter("Attributes are over 32 KB"));
    }
    let client_token = text(&m, "ClientToken").map(str::to_owned);
    let mut inner = sim.lock();
    if let Some(previous) = client_token
        .as_ref()
        .and_then(|t| inner.start_tokens.get(t))
    {
        return Ok(Json(previous.clone()));
    }
    let source = match m.get("PersistentChat") {
        Some(p) => {
            let source = p
                .get("SourceContactId")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid_parameter("SourceContactId is required"))?;
            let rehydration = p.get("RehydrationType").and_then(Value::as_str);
            if !matches!(rehydration, Some("ENTIRE_PAST_SESSION" | "FROM_SEGMENT")) {
                return Err(ApiError::invalid_parameter("Unknown RehydrationType"));
            }
            // Past items are copied in whichever contact of the session is named.
            let Some(old) = inner.contact_mut(source) else {
                return Err(ApiError::not_found("Source contact not found"));
            };
            if old.state != ChatState::Ended {
                return Err(ApiError::invalid_request("The source chat is still active"));
            }
            let mut past = old.transcript.clone();
            if sim.options.renumber_rehydrated {
                for item in &mut past {
                    item.id = new_id();
                }
            }
            Some((old.contact_id.clone(), past))
        }
        None => None,
    };
    let contact_id = new_id();
    let participant_token = format!("ptok-{}", new_id());
    let now = Instant::now();
    let contact = Contact {
        contact_id: contact_id.clone(),
        initial_contact_id: contact_id.clone(),
        continued_from: source.as_ref().map(|(id, _)| id.clone()),
        flow_id: flow,
        display_name,
        attributes,
        customer_participant_id: new_id(),
        agent_participant_id: new_id(),
        state: ChatState::Waiting,
        transcript: source.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
        client_tokens: Default::default(),
        customer_events: Vec::new(),
        supervised: false,
        supported,
        sockets: Vec::new(),
        connect_by: now + sim.options.connect_window,
        ends_at: now + std::time::Duration::from_secs(minutes * 60),
        ever_connected: false,
        last_time_ms: 0,
        created_at: Utc::now(),
    };
    let participant_id = contact.customer_participant_id.clone();
    inner.contacts.insert(contact_id.clone(), contact);
    inner.order.push(contact_id.clone());
    inner
        .participant_tokens
        .insert(participant_token.clone(), contact_id.clone());
    inner.event(&contact_id, "participant.joined", Some("CUSTOMER"));
    if source.is_some() {
        inner.event(&contact_id, "chat.rehydrated", None);
    }
    if let Some(initial) = m
        .get("InitialMessage")
        .and_then(|i| i.get("Content"))
        .and_then(Value::as_str)
    {
        let item = customer_message(&inner, &contact_id, initial);
        inner.append(&contact_id, item);
    }
    let mut response = json!({
        "ContactId": contact_id,
        "ParticipantId": participant_id,
        "ParticipantToken": participant_token,
    });
    if let Some((from, _)) = source {
        response["ContinuedFromContactId"] = json!(from);
    }
    if let Some(token) = client_token {
        inner.start_tokens.insert(token, response.clone());
    }
    Ok(Json(response))
}

fn customer_message(inner: &super::model::Inner, contact_id: &str, content: &str) -> Item {
    let c = &inner.contacts[contact_id];
    Item {
        id: new_id(),
        kind: "MESSAGE".into(),
        content_type: "text/plain".into(),
        content: Some(content.to_owned()),
        participant_id: Some(c.customer_participant_id.clone()),
        display_name: Some(c.display_name.clone()),
        participant_role: Some("CUSTOMER".into()),
        ..Item::default()
    }
}

fn flow_exists(sim: &Sim, flow: &str) -> bool {
    let flows = &sim.options.contact_flows;
    flows.is_empty() || flows.iter().any(|f| f == flow)
}

/// DescribeContactFlow: what `waconnect check` asks to know a route's flow exists.
async fn describe_contact_flow(
    State(sim): State<Arc<Sim>>,
    Path((instance, flow)): Path<(String, String)>,
) -> Answer {
    admit(&sim, Service::Connect, "DescribeContactFlow").await?;
    if instance != sim.options.instance_id {
        return Err(ApiError::not_found("Instance not found"));
    }
    if !flow_exists(&sim, &flow) {
        return Err(ApiError::not_found("ContactFlow not found"));
    }
    Ok(Json(json!({ "ContactFlow": {
        "Arn": format!("arn:aws:connect:us-east-1:123456789012:instance/{instance}/contact-flow/{flow}"),
        "Id": flow,
        "Name": format!("Flow {flow}"),
        "Type": "CONTACT_FLOW",
        "State": "ACTIVE",
        "Status": "PUBLISHED",
    }})))
}

async fn start_outbound_voice(State(sim): State<Arc<Sim>>, bytes: Bytes) -> Answer {
    admit(&sim, Service::Connect, "StartOutboundVoiceContact").await?;
    let m = body(&bytes)?;
    let destination = required(&m, "DestinationPhoneNumber")?.to_owned();
    let flow = required(&m, "ContactFlowId")?.to_owned();
    if required(&m, "InstanceId")? != sim.options.instance_id {
        return Err(ApiError::not_found("Instance not found"));
    }
    if !destination.starts_with('+') || destination.len() < 8 {
        return Err(ApiError::new(
            403,
            "DestinationNotAllowedException",
            "The destination number is not allowed",
        ));
    }
    // The simulator's stand-in for a country the instance may not call.
    if destination.starts_with("+999") {
        return Err(ApiError::new(
            403,
            "OutboundContactNotPermittedException",
            "Outbound calls to this destination are not permitted",
        ));
    }
    let client_token = text(&m, "ClientToken").map(str::to_owned);
    let mut inner = sim.lock();
    if let Some(previous) = client_token
        .as_ref()
        .and_then(|t| inner.start_tokens.get(t))
    {
        return Ok(Json(previous.clone()));
    }
    let contact_id = new_id();
    inner.calls.push(OutboundCall {
        contact_id: contact_id.clone(),
        destination,
        source: text(&m, "SourcePhoneNumber").map(str::to_owned),
        contact_flow_id: flow,
        attributes: m
            .get("Attributes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        at: Utc::now(),
    });
    let response = json!({ "ContactId": contact_id });
    if let Some(token) = client_token {
        inner.start_tokens.insert(token, response.clone());
    }
    Ok(Json(response))
}

async fn stop_contact(State(sim): State<Arc<Sim>>, bytes: Bytes) -> Answer {
    admit(&sim, Service::Connect, "StopContact").await?;
    let m = body(&bytes)?;
    let contact_id = required(&m, "ContactId")?;
    if required(&m, "InstanceId")? != sim.options.instance_id {
        return Err(ApiError::not_found("Instance not found"));
    }
    let mut inner = sim.lock();
    match inner.contact_mut(contact_id).map(|c| c.state) {
        None => Err(ApiError::not_found("Contact not found")),
        Some(ChatState::Ended) => Err(ApiError::invalid_request("The contact has already ended")),
        Some(_) => {
            inner.end_chat(contact_id);
            Ok(Json(json!({})))
        }
    }
}

async fn create_connection(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    admit(&sim, Service::Participant, "CreateParticipantConnection").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let wants = |t: &str| {
        m.get("Type")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == t))
    };
    if !wants("WEBSOCKET") && !wants("CONNECTION_CREDENTIALS") {
        return Err(ApiError::validation("Type must not be empty"));
    }
    let mut inner = sim.lock();
    let contact_id = inner
        .participant_tokens
        .get(&token)
        .cloned()
        .ok_or_else(|| ApiError::access_denied("Invalid participant token"))?;
    let contact = inner
        .contact_mut(&contact_id)
        .filter(|c| c.state != ChatState::Ended)
        .ok_or_else(|| ApiError::access_denied("The chat has ended"))?;
    contact.ever_connected = true;
    let now = Instant::now();
    let wall = Utc::now();
    let mut response = Map::new();
    if wants("WEBSOCKET") {
        let url_token = new_id();
        inner.ws_urls.insert(
            url_token.clone(),
            WsUrl {
                contact_id: contact_id.clone(),
                expires: now + sim.options.url_ttl,
            },
        );
        response.insert(
            "Websocket".into(),
            json!({
                "Url": format!("{}/connect/ws/{url_token}", sim.ws_base()),
                "ConnectionExpiry": iso(wall + sim.options.url_ttl),
            }),
        );
    }
    if wants("CONNECTION_CREDENTIALS") {
        let connection_token = format!("ctok-{}", new_id());
        inner.connections.insert(
            connection_token.clone(),
            Connection {
                contact_id: contact_id.clone(),
                expires: now + sim.options.connection_ttl,
            },
        );
        response.insert(
            "ConnectionCredentials".into(),
            json!({
                "ConnectionToken": connection_token,
                "Expiry": iso(wall + sim.options.connection_ttl),
            }),
        );
    }
    Ok(Json(Value::Object(response)))
}

async fn send_message(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "SendMessage").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let content_type = text(&m, "ContentType").unwrap_or_default();
    let content = text(&m, "Content").unwrap_or_default();
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    if !matches!(
        content_type,
        "text/plain" | "text/markdown" | "application/json"
    ) && !content_type.starts_with("application/vnd.amazonaws.connect.message.")
    {
        return Err(ApiError::validation(format!(
            "Unsupported ContentType {content_type}"
        )));
    }
    let length = content.chars().count();
    if length == 0 || length > 1024 {
        return Err(ApiError::validation(
            "Content must be between 1 and 1024 characters",
        ));
    }
    if let Some(bad) = &inner.faults.reject_containing
        && content.contains(bad.as_str())
    {
        return Err(ApiError::validation("The message content was rejected"));
    }
    let content_type = content_type.to_owned();
    Ok(Json(post_idempotent(
        &mut inner,
        &contact_id,
        text(&m, "ClientToken"),
        |inner| {
            let mut item = customer_message(inner, &contact_id, content);
            item.content_type = content_type;
            item
        },
    )))
}

/// Appends the customer's item unless its ClientToken was seen, and answers `{Id,
/// AbsoluteTime}` either way, as SendMessage and SendEvent do.
fn post_idempotent(
    inner: &mut super::model::Inner,
    contact_id: &str,
    client_token: Option<&str>,
    build: impl FnOnce(&super::model::Inner) -> Item,
) -> Value {
    let contact = &inner.contacts[contact_id];
    if let Some((id, time)) = client_token.and_then(|t| contact.client_tokens.get(t)) {
        return json!({ "Id": id, "AbsoluteTime": time });
    }
    let item = build(inner);
    let item = inner.append(contact_id, item);
    let contact = inner.contacts.get_mut(contact_id).expect("live contact");
    if item.kind == "EVENT" {
        contact.customer_events.push(item.clone());
    }
    if let Some(t) = client_token {
        contact
            .client_tokens
            .insert(t.to_owned(), (item.id.clone(), item.absolute_time.clone()));
    }
    json!({ "Id": item.id, "AbsoluteTime": item.absolute_time })
}

async fn send_event(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "SendEvent").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let content_type = required(&m, "ContentType")
        .map_err(|_| ApiError::validation("ContentType is required"))?
        .to_owned();
    if !content_type.starts_with(super::model::EVENT_PREFIX) {
        return Err(ApiError::validation(format!(
            "Unsupported ContentType {content_type}"
        )));
    }
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    let receipt = content_type
        .strip_prefix(super::model::EVENT_PREFIX)
        .and_then(|e| match e {
            "message.delivered" => Some(false),
            "message.read" => Some(true),
            _ => None,
        });
    if let Some(read) = receipt {
        return customer_receipt(&mut inner, &contact_id, &m, read);
    }
    Ok(Json(post_idempotent(
        &mut inner,
        &contact_id,
        text(&m, "ClientToken"),
        |inner| {
            let contact = &inner.contacts[&contact_id];
            Item {
                id: new_id(),
                kind: "EVENT".into(),
                content_type,
                content: text(&m, "Content").map(str::to_owned),
                participant_id: Some(contact.customer_participant_id.clone()),
                display_name: Some(contact.display_name.clone()),
                participant_role: Some("CUSTOMER".into()),
                ..Item::default()
            }
        },
    )))
}

/// The customer's delivered / read receipt for a message: Connect answers like any
/// SendEvent, tells the sockets in a `MESSAGEMETADATA` item and keeps it on the message,
/// not as an item of its own. With a third participant (a supervisor) it refuses (409).
fn customer_receipt(
    inner: &mut super::model::Inner,
    contact_id: &str,
    m: &Map<String, Value>,
    read: bool,
) -> Answer {
    let message_id = text(m, "Content")
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|c| {
            c.get("messageId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::validation("Content must name the messageId"))?;
    if inner.contacts[contact_id].supervised {
        return Err(ApiError::new(
            409,
            "ConflictException",
            "Message receipts are not supported when there are more than two active participants in the chat.",
        ));
    }
    let token = text(m, "ClientToken");
    if let Some((id, time)) = token.and_then(|t| inner.contacts[contact_id].client_tokens.get(t)) {
        return Ok(Json(json!({ "Id": id, "AbsoluteTime": time })));
    }
    let recipient = inner.contacts[contact_id].customer_participant_id.clone();
    let item = inner.receipt(contact_id, &message_id, &recipient, read);
    if let Some(t) = token {
        inner
            .contacts
            .get_mut(contact_id)
            .expect("live contact")
            .client_tokens
            .insert(t.to_owned(), (item.id.clone(), item.absolute_time.clone()));
    }
    Ok(Json(
        json!({ "Id": item.id, "AbsoluteTime": item.absolute_time }),
    ))
}

async fn get_transcript(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "GetTranscript").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let max = m.get("MaxResults").and_then(Value::as_u64).unwrap_or(15);
    if !(1..=100).contains(&max) {
        return Err(ApiError::validation("MaxResults must be between 1 and 100"));
    }
    let forward = match text(&m, "ScanDirection").unwrap_or("BACKWARD") {
        "FORWARD" => true,
        "BACKWARD" => false,
        _ => return Err(ApiError::validation("Unknown ScanDirection")),
    };
    let ascending = match text(&m, "SortOrder").unwrap_or("ASCENDING") {
        "ASCENDING" => true,
        "DESCENDING" => false,
        _ => return Err(ApiError::validation("Unknown SortOrder")),
    };
    let mut inner = sim.lock();
    // Connect lets an ended chat's transcript be read with a still-valid token.
    let contact_id = match inner.contact_for_connection(&token) {
        Ok(id) => id,
        Err(e) => match inner.connections.get(&token) {
            Some(c) if c.expires > Instant::now() => c.contact_id.clone(),
            _ => return Err(e),
        },
    };
    let contact = &inner.contacts[&contact_id];
    let items = &contact.transcript;
    // The index the scan starts at (inclusive); None when nothing lies in that direction.
    let start: Option<usize> = if let Some(next) = text(&m, "NextToken") {
        Some(
            next.strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &usize| n < items.len())
                .ok_or_else(|| ApiError::validation("Invalid NextToken"))?,
        )
    } else {
        let position = m.get("StartPosition");
        let field = |name: &str| position.and_then(|p| p.get(name));
        if let Some(id) = field("Id").and_then(Value::as_str) {
            Some(
                items
                    .iter()
                    .position(|i| i.id == id)
                    .ok_or_else(|| ApiError::validation("StartPosition Id not found"))?,
            )
        } else if let Some(time) = field("AbsoluteTime").and_then(Value::as_str) {
            if forward {
                items.iter().position(|i| i.absolute_time.as_str() >= time)
            } else {
                items.iter().rposition(|i| i.absolute_time.as_str() <= time)
            }
        } else {
            // MostRecent counts back from the newest item; without a position the scan
            // starts at the newest (backward) or the oldest (forward) item.
            let back = field("MostRecent")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            match (forward, back) {
                (true, Some(n)) => Some(items.len().saturating_sub(n.max(1))),
                (true, None) => Some(0),
                (false, n) => items.len().checked_sub(1 + n.unwrap_or(0)),
            }
        }
    }
    .filter(|&s| s < items.len());
    let max = max as usize;
    let (mut page, next): (Vec<Item>, Option<usize>) = match start {
        None => (Vec::new(), None),
        Some(start) if forward => {
            let end = (start + max).min(items.len());
            (
                items[start..end].to_vec(),
                (end < items.len()).then_some(end),
            )
        }
        Some(start) => {
            let first = (start + 1).saturating_sub(max);
            (items[first..=start].to_vec(), first.checked_sub(1))
        }
    };
    if !ascending {
        page.reverse();
    }
    let mut response = json!({
        "InitialContactId": contact.initial_contact_id,
        "Transcript": page,
    });
    if let Some(n) = next {
        response["NextToken"] = json!(format!("page-{n}"));
    }
    Ok(Json(response))
}

async fn disconnect(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "DisconnectParticipant").await?;
    body(&bytes)?;
    let token = bearer(&headers)?;
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    inner.event(&contact_id, "participant.left", Some("CUSTOMER"));
    // The customer leaving ends a chat in Connect.
    inner.end_chat(&contact_id);
    Ok(Json(json!({})))
}

async fn start_upload(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "StartAttachmentUpload").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let content_type = required(&m, "ContentType")
        .map_err(|e| ApiError::validation(e.message))?
        .to_owned();
    let name = required(&m, "AttachmentName")
        .map_err(|e| ApiError::validation(e.message))?
        .to_owned();
    let client_token = required(&m, "ClientToken")
        .map_err(|e| ApiError::validation(e.message))?
        .to_owned();
    let size = m
        .get("AttachmentSizeInBytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if !(1..=256).contains(&name.chars().count()) {
        return Err(ApiError::validation(
            "AttachmentName must be 1 to 256 characters",
        ));
    }
    // Connect allows attachments by the name's extension, as the instance is set up.
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if !sim.options.attachment_extensions.contains(&extension) {
        return Err(ApiError::validation(format!(
            "Attachment type .{extension} is not supported"
        )));
    }
    if size == 0 || size > sim.options.attachment_max_bytes {
        return Err(ApiError::validation(format!(
            "Attachment size {size} is not within the allowed limit"
        )));
    }
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    let url_expires = Instant::now() + Duration::from_secs(300);
    // The same ClientToken is the same upload: its id again, with a fresh URL.
    let id = match inner.upload_tokens.get(&client_token).cloned() {
        Some(id) => {
            if let Some(a) = inner.attachments.get_mut(&id) {
                a.url_expires = url_expires;
            }
            id
        }
        None => {
            let chat_has = inner
                .attachments
                .values()
                .filter(|a| a.contact_id == contact_id && a.completed)
                .count();
            if chat_has >= sim.options.attachments_per_chat {
                return Err(ApiError::new(
                    402,
                    "ServiceQuotaExceededException",
                    "The number of attachments per contact exceeds the quota",
                ));
            }
            let id = new_id();
            let signed = vec![
                ("content-type".to_owned(), content_type.clone()),
                (
                    "x-amz-acl".to_owned(),
                    "bucket-owner-full-control".to_owned(),
                ),
                (
                    "content-disposition".to_owned(),
                    format!("attachment; filename=\"{}\"", name.replace('"', "")),
                ),
                ("x-amz-meta-contact-id".to_owned(), contact_id.clone()),
            ];
            inner.attachments.insert(
                id.clone(),
                Attachment {
                    contact_id,
                    name,
                    content_type,
                    size,
                    bytes: None,
                    completed: false,
                    headers: signed,
                    url_expires,
                },
            );
            inner.upload_tokens.insert(client_token, id.clone());
            id
        }
    };
    let headers: serde_json::Map<String, Value> = inner.attachments[&id]
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Ok(Json(json!({
        "AttachmentId": id,
        "UploadMetadata": {
            "Url": format!("{}/attachments/{id}?X-Amz-Signature={}", sim.http_base(), new_id()),
            "UrlExpiry": iso(Utc::now() + chrono::Duration::minutes(5)),
            "HeadersToInclude": headers,
        }
    })))
}

/// S3's refusal, as its XML says it.
fn s3_refusal(code: &str, message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [("content-type", "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"),
    )
        .into_response()
}

/// The presigned upload URL: like S3, it takes the bytes only with exactly the headers
/// it was signed with, the declared length, and before it expires.
async fn put_attachment_bytes(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let mut inner = sim.lock();
    let Some(a) = inner.attachments.get_mut(&id) else {
        return s3_refusal("AccessDenied", "Access Denied");
    };
    if a.url_expires <= Instant::now() {
        return s3_refusal("AccessDenied", "Request has expired");
    }
    for (name, value) in &a.headers {
        if headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str()) {
            return s3_refusal(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            );
        }
    }
    let unsigned = headers.keys().any(|h| {
        h.as_str().starts_with("x-amz-") && !a.headers.iter().any(|(n, _)| n == h.as_str())
    });
    if unsigned {
        return s3_refusal(
            "AccessDenied",
            "There were headers present in the request which were not signed",
        );
    }
    if bytes.len() as u64 != a.size {
        return s3_refusal(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        );
    }
    // A completed upload's object is what the chat shows; a repeated PUT changes nothing.
    if !a.completed {
        a.bytes = Some(bytes);
    }
    StatusCode::OK.into_response()
}

async fn get_attachment_bytes(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let inner = sim.lock();
    match inner.attachments.get(&id) {
        Some(Attachment {
            completed: true,
            bytes: Some(b),
            content_type,
            ..
        }) => ([("content-type", content_type.clone())], b.clone()).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn complete_upload(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "CompleteAttachmentUpload").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let ids: Vec<String> = m
        .get("AttachmentIds")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.len() != 1 {
        return Err(ApiError::validation(
            "AttachmentIds must hold exactly one id",
        ));
    }
    let client_token = required(&m, "ClientToken")
        .map_err(|e| ApiError::validation(e.message))?
        .to_owned();
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    // A repeated ClientToken is answered as before, without a second item.
    if inner.complete_tokens.contains(&client_token) {
        return Ok(Json(json!({})));
    }
    let attachment = match inner.attachments.get_mut(&ids[0]) {
        Some(a) if a.contact_id == contact_id => a,
        _ => {
            return Err(ApiError::new(
                404,
                "ResourceNotFoundException",
                "Attachment not found",
            ));
        }
    };
    match &attachment.bytes {
        Some(b) if b.len() as u64 == attachment.size => {}
        _ => {
            return Err(ApiError::new(
                409,
                "ConflictException",
                "The attachment was not uploaded in full",
            ));
        }
    }
    if attachment.completed {
        return Err(ApiError::validation("The attachment is already completed"));
    }
    attachment.completed = true;
    let (name, content_type) = (attachment.name.clone(), attachment.content_type.clone());
    inner.complete_tokens.insert(client_token);
    let contact = &inner.contacts[&contact_id];
    let item = Item {
        id: new_id(),
        kind: "ATTACHMENT".into(),
        content_type: content_type.clone(),
        participant_id: Some(contact.customer_participant_id.clone()),
        display_name: Some(contact.display_name.clone()),
        participant_role: Some("CUSTOMER".into()),
        attachments: vec![AttachmentItem {
            content_type,
            attachment_id: ids[0].clone(),
            attachment_name: name,
            status: "APPROVED".into(),
        }],
        ..Item::default()
    };
    inner.append(&contact_id, item);
    Ok(Json(json!({})))
}

async fn get_attachment(State(sim): State<Arc<Sim>>, headers: HeaderMap, bytes: Bytes) -> Answer {
    admit(&sim, Service::Participant, "GetAttachment").await?;
    let m = body(&bytes)?;
    let token = bearer(&headers)?;
    let id = required(&m, "AttachmentId").map_err(|e| ApiError::validation(e.message))?;
    let expiry = m
        .get("UrlExpiryInSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(300);
    if !(5..=300).contains(&expiry) {
        return Err(ApiError::validation(
            "UrlExpiryInSeconds must be between 5 and 300",
        ));
    }
    let mut inner = sim.lock();
    let contact_id = inner.contact_for_connection(&token)?;
    match inner.attachments.get(id) {
        Some(a) if a.contact_id == contact_id && a.completed => Ok(Json(json!({
            "Url": format!("{}/attachments/{id}", sim.http_base()),
            "UrlExpiry": iso(Utc::now() + chrono::Duration::seconds(expiry)),
            "AttachmentSizeInBytes": a.size,
        }))),
        _ => Err(ApiError::new(
            404,
            "ResourceNotFoundException",
            "Attachment not found",
        )),
    }
}
