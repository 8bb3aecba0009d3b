//! capstan's MLflow-compatible tracking API: an edge translator from MLflow's REST wire format
//! to the store's [`TrackingStore`] and the artifact store's [`TrackingFiles`].
//!
//! [`router`] serves experiments, runs, metrics, logged models, the model registry and the
//! artifact proxy under `/api/2.0/mlflow/`,
//! `/ajax-api/2.0/mlflow/` and `/api/2.0/mlflow-artifacts/`, plus `/api/3.0/mlflow/server-info`,
//! so that the unmodified `mlflow` client works against `capstan server`.
//!
//! **Invariant:** only this crate knows MLflow's JSON. The store holds neutral records; the
//! filter grammar is parsed here ([`filter`]) into structured clauses that the store runs as SQL.

mod error;
pub mod filter;
mod models;
mod wire;
mod writer;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use capstan_artifacts::TrackingFiles;
use capstan_store::{
    ACTIVE, DELETED, DatasetInput, DynTrackingStore, ExperimentQuery, KeyValue, Metric,
    NewTrackingRun, RunQuery, RunUpdate, now_millis,
};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::{Value, json};

pub use error::{ApiError, ApiResult};
use filter::Target;
use wire::{Reply, Req, ok};

/// Most metrics, params and tags one `log-batch` may carry, as MLflow limits them.
pub const MAX_BATCH_METRICS: usize = 1000;
pub const MAX_BATCH_PARAMS: usize = 100;
pub const MAX_BATCH_TAGS: usize = 100;
/// Most runs one `get-history-bulk-interval` request may name, and its points per run.
pub const MAX_BULK_RUNS: usize = 100;
pub const MAX_BULK_POINTS: u32 = 2500;
/// Default page sizes, as MLflow's.
const DEFAULT_RUNS_PAGE: u32 = 1000;
const DEFAULT_EXPERIMENTS_PAGE: u32 = 1000;
const DEFAULT_HISTORY_PAGE: u32 = 25_000;

/// What the handlers share.
#[derive(Clone)]
pub struct Tracking {
    pub store: DynTrackingStore,
    pub files: TrackingFiles,
}

/// The handlers' state: what the server passes in, and the metric writer in front of its store.
#[derive(Clone)]
struct Shared {
    tracking: Tracking,
    metrics: writer::MetricWriter,
}

impl FromRef<Shared> for Tracking {
    fn from_ref(shared: &Shared) -> Tracking {
        shared.tracking.clone()
    }
}

impl FromRef<Shared> for writer::MetricWriter {
    fn from_ref(shared: &Shared) -> writer::MetricWriter {
        shared.metrics.clone()
    }
}

/// The tracking routes; merge them into a server's router. Starts the task that groups the
/// writes of single metric points (see `writer.rs`), so call it inside a Tokio runtime.
pub fn router(tracking: Tracking) -> Router {
    let api = Router::new()
        .route("/experiments/create", post(create_experiment))
        .route("/experiments/get", get(get_experiment))
        .route("/experiments/get-by-name", get(get_experiment_by_name))
        .route(
            "/experiments/search",
            post(search_experiments).get(search_experiments),
        )
        .route("/experiments/update", post(update_experiment))
        .route("/experiments/delete", post(delete_experiment))
        .route("/experiments/restore", post(restore_experiment))
        .route("/experiments/set-experiment-tag", post(set_experiment_tag))
        .route(
            "/experiments/delete-experiment-tag",
            post(delete_experiment_tag),
        )
        .route("/runs/create", post(create_run))
        .route("/runs/get", get(get_run))
        .route("/runs/update", post(update_run))
        .route("/runs/delete", post(delete_run))
        .route("/runs/restore", post(restore_run))
        .route("/runs/search", post(search_runs).get(search_runs))
        .route("/runs/log-metric", post(log_metric))
        .route("/runs/log-parameter", post(log_param))
        .route("/runs/set-tag", post(set_tag))
        .route("/runs/delete-tag", post(delete_tag))
        .route("/runs/log-batch", post(log_batch))
        .route("/runs/log-inputs", post(log_inputs))
        .route("/runs/outputs", post(log_outputs))
        .route("/metrics/get-history", get(metric_history))
        .route(
            "/metrics/get-history-bulk-interval",
            get(metric_history_bulk_interval),
        )
        .merge(models::routes());
    let artifacts = Router::new()
        .route("/artifacts", get(list_artifacts))
        .route(
            "/artifacts/{*path}",
            get(download_artifact)
                .put(upload_artifact)
                .delete(delete_artifact),
        );
    Router::new()
        .nest("/api/2.0/mlflow", api.clone())
        .nest("/ajax-api/2.0/mlflow", api)
        .nest("/api/2.0/mlflow-artifacts", artifacts.clone())
        .nest("/ajax-api/2.0/mlflow-artifacts", artifacts)
        .route("/api/3.0/mlflow/server-info", get(server_info))
        .with_state(Shared {
            metrics: writer::MetricWriter::start(tracking.store.clone()),
            tracking,
        })
}

