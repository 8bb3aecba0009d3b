//! The Ray executor: each attempt is one Ray job, submitted through the Jobs REST API of the
//! cluster's dashboard (`POST /api/jobs/`, `GET /api/jobs/{id}`, `GET /api/jobs/{id}/logs`,
//! `POST /api/jobs/{id}/stop`).
//!
//! The job's entrypoint is `capstan step-exec` (see [`crate::remote`]): the worker fetches the
//! step's inputs from the artifact store, runs the step, and stores its outputs, so the store must
//! be one that the Ray nodes reach too (`s3://`, or `file://` on a one-machine cluster). The
//! `capstan` binary must exist on the node that runs the entrypoint: by default the path of the
//! running binary, which is right for a head on this machine; on a real cluster put capstan on
//! the nodes' `PATH` (or in their image) and set `CAPSTAN_RAY_WORKER_BINARY=capstan`.
//!
//! The submission id is chosen by capstan ([`RayExecutor::submission_id`]) and recorded before the
//! job is submitted, so that `capstan resume` re-attaches to a job that outlived its orchestrator.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{ExecutorsConfig, RayConfig};
use crate::remote::{Envelope, store_env, worker_argv};
use crate::{Executor, LogSink, Outcome, TaskSpec};

/// Where `ray job submit` looks when `RAY_ADDRESS` is not set.
pub const DEFAULT_RAY_ADDRESS: &str = "http://127.0.0.1:8265";

/// How long the head may not answer before a running attempt is given up as lost.
const LOST_CONTACT: Duration = Duration::from_secs(60);

/// After a step's timeout, how long the worker has to stop the step itself and report it,
/// before capstan stops the job.
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// Runs steps as Ray jobs.
#[derive(Debug, Clone)]
pub struct RayExecutor {
    address: String,
    worker_binary: String,
    poll: Duration,
    client: reqwest::Client,
}

/// The part of `GET /api/jobs/{id}` that capstan reads.
#[derive(Debug, Deserialize)]
struct JobDetails {
    status: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    driver_exit_code: Option<i32>,
}

#[derive(Debug, Deserialize)]
struct JobLogs {
    logs: String,
}

/// What one look at a job found.
enum Poll {
    Running,
    Ended(Outcome),
    Gone(String),
    Unreachable(String),
}

impl RayExecutor {
    /// An executor for the dashboard at `address` (`http://host:8265`) whose jobs run
    /// `worker_binary step-exec ...`.
    pub fn new(address: &str, worker_binary: &str) -> Result<RayExecutor, String> {
        let address = normalise_address(address)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot create an HTTP client: {e}"))?;
        Ok(RayExecutor {
            address,
            worker_binary: worker_binary.to_string(),
            poll: Duration::from_millis(250),
            client,
        })
    }

    /// Configured the way Ray's own tools are: `RAY_ADDRESS` (default
    /// `http://127.0.0.1:8265`), and `CAPSTAN_RAY_WORKER_BINARY` for the capstan binary the
    /// nodes run (default: this binary's path).
    pub fn from_env() -> Result<RayExecutor, String> {
        Self::from_config(&ExecutorsConfig::default().with_process_env().ray)
    }

    /// The executor for these settings (already overlaid with `RAY_ADDRESS`, see
    /// [`ExecutorsConfig::with_env`]); the address defaults to [`DEFAULT_RAY_ADDRESS`].
    pub fn from_config(config: &RayConfig) -> Result<RayExecutor, String> {
        let address = config
            .address
            .clone()
            .unwrap_or_else(|| DEFAULT_RAY_ADDRESS.to_string());
        let binary = match std::env::var("CAPSTAN_RAY_WORKER_BINARY") {
            Ok(b) if !b.is_empty() => b,
            _ => std::env::current_exe()
                .map_err(|e| format!("cannot find the capstan binary for Ray workers: {e}"))?
                .display()
                .to_string(),
        };
        RayExecutor::new(&address, &binary).map_err(|e| format!("Ray address {address}: {e}"))
    }

