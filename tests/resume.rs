//! Crash safety: kill -9 the orchestrator at random moments, then `capstan resume` finishes the
//! run without rerunning finished steps and without losing anything recorded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::util::{Dir, eventually, statuses, task, wait_with_timeout};

/// Six steps with fan-out and fan-in. Every step appends its name to a ledger when it runs, so
/// the test can count executions.
fn pipeline(dir: &Dir) -> String {
    let ledger = dir.path().join("ledger");
    let yaml = format!(
        r#"
name: crashy
params:
  parts: {{type: list, default: [1, 2, 3]}}
steps:
  source:
    run: [sh, -c, "echo source >> {l}; sleep 0.2; seq 1 100 > {{{{ outputs.data }}}}"]
    outputs: {{artifacts: {{data: Dataset}}}}
  work:
    for_each: "{{{{ params.parts }}}}"
    run: [sh, -c, "echo work{{{{ item }}}} >> {l}; sleep 0.15; wc -l < {{{{ steps.source.outputs.data }}}} > {{{{ outputs.n }}}}"]
    outputs: {{parameters: {{n: int}}}}
  combine:
    run: [sh, -c, "echo combine >> {l}; sleep 0.1; echo '{{{{ steps.work.outputs.n }}}}' > {{{{ outputs.all }}}}"]
    outputs: {{artifacts: {{all: Artifact}}}}
  last:
    run: [sh, -c, "echo last >> {l}; cat {{{{ steps.combine.outputs.all }}}}"]
"#,
        l = ledger.display()
    );
    dir.write("crashy.yaml", &yaml).display().to_string()
}

fn ledger_counts(dir: &Dir) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(dir.path().join("ledger"))
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

fn ledger_name(task: &str) -> String {
    // work[0] runs item 1 and writes "work1".
    match task.strip_prefix("work[").and_then(|s| s.strip_suffix(']')) {
        Some(i) => format!("work{}", i.parse::<usize>().unwrap() + 1),
        None => task.to_string(),
    }
}

#[test]
fn kill_dash_nine_at_random_moments_then_resume() {
    // A cheap deterministic sequence of kill points spread over the run (about 1 s long).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20 {
        let dir = Dir::new();
        let file = pipeline(&dir);
        let delay = Duration::from_millis(next() % 1300);
        let mut child = dir.spawn(&["run", &file, "-q", "--parallelism", "2"]);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // The run may not have been created yet if the kill came very early.
        let list = dir.run(&["runs", "list", "--output", "json"]).ok().json();
        let Some(id) = list
            .as_array()
            .and_then(|a| a.first())
            .map(|r| r["id"].as_str().unwrap().to_string())
        else {
            continue;
        };
        let before = dir.show(&id);
        let finished: Vec<String> = statuses(&before)
            .into_iter()
            .filter(|(_, s)| s == "succeeded")
            .map(|(n, _)| n)
            .collect();
        let before_counts = ledger_counts(&dir);

        let resumed = dir.run(&["resume", &id]);
        resumed.ok();
        let after = dir.show(&id);
        assert_eq!(
            after["status"], "succeeded",
            "round {round} (kill at {delay:?}): {after:#}"
        );
        let counts = ledger_counts(&dir);
        for name in &finished {
            let l = ledger_name(name);
            assert_eq!(
                counts.get(&l),
                before_counts.get(&l),
                "round {round}: `{name}` had finished before the kill and ran again"
            );
            assert_eq!(task(&after, name)["status"], "succeeded");
        }
        // Recorded outputs survive and fan-in is complete.
        assert_eq!(task(&after, "work[2]")["outputs"]["parameters"]["n"], 100);
        for (name, status) in statuses(&after) {
            assert!(
                status == "succeeded" || status == "cached",
                "round {round}: {name} is {status}"
            );
        }

        // An identical run afterwards is served from the cache.
        let again = dir.run(&["run", &file, "-q"]);
        let again = dir.show(&again.ok().run_id());
        for (name, status) in statuses(&again) {
            assert_eq!(status, "cached", "round {round}: {name} in the rerun");
        }
    }
}

