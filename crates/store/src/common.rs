//! The half of the store that does not care which database it talks to: row shapes,
//! conversions between rows and records, error mapping, and [`store_impl!`], which expands
//! the one implementation of [`Store`](crate::Store) for each backend's connection type.
//!
//! Every query here runs unchanged on SQLite and PostgreSQL (`$n` placeholders, `ON CONFLICT`,
//! `RETURNING`, 64-bit integers, JSON as text). Only the connection setup (`sqlite.rs`,
//! `postgres.rs`) and the DDL under `migrations/` differ per dialect, so a behaviour fixed here
//! is fixed for both.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::mirror::Batch;
use crate::tracking::Arg;
use crate::{
    ArtifactRecord, ArtifactRef, ContextRecord, EventKind, EventRecord, Millis, Result, RunRecord,
    RunStatus, StoreError, TaskOutputs, TaskRecord, TaskStatus, Value,
};

/// A fresh 32-hex-character id, the shape MLflow uses for run ids (a task is a nested run).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> String {
    // Serialising a `serde_json::Value` or a map of them cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("stored {what} is not valid json: {e}")))
}

fn to_u32(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| StoreError::Backend(format!("stored {what} {value} is out of range")))
}

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

/// Attaches what the store was doing to a database error, and maps unique violations to
/// [`StoreError::Conflict`].
pub(crate) trait DbContext<T> {
    fn ctx(self, doing: &str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, doing: &str) -> Result<T> {
        self.map_err(|err| db_error(err, doing))
    }
}

pub(crate) fn db_error(err: sqlx::Error, doing: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{doing}: {}", db.message()))
        }
        _ => StoreError::Backend(format!("{doing}: {err}")),
    }
}

/// True when the error is a unique violation, so callers can phrase the conflict themselves.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// True when the error is a foreign key violation: a row names a parent that does not exist.
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `WHERE` clause of [`RunFilter`](crate::RunFilter) queries: `$1` pipeline name, `$2`
/// status, `$3` created at or after, `$4` created before.
pub(crate) const RUN_FILTER_WHERE: &str = "WHERE ($1 IS NULL OR p.name = $1) \
     AND ($2 IS NULL OR r.status = $2) AND ($3 IS NULL OR r.created_at >= $3) \
     AND ($4 IS NULL OR r.created_at < $4)";

/// The `ORDER BY` of a run listing. Columns come from a closed set, never from user text.
/// Unset times sort last whichever the direction.
pub(crate) fn run_order(filter: &crate::RunFilter) -> String {
    use crate::RunSort;
    let dir = if filter.ascending { "ASC" } else { "DESC" };
    let key = match filter.sort {
        RunSort::Created => return format!("r.created_at {dir}, r.seq {dir}"),
        RunSort::Started => "r.started_at",
        RunSort::Ended => "r.ended_at",
        RunSort::Duration => "(r.ended_at - r.started_at)",
        RunSort::Pipeline => "p.name",
        RunSort::Status => "r.status",
    };
    format!("CASE WHEN {key} IS NULL THEN 1 ELSE 0 END, {key} {dir}, r.created_at DESC, r.seq DESC")
}

macro_rules! run_select {
    () => {
        "SELECT r.id, r.pipeline_id, p.name AS pipeline_name, p.digest AS pipeline_digest, \
         r.experiment_id, r.status, r.params, r.options, p.spec AS pipeline_spec, r.source, \
         r.created_at, r.started_at, r.ended_at, r.message, r.cancel_requested, r.owner \
         FROM runs r JOIN pipelines p ON p.id = r.pipeline_id"
    };
}
pub(crate) use run_select;

macro_rules! task_select {
    () => {
        "SELECT id, run_id, name, step, iteration, status, attempts, exit_code, executor, \
         resources, cache_key, cached_from, log_uri, message, input_parameters, \
         output_parameters, created_at, started_at, ended_at, finish_seq, remote_handle FROM tasks"
    };
}
pub(crate) use task_select;

macro_rules! link_select {
    () => {
        "SELECT e.task_id, e.kind, e.name, a.id AS artifact_id, a.uri, a.digest \
         FROM events e JOIN artifacts a ON a.id = e.artifact_id"
    };
}
pub(crate) use link_select;

macro_rules! artifact_select {
    () => {
        "SELECT id, name, uri, digest, size, type_name, is_dir, metadata, created_at, run_id, \
         producer_task_id FROM artifacts"
    };
}
pub(crate) use artifact_select;

macro_rules! event_select {
    () => {
        "SELECT task_id, artifact_id, kind, name, created_at FROM events"
    };
}
pub(crate) use event_select;

#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    id: String,
    pipeline_id: String,
    pipeline_name: String,
    pipeline_digest: String,
    experiment_id: i64,
    status: String,
    params: String,
    options: String,
    pipeline_spec: String,
    source: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    message: Option<String>,
    cancel_requested: i64,
    owner: Option<String>,
}

