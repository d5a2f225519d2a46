#[tokio::main]
async fn main() -> anyhow::Result<()> {
    waconnect_sandbox::run_from_env().await
}
