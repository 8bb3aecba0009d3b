//! The container executor against a real Podman (or Docker) engine.
//!
//! `CAPSTAN_TEST_CONTAINER_HOST` names the engine (`unix:///tmp/capstan-podman.sock`, as printed
//! by `scripts/podman-setup.sh`, which also builds the `localhost/capstan-busybox:latest` image
//! these tests run). Without it the tests are skipped with a notice, unless
//! `CAPSTAN_REQUIRE_CONTAINERS=1`, which turns the skip into a failure.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_exec::{ContainerExecutor, Executor, LogSink, Outcome, TaskSpec, socket_path};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "localhost/capstan-busybox:latest";

/// Every test is bounded, so a hung container fails the test instead of blocking the suite.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn engine() -> Option<PathBuf> {
    match std::env::var("CAPSTAN_TEST_CONTAINER_HOST") {
        Ok(url) if !url.is_empty() => Some(socket_path(&url).expect("CAPSTAN_TEST_CONTAINER_HOST")),
        _ => {
            if std::env::var("CAPSTAN_REQUIRE_CONTAINERS").as_deref() == Ok("1") {
                panic!(
                    "CAPSTAN_REQUIRE_CONTAINERS=1 but CAPSTAN_TEST_CONTAINER_HOST is not set; run scripts/podman-setup.sh"
                );
            }
            eprintln!(
                "skipping container executor test: set CAPSTAN_TEST_CONTAINER_HOST (see scripts/podman-setup.sh)"
            );
            None
        }
    }
}

fn executor(socket: &Path) -> ContainerExecutor {
    ContainerExecutor::new(socket).with_grace_period(Duration::from_millis(500))
}

/// A spec whose run id is unique to this test, so that leftover containers can be found by label.
fn spec(dir: &Path, test: &str, script: &str) -> TaskSpec {
    TaskSpec {
        run_id: format!("test-{}-{test}", std::process::id()),
        task: "step".into(),
        attempt: 1,
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        workdir: dir.to_path_buf(),
        timeout: None,
        log_path: dir.join("logs/step.1.log"),
        image: Some(IMAGE.into()),
        resources: serde_json::Value::Null,
        mounts: vec![dir.to_path_buf()],
        handoff: None,
    }
}

async fn run_with(
    executor: &ContainerExecutor,
    spec: TaskSpec,
    cancel: CancellationToken,
    sink: Option<LogSink>,
) -> Outcome {
    tokio::time::timeout(TEST_LIMIT, executor.run(spec, cancel, sink))
        .await
        .expect("the container did not finish within the test limit")
}

async fn run(executor: &ContainerExecutor, spec: TaskSpec) -> Outcome {
    run_with(executor, spec, CancellationToken::new(), None).await
}

fn log_of(spec: &TaskSpec) -> String {
    std::fs::read_to_string(&spec.log_path).unwrap_or_default()
}

/// The containers, running or not, labelled with `run_id`, asked of the engine directly.
fn containers_of(socket: &Path, run_id: &str) -> Vec<serde_json::Value> {
    let filters = format!(r#"{{"label":["capstan.run={run_id}"]}}"#);
    let encoded: String = filters
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET /v1.41/containers/json?all=true&filters={encoded} HTTP/1.0\r\nHost: capstan\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    serde_json::from_str::<Vec<serde_json::Value>>(body).unwrap()
}

#[tokio::test]
async fn exit_codes_become_outcomes() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(&socket);
    assert_eq!(
        run(&ex, spec(dir.path(), "exit0", "true")).await,
        Outcome::Exited(0)
    );
    assert_eq!(
        run(&ex, spec(dir.path(), "exit3", "exit 3")).await,
        Outcome::Exited(3)
    );
    let mut argv = spec(dir.path(), "argv", "");
    argv.argv = vec!["false".into()];
    assert_eq!(run(&ex, argv).await, Outcome::Exited(1));
}

#[tokio::test]
async fn output_reaches_the_log_and_the_sink() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink_seen = seen.clone();
    let sink: LogSink = Arc::new(move |task: &str, bytes: &[u8]| {
        assert_eq!(task, "step");
        sink_seen.lock().unwrap().extend_from_slice(bytes);
    });
    let s = spec(
        dir.path(),
        "logs",
        "echo to stdout; echo to stderr >&2; printf 'no newline'",
    );
    let outcome = run_with(
        &executor(&socket),
        s.clone(),
        CancellationToken::new(),
        Some(sink),
    )
    .await;
    assert_eq!(outcome, Outcome::Exited(0));
    let log = log_of(&s);
    for line in ["to stdout\n", "to stderr\n", "no newline"] {
        assert!(log.contains(line), "log lacks {line:?}: {log:?}");
    }
    let seen = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert_eq!(seen.len(), log.len(), "sink {seen:?} vs log {log:?}");
}

