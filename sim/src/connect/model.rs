//! The simulator's state: contacts with their transcripts, tokens, sockets and calls. All
//! of it sits behind one mutex that is never held across an await.

use super::faults::Faults;
use super::wire::{ApiError, Item, MessageMetadata, Receipt};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const EVENT_PREFIX: &str = "application/vnd.amazonaws.connect.event.";

/// How long things live in the simulated Connect. Tests shorten them to exercise expiry.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// HTTPS and WSS with the process's test CA ([`crate::tls::TestCa`]), as Connect
    /// speaks; plain HTTP and WS otherwise.
    pub tls: bool,
    /// The only instance id the simulator knows; others are ResourceNotFound.
    pub instance_id: String,
    /// A websocket URL not used within this long is refused (Connect: about 100 s).
    pub url_ttl: Duration,
    /// Connection tokens expire after this (Connect: 1 day).
    pub connection_ttl: Duration,
    /// A new chat whose customer never connects ends after this (Connect: 5 minutes).
    pub connect_window: Duration,
    /// A persistent chat's copied past items get new Ids (their times stay), as Connect
    /// does not promise to keep them: the relay must not re-forward them.
    pub renumber_rehydrated: bool,
    /// Attachment extensions the instance allows (Connect's defaults unless changed).
    pub attachment_extensions: Vec<String>,
    /// The instance's attachment size limit (Connect: 20 MB by default, 1–100 MB).
    pub attachment_max_bytes: u64,
    /// Attachments one chat takes (Connect: 35); tests lower it to reach it quickly.
    pub attachments_per_chat: usize,
    /// The instance's contact flows by id; empty: any id names a flow.
    pub contact_flows: Vec<String>,
}

/// Connect chat's default attachment extensions (docs/architecture.md §9).
pub const DEFAULT_ATTACHMENT_EXTENSIONS: [&str; 18] = [
    "csv", "doc", "docx", "heic", "jfif", "jpeg", "jpg", "mov", "mp4", "pdf", "png", "ppt", "pptx",
    "rtf", "txt", "wav", "xls", "xlsx",
];
/// Attachments Connect allows in one chat.
pub const MAX_ATTACHMENTS_PER_CHAT: usize = 35;

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            instance_id: "11111111-2222-3333-4444-555555555555".into(),
            url_ttl: Duration::from_secs(100),
            connection_ttl: Duration::from_secs(24 * 3600),
            connect_window: Duration::from_secs(300),
            renumber_rehydrated: false,
            attachment_extensions: DEFAULT_ATTACHMENT_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
            attachment_max_bytes: 20 * 1024 * 1024,
            attachments_per_chat: MAX_ATTACHMENTS_PER_CHAT,
            contact_flows: Vec::new(),
            tls: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatState {
    Waiting,
    Active,
    Ended,
}

/// What a socket task is told to do.
#[derive(Debug)]
pub enum SocketCommand {
    /// A chat item, already serialised as the frame's `content` string.
    Item(String),
    Close,
}

pub struct SocketHandle {
    pub id: u64,
    pub subscribed: bool,
    pub sender: mpsc::UnboundedSender<SocketCommand>,
}

