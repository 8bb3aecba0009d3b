//! MLflow 3 logged models and the model registry: the handlers and their JSON.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use capstan_store::{
    KeyValue, LoggedModel, LoggedModelQuery, MODEL_PENDING, MODEL_READY, MODEL_UPLOAD_FAILED,
    ModelOutput, ModelVersion, NewLoggedModel, NewModelVersion, RegisteredModel, RegistryQuery,
    now_millis,
};
use serde_json::{Value, json};

use crate::filter::{self, Target};
use crate::wire::{self, Reply, Req, ok, pairs};
use crate::{ApiError, ApiResult, Tracking};

/// Default page sizes, as MLflow's.
const DEFAULT_LOGGED_MODELS_PAGE: u32 = 100;
const DEFAULT_REGISTERED_MODELS_PAGE: u32 = 100;
const DEFAULT_MODEL_VERSIONS_PAGE: u32 = 10_000;

type St = State<Tracking>;

/// The logged-model and registry routes, relative to `/api/2.0/mlflow`.
pub fn routes() -> Router<crate::Shared> {
    Router::new()
        .route("/logged-models", post(create_logged_model))
        .route("/logged-models/search", post(search_logged_models))
        .route(
            "/logged-models/{id}",
            get(get_logged_model)
                .patch(finalize_logged_model)
                .delete(delete_logged_model),
        )
        .route("/logged-models/{id}/tags", patch(set_logged_model_tags))
        .route(
            "/logged-models/{id}/tags/{key}",
            axum::routing::delete(delete_logged_model_tag),
        )
        .route("/logged-models/{id}/params", post(log_logged_model_params))
        .route("/registered-models/create", post(create_registered_model))
        .route("/registered-models/get", get(get_registered_model))
        .route("/registered-models/rename", post(rename_registered_model))
        .route("/registered-models/update", patch(update_registered_model))
        .route(
            "/registered-models/delete",
            axum::routing::delete(delete_registered_model),
        )
        .route("/registered-models/search", get(search_registered_models))
        .route(
            "/registered-models/get-latest-versions",
            post(get_latest_versions).get(get_latest_versions),
        )
        .route("/registered-models/set-tag", post(set_registered_model_tag))
        .route(
            "/registered-models/delete-tag",
            axum::routing::delete(delete_registered_model_tag),
        )
        .route(
            "/registered-models/alias",
            post(set_alias).delete(delete_alias).get(get_by_alias),
        )
        .route("/model-versions/create", post(create_model_version))
        .route("/model-versions/get", get(get_model_version))
        .route("/model-versions/update", patch(update_model_version))
        .route(
            "/model-versions/delete",
            axum::routing::delete(delete_model_version),
        )
        .route("/model-versions/search", get(search_model_versions))
        .route("/model-versions/set-tag", post(set_model_version_tag))
        .route(
            "/model-versions/delete-tag",
            axum::routing::delete(delete_model_version_tag),
        )
        .route("/model-versions/transition-stage", post(transition_stage))
        .route("/model-versions/get-download-uri", get(get_download_uri))
}

fn logged_status(status: &str) -> &'static str {
    match status {
        MODEL_READY => "LOGGED_MODEL_READY",
        MODEL_UPLOAD_FAILED => "LOGGED_MODEL_UPLOAD_FAILED",
        _ => "LOGGED_MODEL_PENDING",
    }
}

/// A finalize request's status, by enum name or number.
fn parse_logged_status(status: &str) -> ApiResult<&'static str> {
    match status {
        "LOGGED_MODEL_READY" | "2" => Ok(MODEL_READY),
        "LOGGED_MODEL_UPLOAD_FAILED" | "3" => Ok(MODEL_UPLOAD_FAILED),
        "LOGGED_MODEL_PENDING" | "1" => Ok(MODEL_PENDING),
        other => Err(ApiError::invalid(format!(
            "unknown logged model status '{other}'; use LOGGED_MODEL_READY or LOGGED_MODEL_UPLOAD_FAILED"
        ))),
    }
}

