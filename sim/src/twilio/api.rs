//! The Messages API and the status callbacks that follow a send.

use super::{Sent, Twilio, sid};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_shared::twilio::form;

pub fn routes() -> Router<Arc<Twilio>> {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            post(create_message).get(list_messages),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{file}",
            axum::routing::get(fetch_message),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{message}/Media.json",
            axum::routing::get(list_media),
        )
        .route(
            "/2010-04-01/Accounts/{file}",
            axum::routing::get(fetch_account),
        )
}

/// The account resource: what a credentials check reads.
async fn fetch_account(
    State(twilio): State<Arc<Twilio>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(account) = file.strip_suffix(".json") else {
        return error(404, 20404, "The requested resource was not found");
    };
    if !authorised(&twilio, account, &headers) {
        return error(401, 20003, "Authenticate");
    }
    Json(json!({
        "sid": account,
        "friendly_name": "Simulated account",
        "status": "active",
        "type": "Full",
    }))
    .into_response()
}

/// One message's resource, as Twilio's API shows it.
fn resource(twilio: &Twilio, s: &Sent) -> serde_json::Value {
    json!({
        "sid": s.sid,
        "account_sid": twilio.options.account_sid,
        "status": s.status,
        "direction": "outbound-api",
        "to": s.to,
        "from": s.from,
        "body": s.body,
        "num_media": s.media_urls.len().to_string(),
        "error_code": s.error_code,
        "error_message": s.error_message,
        "date_created": s.created_at.to_rfc2822(),
        "uri": format!("/2010-04-01/Accounts/{}/Messages/{}.json", twilio.options.account_sid, s.sid),
    })
}

/// `GET …/Messages/{Sid}.json`.
async fn fetch_message(
    State(twilio): State<Arc<Twilio>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&twilio, &account, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let inner = twilio.lock();
    match file
        .strip_suffix(".json")
        .and_then(|sid| inner.by_sid.get(sid))
    {
        Some(&i) => Json(resource(&twilio, &inner.sent[i])).into_response(),
        None => match file
            .strip_suffix(".json")
            .and_then(|sid| inner.inbound.iter().find(|m| m.sid == sid))
        {
            Some(m) => Json(inbound_resource(&twilio, m)).into_response(),
            None => error(404, 20404, "The requested resource was not found"),
        },
    }
}

/// Twilio's error body.
pub(super) fn error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

pub(super) fn authorised(twilio: &Twilio, account: &str, headers: &HeaderMap) -> bool {
    account == twilio.options.account_sid && authorised_user(twilio, headers)
}

/// Basic auth as the account (APIs whose path names no account).
pub(super) fn authorised_user(twilio: &Twilio, headers: &HeaderMap) -> bool {
    let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let expected = format!(
        "{}:{}",
        twilio.options.account_sid, twilio.options.auth_token
    );
    basic == expected
}

