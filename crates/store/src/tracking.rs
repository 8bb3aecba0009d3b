//! Experiment tracking records: MLflow-style experiments, runs, params, tags, metrics and
//! dataset inputs, behind [`TrackingStore`].
//!
//! The records here are neutral: they know nothing of MLflow's JSON. `capstan-tracking`
//! translates the wire format to and from them at the edge. Searches arrive as structured
//! [`Clause`]s and [`OrderKey`]s (the filter grammar is parsed there) and run as SQL, so a search
//! never loads a whole experiment to filter it in memory.
//!
//! A tracking run is keyed by a 32-hex run id, the same shape as a pipeline run's, and belongs to
//! a row of the shared `experiments` table: a pipeline run can carry a tracking run of its id.
//!
//! As in the rest of the store, each method is one transaction and the one implementation,
//! [`tracking_impl!`], serves both backends.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Millis, Result, StoreError};

/// `active` or `deleted`, as MLflow names lifecycle stages.
pub const ACTIVE: &str = "active";
pub const DELETED: &str = "deleted";

/// The most runs, experiments or points one page can hold.
pub const MAX_PAGE: u32 = 50_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub experiment_id: i64,
    pub name: String,
    /// `None` when the experiment uses the server's default location.
    pub artifact_location: Option<String>,
    pub lifecycle_stage: String,
    pub creation_time: Millis,
    pub last_update_time: Millis,
    pub tags: Vec<KeyValue>,
}

/// One logged metric point. `value` may be NaN or infinite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub timestamp: Millis,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub user_id: String,
    /// `RUNNING`, `SCHEDULED`, `FINISHED`, `FAILED` or `KILLED`.
    pub status: String,
    pub start_time: Millis,
    pub end_time: Option<Millis>,
    pub lifecycle_stage: String,
    pub artifact_uri: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    pub digest: String,
    pub source_type: String,
    pub source: String,
    pub schema: Option<String>,
    pub profile: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInput {
    pub dataset: Dataset,
    pub tags: Vec<KeyValue>,
}

/// A run with its data: params and tags by key, the latest point of each metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackingRun {
    pub info: RunInfo,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
    pub metrics: Vec<Metric>,
    pub inputs: Vec<DatasetInput>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewTrackingRun {
    pub run_id: String,
    pub experiment_id: i64,
    pub name: String,
    pub user_id: String,
    pub start_time: Millis,
    pub artifact_uri: String,
    pub tags: Vec<KeyValue>,
}

/// What `update_run` changes; `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUpdate {
    pub status: Option<String>,
    pub end_time: Option<Millis>,
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewType {
    #[default]
    ActiveOnly,
    DeletedOnly,
    All,
}

impl ViewType {
    fn stages(self) -> &'static [&'static str] {
        match self {
            ViewType::ActiveOnly => &[ACTIVE],
            ViewType::DeletedOnly => &[DELETED],
            ViewType::All => &[ACTIVE, DELETED],
        }
    }
}

/// A column of a run or an experiment that a search can filter or order by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attribute {
    RunId,
    RunName,
    Status,
    UserId,
    ArtifactUri,
    StartTime,
    EndTime,
    LifecycleStage,
    ExperimentId,
    /// An experiment's name.
    Name,
    CreationTime,
    LastUpdateTime,
    /// A model version's number.
    Version,
}

impl Attribute {
    /// True for the attributes compared as numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Attribute::StartTime
                | Attribute::EndTime
                | Attribute::CreationTime
                | Attribute::LastUpdateTime
                | Attribute::ExperimentId
                | Attribute::Version
        )
    }

    fn run_column(self) -> Result<&'static str> {
        Ok(match self {
            Attribute::RunId => "r.run_id",
            Attribute::RunName => "r.name",
            Attribute::Status => "r.status",
            Attribute::UserId => "r.user_id",
            Attribute::ArtifactUri => "r.artifact_uri",
            Attribute::StartTime => "r.start_time",
            Attribute::EndTime => "r.end_time",
            Attribute::LifecycleStage => "r.lifecycle_stage",
            Attribute::ExperimentId => "r.experiment_id",
            other => {
                return Err(StoreError::Invalid(format!(
                    "runs cannot be searched by {other:?}"
                )));
            }
        })
    }

    fn experiment_column(self) -> Result<&'static str> {
        Ok(match self {
            Attribute::Name => "e.name",
            Attribute::CreationTime => "e.created_at",
            Attribute::LastUpdateTime => "e.updated_at",
            Attribute::ExperimentId => "e.id",
            Attribute::LifecycleStage => "e.lifecycle_stage",
            other => {
                return Err(StoreError::Invalid(format!(
                    "experiments cannot be searched by {other:?}"
                )));
            }
        })
    }
}

/// What a search clause or order key looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entity {
    /// The latest value of a run's metric.
    Metric(String),
    Param(String),
    Tag(String),
    Attribute(Attribute),
    /// A field (`name`, `digest` or `context`) of a dataset the run consumed.
    Dataset(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
}

impl Comparator {
    fn sql(self) -> &'static str {
        match self {
            Comparator::Eq => "=",
            Comparator::Ne => "<>",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Like | Comparator::ILike => "LIKE",
            Comparator::In => "IN",
            Comparator::NotIn => "NOT IN",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    Number(f64),
    Text(String),
    List(Vec<String>),
}

/// One `entity comparator value` term of a filter; a filter is the AND of its clauses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clause {
    pub entity: Entity,
    pub comparator: Comparator,
    pub value: Operand,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderKey {
    pub entity: Entity,
    pub ascending: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunQuery {
    pub experiment_ids: Vec<i64>,
    pub clauses: Vec<Clause>,
    /// Applied in order; then newest start time first, then run id.
    pub order_by: Vec<OrderKey>,
    pub view: ViewType,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentQuery {
    pub clauses: Vec<Clause>,
    /// Applied in order; then newest first, then experiment id.
    pub order_by: Vec<OrderKey>,
    pub view: ViewType,
    pub limit: u32,
    pub offset: u64,
}

/// One page of a search; `next_offset` is where the next page starts, if there is one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_offset: Option<u64>,
}

#[async_trait]
pub trait TrackingStore: crate::models::ModelStore + Send + Sync + 'static {
    /// Creates an experiment; a taken name is a [`StoreError::Conflict`].
    async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[KeyValue],
        at: Millis,
    ) -> Result<Experiment>;
    async fn get_experiment(&self, id: i64) -> Result<Option<Experiment>>;
    async fn get_experiment_by_name(&self, name: &str) -> Result<Option<Experiment>>;
    async fn search_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>>;
    async fn rename_experiment(&self, id: i64, name: &str, at: Millis) -> Result<()>;
    /// Marks the experiment and its runs `deleted` (or `active` again).
    async fn set_experiment_lifecycle(&self, id: i64, stage: &str, at: Millis) -> Result<()>;
    async fn set_experiment_tag(&self, id: i64, tag: &KeyValue) -> Result<()>;
    async fn delete_experiment_tag(&self, id: i64, key: &str) -> Result<()>;

    /// Creates a run (status `RUNNING`) in an active experiment.
    async fn create_tracking_run(&self, run: &NewTrackingRun) -> Result<TrackingRun>;
    async fn get_tracking_run(&self, run_id: &str) -> Result<Option<TrackingRun>>;
    async fn update_tracking_run(&self, run_id: &str, update: &RunUpdate) -> Result<RunInfo>;
    async fn set_run_lifecycle(&self, run_id: &str, stage: &str, at: Millis) -> Result<()>;
    async fn search_tracking_runs(&self, query: &RunQuery) -> Result<Page<TrackingRun>>;

