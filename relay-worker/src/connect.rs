//! The Connect and Participant API calls the relay makes, with errors classified, retried
//! with backoff and jitter on throttling and server errors, and measured per operation.

use crate::config::ConnectSettings;
use crate::item::ChatItem;
use aws_sdk_connect::types::{ParticipantDetails, PersistentChat, RehydrationType};
use aws_sdk_connectparticipant::types::{ConnectionType, ScanDirection, SortKey, StartPosition};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use waconnect_shared::service::backoff::Backoff;

/// The one classification of AWS errors (`waconnect_shared::service::aws`).
pub use waconnect_shared::service::aws::ErrorKind;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({code}): {message}")]
pub struct ConnectError {
    pub operation: &'static str,
    pub kind: ErrorKind,
    /// Connect's error type, e.g. `ValidationException`.
    pub code: String,
    pub message: String,
}

fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> ConnectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, code) = waconnect_shared::service::aws::classify(&err);
    let message = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| aws_smithy_types::error::display::DisplayErrorContext(&err).to_string());
    ConnectError {
        operation,
        kind,
        code: code.unwrap_or_else(|| kind.label().to_owned()),
        message,
    }
}

#[derive(Debug, Clone)]
pub struct StartedChat {
    pub contact_id: String,
    pub participant_id: String,
    pub participant_token: String,
}

impl StartedChat {
    /// Records this chat as the conversation's current one (its first contact too).
    pub fn record_on(&self, c: &mut waconnect_shared::message::conversation::Conversation) {
        c.contact_id = Some(self.contact_id.clone());
        c.initial_contact_id = Some(self.contact_id.clone());
        c.participant_id = Some(self.participant_id.clone());
        c.participant_token = Some(self.participant_token.clone().into());
    }
}

#[derive(Debug, Clone)]
pub struct ParticipantConnection {
    pub connection_token: String,
    pub connection_expires_at: DateTime<Utc>,
    pub websocket_url: String,
}

/// A file to attach to the chat.
pub struct AttachmentFile<'a> {
    pub content_type: &'a str,
    pub name: &'a str,
    pub size: u64,
}

/// Where to GET an attachment's bytes.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    pub size: u64,
}

/// Where and how to PUT an attachment's bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    pub attachment_id: String,
    pub url: String,
    pub headers: HashMap<String, String>,
}

pub struct NewChat<'a> {
    /// The route's Connect instance and inbound flow.
    pub instance_id: &'a str,
    pub contact_flow_id: &'a str,
    pub display_name: &'a str,
    pub attributes: HashMap<String, String>,
    pub client_token: String,
    /// Rehydrate the whole past session of this (ended) contact.
    pub continue_from: Option<&'a str>,
}

pub struct OutboundCall<'a> {
    pub instance_id: &'a str,
    pub destination: &'a str,
    pub contact_flow_id: &'a str,
    pub source: Option<&'a str>,
    pub client_token: String,
    pub attributes: HashMap<String, String>,
}

#[derive(Clone)]
pub struct ConnectApi {
    connect: aws_sdk_connect::Client,
    participant: aws_sdk_connectparticipant::Client,
    settings: ConnectSettings,
    retry_base: Duration,
    retry_cap: Duration,
    attempts: u32,
}

