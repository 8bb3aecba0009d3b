//! The run loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use capstan_exec::{ContainerExecutor, Executor, KubernetesExecutor, LocalExecutor, RayExecutor};
use capstan_plan::{Action, Machine, Outcome, Recorded, TaskId, TaskResult};
use capstan_spec::{Pipeline, Value};
use capstan_store::{NewRun, RunRecord, RunStatus, TaskFinish, TaskRecord, TaskStatus, now_millis};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ops::{kill_leftover_processes, owner_alive, owner_id};
use crate::task::{self, Attempt, AttemptResult, StepTracking};
use crate::tracking::Endpoint;
use crate::workspace::Workspace;

/// How a run is carried out. Stored with the run so that `capstan resume` continues it the same
/// way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOptions {
    pub parallelism: usize,
    pub no_cache: bool,
    /// Executor for steps that name none (overrides the pipeline's default).
    pub executor: Option<String>,
    /// Directory that relative commands and `workdir`s resolve against: the pipeline file's.
    pub base_dir: PathBuf,
}

/// Receives progress as a run advances, for display. Called after each change is durable.
pub trait Observer: Send + Sync {
    fn task_changed(&self, _task: &str, _status: TaskStatus, _message: Option<&str>) {}
    fn log(&self, _task: &str, _chunk: &[u8]) {}
}

pub struct NullObserver;

impl Observer for NullObserver {}

pub struct Engine {
    pub(crate) ws: Workspace,
    executors: HashMap<String, Arc<dyn Executor>>,
    pub(crate) observer: Arc<dyn Observer>,
    /// The tracking server steps log to; `None` serves one in process while a run is driven.
    tracking_uri: Option<String>,
}

/// What a spawned attempt sends back to the loop.
pub(crate) enum Msg {
    Done {
        task: TaskId,
        attempt: u32,
        result: Result<AttemptResult>,
    },
    RetryDue {
        task: TaskId,
    },
}

/// Stands in for an executor whose configuration is wrong, so that only runs that use it fail,
/// with the reason.
struct Unavailable {
    name: &'static str,
    reason: String,
}

#[async_trait::async_trait]
impl Executor for Unavailable {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn preflight(&self) -> Result<(), String> {
        Err(self.reason.clone())
    }

    async fn run(
        &self,
        _spec: capstan_exec::TaskSpec,
        _cancel: CancellationToken,
        _sink: Option<capstan_exec::LogSink>,
    ) -> capstan_exec::Outcome {
        capstan_exec::Outcome::SpawnFailed(self.reason.clone())
    }
}

/// blake3 of the pipeline's canonical JSON: the pipeline's version.
pub fn pipeline_digest(spec: &Value) -> String {
    format!(
        "blake3:{}",
        blake3::hash(spec.to_string().as_bytes()).to_hex()
    )
}

impl Engine {
    pub fn new(ws: Workspace, observer: Arc<dyn Observer>) -> Engine {
        let mut executors: HashMap<String, Arc<dyn Executor>> = HashMap::new();
        executors.insert("local".to_string(), Arc::new(LocalExecutor::default()));
        // The engine socket is only contacted when a step runs in a container; a bad
        // CONTAINER_HOST or DOCKER_HOST is reported then, naming the variable's value.
        let container: Arc<dyn Executor> =
            match ContainerExecutor::from_config(&ws.executors.container) {
                Ok(c) => Arc::new(c),
                Err(reason) => Arc::new(Unavailable {
                    name: "container",
                    reason,
                }),
            };
        executors.insert("container".to_string(), container);
        // Like the engine socket, the Ray head is only contacted by runs that use it.
        let ray: Arc<dyn Executor> = match RayExecutor::from_config(&ws.executors.ray) {
            Ok(r) => Arc::new(r),
            Err(reason) => Arc::new(Unavailable {
                name: "ray",
                reason,
            }),
        };
        executors.insert("ray".to_string(), ray);
        // Contacts the cluster only in preflight, for runs that use it.
        executors.insert(
            "kubernetes".to_string(),
            Arc::new(KubernetesExecutor::new(ws.executors.kubernetes.clone())),
        );
        Engine {
            ws,
            executors,
            observer,
            tracking_uri: std::env::var(crate::tracking::TRACKING_URI_ENV)
                .ok()
                .filter(|uri| !uri.is_empty()),
        }
    }

