//! The container executor: runs each attempt in a container on Docker or Podman, through the
//! Docker Engine API on a unix socket.
//!
//! Steps see the same paths as on the host: every directory in [`TaskSpec::mounts`] (the
//! workspace and the pipeline's directory) and the working directory are bind-mounted at their
//! own paths, so the engine's rendered commands, input artifacts and output directories work
//! unchanged inside the container. The container gets no network unless configured otherwise;
//! without one it is not given the run's tracking server (`MLFLOW_TRACKING_URI`, ...), which it
//! could not reach.
//!
//! One HTTP/1 connection per request keeps the client small: a step makes a handful of calls,
//! and the log stream holds its own connection for as long as the container runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{ContainerConfig, ExecutorsConfig};
use crate::local::{DRAIN_LIMIT, LazyLog, LineWriter, check_workdir};
use crate::{DEFAULT_GRACE_PERIOD, Executor, LogSink, Outcome, TaskSpec};

/// The Docker Engine API version spoken; Docker and Podman's compatible service both serve it.
const API: &str = "/v1.41";

/// Sockets tried, in order, when neither `CONTAINER_HOST` nor `DOCKER_HOST` is set.
pub const DEFAULT_SOCKETS: [&str; 2] = ["/run/podman/podman.sock", "/var/run/docker.sock"];

/// When to pull a step's image from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image (the default).
    IfNotPresent,
    /// Pull before every attempt.
    Always,
    /// Never pull: a missing image fails the step.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "if-not-present" | "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "always" | "Always" => Ok(PullPolicy::Always),
            "never" | "Never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "unknown pull policy `{other}` (expected if-not-present, always or never)"
            )),
        }
    }
}

/// Runs steps in containers through the Docker Engine API.
#[derive(Debug, Clone)]
pub struct ContainerExecutor {
    socket: PathBuf,
    pull: PullPolicy,
    grace: Duration,
    network: String,
    image: Option<String>,
}

