//! Contract suites: one test per behaviour a queue, store or delivery-ledger engine
//! promises, written once and run against every engine through
//! [`queue_contract_tests!`](crate::queue_contract_tests),
//! [`store_contract_tests!`](crate::store_contract_tests),
//! [`ledger_contract_tests!`](crate::ledger_contract_tests),
//! [`index_contract_tests!`](crate::index_contract_tests) and
//! [`media_contract_tests!`](crate::media_contract_tests).

pub mod ledger;
pub mod media;
pub mod message_index;
pub mod queue;
pub mod roster;
pub mod store;

/// Expands to one `#[tokio::test]` per queue contract case, against the engine that the
/// async expression `$engine` builds.
#[macro_export]
macro_rules! queue_contract_tests {
    ($engine:expr) => {
        $crate::contract_cases!(queue, $engine;
            send_and_receive_round_trip,
            fifo_within_a_group_under_concurrent_consumers,
            one_in_flight_per_group_and_groups_in_parallel,
            dedup_within_the_window,
            visibility_expiry_redelivers_and_stales_the_old_receipt,
            change_visibility_extends_and_releases,
            failures_dead_letter_after_max_receives_with_the_last_error,
            attempts_count_failures_not_hand_backs,
            crash_loop_is_dead_lettered_and_the_group_continues,
            explicit_dead_letter_is_immediate,
            failure_backoff_is_delayed_and_keeps_group_order,
            stats_count_each_state,
            refuses_oversized_bodies_and_bad_ids,
            long_poll_wakes_for_a_send_on_another_connection,
            long_poll_wakes_when_the_group_head_is_deleted,
            old_dead_letters_are_pruned,
            dead_letters_are_redriven_in_order_or_purged,
        );
    };
}

/// Expands to one `#[tokio::test]` per store contract case; `$contender` is the path of the
/// `lease-contender` binary (`env!("CARGO_BIN_EXE_lease-contender")`).
#[macro_export]
macro_rules! store_contract_tests {
    ($engine:expr, $contender:expr) => {
        $crate::contract_cases!(store, $engine, $contender;
            insert_get_round_trip,
            insert_twice_is_refused,
            update_compares_the_version,
            update_of_a_missing_record_is_not_found,
            lease_is_exclusive_until_it_lapses,
            many_tasks_race_for_a_lease_and_one_wins,
            two_processes_race_for_leases_and_one_wins_each,
            stale_holder_is_refused_everything,
            renewal_extends_and_raises_the_fencing_version,
            renewals_in_a_batch_are_answered_each_in_order,
            release_frees_the_conversation_at_once,
            unheld_lists_lapsed_and_released_live_conversations,
            fenced_update_needs_the_current_lease,
            lease_changes_and_data_writes_do_not_interfere,
            ended_conversations_expire_after_their_retention,
            a_restarted_worker_takes_its_own_leases_back_at_once,
            one_customer_with_two_numbers_has_two_conversations,
            records_from_before_routing_keep_working,
            an_erased_record_is_gone_and_its_holder_stops,
        );
    };
}

/// Expands to one `#[tokio::test]` per delivery-ledger contract case.
#[macro_export]
macro_rules! ledger_contract_tests {
    ($engine:expr) => {
        $crate::contract_cases!(ledger, $engine;
            first_claim_is_fresh_and_a_second_is_unknown_since_it,
            a_claim_renewed_by_another_delivery_is_no_longer_ours,
            a_sent_part_is_reported_with_its_sid,
            an_outcome_is_read_without_claiming,
            release_forgets_an_unsent_claim_only,
            racing_claims_have_exactly_one_fresh_winner,
            many_outcomes_at_once_are_all_kept,
            old_entries_are_pruned,
            a_recorded_sid_is_known_as_owned,
        );
    };
}

/// Expands to one `#[tokio::test]` per message-index contract case.
#[macro_export]
macro_rules! index_contract_tests {
    ($engine:expr) => {
        $crate::contract_cases!(message_index, $engine;
            a_message_is_found_by_either_id_from_another_process,
            parts_share_an_id_on_one_side,
            many_entries_at_once_are_all_kept,
            excerpts_are_capped,
            old_entries_are_pruned,
            a_conversation_is_forgotten_whole,
        );
    };
}

/// Expands to one `#[tokio::test]` per media store contract case.
#[macro_export]
macro_rules! media_contract_tests {
    ($engine:expr) => {
        $crate::contract_cases!(media, $engine;
            a_stored_file_is_served_by_its_url_with_its_type_and_name,
            a_url_serves_only_its_own_file,
            a_url_expires,
            deleted_files_are_gone,
            keys_that_could_be_paths_are_refused,
            old_files_are_pruned,
            a_conversations_files_are_forgotten_by_their_prefix,
        );
    };
}

/// Expands to one `#[tokio::test]` per roster contract case.
#[macro_export]
macro_rules! roster_contract_tests {
    ($engine:expr) => {
        $crate::contract_cases!(roster, $engine;
            heartbeats_count_the_living_members,
            members_that_stop_beating_or_leave_are_gone,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! contract_cases {
    ($suite:ident, $engine:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let engine = $engine.await;
                $crate::contract::$suite::$case(&engine).await;
            }
        )*
    };
    ($suite:ident, $engine:expr, $extra:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let engine = $engine.await;
                $crate::contract::$suite::$case(&engine, $extra.as_ref()).await;
            }
        )*
    };
}
