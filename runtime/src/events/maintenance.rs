//! The maintainer: passes, the lease and each task's runs.

use crate::maintenance::TaskRun;

pub fn pass_skipped(me: &str, holder: &str) {
    tracing::debug!(
        me,
        holder,
        "maintenance pass skipped: another maintainer holds the lease"
    );
    metrics::counter!("datamailer_maintenance_passes_skipped_total").increment(1);
}

pub fn lease_lost(me: &str, holder: &str) {
    tracing::warn!(
        me,
        holder,
        "maintainer lease taken over mid-pass; stopping this pass"
    );
}

pub fn release_failed(error: &anyhow::Error) {
    tracing::warn!(
        error = format!("{error:#}"),
        "could not give the maintainer lease back; it expires by itself"
    );
}

pub fn task_ran(run: &TaskRun) {
    let outcome = if run.ok { "ok" } else { "error" };
    if run.ok && run.acted_on > 0 && run.routine {
        tracing::info!(task = run.task, acted_on = run.acted_on, detail = %run.detail, "maintenance task did its work");
    } else if run.ok && run.acted_on > 0 {
        tracing::warn!(task = run.task, acted_on = run.acted_on, detail = %run.detail, "maintenance recovered work");
    } else if run.ok {
        tracing::debug!(task = run.task, "maintenance task ran: nothing to do");
    } else {
        tracing::error!(task = run.task, error = %run.detail, "maintenance task failed");
    }
    metrics::counter!("datamailer_maintenance_runs_total", "task" => run.task, "outcome" => outcome)
        .increment(1);
    metrics::counter!("datamailer_maintenance_acted_on_total", "task" => run.task)
        .increment(run.acted_on);
    metrics::histogram!("datamailer_maintenance_duration_seconds", "task" => run.task)
        .record(run.seconds);
    if run.ok {
        metrics::gauge!("datamailer_maintenance_last_success_timestamp_seconds", "task" => run.task)
            .set(chrono::Utc::now().timestamp() as f64);
    }
}
