//! The Kubernetes executor: each attempt is a `batch/v1` Job whose one pod runs the step
//! wrapper (`capstan step-exec`, see [`crate::remote`]), which moves inputs and outputs through
//! the artifact store.
//!
//! A Job gets `backoffLimit: 0` (capstan retries, not the cluster), `restartPolicy: Never`,
//! `ttlSecondsAfterFinished`, labels naming the run, task and attempt, and the namespace, image
//! pull policy, service account, node selector and tolerations of the settings. Its name is
//! derived from the run, task and attempt only ([`job_name`]), so the engine can record it before
//! the Job exists and `capstan resume` can find it again ([`Executor::reattach`]).
//!
//! The executor watches the Job to its end, streams the pod's log into the task log, reads the
//! step's exit code from the pod's container status, and deletes the Job (propagation
//! `Background`, so its pod goes too) on cancel and timeout.
//!
//! Tested over HTTP against a local mock of the API server (`tests/kubernetes.rs`), never
//! against a live cluster here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::KubernetesConfig;
use crate::local::{DRAIN_LIMIT, LazyLog, LineWriter};
use crate::remote::{Envelope, store_env, worker_argv};
use crate::{Executor, LogSink, Outcome, TaskSpec};

/// The name of the step's container in the pod.
pub const CONTAINER: &str = "step";

/// Seconds a finished Job stays before the cluster removes it, unless configured.
pub const DEFAULT_TTL_SECONDS: i32 = 3600;

/// Pod waiting reasons that will not resolve by themselves: the attempt fails at once.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How often the pod is looked up until its container starts.
const POD_POLL: Duration = Duration::from_millis(500);

/// Runs steps as Kubernetes Jobs.
pub struct KubernetesExecutor {
    settings: KubernetesConfig,
    /// The `capstan` binary as the pod finds it.
    capstan: String,
    /// Extra environment of the pod: the object store's credentials.
    worker_env: Vec<(String, String)>,
    conn: OnceCell<Result<Conn, String>>,
}

#[derive(Clone)]
struct Conn {
    client: Client,
    namespace: String,
    url: String,
}

impl KubernetesExecutor {
    /// An executor with these settings (already overlaid with the environment). Nothing is
    /// contacted until [`Executor::preflight`] or the first step.
    pub fn new(settings: KubernetesConfig) -> KubernetesExecutor {
        KubernetesExecutor {
            settings,
            capstan: "capstan".to_string(),
            worker_env: store_env(),
            conn: OnceCell::new(),
        }
    }

    /// The path of the `capstan` binary in the image (default: `capstan` on its `PATH`).
    pub fn with_capstan_path(mut self, path: impl Into<String>) -> KubernetesExecutor {
        self.capstan = path.into();
        self
    }

    /// Replaces the variables passed to every pod (by default the `AWS_*`, `GOOGLE_*` and
    /// `AZURE_*` variables of capstan's environment).
    pub fn with_worker_env(mut self, env: Vec<(String, String)>) -> KubernetesExecutor {
        self.worker_env = env;
        self
    }

    async fn conn(&self) -> Result<Conn, String> {
        self.conn
            .get_or_init(|| connect(&self.settings))
            .await
            .clone()
    }

    /// The Job that runs `spec`, as it is sent to the API server.
    pub async fn manifest(&self, spec: &TaskSpec) -> Result<Job, String> {
        let conn = self.conn().await?;
        self.job(spec, &conn.namespace)
    }

    fn job(&self, spec: &TaskSpec, namespace: &str) -> Result<Job, String> {
        let envelope = Envelope::from_spec(spec)?;
        let image = spec
            .image
            .clone()
            .or_else(|| self.settings.image.clone())
            .ok_or_else(|| {
                format!(
                    "step {} has no `image`, which the kubernetes executor needs",
                    spec.task
                )
            })?;
        Ok(job_manifest(&JobInput {
            name: &job_name(spec),
            namespace,
            spec,
            image: &image,
            command: worker_argv(&self.capstan, &envelope),
            env: &self.worker_env,
            settings: &self.settings,
        }))
    }

