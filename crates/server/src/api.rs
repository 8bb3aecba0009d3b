//! capstan's own JSON API under `/api/v1`, the one the web UI reads.
//!
//! Every list is filtered, sorted and paged in the store's SQL; a page never asks for one
//! record per row. Live views use server-sent events: the server polls the store for one run
//! (two indexed queries) and sends the run again only when it changed.
//!
//! The document of this API is [`openapi`], served at `/api/v1/openapi.json`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use capstan_engine::lineage::{Direction, lineage};
use capstan_store::{
    ArtifactRecord, EventKind, RunFilter, RunRecord, RunSort, RunStatus, StoreError, TaskRecord,
    TaskStatus,
};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ServerState;

/// How often live views look at the store.
const POLL: Duration = Duration::from_millis(400);
/// The most runs one page of `/api/v1/runs` returns.
const MAX_RUNS_PAGE: u32 = 500;
/// The most log bytes one read returns.
const MAX_LOG_READ: usize = 1 << 20;
/// The most bytes of an artifact a preview returns.
const PREVIEW_BYTES: usize = 256 * 1024;

pub fn routes() -> Router<ServerState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/home", get(home))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(run_detail))
        .route("/api/v1/runs/{id}/events", get(run_events))
        .route("/api/v1/runs/{id}/log", get(task_log))
        .route("/api/v1/runs/{id}/log/stream", get(task_log_stream))
        .route("/api/v1/artifacts/{id}", get(artifact_detail))
        .route("/api/v1/artifacts/{id}/content", get(artifact_content))
        .route("/api/v1/artifacts/{id}/preview", get(artifact_preview))
        .route("/api/v1/lineage/{id}", get(lineage_graph))
}

/// An error as JSON: `{"error": "..."}` with a fitting status.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, format!("{} not found", what.into()))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let status = match err {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, err.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
    }
}

impl From<capstan_artifacts::ArtifactError> for ApiError {
    fn from(err: capstan_artifacts::ArtifactError) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// A run as lists show it: no spec, no options.
fn run_summary(run: &RunRecord) -> Value {
    json!({
        "id": run.id,
        "pipeline": run.pipeline_name,
        "status": run.status,
        "experiment_id": run.experiment_id,
        "params": run.params,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "message": run.message,
        "source": run.source,
    })
}

async fn page(state: &ServerState, filter: RunFilter) -> ApiResult<Vec<Value>> {
    let runs = state.store.list_runs(&filter).await?;
    Ok(runs.iter().map(run_summary).collect())
}

async fn home(State(state): State<ServerState>) -> ApiResult {
    let recent = RunFilter {
        limit: Some(10),
        ..RunFilter::default()
    };
    let running = RunFilter {
        status: Some(RunStatus::Running),
        limit: Some(20),
        ..RunFilter::default()
    };
    let failed = RunFilter {
        status: Some(RunStatus::Failed),
        limit: Some(10),
        ..RunFilter::default()
    };
    Ok(Json(json!({
        "counts": state.store.counts().await?,
        "recent": page(&state, recent).await?,
        "running": page(&state, running).await?,
        "failed": page(&state, failed).await?,
    })))
}

#[derive(Debug, Default, Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    status: Option<String>,
    /// Created at or after (ms since the epoch).
    after: Option<i64>,
    /// Created before (ms since the epoch).
    before: Option<i64>,
    sort: Option<String>,
    /// `asc` or `desc` (the default).
    order: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_runs(State(state): State<ServerState>, Query(q): Query<RunsQuery>) -> ApiResult {
    let nonempty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let ascending = match q.order.as_deref() {
        None | Some("" | "desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "order must be asc or desc, got `{other}`"
            )));
        }
    };
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_RUNS_PAGE {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_RUNS_PAGE}, got {limit}"
        )));
    }
    let filter = RunFilter {
        pipeline: nonempty(&q.pipeline),
        status: nonempty(&q.status)
            .map(|s| s.parse::<RunStatus>())
            .transpose()?,
        created_after: q.after,
        created_before: q.before,
        sort: nonempty(&q.sort)
            .map(|s| s.parse::<RunSort>())
            .transpose()?
            .unwrap_or_default(),
        ascending,
        limit: Some(limit),
        offset: q.offset,
    };
    let total = state.store.count_runs(&filter).await?;
    Ok(Json(json!({
        "runs": page(&state, filter.clone()).await?,
        "total": total,
        "limit": limit,
        "offset": filter.offset.unwrap_or(0),
    })))
}

