//! The Twilio edge every service shares: the webhook signature ingress checks and the
//! simulator makes, the form encoding of webhooks and API calls, the account's
//! credentials the relay and the sender call Twilio with, and the history of customers'
//! messages the relays' catch-up and `waconnect recover` read back.

pub mod account;
pub mod form;
pub mod history;
pub mod recovery;
pub mod signature;