type St = State<Tracking>;

fn experiment_id(req: &Req) -> ApiResult<i64> {
    wire::parse_id(&req.str("experiment_id")?, "experiment_id")
}

fn run_id(req: &Req) -> ApiResult<String> {
    match req.opt_str("run_id").filter(|s| !s.is_empty()) {
        Some(id) => Ok(id),
        None => req
            .opt_str("run_uuid")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::missing("run_id")),
    }
}

async fn server_info() -> Reply {
    ok(json!({
        "store_type": "SqlStore",
        "workspaces_enabled": false,
        "trace_archival_enabled": false,
        "multipart_uploads_enabled": false,
        "multipart_downloads_enabled": false,
        "presigned_upload_run_id_supported": false,
        "presigned_upload_model_id_supported": false,
        "features_enabled": {"gateway": false},
    }))
}

async fn create_experiment(State(t): St, req: Req) -> Reply {
    let name = req.str("name")?;
    if name.trim().is_empty() {
        return Err(ApiError::invalid("an experiment name must not be empty"));
    }
    let location = req.opt_str("artifact_location").filter(|s| !s.is_empty());
    let tags = req.key_values("tags")?;
    let experiment = t
        .store
        .create_experiment(&name, location.as_deref(), &tags, now_millis())
        .await?;
    ok(json!({"experiment_id": experiment.experiment_id.to_string()}))
}

