//! Text and JSON renderings of runs, tasks and artifacts for the command line.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capstan_store::{ArtifactRecord, RunRecord, RunStatus, TaskRecord, TaskStatus};
use serde_json::{Value, json};

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{:.2}s", (e - s).max(0) as f64 / 1000.0),
        (Some(s), None) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(s);
            format!("{:.1}s…", (now - s).max(0) as f64 / 1000.0)
        }
        _ => "-".to_string(),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub fn summary(run_id: &str, status: RunStatus, tasks: &[TaskRecord], elapsed: Duration) -> String {
    let mut counts: Vec<(TaskStatus, usize)> = Vec::new();
    for t in tasks {
        match counts.iter_mut().find(|(s, _)| *s == t.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.status, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!(
        "run {run_id} {status} in {:.2}s ({} tasks: {})",
        elapsed.as_secs_f64(),
        tasks.len(),
        parts.join(", ")
    )
}

fn task_json(t: &TaskRecord) -> Value {
    let artifacts = |o: &capstan_store::TaskOutputs| -> Value {
        o.artifacts
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    json!({"id": a.id, "uri": a.uri, "digest": a.digest}),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
            .into()
    };
    json!({
        "id": t.id,
        "name": t.name,
        "step": t.step,
        "iteration": t.iteration,
        "status": t.status,
        "attempts": t.attempts,
        "exit_code": t.exit_code,
        "executor": t.executor,
        "cache_key": t.cache_key,
        "cached_from": t.cached_from,
        "message": t.message,
        "resources": t.resources,
        "started_at": t.started_at,
        "ended_at": t.ended_at,
        "log_uri": t.log_uri,
        "inputs": {"parameters": t.inputs.parameters, "artifacts": artifacts(&t.inputs)},
        "outputs": {"parameters": t.outputs.parameters, "artifacts": artifacts(&t.outputs)},
    })
}

pub fn run_json(run: &RunRecord, tasks: &[TaskRecord]) -> Value {
    json!({
        "id": run.id,
        "pipeline": run.pipeline_name,
        "pipeline_digest": run.pipeline_digest,
        "experiment_id": run.experiment_id.to_string(),
        "status": run.status,
        "message": run.message,
        "params": run.params,
        "source": run.source,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

pub fn runs_json(runs: &[RunRecord]) -> Value {
    runs.iter()
        .map(|r| {
            json!({
                "id": r.id,
                "pipeline": r.pipeline_name,
                "status": r.status,
                "message": r.message,
                "created_at": r.created_at,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
            })
        })
        .collect()
}

/// Marks a run that says `running` but whose orchestrator is gone.
fn status_text(run: &RunRecord) -> String {
    let orphaned = !run.status.is_terminal()
        && run
            .owner
            .as_deref()
            .is_none_or(|o| !capstan_engine::owner_alive(o))
        && run.started_at.is_some();
    if orphaned {
        format!(
            "{} (stopped; `capstan resume {}`)",
            run.status,
            &run.id[..8.min(run.id.len())]
        )
    } else {
        run.status.to_string()
    }
}

pub fn runs_table(runs: &[RunRecord]) -> String {
    let mut out = format!(
        "{:<32}  {:<20}  {:<10}  {:<20}  {}\n",
        "RUN", "PIPELINE", "STATUS", "CREATED", "DURATION"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<32}  {:<20}  {:<10}  {:<20}  {}",
            r.id,
            r.pipeline_name,
            status_text(r),
            time(r.created_at),
            duration(r.started_at, r.ended_at)
        );
    }
    out
}

pub fn run_text(run: &RunRecord, tasks: &[TaskRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", run.id);
    let _ = writeln!(
        out,
        "pipeline  {} ({})",
        run.pipeline_name,
        short(&run.pipeline_digest)
    );
    let _ = writeln!(out, "status    {}", status_text(run));
    if let Some(m) = &run.message {
        let _ = writeln!(out, "message   {m}");
    }
    let _ = writeln!(out, "created   {}", time(run.created_at));
    let _ = writeln!(out, "duration  {}", duration(run.started_at, run.ended_at));
    if let Some(obj) = run.params.as_object().filter(|o| !o.is_empty()) {
        let params: Vec<String> = obj.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "params    {}", params.join(" "));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24}  {:<10}  {:>8}  {:>9}  OUTPUTS / MESSAGE",
        "TASK", "STATUS", "ATTEMPTS", "DURATION"
    );
    for t in tasks {
        let mut outputs: Vec<String> = t
            .outputs
            .parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outputs.extend(
            t.outputs
                .artifacts
                .iter()
                .map(|(k, a)| format!("{k}={}", short(&a.digest))),
        );
        let mut detail = outputs.join(" ");
        if let Some(m) = &t.message {
            if !detail.is_empty() {
                detail.push_str("  ");
            }
            detail.push_str(m);
        }
        let _ = writeln!(
            out,
            "{:<24}  {:<10}  {:>8}  {:>9}  {}",
            t.name,
            t.status.to_string(),
            t.attempts,
            duration(t.started_at, t.ended_at),
            detail
        );
    }
    out
}

pub fn artifacts_table(list: &[ArtifactRecord]) -> String {
    let mut out = format!(
        "{:<32}  {:<16}  {:<10}  {:>10}  {:<14}  {}\n",
        "ARTIFACT", "NAME", "TYPE", "SIZE", "DIGEST", "URI"
    );
    for a in list {
        let _ = writeln!(
            out,
            "{:<32}  {:<16}  {:<10}  {:>10}  {:<14}  {}",
            a.id,
            a.name,
            a.type_name,
            a.size,
            short(&a.digest),
            a.uri
        );
    }
    out
}