impl ConnectApi {
    pub fn new(sdk: &aws_config::SdkConfig, settings: ConnectSettings) -> Self {
        // Retries are ours (classified, jittered, measured), so the SDK's are off.
        let timeouts = waconnect_shared::service::aws::timeouts(Duration::from_secs(10));
        let mut connect = aws_sdk_connect::config::Builder::from(sdk)
            .interceptor(waconnect_shared::service::aws::CallCounter)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts.clone());
        if let Some(e) = &settings.endpoint {
            connect = connect.endpoint_url(e);
        }
        let mut participant = aws_sdk_connectparticipant::config::Builder::from(sdk)
            .interceptor(waconnect_shared::service::aws::CallCounter)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(e) = &settings.participant_endpoint {
            participant = participant.endpoint_url(e);
        }
        Self {
            connect: aws_sdk_connect::Client::from_conf(connect.build()),
            participant: aws_sdk_connectparticipant::Client::from_conf(participant.build()),
            settings,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            attempts: 6,
        }
    }

    /// At most `attempts` tries per call (a check wants an answer now, not a retry storm).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    async fn call<T, E, F, Fut>(&self, operation: &'static str, mut f: F) -> Result<T, ConnectError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut backoff = Backoff::new(self.retry_base, self.retry_cap);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            // Boxed: SDK futures are large, and a session's state machine would otherwise
            // reserve room for them in every one of thousands of idle sessions.
            let result = Box::pin(f()).await;
            metrics::histogram!("waconnect_connect_call_duration_seconds", "operation" => operation)
                .record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => classify(operation, e),
            };
            metrics::counter!(
                "waconnect_connect_errors_total",
                "operation" => operation,
                "kind" => err.kind.label()
            )
            .increment(1);
            if !err.kind.retryable() || attempt >= self.attempts {
                return Err(err);
            }
            tracing::debug!(operation, code = %err.code, attempt, "retrying Connect call");
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    pub async fn start_chat(&self, chat: NewChat<'_>) -> Result<StartedChat, ConnectError> {
        let details = ParticipantDetails::builder()
            .display_name(chat.display_name)
            .build()
            .map_err(|e| ConnectError {
                operation: "StartChatContact",
                kind: ErrorKind::Invalid,
                code: "build".into(),
                message: e.to_string(),
            })?;
        let persistent = chat.continue_from.map(|source| {
            PersistentChat::builder()
                .rehydration_type(RehydrationType::EntirePastSession)
                .source_contact_id(source)
                .build()
        });
        let out = self
            .call("StartChatContact", || {
                self.connect
                    .start_chat_contact()
                    .instance_id(chat.instance_id)
                    .contact_flow_id(chat.contact_flow_id)
                    .participant_details(details.clone())
                    .set_attributes(Some(chat.attributes.clone()))
                    .client_token(&chat.client_token)
                    .chat_duration_in_minutes(self.settings.chat_duration_minutes)
                    // Agents may write Markdown, and flows and bots send interactive
                    // messages, which the relay shows as WhatsApp can.
                    .supported_messaging_content_types("text/plain")
                    .supported_messaging_content_types(crate::interactive::MARKDOWN)
                    .supported_messaging_content_types(crate::interactive::INTERACTIVE)
                    .set_persistent_chat(persistent.clone())
                    .send()
            })
            .await?;
        Ok(StartedChat {
            contact_id: out.contact_id().unwrap_or_default().to_owned(),
            participant_id: out.participant_id().unwrap_or_default().to_owned(),
            participant_token: out.participant_token().unwrap_or_default().to_owned(),
        })
    }

    pub async fn create_connection(
        &self,
        participant_token: &str,
    ) -> Result<ParticipantConnection, ConnectError> {
        let out = self
            .call("CreateParticipantConnection", || {
                self.participant
                    .create_participant_connection()
                    .participant_token(participant_token)
                    .r#type(ConnectionType::Websocket)
                    .r#type(ConnectionType::ConnectionCredentials)
                    .connect_participant(true)
                    .send()
            })
            .await?;
        let credentials = out.connection_credentials();
        let expiry = credentials
            .and_then(|c| c.expiry())
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
            .map(|e| e.with_timezone(&Utc))
            // Connect documents a day; assume less if it did not say.
            .unwrap_or_else(|| Utc::now() + chrono::Duration::hours(12));
        Ok(ParticipantConnection {
            connection_token: credentials
                .and_then(|c| c.connection_token())
                .unwrap_or_default()
                .to_owned(),
            connection_expires_at: expiry,
            websocket_url: out
                .websocket()
                .and_then(|w| w.url())
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// Returns the new item's Id.
    pub async fn send_message(
        &self,
        connection_token: &str,
        text: &str,
        client_token: &str,
    ) -> Result<String, ConnectError> {
        let out = self
            .call("SendMessage", || {
                self.participant
                    .send_message()
                    .connection_token(connection_token)
                    .content_type("text/plain")
                    .content(text)
                    .client_token(client_token)
                    .send()
            })
            .await?;
        Ok(out.id().unwrap_or_default().to_owned())
    }

    /// The customer leaves the chat (an operator ending it): Connect ends the chat, and the
    /// agent and the relay holding its socket see the customer go.
    pub async fn disconnect(
        &self,
        connection_token: &str,
        client_token: &str,
    ) -> Result<(), ConnectError> {
        self.call("DisconnectParticipant", || {
            self.participant
                .disconnect_participant()
                .connection_token(connection_token)
                .client_token(client_token)
                .send()
        })
        .await
        .map(drop)
    }

    /// Opens an attachment upload of `size` bytes: where to PUT the file, and the headers
    /// the PUT must carry, exactly.
    pub async fn start_attachment_upload(
        &self,
        connection_token: &str,
        file: &AttachmentFile<'_>,
        client_token: &str,
    ) -> Result<Upload, ConnectError> {
        let size = i64::try_from(file.size).unwrap_or(i64::MAX);
        let out = self
            .call("StartAttachmentUpload", || {
                self.participant
                    .start_attachment_upload()
                    .connection_token(connection_token)
                    .content_type(file.content_type)
                    .attachment_size_in_bytes(size)
                    .attachment_name(file.name)
                    .client_token(client_token)
                    .send()
            })
            .await?;
        let metadata = out.upload_metadata();
        Ok(Upload {
            attachment_id: out.attachment_id().unwrap_or_default().to_owned(),
            url: metadata
                .and_then(|m| m.url())
                .unwrap_or_default()
                .to_owned(),
            headers: metadata
                .and_then(|m| m.headers_to_include())
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Where to download an attachment of the chat (a URL that lives at most 5 minutes),
    /// and its size.
    pub async fn get_attachment(
        &self,
        connection_token: &str,
        attachment_id: &str,
    ) -> Result<Download, ConnectError> {
        let out = self
            .call("GetAttachment", || {
                self.participant
                    .get_attachment()
                    .connection_token(connection_token)
                    .attachment_id(attachment_id)
                    .url_expiry_in_seconds(300)
                    .send()
            })
            .await?;
        Ok(Download {
            url: out.url().unwrap_or_default().to_owned(),
            size: u64::try_from(out.attachment_size_in_bytes()).unwrap_or(0),
        })
    }

    /// Puts the uploaded attachment in the chat.
    pub async fn complete_attachment_upload(
        &self,
        connection_token: &str,
        attachment_id: &str,
        client_token: &str,
    ) -> Result<(), ConnectError> {
        self.call("CompleteAttachmentUpload", || {
            self.participant
                .complete_attachment_upload()
                .connection_token(connection_token)
                .attachment_ids(attachment_id)
                .client_token(client_token)
                .send()
        })
        .await
        .map(drop)
    }

    /// Sends an event (e.g. `message.delivered`) on the customer's side of the chat.
    pub async fn send_event(
        &self,
        connection_token: &str,
        content_type: &str,
        content: &str,
        client_token: &str,
    ) -> Result<(), ConnectError> {
        self.call("SendEvent", || {
            self.participant
                .send_event()
                .connection_token(connection_token)
                .content_type(content_type)
                .content(content)
                .client_token(client_token)
                .send()
        })
        .await
        .map(drop)
    }

    /// One page of the transcript, oldest first, from `start_id` (inclusive) or the start.
    pub async fn transcript_page(
        &self,
        connection_token: &str,
        start_id: Option<&str>,
        next_token: Option<String>,
    ) -> Result<(Vec<ChatItem>, Option<String>), ConnectError> {
        let position = start_id.map(|id| StartPosition::builder().id(id).build());
        let out = self
            .call("GetTranscript", || {
                self.participant
                    .get_transcript()
                    .connection_token(connection_token)
                    .max_results(100)
                    .scan_direction(ScanDirection::Forward)
                    .sort_order(SortKey::Ascending)
                    .set_start_position(if next_token.is_some() {
                        None
                    } else {
                        position.clone()
                    })
                    .set_next_token(next_token.clone())
                    .send()
            })
            .await?;
        let items = out.transcript().iter().map(ChatItem::from_sdk).collect();
        Ok((items, out.next_token().map(str::to_owned)))
    }

    /// The contact flow's name, if the instance has it (`waconnect check`).
    pub async fn describe_flow(
        &self,
        instance_id: &str,
        contact_flow_id: &str,
    ) -> Result<String, ConnectError> {
        let out = self
            .call("DescribeContactFlow", || {
                self.connect
                    .describe_contact_flow()
                    .instance_id(instance_id)
                    .contact_flow_id(contact_flow_id)
                    .send()
            })
            .await?;
        Ok(out
            .contact_flow()
            .and_then(|f| f.name())
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn start_outbound_voice(
        &self,
        call: OutboundCall<'_>,
    ) -> Result<String, ConnectError> {
        let out = self
            .call("StartOutboundVoiceContact", || {
                self.connect
                    .start_outbound_voice_contact()
                    .instance_id(call.instance_id)
                    .contact_flow_id(call.contact_flow_id)
                    .destination_phone_number(call.destination)
                    .set_source_phone_number(call.source.map(str::to_owned))
                    .client_token(&call.client_token)
                    .set_attributes(Some(call.attributes.clone()))
                    .send()
            })
            .await?;
        Ok(out.contact_id().unwrap_or_default().to_owned())
    }
}
