//! MLflow's JSON: reading requests (a JSON body, or the query string of a GET) and writing
//! experiments, runs and metrics the way the mlflow client expects them.
//!
//! Protobuf JSON writes 64-bit integers as numbers or strings and non-finite doubles as the
//! strings `"NaN"`, `"Infinity"` and `"-Infinity"`; both are accepted here, and non-finite
//! values are written as those strings.

use axum::extract::{FromRequest, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use capstan_store::{
    Dataset, DatasetInput, Experiment, KeyValue, Metric, ModelMetric, RunInfo, RunModelOutput,
    TrackingRun, ViewType,
};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::{ApiError, ApiResult};

pub type Reply = ApiResult<axum::Json<Value>>;

/// A successful JSON reply.
pub fn ok(body: Value) -> Reply {
    Ok(axum::Json(body))
}

/// A successful JSON reply written at once from a typed body (which may borrow the handler's
/// data), without building a JSON tree first: the hot read paths answer this way.
pub fn written(body: impl Serialize) -> ApiResult<Response> {
    Ok(axum::Json(body).into_response())
}

/// The fields of a request, from its JSON body and its query string.
pub struct Req(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Req {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Req, ApiError> {
        let mut fields = Map::new();
        if let Some(query) = req.uri().query() {
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let value = Value::String(value.into_owned());
                match fields.get_mut(key.as_ref()) {
                    Some(Value::Array(items)) => items.push(value),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = Value::Array(vec![first, value]);
                    }
                    None => {
                        fields.insert(key.into_owned(), value);
                    }
                }
            }
        }
        if req.method() != Method::GET {
            let bytes = axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::invalid(format!("the request body is not valid json: {e}"))
                })?;
                let Value::Object(body) = body else {
                    return Err(ApiError::invalid("the request body must be a json object"));
                };
                fields.extend(body);
            }
        }
        Ok(Req(fields))
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Req {
    pub fn opt_str(&self, field: &str) -> Option<String> {
        match self.0.get(field)? {
            Value::Array(items) => items.first().and_then(text_of),
            other => text_of(other),
        }
    }

    pub fn str(&self, field: &str) -> ApiResult<String> {
        self.opt_str(field).ok_or_else(|| ApiError::missing(field))
    }

    pub fn opt_i64(&self, field: &str) -> ApiResult<Option<i64>> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| ApiError::invalid(format!("'{field}' must be an integer, got {n}"))),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid(format!("'{field}' must be an integer, got '{s}'"))),
            Some(other) => Err(ApiError::invalid(format!(
                "'{field}' must be an integer, got {other}"
            ))),
        }
    }

    pub fn f64(&self, field: &str) -> ApiResult<f64> {
        match self.0.get(field) {
            None | Some(Value::Null) => Err(ApiError::missing(field)),
            Some(value) => parse_f64(value, field),
        }
    }

    /// A repeated field: an array, or one value.
    pub fn strings(&self, field: &str) -> ApiResult<Vec<String>> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    text_of(item).ok_or_else(|| {
                        ApiError::invalid(format!("'{field}' must be a list of strings"))
                    })
                })
                .collect(),
            Some(other) => text_of(other)
                .map(|s| vec![s])
                .ok_or_else(|| ApiError::invalid(format!("'{field}' must be a list of strings"))),
        }
    }

    pub fn list(&self, field: &str) -> ApiResult<&[Value]> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(ApiError::invalid(format!("'{field}' must be a list"))),
        }
    }

    pub fn key_values(&self, field: &str) -> ApiResult<Vec<KeyValue>> {
        self.list(field)?.iter().map(key_value).collect()
    }

    pub fn page_size(&self, field: &str, default: u32) -> ApiResult<u32> {
        match self.opt_i64(field)? {
            None => Ok(default),
            Some(n) if n >= 1 && n <= i64::from(capstan_store::MAX_PAGE) => Ok(n as u32),
            Some(n) => Err(ApiError::invalid(format!(
                "'{field}' must be between 1 and {}, got {n}",
                capstan_store::MAX_PAGE
            ))),
        }
    }

    pub fn view_type(&self, field: &str) -> ApiResult<ViewType> {
        match self.opt_str(field).as_deref() {
            None | Some("") | Some("ACTIVE_ONLY") | Some("1") => Ok(ViewType::ActiveOnly),
            Some("DELETED_ONLY") | Some("2") => Ok(ViewType::DeletedOnly),
            Some("ALL") | Some("3") => Ok(ViewType::All),
            Some(other) => Err(ApiError::invalid(format!(
                "'{field}' must be ACTIVE_ONLY, DELETED_ONLY or ALL, got '{other}'"
            ))),
        }
    }
}

