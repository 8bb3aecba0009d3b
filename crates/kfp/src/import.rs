//! KFP pipeline IR to capstan's model. Pure: text in, pipeline out.
//!
//! Formats follow `api/v2alpha1/pipeline_spec.proto` in kubeflow/pipelines (the IR) and the
//! executor input that `kfp.dsl.executor` reads.

use std::collections::HashMap;
use std::time::Duration;

use capstan_spec::template::{Filter, Part, Ref, Template};
use capstan_spec::{
    Command, Diagnostic, Diagnostics, ForEach, ForEachItems, ForEachLevel, Inputs, Outputs,
    ParamSpec, ParamType, Pipeline, Resources, ResultsFile, RetryPolicy, Step, Value,
};
use indexmap::IndexMap;

use crate::cel;

/// The output name under which a step sees the path of kfp's executor output file
/// (`{{$.outputs.output_file}}`). KFP names are Python identifiers, so a name with `-` cannot
/// clash with a component's own outputs.
pub const RESULTS: &str = "executor-output";

/// Artifact types whose content is their metadata.
const METRICS_TYPES: &[&str] = &[
    "Metrics",
    "ClassificationMetrics",
    "SlicedClassificationMetrics",
];

/// Runs a component with Metrics outputs: `sh -c METRICS_WRAPPER sh LOG_METRICS RESULTS
/// (NAME PATH)... -- COMMAND...`. Creates each metrics file, runs the command, then logs the
/// metrics when the step has a tracking run.
const METRICS_WRAPPER: &str = "py=\"$1\"; res=\"$2\"; shift 2; names=; \
while [ \"$1\" != -- ]; do names=\"$names $1\"; [ -e \"$2\" ] || : > \"$2\"; shift 2; done; shift; \
\"$@\" || exit $?; \
if [ -n \"$MLFLOW_RUN_ID\" ] && [ -n \"$MLFLOW_TRACKING_URI\" ] && [ -e \"$res\" ]; then exec python3 -c \"$py\" \"$res\" $names; fi";

/// Reads the metrics artifacts' metadata from kfp's executor output (`argv[1]`) and logs their
/// numeric values to `MLFLOW_RUN_ID` with one `runs/log-batch` call.
const LOG_METRICS: &str = r#"import json, os, sys, time, urllib.request
doc = json.load(open(sys.argv[1]))
now = int(time.time() * 1000)
metrics = []
for name in sys.argv[2:]:
    for art in doc.get("artifacts", {}).get(name, {}).get("artifacts", []):
        for key, value in (art.get("metadata") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append({"key": key, "value": value, "timestamp": now, "step": 0})
if metrics:
    body = json.dumps({"run_id": os.environ["MLFLOW_RUN_ID"], "metrics": metrics}).encode()
    url = os.environ["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-batch"
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
"#;

const SCHEMA_VERSIONS: &[&str] = &["2.0.0", "2.1.0"];
const TOP_KEYS: &[&str] = &[
    "pipelineInfo",
    "root",
    "deploymentSpec",
    "components",
    "schemaVersion",
];

#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Run container commands exactly as written, `pip install` preamble included.
    pub verbatim: bool,
}

/// A Python environment that the `pip install` preamble of lightweight components asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PipEnv {
    /// The arguments of `pip install` as the preamble writes them (shell-quoted).
    pub pip_args: String,
    /// The steps that run in it.
    pub steps: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Import {
    pub pipeline: Pipeline,
    /// Environments to prepare before the run (none with [`ImportOptions::verbatim`]).
    pub environments: Vec<PipEnv>,
}

/// Whether YAML text is a KFP pipeline IR: its first document has at least three of the IR's
/// top-level keys (`pipelineInfo`, `root`, `deploymentSpec`, `components`, `schemaVersion`).
/// Only the top-level keys are read, so a broken IR is still recognised and its errors reported
/// by [`import`].
pub fn is_kfp_ir(text: &str) -> bool {
    let mut found = 0;
    for line in text.lines() {
        if line.trim_end() == "---" && found > 0 {
            break;
        }
        let Some((key, _)) = line.split_once(':') else {
            continue;
        };
        if !line.starts_with([' ', '\t', '#', '-'])
            && TOP_KEYS.contains(&key.trim_matches(['"', '\'']))
        {
            found += 1;
        }
    }
    found >= 3
}

/// One line per container image of an imported pipeline whose steps run on the host (the local
/// executor runs no images), naming the steps. Empty for a pipeline that is not from KFP.
pub fn host_notes(p: &Pipeline) -> Vec<String> {
    if !p.metadata.contains_key("kfp") {
        return Vec::new();
    }
    let mut images: IndexMap<&str, Vec<&str>> = IndexMap::new();
    for step in p.all_steps() {
        if let Some(image) = step.image.as_deref() {
            images.entry(image).or_default().push(&step.name);
        }
    }
    images
        .into_iter()
        .map(|(image, steps)| {
            format!(
                "note: image `{image}` is not pulled: the commands of {} run on this host",
                steps.join(", ")
            )
        })
        .collect()
}

/// YAML 1.2 booleans only: `componentInputParameter: y` names an input `y`, not `true`.
fn yaml_options() -> serde_saphyr::options::Options {
    let mut options = serde_saphyr::options::Options::default();
    options.strict_booleans = true;
    options
}

/// Imports a KFP IR file. `file` names it in diagnostics. The pipeline is validated like any
/// other; every problem found is reported, each naming the task and the field.
pub fn import(text: &str, file: &str, options: ImportOptions) -> Result<Import, Diagnostics> {
    let fail = |step: Option<String>, message: String| {
        Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            pos: Default::default(),
            step,
            message,
        }])
    };
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| fail(None, format!("invalid YAML: {}", e.without_snippet())))?;
    let mut docs = docs.into_iter().filter(|d| !d.is_null());
    let ir = docs
        .next()
        .ok_or_else(|| fail(None, "the file is empty".to_string()))?;
    let platforms: Vec<Value> = docs.filter_map(|d| d.get("platforms").cloned()).collect();

    let version = ir
        .get("schemaVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !SCHEMA_VERSIONS.contains(&version) {
        return Err(fail(
            None,
            format!(
                "unsupported schemaVersion `{version}`: capstan reads KFP pipeline IR {}",
                SCHEMA_VERSIONS.join(" and ")
            ),
        ));
    }
    let mut im = Importer {
        ir: &ir,
        options,
        steps: IndexMap::new(),
        finally: IndexMap::new(),
        envs: Vec::new(),
        diags: Vec::new(),
        file: file.to_string(),
    };
    let pipeline = im.pipeline(platforms);
    let mut diags = im.diags;
    if let Some(p) = &pipeline {
        diags.extend(capstan_spec::validate(p));
    }
    match pipeline {
        Some(pipeline) if diags.is_empty() => Ok(Import {
            pipeline,
            environments: im.envs,
        }),
        _ => Err(Diagnostics(diags)),
    }
}

/// Where a task input's value comes from, in the flattened pipeline.
#[derive(Clone, Debug)]
enum Src {
    /// A constant (a `runtimeValue`, a default).
    Value(Value),
    /// A pipeline parameter, an upstream output or the loop item.
    Ref(Ref),
    /// The final status of the run, for an exit handler (`PipelineTaskFinalStatus`).
    Status,
}

/// A DAG being flattened: a pipeline's root, a nested pipeline, a condition or a loop body.
struct Scope<'a> {
    /// Prefix of the step names: `""`, or `PARENT/` for a sub-DAG.
    prefix: String,
    dag: &'a Value,
    /// The DAG's inputs (parameters and artifacts), by name.
    inputs: HashMap<String, Src>,
    /// Conditions of the enclosing DAG tasks, in capstan syntax.
    when: Vec<String>,
    after: Vec<String>,
    for_each: Option<ForEach>,
    /// The loop's item input when its items are the values themselves (`item`). Inside a nested
    /// loop the items are objects with one field per loop (`item.KEY`), and this is `None`.
    item_key: Option<String>,
    finally: bool,
}

