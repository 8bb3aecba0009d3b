//! Pipelines compiled by the real kfp SDK (`examples/kfp/pipelines.py`, committed as YAML and
//! compiled again by the first test, which fails when they differ) run with `capstan run`:
//! statuses, output values, artifact contents and metadata, caching (on, off, a custom key),
//! retries, conditions, loops (raw, over a parameter, nested, with `dsl.Collected` of parameters
//! and artifacts), exit handlers, importers, pipeline input artifacts, nested pipelines, container
//! components with IfPresent and Concat placeholders, env variables and resources. Where
//! `kfp.local` runs the same pipeline, the outputs of both are compared.
//!
//! Python components run kfp's own executor, so they need `kfp` in the venv that
//! `scripts/python-env.sh` creates ($CAPSTAN_VENV, default /var/tmp/capstan-venv). Without it the
//! tests that run components are skipped with a notice, unless `CAPSTAN_REQUIRE_PYTHON=1` (as in
//! CI), which makes a missing venv a failure. The error tests need no Python.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::util::{Dir, Run, repo_root, statuses, task};

fn venv() -> PathBuf {
    PathBuf::from(std::env::var("CAPSTAN_VENV").unwrap_or_else(|_| "/var/tmp/capstan-venv".into()))
}

/// The venv's `bin`, when it has kfp.
pub fn kfp_bin() -> Option<PathBuf> {
    let bin = venv().join("bin");
    let ok = Command::new(bin.join("python"))
        .args(["-c", "import kfp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(bin);
    }
    if std::env::var("CAPSTAN_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!(
            "CAPSTAN_REQUIRE_PYTHON=1 but {} has no kfp; run scripts/python-env.sh",
            venv().display()
        );
    }
    eprintln!(
        "skipping: {} has no kfp (run scripts/python-env.sh)",
        venv().display()
    );
    None
}

fn example(name: &str) -> String {
    repo_root()
        .join(format!("examples/kfp/{name}.yaml"))
        .display()
        .to_string()
}

/// `capstan` with the venv first on the PATH and a Python environment cache shared by the
/// tests, so that each requirement set is prepared once.
pub fn kfp_command(dir: &Dir, bin: &std::path::Path, args: &[&str]) -> Command {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let envs = std::env::temp_dir().join("capstan-test-kfp-envs");
    let mut cmd = dir.command(args);
    cmd.env("PATH", path).env("CAPSTAN_KFP_ENV_DIR", envs);
    cmd
}

/// Runs [`kfp_command`].
pub fn capstan(dir: &Dir, bin: &std::path::Path, args: &[&str]) -> Run {
    let out = kfp_command(dir, bin, args).output().expect("spawn capstan");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn output(run: &Value, name: &str, key: &str) -> Value {
    task(run, name)["outputs"]["parameters"][key].clone()
}

fn status(run: &Value, name: &str) -> String {
    task(run, name)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_committed_yaml_is_what_the_kfp_compiler_writes() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let out = Command::new(bin.join("python"))
        .arg(repo_root().join("examples/kfp/pipelines.py"))
        .arg(dir.path())
        .output()
        .expect("run the kfp compiler");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut compiled = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let committed = std::fs::read_to_string(repo_root().join("examples/kfp").join(&name))
            .unwrap_or_else(|e| panic!("examples/kfp/{name}: {e}"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            committed,
            "examples/kfp/{name} is stale: run python3 examples/kfp/pipelines.py"
        );
        compiled += 1;
    }
    assert_eq!(compiled, 19);
}

#[test]
fn chain_passes_values_and_honours_caching_options() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let first = capstan(&dir, &bin, &["run", &example("chain"), "-p", "x=4"]);
    first.ok();
    let run = dir.show(&first.run_id());
    assert_eq!(run["status"], "succeeded");
    assert_eq!(output(&run, "add", "Output"), json!(6));
    assert_eq!(output(&run, "add-2", "Output"), json!(16));
    assert_eq!(output(&run, "add-3", "Output"), json!(22));

    // `add-2` turned its cache off with set_caching_options(False).
    let second = capstan(&dir, &bin, &["run", &example("chain"), "-p", "x=4"]);
    second.ok();
    let run = dir.show(&second.run_id());
    assert_eq!(
        statuses(&run),
        [
            ("add".to_string(), "cached".to_string()),
            ("add-2".to_string(), "succeeded".to_string()),
            ("add-3".to_string(), "cached".to_string())
        ]
    );
    assert_eq!(output(&run, "add-3", "Output"), json!(22));
}