fn parse_f64(value: &Value, field: &str) -> ApiResult<f64> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| ApiError::invalid(format!("'{field}' must be a number"))),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other.parse().map_err(|_| {
                ApiError::invalid(format!("'{field}' must be a number, got '{other}'"))
            }),
        },
        other => Err(ApiError::invalid(format!(
            "'{field}' must be a number, got {other}"
        ))),
    }
}

fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

fn key_value(value: &Value) -> ApiResult<KeyValue> {
    let key = field(value, "key")
        .and_then(text_of)
        .ok_or_else(|| ApiError::missing("key"))?;
    let value = field(value, "value").and_then(text_of).unwrap_or_default();
    Ok(KeyValue { key, value })
}

/// The logged model a metric object (or a `log-metric` request) names with `model_id`, as a
/// point of that model: `None` when it names none.
pub fn model_metric(
    fields: &Map<String, Value>,
    run_id: &str,
    metric: &Metric,
) -> Option<ModelMetric> {
    let text = |name: &str| fields.get(name).and_then(text_of).unwrap_or_default();
    let model_id = text("model_id");
    (!model_id.is_empty()).then(|| ModelMetric {
        model_id,
        run_id: run_id.to_owned(),
        metric: metric.clone(),
        dataset_name: text("dataset_name"),
        dataset_digest: text("dataset_digest"),
    })
}

impl Req {
    /// The request's fields, as one JSON object.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }
}

pub fn metric(value: &Value) -> ApiResult<Metric> {
    let int = |name: &str| -> ApiResult<Option<i64>> {
        match field(value, name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(format!("'{name}' must be an integer"))),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid(format!("'{name}' must be an integer"))),
            Some(_) => Err(ApiError::invalid(format!("'{name}' must be an integer"))),
        }
    };
    Ok(Metric {
        key: field(value, "key")
            .and_then(text_of)
            .ok_or_else(|| ApiError::missing("key"))?,
        value: parse_f64(
            field(value, "value").ok_or_else(|| ApiError::missing("value"))?,
            "value",
        )?,
        timestamp: int("timestamp")?.ok_or_else(|| ApiError::missing("timestamp"))?,
        step: int("step")?.unwrap_or(0),
    })
}

pub fn dataset_input(value: &Value) -> ApiResult<DatasetInput> {
    let dataset = field(value, "dataset").ok_or_else(|| ApiError::missing("dataset"))?;
    let text = |name: &str| field(dataset, name).and_then(text_of);
    let tags = match field(value, "tags") {
        Some(Value::Array(items)) => items.iter().map(key_value).collect::<ApiResult<_>>()?,
        _ => Vec::new(),
    };
    Ok(DatasetInput {
        dataset: Dataset {
            name: text("name").ok_or_else(|| ApiError::missing("dataset.name"))?,
            digest: text("digest").ok_or_else(|| ApiError::missing("dataset.digest"))?,
            source_type: text("source_type").unwrap_or_default(),
            source: text("source").unwrap_or_default(),
            schema: text("schema"),
            profile: text("profile"),
        },
        tags,
    })
}

pub fn parse_id(text: &str, field: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::invalid(format!("'{field}' must be an experiment id, got '{text}'")))
}

pub fn check_status(status: &str) -> ApiResult<String> {
    match status {
        "RUNNING" | "SCHEDULED" | "FINISHED" | "FAILED" | "KILLED" => Ok(status.to_owned()),
        other => Err(ApiError::invalid(format!(
            "unknown run status '{other}'; use RUNNING, SCHEDULED, FINISHED, FAILED or KILLED"
        ))),
    }
}

/// A page token is the offset of the next page, as opaque hex text.
pub fn encode_page_token(offset: u64) -> String {
    format!("{}", json!({"offset": offset}))
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn decode_page_token(token: Option<&str>) -> ApiResult<u64> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let bad = || ApiError::invalid(format!("invalid page token '{token}'"));
    if token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<ApiResult<Vec<u8>>>()?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    value.get("offset").and_then(Value::as_u64).ok_or_else(bad)
}

/// How protobuf JSON spells a non-finite double; `None` for a finite one.
fn non_finite(value: f64) -> Option<&'static str> {
    if value.is_nan() {
        Some("NaN")
    } else if value == f64::INFINITY {
        Some("Infinity")
    } else if value == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

