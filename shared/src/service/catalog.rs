//! Every metric waconnect exports, with its help text: registered with the recorder so
//! `/metrics` carries `# HELP` lines, and the list the dashboards and alerts in `deploy/`
//! are checked against.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "waconnect_ingress_requests_total",
        Kind::Counter,
        "Twilio webhooks by route and outcome.",
    ),
    (
        "waconnect_ingress_enqueue_duration_seconds",
        Kind::Histogram,
        "Time to put a webhook on the inbound queue.",
    ),
    (
        "waconnect_ingress_connections",
        Kind::Gauge,
        "Client connections open on ingress.",
    ),
    (
        "waconnect_ingress_connections_refused_total",
        Kind::Counter,
        "Connections closed at once because WACONNECT_INGRESS_MAX_CONNECTIONS were open.",
    ),
    (
        "waconnect_ingress_insecure_mode",
        Kind::Gauge,
        "1 while Twilio signature checks are off.",
    ),
    (
        "waconnect_queue_messages",
        Kind::Gauge,
        "Queue depth by queue and state (visible, in_flight, delayed).",
    ),
    (
        "waconnect_queue_oldest_message_age_seconds",
        Kind::Gauge,
        "Age of the oldest message not yet deleted, by queue.",
    ),
    (
        "waconnect_queue_message_age_seconds",
        Kind::Histogram,
        "Time from enqueue to receive, by queue.",
    ),
    (
        "waconnect_aws_calls_total",
        Kind::Counter,
        "AWS API calls made (each attempt), by service and operation.",
    ),
    (
        "waconnect_queue_sent_total",
        Kind::Counter,
        "Messages sent to a queue, by outcome (new, duplicate; accepted on SQS, which de-duplicates without saying).",
    ),
    (
        "waconnect_queue_dead_lettered_total",
        Kind::Counter,
        "Messages moved to a dead-letter queue.",
    ),
    (
        "waconnect_queue_stale_deliveries_total",
        Kind::Counter,
        "Deliveries found taken over by another worker while being handled (their visibility could not be kept), by queue.",
    ),
    (
        "waconnect_queue_handling_overruns_total",
        Kind::Counter,
        "Messages whose handling hung past the consumer's limit (15 min; for the sender, past its give-up age) and was stopped, the message failed, by queue.",
    ),
    (
        "waconnect_retention_pruned_total",
        Kind::Counter,
        "Expired data deleted on the embedded engine, by kind (conversations, ledger, dead_letters).",
    ),
    (
        "waconnect_relay_conversations_held",
        Kind::Gauge,
        "Conversations whose websocket this worker holds.",
    ),
    (
        "waconnect_relay_leases_total",
        Kind::Counter,
        "Lease events (acquired, adopted, lost, released).",
    ),
    (
        "waconnect_relay_websocket_reconnects_total",
        Kind::Counter,
        "Participant websocket reconnects by reason.",
    ),
    (
        "waconnect_relay_backfilled_items_total",
        Kind::Counter,
        "Agent items forwarded from the transcript.",
    ),
    (
        "waconnect_relay_record_cache_total",
        Kind::Counter,
        "Inbound messages and receipts answered by a record seen lately (hit) or read (miss).",
    ),
    (
        "waconnect_relay_forwarded_items_total",
        Kind::Counter,
        "Connect items forwarded to the customer, by role.",
    ),
    (
        "waconnect_relay_recovered_total",
        Kind::Counter,
        "Customer messages whose webhooks never reached ingress, put on the inbound queue by the catch-up (queued, offered).",
    ),
    (
        "waconnect_relay_inbound_total",
        Kind::Counter,
        "Inbound messages by outcome (relayed, retried, dead_lettered).",
    ),
    (
        "waconnect_relay_inbound_lag_seconds",
        Kind::Histogram,
        "Inbound enqueue to Connect accepting the message.",
    ),
    (
        "waconnect_relay_chats_started_total",
        Kind::Counter,
        "Chats started.",
    ),
    (
        "waconnect_relay_chats_restarted_total",
        Kind::Counter,
        "Ended chats restarted as persistent chats.",
    ),
    (
        "waconnect_relay_chats_ended_total",
        Kind::Counter,
        "Chats that ended.",
    ),
    (
        "waconnect_relay_status_callbacks_total",
        Kind::Counter,
        "Twilio status callbacks by status.",
    ),
    (
        "waconnect_relay_receipts_refused_total",
        Kind::Counter,
        "Delivered / read receipts Connect refused for good (a supervisor in the chat: 409).",
    ),
    (
        "waconnect_relay_statuses_unrelayed_total",
        Kind::Counter,
        "Receipts and failure notices with no chat left to reach, by why (no conversation, the chat is over, the chat ended).",
    ),
    (
        "waconnect_relay_indicators_total",
        Kind::Counter,
        "Typing indicators and read ticks towards WhatsApp, by kind (typing, read) and outcome (shown, refused, error, late, dropped, unknown, outside_window).",
    ),
    (
        "waconnect_relay_quoted_replies_total",
        Kind::Counter,
        "Customer replies to a specific message, by outcome (quoted: its words shown to the agent; unknown: no longer indexed).",
    ),
    (
        "waconnect_relay_menus_total",
        Kind::Counter,
        "Interactive messages (list pickers, quick replies, time pickers) offered the customer as a menu.",
    ),
    (
        "waconnect_relay_menu_replies_total",
        Kind::Counter,
        "Customer replies that may answer a menu (a button, a number), by outcome (chosen, other).",
    ),
    (
        "waconnect_sender_menus_total",
        Kind::Counter,
        "Menus sent to customers, by how WhatsApp shows them (list, buttons, text).",
    ),
    (
        "waconnect_sender_contents_created_total",
        Kind::Counter,
        "Contents made with Twilio's Content API for menus (one per distinct menu per sender process).",
    ),
    (
        "waconnect_relay_outreach_total",
        Kind::Counter,
        "Conversations the business asked to start, by outcome (started, open, invalid, unavailable).",
    ),
    (
        "waconnect_relay_delivery_failures_total",
        Kind::Counter,
        "Replies the customer never got, by Twilio error code.",
    ),
    (
        "waconnect_relay_media_total",
        Kind::Counter,
        "Customers' files: attached to the chat, or refused with a notice to the agent (outcome).",
    ),
    (
        "waconnect_relay_media_converted_total",
        Kind::Counter,
        "Customers' files converted for Connect, by the type they became (to).",
    ),
    (
        "waconnect_relay_media_conversion_failures_total",
        Kind::Counter,
        "Conversions that failed or could not run (no ffmpeg); the agent got a notice.",
    ),
    (
        "waconnect_relay_media_upload_seconds",
        Kind::Histogram,
        "Time to PUT a file to Connect's upload URL.",
    ),
    (
        "waconnect_relay_media_deleted_total",
        Kind::Counter,
        "Twilio's copies of customers' files deleted once in the chat (WACONNECT_TWILIO_DELETE_MEDIA).",
    ),
    (
        "waconnect_relay_agent_files_total",
        Kind::Counter,
        "The agent's files: stored for Twilio, or refused with a notice to the agent (outcome).",
    ),
    (
        "waconnect_relay_agent_files_given_up_total",
        Kind::Counter,
        "The agent's files given up once WACONNECT_RELAY_SCAN_WAIT passed, the agent told: still being scanned, or not copied for WhatsApp (reason: scan, copy).",
    ),
    (
        "waconnect_relay_resends_total",
        Kind::Counter,
        "Replies sent again after WhatsApp refused them for a passing reason (63018, 30001), by code.",
    ),
    (
        "waconnect_relay_call_requests_total",
        Kind::Counter,
        "\"Call me\" requests by outcome (called, cooldown, refused).",
    ),
    (
        "waconnect_connect_call_duration_seconds",
        Kind::Histogram,
        "Connect and Participant API call latency, by operation.",
    ),
    (
        "waconnect_connect_errors_total",
        Kind::Counter,
        "Connect and Participant API errors by operation and kind.",
    ),
    (
        "waconnect_sender_sent_total",
        Kind::Counter,
        "Message parts Twilio accepted.",
    ),
    (
        "waconnect_sender_retried_total",
        Kind::Counter,
        "Twilio sends retried, by error code.",
    ),
    (
        "waconnect_sender_failed_total",
        Kind::Counter,
        "Messages refused for good and dead-lettered, by error code.",
    ),
    (
        "waconnect_sender_reconciled_total",
        Kind::Counter,
        "Sends whose answer was lost, found at Twilio instead of resent.",
    ),
    (
        "waconnect_sender_claims_taken_over_total",
        Kind::Counter,
        "Parts this sender had claimed but did not post, because another delivery took the claim over while this one waited (a stalled process, a long retry); the other sends it.",
    ),
    (
        "waconnect_sender_recent_claims_waited_total",
        Kind::Counter,
        "Parts claimed too recently to tell whether their send is still on its way to Twilio (usually another delivery of the same message sending it now); the delivery waited for the outcome instead of asking Twilio at once.",
    ),
    (
        "waconnect_sender_resent_in_place_total",
        Kind::Counter,
        "Parts WhatsApp refused for a passing reason (63018, 30001), sent again before the customer's next.",
    ),
    (
        "waconnect_sender_unconfirmed_total",
        Kind::Counter,
        "Parts Twilio had not handed to WhatsApp within WACONNECT_SENDER_CONFIRM_WAIT; the next went anyway.",
    ),
    (
        "waconnect_sender_send_duration_seconds",
        Kind::Histogram,
        "Twilio Messages API latency.",
    ),
    (
        "waconnect_sender_rate_limit_wait_seconds",
        Kind::Histogram,
        "Time waiting for the sender's rate limit.",
    ),
    (
        "waconnect_sender_twilio_auth_failing",
        Kind::Gauge,
        "1 while Twilio refuses the credentials.",
    ),
    (
        "waconnect_sender_twilio_config_failing",
        Kind::Gauge,
        "1 while Twilio refuses the sender configuration (From, Messaging Service, account).",
    ),
    (
        "waconnect_sender_rate_share",
        Kind::Gauge,
        "Messages per second this outbound-sender may send: its share of the sender number's rate.",
    ),
    (
        "waconnect_sender_fleet_size",
        Kind::Gauge,
        "Outbound-senders alive for this sender number, as the roster last said.",
    ),
];