async fn get_experiment(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    let experiment = t
        .store
        .get_experiment(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no experiment with id '{id}'")))?;
    ok(json!({"experiment": wire::experiment(&experiment)}))
}

async fn get_experiment_by_name(State(t): St, req: Req) -> Reply {
    let name = req.str("experiment_name")?;
    let experiment = t
        .store
        .get_experiment_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no experiment named '{name}'")))?;
    ok(json!({"experiment": wire::experiment(&experiment)}))
}

async fn search_experiments(State(t): St, req: Req) -> Reply {
    let limit = req.page_size("max_results", DEFAULT_EXPERIMENTS_PAGE)?;
    let clauses = filter::parse_filter(
        &req.opt_str("filter").unwrap_or_default(),
        Target::Experiments,
    )
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let order_by = req
        .strings("order_by")?
        .iter()
        .map(|o| filter::parse_order(o, Target::Experiments))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let query = ExperimentQuery {
        clauses,
        order_by,
        view: req.view_type("view_type")?,
        limit,
        offset: wire::decode_page_token(req.opt_str("page_token").as_deref())?,
    };
    let page = t.store.search_experiments(&query).await?;
    let mut body = json!({
        "experiments": page.items.iter().map(wire::experiment).collect::<Vec<_>>(),
    });
    if let Some(next) = page.next_offset {
        body["next_page_token"] = Value::String(wire::encode_page_token(next));
    }
    ok(body)
}

async fn update_experiment(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    let name = req.str("new_name")?;
    if name.trim().is_empty() {
        return Err(ApiError::invalid("an experiment name must not be empty"));
    }
    t.store.rename_experiment(id, &name, now_millis()).await?;
    ok(json!({}))
}

async fn delete_experiment(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    if id == 0 {
        return Err(ApiError::invalid(
            "the default experiment '0' cannot be deleted",
        ));
    }
    t.store
        .set_experiment_lifecycle(id, DELETED, now_millis())
        .await?;
    ok(json!({}))
}

async fn restore_experiment(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    t.store
        .set_experiment_lifecycle(id, ACTIVE, now_millis())
        .await?;
    ok(json!({}))
}

async fn set_experiment_tag(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    let tag = KeyValue::new(req.str("key")?, req.opt_str("value").unwrap_or_default());
    t.store.set_experiment_tag(id, &tag).await?;
    ok(json!({}))
}

async fn delete_experiment_tag(State(t): St, req: Req) -> Reply {
    let id = experiment_id(&req)?;
    t.store.delete_experiment_tag(id, &req.str("key")?).await?;
    ok(json!({}))
}

async fn create_run(State(t): St, req: Req) -> Reply {
    let experiment_id = match req.opt_str("experiment_id").filter(|s| !s.is_empty()) {
        Some(id) => wire::parse_id(&id, "experiment_id")?,
        None => 0,
    };
    let experiment = t
        .store
        .get_experiment(experiment_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no experiment with id '{experiment_id}'")))?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut tags = req.key_values("tags")?;
    let tagged_name = tags
        .iter()
        .find(|t| t.key == "mlflow.runName")
        .map(|t| t.value.clone());
    let name = req
        .opt_str("run_name")
        .filter(|s| !s.is_empty())
        .or(tagged_name)
        .unwrap_or_else(|| wire::generated_run_name(&run_id));
    tags.retain(|t| t.key != "mlflow.runName");
    tags.push(KeyValue::new("mlflow.runName", name.clone()));
    let user_id = req
        .opt_str("user_id")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            tags.iter()
                .find(|t| t.key == "mlflow.user")
                .map(|t| t.value.clone())
        })
        .unwrap_or_default();
    let run = NewTrackingRun {
        artifact_uri: format!(
            "{}/{run_id}/artifacts",
            wire::experiment_location(&experiment)
        ),
        run_id,
        experiment_id,
        name,
        user_id,
        start_time: req.opt_i64("start_time")?.unwrap_or_else(now_millis),
        tags,
    };
    let created = t.store.create_tracking_run(&run).await?;
    ok(json!({"run": wire::run(&created)}))
}

async fn get_run(State(t): St, req: Req) -> ApiResult<Response> {
    let id = run_id(&req)?;
    let run = t
        .store
        .get_tracking_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run '{id}' not found")))?;
    let outputs = t.store.run_model_outputs(std::slice::from_ref(&id)).await?;
    // Like MLflow, only a single run's answer carries its model inputs.
    let model_inputs = t.store.run_model_inputs(&id).await?;
    let body = wire::RunOut::new(&run)
        .with_outputs(&outputs)
        .with_model_inputs(&model_inputs);
    wire::written(RunReply { run: body })
}

#[derive(Serialize)]
struct RunReply<'a> {
    run: wire::RunOut<'a>,
}

/// A page of runs and, when more follow, the next page's token.
#[derive(Serialize)]
struct RunsPage<'a> {
    runs: Vec<wire::RunOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// A page of metric points and, when more follow, the next page's token.
#[derive(Serialize)]
struct MetricsPage<'a> {
    metrics: Vec<wire::MetricOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

async fn update_run(State(t): St, req: Req) -> Reply {
    let id = run_id(&req)?;
    let status = match req.opt_str("status").filter(|s| !s.is_empty()) {
        Some(status) => Some(wire::check_status(&status)?),
        None => None,
    };
    let update = RunUpdate {
        status,
        end_time: req.opt_i64("end_time")?,
        name: req.opt_str("run_name").filter(|s| !s.is_empty()),
    };
    let info = t.store.update_tracking_run(&id, &update).await?;
    ok(json!({"run_info": wire::run_info(&info)}))
}

async fn delete_run(State(t): St, req: Req) -> Reply {
    t.store
        .set_run_lifecycle(&run_id(&req)?, DELETED, now_millis())
        .await?;
    ok(json!({}))
}

async fn restore_run(State(t): St, req: Req) -> Reply {
    t.store
        .set_run_lifecycle(&run_id(&req)?, ACTIVE, now_millis())
        .await?;
    ok(json!({}))
}

