//! Running a service: what every process does besides its own work.
//!
//! * [`config`] — typed configuration from the environment, refused with every bad
//!   variable named; [`routing`] — which business number goes to which flow and sender;
//! * [`secret`] — strings that never reach a log; [`tls`] — the CAs trusted as a client;
//!   [`aws`] — the SDK setup every AWS client is built from;
//! * [`telemetry`], [`traces`] and [`catalog`] — logs, traces and metrics; [`ops`] — `/healthz`,
//!   `/readyz`, `/metrics`; [`worker`] — what both queue workers share;
//! * [`shutdown`] — one cancellation token; [`backoff`] — the one retry policy;
//!   [`allocator`] — the memory allocator every binary runs on.

pub mod allocator;
pub mod aws;
pub mod backoff;
pub mod catalog;
pub mod config;
pub mod ops;
pub mod routing;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod traces;
pub mod worker;