struct Importer<'a> {
    ir: &'a Value,
    options: ImportOptions,
    steps: IndexMap<String, Step>,
    finally: IndexMap<String, Step>,
    envs: Vec<PipEnv>,
    diags: Vec<Diagnostic>,
    file: String,
}

type Res<T> = Result<T, String>;

fn obj(v: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    v.and_then(Value::as_object).into_iter().flatten()
}

fn text<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn param_type(kfp: &str) -> Option<ParamType> {
    Some(match kfp {
        "NUMBER_INTEGER" => ParamType::Int,
        "NUMBER_DOUBLE" => ParamType::Float,
        "STRING" => ParamType::String,
        "BOOLEAN" => ParamType::Bool,
        "LIST" => ParamType::List,
        "STRUCT" | "TASK_FINAL_STATUS" => ParamType::Map,
        _ => return None,
    })
}

/// The IR writes every number as a double (`defaultValue: 1.0`). An integer parameter's value
/// goes back to an integer, and so do the integral numbers inside a list or a struct: the IR does
/// not say which they were, and Python code that expects a float accepts an int, not the reverse
/// (`range(2.0)` fails).
fn normalise(ty: Option<ParamType>, v: &Value) -> Value {
    match (ty, v) {
        (Some(ParamType::Int), Value::Number(_)) => integral(v),
        (Some(ParamType::List | ParamType::Map), _) => deep_integral(v),
        _ => v.clone(),
    }
}

fn integral(v: &Value) -> Value {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
        _ => v.clone(),
    }
}

