//! `load-tests`: datamailer's load harness. It starts datamailer as a user would (the release
//! binary, its own database per run), a fake SES v2 endpoint in-process (the real SDK talks to
//! it over HTTP), drives one or more scenarios, and writes `report.json`, `report.md` and SVG
//! plots into `load-tests/results/<time>/`.
//!
//!     cargo run -p load-tests --release -- all
//!     cargo run -p load-tests --release -- campaign --recipients 100000
//!     cargo run -p load-tests --release -- fake-ses --port 4599 --latency-ms 50

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datamailer_testkit::fake_ses::{Behaviour, FakeSes};

mod datamailer;
mod pg;
mod plot;
mod report;
mod sample;
mod scenarios;

use report::{Report, RunReport};
use scenarios::Harness;

#[derive(Parser)]
#[command(about = "datamailer's load harness: scenarios against the release binary and a fake SES")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The datamailer binary to run (default: the one beside this harness, i.e. the same
    /// target folder; `cargo build --release -p datamailer -p load-tests` builds both).
    #[arg(long, global = true, env = "DATAMAILER_BIN")]
    bin: Option<PathBuf>,
    /// Postgres, without a database name; each run creates and drops its own database.
    #[arg(
        long,
        global = true,
        env = "LOAD_TEST_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg: String,
    /// Where the report goes (default: load-tests/results/<UTC time>).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Keep each run's database for inspection.
    #[arg(long, global = true)]
    keep: bool,
    /// Small sizes: checks the harness itself in about two minutes (figures not comparable).
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario, at its default size.
    All,
    /// API accept rate, end to end through SES, and a queued backlog's burn-down.
    Transactional {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 50_000)]
        backlog: u64,
    },
    /// Snapshot and fan-out of one campaign, into the capture outbox and through fake SES.
    Campaign {
        #[arg(long, default_value_t = 100_000)]
        recipients: u64,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// Transactional latency while a campaign drains.
    Mixed {
        #[arg(long, default_value_t = 50_000)]
        recipients: u64,
        #[arg(long, default_value_t = 20)]
        tx_rate: u64,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// The configured SES rate held, by one process and by three.
    Rate {
        #[arg(long, value_delimiter = ',', default_values_t = [14.0, 500.0])]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// SES events (SNS envelopes) applied per second, at two campaign sizes.
    Feedback {
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
        sizes: Vec<u64>,
        #[arg(long, default_value_t = 30_000)]
        events: u64,
    },
    /// A connection cap of 4, slow SES and a throttling storm: no loss, no DLQ, recovery.
    Overload {
        #[arg(long, default_value_t = 30_000)]
        recipients: u64,
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        #[arg(long, default_value_t = 5)]
        storm_s: u64,
    },
    /// Cold start of `datamailer lambda` until it asks for its first event.
    Lambda {
        #[arg(long, default_value_t = 10)]
        runs: u32,
    },
    /// Only the fake SES v2 endpoint, for manual runs.
    FakeSes {
        #[arg(long, default_value_t = 4599)]
        port: u16,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of sends answered 429 (0..1).
        #[arg(long, default_value_t = 0.0)]
        throttle_rate: f64,
        /// Share of sends answered 500 (0..1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::FakeSes {
        port,
        latency_ms,
        throttle_rate,
        error_rate,
    } = cli.command
    {
        let behaviour = Behaviour {
            latency: Duration::from_millis(latency_ms),
            throttle_rate,
            error_rate,
            ..Default::default()
        };
        let fake = FakeSes::start(port, behaviour).await?;
        eprintln!("fake SES v2 at {} (Ctrl-C to stop)", fake.endpoint());
        tokio::signal::ctrl_c().await?;
        eprintln!(
            "{} sends accepted, {} throttled, {} errors",
            fake.accepted(),
            fake.throttled(),
            fake.errors()
        );
        return Ok(());
    }
    let bin = match cli.bin.clone() {
        Some(bin) => bin,
        None => std::env::current_exe()?.with_file_name("datamailer"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no datamailer binary at {} (cargo build --release -p datamailer -p load-tests, or --bin)",
        bin.display()
    );
    let started = chrono::Utc::now();
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "load-tests/results/{}",
            started.format("%Y%m%dT%H%M%SZ")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let h = Harness {
        bin: bin.canonicalize()?,
        pg: cli.pg.trim_end_matches('/').to_string(),
        out: out.clone(),
        keep_databases: cli.keep,
        quick: cli.quick,
    };
    let mut report = Report {
        started_at: started.to_rfc3339(),
        machine: machine(),
        binary: h.bin.display().to_string(),
        runs: vec![],
    };
    let q = |full: u64, quick: u64| if h.quick { quick } else { full };
    let all = matches!(cli.command, Command::All);
    let mut plan: Vec<Command> = vec![];
    if all {
        plan.extend([
            Command::Transactional {
                seconds: q(20, 5),
                concurrency: 32,
                backlog: q(50_000, 5_000),
            },
            Command::Campaign {
                recipients: q(100_000, 5_000),
                latency_ms: 50,
            },
            Command::Mixed {
                recipients: q(50_000, 5_000),
                tx_rate: 20,
                latency_ms: 50,
            },
            Command::Rate {
                rates: vec![14.0, 500.0],
                seconds: q(20, 5),
            },
            Command::Feedback {
                sizes: vec![10_000, q(100_000, 20_000)],
                events: q(30_000, 5_000),
            },
            Command::Overload {
                recipients: q(30_000, 5_000),
                latency_ms: 200,
                storm_s: q(5, 2),
            },
            Command::Lambda {
                runs: q(10, 3) as u32,
            },
        ]);
    } else {
        plan.push(cli.command);
    }
    let mut failures = vec![];
    for command in plan {
        let (name, result) = run(&h, command).await;
        match result {
            Ok(mut runs) => {
                for r in runs.iter_mut() {
                    plot::draw(&out, r)?;
                }
                report.runs.extend(runs);
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
        // Written after every scenario, so a long run shows its results as it goes.
        report.write(&out)?;
    }
    let missed: Vec<String> = report
        .runs
        .iter()
        .flat_map(|r| {
            r.targets
                .iter()
                .filter(|t| !t.met)
                .map(move |t| format!("{} {}: {} {}", r.scenario, r.variant, t.name, t.verdict))
        })
        .collect();
    println!("\nreport: {}/report.md", out.display());
    for m in &missed {
        println!("target missed: {m}");
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

async fn run(h: &Harness, command: Command) -> (&'static str, anyhow::Result<Vec<RunReport>>) {
    use scenarios::*;
    match command {
        Command::Transactional {
            seconds,
            concurrency,
            backlog,
        } => (
            "transactional",
            transactional::run(h, seconds, concurrency, backlog).await,
        ),
        Command::Campaign {
            recipients,
            latency_ms,
        } => ("campaign", campaign::run(h, recipients, latency_ms).await),
        Command::Mixed {
            recipients,
            tx_rate,
            latency_ms,
        } => (
            "mixed",
            mixed::run(h, recipients, tx_rate, latency_ms).await,
        ),
        Command::Rate { rates, seconds } => ("rate", rate::run(h, &rates, seconds).await),
        Command::Feedback { sizes, events } => ("feedback", feedback::run(h, &sizes, events).await),
        Command::Overload {
            recipients,
            latency_ms,
            storm_s,
        } => (
            "overload",
            overload::run(h, recipients, latency_ms, storm_s).await,
        ),
        Command::Lambda { runs } => ("lambda", lambda::run(h, runs).await),
        Command::All | Command::FakeSes { .. } => unreachable!("handled in main"),
    }
}

/// The machine the figures belong to.
fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    let load = read("/proc/loadavg");
    vec![
        ("cpu".into(), format!("{cpu} × {cores}")),
        ("memory".into(), mem),
        (
            "load average at start".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}