    /// How often a running job is looked at.
    pub fn with_poll_interval(mut self, poll: Duration) -> RayExecutor {
        self.poll = poll;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The submission id of an attempt: `capstan-<run>-<task>-<hash>-<attempt>`, with the task
    /// name reduced to safe characters and a hash of the exact name to keep ids distinct.
    pub fn submission_id(spec: &TaskSpec) -> String {
        let safe: String = spec
            .task
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let hash = blake3::hash(spec.task.as_bytes()).to_hex();
        format!(
            "capstan-{}-{safe}-{}-{}",
            spec.run_id,
            &hash.as_str()[..8],
            spec.attempt
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The body of `POST /api/jobs/` for an attempt.
    fn submit_body(&self, spec: &TaskSpec, id: &str) -> Result<Value, String> {
        let envelope = Envelope::from_spec(spec)?;
        let entrypoint = shell_join(&worker_argv(&self.worker_binary, &envelope));
        let env_vars: BTreeMap<String, String> = store_env().into_iter().collect();
        let mut body = json!({
            "entrypoint": entrypoint,
            "submission_id": id,
            "runtime_env": {"env_vars": env_vars},
            "metadata": {
                "capstan_run_id": spec.run_id,
                "capstan_task": spec.task,
                "capstan_attempt": spec.attempt.to_string(),
            },
        });
        let resources = &spec.resources;
        if let Some(cpu) = resources.get("cpu").and_then(Value::as_f64) {
            body["entrypoint_num_cpus"] = json!(cpu);
        }
        if let Some(gpu) = resources.get("gpu").and_then(Value::as_u64) {
            body["entrypoint_num_gpus"] = json!(gpu);
        }
        if let Some(memory) = resources.get("memory").and_then(Value::as_u64) {
            body["entrypoint_memory"] = json!(memory);
        }
        Ok(body)
    }

    async fn submit(&self, spec: &TaskSpec, id: &str) -> Result<(), String> {
        let body = self.submit_body(spec, id)?;
        let response = self
            .client
            .post(self.url("/api/jobs/"))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("cannot submit the Ray job to {}: {e}", self.address))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!(
            "the Ray head refused job {id} ({status}): {}",
            last_line(&text)
        ))
    }

    async fn look(&self, id: &str) -> Poll {
        let response = match self
            .client
            .get(self.url(&format!("/api/jobs/{id}")))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Poll::Unreachable(e.to_string()),
        };
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Poll::Gone(format!("Ray job {id} no longer exists on {}", self.address));
        }
        if !response.status().is_success() {
            return Poll::Unreachable(format!("status {}", response.status()));
        }
        let details: JobDetails = match response.json().await {
            Ok(d) => d,
            Err(e) => return Poll::Unreachable(format!("unreadable job status: {e}")),
        };
        let message = details.message.unwrap_or_default();
        match details.status.as_str() {
            "PENDING" | "RUNNING" => Poll::Running,
            "SUCCEEDED" => Poll::Ended(Outcome::Exited(details.driver_exit_code.unwrap_or(0))),
            "FAILED" => Poll::Ended(match details.driver_exit_code {
                Some(code) => Outcome::Exited(code),
                None => Outcome::SpawnFailed(format!("Ray job {id} failed: {message}")),
            }),
            "STOPPED" => Poll::Ended(Outcome::SpawnFailed(format!(
                "Ray job {id} was stopped outside capstan: {message}"
            ))),
            other => Poll::Unreachable(format!("unknown job status {other:?}")),
        }
    }

    /// Appends the part of the job's log that was not seen yet to the attempt's log and sink.
    async fn pull_logs(&self, id: &str, spec: &TaskSpec, seen: &mut usize, sink: &Option<LogSink>) {
        let response = match self
            .client
            .get(self.url(&format!("/api/jobs/{id}/logs")))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            _ => return,
        };
        let Ok(JobLogs { logs }) = response.json::<JobLogs>().await else {
            return;
        };
        if logs.len() <= *seen {
            return;
        }
        // Whole lines only: a partial last line is taken on the next look.
        let complete = match logs[*seen..].rfind('\n') {
            Some(i) => *seen + i + 1,
            None => return,
        };
        let fresh = &logs[*seen..complete];
        *seen = complete;
        let step_lines: String = fresh
            .split_inclusive('\n')
            .filter(|line| !is_ray_banner(line))
            .collect();
        if step_lines.is_empty() {
            return;
        }
        if let Err(e) = append(&spec.log_path, step_lines.as_bytes()) {
            warn!(task = %spec.task, error = %e, "cannot write the task log");
        }
        if let Some(sink) = sink {
            for line in step_lines.split_inclusive('\n') {
                sink(&spec.task, line.as_bytes());
            }
        }
    }

    /// Takes the rest of the log, a last line without a newline included, once the job ended.
    async fn pull_last_logs(
        &self,
        id: &str,
        spec: &TaskSpec,
        seen: &mut usize,
        sink: &Option<LogSink>,
    ) {
        self.pull_logs(id, spec, seen, sink).await;
        let Ok(response) = self
            .client
            .get(self.url(&format!("/api/jobs/{id}/logs")))
            .send()
            .await
        else {
            return;
        };
        let Ok(JobLogs { logs }) = response.json::<JobLogs>().await else {
            return;
        };
        if logs.len() > *seen {
            let rest = format!("{}\n", &logs[*seen..]);
            *seen = logs.len();
            let _ = append(&spec.log_path, rest.as_bytes());
            if let Some(sink) = sink {
                sink(&spec.task, rest.as_bytes());
            }
        }
    }

    async fn stop(&self, id: &str) {
        let stopped = self
            .client
            .post(self.url(&format!("/api/jobs/{id}/stop")))
            .send()
            .await;
        if let Err(e) = stopped {
            warn!(job = id, error = %e, "cannot stop the Ray job");
        }
    }

    /// Follows job `id` to its end: logs as they arrive, a stop on cancel or timeout.
    async fn follow(
        &self,
        spec: &TaskSpec,
        id: &str,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Outcome {
        let started = tokio::time::Instant::now();
        let deadline = spec.timeout.map(|t| started + t + TIMEOUT_SLACK);
        let mut seen = 0usize;
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            let poll = self.look(id).await;
            self.pull_logs(id, spec, &mut seen, &sink).await;
            match poll {
                Poll::Running => unreachable_since = None,
                Poll::Ended(outcome) => {
                    self.pull_last_logs(id, spec, &mut seen, &sink).await;
                    return outcome;
                }
                Poll::Gone(reason) => return Outcome::SpawnFailed(reason),
                Poll::Unreachable(reason) => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    debug!(job = id, %reason, "the Ray head did not answer");
                    if since.elapsed() > LOST_CONTACT {
                        return Outcome::SpawnFailed(format!(
                            "lost contact with the Ray head at {} while job {id} ran: {reason}",
                            self.address
                        ));
                    }
                }
            }
            let sleep = tokio::time::sleep(self.poll);
            let timed_out = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = cancel.cancelled() => {
                    self.stop(id).await;
                    return Outcome::Cancelled;
                }
                _ = timed_out => {
                    self.stop(id).await;
                    return Outcome::TimedOut(spec.timeout.unwrap_or_default());
                }
            }
        }
    }
}

