//! `datamailer`: one binary, one subcommand per way of running it. This file only wires the
//! crates together; the behaviour lives in `core`, `runtime`, `actors` and `web`.

mod config;
mod database;
mod lambda;
mod ops;
mod services;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "datamailer",
    version,
    about = "Transactional and campaign email through Amazon SES"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Web and every worker in one process (the local default: Postgres queue, capture mailer).
    Serve,
    /// The HTTP service only.
    Web,
    /// Long-lived queue workers (default: every queue that has a worker).
    Worker {
        /// A queue to work (repeatable): transactional-email, campaign-email, ...
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
    /// The AWS Lambda bootstrap; the queue comes from DATAMAILER_QUEUE.
    Lambda,
    /// Apply database migrations.
    Migrate,
    /// Create or update an organization/audience/client scope and print a new API key (last line).
    Provision {
        #[arg(long)]
        org: String,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        client: String,
        /// A sender identity ID=EMAIL (EMAIL may be "Name <addr>"); repeatable.
        #[arg(long = "sender")]
        senders: Vec<String>,
        #[arg(long)]
        default_sender: Option<String>,
    },
    /// Put messages on a queue: one JSON body per line of stdin.
    Enqueue {
        #[arg(long)]
        queue: String,
    },
    /// Show messages the capture mailer stored instead of sending.
    Outbox {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Dead-letter queue tools.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Re-enqueue transactional messages stuck in `queued` or in `sending` past their lease.
    Reenqueue {
        #[arg(long, default_value_t = 5)]
        older_than_minutes: u64,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Each dead-lettered message with its body and the reason.
    List {
        #[arg(long)]
        queue: String,
    },
    /// Move every dead-lettered message back to its queue.
    Redrive {
        #[arg(long)]
        queue: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,aws=warn"));
    if std::env::var("AWS_LAMBDA_FUNCTION_NAME").is_ok() {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match config::Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("configuration error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => ops::serve(config).await,
        Command::Web => ops::web(config).await,
        Command::Worker { queues } => ops::worker(config, queues).await,
        Command::Lambda => lambda::run(config).await,
        Command::Migrate => ops::migrate(config).await,
        Command::Provision {
            org,
            audience,
            client,
            senders,
            default_sender,
        } => ops::provision(config, org, audience, client, senders, default_sender).await,
        Command::Enqueue { queue } => ops::enqueue(config, queue).await,
        Command::Outbox { json, limit } => ops::outbox(config, json, limit).await,
        Command::Dlq {
            action: DlqAction::List { queue },
        } => ops::dlq_list(config, queue).await,
        Command::Dlq {
            action: DlqAction::Redrive { queue },
        } => ops::dlq_redrive(config, queue).await,
        Command::Reenqueue {
            older_than_minutes,
            limit,
            dry_run,
        } => ops::reenqueue(config, older_than_minutes, limit, dry_run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