impl ContainerExecutor {
    /// An executor for the engine listening on the unix socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> ContainerExecutor {
        ContainerExecutor {
            socket: socket.into(),
            pull: PullPolicy::IfNotPresent,
            grace: DEFAULT_GRACE_PERIOD,
            network: "none".to_string(),
            image: None,
        }
    }

    /// The executor the environment describes; see [`ContainerExecutor::from_config`].
    pub fn from_env() -> Result<ContainerExecutor, String> {
        Self::from_config(&ExecutorsConfig::default().with_process_env().container)
    }

    /// The executor these settings describe (already overlaid with the environment, see
    /// [`ExecutorsConfig::with_env`]): the engine at `host` (`unix:///path`), else the first of
    /// [`DEFAULT_SOCKETS`] that exists (or the first one, so that errors name it); the pull
    /// policy (`if-not-present` unless set), the network (`none` unless set) and the image of
    /// steps that name none.
    pub fn from_config(config: &ContainerConfig) -> Result<ContainerExecutor, String> {
        let socket = match &config.host {
            Some(url) => socket_path(url)?,
            None => DEFAULT_SOCKETS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKETS[0])),
        };
        let mut executor = ContainerExecutor::new(socket);
        if let Some(policy) = &config.pull {
            executor.pull = policy
                .parse()
                .map_err(|e| format!("container pull policy: {e}"))?;
        }
        if let Some(network) = &config.network {
            executor.network = network.clone();
        }
        executor.image = config.image.clone();
        Ok(executor)
    }

    pub fn with_pull_policy(mut self, pull: PullPolicy) -> ContainerExecutor {
        self.pull = pull;
        self
    }

    /// How long a stopped container gets between SIGTERM and SIGKILL.
    pub fn with_grace_period(mut self, grace: Duration) -> ContainerExecutor {
        self.grace = grace;
        self
    }

    /// The container network mode (`none` by default; `host` or `bridge` give steps a network).
    pub fn with_network(mut self, network: impl Into<String>) -> ContainerExecutor {
        self.network = network.into();
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Checks that the engine answers, so that a run fails before its first step when it does not.
    pub async fn ping(&self) -> Result<(), String> {
        let (status, body) = self.call(Method::GET, "/_ping", None).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(format!(
            "container engine at {} answered ping with {status}: {}",
            self.socket.display(),
            api_message(&body)
        ))
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|err| {
            format!(
                "cannot reach the container engine at unix://{}: {err} (set CONTAINER_HOST or DOCKER_HOST)",
                self.socket.display()
            )
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| {
                format!(
                    "cannot talk to the container engine at unix://{}: {err}",
                    self.socket.display()
                )
            })?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(error = %err, "container engine connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends one request and returns the response with its body still streaming.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>, String> {
        let mut sender = self.connect().await?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{API}{path}"))
            .header("host", "capstan");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = match body {
            Some(json) => builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json.to_string()))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|err| format!("invalid container engine request {method} {path}: {err}"))?;
        sender.send_request(request).await.map_err(|err| {
            format!(
                "container engine at unix://{} failed on {method} {path}: {err}",
                self.socket.display()
            )
        })
    }

    /// Sends one request and reads the whole response.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let response = self.send(method.clone(), path, body, &[]).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("container engine response to {method} {path} broke: {err}"))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn image_present(&self, image: &str) -> Result<bool, String> {
        let (status, body) = self
            .call(Method::GET, &format!("/images/{image}/json"), None)
            .await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(format!(
                "cannot inspect image `{image}`: {s}: {}",
                api_message(&body)
            )),
        }
    }

    /// Pulls `image`. The engine reports failures either as an HTTP error or, once the progress
    /// stream has started, as an `error` object in the stream.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let query = format!("/images/create?fromImage={}", query_escape(image));
        let (status, body) = self.call(Method::POST, &query, None).await?;
        let failure = if status.is_success() {
            String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
                .find_map(|event| {
                    event
                        .get("error")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
        } else {
            Some(format!("{status}: {}", api_message(&body)))
        };
        match failure {
            None => Ok(()),
            Some(reason) => Err(format!(
                "image `{image}` is not on the container engine and could not be pulled: {}",
                reason.trim()
            )),
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        match self.pull {
            PullPolicy::Always => self.pull(image).await,
            PullPolicy::IfNotPresent => {
                if self.image_present(image).await? {
                    return Ok(());
                }
                self.pull(image).await
            }
            PullPolicy::Never => {
                if self.image_present(image).await? {
                    return Ok(());
                }
                Err(format!(
                    "image `{image}` is not on the container engine and the pull policy is never"
                ))
            }
        }
    }

    async fn create(&self, spec: &TaskSpec, image: &str) -> Result<String, String> {
        let name = container_name(spec);
        let body = create_body(spec, image, &self.network)?;
        let (status, reply) = self
            .call(
                Method::POST,
                &format!("/containers/create?name={name}"),
                Some(body),
            )
            .await?;
        if !status.is_success() {
            return Err(format!(
                "cannot create a container from image `{image}`: {status}: {}",
                api_message(&reply)
            ));
        }
        let reply: Value = serde_json::from_slice(&reply)
            .map_err(|err| format!("unreadable reply to container create: {err}"))?;
        reply
            .get("Id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "container create returned no id".to_string())
    }

    async fn post_ok(&self, path: &str, what: &str) -> Result<(), String> {
        let (status, body) = self.call(Method::POST, path, None).await?;
        // 304: already started or already stopped, which is what was asked for.
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(());
        }
        Err(format!("cannot {what}: {status}: {}", api_message(&body)))
    }

    async fn wait(&self, id: &str) -> Result<i64, String> {
        let (status, body) = self
            .call(Method::POST, &format!("/containers/{id}/wait"), None)
            .await?;
        if !status.is_success() {
            return Err(format!(
                "lost track of container {}: {status}: {}",
                short(id),
                api_message(&body)
            ));
        }
        let reply: Value = serde_json::from_slice(&body)
            .map_err(|err| format!("unreadable reply to container wait: {err}"))?;
        if let Some(message) = reply
            .pointer("/Error/Message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
        {
            return Err(format!("container {} failed: {message}", short(id)));
        }
        reply
            .get("StatusCode")
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("container {} ended without an exit code", short(id)))
    }

    async fn kill(&self, id: &str, signal: &str) {
        let path = format!("/containers/{id}/kill?signal={signal}");
        match self.call(Method::POST, &path, None).await {
            // 404: already removed; 409: not running any more.
            Ok((status, _))
                if status.is_success()
                    || status == StatusCode::NOT_FOUND
                    || status == StatusCode::CONFLICT => {}
            Ok((status, body)) => {
                warn!(container = short(id), %status, reason = %api_message(&body), "could not signal container")
            }
            Err(err) => warn!(container = short(id), error = %err, "could not signal container"),
        }
    }

    async fn remove(&self, id: &str) {
        let path = format!("/containers/{id}?force=true&v=true");
        match self.call(Method::DELETE, &path, None).await {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {}
            Ok((status, body)) => {
                warn!(container = short(id), %status, reason = %api_message(&body), "could not remove container")
            }
            Err(err) => warn!(container = short(id), error = %err, "could not remove container"),
        }
    }

    /// Attaches to the container's output before it starts. The stream ends when the container
    /// does, with nothing missed; Docker upgrades the connection (101), Podman may instead
    /// answer 200 and stream the frames as the body.
    async fn attach(&self, id: &str) -> Result<Output, String> {
        let path = format!("/containers/{id}/attach?stream=true&stdout=true&stderr=true");
        let response = self
            .send(
                Method::POST,
                &path,
                None,
                &[("connection", "Upgrade"), ("upgrade", "tcp")],
            )
            .await?;
        match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => hyper::upgrade::on(response)
                .await
                .map(|io| Output::Raw(Box::new(TokioIo::new(io))))
                .map_err(|err| format!("cannot attach to container {}: {err}", short(id))),
            s if s.is_success() => Ok(Output::Body(response.into_body())),
            s => Err(format!("cannot attach to container {}: {s}", short(id))),
        }
    }

    /// The container's output from its start, for engines that cannot attach: Podman's log
    /// follower notices the end of a container by polling, so this ends a little later.
    async fn follow_logs(&self, id: &str) -> Result<Output, String> {
        let path = format!("/containers/{id}/logs?follow=true&stdout=true&stderr=true");
        let response = self.send(Method::GET, &path, None, &[]).await?;
        match response.status() {
            s if s.is_success() => Ok(Output::Body(response.into_body())),
            s => Err(format!(
                "cannot follow the logs of container {}: {s}",
                short(id)
            )),
        }
    }

    /// Copies a multiplexed output stream into the task log and the sink, line by line.
    fn spawn_reader(output: Output, spec: &TaskSpec, sink: Option<LogSink>) -> JoinHandle<()> {
        let log = Arc::new(Mutex::new(LazyLog::new(&spec.log_path)));
        let task = spec.task.clone();
        tokio::spawn(async move {
            let mut out = LineWriter::new(&task, log.clone(), sink.clone());
            let mut err = LineWriter::new(&task, log, sink);
            let mut frames = Demux::default();
            let mut emit = |data: &[u8]| {
                frames.push(data, |stream, bytes| match stream {
                    Stream::Stderr => err.push(bytes),
                    Stream::Stdout => out.push(bytes),
                })
            };
            match output {
                Output::Body(mut body) => {
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if let Ok(data) = f.into_data() {
                                    emit(&data);
                                }
                            }
                            Err(e) => {
                                warn!(task = %task, error = %e, "container output stream broke");
                                break;
                            }
                        }
                    }
                }
                Output::Raw(mut io) => {
                    let mut buf = vec![0u8; 8192];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => emit(&buf[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                warn!(task = %task, error = %e, "container output stream broke");
                                break;
                            }
                        }
                    }
                }
            }
            out.finish();
            err.finish();
        })
    }

    /// Waits for the container to exit, or stops it on timeout or cancel.
    async fn supervise(&self, id: &str, spec: &TaskSpec, cancel: &CancellationToken) -> Outcome {
        let deadline = async {
            match spec.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            code = self.wait(id) => return match code {
                Ok(code) => Outcome::Exited(code as i32),
                Err(reason) => Outcome::SpawnFailed(format!("step {}: {reason}", spec.task)),
            },
            _ = deadline => Outcome::TimedOut(spec.timeout.unwrap_or_default()),
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        debug!(task = %spec.task, container = short(id), reason = %stopped.describe(), "stopping container");
        self.kill(id, "TERM").await;
        if tokio::time::timeout(self.grace, self.wait(id))
            .await
            .is_err()
        {
            self.kill(id, "KILL").await;
            let _ = tokio::time::timeout(DRAIN_LIMIT, self.wait(id)).await;
        }
        stopped
    }
}