    /// Follows the Job `name` to its end: log streaming, cancel and timeout.
    async fn follow(
        &self,
        conn: &Conn,
        name: &str,
        spec: &TaskSpec,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Outcome {
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let stop_logs = CancellationToken::new();
        let mut logs = tokio::spawn(stream_logs(
            pods.clone(),
            name.to_string(),
            spec.task.clone(),
            Arc::new(Mutex::new(LazyLog::new(&spec.log_path))),
            sink,
            stop_logs.clone(),
        ));
        let deadline = async {
            match spec.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let mut fatal = None;
        let outcome = tokio::select! {
            end = wait_job(&jobs, &pods, name) => end,
            _ = cancel.cancelled() => {
                delete_job(&jobs, name).await;
                Outcome::Cancelled
            }
            _ = deadline => {
                delete_job(&jobs, name).await;
                Outcome::TimedOut(spec.timeout.unwrap_or_default())
            }
            reason = &mut logs => {
                fatal = Some(reason.ok().flatten());
                Outcome::Cancelled
            }
        };
        let outcome = match fatal {
            // The pod cannot start: stop the Job rather than wait for the cluster to give up.
            Some(Some(reason)) => {
                delete_job(&jobs, name).await;
                Outcome::SpawnFailed(reason)
            }
            // The log stream ended first, as it does when the container exits: the Job decides.
            Some(None) => {
                tokio::select! {
                    end = wait_job(&jobs, &pods, name) => end,
                    _ = cancel.cancelled() => { delete_job(&jobs, name).await; Outcome::Cancelled }
                }
            }
            None => {
                // A stopped Job's pod may take its grace period to go: stop reading at once.
                if matches!(outcome, Outcome::Cancelled | Outcome::TimedOut(_)) {
                    stop_logs.cancel();
                }
                // The container has ended: let the log stream drain, bounded.
                if tokio::time::timeout(DRAIN_LIMIT, &mut logs).await.is_err() {
                    stop_logs.cancel();
                    let _ = tokio::time::timeout(DRAIN_LIMIT, &mut logs).await;
                }
                outcome
            }
        };
        logs.abort();
        outcome
    }
}

#[async_trait]
impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn needs_image(&self) -> bool {
        true
    }

    fn default_image(&self) -> Option<&str> {
        self.settings.image.as_deref()
    }

    fn handoff(&self) -> bool {
        true
    }

    async fn preflight(&self) -> Result<(), String> {
        let conn = self.conn().await?;
        match tokio::time::timeout(Duration::from_secs(15), conn.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "cannot reach the Kubernetes API server at {}: {}",
                conn.url,
                describe(&e)
            )),
            Err(_) => Err(format!(
                "the Kubernetes API server at {} did not answer within 15s",
                conn.url
            )),
        }
    }

    fn remote_handle(&self, spec: &TaskSpec) -> Option<String> {
        Some(job_name(spec))
    }

    async fn reattach(
        &self,
        spec: TaskSpec,
        handle: &str,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Option<Outcome> {
        let conn = self.conn().await.ok()?;
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        match jobs.get_opt(handle).await {
            Ok(Some(_)) => Some(self.follow(&conn, handle, &spec, cancel, sink).await),
            Ok(None) => None,
            Err(e) => Some(Outcome::SpawnFailed(format!(
                "cannot look up Job {handle}: {}",
                describe(&e)
            ))),
        }
    }

    async fn run(
        &self,
        spec: TaskSpec,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Outcome {
        if cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(reason) => return Outcome::SpawnFailed(reason),
        };
        let job = match self.job(&spec, &conn.namespace) {
            Ok(j) => j,
            Err(reason) => return Outcome::SpawnFailed(reason),
        };
        let name = job_name(&spec);
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), &conn.namespace);
        if let Err(e) = jobs.create(&PostParams::default(), &job).await {
            return Outcome::SpawnFailed(format!(
                "cannot create Job {name} in namespace {}: {}",
                conn.namespace,
                describe(&e)
            ));
        }
        debug!(run_id = %spec.run_id, task = %spec.task, attempt = spec.attempt, job = %name, namespace = %conn.namespace, "created job");
        self.follow(&conn, &name, &spec, cancel, sink).await
    }
}