/// Registers every description with the installed recorder.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Whether `series` (a name as it appears in PromQL or exposition, e.g. with `_bucket`)
/// is one of ours.
pub fn knows(series: &str) -> bool {
    METRICS.iter().any(|&(name, kind, _)| {
        series == name
            || (kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_suffix(s) == Some(name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for &(name, kind, _) in METRICS {
            assert!(name.starts_with("waconnect_"), "{name}");
            if kind == Kind::Counter {
                assert!(name.ends_with("_total"), "{name}");
            }
            if kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}");
            }
        }
        assert!(knows("waconnect_queue_message_age_seconds_bucket"));
        assert!(!knows("waconnect_queue_messages_bucket"));
        assert!(!knows("waconnect_nothing"));
    }

    #[test]
    fn every_metric_the_code_records_is_catalogued() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let mut sources = String::new();
        for dir in [
            "shared/src",
            "ingress/src",
            "relay-worker/src",
            "outbound-sender/src",
        ] {
            visit(&root.join(dir), &mut |text| sources.push_str(text));
        }
        let mut missing = Vec::new();
        for (i, _) in sources.match_indices("\"waconnect_") {
            let name: String = sources[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !knows(&name) && !missing.contains(&name) {
                missing.push(name);
            }
        }
        assert!(
            missing.is_empty(),
            "recorded but not in the catalog: {missing:?}"
        );
        // And the other way round: nothing catalogued (and so charted) is never recorded.
        let stale: Vec<&str> = METRICS
            .iter()
            .map(|m| m.0)
            .filter(|name| !sources.contains(&format!("\"{name}\"")))
            .collect();
        assert!(stale.is_empty(), "catalogued but never recorded: {stale:?}");
    }

    fn visit(dir: &std::path::Path, f: &mut dyn FnMut(&str)) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, f);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("catalog.rs") {
                f(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
}
