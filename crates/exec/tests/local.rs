//! The local executor against real processes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_exec::{Executor, LocalExecutor, LogSink, Outcome, TaskSpec};
use tokio_util::sync::CancellationToken;

/// Every test is bounded, so a hung child fails the test instead of blocking the suite.
const TEST_LIMIT: Duration = Duration::from_secs(30);

fn spec(dir: &Path, argv: &[&str]) -> TaskSpec {
    TaskSpec {
        run_id: "run1".into(),
        task: "step".into(),
        attempt: 1,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        workdir: dir.to_path_buf(),
        timeout: None,
        log_path: dir.join("logs/run1/step.1.log"),
        image: None,
        resources: serde_json::Value::Null,
        mounts: Vec::new(),
        handoff: None,
    }
}

fn sh(dir: &Path, script: &str) -> TaskSpec {
    spec(dir, &["sh", "-c", script])
}

async fn run(executor: &LocalExecutor, spec: TaskSpec) -> Outcome {
    run_with(executor, spec, CancellationToken::new(), None).await
}

async fn run_with(
    executor: &LocalExecutor,
    spec: TaskSpec,
    cancel: CancellationToken,
    sink: Option<LogSink>,
) -> Outcome {
    tokio::time::timeout(TEST_LIMIT, executor.run(spec, cancel, sink))
        .await
        .expect("the step did not finish within the test limit")
}

fn log_of(spec_log: &PathBuf) -> String {
    String::from_utf8(std::fs::read(spec_log).unwrap()).unwrap()
}

/// True once `pid` no longer runs: it is gone, or it is a zombie nobody reaped yet (in a container
/// without an init, orphans that die stay zombies).
fn process_gone(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
        Err(_) => true,
    }
}

async fn wait_gone(pid: i32) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn read_pid(path: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no pid written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ex = LocalExecutor::new();
    assert_eq!(run(&ex, sh(dir.path(), "exit 0")).await, Outcome::Exited(0));
    assert_eq!(run(&ex, sh(dir.path(), "exit 3")).await, Outcome::Exited(3));
    assert_eq!(
        run(&ex, spec(dir.path(), &["false"])).await,
        Outcome::Exited(1)
    );
}

#[tokio::test]
async fn a_step_that_kills_itself_is_signaled() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(&LocalExecutor::new(), sh(dir.path(), "kill -9 $$")).await;
    assert_eq!(outcome, Outcome::Signaled(9));
    assert_eq!(outcome.describe(), "killed by signal 9 (SIGKILL)");
}

#[tokio::test]
async fn timeout_kills_the_whole_group_including_background_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let mut task = sh(
        dir.path(),
        &format!("sleep 100 & echo $! > {}; sleep 100", pidfile.display()),
    );
    task.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let outcome = run(&LocalExecutor::new(), task).await;
    assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(500)));
    assert_eq!(outcome.describe(), "timed out after 500ms");
    // sh and sleep die on SIGTERM, so the grace period is not used up.
    assert!(started.elapsed() < Duration::from_secs(20));
    let grandchild = read_pid(&pidfile).await;
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn a_step_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = sh(dir.path(), "trap '' TERM; echo ready; sleep 100");
    task.timeout = Some(Duration::from_millis(300));
    let ex = LocalExecutor::with_grace_period(Duration::from_millis(200));
    let outcome = run(&ex, task).await;
    assert_eq!(outcome, Outcome::TimedOut(Duration::from_millis(300)));
}

#[tokio::test]
async fn cancelling_the_token_stops_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let task = sh(
        dir.path(),
        &format!("sleep 100 & echo $! > {}; wait", pidfile.display()),
    );
    let cancel = CancellationToken::new();
    let ex = LocalExecutor::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { run_with(&ex, task, cancel, None).await }
    });
    let child = read_pid(&pidfile).await;
    cancel.cancel();
    assert_eq!(running.await.unwrap(), Outcome::Cancelled);
    assert!(wait_gone(child).await, "child {child} survived the cancel");
}

#[tokio::test]
async fn an_already_cancelled_token_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let task = sh(dir.path(), &format!("touch {}", marker.display()));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = run_with(&LocalExecutor::new(), task, cancel, None).await;
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(!marker.exists());
}