async fn connect(settings: &KubernetesConfig) -> Result<Conn, String> {
    let options = KubeConfigOptions {
        context: settings.context.clone(),
        ..Default::default()
    };
    let config = match &settings.kubeconfig {
        Some(paths) => {
            let mut merged: Option<Kubeconfig> = None;
            for path in std::env::split_paths(paths) {
                let one = Kubeconfig::read_from(&path)
                    .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                merged = Some(match merged {
                    None => one,
                    Some(m) => m
                        .merge(one)
                        .map_err(|e| format!("cannot merge kubeconfig {}: {e}", path.display()))?,
                });
            }
            let kubeconfig =
                merged.ok_or_else(|| "the kubeconfig setting names no file".to_string())?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", paths.display()))?
        }
        None if settings.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?,
        None => Config::infer().await.map_err(|e| {
            format!("no Kubernetes configuration: not in a cluster, and no kubeconfig ({e})")
        })?,
    };
    let url = config.cluster_url.to_string();
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)
        .map_err(|e| format!("cannot configure a client for {url}: {}", describe(&e)))?;
    Ok(Conn {
        client,
        namespace,
        url: url.trim_end_matches('/').to_string(),
    })
}

/// The Job name of an attempt: `capstan-<run>-<task>-<attempt>-<hash>`, a valid DNS label (at
/// most 63 characters) that depends only on the run id, the task name and the attempt.
pub fn job_name(spec: &TaskSpec) -> String {
    let run: String = spec.run_id.chars().take(12).collect();
    let mut task: String = spec
        .task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    while task.contains("--") {
        task = task.replace("--", "-");
    }
    let task = task.trim_matches('-');
    // Distinguishes tasks whose names differ only in dropped or replaced characters.
    let hash = blake3::hash(spec.task.as_bytes()).to_hex();
    format!(
        "capstan-{}-{task}-{}-{}",
        run.to_ascii_lowercase(),
        spec.attempt,
        &hash[..8]
    )
}

/// What a Job manifest is built from.
pub struct JobInput<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a TaskSpec,
    pub image: &'a str,
    pub command: Vec<String>,
    pub env: &'a [(String, String)],
    pub settings: &'a KubernetesConfig,
}