#[async_trait]
impl Executor for RayExecutor {
    fn name(&self) -> &'static str {
        "ray"
    }

    fn handoff(&self) -> bool {
        true
    }

    async fn preflight(&self) -> Result<(), String> {
        let answer = self
            .client
            .get(self.url("/api/version"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "the Ray dashboard at {} answered {} (set RAY_ADDRESS to the dashboard's http address, e.g. {DEFAULT_RAY_ADDRESS})",
                self.address,
                r.status()
            )),
            Err(e) => Err(format!(
                "cannot reach the Ray dashboard at {} (set RAY_ADDRESS, e.g. {DEFAULT_RAY_ADDRESS}): {e}",
                self.address
            )),
        }
    }

    fn remote_handle(&self, spec: &TaskSpec) -> Option<String> {
        Some(RayExecutor::submission_id(spec))
    }

    async fn reattach(
        &self,
        spec: TaskSpec,
        handle: &str,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Option<Outcome> {
        if let Poll::Gone(_) = self.look(handle).await {
            return None;
        }
        debug!(job = handle, task = %spec.task, "re-attaching to the Ray job");
        Some(self.follow(&spec, handle, cancel, sink).await)
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
        let id = RayExecutor::submission_id(&spec);
        if let Err(reason) = self.submit(&spec, &id).await {
            return Outcome::SpawnFailed(reason);
        }
        debug!(job = %id, task = %spec.task, "submitted the Ray job");
        self.follow(&spec, &id, cancel, sink).await
    }
}

