//! One truth with pipelines: a pipeline run is an MLflow run in the experiment named after the
//! pipeline, each task attempt a nested run, and what a step logs with the unmodified `mlflow`
//! client (through the tracking server `capstan run` serves on loopback) lands on its task's run.
//! Checked afterwards through the MLflow REST API of a `capstan server` on the same workspace,
//! and through the `mlflow` client itself.
//!
//! Needs the Python venv (`scripts/python-env.sh`); skipped without it unless
//! `CAPSTAN_REQUIRE_PYTHON=1`.

use std::process::Command;

use serde_json::{Value, json};

use crate::tracking_python::venv_python;
use crate::util::{Api, Dir, Server};

const TRAIN: &str = r#"
import os, sys
import mlflow

mlflow.log_param("lr_seen", sys.argv[1])
for step in range(5):
    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
with open(sys.argv[2], "w") as f:
    f.write("weights")
with open(sys.argv[3], "w") as f:
    f.write("0.875")
if os.environ.get("FAIL") == "1":
    sys.exit(3)
"#;

fn pipeline(name: &str, python: &str, fail: bool) -> String {
    format!(
        r#"name: {name}
params:
  lr: {{type: float, default: 0.25}}
steps:
  train:
    run: ["{python}", train.py, "{{{{ params.lr }}}}", "{{{{ outputs.model }}}}", "{{{{ outputs.accuracy }}}}"]
    env: {{FAIL: "{}"}}
    outputs: {{artifacts: {{model: Model}}, parameters: {{accuracy: float}}}}
"#,
        u8::from(fail)
    )
}

/// key -> value of a run's `data.params` or `data.tags`.
fn pairs(run: &Value, field: &str) -> std::collections::BTreeMap<String, String> {
    run["data"][field]
        .as_array()
        .map(|xs| {
            xs.iter()
                .map(|p| {
                    (
                        p["key"].as_str().unwrap().to_string(),
                        p["value"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The experiment named `name` and its runs: the pipeline run and its nested runs.
async fn runs_of(api: &Api, name: &str) -> (String, Vec<Value>) {
    let (status, found) = api
        .get(&format!(
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
        ))
        .await;
    assert_eq!(status, 200, "{found}");
    let experiment = found["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, page) = api
        .post("runs/search", json!({"experiment_ids": [experiment]}))
        .await;
    assert_eq!(status, 200, "{page}");
    (
        experiment,
        page["runs"].as_array().cloned().unwrap_or_default(),
    )
}

fn find<'a>(runs: &'a [Value], name: &str) -> &'a Value {
    runs.iter()
        .find(|r| r["info"]["run_name"] == name)
        .unwrap_or_else(|| panic!("no run named {name} in {runs:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_metrics_land_on_their_task_runs() {
    let Some(python) = venv_python() else {
        return;
    };
    let dir = Dir::new();
    dir.write("train.py", TRAIN);
    let good = dir.write("good.yaml", &pipeline("tracked", &python, false));
    let bad = dir.write("bad.yaml", &pipeline("tracked-failing", &python, true));
    let ok = dir.run(&["run", good.to_str().unwrap(), "-q"]);
    ok.ok();
    let good_id = ok.run_id();
    let failed = dir.run(&["run", bad.to_str().unwrap(), "-q"]);
    assert_ne!(failed.code, Some(0), "{}", failed.stderr);
    let bad_id = failed.run_id();

    let server = Server::start(&dir);
    let api = Api::new(&server.url);

    // The succeeded pipeline: a FINISHED run named after it, with the pipeline's params.
    let (experiment, runs) = runs_of(&api, "tracked").await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let parent = runs
        .iter()
        .find(|r| r["info"]["run_id"] == good_id.as_str())
        .expect("the pipeline run is a tracking run of the same id");
    assert_eq!(parent["info"]["status"], "FINISHED");
    assert!(parent["info"]["end_time"].as_i64().is_some(), "{parent:#}");
    assert_eq!(pairs(parent, "params")["lr"], "0.25");
    let tags = pairs(parent, "tags");
    assert_eq!(tags["capstan.run_id"], good_id);
    assert!(
        tags["mlflow.source.name"].ends_with("good.yaml"),
        "{tags:?}"
    );
    assert!(!tags.contains_key("mlflow.parentRunId"));

    // The task: a nested run with what the step logged and what the engine recorded.
    let train = find(&runs, "train");
    let train_id = train["info"]["run_id"].as_str().unwrap();
    assert_eq!(train["info"]["status"], "FINISHED");
    assert_eq!(pairs(train, "tags")["mlflow.parentRunId"], good_id);
    let params = pairs(train, "params");
    assert_eq!(params["lr_seen"], "0.25", "logged by the step: {params:?}");
    assert_eq!(params["params.lr"], "0.25", "the task's input: {params:?}");
    assert_eq!(params["outputs.accuracy"], "0.875", "{params:?}");
    let loss = api.history(train_id, "loss").await;
    let steps: Vec<i64> = loss.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4]);
    assert!(api.history(&good_id, "loss").await.is_empty());

    // The output artifact, through the artifact proxy and through the client's list_artifacts.
    let root = format!("{experiment}/{train_id}/artifacts");
    let (status, listing) = api
        .get(&format!("/api/2.0/mlflow-artifacts/artifacts?path={root}"))
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(
        listing["files"],
        json!([{"path": "model", "is_dir": false, "file_size": 7}])
    );
    let (status, body) = api
        .get_bytes(&format!("/api/2.0/mlflow-artifacts/artifacts/{root}/model"))
        .await;
    assert_eq!((status, body.as_slice()), (200, b"weights".as_slice()));
    let listed = Command::new(&python)
        .args([
            "-c",
            "import sys, mlflow; c = mlflow.MlflowClient(); \
             print([f.path for f in c.list_artifacts(sys.argv[1])]); \
             print(open(c.download_artifacts(sys.argv[1], 'model', sys.argv[2])).read())",
            train_id,
            dir.path().to_str().unwrap(),
        ])
        .env("MLFLOW_TRACKING_URI", &server.url)
        .output()
        .expect("run python");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "['model']\nweights\n"
    );

    // The failed pipeline: FAILED on both levels, and what the step logged before failing kept.
    let (_, runs) = runs_of(&api, "tracked-failing").await;
    let parent = runs
        .iter()
        .find(|r| r["info"]["run_id"] == bad_id.as_str())
        .expect("the failed pipeline run");
    assert_eq!(parent["info"]["status"], "FAILED");
    assert!(parent["info"]["end_time"].as_i64().is_some());
    let train = find(&runs, "train");
    assert_eq!(train["info"]["status"], "FAILED");
    assert_eq!(pairs(train, "tags")["mlflow.parentRunId"], bad_id);
    let loss = api
        .history(train["info"]["run_id"].as_str().unwrap(), "loss")
        .await;
    assert_eq!(loss.len(), 5);

    // A second run of the good pipeline is all cache hits: its tasks are nested runs tagged so.
    let again = dir.run(&["run", good.to_str().unwrap(), "-q"]);
    again.ok();
    let (_, runs) = runs_of(&api, "tracked").await;
    let cached: Vec<&Value> = runs
        .iter()
        .filter(|r| pairs(r, "tags").get("mlflow.parentRunId") == Some(&again.run_id()))
        .collect();
    assert_eq!(cached.len(), 1, "{runs:#?}");
    assert_eq!(pairs(cached[0], "tags")["capstan.cached"], "true");
    assert_eq!(cached[0]["info"]["status"], "FINISHED");
}
