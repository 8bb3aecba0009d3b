//! The native YAML front end, end to end: fixtures in, a model or the exact diagnostics out.

use std::time::Duration;

use capstan_spec::expr::Node;
use capstan_spec::template::Ref;
use capstan_spec::{Command, ForEachItems, ParamType, Pipeline, Pos, parse_native};
use serde_json::json;

fn fixture_errors(name: &str, src: &str) -> Vec<String> {
    match parse_native(src, name) {
        Ok(_) => panic!("{name} parsed without errors"),
        Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
    }
}

/// Checks that a bad fixture reports exactly these diagnostics, in this order.
macro_rules! check_bad {
    ($test:ident, $file:literal, [$($line:expr),* $(,)?]) => {
        #[test]
        fn $test() {
            let name = concat!("bad/", $file);
            let got = fixture_errors(name, include_str!(concat!("fixtures/bad/", $file)));
            let want: Vec<String> = vec![$(format!("{name}:{}", $line)),*];
            assert_eq!(got, want, "\ngot:\n{}", got.join("\n"));
        }
    };
}

check_bad!(
    malformed_yaml_reports_the_parser_position,
    "malformed.yaml",
    ["4:3: invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'",]
);

check_bad!(
    unknown_fields_are_named_with_the_allowed_ones,
    "unknown_field.yaml",
    [
        "2:1: unknown field `stpes`: expected one of name, description, executor, params, steps, finally",
        "6:5: step `train`: unknown field `retry`: expected one of run, image, executor, env, workdir, inputs, \
     outputs, after, when, for_each, retries, timeout, cache, resources",
        "7:15: step `train`: unknown field `artifact` in `outputs`: expected one of parameters, artifacts",
        "8:25: step `train`: unknown field `delay` in `retries`: expected one of limit, backoff, factor, max_backoff",
    ]
);

check_bad!(
    executor_names_are_checked_where_they_are_written,
    "executor.yaml",
    [
        "2:11: unknown executor `docker`: expected one of local, container, ray, kubernetes",
        "6:15: step `a`: unknown executor `kubernets`: expected one of local, container, ray, kubernetes",
        "9:15: step `b`: `executor` must be text, got a list",
    ]
);

check_bad!(
    param_types_are_checked,
    "param_type.yaml",
    [
        "3:3: param `rows` expects int, got `abc` (its default)",
        "4:14: unknown type `floot` for `params.lr.type`: expected one of int, float, string, bool, list, map",
        "7:3: param `empty` needs a type or a default, such as `empty: int` or `empty: 10`",
        "11:15: step `a`: `for_each` needs a list, but param `rows` is int",
        "13:17: step `b`: `item` is only defined in a `for_each` step",
        "14:11: step `b`: cannot compare `params.flag` (bool) with 3 using `>`",
    ]
);

check_bad!(
    cycles_are_named_step_by_step,
    "cycle.yaml",
    [
        "3:3: step `a`: dependency cycle: a -> c -> b -> a",
        "13:3: step `d`: dependency cycle: d -> e -> d",
    ]
);

check_bad!(
    unknown_references_are_reported,
    "unknown_ref.yaml",
    [
        "6:17: step `a`: unknown param `m` in `params.m`: known params are n",
        "6:35: step `a`: unknown step `zz` in `steps.zz.outputs.x`: steps are a, b, c, d, notify",
        "8:3: step `b`: `after` names unknown step `nope`: steps are a, b, c, d, notify",
        "9:10: step `b`: step `a` has no output `y`: its outputs are x, model",
        "9:10: step `b`: output `out` is not declared: declare it under `outputs.parameters` or `outputs.artifacts`",
        "9:10: step `b`: input `i` is not declared: the step declares no inputs",
        "10:18: step `b`: `run.status` is only defined in `finally` steps",
        "11:14: step `b`: `item` is only defined in a `for_each` step",
        "14:15: step `c`: `item` cannot be used in the `for_each` items themselves",
        "15:17: step `c`: `steps.notify.outputs.done` refers to exit handler `notify`, which runs after every step in `steps`",
        "16:11: step `c`: `outputs.x` cannot be used in `when`: the step's outputs do not exist before it runs",
        "18:33: step `d`: `run`: invalid reference `steps.a.bad`: expected `steps.STEP.outputs.NAME`",
    ]
);

