//! One id per message across the services (docs/architecture.md §1), to follow it through
//! every log line: derived from the message's own id — the customer message's MessageSid,
//! the agent item's Connect Id — so ingress, the relay and the sender each compute the same
//! one without carrying it, and a Twilio retry or a re-forwarded item keeps it. Its shape is
//! a W3C trace id (32 lowercase hex digits), which is also the message's OpenTelemetry
//! trace when spans are exported ([`follow`]).

use sha2::{Digest, Sha256};

/// The trace id of the message whose own id is `id`.
pub fn of(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    hex::encode(&digest[..16])
}

/// Puts `span`, a service's hop for one message, in that message's OpenTelemetry trace:
/// its trace id is `trace_id`, and its parent the message itself, a span no service
/// records whose id is the trace id's low half, so every service names the same one.
/// Call before the span is first entered; without a trace exporter it does nothing.
pub fn follow(span: &tracing::Span, trace_id: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Ok(trace) = TraceId::from_hex(trace_id) else {
        return;
    };
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace.to_bytes()[8..]);
    let parent = SpanContext::new(
        trace,
        SpanId::from_bytes(low),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    // Refused only when no exporter is installed or the span is filtered out.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
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
