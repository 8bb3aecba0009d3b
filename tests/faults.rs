//! Steps that fail in every way a process can: each gets a clear message, a non-zero exit, and a
//! store that tells the truth afterwards.

use std::time::Duration;

use crate::util::{Dir, eventually, pid_alive, task, wait_with_timeout};

fn failing(dir: &Dir, yaml: &str) -> (String, serde_json::Value, String) {
    let path = dir.write("p.yaml", yaml);
    let out = dir.run(&["run", path.to_str().unwrap()]);
    assert_eq!(
        out.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let id = out.run_id();
    let run = dir.show(&id);
    assert_eq!(run["status"], "failed", "{run:#}");
    (id, run, out.stderr)
}

#[test]
fn missing_command() {
    let dir = Dir::new();
    let (_, run, stderr) = failing(
        &dir,
        "name: x\nsteps:\n  a: {run: [no-such-program-xyz, --flag]}\n  b: {run: [echo], after: [a]}\n",
    );
    let a = task(&run, "a");
    assert_eq!(a["status"], "failed");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("command not found: no-such-program-xyz"),
        "{a}"
    );
    assert_eq!(task(&run, "b")["status"], "skipped");
    assert!(
        task(&run, "b")["message"]
            .as_str()
            .unwrap()
            .contains("upstream step `a` failed")
    );
    assert!(stderr.contains("no-such-program-xyz"), "{stderr}");
}

#[test]
fn step_that_never_writes_its_output() {
    let dir = Dir::new();
    let (_, run, _) = failing(
        &dir,
        "name: x\nsteps:\n  a:\n    run: [sh, -c, \"exit 0\"]\n    outputs: {artifacts: {model: Model}}\n",
    );
    let msg = task(&run, "a")["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("did not write output artifact `model`"),
        "{msg}"
    );
    let (_, run, _) = failing(
        &dir,
        "name: y\nsteps:\n  a:\n    run: [sh, -c, \"exit 0\"]\n    outputs: {parameters: {acc: float}}\n",
    );
    let msg = task(&run, "a")["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("did not write output parameter `acc`"),
        "{msg}"
    );
}

#[test]
fn output_parameter_of_the_wrong_type() {
    let dir = Dir::new();
    let (_, run, _) = failing(
        &dir,
        "name: x\nsteps:\n  a:\n    run: [sh, -c, \"echo abc > {{ outputs.acc }}\"]\n    outputs: {parameters: {acc: float}}\n",
    );
    let msg = task(&run, "a")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("acc"), "{msg}");
}

#[test]
fn step_killed_by_a_signal() {
    let dir = Dir::new();
    let (_, run, _) = failing(
        &dir,
        "name: x\nsteps:\n  a: {run: [sh, -c, \"kill -9 $$\"]}\n",
    );
    let msg = task(&run, "a")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("signal 9"), "{msg}");
}

#[test]
fn nonzero_exit_code_is_recorded() {
    let dir = Dir::new();
    let (id, run, _) = failing(
        &dir,
        "name: x\nsteps:\n  a: {run: [sh, -c, \"echo oops >&2; exit 3\"]}\n",
    );
    assert_eq!(task(&run, "a")["exit_code"], 3);
    let logs = dir.run(&["runs", "logs", &id, "a"]);
    assert!(logs.ok().stdout.contains("oops"), "{}", logs.stdout);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = Dir::new();
    let pidfile = dir.path().join("child.pid");
    let yaml = format!(
        "name: x\nsteps:\n  a:\n    run: [sh, -c, \"sleep 60 & echo $! > {}; wait\"]\n    timeout: 1s\n",
        pidfile.display()
    );
    let start = std::time::Instant::now();
    let (_, run, _) = failing(&dir, &yaml);
    assert!(start.elapsed() < Duration::from_secs(30));
    let msg = task(&run, "a")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("timed out"), "{msg}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !pid_alive(pid)),
        "background child {pid} survived"
    );
}