async fn create_message(
    State(twilio): State<Arc<Twilio>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (delay, lag) = {
        let mut inner = twilio.lock();
        inner.api_calls += 1;
        (inner.faults.delay, inner.faults.lag)
    };
    if !lag.is_zero() {
        tokio::time::sleep(lag).await;
    }
    if !authorised(&twilio, &account, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let Ok(fields) = form::decode(&body) else {
        return error(400, 21602, "Message body is invalid");
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let media_urls: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "MediaUrl")
        .map(|(_, v)| v.clone())
        .collect();
    let (to, from) = (field("To").unwrap_or_default(), field("From"));
    let text = field("Body").unwrap_or_default();
    let content_sid = field("ContentSid");
    let now = Instant::now();
    let hang = {
        let mut inner = twilio.lock();
        if inner.faults.storm_until.is_some_and(|u| u > now) {
            return error(429, 20429, "Too Many Requests");
        }
        if inner.faults.errors > 0 {
            inner.faults.errors -= 1;
            return error(500, 20500, "Internal Server Error");
        }
        let hang = inner.faults.hangs > 0;
        inner.faults.hangs = inner.faults.hangs.saturating_sub(1);
        hang
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return error(503, 20503, "Service Unavailable");
    }
    if from.is_none() && field("MessagingServiceSid").is_none() {
        return error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required",
        );
    }
    // A From that is not one of the account's WhatsApp senders has no channel.
    if from.as_ref().is_some_and(|f| !twilio.is_sender(f)) {
        return error(
            400,
            63007,
            "Twilio could not find a Channel with the specified From address",
        );
    }
    if waconnect_shared::CustomerAddress::parse(&to).is_err() {
        return error(400, 21211, "Invalid 'To' Phone Number");
    }
    if text.chars().count() > 1600 {
        return error(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit",
        );
    }
    if text.is_empty() && media_urls.is_empty() && content_sid.is_none() {
        return error(400, 21602, "Message body is required");
    }
    if media_urls.len() > 10 {
        return error(400, 21623, "Too many media URLs");
    }
    let sent = {
        let mut inner = twilio.lock();
        if inner.customers.get(&to).is_some_and(|c| c.opted_out) {
            return error(400, 21610, "Attempt to send to unsubscribed recipient");
        }
        // The sender's throughput counts the messages that go out. Over it, Twilio still
        // takes the message (201) and reports 63018 later, by status callback.
        let from = from.unwrap_or_else(|| twilio.options.sender.clone());
        let window = match inner.window.get(&from) {
            Some(&(start, n)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, n + 1)
            }
            _ => (now, 1),
        };
        let over_rate = window.1 > inner.faults.rate.unwrap_or(twilio.options.sender_rate);
        inner.window.insert(
            from.clone(),
            if over_rate {
                (window.0, window.1 - 1)
            } else {
                window
            },
        );
        let made = content_sid
            .as_ref()
            .and_then(|c| inner.contents.get(c))
            .cloned();
        let sent = Sent {
            sid: sid(if media_urls.is_empty() { "SM" } else { "MM" }),
            to: to.clone(),
            from,
            // Twilio shows a template's rendered text as the message's body.
            body: match (&content_sid, &made, text.is_empty()) {
                (_, Some(made), true) => made.body.clone(),
                (Some(content), None, true) => {
                    match twilio.options.templates.iter().find(|(s, _)| s == content) {
                        Some((_, body)) => {
                            super::content::render(body, field("ContentVariables").as_deref())
                        }
                        None => format!("Template {content}: please write back."),
                    }
                }
                _ => text,
            },
            choices: made.map(|m| m.choices).unwrap_or_default(),
            media_urls,
            content_sid,
            status: "queued".into(),
            error_code: None,
            error_message: None,
            status_callback: field("StatusCallback"),
            callbacks: Vec::new(),
            created_at: Utc::now(),
        };
        let index = inner.sent.len();
        // The reply ends the business's typing indicator.
        if let Some(c) = inner.customers.get_mut(&to) {
            c.typing_until = None;
        }
        inner.by_sid.insert(sent.sid.clone(), index);
        inner.sent.push(sent.clone());
        (sent, over_rate)
    };
    let (sent, over_rate) = sent;
    tokio::spawn(deliver(twilio.clone(), sent.sid.clone(), over_rate));
    // A slow answer comes after Twilio has the message: a client that gives up (or dies)
    // meanwhile does not know it was sent.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    (StatusCode::CREATED, Json(resource(&twilio, &sent))).into_response()
}

#[derive(serde::Deserialize)]
struct ListQuery {
    #[serde(rename = "To")]
    to: Option<String>,
    #[serde(rename = "From")]
    from: Option<String>,
    /// Sent on this day (`YYYY-MM-DD`, UTC).
    #[serde(rename = "DateSent")]
    date_sent: Option<String>,
    /// Sent on or after midnight on this day.
    #[serde(rename = "DateSent>")]
    sent_after: Option<String>,
    /// Sent on or before midnight on this day: before the day.
    #[serde(rename = "DateSent<")]
    sent_before: Option<String>,
    #[serde(rename = "PageSize")]
    page_size: Option<usize>,
    #[serde(rename = "Page")]
    page: Option<usize>,
    /// Where the page starts: after the message `PA<sid>` names, as Twilio's tokens do,
    /// so messages that arrive meanwhile do not shift the pages.
    #[serde(rename = "PageToken")]
    page_token: Option<String>,
}

/// The list's default page size and Twilio's largest.
const PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// A `DateSent` filter's day. Twilio documents these filters to the day (`YYYY-MM-DD`,
/// GMT: "on or after midnight", "on or before midnight on a date") and takes a date-time
/// too; only its day counts here, the strictest reading, so a caller that counts on the
/// time of day, or on "before" taking in the day it names, finds out.
fn sent_day(value: &str) -> Option<chrono::NaiveDate> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Some(day);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc).date_naive())
}