#[test]
fn resume_retries_the_failed_steps_of_a_failed_run() {
    let dir = Dir::new();
    let flag = dir.path().join("fixed");
    let yaml = format!(
        "name: x\nsteps:\n  ok: {{run: [sh, -c, \"echo ok >> {l}\"]}}\n  fragile: {{run: [sh, -c, \"test -e {f}\"], after: [ok]}}\n  tail: {{run: [echo, done], after: [fragile]}}\n",
        l = dir.path().join("ledger").display(),
        f = flag.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let out = dir.run(&["run", path.to_str().unwrap(), "-q"]);
    assert_eq!(out.code, Some(1));
    let id = out.run_id();
    std::fs::write(&flag, "").unwrap();
    dir.run(&["resume", &id]).ok();
    let run = dir.show(&id);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(task(&run, "fragile")["attempts"], 2);
    assert_eq!(task(&run, "tail")["status"], "succeeded");
    assert_eq!(
        ledger_counts(&dir).get("ok"),
        Some(&1),
        "finished steps are not rerun"
    );
}

#[test]
fn cancel_from_another_process_and_detached_runs() {
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        "name: x\nsteps:\n  long: {run: [sleep, \"60\"]}\n",
    );
    let started = Instant::now();
    let out = dir.run(&["run", path.to_str().unwrap(), "--detach"]);
    let id = out.ok().run_id();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--detach returns at once"
    );
    assert!(eventually(Duration::from_secs(20), || {
        dir.show(&id)["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["status"] == "running"))
    }));
    let cancel = dir.run(&["runs", "cancel", &id]);
    cancel.ok();
    assert!(eventually(
        Duration::from_secs(20),
        || dir.show(&id)["status"] == "cancelled"
    ));
    assert_eq!(task(&dir.show(&id), "long")["status"], "cancelled");
}

#[test]
fn concurrent_runs_share_one_workspace() {
    let dir = Dir::new();
    let path = dir.write("p.yaml", "name: x\nparams:\n  n: {type: int, default: 0}\nsteps:\n  a: {run: [sh, -c, \"echo {{ params.n }} > {{ outputs.o }}\"], outputs: {artifacts: {o: Artifact}}}\n  b: {run: [cat, \"{{ steps.a.outputs.o }}\"]}\n");
    let mut children: Vec<_> = (0..4)
        .map(|i| dir.spawn(&["run", path.to_str().unwrap(), "-q", "-p", &format!("n={i}")]))
        .collect();
    for c in &mut children {
        assert_eq!(wait_with_timeout(c, Duration::from_secs(60)), Some(0));
    }
    let list = dir.run(&["runs", "list", "--output", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "succeeded")
    );
}

#[test]
fn resume_kills_the_steps_a_killed_orchestrator_left_behind() {
    let dir = Dir::new();
    let pidfile = dir.path().join("step.pid");
    let marker = dir.path().join("second-attempt");
    // The first attempt leaves a background grandchild and hangs; the retried one finishes.
    let yaml = format!(
        "name: x\nsteps:\n  long: {{run: [sh, -c, \"test -e {m} && exit 0; touch {m}; sleep 120 & echo $! > {p}; exec sleep 120\"]}}\n",
        m = marker.display(),
        p = pidfile.display()
    );
    let path = dir.write("p.yaml", &yaml);
    let mut child = dir.spawn(&["run", path.to_str().unwrap(), "-q"]);
    assert!(eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    }));
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // The run says it stopped, and how to go on.
    let list = dir.run(&["runs", "list"]).ok().stdout.clone();
    assert!(list.contains("capstan resume"), "{list}");
    let id = dir.run(&["runs", "list", "--output", "json"]).ok().json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    dir.run(&["resume", &id]).ok();
    assert!(
        eventually(Duration::from_secs(5), || !crate::util::pid_alive(
            grandchild
        )),
        "process {grandchild} of the killed orchestrator's step is still running"
    );
    let run = dir.show(&id);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(task(&run, "long")["attempts"], 2);
}