pub fn logged_model(model: &LoggedModel) -> Value {
    let mut info = json!({
        "model_id": model.model_id,
        "experiment_id": model.experiment_id.to_string(),
        "name": model.name,
        "creation_timestamp_ms": model.creation_time,
        "last_updated_timestamp_ms": model.last_updated_time,
        "artifact_uri": model.artifact_location,
        "status": logged_status(&model.status),
        "model_type": model.model_type,
        "tags": pairs(&model.tags),
    });
    if let Some(run) = &model.source_run_id {
        info["source_run_id"] = json!(run);
    }
    let metrics: Vec<Value> = model
        .metrics
        .iter()
        .map(|point| {
            let mut metric = wire::metric_json(&point.metric);
            metric["run_id"] = json!(point.run_id);
            metric["model_id"] = json!(point.model_id);
            if !point.dataset_name.is_empty() {
                metric["dataset_name"] = json!(point.dataset_name);
                metric["dataset_digest"] = json!(point.dataset_digest);
            }
            metric
        })
        .collect();
    json!({"info": info, "data": {"params": pairs(&model.params), "metrics": metrics}})
}

pub fn model_version(version: &ModelVersion) -> Value {
    let mut value = json!({
        "name": version.name,
        "version": version.version.to_string(),
        "creation_timestamp": version.creation_time,
        "last_updated_timestamp": version.last_updated_time,
        "user_id": version.user_id,
        "current_stage": version.current_stage,
        "description": version.description,
        "source": version.source,
        "status": "READY",
        "tags": pairs(&version.tags),
        "aliases": version.aliases,
    });
    if let Some(run) = &version.run_id {
        value["run_id"] = json!(run);
    }
    if let Some(model) = &version.model_id {
        value["model_id"] = json!(model);
    }
    value
}

pub fn registered_model(model: &RegisteredModel) -> Value {
    json!({
        "name": model.name,
        "creation_timestamp": model.creation_time,
        "last_updated_timestamp": model.last_updated_time,
        "description": model.description,
        "latest_versions": model.latest_versions.iter().map(model_version).collect::<Vec<_>>(),
        "tags": pairs(&model.tags),
        "aliases": model.aliases.iter()
            .map(|a| json!({"alias": a.alias, "version": a.version.to_string()}))
            .collect::<Vec<_>>(),
    })
}

/// One `models` entry of a `log-inputs` request: the id of a logged model.
pub fn model_input(value: &Value) -> ApiResult<String> {
    value
        .get("model_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::missing("models.model_id"))
}

/// One `models` entry of a `log-outputs` request.
pub fn model_output(value: &Value) -> ApiResult<ModelOutput> {
    let model_id = model_input(value)?;
    let step = match value.get("step") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::invalid("'models.step' must be an integer"))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::invalid("'models.step' must be an integer"))?,
        Some(_) => return Err(ApiError::invalid("'models.step' must be an integer")),
    };
    Ok(ModelOutput { model_id, step })
}

fn paged(body: &mut Value, next: Option<u64>) {
    if let Some(next) = next {
        body["next_page_token"] = Value::String(wire::encode_page_token(next));
    }
}

fn invalid(err: filter::FilterError) -> ApiError {
    ApiError::invalid(err.to_string())
}

async fn create_logged_model(State(t): St, req: Req) -> Reply {
    let experiment_id = wire::parse_id(&req.str("experiment_id")?, "experiment_id")?;
    let experiment = t
        .store
        .get_experiment(experiment_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no experiment with id '{experiment_id}'")))?;
    let model_id = format!("m-{}", uuid::Uuid::new_v4().simple());
    let name = req
        .opt_str("name")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| wire::generated_run_name(&model_id[2..]));
    let model = NewLoggedModel {
        artifact_location: format!(
            "{}/models/{model_id}/artifacts",
            wire::experiment_location(&experiment)
        ),
        model_id,
        experiment_id,
        name,
        model_type: req.opt_str("model_type").unwrap_or_default(),
        source_run_id: req.opt_str("source_run_id").filter(|s| !s.is_empty()),
        tags: req.key_values("tags")?,
        params: req.key_values("params")?,
        at: now_millis(),
    };
    let created = t.store.create_logged_model(&model).await?;
    ok(json!({"model": logged_model(&created)}))
}