pub struct Contact {
    pub contact_id: String,
    pub initial_contact_id: String,
    pub continued_from: Option<String>,
    pub flow_id: String,
    pub display_name: String,
    pub attributes: Map<String, Value>,
    pub customer_participant_id: String,
    pub agent_participant_id: String,
    pub state: ChatState,
    pub transcript: Vec<Item>,
    /// SendMessage / SendEvent ClientToken → the item they created.
    pub client_tokens: HashMap<String, (String, String)>,
    pub customer_events: Vec<Item>,
    pub sockets: Vec<SocketHandle>,
    /// The chat ends if its customer has not connected by then.
    pub connect_by: Instant,
    pub ends_at: Instant,
    pub ever_connected: bool,
    /// A supervisor listens in: a third participant, so Connect refuses receipts (409).
    pub supervised: bool,
    /// What the customer's side declared it shows (StartChatContact's
    /// SupportedMessagingContentTypes): agents and flows send nothing else to it.
    pub supported: Vec<String>,
    /// The last item's time, in milliseconds: items of one chat are strictly ordered.
    pub last_time_ms: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboundCall {
    pub contact_id: String,
    pub destination: String,
    pub source: Option<String>,
    pub contact_flow_id: String,
    pub attributes: Map<String, Value>,
    pub at: DateTime<Utc>,
}

pub struct Attachment {
    pub contact_id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    // `Bytes`: the body as it came, kept without a copy made under the simulator's lock.
    pub bytes: Option<axum::body::Bytes>,
    pub completed: bool,
    /// The headers its upload URL was signed with: the PUT must carry exactly these.
    pub headers: Vec<(String, String)>,
    /// The upload URL works until then.
    pub url_expires: Instant,
}

pub struct Connection {
    pub contact_id: String,
    pub expires: Instant,
}

pub struct WsUrl {
    pub contact_id: String,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Inner {
    pub contacts: HashMap<String, Contact>,
    /// Contact ids in creation order.
    pub order: Vec<String>,
    pub participant_tokens: HashMap<String, String>,
    pub connections: HashMap<String, Connection>,
    pub ws_urls: HashMap<String, WsUrl>,
    /// StartChatContact / StartOutboundVoiceContact ClientToken → response.
    pub start_tokens: HashMap<String, Value>,
    pub calls: Vec<OutboundCall>,
    pub attachments: HashMap<String, Attachment>,
    /// StartAttachmentUpload ClientToken → AttachmentId.
    pub upload_tokens: HashMap<String, String>,
    /// CompleteAttachmentUpload ClientTokens already answered.
    pub complete_tokens: std::collections::HashSet<String>,
    pub faults: Faults,
    /// Calls per operation, answered or not.
    pub operations: BTreeMap<String, u64>,
    next_socket: u64,
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Connect's timestamp format: `yyyy-MM-ddThh:mm:ss.SSSZ`.
pub fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Inner {
    pub fn socket_id(&mut self) -> u64 {
        self.next_socket += 1;
        self.next_socket
    }

    /// The contact, after applying the lazy lifecycle rules (duration, connect window).
    pub fn contact_mut(&mut self, contact_id: &str) -> Option<&mut Contact> {
        let expired = {
            let c = self.contacts.get(contact_id)?;
            let now = Instant::now();
            c.state != ChatState::Ended
                && (now >= c.ends_at || (!c.ever_connected && now >= c.connect_by))
        };
        if expired {
            self.end_chat(contact_id);
        }
        self.contacts.get_mut(contact_id)
    }

    /// The live contact a connection token speaks for, or the error Connect gives.
    pub fn contact_for_connection(&mut self, token: &str) -> Result<String, ApiError> {
        let contact_id = match self.connections.get(token) {
            Some(c) if c.expires > Instant::now() => c.contact_id.clone(),
            _ => {
                return Err(ApiError::access_denied(
                    "Invalid or expired connection token",
                ));
            }
        };
        match self.contact_mut(&contact_id) {
            Some(c) if c.state != ChatState::Ended => Ok(contact_id),
            _ => Err(ApiError::access_denied("The chat has ended")),
        }
    }

    /// Appends an item to a contact's transcript and pushes it to its subscribed sockets.
    /// Its time is the wall clock, nudged to stay strictly after the chat's previous item
    /// (per chat, so a busy simulator's clock never runs ahead of real time).
    pub fn append(&mut self, contact_id: &str, item: Item) -> Item {
        let item = self.broadcast(contact_id, item);
        if let Some(c) = self.contacts.get_mut(contact_id) {
            c.transcript.push(item.clone());
        }
        item
    }

    /// Stamps `item` and sends it to the chat's subscribed sockets, without keeping it in
    /// the transcript (receipts live on the messages they are about).
    pub fn broadcast(&mut self, contact_id: &str, mut item: Item) -> Item {
        let Some(c) = self.contacts.get_mut(contact_id) else {
            return item;
        };
        let now = Utc::now().timestamp_millis().max(c.last_time_ms + 1);
        c.last_time_ms = now;
        item.absolute_time = iso(DateTime::from_timestamp_millis(now).expect("valid time"));
        item.contact_id = c.contact_id.clone();
        item.initial_contact_id = c.initial_contact_id.clone();
        let frame = serde_json::to_string(&item).expect("item serialises");
        c.sockets
            .retain(|s| !s.subscribed || s.sender.send(SocketCommand::Item(frame.clone())).is_ok());
        item
    }

    /// `recipient` has message `message_id` (and read it, if `read`), as Connect tells
    /// it: a `MESSAGEMETADATA` item on the sockets, and the receipt on the message in the
    /// transcript. A read receipt implies delivery.
    pub fn receipt(
        &mut self,
        contact_id: &str,
        message_id: &str,
        recipient: &str,
        read: bool,
    ) -> Item {
        let now = iso(Utc::now());
        let mut receipt = Receipt {
            delivered_timestamp: Some(now.clone()),
            read_timestamp: read.then(|| now.clone()),
            recipient_participant_id: recipient.to_owned(),
        };
        if let Some(message) = self
            .contacts
            .get_mut(contact_id)
            .and_then(|c| c.transcript.iter_mut().find(|i| i.id == message_id))
        {
            let metadata = message
                .message_metadata
                .get_or_insert_with(|| MessageMetadata {
                    message_id: message_id.to_owned(),
                    receipts: Vec::new(),
                });
            match metadata
                .receipts
                .iter_mut()
                .find(|r| r.recipient_participant_id == recipient)
            {
                Some(earlier) => {
                    // What was already known keeps its time.
                    earlier.delivered_timestamp = earlier
                        .delivered_timestamp
                        .clone()
                        .or(receipt.delivered_timestamp);
                    earlier.read_timestamp =
                        earlier.read_timestamp.clone().or(receipt.read_timestamp);
                    receipt = earlier.clone();
                }
                None => metadata.receipts.push(receipt.clone()),
            }
        }
        let item = Item {
            id: new_id(),
            kind: "MESSAGEMETADATA".into(),
            content_type: format!("{EVENT_PREFIX}message.metadata"),
            message_metadata: Some(MessageMetadata {
                message_id: message_id.to_owned(),
                receipts: vec![receipt],
            }),
            ..Item::default()
        };
        self.broadcast(contact_id, item)
    }

    pub fn event(&mut self, contact_id: &str, event: &str, role: Option<&str>) -> Option<Item> {
        let c = self.contacts.get(contact_id)?;
        let (participant_id, display_name) = match role {
            Some("AGENT") => (c.agent_participant_id.clone(), "Agent".to_owned()),
            Some("CUSTOMER") => (c.customer_participant_id.clone(), c.display_name.clone()),
            _ => (String::new(), String::new()),
        };
        let item = Item {
            id: new_id(),
            kind: "EVENT".into(),
            content_type: format!("{EVENT_PREFIX}{event}"),
            content: None,
            participant_id: Some(participant_id).filter(|p| !p.is_empty()),
            display_name: Some(display_name).filter(|d| !d.is_empty()),
            participant_role: role.map(str::to_owned),
            ..Item::default()
        };
        Some(self.append(contact_id, item))
    }

    pub fn end_chat(&mut self, contact_id: &str) -> bool {
        match self.contacts.get(contact_id) {
            Some(c) if c.state != ChatState::Ended => {}
            _ => return false,
        }
        // chat.ended carries no ParticipantRole.
        self.event(contact_id, "chat.ended", None);
        if let Some(c) = self.contacts.get_mut(contact_id) {
            c.state = ChatState::Ended;
            for s in c.sockets.drain(..) {
                let _ = s.sender.send(SocketCommand::Close);
            }
        }
        true
    }

    pub fn count(&mut self, operation: &str) {
        *self.operations.entry(operation.to_owned()).or_default() += 1;
    }
}