#[async_trait]
impl Executor for ContainerExecutor {
    fn name(&self) -> &'static str {
        "container"
    }

    fn needs_image(&self) -> bool {
        true
    }

    fn default_image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    async fn preflight(&self) -> Result<(), String> {
        self.ping().await
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
        let Some(image) = spec.image.clone() else {
            return Outcome::SpawnFailed(format!(
                "step {} has no `image`, which the container executor needs",
                spec.task
            ));
        };
        if spec.argv.is_empty() {
            return Outcome::SpawnFailed("empty command".to_string());
        }
        // Docker would create a missing bind-mount source as an empty directory owned by root,
        // and Podman refuses it with a less direct message: report it as the local executor does.
        if let Err(reason) = check_workdir(&spec.workdir) {
            return Outcome::SpawnFailed(reason);
        }
        if let Err(reason) = self.ensure_image(&image).await {
            return Outcome::SpawnFailed(reason);
        }
        let id = match self.create(&spec, &image).await {
            Ok(id) => id,
            Err(reason) => return Outcome::SpawnFailed(reason),
        };
        // From here on the container is removed whatever happens, even if this future is dropped.
        let mut guard = RemoveGuard {
            executor: self.clone(),
            id: Some(id.clone()),
        };
        debug!(run_id = %spec.run_id, task = %spec.task, attempt = spec.attempt, container = short(&id), %image, "created container");

        let attached = match self.attach(&id).await {
            Ok(output) => Some(Self::spawn_reader(output, &spec, sink.clone())),
            Err(reason) => {
                debug!(container = short(&id), %reason, "falling back to following the logs");
                None
            }
        };
        let outcome = match self
            .post_ok(&format!("/containers/{id}/start"), "start the container")
            .await
        {
            Ok(()) => {
                let reader = match attached {
                    Some(reader) => Some(reader),
                    None => match self.follow_logs(&id).await {
                        Ok(output) => Some(Self::spawn_reader(output, &spec, sink)),
                        Err(reason) => {
                            warn!(task = %spec.task, %reason, "step output is not captured");
                            None
                        }
                    },
                };
                let outcome = self.supervise(&id, &spec, &cancel).await;
                if let Some(reader) = reader {
                    drain(reader).await;
                }
                outcome
            }
            Err(reason) => {
                Outcome::SpawnFailed(format!("step {} (image `{image}`): {reason}", spec.task))
            }
        };
        guard.id = None;
        self.remove(&id).await;
        outcome
    }
}