#[tokio::test]
async fn an_exited_leader_does_not_leave_orphans_or_hang_on_their_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("orphan.pid");
    // The orphan keeps stdout open; the step itself exits at once.
    let task = sh(
        dir.path(),
        &format!("sleep 100 & echo $! > {}; exit 0", pidfile.display()),
    );
    let started = Instant::now();
    assert_eq!(run(&LocalExecutor::new(), task).await, Outcome::Exited(0));
    assert!(started.elapsed() < Duration::from_secs(20));
    let orphan = read_pid(&pidfile).await;
    assert!(wait_gone(orphan).await, "orphan {orphan} survived");
}

#[tokio::test]
async fn both_streams_land_in_the_log_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let task = sh(
        dir.path(),
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done",
    );
    let log_path = task.log_path.clone();
    assert_eq!(run(&LocalExecutor::new(), task).await, Outcome::Exited(0));
    let log = log_of(&log_path);
    let lines: Vec<&str> = log.lines().collect();
    let outs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("out"))
        .collect();
    let errs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("err"))
        .collect();
    assert_eq!(outs, ["out1", "out2", "out3"]);
    assert_eq!(errs, ["err1", "err2", "err3"]);
    assert_eq!(lines.len(), 6);
}

#[tokio::test]
async fn the_log_is_appended_across_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let ex = LocalExecutor::new();
    let first = sh(dir.path(), "echo first");
    let log_path = first.log_path.clone();
    run(&ex, first).await;
    run(&ex, sh(dir.path(), "echo second")).await;
    assert_eq!(log_of(&log_path), "first\nsecond\n");
}

#[tokio::test]
async fn env_and_workdir_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut task = sh(
        &work,
        "echo \"$CAPSTAN_TEST_VALUE\"; pwd; test -n \"$PATH\"",
    );
    task.env = vec![("CAPSTAN_TEST_VALUE".into(), "hello world".into())];
    task.log_path = dir.path().join("step.log");
    assert_eq!(run(&LocalExecutor::new(), task).await, Outcome::Exited(0));
    let log = log_of(&dir.path().join("step.log"));
    let canonical = std::fs::canonicalize(&work).unwrap();
    assert_eq!(log, format!("hello world\n{}\n", canonical.display()));
}

#[tokio::test]
async fn stdin_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    // `cat` would block forever on an inherited terminal; with stdin null it sees EOF at once.
    assert_eq!(
        run(&LocalExecutor::new(), spec(dir.path(), &["cat"])).await,
        Outcome::Exited(0)
    );
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_failure() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(
        &LocalExecutor::new(),
        spec(dir.path(), &["capstan-no-such-program", "x"]),
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::SpawnFailed("command not found: capstan-no-such-program".into())
    );
    let outcome = run(&LocalExecutor::new(), spec(dir.path(), &[])).await;
    assert_eq!(outcome, Outcome::SpawnFailed("empty command".into()));
}

#[tokio::test]
async fn a_missing_workdir_is_a_spawn_failure_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = sh(dir.path(), "true");
    task.workdir = dir.path().join("nope");
    let Outcome::SpawnFailed(reason) = run(&LocalExecutor::new(), task).await else {
        panic!("expected a spawn failure");
    };
    assert!(reason.starts_with("working directory does not exist: "));
    assert!(reason.contains("nope"));
}

/// What the sink was handed: the task name and the bytes.
type Seen = (String, Vec<u8>);

#[tokio::test]
async fn the_sink_sees_output_before_the_step_exits() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    // The step prints, then waits until the test has seen that line and opened the gate.
    let task = sh(
        dir.path(),
        &format!(
            "echo early; while [ ! -e {} ]; do sleep 0.05; done; echo late",
            gate.display()
        ),
    );
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let sink: LogSink = {
        let seen = seen.clone();
        Arc::new(move |task: &str, bytes: &[u8]| {
            seen.lock()
                .unwrap()
                .push((task.to_string(), bytes.to_vec()));
        })
    };
    let ex = LocalExecutor::new();
    let running =
        tokio::spawn(
            async move { run_with(&ex, task, CancellationToken::new(), Some(sink)).await },
        );
    let start = Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sink saw nothing while the step ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running.is_finished());
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(running.await.unwrap(), Outcome::Exited(0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("step".to_string(), b"early\n".to_vec()),
            ("step".to_string(), b"late\n".to_vec())
        ]
    );
}