async fn search_runs(State(t): St, req: Req) -> ApiResult<Response> {
    let experiment_ids = req
        .strings("experiment_ids")?
        .iter()
        .map(|id| wire::parse_id(id, "experiment_ids"))
        .collect::<ApiResult<Vec<_>>>()?;
    let clauses = filter::parse_filter(&req.opt_str("filter").unwrap_or_default(), Target::Runs)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let order_by = req
        .strings("order_by")?
        .iter()
        .map(|o| filter::parse_order(o, Target::Runs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let query = RunQuery {
        experiment_ids,
        clauses,
        order_by,
        view: req.view_type("run_view_type")?,
        limit: req.page_size("max_results", DEFAULT_RUNS_PAGE)?,
        offset: wire::decode_page_token(req.opt_str("page_token").as_deref())?,
    };
    let page = t.store.search_tracking_runs(&query).await?;
    let ids: Vec<String> = page.items.iter().map(|r| r.info.run_id.clone()).collect();
    let outputs = t.store.run_model_outputs(&ids).await?;
    wire::written(RunsPage {
        runs: page
            .items
            .iter()
            .map(|run| wire::RunOut::new(run).with_outputs(&outputs))
            .collect(),
        next_page_token: page.next_offset.map(wire::encode_page_token),
    })
}

async fn log_metric(State(t): St, State(writer): State<writer::MetricWriter>, req: Req) -> Reply {
    let metric = Metric {
        key: req.str("key")?,
        value: req.f64("value")?,
        timestamp: req
            .opt_i64("timestamp")?
            .ok_or_else(|| ApiError::missing("timestamp"))?,
        step: req.opt_i64("step")?.unwrap_or(0),
    };
    if metric.key.is_empty() {
        return Err(ApiError::invalid("a key must not be empty"));
    }
    let run_id = run_id(&req)?;
    if let Some(point) = wire::model_metric(req.fields(), &run_id, &metric) {
        t.store.log_logged_model_metrics(&[point]).await?;
    }
    writer.log(run_id, metric).await?;
    ok(json!({}))
}

async fn log_param(State(t): St, req: Req) -> Reply {
    let param = KeyValue::new(req.str("key")?, req.str("value")?);
    t.store
        .log_batch(&run_id(&req)?, &[], &[param], &[])
        .await?;
    ok(json!({}))
}

async fn set_tag(State(t): St, req: Req) -> Reply {
    let tag = KeyValue::new(req.str("key")?, req.opt_str("value").unwrap_or_default());
    t.store.log_batch(&run_id(&req)?, &[], &[], &[tag]).await?;
    ok(json!({}))
}

async fn delete_tag(State(t): St, req: Req) -> Reply {
    t.store
        .delete_run_tag(&run_id(&req)?, &req.str("key")?)
        .await?;
    ok(json!({}))
}

async fn log_batch(State(t): St, req: Req) -> Reply {
    let run_id = run_id(&req)?;
    let items = req.list("metrics")?;
    let metrics = items
        .iter()
        .map(wire::metric)
        .collect::<ApiResult<Vec<_>>>()?;
    let params = req.key_values("params")?;
    let tags = req.key_values("tags")?;
    if metrics.len() > MAX_BATCH_METRICS {
        return Err(ApiError::invalid(format!(
            "a batch may hold at most {MAX_BATCH_METRICS} metrics, got {}",
            metrics.len()
        )));
    }
    if params.len() > MAX_BATCH_PARAMS {
        return Err(ApiError::invalid(format!(
            "a batch may hold at most {MAX_BATCH_PARAMS} params, got {}",
            params.len()
        )));
    }
    if tags.len() > MAX_BATCH_TAGS {
        return Err(ApiError::invalid(format!(
            "a batch may hold at most {MAX_BATCH_TAGS} tags, got {}",
            tags.len()
        )));
    }
    // Points logged against a logged model are points of the run as well.
    let model_points: Vec<_> = items
        .iter()
        .zip(&metrics)
        .filter_map(|(item, metric)| {
            item.as_object()
                .and_then(|fields| wire::model_metric(fields, &run_id, metric))
        })
        .collect();
    if !model_points.is_empty() {
        t.store.log_logged_model_metrics(&model_points).await?;
    }
    t.store.log_batch(&run_id, &metrics, &params, &tags).await?;
    ok(json!({}))
}

async fn log_inputs(State(t): St, req: Req) -> Reply {
    let inputs = req
        .list("datasets")?
        .iter()
        .map(wire::dataset_input)
        .collect::<ApiResult<Vec<DatasetInput>>>()?;
    let models = req
        .list("models")?
        .iter()
        .map(models::model_input)
        .collect::<ApiResult<Vec<String>>>()?;
    t.store
        .log_inputs(&run_id(&req)?, &inputs, &models, now_millis())
        .await?;
    ok(json!({}))
}

async fn log_outputs(State(t): St, req: Req) -> Reply {
    let outputs = req
        .list("models")?
        .iter()
        .map(models::model_output)
        .collect::<ApiResult<Vec<_>>>()?;
    t.store.log_model_outputs(&run_id(&req)?, &outputs).await?;
    ok(json!({}))
}

async fn metric_history(State(t): St, req: Req) -> ApiResult<Response> {
    let id = run_id(&req)?;
    let key = req.str("metric_key")?;
    let limit = req.page_size("max_results", DEFAULT_HISTORY_PAGE)?;
    let offset = wire::decode_page_token(req.opt_str("page_token").as_deref())?;
    let page = t.store.metric_history(&id, &key, limit, offset).await?;
    wire::written(MetricsPage {
        metrics: page.items.iter().map(wire::MetricOut::new).collect(),
        next_page_token: page.next_offset.map(wire::encode_page_token),
    })
}

async fn metric_history_bulk_interval(State(t): St, req: Req) -> Reply {
    let run_ids = req.strings("run_ids")?;
    if run_ids.is_empty() || run_ids.len() > MAX_BULK_RUNS {
        return Err(ApiError::invalid(format!(
            "run_ids must name between 1 and {MAX_BULK_RUNS} runs, got {}",
            run_ids.len()
        )));
    }
    let key = req.str("metric_key")?;
    let max = match req.opt_i64("max_results")? {
        Some(n) if n < 1 || n > i64::from(MAX_BULK_POINTS) => {
            return Err(ApiError::invalid(format!(
                "max_results must be between 1 and {MAX_BULK_POINTS}"
            )));
        }
        Some(n) => n as u32,
        None => MAX_BULK_POINTS,
    };
    let (start, end) = match (req.opt_i64("start_step")?, req.opt_i64("end_step")?) {
        (Some(start), Some(end)) if start > end => {
            return Err(ApiError::invalid(format!(
                "end_step must not be less than start_step, got start_step={start} and end_step={end}"
            )));
        }
        (Some(start), Some(end)) => (start, end),
        (None, None) => (i64::MIN, i64::MAX),
        _ => {
            return Err(ApiError::invalid(
                "start_step and end_step must be given together",
            ));
        }
    };
    let mut metrics = Vec::new();
    for id in &run_ids {
        for point in t.store.metric_sample(id, &key, start, end, max).await? {
            let mut value = wire::metric_json(&point);
            value["run_id"] = Value::String(id.clone());
            metrics.push(value);
        }
    }
    ok(json!({"metrics": metrics}))
}

async fn list_artifacts(State(t): St, req: Req) -> Reply {
    let dir = req.opt_str("path").unwrap_or_default();
    let entries = t.files.list(&dir).await?;
    let files: Vec<Value> = entries
        .into_iter()
        .map(|entry| {
            let mut file = json!({"path": entry.name, "is_dir": entry.is_dir});
            if let Some(size) = entry.size {
                file["file_size"] = json!(size);
            }
            file
        })
        .collect();
    ok(json!({"files": files}))
}

async fn download_artifact(State(t): St, Path(path): Path<String>) -> Result<Response, ApiError> {
    let Some((size, stream)) = t.files.get(&path).await? else {
        return Err(ApiError::not_found(format!("artifact '{path}' not found")));
    };
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn upload_artifact(State(t): St, Path(path): Path<String>, body: Body) -> Reply {
    t.files.put(&path, body.into_data_stream()).await?;
    ok(json!({}))
}

async fn delete_artifact(State(t): St, Path(path): Path<String>) -> Reply {
    t.files.delete(&path).await?;
    ok(json!({}))
}