/// The status one DAG node shows for the tasks of its step (several for a fan-out).
fn step_status(tasks: &[&TaskRecord]) -> &'static str {
    let has = |s: TaskStatus| tasks.iter().any(|t| t.status == s);
    let all = |s: TaskStatus| tasks.iter().all(|t| t.status == s);
    if tasks.is_empty() {
        "pending"
    } else if has(TaskStatus::Running) {
        "running"
    } else if has(TaskStatus::Failed) {
        "failed"
    } else if has(TaskStatus::Cancelled) {
        "cancelled"
    } else if has(TaskStatus::Pending) {
        "pending"
    } else if all(TaskStatus::Cached) {
        "cached"
    } else if all(TaskStatus::Skipped) {
        "skipped"
    } else {
        "succeeded"
    }
}

/// The DAG of a run: one node per step of its pipeline, edges from each step to the steps
/// that wait for it. Tasks that match no step (an older spec) become nodes of their own.
fn dag(run: &RunRecord, tasks: &[TaskRecord]) -> Value {
    let mut by_step: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        by_step.entry(t.step.as_str()).or_default().push(t);
    }
    // A fan-out's tasks in iteration order, whatever order they started in.
    for of_step in by_step.values_mut() {
        of_step.sort_by_key(|t| t.iteration);
    }
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    if let Ok(pipeline) =
        serde_json::from_value::<capstan_spec::Pipeline>(run.pipeline_spec.clone())
    {
        // Exit handlers run after every main step: draw them after the main steps that
        // nothing else waits for.
        let waited_on: std::collections::BTreeSet<&str> =
            pipeline.steps.values().flat_map(|s| s.upstream()).collect();
        let sinks: Vec<&str> = pipeline
            .steps
            .keys()
            .map(String::as_str)
            .filter(|name| !waited_on.contains(name))
            .collect();
        for step in pipeline.all_steps() {
            let of_step = by_step.get(step.name.as_str()).cloned().unwrap_or_default();
            seen.insert(step.name.clone());
            nodes.push(json!({
                "id": step.name,
                "status": step_status(&of_step),
                "finally": pipeline.is_finally(&step.name),
                "tasks": of_step.iter().map(|t| &t.name).collect::<Vec<_>>(),
            }));
            let upstream = step.upstream();
            for up in &upstream {
                edges.push(json!({"from": up, "to": step.name}));
            }
            if upstream.is_empty() && pipeline.is_finally(&step.name) {
                for sink in &sinks {
                    edges.push(json!({"from": sink, "to": step.name, "finally": true}));
                }
            }
        }
    }
    for (step, of_step) in &by_step {
        if seen.contains(*step) {
            continue;
        }
        nodes.push(json!({
            "id": step,
            "status": step_status(of_step),
            "finally": false,
            "tasks": of_step.iter().map(|t| &t.name).collect::<Vec<_>>(),
        }));
    }
    json!({"nodes": nodes, "edges": edges})
}

async fn load_run(state: &ServerState, id: &str) -> ApiResult<RunRecord> {
    let id = state.store.resolve_run_id(id).await?;
    state
        .store
        .get_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id}")))
}

/// Everything the run page shows, in one answer.
async fn detail_json(state: &ServerState, run: &RunRecord) -> ApiResult<Value> {
    let tasks = state.store.list_tasks(&run.id).await?;
    let artifacts = state.store.list_artifacts(&run.id).await?;
    let tracking = state.store.tracking().get_tracking_run(&run.id).await?;
    let (params, metrics) = match &tracking {
        Some(t) => (json!(t.params), json!(t.metrics)),
        None => (json!([]), json!([])),
    };
    Ok(json!({
        "run": {
            "id": run.id,
            "pipeline": run.pipeline_name,
            "pipeline_digest": run.pipeline_digest,
            "status": run.status,
            "experiment_id": run.experiment_id,
            "params": run.params,
            "options": run.options,
            "source": run.source,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "message": run.message,
            "cancel_requested": run.cancel_requested,
        },
        "dag": dag(run, &tasks),
        "tasks": tasks,
        "artifacts": artifacts,
        "tracking": {"params": params, "metrics": metrics},
    }))
}

