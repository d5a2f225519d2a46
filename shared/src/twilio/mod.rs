//! The Twilio edge every service shares: the webhook signature ingress checks and the
//! simulator makes, the form encoding of webhooks and API calls, and the account's
//! credentials the relay and the sender call Twilio with.

pub mod account;
pub mod form;
pub mod signature;
