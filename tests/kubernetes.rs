//! `capstan run --executor kubernetes` against a MOCK Kubernetes API server, and where no
//! cluster answers.
//!
//! No Kubernetes API server can run where these tests run. The mock (`Kubelet` in
//! `crates/exec/tests/support/kube_api.rs`, on loopback, reached through a kubeconfig) answers
//! Job create, read, watch and delete and pod list and log with the real API's shapes, and runs
//! each Job's pod command (`capstan step-exec ...`, this build's binary) as a process on this
//! machine: so whole runs go through the executor, the step wrapper and the artifact store,
//! with cancel, a Job deleted behind capstan's back, and resume after kill -9. Nothing here
//! shows how a real cluster schedules, pulls images or times its events.
//!
//! Also: the command refuses a run before it starts when the API server named by the
//! configuration cannot be reached, and the configuration's precedence (environment over config
//! file) holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::ray::first_run_id;
use crate::util::{Dir, Run, cancel_run, eventually, statuses, succeeded_on, task, wait_output};

#[path = "../crates/exec/tests/support/kube_api.rs"]
mod kube_api;

use kube_api::{Kubelet, Phase, kubeconfig_text};

const NAMESPACE: &str = "capstan-test";

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn kubeconfig(dir: &Dir, name: &str, port: u16) -> String {
    dir.write(
        name,
        &kubeconfig_text(&format!("http://127.0.0.1:{port}"), NAMESPACE),
    )
    .display()
    .to_string()
}

fn pipeline(dir: &Dir) -> String {
    dir.write(
        "k.yaml",
        "name: k\nsteps:\n  a:\n    image: registry.invalid/step:1\n    run: [echo, hi]\n",
    )
    .display()
    .to_string()
}

#[test]
fn an_unreachable_api_server_is_reported_before_the_run() {
    let dir = Dir::new();
    let port = closed_port();
    let config = kubeconfig(&dir, "kubeconfig", port);
    let out = crate::util::Run::from(
        dir.command(&["run", &pipeline(&dir), "--executor", "kubernetes"])
            .env("KUBECONFIG", &config)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the kubernetes executor cannot run steps: cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "no run may start: {}",
        out.stdout
    );
    let runs = dir.run(&["runs", "list", "--output", "json"]);
    assert_eq!(runs.ok().json(), serde_json::json!([]));
}

#[test]
fn kubeconfig_comes_from_the_environment_before_the_config_file() {
    let dir = Dir::new();
    let from_file = closed_port();
    let from_env = closed_port();
    let file_config = kubeconfig(&dir, "file-kubeconfig", from_file);
    let env_config = kubeconfig(&dir, "env-kubeconfig", from_env);
    dir.write(
        "ws/config.yaml",
        &format!("executors:\n  kubernetes:\n    kubeconfig: {file_config}\n    namespace: ml\n"),
    );
    let run = |env: Option<&str>| {
        let mut cmd = dir.command(&["run", &pipeline(&dir), "--executor", "kubernetes"]);
        match env {
            Some(path) => cmd.env("KUBECONFIG", path),
            None => cmd.env_remove("KUBECONFIG"),
        };
        crate::util::Run::from(cmd.output().unwrap())
    };
    let by_file = run(None);
    assert!(
        by_file.stderr.contains(&format!("127.0.0.1:{from_file}")),
        "{}",
        by_file.stderr
    );
    let by_env = run(Some(&env_config));
    assert!(
        by_env.stderr.contains(&format!("127.0.0.1:{from_env}")),
        "{}",
        by_env.stderr
    );
}

#[test]
fn a_mistyped_executor_setting_names_the_config_file() {
    let dir = Dir::new();
    dir.write(
        "ws/config.yaml",
        "executors:\n  kubernetes:\n    namespce: ml\n",
    );
    let out = dir.run(&["run", &pipeline(&dir)]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("config.yaml") && out.stderr.contains("namespce"),
        "{}",
        out.stderr
    );
}