    /// Logs metrics, params and tags to an active run, all or nothing. Logging the same points
    /// again is a no-op; a param that already has another value is [`StoreError::Invalid`].
    /// Setting the `mlflow.runName` tag renames the run.
    async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[KeyValue],
        tags: &[KeyValue],
    ) -> Result<()>;
    async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()>;
    /// Records, all or nothing, the datasets an active run consumed and the active logged
    /// models (by id) it took as inputs; a dataset or model logged again keeps its first
    /// record, and an unknown or deleted model is [`StoreError::NotFound`].
    async fn log_inputs(
        &self,
        run_id: &str,
        inputs: &[DatasetInput],
        models: &[String],
        at: Millis,
    ) -> Result<()>;
    /// The ids of the logged models a run took as inputs, oldest first.
    async fn run_model_inputs(&self, run_id: &str) -> Result<Vec<String>>;

    /// A metric's points in step, then timestamp order.
    async fn metric_history(
        &self,
        run_id: &str,
        key: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Page<Metric>>;
    /// A chart's worth of a metric's points between steps `start` and `end` inclusive, in step,
    /// then timestamp order: every point when there are at most `max`; otherwise at most `max`
    /// points chosen in the database, the first and last of the range always among them, and
    /// in each of `max / 4` equal step buckets its first, last, lowest and highest point
    /// (see `sample.rs`). An unknown run is [`StoreError::NotFound`].
    async fn metric_sample(
        &self,
        run_id: &str,
        key: &str,
        start: i64,
        end: i64,
        max: u32,
    ) -> Result<Vec<Metric>>;
}

pub type DynTrackingStore = Arc<dyn TrackingStore>;

/// A value bound to a dynamically built query ([`Sql`], or a `mirror::Batch`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    /// An integer column that may be NULL.
    NullableInt(Option<i64>),
    Float(f64),
}

/// Builds SQL with `$n` placeholders and remembers what to bind to them.
#[derive(Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) args: Vec<Arg>,
}

impl Sql {
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(crate) fn arg(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        let n = self.args.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    pub(crate) fn list(&mut self, args: impl IntoIterator<Item = Arg>) -> &mut Self {
        self.text.push('(');
        for (i, arg) in args.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.arg(arg);
        }
        self.text.push(')');
        self
    }
}

/// Whether the dialect's `LIKE` ignores case (SQLite's does, for ASCII).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// Turns a `LIKE` pattern into an SQLite `GLOB` pattern, which is case-sensitive.
pub(crate) fn like_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '%' => out.push('*'),
            '_' => out.push('?'),
            '*' | '?' | '[' | ']' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            other => out.push(other),
        }
    }
    out
}

/// A text comparison of `column` to `value`, honouring the case rules of MLflow's `LIKE`
/// (case-sensitive) and `ILIKE` (case-insensitive) on both dialects.
pub(crate) fn text_comparison(
    sql: &mut Sql,
    dialect: Dialect,
    column: &str,
    comparator: Comparator,
    value: &Operand,
) -> Result<()> {
    match (comparator, value) {
        (Comparator::In | Comparator::NotIn, Operand::List(items)) => {
            sql.push(column).push(" ").push(comparator.sql()).push(" ");
            sql.list(items.iter().cloned().map(Arg::Text));
        }
        (Comparator::Like, Operand::Text(pattern)) if dialect == Dialect::Sqlite => {
            sql.push(column).push(" GLOB ");
            sql.arg(Arg::Text(like_to_glob(pattern)));
        }
        (Comparator::ILike, Operand::Text(pattern)) => {
            sql.push("LOWER(").push(column).push(") LIKE LOWER(");
            sql.arg(Arg::Text(pattern.clone())).push(")");
        }
        (
            Comparator::Eq
            | Comparator::Ne
            | Comparator::Like
            | Comparator::Lt
            | Comparator::Le
            | Comparator::Gt
            | Comparator::Ge,
            Operand::Text(text),
        ) => {
            sql.push(column).push(" ").push(comparator.sql()).push(" ");
            sql.arg(Arg::Text(text.clone()));
        }
        _ => {
            return Err(StoreError::Invalid(format!(
                "the comparator {comparator:?} does not fit the value {value:?}"
            )));
        }
    }
    Ok(())
}

/// `column` (the column of `attribute`) compared as the clause says: as a number for numeric
/// attributes, as text otherwise.
pub(crate) fn attribute_comparison(
    sql: &mut Sql,
    dialect: Dialect,
    attribute: Attribute,
    column: &str,
    clause: &Clause,
) -> Result<()> {
    if attribute.is_numeric() {
        numeric_comparison(sql, column, clause.comparator, &clause.value, true)
    } else {
        text_comparison(sql, dialect, column, clause.comparator, &clause.value)
    }
}

pub(crate) fn numeric_comparison(
    sql: &mut Sql,
    column: &str,
    comparator: Comparator,
    value: &Operand,
    integer: bool,
) -> Result<()> {
    let Operand::Number(number) = value else {
        return Err(StoreError::Invalid(format!(
            "expected a number to compare with, got {value:?}"
        )));
    };
    if matches!(
        comparator,
        Comparator::Like | Comparator::ILike | Comparator::In | Comparator::NotIn
    ) {
        return Err(StoreError::Invalid(format!(
            "numbers cannot be compared with {comparator:?}"
        )));
    }
    sql.push(column).push(" ").push(comparator.sql()).push(" ");
    if integer && number.fract() == 0.0 && number.abs() < 9.0e15 {
        sql.arg(Arg::Int(*number as i64));
    } else {
        sql.arg(Arg::Float(*number));
    }
    Ok(())
}

/// Appends the SQL condition of one run-search clause (the run table is `r`).
pub(crate) fn run_clause(sql: &mut Sql, dialect: Dialect, clause: &Clause) -> Result<()> {
    match &clause.entity {
        Entity::Metric(key) => {
            sql.push(
                "EXISTS (SELECT 1 FROM tracking_latest_metrics m WHERE m.run_id = r.run_id \
                 AND m.is_nan = 0 AND m.key = ",
            );
            sql.arg(Arg::Text(key.clone())).push(" AND ");
            numeric_comparison(sql, "m.value", clause.comparator, &clause.value, false)?;
            sql.push(")");
        }
        Entity::Param(key) | Entity::Tag(key) => {
            let table = match clause.entity {
                Entity::Param(_) => "tracking_params",
                _ => "tracking_tags",
            };
            sql.push("EXISTS (SELECT 1 FROM ")
                .push(table)
                .push(" kv WHERE kv.run_id = r.run_id AND kv.key = ");
            sql.arg(Arg::Text(key.clone())).push(" AND ");
            text_comparison(sql, dialect, "kv.value", clause.comparator, &clause.value)?;
            sql.push(")");
        }
        Entity::Attribute(attribute) => {
            let column = attribute.run_column()?;
            attribute_comparison(sql, dialect, *attribute, column, clause)?;
        }
        Entity::Dataset(field) => {
            let column = match field.as_str() {
                "name" => "d.name",
                "digest" => "d.digest",
                "context" => "d.context",
                other => {
                    return Err(StoreError::Invalid(format!(
                        "datasets cannot be searched by `{other}`"
                    )));
                }
            };
            if column == "d.context" {
                // The context is the `mlflow.data.context` tag of the input.
                sql.push(
                    "EXISTS (SELECT 1 FROM tracking_inputs d0 WHERE d0.run_id = r.run_id AND ",
                );
                let pattern = match &clause.value {
                    Operand::Text(text) => text.clone(),
                    other => {
                        return Err(StoreError::Invalid(format!(
                            "a dataset context is compared with a string, got {other:?}"
                        )));
                    }
                };
                if clause.comparator != Comparator::Eq {
                    return Err(StoreError::Invalid(
                        "a dataset context can only be compared with =".to_owned(),
                    ));
                }
                let tag = serde_json::json!({"key": "mlflow.data.context", "value": pattern});
                sql.push("d0.tags LIKE ");
                sql.arg(Arg::Text(format!(
                    "%{}%",
                    crate::common::escape_like(&tag.to_string())
                )));
                sql.push(" ESCAPE '\\')");
            } else {
                sql.push("EXISTS (SELECT 1 FROM tracking_inputs d WHERE d.run_id = r.run_id AND ");
                text_comparison(sql, dialect, column, clause.comparator, &clause.value)?;
                sql.push(")");
            }
        }
    }
    Ok(())
}

