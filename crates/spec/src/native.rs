//! The native pipeline format: YAML that a person writes.
//!
//! The text is first read into a tree of YAML nodes that keeps the line and column of every node
//! and key, then converted to the model by hand rather than by derived deserialisers. That is what
//! lets one pass report every mistake in a file (an unknown field, a bad duration, a missing
//! `run`), each at its own line and column, instead of stopping at the first. Duplicate keys are
//! let through the YAML reader and reported here for the same reason.
//!
//! Short forms, each the same as its long form:
//! - a param `lr: float` (a type name alone) is required; `tag: v1` (any other value) is optional
//!   with that default and its type inferred. A mapping with a `type`, `default` or `description`
//!   key is the long form, so a map default with such keys needs `{type: map, default: ...}`.
//! - `outputs: {parameters: [best], artifacts: [model]}` declares string parameters and artifacts
//!   of the generic type `Artifact`.
//! - `after: a` is `after: [a]`; `retries: 2` is `retries: {limit: 2}`; `for_each: X` is
//!   `for_each: {items: X}`; `timeout: 90` is 90 seconds.
//! - numbers and bools in `run` lists and `env` values are text, as written (`0.50` stays `0.50`).

use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Diagnostics};
use crate::expr::Expr;
use crate::model::{
    Command, ForEach, ForEachItems, Inputs, Outputs, ParamSpec, ParamType, Pipeline, Pos,
    Resources, RetryPolicy, Step, Value,
};
use crate::params::coerce_value;
use crate::template::Template;
use crate::validate::{sort_diagnostics, validate};

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "executor",
    "params",
    "steps",
    "finally",
];
const STEP_FIELDS: &[&str] = &[
    "run",
    "image",
    "executor",
    "env",
    "workdir",
    "inputs",
    "outputs",
    "after",
    "when",
    "for_each",
    "retries",
    "timeout",
    "cache",
    "resources",
];
/// The executors a pipeline or a step may name.
pub const EXECUTORS: &[&str] = &["local", "container", "ray", "kubernetes"];
const PARAM_FIELDS: &[&str] = &["type", "default", "description"];
const IO_FIELDS: &[&str] = &["parameters", "artifacts"];
const FOR_EACH_FIELDS: &[&str] = &["items", "parallelism"];
const RETRY_FIELDS: &[&str] = &["limit", "backoff", "factor", "max_backoff"];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpu"];
const PARAM_TYPES: &[ParamType] = &[
    ParamType::Int,
    ParamType::Float,
    ParamType::String,
    ParamType::Bool,
    ParamType::List,
    ParamType::Map,
];

/// Parses a native pipeline file and validates it. `file` names the file in diagnostics.
///
/// Every error found is reported, each with its line and column: YAML syntax (one diagnostic at
/// the parser's position, since nothing after it can be trusted), then the shape of the file
/// (unknown or duplicate fields, values of the wrong kind), then [`validate`]'s checks.
pub fn parse_native(src: &str, file: &str) -> Result<Pipeline, Diagnostics> {
    let root = read_yaml(src).map_err(|(pos, message)| {
        Diagnostics(vec![Diagnostic {
            file: file.to_string(),
            pos,
            step: None,
            message,
        }])
    })?;
    let mut conv = Conv {
        file: file.to_string(),
        diags: Vec::new(),
    };
    let Some(pipeline) = conv.pipeline(&root) else {
        return Err(Diagnostics(conv.diags));
    };
    let mut diags = conv.diags;
    diags.extend(validate(&pipeline));
    if diags.is_empty() {
        return Ok(pipeline);
    }
    sort_diagnostics(&mut diags);
    Err(Diagnostics(diags))
}

// ---------------------------------------------------------------------------------------------
// The YAML tree

/// A YAML node with its position and, for scalars, its source text.
struct Node {
    kind: Kind,
    pos: Pos,
    /// The scalar as written (with quotes, if any), when the reader knows it.
    raw: Option<String>,
}

enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// The shape serde-saphyr fills in; converted to [`Node`] once the source spans are resolved.
enum Shape {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Shape>>),
    Map(Vec<(Spanned<Shape>, Spanned<Shape>)>),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Shape, E> {
                Ok(Shape::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Shape, E> {
                Ok(Shape::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Shape, E> {
                Ok(i64::try_from(v).map_or(Shape::UInt(v), Shape::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Shape, E> {
                i64::try_from(v)
                    .map(Shape::Int)
                    .or_else(|_| u64::try_from(v).map(Shape::UInt))
                    .map_err(|_| E::custom(format!("integer {v} is out of range")))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Shape, E> {
                u64::try_from(v)
                    .map(Shape::UInt)
                    .map_err(|_| E::custom(format!("integer {v} is out of range")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Shape, E> {
                Ok(Shape::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Shape, E> {
                Ok(Shape::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Shape, E> {
                Ok(Shape::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Null)
            }
            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
                Shape::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Shape::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Shape::Map(entries))
            }
        }
        d.deserialize_any(ShapeVisitor)
    }
}

fn to_pos(loc: serde_saphyr::Location) -> Pos {
    Pos {
        line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
        column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
    }
}

fn to_node(s: Spanned<Shape>, src: &str) -> Node {
    let span = s.referenced.span();
    let raw = match (span.byte_offset(), span.byte_len()) {
        (Some(start), Some(len)) => usize::try_from(start)
            .ok()
            .zip(usize::try_from(start + len).ok())
            .and_then(|(a, b)| src.get(a..b)),
        _ => None,
    };
    let kind = match s.value {
        Shape::Null => Kind::Null,
        Shape::Bool(b) => Kind::Bool(b),
        Shape::Int(i) => Kind::Int(i),
        Shape::UInt(u) => Kind::UInt(u),
        Shape::Float(f) => Kind::Float(f),
        Shape::Str(t) => Kind::Str(t),
        Shape::Seq(items) => Kind::Seq(items.into_iter().map(|i| to_node(i, src)).collect()),
        Shape::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (to_node(k, src), to_node(v, src)))
                .collect(),
        ),
    };
    Node {
        kind,
        pos: to_pos(s.referenced),
        raw: raw.map(str::to_string),
    }
}

/// Reads YAML text into a [`Node`] tree, or returns the syntax error and where it is.
fn read_yaml(src: &str) -> Result<Node, (Pos, String)> {
    let mut options = serde_saphyr::options::Options::default();
    // Duplicates are reported with the file's other errors, naming both places.
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::PassThrough;
    // YAML 1.1 reads `yes`, `no`, `on` and `off` as bools; a person who writes `run: [echo, yes]`
    // means the text.
    options.strict_booleans = true;
    match serde_saphyr::from_str_with_options::<Spanned<Shape>>(src, options) {
        Ok(root) => Ok(to_node(root, src)),
        Err(e) => {
            let loc = e.location();
            let pos = loc.map(to_pos).unwrap_or(Pos { line: 1, column: 1 });
            let text = e.without_snippet().to_string();
            // The message ends with the position, which the diagnostic already shows.
            let suffix = loc.map(|l| format!(" at line {}, column {}", l.line(), l.column()));
            let message = suffix
                .and_then(|s| text.strip_suffix(&s).map(str::to_string))
                .unwrap_or(text);
            Err((pos, format!("invalid YAML: {message}")))
        }
    }
}

impl Node {
    fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Null => "nothing",
            Kind::Bool(_) => "a bool",
            Kind::Int(_) | Kind::UInt(_) | Kind::Float(_) => "a number",
            Kind::Str(_) => "text",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// A scalar's text: strings as they are, numbers and bools as written in the file.
    fn text(&self) -> Option<String> {
        let raw = self.raw.as_deref().map(str::trim).filter(|r| !r.is_empty());
        match &self.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Bool(b) => Some(
                raw.filter(|r| r.eq_ignore_ascii_case(&b.to_string()))
                    .map_or(b.to_string(), str::to_string),
            ),
            Kind::Int(i) => Some(
                raw.filter(|r| r.parse::<i64>().ok() == Some(*i))
                    .map_or(i.to_string(), str::to_string),
            ),
            Kind::UInt(u) => Some(
                raw.filter(|r| r.parse::<u64>().ok() == Some(*u))
                    .map_or(u.to_string(), str::to_string),
            ),
            Kind::Float(f) => Some(
                raw.filter(|r| r.parse::<f64>().ok() == Some(*f))
                    .map_or(f.to_string(), str::to_string),
            ),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => None,
        }
    }

    /// The position of byte `offset` of a string scalar's value, when the value is written on
    /// one line without escapes (so that it maps to the source column by column).
    fn pos_at(&self, offset: usize) -> Pos {
        let (Kind::Str(value), Some(raw)) = (&self.kind, &self.raw) else {
            return self.pos;
        };
        if raw.contains('\n') || offset > value.len() {
            return self.pos;
        }
        let lead = if raw == value {
            0
        } else if raw.len() == value.len() + 2 && raw.get(1..raw.len() - 1) == Some(value.as_str())
        {
            1
        } else {
            return self.pos;
        };
        let chars = value[..offset].chars().count();
        Pos {
            line: self.pos.line,
            column: self.pos.column + u32::try_from(lead + chars).unwrap_or(0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion to the model

struct Conv {
    file: String,
    diags: Vec<Diagnostic>,
}

/// The known fields of a mapping, each with the position of its key.
struct Fields<'y> {
    map: IndexMap<&'y str, (Pos, &'y Node)>,
}

impl<'y> Fields<'y> {
    fn get(&self, name: &str) -> Option<&'y Node> {
        self.map.get(name).map(|(_, n)| *n)
    }
}

/// A mapping entry with a free-form key (a step, a param, an env variable).
struct Entry<'y> {
    key: String,
    key_pos: Pos,
    value: &'y Node,
}

fn in_what(what: &str) -> String {
    if what.is_empty() {
        String::new()
    } else {
        format!(" in `{what}`")
    }
}

impl Conv {
    fn error(&mut self, pos: Pos, step: Option<&str>, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            pos,
            step: step.map(str::to_string),
            message: message.into(),
        });
    }

    /// The entries of a mapping in order. Reports a value that is not a mapping (`None`), keys
    /// that are not text, and repeated keys (the first one is kept).
    fn entries<'y>(
        &mut self,
        node: &'y Node,
        what: &str,
        step: Option<&str>,
    ) -> Option<Vec<Entry<'y>>> {
        let Kind::Map(pairs) = &node.kind else {
            self.error(
                node.pos,
                step,
                format!("`{what}` must be a mapping, got {}", node.describe()),
            );
            return None;
        };
        let mut out: Vec<Entry<'y>> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let Some(key) = k.text().filter(|_| !matches!(k.kind, Kind::Null)) else {
                self.error(
                    k.pos,
                    step,
                    format!("keys{} must be text, got {}", in_what(what), k.describe()),
                );
                continue;
            };
            if let Some(first) = out.iter().find(|e| e.key == key) {
                let line = first.key_pos.line;
                let message = if what == "steps" || what == "finally" {
                    format!("duplicate step `{key}`: first declared at line {line}")
                } else {
                    format!(
                        "duplicate key `{key}`{}: first declared at line {line}",
                        in_what(what)
                    )
                };
                let dup_step = if what == "steps" || what == "finally" {
                    Some(key.as_str())
                } else {
                    step
                };
                self.error(k.pos, dup_step, message);
                continue;
            }
            out.push(Entry {
                key,
                key_pos: k.pos,
                value: v,
            });
        }
        Some(out)
    }

    /// The fields of a mapping with a fixed set of field names; reports unknown ones.
    fn fields<'y>(
        &mut self,
        node: &'y Node,
        what: &str,
        allowed: &[&'static str],
        step: Option<&str>,
    ) -> Option<Fields<'y>> {
        let entries = self.entries(node, what, step)?;
        let mut map = IndexMap::new();
        for e in entries {
            match allowed.iter().find(|a| **a == e.key) {
                Some(name) => {
                    map.insert(*name, (e.key_pos, e.value));
                }
                None => self.error(
                    e.key_pos,
                    step,
                    format!(
                        "unknown field `{}`{}: expected one of {}",
                        e.key,
                        in_what(what),
                        allowed.join(", ")
                    ),
                ),
            }
        }
        Some(Fields { map })
    }

    fn text(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<String> {
        match (&node.kind, node.text()) {
            (Kind::Null, _) | (_, None) => {
                self.error(
                    node.pos,
                    step,
                    format!("`{what}` must be text, got {}", node.describe()),
                );
                None
            }
            (_, Some(t)) => Some(t),
        }
    }

    /// An executor name: one of [`EXECUTORS`], so that a typo fails at its line, not at run time.
    fn executor(&mut self, node: &Node, step: Option<&str>) -> Option<String> {
        let name = self.text(node, "executor", step)?;
        if EXECUTORS.contains(&name.as_str()) {
            return Some(name);
        }
        self.error(
            node.pos,
            step,
            format!(
                "unknown executor `{name}`: expected one of {}",
                EXECUTORS.join(", ")
            ),
        );
        None
    }

    fn template(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<Template> {
        let text = self.text(node, what, step)?;
        match Template::parse(&text) {
            Ok(t) => Some(t.with_pos(node.pos)),
            Err(e) => {
                self.error(
                    node.pos_at(e.offset),
                    step,
                    format!("`{what}`: {}", e.message),
                );
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<bool> {
        match node.kind {
            Kind::Bool(b) => Some(b),
            _ => {
                self.error(
                    node.pos,
                    step,
                    format!("`{what}` must be true or false, got {}", node.describe()),
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<u32> {
        let value = match node.kind {
            Kind::Int(i) => u32::try_from(i).ok(),
            Kind::UInt(u) => u32::try_from(u).ok(),
            _ => None,
        };
        if value.is_none() {
            let got = node.text().unwrap_or_else(|| node.describe().to_string());
            self.error(
                node.pos,
                step,
                format!("`{what}` must be a whole number of at least 0, got {got}"),
            );
        }
        value
    }

    fn number(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<f64> {
        let value = match node.kind {
            Kind::Int(i) => Some(i as f64),
            Kind::UInt(u) => Some(u as f64),
            Kind::Float(f) if f.is_finite() => Some(f),
            _ => None,
        };
        if value.is_none() {
            self.error(
                node.pos,
                step,
                format!("`{what}` must be a number, got {}", node.describe()),
            );
        }
        value
    }

    fn duration(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<Duration> {
        let parsed = match &node.kind {
            Kind::Str(s) => humantime::parse_duration(s.trim()).ok(),
            Kind::Int(i) => u64::try_from(*i).ok().map(Duration::from_secs),
            Kind::UInt(u) => Some(Duration::from_secs(*u)),
            Kind::Float(f) => Duration::try_from_secs_f64(*f).ok(),
            _ => None,
        };
        if parsed.is_none() {
            let got = node.text().unwrap_or_else(|| node.describe().to_string());
            self.error(
                node.pos,
                step,
                format!("invalid duration `{got}` for `{what}`: use seconds or a duration such as `90s`, `10m` or `1h30m`"),
            );
        }
        parsed
    }

    fn value(&mut self, node: &Node, step: Option<&str>) -> Option<Value> {
        Some(match &node.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::UInt(u) => Value::from(*u),
            Kind::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => Value::Number(n),
                None => {
                    self.error(
                        node.pos,
                        step,
                        format!(
                            "`{}` is not a finite number",
                            node.text().unwrap_or_default()
                        ),
                    );
                    return None;
                }
            },
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => {
                let values: Vec<Option<Value>> =
                    items.iter().map(|i| self.value(i, step)).collect();
                Value::Array(values.into_iter().collect::<Option<_>>()?)
            }
            Kind::Map(_) => {
                let entries = self.entries(node, "", step)?;
                let mut map = serde_json::Map::new();
                let mut ok = true;
                for e in entries {
                    match self.value(e.value, step) {
                        Some(v) => {
                            map.insert(e.key, v);
                        }
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Value::Object(map)
            }
        })
    }

    fn pipeline(&mut self, root: &Node) -> Option<Pipeline> {
        if !matches!(root.kind, Kind::Map(_)) {
            self.error(
                Pos {
                    line: root.pos.line.max(1),
                    column: root.pos.column.max(1),
                },
                None,
                format!(
                    "a pipeline file must be a mapping with `name` and `steps`, got {}",
                    root.describe()
                ),
            );
            return None;
        }
        let top = self.fields(root, "", TOP_FIELDS, None)?;
        let start = Pos {
            line: root.pos.line.max(1),
            column: root.pos.column.max(1),
        };

        let name = match top.get("name") {
            Some(n) => self.text(n, "name", None).unwrap_or_default(),
            None => {
                self.error(start, None, "missing `name`");
                String::new()
            }
        };
        let description = top
            .get("description")
            .and_then(|n| self.text(n, "description", None));
        let executor = top.get("executor").and_then(|n| self.executor(n, None));

        let mut params = IndexMap::new();
        if let Some(node) = top.get("params").filter(|n| !matches!(n.kind, Kind::Null)) {
            for e in self.entries(node, "params", None).unwrap_or_default() {
                if let Some(spec) = self.param(&e) {
                    params.insert(e.key, spec);
                }
            }
        }

        let steps = match top.map.get("steps") {
            None => {
                self.error(
                    start,
                    None,
                    "missing `steps`: a pipeline needs at least one step",
                );
                IndexMap::new()
            }
            Some((key_pos, node)) => {
                let steps = self.steps(node, "steps");
                let empty = match &node.kind {
                    Kind::Null => true,
                    Kind::Map(entries) => entries.is_empty(),
                    _ => false,
                };
                if empty {
                    self.error(
                        *key_pos,
                        None,
                        "`steps` is empty: a pipeline needs at least one step",
                    );
                }
                steps
            }
        };
        let finally = match top.get("finally") {
            Some(node) => self.steps(node, "finally"),
            None => IndexMap::new(),
        };

        Some(Pipeline {
            name,
            description,
            source: Some(self.file.clone()),
            params,
            steps,
            finally,
            executor,
            metadata: Default::default(),
        })
    }

    fn param(&mut self, e: &Entry<'_>) -> Option<ParamSpec> {
        let name = &e.key;
        let node = e.value;
        let spec_form = |pairs: &[(Node, Node)]| {
            pairs
                .iter()
                .any(|(k, _)| matches!(&k.kind, Kind::Str(s) if PARAM_FIELDS.contains(&s.as_str())))
        };
        let (ty, default, description) = match &node.kind {
            Kind::Null => {
                self.error(
                    e.key_pos,
                    None,
                    format!("param `{name}` needs a type or a default, such as `{name}: int` or `{name}: 10`"),
                );
                return None;
            }
            Kind::Str(s) if type_named(s).is_some() => (type_named(s), None, None),
            Kind::Map(pairs) if spec_form(pairs) => {
                let what = format!("params.{name}");
                let fields = self.fields(node, &what, PARAM_FIELDS, None)?;
                let ty = match fields.get("type") {
                    Some(t) => Some(self.param_type(t, &format!("{what}.type"), None)?),
                    None => None,
                };
                let default = match fields.get("default") {
                    Some(d) if matches!(d.kind, Kind::Null) => {
                        self.error(
                            d.pos,
                            None,
                            format!("param `{name}` has `default: null`: leave `default` out to make the param required"),
                        );
                        return None;
                    }
                    Some(d) => Some(self.value(d, None)?),
                    None => None,
                };
                let description = match fields.get("description") {
                    Some(d) => self.text(d, &format!("{what}.description"), None),
                    None => None,
                };
                (ty, default, description)
            }
            _ => (None, Some(self.value(node, None)?), None),
        };
        let ty = match (ty, &default) {
            (Some(ty), _) => ty,
            (None, Some(v)) => infer_type(v),
            (None, None) => {
                self.error(
                    e.key_pos,
                    None,
                    format!("param `{name}` needs a `type` or a `default`"),
                );
                return None;
            }
        };
        // A default that does not fit the type is kept as written; `validate` reports it.
        let default = default.map(|v| coerce_value(ty, &v).unwrap_or(v));
        Some(ParamSpec {
            ty,
            default,
            description,
            pos: e.key_pos,
        })
    }

    fn param_type(&mut self, node: &Node, what: &str, step: Option<&str>) -> Option<ParamType> {
        let text = self.text(node, what, step)?;
        let ty = type_named(&text);
        if ty.is_none() {
            let names: Vec<&str> = PARAM_TYPES.iter().map(|t| t.name()).collect();
            self.error(
                node.pos,
                step,
                format!(
                    "unknown type `{text}` for `{what}`: expected one of {}",
                    names.join(", ")
                ),
            );
        }
        ty
    }

    fn steps(&mut self, node: &Node, section: &str) -> IndexMap<String, Step> {
        let mut out = IndexMap::new();
        if matches!(node.kind, Kind::Null) {
            return out;
        }
        for e in self.entries(node, section, None).unwrap_or_default() {
            if e.key.contains('/') {
                self.error(
                    e.key_pos,
                    Some(&e.key),
                    format!(
                        "invalid step name `{}`: use letters, digits, `_` and `-`",
                        e.key
                    ),
                );
            }
            let step = self.step(&e);
            out.insert(e.key, step);
        }
        out
    }

    /// Converts one step. A step with errors is still returned, as complete as it could be made,
    /// so that other steps' references to it do not add errors of their own.
    fn step(&mut self, e: &Entry<'_>) -> Step {
        let name = e.key.as_str();
        let s = Some(name);
        let mut step = Step {
            name: name.to_string(),
            run: Command::Argv(Vec::new()),
            image: None,
            executor: None,
            env: IndexMap::new(),
            workdir: None,
            inputs: Inputs::default(),
            outputs: Outputs::default(),
            after: Vec::new(),
            when: None,
            for_each: None,
            retries: RetryPolicy::default(),
            timeout: None,
            cache: true,
            cache_key: None,
            resources: Resources::default(),
            pos: e.key_pos,
        };
        let fields = match &e.value.kind {
            Kind::Null => None,
            Kind::Map(_) => self.fields(e.value, "", STEP_FIELDS, s),
            _ => {
                self.error(
                    e.value.pos,
                    s,
                    format!(
                        "a step must be a mapping with at least `run`, got {}",
                        e.value.describe()
                    ),
                );
                return step;
            }
        };
        let Some(f) = fields else {
            self.error(e.key_pos, s, "missing `run`");
            return step;
        };

        match f.get("run") {
            None => self.error(e.key_pos, s, "missing `run`"),
            Some(node) => {
                if let Some(run) = self.command(node, s) {
                    step.run = run;
                }
            }
        }
        step.image = f.get("image").and_then(|n| self.text(n, "image", s));
        step.executor = f.get("executor").and_then(|n| self.executor(n, s));
        if let Some(node) = f.get("env") {
            step.env = self.env(node, s);
        }
        step.workdir = f
            .get("workdir")
            .and_then(|n| self.template(n, "workdir", s));
        if let Some(node) = f.get("inputs") {
            step.inputs = self.inputs(node, s);
        }
        if let Some(node) = f.get("outputs") {
            step.outputs = self.outputs(node, s);
        }
        if let Some(node) = f.get("after") {
            step.after = self.after(node, s);
        }
        if let Some(node) = f.get("when") {
            step.when = self.condition(node, s);
        }
        if let Some(node) = f.get("for_each") {
            step.for_each = self.for_each(node, s);
        }
        if let Some(node) = f.get("retries") {
            step.retries = self.retries(node, s);
        }
        step.timeout = f
            .get("timeout")
            .and_then(|n| self.duration(n, "timeout", s));
        if step.timeout == Some(Duration::ZERO) {
            self.error(
                f.get("timeout").map_or(e.key_pos, |n| n.pos),
                s,
                "`timeout` must be more than 0",
            );
        }
        if let Some(node) = f.get("cache") {
            step.cache = self.bool(node, "cache", s).unwrap_or(true);
        }
        if let Some(node) = f.get("resources") {
            step.resources = self.resources(node, s);
        }
        step
    }

    fn command(&mut self, node: &Node, s: Option<&str>) -> Option<Command> {
        match &node.kind {
            Kind::Seq(items) if items.is_empty() => {
                self.error(
                    node.pos,
                    s,
                    "`run` is an empty list: give the program and its arguments",
                );
                None
            }
            Kind::Seq(items) => {
                let mut argv = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if matches!(item.kind, Kind::Seq(_) | Kind::Map(_) | Kind::Null) {
                        self.error(
                            item.pos,
                            s,
                            format!(
                                "`run` argument {} must be text, got {}",
                                i + 1,
                                item.describe()
                            ),
                        );
                        continue;
                    }
                    // A bad argument is kept as its text so the others keep their places.
                    let text = item.text().unwrap_or_default();
                    argv.push(
                        self.template(item, "run", s)
                            .unwrap_or_else(|| Template::literal(&text)),
                    );
                }
                Some(Command::Argv(argv))
            }
            Kind::Str(text) if text.trim().is_empty() => {
                self.error(node.pos, s, "`run` is empty: give a command");
                None
            }
            Kind::Str(_) => self.template(node, "run", s).map(Command::Shell),
            _ => {
                self.error(
                    node.pos,
                    s,
                    format!(
                        "`run` must be a list of arguments or a shell command, got {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn env(&mut self, node: &Node, s: Option<&str>) -> IndexMap<String, Template> {
        let mut out = IndexMap::new();
        for e in self.entries(node, "env", s).unwrap_or_default() {
            let valid = e
                .key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && e.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(
                    e.key_pos,
                    s,
                    format!(
                        "invalid environment variable name `{}`: use letters, digits and `_`",
                        e.key
                    ),
                );
                continue;
            }
            let what = format!("env.{}", e.key);
            if matches!(e.value.kind, Kind::Null) {
                self.error(
                    e.value.pos,
                    s,
                    format!("`{what}` has no value: write `\"\"` for an empty one"),
                );
                continue;
            }
            if let Some(t) = self.template(e.value, &what, s) {
                out.insert(e.key, t);
            }
        }
        out
    }

    fn inputs(&mut self, node: &Node, s: Option<&str>) -> Inputs {
        let mut inputs = Inputs::default();
        let Some(f) = self.fields(node, "inputs", IO_FIELDS, s) else {
            return inputs;
        };
        for (field, target) in [
            ("parameters", &mut inputs.parameters),
            ("artifacts", &mut inputs.artifacts),
        ] {
            let Some(section) = f.get(field) else {
                continue;
            };
            let what = format!("inputs.{field}");
            for e in self.entries(section, &what, s).unwrap_or_default() {
                if let Some(t) = self.template(e.value, &format!("{what}.{}", e.key), s) {
                    target.insert(e.key, t);
                }
            }
        }
        inputs
    }

    /// Output declarations: `{name: type}` or a list of names (parameters are then strings and
    /// artifacts of the generic type `Artifact`).
    fn outputs(&mut self, node: &Node, s: Option<&str>) -> Outputs {
        let mut outputs = Outputs::default();
        let Some(f) = self.fields(node, "outputs", IO_FIELDS, s) else {
            return outputs;
        };
        if let Some(section) = f.get("parameters") {
            for (name, ty) in self.declarations(section, "outputs.parameters", s) {
                let ty = match ty {
                    None => Some(ParamType::String),
                    Some(t) => self.param_type(t, &format!("outputs.parameters.{name}"), s),
                };
                if let Some(ty) = ty {
                    outputs.parameters.insert(name, ty);
                }
            }
        }
        if let Some(section) = f.get("artifacts") {
            for (name, ty) in self.declarations(section, "outputs.artifacts", s) {
                let ty = match ty {
                    None => Some("Artifact".to_string()),
                    Some(t) => self.text(t, &format!("outputs.artifacts.{name}"), s),
                };
                if let Some(ty) = ty {
                    outputs.artifacts.insert(name, ty);
                }
            }
        }
        outputs
    }

    /// Names with an optional type node: from a mapping, or from a list of names.
    fn declarations<'y>(
        &mut self,
        node: &'y Node,
        what: &str,
        s: Option<&str>,
    ) -> Vec<(String, Option<&'y Node>)> {
        match &node.kind {
            Kind::Seq(items) => {
                let mut out: Vec<(String, Option<&Node>)> = Vec::new();
                for item in items {
                    let Some(name) = self.text(item, what, s) else {
                        continue;
                    };
                    if out.iter().any(|(n, _)| *n == name) {
                        self.error(item.pos, s, format!("duplicate name `{name}` in `{what}`"));
                        continue;
                    }
                    out.push((name, None));
                }
                out
            }
            _ => self
                .entries(node, what, s)
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    let ty = (!matches!(e.value.kind, Kind::Null)).then_some(e.value);
                    (e.key, ty)
                })
                .collect(),
        }
    }

    fn after(&mut self, node: &Node, s: Option<&str>) -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|i| self.text(i, "after", s))
                .collect(),
            _ => self.text(node, "after", s).into_iter().collect(),
        }
    }

    fn condition(&mut self, node: &Node, s: Option<&str>) -> Option<Expr> {
        let text = self.text(node, "when", s)?;
        match Expr::parse(&text) {
            Ok(expr) => Some(expr.with_pos(node.pos)),
            Err(e) => {
                self.error(
                    node.pos_at(e.offset),
                    s,
                    format!("invalid condition in `when`: {}", e.message),
                );
                None
            }
        }
    }

    fn for_each(&mut self, node: &Node, s: Option<&str>) -> Option<ForEach> {
        let (items_node, parallelism) = match &node.kind {
            Kind::Map(_) => {
                let f = self.fields(node, "for_each", FOR_EACH_FIELDS, s)?;
                let parallelism = match f.get("parallelism") {
                    Some(p) => match self.uint(p, "for_each.parallelism", s) {
                        Some(0) => {
                            self.error(p.pos, s, "`for_each.parallelism` must be at least 1");
                            None
                        }
                        other => other,
                    },
                    None => None,
                };
                let Some(items) = f.get("items") else {
                    self.error(
                        node.pos,
                        s,
                        "`for_each` needs `items`: a list, or a reference to one",
                    );
                    return None;
                };
                (items, parallelism)
            }
            _ => (node, None),
        };
        let items = match &items_node.kind {
            Kind::Seq(_) => match self.value(items_node, s)? {
                Value::Array(values) => ForEachItems::Literal(values),
                _ => return None,
            },
            Kind::Str(_) => ForEachItems::Ref(self.template(items_node, "for_each", s)?),
            _ => {
                self.error(
                    items_node.pos,
                    s,
                    format!(
                        "`for_each` needs a list or a reference to one, such as `{{{{ params.xs }}}}`, got {}",
                        items_node.describe()
                    ),
                );
                return None;
            }
        };
        Some(ForEach { items, parallelism })
    }

    fn retries(&mut self, node: &Node, s: Option<&str>) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if !matches!(node.kind, Kind::Map(_)) {
            if let Some(limit) = self.uint(node, "retries", s) {
                policy.limit = limit;
            }
            return policy;
        }
        let Some(f) = self.fields(node, "retries", RETRY_FIELDS, s) else {
            return policy;
        };
        if let Some(n) = f.get("limit")
            && let Some(limit) = self.uint(n, "retries.limit", s)
        {
            policy.limit = limit;
        }
        if let Some(n) = f.get("backoff")
            && let Some(backoff) = self.duration(n, "retries.backoff", s)
        {
            policy.backoff = backoff;
        }
        if let Some(n) = f.get("factor")
            && let Some(factor) = self.number(n, "retries.factor", s)
        {
            if factor < 1.0 {
                self.error(
                    n.pos,
                    s,
                    format!("`retries.factor` must be at least 1, got {factor}"),
                );
            } else {
                policy.factor = factor;
            }
        }
        if let Some(n) = f.get("max_backoff") {
            policy.max_backoff = self.duration(n, "retries.max_backoff", s);
        }
        policy
    }

    fn resources(&mut self, node: &Node, s: Option<&str>) -> Resources {
        let mut res = Resources::default();
        let Some(f) = self.fields(node, "resources", RESOURCE_FIELDS, s) else {
            return res;
        };
        if let Some(n) = f.get("cpu") {
            res.cpu = parse_cpu(n);
            if res.cpu.is_none() {
                let got = n.text().unwrap_or_else(|| n.describe().to_string());
                self.error(
                    n.pos,
                    s,
                    format!("invalid `resources.cpu` `{got}`: use a number of cores (`2`, `0.5`) or millicores (`500m`)"),
                );
            }
        }
        if let Some(n) = f.get("memory") {
            res.memory = parse_memory(n);
            if res.memory.is_none() {
                let got = n.text().unwrap_or_else(|| n.describe().to_string());
                self.error(
                    n.pos,
                    s,
                    format!(
                        "invalid `resources.memory` `{got}`: use bytes or a size such as `512Mi`, `2Gi`, `1G` or `100M`"
                    ),
                );
            }
        }
        if let Some(n) = f.get("gpu") {
            res.gpu = self.uint(n, "resources.gpu", s);
        }
        res
    }
}

fn type_named(name: &str) -> Option<ParamType> {
    PARAM_TYPES.iter().copied().find(|t| t.name() == name)
}

fn infer_type(v: &Value) -> ParamType {
    match v {
        Value::Bool(_) => ParamType::Bool,
        Value::Number(n) if n.is_f64() => ParamType::Float,
        Value::Number(_) => ParamType::Int,
        Value::Array(_) => ParamType::List,
        Value::Object(_) => ParamType::Map,
        Value::String(_) | Value::Null => ParamType::String,
    }
}

/// CPU cores: a positive number, or millicores such as `500m`.
fn parse_cpu(n: &Node) -> Option<f64> {
    let cores = match &n.kind {
        Kind::Int(i) => *i as f64,
        Kind::UInt(u) => *u as f64,
        Kind::Float(f) => *f,
        Kind::Str(s) => {
            let t = s.trim();
            match t.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
                None => t.parse::<f64>().ok()?,
            }
        }
        _ => return None,
    };
    (cores.is_finite() && cores > 0.0).then_some(cores)
}

/// Memory in bytes: a number, or a size with a decimal (`k`, `M`, `G`, `T`, `P`, `E`) or binary
/// (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) suffix, as Kubernetes writes them.
fn parse_memory(n: &Node) -> Option<u64> {
    let text = match &n.kind {
        Kind::Int(i) => return u64::try_from(*i).ok(),
        Kind::UInt(u) => return Some(*u),
        Kind::Str(s) => s.trim(),
        _ => return None,
    };
    const UNITS: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
        .unwrap_or((text, 1));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(unit);
    }
    let bytes = number.parse::<f64>().ok()? * unit as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then(|| bytes.round() as u64)
}