fn deep_integral(v: &Value) -> Value {
    match v {
        Value::Number(_) => integral(v),
        Value::Array(xs) => Value::Array(xs.iter().map(deep_integral).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), deep_integral(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `system.Dataset` -> `Dataset`.
fn artifact_type(def: &Value) -> String {
    text(def, &["artifactType", "schemaTitle"])
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| "Artifact".to_string())
}

fn schema_title(def: &Value) -> String {
    text(def, &["artifactType", "schemaTitle"])
        .unwrap_or("system.Artifact")
        .to_string()
}

/// `"30s"`, `"0.5s"`, `"3600s"` (protobuf Duration in JSON).
fn duration(v: &Value) -> Option<Duration> {
    let s = v.as_str()?.trim().strip_suffix('s')?;
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(Duration::from_secs_f64)
}

fn json_part(r: Ref) -> Part {
    Part::Ref {
        r,
        offset: 0,
        filters: vec![Filter::Json],
    }
}

fn plain_part(r: Ref) -> Part {
    Part::Ref {
        r,
        offset: 0,
        filters: vec![],
    }
}

fn jtext(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Memory in bytes: `512M`, `2Gi`, `1G`, `1000`.
fn memory(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.trim().parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "K" | "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

fn cpu(s: &str) -> Option<f64> {
    let s = s.trim();
    match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => s.parse().ok(),
    }
}

/// The items of a loop: raw items, or an input parameter (a constant, a pipeline parameter, an
/// upstream output, or a field of an outer loop's item).
fn loop_items(iter: &Value, inputs: &HashMap<String, Src>) -> Res<ForEachItems> {
    if let Some(raw) = iter.pointer("/items/raw") {
        return Ok(ForEachItems::Literal(raw_items(raw)?));
    }
    let input =
        text(iter, &["items", "inputParameter"]).ok_or("parameterIterator has no `items`")?;
    match inputs.get(input) {
        Some(Src::Ref(r)) => Ok(ForEachItems::Ref(Template::from_parts(vec![plain_part(
            r.clone(),
        )]))),
        Some(Src::Value(Value::Array(xs))) => Ok(ForEachItems::Literal(xs.clone())),
        Some(Src::Value(Value::String(s))) => match serde_json::from_str(s) {
            Ok(Value::Array(xs)) => Ok(ForEachItems::Literal(xs)),
            _ => Err(format!(
                "parameterIterator.items.inputParameter `{input}` is not a list: `{s}`"
            )),
        },
        _ => Err(format!(
            "parameterIterator.items.inputParameter names `{input}`, which is not a list input of the task"
        )),
    }
}

/// `parameterIterator.items.raw`: a JSON list, in a string or not.
fn raw_items(raw: &Value) -> Res<Vec<Value>> {
    let list = match raw {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("parameterIterator.items.raw is not JSON: {e}"))?,
        other => other.clone(),
    };
    match list {
        Value::Array(xs) => Ok(xs.iter().map(deep_integral).collect()),
        other => Err(format!(
            "parameterIterator.items.raw must be a list, got `{other}`"
        )),
    }
}

/// A loop inside a loop becomes one loop over every combination of items
/// ([`ForEachItems::Product`]), each item an object with one field per loop (named after the
/// loops' item inputs), so that iterations are `NAME[i]` as for any loop. Every level's items
/// may be raw, a constant, a pipeline parameter, an upstream output, or a field of an outer
/// item (`ParallelFor(row.tags)`); the planner finds them when the step expands.
fn nested_items(
    outer: &ForEach,
    scope: &Scope<'_>,
    iter: &Value,
    inputs: &mut HashMap<String, Src>,
    item: &str,
) -> Res<ForEachItems> {
    let mut levels = match &outer.items {
        ForEachItems::Product(levels) => levels.clone(),
        items => {
            // The outer item becomes a field of the combined item.
            let key = scope
                .item_key
                .clone()
                .ok_or("is a ParallelFor inside a loop whose item has no name")?;
            for src in inputs.values_mut() {
                if let Src::Ref(Ref::Item(path)) = src {
                    path.insert(0, key.clone());
                }
            }
            vec![ForEachLevel {
                key,
                items: items.clone(),
            }]
        }
    };
    levels.push(ForEachLevel {
        key: item.to_string(),
        items: loop_items(iter, inputs)?,
    });
    inputs.insert(
        item.to_string(),
        Src::Ref(Ref::Item(vec![item.to_string()])),
    );
    Ok(ForEachItems::Product(levels))
}

impl<'a> Importer<'a> {
    fn error(&mut self, step: Option<&str>, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            pos: Default::default(),
            step: step.map(str::to_string),
            message,
        });
    }

    fn component(&self, task: &Value) -> Res<&'a Value> {
        let name = text(task, &["componentRef", "name"]).ok_or("has no `componentRef.name`")?;
        self.ir
            .get("components")
            .and_then(|c| c.get(name))
            .ok_or_else(|| format!("refers to unknown component `{name}`"))
    }

    fn pipeline(&mut self, platforms: Vec<Value>) -> Option<Pipeline> {
        let ir = self.ir;
        let Some(root) = ir.get("root") else {
            self.error(None, "the IR has no `root`".to_string());
            return None;
        };
        let name = text(ir, &["pipelineInfo", "name"])
            .unwrap_or("pipeline")
            .to_string();
        let mut params = IndexMap::new();
        let mut inputs = HashMap::new();
        for (pname, def) in obj(root.pointer("/inputDefinitions/parameters")) {
            let kind = text(def, &["parameterType"]).unwrap_or_default();
            let Some(ty) = param_type(kind) else {
                self.error(
                    None,
                    format!("pipeline parameter `{pname}` has unsupported parameterType `{kind}`"),
                );
                continue;
            };
            params.insert(
                pname.clone(),
                ParamSpec {
                    ty,
                    default: def.get("defaultValue").map(|v| normalise(Some(ty), v)),
                    description: text(def, &["description"]).map(str::to_string),
                    pos: Default::default(),
                },
            );
            inputs.insert(pname.clone(), Src::Ref(Ref::Param(pname.clone())));
        }
        // A pipeline input artifact is a parameter that names a local file or directory (a path
        // or a `file://` URI), brought into the artifact store by an importer step
        // `inputs/NAME` before anything uses it.
        for (aname, def) in obj(root.pointer("/inputDefinitions/artifacts")) {
            if params.contains_key(aname) {
                self.error(
                    None,
                    format!("pipeline input artifact `{aname}` has the name of a parameter"),
                );
                continue;
            }
            params.insert(
                aname.clone(),
                ParamSpec {
                    ty: ParamType::String,
                    default: None,
                    description: Some(format!(
                        "path or file:// URI of the input artifact `{aname}` ({})",
                        schema_title(def)
                    )),
                    pos: Default::default(),
                },
            );
            let step = format!("inputs/{aname}");
            let comp = serde_json::json!({"outputDefinitions": {"artifacts": {"artifact": def}}});
            let ctx = StepCtx {
                full: &step,
                task_name: &step,
                comp: &comp,
                params: [("uri".to_string(), Src::Ref(Ref::Param(aname.clone())))]
                    .into_iter()
                    .collect(),
                artifacts: IndexMap::new(),
            };
            let importer = serde_json::json!({"artifactUri": {"runtimeParameter": "uri"}});
            match self.importer_step(&ctx, &importer) {
                Ok(s) => {
                    self.steps.insert(step.clone(), s);
                }
                Err(e) => self.error(Some(&step), format!("input artifact `{aname}`: {e}")),
            }
            inputs.insert(
                aname.clone(),
                Src::Ref(Ref::StepOutput {
                    step,
                    output: "artifact".to_string(),
                }),
            );
        }
        let Some(dag) = root.get("dag") else {
            self.error(None, "`root` has no `dag`".to_string());
            return None;
        };
        let scope = Scope {
            prefix: String::new(),
            dag,
            inputs,
            when: Vec::new(),
            after: Vec::new(),
            for_each: None,
            item_key: None,
            finally: false,
        };
        self.dag(&scope);

        let mut kfp = serde_json::Map::new();
        for key in ["schemaVersion", "sdkVersion"] {
            if let Some(v) = ir.get(key) {
                kfp.insert(key.to_string(), v.clone());
            }
        }
        if !platforms.is_empty() {
            kfp.insert("platforms".to_string(), Value::Array(platforms));
        }
        Some(Pipeline {
            name,
            description: text(ir, &["pipelineInfo", "description"]).map(str::to_string),
            source: Some(self.file.clone()),
            params,
            steps: std::mem::take(&mut self.steps),
            finally: std::mem::take(&mut self.finally),
            executor: None,
            metadata: [("kfp".to_string(), Value::Object(kfp))].into(),
        })
    }

    fn dag(&mut self, scope: &Scope<'a>) {
        for (name, task) in obj(scope.dag.get("tasks")) {
            let full = format!("{}{name}", scope.prefix);
            if let Err(e) = self.task(scope, name, &full, task) {
                self.error(Some(&full), format!("task `{full}` {e}"));
            }
        }
    }

    fn task(&mut self, scope: &Scope<'a>, name: &str, full: &str, task: &'a Value) -> Res<()> {
        let comp = self.component(task)?;
        let mut params: IndexMap<String, Src> = IndexMap::new();
        for (k, spec) in obj(task.pointer("/inputs/parameters")) {
            let src = self
                .param_src(scope, spec)
                .map_err(|e| format!("input `{k}`: {e}"))?;
            params.insert(k.clone(), src);
        }
        let mut artifacts: IndexMap<String, Src> = IndexMap::new();
        for (k, spec) in obj(task.pointer("/inputs/artifacts")) {
            let src = self
                .artifact_src(scope, spec)
                .map_err(|e| format!("input artifact `{k}`: {e}"))?;
            artifacts.insert(k.clone(), src);
        }
        // Inputs the task leaves out take the component's defaults.
        for (k, def) in obj(comp.pointer("/inputDefinitions/parameters")) {
            if !params.contains_key(k)
                && let Some(d) = def.get("defaultValue")
            {
                let ty = text(def, &["parameterType"]).and_then(param_type);
                params.insert(k.clone(), Src::Value(normalise(ty, d)));
            }
        }

        let mut when = scope.when.clone();
        if let Some(c) = text(task, &["triggerPolicy", "condition"]) {
            let translated = cel::translate(c, |n| match params.get(n) {
                Some(Src::Value(v)) => Ok(v.to_string()),
                Some(Src::Ref(r)) => Ok(format!("{{{{ {r} }}}}")),
                Some(Src::Status) | None => Err(format!(
                    "condition `{c}` uses input `{n}`, which the task does not have"
                )),
            })
            .map_err(|e| format!("triggerPolicy: {e}"))?;
            when.push(translated);
        }
        let finally = scope.finally
            || text(task, &["triggerPolicy", "strategy"]) == Some("ALL_UPSTREAM_TASKS_COMPLETED");
        let mut after = scope.after.clone();
        if !finally {
            for dep in task
                .get("dependentTasks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                after.extend(self.flattened(scope.dag, &scope.prefix, dep)?);
            }
        }

        if let Some(dag) = comp.get("dag") {
            let mut inputs: HashMap<String, Src> = params.into_iter().collect();
            inputs.extend(artifacts);
            let mut for_each = scope.for_each.clone();
            let mut item_key = scope.item_key.clone();
            if let Some(iter) = task.get("parameterIterator") {
                let item =
                    text(iter, &["itemInput"]).ok_or("parameterIterator has no `itemInput`")?;
                let parallelism = task
                    .pointer("/iteratorPolicy/parallelismLimit")
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                    .map(|n| n.min(u32::MAX as u64) as u32);
                let items = match &scope.for_each {
                    None => {
                        inputs.insert(item.to_string(), Src::Ref(Ref::Item(vec![])));
                        item_key = Some(item.to_string());
                        loop_items(iter, &inputs)?
                    }
                    Some(outer) => {
                        item_key = None;
                        nested_items(outer, scope, iter, &mut inputs, item)?
                    }
                };
                // A nested loop runs as one loop over every pair of items: its limit is the
                // product of the two.
                let parallelism =
                    match (scope.for_each.as_ref().map(|f| f.parallelism), parallelism) {
                        (Some(Some(o)), Some(i)) => Some(o.saturating_mul(i)),
                        (Some(_), _) => None,
                        (None, p) => p,
                    };
                for_each = Some(ForEach { items, parallelism });
            } else if task.get("artifactIterator").is_some() {
                return Err(
                    "is a ParallelFor over artifacts, which capstan does not run yet".to_string(),
                );
            }
            let child = Scope {
                prefix: format!("{full}/"),
                dag,
                inputs,
                when,
                after,
                for_each,
                item_key,
                finally,
            };
            self.dag(&child);
            return Ok(());
        }
        let label = text(comp, &["executorLabel"])
            .ok_or("has a component with neither `dag` nor `executorLabel`")?;
        let executor = self
            .ir
            .pointer("/deploymentSpec/executors")
            .and_then(|e| e.get(label))
            .ok_or_else(|| format!("refers to unknown executor `{label}`"))?;
        let ctx = StepCtx {
            full,
            task_name: name,
            comp,
            params,
            artifacts,
        };
        let mut step = if let Some(container) = executor.get("container") {
            self.container_step(&ctx, container)?
        } else if let Some(importer) = executor.get("importer") {
            self.importer_step(&ctx, importer)?
        } else {
            let kind = executor
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            return Err(format!(
                "uses executor `{label}` of kind `{kind}`, which capstan cannot run: it runs `container` and `importer` executors"
            ));
        };
        if !when.is_empty() {
            let source = if when.len() == 1 {
                when[0].clone()
            } else {
                when.iter()
                    .map(|w| format!("({w})"))
                    .collect::<Vec<_>>()
                    .join(" && ")
            };
            step.when = Some(
                capstan_spec::expr::Expr::parse(&source)
                    .map_err(|e| format!("triggerPolicy.condition `{source}`: {e}"))?,
            );
        }
        step.after = after;
        step.for_each = scope.for_each.clone();
        // Protobuf JSON leaves out `false`: `cachingOptions: {}` turns the cache off.
        if let Some(opts) = task.get("cachingOptions") {
            step.cache = opts.get("enableCache").and_then(Value::as_bool) == Some(true);
            step.cache_key = text(opts, &["cacheKey"])
                .filter(|k| !k.is_empty())
                .map(str::to_string);
        }
        if let Some(policy) = task.get("retryPolicy") {
            let mut r = RetryPolicy {
                limit: policy
                    .get("maxRetryCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u32,
                ..RetryPolicy::default()
            };
            if let Some(d) = policy.get("backoffDuration").and_then(duration) {
                r.backoff = d;
            }
            if let Some(f) = policy.get("backoffFactor").and_then(Value::as_f64) {
                r.factor = f;
            }
            r.max_backoff = policy.get("backoffMaxDuration").and_then(duration);
            step.retries = r;
        }
        if finally {
            self.finally.insert(full.to_string(), step);
        } else {
            self.steps.insert(full.to_string(), step);
        }
        Ok(())
    }

    /// The steps that a dependency on task `dep` of `dag` stands for.
    fn flattened(&self, dag: &'a Value, prefix: &str, dep: &str) -> Res<Vec<String>> {
        let task = dag
            .pointer(&format!(
                "/tasks/{}",
                dep.replace('~', "~0").replace('/', "~1")
            ))
            .ok_or_else(|| format!("depends on unknown task `{dep}`"))?;
        let comp = self.component(task)?;
        let full = format!("{prefix}{dep}");
        let Some(sub) = comp.get("dag") else {
            return Ok(vec![full]);
        };
        let mut out = Vec::new();
        for (name, _) in obj(sub.get("tasks")) {
            out.extend(self.flattened(sub, &format!("{full}/"), name)?);
        }
        Ok(out)
    }

    /// The output `key` of task `producer` of `dag`, followed through sub-DAG outputs to the
    /// step that writes it.
    fn output_ref(&self, dag: &'a Value, prefix: &str, producer: &str, key: &str) -> Res<Ref> {
        let task = obj(dag.get("tasks"))
            .find(|(n, _)| n.as_str() == producer)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("refers to unknown producer task `{producer}`"))?;
        let comp = self.component(task)?;
        let full = format!("{prefix}{producer}");
        let Some(sub) = comp.get("dag") else {
            return Ok(Ref::StepOutput {
                step: full,
                output: key.to_string(),
            });
        };
        let outputs = sub.get("outputs");
        let param = outputs.and_then(|o| o.pointer(&format!("/parameters/{key}")));
        let art = outputs.and_then(|o| o.pointer(&format!("/artifacts/{key}")));
        // `dsl.OneOf`: the output of whichever branch of a condition ran.
        let (selectors, sub_key) = if let Some(s) = param.and_then(|p| p.get("valueFromParameter"))
        {
            (vec![s], "outputParameterKey")
        } else if let Some(xs) = param
            .and_then(|p| p.pointer("/valueFromOneof/parameterSelectors"))
            .and_then(Value::as_array)
        {
            (xs.iter().collect(), "outputParameterKey")
        } else if let Some(xs) = art
            .and_then(|a| a.get("artifactSelectors"))
            .and_then(Value::as_array)
        {
            (xs.iter().collect(), "outputArtifactKey")
        } else {
            (Vec::new(), "")
        };
        let mut alts = Vec::new();
        for s in &selectors {
            let (Some(sub_task), Some(sub_key)) =
                (text(s, &["producerSubtask"]), text(s, &[sub_key]))
            else {
                return Err(format!(
                    "uses output `{key}` of `{producer}`, whose selector `{s}` names no producer"
                ));
            };
            match self.output_ref(sub, &format!("{full}/"), sub_task, sub_key)? {
                Ref::OneOf(inner) => alts.extend(inner),
                r => alts.push(r),
            }
        }
        match alts.len() {
            0 => Err(format!(
                "uses output `{key}` of `{producer}`, which it does not declare"
            )),
            1 => Ok(alts.remove(0)),
            _ => Ok(Ref::OneOf(alts)),
        }
    }

    fn param_src(&self, scope: &Scope<'a>, spec: &Value) -> Res<Src> {
        if let Some(name) = text(spec, &["componentInputParameter"]) {
            let src = scope.inputs.get(name).cloned().ok_or_else(|| {
                format!("refers to `{name}`, which is not an input of the enclosing DAG")
            })?;
            let Some(selector) = text(spec, &["parameterExpressionSelector"]) else {
                return Ok(src);
            };
            // `parseJson(string_value)["field"]`: a field of a loop item.
            let fields = selector
                .strip_prefix("parseJson(string_value)")
                .map(|rest| {
                    rest.split(']')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.trim_start_matches('[').trim_matches('"').to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|f| !f.is_empty());
            return match (src, fields) {
                (Src::Ref(Ref::Item(mut path)), Some(fields)) => {
                    path.extend(fields);
                    Ok(Src::Ref(Ref::Item(path)))
                }
                _ => Err(format!(
                    "unsupported parameterExpressionSelector `{selector}`"
                )),
            };
        }
        if let Some(c) = spec.pointer("/runtimeValue/constant") {
            return Ok(Src::Value(deep_integral(c)));
        }
        if let Some(t) = spec.get("taskOutputParameter") {
            let producer =
                text(t, &["producerTask"]).ok_or("taskOutputParameter has no producerTask")?;
            let key = text(t, &["outputParameterKey"])
                .ok_or("taskOutputParameter has no outputParameterKey")?;
            return self.upstream(scope, producer, key);
        }
        if spec.get("taskFinalStatus").is_some() {
            return Ok(Src::Status);
        }
        Err(format!("unsupported input source `{spec}`"))
    }

    fn artifact_src(&self, scope: &Scope<'a>, spec: &Value) -> Res<Src> {
        if let Some(name) = text(spec, &["componentInputArtifact"]) {
            return scope.inputs.get(name).cloned().ok_or_else(|| {
                format!("refers to `{name}`, which is not an input of the enclosing DAG")
            });
        }
        if let Some(t) = spec.get("taskOutputArtifact") {
            let producer =
                text(t, &["producerTask"]).ok_or("taskOutputArtifact has no producerTask")?;
            let key = text(t, &["outputArtifactKey"])
                .ok_or("taskOutputArtifact has no outputArtifactKey")?;
            return self.upstream(scope, producer, key);
        }
        Err(format!("unsupported artifact source `{spec}`"))
    }

    fn upstream(&self, scope: &Scope<'a>, producer: &str, key: &str) -> Res<Src> {
        let r = self.output_ref(scope.dag, &scope.prefix, producer, key)?;
        // A task of a loop body that uses another's output uses that of the same iteration.
        match r {
            Ref::StepOutput { step, output }
                if scope.for_each.is_some() && step.starts_with(&scope.prefix) =>
            {
                Ok(Src::Ref(Ref::ThisIteration { step, output }))
            }
            r => Ok(Src::Ref(r)),
        }
    }

    fn container_step(&mut self, ctx: &StepCtx<'_>, container: &Value) -> Res<Step> {
        let strings = |field: &str| -> Res<Vec<String>> {
            container
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "container.{field} has a non-text element `{other}`"
                    )),
                })
                .collect()
        };
        let command = strings("command")?;
        let args = strings("args")?;
        let mut argv: Vec<String> = command.iter().chain(&args).cloned().collect();
        let mut pip = None;
        if !self.options.verbatim
            && let Some(pip_args) = pip_preamble(&command)
        {
            argv = command[3..].iter().chain(&args).cloned().collect();
            pip = Some(pip_args);
        }
        if argv.is_empty() {
            return Err("has a container with no command and no args".to_string());
        }
        let outputs = ctx.outputs();
        let mut run = Vec::with_capacity(argv.len());
        for (i, arg) in argv.iter().enumerate() {
            let expanded = ctx
                .argument(arg, &outputs)
                .map_err(|e| format!("argument {i} `{arg}`: {e}"))?;
            run.extend(expanded.into_iter().map(Template::from_parts));
        }
        // Metrics artifacts carry their values as metadata, and kfp's executor writes no file
        // for them: give each an empty file that the component may overwrite. Once the
        // component succeeded, the numeric values it logged (`log_metric`) go to the task's
        // tracking run, through the MLflow API that every step is given (`MLFLOW_*`).
        let metrics: Vec<&String> = outputs
            .artifacts
            .iter()
            .filter(|(_, ty)| METRICS_TYPES.contains(&ty.as_str()))
            .map(|(name, _)| name)
            .collect();
        if !metrics.is_empty() {
            let mut wrapped = vec![
                Template::literal("sh"),
                Template::literal("-c"),
                Template::literal(METRICS_WRAPPER),
                Template::literal("sh"),
                Template::literal(LOG_METRICS),
                Template::from_parts(vec![plain_part(Ref::Output(RESULTS.to_string()))]),
            ];
            for name in metrics {
                wrapped.push(Template::literal(name));
                wrapped.push(Template::from_parts(vec![plain_part(Ref::Output(
                    name.clone(),
                ))]));
            }
            wrapped.push(Template::literal("--"));
            wrapped.append(&mut run);
            run = wrapped;
        }
        let mut env = IndexMap::new();
        for e in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(value)) = (text(e, &["name"]), text(e, &["value"])) else {
                return Err(format!(
                    "container.env has an entry without name or value: `{e}`"
                ));
            };
            let parts = ctx
                .placeholders(value, &outputs)
                .map_err(|err| format!("env `{name}`: {err}"))?;
            env.insert(name.to_string(), Template::from_parts(parts));
        }
        let res = container.get("resources");
        let field = |k: &str| res.and_then(|r| r.get(k));
        let resources = Resources {
            cpu: field("resourceCpuLimit")
                .and_then(Value::as_str)
                .and_then(cpu)
                .or_else(|| field("cpuLimit").and_then(Value::as_f64)),
            memory: field("resourceMemoryLimit")
                .and_then(Value::as_str)
                .and_then(memory)
                .or_else(|| {
                    field("memoryLimit")
                        .and_then(Value::as_f64)
                        .map(|gb| (gb * 1e9) as u64)
                }),
            gpu: res
                .and_then(|r| {
                    r.pointer("/accelerator/resourceCount")
                        .or_else(|| r.pointer("/accelerator/count"))
                })
                .and_then(|c| {
                    c.as_u64()
                        .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
                })
                .map(|n| n.min(u32::MAX as u64) as u32),
        };
        let mut step = ctx.step(Command::Argv(run), outputs);
        step.env = env;
        step.resources = resources;
        step.image = text(container, &["image"]).map(str::to_string);
        if let Some(pip_args) = pip {
            match self.envs.iter_mut().find(|e| e.pip_args == pip_args) {
                Some(e) => e.steps.push(ctx.full.to_string()),
                None => self.envs.push(PipEnv {
                    pip_args,
                    steps: vec![ctx.full.to_string()],
                }),
            }
        }
        Ok(step)
    }

    /// An importer copies a local file or directory (a path or a `file://` URI) into the
    /// artifact store, with the metadata the IR gives it.
    fn importer_step(&mut self, ctx: &StepCtx<'_>, importer: &Value) -> Res<Step> {
        let uri = match (
            importer.pointer("/artifactUri/constant"),
            text(importer, &["artifactUri", "runtimeParameter"]),
        ) {
            (Some(Value::String(s)), _) => Part::Text(s.clone()),
            (_, Some(param)) => match ctx.params.get(param) {
                Some(Src::Value(v)) => Part::Text(capstan_spec::template::value_to_text(v)),
                Some(Src::Ref(_)) => plain_part(Ref::Input(param.to_string())),
                _ => {
                    return Err(format!(
                        "importer artifactUri names input `{param}`, which has no value"
                    ));
                }
            },
            _ => return Err("importer has no artifactUri".to_string()),
        };
        let out_name = obj(ctx.comp.pointer("/outputDefinitions/artifacts"))
            .next()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "artifact".to_string());
        let metadata = importer
            .get("metadata")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let results = serde_json::json!({"artifacts": {out_name.clone(): {"artifacts": [{"metadata": metadata}]}}});
        let script = "src=\"${0#file://}\"; case \"$src\" in *://*) echo \"capstan imports local paths and file:// URIs only, not $src\" >&2; exit 1;; esac; cp -R \"$src\" \"$1\" && printf '%s' \"$2\" > \"$3\"";
        let run = vec![
            Template::literal("sh"),
            Template::literal("-c"),
            Template::literal(script),
            Template::from_parts(vec![uri]),
            Template::from_parts(vec![plain_part(Ref::Output(out_name))]),
            Template::literal(&results.to_string()),
            Template::from_parts(vec![plain_part(Ref::Output(RESULTS.to_string()))]),
        ];
        let outputs = ctx.outputs();
        Ok(ctx.step(Command::Argv(run), outputs))
    }
}

