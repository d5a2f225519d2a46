//! The two Twilio webhooks: incoming messages and status callbacks.

use crate::config::{IngressConfig, SignatureCheck};
use crate::signed_url::signed_url;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, OriginalUri, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::address::Channel;
use waconnect_shared::message::event::{EventError, EventKind, InboundEvent};
use waconnect_shared::storage::queue::{NewMessage, Queue, QueueError};
use waconnect_shared::twilio::{form, signature};

const TWIML_EMPTY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

struct Webhooks {
    queue: Arc<dyn Queue>,
    signature: SignatureCheck,
    enqueue_timeout: Duration,
    body_timeout: Duration,
    allow_non_whatsapp: bool,
    routing: waconnect_shared::service::routing::Routing,
    /// Registered once: a registry lookup per request is measurable at these rates.
    messages_taken: TakenCounters,
    statuses_taken: TakenCounters,
    enqueue_seconds: metrics::Histogram,
}

/// `waconnect_ingress_requests_total` for one route's accepted outcomes.
struct TakenCounters {
    queued: metrics::Counter,
    duplicate: metrics::Counter,
    ignored: metrics::Counter,
}

impl TakenCounters {
    fn new(route: &'static str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("waconnect_ingress_requests_total", "route" => route, "outcome" => outcome);
        Self {
            queued: counter("accepted"),
            duplicate: counter("duplicate"),
            ignored: counter("ignored"),
        }
    }

    fn get(&self, taken: &Taken) -> &metrics::Counter {
        match taken {
            Taken::Queued => &self.queued,
            Taken::Duplicate => &self.duplicate,
            Taken::Ignored => &self.ignored,
        }
    }
}

fn route_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Message => "message",
        EventKind::Status => "status",
    }
}

pub fn router(config: &IngressConfig, queue: Arc<dyn Queue>) -> Router {
    // Handles registered before the recorder exists would count into nothing.
    waconnect_shared::service::telemetry::metrics();
    let state = Arc::new(Webhooks {
        queue,
        signature: config.signature.clone(),
        enqueue_timeout: config.enqueue_timeout,
        body_timeout: config.body_timeout,
        allow_non_whatsapp: config.allow_non_whatsapp,
        routing: config.routing.clone(),
        messages_taken: TakenCounters::new(route_name(EventKind::Message)),
        statuses_taken: TakenCounters::new(route_name(EventKind::Status)),
        enqueue_seconds: metrics::histogram!("waconnect_ingress_enqueue_duration_seconds"),
    });
    Router::new()
        .route(&config.message_path, post(message))
        .route(&config.status_path, post(status))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

async fn message(State(hooks): State<Arc<Webhooks>>, request: Request) -> Response {
    hooks.handle(EventKind::Message, request).await
}

async fn status(State(hooks): State<Arc<Webhooks>>, request: Request) -> Response {
    hooks.handle(EventKind::Status, request).await
}

/// What became of an accepted webhook.
enum Taken {
    Queued,
    /// A Twilio retry of an event already on the queue.
    Duplicate,
    /// A status nothing acts on, acknowledged without queueing.
    Ignored,
}

/// Why a webhook was not accepted; each maps to a status code and a metric outcome.
#[derive(Debug)]
enum Refusal {
    TooLarge,
    UnreadableBody,
    /// The body did not arrive within the body timeout (a slow client).
    SlowBody,
    UnsupportedMediaType,
    MissingSignature,
    BadSignature,
    /// Signed with a Webhooks Rule's SharedKey, and none is configured: answered 503 so
    /// Twilio retries (where its retry settings allow) once the operator sets one.
    NoSharedKey,
    Malformed(String),
    RefusedChannel,
    /// Sent to a number no route lists.
    UnknownNumber(String),
    Unavailable(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Self::UnreadableBody | Self::Malformed(_) | Self::RefusedChannel => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // Not ours to take: Twilio shows the 404 in its debugger, and retrying would
            // not help until the routing file lists the number.
            Self::UnknownNumber(_) => StatusCode::NOT_FOUND,
            Self::MissingSignature | Self::BadSignature => StatusCode::FORBIDDEN,
            Self::Unavailable(_) | Self::NoSharedKey => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::UnreadableBody => "unreadable_body",
            Self::SlowBody => "body_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::NoSharedKey => "no_shared_key",
            Self::Malformed(_) => "malformed",
            Self::RefusedChannel => "refused_channel",
            Self::UnknownNumber(_) => "unknown_number",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::TooLarge => "request body is too large".into(),
            Self::UnreadableBody => "request body could not be read".into(),
            Self::SlowBody => "request body did not arrive in time".into(),
            Self::UnsupportedMediaType => {
                "expected Content-Type: application/x-www-form-urlencoded".into()
            }
            Self::MissingSignature => "missing X-Twilio-Signature".into(),
            Self::BadSignature => "invalid X-Twilio-Signature".into(),
            Self::NoSharedKey => "signed with a shared key this endpoint does not have".into(),
            Self::Malformed(why) => format!("malformed webhook: {why}"),
            Self::RefusedChannel => "only WhatsApp senders are accepted".into(),
            Self::UnknownNumber(number) => format!("no route serves {number}"),
            Self::Unavailable(_) => "temporarily unavailable, retry later".into(),
        }
    }
}

