//! The library the three waconnect services stand on.
//!
//! * [`aws`] — the AWS SDK configuration every AWS client is built from.
//! * [`config`] — typed, validated configuration from the environment.
//! * [`address`], [`event`], [`outbound`], [`conversation`] — domain types.
//! * [`queue`] and [`store`] — the two storage contracts, with their engines;
//!   [`retention`] deletes what expired.
//! * [`signature`] and [`form`] — Twilio webhook signing and form decoding.
//! * [`telemetry`], [`ops`], [`shutdown`] — logs, metrics, probes and graceful shutdown.

pub mod address;
pub mod aws;
pub mod backend;
pub mod backoff;
pub(crate) mod batch;
pub mod catalog;
pub mod config;
pub mod consumer;
pub mod conversation;
pub mod delivery;
pub mod event;
pub mod form;
pub mod media;
pub mod menu;
pub mod message_index;
pub mod ops;
pub mod outbound;
pub mod queue;
pub mod retention;
pub mod roster;
pub mod routing;
pub mod secret;
pub mod shutdown;
pub mod signature;
pub mod sqlite;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;
pub mod trace;
pub mod twilio_account;
pub mod worker;

pub use address::{BusinessNumber, CustomerAddress};
pub use conversation::ConversationKey;
pub use secret::Secret;
