//! `capstan run --executor ray` against a real local Ray head, through its Jobs REST API.
//!
//! `CAPSTAN_TEST_RAY_ADDRESS` names the head's dashboard, as printed by `scripts/ray-head.sh`
//! (which `scripts/test.sh` runs). Without it these tests are skipped with a notice, unless
//! `CAPSTAN_REQUIRE_RAY=1` (as in CI) turns the skip into a failure. Each step runs as a Ray job
//! whose entrypoint is this build's `capstan step-exec`; the head is on this machine, so the
//! workspace's `file://` artifact store is shared by the head and its workers.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    Dir, Run, cancel_run, eventually, http_request, repo_root, statuses, succeeded_on, task,
    wait_with_timeout,
};

pub fn ray_address() -> Option<String> {
    match std::env::var("CAPSTAN_TEST_RAY_ADDRESS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CAPSTAN_REQUIRE_RAY").as_deref() == Ok("1") {
                panic!(
                    "CAPSTAN_REQUIRE_RAY=1 but CAPSTAN_TEST_RAY_ADDRESS is not set; run scripts/ray-head.sh"
                );
            }
            eprintln!("skipping Ray test: set CAPSTAN_TEST_RAY_ADDRESS (see scripts/ray-head.sh)");
            None
        }
    }
}

pub fn on_ray(dir: &Dir, address: &str, args: &[&str]) -> Command {
    let mut cmd = dir.command(args);
    cmd.env("RAY_ADDRESS", address);
    cmd
}

fn run_on_ray(dir: &Dir, address: &str, args: &[&str]) -> Run {
    Run::from(on_ray(dir, address, args).output().expect("spawn capstan"))
}

/// A bare HTTP/1.1 request to the Ray dashboard; the tests need no HTTP client of their own.
fn ray_http(address: &str, method: &str, path: &str) -> (u16, String) {
    let host = address.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = TcpStream::connect(host).expect("connect to the Ray dashboard");
    http_request(&mut conn, host, method, path)
}

/// The Ray jobs capstan submitted for one task of one run.
fn jobs_of(address: &str, run_id: &str, task: &str) -> Vec<Value> {
    let (status, body) = ray_http(address, "GET", "/api/jobs/");
    assert_eq!(status, 200, "{body}");
    let jobs: Vec<Value> = serde_json::from_str(&body).unwrap();
    jobs.into_iter()
        .filter(|j| {
            j["metadata"]["capstan_run_id"] == run_id && j["metadata"]["capstan_task"] == task
        })
        .collect()
}

pub fn first_run_id(dir: &Dir) -> Option<String> {
    let list = dir.run(&["runs", "list", "--output", "json"]);
    list.json()
        .as_array()
        .and_then(|runs| runs.first())
        .and_then(|r| r["id"].as_str())
        .map(str::to_string)
}