    /// Points the steps at this tracking server (one that reaches the same store) instead of
    /// the one the engine serves in process on loopback.
    pub fn set_tracking_uri(&mut self, uri: Option<String>) {
        self.tracking_uri = uri;
    }

    pub fn register_executor(&mut self, name: &str, executor: Arc<dyn Executor>) {
        self.executors.insert(name.to_string(), executor);
    }

    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// Records a new run. [`Engine::drive`] then runs it.
    pub async fn submit(
        &self,
        pipeline: &Pipeline,
        params: IndexMap<String, Value>,
        options: &RunOptions,
    ) -> Result<RunRecord> {
        self.check_executors(pipeline, options)?;
        self.preflight_executors(pipeline, options).await?;
        let spec = serde_json::to_value(pipeline).context("cannot serialise pipeline")?;
        let run = NewRun {
            id: uuid::Uuid::new_v4().simple().to_string(),
            pipeline_name: pipeline.name.clone(),
            pipeline_digest: pipeline_digest(&spec),
            pipeline_spec: spec,
            source: pipeline.source.clone(),
            params: serde_json::to_value(&params)?,
            options: serde_json::to_value(options)?,
            created_at: now_millis(),
        };
        Ok(self.ws.store.create_run(run).await?)
    }

    fn executor_name<'a>(
        &self,
        pipeline: &'a Pipeline,
        step: &'a capstan_spec::Step,
        options: &'a RunOptions,
    ) -> &'a str {
        step.executor
            .as_deref()
            .or(options.executor.as_deref())
            .or(pipeline.executor.as_deref())
            .unwrap_or("local")
    }

    fn check_executors(&self, pipeline: &Pipeline, options: &RunOptions) -> Result<()> {
        for step in pipeline.all_steps() {
            let name = self.executor_name(pipeline, step, options);
            if let Some(executor) = self.executors.get(name) {
                if executor.needs_image()
                    && step.image.is_none()
                    && executor.default_image().is_none()
                {
                    bail!(
                        "step `{}`: the {name} executor needs an `image` for the step \
                         (or a default image in the workspace config)",
                        step.name
                    );
                }
            } else {
                let mut known: Vec<&str> = self.executors.keys().map(String::as_str).collect();
                known.sort();
                bail!(
                    "step `{}`: unknown executor `{name}` (available: {})",
                    step.name,
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Asks every executor the pipeline uses whether it can run steps now, so that an unreachable
    /// container engine fails the run before its first step.
    async fn preflight_executors(&self, pipeline: &Pipeline, options: &RunOptions) -> Result<()> {
        let mut names: Vec<&str> = pipeline
            .all_steps()
            .map(|step| self.executor_name(pipeline, step, options))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            if let Some(executor) = self.executors.get(name) {
                executor
                    .preflight()
                    .await
                    .map_err(|reason| anyhow!("the {name} executor cannot run steps: {reason}"))?;
            }
        }
        Ok(())
    }

    /// Runs (or resumes) a run to its end. `cancel` counts cancel requests (Ctrl-C): the first
    /// cancels the steps and lets exit handlers run, the second cancels those too.
    pub async fn drive(&self, run_id: &str, mut cancel: watch::Receiver<u32>) -> Result<RunStatus> {
        let store = &self.ws.store;
        let run = store
            .get_run(run_id)
            .await?
            .ok_or_else(|| anyhow!("run {run_id} not found"))?;
        if run.status == RunStatus::Succeeded {
            return Ok(run.status);
        }
        if let Some(owner) = &run.owner
            && owner != &owner_id()
            && owner_alive(owner)
        {
            bail!(
                "run {run_id} is being driven by process {owner}; cancel it or wait for it to end"
            );
        }
        let pipeline: Pipeline = serde_json::from_value(run.pipeline_spec.clone())
            .context("the stored pipeline of this run cannot be read")?;
        let params: IndexMap<String, Value> = serde_json::from_value(run.params.clone())
            .context("the stored params of this run cannot be read")?;
        let options: RunOptions = serde_json::from_value(run.options.clone())
            .context("the stored options of this run cannot be read")?;
        self.check_executors(&pipeline, &options)?;
        self.preflight_executors(&pipeline, &options).await?;

        // A run that ended failed or cancelled is retried: its failed, cancelled and skipped
        // tasks run again. A run that stopped part way keeps every recorded result.
        let retry_failed = run.status.is_terminal();
        let tasks = store.list_tasks(run_id).await?;
        if tasks.iter().any(|t| t.status == TaskStatus::Running) {
            let killed = kill_leftover_processes(run_id);
            if killed > 0 {
                tracing::info!(
                    run_id,
                    killed,
                    "killed processes left over from the stopped orchestrator"
                );
            }
        }
        let mut history = Vec::with_capacity(tasks.len());
        // Attempts whose remote job may outlive the orchestrator: they are launched again with
        // the same attempt number, and re-attach to their job instead of submitting it twice.
        let mut reattach: HashMap<String, (u32, String)> = HashMap::new();
        for t in &tasks {
            let mut attempts = t.attempts;
            if t.status == TaskStatus::Running {
                let msg = match &t.remote_handle {
                    Some(handle) => {
                        reattach.insert(t.name.clone(), (t.attempts, handle.clone()));
                        attempts = t.attempts.saturating_sub(1);
                        format!(
                            "attempt {} was interrupted (orchestrator stopped); re-attaching to its remote job {handle}",
                            t.attempts
                        )
                    }
                    None => format!(
                        "attempt {} was interrupted (orchestrator stopped); it runs again",
                        t.attempts
                    ),
                };
                store.task_pending(run_id, &t.name, Some(&msg)).await?;
            }
            history.push((t.name.clone(), recorded(t, retry_failed), attempts));
        }
        if run.cancel_requested {
            store.clear_cancel(run_id).await?;
        }
        store.set_run_owner(run_id, Some(&owner_id())).await?;
        store
            .set_run_status(run_id, RunStatus::Running, None, now_millis())
            .await?;

        let pipeline = Arc::new(pipeline);
        let parallelism = options.parallelism.max(1);
        let machine = Machine::restore(pipeline.clone(), params, run_id, parallelism, history);
        let endpoint = Endpoint::start(&self.ws, self.tracking_uri.as_deref()).await?;
        let tracking = StepTracking {
            uri: endpoint.uri.clone(),
            experiment_id: run.experiment_id,
        };
        let result = self
            .run_loop(run_id, machine, &options, &tracking, &mut cancel, reattach)
            .await;
        drop(endpoint);
        let _ = store.set_run_owner(run_id, None).await;
        result
    }

    async fn run_loop(
        &self,
        run_id: &str,
        mut machine: Machine,
        options: &RunOptions,
        tracking: &StepTracking,
        cancel: &mut watch::Receiver<u32>,
        mut reattach: HashMap<String, (u32, String)>,
    ) -> Result<RunStatus> {
        let store = &self.ws.store;
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut tokens: HashMap<TaskId, CancellationToken> = HashMap::new();
        let mut seen_cancels = *cancel.borrow();
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(500));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cancel_open = true;
        let mut first_failure: Option<String> = None;
        loop {
            for action in machine.poll() {
                match action {
                    Action::Launch { task, attempt } => {
                        let token = CancellationToken::new();
                        tokens.insert(task, token.clone());
                        let handle = reattach
                            .remove(machine.task(task).name)
                            .filter(|(n, _)| *n == attempt)
                            .map(|(_, handle)| handle);
                        let prepared = self
                            .prepare(&machine, task, attempt, options, run_id, tracking, token)
                            .map(|p| Attempt {
                                reattach: handle,
                                ..p
                            });
                        let tx = tx.clone();
                        let ctx = self.task_env();
                        match prepared {
                            Ok(prepared) => {
                                tokio::spawn(async move {
                                    let (task, n) = (prepared.task, prepared.attempt);
                                    let result = task::execute(&ctx, prepared).await;
                                    let _ = tx.send(Msg::Done {
                                        task,
                                        attempt: n,
                                        result,
                                    });
                                });
                            }
                            Err(e) => {
                                let result = Ok(AttemptResult::Failed {
                                    message: e.to_string(),
                                    exit_code: None,
                                });
                                let _ = tx.send(Msg::Done {
                                    task,
                                    attempt,
                                    result,
                                });
                            }
                        }
                    }
                    Action::ScheduleRetry { task, delay } => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send(Msg::RetryDue { task });
                        });
                    }
                    Action::Skip { task, reason } => {
                        self.record_never_run(run_id, &machine, task, TaskStatus::Skipped, &reason)
                            .await?;
                    }
                    Action::Fail { task, message } => {
                        let name = machine.task(task).name.to_string();
                        first_failure
                            .get_or_insert_with(|| format!("step `{name}` failed: {message}"));
                        self.record_never_run(run_id, &machine, task, TaskStatus::Failed, &message)
                            .await?;
                    }
                    Action::CancelTask { task, reason } => {
                        self.record_never_run(
                            run_id,
                            &machine,
                            task,
                            TaskStatus::Cancelled,
                            &reason,
                        )
                        .await?;
                    }
                    Action::Kill { task } => {
                        if let Some(t) = tokens.get(&task) {
                            t.cancel();
                        }
                    }
                    Action::Finish { outcome } => {
                        let (status, message) = match outcome {
                            Outcome::Succeeded => (RunStatus::Succeeded, None),
                            Outcome::Failed => (RunStatus::Failed, first_failure.clone()),
                            Outcome::Cancelled => {
                                (RunStatus::Cancelled, Some("cancelled".to_string()))
                            }
                        };
                        store
                            .set_run_status(run_id, status, message.as_deref(), now_millis())
                            .await?;
                        return Ok(status);
                    }
                }
            }

            let msg = tokio::select! {
                msg = rx.recv() => msg,
                changed = cancel.changed(), if cancel_open => {
                    if changed.is_err() {
                        cancel_open = false;
                        continue;
                    }
                    let now = *cancel.borrow();
                    for _ in seen_cancels..now {
                        machine.cancel();
                    }
                    seen_cancels = now;
                    continue;
                }
                _ = poll.tick() => {
                    if let Ok(Some(run)) = store.get_run(run_id).await
                        && run.cancel_requested && seen_cancels == 0 {
                            seen_cancels = 1;
                            machine.cancel();
                        }
                    continue;
                }
            };
            let Some(msg) = msg else {
                bail!("internal error: task channel closed")
            };
            match msg {
                Msg::RetryDue { task } => machine.on_retry_due(task),
                Msg::Done {
                    task,
                    attempt,
                    result,
                } => {
                    tokens.remove(&task);
                    let result = match result {
                        Ok(r) => r,
                        Err(e) => {
                            // The store or artifact store failed: nothing more can be recorded.
                            for t in tokens.values() {
                                t.cancel();
                            }
                            return Err(e.context(format!(
                                "cannot record task `{}`; the run stays resumable with `capstan resume {run_id}`",
                                machine.task(task).name
                            )));
                        }
                    };
                    let plan_result = self
                        .record_attempt(run_id, &machine, task, attempt, result, &mut first_failure)
                        .await?;
                    machine.on_finished(task, plan_result);
                }
            }
        }
    }

    fn task_env(&self) -> task::Env {
        task::Env {
            ws: self.ws.clone(),
            executors: self.executors.clone(),
            observer: self.observer.clone(),
        }
    }

    /// Everything an attempt needs from the machine, resolved now so the attempt runs on its own.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        machine: &Machine,
        task: TaskId,
        attempt: u32,
        options: &RunOptions,
        run_id: &str,
        tracking: &StepTracking,
        cancel: CancellationToken,
    ) -> Result<Attempt> {
        let view = machine.task(task);
        let mut step = view.step.clone();
        let executor = self
            .executor_name(machine.pipeline(), &step, options)
            .to_string();
        // The executor's default image counts as the step's own: it goes into the cache key.
        if step.image.is_none() {
            step.image = self
                .executors
                .get(&executor)
                .and_then(|e| e.default_image())
                .map(String::from);
        }
        let mut bindings = Vec::new();
        // The `for_each` source was consumed when the step expanded; resolving it again for
        // every iteration would copy the whole list once per item.
        let sources = step
            .for_each
            .as_ref()
            .map(|f| f.sources())
            .unwrap_or_default();
        let templates = step
            .templates()
            .into_iter()
            .filter(|t| !sources.iter().any(|s| std::ptr::eq(*t, *s)));
        for r in templates.flat_map(|t| t.refs()) {
            if bindings.iter().any(|(seen, _)| seen == r) {
                continue;
            }
            let b = machine
                .binding(task, r)
                .map_err(|e| anyhow!("cannot resolve `{{{{ {r} }}}}`: {e}"))?;
            bindings.push((r.clone(), b));
        }
        Ok(Attempt {
            run_id: run_id.to_string(),
            task,
            name: view.name.to_string(),
            iteration: view.index.map(|i| i as i64),
            attempt,
            cache: step.cache && !options.no_cache,
            step,
            bindings,
            executor,
            base_dir: options.base_dir.clone(),
            cancel,
            tracking: tracking.clone(),
            reattach: None,
        })
    }

    async fn record_never_run(
        &self,
        run_id: &str,
        machine: &Machine,
        task: TaskId,
        status: TaskStatus,
        message: &str,
    ) -> Result<()> {
        let view = machine.task(task);
        self.ws
            .store
            .task_finished(
                run_id,
                finish(
                    view.name,
                    &view.step.name,
                    view.index,
                    status,
                    None,
                    Some(message),
                ),
            )
            .await?;
        self.observer.task_changed(view.name, status, Some(message));
        Ok(())
    }

    /// Makes an attempt's end durable (success was already recorded by the attempt itself) and
    /// translates it for the machine.
    async fn record_attempt(
        &self,
        run_id: &str,
        machine: &Machine,
        task: TaskId,
        attempt: u32,
        result: AttemptResult,
        first_failure: &mut Option<String>,
    ) -> Result<TaskResult> {
        let store = &self.ws.store;
        let view = machine.task(task);
        let name = view.name.to_string();
        Ok(match result {
            AttemptResult::Succeeded { outputs, cached } => {
                let status = if cached {
                    TaskStatus::Cached
                } else {
                    TaskStatus::Succeeded
                };
                self.observer.task_changed(&name, status, None);
                TaskResult::Succeeded { outputs, cached }
            }
            AttemptResult::Failed { message, exit_code } => {
                let message = format!("attempt {attempt}: {message}");
                match machine.retry_delay(task) {
                    Some(delay) => {
                        let note = format!(
                            "{message}; retrying in {}",
                            humantime::format_duration(delay)
                        );
                        store.task_pending(run_id, &name, Some(&note)).await?;
                        self.observer
                            .task_changed(&name, TaskStatus::Pending, Some(&note));
                    }
                    None => {
                        let f = finish(
                            &name,
                            &view.step.name,
                            view.index,
                            TaskStatus::Failed,
                            exit_code,
                            Some(&message),
                        );
                        store.task_finished(run_id, f).await?;
                        first_failure
                            .get_or_insert_with(|| format!("step `{name}` failed: {message}"));
                        self.observer
                            .task_changed(&name, TaskStatus::Failed, Some(&message));
                    }
                }
                TaskResult::Failed { message }
            }
            AttemptResult::Cancelled => {
                let f = finish(
                    &name,
                    &view.step.name,
                    view.index,
                    TaskStatus::Cancelled,
                    None,
                    Some("cancelled while running"),
                );
                store.task_finished(run_id, f).await?;
                self.observer
                    .task_changed(&name, TaskStatus::Cancelled, None);
                TaskResult::Cancelled
            }
        })
    }
}

fn finish(
    name: &str,
    step: &str,
    index: Option<usize>,
    status: TaskStatus,
    exit_code: Option<i32>,
    message: Option<&str>,
) -> TaskFinish {
    TaskFinish::without_outputs(
        name,
        step,
        index.map(|i| i as i64),
        status,
        exit_code,
        message,
    )
}

/// How a stored task replays on resume.
fn recorded(t: &TaskRecord, retry_failed: bool) -> Recorded {
    let outputs = || task::plan_outputs(&t.outputs);
    match t.status {
        TaskStatus::Succeeded => Recorded::Succeeded(outputs()),
        TaskStatus::Cached => Recorded::Cached(outputs()),
        TaskStatus::Failed if !retry_failed => {
            Recorded::Failed(t.message.clone().unwrap_or_else(|| "failed".to_string()))
        }
        TaskStatus::Skipped if !retry_failed => Recorded::Skipped,
        _ => Recorded::Unfinished,
    }
}
