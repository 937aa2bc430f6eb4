//! `datamailer`: one binary, one subcommand per way of running it. This file only wires the
//! crates together; the behaviour lives in `core`, `runtime`, `actors` and `web`.

mod commands;
mod config;
mod database;
mod lambda;
mod mappings;
mod roles;
mod secrets;
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
    /// Required, except inside Lambda (`AWS_LAMBDA_RUNTIME_API` set), where the runtime starts
    /// `bootstrap` with no arguments and no subcommand means `lambda`.
    #[command(subcommand)]
    command: Option<Command>,
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
    Migrate {
        /// Apply nothing: list pending (or changed) migrations and exit non-zero if there are any.
        #[arg(long)]
        check: bool,
    },
    /// Move the original Django datamailer's data here (ids kept; re-run safe; see
    /// docs/operations.md). The first run needs a freshly migrated database.
    ImportOriginal {
        /// The original's database: its DATABASE_URL (postgres://..., sqlite:////path) or the
        /// path of its SQLite file.
        #[arg(long)]
        from: String,
        /// Read both sides and print the counts; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per batch (one read and one write statement each).
        #[arg(long, default_value_t = 5000)]
        batch_size: i64,
    },
    /// Run the runtime's maintenance (stale-row recovery and the other periodic tasks): one pass
    /// with `--once`, else every interval until a signal. Only one maintainer acts at a time.
    Maintain {
        #[arg(long)]
        once: bool,
    },
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
        /// Where the client's webhooks go (http or https); "" clears it.
        #[arg(long)]
        webhook_url: Option<String>,
        /// The Bearer token and signing key of the client's webhooks.
        #[arg(long)]
        webhook_token: Option<String>,
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
    /// Pause a queue: its workers (processes and Lambda) take nothing new until `resume`;
    /// in-flight work finishes. For rollbacks: `datamailer pause --queue campaign-email`.
    Pause {
        /// The queue to pause (campaign-email, transactional-email, ...).
        #[arg(long, required_unless_present = "list")]
        queue: Option<String>,
        /// Why (shown by `pause --list`).
        #[arg(long, default_value = "")]
        reason: String,
        /// List the paused queues instead.
        #[arg(long, conflicts_with = "queue")]
        list: bool,
    },
    /// Resume a paused queue.
    Resume {
        #[arg(long)]
        queue: String,
    },
    /// Offline checks of the CloudFormation template and parameter files (no AWS calls).
    ValidateInfra {
        #[arg(long, default_value = "infra/cloudformation/datamailer-mvp.json")]
        template: std::path::PathBuf,
        #[arg(long, default_value = "infra/config")]
        config_dir: std::path::PathBuf,
    },
    /// Post-deploy checks: PASS/FAIL/HUMAN lines; exit code 1 if any check failed.
    Smoke {
        /// The public base URL of the web service.
        #[arg(long)]
        base_url: String,
        /// The CloudFormation stack: its outputs drive the SES and SNS checks.
        #[arg(long)]
        stack_name: Option<String>,
        /// Where to send the round-trip probe (default: the stack's TransactionalEmailQueueUrl).
        #[arg(long, env = "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL")]
        transactional_queue_url: Option<String>,
        #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
        region: String,
        /// Seconds to wait for the worker to record the probe.
        #[arg(long, default_value_t = 60)]
        probe_wait: u64,
    },
    /// Who we no longer mail: SES's account suppression list imported, listed, added, removed.
    Suppression {
        #[command(subcommand)]
        action: SuppressionAction,
    },
    /// The account-wide reputation guard: its rates and state; `resume` ends a pause.
    Reputation {
        #[command(subcommand)]
        action: Option<ReputationAction>,
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

#[derive(Subcommand)]
enum SuppressionAction {
    /// Pull the SES account-level suppression list (ListSuppressedDestinations) into ours.
    Import {
        /// Read the list and print the counts; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Suppressed contacts, newest first.
    List {
        #[arg(long, value_enum)]
        reason: Option<commands::suppression::Reason>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Suppress an address (recorded in its history as the operator's).
    Add {
        email: String,
        #[arg(long, value_enum, default_value = "bounce")]
        reason: commands::suppression::Reason,
        /// Why (kept with the event).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Mail an address again (both suppressions unless --reason says which).
    Remove {
        email: String,
        #[arg(long, value_enum)]
        reason: Option<commands::suppression::Reason>,
        /// Also remove it from the SES account suppression list (DeleteSuppressedDestination).
        #[arg(long)]
        ses: bool,
    },
}

#[derive(Subcommand)]
enum ReputationAction {
    /// End the account-wide pause: the campaigns it paused carry on; sends count from now on.
    Resume,
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
    let command = match cli.command {
        Some(c) => c,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    init_tracing();
    if let Command::ValidateInfra {
        template,
        config_dir,
    } = &command
    {
        return datamailer_deploy::validate::run(template, config_dir);
    }
    if let Command::Smoke {
        base_url,
        stack_name,
        transactional_queue_url,
        region,
        probe_wait,
    } = command
    {
        // Talks only to HTTP and AWS: no database, no service configuration.
        let opts = datamailer_deploy::smoke::SmokeOptions {
            base_url,
            stack_name,
            transactional_queue_url,
            region,
            endpoint_url: std::env::var("AWS_ENDPOINT_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            probe_wait: std::time::Duration::from_secs(probe_wait),
        };
        let checks = datamailer_deploy::smoke::run(&opts, true).await;
        return if datamailer_deploy::smoke::any_failed(&checks) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut config = match config::Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("configuration error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    // DATABASE_URL from Secrets Manager (Lambda workers, hosts) when it is not set directly.
    if !matches!(command, Command::Serve) {
        if let Err(e) = secrets::resolve(&mut config).await {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match command {
        Command::Serve => commands::run::serve(config).await,
        Command::Web => commands::run::web(config).await,
        Command::Worker { queues } => commands::run::worker(config, queues).await,
        Command::Lambda => lambda::run(config).await,
        Command::Migrate { check } => commands::migrate::migrate(config, check).await,
        Command::ImportOriginal {
            from,
            dry_run,
            batch_size,
        } => {
            let options = commands::import_original::Options {
                from,
                dry_run,
                batch_size,
            };
            commands::import_original::import_original(config, options).await
        }
        Command::Maintain { once } => commands::maintain::maintain(config, once).await,
        Command::Provision {
            org,
            audience,
            client,
            senders,
            default_sender,
            webhook_url,
            webhook_token,
        } => {
            commands::provision::provision(
                config,
                org,
                audience,
                client,
                senders,
                default_sender,
                (webhook_url, webhook_token),
            )
            .await
        }
        Command::Enqueue { queue } => commands::queues::enqueue(config, queue).await,
        Command::Outbox { json, limit } => commands::outbox::outbox(config, json, limit).await,
        Command::Dlq {
            action: DlqAction::List { queue },
        } => commands::queues::dlq_list(config, queue).await,
        Command::Dlq {
            action: DlqAction::Redrive { queue },
        } => commands::queues::dlq_redrive(config, queue).await,
        Command::Reenqueue {
            older_than_minutes,
            limit,
            dry_run,
        } => commands::queues::reenqueue(config, older_than_minutes, limit, dry_run).await,
        Command::Pause { list: true, .. } => commands::pause::paused(config).await,
        Command::Pause { queue, reason, .. } => {
            commands::pause::pause(config, queue.unwrap_or_default(), reason).await
        }
        Command::Resume { queue } => commands::pause::resume(config, queue).await,
        Command::Suppression { action } => match action {
            SuppressionAction::Import { dry_run } => {
                commands::suppression::import(config, dry_run).await
            }
            SuppressionAction::List { reason, limit } => {
                commands::suppression::list(config, reason, limit).await
            }
            SuppressionAction::Add {
                email,
                reason,
                note,
            } => commands::suppression::add(config, email, reason, note).await,
            SuppressionAction::Remove { email, reason, ses } => {
                commands::suppression::remove(config, email, reason, ses).await
            }
        },
        Command::Reputation { action: None } => commands::reputation::status(config).await,
        Command::Reputation {
            action: Some(ReputationAction::Resume),
        } => commands::reputation::resume(config).await,
        Command::Smoke { .. } => unreachable!("handled above"),
        Command::ValidateInfra { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