#[test]
fn retries_with_backoff_then_success() {
    let dir = Dir::new();
    let counter = dir.path().join("count");
    let yaml = format!(
        "name: x\nsteps:\n  flaky:\n    run: [sh, -c, \"echo x >> {c}; test $(wc -l < {c}) -ge 3\"]\n    retries: {{limit: 3, backoff: 100ms}}\n",
        c = counter.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let out = dir.run(&["run", path.to_str().unwrap(), "-q"]);
    let run = dir.show(&out.ok().run_id());
    assert_eq!(task(&run, "flaky")["status"], "succeeded");
    assert_eq!(task(&run, "flaky")["attempts"], 3);
    let logs = dir
        .run(&["runs", "logs", &out.run_id(), "flaky"])
        .ok()
        .stdout
        .clone();
    assert!(
        logs.contains("attempt 1") && logs.contains("attempt 3"),
        "{logs}"
    );
}

#[test]
fn retries_exhausted() {
    let dir = Dir::new();
    let (_, run, _) = failing(
        &dir,
        "name: x\nsteps:\n  a: {run: [sh, -c, \"exit 1\"], retries: {limit: 2, backoff: 10ms}}\n",
    );
    assert_eq!(task(&run, "a")["attempts"], 3);
    assert!(
        task(&run, "a")["message"]
            .as_str()
            .unwrap()
            .contains("attempt 3")
    );
}

/// A full disk while storing an output: the step fails with a clear message and the store stays
/// consistent. Needs root to mount a tiny tmpfs (CI runs as root).
#[test]
fn disk_full_while_storing_an_output() {
    let dir = Dir::new();
    let mnt = dir.path().join("tiny");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !nix::unistd::Uid::effective().is_root(),
            "root but cannot mount a tmpfs"
        );
        eprintln!("skipping: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let yaml = "name: x\nsteps:\n  big:\n    run: [sh, -c, \"head -c 2000000 /dev/urandom > {{ outputs.blob }}\"]\n    outputs: {artifacts: {blob: Dataset}}\n  after: {run: [echo], after: [big]}\n";
    let path = dir.write("p.yaml", yaml);
    let art = mnt.display().to_string();
    let out = dir.run(&[
        "--artifacts-destination",
        &art,
        "run",
        path.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let run = dir
        .run(&[
            "--artifacts-destination",
            &art,
            "runs",
            "show",
            &out.run_id(),
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(run["status"], "failed");
    let big = task(&run, "big");
    assert_eq!(big["status"], "failed");
    assert!(
        big["message"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{big}"
    );
    assert_eq!(task(&run, "after")["status"], "skipped");
    // No partial blob is visible in the store.
    let blobs = mnt.join("blobs");
    let count = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(count, 0, "partial blob left in {}", blobs.display());
}

#[test]
fn ctrl_c_cancels_the_run_and_kills_steps() {
    let dir = Dir::new();
    let pidfile = dir.path().join("step.pid");
    let yaml = format!(
        "name: x\nsteps:\n  long: {{run: [sh, -c, \"echo $$ > {}; sleep 60\"]}}\n  next: {{run: [echo], after: [long]}}\nfinally:\n  cleanup: {{run: [sh, -c, \"echo cleanup saw {{{{ run.status }}}}\"]}}\n",
        pidfile.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let mut child = dir.spawn(&["run", path.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(20), || pidfile.exists()
        && std::fs::read_to_string(&pidfile)
            .is_ok_and(|s| s.ends_with('\n'))));
    let step_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let code = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(130));
    assert!(
        eventually(Duration::from_secs(5), || !pid_alive(step_pid)),
        "step survived cancel"
    );
    let list = dir.run(&["runs", "list", "--output", "json"]).ok().json();
    let id = list[0]["id"].as_str().unwrap().to_string();
    let run = dir.show(&id);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(task(&run, "long")["status"], "cancelled");
    assert_eq!(task(&run, "next")["status"], "cancelled");
    assert_eq!(task(&run, "cleanup")["status"], "succeeded");
    let logs = dir
        .run(&["runs", "logs", &id, "cleanup"])
        .ok()
        .stdout
        .clone();
    assert!(logs.contains("cleanup saw cancelled"), "{logs}");
}
