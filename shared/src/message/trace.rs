//! One id per message across the services (docs/architecture.md §1), to follow it through
//! every log line: derived from the message's own id — the customer message's MessageSid,
//! the agent item's Connect Id — so ingress, the relay and the sender each compute the same
//! one without carrying it, and a Twilio retry or a re-forwarded item keeps it. Its shape is
//! a W3C trace id (32 lowercase hex digits), ready for an OpenTelemetry exporter.

use sha2::{Digest, Sha256};

/// The trace id of the message whose own id is `id`.
pub fn of(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_one_trace_in_w3c_shape() {
        let t = of("SM0123456789abcdef0123456789abcdef");
        assert_eq!(t, of("SM0123456789abcdef0123456789abcdef"));
        assert_ne!(t, of("SM0123456789abcdef0123456789abcdee"));
        assert_eq!(t.len(), 32);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
