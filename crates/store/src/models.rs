//! Model records: MLflow 3 logged models and the model registry (registered models, their
//! versions, tags and aliases), behind [`ModelStore`].
//!
//! Like the tracking records, these are neutral: `capstan-tracking` owns the wire format.
//! Searches arrive as structured [`Clause`]s and run as SQL. Each method is one transaction,
//! and the one implementation, [`models_impl!`], serves both backends.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::tracking::{Arg, Dialect, Sql, attribute_comparison, text_comparison};
use crate::{
    Attribute, Clause, Comparator, Entity, KeyValue, Metric, Millis, OrderKey, Page, Result,
};

/// A logged model's status: `PENDING` until its artifacts are uploaded, then `READY` (or
/// `UPLOAD_FAILED`).
pub const MODEL_PENDING: &str = "PENDING";
pub const MODEL_READY: &str = "READY";
pub const MODEL_UPLOAD_FAILED: &str = "UPLOAD_FAILED";

/// The registry's stages.
pub const STAGES: &[&str] = &["None", "Staging", "Production", "Archived"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedModel {
    pub model_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub creation_time: Millis,
    pub last_updated_time: Millis,
    pub status: String,
    pub model_type: String,
    pub source_run_id: Option<String>,
    pub lifecycle_stage: String,
    pub tags: Vec<KeyValue>,
    pub params: Vec<KeyValue>,
    /// Every point logged against the model, by run, key, step and timestamp.
    pub metrics: Vec<ModelMetric>,
}

/// A metric point logged against a logged model by a run, optionally for a dataset (empty
/// name and digest when none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetric {
    pub model_id: String,
    pub run_id: String,
    pub metric: Metric,
    pub dataset_name: String,
    pub dataset_digest: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewLoggedModel {
    pub model_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub model_type: String,
    pub source_run_id: Option<String>,
    pub tags: Vec<KeyValue>,
    pub params: Vec<KeyValue>,
    pub at: Millis,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggedModelQuery {
    pub experiment_ids: Vec<i64>,
    pub clauses: Vec<Clause>,
    /// Applied in order; then newest first, then model id.
    pub order_by: Vec<OrderKey>,
    pub limit: u32,
    pub offset: u64,
}

/// A model a run produced, at a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ModelOutput {
    pub model_id: String,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RunModelOutput {
    pub run_id: String,
    pub model_id: String,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    pub creation_time: Millis,
    pub last_updated_time: Millis,
    pub description: String,
    pub user_id: String,
    pub current_stage: String,
    pub source: String,
    pub run_id: Option<String>,
    pub model_id: Option<String>,
    pub tags: Vec<KeyValue>,
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewModelVersion {
    pub name: String,
    pub source: String,
    pub run_id: Option<String>,
    pub model_id: Option<String>,
    pub description: String,
    pub user_id: String,
    pub tags: Vec<KeyValue>,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelAlias {
    pub alias: String,
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    pub name: String,
    pub creation_time: Millis,
    pub last_updated_time: Millis,
    pub description: String,
    pub tags: Vec<KeyValue>,
    pub aliases: Vec<ModelAlias>,
    /// The newest version in each stage.
    pub latest_versions: Vec<ModelVersion>,
}

/// A search of registered models or model versions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryQuery {
    pub clauses: Vec<Clause>,
    /// Applied in order; then by name, then newest version first.
    pub order_by: Vec<OrderKey>,
    pub limit: u32,
    pub offset: u64,
}

#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// Creates a `PENDING` logged model in an active experiment.
    async fn create_logged_model(&self, model: &NewLoggedModel) -> Result<LoggedModel>;
    /// A logged model; a deleted one only when `allow_deleted`.
    async fn get_logged_model(&self, id: &str, allow_deleted: bool) -> Result<Option<LoggedModel>>;
    async fn finalize_logged_model(
        &self,
        id: &str,
        status: &str,
        at: Millis,
    ) -> Result<LoggedModel>;
    async fn delete_logged_model(&self, id: &str, at: Millis) -> Result<()>;
    async fn set_logged_model_tags(&self, id: &str, tags: &[KeyValue]) -> Result<()>;
    async fn delete_logged_model_tag(&self, id: &str, key: &str) -> Result<()>;
    /// Logs params; re-logging a param with the same value is a no-op, another value is
    /// [`StoreError::Invalid`].
    async fn log_logged_model_params(&self, id: &str, params: &[KeyValue]) -> Result<()>;
    async fn search_logged_models(&self, query: &LoggedModelQuery) -> Result<Page<LoggedModel>>;
    /// Records points of active logged models, logged by an active run; a point logged again
    /// is a no-op.
    async fn log_logged_model_metrics(&self, metrics: &[ModelMetric]) -> Result<()>;
    /// Records models an active run produced; recording the same output again is a no-op.
    async fn log_model_outputs(&self, run_id: &str, outputs: &[ModelOutput]) -> Result<()>;
    /// The models the given runs produced, by run, model and step.
    async fn run_model_outputs(&self, run_ids: &[String]) -> Result<Vec<RunModelOutput>>;

    /// Creates a registered model; a taken name is a [`StoreError::Conflict`].
    async fn create_registered_model(
        &self,
        name: &str,
        description: &str,
        tags: &[KeyValue],
        at: Millis,
    ) -> Result<RegisteredModel>;
    async fn get_registered_model(&self, name: &str) -> Result<Option<RegisteredModel>>;
    async fn rename_registered_model(
        &self,
        name: &str,
        new_name: &str,
        at: Millis,
    ) -> Result<RegisteredModel>;
    async fn update_registered_model(
        &self,
        name: &str,
        description: &str,
        at: Millis,
    ) -> Result<RegisteredModel>;
    /// Deletes a registered model with its versions, tags and aliases.
    async fn delete_registered_model(&self, name: &str) -> Result<()>;
    async fn search_registered_models(
        &self,
        query: &RegistryQuery,
    ) -> Result<Page<RegisteredModel>>;
    async fn set_registered_model_tag(&self, name: &str, tag: &KeyValue) -> Result<()>;
    async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()>;

    /// Creates the next version of a registered model, in stage `None`.
    async fn create_model_version(&self, version: &NewModelVersion) -> Result<ModelVersion>;
    async fn get_model_version(&self, name: &str, version: i64) -> Result<Option<ModelVersion>>;
    async fn update_model_version(
        &self,
        name: &str,
        version: i64,
        description: &str,
        at: Millis,
    ) -> Result<ModelVersion>;
    /// Moves a version to `stage`; with `archive_existing`, the other versions in that stage
    /// move to `Archived`.
    async fn transition_model_version(
        &self,
        name: &str,
        version: i64,
        stage: &str,
        archive_existing: bool,
        at: Millis,
    ) -> Result<ModelVersion>;
    /// Deletes a version with its tags and the aliases pointing at it.
    async fn delete_model_version(&self, name: &str, version: i64) -> Result<()>;
    async fn search_model_versions(&self, query: &RegistryQuery) -> Result<Page<ModelVersion>>;
    async fn set_model_version_tag(&self, name: &str, version: i64, tag: &KeyValue) -> Result<()>;
    async fn delete_model_version_tag(&self, name: &str, version: i64, key: &str) -> Result<()>;
    /// Points `alias` at an existing version, replacing where it pointed before.
    async fn set_model_alias(&self, name: &str, alias: &str, version: i64) -> Result<()>;
    async fn delete_model_alias(&self, name: &str, alias: &str) -> Result<()>;
    async fn model_version_by_alias(&self, name: &str, alias: &str)
    -> Result<Option<ModelVersion>>;
}

/// Which model table a search runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelTable {
    Logged,
    Registered,
    Versions,
}

impl ModelTable {
    fn column(self, attribute: Attribute) -> Result<&'static str> {
        use ModelTable::*;
        Ok(match (self, attribute) {
            (Logged, Attribute::Name) => "lm.name",
            (Logged, Attribute::RunId) => "lm.source_run_id",
            (Logged, Attribute::Status) => "lm.status",
            (Logged, Attribute::CreationTime) => "lm.creation_time",
            (Logged, Attribute::LastUpdateTime) => "lm.last_updated_time",
            (Logged, Attribute::ExperimentId) => "lm.experiment_id",
            (Registered, Attribute::Name) => "rm.name",
            (Registered, Attribute::CreationTime) => "rm.creation_time",
            (Registered, Attribute::LastUpdateTime) => "rm.last_updated_time",
            (Versions, Attribute::Name) => "mv.name",
            (Versions, Attribute::RunId) => "mv.run_id",
            (Versions, Attribute::ArtifactUri) => "mv.source",
            (Versions, Attribute::Status) => "mv.current_stage",
            (Versions, Attribute::CreationTime) => "mv.creation_time",
            (Versions, Attribute::LastUpdateTime) => "mv.last_updated_time",
            (Versions, Attribute::Version) => "mv.version",
            (_, other) => {
                return Err(StoreError::Invalid(format!(
                    "this search cannot filter or order by {other:?}"
                )));
            }
        })
    }

    /// The start of a subquery over the table's tags (or params) for the current row.
    fn pairs(self, params: bool) -> Result<&'static str> {
        use ModelTable::*;
        Ok(match (self, params) {
            (Logged, false) => "SELECT 1 FROM logged_model_tags t WHERE t.model_id = lm.model_id",
            (Logged, true) => "SELECT 1 FROM logged_model_params t WHERE t.model_id = lm.model_id",
            (Registered, false) => "SELECT 1 FROM registered_model_tags t WHERE t.name = rm.name",
            (Versions, false) => {
                "SELECT 1 FROM model_version_tags t WHERE t.name = mv.name AND t.version = mv.version"
            }
            (_, true) => {
                return Err(StoreError::Invalid(
                    "only logged models can be searched by params".to_owned(),
                ));
            }
        })
    }
}