async fn run_detail(State(state): State<ServerState>, Path(id): Path<String>) -> ApiResult {
    let run = load_run(&state, &id).await?;
    Ok(Json(detail_json(&state, &run).await?))
}

/// What changes while a run executes; equal fingerprints mean nothing to send.
fn fingerprint(run: &RunRecord, tasks: &[TaskRecord]) -> String {
    let mut out = format!("{}:{:?}", run.status, run.ended_at);
    for t in tasks {
        out.push_str(&format!("|{}:{}:{}", t.name, t.status, t.attempts));
    }
    out
}

/// `event: run` with the run detail, first at once and then whenever the run changes; the
/// stream ends after the run reaches a terminal status.
async fn run_events(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let run = load_run(&state, &id).await?;
    let stream = futures::stream::unfold(
        (state, run.id, String::new(), false),
        |(state, id, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let current = async {
                    let run = state.store.get_run(&id).await?;
                    let tasks = state.store.list_tasks(&id).await?;
                    Ok::<_, StoreError>(run.map(|r| (r, tasks)))
                };
                match current.await {
                    Ok(Some((run, tasks))) => {
                        let print = fingerprint(&run, &tasks);
                        if print != last {
                            let event = match detail_json(&state, &run).await {
                                Ok(body) => Event::default().event("run").data(body.to_string()),
                                Err(err) => Event::default().event("error").data(err.1),
                            };
                            let ended = run.status.is_terminal();
                            return Some((Ok(event), (state, id, print, ended)));
                        }
                        if run.status.is_terminal() {
                            return None;
                        }
                    }
                    Ok(None) => return None,
                    Err(err) => {
                        let event = Event::default().event("error").data(err.to_string());
                        return Some((Ok(event), (state, id, last, true)));
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    task: String,
    /// 1-based; the latest attempt by default.
    attempt: Option<u32>,
    /// Byte offset to read from.
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn find_task(state: &ServerState, run_id: &str, name: &str) -> ApiResult<TaskRecord> {
    let tasks = state.store.list_tasks(run_id).await?;
    tasks
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::not_found(format!("task `{name}` of run {run_id}")))
}

/// The log bytes of one attempt; a step that printed nothing has no log and an empty one.
async fn log_bytes(state: &ServerState, run_id: &str, task: &str, attempt: u32) -> Vec<u8> {
    let Ok((_, uri)) = state.artifacts.log_path(run_id, task, attempt) else {
        return Vec::new();
    };
    state.artifacts.read_log(&uri).await.unwrap_or_default()
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 character.
fn utf8_prefix(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes,
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        Err(_) => bytes,
    }
}

async fn task_log(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let run = load_run(&state, &id).await?;
    let task = find_task(&state, &run.id, &q.task).await?;
    let attempt = q.attempt.unwrap_or(task.attempts.max(1));
    let bytes = log_bytes(&state, &run.id, &task.name, attempt).await;
    let offset = q.offset.unwrap_or(0).min(bytes.len());
    let limit = q.limit.unwrap_or(MAX_LOG_READ).min(MAX_LOG_READ);
    let end = (offset + limit).min(bytes.len());
    let chunk = utf8_prefix(&bytes[offset..end]);
    Ok(Json(json!({
        "task": task.name,
        "attempt": attempt,
        "attempts": task.attempts,
        "offset": offset,
        "next_offset": offset + chunk.len(),
        "size": bytes.len(),
        "text": String::from_utf8_lossy(chunk),
        "complete": task.status.is_terminal(),
    })))
}

/// `event: log` with each new piece of the attempt's log as it is written; `event: end` when the
/// task has ended and everything was sent.
async fn task_log_stream(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let run = load_run(&state, &id).await?;
    let task = find_task(&state, &run.id, &q.task).await?;
    let attempt = q.attempt.unwrap_or(task.attempts.max(1));
    let start = (
        state,
        run.id,
        task.name,
        attempt,
        q.offset.unwrap_or(0),
        false,
    );
    let stream = futures::stream::unfold(
        start,
        |(state, run_id, name, attempt, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                // Read the status before the log so that output written just before the task
                // ended is never missed.
                let ended = match find_task(&state, &run_id, &name).await {
                    Ok(t) => t.status.is_terminal() && t.attempts <= attempt,
                    Err(_) => true,
                };
                let bytes = log_bytes(&state, &run_id, &name, attempt).await;
                if bytes.len() > offset {
                    let end = (offset + MAX_LOG_READ).min(bytes.len());
                    let chunk = utf8_prefix(&bytes[offset..end]);
                    if !chunk.is_empty() {
                        let text = String::from_utf8_lossy(chunk).into_owned();
                        let next = offset + chunk.len();
                        let event = Event::default()
                            .event("log")
                            .id(next.to_string())
                            .data(json!({"offset": offset, "text": text}).to_string());
                        return Some((Ok(event), (state, run_id, name, attempt, next, false)));
                    }
                }
                if ended {
                    let event = Event::default().event("end").data("{}");
                    return Some((Ok(event), (state, run_id, name, attempt, offset, true)));
                }
                tokio::time::sleep(POLL).await;
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn load_artifact(state: &ServerState, id: &str) -> ApiResult<ArtifactRecord> {
    state
        .store
        .get_artifact(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("artifact {id}")))
}

fn task_summary(t: &TaskRecord) -> Value {
    json!({"id": t.id, "run_id": t.run_id, "name": t.name, "status": t.status})
}

async fn artifact_detail(State(state): State<ServerState>, Path(id): Path<String>) -> ApiResult {
    let artifact = load_artifact(&state, &id).await?;
    let events = state.store.artifact_events(&artifact.id).await?;
    let mut producer = Value::Null;
    let mut consumers = Vec::new();
    for ev in &events {
        let Some(task) = state.store.get_task(&ev.task_id).await? else {
            continue;
        };
        let mut summary = task_summary(&task);
        summary["as"] = json!(ev.name);
        match ev.kind {
            EventKind::Output if task.id == artifact.producer_task_id => producer = summary,
            EventKind::Output => {}
            EventKind::Input => consumers.push(summary),
        }
    }
    let entries = if artifact.is_dir {
        let root = state.artifacts.local_path(&artifact.uri).await?;
        dir_entries(&root)
    } else {
        vec![]
    };
    Ok(Json(json!({
        "artifact": artifact,
        "producer": producer,
        "consumers": consumers,
        "entries": entries,
    })))
}

/// Relative paths of the files in a stored directory, sorted, at most 1,000.
fn dir_entries(root: &std::path::Path) -> Vec<Value> {
    let mut out: Vec<Value> = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .take(1000)
        .filter_map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .ok()?
                .to_string_lossy()
                .into_owned();
            let size = e.metadata().ok()?.len();
            Some(json!({"path": rel, "size": size}))
        })
        .collect();
    out.shrink_to_fit();
    out
}

#[derive(Debug, Default, Deserialize)]
struct ContentQuery {
    /// A file inside a directory artifact.
    path: Option<String>,
    /// Answer as an attachment (a download) instead of inline.
    download: Option<bool>,
}

/// The local file holding an artifact (or one file of a directory artifact). Paths that leave
/// the artifact are refused.
async fn artifact_file(
    state: &ServerState,
    artifact: &ArtifactRecord,
    path: Option<&str>,
) -> ApiResult<std::path::PathBuf> {
    let root = state.artifacts.local_path(&artifact.uri).await?;
    match path.filter(|p| !p.is_empty()) {
        None if artifact.is_dir => Err(ApiError::bad(
            "this artifact is a directory: name a file in it with ?path=",
        )),
        None => Ok(root),
        Some(p) => {
            let rel = std::path::Path::new(p);
            if !artifact.is_dir
                || rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ApiError::bad(format!(
                    "bad path `{p}` in artifact {}",
                    artifact.id
                )));
            }
            let file = root.join(rel);
            if !file.is_file() {
                return Err(ApiError::not_found(format!(
                    "file `{p}` in artifact {}",
                    artifact.id
                )));
            }
            Ok(file)
        }
    }
}

/// A content type from a file name; artifacts without a known extension are octet streams.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("txt" | "log" | "md" | "csv" | "tsv" | "yaml" | "yml" | "py") => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

async fn artifact_content(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> ApiResult<Response> {
    let artifact = load_artifact(&state, &id).await?;
    let file = artifact_file(&state, &artifact, q.path.as_deref()).await?;
    let name = q.path.clone().unwrap_or_else(|| artifact.name.clone());
    let bytes = tokio::fs::read(&file).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read artifact: {e}"),
        )
    })?;
    let base = name.rsplit('/').next().unwrap_or(&name).replace('"', "");
    let disposition = if q.download.unwrap_or(false) {
        format!("attachment; filename=\"{base}\"")
    } else {
        format!("inline; filename=\"{base}\"")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&name).to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            // Artifacts are user content: never let the browser run it as part of the app.
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        bytes,
    )
        .into_response())
}

