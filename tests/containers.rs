//! `capstan run --executor container` against a real Podman (or Docker) engine.
//!
//! `CAPSTAN_TEST_CONTAINER_HOST` names the engine, as printed by `scripts/podman-setup.sh`, which
//! also builds the `localhost/capstan-busybox:latest` image used here and, through
//! `scripts/podman-python-image.sh`, the Debian `localhost/capstan-python:latest` image and
//! `localhost/capstan-kfp:latest` (the same with the kfp SDK). Without it these tests are
//! skipped with a notice, unless `CAPSTAN_REQUIRE_CONTAINERS=1` turns the skip into a failure.

use crate::util::{Dir, outputs_by_task, statuses, task};

const IMAGE: &str = "localhost/capstan-busybox:latest";

fn engine() -> Option<String> {
    match std::env::var("CAPSTAN_TEST_CONTAINER_HOST") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CAPSTAN_REQUIRE_CONTAINERS").as_deref() == Ok("1") {
                panic!(
                    "CAPSTAN_REQUIRE_CONTAINERS=1 but CAPSTAN_TEST_CONTAINER_HOST is not set; run scripts/podman-setup.sh"
                );
            }
            eprintln!(
                "skipping container test: set CAPSTAN_TEST_CONTAINER_HOST (see scripts/podman-setup.sh)"
            );
            None
        }
    }
}

fn run_in(dir: &Dir, host: &str, args: &[&str]) -> crate::util::Run {
    let out = dir
        .command(args)
        .env("CONTAINER_HOST", host)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("spawn capstan");
    crate::util::Run::from(out)
}

fn handoff_pipeline(dir: &Dir) -> String {
    dir.write(
        "handoff.yaml",
        &format!(
            r#"name: handoff
steps:
  produce:
    image: {IMAGE}
    run: [sh, -c, "echo one two three > {{{{ outputs.words }}}}; echo produced"]
    outputs:
      artifacts: {{words: Dataset}}
  count:
    image: {IMAGE}
    env: {{UNIT: words}}
    run: [sh, -c, "wc -w < {{{{ steps.produce.outputs.words }}}} | tr -d ' ' > {{{{ outputs.n }}}}; echo counted $UNIT"]
    outputs:
      parameters: {{n: int}}
"#
        ),
    )
    .display()
    .to_string()
}

#[test]
fn an_artifact_passes_between_two_container_steps() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let pipeline = handoff_pipeline(&dir);
    let first = run_in(&dir, &host, &["run", &pipeline, "--executor", "container"]);
    first.ok();
    let run = dir.show(&first.run_id());
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        task(&run, "count")["outputs"]["parameters"]["n"],
        3,
        "{run:#}"
    );
    assert_eq!(task(&run, "produce")["executor"], "container", "{run:#}");
    let logs = dir.run(&["runs", "logs", &first.run_id(), "count"]);
    logs.ok();
    assert!(logs.stdout.contains("counted words"), "{}", logs.stdout);

    // The executor is not part of the cache key: the same steps on the same image are reused.
    let second = run_in(&dir, &host, &["run", &pipeline, "--executor", "container"]);
    second.ok();
    let run2 = dir.show(&second.run_id());
    assert!(
        statuses(&run2).iter().all(|(_, s)| s == "cached"),
        "{:?}",
        statuses(&run2)
    );
}

#[test]
fn a_per_step_executor_mixes_local_and_container_steps() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let pipeline = dir.write(
        "mixed.yaml",
        &format!(
            r#"name: mixed
steps:
  local:
    run: [sh, -c, "echo 42 > {{{{ outputs.answer }}}}"]
    outputs:
      artifacts: {{answer: Text}}
  boxed:
    executor: container
    image: {IMAGE}
    run: [sh, -c, "cat {{{{ steps.local.outputs.answer }}}} > {{{{ outputs.copy }}}}"]
    outputs:
      parameters: {{copy: int}}
"#
        ),
    );
    let out = run_in(&dir, &host, &["run", pipeline.to_str().unwrap()]);
    out.ok();
    let run = dir.show(&out.run_id());
    assert_eq!(
        task(&run, "boxed")["outputs"]["parameters"]["copy"],
        42,
        "{run:#}"
    );
    assert_eq!(task(&run, "local")["executor"], "local");
    assert_eq!(task(&run, "boxed")["executor"], "container");
}

#[test]
fn the_pipelines_executor_is_the_default_and_the_flag_overrides_it() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let pipeline = dir.write(
        "default.yaml",
        &format!(
            "name: default\nexecutor: container\nsteps:\n  boxed:\n    image: {IMAGE}\n    run: [sh, -c, \"echo boxed\"]\n  pinned:\n    executor: local\n    run: [sh, -c, \"echo pinned\"]\n"
        ),
    );
    let pipeline = pipeline.to_str().unwrap();
    let executors = |args: &[&str]| {
        let out = run_in(&dir, &host, args);
        out.ok();
        let run = dir.show(&out.run_id());
        [
            task(&run, "boxed")["executor"].clone(),
            task(&run, "pinned")["executor"].clone(),
        ]
    };
    // The pipeline's `executor:` for steps that name none; a step's own wins.
    assert_eq!(executors(&["run", pipeline]), ["container", "local"]);
    // `--executor` beats the pipeline's default, not the step's own.
    assert_eq!(
        executors(&["run", pipeline, "--executor", "local", "--no-cache"]),
        ["local", "local"]
    );
}