fn write_number<S: Serializer>(value: &f64, out: S) -> Result<S::Ok, S::Error> {
    match non_finite(*value) {
        Some(text) => out.serialize_str(text),
        None => out.serialize_f64(*value),
    }
}

fn write_id<S: Serializer>(id: &i64, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(id)
}

/// Tags or params on the wire: `{"key", "value"}` objects, as [`RunOut`] writes them too.
pub fn pairs(items: &[KeyValue]) -> Vec<Value> {
    items.iter().map(tree).collect()
}

/// Where an experiment's runs keep artifacts: its own location, or the artifact proxy.
pub fn experiment_location(experiment: &Experiment) -> String {
    experiment
        .artifact_location
        .clone()
        .unwrap_or_else(|| format!("mlflow-artifacts:/{}", experiment.experiment_id))
}

pub fn experiment(experiment: &Experiment) -> Value {
    json!({
        "experiment_id": experiment.experiment_id.to_string(),
        "name": experiment.name,
        "artifact_location": experiment_location(experiment),
        "lifecycle_stage": experiment.lifecycle_stage,
        "last_update_time": experiment.last_update_time,
        "creation_time": experiment.creation_time,
        "tags": pairs(&experiment.tags),
    })
}

/// A metric point on the wire.
#[derive(Serialize)]
pub struct MetricOut<'a> {
    key: &'a str,
    #[serde(serialize_with = "write_number")]
    value: f64,
    timestamp: i64,
    step: i64,
}

impl<'a> MetricOut<'a> {
    pub fn new(metric: &'a Metric) -> MetricOut<'a> {
        MetricOut {
            key: &metric.key,
            value: metric.value,
            timestamp: metric.timestamp,
            step: metric.step,
        }
    }
}

pub fn metric_json(metric: &Metric) -> Value {
    tree(MetricOut::new(metric))
}

/// A run's info on the wire.
#[derive(Serialize)]
pub struct RunInfoOut<'a> {
    run_id: &'a str,
    run_uuid: &'a str,
    run_name: &'a str,
    #[serde(serialize_with = "write_id")]
    experiment_id: i64,
    user_id: &'a str,
    status: &'a str,
    start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<i64>,
    artifact_uri: &'a str,
    lifecycle_stage: &'a str,
}

impl<'a> RunInfoOut<'a> {
    pub fn new(info: &'a RunInfo) -> RunInfoOut<'a> {
        RunInfoOut {
            run_id: &info.run_id,
            run_uuid: &info.run_id,
            run_name: &info.name,
            experiment_id: info.experiment_id,
            user_id: &info.user_id,
            status: &info.status,
            start_time: info.start_time,
            end_time: info.end_time,
            artifact_uri: &info.artifact_uri,
            lifecycle_stage: &info.lifecycle_stage,
        }
    }
}

pub fn run_info(info: &RunInfo) -> Value {
    tree(RunInfoOut::new(info))
}

/// A run on the wire: its info, data and dataset inputs; for `runs/get` and `runs/search` also
/// its model outputs, and for `runs/get` alone its model inputs (as MLflow does). Search
/// answers are written from it directly, without a JSON tree in between.
#[derive(Serialize)]
pub struct RunOut<'a> {
    info: RunInfoOut<'a>,
    data: RunDataOut<'a>,
    inputs: RunInputsOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<RunOutputsOut<'a>>,
}

#[derive(Serialize)]
struct RunDataOut<'a> {
    metrics: Vec<MetricOut<'a>>,
    params: &'a [KeyValue],
    tags: &'a [KeyValue],
}

#[derive(Serialize)]
struct RunInputsOut<'a> {
    dataset_inputs: Vec<DatasetInputOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_inputs: Option<Vec<ModelIdOut<'a>>>,
}

#[derive(Serialize)]
struct DatasetInputOut<'a> {
    tags: &'a [KeyValue],
    dataset: DatasetOut<'a>,
}

#[derive(Serialize)]
struct DatasetOut<'a> {
    name: &'a str,
    digest: &'a str,
    source_type: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
}

#[derive(Serialize)]
struct ModelIdOut<'a> {
    model_id: &'a str,
}

#[derive(Serialize)]
struct RunOutputsOut<'a> {
    model_outputs: Vec<ModelOutputOut<'a>>,
}

#[derive(Serialize)]
struct ModelOutputOut<'a> {
    model_id: &'a str,
    step: i64,
}