/// Messages, newest first — those sent through the API and those customers sent in — as
/// Twilio pages them, filtered by `To`, `From` and `DateSent`.
async fn list_messages(
    State(twilio): State<Arc<Twilio>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Response {
    if !authorised(&twilio, &account, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let bound = |v: &Option<String>| match v {
        None => Ok(None),
        Some(v) => sent_day(v).map(Some).ok_or(()),
    };
    let (Ok(after), Ok(before), Ok(day)) = (
        bound(&q.sent_after),
        bound(&q.sent_before),
        bound(&q.date_sent),
    ) else {
        return error(400, 20001, "Invalid DateSent");
    };
    let page_size = q.page_size.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    let inner = twilio.lock();
    let mut all: Vec<(chrono::DateTime<Utc>, serde_json::Value)> = inner
        .sent
        .iter()
        .map(|s| (s.created_at, resource(&twilio, s)))
        .chain(
            inner
                .inbound
                .iter()
                .map(|m| (m.created_at, inbound_resource(&twilio, m))),
        )
        .filter(|(at, r)| {
            let sent = at.date_naive();
            q.to.as_ref().is_none_or(|t| r["to"] == *t)
                && q.from.as_ref().is_none_or(|f| r["from"] == *f)
                && after.is_none_or(|a| sent >= a)
                && before.is_none_or(|b| sent < b)
                && day.is_none_or(|d| sent == d)
        })
        .collect();
    // Newest first; among equals, the one taken last first.
    all.reverse();
    all.sort_by_key(|a| std::cmp::Reverse(a.0));
    let start = match q.page_token.as_deref().and_then(|t| t.strip_prefix("PA")) {
        Some(after_sid) => match all.iter().position(|(_, r)| r["sid"] == after_sid) {
            Some(i) => i + 1,
            None => return error(400, 20001, "Invalid PageToken"),
        },
        None => 0,
    };
    let page: Vec<serde_json::Value> = all
        .iter()
        .skip(start)
        .take(page_size)
        .map(|(_, r)| r.clone())
        .collect();
    let path = format!("/2010-04-01/Accounts/{account}/Messages.json");
    let mut filters: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("To", &q.to),
        ("From", &q.from),
        ("DateSent", &q.date_sent),
        ("DateSent>", &q.sent_after),
        ("DateSent<", &q.sent_before),
    ] {
        if let Some(v) = value {
            filters.push((name, v.clone()));
        }
    }
    filters.push(("PageSize", page_size.to_string()));
    let uri = |extra: &[(&str, String)]| {
        let query = form::encode(filters.iter().chain(extra).map(|(k, v)| (*k, v.as_str())));
        format!("{path}?{query}")
    };
    let number = q.page.unwrap_or(0);
    let next = (start + page.len() < all.len()).then(|| {
        let last = page
            .last()
            .and_then(|r| r["sid"].as_str())
            .unwrap_or_default();
        uri(&[
            ("Page", (number + 1).to_string()),
            ("PageToken", format!("PA{last}")),
        ])
    });
    Json(json!({
        "messages": page,
        "page": number,
        "page_size": page_size,
        "first_page_uri": uri(&[("Page", "0".into())]),
        "next_page_uri": next,
        "uri": uri(&[("Page", number.to_string())]),
    }))
    .into_response()
}

/// A customer's message as the API shows it.
fn inbound_resource(twilio: &Twilio, m: &super::Received) -> serde_json::Value {
    let account = &twilio.options.account_sid;
    let uri = format!("/2010-04-01/Accounts/{account}/Messages/{}", m.sid);
    json!({
        "sid": m.sid,
        "account_sid": account,
        "status": "received",
        "direction": "inbound",
        "to": m.to,
        "from": m.from,
        "body": m.body,
        "num_media": m.media.len().to_string(),
        "num_segments": "1",
        "error_code": null,
        "error_message": null,
        "date_created": m.created_at.to_rfc2822(),
        "date_sent": m.created_at.to_rfc2822(),
        "date_updated": m.created_at.to_rfc2822(),
        "uri": format!("{uri}.json"),
        "subresource_uris": { "media": format!("{uri}/Media.json") },
    })
}

/// `GET …/Messages/{Sid}/Media.json`: the files Twilio keeps for a customer's message.
pub(super) async fn list_media(
    State(twilio): State<Arc<Twilio>>,
    Path((account, message)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&twilio, &account, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let inner = twilio.lock();
    let Some(received) = inner.inbound.iter().find(|m| m.sid == message) else {
        return error(404, 20404, "The requested resource was not found");
    };
    let list: Vec<serde_json::Value> = received
        .media
        .iter()
        .filter_map(|sid| inner.media.get(sid).map(|m| (sid, m)))
        .map(|(sid, m)| {
            json!({
                "sid": sid,
                "account_sid": account,
                "parent_sid": message,
                "content_type": m.content_type,
                "date_created": received.created_at.to_rfc2822(),
                "uri": format!("/2010-04-01/Accounts/{account}/Messages/{message}/Media/{sid}.json"),
            })
        })
        .collect();
    Json(json!({
        "media_list": list,
        "page": 0,
        "page_size": PAGE_SIZE,
        "next_page_uri": null,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{message}/Media.json"),
    }))
    .into_response()
}

/// `sent`, then `delivered` (or `failed` 63016 outside the 24 h window), then `read` if
/// the customer reads at once; `failed` 63018 when it came over the sender's rate.
async fn deliver(twilio: Arc<Twilio>, sid: String, over_rate: bool) {
    let (to, from, template) = {
        let inner = twilio.lock();
        let s = &inner.sent[inner.by_sid[&sid]];
        // An approved template goes outside the window; a list or buttons do not.
        let session_only = s
            .content_sid
            .as_ref()
            .and_then(|c| inner.contents.get(c))
            .is_some_and(|c| c.session_only);
        (
            s.to.clone(),
            s.from.clone(),
            s.content_sid.is_some() && !session_only,
        )
    };
    let now = twilio.now();
    let in_window = twilio.options.window_always_open
        || twilio
            .lock()
            .customers
            .get(&to)
            .and_then(|c| c.last_inbound.get(&from).copied())
            .is_some_and(|at| now - at < chrono::Duration::hours(24));
    let mut steps: Vec<(&str, Option<(u32, &str)>)> = vec![("sent", None)];
    // Twilio fetches the message's file before WhatsApp sees it; what it cannot fetch, or
    // WhatsApp would not take, fails the message.
    let media_failure = super::media::fetch_outbound(&twilio, &sid).await;
    if let Some(failure) = media_failure {
        steps = vec![("failed", Some(failure))];
    } else if over_rate {
        steps = vec![(
            "failed",
            Some((63018, "Rate limit exceeded for the WhatsApp sender")),
        )];
    } else if in_window || template {
        steps.push(("delivered", None));
        if twilio.options.auto_read {
            steps.push(("read", None));
        }
    } else {
        steps.push((
            "failed",
            Some((
                63016,
                "Failed to send freeform message because you are outside the allowed window.",
            )),
        ));
    }
    if twilio.lock().faults.shuffle_statuses {
        steps.reverse();
    }
    for (status, error) in steps {
        tokio::time::sleep(twilio.options.status_delay).await;
        set_status(&twilio, &sid, status, error).await;
    }
}

/// Records a status and posts its callback as Twilio does: tried again only as the
/// callback URL's fragment asks (while the message moves on), and otherwise best effort.
pub(super) async fn set_status(
    twilio: &Arc<Twilio>,
    sid: &str,
    status: &str,
    error: Option<(u32, &str)>,
) {
    let (callback, fields) = {
        let mut inner = twilio.lock();
        let Some(&i) = inner.by_sid.get(sid) else {
            return;
        };
        let s = &mut inner.sent[i];
        s.status = status.to_owned();
        s.error_code = error.map(|(c, _)| c);
        s.error_message = error.map(|(_, m)| m.to_owned());
        let mut fields = vec![
            (
                "ChannelToAddress",
                s.to.trim_start_matches("whatsapp:").to_owned(),
            ),
            ("ApiVersion", "2010-04-01".to_owned()),
            ("MessageStatus", status.to_owned()),
            ("SmsSid", sid.to_owned()),
            ("SmsStatus", status.to_owned()),
            ("To", s.to.clone()),
            ("From", s.from.clone()),
            ("MessageSid", sid.to_owned()),
            ("AccountSid", twilio.options.account_sid.clone()),
            ("ChannelPrefix", "whatsapp".to_owned()),
            ("EventType", status.to_ascii_uppercase()),
        ];
        if let Some((code, message)) = error {
            fields.push(("ErrorCode", code.to_string()));
            fields.push(("ErrorMessage", message.to_owned()));
        }
        let fields: Vec<(String, String)> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let callback = s.status_callback.clone();
        if callback.is_some() {
            inner.status_callbacks += 1;
        }
        let lose = inner.faults.lose_statuses;
        let lost = lose > 0 && inner.status_callbacks.is_multiple_of(u64::from(lose));
        (callback.filter(|_| !lost), fields)
    };
    if let Some(url) = callback {
        super::webhook::post_status(twilio, sid, status, &url, &fields).await;
    }
}