#[test]
fn a_failing_container_step_fails_the_run_with_its_exit_code() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let pipeline = dir.write(
        "fail.yaml",
        &format!("name: fail\nsteps:\n  bad:\n    image: {IMAGE}\n    run: [sh, -c, \"exit 4\"]\n"),
    );
    let out = run_in(
        &dir,
        &host,
        &["run", pipeline.to_str().unwrap(), "--executor", "container"],
    );
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    let run = dir.show(&out.run_id());
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(task(&run, "bad")["exit_code"], 4, "{run:#}");
}

#[test]
fn a_step_without_an_image_is_rejected_before_the_run() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let pipeline = dir.write(
        "noimage.yaml",
        "name: noimage\nsteps:\n  bare:\n    run: [true]\n",
    );
    let out = run_in(
        &dir,
        &host,
        &["run", pipeline.to_str().unwrap(), "--executor", "container"],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("step `bare`: the container executor needs an `image` for the step"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_unreachable_engine_is_reported_before_the_run() {
    // Needs no engine: it checks the error when there is none.
    let dir = Dir::new();
    let pipeline = handoff_pipeline(&dir);
    let socket = dir.path().join("no-engine.sock");
    let host = format!("unix://{}", socket.display());
    let out = run_in(&dir, &host, &["run", &pipeline, "--executor", "container"]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("the container executor cannot run steps"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&socket.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "no run should start: {}",
        out.stdout
    );
}

#[test]
fn an_unsupported_engine_url_is_reported_before_the_run() {
    // Needs no engine: capstan only speaks to engines on unix sockets.
    let dir = Dir::new();
    let pipeline = handoff_pipeline(&dir);
    let out = run_in(
        &dir,
        "tcp://127.0.0.1:2375",
        &["run", &pipeline, "--executor", "container"],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("container engine URL `tcp://127.0.0.1:2375` is not supported"),
        "{}",
        out.stderr
    );
    // Pipelines that do not use containers are unaffected by a bad engine URL.
    let local = dir.write("local.yaml", "name: local\nsteps:\n  a:\n    run: [true]\n");
    run_in(
        &dir,
        "tcp://127.0.0.1:2375",
        &["run", local.to_str().unwrap()],
    )
    .ok();
}

/// The Debian image with python3 that `scripts/podman-python-image.sh` builds.
const PYTHON_IMAGE: &str = "localhost/capstan-python:latest";

#[test]
fn the_quickstart_runs_unchanged_in_containers_with_the_same_outputs() {
    let Some(host) = engine() else { return };
    let quickstart = crate::util::repo_root()
        .join("examples/quickstart/pipeline.yaml")
        .display()
        .to_string();

    let local = Dir::new();
    let local_run = local.run(&["run", &quickstart]);
    local_run.ok();
    let local_show = local.show(&local_run.run_id());

    // The pipeline file names no image: the workspace config gives the container executor one.
    let boxed = Dir::new();
    boxed.write(
        "ws/config.yaml",
        &format!("executors:\n  container:\n    image: {PYTHON_IMAGE}\n"),
    );
    let boxed_run = run_in(
        &boxed,
        &host,
        &["run", &quickstart, "--executor", "container"],
    );
    boxed_run.ok();
    let boxed_show = boxed.show(&boxed_run.run_id());
    assert_eq!(boxed_show["status"], "succeeded", "{boxed_show:#}");
    for (name, status) in statuses(&boxed_show) {
        assert_eq!(status, "succeeded", "{name}: {boxed_show:#}");
        assert_eq!(task(&boxed_show, &name)["executor"], "container", "{name}");
    }
    // Same interpreter version, same seeds: equal parameters and byte-identical artifacts, except
    // `metrics`, which records the input models' paths (each workspace has its own). Its
    // figures must be equal.
    let without_metrics = |run: &serde_json::Value| {
        let mut outputs = outputs_by_task(run);
        for (name, o) in &mut outputs {
            if name == "evaluate" {
                o["artifacts"].as_object_mut().unwrap().remove("metrics");
            }
        }
        outputs
    };
    assert_eq!(without_metrics(&boxed_show), without_metrics(&local_show));
    let figures = |dir: &Dir, run: &serde_json::Value| {
        let uri = task(run, "evaluate")["outputs"]["artifacts"]["metrics"]["uri"]
            .as_str()
            .unwrap()
            .to_string();
        let path = dir.path().join("metrics.json");
        dir.run(&["artifacts", "get", &uri, "-o", path.to_str().unwrap()])
            .ok();
        let mut metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for m in metrics["models"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("model");
        }
        metrics["best"].as_object_mut().unwrap().remove("model");
        metrics
    };
    let boxed_figures = figures(&boxed, &boxed_show);
    assert_eq!(boxed_figures, figures(&local, &local_show));
    assert_eq!(boxed_figures["models"].as_array().unwrap().len(), 3);

    // The exit handler ran in a container too, and saw the run's status.
    let logs = boxed.run(&["runs", "logs", &boxed_run.run_id(), "report"]);
    assert!(
        logs.ok().stdout.contains("quickstart finished: succeeded"),
        "{}",
        logs.stdout
    );
}

/// Debian with python3 and the kfp SDK, which `scripts/podman-python-image.sh kfp` builds.
const KFP_IMAGE: &str = "localhost/capstan-kfp:latest";

#[test]
fn a_kfp_pipeline_runs_in_containers_with_the_same_outputs_as_locally() {
    let Some(host) = engine() else { return };
    let Some(bin) = crate::kfp::kfp_bin() else {
        return;
    };
    let dir = Dir::new();
    let pipeline = crate::kfp_executors::compile(&dir, &bin, Some((KFP_IMAGE, IMAGE)));
    let in_containers = |extra: &[&str], network: &str| {
        let mut args = vec!["run", pipeline.as_str(), "--executor", "container"];
        args.extend(extra);
        let out = crate::kfp::kfp_command(&dir, &bin, &args)
            .env("CONTAINER_HOST", &host)
            .env_remove("DOCKER_HOST")
            .env("CAPSTAN_CONTAINER_NETWORK", network)
            .output()
            .expect("spawn capstan");
        let run = crate::util::Run::from(out);
        run.ok();
        run.run_id()
    };
    let id = in_containers(&[], "none");
    crate::kfp_executors::check_against_local(&dir, &bin, &pipeline, &id, "container");
    // Without a network (the default) the steps cannot reach the run's tracking server: the
    // metric is in the Metrics artifact's metadata only.
    let evaluate = crate::kfp::task_tracking_run(&dir, &bin, &id, "evaluate");
    assert!(
        evaluate["data"]["metrics"]
            .as_array()
            .is_none_or(|m| m.is_empty()),
        "{evaluate:#}"
    );
    // With the host's network it lands on the task's tracking run, as for local steps.
    let id = in_containers(&["--no-cache"], "host");
    crate::kfp_executors::check_metric_logged(&dir, &bin, &id);
}

/// A bare request to the engine on its unix socket.
fn engine_http(host: &str, method: &str, path: &str) -> (u16, String) {
    let socket = host.trim_start_matches("unix://");
    let mut conn = std::os::unix::net::UnixStream::connect(socket).expect("connect to the engine");
    crate::util::http_request(&mut conn, "d", method, path)
}

#[test]
fn a_container_removed_behind_capstans_back_fails_the_attempt_and_is_retried() {
    let Some(host) = engine() else { return };
    let dir = Dir::new();
    let marker = dir.path().join("second");
    let pipeline = dir.write(
        "vanish.yaml",
        &format!(
            "name: vanish\nsteps:\n  victim:\n    image: {IMAGE}\n    run: [sh, -c, \"test -e {m} && exit 0; touch {m}; sleep 120\"]\n    retries: {{limit: 1, backoff: 0s}}\n",
            m = marker.display()
        ),
    );
    let child = dir
        .command(&["run", pipeline.to_str().unwrap(), "--executor", "container"])
        .env("CONTAINER_HOST", &host)
        .env_remove("DOCKER_HOST")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first attempt's container, once its step runs.
    let mut victim = None;
    assert!(crate::util::eventually(
        std::time::Duration::from_secs(60),
        || {
            let Some(run_id) = crate::ray::first_run_id(&dir) else {
                return false;
            };
            let (status, body) = engine_http(&host, "GET", "/containers/json");
            assert_eq!(status, 200, "{body}");
            let containers: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            victim = containers
                .into_iter()
                .find(|c| {
                    c["Labels"]["capstan.run"] == run_id.as_str()
                        && c["Labels"]["capstan.task"] == "victim"
                        && c["Labels"]["capstan.attempt"] == "1"
                })
                .and_then(|c| c["Id"].as_str().map(str::to_string));
            victim.is_some() && marker.exists()
        }
    ));
    let id = victim.unwrap();
    // As `podman rm -f` would.
    let (status, body) = engine_http(&host, "DELETE", &format!("/containers/{id}?force=true"));
    assert!(status < 300, "{status} {body}");
    let out = crate::util::wait_output(child, std::time::Duration::from_secs(90));
    out.ok();
    // The first attempt failed with the engine's reason, and the retry succeeded. Depending on
    // whether the engine's `wait` sees the kill or the removal first, the reason is the
    // container's end by SIGKILL or its absence.
    let gone = format!("attempt 1: step victim: container {} failed", &id[..12]);
    assert!(
        out.stderr.contains(&gone) || out.stderr.contains("attempt 1: exited with code 137"),
        "{}",
        out.stderr
    );
    let run = dir.show(&out.run_id());
    let victim = task(&run, "victim");
    assert_eq!(victim["status"], "succeeded", "{run:#}");
    assert_eq!(victim["attempts"], 2, "{run:#}");
}
