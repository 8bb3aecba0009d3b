//! `capstan run --executor container` against a real Podman (or Docker) engine.
//!
//! `CAPSTAN_TEST_CONTAINER_HOST` names the engine, as printed by `scripts/podman-setup.sh`, which
//! also builds the `localhost/capstan-busybox:latest` image used here. Without it these tests are
//! skipped with a notice, unless `CAPSTAN_REQUIRE_CONTAINERS=1` turns the skip into a failure.

use crate::util::{Dir, statuses, task};

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