/// Starts `capstan run PIPELINE --executor ray -q` in the background.
fn spawn_on_ray(dir: &Dir, address: &str, pipeline: &Path) -> Child {
    on_ray(
        dir,
        address,
        &["run", pipeline.to_str().unwrap(), "--executor", "ray", "-q"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until the only run in `dir` has a RUNNING Ray job for `task` and `also` holds; returns
/// the run id and the job.
fn running_job(dir: &Dir, address: &str, task: &str, also: impl Fn() -> bool) -> (String, Value) {
    let mut found = None;
    assert!(
        eventually(Duration::from_secs(60), || {
            found = first_run_id(dir).and_then(|id| {
                let job = jobs_of(address, &id, task)
                    .into_iter()
                    .find(|j| j["status"] == "RUNNING")?;
                Some((id, job))
            });
            found.is_some() && also()
        }),
        "no running Ray job for `{task}`"
    );
    found.unwrap()
}

#[test]
fn quickstart_runs_unchanged_on_ray_and_caches_like_local() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let pipeline = repo_root().join("examples/quickstart/pipeline.yaml");
    let pipeline = pipeline.to_str().unwrap();
    let run = run_on_ray(&dir, &address, &["run", pipeline, "--executor", "ray"]);
    let (id, shown) = succeeded_on(&dir, &run, "ray");
    // Steps' output reached the task logs, without the job manager's banner.
    let logs = dir.task_log(&id, "register");
    assert!(logs.contains("registered model"), "{logs}");
    assert!(!logs.contains("step-exec --envelope"), "{logs}");
    assert_eq!(jobs_of(&address, &id, "data").len(), 1);

    // Outputs were recorded exactly as for local steps: the same pipeline run locally is served
    // from the cache that the Ray run filled.
    let local = dir.run(&["run", pipeline]);
    local.ok();
    let again = dir.show(&local.run_id());
    for (name, status) in statuses(&again) {
        let expected = if name == "report" {
            "succeeded"
        } else {
            "cached"
        };
        assert_eq!(status, expected, "{name}: {again:#}");
    }
    assert_eq!(
        task(&again, "data")["outputs"]["artifacts"]["dataset"]["digest"],
        task(&shown, "data")["outputs"]["artifacts"]["dataset"]["digest"]
    );
}

#[test]
fn artifacts_parameters_and_retries_pass_through_ray_jobs() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let marker = dir.path().join("failed-once");
    let yaml = format!(
        r#"name: ray-handoff
steps:
  produce:
    run: [sh, -c, "mkdir -p {{{{ outputs.corpus }}}}/sub && echo one two > {{{{ outputs.corpus }}}}/a.txt && echo three > {{{{ outputs.corpus }}}}/sub/b.txt && printf 3 > {{{{ outputs.words }}}}"]
    outputs:
      artifacts: {{corpus: Dataset}}
      parameters: {{words: int}}
  flaky:
    run: [sh, -c, "test -e {m} || {{ touch {m}; echo first attempt fails; exit 3; }}; cat $0/a.txt $0/sub/b.txt | wc -w | tr -d ' ' > {{{{ outputs.count }}}}", "{{{{ steps.produce.outputs.corpus }}}}"]
    retries: {{limit: 2, backoff: 0s}}
    resources: {{cpu: 0.5, memory: 64Mi}}
    outputs:
      parameters: {{count: int}}
  check:
    run: [sh, -c, "test {{{{ steps.flaky.outputs.count }}}} = {{{{ steps.produce.outputs.words }}}} && echo counts agree"]
"#,
        m = marker.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let run = run_on_ray(
        &dir,
        &address,
        &["run", path.to_str().unwrap(), "--executor", "ray"],
    );
    run.ok();
    let id = run.run_id();
    let shown = dir.show(&id);
    assert_eq!(task(&shown, "produce")["outputs"]["parameters"]["words"], 3);
    let flaky = task(&shown, "flaky");
    assert_eq!(flaky["attempts"], 2, "{flaky:#}");
    assert_eq!(flaky["outputs"]["parameters"]["count"], 3, "{flaky:#}");
    assert_eq!(task(&shown, "check")["status"], "succeeded");
    // One Ray job per attempt, each with its own submission id. (The head accepted the step's
    // resources as the entrypoint's; its job listing does not show them.)
    assert_eq!(jobs_of(&address, &id, "flaky").len(), 2);
    // The directory artifact round-trips with its digest.
    let corpus = &task(&shown, "produce")["outputs"]["artifacts"]["corpus"];
    let out = dir.path().join("corpus-copy");
    dir.run(&[
        "artifacts",
        "get",
        corpus["uri"].as_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("sub/b.txt")).unwrap(),
        "three\n"
    );
}

#[test]
fn a_failing_step_fails_the_run_with_its_exit_code() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        "name: ray-fail\nsteps:\n  bad: {run: [sh, -c, \"echo about to fail; exit 7\"]}\n  after: {run: [echo, never], after: [bad]}\n",
    );
    let run = run_on_ray(
        &dir,
        &address,
        &["run", path.to_str().unwrap(), "--executor", "ray"],
    );
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    let shown = dir.show(&run.run_id());
    assert_eq!(shown["status"], "failed");
    let bad = task(&shown, "bad");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["exit_code"], 7, "{bad:#}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 7"),
        "{bad:#}"
    );
    assert_ne!(task(&shown, "after")["status"], "succeeded");
}

#[test]
fn cancel_and_timeout_stop_the_ray_job() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        "name: ray-stop\nsteps:\n  slow: {run: [sh, -c, \"echo started; sleep 120\"]}\n  capped: {run: [sleep, \"120\"], timeout: 3s}\n",
    );
    let mut child = spawn_on_ray(&dir, &address, &path);
    let (id, _) = running_job(&dir, &address, "slow", || true);
    // The timeout fires first; then the run is cancelled.
    assert!(eventually(Duration::from_secs(60), || {
        task(&dir.show(&id), "capped")["status"] == "failed"
    }));
    let shown = cancel_run(&dir, &mut child, &id, "slow");
    let capped = task(&shown, "capped");
    assert!(
        capped["message"].as_str().unwrap().contains("timed out"),
        "{capped:#}"
    );
    for name in ["slow", "capped"] {
        assert!(
            eventually(Duration::from_secs(30), || {
                jobs_of(&address, &id, name)
                    .iter()
                    .all(|j| j["status"] != "RUNNING" && j["status"] != "PENDING")
            }),
            "the Ray job of `{name}` still runs"
        );
    }
}