/// The `batch/v1` Job of one attempt. Pure: the same input gives the same manifest.
pub fn job_manifest(input: &JobInput<'_>) -> Job {
    let spec = input.spec;
    let settings = input.settings;
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/managed-by", "capstan".to_string()),
        ("capstan/run-id", spec.run_id.clone()),
        ("capstan/task", label_value(&spec.task)),
        ("capstan/attempt", spec.attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let annotations: BTreeMap<String, String> = [("capstan/task".to_string(), spec.task.clone())]
        .into_iter()
        .collect();
    let env: Vec<EnvVar> = input
        .env
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect();
    let resources = resources(&spec.resources);
    let tolerations: Vec<Toleration> = settings
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: t.toleration_seconds,
        })
        .collect();
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(input.image.to_string()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(input.command.clone()),
        env: (!env.is_empty()).then_some(env),
        resources,
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(input.name.to_string()),
            namespace: Some(input.namespace.to_string()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(
                settings
                    .ttl_seconds_after_finished
                    .unwrap_or(DEFAULT_TTL_SECONDS),
            ),
            // A safety net for when capstan is gone: capstan itself stops the Job at the timeout.
            active_deadline_seconds: spec.timeout.map(|t| t.as_secs().max(1) as i64 + 60),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".to_string()),
                    service_account_name: settings.service_account.clone(),
                    node_selector: (!settings.node_selector.is_empty())
                        .then(|| settings.node_selector.clone()),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A task name as a label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends. The exact name is in the `capstan/task` annotation.
fn label_value(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Requests equal to limits: CPU in millicores, memory in bytes, GPUs as `nvidia.com/gpu`.
fn resources(r: &serde_json::Value) -> Option<ResourceRequirements> {
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = r.get("cpu").and_then(serde_json::Value::as_f64)
        && cpu > 0.0
    {
        amounts.insert(
            "cpu".to_string(),
            Quantity(format!("{}m", (cpu * 1000.0).round() as u64)),
        );
    }
    if let Some(memory) = r.get("memory").and_then(serde_json::Value::as_u64)
        && memory > 0
    {
        amounts.insert("memory".to_string(), Quantity(memory.to_string()));
    }
    if let Some(gpu) = r.get("gpu").and_then(serde_json::Value::as_u64)
        && gpu > 0
    {
        amounts.insert("nvidia.com/gpu".to_string(), Quantity(gpu.to_string()));
    }
    if amounts.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        limits: Some(amounts.clone()),
        requests: Some(amounts),
        ..Default::default()
    })
}

/// How a Job stands, from its status.
enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

fn job_state(job: &Job) -> JobState {
    let Some(status) = &job.status else {
        return JobState::Running;
    };
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return JobState::Succeeded,
            "Failed" | "FailureTarget" => {
                let reason = [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ");
                return JobState::Failed(reason);
            }
            _ => {}
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        return JobState::Succeeded;
    }
    if status.failed.unwrap_or(0) > 0 {
        return JobState::Failed(String::new());
    }
    JobState::Running
}

/// Watches the Job until it has succeeded or failed, re-watching when the server closes the
/// stream; the outcome of a failed Job is its container's exit code.
async fn wait_job(jobs: &Api<Job>, pods: &Api<Pod>, name: &str) -> Outcome {
    let mut failures = 0u32;
    loop {
        let job = match jobs.get_opt(name).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                return Outcome::SpawnFailed(format!("Job {name} disappeared before it finished"));
            }
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Outcome::SpawnFailed(format!("lost the Job {name}: {}", describe(&e)));
                }
                warn!(job = %name, error = %describe(&e), "cannot read job, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(outcome) = ended(pods, name, &job).await {
            return outcome;
        }
        let version = job.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290);
        let mut events = match jobs.watch(&params, &version).await {
            Ok(s) => s.boxed(),
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Outcome::SpawnFailed(format!(
                        "cannot watch Job {name}: {}",
                        describe(&e)
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures = 0;
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Added(job)) | Ok(WatchEvent::Modified(job)) => {
                    if let Some(outcome) = ended(pods, name, &job).await {
                        return outcome;
                    }
                }
                Ok(WatchEvent::Deleted(_)) => {
                    return Outcome::SpawnFailed(format!(
                        "Job {name} was deleted before it finished"
                    ));
                }
                Ok(WatchEvent::Bookmark(_)) => {}
                // 410 Gone and other watch errors: read the Job again and watch anew.
                Ok(WatchEvent::Error(e)) => {
                    debug!(job = %name, code = e.code, "watch error, re-watching");
                    break;
                }
                Err(e) => {
                    debug!(job = %name, error = %describe(&e), "watch stream broke, re-watching");
                    break;
                }
            }
        }
    }
}

async fn ended(pods: &Api<Pod>, name: &str, job: &Job) -> Option<Outcome> {
    match job_state(job) {
        JobState::Running => None,
        JobState::Succeeded => Some(Outcome::Exited(0)),
        JobState::Failed(reason) => {
            if let Some(code) = exit_code(pods, name).await {
                return Some(Outcome::Exited(code));
            }
            Some(Outcome::SpawnFailed(if reason.is_empty() {
                format!("Job {name} failed")
            } else {
                format!("Job {name} failed: {reason}")
            }))
        }
    }
}

/// The exit code of the step container of the Job's pod, once it terminated.
async fn exit_code(pods: &Api<Pod>, job: &str) -> Option<i32> {
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?;
    list.items.iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|s| s.name == CONTAINER)?
            .state
            .as_ref()?
            .terminated
            .as_ref()
            .map(|t| t.exit_code)
    })
}

/// What a pod's step container is doing.
enum PodState {
    /// No pod yet, or its container has not started.
    Waiting,
    /// The container cannot start; the text says why.
    Stuck(String),
    /// The container runs or ran: its log can be read.
    Started(String),
}

fn pod_state(pods: &[Pod]) -> PodState {
    for pod in pods {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let Some(status) = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|all| all.iter().find(|s| s.name == CONTAINER))
        else {
            continue;
        };
        let Some(state) = &status.state else {
            continue;
        };
        if state.running.is_some() || state.terminated.is_some() {
            return PodState::Started(name);
        }
        if let Some(waiting) = &state.waiting
            && let Some(reason) = waiting.reason.as_deref()
            && FATAL_WAITING.contains(&reason)
        {
            let detail = waiting.message.as_deref().unwrap_or_default();
            return PodState::Stuck(format!(
                "pod {name} cannot start its container ({reason}){}{detail}; image {}",
                if detail.is_empty() { "" } else { ": " },
                status.image
            ));
        }
    }
    PodState::Waiting
}