/// How the UI should show a piece of content.
fn preview_kind(artifact: &ArtifactRecord, name: &str, head: &[u8]) -> &'static str {
    match artifact.type_name.as_str() {
        "Metrics" | "system.Metrics" => return "metrics",
        "ClassificationMetrics" | "system.ClassificationMetrics" => return "classification",
        "Markdown" | "system.Markdown" => return "markdown",
        "HTML" | "system.HTML" => return "html",
        _ => {}
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv" | "tsv") => return "csv",
        Some("json") => return "json",
        Some("md" | "markdown") => return "markdown",
        Some("html" | "htm") => return "html",
        Some("png" | "jpg" | "jpeg" | "gif" | "webp" | "svg") => return "image",
        _ => {}
    }
    if head.starts_with(b"\x89PNG")
        || head.starts_with(b"\xff\xd8\xff")
        || head.starts_with(b"GIF8")
    {
        return "image";
    }
    let Ok(text) = std::str::from_utf8(utf8_prefix(head)) else {
        return "binary";
    };
    if text.contains('\0') {
        return "binary";
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "json"
    } else if trimmed.to_ascii_lowercase().starts_with("<!doctype html")
        || trimmed.starts_with("<html")
    {
        "html"
    } else if looks_like_csv(text) {
        "csv"
    } else {
        "text"
    }
}