/// Appends the ORDER BY terms of a run search, each with missing values last.
pub(crate) fn run_order(sql: &mut Sql, keys: &[OrderKey]) -> Result<()> {
    sql.push(" ORDER BY ");
    for key in keys {
        let direction = if key.ascending { " ASC" } else { " DESC" };
        let expression = |sql: &mut Sql| -> Result<()> {
            match &key.entity {
                Entity::Metric(name) => {
                    sql.push(
                        "(SELECT CASE WHEN m.is_nan = 1 THEN NULL ELSE m.value END \
                         FROM tracking_latest_metrics m WHERE m.run_id = r.run_id AND m.key = ",
                    );
                    sql.arg(Arg::Text(name.clone())).push(")");
                }
                Entity::Param(name) | Entity::Tag(name) => {
                    let table = match key.entity {
                        Entity::Param(_) => "tracking_params",
                        _ => "tracking_tags",
                    };
                    sql.push("(SELECT kv.value FROM ")
                        .push(table)
                        .push(" kv WHERE kv.run_id = r.run_id AND kv.key = ");
                    sql.arg(Arg::Text(name.clone())).push(")");
                }
                Entity::Attribute(attribute) => {
                    sql.push(attribute.run_column()?);
                }
                Entity::Dataset(_) => {
                    return Err(StoreError::Invalid(
                        "runs cannot be ordered by a dataset field".to_owned(),
                    ));
                }
            }
            Ok(())
        };
        expression(sql)?;
        sql.push(" IS NULL, ");
        expression(sql)?;
        sql.push(direction).push(", ");
    }
    sql.push("r.start_time DESC, r.run_id ASC");
    Ok(())
}

pub(crate) fn experiment_clause(sql: &mut Sql, dialect: Dialect, clause: &Clause) -> Result<()> {
    match &clause.entity {
        Entity::Tag(key) => {
            sql.push(
                "EXISTS (SELECT 1 FROM experiment_tags kv WHERE kv.experiment_id = e.id \
                 AND kv.key = ",
            );
            sql.arg(Arg::Text(key.clone())).push(" AND ");
            text_comparison(sql, dialect, "kv.value", clause.comparator, &clause.value)?;
            sql.push(")");
        }
        Entity::Attribute(attribute) => {
            let column = attribute.experiment_column()?;
            attribute_comparison(sql, dialect, *attribute, column, clause)?;
        }
        other => {
            return Err(StoreError::Invalid(format!(
                "experiments cannot be searched by {other:?}"
            )));
        }
    }
    Ok(())
}

pub(crate) fn experiment_order(sql: &mut Sql, keys: &[OrderKey]) -> Result<()> {
    sql.push(" ORDER BY ");
    for key in keys {
        let Entity::Attribute(attribute) = &key.entity else {
            return Err(StoreError::Invalid(
                "experiments can only be ordered by an attribute".to_owned(),
            ));
        };
        sql.push(attribute.experiment_column()?)
            .push(if key.ascending { " ASC, " } else { " DESC, " });
    }
    sql.push("e.created_at DESC, e.id ASC");
    Ok(())
}

pub(crate) fn view_condition(sql: &mut Sql, column: &str, view: ViewType) {
    sql.push(column).push(" IN ");
    sql.list(view.stages().iter().map(|s| Arg::Text((*s).to_owned())));
}

/// Checks a page size and turns it into the SQL limit (one more, to detect a next page).
pub(crate) fn page_limit(limit: u32) -> Result<i64> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(StoreError::Invalid(format!(
            "a page holds between 1 and {MAX_PAGE} items, not {limit}"
        )));
    }
    Ok(i64::from(limit) + 1)
}

pub(crate) fn paged<T>(mut items: Vec<T>, limit: u32, offset: u64) -> Page<T> {
    let limit = limit as usize;
    let next_offset = if items.len() > limit {
        items.truncate(limit);
        Some(offset + limit as u64)
    } else {
        None
    };
    Page { items, next_offset }
}

/// The stored form of a metric value: SQLite cannot hold NaN, so it becomes 0 and a flag.
pub(crate) fn stored_value(value: f64) -> (f64, i64) {
    if value.is_nan() { (0.0, 1) } else { (value, 0) }
}

pub(crate) fn loaded_value(value: f64, is_nan: i64) -> f64 {
    if is_nan != 0 { f64::NAN } else { value }
}

/// An aggregate that packs the rows of a read into one row: a JSON array with an array of
/// `columns` per row, in `order` (`NULL` on PostgreSQL when there are no rows).
///
/// On SQLite every row of a result crosses from the driver's database thread to the async task
/// on its own, a wake-up and a copy of each value: a 300-point history spent 0.4 ms of its
/// 1.2 ms that way. One packed row crosses once, and decoding the JSON is cheap. Floating-point
/// columns go in as [`exact_text`]. (Packing a search's page of run infos made it slower, so
/// only reads of many small rows use it.)
pub(crate) fn json_rows(dialect: Dialect, columns: &str, order: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("json_group_array(json_array({columns}) ORDER BY {order})"),
        Dialect::Postgres => {
            format!("CAST(json_agg(json_build_array({columns}) ORDER BY {order}) AS TEXT)")
        }
    }
}

/// The text of a floating-point `column` that reads back as the same number (see
/// [`parse_exact`]): SQLite's `quote` writes 15 digits when they round-trip and 20 otherwise,
/// `Inf` and `-Inf` for the infinities; PostgreSQL (12 and later, with the default
/// `extra_float_digits`) writes the shortest exact form, `Infinity` and `-Infinity`. A JSON
/// number would lose digits on SQLite, which writes 15.
pub(crate) fn exact_text(dialect: Dialect, column: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("quote({column})"),
        Dialect::Postgres => format!("CAST({column} AS TEXT)"),
    }
}

/// Reads an [`exact_text`].
pub(crate) fn parse_exact(text: &str) -> Result<f64> {
    text.parse()
        .map_err(|_| StoreError::Backend(format!("a stored number reads back as `{text}`")))
}

/// The rows of a [`json_rows`] aggregate.
pub(crate) fn unpack_rows<T: serde::de::DeserializeOwned>(packed: Option<&str>) -> Result<Vec<T>> {
    match packed {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| StoreError::Backend(format!("a packed result does not read back: {e}"))),
    }
}

/// One page of a metric's history as one row of [`json_rows`]: `step, timestamp, is_nan,
/// exact value` per point.
pub(crate) fn packed_history_sql(dialect: Dialect) -> String {
    format!(
        "SELECT {} FROM (SELECT step, timestamp, is_nan, value FROM tracking_metrics \
         WHERE run_id = $1 AND key = $2 ORDER BY step, timestamp, value LIMIT $3 OFFSET $4) AS page",
        json_rows(
            dialect,
            &format!("step, timestamp, is_nan, {}", exact_text(dialect, "value")),
            "step, timestamp, value"
        )
    )
}

/// The points of a row of [`packed_history_sql`], named `key`.
pub(crate) fn unpack_history(key: &str, packed: Option<&str>) -> Result<Vec<Metric>> {
    unpack_rows::<(i64, i64, i64, String)>(packed)?
        .into_iter()
        .map(|(step, timestamp, is_nan, value)| {
            Ok(Metric {
                key: key.to_owned(),
                value: loaded_value(parse_exact(&value)?, is_nan),
                timestamp,
                step,
            })
        })
        .collect()
}

/// Rows per multi-row `INSERT` of metric points: a whole batch of MLflow's at most 1000 points
/// in one statement. 6 binds a row stays below the bind limits of both SQLite (32,766) and
/// PostgreSQL (65,535).
pub(crate) const METRIC_ROWS_PER_INSERT: usize = 1000;

/// `INSERT INTO tracking_metrics ... VALUES (..6 placeholders..), (...) ON CONFLICT DO NOTHING`
/// for `rows` points.
pub(crate) fn insert_metrics_sql(rows: usize, dialect: Dialect) -> String {
    metric_rows_sql("tracking_metrics", rows, dialect) + " ON CONFLICT DO NOTHING"
}

/// `INSERT INTO tracking_latest_metrics ...` of `rows` points, one per key, each replacing the
/// stored latest point of its key only when it is later: a higher step, then a later timestamp,
/// then a higher value.
pub(crate) fn upsert_latest_metrics_sql(rows: usize, dialect: Dialect) -> String {
    metric_rows_sql("tracking_latest_metrics", rows, dialect)
        + " ON CONFLICT (run_id, key) DO UPDATE SET step = excluded.step, \
           timestamp = excluded.timestamp, value = excluded.value, is_nan = excluded.is_nan \
           WHERE excluded.step > tracking_latest_metrics.step \
           OR (excluded.step = tracking_latest_metrics.step \
               AND excluded.timestamp > tracking_latest_metrics.timestamp) \
           OR (excluded.step = tracking_latest_metrics.step \
               AND excluded.timestamp = tracking_latest_metrics.timestamp \
               AND excluded.value > tracking_latest_metrics.value)"
}

