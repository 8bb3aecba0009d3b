//! One KFP pipeline, compiled by the kfp SDK during the test (`tests/kfp_executors.py`: a
//! dataset, a model and metrics handed on as artifacts with metadata, and a ParallelFor whose
//! outputs are collected), run by the container and Ray executors (`containers.rs`, `ray.rs`)
//! and compared with the same compiled file run by local processes.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::kfp::{capstan, task_tracking_run};
use crate::util::{Dir, outputs_by_task, repo_root, statuses, task};

/// Compiles the pipeline into `dir` with the venv's kfp (`bin`). With `images`, its Python
/// components run in the first, which holds kfp, and its container component in the second;
/// without, they are compiled as `examples/kfp/pipelines.py` compiles them (`python:3.11` and
/// kfp's `pip install` preamble; `busybox:1.36`).
pub fn compile(dir: &Dir, bin: &Path, images: Option<(&str, &str)>) -> String {
    let out = dir.path().join("executors.yaml");
    let mut cmd = Command::new(bin.join("python"));
    cmd.arg(repo_root().join("tests/kfp_executors.py"))
        .arg(&out);
    if let Some((python, shell)) = images {
        cmd.args([python, shell]);
    }
    let done = cmd.output().expect("run the kfp compiler");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    out.display().to_string()
}

/// Every artifact of a run: name, type, digest and metadata, in a stable order.
fn artifacts(dir: &Dir, run_id: &str) -> Vec<Value> {
    let listed = dir
        .run(&["artifacts", "list", run_id, "--output", "json"])
        .ok()
        .json();
    let mut out: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            json!({"name": a["name"], "type": a["type_name"], "digest": a["digest"],
                   "metadata": a["metadata"]})
        })
        .collect();
    out.sort_by_key(|a| a.to_string());
    out
}

/// Checks that run `run_id` of `pipeline` in `dir` succeeded with every task on `executor`, with
/// the outputs the components compute, and with the same parameters, artifact digests and
/// artifact metadata as the same file run by local processes. Returns the run's document.
pub fn check_against_local(
    dir: &Dir,
    bin: &Path,
    pipeline: &str,
    run_id: &str,
    executor: &str,
) -> Value {
    let shown = dir.show(run_id);
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let mut names: Vec<String> = statuses(&shown).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "count-lines",
            "evaluate",
            "for-loop-1/shard[0]",
            "for-loop-1/shard[1]",
            "for-loop-1/shard[2]",
            "make-data",
            "merge",
            "train"
        ],
        "{shown:#}"
    );
    for t in shown["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "succeeded", "{t:#}");
        assert_eq!(t["executor"], executor, "{t:#}");
    }
    assert_eq!(
        task(&shown, "count-lines")["outputs"]["parameters"]["lines"],
        4
    );
    assert_eq!(
        task(&shown, "train")["outputs"]["parameters"]["Output"],
        2.0
    );
    assert_eq!(
        task(&shown, "merge")["outputs"]["parameters"]["Output"],
        "shard 1 (x=1); shard 2 (x=2); shard 3 (x=3) | squares=[1, 4, 9]"
    );
    let model = artifacts(dir, run_id)
        .into_iter()
        .find(|a| a["name"] == "model")
        .unwrap();
    assert_eq!(model["metadata"]["framework"], "by-hand", "{model:#}");

    let local = Dir::new();
    let local_run = capstan(&local, bin, &["run", pipeline]);
    local_run.ok();
    let local_show = local.show(&local_run.run_id());
    assert_eq!(outputs_by_task(&shown), outputs_by_task(&local_show));
    assert_eq!(
        artifacts(dir, run_id),
        artifacts(&local, &local_run.run_id())
    );
    shown
}

/// Checks that the Metrics output of `evaluate` in run `run_id` became a metric of that task's
/// tracking run.
pub fn check_metric_logged(dir: &Dir, bin: &Path, run_id: &str) {
    let evaluate = task_tracking_run(dir, bin, run_id, "evaluate");
    let metrics = evaluate["data"]["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 1, "{evaluate:#}");
    assert_eq!(metrics[0]["key"], "slope");
    assert_eq!(metrics[0]["value"], 2.0);
}
