//! Running datamailer as a user would: the release binary, configured by environment, one
//! process per role (`serve`, `worker`, `lambda`), its log in the run's folder.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The binary and the environment every process of one run shares.
#[derive(Clone)]
pub struct Datamailer {
    pub bin: PathBuf,
    pub logs: PathBuf,
    env: Vec<(String, String)>,
}

/// One running datamailer process.
pub struct Process {
    pub name: String,
    pub pid: u32,
    child: Child,
}

impl Datamailer {
    pub fn new(bin: &Path, logs: &Path, database_url: &str) -> Self {
        let env = [
            ("DATABASE_URL", database_url),
            ("RUST_LOG", "warn"),
            ("PUBLIC_BASE_URL", "https://mail.example.com"),
            // The harness sends far faster than a client would; a real deployment keeps it on.
            ("DATAMAILER_MAILER", "capture"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "load-test"),
            ("AWS_SECRET_ACCESS_KEY", "load-test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            bin: bin.to_path_buf(),
            logs: logs.to_path_buf(),
            env,
        }
    }

    /// Sets (or replaces) one environment variable for every process started afterwards.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sends through the fake SES at `endpoint` instead of the capture outbox.
    pub fn ses(&mut self, endpoint: &str, rate: f64) -> &mut Self {
        self.set("DATAMAILER_MAILER", "ses")
            .set("AWS_ENDPOINT_URL", endpoint)
            .set("DATAMAILER_SES_MAX_SEND_RATE", rate)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command to completion and returns its stdout (`migrate`, `provision`).
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(args)
            .output()
            .await
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "datamailer {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-lived process; its stdout and stderr go to `<logs>/<name>.log`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<Process> {
        self.spawn_with(name, args, &[])
    }

    /// [`Self::spawn`] with extra environment for this process only.
    pub fn spawn_with(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Process> {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let mut cmd = self.command(args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the process has no pid")?;
        Ok(Process {
            name: name.to_string(),
            pid,
            child,
        })
    }
}

impl Process {
    /// Waits until `url` answers 2xx (the process is up), failing if the process exits.
    pub async fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); see its log",
                    self.name
                );
            }
            if let Ok(r) = http.get(url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not answer {url} within 30 s", self.name)
    }

    /// SIGTERM, then waits for the graceful shutdown (SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("{} did not stop within {grace:?} of SIGTERM", self.name);
            }
        }
        Ok(())
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// What the kernel says about a process: resident memory and CPU time so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub cpu_ms: u64,
}

/// `/proc/<pid>` figures, or `None` once the process is gone.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        rss_kib: field("VmRSS:"),
        peak_rss_kib: field("VmHWM:"),
        cpu_ms: cpu_ms(pid)?,
    })
}

/// User + system CPU of a process (or a Postgres backend) in milliseconds.
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1000 / ticks)
}