/// Appends the SQL condition of one model-search clause. A tag compared with `!=` or
/// `NOT IN` also matches rows without the tag, as MLflow's registry search does.
pub(crate) fn model_clause(
    sql: &mut Sql,
    dialect: Dialect,
    table: ModelTable,
    clause: &Clause,
) -> Result<()> {
    match &clause.entity {
        Entity::Tag(key) | Entity::Param(key) => {
            let pairs = table.pairs(matches!(clause.entity, Entity::Param(_)))?;
            let (negated, comparator) = match clause.comparator {
                Comparator::Ne => (true, Comparator::Eq),
                Comparator::NotIn => (true, Comparator::In),
                other => (false, other),
            };
            sql.push(if negated { "NOT EXISTS (" } else { "EXISTS (" })
                .push(pairs)
                .push(" AND t.key = ");
            sql.arg(Arg::Text(key.clone())).push(" AND ");
            text_comparison(sql, dialect, "t.value", comparator, &clause.value)?;
            sql.push(")");
        }
        Entity::Attribute(attribute) => {
            let column = table.column(*attribute)?;
            attribute_comparison(sql, dialect, *attribute, column, clause)?;
        }
        other => {
            return Err(StoreError::Invalid(format!(
                "models cannot be searched by {other:?}"
            )));
        }
    }
    Ok(())
}