/// Two or more lines with the same number (at least one) of commas or tabs.
fn looks_like_csv(text: &str) -> bool {
    let mut lines = text.lines().take(5);
    let Some(first) = lines.next() else {
        return false;
    };
    let sep = if first.contains('\t') { '\t' } else { ',' };
    let count = |l: &str| l.matches(sep).count();
    let want = count(first);
    let rest: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    want > 0 && !rest.is_empty() && rest.iter().all(|l| count(l) == want)
}

async fn artifact_preview(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> ApiResult {
    let artifact = load_artifact(&state, &id).await?;
    if artifact.is_dir && q.path.as_deref().is_none_or(str::is_empty) {
        let root = state.artifacts.local_path(&artifact.uri).await?;
        return Ok(Json(json!({
            "kind": "directory",
            "entries": dir_entries(&root),
            "metadata": artifact.metadata,
        })));
    }
    let file = artifact_file(&state, &artifact, q.path.as_deref()).await?;
    let name = q.path.clone().unwrap_or_else(|| artifact.name.clone());
    let mut head = Vec::with_capacity(PREVIEW_BYTES);
    {
        use tokio::io::AsyncReadExt;
        let f = tokio::fs::File::open(&file).await.map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read artifact: {e}"),
            )
        })?;
        f.take(PREVIEW_BYTES as u64 + 1)
            .read_to_end(&mut head)
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read artifact: {e}"),
                )
            })?;
    }
    let truncated = head.len() > PREVIEW_BYTES;
    head.truncate(PREVIEW_BYTES);
    let kind = preview_kind(&artifact, &name, &head);
    let text = match kind {
        "image" | "binary" => Value::Null,
        _ => json!(String::from_utf8_lossy(utf8_prefix(&head))),
    };
    Ok(Json(json!({
        "kind": kind,
        "name": name,
        "text": text,
        "truncated": truncated,
        "metadata": artifact.metadata,
    })))
}

#[derive(Debug, Default, Deserialize)]
struct LineageQuery {
    /// `up`, `down` or `both` (the default).
    direction: Option<String>,
    depth: Option<usize>,
}

async fn lineage_graph(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<LineageQuery>,
) -> ApiResult {
    let direction = match q.direction.as_deref() {
        None | Some("" | "both") => Direction::Both,
        Some("up") => Direction::Upstream,
        Some("down") => Direction::Downstream,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "direction must be up, down or both, got `{other}`"
            )));
        }
    };
    load_artifact(&state, &id).await?;
    let depth = q.depth.unwrap_or(10).clamp(1, 50);
    let graph = lineage(&state.store, &id, direction, depth).await?;
    Ok(Json(
        serde_json::to_value(graph).map_err(anyhow::Error::from)?,
    ))
}