/// What a step is built from.
struct StepCtx<'a> {
    full: &'a str,
    task_name: &'a str,
    comp: &'a Value,
    params: IndexMap<String, Src>,
    artifacts: IndexMap<String, Src>,
}

impl StepCtx<'_> {
    fn outputs(&self) -> Outputs {
        let mut out = Outputs::default();
        for (name, def) in obj(self.comp.pointer("/outputDefinitions/parameters")) {
            let ty = text(def, &["parameterType"])
                .and_then(param_type)
                .unwrap_or(ParamType::String);
            out.parameters.insert(name.clone(), ty);
        }
        for (name, def) in obj(self.comp.pointer("/outputDefinitions/artifacts")) {
            out.artifacts.insert(name.clone(), artifact_type(def));
        }
        out.results = Some(ResultsFile {
            name: RESULTS.to_string(),
            parameter: "/parameterValues/{name}".to_string(),
            metadata: Some("/artifacts/{name}/artifacts/0/metadata".to_string()),
        });
        out
    }

    fn step(&self, run: Command, outputs: Outputs) -> Step {
        let mut inputs = Inputs::default();
        for (name, src) in &self.params {
            let t = match src {
                Src::Value(v) => Template::literal(&capstan_spec::template::value_to_text(v)),
                Src::Ref(r) => Template::from_parts(vec![plain_part(r.clone())]),
                Src::Status => Template::from_parts(vec![plain_part(Ref::Run("status".into()))]),
            };
            inputs.parameters.insert(name.clone(), t);
        }
        for (name, src) in &self.artifacts {
            if let Src::Ref(r) = src {
                inputs.artifacts.insert(
                    name.clone(),
                    Template::from_parts(vec![plain_part(r.clone())]),
                );
            }
        }
        Step {
            name: self.full.to_string(),
            run,
            image: None,
            executor: None,
            env: IndexMap::new(),
            workdir: None,
            inputs,
            outputs,
            after: Vec::new(),
            when: None,
            for_each: None,
            retries: RetryPolicy::default(),
            timeout: None,
            cache: true,
            cache_key: None,
            resources: Resources::default(),
            pos: Default::default(),
        }
    }

    fn input_type(&self, name: &str) -> Option<ParamType> {
        self.comp
            .pointer(&format!(
                "/inputDefinitions/parameters/{name}/parameterType"
            ))
            .and_then(Value::as_str)
            .and_then(param_type)
    }

    /// A parameter value inside the executor input JSON.
    fn param_json(&self, name: &str, src: &Src, parts: &mut Vec<Part>) {
        match src {
            Src::Value(v) => {
                parts.push(Part::Text(normalise(self.input_type(name), v).to_string()))
            }
            Src::Ref(_) => parts.push(json_part(Ref::Input(name.to_string()))),
            Src::Status => {
                parts.push(Part::Text("{\"state\": \"".to_string()));
                parts.push(Part::Ref {
                    r: Ref::Run("status".to_string()),
                    offset: 0,
                    filters: vec![Filter::Upper],
                });
                parts.push(Part::Text(
                    "\", \"pipelineJobResourceName\": \"".to_string(),
                ));
                parts.push(plain_part(Ref::Run("id".to_string())));
                parts.push(Part::Text(format!(
                    "\", \"pipelineTaskName\": {}, \"error\": {{}}}}",
                    jtext(self.task_name)
                )));
            }
        }
    }

    /// The executor input (`{{$}}`): the JSON that kfp's executor reads.
    fn executor_input(&self, outputs: &Outputs) -> Vec<Part> {
        let mut p = vec![Part::Text(
            "{\"inputs\": {\"parameterValues\": {".to_string(),
        )];
        for (i, (name, src)) in self.params.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            p.push(Part::Text(format!("{sep}{}: ", jtext(name))));
            self.param_json(name, src, &mut p);
        }
        p.push(Part::Text("}, \"artifacts\": {".to_string()));
        // Input artifacts carry the metadata their producer recorded, and a fan-in
        // (`dsl.Collected`) lists one entry per iteration: the engine writes both.
        for (i, name) in self.artifacts.keys().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            p.push(Part::Text(format!(
                "{sep}{}: {{\"artifacts\": ",
                jtext(name)
            )));
            p.push(Part::Ref {
                r: Ref::Input(name.clone()),
                offset: 0,
                filters: vec![Filter::Artifacts, Filter::Json],
            });
            p.push(Part::Text("}".to_string()));
        }
        p.push(Part::Text(
            "}}, \"outputs\": {\"parameters\": {".to_string(),
        ));
        for (i, name) in outputs.parameters.keys().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            p.push(Part::Text(format!(
                "{sep}{}: {{\"outputFile\": ",
                jtext(name)
            )));
            p.push(json_part(Ref::Output(name.clone())));
            p.push(Part::Text("}".to_string()));
        }
        p.push(Part::Text("}, \"artifacts\": {".to_string()));
        self.push_artifacts(
            &mut p,
            "/outputDefinitions/artifacts",
            outputs.artifacts.keys(),
            Ref::Output,
        );
        p.push(Part::Text("}, \"outputFile\": ".to_string()));
        p.push(json_part(Ref::Output(RESULTS.to_string())));
        p.push(Part::Text("}}".to_string()));
        p
    }

    /// Appends the executor-input entries of output artifacts:
    /// `"NAME": {"artifacts": [{"name", "type": {"schemaTitle"}, "uri", "metadata"}]}`, with the
    /// schema title from the component's definitions at `defs` and the uri from `uri(NAME)`.
    fn push_artifacts<'n>(
        &self,
        p: &mut Vec<Part>,
        defs: &str,
        names: impl Iterator<Item = &'n String>,
        uri: impl Fn(String) -> Ref,
    ) {
        let defs = self.comp.pointer(defs);
        for (i, name) in names.enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            let title = defs
                .and_then(|d| d.get(name))
                .map(schema_title)
                .unwrap_or_else(|| "system.Artifact".to_string());
            p.push(Part::Text(format!(
                "{sep}{}: {{\"artifacts\": [{{\"name\": {}, \"type\": {{\"schemaTitle\": {}}}, \"uri\": ",
                jtext(name),
                jtext(name),
                jtext(&title)
            )));
            p.push(json_part(uri(name.clone())));
            p.push(Part::Text(", \"metadata\": {}}]}".to_string()));
        }
    }

    /// One command-line argument of the IR as zero or more arguments: `{"IfPresent": ...}`
    /// (`dsl.IfPresentPlaceholder`) expands to its `Then` or `Else` list, decided here because
    /// whether a task has an input is known from the IR; `{"Concat": [...]}`
    /// (`dsl.ConcatPlaceholder`) joins its items into one argument.
    fn argument(&self, arg: &str, outputs: &Outputs) -> Res<Vec<Vec<Part>>> {
        let trimmed = arg.trim_start();
        if !(trimmed.starts_with("{\"IfPresent\"") || trimmed.starts_with("{\"Concat\"")) {
            return Ok(vec![self.placeholders(arg, outputs)?]);
        }
        let v: Value = serde_json::from_str(arg)
            .map_err(|e| format!("IfPresent or Concat placeholder is not JSON: {e}"))?;
        self.structured(&v, outputs)
    }

    fn structured(&self, v: &Value, outputs: &Outputs) -> Res<Vec<Vec<Part>>> {
        let list = |v: Option<&Value>| -> Res<Vec<Vec<Part>>> {
            let mut out = Vec::new();
            match v {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        out.extend(self.structured(item, outputs)?);
                    }
                }
                Some(one) => out.extend(self.structured(one, outputs)?),
            }
            Ok(out)
        };
        match v {
            Value::String(s) => Ok(vec![self.placeholders(s, outputs)?]),
            Value::Object(m) if m.contains_key("Concat") => {
                let Some(Value::Array(items)) = m.get("Concat") else {
                    return Err("a Concat placeholder needs a list".to_string());
                };
                let mut joined = Vec::new();
                for item in items {
                    joined.extend(self.structured(item, outputs)?.into_iter().flatten());
                }
                Ok(vec![joined])
            }
            Value::Object(m) if m.contains_key("IfPresent") => {
                let cond = &m["IfPresent"];
                let name = text(cond, &["InputName"])
                    .ok_or("an IfPresent placeholder needs `InputName`")?;
                let present = self.params.contains_key(name) || self.artifacts.contains_key(name);
                list(cond.get(if present { "Then" } else { "Else" }))
            }
            other => Err(format!(
                "unsupported structured placeholder `{other}`: expected IfPresent or Concat"
            )),
        }
    }

    /// Translates the KFP placeholders of one command-line argument.
    fn placeholders(&self, arg: &str, outputs: &Outputs) -> Res<Vec<Part>> {
        let mut parts = Vec::new();
        let mut rest = arg;
        while let Some(start) = rest.find("{{$") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find("}}")
                .ok_or("unclosed placeholder: expected `}}`")?;
            let inner = &rest[start + 2..start + end];
            parts.extend(self.placeholder(inner, outputs)?);
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(parts)
    }

    fn placeholder(&self, inner: &str, outputs: &Outputs) -> Res<Vec<Part>> {
        let bad = || format!("unsupported placeholder `{{{{{inner}}}}}`");
        let named = |prefix: &str| -> Option<(String, &str)> {
            let rest = inner.strip_prefix(prefix)?;
            let (name, tail) = quoted_name(rest)?;
            Some((name, tail.strip_prefix(']')?))
        };
        let run = |field: &str| vec![plain_part(Ref::Run(field.to_string()))];
        Ok(match inner {
            "$" => self.executor_input(outputs),
            "$.outputs.output_file" => vec![plain_part(Ref::Output(RESULTS.to_string()))],
            "$.pipeline_job_name" => run("pipeline"),
            "$.pipeline_job_uuid" | "$.pipeline_job_resource_name" => run("id"),
            "$.pipeline_task_name" | "$.pipeline_task_uuid" => {
                vec![plain_part(Ref::Task("name".to_string()))]
            }
            _ => {
                if let Some((name, tail)) = named("$.inputs.parameters[") {
                    if !tail.is_empty() {
                        return Err(bad());
                    }
                    return match self.params.get(&name) {
                        Some(Src::Value(v)) => {
                            Ok(vec![Part::Text(capstan_spec::template::value_to_text(
                                &normalise(self.input_type(&name), v),
                            ))])
                        }
                        Some(_) => Ok(vec![plain_part(Ref::Input(name))]),
                        None => Err(format!(
                            "placeholder uses input parameter `{name}`, which has no value"
                        )),
                    };
                }
                if let Some((name, tail)) = named("$.inputs.artifacts[") {
                    if !matches!(tail, ".uri" | ".path") {
                        return Err(bad());
                    }
                    if !self.artifacts.contains_key(&name) {
                        return Err(format!(
                            "placeholder uses input artifact `{name}`, which has no value"
                        ));
                    }
                    return Ok(vec![plain_part(Ref::Input(name))]);
                }
                if let Some((name, tail)) = named("$.outputs.parameters[") {
                    if tail != ".output_file" {
                        return Err(bad());
                    }
                    if !outputs.parameters.contains_key(&name) {
                        return Err(format!(
                            "placeholder uses output parameter `{name}`, which the component does not declare"
                        ));
                    }
                    return Ok(vec![plain_part(Ref::Output(name))]);
                }
                if let Some((name, tail)) = named("$.outputs.artifacts[") {
                    if !matches!(tail, ".uri" | ".path") {
                        return Err(bad());
                    }
                    if !outputs.artifacts.contains_key(&name) {
                        return Err(format!(
                            "placeholder uses output artifact `{name}`, which the component does not declare"
                        ));
                    }
                    return Ok(vec![plain_part(Ref::Output(name))]);
                }
                return Err(bad());
            }
        })
    }
}

