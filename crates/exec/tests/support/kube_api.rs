//! A MOCK Kubernetes API server on loopback, for tests only: no Kubernetes API server can run on
//! the machines that test capstan.
//!
//! It speaks the HTTP shapes of the real API for what the Kubernetes executor uses: `/version`;
//! `batch/v1` Jobs (create, read, watch by name with one JSON event per line, delete answering
//! a `Status`); `core/v1` pods (list by the `job-name` label, the followed log of the `step`
//! container); `Status` documents for errors. Two tests share it:
//!
//! - `crates/exec/tests/kubernetes.rs` scripts each Job's outcome with its own handlers, and
//!   uses the helpers here;
//! - the root `tests/kubernetes.rs` drives a whole `capstan run` against [`Kubelet`], whose Jobs
//!   really run: the pod's command (`capstan step-exec ...`) is started as a process on this
//!   machine, its output is the pod's log, its exit code the container's, and deleting the Job
//!   kills it.
//!
//! What a mock cannot show: scheduling, image pulls, a kubelet's real timing, RBAC, TLS and
//! authentication plugins, `ttlSecondsAfterFinished` and `activeDeadlineSeconds`.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub body: String,
}

/// A request log, shared by the handlers and the test.
#[derive(Default)]
pub struct Requests(Mutex<Vec<Request>>);

impl Requests {
    pub fn record(&self, method: Method, uri: &Uri, body: &[u8]) {
        self.0.lock().unwrap().push(Request {
            method,
            uri: uri.to_string(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }

    pub fn all(&self) -> Vec<Request> {
        self.0.lock().unwrap().clone()
    }

    pub fn with_method(&self, method: &Method) -> Vec<Request> {
        self.all()
            .into_iter()
            .filter(|r| r.method == *method)
            .collect()
    }
}

/// A `Status` error document, as the API server sends it.
pub fn status_body(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The `Status` a Job deletion answers.
pub fn deleted_status(name: &str) -> Response {
    json_response(
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
               "details": {"name": name, "group": "batch", "kind": "jobs",
                           "uid": "6f1c0d1e-0000-4000-8000-000000000001"}}),
    )
}

/// A body that sends `chunks`, each after `pause`, then ends, or stays open if `hold`.
pub fn streamed(chunks: Vec<String>, pause: Duration, hold: bool) -> Body {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, Infallible>>();
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(pause).await;
            if tx.unbounded_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
        if hold {
            // Keeps the sender, so the stream stays open until the client goes away.
            while !tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    Body::from_stream(rx)
}

/// `GET /version`.
pub fn version_body() -> Response {
    json_response(
        StatusCode::OK,
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "mock",
               "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
               "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
    )
}

/// A kubeconfig whose current context is `server`, token auth, namespace `namespace`.
pub fn kubeconfig_text(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: mock
  cluster: {{server: \"{server}\"}}
users:
- name: mock
  user: {{token: mock-token}}
contexts:
- name: mock
  context: {{cluster: mock, user: mock, namespace: {namespace}}}
current-context: mock
"
    )
}

/// Serves `app` on an ephemeral loopback port from the current runtime.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The pod name of a Job's only pod.
pub fn pod_name(job: &str) -> String {
    format!("{job}-x7k2q")
}

/// A pod of Job `job` whose `step` container is in `state` (a `ContainerState`).
pub fn pod(job: &str, namespace: &str, image: &str, state: Value) -> Value {
    json!({
        "metadata": {"name": pod_name(job), "namespace": namespace,
                     "labels": {"job-name": job, "batch.kubernetes.io/job-name": job}},
        "spec": {"containers": [{"name": "step", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "step", "image": image, "imageID": "", "ready": true,
            "restartCount": 0, "state": state}]}
    })
}

pub fn pod_list(items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1000"},
               "items": items}),
    )
}

/// The status of a finished Job, as the Job controller writes it with `backoffLimit: 0`.
pub fn finished_job_status(succeeded: bool) -> Value {
    if succeeded {
        json!({
            "succeeded": 1, "startTime": "2026-11-27T20:00:00Z",
            "completionTime": "2026-11-27T20:00:02Z",
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods"}
            ]
        })
    } else {
        json!({
            "failed": 1, "startTime": "2026-11-27T20:00:00Z",
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}
            ]
        })
    }
}

