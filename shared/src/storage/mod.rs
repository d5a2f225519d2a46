//! Where messages wait and what the services remember: contracts, each with two engines
//! (embedded SQLite; SQS + DynamoDB + S3) and one contract suite in `tests/` run on both.
//!
//! * [`queue`] — the inbound and outbound FIFO queues, dead letters included, and the
//!   [`consumer`] loop both workers run over them;
//! * [`store`] — conversation records and their leases;
//! * [`delivery`] — the ledger that makes each send happen once;
//! * [`message_index`] — which Twilio message is which Connect item (read receipts,
//!   quoted replies);
//! * [`roster`] — which processes are alive, to share a fleet-wide rate out;
//! * [`media`] — the agent's files, served to Twilio under expiring URLs;
//! * [`backend`] opens the engines the configuration names, [`retention`] deletes what
//!   expired; [`sqlite`], [`table`] and `batch` are the engines' shared parts.

pub mod backend;
pub(crate) mod batch;
pub mod consumer;
pub mod delivery;
pub mod media;
pub mod message_index;
pub mod queue;
pub mod retention;
pub mod roster;
pub mod sqlite;
pub mod store;
pub mod table;
pub mod time;
