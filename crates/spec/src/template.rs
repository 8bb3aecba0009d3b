//! Templates: strings with `{{ reference }}` placeholders.
//!
//! A template is parsed once, when the pipeline is loaded, so that every reference is known before
//! anything runs (validation, dependency inference and cache keys all read the parsed form).
//! Rendering is pure: the caller supplies the value of each reference.
//!
//! A placeholder may end in filters that change how its value is written: `{{ inputs.x | json }}`
//! writes the value as JSON (a string quoted and escaped), so that a template can build a JSON
//! document; `{{ run.status | upper }}` writes text in upper case; `{{ inputs.data | artifacts }}`
//! describes an artifact input as a list of `{"uri", "metadata"}` objects (one per artifact, so a
//! fan-in lists every iteration's). Filters apply left to right.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Pos, Value};

/// What a placeholder refers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// `params.NAME`
    Param(String),
    /// `steps.STEP.outputs.NAME`: a parameter value, or the path of an artifact. For a `for_each`
    /// step this is the list of the iterations' values (fan-in).
    StepOutput { step: String, output: String },
    /// `outputs.NAME`: the path where this step writes an output.
    Output(String),
    /// `inputs.NAME`: a declared input of this step.
    Input(String),
    /// `item`, `item.KEY`...: the current `for_each` element, or a field of it.
    Item(Vec<String>),
    /// `run.status` (only in `finally` steps), `run.id`, `run.pipeline`.
    Run(String),
    /// `task.name`, `task.attempt`, `task.index`.
    Task(String),
    /// `one_of(steps.A.outputs.X, steps.B.outputs.Y, ...)`: the output of the first of these
    /// steps that succeeded, for steps of which only one runs (the branches of a condition). The
    /// step waits for all of them and is skipped only when none succeeded. Each alternative is a
    /// [`Ref::StepOutput`].
    OneOf(Vec<Ref>),
    /// `this_iteration(steps.A.outputs.X)`: in a `for_each` step, the output of the iteration of
    /// step `A` (a `for_each` step over the same items) with the same index, rather than the list
    /// of every iteration's. The body of a loop passes data this way.
    ThisIteration { step: String, output: String },
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Param(n) => write!(f, "params.{n}"),
            Ref::StepOutput { step, output } => write!(f, "steps.{step}.outputs.{output}"),
            Ref::Output(n) => write!(f, "outputs.{n}"),
            Ref::Input(n) => write!(f, "inputs.{n}"),
            Ref::Item(path) if path.is_empty() => f.write_str("item"),
            Ref::Item(path) => write!(f, "item.{}", path.join(".")),
            Ref::Run(n) => write!(f, "run.{n}"),
            Ref::Task(n) => write!(f, "task.{n}"),
            Ref::OneOf(alts) => {
                f.write_str("one_of(")?;
                for (i, r) in alts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{r}")?;
                }
                f.write_str(")")
            }
            Ref::ThisIteration { step, output } => {
                write!(f, "this_iteration(steps.{step}.outputs.{output})")
            }
        }
    }
}

/// How a placeholder's value is written, after `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `json`: the value as compact JSON (strings quoted and escaped).
    Json,
    /// `upper`: the text in upper case.
    Upper,
    /// `artifacts`: an artifact reference as a list of `{"uri": PATH, "metadata": {...}}`
    /// objects, one per artifact (a fan-in has one per iteration). Only the caller of
    /// [`Template::render_with`] knows artifact metadata, so it supplies this value; the filter
    /// must come first.
    Artifacts,
}

impl Filter {
    fn parse(name: &str) -> Option<Filter> {
        match name {
            "json" => Some(Filter::Json),
            "upper" => Some(Filter::Upper),
            "artifacts" => Some(Filter::Artifacts),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::Json => "json",
            Filter::Upper => "upper",
            Filter::Artifacts => "artifacts",
        }
    }