fn normalise_address(address: &str) -> Result<String, String> {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("ray://") {
        return Err(
            "ray:// is the Ray Client address; capstan uses the Jobs API of the dashboard, e.g. http://head:8265"
                .to_string(),
        );
    }
    let with_scheme = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("expected http://host:port of the Ray dashboard".to_string());
    }
    Ok(with_scheme)
}

/// Quotes words for the POSIX shell that runs a Ray entrypoint.
fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let safe = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
            if safe {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lines Ray's job manager writes into a job's log before the entrypoint's own output: the
/// runtime environment set-up and the entrypoint command (whose envelope is long and of no use
/// to readers of the step's log).
fn is_ray_banner(line: &str) -> bool {
    line.starts_with("Running entrypoint for job ")
        || (line.contains("\tINFO job_manager.py:")
            && line.as_bytes().first().is_some_and(u8::is_ascii_digit))
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("").trim()
}

fn append(path: &Path, chunk: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_the_dashboard_http_url() {
        assert_eq!(
            normalise_address("http://127.0.0.1:8265/").unwrap(),
            "http://127.0.0.1:8265"
        );
        assert_eq!(normalise_address("head:8265").unwrap(), "http://head:8265");
        assert!(
            normalise_address("ray://head:10001")
                .unwrap_err()
                .contains("Jobs API")
        );
        assert!(normalise_address("ftp://head").is_err());
    }

    #[test]
    fn entrypoints_are_quoted_for_the_shell() {
        let words = [
            "/opt/my capstan",
            "step-exec",
            "--envelope",
            "eyJ2_-x",
            "it's",
        ]
        .map(String::from);
        assert_eq!(
            shell_join(&words),
            r"'/opt/my capstan' step-exec --envelope eyJ2_-x 'it'\''s'"
        );
    }

    #[test]
    fn resources_become_the_entrypoints() {
        let ray = RayExecutor::from_config(&RayConfig::default()).unwrap();
        let spec = TaskSpec {
            run_id: "r1".into(),
            task: "train".into(),
            attempt: 1,
            argv: vec!["true".into()],
            env: vec![],
            workdir: "/".into(),
            timeout: None,
            log_path: "/dev/null".into(),
            image: None,
            resources: serde_json::json!({"cpu": 0.5, "gpu": 1, "memory": 67108864}),
            mounts: vec![],
            handoff: Some(crate::remote::Handoff {
                scratch: "/scratch".into(),
                artifact_root: "file:///artifacts".into(),
                result_uri: "file:///artifacts/logs/r1/train.1.result.json".into(),
                ..Default::default()
            }),
        };
        let body = ray.submit_body(&spec, "capstan-r1-train-x-1").unwrap();
        assert_eq!(body["entrypoint_num_cpus"], 0.5);
        assert_eq!(body["entrypoint_num_gpus"], 1);
        assert_eq!(body["entrypoint_memory"], 67108864);
        assert_eq!(body["submission_id"], "capstan-r1-train-x-1");
        assert_eq!(body["metadata"]["capstan_task"], "train");
    }

    #[test]
    fn submission_ids_are_distinct_for_similar_task_names() {
        let mut spec = TaskSpec {
            run_id: "r1".into(),
            task: "train[0]".into(),
            attempt: 2,
            argv: vec![],
            env: vec![],
            workdir: "/".into(),
            timeout: None,
            log_path: "/dev/null".into(),
            image: None,
            resources: Value::Null,
            mounts: vec![],
            handoff: None,
        };
        let a = RayExecutor::submission_id(&spec);
        assert!(a.starts_with("capstan-r1-train_0_-"), "{a}");
        assert!(a.ends_with("-2"), "{a}");
        spec.task = "train_0_".into();
        assert_ne!(RayExecutor::submission_id(&spec), a);
    }
}
