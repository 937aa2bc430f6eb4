//! While a scenario runs: every 200 ms, its progress (emails done), the database's
//! connections, datamailer's memory and the CPU of datamailer and of the Postgres backends
//! serving it. The series feed the plots; the peaks and totals feed the report. It also
//! drives the progress bar.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datamailer_testkit::fake_ses::FakeSes;
use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::datamailer::{cpu_ms, proc_stats};
use crate::pg;

const EVERY: Duration = Duration::from_millis(200);

/// How much work is done so far (emails sent, events applied).
pub type Progress = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<u64>> + Send + Sync>;

/// A progress counter read with one SQL query on the harness's own connection.
pub fn sql_progress(db: Arc<Client>, sql: &'static str) -> Progress {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { Ok(db.query_one(sql, &[]).await?.get::<_, i64>(0) as u64) })
    })
}

/// Sends the fake SES has accepted.
pub fn ses_progress(fake: &FakeSes) -> Progress {
    let fake = fake.clone();
    Arc::new(move || {
        let n = fake.accepted();
        Box::pin(async move { Ok(n) })
    })
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub done: u64,
    pub connections: u32,
    pub rss_mib: f64,
}

/// What the sampler saw over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub samples: Vec<Sample>,
    pub peak_connections: u32,
    /// The largest peak RSS (VmHWM) of any one datamailer process.
    pub peak_rss_mib: f64,
    /// CPU of the datamailer processes and of the Postgres backends that served them.
    pub cpu_ms_datamailer: u64,
    pub cpu_ms_postgres: u64,
}

#[derive(Default)]
struct State {
    observed: Observed,
    pids: Vec<u32>,
    proc_cpu: HashMap<u32, u64>,
    backend_cpu: HashMap<u32, u64>,
    backend_start: HashMap<u32, u64>,
}

pub struct Sampler {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    bar: ProgressBar,
}

impl Sampler {
    /// Starts sampling `database`; `total` sizes the progress bar (0: a spinner).
    pub fn start(
        label: &str,
        admin: Client,
        database: &str,
        progress: Progress,
        total: u64,
    ) -> Self {
        let bar = if total > 0 {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix:>24} [{elapsed_precise}] {bar:40} {pos:>8}/{len:8} {per_sec:>12} {msg}",
                )
                .expect("template"),
            )
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_prefix(label.to_string());
        let state = Arc::new(Mutex::new(State::default()));
        let (st, db, b) = (state.clone(), database.to_string(), bar.clone());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let done = progress().await.unwrap_or(0);
                let backends = pg::backends(&admin, &db).await.unwrap_or_default();
                let mut s = st.lock().expect("sampler");
                for pid in &backends {
                    if let Some(ms) = cpu_ms(*pid) {
                        s.backend_start.entry(*pid).or_insert(ms);
                        s.backend_cpu.insert(*pid, ms);
                    }
                }
                let mut rss = 0.0;
                for pid in s.pids.clone() {
                    if let Some(p) = proc_stats(pid) {
                        rss += p.rss_kib as f64 / 1024.0;
                        let peak = p.peak_rss_kib as f64 / 1024.0;
                        s.observed.peak_rss_mib = s.observed.peak_rss_mib.max(peak);
                        s.proc_cpu.insert(pid, p.cpu_ms);
                    }
                }
                let connections = backends.len() as u32;
                s.observed.peak_connections = s.observed.peak_connections.max(connections);
                s.observed.samples.push(Sample {
                    t_s: start.elapsed().as_secs_f64(),
                    done,
                    connections,
                    rss_mib: rss,
                });
                b.set_position(done);
                b.set_message(format!("{connections} pg conns, {rss:.0} MiB"));
            }
        });
        Self { state, task, bar }
    }

    /// Counts this datamailer process in the memory and CPU figures.
    pub fn watch(&self, pid: u32) {
        let mut s = self.state.lock().expect("sampler");
        s.pids.push(pid);
        if let Some(p) = proc_stats(pid) {
            s.proc_cpu.insert(pid, p.cpu_ms);
        }
    }

    /// Takes one last sample's worth of CPU and stops.
    pub fn finish(self) -> Observed {
        self.task.abort();
        self.bar.finish();
        let mut s = self.state.lock().expect("sampler");
        for pid in s.pids.clone() {
            if let Some(p) = proc_stats(pid) {
                s.observed.peak_rss_mib =
                    s.observed.peak_rss_mib.max(p.peak_rss_kib as f64 / 1024.0);
                s.proc_cpu.insert(pid, p.cpu_ms);
            }
        }
        let backend: u64 = s
            .backend_cpu
            .iter()
            .map(|(pid, ms)| ms - s.backend_start.get(pid).copied().unwrap_or(*ms))
            .sum();
        s.observed.cpu_ms_datamailer = s.proc_cpu.values().sum();
        s.observed.cpu_ms_postgres = backend;
        s.observed.clone()
    }
}
