//! The Kubernetes executor against a MOCK API server.
//!
//! No Kubernetes API server can run on the machines that test capstan, so these tests serve the
//! API's HTTP conversation from a small axum server on loopback (`support/kube_api.rs`): the
//! shapes of real `batch/v1` Job creation, Job reads and watch events (one JSON event per line),
//! pod lists with container states, the pod log stream (chunked, ending with the container) and
//! Job deletion. Here each Job's outcome is scripted; the root `tests/kubernetes.rs` drives a
//! whole `capstan run` against the same mock with Jobs that really run. The executor reaches it
//! through a kubeconfig file, as it would a cluster.
//!
//! What this does NOT test, because it needs a live cluster: scheduling, image pulls, the
//! kubelet's real log and status timing, RBAC for the service account, TLS and the cluster's
//! authentication plugins, `ttlSecondsAfterFinished` and `activeDeadlineSeconds` being honoured,
//! and the step wrapper running inside a real pod.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use capstan_exec::config::{KubernetesConfig, Toleration};
use capstan_exec::remote::{Envelope, Handoff, HandoffInput, HandoffOutput, OutputKind};
use capstan_exec::{Executor, KubernetesExecutor, LogSink, Outcome, TaskSpec};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "capstan-test";

/// Every test is bounded, so a hang fails the test instead of blocking the suite.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// How the mock cluster behaves once a Job is created.
#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// The pod runs, prints, and the Job completes.
    Succeed,
    /// The container exits with this code and the Job fails (backoffLimit 0).
    Fail(i32),
    /// The pod runs and never ends.
    Hang,
    /// The image cannot be pulled.
    ImagePull,
}

#[path = "support/kube_api.rs"]
mod kube_api;

use kube_api::{
    Request, Requests, accept_job, deleted_status, finished_job_status, json_response,
    kubeconfig_text, pod, pod_list, status_body, streamed, version_body,
};

struct Cluster {
    scenario: Scenario,
    requests: Requests,
    /// Created Jobs by name.
    jobs: Mutex<HashMap<String, Value>>,
}

type Shared = Arc<Cluster>;

impl Cluster {
    fn record(&self, method: Method, uri: &Uri, body: &[u8]) {
        self.requests.record(method, uri, body);
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.all()
    }

    fn finished_status(&self) -> Option<Value> {
        match self.scenario {
            Scenario::Succeed => Some(finished_job_status(true)),
            Scenario::Fail(_) => Some(finished_job_status(false)),
            Scenario::Hang | Scenario::ImagePull => None,
        }
    }
}

async fn version(State(c): State<Shared>, method: Method, uri: Uri) -> Response {
    c.record(method, &uri, b"");
    version_body()
}

async fn jobs(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    c.record(method.clone(), &uri, &body);
    if method == Method::POST {
        let mut job: Value = serde_json::from_slice(&body).unwrap();
        let name = job["metadata"]["name"].as_str().unwrap().to_string();
        if c.jobs.lock().unwrap().contains_key(&name) {
            return status_body(
                409,
                "AlreadyExists",
                &format!("jobs.batch \"{name}\" already exists"),
            );
        }
        accept_job(&mut job);
        c.jobs.lock().unwrap().insert(name, job.clone());
        return json_response(StatusCode::CREATED, job);
    }
    // A watch: `fieldSelector=metadata.name=NAME`, one event per line.
    assert_eq!(q.get("watch").map(String::as_str), Some("true"), "{uri}");
    let name = q["fieldSelector"]
        .strip_prefix("metadata.name=")
        .unwrap()
        .to_string();
    let job = c.jobs.lock().unwrap().get(&name).cloned().unwrap();
    let mut events = vec![];
    let hold = match c.finished_status() {
        Some(status) => {
            let mut done = job.clone();
            done["status"] = status;
            done["metadata"]["resourceVersion"] = json!("1002");
            // The real server interleaves bookmarks and intermediate updates.
            events.push(
                json!({"type": "BOOKMARK", "object": {"kind": "Job", "apiVersion": "batch/v1",
                "metadata": {"resourceVersion": "1001"}}}),
            );
            events.push(json!({"type": "MODIFIED", "object": done}));
            false
        }
        None => true,
    };
    let lines = events.into_iter().map(|e| format!("{e}\n")).collect();
    Response::builder()
        .header("content-type", "application/json")
        // A finished Job's events come after the log stream has ended, as on a cluster.
        .body(streamed(lines, Duration::from_millis(300), hold))
        .unwrap()
}

