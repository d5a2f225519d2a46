use waconnect_sandbox::{Options, Sandbox};
use waconnect_shared::shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::from_env()?;
    waconnect_shared::telemetry::init_logging(&options.telemetry)?;
    let sandbox = Sandbox::start(options).await?;
    println!(
        "\nwaconnect sandbox is running: {url}\n\n\
         Open it in a browser. On the left is a WhatsApp customer's phone, on the right an\n\
         Amazon Connect agent desk. Type as the customer, accept the chat as the agent,\n\
         reply, and watch the ticks and the queues. Ingress, relay-worker and\n\
         outbound-sender are the real services on the embedded SQLite engine\n\
         ({db}); only Twilio and Connect are simulated. Ctrl-C stops it.\n",
        url = sandbox.url(),
        db = sandbox.database().display(),
    );
    shutdown::on_signals().cancelled().await;
    sandbox.stop().await;
    Ok(())
}