/// `INSERT INTO table (run_id, key, step, timestamp, value, is_nan) VALUES` with `rows` rows of
/// placeholders, bound in that order.
///
/// SQLite gets anonymous `?` placeholders: for a numbered `$n` the driver asks SQLite for each
/// parameter's name, a linear search, which made binding 1,200 parameters cost more than the
/// insert itself.
fn metric_rows_sql(table: &str, rows: usize, dialect: Dialect) -> String {
    let mut sql =
        format!("INSERT INTO {table} (run_id, key, step, timestamp, value, is_nan) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        match dialect {
            Dialect::Sqlite => sql.push_str("(?, ?, ?, ?, ?, ?)"),
            Dialect::Postgres => {
                let b = row * 6;
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                ));
            }
        }
    }
    sql
}

/// The point of each key that a run's latest metric becomes after `metrics` are logged in order:
/// the highest (step, timestamp, stored value), the first of equal ones. Keys keep the order of
/// their first point.
pub(crate) fn latest_points(metrics: &[Metric]) -> Vec<&Metric> {
    let rank = |m: &Metric| (m.step, m.timestamp, stored_value(m.value).0);
    let mut latest: Vec<&Metric> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for metric in metrics {
        match index.get(metric.key.as_str()) {
            Some(&i) => {
                if rank(metric).partial_cmp(&rank(latest[i])) == Some(std::cmp::Ordering::Greater) {
                    latest[i] = metric;
                }
            }
            None => {
                index.insert(&metric.key, latest.len());
                latest.push(metric);
            }
        }
    }
    latest
}

/// Checks one batch before anything is written: no key is empty, and a param key does not
/// appear twice with different values.
pub(crate) fn check_batch(
    metrics: &[Metric],
    params: &[KeyValue],
    tags: &[KeyValue],
) -> Result<()> {
    let empty = metrics
        .iter()
        .map(|m| &m.key)
        .chain(params.iter().map(|p| &p.key));
    if empty
        .chain(tags.iter().map(|t| &t.key))
        .any(|k| k.is_empty())
    {
        return Err(StoreError::Invalid("a key must not be empty".to_owned()));
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for param in params {
        if let Some(previous) = seen.insert(&param.key, &param.value)
            && previous != param.value
        {
            return Err(StoreError::Invalid(format!(
                "duplicate parameter keys with different values in one batch: `{}`",
                param.key
            )));
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub(crate) struct ExperimentRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) artifact_location: Option<String>,
    pub(crate) lifecycle_stage: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct OwnedKeyValueRow {
    pub(crate) owner: String,
    pub(crate) key: String,
    pub(crate) value: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct MetricRow {
    pub(crate) run_id: String,
    pub(crate) key: String,
    pub(crate) value: f64,
    pub(crate) is_nan: i64,
    pub(crate) timestamp: i64,
    pub(crate) step: i64,
}

impl MetricRow {
    pub(crate) fn into_metric(self) -> Metric {
        Metric {
            value: loaded_value(self.value, self.is_nan),
            key: self.key,
            timestamp: self.timestamp,
            step: self.step,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct InputRow {
    pub(crate) run_id: String,
    pub(crate) name: String,
    pub(crate) digest: String,
    pub(crate) source_type: String,
    pub(crate) source: String,
    pub(crate) schema: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) tags: String,
}

/// The params (kind 0), tags (1) and latest metrics (2) of the runs in `ids`, each kind by key,
/// as one row of [`json_rows`] of [`RunDataRow`]s; preceded by a `WITH ids (run_id) AS (...)`
/// that names the runs.
pub(crate) fn run_data_sql(dialect: Dialect) -> String {
    let columns = "kind, run_id, key, text, number, is_nan, timestamp, step";
    format!(
        "SELECT {} FROM (\
         SELECT CAST(0 AS BIGINT) AS kind, run_id, key, value AS text, \
             CAST(NULL AS TEXT) AS number, CAST(NULL AS BIGINT) AS is_nan, \
             CAST(NULL AS BIGINT) AS timestamp, CAST(NULL AS BIGINT) AS step \
         FROM tracking_params WHERE run_id IN (SELECT run_id FROM ids) \
         UNION ALL SELECT 1, run_id, key, value, NULL, NULL, NULL, NULL \
         FROM tracking_tags WHERE run_id IN (SELECT run_id FROM ids) \
         UNION ALL SELECT 2, run_id, key, NULL, {}, is_nan, timestamp, step \
         FROM tracking_latest_metrics WHERE run_id IN (SELECT run_id FROM ids)) AS data",
        json_rows(dialect, columns, "kind, key"),
        exact_text(dialect, "value"),
    )
}

/// One row of [`run_data_sql`]; `number` is an [`exact_text`].
#[derive(Deserialize)]
pub(crate) struct RunDataRow {
    kind: i64,
    run_id: String,
    key: String,
    text: Option<String>,
    number: Option<String>,
    is_nan: Option<i64>,
    timestamp: Option<i64>,
    step: Option<i64>,
}

/// Splits [`RunDataRow`]s into params, tags and latest metrics.
#[allow(clippy::type_complexity)]
pub(crate) fn split_run_data(
    rows: Vec<RunDataRow>,
) -> Result<(Vec<OwnedKeyValueRow>, Vec<OwnedKeyValueRow>, Vec<MetricRow>)> {
    let (mut params, mut tags, mut metrics) = (Vec::new(), Vec::new(), Vec::new());
    let broken = || StoreError::Backend("a stored run row is missing a value".to_owned());
    for row in rows {
        match row.kind {
            0 | 1 => {
                let pair = OwnedKeyValueRow {
                    owner: row.run_id,
                    key: row.key,
                    value: row.text.ok_or_else(broken)?,
                };
                if row.kind == 0 {
                    params.push(pair);
                } else {
                    tags.push(pair);
                }
            }
            _ => metrics.push(MetricRow {
                run_id: row.run_id,
                key: row.key,
                value: parse_exact(&row.number.ok_or_else(broken)?)?,
                is_nan: row.is_nan.ok_or_else(broken)?,
                timestamp: row.timestamp.ok_or_else(broken)?,
                step: row.step.ok_or_else(broken)?,
            }),
        }
    }
    Ok((params, tags, metrics))
}

pub(crate) const RUN_INFO_COLUMNS: &str = "r.run_id, r.experiment_id, r.name, r.user_id, \
     r.status, r.start_time, r.end_time, r.lifecycle_stage, r.artifact_uri";

pub(crate) const EXPERIMENT_COLUMNS: &str =
    "e.id, e.name, e.artifact_location, e.lifecycle_stage, e.created_at, e.updated_at";

/// Assembles runs (in the order of `infos`) from their rows.
pub(crate) fn assemble_runs(
    infos: Vec<RunInfo>,
    params: Vec<OwnedKeyValueRow>,
    tags: Vec<OwnedKeyValueRow>,
    metrics: Vec<MetricRow>,
    inputs: Vec<InputRow>,
) -> Result<Vec<TrackingRun>> {
    let mut runs: Vec<TrackingRun> = infos
        .into_iter()
        .map(|info| TrackingRun {
            info,
            params: Vec::new(),
            tags: Vec::new(),
            metrics: Vec::new(),
            inputs: Vec::new(),
        })
        .collect();
    let index: BTreeMap<String, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| (run.info.run_id.clone(), i))
        .collect();
    for row in params {
        if let Some(&i) = index.get(&row.owner) {
            runs[i].params.push(KeyValue::new(row.key, row.value));
        }
    }
    for row in tags {
        if let Some(&i) = index.get(&row.owner) {
            runs[i].tags.push(KeyValue::new(row.key, row.value));
        }
    }
    for row in metrics {
        if let Some(&i) = index.get(&row.run_id) {
            runs[i].metrics.push(row.into_metric());
        }
    }
    for row in inputs {
        let Some(&i) = index.get(&row.run_id) else {
            continue;
        };
        let tags: Vec<KeyValue> = serde_json::from_str(&row.tags).map_err(|e| {
            StoreError::Backend(format!("stored dataset input tags are not valid json: {e}"))
        })?;
        runs[i].inputs.push(DatasetInput {
            dataset: Dataset {
                name: row.name,
                digest: row.digest,
                source_type: row.source_type,
                source: row.source,
                schema: row.schema,
                profile: row.profile,
            },
            tags,
        });
    }
    Ok(runs)
}

pub(crate) fn assemble_experiments(
    rows: Vec<ExperimentRow>,
    tags: Vec<OwnedKeyValueRow>,
) -> Vec<Experiment> {
    let mut by_id: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
    for tag in tags {
        by_id
            .entry(tag.owner)
            .or_default()
            .push(KeyValue::new(tag.key, tag.value));
    }
    rows.into_iter()
        .map(|row| Experiment {
            tags: by_id.remove(&row.id.to_string()).unwrap_or_default(),
            experiment_id: row.id,
            name: row.name,
            artifact_location: row.artifact_location,
            lifecycle_stage: row.lifecycle_stage,
            creation_time: row.created_at,
            last_update_time: row.updated_at,
        })
        .collect()
}

/// Binds every [`Arg`] of a built query, in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                $crate::tracking::Arg::Text(text) => query.bind(text),
                $crate::tracking::Arg::Int(int) => query.bind(int),
                $crate::tracking::Arg::NullableInt(int) => query.bind(int),
                $crate::tracking::Arg::Float(float) => query.bind(float),
            };
        }
        query
    }};
}
pub(crate) use bind_all;