impl Webhooks {
    /// Takes the request whole rather than through the URI and header extractors, which
    /// would copy both for every webhook.
    async fn handle(&self, kind: EventKind, request: Request) -> Response {
        let route = route_name(kind);
        let (mut parts, body) = request.into_parts();
        let uri = parts
            .extensions
            .remove::<OriginalUri>()
            .map_or(parts.uri, |original| original.0);
        // Buffering reads the body limit that `DefaultBodyLimit` left in the extensions.
        let mut body_request = Request::new(body);
        *body_request.extensions_mut() = parts.extensions;
        let body = tokio::time::timeout(self.body_timeout, Bytes::from_request(body_request, &()))
            .await
            .map_err(|_| Refusal::SlowBody);
        match self.accept(kind, &uri, &parts.headers, body).await {
            Ok(taken) => {
                let counters = match kind {
                    EventKind::Message => &self.messages_taken,
                    EventKind::Status => &self.statuses_taken,
                };
                counters.get(&taken).increment(1);
                ([(header::CONTENT_TYPE, "text/xml")], TWIML_EMPTY).into_response()
            }
            Err(refusal) => {
                match &refusal {
                    Refusal::Unavailable(why) => {
                        tracing::error!(route, error = %why, "inbound queue unavailable; answering 503")
                    }
                    Refusal::BadSignature | Refusal::MissingSignature => {
                        tracing::warn!(route, outcome = refusal.outcome(), "webhook refused")
                    }
                    Refusal::NoSharedKey => {
                        tracing::error!(
                            route,
                            "webhook signed with a Webhooks Rule's SharedKey, but TWILIO_WEBHOOK_SHARED_KEYS is not set; answering 503"
                        )
                    }
                    Refusal::UnknownNumber(number) => tracing::warn!(
                        route,
                        number = %number,
                        "webhook for a number no route lists (WACONNECT_ROUTING_FILE); refused, nothing queued"
                    ),
                    other => tracing::info!(route, outcome = other.outcome(), "webhook refused"),
                }
                metrics::counter!("waconnect_ingress_requests_total", "route" => route, "outcome" => refusal.outcome())
                    .increment(1);
                (refusal.status(), format!("{}\n", refusal.message())).into_response()
            }
        }
    }