async fn get_logged_model(State(t): St, Path(id): Path<String>, req: Req) -> Reply {
    let allow_deleted = req
        .opt_str("allow_deleted")
        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
    let model = t
        .store
        .get_logged_model(&id, allow_deleted)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("logged model '{id}' not found")))?;
    ok(json!({"model": logged_model(&model)}))
}

async fn finalize_logged_model(State(t): St, Path(id): Path<String>, req: Req) -> Reply {
    let status = parse_logged_status(&req.str("status")?)?;
    let model = t
        .store
        .finalize_logged_model(&id, status, now_millis())
        .await?;
    ok(json!({"model": logged_model(&model)}))
}

async fn delete_logged_model(State(t): St, Path(id): Path<String>) -> Reply {
    t.store.delete_logged_model(&id, now_millis()).await?;
    ok(json!({}))
}

async fn set_logged_model_tags(State(t): St, Path(id): Path<String>, req: Req) -> Reply {
    t.store
        .set_logged_model_tags(&id, &req.key_values("tags")?)
        .await?;
    ok(json!({}))
}

async fn delete_logged_model_tag(State(t): St, Path((id, key)): Path<(String, String)>) -> Reply {
    t.store.delete_logged_model_tag(&id, &key).await?;
    ok(json!({}))
}

async fn log_logged_model_params(State(t): St, Path(id): Path<String>, req: Req) -> Reply {
    t.store
        .log_logged_model_params(&id, &req.key_values("params")?)
        .await?;
    ok(json!({}))
}

async fn search_logged_models(State(t): St, req: Req) -> Reply {
    let experiment_ids = req
        .strings("experiment_ids")?
        .iter()
        .map(|id| wire::parse_id(id, "experiment_ids"))
        .collect::<ApiResult<Vec<_>>>()?;
    let clauses = filter::parse_filter(&req.opt_str("filter").unwrap_or_default(), Target::Models)
        .map_err(invalid)?;
    let order_by = req
        .list("order_by")?
        .iter()
        .map(|order| {
            let field = order
                .get("field_name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing("order_by.field_name"))?;
            let mut key = filter::parse_order(field, Target::Models).map_err(invalid)?;
            key.ascending = order
                .get("ascending")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Ok(key)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let query = LoggedModelQuery {
        experiment_ids,
        clauses,
        order_by,
        limit: req.page_size("max_results", DEFAULT_LOGGED_MODELS_PAGE)?,
        offset: wire::decode_page_token(req.opt_str("page_token").as_deref())?,
    };
    let page = t.store.search_logged_models(&query).await?;
    let mut body = json!({"models": page.items.iter().map(logged_model).collect::<Vec<_>>()});
    paged(&mut body, page.next_offset);
    ok(body)
}

fn model_name(req: &Req) -> ApiResult<String> {
    let name = req.str("name")?;
    if name.trim().is_empty() {
        return Err(ApiError::invalid(
            "a registered model name must not be empty",
        ));
    }
    Ok(name)
}

fn version(req: &Req) -> ApiResult<i64> {
    let text = req.str("version")?;
    text.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
        ApiError::invalid(format!(
            "'version' must be a positive integer, got '{text}'"
        ))
    })
}

async fn require_model(t: &Tracking, name: &str) -> ApiResult<RegisteredModel> {
    t.store
        .get_registered_model(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("registered model with name={name} not found")))
}

async fn require_version(t: &Tracking, name: &str, version: i64) -> ApiResult<ModelVersion> {
    t.store
        .get_model_version(name, version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "model version (name={name}, version={version}) not found"
            ))
        })
}

async fn create_registered_model(State(t): St, req: Req) -> Reply {
    let name = model_name(&req)?;
    let model = t
        .store
        .create_registered_model(
            &name,
            &req.opt_str("description").unwrap_or_default(),
            &req.key_values("tags")?,
            now_millis(),
        )
        .await?;
    ok(json!({"registered_model": registered_model(&model)}))
}

