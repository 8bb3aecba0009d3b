//! The store: run records and MLMD-like lineage, behind one trait with two backends.
//!
//! - SQLite (WAL, embedded; the default at `.capstan/capstan.db`).
//! - PostgreSQL (`postgresql://...`), for teams.
//!
//! Every method is one transaction: it either happens whole or not at all. The engine relies on
//! this for crash safety ("durable before visible"): a transition is committed here before any of
//! its effects are visible.
//!
//! Both backends pass the same behavioural suite, [`store_test_suite!`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub type Value = serde_json::Value;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

macro_rules! string_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(StoreError::Invalid(format!(
                        concat!("unknown ", stringify!($name), " `{}`"), other
                    ))),
                }
            }
        }
    };
}

string_enum!(RunStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

string_enum!(TaskStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cached => "cached",
    Skipped => "skipped",
    Cancelled => "cancelled",
});

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Running)
    }
}

string_enum!(EventKind {
    Input => "input",
    Output => "output",
});

/// A reference to a stored artifact, as it appears in a task's inputs or outputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub id: String,
    pub uri: String,
    pub digest: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOutputs {
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, ArtifactRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    /// 32 lowercase hex characters (an MLflow-style run id).
    pub id: String,
    pub pipeline_name: String,
    /// blake3 of the canonical pipeline spec.
    pub pipeline_digest: String,
    /// The serialised pipeline model, so a run can be resumed without its file.
    pub pipeline_spec: Value,
    /// The file the pipeline came from.
    pub source: Option<String>,
    /// Bound parameter values.
    pub params: Value,
    /// Run options (parallelism, no_cache, executor, ...), kept for resume.
    pub options: Value,
    pub created_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline_id: String,
    pub pipeline_name: String,
    pub pipeline_digest: String,
    pub experiment_id: i64,
    pub status: RunStatus,
    pub params: Value,
    pub options: Value,
    pub pipeline_spec: Value,
    pub source: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub message: Option<String>,
    /// Set by `capstan runs cancel`; the orchestrator that owns the run polls it.
    pub cancel_requested: bool,
    /// `host:pid` of the orchestrator process that drives the run, while one does.
    pub owner: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs created at or after this time.
    pub created_after: Option<Millis>,
    /// Only runs created before this time.
    pub created_before: Option<Millis>,
    /// The sort column; ties break on creation order.
    pub sort: RunSort,
    /// Oldest (smallest) first instead of newest (largest) first.
    pub ascending: bool,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// The columns runs can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunSort {
    #[default]
    Created,
    Started,
    Ended,
    Duration,
    Pipeline,
    Status,
}

impl FromStr for RunSort {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "created" => RunSort::Created,
            "started" => RunSort::Started,
            "ended" => RunSort::Ended,
            "duration" => RunSort::Duration,
            "pipeline" => RunSort::Pipeline,
            "status" => RunSort::Status,
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown sort `{other}` (expected created, started, ended, duration, pipeline or status)"
                )));
            }
        })
    }
}

/// How many of each kind of record the store holds, for an overview page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreCounts {
    /// Pipeline runs by status; statuses without runs are absent.
    pub runs_by_status: BTreeMap<String, u64>,
    /// Distinct pipeline names.
    pub pipelines: u64,
    pub artifacts: u64,
    /// Active experiments.
    pub experiments: u64,
    pub registered_models: u64,
}

/// Recorded when a task attempt starts. Upserts the task row keyed by `(run_id, name)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStart {
    pub name: String,
    pub step: String,
    pub iteration: Option<i64>,
    /// 1-based attempt number.
    pub attempt: u32,
    pub executor: String,
    pub resources: Value,
    pub cache_key: Option<String>,
    pub log_uri: Option<String>,
    /// Input parameter values, for display and lineage.
    pub input_parameters: BTreeMap<String, Value>,
    /// Input artifacts by input name; recorded as `input` events.
    pub input_artifacts: BTreeMap<String, ArtifactRef>,
    pub started_at: Millis,
    /// The name of the remote job that runs this attempt (a Ray submission id), chosen before
    /// it is submitted; `None` for local processes.
    pub remote_handle: Option<String>,
}

