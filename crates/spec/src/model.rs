//! The pipeline model: what every front end (native YAML, KFP IR) produces and what the planner and
//! the engine consume.
//!
//! The model is plain data. It is serialisable so that a run can store the exact pipeline it ran and
//! `capstan resume` can rebuild the run without the original file.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::template::Template;

/// A parameter or output value. JSON is the value model: it has every type a parameter can take.
pub type Value = serde_json::Value;

/// A position in a source file, 1-based. `line == 0` means "unknown".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The file the pipeline came from, for error messages.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub params: IndexMap<String, ParamSpec>,
    /// Steps in declaration order.
    pub steps: IndexMap<String, Step>,
    /// Exit handlers: they run after every step in `steps` has ended, whatever the outcome, and see
    /// `{{ run.status }}`.
    #[serde(default)]
    pub finally: IndexMap<String, Step>,
    /// The default executor for every step (`local` when unset).
    #[serde(default)]
    pub executor: Option<String>,
    /// Front-end specific data kept for display and for later executors (for example the
    /// Kubernetes `platforms` section of a KFP file).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Int,
    Float,
    String,
    Bool,
    List,
    Map,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::String => "string",
            ParamType::Bool => "bool",
            ParamType::List => "list",
            ParamType::Map => "map",
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// `None` means the parameter is required.
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// An argv list; each element is a template rendered to exactly one argument.
    Argv(Vec<Template>),
    /// A shell string, run with `sh -c`.
    Shell(Template),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub run: Command,
    /// Container image, for the container and remote executors. The local executor ignores it.
    #[serde(default)]
    pub image: Option<String>,
    /// Per-step executor override.
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub env: IndexMap<String, Template>,
    #[serde(default)]
    pub workdir: Option<Template>,
    #[serde(default)]
    pub inputs: Inputs,
    #[serde(default)]
    pub outputs: Outputs,
    /// Explicit dependencies, in addition to the ones implied by references.
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub when: Option<crate::expr::Expr>,
    #[serde(default)]
    pub for_each: Option<ForEach>,
    #[serde(default)]
    pub retries: RetryPolicy,
    #[serde(default, with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
    /// `false` turns caching off for this step.
    #[serde(default = "yes")]
    pub cache: bool,
    /// A key chosen by the author that replaces the inputs, command and environment in the
    /// step's cache key: any run of this step with the same key reuses the cached outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    /// Where the step is declared, for error messages.
    #[serde(default)]
    pub pos: Pos,
}

fn yes() -> bool {
    true
}

/// Declared inputs: named values that the step's templates can refer to as `{{ inputs.NAME }}`.
/// An input parameter is a template (usually a single reference); an input artifact is a
/// reference to an upstream artifact output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    #[serde(default)]
    pub parameters: IndexMap<String, Template>,
    #[serde(default)]
    pub artifacts: IndexMap<String, Template>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    /// Output parameters: the step writes the value to the file whose path is
    /// `{{ outputs.NAME }}`; the engine parses it with the declared type.
    #[serde(default)]
    pub parameters: IndexMap<String, ParamType>,
    /// Output artifacts: the step writes a file or a directory at the path `{{ outputs.NAME }}`.
    /// The value is the artifact type (`Dataset`, `Model`, `Metrics`, ...).
    #[serde(default)]
    pub artifacts: IndexMap<String, String>,
    /// A JSON document of results that the step may write, for tools that report their outputs
    /// in one file rather than one file per output. See [`ResultsFile`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsFile>,
}

/// A JSON document that a step may write at `{{ outputs.NAME }}` (`NAME` is [`ResultsFile::name`]).
///
/// When the step writes it, the values it holds win over the per-parameter files: an output
/// parameter found in the document needs no file of its own. Parts of the document are found by
/// JSON pointer (RFC 6901); `{name}` in a pointer stands for the output's name. A step that does
/// not write the document reports its outputs the usual way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    pub name: String,
    /// Pointer to an output parameter's value, such as `/parameterValues/{name}`.
    pub parameter: String,
    /// Pointer to an output artifact's metadata (a JSON object stored with the artifact).
    #[serde(default)]
    pub metadata: Option<String>,
}

impl ResultsFile {
    /// The output parameter `name` in the document, if it is there.
    pub fn parameter<'a>(&self, doc: &'a Value, name: &str) -> Option<&'a Value> {
        doc.pointer(&self.parameter.replace("{name}", &pointer_escape(name)))
    }

    /// The metadata of output artifact `name` in the document, if it is there and an object.
    pub fn metadata<'a>(&self, doc: &'a Value, name: &str) -> Option<&'a Value> {
        let pointer = self.metadata.as_ref()?;
        doc.pointer(&pointer.replace("{name}", &pointer_escape(name)))
            .filter(|v| v.is_object())
    }
}

fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// A template that renders to a list: `{{ params.lrs }}` or `{{ steps.x.outputs.items }}`, or
    /// a literal list.
    pub items: ForEachItems,
    /// At most this many iterations run at once (`None`: no limit beyond the run's).
    #[serde(default)]
    pub parallelism: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForEachItems {
    Literal(Vec<Value>),
    Ref(Template),
    /// Loops inside loops, run as one loop over every combination of their items. Each item is
    /// an object with one field per level (`item.KEY`). A level's items are found for each
    /// combination of the outer levels' items, so a level's template may use the fields of
    /// outer levels (`{{ item.row.tags }}`) as well as params and upstream outputs.
    Product(Vec<ForEachLevel>),
}

/// One loop of a [`ForEachItems::Product`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForEachLevel {
    /// The field of the combined item that holds this level's item.
    pub key: String,
    /// A literal list or a template; never another product.
    pub items: ForEachItems,
}

impl ForEach {
    /// The templates that give the items (none for a literal list). They are evaluated when the
    /// step expands, not for each iteration.
    pub fn sources(&self) -> Vec<&Template> {
        fn walk<'a>(items: &'a ForEachItems, out: &mut Vec<&'a Template>) {
            match items {
                ForEachItems::Literal(_) => {}
                ForEachItems::Ref(t) => out.push(t),
                ForEachItems::Product(levels) => {
                    levels.iter().for_each(|l| walk(&l.items, out));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.items, &mut out);
        out
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 means run once.
    pub limit: u32,
    /// Delay before the first retry.
    #[serde(with = "duration_ms")]
    pub backoff: Duration,
    /// Each further retry waits `factor` times longer.
    pub factor: f64,
    /// Upper bound on one delay.
    #[serde(default, with = "opt_duration_ms")]
    pub max_backoff: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            limit: 0,
            backoff: Duration::from_secs(1),
            factor: 2.0,
            max_backoff: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, where `attempt` (1-based) is the attempt that failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30) as i32;
        let secs = self.backoff.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let delay = Duration::from_secs_f64(secs.min(86_400.0));
        match self.max_backoff {
            Some(max) => delay.min(max),
            None => delay,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores, possibly fractional (`0.5`, `"500m"` is normalised to 0.5).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Memory in bytes (`"2Gi"` and `"512M"` are normalised).
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub gpu: Option<u32>,
}

impl Pipeline {
    /// All steps, main steps first, then exit handlers.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.values().chain(self.finally.values())
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.get(name).or_else(|| self.finally.get(name))
    }

    pub fn is_finally(&self, name: &str) -> bool {
        self.finally.contains_key(name)
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl Step {
    /// Every template of the step: command, env, workdir, inputs and the `for_each` source.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out: Vec<&Template> = match &self.run {
            Command::Argv(args) => args.iter().collect(),
            Command::Shell(t) => vec![t],
        };
        out.extend(self.env.values());
        out.extend(self.workdir.iter());
        out.extend(self.inputs.parameters.values());
        out.extend(self.inputs.artifacts.values());
        if let Some(fe) = &self.for_each {
            out.extend(fe.sources());
        }
        out
    }

    /// Every reference the step makes, in templates and in its condition.
    pub fn refs(&self) -> Vec<&crate::template::Ref> {
        let mut out: Vec<&crate::template::Ref> = self
            .templates()
            .into_iter()
            .flat_map(|t| t.refs())
            .collect();
        if let Some(when) = &self.when {
            out.extend(when.refs());
        }
        out
    }

    /// The steps this step waits for: its `after` list plus every step it refers to.
    pub fn upstream(&self) -> std::collections::BTreeSet<&str> {
        let mut out: std::collections::BTreeSet<&str> =
            self.after.iter().map(String::as_str).collect();
        for r in self.refs() {
            match r {
                crate::template::Ref::StepOutput { step, .. }
                | crate::template::Ref::ThisIteration { step, .. } => {
                    out.insert(step.as_str());
                }
                crate::template::Ref::OneOf(alts) => out.extend(one_of_steps(alts)),
                _ => {}
            }
        }
        out
    }

    /// The step lists of the step's `one_of(...)` references: it needs one step of each list to
    /// have succeeded (a subset of [`Step::upstream`]).
    pub fn one_of_upstream(&self) -> Vec<Vec<&str>> {
        self.refs()
            .into_iter()
            .filter_map(|r| match r {
                crate::template::Ref::OneOf(alts) => Some(one_of_steps(alts).collect()),
                _ => None,
            })
            .collect()
    }

    /// The steps whose *outputs* this step uses (a subset of [`Step::upstream`]). When one of
    /// them was skipped, this step cannot run and is skipped too.
    pub fn data_upstream(&self) -> std::collections::BTreeSet<&str> {
        self.refs()
            .into_iter()
            .filter_map(|r| match r {
                crate::template::Ref::StepOutput { step, .. }
                | crate::template::Ref::ThisIteration { step, .. } => Some(step.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn one_of_steps(alts: &[crate::template::Ref]) -> impl Iterator<Item = &str> {
    alts.iter().filter_map(|a| match a {
        crate::template::Ref::StepOutput { step, .. } => Some(step.as_str()),
        _ => None,
    })
}
