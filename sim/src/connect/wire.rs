//! Connect's wire shapes (docs/architecture.md §6): transcript items and restJson1 errors.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// A transcript / websocket item, with Connect's field names. Absent fields are omitted,
/// as Connect does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Item {
    pub absolute_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    pub content_type: String,
    pub id: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_role: Option<String>,
    pub initial_contact_id: String,
    pub contact_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attachments: Vec<AttachmentItem>,
    /// A `MESSAGEMETADATA` item's receipts, or (in the transcript) a message's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message_metadata: Option<MessageMetadata>,
}

/// Who has a message and since when: Connect's read receipts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageMetadata {
    pub message_id: String,
    #[serde(default)]
    pub receipts: Vec<Receipt>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Receipt {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivered_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub read_timestamp: Option<String>,
    /// The participant who has (or read) the message.
    pub recipient_participant_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachmentItem {
    pub content_type: String,
    pub attachment_id: String,
    pub attachment_name: String,
    pub status: String,
}

/// A modelled error: status, `x-amzn-ErrorType` and `{"message": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("valid status"),
            kind,
            message: message.into(),
        }
    }
    pub fn access_denied(message: &str) -> Self {
        Self::new(403, "AccessDeniedException", message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidParameterException", message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestException", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }
    /// Throttling: the Participant API calls it ThrottlingException, the Connect API
    /// LimitExceededException (docs/architecture.md §6).
    pub fn throttled(service: Service) -> Self {
        match service {
            Service::Connect => Self::new(429, "LimitExceededException", "Rate exceeded"),
            Service::Participant => Self::new(429, "ThrottlingException", "Rate exceeded"),
        }
    }
    /// The server-error name differs between the two services.
    pub fn internal(service: Service) -> Self {
        match service {
            Service::Connect => {
                Self::new(500, "InternalServiceException", "Internal service error")
            }
            Service::Participant => {
                Self::new(500, "InternalServerException", "Internal server error")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Connect,
    Participant,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        response.headers_mut().insert(
            "x-amzn-RequestId",
            HeaderValue::from_str(&super::model::new_id()).expect("uuid is a header value"),
        );
        response
    }
}