impl<'a> RunOut<'a> {
    pub fn new(run: &'a TrackingRun) -> RunOut<'a> {
        RunOut {
            info: RunInfoOut::new(&run.info),
            data: RunDataOut {
                metrics: run.metrics.iter().map(MetricOut::new).collect(),
                params: &run.params,
                tags: &run.tags,
            },
            inputs: RunInputsOut {
                dataset_inputs: run
                    .inputs
                    .iter()
                    .map(|input| {
                        let d = &input.dataset;
                        DatasetInputOut {
                            tags: &input.tags,
                            dataset: DatasetOut {
                                name: &d.name,
                                digest: &d.digest,
                                source_type: &d.source_type,
                                source: &d.source,
                                schema: d.schema.as_deref(),
                                profile: d.profile.as_deref(),
                            },
                        }
                    })
                    .collect(),
                model_inputs: None,
            },
            outputs: None,
        }
    }

    /// Adds `outputs.model_outputs`: those of `outputs` that belong to this run.
    pub fn with_outputs(mut self, outputs: &'a [RunModelOutput]) -> RunOut<'a> {
        let run_id = self.info.run_id;
        let model_outputs = outputs
            .iter()
            .filter(|o| o.run_id == run_id)
            .map(|o| ModelOutputOut {
                model_id: &o.model_id,
                step: o.step,
            })
            .collect();
        self.outputs = Some(RunOutputsOut { model_outputs });
        self
    }

    /// Adds `inputs.model_inputs`, the ids of the logged models the run took as inputs.
    pub fn with_model_inputs(mut self, model_ids: &'a [String]) -> RunOut<'a> {
        let models = model_ids
            .iter()
            .map(|id| ModelIdOut { model_id: id })
            .collect();
        self.inputs.model_inputs = Some(models);
        self
    }
}

pub fn run(run: &TrackingRun) -> Value {
    tree(RunOut::new(run))
}

/// The JSON tree of a wire form; these serialize to plain objects, which cannot fail.
fn tree(body: impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brisk", "calm", "clever", "crisp", "eager", "gentle", "golden", "keen",
    "lively", "loyal", "merry", "nimble", "quiet", "rapid", "silver", "steady", "sunny", "wise",
];
const NOUNS: &[&str] = &[
    "badger", "crane", "dolphin", "falcon", "finch", "fox", "heron", "ibex", "lark", "lynx",
    "marten", "otter", "owl", "panda", "raven", "seal", "sparrow", "swan", "tiger", "wren",
];

/// A readable name for a run created without one, derived from its id.
pub fn generated_run_name(run_id: &str) -> String {
    let seed = u64::from_str_radix(run_id.get(..12).unwrap_or("0"), 16).unwrap_or(0);
    let adjective = ADJECTIVES[(seed % ADJECTIVES.len() as u64) as usize];
    let noun = NOUNS[((seed / 97) % NOUNS.len() as u64) as usize];
    format!("{adjective}-{noun}-{}", (seed / 7919) % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_page_token(Some(&encode_page_token(1234))).unwrap(),
            1234
        );
        assert_eq!(decode_page_token(None).unwrap(), 0);
        for bad in ["xyz", "abc", "7b7d", "zz"] {
            assert!(decode_page_token(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_finite_values_travel_as_strings() {
        let written = |value| {
            metric_json(&Metric {
                key: "a".into(),
                value,
                timestamp: 1,
                step: 2,
            })
        };
        assert_eq!(written(f64::NAN)["value"], json!("NaN"));
        assert_eq!(written(f64::INFINITY)["value"], json!("Infinity"));
        assert_eq!(written(f64::NEG_INFINITY)["value"], json!("-Infinity"));
        assert_eq!(
            written(1.5),
            json!({"key": "a", "value": 1.5, "timestamp": 1, "step": 2})
        );
        let parsed = metric(&json!({"key": "a", "value": "Infinity", "timestamp": "5"})).unwrap();
        assert_eq!(parsed.value, f64::INFINITY);
        assert_eq!(parsed.timestamp, 5);
        assert!(
            metric(&json!({"key": "a", "value": "NaN", "timestamp": 1}))
                .unwrap()
                .value
                .is_nan()
        );
        assert!(metric(&json!({"key": "a", "value": "x", "timestamp": 1})).is_err());
    }

    #[test]
    fn generated_names_are_readable_and_stable() {
        let name = generated_run_name("0123456789abcdef0123456789abcdef");
        assert_eq!(name, generated_run_name("0123456789abcdef0123456789abcdef"));
        assert_eq!(name.split('-').count(), 3);
    }
}