/// Fills in what the API server adds to a created Job.
pub fn accept_job(job: &mut Value) {
    job["metadata"]["uid"] = json!("6f1c0d1e-0000-4000-8000-000000000001");
    job["metadata"]["resourceVersion"] = json!("1000");
    job["metadata"]["creationTimestamp"] = json!("2026-11-27T20:00:00Z");
    job["status"] = json!({"active": 1, "startTime": "2026-11-27T20:00:00Z"});
}

/// Where a Job's pod stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    Running,
    Exited(i32),
    /// The Job was deleted; its process was killed.
    Deleted,
}

/// A Job that [`Kubelet`] runs.
pub struct JobRun {
    manifest: Mutex<Value>,
    log: Mutex<Vec<u8>>,
    phase: tokio::sync::watch::Sender<Phase>,
    pid: Option<i32>,
}

impl JobRun {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn manifest(&self) -> Value {
        self.manifest.lock().unwrap().clone()
    }
}

/// A mock API server whose Jobs really run, as processes on this machine.
pub struct Kubelet {
    pub namespace: String,
    /// Directories put first on the `PATH` of every pod's command (where `capstan` is found).
    pub path: Vec<PathBuf>,
    pub requests: Requests,
    /// Every Job ever created, by name; a deleted one stays with [`Phase::Deleted`].
    jobs: Mutex<HashMap<String, Arc<JobRun>>>,
}

type Shared = Arc<Kubelet>;

impl Kubelet {
    pub fn new(namespace: &str, path: Vec<PathBuf>) -> Shared {
        Arc::new(Kubelet {
            namespace: namespace.to_string(),
            path,
            requests: Requests::default(),
            jobs: Mutex::new(HashMap::new()),
        })
    }

    /// Every Job created so far, by name.
    pub fn jobs(&self) -> HashMap<String, Arc<JobRun>> {
        self.jobs.lock().unwrap().clone()
    }

    /// The Jobs created for a task: the `capstan/task` annotation.
    pub fn jobs_of_task(&self, task: &str) -> Vec<(String, Arc<JobRun>)> {
        let mut out: Vec<(String, Arc<JobRun>)> = self
            .jobs()
            .into_iter()
            .filter(|(_, j)| j.manifest()["metadata"]["annotations"]["capstan/task"] == task)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn live(&self, name: &str) -> Option<Arc<JobRun>> {
        self.jobs
            .lock()
            .unwrap()
            .get(name)
            .filter(|j| j.phase() != Phase::Deleted)
            .cloned()
    }

    /// Deletes a Job as `kubectl delete job` would: its pod's process is killed.
    pub fn delete(&self, name: &str) -> bool {
        let Some(job) = self.live(name) else {
            return false;
        };
        if let Some(pid) = job.pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        job.phase.send_replace(Phase::Deleted);
        true
    }

    /// Starts the pod of a new Job: its container's command, with its env.
    fn start(self: &Arc<Self>, manifest: Value) -> Arc<JobRun> {
        let container = &manifest["spec"]["template"]["spec"]["containers"][0];
        let argv: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut path = self.path.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("PATH", std::env::join_paths(path).unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for e in container["env"].as_array().into_iter().flatten() {
            cmd.env(
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or_default(),
            );
        }
        let (phase, _) = tokio::sync::watch::channel(Phase::Running);
        let spawned = cmd.spawn();
        let pid = spawned.as_ref().ok().and_then(|c| c.id()).map(|p| p as i32);
        let run = Arc::new(JobRun {
            manifest: Mutex::new(manifest),
            log: Mutex::new(Vec::new()),
            phase,
            pid,
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                run.log
                    .lock()
                    .unwrap()
                    .extend(format!("exec {}: {e}\n", argv[0]).bytes());
                finish(&run, 128);
                return run;
            }
        };
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<_>),
            child.stderr.take().map(|s| Box::new(s) as Box<_>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let run = run.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    run.log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        })
        .collect();
        let waiting = run.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            for r in readers {
                let _ = r.await;
            }
            let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
            finish(&waiting, code);
        });
        run
    }
}

/// The container exited with `code`: the Job completes or fails, unless it was deleted.
fn finish(run: &JobRun, code: i32) {
    if run.phase() == Phase::Deleted {
        return;
    }
    {
        let mut job = run.manifest.lock().unwrap();
        job["status"] = finished_job_status(code == 0);
        job["metadata"]["resourceVersion"] = json!("1002");
    }
    run.phase.send_replace(Phase::Exited(code));
}

