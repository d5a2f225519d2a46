use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use waconnect_shared::config::ConfigSource;
use waconnect_shared::{shutdown, telemetry};

/// The relay-worker: the fleet that owns the Amazon Connect side. Without a command it
/// runs, configured by its environment (README "Configuration").
#[derive(Parser)]
#[command(name = "relay-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a WhatsApp conversation from the business side: an approved template to the
    /// customer and a Connect chat for the agent, through a running relay's API.
    StartConversation {
        /// The customer, `whatsapp:+<E.164>`.
        #[arg(long)]
        customer: String,
        /// The approved template's `HX…` SID.
        #[arg(long)]
        content_sid: String,
        /// A template variable, `1=Ana` (repeat for more).
        #[arg(long = "var", value_parser = variable)]
        variables: Vec<(String, String)>,
        /// Your idempotency key: the same key never starts two conversations.
        #[arg(long)]
        key: String,
        /// The business number that writes (one a route lists); the default route's sender when absent.
        #[arg(long)]
        business: Option<String>,
        /// The relay's API (`WACONNECT_RELAY_API_BIND`).
        #[arg(
            long,
            env = "WACONNECT_RELAY_API_URL",
            default_value = "http://127.0.0.1:9095"
        )]
        api: String,
        /// The API's bearer token.
        #[arg(long, env = "WACONNECT_RELAY_API_TOKEN", hide_env_values = true)]
        token: String,
    },
}

fn variable(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        None => serve().await,
        Some(Command::StartConversation {
            customer,
            content_sid,
            variables,
            key,
            business,
            api,
            token,
        }) => {
            let request = waconnect_relay_worker::outreach::Outreach {
                customer,
                business,
                content_sid,
                variables: variables.into_iter().collect(),
                key,
            };
            let response = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?
                .post(format!("{}/v1/conversations", api.trim_end_matches('/')))
                .bearer_auth(token)
                .json(&request)
                .send()
                .await
                .with_context(|| format!("cannot reach the relay's API at {api}"))?;
            let status = response.status();
            println!("{}", response.text().await?);
            if !status.is_success() {
                anyhow::bail!("the relay refused: HTTP {status}");
            }
            Ok(())
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = waconnect_relay_worker::config_from(&ConfigSource::from_env()?)?;
    telemetry::init_logging(&config.worker.common.telemetry)?;
    let listener = TcpListener::bind(config.worker.ops_bind)
        .await
        .with_context(|| {
            format!(
                "{}: cannot listen on {}",
                waconnect_relay_worker::OPS_BIND_VAR,
                config.worker.ops_bind
            )
        })?;
    waconnect_relay_worker::run(config, listener, shutdown::on_signals()).await?;
    Ok(())
}
