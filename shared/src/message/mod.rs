//! What travels through the bridge, and whom it belongs to.
//!
//! A customer's webhook becomes an [`event::InboundEvent`] on the inbound queue; an
//! agent's item becomes an [`outbound::OutboundMessage`] on the outbound queue; both
//! belong to the [`conversation`] of one business number and one customer [`address`],
//! and carry one [`trace`] id from the first hop to the last.

pub mod address;
pub mod conversation;
pub mod event;
pub mod menu;
pub mod outbound;
pub mod text;
pub mod trace;