#[test]
fn verbatim_runs_the_pip_preamble_as_written() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", "--kfp-verbatim", &example("chain")]);
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "add-3", "Output"), json!(16));
}

#[test]
fn artifacts_flow_with_their_metadata() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("artifacts"), "-p", "rows=4"]);
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "train", "Output"), json!(2.0));
    let listed = dir
        .run(&["artifacts", "list", &r.run_id(), "--output", "json"])
        .ok()
        .json();
    let by_name = |n: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap_or_else(|| panic!("no artifact {n} in {listed:#}"))
            .clone()
    };
    assert_eq!(by_name("data")["type_name"], "Dataset");
    assert_eq!(by_name("data")["metadata"]["rows"], 4);
    assert_eq!(by_name("model")["metadata"]["framework"], "by-hand");
    assert_eq!(by_name("metrics")["type_name"], "Metrics");
    assert_eq!(by_name("metrics")["metadata"]["slope"], 2.0);
    let model = dir.path().join("model.txt");
    dir.run(&[
        "artifacts",
        "get",
        by_name("model")["id"].as_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(model).unwrap(),
        "slope=2.0 lr=0.1\n"
    );
}

#[test]
fn if_elif_else_runs_exactly_one_branch() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    for (n, branch, text) in [
        ("0", "condition-branches-1/condition-2/say", "it was heads"),
        (
            "1",
            "condition-branches-1/condition-3/say-2",
            "it was tails",
        ),
        (
            "2",
            "condition-branches-1/condition-4/say-3",
            "it stood on its edge",
        ),
    ] {
        let r = capstan(
            &dir,
            &bin,
            &["run", &example("conditions"), "-p", &format!("n={n}")],
        );
        r.ok();
        let run = dir.show(&r.run_id());
        for (name, s) in statuses(&run) {
            let want = if name == "flip" || name == branch {
                "succeeded"
            } else {
                "skipped"
            };
            assert_eq!(s, want, "n={n}: {name}");
        }
        assert_eq!(output(&run, branch, "Output"), json!(text));
    }
}

#[test]
fn parallel_for_over_raw_items_and_a_parameter_with_collected() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("loops"), "-p", "items=[2, 3, 4]"],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    for (i, x) in [10, 20, 30, 40].iter().enumerate() {
        assert_eq!(
            output(&run, &format!("for-loop-2/square[{i}]"), "Output"),
            json!(x * x)
        );
    }
    assert_eq!(output(&run, "for-loop-3/square-2[2]", "Output"), json!(16));
    assert_eq!(output(&run, "total", "Output"), json!(4 + 9 + 16));
}

#[test]
fn an_exit_handler_sees_the_failure() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("exit-handler")]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let run = dir.show(&r.run_id());
    assert_eq!(run["status"], "failed");
    assert_eq!(status(&run, "exit-handler-1/fail"), "failed");
    assert_eq!(status(&run, "report"), "succeeded");
    assert_eq!(output(&run, "report", "Output"), json!("FAILED"));
}

#[test]
fn a_retry_succeeds_on_the_second_attempt() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let marker = dir.path().join("marker");
    let r = capstan(
        &dir,
        &bin,
        &[
            "run",
            &example("retries"),
            "-p",
            &format!("marker={}", marker.display()),
        ],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(task(&run, "flaky")["attempts"], 2);
    assert_eq!(output(&run, "flaky", "Output"), json!("second attempt"));
}

#[test]
fn container_components_write_output_paths_and_keep_env_and_resources() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("containers"), "-p", "text=hello"],
    );
    r.ok();
    assert!(
        r.stderr.contains(
            "note: image `busybox:1.36` is not pulled: the commands of wc run on this host"
        ),
        "{}",
        r.stderr
    );
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "wc", "lines"), json!(1));
    assert_eq!(output(&run, "read-copy", "Output"), json!("1:hello"));
    assert_eq!(task(&run, "wc")["resources"]["cpu"], 1.0);
    assert_eq!(task(&run, "wc")["resources"]["memory"], 512_000_000);
}

/// A container component whose tools exist only in its image fails on the host with a message
/// that names the image.
#[test]
fn a_component_that_cannot_run_on_the_host_names_its_image() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let yaml = std::fs::read_to_string(example("containers"))
        .unwrap()
        .replacen(
            "        command:\n        - sh\n        - -c\n        env:",
            "        command:\n        - tool-only-in-the-image\n        env:",
            1,
        );
    assert!(yaml.contains("tool-only-in-the-image"));
    let path = dir.write("containers.yaml", &yaml);
    let r = capstan(&dir, &bin, &["run", path.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let run = dir.show(&r.run_id());
    assert_eq!(status(&run, "wc"), "failed");
    let message = task(&run, "wc")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("tool-only-in-the-image") && message.contains("image `busybox:1.36`"),
        "{message}"
    );
}