/// A table of key/value tags, and the columns that name the entity a tag belongs to.
pub(crate) struct TagTable {
    pub(crate) table: &'static str,
    pub(crate) owner: &'static [&'static str],
}

pub(crate) const EXPERIMENT_TAGS: TagTable = TagTable {
    table: "experiment_tags",
    owner: &["experiment_id"],
};
pub(crate) const RUN_TAGS: TagTable = TagTable {
    table: "tracking_tags",
    owner: &["run_id"],
};
pub(crate) const REGISTERED_MODEL_TAGS: TagTable = TagTable {
    table: "registered_model_tags",
    owner: &["name"],
};
pub(crate) const MODEL_VERSION_TAGS: TagTable = TagTable {
    table: "model_version_tags",
    owner: &["name", "version"],
};
pub(crate) const LOGGED_MODEL_TAGS: TagTable = TagTable {
    table: "logged_model_tags",
    owner: &["model_id"],
};

impl TagTable {
    /// Sets one tag (a new value replaces the old one); binds the owner's ids, then key, value.
    pub(crate) fn upsert_sql(&self) -> String {
        let owner = self.owner.join(", ");
        let n = self.owner.len();
        let ids: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({owner}, key, value) VALUES ({}, ${}, ${}) \
             ON CONFLICT ({owner}, key) DO UPDATE SET value = excluded.value",
            self.table,
            ids.join(", "),
            n + 1,
            n + 2
        )
    }

    /// Deletes one tag; binds the owner's ids, then the key.
    pub(crate) fn delete_sql(&self) -> String {
        let mut conditions: Vec<String> = self
            .owner
            .iter()
            .enumerate()
            .map(|(i, column)| format!("{column} = ${}", i + 1))
            .collect();
        conditions.push(format!("key = ${}", self.owner.len() + 1));
        format!(
            "DELETE FROM {} WHERE {}",
            self.table,
            conditions.join(" AND ")
        )
    }
}

/// The tag writers over one backend's connection type, for [`TagTable`]s: every tag table of
/// the tracking store and the model registry goes through these two functions.
macro_rules! tag_writers {
    ($conn:ty) => {
        /// Sets `tags` on the entity that `owner` names in `table`.
        async fn set_tag_rows(
            conn: &mut $conn,
            table: &$crate::tracking::TagTable,
            owner: &[$crate::tracking::Arg],
            tags: &[KeyValue],
        ) -> Result<()> {
            let sql = table.upsert_sql();
            for tag in tags {
                if tag.key.is_empty() {
                    return Err(StoreError::Invalid(
                        "a tag key must not be empty".to_owned(),
                    ));
                }
                let query = $crate::tracking::bind_all!(
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str())),
                    owner.iter().cloned()
                );
                query
                    .bind(&tag.key)
                    .bind(&tag.value)
                    .execute(&mut *conn)
                    .await
                    .ctx(&format!("setting a tag in {}", table.table))?;
            }
            Ok(())
        }

        /// Deletes the tag `key` of the entity that `owner` names in `table`; false when there
        /// was none.
        async fn delete_tag_row(
            conn: &mut $conn,
            table: &$crate::tracking::TagTable,
            owner: &[$crate::tracking::Arg],
            key: &str,
        ) -> Result<bool> {
            let query = $crate::tracking::bind_all!(
                sqlx::query(sqlx::AssertSqlSafe(table.delete_sql())),
                owner.iter().cloned()
            );
            let deleted = query
                .bind(key)
                .execute(&mut *conn)
                .await
                .ctx(&format!("deleting a tag in {}", table.table))?;
            Ok(deleted.rows_affected() > 0)
        }
    };
}
pub(crate) use tag_writers;