/// A mock API server whose pods find this build's `capstan` on their `PATH`, and a workspace
/// whose config names the image that the steps would run in on a cluster.
fn mock_cluster(dir: &Dir) -> (Arc<Kubelet>, String) {
    let bin_dir = Path::new(crate::util::bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let kubelet = Kubelet::new(NAMESPACE, vec![bin_dir]);
    let url = kube_api::serve_kubelet_in_thread(kubelet.clone());
    let config = dir
        .write("kubeconfig", &kubeconfig_text(&url, NAMESPACE))
        .display()
        .to_string();
    dir.write(
        "ws/config.yaml",
        "executors:\n  kubernetes:\n    image: registry.invalid/capstan:0.1\n    ttl_seconds_after_finished: 600\n",
    );
    (kubelet, config)
}

fn on_cluster(dir: &Dir, kubeconfig: &str, args: &[&str]) -> Command {
    let mut cmd = dir.command(args);
    cmd.env("KUBECONFIG", kubeconfig);
    cmd
}

/// Starts `capstan run PIPELINE --executor kubernetes -q` in the background.
fn spawn_on_cluster(dir: &Dir, kubeconfig: &str, pipeline: &Path) -> Child {
    on_cluster(
        dir,
        kubeconfig,
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--executor",
            "kubernetes",
            "-q",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until `task` has a Job whose pod runs and `also` holds; returns the Job's name.
fn running_job(kubelet: &Kubelet, task: &str, also: impl Fn() -> bool) -> String {
    let mut name = None;
    assert!(
        eventually(Duration::from_secs(60), || {
            name = kubelet
                .jobs_of_task(task)
                .into_iter()
                .find(|(_, j)| j.phase() == Phase::Running)
                .map(|(n, _)| n);
            name.is_some() && also()
        }),
        "no running Job for `{task}`: {:?}",
        kubelet.jobs().keys().collect::<Vec<_>>()
    );
    name.unwrap()
}

#[test]
fn a_pipeline_runs_through_jobs_of_a_mock_api_server_and_is_cached_after() {
    let dir = Dir::new();
    let (kubelet, config) = mock_cluster(&dir);
    let pipeline = dir.write(
        "p.yaml",
        r#"name: kube
params:
  factors: {type: list, default: [1, 3]}
steps:
  produce:
    run: [sh, -c, "mkdir -p {{ outputs.corpus }}/sub && echo one two > {{ outputs.corpus }}/a.txt && echo three > {{ outputs.corpus }}/sub/b.txt && printf 3 > {{ outputs.words }} && echo produced the corpus"]
    outputs:
      artifacts: {corpus: Dataset}
      parameters: {words: int}
  count:
    for_each: "{{ params.factors }}"
    run: [sh, -c, "n=$(cat $0/a.txt $0/sub/b.txt | wc -w); echo $((n * {{ item }})) > {{ outputs.n }}", "{{ steps.produce.outputs.corpus }}"]
    outputs:
      parameters: {n: int}
  check:
    run: [sh, -c, "test {{ steps.produce.outputs.words }} = 3 && echo counted {{ steps.count.outputs.n }}"]
"#,
    );
    let pipeline = pipeline.to_str().unwrap();
    let run = || {
        Run::from(
            on_cluster(
                &dir,
                &config,
                &["run", pipeline, "--executor", "kubernetes"],
            )
            .output()
            .unwrap(),
        )
    };
    let (id, shown) = succeeded_on(&dir, &run(), "kubernetes");
    assert_eq!(task(&shown, "count[0]")["outputs"]["parameters"]["n"], 3);
    assert_eq!(task(&shown, "count[1]")["outputs"]["parameters"]["n"], 9);
    // One Job per task, each run to completion by its pod and left for the TTL to remove.
    for name in ["produce", "count[0]", "count[1]", "check"] {
        let jobs = kubelet.jobs_of_task(name);
        assert_eq!(jobs.len(), 1, "{name}");
        assert_eq!(jobs[0].1.phase(), Phase::Exited(0), "{name}");
    }
    assert!(
        kubelet
            .requests
            .with_method(&axum::http::Method::DELETE)
            .is_empty()
    );
    // The pods' logs are the tasks' logs.
    let logs = dir.task_log(&id, "check");
    assert!(logs.contains("counted [3,9]"), "{logs}");
    let logs = dir.task_log(&id, "produce");
    assert!(logs.contains("produced the corpus"), "{logs}");

    // The outputs were recorded as for local steps: run again, every step is a cache hit and
    // no Job is created. (The image is part of the cache key, so a local run would not be.)
    let again = run();
    again.ok();
    let again = dir.show(&again.run_id());
    for (name, status) in statuses(&again) {
        assert_eq!(status, "cached", "{name}: {again:#}");
    }
    assert_eq!(kubelet.jobs().len(), 4);
}

#[test]
fn cancel_deletes_the_running_job() {
    let dir = Dir::new();
    let (kubelet, config) = mock_cluster(&dir);
    let pipeline = dir.write(
        "p.yaml",
        "name: kube-cancel\nsteps:\n  slow: {run: [sh, -c, \"echo started; sleep 120\"]}\n",
    );
    let mut child = spawn_on_cluster(&dir, &config, &pipeline);
    let job = running_job(&kubelet, "slow", || true);
    let id = first_run_id(&dir).unwrap();
    cancel_run(&dir, &mut child, &id, "slow");
    // The Job was deleted through the API, which stopped its pod.
    assert_eq!(kubelet.jobs()[&job].phase(), Phase::Deleted);
    let deletes = kubelet.requests.with_method(&axum::http::Method::DELETE);
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert!(deletes[0].uri.contains(&job), "{deletes:#?}");
    assert!(deletes[0].body.contains("Background"), "{deletes:#?}");
}

/// A workspace, the mock cluster, and the one-step pipeline `p.yaml` that `yaml` writes for a
/// marker file at the path it is given.
fn with_marker(yaml: impl Fn(&Path) -> String) -> (Dir, Arc<Kubelet>, String, PathBuf, PathBuf) {
    let dir = Dir::new();
    let (kubelet, config) = mock_cluster(&dir);
    let marker = dir.path().join("marker");
    let pipeline = dir.write("p.yaml", &yaml(&marker));
    (dir, kubelet, config, pipeline, marker)
}

#[test]
fn a_job_deleted_behind_capstans_back_fails_the_attempt_and_is_retried() {
    let (dir, kubelet, config, pipeline, marker) = with_marker(|m| {
        format!(
            "name: kube-vanish\nsteps:\n  victim:\n    run: [sh, -c, \"test -e {m} && exit 0; touch {m}; sleep 120\"]\n    retries: {{limit: 1, backoff: 0s}}\n",
            m = m.display()
        )
    });
    let child = on_cluster(
        &dir,
        &config,
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--executor",
            "kubernetes",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let first = running_job(&kubelet, "victim", || marker.exists());
    // As `kubectl delete job` would.
    assert!(kubelet.delete(&first));
    let out = wait_output(child, Duration::from_secs(90));
    out.ok();
    assert!(
        out.stderr
            .contains(&format!("Job {first} was deleted before it finished")),
        "{}",
        out.stderr
    );
    let shown = dir.show(&first_run_id(&dir).unwrap());
    let victim = task(&shown, "victim");
    assert_eq!(victim["status"], "succeeded", "{shown:#}");
    assert_eq!(victim["attempts"], 2);
    let jobs = kubelet.jobs_of_task("victim");
    assert_eq!(jobs.len(), 2, "one Job per attempt");
    assert_eq!(kubelet.jobs()[&first].phase(), Phase::Deleted);
}

#[test]
fn resume_after_kill_dash_nine_reattaches_to_the_running_job() {
    let (dir, kubelet, config, pipeline, started) = with_marker(|s| {
        format!(
            "name: kube-reattach\nsteps:\n  long:\n    run: [sh, -c, \"echo run >> {s}; sleep 5; echo finished > {{{{ outputs.done }}}}\"]\n    outputs: {{parameters: {{done: string}}}}\n  next: {{run: [echo, \"{{{{ steps.long.outputs.done }}}}\"]}}\n",
            s = s.display()
        )
    });
    let mut child = spawn_on_cluster(&dir, &config, &pipeline);
    let job = running_job(&kubelet, "long", || started.exists());
    let _ = child.kill(); // SIGKILL: the Job outlives its orchestrator
    let _ = child.wait();
    assert_eq!(
        kubelet.jobs()[&job].phase(),
        Phase::Running,
        "the Job should still run after the orchestrator died"
    );
    let id = first_run_id(&dir).unwrap();
    let resumed = Run::from(
        on_cluster(&dir, &config, &["resume", &id])
            .output()
            .unwrap(),
    );
    resumed.ok();
    let shown = dir.show(&id);
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let long = task(&shown, "long");
    assert_eq!(long["attempts"], 1, "{long:#}");
    assert_eq!(
        long["outputs"]["parameters"]["done"], "finished",
        "{long:#}"
    );
    // Re-attached, not created twice: one Job, and the step ran once.
    assert_eq!(kubelet.jobs_of_task("long").len(), 1);
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "run\n");
}
