//! The quickstart end to end, caching, and the PostgreSQL backend.

use crate::util::{Dir, repo_root, statuses, task};

fn quickstart() -> String {
    repo_root()
        .join("examples/quickstart/pipeline.yaml")
        .display()
        .to_string()
}

#[test]
fn quickstart_succeeds_then_is_served_from_the_cache() {
    let dir = Dir::new();
    let first = dir.run(&["run", &quickstart()]);
    first.ok();
    let run = dir.show(&first.run_id());
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["pipeline"], "quickstart");
    let names: Vec<String> = statuses(&run).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "data", "split", "train[0]", "train[1]", "train[2]", "evaluate", "register", "report",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    assert!(
        statuses(&run).iter().all(|(_, s)| s == "succeeded"),
        "{:?}",
        statuses(&run)
    );
    let best = &task(&run, "evaluate")["outputs"]["parameters"]["best_accuracy"];
    assert!(best.as_f64().unwrap() > 0.8, "{best}");
    let model = &task(&run, "evaluate")["outputs"]["artifacts"]["best_model"];
    assert!(model["digest"].as_str().unwrap().starts_with("blake3:"));
    assert!(model["uri"].as_str().unwrap().contains("/blobs/"));
    assert_eq!(task(&run, "train[1]")["attempts"], 1);

    let second = dir.run(&["run", &quickstart()]);
    second.ok();
    let run2 = dir.show(&second.run_id());
    for (name, status) in statuses(&run2) {
        // The exit handler opts out of caching; every other step is a cache hit.
        let want = if name == "report" {
            "succeeded"
        } else {
            "cached"
        };
        assert_eq!(status, want, "{name} in second run");
    }
    // A cache hit points at the same immutable artifact.
    assert_eq!(
        task(&run2, "evaluate")["outputs"]["artifacts"]["best_model"]["digest"],
        model["digest"]
    );
    assert!(
        task(&run2, "train[0]")["cache_key"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );

    // The exit handler saw the run's status.
    let logs = dir.run(&["runs", "logs", &second.run_id(), "report"]);
    assert!(
        logs.ok().stdout.contains("quickstart finished: succeeded"),
        "{}",
        logs.stdout
    );
}

#[test]
fn no_cache_and_param_changes_rerun_steps() {
    let dir = Dir::new();
    dir.run(&["run", &quickstart(), "-p", "rows=400", "-q"])
        .ok();
    let fresh = dir.run(&["run", &quickstart(), "-p", "rows=400", "--no-cache", "-q"]);
    let run = dir.show(&fresh.ok().run_id());
    assert!(
        statuses(&run).iter().all(|(_, s)| s == "succeeded"),
        "{:?}",
        statuses(&run)
    );

    // A different learning-rate grid reuses the shared prefix and the common iteration.
    let changed = dir.run(&[
        "run",
        &quickstart(),
        "-p",
        "rows=400",
        "-p",
        "learning_rates=[0.1, 0.9]",
        "-q",
    ]);
    let run = dir.show(&changed.ok().run_id());
    assert_eq!(task(&run, "data")["status"], "cached");
    assert_eq!(task(&run, "split")["status"], "cached");
    assert_eq!(
        task(&run, "train[0]")["status"],
        "cached",
        "lr 0.1 was trained before"
    );
    assert_eq!(
        task(&run, "train[1]")["status"],
        "succeeded",
        "lr 0.9 is new"
    );
    assert_eq!(task(&run, "evaluate")["status"], "succeeded");
}

#[test]
fn cache_spans_pipelines_and_respects_cache_false() {
    let dir = Dir::new();
    let step = r#"
  make:
    run: [sh, -c, "echo $RANDOM > {{ outputs.out }}"]
    outputs: {artifacts: {out: Artifact}}
  nocache:
    run: [sh, -c, "echo hi > {{ outputs.v }}"]
    outputs: {parameters: {v: string}}
    cache: false
"#;
    let a = dir.write("a.yaml", &format!("name: first\nsteps:{step}"));
    let b = dir.write("b.yaml", &format!("name: second\nsteps:{step}"));
    let first = dir.run(&["run", a.to_str().unwrap(), "-q"]);
    let run1 = dir.show(&first.ok().run_id());
    let second = dir.run(&["run", b.to_str().unwrap(), "-q"]);
    let run2 = dir.show(&second.ok().run_id());
    assert_eq!(
        task(&run2, "make")["status"],
        "cached",
        "the cache spans pipelines"
    );
    assert_eq!(
        task(&run2, "make")["outputs"]["artifacts"]["out"]["digest"],
        task(&run1, "make")["outputs"]["artifacts"]["out"]["digest"]
    );
    assert_eq!(task(&run2, "nocache")["status"], "succeeded");
    assert_eq!(task(&run2, "nocache")["outputs"]["parameters"]["v"], "hi");
}

/// The same quickstart on PostgreSQL, when a server is configured (scripts/test.sh starts one).
#[test]
fn quickstart_on_postgres() {
    let Some(url) = crate::util::postgres_database("cli") else {
        return;
    };
    let mut dir = Dir::new();
    dir.global = vec!["--backend-store-uri".to_string(), url];
    let first = dir.run(&["run", &quickstart(), "-q"]);
    let run = dir.show(&first.ok().run_id());
    assert_eq!(run["status"], "succeeded");
    let second = dir.run(&["run", &quickstart(), "-q"]);
    let run2 = dir.show(&second.ok().run_id());
    assert_eq!(task(&run2, "evaluate")["status"], "cached");
    let list = dir.run(&["runs", "list", "--output", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
}