#[test]
fn struct_list_and_named_tuple_outputs() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("structs"), "-p", "config={\"depth\": 7}"],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "stats", "names"), json!(["x0", "x1", "x2"]));
    assert_eq!(output(&run, "stats", "config"), json!({"depth": 7}));
    assert_eq!(output(&run, "stats", "mean"), json!(2.5));
    assert_eq!(
        output(&run, "show", "Output"),
        json!("3 2.5 x0,x1,x2 7 True")
    );
}

#[test]
fn an_importer_brings_a_local_file_in() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let data = dir.write("data.txt", "imported text\n");
    let uri = format!("file://{}", data.display());
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("importer"), "-p", &format!("uri={uri}")],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "read-text", "Output"), json!("imported text"));
    let art = &task(&run, "importer")["outputs"]["artifacts"]["artifact"];
    assert!(
        art["digest"].as_str().unwrap().starts_with("blake3:"),
        "{run:#}"
    );
}

#[test]
fn a_nested_pipeline_runs_as_prefixed_steps() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("nested")]);
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "inner/add", "Output"), json!(5));
    assert_eq!(output(&run, "inner/square", "Output"), json!(25));
    assert_eq!(output(&run, "add", "Output"), json!(26));
}

#[test]
fn bad_ir_is_refused_with_a_message_naming_the_problem() {
    let dir = Dir::new();
    let chain = std::fs::read_to_string(example("chain")).unwrap();
    for (name, text, want) in [
        (
            "version.yaml",
            chain.replace("schemaVersion: 2.1.0", "schemaVersion: 3.0.0"),
            "unsupported schemaVersion `3.0.0`",
        ),
        (
            "executor.yaml",
            chain.replacen("      container:", "      resolver:", 1),
            "task `add` uses executor `exec-add` of kind `resolver`",
        ),
        (
            "placeholder.yaml",
            chain.replacen("- '{{$}}'", "- '{{$.inputs.nope}}'", 1),
            "unsupported placeholder `{{$.inputs.nope}}`",
        ),
    ] {
        let path = dir.write(name, &text);
        let r = dir.run(&["run", path.to_str().unwrap()]);
        assert_eq!(r.code, Some(2), "{name}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{name}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{name}: no run is created");
    }
    let r = dir.run(&["run", &example("chain"), "-p", "x=abc"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("param `x` expects int, got `abc`"),
        "{}",
        r.stderr
    );
}

fn artifacts(dir: &Dir, run_id: &str) -> Vec<Value> {
    let listed = dir
        .run(&["artifacts", "list", run_id, "--output", "json"])
        .ok()
        .json();
    listed.as_array().unwrap().clone()
}

fn artifact_text(dir: &Dir, id: &str) -> String {
    let out = dir.path().join(format!("artifact-{id}"));
    dir.run(&["artifacts", "get", id, "-o", out.to_str().unwrap()])
        .ok();
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn nested_parallel_for_runs_every_pair_of_items() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("nested-loops")]);
    r.ok();
    let run = dir.show(&r.run_id());
    let mut i = 0;
    for a in [1, 2] {
        for b in [10, 20, 30] {
            let name = format!("for-loop-2/for-loop-4/add[{i}]");
            assert_eq!(status(&run, &name), "succeeded");
            assert_eq!(output(&run, &name, "Output"), json!(a + b), "{name}");
            i += 1;
        }
    }
    // The inner loop iterates over a field of the outer item.
    assert_eq!(
        output(&run, "for-loop-6/for-loop-7/say[0]", "Output"),
        json!("x")
    );
    assert_eq!(
        output(&run, "for-loop-6/for-loop-7/say[1]", "Output"),
        json!("y")
    );
    assert_eq!(run["tasks"].as_array().unwrap().len(), 8);
}

