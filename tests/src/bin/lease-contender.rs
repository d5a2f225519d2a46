//! A separate process racing for leases, for the two-process store contract test.
//!
//! Usage: `lease-contender (--sqlite PATH | --dynamodb ENDPOINT --table NAME) --owner NAME --keys N`
//! Prints `ready`, waits for a line on stdin, then tries to acquire the lease of test
//! customers 0..N in order, printing `won K` or `lost K` for each.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;
use waconnect_shared::service::config::Synchronous;
use waconnect_shared::storage::sqlite::Db;
use waconnect_shared::storage::store::sqlite::SqliteStore;
use waconnect_shared::storage::store::{ConversationStore, StoreError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| -> anyhow::Result<String> {
        let i = args
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| anyhow::anyhow!("missing {name}"))?;
        args.get(i + 1)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
    };
    let store: Arc<dyn ConversationStore> = match arg("--dynamodb") {
        Ok(endpoint) => {
            let moto = waconnect_tests::moto::Moto::storage_at(&endpoint);
            let (_, dynamodb, _) = waconnect_shared::storage::backend::aws_clients(&moto).await;
            let table = waconnect_shared::storage::table::Table::new(dynamodb, arg("--table")?);
            Arc::new(waconnect_shared::storage::store::dynamodb::DynamoStore::new(table))
        }
        Err(_) => {
            let db = Db::open_path(arg("--sqlite")?.as_ref(), Synchronous::Normal).await?;
            Arc::new(SqliteStore::open(db).await?)
        }
    };
    let owner = arg("--owner")?;
    let keys: usize = arg("--keys")?.parse()?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    for k in 0..keys {
        let customer = waconnect_tests::key(k);
        match store
            .acquire_lease(&customer, &owner, Duration::from_secs(60))
            .await
        {
            Ok(_) => println!("won {k}"),
            Err(StoreError::LeaseHeld) => println!("lost {k}"),
            Err(e) => anyhow::bail!("key {k}: {e}"),
        }
    }
    Ok(())
}
