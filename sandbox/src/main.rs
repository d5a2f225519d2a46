#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    waconnect_sandbox::run_from_env().await
}