#[test]
fn collected_fans_in_parameters_and_artifacts_with_their_metadata() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("fan-in"), "-p", "xs=[3, 1, 2]"],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    for (i, x) in [3, 1, 2].iter().enumerate() {
        let name = format!("for-loop-1/shard[{i}]");
        assert_eq!(output(&run, &name, "Output"), json!(x * x));
        // A task of the loop body reads the same iteration's outputs.
        assert_eq!(
            output(&run, &format!("for-loop-1/describe-shard[{i}]"), "Output"),
            json!(format!("shard {x} x={x} square={}", x * x)),
        );
    }
    assert_eq!(
        output(&run, "merge", "Output"),
        json!("shard 3 (x=3); shard 1 (x=1); shard 2 (x=2) | squares=[1, 4, 9]")
    );
    let shards: Vec<Value> = artifacts(&dir, &r.run_id())
        .into_iter()
        .filter(|a| a["name"] == "data")
        .collect();
    assert_eq!(shards.len(), 3);
    for a in &shards {
        let x = a["metadata"]["x"].as_i64().unwrap();
        assert_eq!(
            artifact_text(&dir, a["id"].as_str().unwrap()),
            format!("shard {x}\n")
        );
    }
}

#[test]
fn input_artifacts_carry_their_metadata() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("metadata"), "-p", "rows=2"]);
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "describe", "Output"), json!("0,0\n1,2 rows=2"));
}

#[test]
fn a_pipeline_input_artifact_is_imported_from_a_path() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let data = dir.write("in.txt", "pipeline input\n");
    let r = capstan(
        &dir,
        &bin,
        &[
            "run",
            &example("input-artifacts"),
            "-p",
            &format!("data={}", data.display()),
        ],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(status(&run, "inputs/data"), "succeeded");
    assert_eq!(output(&run, "read-text", "Output"), json!("pipeline input"));
    let art = &task(&run, "inputs/data")["outputs"]["artifacts"]["artifact"];
    assert_eq!(
        artifact_text(
            &dir,
            art["id"].as_str().unwrap_or_else(|| panic!("{run:#}"))
        ),
        "pipeline input\n"
    );
    // Without it the run is refused before it starts.
    let r = capstan(&dir, &bin, &["run", &example("input-artifacts")]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("`data`"), "{}", r.stderr);
}

#[test]
fn if_present_and_concat_placeholders_expand_per_task() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &["run", &example("placeholders"), "-p", "name=ada"],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(output(&run, "greet", "out"), json!("name=ada! greeting hi"));
    assert_eq!(
        output(&run, "greet-2", "out"),
        json!("name=ada! no-greeting")
    );
}

#[test]
fn env_resources_and_a_custom_cache_key() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let first = capstan(&dir, &bin, &["run", &example("options"), "-p", "key=one"]);
    first.ok();
    let run = dir.show(&first.run_id());
    // set_env_variable reaches the component; the limits are recorded with the task.
    assert_eq!(output(&run, "env-and-key", "Output"), json!("test:x1:one"));
    let t = task(&run, "env-and-key");
    assert_eq!(t["resources"]["cpu"], 0.5);
    assert_eq!(t["resources"]["memory"], 1024 * 1024 * 1024);
    assert_eq!(t["resources"]["gpu"], 1);
    // The custom cache key stands for the inputs: another `key` still hits the cache.
    let second = capstan(&dir, &bin, &["run", &example("options"), "-p", "key=two"]);
    second.ok();
    let run = dir.show(&second.run_id());
    assert_eq!(status(&run, "env-and-key"), "cached");
    assert_eq!(output(&run, "env-and-key", "Output"), json!("test:x1:one"));
}

/// `dsl.OneOf` of a parameter and of an artifact: the consumer gets the output of whichever
/// branch ran, with the artifact's metadata.
#[test]
fn one_of_selects_the_output_of_the_branch_that_ran() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    for (n, condition, suffix, msg, data) in [
        ("0", "condition-2", "", "heads won", "heads data"),
        ("1", "condition-3", "-2", "tails won", "tails data"),
        (
            "2",
            "condition-4",
            "-3",
            "it stood on its edge",
            "edge data",
        ),
    ] {
        let r = capstan(
            &dir,
            &bin,
            &["run", &example("one-of"), "-p", &format!("n={n}")],
        );
        r.ok();
        let run = dir.show(&r.run_id());
        let branch = format!("condition-branches-1/{condition}/");
        // `say-4` says what the branch said: the cache may answer it.
        for (name, s) in statuses(&run) {
            let skipped = name.starts_with("condition-branches-1/") && !name.starts_with(&branch);
            let want: &[&str] = if skipped {
                &["skipped"]
            } else {
                &["succeeded", "cached"]
            };
            assert!(want.contains(&s.as_str()), "n={n}: {name} is {s}");
        }
        assert_eq!(
            output(&run, &format!("{branch}say{suffix}"), "Output"),
            json!(msg)
        );
        assert_eq!(output(&run, "say-4", "Output"), json!(msg), "n={n}");
        assert_eq!(
            output(&run, "read-tagged", "Output"),
            json!(format!("{data} ({data})")),
            "n={n}"
        );
    }
}