check_bad!(
    missing_run_is_reported_at_the_step,
    "missing_run.yaml",
    [
        "3:3: step `a`: missing `run`",
        "5:3: step `b`: missing `run`",
        "7:10: step `c`: `run` is an empty list: give the program and its arguments",
        "9:10: step `d`: `run` is empty: give a command",
        "10:6: step `e`: a step must be a mapping with at least `run`, got a list",
    ]
);

check_bad!(
    duplicate_steps_name_both_places,
    "duplicate_step.yaml",
    [
        "7:3: step `a`: duplicate step `a`: first declared at line 3",
        "10:3: step `b`: step name is declared in both `steps` (line 5) and `finally`",
    ]
);

check_bad!(
    every_error_in_a_file_is_reported,
    "many_errors.yaml",
    [
        "3:3: param `rows` expects int, got `ten` (its default)",
        "6:17: step `prep`: unknown param `cols` in `params.cols`: known params are rows",
        "7:14: step `prep`: invalid duration `soon` for `timeout`: use seconds or a duration such as `90s`, `10m` or `1h30m`",
        "10:12: step `train`: `cache` must be true or false, got text",
        "11:22: step `train`: invalid `resources.cpu` `lots`: use a number of cores (`2`, `0.5`) or millicores (`500m`)",
        "11:36: step `train`: invalid `resources.memory` `2GB`: use bytes or a size such as `512Mi`, `2Gi`, `1G` or `100M`",
        "11:46: step `train`: `resources.gpu` must be a whole number of at least 0, got -1",
        "12:3: step `eval`: missing `run`",
        "13:5: step `eval`: unknown field `command`: expected one of run, image, executor, env, workdir, inputs, outputs, \
     after, when, for_each, retries, timeout, cache, resources",
    ]
);

check_bad!(
    bad_values_are_reported_where_they_are,
    "values.yaml",
    [
        "4:17: step `a`: `run` argument 2 must be text, got a list",
        "5:12: step `a`: invalid condition in `when`: unclosed `{{`: expected `}}`",
        "6:15: step `a`: `for_each` needs `items`: a list, or a reference to one",
        "6:29: step `a`: `for_each.parallelism` must be at least 1",
        "7:22: step `a`: `retries.limit` must be a whole number of at least 0, got -1",
        "7:34: step `a`: `retries.factor` must be at least 1, got 0.5",
        "7:48: step `a`: invalid duration `forever` for `retries.backoff`: use seconds or a duration such as `90s`, `10m` or `1h30m`",
        "8:11: step `a`: invalid environment variable name `1BAD`: use letters, digits and `_`",
        "8:24: step `a`: `env.GOOD` has no value: write `\"\"` for an empty one",
        "9:31: step `a`: unknown type `text` for `outputs.parameters.p`: expected one of int, float, string, bool, list, map",
        "10:14: step `a`: `timeout` must be more than 0",
        "12:16: step `b`: `run`: invalid reference `steps.a`: expected `steps.STEP.outputs.NAME`",
        "13:14: step `b`: invalid condition in `when`: unexpected `=`: use `==` to compare",
    ]
);