async fn job(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    c.record(method.clone(), &uri, &body);
    let Some(job) = c.jobs.lock().unwrap().get(&name).cloned() else {
        return status_body(404, "NotFound", &format!("jobs.batch \"{name}\" not found"));
    };
    if method == Method::DELETE {
        c.jobs.lock().unwrap().remove(&name);
        return deleted_status(&name);
    }
    json_response(StatusCode::OK, job)
}

async fn pods(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    c.record(method, &uri, b"");
    let job = q["labelSelector"]
        .strip_prefix("job-name=")
        .unwrap()
        .to_string();
    let state = match c.scenario {
        Scenario::Succeed => json!({"terminated": {"exitCode": 0, "reason": "Completed",
            "startedAt": "2026-11-27T20:00:01Z", "finishedAt": "2026-11-27T20:00:02Z"}}),
        Scenario::Fail(code) => json!({"terminated": {"exitCode": code, "reason": "Error",
            "startedAt": "2026-11-27T20:00:01Z", "finishedAt": "2026-11-27T20:00:02Z"}}),
        Scenario::Hang => json!({"running": {"startedAt": "2026-11-27T20:00:01Z"}}),
        Scenario::ImagePull => json!({"waiting": {"reason": "ErrImagePull",
            "message": "failed to pull and unpack image \"registry.invalid/step:1\": not found"}}),
    };
    pod_list(vec![pod(&job, NAMESPACE, "registry.invalid/step:1", state)])
}

async fn pod_log(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    c.record(method, &uri, b"");
    assert_eq!(q.get("follow").map(String::as_str), Some("true"), "{uri}");
    assert_eq!(
        q.get("container").map(String::as_str),
        Some("step"),
        "{uri}"
    );
    // Lines cut across chunks, as a real stream delivers them.
    let chunks = vec![
        "step says hello\npartial ".to_string(),
        "line\n".to_string(),
        "last line without newline".to_string(),
    ];
    Response::builder()
        .header("content-type", "text/plain")
        .body(streamed(
            chunks,
            Duration::from_millis(150),
            c.scenario == Scenario::Hang,
        ))
        .unwrap()
}

struct Mock {
    cluster: Shared,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the mock API server on an ephemeral loopback port, with a kubeconfig pointing at it.
async fn mock(scenario: Scenario) -> Mock {
    let cluster = Arc::new(Cluster {
        scenario,
        requests: Requests::default(),
        jobs: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/version", get(version))
        .route("/apis/batch/v1/namespaces/{ns}/jobs", get(jobs).post(jobs))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(job).delete(job),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(pods))
        .route("/api/v1/namespaces/{ns}/pods/{pod}/log", get(pod_log))
        .with_state(cluster.clone());
    let addr = kube_api::serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text(&format!("http://{addr}"), NAMESPACE),
    )
    .unwrap();
    Mock {
        cluster,
        kubeconfig,
        _dir: dir,
    }
}

fn settings(kubeconfig: &Path) -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        image_pull_policy: Some("IfNotPresent".into()),
        service_account: Some("capstan-steps".into()),
        node_selector: [("pool".to_string(), "gpu".to_string())].into(),
        tolerations: vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }],
        ttl_seconds_after_finished: Some(600),
        ..Default::default()
    }
}

fn executor(kubeconfig: &Path) -> KubernetesExecutor {
    KubernetesExecutor::new(settings(kubeconfig))
        .with_worker_env(vec![(
            "AWS_ENDPOINT".to_string(),
            "http://127.0.0.1:9000".to_string(),
        )])
        .with_capstan_path("/usr/local/bin/capstan")
}

/// A fixed attempt, so that its manifest can be compared with the checked-in fixture.
fn spec(log_dir: &Path) -> TaskSpec {
    let scratch =
        PathBuf::from("/var/lib/capstan/work/0123456789abcdef0123456789abcdef/train_1_/1");
    TaskSpec {
        run_id: "0123456789abcdef0123456789abcdef".into(),
        task: "train[1]".into(),
        attempt: 1,
        argv: vec![
            "python3".into(),
            "steps/train.py".into(),
            "--data".into(),
            scratch.join("in/data").display().to_string(),
            "--model".into(),
            scratch.join("out/model").display().to_string(),
        ],
        env: vec![("PYTHONHASHSEED".into(), "0".into())],
        workdir: "/pipelines/quickstart".into(),
        timeout: Some(Duration::from_secs(600)),
        log_path: log_dir.join("train[1].1.log"),
        image: Some("registry.invalid/trainer:1.2".into()),
        resources: json!({"cpu": 1.5, "memory": 2147483648u64, "gpu": 1}),
        mounts: vec![],
        handoff: Some(Handoff {
            scratch: scratch.clone(),
            artifact_root: "s3://bucket/capstan".into(),
            inputs: vec![HandoffInput {
                uri: "s3://bucket/capstan/blobs/ab12".into(),
                digest: "blake3:ab12".into(),
                path: scratch.join("in/data"),
            }],
            outputs: vec![HandoffOutput {
                name: "model".into(),
                kind: OutputKind::Artifact,
                path: scratch.join("out/model"),
            }],
            result_uri: "s3://bucket/capstan/results/0123/train[1].1.json".into(),
        }),
    }
}