/// Nested loops whose items come from a pipeline parameter, an upstream output and a field of
/// the outer item, with a `dsl.Collected` fan-in of every combination.
#[test]
fn nested_loops_over_parameters_and_upstream_outputs() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(
        &dir,
        &bin,
        &[
            "run",
            &example("loops-from-outputs"),
            "-p",
            "xs=[1, 5]",
            "-p",
            "n=3",
        ],
    );
    r.ok();
    let run = dir.show(&r.run_id());
    let mut i = 0;
    for x in [1, 5] {
        for y in [1, 2, 3] {
            let name = format!("for-loop-1/for-loop-2/add[{i}]");
            assert_eq!(output(&run, &name, "Output"), json!(x + y), "{name}");
            i += 1;
        }
    }
    assert_eq!(
        output(&run, "total", "Output"),
        json!(2 + 3 + 4 + 6 + 7 + 8)
    );
    // table(3): r0 has tag t00, r1 t10 and t11, r2 t20, t21 and t22; each for z in xs.
    let mut want = Vec::new();
    for row in 0..3 {
        for z in [1, 5] {
            for j in 0..=row {
                want.push(format!("t{row}{j}-{z}"));
            }
        }
    }
    let labels: Vec<Value> = (0..want.len())
        .map(|i| {
            output(
                &run,
                &format!("for-loop-3/for-loop-4/for-loop-5/label[{i}]"),
                "Output",
            )
        })
        .collect();
    assert_eq!(labels, want.iter().map(|w| json!(w)).collect::<Vec<_>>());
    assert_eq!(
        run["tasks"].as_array().unwrap().len(),
        3 + 6 + want.len(),
        "{run:#}"
    );
}

/// HTML, Markdown and ClassificationMetrics outputs keep their types, contents and metadata.
#[test]
fn html_markdown_and_classification_metrics_artifacts() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("artifact-types")]);
    r.ok();
    let run = dir.show(&r.run_id());
    assert_eq!(
        output(&run, "read-kinds", "Output"),
        json!("<h1>ok</h1>|# notes|ok")
    );
    let listed = artifacts(&dir, &r.run_id());
    let by_name = |n: &str| {
        listed
            .iter()
            .find(|a| a["name"] == n)
            .unwrap_or_else(|| panic!("no artifact {n} in {listed:#?}"))
            .clone()
    };
    assert_eq!(by_name("page")["type_name"], "HTML");
    assert_eq!(by_name("page")["metadata"]["title"], "ok");
    assert_eq!(by_name("notes")["type_name"], "Markdown");
    assert_eq!(
        artifact_text(&dir, by_name("notes")["id"].as_str().unwrap()),
        "# notes"
    );
    let scores = by_name("scores");
    assert_eq!(scores["type_name"], "ClassificationMetrics");
    let matrix = &scores["metadata"]["confusionMatrix"];
    assert_eq!(
        matrix["annotationSpecs"],
        json!([{"displayName": "a"}, {"displayName": "b"}])
    );
    assert_eq!(
        numeric(&matrix["rows"]),
        numeric(&json!([{"row": [3, 1]}, {"row": [0, 4]}]))
    );
}

/// Numbers compare by value: kfp.local reads parameters and metadata through protobuf structs,
/// so the integers inside them come back as floats (`3.0`).
fn numeric(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(xs) => Value::Array(xs.iter().map(numeric).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), numeric(x))).collect()),
        other => other.clone(),
    }
}

/// `for-loop-1-iteration-2/shard` (kfp.local) and `for-loop-1/shard[2]` (capstan) are `shard[2]`;
/// a task in a condition is its own name.
fn leaf(name: &str) -> String {
    let mut parts = name.rsplit('/');
    let last = parts.next().unwrap_or(name).to_string();
    match parts.next().and_then(|p| p.rsplit_once("-iteration-")) {
        Some((_, i)) if !last.ends_with(']') => format!("{last}[{i}]"),
        _ => last,
    }
}