fn errors(src: &str) -> Vec<String> {
    match parse_native(src, "p.yaml") {
        Ok(_) => panic!("parsed without errors"),
        Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn the_shape_of_the_file_is_checked() {
    assert_eq!(
        errors(""),
        ["p.yaml:1:1: a pipeline file must be a mapping with `name` and `steps`, got nothing"]
    );
    assert_eq!(
        errors("description: x\n"),
        [
            "p.yaml:1:1: missing `name`",
            "p.yaml:1:1: missing `steps`: a pipeline needs at least one step"
        ]
    );
    assert_eq!(
        errors("name: x\nsteps: {}\n"),
        ["p.yaml:2:1: `steps` is empty: a pipeline needs at least one step"]
    );
    assert_eq!(
        errors("name: x\nsteps: [a]\n"),
        ["p.yaml:2:8: `steps` must be a mapping, got a list"]
    );
    assert_eq!(
        errors("name: x\nname: y\nsteps: {a: {run: [echo]}}\n"),
        ["p.yaml:2:1: duplicate key `name`: first declared at line 1"]
    );
    assert_eq!(
        errors("name: x\nparams: {a: 1, a: 2}\nsteps: {a: {run: [echo]}}\n"),
        ["p.yaml:2:16: duplicate key `a` in `params`: first declared at line 2"]
    );
    assert_eq!(
        errors("name: x\nsteps:\n  a.b: {run: [echo]}\n  c/d: {run: [echo]}\n"),
        [
            "p.yaml:3:3: step `a.b`: invalid step name `a.b`: use letters, digits, `_` and `-`, not starting with `-`",
            "p.yaml:4:3: step `c/d`: invalid step name `c/d`: use letters, digits, `_` and `-`",
        ]
    );
}

#[test]
fn the_design_sample_parses_and_validates() {
    let p = parse_native(include_str!("fixtures/quickstart.yaml"), "quickstart.yaml").unwrap();
    assert_eq!(p.name, "quickstart");
    assert_eq!(
        p.steps.keys().collect::<Vec<_>>(),
        ["data", "train", "pick", "register"]
    );
    assert_eq!(p.finally.keys().collect::<Vec<_>>(), ["notify"]);
    assert_eq!(
        p.params["learning_rates"].default,
        Some(json!([0.01, 0.1, 0.5]))
    );
    let train = &p.steps["train"];
    assert_eq!(train.retries.limit, 2);
    assert_eq!(train.timeout, Some(Duration::from_secs(600)));
    assert_eq!(train.upstream().into_iter().collect::<Vec<_>>(), ["data"]);
    assert_eq!(
        p.steps["register"]
            .upstream()
            .into_iter()
            .collect::<Vec<_>>(),
        ["pick"]
    );
}

#[test]
fn a_full_pipeline_parses_to_the_expected_model() {
    let p = parse_native(include_str!("fixtures/full.yaml"), "full.yaml").unwrap();
    assert_eq!(
        p.description.as_deref(),
        Some("every field of the native format")
    );
    assert_eq!(p.source.as_deref(), Some("full.yaml"));
    assert_eq!(p.executor.as_deref(), Some("local"));

    let params: Vec<(&str, ParamType, Option<serde_json::Value>)> = p
        .params
        .iter()
        .map(|(n, s)| (n.as_str(), s.ty, s.default.clone()))
        .collect();
    assert_eq!(
        params,
        [
            ("rows", ParamType::Int, Some(json!(2000))),
            ("lr", ParamType::Float, None),
            ("tag", ParamType::String, Some(json!("v1"))),
            ("ratio", ParamType::Float, Some(json!(0.25))),
            ("flags", ParamType::List, Some(json!(["a", "b"]))),
            ("opts", ParamType::Map, Some(json!({"depth": 3}))),
            ("verbose", ParamType::Bool, Some(json!(true))),
            ("scale", ParamType::Float, Some(json!(1.0))),
        ]
    );
    assert_eq!(
        p.params["rows"].description.as_deref(),
        Some("rows to generate")
    );
    assert_eq!(p.params["rows"].pos, Pos { line: 5, column: 3 });

    let prep = &p.steps["prep"];
    assert_eq!(
        prep.pos,
        Pos {
            line: 14,
            column: 3
        }
    );
    let Command::Shell(shell) = &prep.run else {
        panic!("expected a shell command")
    };
    assert_eq!(shell.source(), "echo {{ params.tag }} > {{ outputs.out }}");
    assert_eq!(
        shell.pos(),
        Pos {
            line: 15,
            column: 10
        }
    );
    assert_eq!(prep.image.as_deref(), Some("python:3.11"));
    assert_eq!(prep.executor.as_deref(), Some("container"));
    let env: Vec<(&str, &str)> = prep
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.source()))
        .collect();
    assert_eq!(
        env,
        [
            ("MODE", "fast {{ params.rows }}"),
            ("LEVEL", "3"),
            ("DEBUG", "true")
        ]
    );
    assert_eq!(
        prep.workdir.as_ref().map(|t| t.source()),
        Some("work/{{ run.id }}")
    );
    assert!(!prep.cache);
    assert_eq!(
        prep.outputs.parameters.iter().collect::<Vec<_>>(),
        [(&"best".to_string(), &ParamType::String)]
    );
    assert_eq!(
        prep.outputs.artifacts.values().collect::<Vec<_>>(),
        ["Artifact", "Artifact"]
    );

    let sweep = &p.steps["sweep"];
    let Command::Argv(argv) = &sweep.run else {
        panic!("expected an argv command")
    };
    let argv: Vec<&str> = argv.iter().map(|t| t.source()).collect();
    // Numbers and bools in an argv keep the text they were written with.
    assert_eq!(
        argv,
        [
            "python3",
            "train.py",
            "--lr",
            "{{ item }}",
            "--n",
            "10",
            "--ratio",
            "0.50",
            "--on",
            "true"
        ]
    );
    let fe = sweep.for_each.as_ref().unwrap();
    assert_eq!(
        fe.items,
        ForEachItems::Literal(vec![json!(0.1), json!(0.5)])
    );
    assert_eq!(fe.parallelism, Some(2));
    assert_eq!(sweep.inputs.parameters["x"].source(), "{{ params.lr }}");
    assert_eq!(
        sweep.inputs.artifacts["data"].source(),
        "{{ steps.prep.outputs.out }}"
    );
    assert_eq!(sweep.after, ["prep"]);
    assert_eq!(sweep.retries.limit, 3);
    assert_eq!(sweep.retries.backoff, Duration::from_secs(2));
    assert_eq!(sweep.retries.factor, 3.0);
    assert_eq!(sweep.retries.max_backoff, Some(Duration::from_secs(60)));
    assert_eq!(sweep.timeout, Some(Duration::from_secs(90)));
    assert_eq!(sweep.resources.cpu, Some(0.5));
    assert_eq!(sweep.resources.memory, Some(2 << 30));
    assert_eq!(sweep.resources.gpu, Some(1));

    let fan = &p.steps["fan"];
    match &fan.for_each.as_ref().unwrap().items {
        ForEachItems::Ref(t) => assert_eq!(
            t.single_ref(),
            Some(&Ref::StepOutput {
                step: "sweep".into(),
                output: "accuracy".into()
            })
        ),
        other => panic!("expected a reference, got {other:?}"),
    }
    assert_eq!(fan.after, ["prep", "sweep"]);
    assert_eq!(fan.retries.limit, 2);
    assert_eq!(fan.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(fan.resources.cpu, Some(2.0));
    assert_eq!(fan.resources.memory, Some(512 << 20));

    let gate = &p.steps["gate"];
    let when = gate.when.as_ref().unwrap();
    assert_eq!(
        when.pos(),
        Pos {
            line: 42,
            column: 11
        }
    );
    assert!(matches!(when.root(), Node::Or(..)));
    assert_eq!(gate.resources.memory, Some(1_000_000_000));
    assert_eq!(
        p.finally["notify"].pos,
        Pos {
            line: 46,
            column: 3
        }
    );
}

#[test]
fn a_pipeline_round_trips_through_json() {
    for (name, src) in [
        ("quickstart.yaml", include_str!("fixtures/quickstart.yaml")),
        ("full.yaml", include_str!("fixtures/full.yaml")),
    ] {
        let p = parse_native(src, name).unwrap();
        let back: Pipeline = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p, "{name}");
        // The parsed forms come back too, not only the source text.
        assert_eq!(
            back.steps
                .values()
                .map(|s| s.upstream().len())
                .collect::<Vec<_>>(),
            p.steps
                .values()
                .map(|s| s.upstream().len())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn yaml_scalars_keep_their_meaning() {
    let src = "name: s\nparams:\n  answer: yes\n  kind: int\n  quoted: \"0.5\"\nsteps:\n  a:\n    run: [echo, yes, 007, 1e3]\n";
    let p = parse_native(src, "s.yaml").unwrap();
    // `yes` is text (YAML 1.2), a bare type name declares a required param.
    assert_eq!(p.params["answer"].ty, ParamType::String);
    assert_eq!(p.params["kind"].default, None);
    assert_eq!(p.params["quoted"].ty, ParamType::String);
    let Command::Argv(argv) = &p.steps["a"].run else {
        panic!("expected argv")
    };
    assert_eq!(
        argv.iter().map(|t| t.source()).collect::<Vec<_>>(),
        ["echo", "yes", "007", "1e3"]
    );
}

#[test]
fn params_need_a_type_or_a_default() {
    assert_eq!(
        errors(
            "name: x\nparams:\n  a: {description: only}\n  b: {type: int, default: null}\nsteps: {s: {run: [echo]}}\n"
        ),
        [
            "p.yaml:3:3: param `a` needs a `type` or a `default`",
            "p.yaml:4:27: param `b` has `default: null`: leave `default` out to make the param required",
        ]
    );
}

#[test]
fn resources_accept_kubernetes_quantities() {
    let cases: &[(&str, Option<f64>, Option<u64>)] = &[
        ("{cpu: 0.25, memory: 1k}", Some(0.25), Some(1_000)),
        ("{cpu: \"2\", memory: 100M}", Some(2.0), Some(100_000_000)),
        ("{cpu: 1500m, memory: 1.5Gi}", Some(1.5), Some(3 << 29)),
        ("{memory: 1073741824}", None, Some(1 << 30)),
        ("{memory: \"64Ki\"}", None, Some(64 << 10)),
    ];
    for (yaml, cpu, memory) in cases {
        let src = format!("name: r\nsteps:\n  a:\n    run: [echo]\n    resources: {yaml}\n");
        let p = parse_native(&src, "r.yaml").unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let res = &p.steps["a"].resources;
        assert_eq!((res.cpu, res.memory), (*cpu, *memory), "{yaml}");
    }
    assert_eq!(
        errors("name: r\nsteps:\n  a:\n    run: [echo]\n    resources: {cpu: 0, memory: -1}\n"),
        [
            "p.yaml:5:22: step `a`: invalid `resources.cpu` `0`: use a number of cores (`2`, `0.5`) or millicores (`500m`)",
            "p.yaml:5:33: step `a`: invalid `resources.memory` `-1`: use bytes or a size such as `512Mi`, `2Gi`, `1G` or `100M`",
        ]
    );
}

#[test]
fn conditions_may_be_yaml_bools_and_for_each_a_literal_list() {
    let src = "name: w\nsteps:\n  a:\n    run: [echo, \"{{ item.lr }}\"]\n    when: true\n    for_each: [{lr: 0.1}, {lr: 0.2}]\n    after: []\n";
    let p = parse_native(src, "w.yaml").unwrap();
    let a = &p.steps["a"];
    assert_eq!(a.when.as_ref().map(|w| w.source()), Some("true"));
    assert_eq!(
        a.for_each.as_ref().map(|f| &f.items),
        Some(&ForEachItems::Literal(vec![
            json!({"lr": 0.1}),
            json!({"lr": 0.2})
        ]))
    );
}
