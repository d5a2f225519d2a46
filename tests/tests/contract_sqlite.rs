//! The queue, store, delivery-ledger, roster and media store contracts against the embedded SQLite engine.

use waconnect_tests::engines::SqliteEngine;

mod queue {
    use super::*;
    waconnect_tests::queue_contract_tests!(SqliteEngine::new());
}

mod store {
    use super::*;
    waconnect_tests::store_contract_tests!(
        SqliteEngine::new(),
        env!("CARGO_BIN_EXE_lease-contender")
    );
}

mod ledger {
    use super::*;
    waconnect_tests::ledger_contract_tests!(SqliteEngine::new());
}

mod message_index {
    use super::*;
    waconnect_tests::index_contract_tests!(SqliteEngine::new());
}

mod media {
    use super::*;
    waconnect_tests::media_contract_tests!(SqliteEngine::new());
}

mod roster {
    use super::*;
    waconnect_tests::roster_contract_tests!(SqliteEngine::new());
}