async fn get_registered_model(State(t): St, req: Req) -> Reply {
    let model = require_model(&t, &model_name(&req)?).await?;
    ok(json!({"registered_model": registered_model(&model)}))
}

async fn rename_registered_model(State(t): St, req: Req) -> Reply {
    let new_name = req.str("new_name")?;
    if new_name.trim().is_empty() {
        return Err(ApiError::invalid(
            "a registered model name must not be empty",
        ));
    }
    let model = t
        .store
        .rename_registered_model(&model_name(&req)?, &new_name, now_millis())
        .await?;
    ok(json!({"registered_model": registered_model(&model)}))
}

async fn update_registered_model(State(t): St, req: Req) -> Reply {
    let model = t
        .store
        .update_registered_model(
            &model_name(&req)?,
            &req.opt_str("description").unwrap_or_default(),
            now_millis(),
        )
        .await?;
    ok(json!({"registered_model": registered_model(&model)}))
}

async fn delete_registered_model(State(t): St, req: Req) -> Reply {
    t.store.delete_registered_model(&model_name(&req)?).await?;
    ok(json!({}))
}

fn registry_query(req: &Req, default_page: u32) -> ApiResult<RegistryQuery> {
    let clauses = filter::parse_filter(&req.opt_str("filter").unwrap_or_default(), Target::Models)
        .map_err(invalid)?;
    let order_by = req
        .strings("order_by")?
        .iter()
        .map(|o| filter::parse_order(o, Target::Models))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    Ok(RegistryQuery {
        clauses,
        order_by,
        limit: req.page_size("max_results", default_page)?,
        offset: wire::decode_page_token(req.opt_str("page_token").as_deref())?,
    })
}

async fn search_registered_models(State(t): St, req: Req) -> Reply {
    let query = registry_query(&req, DEFAULT_REGISTERED_MODELS_PAGE)?;
    let page = t.store.search_registered_models(&query).await?;
    let mut body = json!({
        "registered_models": page.items.iter().map(registered_model).collect::<Vec<_>>(),
    });
    paged(&mut body, page.next_offset);
    ok(body)
}

async fn get_latest_versions(State(t): St, req: Req) -> Reply {
    let model = require_model(&t, &model_name(&req)?).await?;
    let stages = req
        .strings("stages")?
        .iter()
        .map(|s| {
            capstan_store::canonical_stage(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid model version stage '{s}'; use None, Staging, Production or Archived"
                ))
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let versions: Vec<Value> = model
        .latest_versions
        .iter()
        .filter(|v| stages.is_empty() || stages.contains(&v.current_stage.as_str()))
        .map(model_version)
        .collect();
    ok(json!({"model_versions": versions}))
}

async fn set_registered_model_tag(State(t): St, req: Req) -> Reply {
    let tag = KeyValue::new(req.str("key")?, req.opt_str("value").unwrap_or_default());
    t.store
        .set_registered_model_tag(&model_name(&req)?, &tag)
        .await?;
    ok(json!({}))
}

async fn delete_registered_model_tag(State(t): St, req: Req) -> Reply {
    t.store
        .delete_registered_model_tag(&model_name(&req)?, &req.str("key")?)
        .await?;
    ok(json!({}))
}

fn alias(req: &Req) -> ApiResult<String> {
    let alias = req.str("alias")?;
    if alias.is_empty() || alias.eq_ignore_ascii_case("latest") {
        return Err(ApiError::invalid(format!(
            "'{alias}' cannot be used as an alias"
        )));
    }
    Ok(alias)
}

async fn set_alias(State(t): St, req: Req) -> Reply {
    let name = model_name(&req)?;
    let version = version(&req)?;
    require_version(&t, &name, version).await?;
    t.store
        .set_model_alias(&name, &alias(&req)?, version)
        .await?;
    ok(json!({}))
}

async fn delete_alias(State(t): St, req: Req) -> Reply {
    t.store
        .delete_model_alias(&model_name(&req)?, &alias(&req)?)
        .await?;
    ok(json!({}))
}

async fn get_by_alias(State(t): St, req: Req) -> Reply {
    let name = model_name(&req)?;
    let alias = alias(&req)?;
    let version = t
        .store
        .model_version_by_alias(&name, &alias)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "registered model alias {alias} not found for model {name}"
            ))
        })?;
    ok(json!({"model_version": model_version(&version)}))
}