/// A multiplexed output stream: a response body, or a connection the engine took over.
enum Output {
    Body(Incoming),
    Raw(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

/// Force-removes a container whose supervising future was dropped before it could clean up.
struct RemoveGuard {
    executor: ContainerExecutor,
    id: Option<String>,
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let executor = self.executor.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { executor.remove(&id).await });
        }
    }
}

async fn drain(mut logs: JoinHandle<()>) {
    if tokio::time::timeout(DRAIN_LIMIT, &mut logs).await.is_err() {
        logs.abort();
    }
}

/// The path of a `unix://` engine URL, or of a bare path.
pub fn socket_path(url: &str) -> Result<PathBuf, String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(format!("container engine URL `{url}` names no socket"));
        }
        return Ok(PathBuf::from(path));
    }
    if url.starts_with('/') {
        return Ok(PathBuf::from(url));
    }
    Err(format!(
        "container engine URL `{url}` is not supported: use unix:///path/to/socket"
    ))
}

/// The variables that point a step at the run's tracking server (see the engine).
const TRACKING_ENV: &[&str] = &[
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
];

/// The body of `POST /containers/create`.
fn create_body(spec: &TaskSpec, image: &str, network: &str) -> Result<Value, String> {
    let mut binds: Vec<String> = Vec::new();
    let mut mounted: Vec<&Path> = Vec::new();
    for path in spec.mounts.iter().chain(std::iter::once(&spec.workdir)) {
        if !path.is_absolute() {
            return Err(format!(
                "cannot mount relative path {} into a container",
                path.display()
            ));
        }
        // A directory inside one already mounted is visible through it.
        if mounted.iter().any(|m| path.starts_with(m)) {
            continue;
        }
        mounted.retain(|m| !m.starts_with(path));
        mounted.push(path);
    }
    for path in mounted {
        let text = path
            .to_str()
            .ok_or_else(|| format!("cannot mount non-UTF-8 path {}", path.display()))?;
        binds.push(format!("{text}:{text}"));
    }
    let mut host = json!({
        "Binds": binds,
        "NetworkMode": network,
    });
    if let Some(cpu) = spec.resources.get("cpu").and_then(Value::as_f64)
        && cpu > 0.0
    {
        host["NanoCpus"] = json!((cpu * 1e9).round() as i64);
    }
    if let Some(memory) = spec.resources.get("memory").and_then(Value::as_u64)
        && memory > 0
    {
        host["Memory"] = json!(memory);
    }
    if let Some(gpus) = spec.resources.get("gpu").and_then(Value::as_u64)
        && gpus > 0
    {
        host["DeviceRequests"] = json!([{
            "Driver": "",
            "Count": gpus,
            "Capabilities": [["gpu"]],
        }]);
    }
    // Without a network the run's tracking server cannot be reached: the step is not told of
    // one, so the mlflow client in it does not fail on it (nor write a file store of its own).
    let env: Vec<String> = spec
        .env
        .iter()
        .filter(|(k, _)| network != "none" || !TRACKING_ENV.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Ok(json!({
        "Image": image,
        // The step's command replaces both the image's entrypoint and its default command.
        "Entrypoint": [spec.argv[0]],
        "Cmd": spec.argv[1..],
        "Env": env,
        "WorkingDir": spec.workdir.to_str().ok_or_else(|| format!("cannot use non-UTF-8 working directory {}", spec.workdir.display()))?,
        "Tty": false,
        "OpenStdin": false,
        "AttachStdout": true,
        "AttachStderr": true,
        "Labels": {
            "capstan.run": spec.run_id,
            "capstan.task": spec.task,
            "capstan.attempt": spec.attempt.to_string(),
        },
        "HostConfig": host,
    }))
}

/// A name that says which attempt a container belongs to, unique within this process and time.
fn container_name(spec: &TaskSpec) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let task: String = spec
        .task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let run: String = spec.run_id.chars().take(12).collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "capstan-{}-{task}-{}-{:x}{nanos:x}{unique:x}",
        query_escape(&run),
        spec.attempt,
        std::process::id()
    )
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Percent-encodes everything but unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `message` of an engine error reply, or the reply itself.
fn api_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Splits the engine's multiplexed log stream: frames of an 8-byte header (stream type, three
/// zero bytes, big-endian payload length) followed by the payload, cut anywhere by the transport.
#[derive(Default)]
struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    fn push(&mut self, data: &[u8], mut emit: impl FnMut(Stream, &[u8])) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while self.buf.len() - at >= 8 {
            let header = &self.buf[at..at + 8];
            let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if self.buf.len() - at - 8 < len {
                break;
            }
            let stream = if header[0] == 2 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            emit(stream, &self.buf[at + 8..at + 8 + len]);
            at += 8 + len;
        }
        self.buf.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            run_id: "0123456789abcdef".into(),
            task: "train[3]".into(),
            attempt: 2,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            workdir: PathBuf::from("/ws/pipelines/sub"),
            timeout: None,
            log_path: PathBuf::from("/ws/logs/x.log"),
            image: Some("localhost/img:1".into()),
            resources: json!({"cpu": 0.5, "memory": 1048576, "gpu": 1}),
            mounts: vec![PathBuf::from("/ws"), PathBuf::from("/ws/pipelines")],
            handoff: None,
        }
    }

    #[test]
    fn create_body_mounts_each_tree_once_and_sets_limits() {
        let body = create_body(&spec(), "localhost/img:1", "none").unwrap();
        assert_eq!(body["HostConfig"]["Binds"], json!(["/ws:/ws"]));
        assert_eq!(body["HostConfig"]["NetworkMode"], "none");
        assert_eq!(body["HostConfig"]["NanoCpus"], 500_000_000);
        assert_eq!(body["HostConfig"]["Memory"], 1_048_576);
        assert_eq!(body["HostConfig"]["DeviceRequests"][0]["Count"], 1);
        assert_eq!(body["Entrypoint"], json!(["sh"]));
        assert_eq!(body["Cmd"], json!(["-c", "echo hi"]));
        assert_eq!(body["Env"], json!(["A=1"]));
        assert_eq!(body["WorkingDir"], "/ws/pipelines/sub");
        assert_eq!(body["Labels"]["capstan.task"], "train[3]");
    }

    #[test]
    fn a_container_without_network_is_not_told_of_the_tracking_server() {
        let mut s = spec();
        s.env.extend([
            ("MLFLOW_TRACKING_URI".into(), "http://127.0.0.1:5000".into()),
            ("MLFLOW_RUN_ID".into(), "r1".into()),
            ("MLFLOW_EXPERIMENT_ID".into(), "1".into()),
        ]);
        let body = create_body(&s, "i", "none").unwrap();
        assert_eq!(body["Env"], json!(["A=1"]));
        let body = create_body(&s, "i", "host").unwrap();
        assert_eq!(
            body["Env"],
            json!([
                "A=1",
                "MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
                "MLFLOW_RUN_ID=r1",
                "MLFLOW_EXPERIMENT_ID=1"
            ])
        );
    }

    #[test]
    fn create_body_mounts_a_workdir_outside_the_mounts() {
        let mut s = spec();
        s.workdir = PathBuf::from("/elsewhere");
        s.resources = Value::Null;
        let body = create_body(&s, "i", "none").unwrap();
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!(["/ws:/ws", "/elsewhere:/elsewhere"])
        );
        assert!(body["HostConfig"].get("NanoCpus").is_none());
        assert!(body["HostConfig"].get("Memory").is_none());
    }

    #[test]
    fn a_later_parent_replaces_its_children() {
        let mut s = spec();
        s.mounts = vec![PathBuf::from("/ws/a"), PathBuf::from("/ws")];
        s.workdir = PathBuf::from("/ws/a");
        let body = create_body(&s, "i", "none").unwrap();
        assert_eq!(body["HostConfig"]["Binds"], json!(["/ws:/ws"]));
    }

    #[test]
    fn container_names_are_valid_and_distinct() {
        let a = container_name(&spec());
        let b = container_name(&spec());
        assert_ne!(a, b);
        assert!(a.starts_with("capstan-0123456789ab-train-3--2-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn socket_urls() {
        assert_eq!(
            socket_path("unix:///tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(socket_path("/tmp/y").unwrap(), PathBuf::from("/tmp/y"));
        let err = socket_path("tcp://127.0.0.1:2375").unwrap_err();
        assert!(err.contains("tcp://127.0.0.1:2375"), "{err}");
        assert!(socket_path("unix://").is_err());
    }

    #[test]
    fn settings_come_from_the_config() {
        let config = |host: Option<&str>, pull: Option<&str>, network: Option<&str>| {
            ContainerExecutor::from_config(&ContainerConfig {
                host: host.map(String::from),
                pull: pull.map(String::from),
                network: network.map(String::from),
                image: Some("localhost/py".to_string()),
            })
        };
        let all = config(Some("unix:///run/a.sock"), Some("never"), Some("host")).unwrap();
        assert_eq!(all.socket(), Path::new("/run/a.sock"));
        assert_eq!(all.pull, PullPolicy::Never);
        assert_eq!(all.network, "host");
        assert_eq!(all.default_image(), Some("localhost/py"));
        let plain = config(Some("unix:///run/b.sock"), None, None).unwrap();
        assert_eq!(plain.pull, PullPolicy::IfNotPresent);
        assert_eq!(plain.network, "none");
        let bad = config(None, Some("sometimes"), None).unwrap_err();
        assert!(bad.starts_with("container pull policy: "), "{bad}");
        let tcp = config(Some("tcp://h:2375"), None, None).unwrap_err();
        assert!(tcp.contains("tcp://h:2375"), "{tcp}");
    }

    #[test]
    fn pull_policies_parse() {
        assert_eq!("if-not-present".parse(), Ok(PullPolicy::IfNotPresent));
        assert_eq!("always".parse(), Ok(PullPolicy::Always));
        assert_eq!("never".parse(), Ok(PullPolicy::Never));
        assert!(
            "sometimes"
                .parse::<PullPolicy>()
                .unwrap_err()
                .contains("sometimes")
        );
    }

    #[test]
    fn demux_handles_frames_cut_anywhere() {
        let mut wire = Vec::new();
        for (kind, payload) in [(1u8, &b"out one\n"[..]), (2, b"err\n"), (1, b"tail")] {
            wire.extend_from_slice(&[kind, 0, 0, 0]);
            wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            wire.extend_from_slice(payload);
        }
        for cut in 0..wire.len() {
            let mut demux = Demux::default();
            let mut seen: Vec<(Stream, Vec<u8>)> = Vec::new();
            let (a, b) = wire.split_at(cut);
            demux.push(a, |s, d| seen.push((s, d.to_vec())));
            demux.push(b, |s, d| seen.push((s, d.to_vec())));
            let joined: Vec<(Stream, Vec<u8>)> =
                seen.into_iter().filter(|(_, d)| !d.is_empty()).collect();
            assert_eq!(
                joined,
                vec![
                    (Stream::Stdout, b"out one\n".to_vec()),
                    (Stream::Stderr, b"err\n".to_vec()),
                    (Stream::Stdout, b"tail".to_vec()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn api_messages() {
        assert_eq!(
            api_message(br#"{"message":"no such image"}"#),
            "no such image"
        );
        assert_eq!(api_message(b"plain\n"), "plain");
        assert_eq!(query_escape("localhost/a:1"), "localhost%2Fa%3A1");
    }
}