/// `'name']...` -> (`name`, `]...`).
fn quoted_name(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(quote)? + 1;
    Some((s[1..end].to_string(), &s[end + 1..]))
}

/// The `pip install` arguments of the preamble that the kfp compiler puts in front of a
/// lightweight Python component (`sh -c "...pip install ARGS && \"$0\" \"$@\"" sh -ec ...`).
fn pip_preamble(command: &[String]) -> Option<String> {
    let [sh, dash_c, script, _, ..] = command else {
        return None;
    };
    if sh != "sh" || dash_c != "-c" {
        return None;
    }
    let body = script.trim_end().strip_suffix("&& \"$0\" \"$@\"")?;
    let install = body.rfind("pip install")?;
    let args = &body[install + "pip install".len()..];
    let args = match args.find("--no-warn-script-location") {
        Some(i) => &args[i + "--no-warn-script-location".len()..],
        None => args,
    };
    let args = args.replace("--quiet", "");
    Some(args.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> String {
        let path = format!(
            "{}/../../examples/kfp/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn imported(name: &str) -> Import {
        import(
            &example(name),
            &format!("{name}.yaml"),
            ImportOptions::default(),
        )
        .unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn detects_kfp_ir_and_not_native_yaml() {
        assert!(is_kfp_ir(&example("chain")));
        assert!(!is_kfp_ir("name: x\nsteps:\n  a: {run: [echo]}\n"));
        assert!(!is_kfp_ir("not: [valid"));
        for name in [
            "artifacts",
            "conditions",
            "loops",
            "structs",
            "nested",
            "importer",
        ] {
            assert!(is_kfp_ir(&example(name)), "{name}");
        }
    }

    #[test]
    fn chain_becomes_steps_with_executor_input_and_one_environment() {
        let im = imported("chain");
        let p = &im.pipeline;
        assert_eq!(p.name, "chain");
        assert_eq!(
            p.steps.keys().collect::<Vec<_>>(),
            ["add", "add-2", "add-3"]
        );
        assert_eq!(p.params["x"].default, Some(serde_json::json!(1)));
        assert_eq!(p.params["x"].ty, ParamType::Int);
        let add2 = &p.steps["add-2"];
        assert!(!add2.cache);
        assert_eq!(add2.upstream().into_iter().collect::<Vec<_>>(), ["add"]);
        let Command::Argv(argv) = &add2.run else {
            panic!("argv")
        };
        assert_eq!(argv[0].source(), "sh");
        assert_eq!(argv[1].source(), "-ec");
        let input = argv
            .iter()
            .find(|a| a.source().starts_with("{\"inputs\""))
            .unwrap();
        assert_eq!(
            input.source(),
            "{\"inputs\": {\"parameterValues\": {\"a\": {{ inputs.a | json }}, \"b\": 10}, \"artifacts\": {}}, \
             \"outputs\": {\"parameters\": {\"Output\": {\"outputFile\": {{ outputs.Output | json }}}}, \
             \"artifacts\": {}, \"outputFile\": {{ outputs.executor-output | json }}}}"
        );
        assert_eq!(im.environments.len(), 1);
        assert_eq!(im.environments[0].steps, ["add", "add-2", "add-3"]);
        assert!(
            im.environments[0].pip_args.starts_with("'kfp=="),
            "{}",
            im.environments[0].pip_args
        );
    }

    #[test]
    fn verbatim_keeps_the_preamble() {
        let im = import(
            &example("chain"),
            "chain.yaml",
            ImportOptions { verbatim: true },
        )
        .unwrap();
        assert!(im.environments.is_empty());
        let Command::Argv(argv) = &im.pipeline.steps["add"].run else {
            panic!("argv")
        };
        assert!(argv[2].source().contains("pip install"));
    }

    #[test]
    fn conditions_flatten_into_prefixed_steps_with_when() {
        let p = imported("conditions").pipeline;
        let names: Vec<_> = p.steps.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "condition-branches-1/condition-2/say",
                "condition-branches-1/condition-3/say-2",
                "condition-branches-1/condition-4/say-3",
                "flip"
            ]
        );
        let when = p.steps["condition-branches-1/condition-3/say-2"]
            .when
            .as_ref()
            .unwrap();
        assert_eq!(
            when.source(),
            r#"!({{ steps.flip.outputs.Output }} == "heads") && {{ steps.flip.outputs.Output }} == "tails""#
        );
        assert_eq!(
            p.steps["condition-branches-1/condition-2/say"].after,
            ["flip"]
        );
    }

    #[test]
    fn loops_become_for_each_with_fan_in() {
        let p = imported("loops").pipeline;
        let sq = &p.steps["for-loop-2/square"];
        let fe = sq.for_each.as_ref().unwrap();
        assert_eq!(fe.parallelism, Some(2));
        assert_eq!(
            fe.items,
            ForEachItems::Literal(vec![10.into(), 20.into(), 30.into(), 40.into()])
        );
        let fe = p.steps["for-loop-3/square-2"].for_each.as_ref().unwrap();
        assert_eq!(
            fe.items,
            ForEachItems::Ref(Template::parse("{{ params.items }}").unwrap())
        );
        assert_eq!(
            p.steps["total"].inputs.parameters["xs"].source(),
            "{{ steps.for-loop-3/square-2.outputs.Output }}"
        );
    }

    #[test]
    fn exit_handler_is_a_finally_step_with_the_final_status() {
        let p = imported("exit-handler").pipeline;
        assert_eq!(p.steps.keys().collect::<Vec<_>>(), ["exit-handler-1/fail"]);
        let report = &p.finally["report"];
        let Command::Argv(argv) = &report.run else {
            panic!("argv")
        };
        assert!(argv.iter().any(|a| {
            a.source()
                .contains("\"state\": \"{{ run.status | upper }}\"")
        }));
    }

    #[test]
    fn retries_resources_env_and_nested_outputs() {
        let p = imported("retries").pipeline;
        let r = &p.steps["flaky"].retries;
        assert_eq!((r.limit, r.backoff, r.factor), (2, Duration::ZERO, 2.0));
        let p = imported("containers").pipeline;
        let wc = &p.steps["wc"];
        assert_eq!(wc.resources.cpu, Some(1.0));
        assert_eq!(wc.resources.memory, Some(512_000_000));
        assert_eq!(wc.env["GREETING"].source(), "hello");
        assert_eq!(wc.image.as_deref(), Some("busybox:1.36"));
        let Command::Argv(argv) = &wc.run else {
            panic!("argv")
        };
        let srcs: Vec<&str> = argv.iter().map(Template::source).collect();
        assert_eq!(
            &srcs[3..],
            [
                "{{ inputs.text }}",
                "{{ outputs.lines }}",
                "{{ outputs.copy }}"
            ]
        );
        let p = imported("nested").pipeline;
        assert_eq!(
            p.steps.keys().collect::<Vec<_>>(),
            ["add", "inner/add", "inner/square"]
        );
        assert_eq!(
            p.steps["add"].inputs.parameters["a"].source(),
            "{{ steps.inner/square.outputs.Output }}"
        );
    }

    #[test]
    fn errors_name_the_task_and_the_field() {
        let chain = example("chain");
        let err = import(
            &chain.replace("schemaVersion: 2.1.0", "schemaVersion: 9.0.0"),
            "c.yaml",
            ImportOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported schemaVersion `9.0.0`"),
            "{err}"
        );
        let err = import(
            &chain.replacen("      container:", "      resolver:", 1),
            "c.yaml",
            ImportOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("task `add` uses executor `exec-add` of kind `resolver`"),
            "{err}"
        );
        let bad = chain.replacen("- '{{$}}'", "- '{{$.inputs.parameters[''zzz'']}}'", 1);
        let err = import(&bad, "c.yaml", ImportOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("input parameter `zzz`, which has no value"),
            "{err}"
        );
        let bad = chain.replacen("- '{{$}}'", "- '{{$.bogus}}'", 1);
        let err = import(&bad, "c.yaml", ImportOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported placeholder `{{$.bogus}}`"),
            "{err}"
        );
    }

    #[test]
    fn every_example_survives_the_stored_form() {
        // A run stores its pipeline as JSON; resume reads it back.
        for name in [
            "chain",
            "artifacts",
            "conditions",
            "loops",
            "exit-handler",
            "retries",
            "containers",
            "structs",
            "importer",
            "nested",
            "nested-loops",
            "fan-in",
            "metadata",
            "placeholders",
            "options",
            "input-artifacts",
            "one-of",
            "loops-from-outputs",
        ] {
            let p = imported(name).pipeline;
            let json = serde_json::to_value(&p).unwrap();
            let back: Pipeline =
                serde_json::from_value(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, p, "{name}");
        }
    }

    #[test]
    fn metrics_outputs_get_an_empty_file_first() {
        let p = imported("artifacts").pipeline;
        let Command::Argv(argv) = &p.steps["evaluate"].run else {
            panic!("argv")
        };
        let srcs: Vec<&str> = argv.iter().take(9).map(Template::source).collect();
        assert_eq!(srcs[0], "sh");
        assert_eq!(srcs[3], "sh");
        assert_eq!(
            &srcs[5..9],
            [
                "{{ outputs.executor-output }}",
                "metrics",
                "{{ outputs.metrics }}",
                "--"
            ]
        );
        assert_eq!(p.steps["train"].outputs.artifacts["model"], "Model");
    }

    #[test]
    fn integral_numbers_of_the_ir_become_integers() {
        use serde_json::json;
        assert_eq!(normalise(Some(ParamType::Int), &json!(3.0)), json!(3));
        assert_eq!(normalise(Some(ParamType::Float), &json!(3.0)), json!(3.0));
        assert_eq!(
            normalise(Some(ParamType::List), &json!([1.0, 2.5, {"a": 4.0}])),
            json!([1, 2.5, {"a": 4}])
        );
        assert_eq!(
            normalise(Some(ParamType::String), &json!("1.0")),
            json!("1.0")
        );
    }

    #[test]
    fn host_notes_name_each_image_once() {
        let notes = host_notes(&imported("containers").pipeline);
        assert_eq!(
            notes,
            [
                "note: image `python:3.11` is not pulled: the commands of read-copy run on this host",
                "note: image `busybox:1.36` is not pulled: the commands of wc run on this host",
            ]
        );
        let native =
            capstan_spec::parse_native("name: n\nsteps:\n  a: {run: [echo], image: x}\n", "n.yaml")
                .unwrap();
        assert!(host_notes(&native).is_empty());
    }

    #[test]
    fn nested_loops_become_one_loop_over_every_combination() {
        use serde_json::json;
        let p = imported("nested-loops").pipeline;
        let levels = |step: &str| match &p.steps[step].for_each.as_ref().unwrap().items {
            ForEachItems::Product(levels) => levels.clone(),
            other => panic!("{step}: {other:?}"),
        };
        let add = levels("for-loop-2/for-loop-4/add");
        assert_eq!(add.len(), 2);
        assert_eq!(add[0].key, "pipelinechannel--loop-item-param-1");
        assert_eq!(
            add[0].items,
            ForEachItems::Literal(vec![json!(1), json!(2)])
        );
        assert_eq!(add[1].key, "pipelinechannel--loop-item-param-3");
        assert_eq!(
            p.steps["for-loop-2/for-loop-4/add"].inputs.parameters["a"].source(),
            "{{ item.pipelinechannel--loop-item-param-1 }}"
        );
        // The inner items are a field of the outer item.
        let say = levels("for-loop-6/for-loop-7/say");
        let ForEachItems::Ref(t) = &say[1].items else {
            panic!("{say:?}")
        };
        assert_eq!(
            t.source(),
            "{{ item.pipelinechannel--loop-item-param-5.tags }}"
        );
    }

    #[test]
    fn one_of_outputs_become_one_of_references() {
        let p = imported("one-of").pipeline;
        let src = p.steps["say-4"].inputs.parameters["msg"]
            .source()
            .to_string();
        assert_eq!(
            src,
            "{{ one_of(steps.condition-branches-1/condition-2/say.outputs.Output, \
             steps.condition-branches-1/condition-3/say-2.outputs.Output, \
             steps.condition-branches-1/condition-4/say-3.outputs.Output) }}"
        );
    }

    #[test]
    fn if_present_and_concat_expand_at_import() {
        let p = imported("placeholders").pipeline;
        let argv = |step: &str| match &p.steps[step].run {
            Command::Argv(a) => a
                .iter()
                .skip(4)
                .map(|t| t.source().to_string())
                .collect::<Vec<_>>(),
            Command::Shell(_) => panic!("argv"),
        };
        assert_eq!(argv("greet"), ["name={{ inputs.name }}!", "greeting", "hi"]);
        assert_eq!(argv("greet-2"), ["name={{ inputs.name }}!", "no-greeting"]);
    }

    #[test]
    fn cache_key_and_input_artifacts() {
        let p = imported("options").pipeline;
        assert_eq!(
            p.steps["env-and-key"].cache_key.as_deref(),
            Some("fixed-key")
        );
        let p = imported("input-artifacts").pipeline;
        assert_eq!(p.params["data"].ty, ParamType::String);
        assert_eq!(
            p.steps["read-text"].inputs.artifacts["data"].source(),
            "{{ steps.inputs/data.outputs.artifact }}"
        );
    }

    #[test]
    fn a_platforms_document_is_kept_as_metadata() {
        let text = format!(
            "{}---\nplatforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-add:\n          nodeSelector:\n            labels: {{pool: gpu}}\n",
            example("chain")
        );
        assert!(is_kfp_ir(&text));
        let p = import(&text, "chain.yaml", ImportOptions::default())
            .unwrap_or_else(|d| panic!("{d}"))
            .pipeline;
        assert_eq!(p.steps.len(), 3);
        assert_eq!(
            p.metadata["kfp"]["platforms"][0]["kubernetes"]["deploymentSpec"]["executors"]["exec-add"]
                ["nodeSelector"]["labels"]["pool"],
            "gpu"
        );
    }

    #[test]
    fn reads_memory_and_cpu_quantities() {
        assert_eq!(memory("2Gi"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(memory("512M"), Some(512_000_000));
        assert_eq!(memory("lots"), None);
        assert_eq!(cpu("500m"), Some(0.5));
        assert_eq!(cpu("2"), Some(2.0));
    }
}
