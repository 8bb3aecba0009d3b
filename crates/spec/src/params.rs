//! Parameter values: binding `-p name=value` overrides to a pipeline's declared parameters, and
//! reading a value (a default, an override, an output parameter file) as a declared type.
//!
//! Both go through [`coerce_value`], so a value means the same thing wherever it comes from: `0.93`
//! typed on the command line, written in the YAML or written by a step to its output file.

use indexmap::IndexMap;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{ParamType, Pipeline, Value};

/// Reads `v` as a value of type `ty`.
///
/// Text is parsed: an output parameter file's content (`"0.93\n"`) or a `-p` override arrives as
/// [`Value::String`]. `int` is a 64-bit integer; `float` any finite number; `bool` accepts
/// `true`/`false`/`1`/`0`/`yes`/`no`; `list` and `map` accept JSON or YAML flow syntax
/// (`[0.1, 0.5]`, `{a: 1}`); `string` keeps the text, less one trailing newline, and takes numbers
/// and bools as their text.
///
/// The error reads "expects int, got `abc`"; callers put the name of the value in front.
pub fn coerce_value(ty: ParamType, v: &Value) -> Result<Value, String> {
    let fail = || format!("expects {ty}, got `{}`", shown(v));
    match (ty, v) {
        (ParamType::String, Value::String(s)) => {
            let trimmed = s
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t));
            Ok(Value::String(trimmed.unwrap_or(s).to_string()))
        }
        (ParamType::String, Value::Number(_) | Value::Bool(_)) => Ok(Value::String(v.to_string())),
        (ParamType::Int, Value::Number(n)) => n.as_i64().map(Value::from).ok_or_else(fail),
        (ParamType::Int, Value::String(s)) => {
            s.trim().parse::<i64>().map(Value::from).map_err(|_| fail())
        }
        (ParamType::Float, Value::Number(n)) => {
            // An integral default such as `default: 1` for a float is kept as the float 1.0, so
            // that every value of a float parameter has one JSON representation (cache keys).
            n.as_f64()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(fail)
        }
        (ParamType::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(fail),
        (ParamType::Bool, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (ParamType::Bool, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Value::Bool(true)),
            "false" | "0" | "no" => Ok(Value::Bool(false)),
            _ => Err(fail()),
        },
        (ParamType::List, Value::Array(_)) | (ParamType::Map, Value::Object(_)) => Ok(v.clone()),
        (ParamType::List | ParamType::Map, Value::String(s)) => match parse_structured(s) {
            Some(parsed @ Value::Array(_)) if ty == ParamType::List => Ok(parsed),
            Some(parsed @ Value::Object(_)) if ty == ParamType::Map => Ok(parsed),
            _ => Err(fail()),
        },
        _ => Err(fail()),
    }
}

/// Parses JSON, or else YAML (which covers flow syntax such as `[a, b]` with unquoted strings).
fn parse_structured(text: &str) -> Option<Value> {
    let text = text.trim();
    serde_json::from_str::<Value>(text).ok().or_else(|| {
        // YAML 1.2 booleans only: `[x, y, n]` is a list of letters, not of YAML 1.1 bools.
        let mut options = serde_saphyr::options::Options::default();
        options.strict_booleans = true;
        serde_saphyr::from_str_with_options::<Value>(text, options).ok()
    })
}

