//! Operations on runs from outside the orchestrator: cancel, logs, ownership.

use std::time::Duration;

use anyhow::{Result, anyhow};
use capstan_store::{RunStatus, TaskFinish, TaskStatus, now_millis};

use crate::workspace::Workspace;

/// `host:pid` of this process: recorded as the owner of the runs it drives.
pub(crate) fn owner_id() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".to_string())
}

/// Whether the orchestrator recorded as a run's owner is still alive. Only owners on this host
/// can be checked; a remote owner is assumed alive.
pub fn owner_alive(owner: &str) -> bool {
    let Some((host, pid)) = owner.rsplit_once(':') else {
        return false;
    };
    if host != hostname() {
        return true;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid as u32 == std::process::id() {
        return true;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Kills processes left over from a run whose orchestrator died (kill -9, power loss): every
/// step inherits `CAPSTAN_RUN_ID`, so its whole process tree can be found, grandchildren
/// included. Steps of remote jobs are spared: resume re-attaches to them. Called by resume before it runs the interrupted steps again. Returns how many
/// processes were killed. Spawning steps without a death signal keeps the spawn on the fast
/// path; this sweep pays the cost only when a run is resumed.
pub(crate) fn kill_leftover_processes(run_id: &str) -> usize {
    let needle = format!("CAPSTAN_RUN_ID={run_id}");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let remote_worker = format!("{}=1", capstan_exec::remote::WORKER_ENV);
        let mut vars = environ.split(|b| *b == 0);
        // Steps of remote jobs (a Ray head on this machine) live on and are re-attached to.
        if vars.clone().any(|var| var == remote_worker.as_bytes()) {
            continue;
        }
        if vars.any(|var| var == needle.as_bytes()) {
            let target = nix::unistd::Pid::from_raw(pid as i32);
            if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

#[derive(Debug, PartialEq, Eq)]
pub enum CancelResult {
    /// The run's orchestrator was asked to cancel it; it stops its steps and records the end.
    Requested,
    /// Nothing drove the run: it was marked cancelled directly.
    Cancelled,
    /// The run had already ended.
    AlreadyEnded(RunStatus),
}

/// Cancels a run. If an orchestrator drives it, that orchestrator is asked (it polls the store)
/// and this waits up to `wait` for it to finish; otherwise the run and its unfinished tasks are
/// marked cancelled here.
pub async fn cancel_run(ws: &Workspace, run_id: &str, wait: Duration) -> Result<CancelResult> {
    let store = &ws.store;
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| anyhow!("run {run_id} not found"))?;
    if run.status.is_terminal() {
        return Ok(CancelResult::AlreadyEnded(run.status));
    }
    if let Some(owner) = run.owner.as_deref().filter(|o| owner_alive(o)) {
        store.request_cancel(run_id).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(r) = store.get_run(run_id).await?
                && r.status.is_terminal()
            {
                return Ok(CancelResult::Requested);
            }
        }
        tracing::info!(
            run_id,
            owner,
            "cancel requested; the orchestrator has not finished yet"
        );
        return Ok(CancelResult::Requested);
    }
    for t in store.list_tasks(run_id).await? {
        if t.status.is_terminal() {
            continue;
        }
        let finish = TaskFinish::without_outputs(
            &t.name,
            &t.step,
            t.iteration,
            TaskStatus::Cancelled,
            None,
            Some("cancelled"),
        );
        store.task_finished(run_id, finish).await?;
    }
    store
        .set_run_status(
            run_id,
            RunStatus::Cancelled,
            Some("cancelled"),
            now_millis(),
        )
        .await?;
    Ok(CancelResult::Cancelled)
}

/// The logs of a run's tasks (all of them, or one), oldest attempt first, each preceded by a
/// header line when there is more than one.
pub async fn read_logs(
    ws: &Workspace,
    run_id: &str,
    task: Option<&str>,
) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let tasks = ws.store.list_tasks(run_id).await?;
    if let Some(name) = task
        && !tasks.iter().any(|t| t.name == name)
    {
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        return Err(anyhow!(
            "run {run_id} has no task `{name}` (tasks: {})",
            names.join(", ")
        ));
    }
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| task.is_none_or(|n| n == t.name)) {
        for attempt in 1..=t.attempts {
            let Ok((_, uri)) = ws.artifacts.log_path(run_id, &t.name, attempt) else {
                continue;
            };
            // A silent step has no log file: its log is empty.
            let bytes = ws.artifacts.read_log(&uri).await.unwrap_or_default();
            out.push((t.name.clone(), attempt, bytes));
        }
    }
    Ok(out)
}