fn collecting_sink() -> (LogSink, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let sink: LogSink = Arc::new(move |task: &str, chunk: &[u8]| {
        into.lock()
            .unwrap()
            .push(format!("{task}: {}", String::from_utf8_lossy(chunk)));
    });
    (sink, seen)
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the executor did not finish in time")
}

fn deletes(cluster: &Cluster) -> Vec<Request> {
    cluster
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::DELETE)
        .collect()
}

#[tokio::test]
async fn a_successful_job_streams_its_log_and_sends_the_expected_manifest() {
    let m = mock(Scenario::Succeed).await;
    let logs = tempfile::tempdir().unwrap();
    let spec = spec(logs.path());
    let exec = executor(&m.kubeconfig);
    exec.preflight().await.unwrap();
    let (sink, seen) = collecting_sink();
    let outcome = bounded(exec.run(spec.clone(), CancellationToken::new(), Some(sink))).await;
    assert_eq!(outcome, Outcome::Exited(0));

    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert_eq!(
        log,
        "step says hello\npartial line\nlast line without newline"
    );
    assert_eq!(
        seen.lock().unwrap().first().map(String::as_str),
        Some("train[1]: step says hello\n")
    );

    // The Job as it went over the wire equals the checked-in manifest.
    let requests = m.cluster.requests();
    let post = requests.iter().find(|r| r.method == Method::POST).unwrap();
    assert!(
        post.uri
            .starts_with(&format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs?")),
        "{}",
        post.uri
    );
    let sent: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        exec.manifest(&spec)
            .await
            .map(|j| serde_json::to_value(j).unwrap()),
        Ok(sent.clone())
    );
    // The container runs the step wrapper on the attempt's envelope; the fixture shows the
    // envelope decoded, so that it stays readable.
    let mut readable = sent.clone();
    let command = &mut readable["spec"]["template"]["spec"]["containers"][0]["command"];
    let envelope = Envelope::decode(command[3].as_str().unwrap()).unwrap();
    assert_eq!(envelope, Envelope::from_spec(&spec).unwrap());
    command[3] = serde_json::to_value(&envelope).unwrap();
    check_fixture("kubernetes-job.json", &readable);

    // Watched by name, and left for the TTL to clean up.
    assert!(
        requests
            .iter()
            .any(|r| r.uri.contains("watch=true")
                && r.uri.contains("fieldSelector=metadata.name%3D")),
        "{requests:#?}"
    );
    assert!(deletes(&m.cluster).is_empty(), "{requests:#?}");
}

/// Compares `got` with `tests/fixtures/NAME`; `CAPSTAN_UPDATE_FIXTURES=1` rewrites the file.
fn check_fixture(name: &str, got: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let pretty = serde_json::to_string_pretty(got).unwrap() + "\n";
    if std::env::var("CAPSTAN_UPDATE_FIXTURES").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &pretty).unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (CAPSTAN_UPDATE_FIXTURES=1 writes it)",
            path.display()
        )
    }))
    .unwrap();
    assert_eq!(
        got,
        &want,
        "the manifest differs from {}; if the change is intended, rerun with CAPSTAN_UPDATE_FIXTURES=1:\n{pretty}",
        path.display()
    );
}

#[tokio::test]
async fn a_failed_job_reports_the_container_exit_code() {
    let m = mock(Scenario::Fail(3)).await;
    let logs = tempfile::tempdir().unwrap();
    let outcome =
        bounded(executor(&m.kubeconfig).run(spec(logs.path()), CancellationToken::new(), None))
            .await;
    assert_eq!(outcome, Outcome::Exited(3));
}

