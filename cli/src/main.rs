//! `waconnect`: one command for everything an operator runs (README "Running").
//!
//! * `serve` — ingress, relay-worker and outbound-sender in one process: the one-box mode.
//! * `ingress`, `relay`, `sender` — one service each, as a fleet runs them.
//! * `sandbox` — the whole system with simulated Twilio and Connect, and a web page.
//! * `check` — a configuration checked before going live.
//! * `dlq list|show|redrive|purge` — the dead letters and why; back onto their queue, or
//!   gone.
//! * `conversation show|release|end|erase` — a customer's conversation as the store holds
//!   it; its socket freed for another relay; its chat ended; all of it erased.
//! * `conversation start` — a conversation the business starts, through a relay's API.
//! * `completions` — shell completions.
//!
//! Every service is configured by its environment (or `WACONNECT_CONFIG_FILE`), as the
//! README's configuration table says; `--help` on every command.

mod check;
mod conversation;
mod dlq;
mod recover;
mod serve;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::config::ConfigSource;
use waconnect_shared::service::{shutdown, telemetry};
use waconnect_shared::storage::queue::Take;

#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

/// Bridges WhatsApp customers (through Twilio) and Amazon Connect agents. Configured by
/// environment variables (README "Configuration").
#[derive(Parser)]
#[command(name = "waconnect", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole bridge in one process: ingress, relay-worker and outbound-sender on one
    /// configuration (the one-box deployment, usually on the embedded SQLite engine).
    Serve,
    /// Only ingress: Twilio's webhooks into the inbound queue.
    Ingress,
    /// Only the relay-worker: the Amazon Connect side.
    Relay,
    /// Only the outbound-sender: the outbound queue to Twilio's Messages API.
    Sender,
    /// The whole system on this machine with simulated Twilio and Connect, and a page to
    /// play both the customer and the agent (`WACONNECT_SANDBOX_BIND`, default
    /// 127.0.0.1:8700).
    Sandbox,
    /// Checks a configuration before going live: every variable and the routing file,
    /// then (unless --offline) Twilio's credentials, each route's contact flows, and the
    /// storage, with read-only calls. Exits non-zero if anything failed.
    Check {
        /// Only the variables and the routing file; nothing is called.
        #[arg(long)]
        offline: bool,
        /// The results as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: what could not be handled and why; redrive or purge them.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Conversations: look one up, free its socket, end it, erase it, or start one from the
    /// business side.
    #[command(subcommand)]
    Conversation(Conversation),
    /// Customer messages Twilio took while ingress could not (down or refusing longer
    /// than Twilio tries a webhook, 15 s): lists them and puts those the relay never
    /// handled on the inbound queue, in the order they were sent.
    Recover {
        #[command(flatten)]
        range: recover::Range,
        /// Only list what would be queued.
        #[arg(long)]
        dry_run: bool,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Prints shell completions for `waconnect` (e.g. `waconnect completions bash >
    /// /etc/bash_completion.d/waconnect`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// Lists the dead letters, oldest first: reason, conversation (the number masked),
    /// trace id, age; never a body.
    List {
        #[command(flatten)]
        select: dlq::Select,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows one dead letter with its body (the customer's words: on purpose only).
    Show {
        /// The letter's message id, as `list` shows it.
        message_id: String,
        #[arg(long, value_enum, default_value = "both")]
        queue: dlq::Which,
    },
    /// Puts the selected dead letters back on their queue to be handled again, each
    /// customer's in the order they were sent (after the fault that killed them is fixed).
    Redrive {
        #[command(flatten)]
        select: dlq::Select,
        #[command(flatten)]
        act: Act,
    },
    /// Deletes the selected dead letters for good.
    Purge {
        #[command(flatten)]
        select: dlq::Select,
        #[command(flatten)]
        act: Act,
    },
}

/// How `redrive` and `purge` act.
#[derive(clap::Args)]
struct Act {
    /// Every letter of the queue(s): required when no --customer, --older-than or --id
    /// narrows the selection.
    #[arg(long)]
    all: bool,
    /// Lists what would be taken, and takes nothing.
    #[arg(long)]
    dry_run: bool,
    /// As JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Conversation {
    /// Shows a customer's conversation as the store holds it (either engine; no tokens,
    /// the number masked): its chat, the agent cursor, who holds its socket.
    Show {
        #[command(flatten)]
        which: conversation::Which,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Takes the conversation's socket from the relay that holds it (stuck, or on a host
    /// being drained): that relay stops at its next renewal and another adopts it at once.
    Release {
        #[command(flatten)]
        which: conversation::Which,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Ends the customer's chat: the customer leaves it in Connect (the agent sees that),
    /// the relay ends the conversation as any ended chat (closing text included); the
    /// record is ended here if no relay did within --wait.
    End {
        #[command(flatten)]
        which: conversation::Which,
        /// How long the relay holding the chat has to record its end.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Erases what the bridge holds of the customer (a data-protection request): every
    /// conversation record (each routed number's, or --business's), its message excerpts
    /// and the agent's files, and the customer's dead letters; a live chat is ended first.
    Erase {
        #[command(flatten)]
        which: conversation::Which,
        /// How long the relay holding a live chat has to record its end.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Required: erasing cannot be undone.
        #[arg(long)]
        yes: bool,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Starts a WhatsApp conversation from the business side: an approved template to the
    /// customer and a Connect chat for the agent, through a running relay's API.
    Start {
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
        /// The business number that writes (one a route lists); the first route's
        /// sender when absent.
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
        Command::Serve => serve::run(ConfigSource::from_env()?).await,
        Command::Ingress => ingress().await,
        Command::Relay => relay().await,
        Command::Sender => sender().await,
        Command::Sandbox => waconnect_sandbox::run_from_env().await,
        Command::Check { offline, json } => {
            let rows = check::run(&ConfigSource::from_env()?, offline).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", check::table(&rows));
            }
            if rows.iter().any(|r| !r.ok) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Recover {
            range,
            dry_run,
            json,
        } => {
            let rows = recover::run(&ConfigSource::from_env()?, &range, dry_run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", recover::table(&rows));
            }
            Ok(())
        }
        Command::Dlq(Dlq::List { select, json }) => {
            let letters = dlq::list(&ConfigSource::from_env()?, &select).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", dlq::table(&letters));
            }
            Ok(())
        }
        Command::Dlq(Dlq::Redrive { select, act }) => take(select, act, Take::Redrive).await,
        Command::Dlq(Dlq::Purge { select, act }) => take(select, act, Take::Purge).await,
        Command::Dlq(Dlq::Show { message_id, queue }) => {
            let (letter, body) = dlq::show(&ConfigSource::from_env()?, queue, &message_id).await?;
            print!("{}", dlq::table(std::slice::from_ref(&letter)));
            println!("{body}");
            Ok(())
        }
        Command::Conversation(Conversation::Show { which, json }) => {
            let shown = conversation::show(&ConfigSource::from_env()?, &which).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", conversation::text(&shown));
            }
            Ok(())
        }
        Command::Conversation(Conversation::Release { which, json }) => {
            let released = conversation::release(&ConfigSource::from_env()?, &which).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&released)?);
            } else if released.is_empty() {
                println!("no relay holds a live conversation of this customer and number");
            } else {
                for r in &released {
                    println!(
                        "{}: released from {}; another relay adopts it",
                        r.conversation,
                        r.held_by.as_deref().unwrap_or("—")
                    );
                }
            }
            Ok(())
        }
        Command::Conversation(Conversation::End { which, wait, json }) => {
            let ended = conversation::end(&ConfigSource::from_env()?, &which, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ended)?);
            } else if ended.is_empty() {
                println!("no conversation recorded for this customer and number");
            } else {
                for e in &ended {
                    let how = match e.ended_by {
                        "relay" => "ended (the relay saw the customer leave)",
                        "store" => "ended in the store (no relay recorded it in time)",
                        _ => "was already over",
                    };
                    println!("{}: {how}", e.conversation);
                }
            }
            Ok(())
        }
        Command::Conversation(Conversation::Erase {
            which,
            wait,
            yes,
            json,
        }) => {
            if !yes {
                anyhow::bail!("erasing cannot be undone: say --yes");
            }
            let erased = conversation::erase(&ConfigSource::from_env()?, &which, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&erased)?);
            } else {
                println!(
                    "erased {} conversation record(s), {} message excerpt(s), {} file(s), {} dead letter(s)",
                    erased.records, erased.messages, erased.files, erased.dead_letters
                );
            }
            Ok(())
        }
        Command::Conversation(Conversation::Start {
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
            start_conversation(&api, &token, &request).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "waconnect",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

async fn take(select: dlq::Select, act: Act, how: Take) -> anyhow::Result<()> {
    if select.is_everything() && !act.all {
        anyhow::bail!(
            "this would take every dead letter: narrow it with --customer, --older-than or --id, or say --all"
        );
    }
    let taken = dlq::take(&ConfigSource::from_env()?, &select, how, act.dry_run).await?;
    if act.json {
        println!("{}", serde_json::to_string_pretty(&taken)?);
        return Ok(());
    }
    let verb = match (how, act.dry_run) {
        (Take::Redrive, false) => "redriven",
        (Take::Purge, false) => "purged",
        (Take::Redrive, true) => "would be redriven",
        (Take::Purge, true) => "would be purged",
    };
    print!("{}", dlq::table(&taken));
    println!("{} dead letter(s) {verb}", taken.len());
    Ok(())
}

async fn ingress() -> anyhow::Result<()> {
    let config = IngressConfig::from_env()?;
    telemetry::init_logging(&config.common.telemetry, "ingress")?;
    let listener = serve::listen("WACONNECT_INGRESS_BIND", config.bind).await?;
    let ran = waconnect_ingress::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}

async fn relay() -> anyhow::Result<()> {
    let config = waconnect_relay_worker::config_from(&ConfigSource::from_env()?)?;
    telemetry::init_logging(&config.worker.common.telemetry, "relay-worker")?;
    let listener =
        serve::listen(waconnect_relay_worker::OPS_BIND_VAR, config.worker.ops_bind).await?;
    let ran = waconnect_relay_worker::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}

async fn sender() -> anyhow::Result<()> {
    let config = waconnect_outbound_sender::config_from(&ConfigSource::from_env()?)?;
    telemetry::init_logging(&config.worker.common.telemetry, "outbound-sender")?;
    let listener = serve::listen(
        waconnect_outbound_sender::OPS_BIND_VAR,
        config.worker.ops_bind,
    )
    .await?;
    let ran = waconnect_outbound_sender::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}

async fn start_conversation(
    api: &str,
    token: &str,
    request: &waconnect_relay_worker::outreach::Outreach,
) -> anyhow::Result<()> {
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?
        .post(format!("{}/v1/conversations", api.trim_end_matches('/')))
        .bearer_auth(token)
        .json(request)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_well_formed() {
        Cli::command().debug_assert();
    }
}
