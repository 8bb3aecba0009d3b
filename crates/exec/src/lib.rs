//! Running one attempt of one task.
//!
//! The engine decides *what* runs; an [`Executor`] decides *where*: a local process (the default,
//! [`LocalExecutor`]), a container on Docker or Podman ([`ContainerExecutor`]), a Ray job
//! ([`RayExecutor`], through the step wrapper of [`remote`]), and later Kubernetes jobs. Every executor receives a
//! fully resolved [`TaskSpec`] and reports an [`Outcome`]; none of them touches the store, so the
//! engine stays the only place that records state.

pub mod config;
mod container;
pub mod kubernetes;
mod local;
mod ray;
pub mod remote;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use config::ExecutorsConfig;
pub use container::{ContainerExecutor, DEFAULT_SOCKETS, PullPolicy, socket_path};
pub use kubernetes::KubernetesExecutor;
pub use local::{DEFAULT_GRACE_PERIOD, LocalExecutor};
pub use ray::{DEFAULT_RAY_ADDRESS, RayExecutor};

/// One attempt of one task, with every template already resolved.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    /// The command line; `argv[0]` is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Added to the inherited environment, overriding variables of the same name.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub timeout: Option<Duration>,
    /// stdout and stderr are appended here as they arrive; missing parent directories are created.
    pub log_path: PathBuf,
    /// Used by container-based executors; the local executor ignores it.
    pub image: Option<String>,
    /// Resource requests for executors that schedule (`{"cpu": .., "memory": ..}`); ignored locally.
    pub resources: serde_json::Value,
    /// Host directories the step may refer to (the workspace, the pipeline's directory). Executors
    /// that isolate the file system, such as containers, make them visible at the same paths; the
    /// local executor ignores them.
    pub mounts: Vec<PathBuf>,
    /// Filled by the engine for executors whose [`Executor::handoff`] is true: the inputs and
    /// outputs that pass through the artifact store (see [`remote`]).
    pub handoff: Option<remote::Handoff>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited by itself with this code.
    Exited(i32),
    /// The process was killed by this signal, and not by capstan.
    Signaled(i32),
    /// capstan stopped the process because it ran longer than the task's timeout.
    TimedOut(Duration),
    /// capstan stopped the process because the run was cancelled.
    Cancelled,
    /// The process never started; the message says why.
    SpawnFailed(String),
}

impl Outcome {
    /// True only for a clean exit with code 0.
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The exit code, when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// A short lowercase sentence for users, e.g. `exited with code 3`.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(code) => format!("exited with code {code}"),
            Outcome::Signaled(signal) => match signal_name(*signal) {
                Some(name) => format!("killed by signal {signal} ({name})"),
                None => format!("killed by signal {signal}"),
            },
            Outcome::TimedOut(after) => format!("timed out after {}", format_duration(*after)),
            Outcome::Cancelled => "cancelled".to_string(),
            Outcome::SpawnFailed(reason) => reason.clone(),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    nix::sys::signal::Signal::try_from(signal)
        .ok()
        .map(|s| s.as_str())
}

/// Formats whole seconds as `5s`, `2m`, `1h30m`, and shorter spans as milliseconds.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.is_zero() {
        return "0s".to_string();
    }
    if secs == 0 || (d.subsec_millis() != 0 && secs < 60) {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Receives output as it arrives: the task name and one line (with its newline) or, for long
/// output without newlines, a chunk.
pub type LogSink = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// Somewhere a task attempt can run.
#[async_trait]
pub trait Executor: Send + Sync {
    /// A short lowercase name, as given to `--executor`.
    fn name(&self) -> &'static str;

    /// True when every step this executor runs must name an `image`, so that the engine can
    /// reject a pipeline before it starts.
    fn needs_image(&self) -> bool {
        false
    }

    /// The image of steps that name none, when the configuration gives one.
    fn default_image(&self) -> Option<&str> {
        None
    }

    /// Checks, before a run starts, that steps can run here at all (an engine or cluster
    /// answers); the message says what to fix.
    async fn preflight(&self) -> Result<(), String> {
        Ok(())
    }

    /// True when steps run where the engine's disk is not visible (Ray workers, pods): the engine
    /// then fills [`TaskSpec::handoff`] and inputs and outputs pass through the artifact store
    /// by way of `capstan step-exec` (see [`remote`]).
    fn handoff(&self) -> bool {
        false
    }

    /// The name of the remote job that will run this attempt, chosen before it is submitted. The
    /// engine records it durably before calling [`run`](Self::run), so that after a crash
    /// [`reattach`](Self::reattach) can find the job again instead of submitting it twice. `None`
    /// for executors whose work dies with capstan (local processes).
    fn remote_handle(&self, _spec: &TaskSpec) -> Option<String> {
        None
    }

    /// Follows the job that an earlier capstan process submitted under `handle` to its end, as
    /// [`run`](Self::run) would have. `None` when no such job exists (it was never submitted, or
    /// it is gone): the engine then runs the attempt anew.
    async fn reattach(
        &self,
        _spec: TaskSpec,
        _handle: &str,
        _cancel: CancellationToken,
        _sink: Option<LogSink>,
    ) -> Option<Outcome> {
        None
    }

    /// Runs one attempt to its end. Never panics and never returns early: a failure to start is
    /// [`Outcome::SpawnFailed`], and cancelling `cancel` stops the attempt and yields
    /// [`Outcome::Cancelled`].
    async fn run(
        &self,
        spec: TaskSpec,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Outcome;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_is_short_and_lowercase() {
        assert_eq!(Outcome::Exited(3).describe(), "exited with code 3");
        assert_eq!(
            Outcome::Signaled(9).describe(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Outcome::Signaled(15).describe(),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(Outcome::Signaled(200).describe(), "killed by signal 200");
        assert_eq!(
            Outcome::TimedOut(Duration::from_secs(5)).describe(),
            "timed out after 5s"
        );
        assert_eq!(
            Outcome::TimedOut(Duration::from_secs(90)).describe(),
            "timed out after 1m30s"
        );
        assert_eq!(
            Outcome::TimedOut(Duration::from_secs(3600)).describe(),
            "timed out after 1h"
        );
        assert_eq!(
            Outcome::TimedOut(Duration::from_millis(250)).describe(),
            "timed out after 250ms"
        );
        assert_eq!(Outcome::Cancelled.describe(), "cancelled");
        assert_eq!(
            Outcome::SpawnFailed("command not found: foo".into()).describe(),
            "command not found: foo"
        );
    }

    #[test]
    fn only_exit_zero_is_success() {
        assert!(Outcome::Exited(0).success());
        assert!(!Outcome::Exited(1).success());
        assert!(!Outcome::Signaled(9).success());
        assert!(!Outcome::TimedOut(Duration::from_secs(1)).success());
        assert!(!Outcome::Cancelled.success());
        assert!(!Outcome::SpawnFailed("x".into()).success());
        assert_eq!(Outcome::Exited(7).exit_code(), Some(7));
        assert_eq!(Outcome::Signaled(9).exit_code(), None);
        assert_eq!(Outcome::Cancelled.exit_code(), None);
    }
}