/// A value as it appears in an error message: text raw, the rest as JSON, cut when long.
fn shown(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.trim_end().to_string(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// Binds a pipeline's parameters: each declared default, replaced by the `-p NAME=VALUE`
/// overrides (`(NAME, VALUE)` pairs, later ones win), each parsed by the declared type.
///
/// Reports every unknown name, every value of the wrong type and every required parameter left
/// without a value, not only the first. The result keeps the declaration order.
pub fn bind_params(
    p: &Pipeline,
    overrides: &[(String, String)],
) -> Result<IndexMap<String, Value>, Diagnostics> {
    let file = p.source.clone().unwrap_or_else(|| p.name.clone());
    let mut diags = Vec::new();
    let mut error = |pos, message: String| {
        diags.push(Diagnostic {
            file: file.clone(),
            pos,
            step: None,
            message,
        });
    };

    let mut given: IndexMap<&str, &str> = IndexMap::new();
    for (name, value) in overrides {
        if p.params.contains_key(name) {
            given.insert(name, value);
            continue;
        }
        let known = if p.params.is_empty() {
            "the pipeline declares no params".to_string()
        } else {
            format!(
                "known params: {}",
                p.params
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        error(
            Default::default(),
            format!("unknown param `{name}` (given as -p {name}={value}): {known}"),
        );
    }

    let mut bound = IndexMap::new();
    for (name, spec) in &p.params {
        let (value, origin) = match (given.get(name.as_str()), &spec.default) {
            (Some(text), _) => (
                Value::String((*text).to_string()),
                format!(" (given as -p {name}={text})"),
            ),
            (None, Some(default)) => (default.clone(), " (its default)".to_string()),
            (None, None) => {
                error(
                    spec.pos,
                    format!(
                        "missing required param `{name}` ({}): pass -p {name}=VALUE",
                        spec.ty
                    ),
                );
                continue;
            }
        };
        match coerce_value(spec.ty, &value) {
            Ok(v) => {
                bound.insert(name.clone(), v);
            }
            Err(e) => error(spec.pos, format!("param `{name}` {e}{origin}")),
        }
    }

    if diags.is_empty() {
        Ok(bound)
    } else {
        diags.sort_by_key(|d| (d.pos.line == 0, d.pos.line, d.pos.column));
        Err(Diagnostics(diags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParamSpec, Pos};
    use serde_json::json;

    fn coerce(ty: ParamType, v: Value) -> Result<Value, String> {
        coerce_value(ty, &v)
    }

    #[test]
    fn output_file_text_is_parsed_by_type() {
        assert_eq!(coerce(ParamType::Float, json!("0.93\n")), Ok(json!(0.93)));
        assert_eq!(coerce(ParamType::Int, json!(" 42\n")), Ok(json!(42)));
        assert_eq!(
            coerce(ParamType::String, json!("best\n")),
            Ok(json!("best"))
        );
        assert_eq!(
            coerce(ParamType::String, json!("two\n\n")),
            Ok(json!("two\n"))
        );
        assert_eq!(
            coerce(ParamType::String, json!("crlf\r\n")),
            Ok(json!("crlf"))
        );
        assert_eq!(
            coerce(ParamType::List, json!("[1, 2]\n")),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            coerce(ParamType::Map, json!("{\"a\": 1}")),
            Ok(json!({"a": 1}))
        );
    }

    #[test]
    fn bools_accept_common_spellings() {
        for (text, want) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("False", false),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(
                coerce(ParamType::Bool, json!(text)),
                Ok(json!(want)),
                "{text}"
            );
        }
        assert_eq!(
            coerce(ParamType::Bool, json!("maybe")),
            Err("expects bool, got `maybe`".into())
        );
    }

    #[test]
    fn lists_and_maps_accept_yaml_flow_syntax() {
        assert_eq!(
            coerce(ParamType::List, json!("[0.1, 0.5]")),
            Ok(json!([0.1, 0.5]))
        );
        assert_eq!(
            coerce(ParamType::List, json!("[a, b]")),
            Ok(json!(["a", "b"]))
        );
        assert_eq!(
            coerce(ParamType::List, json!("[x, y, no]")),
            Ok(json!(["x", "y", "no"]))
        );
        assert_eq!(
            coerce(ParamType::Map, json!("{depth: 3}")),
            Ok(json!({"depth": 3}))
        );
        assert_eq!(
            coerce(ParamType::List, json!("abc")),
            Err("expects list, got `abc`".into())
        );
        assert_eq!(
            coerce(ParamType::Map, json!("[1]")),
            Err("expects map, got `[1]`".into())
        );
    }

    #[test]
    fn numbers_keep_their_declared_type() {
        assert_eq!(coerce(ParamType::Float, json!(1)), Ok(json!(1.0)));
        assert_eq!(
            coerce(ParamType::Int, json!(1.5)),
            Err("expects int, got `1.5`".into())
        );
        assert_eq!(
            coerce(ParamType::Int, json!("abc")),
            Err("expects int, got `abc`".into())
        );
        assert_eq!(
            coerce(ParamType::Float, json!("nan")),
            Err("expects float, got `nan`".into())
        );
        assert_eq!(coerce(ParamType::String, json!(3)), Ok(json!("3")));
        assert_eq!(
            coerce(ParamType::String, json!([3])),
            Err("expects string, got `[3]`".into())
        );
    }

    fn pipeline() -> Pipeline {
        let spec = |ty, default: Option<Value>, line| ParamSpec {
            ty,
            default,
            description: None,
            pos: Pos { line, column: 3 },
        };
        let mut params = IndexMap::new();
        params.insert(
            "rows".to_string(),
            spec(ParamType::Int, Some(json!(2000)), 3),
        );
        params.insert("lr".to_string(), spec(ParamType::Float, None, 4));
        params.insert(
            "tags".to_string(),
            spec(ParamType::List, Some(json!(["a"])), 5),
        );
        params.insert("seed".to_string(), spec(ParamType::Int, None, 6));
        Pipeline {
            name: "p".into(),
            description: None,
            source: Some("p.yaml".into()),
            params,
            steps: IndexMap::new(),
            finally: IndexMap::new(),
            executor: None,
            metadata: Default::default(),
        }
    }

    fn ov(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn binds_defaults_and_overrides_in_declaration_order() {
        let bound = bind_params(
            &pipeline(),
            &ov(&[
                ("seed", "7"),
                ("lr", "0.1"),
                ("tags", "[x, y]"),
                ("seed", "8"),
            ]),
        )
        .unwrap();
        let got: Vec<(&str, Value)> = bound.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("rows", json!(2000)),
                ("lr", json!(0.1)),
                ("tags", json!(["x", "y"])),
                ("seed", json!(8))
            ]
        );
    }

    #[test]
    fn reports_every_problem() {
        let err = bind_params(&pipeline(), &ov(&[("rows", "abc"), ("bogus", "1")])).unwrap_err();
        let lines: Vec<String> = err.0.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "p.yaml:3:3: param `rows` expects int, got `abc` (given as -p rows=abc)",
                "p.yaml:4:3: missing required param `lr` (float): pass -p lr=VALUE",
                "p.yaml:6:3: missing required param `seed` (int): pass -p seed=VALUE",
                "p.yaml: unknown param `bogus` (given as -p bogus=1): known params: rows, lr, tags, seed",
            ]
        );
    }

    #[test]
    fn reports_a_bad_default() {
        let mut p = pipeline();
        p.params.get_mut("rows").unwrap().default = Some(json!("many"));
        let err = bind_params(&p, &ov(&[("lr", "1"), ("seed", "1")])).unwrap_err();
        assert_eq!(
            err.0[0].message,
            "param `rows` expects int, got `many` (its default)"
        );
    }
}