/// Expands the one [`TrackingStore`] implementation for a backend, like `store_impl!` does
/// for [`Store`](crate::Store).
macro_rules! tracking_impl {
    ($store:ty, $conn:ty, $dialect:expr) => {
        const _: () = {
            use sqlx::AssertSqlSafe;
            use $crate::common::DbContext;
            use $crate::tracking::bind_all;
            use $crate::tracking::{
                Arg, DatasetInput, Experiment, ExperimentQuery, ExperimentRow,
                InputRow, KeyValue, Metric, MetricRow, NewTrackingRun, OwnedKeyValueRow, Page,
                RunInfo, RunQuery, RunUpdate, Sql, TrackingRun, ACTIVE,
                DELETED, EXPERIMENT_COLUMNS, RUN_INFO_COLUMNS,
            };
            use $crate::{Millis, Result, StoreError};
            use $crate::tracking::{EXPERIMENT_TAGS, RUN_TAGS};

            $crate::tracking::tag_writers!($conn);

            /// `(owner, key, value)` rows of a key-value table for the given owners.
            async fn owned_pairs(
                conn: &mut $conn,
                table: &str,
                owner: &str,
                owners: Vec<Arg>,
            ) -> Result<Vec<OwnedKeyValueRow>> {
                if owners.is_empty() {
                    return Ok(Vec::new());
                }
                let mut sql = Sql::default();
                sql.push(&format!(
                    "SELECT CAST({owner} AS TEXT) AS owner, key, value FROM {table} \
                     WHERE {owner} IN "
                ));
                sql.list(owners);
                sql.push(" ORDER BY key");
                let query = sqlx::query_as::<_, OwnedKeyValueRow>(AssertSqlSafe(sql.text));
                bind_all!(query, sql.args)
                    .fetch_all(&mut *conn)
                    .await
                    .ctx("reading keys and values")
            }

            async fn load_experiments(
                conn: &mut $conn,
                rows: Vec<ExperimentRow>,
            ) -> Result<Vec<Experiment>> {
                let ids = rows.iter().map(|row| Arg::Int(row.id)).collect();
                let tags = owned_pairs(conn, "experiment_tags", "experiment_id", ids).await?;
                Ok($crate::tracking::assemble_experiments(rows, tags))
            }

            async fn experiment_where(
                conn: &mut $conn,
                condition: &str,
                arg: Arg,
            ) -> Result<Option<Experiment>> {
                let mut sql = Sql::default();
                sql.push(&format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments e WHERE {condition}"));
                sql.arg(arg);
                let query = sqlx::query_as::<_, ExperimentRow>(AssertSqlSafe(sql.text));
                let row = bind_all!(query, sql.args)
                    .fetch_optional(&mut *conn)
                    .await
                    .ctx("reading an experiment")?;
                let Some(row) = row else {
                    return Ok(None);
                };
                Ok(load_experiments(conn, vec![row]).await?.pop())
            }

            async fn require_experiment(conn: &mut $conn, id: i64) -> Result<Experiment> {
                experiment_where(conn, "e.id = ", Arg::Int(id))
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("experiment with id `{id}`")))
            }

            async fn load_runs(conn: &mut $conn, infos: Vec<RunInfo>) -> Result<Vec<TrackingRun>> {
                let ids: Vec<String> = infos.iter().map(|info| info.run_id.clone()).collect();
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                // Params, tags and latest metrics in one statement: each statement is a round
                // trip to the database, and a search or a run read pays for every one.
                let mut sql = Sql::default();
                sql.push("WITH ids (run_id) AS (VALUES ");
                for (i, id) in ids.iter().enumerate() {
                    sql.push(if i == 0 { "(" } else { ", (" });
                    sql.arg(Arg::Text(id.clone())).push(")");
                }
                sql.push(") ");
                sql.push(&$crate::tracking::run_data_sql($dialect));
                let query = sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(sql.text));
                let packed = bind_all!(query, sql.args)
                    .fetch_one(&mut *conn)
                    .await
                    .ctx("reading the params, tags and metrics of runs")?;
                let data = $crate::tracking::unpack_rows(packed.as_deref())?;
                let (params, tags, metrics) = $crate::tracking::split_run_data(data)?;
                let mut sql = Sql::default();
                sql.push(
                    "SELECT run_id, name, digest, source_type, source, schema, profile, tags \
                     FROM tracking_inputs WHERE run_id IN ",
                );
                sql.list(ids.iter().cloned().map(Arg::Text));
                sql.push(" ORDER BY created_at, name, digest");
                let query = sqlx::query_as::<_, InputRow>(AssertSqlSafe(sql.text));
                let inputs = bind_all!(query, sql.args)
                    .fetch_all(&mut *conn)
                    .await
                    .ctx("reading the inputs of runs")?;
                $crate::tracking::assemble_runs(infos, params, tags, metrics, inputs)
            }

            async fn run_info(conn: &mut $conn, run_id: &str) -> Result<Option<RunInfo>> {
                let row: Option<RunInfo> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT {RUN_INFO_COLUMNS} FROM tracking_runs r WHERE r.run_id = $1"
                )))
                .bind(run_id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("reading a run")?;
                Ok(row)
            }

            async fn require_run(conn: &mut $conn, run_id: &str) -> Result<RunInfo> {
                run_info(conn, run_id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("run with id `{run_id}`")))
            }

            async fn require_active_run(conn: &mut $conn, run_id: &str) -> Result<RunInfo> {
                let info = require_run(conn, run_id).await?;
                if info.lifecycle_stage != ACTIVE {
                    return Err(StoreError::Invalid(format!(
                        "the run `{run_id}` must be in the 'active' state, it is '{}'",
                        info.lifecycle_stage
                    )));
                }
                Ok(info)
            }

            async fn upsert_tags(conn: &mut $conn, run_id: &str, tags: &[KeyValue]) -> Result<()> {
                set_tag_rows(conn, &RUN_TAGS, &[Arg::Text(run_id.to_owned())], tags).await?;
                for tag in tags {
                    if tag.key == "mlflow.runName" {
                        sqlx::query("UPDATE tracking_runs SET name = $1 WHERE run_id = $2")
                            .bind(&tag.value)
                            .bind(run_id)
                            .execute(&mut *conn)
                            .await
                            .ctx("renaming a run")?;
                    }
                }
                Ok(())
            }

            #[async_trait::async_trait]
            impl $crate::tracking::TrackingStore for $store {
                async fn create_experiment(
                    &self,
                    name: &str,
                    artifact_location: Option<&str>,
                    tags: &[KeyValue],
                    at: Millis,
                ) -> Result<Experiment> {
                    if name.is_empty() {
                        return Err(StoreError::Invalid("an experiment name must not be empty".to_owned()));
                    }
                    let mut tx = self.begin().await?;
                    let inserted: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
                        "INSERT INTO experiments (name, artifact_location, lifecycle_stage, \
                         created_at, updated_at) VALUES ($1, $2, 'active', $3, $3) RETURNING id",
                    )
                    .bind(name)
                    .bind(artifact_location)
                    .bind(at)
                    .fetch_one(&mut *tx)
                    .await;
                    let id = match inserted {
                        Ok(id) => id,
                        Err(err) if $crate::common::is_unique_violation(&err) => {
                            return Err(StoreError::Conflict(format!(
                                "an experiment named `{name}` already exists"
                            )));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "creating an experiment")),
                    };
                    set_tag_rows(&mut tx, &EXPERIMENT_TAGS, &[Arg::Int(id)], tags).await?;
                    let experiment = require_experiment(&mut tx, id).await?;
                    tx.commit().await.ctx("committing a new experiment")?;
                    Ok(experiment)
                }

                async fn get_experiment(&self, id: i64) -> Result<Option<Experiment>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    experiment_where(&mut conn, "e.id = ", Arg::Int(id)).await
                }

                async fn get_experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    experiment_where(&mut conn, "e.name = ", Arg::Text(name.to_owned())).await
                }

                async fn search_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>> {
                    let limit = $crate::tracking::page_limit(query.limit)?;
                    let mut sql = Sql::default();
                    sql.push(&format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments e WHERE "));
                    $crate::tracking::view_condition(&mut sql, "e.lifecycle_stage", query.view);
                    for clause in &query.clauses {
                        sql.push(" AND ");
                        $crate::tracking::experiment_clause(&mut sql, $dialect, clause)?;
                    }
                    $crate::tracking::experiment_order(&mut sql, &query.order_by)?;
                    sql.push(" LIMIT ").arg(Arg::Int(limit));
                    sql.push(" OFFSET ").arg(Arg::Int($crate::common::to_i64(query.offset, "page offset")?));
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let rows = bind_all!(sqlx::query_as::<_, ExperimentRow>(AssertSqlSafe(sql.text)), sql.args)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("searching experiments")?;
                    let experiments = load_experiments(&mut conn, rows).await?;
                    Ok($crate::tracking::paged(experiments, query.limit, query.offset))
                }

                async fn rename_experiment(&self, id: i64, name: &str, at: Millis) -> Result<()> {
                    if name.is_empty() {
                        return Err(StoreError::Invalid("an experiment name must not be empty".to_owned()));
                    }
                    let mut tx = self.begin().await?;
                    require_experiment(&mut tx, id).await?;
                    let updated = sqlx::query("UPDATE experiments SET name = $1, updated_at = $2 WHERE id = $3")
                        .bind(name)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await;
                    match updated {
                        Ok(_) => {}
                        Err(err) if $crate::common::is_unique_violation(&err) => {
                            return Err(StoreError::Conflict(format!(
                                "an experiment named `{name}` already exists"
                            )));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "renaming an experiment")),
                    }
                    tx.commit().await.ctx("committing an experiment rename")
                }

                async fn set_experiment_lifecycle(&self, id: i64, stage: &str, at: Millis) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_experiment(&mut tx, id).await?;
                    sqlx::query("UPDATE experiments SET lifecycle_stage = $1, updated_at = $2 WHERE id = $3")
                        .bind(stage)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .ctx("changing an experiment's lifecycle stage")?;
                    let deleted_time = (stage == DELETED).then_some(at);
                    sqlx::query(
                        "UPDATE tracking_runs SET lifecycle_stage = $1, deleted_time = $2 \
                         WHERE experiment_id = $3",
                    )
                    .bind(stage)
                    .bind(deleted_time)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .ctx("changing the lifecycle stage of an experiment's runs")?;
                    tx.commit().await.ctx("committing an experiment lifecycle change")
                }

                async fn set_experiment_tag(&self, id: i64, tag: &KeyValue) -> Result<()> {
                    if tag.key.is_empty() {
                        return Err(StoreError::Invalid("a tag key must not be empty".to_owned()));
                    }
                    let mut tx = self.begin().await?;
                    let experiment = require_experiment(&mut tx, id).await?;
                    if experiment.lifecycle_stage != ACTIVE {
                        return Err(StoreError::Invalid(format!(
                            "the experiment `{id}` must be in the 'active' state"
                        )));
                    }
                    set_tag_rows(&mut tx, &EXPERIMENT_TAGS, &[Arg::Int(id)], std::slice::from_ref(tag)).await?;
                    tx.commit().await.ctx("committing an experiment tag")
                }

                async fn delete_experiment_tag(&self, id: i64, key: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_experiment(&mut tx, id).await?;
                    if !delete_tag_row(&mut tx, &EXPERIMENT_TAGS, &[Arg::Int(id)], key).await? {
                        return Err(StoreError::NotFound(format!(
                            "tag `{key}` of experiment `{id}`"
                        )));
                    }
                    tx.commit().await.ctx("committing an experiment tag deletion")
                }

                async fn create_tracking_run(&self, run: &NewTrackingRun) -> Result<TrackingRun> {
                    if run.run_id.len() != 32 || !run.run_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(StoreError::Invalid(format!(
                            "a run id is 32 hex characters, not `{}`",
                            run.run_id
                        )));
                    }
                    let mut tx = self.begin().await?;
                    let experiment = require_experiment(&mut tx, run.experiment_id).await?;
                    if experiment.lifecycle_stage != ACTIVE {
                        return Err(StoreError::Invalid(format!(
                            "the experiment `{}` must be in the 'active' state to create runs in it",
                            run.experiment_id
                        )));
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, \
                         start_time, lifecycle_stage, artifact_uri) \
                         VALUES ($1, $2, $3, $4, 'RUNNING', $5, 'active', $6)",
                    )
                    .bind(&run.run_id)
                    .bind(run.experiment_id)
                    .bind(&run.name)
                    .bind(&run.user_id)
                    .bind(run.start_time)
                    .bind(&run.artifact_uri)
                    .execute(&mut *tx)
                    .await;
                    match inserted {
                        Ok(_) => {}
                        Err(err) if $crate::common::is_unique_violation(&err) => {
                            return Err(StoreError::Conflict(format!(
                                "a run with id `{}` already exists",
                                run.run_id
                            )));
                        }
                        Err(err) => return Err($crate::common::db_error(err, "creating a run")),
                    }
                    upsert_tags(&mut tx, &run.run_id, &run.tags).await?;
                    let info = require_run(&mut tx, &run.run_id).await?;
                    let loaded = load_runs(&mut tx, vec![info]).await?;
                    tx.commit().await.ctx("committing a new run")?;
                    loaded
                        .into_iter()
                        .next()
                        .ok_or_else(|| StoreError::Backend("a new run vanished".to_owned()))
                }

                async fn get_tracking_run(&self, run_id: &str) -> Result<Option<TrackingRun>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let Some(info) = run_info(&mut conn, run_id).await? else {
                        return Ok(None);
                    };
                    Ok(load_runs(&mut conn, vec![info]).await?.pop())
                }

                async fn update_tracking_run(&self, run_id: &str, update: &RunUpdate) -> Result<RunInfo> {
                    let mut tx = self.begin().await?;
                    let info = require_active_run(&mut tx, run_id).await?;
                    sqlx::query("UPDATE tracking_runs SET status = $1, end_time = $2, name = $3 WHERE run_id = $4")
                        .bind(update.status.as_deref().unwrap_or(&info.status))
                        .bind(update.end_time.or(info.end_time))
                        .bind(update.name.as_deref().unwrap_or(&info.name))
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await
                        .ctx("updating a run")?;
                    if let Some(name) = &update.name {
                        upsert_tags(&mut tx, run_id, &[KeyValue::new("mlflow.runName", name.clone())]).await?;
                    }
                    let info = require_run(&mut tx, run_id).await?;
                    tx.commit().await.ctx("committing a run update")?;
                    Ok(info)
                }

                async fn set_run_lifecycle(&self, run_id: &str, stage: &str, at: Millis) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_run(&mut tx, run_id).await?;
                    let deleted_time = (stage == DELETED).then_some(at);
                    sqlx::query("UPDATE tracking_runs SET lifecycle_stage = $1, deleted_time = $2 WHERE run_id = $3")
                        .bind(stage)
                        .bind(deleted_time)
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await
                        .ctx("changing a run's lifecycle stage")?;
                    tx.commit().await.ctx("committing a run lifecycle change")
                }

                async fn search_tracking_runs(&self, query: &RunQuery) -> Result<Page<TrackingRun>> {
                    let limit = $crate::tracking::page_limit(query.limit)?;
                    if query.experiment_ids.is_empty() {
                        return Ok(Page { items: Vec::new(), next_offset: None });
                    }
                    let mut sql = Sql::default();
                    sql.push(&format!("SELECT {RUN_INFO_COLUMNS} FROM tracking_runs r WHERE r.experiment_id IN "));
                    sql.list(query.experiment_ids.iter().map(|id| Arg::Int(*id)));
                    sql.push(" AND ");
                    $crate::tracking::view_condition(&mut sql, "r.lifecycle_stage", query.view);
                    for clause in &query.clauses {
                        sql.push(" AND ");
                        $crate::tracking::run_clause(&mut sql, $dialect, clause)?;
                    }
                    $crate::tracking::run_order(&mut sql, &query.order_by)?;
                    sql.push(" LIMIT ").arg(Arg::Int(limit));
                    sql.push(" OFFSET ").arg(Arg::Int($crate::common::to_i64(query.offset, "page offset")?));
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let rows = bind_all!(sqlx::query_as::<_, RunInfo>(AssertSqlSafe(sql.text)), sql.args)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("searching runs")?;
                    let page = $crate::tracking::paged(rows, query.limit, query.offset);
                    let infos = page.items;
                    Ok(Page {
                        items: load_runs(&mut conn, infos).await?,
                        next_offset: page.next_offset,
                    })
                }

                async fn log_batch(
                    &self,
                    run_id: &str,
                    metrics: &[Metric],
                    params: &[KeyValue],
                    tags: &[KeyValue],
                ) -> Result<()> {
                    $crate::tracking::check_batch(metrics, params, tags)?;
                    let mut tx = self.begin().await?;
                    require_active_run(&mut tx, run_id).await?;
                    for param in params {
                        let stored: Option<String> = sqlx::query_scalar(
                            "INSERT INTO tracking_params (run_id, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (run_id, key) DO UPDATE SET value = tracking_params.value \
                             RETURNING value",
                        )
                        .bind(run_id)
                        .bind(&param.key)
                        .bind(&param.value)
                        .fetch_optional(&mut *tx)
                        .await
                        .ctx("logging a parameter")?;
                        if let Some(stored) = stored
                            && stored != param.value
                        {
                            return Err(StoreError::Invalid(format!(
                                "changing param values is not allowed: param with key `{}` was \
                                 already logged with value `{stored}` for run `{run_id}`, \
                                 attempted logging new value `{}`",
                                param.key, param.value
                            )));
                        }
                    }
                    // Points go in one multi-row statement (a few for more than 1000); the
                    // latest point of each key is then updated in one more, from the batch's
                    // own latest point of that key.
                    let latest = $crate::tracking::latest_points(metrics);
                    let statements = metrics
                        .chunks($crate::tracking::METRIC_ROWS_PER_INSERT)
                        .map(|chunk| ($crate::tracking::insert_metrics_sql(chunk.len(), $dialect), chunk.iter().collect::<Vec<_>>()))
                        .chain(latest.chunks($crate::tracking::METRIC_ROWS_PER_INSERT).map(|chunk| {
                            ($crate::tracking::upsert_latest_metrics_sql(chunk.len(), $dialect), chunk.to_vec())
                        }));
                    for (sql, points) in statements {
                        // Built only from placeholders: every value is bound.
                        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for metric in points {
                            let (value, is_nan) = $crate::tracking::stored_value(metric.value);
                            insert = insert
                                .bind(run_id)
                                .bind(&metric.key)
                                .bind(metric.step)
                                .bind(metric.timestamp)
                                .bind(value)
                                .bind(is_nan);
                        }
                        insert.execute(&mut *tx).await.ctx("logging metrics")?;
                    }
                    upsert_tags(&mut tx, run_id, tags).await?;
                    tx.commit().await.ctx("committing a batch")
                }

                async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_active_run(&mut tx, run_id).await?;
                    if !delete_tag_row(&mut tx, &RUN_TAGS, &[Arg::Text(run_id.to_owned())], key).await? {
                        return Err(StoreError::NotFound(format!("tag `{key}` of run `{run_id}`")));
                    }
                    tx.commit().await.ctx("committing a run tag deletion")
                }

                async fn log_inputs(
                    &self,
                    run_id: &str,
                    inputs: &[DatasetInput],
                    models: &[String],
                    at: Millis,
                ) -> Result<()> {
                    let mut tx = self.begin().await?;
                    require_active_run(&mut tx, run_id).await?;
                    for input in inputs {
                        let dataset = &input.dataset;
                        if dataset.name.is_empty() || dataset.digest.is_empty() {
                            return Err(StoreError::Invalid(
                                "a dataset needs a name and a digest".to_owned(),
                            ));
                        }
                        sqlx::query(
                            "INSERT INTO tracking_inputs (run_id, name, digest, source_type, source, \
                             schema, profile, tags, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(run_id)
                        .bind(&dataset.name)
                        .bind(&dataset.digest)
                        .bind(&dataset.source_type)
                        .bind(&dataset.source)
                        .bind(&dataset.schema)
                        .bind(&dataset.profile)
                        .bind($crate::common::to_json(&input.tags))
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .ctx("logging a dataset input")?;
                    }
                    for model_id in models {
                        let stage: Option<String> = sqlx::query_scalar(
                            "SELECT lifecycle_stage FROM logged_models WHERE model_id = $1",
                        )
                        .bind(model_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .ctx("reading a logged model")?;
                        if stage.as_deref() != Some(ACTIVE) {
                            return Err(StoreError::NotFound(format!(
                                "logged model with id `{model_id}`"
                            )));
                        }
                        sqlx::query(
                            "INSERT INTO tracking_run_model_inputs (run_id, model_id, created_at) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        )
                        .bind(run_id)
                        .bind(model_id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .ctx("logging a model input")?;
                    }
                    tx.commit().await.ctx("committing run inputs")
                }

                async fn run_model_inputs(&self, run_id: &str) -> Result<Vec<String>> {
                    sqlx::query_scalar(
                        "SELECT model_id FROM tracking_run_model_inputs WHERE run_id = $1 \
                         ORDER BY created_at, model_id",
                    )
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await
                    .ctx("reading the model inputs of a run")
                }

                async fn metric_history(
                    &self,
                    run_id: &str,
                    key: &str,
                    limit: u32,
                    offset: u64,
                ) -> Result<Page<Metric>> {
                    let sql_limit = $crate::tracking::page_limit(limit)?;
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    let packed: Option<String> =
                        sqlx::query_scalar(AssertSqlSafe($crate::tracking::packed_history_sql($dialect)))
                            .bind(run_id)
                            .bind(key)
                            .bind(sql_limit)
                            .bind($crate::common::to_i64(offset, "page offset")?)
                            .fetch_one(&mut *conn)
                            .await
                            .ctx("reading a metric history")?;
                    let points = $crate::tracking::unpack_history(key, packed.as_deref())?;
                    // Only an empty page needs to know whether the run exists.
                    if points.is_empty() {
                        require_run(&mut conn, run_id).await?;
                    }
                    Ok($crate::tracking::paged(points, limit, offset))
                }

                async fn metric_sample(
                    &self,
                    run_id: &str,
                    key: &str,
                    start: i64,
                    end: i64,
                    max: u32,
                ) -> Result<Vec<Metric>> {
                    let mut conn = self.pool.acquire().await.ctx("connecting")?;
                    require_run(&mut conn, run_id).await?;
                    let in_range = "FROM tracking_metrics \
                                    WHERE run_id = $1 AND key = $2 AND step BETWEEN $3 AND $4";
                    // How many points the range holds (counting no further than one past `max`)
                    // and its first and last step: three index lookups.
                    let (count, lo, hi): (i64, Option<i64>, Option<i64>) =
                        sqlx::query_as(AssertSqlSafe(format!(
                            "SELECT (SELECT COUNT(*) FROM (SELECT 1 {in_range} LIMIT $5) AS c), \
                             (SELECT MIN(step) {in_range}), (SELECT MAX(step) {in_range})"
                        )))
                        .bind(run_id)
                        .bind(key)
                        .bind(start)
                        .bind(end)
                        .bind(i64::from(max) + 1)
                        .fetch_one(&mut *conn)
                        .await
                        .ctx("sizing a metric history")?;
                    let rows: Vec<MetricRow> = match (lo, hi) {
                        (Some(lo), Some(hi)) if count > i64::from(max) => {
                            let bounds = $crate::sample::bucket_bounds(lo, hi, max);
                            sqlx::query_as(AssertSqlSafe($crate::sample::sample_sql($dialect, &bounds)))
                                .persistent(false)
                                .bind(run_id)
                                .bind(key)
                                .fetch_all(&mut *conn)
                                .await
                                .ctx("sampling a metric history")?
                        }
                        _ => sqlx::query_as(AssertSqlSafe(format!(
                            "SELECT run_id, key, value, is_nan, timestamp, step {in_range} \
                             ORDER BY step, timestamp, value, is_nan"
                        )))
                        .bind(run_id)
                        .bind(key)
                        .bind(start)
                        .bind(end)
                        .fetch_all(&mut *conn)
                        .await
                        .ctx("reading a metric history")?,
                    };
                    let points = rows.into_iter().map(MetricRow::into_metric).collect();
                    Ok($crate::sample::keep_ends(points, max as usize))
                }
            }
        };
    };
}
pub(crate) use tracking_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_points_take_the_highest_step_then_timestamp_then_value() {
        let m = |key: &str, step, timestamp, value| Metric {
            key: key.to_owned(),
            value,
            timestamp,
            step,
        };
        let batch = [
            m("a", 1, 10, 5.0),
            m("b", 0, 10, 1.0),
            m("a", 2, 5, 1.0),
            m("a", 2, 5, 0.5),
            m("b", 0, 11, 0.0),
            m("a", 2, 5, 1.0),
            m("c", 3, 1, f64::NAN),
            m("c", 3, 1, -1.0),
        ];
        let latest: Vec<(String, i64, i64, f64)> = latest_points(&batch)
            .into_iter()
            .map(|p| (p.key.clone(), p.step, p.timestamp, p.value))
            .collect();
        assert_eq!(latest[0], ("a".to_owned(), 2, 5, 1.0));
        assert_eq!(latest[1], ("b".to_owned(), 0, 11, 0.0));
        // NaN is stored as 0, which ranks above -1.
        assert_eq!((latest[2].1, latest[2].3.is_nan()), (3, true));
        assert_eq!(
            insert_metrics_sql(2, Dialect::Postgres)
                .matches('$')
                .count(),
            12
        );
        assert_eq!(
            insert_metrics_sql(2, Dialect::Sqlite).matches('?').count(),
            12
        );
    }

    #[test]
    fn like_patterns_become_case_sensitive_globs() {
        assert_eq!(like_to_glob("a%b_c"), "a*b?c");
        assert_eq!(like_to_glob("x*[y]?"), "x[*][[]y[]][?]");
    }

    #[test]
    fn order_puts_missing_values_last_then_default_order() {
        let mut sql = Sql::default();
        run_order(
            &mut sql,
            &[OrderKey {
                entity: Entity::Metric("acc".to_owned()),
                ascending: false,
            }],
        )
        .unwrap();
        assert!(sql.text.contains("IS NULL, "), "{}", sql.text);
        assert!(sql.text.ends_with("r.start_time DESC, r.run_id ASC"));
        assert_eq!(sql.args.len(), 2);
    }

    #[test]
    fn batches_reject_conflicting_params_and_empty_keys() {
        let p = |k: &str, v: &str| KeyValue::new(k, v);
        assert!(check_batch(&[], &[p("a", "1"), p("a", "1")], &[]).is_ok());
        assert!(check_batch(&[], &[p("a", "1"), p("a", "2")], &[]).is_err());
        assert!(check_batch(&[], &[], &[p("", "x")]).is_err());
    }

    #[test]
    fn pages_report_where_the_next_one_starts() {
        let page = paged(vec![1, 2, 3], 2, 10);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_offset, Some(12));
        assert_eq!(paged(vec![1, 2], 2, 0).next_offset, None);
    }
}