#[tokio::test]
async fn env_and_workdir_are_the_steps() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut s = spec(dir.path(), "env", "echo \"greeting=$GREETING\"; pwd");
    s.env = vec![("GREETING".into(), "hello world".into())];
    s.workdir = sub.clone();
    assert_eq!(run(&executor(&socket), s.clone()).await, Outcome::Exited(0));
    let log = log_of(&s);
    assert!(log.contains("greeting=hello world\n"), "{log}");
    assert!(log.contains(&format!("{}\n", sub.display())), "{log}");
}

#[tokio::test]
async fn files_pass_through_the_mounts_both_ways() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\nthree\n").unwrap();
    let output = dir.path().join("out/count");
    std::fs::create_dir_all(output.parent().unwrap()).unwrap();
    let script = format!("wc -l < {} > {}", input.display(), output.display());
    let outcome = run(&executor(&socket), spec(dir.path(), "mounts", &script)).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(std::fs::read_to_string(&output).unwrap().trim(), "3");
}

#[tokio::test]
async fn no_network_by_default() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "net", "ls /sys/class/net");
    assert_eq!(run(&executor(&socket), s.clone()).await, Outcome::Exited(0));
    let interfaces: Vec<String> = log_of(&s).split_whitespace().map(str::to_string).collect();
    assert_eq!(interfaces, vec!["lo".to_string()]);
}

#[tokio::test]
async fn the_container_is_removed_after_success_and_failure() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ok = spec(dir.path(), "removed-ok", "echo done");
    let run_id = ok.run_id.clone();
    assert_eq!(run(&executor(&socket), ok).await, Outcome::Exited(0));
    assert_eq!(
        containers_of(&socket, &run_id),
        Vec::<serde_json::Value>::new()
    );
    let bad = spec(dir.path(), "removed-bad", "exit 9");
    let run_id = bad.run_id.clone();
    assert_eq!(run(&executor(&socket), bad).await, Outcome::Exited(9));
    assert_eq!(
        containers_of(&socket, &run_id),
        Vec::<serde_json::Value>::new()
    );
}

#[tokio::test]
async fn a_timeout_kills_and_removes_the_container() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "timeout", "echo started; sleep 60");
    s.timeout = Some(Duration::from_secs(2));
    let run_id = s.run_id.clone();
    let started = Instant::now();
    let outcome = run(&executor(&socket), s.clone()).await;
    assert_eq!(outcome, Outcome::TimedOut(Duration::from_secs(2)));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(log_of(&s).contains("started\n"));
    assert_eq!(
        containers_of(&socket, &run_id),
        Vec::<serde_json::Value>::new()
    );
}

#[tokio::test]
async fn cancel_stops_and_removes_the_container() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "cancel", "echo started; sleep 60");
    let run_id = s.run_id.clone();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let log_path = s.log_path.clone();
    tokio::spawn(async move {
        // Cancel once the step is demonstrably running.
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("started")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trigger.cancel();
    });
    let started = Instant::now();
    let outcome = run_with(&executor(&socket), s, cancel, None).await;
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        containers_of(&socket, &run_id),
        Vec::<serde_json::Value>::new()
    );
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "missing", "true");
    s.image = Some("localhost/capstan-no-such-image:latest".into());
    let outcome = run(&executor(&socket), s).await;
    let Outcome::SpawnFailed(reason) = outcome else {
        panic!("expected a failure to start, got {outcome:?}");
    };
    assert!(
        reason.contains("image `localhost/capstan-no-such-image:latest`"),
        "{reason}"
    );
    assert!(reason.contains("could not be pulled"), "{reason}");
}

#[tokio::test]
async fn a_step_without_an_image_fails_clearly() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "noimage", "true");
    s.image = None;
    let outcome = run(&executor(&socket), s).await;
    assert_eq!(
        outcome,
        Outcome::SpawnFailed("step step has no `image`, which the container executor needs".into())
    );
}

#[tokio::test]
async fn a_missing_workdir_is_named() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "noworkdir", "true");
    s.workdir = dir.path().join("absent");
    let outcome = run(&executor(&socket), s).await;
    assert_eq!(
        outcome,
        Outcome::SpawnFailed(format!(
            "working directory does not exist: {}",
            dir.path().join("absent").display()
        ))
    );
}

#[tokio::test]
async fn preflight_names_an_unreachable_socket() {
    let Some(socket) = engine() else { return };
    assert_eq!(executor(&socket).preflight().await, Ok(()));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no.sock");
    let err = executor(&missing).preflight().await.unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[tokio::test]
async fn cpu_and_memory_limits_reach_the_container() {
    let Some(socket) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    // cgroup v2 names the files memory.max and cpu.max; v1 has one directory per controller.
    let mut s = spec(
        dir.path(),
        "limits",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    );
    s.resources = serde_json::json!({"cpu": 0.5, "memory": 64 * 1024 * 1024});
    assert_eq!(run(&executor(&socket), s.clone()).await, Outcome::Exited(0));
    let log = log_of(&s);
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("67108864"), "{log}");
    let cpu = lines.next().unwrap_or_default();
    assert!(cpu.split_whitespace().next() == Some("50000"), "{log}");
}