/// Waits for the Job's pod to start, then follows its log into the task log until the
/// container ends (or `stop`). Returns why the pod cannot start, if it cannot.
async fn stream_logs(
    pods: Api<Pod>,
    job: String,
    task: String,
    log: Arc<Mutex<LazyLog>>,
    sink: Option<LogSink>,
    stop: CancellationToken,
) -> Option<String> {
    let selector = ListParams::default().labels(&format!("job-name={job}"));
    let pod = loop {
        if stop.is_cancelled() {
            return None;
        }
        match pods.list(&selector).await {
            Ok(list) => match pod_state(&list.items) {
                PodState::Started(name) => break name,
                PodState::Stuck(reason) => return Some(reason),
                PodState::Waiting => {}
            },
            Err(e) => debug!(job = %job, error = %describe(&e), "cannot list pods, retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POD_POLL) => {}
            _ = stop.cancelled() => return None,
        }
    };
    let params = LogParams {
        container: Some(CONTAINER.to_string()),
        follow: true,
        ..Default::default()
    };
    let mut reader = match pods.log_stream(&pod, &params).await {
        Ok(r) => r,
        Err(e) => {
            // The log is lost, not the step: the Job still decides.
            warn!(job = %job, pod = %pod, error = %describe(&e), "cannot stream the pod's log");
            return None;
        }
    };
    let mut out = LineWriter::new(&task, log, sink);
    let mut buf = vec![0u8; 8192];
    loop {
        let read = tokio::select! {
            r = reader.read(&mut buf) => r,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => out.push(&buf[..n]),
            Err(e) => {
                warn!(job = %job, pod = %pod, error = %e, "pod log stream broke");
                break;
            }
        }
    }
    out.finish();
    None
}

/// Deletes the Job and, in the background, its pod. A Job that is already gone is fine.
async fn delete_job(jobs: &Api<Job>, name: &str) {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => debug!(job = %name, "deleted job"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(job = %name, error = %describe(&e), "cannot delete job"),
    }
}

/// A client error as a short sentence: the API server's message when it sent one.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({})", status.message, status.code)
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let next = s.to_string();
                if !text.contains(&next) {
                    text = format!("{text}: {next}");
                }
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: &str, attempt: u32) -> TaskSpec {
        TaskSpec {
            run_id: "0123456789ABCDEF0123456789abcdef".into(),
            task: task.into(),
            attempt,
            argv: vec![],
            env: vec![],
            workdir: "/".into(),
            timeout: None,
            log_path: "/dev/null".into(),
            image: None,
            resources: serde_json::Value::Null,
            mounts: vec![],
            handoff: None,
        }
    }

    #[test]
    fn job_names_are_dns_labels_that_depend_only_on_the_attempt() {
        let a = job_name(&spec("train[0]", 2));
        assert_eq!(a, job_name(&spec("train[0]", 2)));
        assert!(a.starts_with("capstan-0123456789ab-train-0-2-"), "{a}");
        assert_ne!(a, job_name(&spec("train-0", 2)));
        assert_ne!(a, job_name(&spec("train[0]", 3)));
        let long = job_name(&spec(&format!("outer/{}", "x".repeat(200)), 1000));
        for name in [&a, &long] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.contains("--"), "{name}");
        }
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("train[3]"), "train_3");
        assert_eq!(label_value("a/b"), "a_b");
        assert_eq!(label_value(&"y".repeat(100)).len(), 63);
    }

    #[test]
    fn resources_become_requests_and_limits() {
        let r = resources(&serde_json::json!({"cpu": 0.5, "memory": 1048576, "gpu": 2})).unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(limits["cpu"], Quantity("500m".into()));
        assert_eq!(limits["memory"], Quantity("1048576".into()));
        assert_eq!(limits["nvidia.com/gpu"], Quantity("2".into()));
        assert_eq!(r.requests.unwrap(), limits);
        assert!(resources(&serde_json::Value::Null).is_none());
    }
}