/// The SQL of a registry search: `select` (`SELECT ... FROM table alias`), then the filter
/// clauses, the order and the page. Registered models and model versions share it.
pub(crate) fn registry_search_sql(
    dialect: Dialect,
    table: ModelTable,
    select: &str,
    query: &RegistryQuery,
) -> Result<Sql> {
    let limit = crate::tracking::page_limit(query.limit)?;
    let mut sql = Sql::default();
    sql.push(select).push(" WHERE 1 = 1");
    for clause in &query.clauses {
        sql.push(" AND ");
        model_clause(&mut sql, dialect, table, clause)?;
    }
    model_order(&mut sql, table, &query.order_by)?;
    sql.push(" LIMIT ").arg(Arg::Int(limit));
    sql.push(" OFFSET ").arg(Arg::Int(crate::common::to_i64(
        query.offset,
        "page offset",
    )?));
    Ok(sql)
}

pub(crate) fn model_order(sql: &mut Sql, table: ModelTable, keys: &[OrderKey]) -> Result<()> {
    sql.push(" ORDER BY ");
    for key in keys {
        let Entity::Attribute(attribute) = &key.entity else {
            return Err(StoreError::Invalid(
                "models can only be ordered by an attribute".to_owned(),
            ));
        };
        sql.push(table.column(*attribute)?)
            .push(if key.ascending { " ASC, " } else { " DESC, " });
    }
    sql.push(match table {
        ModelTable::Logged => "lm.creation_time DESC, lm.model_id ASC",
        ModelTable::Registered => "rm.name ASC",
        ModelTable::Versions => "mv.name ASC, mv.version DESC",
    });
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct LoggedModelRow {
    pub(crate) model_id: String,
    pub(crate) experiment_id: i64,
    pub(crate) name: String,
    pub(crate) artifact_location: String,
    pub(crate) creation_time: i64,
    pub(crate) last_updated_time: i64,
    pub(crate) status: String,
    pub(crate) model_type: String,
    pub(crate) source_run_id: Option<String>,
    pub(crate) lifecycle_stage: String,
}

impl LoggedModelRow {
    pub(crate) fn into_model(self) -> LoggedModel {
        LoggedModel {
            model_id: self.model_id,
            experiment_id: self.experiment_id,
            name: self.name,
            artifact_location: self.artifact_location,
            creation_time: self.creation_time,
            last_updated_time: self.last_updated_time,
            status: self.status,
            model_type: self.model_type,
            source_run_id: self.source_run_id,
            lifecycle_stage: self.lifecycle_stage,
            tags: Vec::new(),
            params: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

pub(crate) const LOGGED_MODEL_COLUMNS: &str = "lm.model_id, lm.experiment_id, lm.name, \
     lm.artifact_location, lm.creation_time, lm.last_updated_time, lm.status, lm.model_type, \
     lm.source_run_id, lm.lifecycle_stage";

#[derive(sqlx::FromRow)]
pub(crate) struct RegisteredModelRow {
    pub(crate) name: String,
    pub(crate) creation_time: i64,
    pub(crate) last_updated_time: i64,
    pub(crate) description: String,
}

pub(crate) const REGISTERED_MODEL_COLUMNS: &str =
    "rm.name, rm.creation_time, rm.last_updated_time, rm.description";

#[derive(sqlx::FromRow)]
pub(crate) struct ModelVersionRow {
    pub(crate) name: String,
    pub(crate) version: i64,
    pub(crate) creation_time: i64,
    pub(crate) last_updated_time: i64,
    pub(crate) description: String,
    pub(crate) user_id: String,
    pub(crate) current_stage: String,
    pub(crate) source: String,
    pub(crate) run_id: Option<String>,
    pub(crate) model_id: Option<String>,
}

impl ModelVersionRow {
    pub(crate) fn into_version(self) -> ModelVersion {
        ModelVersion {
            name: self.name,
            version: self.version,
            creation_time: self.creation_time,
            last_updated_time: self.last_updated_time,
            description: self.description,
            user_id: self.user_id,
            current_stage: self.current_stage,
            source: self.source,
            run_id: self.run_id,
            model_id: self.model_id,
            tags: Vec::new(),
            aliases: Vec::new(),
        }
    }
}

pub(crate) const MODEL_VERSION_COLUMNS: &str = "mv.name, mv.version, mv.creation_time, \
     mv.last_updated_time, mv.description, mv.user_id, mv.current_stage, mv.source, mv.run_id, \
     mv.model_id";

/// The stage names MLflow accepts, matched case-insensitively.
pub fn canonical_stage(stage: &str) -> Option<&'static str> {
    STAGES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(stage))
        .copied()
}

/// The newest version in each stage, in stage order.
pub fn latest_per_stage(versions: &[ModelVersion]) -> Vec<ModelVersion> {
    STAGES
        .iter()
        .filter_map(|stage| {
            versions
                .iter()
                .filter(|v| v.current_stage == *stage)
                .max_by_key(|v| v.version)
                .cloned()
        })
        .collect()
}

/// Expands the one [`ModelStore`] implementation for a backend.
macro_rules! models_impl {
    ($store:ty, $conn:ty, $dialect:expr) => {
        const _: () = {
            use sqlx::AssertSqlSafe;
            use $crate::common::DbContext;
            use $crate::models::{
                LOGGED_MODEL_COLUMNS, LoggedModel, LoggedModelQuery, LoggedModelRow,
                MODEL_PENDING, MODEL_VERSION_COLUMNS, ModelAlias, ModelMetric, ModelOutput, ModelTable,
                ModelVersion,
                RunModelOutput,
                ModelVersionRow, NewLoggedModel, NewModelVersion, REGISTERED_MODEL_COLUMNS,
                RegisteredModel, RegisteredModelRow, RegistryQuery,
            };
            use $crate::tracking::{
                Arg, LOGGED_MODEL_TAGS, MODEL_VERSION_TAGS, REGISTERED_MODEL_TAGS, Sql, bind_all,
            };

            $crate::tracking::tag_writers!($conn);
            use $crate::{ACTIVE, DELETED, KeyValue, Millis, Page, Result, StoreError};

            async fn pairs_of(
                conn: &mut $conn,
                table: &str,
                id: &str,
            ) -> Result<Vec<KeyValue>> {
                let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT key, value FROM {table} WHERE model_id = $1 ORDER BY key"
                )))
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading a logged model's tags or params")?;
                Ok(rows.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect())
            }

            async fn load_logged(conn: &mut $conn, row: LoggedModelRow) -> Result<LoggedModel> {
                let mut model = row.into_model();
                model.tags = pairs_of(conn, "logged_model_tags", &model.model_id).await?;
                model.params = pairs_of(conn, "logged_model_params", &model.model_id).await?;
                let rows: Vec<(String, String, i64, i64, f64, i64, String, String)> = sqlx::query_as(
                    "SELECT run_id, key, step, timestamp, value, is_nan, dataset_name, dataset_digest \
                     FROM logged_model_metrics WHERE model_id = $1 \
                     ORDER BY run_id, key, step, timestamp, value",
                )
                .bind(&model.model_id)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading a logged model's metrics")?;
                model.metrics = rows
                    .into_iter()
                    .map(|(run_id, key, step, timestamp, value, is_nan, dataset_name, dataset_digest)| ModelMetric {
                        model_id: model.model_id.clone(),
                        run_id,
                        metric: $crate::tracking::Metric { key, value: $crate::tracking::loaded_value(value, is_nan), timestamp, step },
                        dataset_name,
                        dataset_digest,
                    })
                    .collect();
                Ok(model)
            }

            async fn logged_row(conn: &mut $conn, id: &str) -> Result<Option<LoggedModelRow>> {
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models lm WHERE lm.model_id = $1"
                )))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading a logged model")
            }

            /// Fails unless the tracking run exists and is not deleted.
            async fn require_live_run(conn: &mut $conn, run_id: &str) -> Result<()> {
                let stage: Option<String> = sqlx::query_scalar("SELECT lifecycle_stage FROM tracking_runs WHERE run_id = $1")
                    .bind(run_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .ctx("reading a run")?;
                match stage.as_deref() {
                    Some(ACTIVE) => Ok(()),
                    Some(_) => Err(StoreError::Invalid(format!("run `{run_id}` is deleted"))),
                    None => Err(StoreError::NotFound(format!("run `{run_id}`"))),
                }
            }

            async fn require_logged(conn: &mut $conn, id: &str) -> Result<LoggedModelRow> {
                match logged_row(conn, id).await? {
                    Some(row) if row.lifecycle_stage == ACTIVE => Ok(row),
                    _ => Err(StoreError::NotFound(format!("logged model with id `{id}`"))),
                }
            }

            /// Logs a logged model's params; re-logging a param's value is fine, changing it is not.
            async fn log_logged_params(conn: &mut $conn, id: &str, pairs: &[KeyValue]) -> Result<()> {
                for pair in pairs {
                    if pair.key.is_empty() {
                        return Err(StoreError::Invalid("a key must not be empty".to_owned()));
                    }
                    let stored: String = sqlx::query_scalar(
                        "INSERT INTO logged_model_params (model_id, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (model_id, key) DO UPDATE SET value = logged_model_params.value \
                         RETURNING value",
                    )
                    .bind(id)
                    .bind(&pair.key)
                    .bind(&pair.value)
                    .fetch_one(&mut *conn)
                    .await
                    .ctx("writing a logged model's params")?;
                    if stored != pair.value {
                        return Err(StoreError::Invalid(format!(
                            "changing param values is not allowed: param `{}` of logged model \
                             `{id}` has value `{stored}`, attempted `{}`",
                            pair.key, pair.value
                        )));
                    }
                }
                Ok(())
            }

            async fn version_rows(conn: &mut $conn, sql: Sql) -> Result<Vec<ModelVersion>> {
                let rows = bind_all!(sqlx::query_as::<_, ModelVersionRow>(AssertSqlSafe(sql.text)), sql.args)
                    .fetch_all(&mut *conn)
                    .await
                    .ctx("reading model versions")?;
                let mut versions = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut version = row.into_version();
                    let tags: Vec<(String, String)> = sqlx::query_as(
                        "SELECT key, value FROM model_version_tags WHERE name = $1 AND version = $2 ORDER BY key",
                    )
                    .bind(&version.name)
                    .bind(version.version)
                    .fetch_all(&mut *conn)
                    .await
                    .ctx("reading model version tags")?;
                    version.tags = tags.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
                    version.aliases = sqlx::query_scalar(
                        "SELECT alias FROM registered_model_aliases WHERE name = $1 AND version = $2 ORDER BY alias",
                    )
                    .bind(&version.name)
                    .bind(version.version)
                    .fetch_all(&mut *conn)
                    .await
                    .ctx("reading model version aliases")?;
                    versions.push(version);
                }
                Ok(versions)
            }

            async fn version_of(conn: &mut $conn, name: &str, version: i64) -> Result<Option<ModelVersion>> {
                let mut sql = Sql::default();
                sql.push(&format!("SELECT {MODEL_VERSION_COLUMNS} FROM model_versions mv WHERE mv.name = "));
                sql.arg(Arg::Text(name.to_owned())).push(" AND mv.version = ").arg(Arg::Int(version));
                Ok(version_rows(conn, sql).await?.pop())
            }

            async fn require_version(conn: &mut $conn, name: &str, version: i64) -> Result<ModelVersion> {
                version_of(conn, name, version)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("version {version} of registered model `{name}`")))
            }

            async fn load_registered(conn: &mut $conn, row: RegisteredModelRow) -> Result<RegisteredModel> {
                let tags: Vec<(String, String)> = sqlx::query_as(
                    "SELECT key, value FROM registered_model_tags WHERE name = $1 ORDER BY key",
                )
                .bind(&row.name)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading registered model tags")?;
                let aliases: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT alias, version FROM registered_model_aliases WHERE name = $1 ORDER BY alias",
                )
                .bind(&row.name)
                .fetch_all(&mut *conn)
                .await
                .ctx("reading registered model aliases")?;
                let mut sql = Sql::default();
                sql.push(&format!("SELECT {MODEL_VERSION_COLUMNS} FROM model_versions mv WHERE mv.name = "));
                sql.arg(Arg::Text(row.name.clone()));
                let versions = version_rows(conn, sql).await?;
                Ok(RegisteredModel {
                    name: row.name,
                    creation_time: row.creation_time,
                    last_updated_time: row.last_updated_time,
                    description: row.description,
                    tags: tags.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
                    aliases: aliases.into_iter().map(|(alias, version)| ModelAlias { alias, version }).collect(),
                    latest_versions: $crate::models::latest_per_stage(&versions),
                })
            }

            async fn registered_of(conn: &mut $conn, name: &str) -> Result<Option<RegisteredModel>> {
                let row: Option<RegisteredModelRow> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT {REGISTERED_MODEL_COLUMNS} FROM registered_models rm WHERE rm.name = $1"
                )))
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading a registered model")?;
                match row {
                    Some(row) => Ok(Some(load_registered(conn, row).await?)),
                    None => Ok(None),
                }
            }

            async fn require_registered(conn: &mut $conn, name: &str) -> Result<RegisteredModel> {
                registered_of(conn, name)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("registered model with name `{name}`")))
            }

            async fn touch(conn: &mut $conn, name: &str, at: Millis) -> Result<()> {
                sqlx::query("UPDATE registered_models SET last_updated_time = $1 WHERE name = $2")
                    .bind(at)
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .ctx("touching a registered model")?;
                Ok(())
            }

            #[async_trait::async_trait]
            impl $crate::models::ModelStore for $store {
                async fn create_logged_model(&self, model: &NewLoggedModel) -> Result<LoggedModel> {
                    let mut tx = self.begin().await?;
                    let stage: Option<String> = sqlx::query_scalar("SELECT lifecycle_stage FROM experiments WHERE id = $1")
                        .bind(model.experiment_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .ctx("reading an experiment")?;
                    match stage.as_deref() {
                        Some(ACTIVE) => {}
                        Some(_) => return Err(StoreError::Invalid(format!("experiment `{}` is deleted", model.experiment_id))),
                        None => return Err(StoreError::NotFound(format!("experiment with id `{}`", model.experiment_id))),
                    }
                    sqlx::query(
                        "INSERT INTO logged_models (model_id, experiment_id, name, artifact_location, \
                         creation_time, last_updated_time, status, model_type, source_run_id, lifecycle_stage) \
                         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, 'active')",
                    )
                    .bind(&model.model_id)
                    .bind(model.experiment_id)
                    .bind(&model.name)
                    .bind(&model.artifact_location)
                    .bind(model.at)
                    .bind(MODEL_PENDING)
                    .bind(&model.model_type)
                    .bind(&model.source_run_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("creating a logged model")?;
                    set_tag_rows(&mut tx, &LOGGED_MODEL_TAGS, &[Arg::Text(model.model_id.clone())], &model.tags).await?;
                    log_logged_params(&mut tx, &model.model_id, &model.params).await?;
                    let row = require_logged(&mut tx, &model.model_id).await?;
                    let created = load_logged(&mut tx, row).await?;
                    tx.commit().await.ctx("committing a logged model")?;
                    Ok(created)
                }

                async fn get_logged_model(&self, id: &str, allow_deleted: bool) -> Result<Option<LoggedModel>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    match logged_row(&mut conn, id).await? {
                        Some(row) if allow_deleted || row.lifecycle_stage == ACTIVE => Ok(Some(load_logged(&mut conn, row).await?)),
                        _ => Ok(None),
                    }
                }

                async fn finalize_logged_model(&self, id: &str, status: &str, at: Millis) -> Result<LoggedModel> {
                    let mut tx = self.begin().await?;
                    require_logged(&mut tx, id).await?;
                    sqlx::query("UPDATE logged_models SET status = $1, last_updated_time = $2 WHERE model_id = $3")
                        .bind(status)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .ctx("finalizing a logged model")?;
                    let row = require_logged(&mut tx, id).await?;
                    let model = load_logged(&mut tx, row).await?;
                    tx.commit().await.ctx("committing a logged model")?;
                    Ok(model)
                }

                async fn delete_logged_model(&self, id: &str, at: Millis) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_logged(&mut tx, id).await?;
                    sqlx::query("UPDATE logged_models SET lifecycle_stage = $1, last_updated_time = $2 WHERE model_id = $3")
                        .bind(DELETED)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .ctx("deleting a logged model")?;
                    tx.commit().await.ctx("committing a logged model deletion")
                }

                async fn set_logged_model_tags(&self, id: &str, tags: &[KeyValue]) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_logged(&mut tx, id).await?;
                    set_tag_rows(&mut tx, &LOGGED_MODEL_TAGS, &[Arg::Text(id.to_owned())], tags).await?;
                    tx.commit().await.ctx("committing logged model tags")
                }

                async fn delete_logged_model_tag(&self, id: &str, key: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_logged(&mut tx, id).await?;
                    if !delete_tag_row(&mut tx, &LOGGED_MODEL_TAGS, &[Arg::Text(id.to_owned())], key).await? {
                        return Err(StoreError::NotFound(format!("tag `{key}` of logged model `{id}`")));
                    }
                    tx.commit().await.ctx("committing a logged model tag deletion")
                }

                async fn log_logged_model_params(&self, id: &str, params: &[KeyValue]) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_logged(&mut tx, id).await?;
                    log_logged_params(&mut tx, id, params).await?;
                    tx.commit().await.ctx("committing logged model params")
                }

                async fn search_logged_models(&self, query: &LoggedModelQuery) -> Result<Page<LoggedModel>> {
                    let limit = $crate::tracking::page_limit(query.limit)?;
                    if query.experiment_ids.is_empty() {
                        return Ok(Page { items: Vec::new(), next_offset: None });
                    }
                    let mut sql = Sql::default();
                    sql.push(&format!("SELECT {LOGGED_MODEL_COLUMNS} FROM logged_models lm WHERE lm.lifecycle_stage = 'active' AND lm.experiment_id IN "));
                    sql.list(query.experiment_ids.iter().map(|id| Arg::Int(*id)));
                    for clause in &query.clauses {
                        sql.push(" AND ");
                        $crate::models::model_clause(&mut sql, $dialect, ModelTable::Logged, clause)?;
                    }
                    $crate::models::model_order(&mut sql, ModelTable::Logged, &query.order_by)?;
                    sql.push(" LIMIT ").arg(Arg::Int(limit));
                    sql.push(" OFFSET ").arg(Arg::Int($crate::common::to_i64(query.offset, "page offset")?));
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let rows = bind_all!(sqlx::query_as::<_, LoggedModelRow>(AssertSqlSafe(sql.text)), sql.args)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("searching logged models")?;
                    let page = $crate::tracking::paged(rows, query.limit, query.offset);
                    let mut items = Vec::with_capacity(page.items.len());
                    for row in page.items {
                        items.push(load_logged(&mut conn, row).await?);
                    }
                    Ok(Page { items, next_offset: page.next_offset })
                }

                async fn log_model_outputs(&self, run_id: &str, outputs: &[ModelOutput]) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_live_run(&mut tx, run_id).await?;
                    for output in outputs {
                        require_logged(&mut tx, &output.model_id).await?;
                        sqlx::query(
                            "INSERT INTO tracking_run_outputs (run_id, model_id, step) VALUES ($1, $2, $3) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(run_id)
                        .bind(&output.model_id)
                        .bind(output.step)
                        .execute(&mut *tx)
                        .await
                        .ctx("logging a run output")?;
                    }
                    tx.commit().await.ctx("committing run outputs")
                }

                async fn log_logged_model_metrics(&self, metrics: &[ModelMetric]) -> Result<()> {
                    let mut tx = self.begin().await?;
                    let mut checked: std::collections::BTreeSet<(&str, &str)> = Default::default();
                    for point in metrics {
                        if point.metric.key.is_empty() {
                            return Err(StoreError::Invalid("a key must not be empty".to_owned()));
                        }
                        if checked.insert((&point.run_id, &point.model_id)) {
                            require_live_run(&mut tx, &point.run_id).await?;
                            require_logged(&mut tx, &point.model_id).await?;
                        }
                        let (value, is_nan) = $crate::tracking::stored_value(point.metric.value);
                        sqlx::query(
                            "INSERT INTO logged_model_metrics (model_id, run_id, key, step, timestamp, value, \
                             is_nan, dataset_name, dataset_digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(&point.model_id)
                        .bind(&point.run_id)
                        .bind(&point.metric.key)
                        .bind(point.metric.step)
                        .bind(point.metric.timestamp)
                        .bind(value)
                        .bind(is_nan)
                        .bind(&point.dataset_name)
                        .bind(&point.dataset_digest)
                        .execute(&mut *tx)
                        .await
                        .ctx("logging a logged model's metric")?;
                    }
                    tx.commit().await.ctx("committing logged model metrics")
                }

                async fn run_model_outputs(&self, run_ids: &[String]) -> Result<Vec<RunModelOutput>> {
                    if run_ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut sql = Sql::default();
                    sql.push("SELECT run_id, model_id, step FROM tracking_run_outputs WHERE run_id IN ");
                    sql.list(run_ids.iter().cloned().map(Arg::Text));
                    sql.push(" ORDER BY run_id, model_id, step");
                    bind_all!(sqlx::query_as::<_, RunModelOutput>(AssertSqlSafe(sql.text)), sql.args)
                        .fetch_all(&self.pool)
                        .await
                        .ctx("reading run outputs")
                }

                async fn create_registered_model(
                    &self,
                    name: &str,
                    description: &str,
                    tags: &[KeyValue],
                    at: Millis,
                ) -> Result<RegisteredModel> {
                    let mut tx = self.begin().await?;
                    let inserted = sqlx::query(
                        "INSERT INTO registered_models (name, creation_time, last_updated_time, description) \
                         VALUES ($1, $2, $2, $3)",
                    )
                    .bind(name)
                    .bind(at)
                    .bind(description)
                    .execute(&mut *tx)
                    .await;
                    match inserted {
                        Ok(_) => {}
                        Err(err) if $crate::common::is_unique_violation(&err) => {
                            return Err(StoreError::Conflict(format!("registered model (name={name}) already exists")));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "creating a registered model")),
                    }
                    set_tag_rows(&mut tx, &REGISTERED_MODEL_TAGS, &[Arg::Text(name.to_owned())], tags).await?;
                    let model = require_registered(&mut tx, name).await?;
                    tx.commit().await.ctx("committing a registered model")?;
                    Ok(model)
                }

                async fn get_registered_model(&self, name: &str) -> Result<Option<RegisteredModel>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    registered_of(&mut conn, name).await
                }

                async fn rename_registered_model(&self, name: &str, new_name: &str, at: Millis) -> Result<RegisteredModel> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    let renamed = sqlx::query("UPDATE registered_models SET name = $1, last_updated_time = $2 WHERE name = $3")
                        .bind(new_name)
                        .bind(at)
                        .bind(name)
                        .execute(&mut *tx)
                        .await;
                    match renamed {
                        Ok(_) => {}
                        Err(err) if $crate::common::is_unique_violation(&err) => {
                            return Err(StoreError::Conflict(format!("registered model (name={new_name}) already exists")));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "renaming a registered model")),
                    }
                    for table in ["registered_model_tags", "model_versions", "model_version_tags", "registered_model_aliases"] {
                        sqlx::query(AssertSqlSafe(format!("UPDATE {table} SET name = $1 WHERE name = $2")))
                            .bind(new_name)
                            .bind(name)
                            .execute(&mut *tx)
                            .await
                            .ctx("renaming a registered model")?;
                    }
                    let model = require_registered(&mut tx, new_name).await?;
                    tx.commit().await.ctx("committing a registered model rename")?;
                    Ok(model)
                }

                async fn update_registered_model(&self, name: &str, description: &str, at: Millis) -> Result<RegisteredModel> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    sqlx::query("UPDATE registered_models SET description = $1, last_updated_time = $2 WHERE name = $3")
                        .bind(description)
                        .bind(at)
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .ctx("updating a registered model")?;
                    let model = require_registered(&mut tx, name).await?;
                    tx.commit().await.ctx("committing a registered model update")?;
                    Ok(model)
                }

                async fn delete_registered_model(&self, name: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    for table in ["registered_model_tags", "model_version_tags", "registered_model_aliases", "model_versions", "registered_models"] {
                        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE name = $1")))
                            .bind(name)
                            .execute(&mut *tx)
                            .await
                            .ctx("deleting a registered model")?;
                    }
                    tx.commit().await.ctx("committing a registered model deletion")
                }

                async fn search_registered_models(&self, query: &RegistryQuery) -> Result<Page<RegisteredModel>> {
                    let sql = $crate::models::registry_search_sql(
                        $dialect,
                        ModelTable::Registered,
                        &format!("SELECT {REGISTERED_MODEL_COLUMNS} FROM registered_models rm"),
                        query,
                    )?;
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let rows = bind_all!(sqlx::query_as::<_, RegisteredModelRow>(AssertSqlSafe(sql.text)), sql.args)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("searching registered models")?;
                    let page = $crate::tracking::paged(rows, query.limit, query.offset);
                    let mut items = Vec::with_capacity(page.items.len());
                    for row in page.items {
                        items.push(load_registered(&mut conn, row).await?);
                    }
                    Ok(Page { items, next_offset: page.next_offset })
                }

                async fn set_registered_model_tag(&self, name: &str, tag: &KeyValue) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    let owner = [Arg::Text(name.to_owned())];
                    set_tag_rows(&mut tx, &REGISTERED_MODEL_TAGS, &owner, std::slice::from_ref(tag)).await?;
                    tx.commit().await.ctx("committing a registered model tag")
                }

                async fn delete_registered_model_tag(&self, name: &str, key: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    delete_tag_row(&mut tx, &REGISTERED_MODEL_TAGS, &[Arg::Text(name.to_owned())], key).await?;
                    tx.commit().await.ctx("committing a registered model tag deletion")
                }

                async fn create_model_version(&self, new: &NewModelVersion) -> Result<ModelVersion> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, &new.name).await?;
                    let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = $1")
                        .bind(&new.name)
                        .fetch_one(&mut *tx)
                        .await
                        .ctx("numbering a model version")?;
                    sqlx::query(
                        "INSERT INTO model_versions (name, version, creation_time, last_updated_time, \
                         description, user_id, current_stage, source, run_id, model_id) \
                         VALUES ($1, $2, $3, $3, $4, $5, 'None', $6, $7, $8)",
                    )
                    .bind(&new.name)
                    .bind(version)
                    .bind(new.at)
                    .bind(&new.description)
                    .bind(&new.user_id)
                    .bind(&new.source)
                    .bind(&new.run_id)
                    .bind(&new.model_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("creating a model version")?;
                    let owner = [Arg::Text(new.name.clone()), Arg::Int(version)];
                    set_tag_rows(&mut tx, &MODEL_VERSION_TAGS, &owner, &new.tags).await?;
                    touch(&mut tx, &new.name, new.at).await?;
                    let created = require_version(&mut tx, &new.name, version).await?;
                    tx.commit().await.ctx("committing a model version")?;
                    Ok(created)
                }

                async fn get_model_version(&self, name: &str, version: i64) -> Result<Option<ModelVersion>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    version_of(&mut conn, name, version).await
                }

                async fn update_model_version(&self, name: &str, version: i64, description: &str, at: Millis) -> Result<ModelVersion> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    sqlx::query("UPDATE model_versions SET description = $1, last_updated_time = $2 WHERE name = $3 AND version = $4")
                        .bind(description)
                        .bind(at)
                        .bind(name)
                        .bind(version)
                        .execute(&mut *tx)
                        .await
                        .ctx("updating a model version")?;
                    let updated = require_version(&mut tx, name, version).await?;
                    tx.commit().await.ctx("committing a model version update")?;
                    Ok(updated)
                }

                async fn transition_model_version(
                    &self,
                    name: &str,
                    version: i64,
                    stage: &str,
                    archive_existing: bool,
                    at: Millis,
                ) -> Result<ModelVersion> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    if archive_existing && matches!(stage, "Staging" | "Production") {
                        sqlx::query(
                            "UPDATE model_versions SET current_stage = 'Archived', last_updated_time = $1 \
                             WHERE name = $2 AND current_stage = $3 AND version <> $4",
                        )
                        .bind(at)
                        .bind(name)
                        .bind(stage)
                        .bind(version)
                        .execute(&mut *tx)
                        .await
                        .ctx("archiving model versions")?;
                    }
                    sqlx::query("UPDATE model_versions SET current_stage = $1, last_updated_time = $2 WHERE name = $3 AND version = $4")
                        .bind(stage)
                        .bind(at)
                        .bind(name)
                        .bind(version)
                        .execute(&mut *tx)
                        .await
                        .ctx("transitioning a model version")?;
                    touch(&mut tx, name, at).await?;
                    let moved = require_version(&mut tx, name, version).await?;
                    tx.commit().await.ctx("committing a stage transition")?;
                    Ok(moved)
                }

                async fn delete_model_version(&self, name: &str, version: i64) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    for table in ["model_version_tags", "registered_model_aliases", "model_versions"] {
                        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE name = $1 AND version = $2")))
                            .bind(name)
                            .bind(version)
                            .execute(&mut *tx)
                            .await
                            .ctx("deleting a model version")?;
                    }
                    tx.commit().await.ctx("committing a model version deletion")
                }

                async fn search_model_versions(&self, query: &RegistryQuery) -> Result<Page<ModelVersion>> {
                    let sql = $crate::models::registry_search_sql(
                        $dialect,
                        ModelTable::Versions,
                        &format!("SELECT {MODEL_VERSION_COLUMNS} FROM model_versions mv"),
                        query,
                    )?;
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let versions = version_rows(&mut conn, sql).await?;
                    Ok($crate::tracking::paged(versions, query.limit, query.offset))
                }

                async fn set_model_version_tag(&self, name: &str, version: i64, tag: &KeyValue) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    let owner = [Arg::Text(name.to_owned()), Arg::Int(version)];
                    set_tag_rows(&mut tx, &MODEL_VERSION_TAGS, &owner, std::slice::from_ref(tag)).await?;
                    tx.commit().await.ctx("committing a model version tag")
                }

                async fn delete_model_version_tag(&self, name: &str, version: i64, key: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    let owner = [Arg::Text(name.to_owned()), Arg::Int(version)];
                    delete_tag_row(&mut tx, &MODEL_VERSION_TAGS, &owner, key).await?;
                    tx.commit().await.ctx("committing a model version tag deletion")
                }

                async fn set_model_alias(&self, name: &str, alias: &str, version: i64) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_version(&mut tx, name, version).await?;
                    sqlx::query(
                        "INSERT INTO registered_model_aliases (name, alias, version) VALUES ($1, $2, $3) \
                         ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                    )
                    .bind(name)
                    .bind(alias)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .ctx("setting a model alias")?;
                    tx.commit().await.ctx("committing a model alias")
                }

                async fn delete_model_alias(&self, name: &str, alias: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_registered(&mut tx, name).await?;
                    sqlx::query("DELETE FROM registered_model_aliases WHERE name = $1 AND alias = $2")
                        .bind(name)
                        .bind(alias)
                        .execute(&mut *tx)
                        .await
                        .ctx("deleting a model alias")?;
                    tx.commit().await.ctx("committing a model alias deletion")
                }

                async fn model_version_by_alias(&self, name: &str, alias: &str) -> Result<Option<ModelVersion>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let version: Option<i64> = sqlx::query_scalar(
                        "SELECT version FROM registered_model_aliases WHERE name = $1 AND alias = $2",
                    )
                    .bind(name)
                    .bind(alias)
                    .fetch_optional(&mut *conn)
                    .await
                    .ctx("reading a model alias")?;
                    match version {
                        Some(version) => version_of(&mut conn, name, version).await,
                        None => Ok(None),
                    }
                }
            }
        };
    };
}
pub(crate) use models_impl;