#[test]
fn a_job_stopped_behind_capstans_back_fails_the_attempt_and_is_retried() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let marker = dir.path().join("second");
    let yaml = format!(
        "name: ray-vanish\nsteps:\n  victim:\n    run: [sh, -c, \"test -e {m} && exit 0; touch {m}; sleep 120\"]\n    retries: {{limit: 1, backoff: 0s}}\n",
        m = marker.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let mut child = spawn_on_ray(&dir, &address, &path);
    let (_, job) = running_job(&dir, &address, "victim", || marker.exists());
    let submission = job["submission_id"].as_str().unwrap().to_string();
    let (status, body) = ray_http(&address, "POST", &format!("/api/jobs/{submission}/stop"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(90)),
        Some(0)
    );
    let shown = dir.show(&first_run_id(&dir).unwrap());
    let victim = task(&shown, "victim");
    assert_eq!(victim["status"], "succeeded", "{shown:#}");
    assert_eq!(victim["attempts"], 2);
}

#[test]
fn resume_after_kill_dash_nine_reattaches_to_the_running_job() {
    let Some(address) = ray_address() else { return };
    let dir = Dir::new();
    let started = dir.path().join("started");
    let yaml = format!(
        "name: ray-reattach\nsteps:\n  long:\n    run: [sh, -c, \"echo run >> {s}; sleep 6; echo finished > {{{{ outputs.done }}}}\"]\n    outputs: {{parameters: {{done: string}}}}\n  next: {{run: [echo, \"{{{{ steps.long.outputs.done }}}}\"]}}\n",
        s = started.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let mut child = spawn_on_ray(&dir, &address, &path);
    assert!(eventually(Duration::from_secs(60), || started.exists()));
    let _ = child.kill(); // SIGKILL: the Ray job outlives its orchestrator
    let _ = child.wait();
    let id = first_run_id(&dir).unwrap();
    assert_eq!(
        jobs_of(&address, &id, "long")[0]["status"],
        "RUNNING",
        "the job should still run after the orchestrator died"
    );

    let resumed = run_on_ray(&dir, &address, &["resume", &id]);
    resumed.ok();
    let shown = dir.show(&id);
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    let long = task(&shown, "long");
    assert_eq!(long["attempts"], 1, "{long:#}");
    assert!(
        long["outputs"]["parameters"]["done"]
            .as_str()
            .unwrap()
            .starts_with("finished"),
        "{long:#}"
    );
    // Re-attached, not submitted twice: one job, and the step ran once.
    assert_eq!(jobs_of(&address, &id, "long").len(), 1);
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "run\n");
}

#[test]
fn an_unreachable_ray_head_fails_before_the_run_starts() {
    // Needs no Ray: nothing listens on port 9 of loopback.
    let dir = Dir::new();
    let path = dir.write("p.yaml", "name: x\nsteps:\n  a: {run: [echo, hi]}\n");
    let run = run_on_ray(
        &dir,
        "http://127.0.0.1:9",
        &["run", path.to_str().unwrap(), "--executor", "ray"],
    );
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("cannot reach the Ray dashboard at http://127.0.0.1:9"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("RAY_ADDRESS"), "{}", run.stderr);
    assert_eq!(first_run_id(&dir), None, "no run may be recorded");
}

#[test]
fn step_exec_refuses_an_envelope_it_cannot_read() {
    let dir = Dir::new();
    let run = dir.run(&["step-exec", "--envelope", "bm90IGpzb24"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("capstan step-exec: the envelope is not a valid step description"),
        "{}",
        run.stderr
    );
    // Hidden: users do not see it in the help.
    let help = dir.run(&["--help"]);
    assert!(!help.stdout.contains("step-exec"), "{}", help.stdout);
}

#[test]
fn a_kfp_pipeline_runs_on_ray_with_the_same_outputs_as_locally() {
    let Some(address) = ray_address() else { return };
    let Some(bin) = crate::kfp::kfp_bin() else {
        return;
    };
    let dir = Dir::new();
    // As pipelines.py compiles components: capstan satisfies their `pip install` preamble with a
    // Python environment on this machine, where the Ray head's workers run.
    let pipeline = crate::kfp_executors::compile(&dir, &bin, None);
    let out = crate::kfp::kfp_command(&dir, &bin, &["run", &pipeline, "--executor", "ray"])
        .env("RAY_ADDRESS", &address)
        .output()
        .expect("spawn capstan");
    let run = Run::from(out);
    run.ok();
    let id = run.run_id();
    crate::kfp_executors::check_against_local(&dir, &bin, &pipeline, &id, "ray");
    assert_eq!(jobs_of(&address, &id, "for-loop-1/shard[1]").len(), 1);
    // The worker logged the Metrics output to the task's tracking run.
    crate::kfp_executors::check_metric_logged(&dir, &bin, &id);
}