    fn apply(self, v: Value) -> Value {
        match self {
            Filter::Json => Value::String(v.to_string()),
            Filter::Upper => Value::String(value_to_text(&v).to_uppercase()),
            Filter::Artifacts => v,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// `offset` is the byte offset of the `{{` in the template source, for error messages.
    /// `filters` (usually none) change how the value is written.
    Ref {
        r: Ref,
        offset: usize,
        filters: Vec<Filter>,
    },
}

/// A parsed template. It serialises as its source text.
///
/// `pos` is where the template appears in its pipeline file (set by the front end, for error
/// messages); it is not serialised and takes no part in equality.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    pos: Pos,
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// Byte offset in the template source.
    pub offset: usize,
    pub message: String,
}

const RUN_FIELDS: &[&str] = &["status", "id", "pipeline"];
const TASK_FIELDS: &[&str] = &["name", "attempt", "index"];

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut base = 0;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(TemplateError {
                    offset: base + start,
                    message: "unclosed `{{`: expected `}}`".to_string(),
                });
            };
            let mut pieces = after[..end].split('|');
            let inner = pieces.next().unwrap_or_default().trim();
            let r = parse_ref(inner).map_err(|message| TemplateError {
                offset: base + start,
                message,
            })?;
            let filters = pieces
                .map(|f| {
                    Filter::parse(f.trim()).ok_or_else(|| TemplateError {
                        offset: base + start,
                        message: format!(
                            "unknown filter `{}` in `{{{{{}}}}}`: expected json, upper or artifacts",
                            f.trim(),
                            &after[..end]
                        ),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            parts.push(Part::Ref {
                r,
                offset: base + start,
                filters,
            });
            let consumed = start + 2 + end + 2;
            base += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
            pos: Pos::default(),
        })
    }

    /// A template that is only literal text.
    pub fn literal(text: &str) -> Template {
        let parts = if text.is_empty() {
            vec![]
        } else {
            vec![Part::Text(text.to_string())]
        };
        Template {
            source: text.to_string(),
            parts,
            pos: Pos::default(),
        }
    }

    /// Builds a template from parts (for front ends such as the KFP importer, whose placeholders
    /// have another syntax). The source text is the native rendering of the parts.
    pub fn from_parts(parts: Vec<Part>) -> Template {
        let mut source = String::new();
        let mut fixed = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Part::Text(t) => {
                    source.push_str(&t);
                    fixed.push(Part::Text(t));
                }
                Part::Ref { r, filters, .. } => {
                    let offset = source.len();
                    let shown: String =
                        filters.iter().map(|f| format!(" | {}", f.name())).collect();
                    source.push_str(&format!("{{{{ {r}{shown} }}}}"));
                    fixed.push(Part::Ref { r, offset, filters });
                }
            }
        }
        Template {
            source,
            parts: fixed,
            pos: Pos::default(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn with_pos(mut self, pos: Pos) -> Template {
        self.pos = pos;
        self
    }

    /// Where the template appears in its file (line 0 when unknown).
    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref { r, .. } => Some(r),
            Part::Text(_) => None,
        })
    }

    /// The reference, when the template is exactly one placeholder without filters and nothing
    /// else. Such a template keeps the referenced value's type (a list stays a list).
    pub fn single_ref(&self) -> Option<&Ref> {
        match self.parts.as_slice() {
            [Part::Ref { r, filters, .. }] if filters.is_empty() => Some(r),
            _ => None,
        }
    }

    /// Renders the template to text. Strings render raw, other values as compact JSON.
    pub fn render<E>(&self, mut lookup: impl FnMut(&Ref) -> Result<Value, E>) -> Result<String, E> {
        self.render_with(|r, _| lookup(r))
    }

    /// Like [`Template::render`], with a lookup that is also told whether the placeholder asks
    /// for the artifact description (the `artifacts` filter) rather than the value.
    pub fn render_with<E>(
        &self,
        mut lookup: impl FnMut(&Ref, bool) -> Result<Value, E>,
    ) -> Result<String, E> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Ref { r, filters, .. } => {
                    let described = filters.first() == Some(&Filter::Artifacts);
                    let v = filters
                        .iter()
                        .try_fold(lookup(r, described)?, |v, f| Ok(f.apply(v)))?;
                    out.push_str(&value_to_text(&v));
                }
            }
        }
        Ok(out)
    }

    /// The references that ask for the artifact description (`| artifacts`).
    pub fn described_refs(&self) -> impl Iterator<Item = &Ref> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref { r, filters, .. } if filters.first() == Some(&Filter::Artifacts) => Some(r),
            _ => None,
        })
    }

    /// Evaluates the template to a value: a single placeholder keeps the value's type, anything
    /// else renders to a string.
    pub fn evaluate<E>(
        &self,
        mut lookup: impl FnMut(&Ref) -> Result<Value, E>,
    ) -> Result<Value, E> {
        match self.single_ref() {
            Some(r) => lookup(r),
            None => self.render(lookup).map(Value::String),
        }
    }
}