impl RunRow {
    pub(crate) fn into_record(self) -> Result<RunRecord> {
        Ok(RunRecord {
            status: RunStatus::from_str(&self.status)?,
            params: parse_json(&self.params, "run parameters")?,
            options: parse_json(&self.options, "run options")?,
            pipeline_spec: parse_json(&self.pipeline_spec, "pipeline spec")?,
            id: self.id,
            pipeline_id: self.pipeline_id,
            pipeline_name: self.pipeline_name,
            pipeline_digest: self.pipeline_digest,
            experiment_id: self.experiment_id,
            source: self.source,
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            message: self.message,
            cancel_requested: self.cancel_requested != 0,
            owner: self.owner,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub(crate) id: String,
    run_id: String,
    name: String,
    step: String,
    iteration: Option<i64>,
    status: String,
    attempts: i64,
    exit_code: Option<i64>,
    executor: Option<String>,
    resources: String,
    cache_key: Option<String>,
    cached_from: Option<String>,
    log_uri: Option<String>,
    message: Option<String>,
    input_parameters: String,
    output_parameters: String,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    finish_seq: Option<i64>,
    remote_handle: Option<String>,
}

/// One event joined with its artifact: an entry of a task's `inputs.artifacts` or
/// `outputs.artifacts`.
#[derive(sqlx::FromRow)]
pub(crate) struct LinkRow {
    task_id: String,
    kind: String,
    name: String,
    artifact_id: String,
    uri: String,
    digest: String,
}

/// Turns task rows and the event links of those tasks into complete records.
pub(crate) fn assemble_tasks(rows: Vec<TaskRow>, links: Vec<LinkRow>) -> Result<Vec<TaskRecord>> {
    let mut io: BTreeMap<String, (TaskOutputs, TaskOutputs)> = BTreeMap::new();
    for link in links {
        let (inputs, outputs) = io.entry(link.task_id).or_default();
        let side = match EventKind::from_str(&link.kind)? {
            EventKind::Input => inputs,
            EventKind::Output => outputs,
        };
        side.artifacts.insert(
            link.name,
            ArtifactRef {
                id: link.artifact_id,
                uri: link.uri,
                digest: link.digest,
            },
        );
    }
    rows.into_iter()
        .map(|row| {
            let (mut inputs, mut outputs) = io.remove(&row.id).unwrap_or_default();
            inputs.parameters = parse_json(&row.input_parameters, "task input parameters")?;
            outputs.parameters = parse_json(&row.output_parameters, "task output parameters")?;
            Ok(TaskRecord {
                status: TaskStatus::from_str(&row.status)?,
                attempts: to_u32(row.attempts, "attempt count")?,
                exit_code: row
                    .exit_code
                    .map(|code| {
                        i32::try_from(code).map_err(|_| {
                            StoreError::Backend(format!("stored exit code {code} is out of range"))
                        })
                    })
                    .transpose()?,
                resources: parse_json::<Value>(&row.resources, "task resources")?,
                id: row.id,
                run_id: row.run_id,
                name: row.name,
                step: row.step,
                iteration: row.iteration,
                executor: row.executor,
                cache_key: row.cache_key,
                cached_from: row.cached_from,
                log_uri: row.log_uri,
                message: row.message,
                inputs,
                outputs,
                created_at: row.created_at,
                started_at: row.started_at,
                ended_at: row.ended_at,
                finish_seq: row.finish_seq,
                remote_handle: row.remote_handle,
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct ArtifactRow {
    id: String,
    name: String,
    uri: String,
    digest: String,
    size: i64,
    type_name: String,
    is_dir: i64,
    metadata: String,
    created_at: i64,
    run_id: String,
    producer_task_id: String,
}

impl ArtifactRow {
    pub(crate) fn into_record(self) -> Result<ArtifactRecord> {
        Ok(ArtifactRecord {
            size: u64::try_from(self.size).map_err(|_| {
                StoreError::Backend(format!("stored artifact size {} is negative", self.size))
            })?,
            metadata: parse_json(&self.metadata, "artifact metadata")?,
            is_dir: self.is_dir != 0,
            id: self.id,
            name: self.name,
            uri: self.uri,
            digest: self.digest,
            type_name: self.type_name,
            created_at: self.created_at,
            run_id: self.run_id,
            producer_task_id: self.producer_task_id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    task_id: String,
    artifact_id: String,
    kind: String,
    name: String,
    created_at: i64,
}

impl EventRow {
    pub(crate) fn into_record(self) -> Result<EventRecord> {
        Ok(EventRecord {
            kind: EventKind::from_str(&self.kind)?,
            task_id: self.task_id,
            artifact_id: self.artifact_id,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ContextRow {
    id: String,
    kind: String,
    name: String,
}

impl ContextRow {
    pub(crate) fn into_record(self) -> ContextRecord {
        ContextRecord {
            id: self.id,
            kind: self.kind,
            name: self.name,
        }
    }
}

/// The contexts a run's tasks and artifacts join.
#[derive(sqlx::FromRow)]
pub(crate) struct RunContexts {
    pub(crate) pipeline_context_id: String,
    pub(crate) run_context_id: String,
    /// Where the run's tracking runs live.
    pub(crate) experiment_id: i64,
    pub(crate) artifact_location: Option<String>,
}

/// Adds to `batch` the statement that associates a task with its run's contexts.
pub(crate) fn associate(batch: &mut Batch, contexts: &RunContexts, task_id: &str) {
    batch.statement(
        "INSERT INTO associations (context_id, task_id) VALUES ($1, $3), ($2, $3) \
         ON CONFLICT DO NOTHING",
        vec![
            Arg::Text(contexts.pipeline_context_id.clone()),
            Arg::Text(contexts.run_context_id.clone()),
            Arg::Text(task_id.to_owned()),
        ],
    );
}

/// What a tracking run that mirrors a pipeline run or a task attempt says.
pub(crate) struct MirroredRun<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) status: &'a str,
    pub(crate) start_time: Millis,
    pub(crate) end_time: Option<Millis>,
    pub(crate) tags: &'a crate::mirror::Pairs,
    pub(crate) params: &'a crate::mirror::Pairs,
}

/// Adds to `batch` the statements that create or update the tracking run mirroring a pipeline
/// run or a task attempt, with its tags and params. An existing run keeps its name, start and
/// artifact root; status and end change.
pub(crate) fn mirror_run(batch: &mut Batch, contexts: &RunContexts, run: MirroredRun<'_>) {
    batch.statement(
        "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, \
         end_time, lifecycle_stage, artifact_uri) \
         VALUES ($1, $2, $3, '', $4, $5, $6, 'active', $7) \
         ON CONFLICT (run_id) DO UPDATE SET status = excluded.status, end_time = excluded.end_time",
        vec![
            Arg::Text(run.run_id.to_owned()),
            Arg::Int(contexts.experiment_id),
            Arg::Text(run.name.to_owned()),
            Arg::Text(run.status.to_owned()),
            Arg::Int(run.start_time),
            Arg::NullableInt(run.end_time),
            Arg::Text(crate::mirror::run_artifact_uri(
                contexts.artifact_location.as_deref(),
                contexts.experiment_id,
                run.run_id,
            )),
        ],
    );
    batch.pairs("tracking_tags", run.run_id, run.tags, true);
    batch.pairs("tracking_params", run.run_id, run.params, false);
}

/// Expands the one [`Store`](crate::Store) implementation for a backend.
///
/// `$store` must have a `pool` field and an `async fn begin(&self)` that opens a write
/// transaction; `$conn` is the backend's connection type, which every helper takes so that the
/// same helper serves inside and outside transactions. The caller imports [`DbContext`], which
/// the expansion uses and the backend's own setup code shares.
macro_rules! store_impl {
    ($store:ty, $conn:ty, $backend:literal) => {
        use $crate::common::{
            artifact_select, event_select, link_select, run_select, task_select, ArtifactRow,
            ContextRow, EventRow, LinkRow, RunContexts, RunRow, TaskRow,
        };
        use $crate::{
            ArtifactRecord, ContextRecord, EventRecord, Millis, NewRun, Result, RunFilter,
            RunRecord, RunStatus, StoreError, TaskFinish, TaskRecord, TaskStart, TaskStatus,
        };

        async fn load_run(conn: &mut $conn, id: &str) -> Result<Option<RunRecord>> {
            let row: Option<RunRow> = sqlx::query_as(concat!(run_select!(), " WHERE r.id = $1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading a run")?;
            row.map(RunRow::into_record).transpose()
        }

        async fn load_task(conn: &mut $conn, id: &str) -> Result<Option<TaskRecord>> {
            let row: Option<TaskRow> = sqlx::query_as(concat!(task_select!(), " WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading a task")?;
            let Some(row) = row else {
                return Ok(None);
            };
            let links: Vec<LinkRow> = sqlx::query_as(concat!(link_select!(), " WHERE e.task_id = $1"))
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading the artifacts of a task")?;
            Ok($crate::common::assemble_tasks(vec![row], links)?.pop())
        }

        /// Sends a batch of statements: one query on SQLite, one per statement elsewhere.
        async fn run_batch(conn: &mut $conn, batch: $crate::mirror::Batch, doing: &str) -> Result<()> {
            for (sql, args) in batch.queries($backend == "sqlite") {
                $crate::tracking::bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                    .execute(&mut *conn)
                    .await
                    .ctx(doing)?;
            }
            Ok(())
        }

        async fn upsert_context(conn: &mut $conn, kind: &str, name: &str, at: Millis) -> Result<String> {
            sqlx::query_scalar(
                "INSERT INTO contexts (id, kind, name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO UPDATE SET name = excluded.name RETURNING id",
            )
            .bind($crate::common::new_id())
            .bind(kind)
            .bind(name)
            .bind(at)
            .fetch_one(&mut *conn)
            .await
            .ctx("recording a lineage context")
        }

        async fn attribute(conn: &mut $conn, contexts: &RunContexts, artifact_id: &str) -> Result<()> {
            sqlx::query(
                "INSERT INTO attributions (context_id, artifact_id) VALUES ($1, $3), ($2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&contexts.pipeline_context_id)
            .bind(&contexts.run_context_id)
            .bind(artifact_id)
            .execute(&mut *conn)
            .await
            .ctx("attributing an artifact to its contexts")?;
            Ok(())
        }

        async fn require_artifact(conn: &mut $conn, id: &str, role: &str, task: &str) -> Result<()> {
            let found: Option<String> = sqlx::query_scalar("SELECT id FROM artifacts WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading an artifact")?;
            match found {
                Some(_) => Ok(()),
                None => Err(StoreError::NotFound(format!("{role} artifact `{id}` of task `{task}`"))),
            }
        }

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn tracking(&self) -> $crate::DynTrackingStore {
                std::sync::Arc::new(self.clone())
            }

            async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
                if run.id.is_empty() {
                    return Err(StoreError::Invalid("a run id must not be empty".to_owned()));
                }
                if run.pipeline_name.is_empty() {
                    return Err(StoreError::Invalid("a pipeline name must not be empty".to_owned()));
                }
                let mut tx = self.begin().await?;
                // Upserting with a no-op update makes RETURNING yield the existing row's id.
                let pipeline_id: String = sqlx::query_scalar(
                    "INSERT INTO pipelines (id, name, digest, spec, source, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (name, digest) DO UPDATE SET name = excluded.name RETURNING id",
                )
                .bind($crate::common::new_id())
                .bind(&run.pipeline_name)
                .bind(&run.pipeline_digest)
                .bind($crate::common::to_json(&run.pipeline_spec))
                .bind(&run.source)
                .bind(run.created_at)
                .fetch_one(&mut *tx)
                .await
                .ctx("recording the pipeline")?;
                sqlx::query(
                    "INSERT INTO experiments (name, artifact_location, lifecycle_stage, created_at, \
                     updated_at) VALUES ($1, NULL, 'active', $2, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&run.pipeline_name)
                .bind(run.created_at)
                .execute(&mut *tx)
                .await
                .ctx("recording the experiment")?;
                let (experiment_id, artifact_location): (i64, Option<String>) =
                    sqlx::query_as("SELECT id, artifact_location FROM experiments WHERE name = $1")
                        .bind(&run.pipeline_name)
                        .fetch_one(&mut *tx)
                        .await
                        .ctx("reading the experiment")?;
                let pipeline_context_id =
                    upsert_context(&mut tx, "pipeline", &run.pipeline_name, run.created_at).await?;
                let run_context_id = upsert_context(&mut tx, "run", &run.id, run.created_at).await?;
                let inserted = sqlx::query(
                    "INSERT INTO runs (id, pipeline_id, experiment_id, status, params, options, source, \
                     created_at, pipeline_context_id, run_context_id) \
                     VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9)",
                )
                .bind(&run.id)
                .bind(&pipeline_id)
                .bind(experiment_id)
                .bind($crate::common::to_json(&run.params))
                .bind($crate::common::to_json(&run.options))
                .bind(&run.source)
                .bind(run.created_at)
                .bind(&pipeline_context_id)
                .bind(&run_context_id)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    if $crate::common::is_unique_violation(&err) {
                        return Err(StoreError::Conflict(format!("run `{}` already exists", run.id)));
                    }
                    return Err($crate::common::db_error(err, "recording the run"));
                }
                let (tags, params) = $crate::mirror::pipeline_run_pairs(&run);
                let contexts = RunContexts {
                    pipeline_context_id,
                    run_context_id,
                    experiment_id,
                    artifact_location,
                };
                let mut batch = $crate::mirror::Batch::default();
                $crate::common::mirror_run(
                    &mut batch,
                    &contexts,
                    $crate::common::MirroredRun {
                        run_id: &run.id,
                        name: &$crate::mirror::pipeline_run_name(&run),
                        status: $crate::mirror::run_status(RunStatus::Pending),
                        start_time: run.created_at,
                        end_time: None,
                        tags: &tags,
                        params: &params,
                    },
                );
                run_batch(&mut tx, batch, "recording the tracking run").await?;
                let record = load_run(&mut tx, &run.id)
                    .await?
                    .ok_or_else(|| StoreError::Backend(format!("run `{}` vanished while being created", run.id)))?;
                tx.commit().await.ctx("committing the new run")?;
                Ok(record)
            }

            async fn get_run(&self, id: &str) -> Result<Option<RunRecord>> {
                let mut conn = self.pool.acquire().await.ctx("connecting to the store")?;
                load_run(&mut conn, id).await
            }

            async fn resolve_run_id(&self, prefix: &str) -> Result<String> {
                let prefix = prefix.trim();
                let exact: Option<String> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
                    .bind(prefix)
                    .fetch_optional(&self.pool)
                    .await
                    .ctx("resolving a run id")?;
                if let Some(id) = exact {
                    return Ok(id);
                }
                if prefix.chars().count() < 4 {
                    return Err(StoreError::Invalid(format!(
                        "run id prefix `{prefix}` is too short: give at least 4 characters"
                    )));
                }
                let candidates: Vec<String> =
                    sqlx::query_scalar(r"SELECT id FROM runs WHERE id LIKE $1 ESCAPE '\' ORDER BY id")
                        .bind(format!("{}%", $crate::common::escape_like(prefix)))
                        .fetch_all(&self.pool)
                        .await
                        .ctx("resolving a run id")?;
                // SQLite's LIKE ignores ASCII case; a prefix must match exactly on both backends.
                let mut matches: Vec<String> =
                    candidates.into_iter().filter(|id| id.starts_with(prefix)).collect();
                match matches.len() {
                    0 => Err(StoreError::NotFound(format!("run `{prefix}`"))),
                    1 => Ok(matches.remove(0)),
                    n => {
                        const SHOWN: usize = 10;
                        let mut listed = matches.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
                        if n > SHOWN {
                            listed.push_str(&format!(" and {} more", n - SHOWN));
                        }
                        Err(StoreError::Conflict(format!(
                            "run id prefix `{prefix}` is ambiguous: it matches {listed}"
                        )))
                    }
                }
            }

            async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
                let sql = format!(
                    "{} {} ORDER BY {} LIMIT $5 OFFSET $6",
                    run_select!(),
                    $crate::common::RUN_FILTER_WHERE,
                    $crate::common::run_order(filter),
                );
                let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(filter.pipeline.as_deref())
                    .bind(filter.status.map(RunStatus::as_str))
                    .bind(filter.created_after)
                    .bind(filter.created_before)
                    .bind(filter.limit.map_or(i64::MAX, i64::from))
                    .bind(i64::from(filter.offset.unwrap_or(0)))
                    .fetch_all(&self.pool)
                    .await
                    .ctx("listing runs")?;
                rows.into_iter().map(RunRow::into_record).collect()
            }

            async fn count_runs(&self, filter: &RunFilter) -> Result<u64> {
                let sql = format!(
                    "SELECT COUNT(*) FROM runs r JOIN pipelines p ON p.id = r.pipeline_id {}",
                    $crate::common::RUN_FILTER_WHERE,
                );
                let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(filter.pipeline.as_deref())
                    .bind(filter.status.map(RunStatus::as_str))
                    .bind(filter.created_after)
                    .bind(filter.created_before)
                    .fetch_one(&self.pool)
                    .await
                    .ctx("counting runs")?;
                Ok(count.max(0) as u64)
            }

            async fn counts(&self) -> Result<$crate::StoreCounts> {
                let by_status: Vec<(String, i64)> =
                    sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
                        .fetch_all(&self.pool)
                        .await
                        .ctx("counting runs by status")?;
                let (pipelines, artifacts, experiments, models): (i64, i64, i64, i64) =
                    sqlx::query_as(
                        "SELECT (SELECT COUNT(DISTINCT name) FROM pipelines), \
                         (SELECT COUNT(*) FROM artifacts), \
                         (SELECT COUNT(*) FROM experiments WHERE lifecycle_stage = 'active'), \
                         (SELECT COUNT(*) FROM registered_models)",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .ctx("counting records")?;
                let count = |n: i64| n.max(0) as u64;
                Ok($crate::StoreCounts {
                    runs_by_status: by_status
                        .into_iter()
                        .map(|(status, n)| (status, count(n)))
                        .collect(),
                    pipelines: count(pipelines),
                    artifacts: count(artifacts),
                    experiments: count(experiments),
                    registered_models: count(models),
                })
            }

            async fn set_run_status(
                &self,
                id: &str,
                status: RunStatus,
                message: Option<&str>,
                at: Millis,
            ) -> Result<()> {
                let ended_at = status.is_terminal().then_some(at);
                let mut tx = self.begin().await?;
                let result = sqlx::query(
                    "UPDATE runs SET status = $2, message = $3, \
                     started_at = CASE WHEN started_at IS NULL AND $2 = 'running' THEN $4 ELSE started_at END, \
                     ended_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(status.as_str())
                .bind(message)
                .bind(at)
                .bind(ended_at)
                .execute(&mut *tx)
                .await
                .ctx("updating the run status")?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("run `{id}`")));
                }
                sqlx::query("UPDATE tracking_runs SET status = $2, end_time = $3 WHERE run_id = $1")
                    .bind(id)
                    .bind($crate::mirror::run_status(status))
                    .bind(ended_at)
                    .execute(&mut *tx)
                    .await
                    .ctx("updating the tracking run status")?;
                tx.commit().await.ctx("committing the run status")
            }

            async fn set_run_owner(&self, id: &str, owner: Option<&str>) -> Result<()> {
                let result = sqlx::query("UPDATE runs SET owner = $2 WHERE id = $1")
                    .bind(id)
                    .bind(owner)
                    .execute(&self.pool)
                    .await
                    .ctx("updating the run owner")?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("run `{id}`")));
                }
                Ok(())
            }

            async fn request_cancel(&self, id: &str) -> Result<()> {
                let result = sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .ctx("requesting cancellation")?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("run `{id}`")));
                }
                Ok(())
            }

            async fn clear_cancel(&self, id: &str) -> Result<()> {
                let result = sqlx::query("UPDATE runs SET cancel_requested = 0 WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .ctx("clearing a cancel request")?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("run `{id}`")));
                }
                Ok(())
            }

            async fn task_started(&self, run_id: &str, start: TaskStart) -> Result<String> {
                if start.attempt == 0 {
                    return Err(StoreError::Invalid(format!(
                        "attempt numbers start at 1 (task `{}`)",
                        start.name
                    )));
                }
                let mut tx = self.begin().await?;
                // A new attempt is not terminal: it forgets the previous attempt's end. The
                // run's contexts come back with the row: every statement is a round trip to the
                // database, and this one runs for every step.
                let started: std::result::Result<(String, String, String, i64, Option<String>), _> =
                    sqlx::query_as(
                    "INSERT INTO tasks (id, run_id, name, step, iteration, status, attempts, executor, \
                     resources, cache_key, log_uri, input_parameters, output_parameters, created_at, \
                     started_at, remote_handle) \
                     VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9, $10, $11, '{}', $12, $12, $13) \
                     ON CONFLICT (run_id, name) DO UPDATE SET step = excluded.step, \
                     iteration = excluded.iteration, status = 'running', attempts = excluded.attempts, \
                     executor = excluded.executor, resources = excluded.resources, \
                     cache_key = excluded.cache_key, log_uri = excluded.log_uri, \
                     input_parameters = excluded.input_parameters, started_at = excluded.started_at, \
                     remote_handle = excluded.remote_handle, \
                     ended_at = NULL, exit_code = NULL, message = NULL, cached_from = NULL, \
                     finish_seq = NULL \
                     RETURNING id, \
                     (SELECT r.pipeline_context_id FROM runs r WHERE r.id = tasks.run_id), \
                     (SELECT r.run_context_id FROM runs r WHERE r.id = tasks.run_id), \
                     (SELECT r.experiment_id FROM runs r WHERE r.id = tasks.run_id), \
                     (SELECT e.artifact_location FROM runs r JOIN experiments e \
                     ON e.id = r.experiment_id WHERE r.id = tasks.run_id)",
                )
                .bind($crate::common::new_id())
                .bind(run_id)
                .bind(&start.name)
                .bind(&start.step)
                .bind(start.iteration)
                .bind(i64::from(start.attempt))
                .bind(&start.executor)
                .bind($crate::common::to_json(&start.resources))
                .bind(&start.cache_key)
                .bind(&start.log_uri)
                .bind($crate::common::to_json(&start.input_parameters))
                .bind(start.started_at)
                .bind(&start.remote_handle)
                .fetch_one(&mut *tx)
                .await;
                let (task_id, pipeline_context_id, run_context_id, experiment_id, artifact_location) =
                    match started {
                        Ok(row) => row,
                        Err(err) if $crate::common::is_foreign_key_violation(&err) => {
                            return Err(StoreError::NotFound(format!("run `{run_id}`")));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "recording the task start")),
                    };
                let contexts = RunContexts {
                    pipeline_context_id,
                    run_context_id,
                    experiment_id,
                    artifact_location,
                };
                for (input, artifact) in &start.input_artifacts {
                    require_artifact(&mut tx, &artifact.id, "input", &start.name).await?;
                    // Keyed by (task, kind, name): a retried attempt does not duplicate its inputs.
                    sqlx::query(
                        "INSERT INTO events (task_id, artifact_id, kind, name, created_at) \
                         VALUES ($1, $2, 'input', $3, $4) \
                         ON CONFLICT (task_id, kind, name) DO UPDATE SET artifact_id = excluded.artifact_id",
                    )
                    .bind(&task_id)
                    .bind(&artifact.id)
                    .bind(input)
                    .bind(start.started_at)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording an input event")?;
                }
                let mut batch = $crate::mirror::Batch::default();
                $crate::common::associate(&mut batch, &contexts, &task_id);
                let identity = $crate::mirror::TaskIdentity {
                    run_id,
                    task_id: &task_id,
                    name: &start.name,
                    step: &start.step,
                    iteration: start.iteration,
                    attempt: start.attempt,
                    status: TaskStatus::Running,
                };
                let mut tags = $crate::mirror::task_tags(&identity);
                tags.insert("capstan.executor".into(), start.executor.clone());
                $crate::common::mirror_run(
                    &mut batch,
                    &contexts,
                    $crate::common::MirroredRun {
                        run_id: &$crate::attempt_run_id(&task_id, start.attempt),
                        name: &start.name,
                        status: $crate::mirror::task_status(TaskStatus::Running),
                        start_time: start.started_at,
                        end_time: None,
                        tags: &tags,
                        params: &$crate::mirror::input_params(&start.input_parameters),
                    },
                );
                run_batch(&mut tx, batch, "recording the task start").await?;
                tx.commit().await.ctx("committing the task start")?;
                Ok(task_id)
            }

            async fn task_pending(&self, run_id: &str, name: &str, message: Option<&str>) -> Result<()> {
                let mut tx = self.begin().await?;
                let task: Option<(String, i64)> = sqlx::query_as(
                    "UPDATE tasks SET status = 'pending', message = $3, ended_at = NULL, finish_seq = NULL \
                     WHERE run_id = $1 AND name = $2 RETURNING id, attempts",
                )
                .bind(run_id)
                .bind(name)
                .bind(message)
                .fetch_optional(&mut *tx)
                .await
                .ctx("recording a pending task")?;
                let Some((task_id, attempts)) = task else {
                    return Err(StoreError::NotFound(format!("task `{name}` of run `{run_id}`")));
                };
                // The attempt that ran is over: it failed, or its orchestrator died under it.
                let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                sqlx::query("UPDATE tracking_runs SET status = 'FAILED', end_time = $2 WHERE run_id = $1")
                    .bind($crate::attempt_run_id(&task_id, attempt))
                    .bind($crate::now_millis())
                    .execute(&mut *tx)
                    .await
                    .ctx("ending the tracking run of an attempt")?;
                tx.commit().await.ctx("committing a pending task")
            }

            async fn task_finished(&self, run_id: &str, finish: TaskFinish) -> Result<$crate::FinishedTask> {
                if finish.status == TaskStatus::Running {
                    return Err(StoreError::Invalid(format!(
                        "task `{}` cannot finish as running",
                        finish.name
                    )));
                }
                let mut output_names = std::collections::BTreeSet::new();
                for name in finish
                    .new_artifacts
                    .iter()
                    .map(|a| &a.name)
                    .chain(finish.reused_artifacts.keys())
                {
                    if !output_names.insert(name) {
                        return Err(StoreError::Invalid(format!(
                            "task `{}` has two output artifacts named `{name}`",
                            finish.name
                        )));
                    }
                }
                let terminal = finish.status.is_terminal();
                let mut tx = self.begin().await?;
                // Bumping the run's counter takes the run row's write lock, so concurrent finishes
                // in one run get distinct, gapless sequence numbers.
                let counter: Option<(i64, String, String, i64, Option<String>)> = sqlx::query_as(
                    "UPDATE runs SET last_finish_seq = last_finish_seq + $2 WHERE id = $1 \
                     RETURNING last_finish_seq, pipeline_context_id, run_context_id, experiment_id, \
                     (SELECT e.artifact_location FROM experiments e WHERE e.id = runs.experiment_id)",
                )
                .bind(run_id)
                .bind(i64::from(terminal))
                .fetch_optional(&mut *tx)
                .await
                .ctx("numbering the task finish")?;
                let Some((seq, pipeline_context_id, run_context_id, experiment_id, artifact_location)) =
                    counter
                else {
                    return Err(StoreError::NotFound(format!("run `{run_id}`")));
                };
                let contexts = RunContexts {
                    pipeline_context_id,
                    run_context_id,
                    experiment_id,
                    artifact_location,
                };
                let finish_seq = terminal.then_some(seq);
                let ended_at = terminal.then_some(finish.ended_at);
                let (task_id, attempts, started_at): (String, i64, Option<i64>) = sqlx::query_as(
                    "INSERT INTO tasks (id, run_id, name, step, iteration, status, attempts, exit_code, \
                     resources, cache_key, cached_from, message, input_parameters, output_parameters, \
                     created_at, ended_at, finish_seq) \
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, '{}', $8, $9, $10, $15, $11, $12, $13, $14) \
                     ON CONFLICT (run_id, name) DO UPDATE SET step = excluded.step, \
                     iteration = excluded.iteration, status = excluded.status, \
                     exit_code = excluded.exit_code, \
                     cache_key = COALESCE(excluded.cache_key, tasks.cache_key), \
                     cached_from = excluded.cached_from, message = excluded.message, \
                     input_parameters = CASE WHEN excluded.input_parameters = '{}' \
                     THEN tasks.input_parameters ELSE excluded.input_parameters END, \
                     output_parameters = excluded.output_parameters, ended_at = excluded.ended_at, \
                     finish_seq = excluded.finish_seq \
                     RETURNING id, attempts, started_at",
                )
                .bind($crate::common::new_id())
                .bind(run_id)
                .bind(&finish.name)
                .bind(&finish.step)
                .bind(finish.iteration)
                .bind(finish.status.as_str())
                .bind(finish.exit_code.map(i64::from))
                .bind(&finish.cache_key)
                .bind(&finish.cached_from)
                .bind(&finish.message)
                .bind($crate::common::to_json(&finish.output_parameters))
                .bind(finish.ended_at)
                .bind(ended_at)
                .bind(finish_seq)
                .bind($crate::common::to_json(&finish.input_parameters))
                .fetch_one(&mut *tx)
                .await
                .ctx("recording the task finish")?;
                let mut batch = $crate::mirror::Batch::default();
                // A task that started was associated with its contexts then.
                if started_at.is_none() {
                    $crate::common::associate(&mut batch, &contexts, &task_id);
                }
                let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                let identity = $crate::mirror::TaskIdentity {
                    run_id,
                    task_id: &task_id,
                    name: &finish.name,
                    step: &finish.step,
                    iteration: finish.iteration,
                    attempt,
                    status: finish.status,
                };
                // A started attempt's run already carries its identity: only what changed is
                // written (every row written is a WAL page or two on the per-step path).
                let mut tags = match started_at {
                    Some(_) => $crate::mirror::Pairs::from([(
                        "capstan.status".to_owned(),
                        finish.status.as_str().to_owned(),
                    )]),
                    None => $crate::mirror::task_tags(&identity),
                };
                if let Some(source) = &finish.cached_from {
                    tags.insert("capstan.cached".into(), "true".into());
                    tags.insert("capstan.cached_from".into(), source.clone());
                }
                if let Some(message) = &finish.message {
                    tags.insert("capstan.message".into(), message.clone());
                }
                // Likewise its input params were written when it started.
                let mut params = match started_at {
                    Some(_) => $crate::mirror::Pairs::new(),
                    None => $crate::mirror::input_params(&finish.input_parameters),
                };
                params.extend($crate::mirror::output_params(&finish.output_parameters));
                $crate::common::mirror_run(
                    &mut batch,
                    &contexts,
                    $crate::common::MirroredRun {
                        run_id: &$crate::attempt_run_id(&task_id, attempt),
                        name: &finish.name,
                        status: $crate::mirror::task_status(finish.status),
                        start_time: started_at.unwrap_or(finish.ended_at),
                        end_time: ended_at,
                        tags: &tags,
                        params: &params,
                    },
                );
                // The outputs are exactly what this finish reports; an earlier attempt's are replaced.
                batch.statement(
                    "DELETE FROM events WHERE task_id = $1 AND kind = 'output'",
                    vec![$crate::tracking::Arg::Text(task_id.clone())],
                );
                run_batch(&mut tx, batch, "recording the task finish").await?;
                let mut outputs: Vec<(&str, &str)> = Vec::new();
                for artifact in &finish.new_artifacts {
                    let inserted = sqlx::query(
                        "INSERT INTO artifacts (id, name, uri, digest, size, type_name, is_dir, metadata, \
                         created_at, run_id, producer_task_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&artifact.id)
                    .bind(&artifact.name)
                    .bind(&artifact.uri)
                    .bind(&artifact.digest)
                    .bind($crate::common::to_i64(artifact.size, "artifact size")?)
                    .bind(&artifact.type_name)
                    .bind(i64::from(artifact.is_dir))
                    .bind($crate::common::to_json(&artifact.metadata))
                    .bind(finish.ended_at)
                    .bind(run_id)
                    .bind(&task_id)
                    .execute(&mut *tx)
                    .await;
                    if let Err(err) = inserted {
                        if $crate::common::is_unique_violation(&err) {
                            return Err(StoreError::Conflict(format!(
                                "artifact `{}` already exists",
                                artifact.id
                            )));
                        }
                        return Err($crate::common::db_error(err, "recording an artifact"));
                    }
                    outputs.push((&artifact.name, &artifact.id));
                }
                for (name, artifact) in &finish.reused_artifacts {
                    require_artifact(&mut tx, &artifact.id, "reused", &finish.name).await?;
                    outputs.push((name, &artifact.id));
                }
                for (name, artifact_id) in outputs {
                    sqlx::query(
                        "INSERT INTO events (task_id, artifact_id, kind, name, created_at) \
                         VALUES ($1, $2, 'output', $3, $4)",
                    )
                    .bind(&task_id)
                    .bind(artifact_id)
                    .bind(name)
                    .bind(finish.ended_at)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording an output event")?;
                    attribute(&mut tx, &contexts, artifact_id).await?;
                }
                tx.commit().await.ctx("committing the task finish")?;
                Ok($crate::FinishedTask { id: task_id, attempts: attempt })
            }

            async fn list_tasks(&self, run_id: &str) -> Result<Vec<TaskRecord>> {
                let mut conn = self.pool.acquire().await.ctx("connecting to the store")?;
                let rows: Vec<TaskRow> =
                    sqlx::query_as(concat!(task_select!(), " WHERE run_id = $1 ORDER BY seq"))
                        .bind(run_id)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("listing tasks")?;
                let links: Vec<LinkRow> = sqlx::query_as(concat!(
                    link_select!(),
                    " JOIN tasks t ON t.id = e.task_id WHERE t.run_id = $1"
                ))
                .bind(run_id)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading the artifacts of tasks")?;
                $crate::common::assemble_tasks(rows, links)
            }

            async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
                let mut conn = self.pool.acquire().await.ctx("connecting to the store")?;
                load_task(&mut conn, task_id).await
            }

            async fn cache_lookup(&self, cache_key: &str) -> Result<Option<TaskRecord>> {
                let mut conn = self.pool.acquire().await.ctx("connecting to the store")?;
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM tasks WHERE cache_key = $1 AND status = 'succeeded' \
                     ORDER BY COALESCE(ended_at, 0) DESC, seq DESC LIMIT 1",
                )
                .bind(cache_key)
                .fetch_optional(&mut *conn)
                .await
                .ctx("looking up the cache")?;
                match id {
                    Some(id) => load_task(&mut conn, &id).await,
                    None => Ok(None),
                }
            }

            async fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>> {
                let row: Option<ArtifactRow> = sqlx::query_as(concat!(artifact_select!(), " WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .ctx("reading an artifact")?;
                row.map(ArtifactRow::into_record).transpose()
            }

            async fn list_artifacts(&self, run_id: &str) -> Result<Vec<ArtifactRecord>> {
                let rows: Vec<ArtifactRow> =
                    sqlx::query_as(concat!(artifact_select!(), " WHERE run_id = $1 ORDER BY seq"))
                        .bind(run_id)
                        .fetch_all(&self.pool)
                        .await
                        .ctx("listing artifacts")?;
                rows.into_iter().map(ArtifactRow::into_record).collect()
            }

            async fn artifact_events(&self, artifact_id: &str) -> Result<Vec<EventRecord>> {
                let rows: Vec<EventRow> =
                    sqlx::query_as(concat!(event_select!(), " WHERE artifact_id = $1 ORDER BY seq"))
                        .bind(artifact_id)
                        .fetch_all(&self.pool)
                        .await
                        .ctx("reading the events of an artifact")?;
                rows.into_iter().map(EventRow::into_record).collect()
            }

            async fn task_events(&self, task_id: &str) -> Result<Vec<EventRecord>> {
                let rows: Vec<EventRow> =
                    sqlx::query_as(concat!(event_select!(), " WHERE task_id = $1 ORDER BY seq"))
                        .bind(task_id)
                        .fetch_all(&self.pool)
                        .await
                        .ctx("reading the events of a task")?;
                rows.into_iter().map(EventRow::into_record).collect()
            }

            async fn run_contexts(&self, run_id: &str) -> Result<Vec<ContextRecord>> {
                let rows: Vec<ContextRow> = sqlx::query_as(
                    "SELECT c.id, c.kind, c.name FROM runs r \
                     JOIN contexts c ON c.id = r.pipeline_context_id OR c.id = r.run_context_id \
                     WHERE r.id = $1 ORDER BY c.kind",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await
                .ctx("reading the contexts of a run")?;
                Ok(rows.into_iter().map(ContextRow::into_record).collect())
            }
        }
    };
}
pub(crate) use store_impl;