#[tokio::test]
async fn cancel_deletes_the_job_in_the_background() {
    let m = mock(Scenario::Hang).await;
    let logs = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let exec = executor(&m.kubeconfig);
    let (sink, seen) = collecting_sink();
    let run = tokio::spawn({
        let cancel = cancel.clone();
        let spec = spec(logs.path());
        async move { exec.run(spec, cancel, Some(sink)).await }
    });
    // Cancel once the pod's output has started to arrive.
    bounded(async {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cancel.cancel();
    assert_eq!(bounded(run).await.unwrap(), Outcome::Cancelled);
    let deletes = deletes(&m.cluster);
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert!(
        deletes[0]
            .uri
            .contains("/jobs/capstan-0123456789ab-train-1-1-")
    );
    let body: Value = serde_json::from_str(&deletes[0].body).unwrap();
    assert_eq!(body["propagationPolicy"], "Background", "{body}");
}

#[tokio::test]
async fn a_timeout_deletes_the_job() {
    let m = mock(Scenario::Hang).await;
    let logs = tempfile::tempdir().unwrap();
    let mut spec = spec(logs.path());
    spec.timeout = Some(Duration::from_millis(800));
    let outcome = bounded(executor(&m.kubeconfig).run(spec, CancellationToken::new(), None)).await;
    assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(800)));
    assert_eq!(deletes(&m.cluster).len(), 1);
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_attempt_and_removes_the_job() {
    let m = mock(Scenario::ImagePull).await;
    let logs = tempfile::tempdir().unwrap();
    let outcome =
        bounded(executor(&m.kubeconfig).run(spec(logs.path()), CancellationToken::new(), None))
            .await;
    let Outcome::SpawnFailed(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("ErrImagePull"), "{reason}");
    assert!(reason.contains("registry.invalid/step:1"), "{reason}");
    assert_eq!(deletes(&m.cluster).len(), 1);
}

#[tokio::test]
async fn resume_reattaches_to_a_job_that_exists_and_only_to_one() {
    let m = mock(Scenario::Succeed).await;
    let logs = tempfile::tempdir().unwrap();
    let spec = spec(logs.path());
    let exec = executor(&m.kubeconfig);
    let handle = exec.remote_handle(&spec).unwrap();
    // Nothing was submitted under the handle yet: the engine must run the attempt anew.
    assert_eq!(
        bounded(exec.reattach(spec.clone(), &handle, CancellationToken::new(), None)).await,
        None
    );
    // A first process created the Job, then died; a second one follows it to its end.
    let job = serde_json::to_value(exec.manifest(&spec).await.unwrap()).unwrap();
    m.cluster.jobs.lock().unwrap().insert(handle.clone(), {
        let mut j = job;
        j["metadata"]["resourceVersion"] = json!("1000");
        j
    });
    let second = executor(&m.kubeconfig);
    let outcome =
        bounded(second.reattach(spec.clone(), &handle, CancellationToken::new(), None)).await;
    assert_eq!(outcome, Some(Outcome::Exited(0)));
    assert!(
        !m.cluster
            .requests()
            .iter()
            .any(|r| r.method == Method::POST),
        "re-attaching must not create the Job again"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_fails_preflight_naming_it() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_text(&format!("http://127.0.0.1:{port}"), NAMESPACE),
    )
    .unwrap();
    let err = bounded(executor(&kubeconfig).preflight())
        .await
        .unwrap_err();
    assert!(
        err.starts_with(&format!(
            "cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
        )),
        "{err}"
    );

    let missing = dir.path().join("missing");
    let err = bounded(executor(&missing).preflight()).await.unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[tokio::test]
async fn an_attempt_without_a_handoff_or_an_image_is_refused_before_anything_is_sent() {
    let m = mock(Scenario::Succeed).await;
    let logs = tempfile::tempdir().unwrap();
    let exec = executor(&m.kubeconfig);
    let mut no_handoff = spec(logs.path());
    no_handoff.handoff = None;
    let outcome = bounded(exec.run(no_handoff, CancellationToken::new(), None)).await;
    assert!(
        matches!(&outcome, Outcome::SpawnFailed(r) if r.contains("hand-off")),
        "{outcome:?}"
    );
    let mut no_image = spec(logs.path());
    no_image.image = None;
    let outcome = bounded(exec.run(no_image, CancellationToken::new(), None)).await;
    assert!(
        matches!(&outcome, Outcome::SpawnFailed(r) if r.contains("`image`")),
        "{outcome:?}"
    );
    assert!(
        !m.cluster
            .requests()
            .iter()
            .any(|r| r.method == Method::POST)
    );
}
