//! The library the three waconnect services stand on, one folder per concept:
//!
//! * [`message`] — what travels: the customer's address and conversation, the webhook
//!   event ingress queues, the message the relay queues for the sender, menus, text
//!   splitting, and the one trace id that follows a message through every hop.
//! * [`twilio`] — the Twilio edge every service shares: webhook signatures, form
//!   decoding, the account's credentials.
//! * [`storage`] — the contracts the services meet through (queues, the conversation
//!   store, the delivery ledger, the message index, the roster, the media store), their
//!   two engines (SQLite; SQS + DynamoDB + S3), the queue consumer, and retention.
//! * [`service`] — running a service: configuration, routing, secrets, TLS trust, the AWS
//!   SDK setup, logs and metrics, the operations endpoints, shutdown, the retry policy.

pub mod message;
pub mod service;
pub mod storage;
pub mod twilio;

pub use message::address::{BusinessNumber, CustomerAddress};
pub use message::conversation::ConversationKey;
pub use service::secret::Secret;
