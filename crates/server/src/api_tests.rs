//! `/api/v1` against a real SQLite store and a local artifact store, through the whole router.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use capstan_artifacts::ArtifactStore;
use capstan_store::{
    NewArtifact, NewRun, RunStatus, SqliteStore, TaskFinish, TaskStart, TaskStatus,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{ServerState, app};

const PIPELINE: &str = "name: demo
params:
  xs: {type: list, default: [1, 2]}
steps:
  data:
    run: [sh, -c, 'echo data']
  train:
    for_each: '{{ params.xs }}'
    after: [data]
    run: [sh, -c, 'echo train']
finally:
  notify:
    run: [sh, -c, 'echo done']
";

struct Fixture {
    dir: tempfile::TempDir,
    state: ServerState,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("capstan.db");
    let store: capstan_store::DynStore =
        Arc::new(SqliteStore::open(db.to_str().unwrap()).await.unwrap());
    let artifacts = ArtifactStore::open(None, dir.path()).unwrap();
    let files = artifacts.tracking_files().unwrap();
    Fixture {
        dir,
        state: ServerState {
            store,
            artifacts,
            files,
        },
    }
}

async fn get(state: &ServerState, uri: &str) -> (StatusCode, Value) {
    let response = app(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

fn run_id(n: u32) -> String {
    format!("{n:032x}")
}

/// A run of `demo`: `data` succeeded with a CSV artifact and a log, `train[0]` failed.
async fn demo_run(fx: &Fixture, n: u32, created_at: i64) -> String {
    let state = &fx.state;
    let id = run_id(n);
    let spec = capstan_spec::parse_native(PIPELINE, "demo.yaml").unwrap();
    let store = &state.store;
    store
        .create_run(NewRun {
            id: id.clone(),
            pipeline_name: "demo".into(),
            pipeline_digest: "blake3:demo".into(),
            pipeline_spec: serde_json::to_value(&spec).unwrap(),
            source: Some("demo.yaml".into()),
            params: json!({"xs": [1, 2]}),
            options: json!({}),
            created_at,
        })
        .await
        .unwrap();
    store
        .set_run_status(&id, RunStatus::Running, None, created_at)
        .await
        .unwrap();
    let start = |name: &str, step: &str| TaskStart {
        name: name.into(),
        step: step.into(),
        iteration: None,
        attempt: 1,
        executor: "local".into(),
        resources: json!({"cpu": 1}),
        cache_key: Some(format!("blake3:key-{name}")),
        log_uri: None,
        input_parameters: BTreeMap::new(),
        input_artifacts: BTreeMap::new(),
        started_at: created_at,
        remote_handle: None,
    };
    store
        .task_started(&id, start("data", "data"))
        .await
        .unwrap();
    let (log, _) = state.artifacts.log_path(&id, "data", 1).unwrap();
    std::fs::write(&log, "loading rows\nwrote 3 rows ✓\n").unwrap();
    let csv = fx.dir.path().join(format!("rows-{n}.csv"));
    std::fs::write(&csv, "a,b\n1,2\n3,4\n5,6\n").unwrap();
    let stored = state.artifacts.put(&csv).await.unwrap();
    let mut done =
        TaskFinish::without_outputs("data", "data", None, TaskStatus::Succeeded, Some(0), None);
    done.new_artifacts.push(NewArtifact {
        id: format!("art-{n}"),
        name: "rows".into(),
        uri: stored.uri,
        digest: stored.digest,
        size: stored.size,
        type_name: "Dataset".into(),
        is_dir: false,
        metadata: json!({}),
    });
    store.task_finished(&id, done).await.unwrap();
    store
        .task_started(&id, start("train[0]", "train"))
        .await
        .unwrap();
    store
        .task_finished(
            &id,
            TaskFinish::without_outputs(
                "train[0]",
                "train",
                Some(0),
                TaskStatus::Failed,
                Some(3),
                Some("exit 3"),
            ),
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn runs_are_filtered_sorted_and_paged_on_the_server() {
    let fx = fixture().await;
    let ids: Vec<String> = (1..=3).map(run_id).collect();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            &demo_run(&fx, n as u32 + 1, 1000 * (n as i64 + 1)).await,
            id
        );
    }
    fx.state
        .store
        .set_run_status(&ids[0], RunStatus::Failed, Some("boom"), 5000)
        .await
        .unwrap();

    let (status, page) = get(&fx.state, "/api/v1/runs?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 3);
    let listed: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);

    let (_, page) = get(&fx.state, "/api/v1/runs?status=failed&pipeline=demo").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["runs"][0]["message"], "boom");

    let (_, page) = get(
        &fx.state,
        "/api/v1/runs?sort=created&order=asc&offset=1&limit=1",
    )
    .await;
    assert_eq!(page["runs"][0]["id"], ids[1].as_str());

    let (_, page) = get(&fx.state, "/api/v1/runs?after=2000&before=3000").await;
    assert_eq!(page["total"], 1);

    let (status, body) = get(&fx.state, "/api/v1/runs?sort=colour").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown sort `colour`"),
        "{body}"
    );
    let (status, _) = get(&fx.state, "/api/v1/runs?limit=100000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, home) = get(&fx.state, "/api/v1/home").await;
    assert_eq!(home["counts"]["runs_by_status"]["running"], 2);
    assert_eq!(home["failed"][0]["id"], ids[0].as_str());
    assert_eq!(home["running"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn run_detail_has_the_dag_tasks_and_artifacts() {
    let fx = fixture().await;
    let id = demo_run(&fx, 7, 1000).await;
    // A unique prefix is enough.
    let (status, d) = get(&fx.state, &format!("/api/v1/runs/{}", &id[..28])).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let nodes: Vec<(&str, &str)> = d["dag"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("data", "succeeded"),
            ("train", "failed"),
            ("notify", "pending")
        ]
    );
    let edges: Vec<(&str, &str)> = d["dag"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    // The exit handler comes after the last main step.
    assert_eq!(edges, [("data", "train"), ("train", "notify")]);
    let train = &d["tasks"][1];
    assert_eq!(train["name"], "train[0]");
    assert_eq!(train["exit_code"], 3);
    assert_eq!(train["cache_key"], "blake3:key-train[0]");
    assert_eq!(d["artifacts"][0]["name"], "rows");

    let (status, _) = get(&fx.state, &format!("/api/v1/runs/{}", run_id(99))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn logs_read_by_range_without_splitting_characters() {
    let fx = fixture().await;
    let id = demo_run(&fx, 1, 1000).await;
    let (_, all) = get(&fx.state, &format!("/api/v1/runs/{id}/log?task=data")).await;
    assert_eq!(all["text"], "loading rows\nwrote 3 rows ✓\n");
    assert_eq!(all["complete"], true);
    let size = all["size"].as_u64().unwrap();
    // Stop one byte into the three-byte check mark: the read ends before it.
    let cut = size - 3;
    let (_, head) = get(
        &fx.state,
        &format!(
            "/api/v1/runs/{id}/log?task=data&offset=13&limit={}",
            cut - 13
        ),
    )
    .await;
    assert_eq!(head["text"], "wrote 3 rows ");
    assert_eq!(head["next_offset"], cut - 1);
    let (_, tail) = get(
        &fx.state,
        &format!("/api/v1/runs/{id}/log?task=data&offset={}", cut - 1),
    )
    .await;
    assert_eq!(tail["text"], "✓\n");
    let (status, body) = get(&fx.state, &format!("/api/v1/runs/{id}/log?task=nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("task `nope`"));
}

#[tokio::test]
async fn artifacts_have_producer_preview_content_and_lineage() {
    let fx = fixture().await;
    let id = demo_run(&fx, 1, 1000).await;
    let (_, a) = get(&fx.state, "/api/v1/artifacts/art-1").await;
    assert_eq!(a["artifact"]["run_id"], id.as_str());
    assert_eq!(a["producer"]["name"], "data");
    assert_eq!(a["producer"]["as"], "rows");
    let (_, p) = get(&fx.state, "/api/v1/artifacts/art-1/preview").await;
    assert_eq!(p["kind"], "csv");
    assert_eq!(p["text"], "a,b\n1,2\n3,4\n5,6\n");
    let (status, body) = get(&fx.state, "/api/v1/artifacts/art-1/content").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String("a,b\n1,2\n3,4\n5,6\n".into()));
    let (status, _) = get(&fx.state, "/api/v1/artifacts/art-1/content?path=../x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, g) = get(&fx.state, "/api/v1/lineage/art-1?direction=up").await;
    assert_eq!(g["root"], "art-1");
    assert_eq!(g["tasks"][0]["name"], "data");
    let (status, _) = get(&fx.state, "/api/v1/lineage/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_ui_answers_client_routes_and_api_paths_stay_json() {
    let fx = fixture().await;
    let (status, page) = get(&fx.state, "/runs/abc?task=x").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("/assets/app.js"));
    let (status, _) = get(&fx.state, "/assets/dag.js").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&fx.state, "/api/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "ENDPOINT_NOT_FOUND");
    let (_, doc) = get(&fx.state, "/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/runs"].is_object());
}