    async fn accept(
        &self,
        kind: EventKind,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: Result<Result<Bytes, BytesRejection>, Refusal>,
    ) -> Result<Taken, Refusal> {
        let body = body?.map_err(|r| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Refusal::TooLarge,
            _ => Refusal::UnreadableBody,
        })?;
        if !is_form(headers) {
            return Err(Refusal::UnsupportedMediaType);
        }
        let fields = form::decode(&body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        self.verify(uri, headers, &fields)?;

        let mut event = InboundEvent::new(kind, fields);
        event.idempotency_token = headers
            .get("i-twilio-idempotency-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        event.query = uri
            .query()
            .and_then(|q| form::decode(q.as_bytes()).ok())
            .unwrap_or_default();
        event
            .validate()
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        let malformed = |e: EventError| Refusal::Malformed(e.to_string());
        let customer = event.customer().map_err(malformed)?;
        if customer.channel() != Channel::WhatsApp && !self.allow_non_whatsapp {
            return Err(Refusal::RefusedChannel);
        }
        let business = event.business().map_err(malformed)?;
        if self.routing.route_for(&business).is_none() {
            return Err(Refusal::UnknownNumber(business.to_string()));
        }
        let key = ConversationKey::new(business, customer);
        if kind == EventKind::Status && !event.is_relayed_status() {
            return Ok(Taken::Ignored);
        }
        let message = NewMessage {
            group_id: kind.queue_group(&key),
            dedup_id: event
                .dedup_id()
                .map_err(|e| Refusal::Malformed(e.to_string()))?,
            body: event.to_json(),
        };

        // The message's first hop, in its trace when spans are exported.
        let trace_id = event.trace_id();
        let span = tracing::info_span!(
            "webhook",
            trace_id = %trace_id,
            message_sid = event.message_sid().unwrap_or_default(),
            route = route_name(kind),
        );
        waconnect_shared::message::trace::follow(&span, &trace_id);
        let started = Instant::now();
        let sent = tokio::time::timeout(self.enqueue_timeout, self.queue.send(message))
            .instrument(span)
            .await;
        self.enqueue_seconds.record(started.elapsed().as_secs_f64());
        let sent = match sent {
            Err(_) => {
                return Err(Refusal::Unavailable(format!(
                    "no answer within {:?}",
                    self.enqueue_timeout
                )));
            }
            Ok(Err(QueueError::InvalidArgument(why))) => return Err(Refusal::Malformed(why)),
            Ok(Err(e @ QueueError::TooLarge { .. })) => {
                tracing::warn!(error = %e, "event over the queue's size limit");
                return Err(Refusal::TooLarge);
            }
            Ok(Err(e)) => return Err(Refusal::Unavailable(e.to_string())),
            Ok(Ok(sent)) => sent,
        };
        tracing::debug!(
            route = ?kind,
            trace_id = %event.trace_id(),
            conversation = %key,
            message_sid = event.message_sid().unwrap_or_default(),
            duplicate = sent.duplicate == Some(true),
            "webhook enqueued"
        );
        Ok(if sent.duplicate == Some(true) {
            Taken::Duplicate
        } else {
            Taken::Queued
        })
    }

    fn verify(
        &self,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        fields: &[(String, String)],
    ) -> Result<(), Refusal> {
        let SignatureCheck::Verify {
            auth_tokens,
            shared_keys,
            public_base_url,
            trust_forwarded_headers,
        } = &self.signature
        else {
            return Ok(());
        };
        let provided = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or(Refusal::MissingSignature)?;
        // A Webhooks Rule's SharedKey signed it, with the algorithm the header names.
        let (algorithm, keys) = match headers.get(signature::SETTINGS_HEADER) {
            None => (signature::Algorithm::HmacSha1, auth_tokens),
            Some(settings) => {
                let algorithm = settings
                    .to_str()
                    .ok()
                    .and_then(signature::Algorithm::from_settings)
                    .ok_or(Refusal::BadSignature)?;
                if shared_keys.is_empty() {
                    return Err(Refusal::NoSharedKey);
                }
                (algorithm, shared_keys)
            }
        };
        let keys: Vec<&str> = keys.iter().map(|k| k.expose()).collect();
        let url = signed_url(public_base_url, *trust_forwarded_headers, headers, uri);
        if signature::validate_with(algorithm, &keys, &url, fields, provided) {
            Ok(())
        } else {
            Err(Refusal::BadSignature)
        }
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}
