//! Simulated Twilio and Amazon Connect: test equipment that behaves like the real services
//! (docs/architecture.md §5–§7), so the official clients talk to it unchanged. The
//! end-to-end tests and benches run the bridge against it, and the sandbox ships it to
//! play both the customer and the agent on one machine.
//!
//! * [`connect`]: the Connect and Participant REST APIs, the participant websocket, an
//!   agent desk and fault injection, on one loopback port;
//! * [`twilio`]: the Messages and Content APIs, signed webhooks and status callbacks, the
//!   customer's phone, and fault injection;
//! * [`tls`]: HTTPS and WSS with a test CA made at run time;
//! * [`wait`]: waiting for a condition with a deadline instead of sleeping;
//! * [`wiring`]: the variables that point the services at the simulators.

pub mod connect;
pub mod tls;
pub mod twilio;
pub mod wait;
pub mod wiring;
