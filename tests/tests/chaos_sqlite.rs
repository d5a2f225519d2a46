//! The randomized chaos run (`waconnect_tests::chaos`) on the embedded SQLite engine: a
//! test binary of its own, so the fleet has the machine to itself.

use waconnect_tests::chaos::{self, Engine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_doubles_reorders_and_dead_letters_nothing_on_sqlite() {
    let report = chaos::run(Engine::Sqlite).await;
    chaos::assert_clean(&report);
}