/// A new artifact produced by a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewArtifact {
    pub id: String,
    /// The output name of the producing step.
    pub name: String,
    pub uri: String,
    /// `blake3:<hex>`.
    pub digest: String,
    pub size: u64,
    /// The artifact type (`Dataset`, `Model`, ...).
    pub type_name: String,
    pub is_dir: bool,
    pub metadata: Value,
}

/// Recorded when a task reaches a terminal status (or goes back to pending for a retry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskFinish {
    pub name: String,
    pub step: String,
    pub iteration: Option<i64>,
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// Input parameter values, for tasks that never started (cache hits record them here).
    #[serde(default)]
    pub input_parameters: BTreeMap<String, Value>,
    pub output_parameters: BTreeMap<String, Value>,
    /// Artifacts this attempt produced: inserted and linked by `output` events.
    pub new_artifacts: Vec<NewArtifact>,
    /// Outputs reused from an earlier task (a cache hit): linked by `output` events, not copied.
    pub reused_artifacts: BTreeMap<String, ArtifactRef>,
    /// Task id of the cache source, for `cached` tasks.
    pub cached_from: Option<String>,
    /// Cache key, for tasks that never started (cache hits record it here).
    pub cache_key: Option<String>,
    pub ended_at: Millis,
}

impl TaskFinish {
    /// A finish with no outputs: a failure, a skip or a cancellation, now.
    pub fn without_outputs(
        name: &str,
        step: &str,
        iteration: Option<i64>,
        status: TaskStatus,
        exit_code: Option<i32>,
        message: Option<&str>,
    ) -> TaskFinish {
        TaskFinish {
            name: name.to_string(),
            step: step.to_string(),
            iteration,
            status,
            exit_code,
            message: message.map(str::to_string),
            input_parameters: BTreeMap::new(),
            output_parameters: BTreeMap::new(),
            new_artifacts: vec![],
            reused_artifacts: BTreeMap::new(),
            cached_from: None,
            cache_key: None,
            ended_at: now_millis(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub run_id: String,
    pub name: String,
    pub step: String,
    pub iteration: Option<i64>,
    pub status: TaskStatus,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub executor: Option<String>,
    pub resources: Value,
    pub cache_key: Option<String>,
    pub cached_from: Option<String>,
    pub log_uri: Option<String>,
    pub message: Option<String>,
    pub inputs: TaskOutputs,
    pub outputs: TaskOutputs,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// Order in which tasks reached a terminal status within the run (1, 2, ...). Resume
    /// replays terminal tasks in this order.
    pub finish_seq: Option<i64>,
    /// The remote job of the latest attempt, as recorded when it started.
    pub remote_handle: Option<String>,
}

/// A task as [`Store::task_finished`] left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedTask {
    pub id: String,
    /// Attempts made so far; with `id`, names the attempt's tracking run ([`attempt_run_id`]).
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub id: String,
    pub name: String,
    pub uri: String,
    pub digest: String,
    pub size: u64,
    pub type_name: String,
    pub is_dir: bool,
    pub metadata: Value,
    pub created_at: Millis,
    pub run_id: String,
    /// The task that produced it.
    pub producer_task_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub task_id: String,
    pub artifact_id: String,
    pub kind: EventKind,
    /// The input or output name on the task.
    pub name: String,
    pub created_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextRecord {
    pub id: String,
    /// `pipeline` or `run`.
    pub kind: String,
    pub name: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name, for display (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Records a new run (status `pending`), the pipeline version it runs (upserted by
    /// `(name, digest)`), the experiment named after the pipeline (created on first use), and the
    /// `pipeline` and `run` contexts.
    async fn create_run(&self, run: NewRun) -> Result<RunRecord>;
    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Resolves a unique prefix of a run id (at least 4 characters) to the full id.
    async fn resolve_run_id(&self, prefix: &str) -> Result<String>;
    /// Newest first unless the filter sorts otherwise.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    /// How many runs match the filter, ignoring its limit and offset.
    async fn count_runs(&self, filter: &RunFilter) -> Result<u64>;
    /// Record counts for an overview, in one query.
    async fn counts(&self) -> Result<StoreCounts>;
    /// Sets the status; `running` sets `started_at` (first time only), terminal statuses set
    /// `ended_at`.
    async fn set_run_status(
        &self,
        id: &str,
        status: RunStatus,
        message: Option<&str>,
        at: Millis,
    ) -> Result<()>;
    async fn set_run_owner(&self, id: &str, owner: Option<&str>) -> Result<()>;
    async fn request_cancel(&self, id: &str) -> Result<()>;
    /// Clears a cancel request (when a cancelled run is resumed).
    async fn clear_cancel(&self, id: &str) -> Result<()>;

    /// Records that an attempt started: status `running`, attempts = `attempt`, input events.
    /// Returns the task id (stable across attempts).
    async fn task_started(&self, run_id: &str, start: TaskStart) -> Result<String>;
    /// Records a task that goes back to `pending` (a retry is scheduled, or a crashed attempt
    /// is abandoned on resume). Keeps the attempt count.
    async fn task_pending(&self, run_id: &str, name: &str, message: Option<&str>) -> Result<()>;
    /// Records a terminal status, inserting new artifacts and output events in the same
    /// transaction. Creates the task row when it does not exist (skipped or cached tasks).
    /// Assigns the next `finish_seq` of the run. Returns what identifies the attempt, not the
    /// whole record: reading it back would cost every step two more queries.
    async fn task_finished(&self, run_id: &str, finish: TaskFinish) -> Result<FinishedTask>;
    /// Tasks of a run, in creation order.
    async fn list_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>>;
    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>>;

    /// The most recent `succeeded` task (in any run) with this cache key.
    async fn cache_lookup(&self, cache_key: &str) -> Result<Option<TaskRecord>>;

    async fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>>;
    /// Artifacts produced in a run.
    async fn list_artifacts(&self, run_id: &str) -> Result<Vec<ArtifactRecord>>;
    /// Events (input and output) that touch an artifact.
    async fn artifact_events(&self, artifact_id: &str) -> Result<Vec<EventRecord>>;
    /// Events (input and output) of a task.
    async fn task_events(&self, task_id: &str) -> Result<Vec<EventRecord>>;
    /// Contexts (pipeline, run) a run's tasks and artifacts belong to.
    async fn run_contexts(&self, run_id: &str) -> Result<Vec<ContextRecord>>;

    /// The experiment-tracking records of the same database.
    fn tracking(&self) -> DynTrackingStore;
}

pub type DynStore = Arc<dyn Store>;

/// The id of the tracking run (an MLflow run nested in the pipeline run's) that records one
/// attempt of a task: the task id itself for the first attempt (and for tasks that never
/// started), a digest of the task id and the attempt number for later ones. Deterministic, so
/// the engine and the store agree on it without another round trip.
pub fn attempt_run_id(task_id: &str, attempt: u32) -> String {
    if attempt <= 1 {
        return task_id.to_owned();
    }
    let digest = blake3::hash(format!("{task_id}/{attempt}").as_bytes());
    digest.to_hex()[..32].to_owned()
}

mod common;
mod mirror;
mod models;
mod postgres;
mod sample;
mod sqlite;
#[doc(hidden)]
pub mod test_suite;
mod tracking;

pub use mirror::run_artifact_uri;
pub use models::{
    LoggedModel, LoggedModelQuery, MODEL_PENDING, MODEL_READY, MODEL_UPLOAD_FAILED, ModelAlias,
    ModelMetric, ModelOutput, ModelStore, ModelVersion, NewLoggedModel, NewModelVersion,
    RegisteredModel, RegistryQuery, RunModelOutput, STAGES, canonical_stage, latest_per_stage,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use tracking::{
    ACTIVE, Attribute, Clause, Comparator, DELETED, Dataset, DatasetInput, DynTrackingStore,
    Entity, Experiment, ExperimentQuery, KeyValue, MAX_PAGE, Metric, NewTrackingRun, Operand,
    OrderKey, Page, RunInfo, RunQuery, RunUpdate, TrackingRun, TrackingStore, ViewType,
};

/// Opens a store from a URI: `sqlite://PATH`, `sqlite::memory:`, `postgresql://...` (or
/// `postgres://...`), or a plain file path (SQLite).
pub async fn open(uri: &str) -> Result<DynStore> {
    if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(uri).await?))
    } else {
        let path = uri.strip_prefix("sqlite://").unwrap_or(uri);
        Ok(Arc::new(SqliteStore::open(path).await?))
    }
}