#[test]
fn outputs_match_kfp_local() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    // Pipelines that kfp.local's subprocess runner can run (no container components), with
    // arguments as JSON.
    for (name, args) in [
        ("chain", vec![("x", "4")]),
        ("artifacts", vec![("rows", "4")]),
        ("conditions", vec![("n", "1")]),
        ("fan-in", vec![("xs", "[3, 1, 2]")]),
        ("metadata", vec![("rows", "2")]),
    ] {
        let out = Command::new(bin.join("python"))
            .arg(repo_root().join("tests/kfp_local.py"))
            .arg(name)
            .args(args.iter().map(|(k, v)| format!("{k}={v}")))
            .output()
            .expect("run kfp.local");
        assert!(
            out.status.success(),
            "kfp.local {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let local: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();

        let mut cli = vec!["run".to_string(), example(name)];
        for (k, v) in &args {
            cli.extend(["-p".to_string(), format!("{k}={v}")]);
        }
        let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
        let r = capstan(&dir, &bin, &cli);
        r.ok();
        let run = dir.show(&r.run_id());
        let listed = artifacts(&dir, &r.run_id());
        assert!(!local.is_empty(), "{name}: kfp.local ran no task");
        for (local_task, want) in &local {
            let ours = run["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| leaf(t["name"].as_str().unwrap()) == leaf(local_task))
                .unwrap_or_else(|| panic!("{name}: no task like `{local_task}` in {run:#}"));
            let task_name = ours["name"].as_str().unwrap();
            assert_eq!(ours["status"], "succeeded", "{name}/{task_name}");
            let params = &ours["outputs"]["parameters"];
            for (k, v) in want["parameters"].as_object().unwrap() {
                // kfp.local formats the integers of a struct as floats in text too.
                let float_text = name == "fan-in" || name == "metadata";
                if float_text && v.is_string() {
                    continue;
                }
                assert_eq!(numeric(&params[k]), numeric(v), "{name}/{task_name}: {k}");
            }
            for (k, art) in want["artifacts"].as_object().unwrap() {
                let a = &ours["outputs"]["artifacts"][k];
                let record = listed
                    .iter()
                    .find(|x| x["id"] == a["id"])
                    .unwrap_or_else(|| panic!("{name}/{task_name}: no artifact {k}"));
                assert_eq!(
                    numeric(&record["metadata"]),
                    numeric(&art["metadata"]),
                    "{name}/{task_name}: metadata of {k}"
                );
                if let Some(content) = art["content"].as_str() {
                    assert_eq!(
                        artifact_text(&dir, record["id"].as_str().unwrap()),
                        content,
                        "{name}/{task_name}: content of {k}"
                    );
                }
            }
        }
    }
}

/// Searches, through the MLflow REST API of a `capstan server` over the same workspace, for the
/// tracking run of task `task` of run `run_id`.
pub fn task_tracking_run(dir: &Dir, bin: &std::path::Path, run_id: &str, task: &str) -> Value {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = dir.spawn(&["server", "--port", &port.to_string()]);
    let script = r#"
import json, sys, time, urllib.request
url, run_id, task = sys.argv[1:]
for _ in range(200):
    try:
        urllib.request.urlopen(url + "/health", timeout=1).read()
        break
    except Exception:
        time.sleep(0.05)
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))
exps = post("/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
runs = post("/api/2.0/mlflow/runs/search", {
    "experiment_ids": [e["experiment_id"] for e in exps],
    "filter": f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`capstan.task` = '{task}'",
})
print(json.dumps(runs.get("runs", [])))
"#;
    let out = Command::new(bin.join("python"))
        .args([
            "-c",
            script,
            &format!("http://127.0.0.1:{port}"),
            run_id,
            task,
        ])
        .output()
        .expect("run python");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    runs[0].clone()
}

#[test]
fn logged_metrics_become_metrics_of_the_tasks_tracking_run() {
    let Some(bin) = kfp_bin() else { return };
    let dir = Dir::new();
    let r = capstan(&dir, &bin, &["run", &example("artifacts"), "-p", "rows=4"]);
    r.ok();
    let run = task_tracking_run(&dir, &bin, &r.run_id(), "evaluate");
    let metrics = run["data"]["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 1, "{run:#}");
    assert_eq!(metrics[0]["key"], "slope");
    assert_eq!(metrics[0]["value"], 2.0);
    // A task without Metrics outputs logs none.
    let train = task_tracking_run(&dir, &bin, &r.run_id(), "train");
    assert!(
        train["data"]["metrics"]
            .as_array()
            .is_none_or(|m| m.is_empty()),
        "{train:#}"
    );
}