/// How a value appears in a command line: strings raw, everything else as compact JSON.
pub fn value_to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Ref {
    /// Parses the text of a reference, without the braces: `params.rows`, `item.lr`. Conditions
    /// use it for their bare and braced operands, so both syntaxes accept the same references.
    pub fn parse(text: &str) -> Result<Ref, String> {
        parse_ref(text.trim())
    }
}

/// Whether `s` can be a name in a reference: letters, digits, `_` and `-`, not starting with `-`.
pub fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !s.starts_with('-')
}

fn parse_ref(inner: &str) -> Result<Ref, String> {
    if inner.is_empty() {
        return Err("empty placeholder `{{ }}`".to_string());
    }
    if let Some(list) = inner
        .strip_prefix("one_of(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let alts = list
            .split(',')
            .map(|a| match parse_ref(a.trim())? {
                r @ Ref::StepOutput { .. } => Ok(r),
                _ => Err(format!(
                    "invalid reference `{inner}`: every choice of one_of is a `steps.STEP.outputs.NAME`"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if alts.len() < 2 {
            return Err(format!(
                "invalid reference `{inner}`: one_of needs at least two choices"
            ));
        }
        return Ok(Ref::OneOf(alts));
    }
    if let Some(one) = inner
        .strip_prefix("this_iteration(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match parse_ref(one.trim())? {
            Ref::StepOutput { step, output } => Ok(Ref::ThisIteration { step, output }),
            _ => Err(format!(
                "invalid reference `{inner}`: this_iteration takes a `steps.STEP.outputs.NAME`"
            )),
        };
    }
    let segs: Vec<&str> = inner.split('.').map(str::trim).collect();
    // A step name may have `/`-separated parts (the flattened sub-DAGs of an imported pipeline).
    let is_step = |i: usize| i == 1 && segs[0] == "steps";
    let bad = segs.iter().enumerate().find(|(i, s)| {
        if is_step(*i) {
            !crate::validate::valid_step_name(s)
        } else {
            !is_ident(s)
        }
    });
    if let Some((_, bad)) = bad {
        return Err(format!(
            "invalid reference `{inner}`: `{bad}` is not a name"
        ));
    }
    let owned = |s: &str| s.to_string();
    match segs.as_slice() {
        ["params", name] => Ok(Ref::Param(owned(name))),
        ["steps", step, "outputs", output] => Ok(Ref::StepOutput {
            step: owned(step),
            output: owned(output),
        }),
        ["outputs", name] => Ok(Ref::Output(owned(name))),
        ["inputs", name] => Ok(Ref::Input(owned(name))),
        ["item", path @ ..] => Ok(Ref::Item(path.iter().map(|s| owned(s)).collect())),
        ["run", field] if RUN_FIELDS.contains(field) => Ok(Ref::Run(owned(field))),
        ["task", field] if TASK_FIELDS.contains(field) => Ok(Ref::Task(owned(field))),
        ["run", field] => Err(format!(
            "unknown run field `{field}` in `{inner}`: expected one of {}",
            RUN_FIELDS.join(", ")
        )),
        ["task", field] => Err(format!(
            "unknown task field `{field}` in `{inner}`: expected one of {}",
            TASK_FIELDS.join(", ")
        )),
        ["steps", ..] => Err(format!(
            "invalid reference `{inner}`: expected `steps.STEP.outputs.NAME`"
        )),
        _ => Err(format!(
            "unknown reference `{inner}`: expected params.NAME, steps.STEP.outputs.NAME, \
             one_of(steps...), this_iteration(steps...), outputs.NAME, inputs.NAME, item, run.FIELD or task.FIELD"
        )),
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> Vec<String> {
        Template::parse(src)
            .unwrap()
            .refs()
            .map(|r| r.to_string())
            .collect()
    }

    #[test]
    fn parses_every_reference_kind() {
        assert_eq!(
            refs(
                "a {{ params.rows }} {{steps.train.outputs.model}} {{ outputs.x }} {{ item }} {{ item.lr }} {{ run.status }}"
            ),
            [
                "params.rows",
                "steps.train.outputs.model",
                "outputs.x",
                "item",
                "item.lr",
                "run.status"
            ]
        );
    }

    #[test]
    fn rejects_bad_references_with_offset() {
        let err = Template::parse("echo {{ steps.a.b }}").unwrap_err();
        assert_eq!(err.offset, 5);
        assert!(
            err.message.contains("steps.STEP.outputs.NAME"),
            "{}",
            err.message
        );
        let err = Template::parse("x {{ params.a").unwrap_err();
        assert!(err.message.contains("unclosed"));
        assert!(Template::parse("{{ run.bogus }}").is_err());
        assert!(Template::parse("{{ }}").is_err());
    }

    #[test]
    fn step_references_may_name_flattened_sub_dag_steps() {
        assert_eq!(
            refs("{{ steps.loop/square.outputs.Output }}"),
            ["steps.loop/square.outputs.Output"]
        );
        assert!(Template::parse("{{ steps.loop//square.outputs.Output }}").is_err());
        assert!(Template::parse("{{ params.a/b }}").is_err());
    }

    #[test]
    fn renders_values_as_text() {
        let t = Template::parse("--lr={{ item }} --xs {{ params.xs }}").unwrap();
        let out = t
            .render(|r| -> Result<Value, ()> {
                Ok(match r {
                    Ref::Item(_) => serde_json::json!(0.5),
                    _ => serde_json::json!([1, 2]),
                })
            })
            .unwrap();
        assert_eq!(out, "--lr=0.5 --xs [1,2]");
    }

    #[test]
    fn single_ref_keeps_type() {
        let t = Template::parse("{{ params.xs }}").unwrap();
        let v = t
            .evaluate(|_| -> Result<Value, ()> { Ok(serde_json::json!([1, 2])) })
            .unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
        let t = Template::parse(" {{ params.xs }}").unwrap();
        assert!(t.single_ref().is_none());
    }

    #[test]
    fn from_parts_round_trips() {
        let t = Template::from_parts(vec![
            Part::Text("--in=".into()),
            Part::Ref {
                r: Ref::Input("x".into()),
                offset: 0,
                filters: vec![],
            },
            Part::Text(" ".into()),
            Part::Ref {
                r: Ref::Input("y".into()),
                offset: 0,
                filters: vec![Filter::Json],
            },
        ]);
        assert_eq!(t.source(), "--in={{ inputs.x }} {{ inputs.y | json }}");
        assert_eq!(Template::parse(t.source()).unwrap().parts(), t.parts());
    }

    #[test]
    fn the_artifacts_filter_asks_the_lookup_for_the_description() {
        let t =
            Template::parse(r#"{"a": {{ inputs.d | artifacts | json }}, "p": "{{ inputs.d }}"}"#)
                .unwrap();
        assert_eq!(t.described_refs().count(), 1);
        let out = t
            .render_with(|_, described| -> Result<Value, ()> {
                Ok(if described {
                    serde_json::json!([{"uri": "/p", "metadata": {"rows": 4}}])
                } else {
                    serde_json::json!("/p")
                })
            })
            .unwrap();
        assert_eq!(
            out,
            r#"{"a": [{"uri":"/p","metadata":{"rows":4}}], "p": "/p"}"#
        );
    }

    #[test]
    fn filters_write_json_and_upper_case() {
        let t = Template::parse(r#"{"a": {{ inputs.a | json }}, "s": "{{ run.status|upper }}"}"#)
            .unwrap();
        let out = t
            .render(|r| -> Result<Value, ()> {
                Ok(match r {
                    Ref::Input(_) => serde_json::json!("say \"hi\""),
                    _ => serde_json::json!("failed"),
                })
            })
            .unwrap();
        assert_eq!(out, r#"{"a": "say \"hi\"", "s": "FAILED"}"#);
        // A filtered placeholder renders to text, even alone.
        let t = Template::parse("{{ params.xs | json }}").unwrap();
        assert!(t.single_ref().is_none());
        let v = t
            .evaluate(|_| -> Result<Value, ()> { Ok(serde_json::json!(["a"])) })
            .unwrap();
        assert_eq!(v, serde_json::json!(r#"["a"]"#));
        let err = Template::parse("x {{ params.a | yaml }}").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(
            err.message.contains("unknown filter `yaml`"),
            "{}",
            err.message
        );
    }
}