/// Starts a [`Kubelet`] API server in a thread of its own; returns its URL.
pub fn serve_kubelet_in_thread(kubelet: Shared) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let addr = serve(kubelet_router(kubelet)).await;
            tx.send(addr).unwrap();
            std::future::pending::<()>().await
        })
    });
    format!("http://{}", rx.recv().unwrap())
}

pub fn kubelet_router(kubelet: Shared) -> Router {
    Router::new()
        .route("/version", get(k_version))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            get(k_jobs).post(k_jobs),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(k_job).delete(k_job),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(k_pods))
        .route("/api/v1/namespaces/{ns}/pods/{pod}/log", get(k_log))
        .with_state(kubelet)
}

async fn k_version(State(k): State<Shared>, method: Method, uri: Uri) -> Response {
    k.requests.record(method, &uri, b"");
    version_body()
}

async fn k_jobs(
    State(k): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    k.requests.record(method.clone(), &uri, &body);
    if method == Method::POST {
        let mut job: Value = match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(e) => return status_body(400, "BadRequest", &format!("invalid Job: {e}")),
        };
        let name = job["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if k.live(&name).is_some() {
            return status_body(
                409,
                "AlreadyExists",
                &format!("jobs.batch \"{name}\" already exists"),
            );
        }
        accept_job(&mut job);
        let run = k.start(job);
        k.jobs.lock().unwrap().insert(name, run.clone());
        return json_response(StatusCode::CREATED, run.manifest());
    }
    if q.get("watch").map(String::as_str) != Some("true") {
        return status_body(400, "BadRequest", "the mock only watches Jobs");
    }
    let name = q
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .unwrap_or_default()
        .to_string();
    let Some(run) = k.live(&name) else {
        // Nothing to report: the stream stays empty until the client gives up.
        return Response::builder()
            .header("content-type", "application/json")
            .body(streamed(vec![], Duration::ZERO, true))
            .unwrap();
    };
    // One event when the pod's process ends or the Job is deleted, then the stream ends (as it
    // does at the watch's timeout on a real server).
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, Infallible>>();
    tokio::spawn(async move {
        let mut phase = run.phase.subscribe();
        let end = phase
            .wait_for(|p| *p != Phase::Running)
            .await
            .map(|p| *p)
            .unwrap_or(Phase::Deleted);
        let event = match end {
            Phase::Deleted => json!({"type": "DELETED", "object": run.manifest()}),
            _ => json!({"type": "MODIFIED", "object": run.manifest()}),
        };
        let _ = tx.unbounded_send(Ok(Bytes::from(format!("{event}\n"))));
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(rx))
        .unwrap()
}

async fn k_job(
    State(k): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((_ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    k.requests.record(method.clone(), &uri, &body);
    let Some(run) = k.live(&name) else {
        return status_body(404, "NotFound", &format!("jobs.batch \"{name}\" not found"));
    };
    if method == Method::DELETE {
        k.delete(&name);
        return deleted_status(&name);
    }
    json_response(StatusCode::OK, run.manifest())
}

async fn k_pods(
    State(k): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    k.requests.record(method, &uri, b"");
    let job = q
        .get("labelSelector")
        .and_then(|s| s.strip_prefix("job-name="))
        .unwrap_or_default();
    let Some(run) = k.live(job) else {
        return pod_list(vec![]);
    };
    let state = match run.phase() {
        Phase::Running => json!({"running": {"startedAt": "2026-11-27T20:00:01Z"}}),
        Phase::Exited(code) => json!({"terminated": {"exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": "2026-11-27T20:00:01Z", "finishedAt": "2026-11-27T20:00:02Z"}}),
        Phase::Deleted => return pod_list(vec![]),
    };
    let image = run.manifest()["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    pod_list(vec![pod(job, &k.namespace, &image, state)])
}

async fn k_log(
    State(k): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((_ns, pod)): UrlPath<(String, String)>,
) -> Response {
    k.requests.record(method, &uri, b"");
    let job = pod.strip_suffix("-x7k2q").unwrap_or_default();
    let Some(run) = k.live(job) else {
        return status_body(404, "NotFound", &format!("pods \"{pod}\" not found"));
    };
    // Follows the output as it grows, and ends once the process has ended and all is sent.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, Infallible>>();
    tokio::spawn(async move {
        let mut sent = 0;
        loop {
            let running = run.phase() == Phase::Running;
            let chunk: Vec<u8> = run.log.lock().unwrap()[sent..].to_vec();
            sent += chunk.len();
            if !chunk.is_empty() && tx.unbounded_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(rx))
        .unwrap()
}