async fn create_model_version(State(t): St, req: Req) -> Reply {
    let name = model_name(&req)?;
    let source = req.str("source")?;
    if source.is_empty() {
        return Err(ApiError::invalid("a model version needs a source"));
    }
    let version = NewModelVersion {
        name,
        source,
        run_id: req.opt_str("run_id").filter(|s| !s.is_empty()),
        model_id: req.opt_str("model_id").filter(|s| !s.is_empty()),
        description: req.opt_str("description").unwrap_or_default(),
        user_id: String::new(),
        tags: req.key_values("tags")?,
        at: now_millis(),
    };
    let created = t.store.create_model_version(&version).await?;
    ok(json!({"model_version": model_version(&created)}))
}

async fn get_model_version(State(t): St, req: Req) -> Reply {
    let version = require_version(&t, &model_name(&req)?, version(&req)?).await?;
    ok(json!({"model_version": model_version(&version)}))
}

async fn update_model_version(State(t): St, req: Req) -> Reply {
    let updated = t
        .store
        .update_model_version(
            &model_name(&req)?,
            version(&req)?,
            &req.opt_str("description").unwrap_or_default(),
            now_millis(),
        )
        .await?;
    ok(json!({"model_version": model_version(&updated)}))
}

async fn delete_model_version(State(t): St, req: Req) -> Reply {
    t.store
        .delete_model_version(&model_name(&req)?, version(&req)?)
        .await?;
    ok(json!({}))
}

async fn search_model_versions(State(t): St, req: Req) -> Reply {
    let query = registry_query(&req, DEFAULT_MODEL_VERSIONS_PAGE)?;
    let page = t.store.search_model_versions(&query).await?;
    let mut body = json!({
        "model_versions": page.items.iter().map(model_version).collect::<Vec<_>>(),
    });
    paged(&mut body, page.next_offset);
    ok(body)
}

async fn set_model_version_tag(State(t): St, req: Req) -> Reply {
    let tag = KeyValue::new(req.str("key")?, req.opt_str("value").unwrap_or_default());
    t.store
        .set_model_version_tag(&model_name(&req)?, version(&req)?, &tag)
        .await?;
    ok(json!({}))
}

async fn delete_model_version_tag(State(t): St, req: Req) -> Reply {
    t.store
        .delete_model_version_tag(&model_name(&req)?, version(&req)?, &req.str("key")?)
        .await?;
    ok(json!({}))
}

async fn transition_stage(State(t): St, req: Req) -> Reply {
    let stage = req.str("stage")?;
    let stage = capstan_store::canonical_stage(&stage).ok_or_else(|| {
        ApiError::invalid(format!(
            "invalid model version stage '{stage}'; use None, Staging, Production or Archived"
        ))
    })?;
    let archive = req
        .opt_str("archive_existing_versions")
        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
    let moved = t
        .store
        .transition_model_version(
            &model_name(&req)?,
            version(&req)?,
            stage,
            archive,
            now_millis(),
        )
        .await?;
    ok(json!({"model_version": model_version(&moved)}))
}

/// Where a version's files are: the logged model's artifacts for a `models:/<id>` source.
async fn get_download_uri(State(t): St, req: Req) -> Reply {
    let version = require_version(&t, &model_name(&req)?, version(&req)?).await?;
    let model_id = version
        .source
        .strip_prefix("models:/")
        .filter(|id| id.starts_with("m-"))
        .map(str::to_owned)
        .or(version.model_id.clone());
    if let Some(id) = model_id
        && let Some(model) = t.store.get_logged_model(&id, true).await?
    {
        return ok(json!({"artifact_uri": model.artifact_location}));
    }
    ok(json!({"artifact_uri": version.source}))
}
