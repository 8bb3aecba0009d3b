//! Inspecting what ran: runs list/show, artifacts list/get, logs and lineage.

use crate::util::{Dir, repo_root, task};

#[test]
fn artifacts_logs_and_lineage_of_the_quickstart() {
    let dir = Dir::new();
    let qs = repo_root().join("examples/quickstart/pipeline.yaml");
    let out = dir.run(&["run", qs.to_str().unwrap(), "-q"]);
    let id = out.ok().run_id();

    // Prefixes of run ids resolve.
    let run = dir.show(&id[..8]);
    assert_eq!(run["id"], id.as_str());

    let text = dir.run(&["runs", "list"]).ok().stdout.clone();
    assert!(text.contains(&id) && text.contains("quickstart"), "{text}");
    let show = dir.run(&["runs", "show", &id]).ok().stdout.clone();
    assert!(
        show.contains("train[2]") && show.contains("succeeded"),
        "{show}"
    );

    let arts = dir
        .run(&["artifacts", "list", &id, "--output", "json"])
        .ok()
        .json();
    let arts = arts.as_array().unwrap();
    let card = arts
        .iter()
        .find(|a| a["name"] == "model_card")
        .expect("model card artifact");
    assert_eq!(card["type_name"], "Markdown");
    let target = dir.path().join("card.md");
    dir.run(&[
        "artifacts",
        "get",
        card["id"].as_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ])
    .ok();
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .contains("Model card")
    );

    // Logs: the step's own output was captured.
    let logs = dir
        .run(&["runs", "logs", &id, "train[0]"])
        .ok()
        .stdout
        .clone();
    assert!(logs.contains("train_accuracy="), "{logs}");
    let all = dir.run(&["runs", "logs", &id]).ok().stdout.clone();
    assert!(all.contains("==> data (attempt 1) <=="), "{all}");
    let missing = dir.run(&["runs", "logs", &id, "nope"]);
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("no task `nope`"),
        "{}",
        missing.stderr
    );

    // Lineage of the best model: upstream reaches the generated dataset through every step.
    let best = task(&run, "evaluate")["outputs"]["artifacts"]["best_model"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let graph = dir.run(&["lineage", &best, "--output", "json"]).ok().json();
    let tasks: Vec<&str> = graph["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "evaluate", "train[0]", "train[2]", "split", "data", "register",
    ] {
        assert!(tasks.contains(&t), "{t} missing from lineage {tasks:?}");
    }
    let up = dir
        .run(&["lineage", &best, "--direction", "up", "--output", "json"])
        .ok()
        .json();
    let up_tasks: Vec<&str> = up["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        !up_tasks.contains(&"register"),
        "register is downstream: {up_tasks:?}"
    );
    let dot = dir
        .run(&["lineage", &best, "--output", "dot"])
        .ok()
        .stdout
        .clone();
    assert!(
        dot.starts_with("digraph lineage {") && dot.contains("->"),
        "{dot}"
    );
    let text = dir.run(&["lineage", &best]).ok().stdout.clone();
    assert!(text.contains("best_model"), "{text}");
}

#[test]
fn artifact_uris_outside_the_store_are_rejected() {
    let dir = Dir::new();
    let path = dir.write("p.yaml", "name: x\nsteps:\n  a: {run: [sh, -c, \"echo hi > {{ outputs.o }}\"], outputs: {artifacts: {o: Artifact}}}\n");
    dir.run(&["run", path.to_str().unwrap(), "-q"]).ok();
    let root = dir.home.canonicalize().unwrap().join("artifacts");
    let escape = format!("file://{}/blobs/../../capstan.db", root.display());
    let target = dir.path().join("stolen");
    let out = dir.run(&["artifacts", "get", &escape, "-o", target.to_str().unwrap()]);
    assert_ne!(out.code, Some(0));
    assert!(!target.exists());
    let outside = "file:///etc/passwd";
    let out = dir.run(&["artifacts", "get", outside, "-o", target.to_str().unwrap()]);
    assert_ne!(out.code, Some(0));
    assert!(!target.exists());
}

#[test]
fn logs_follow_streams_until_the_run_ends() {
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        "name: x\nsteps:\n  talk: {run: [sh, -c, \"for i in 1 2 3; do echo line $i; sleep 0.3; done\"]}\n  after: {run: [echo, bye], after: [talk]}\n",
    );
    let out = dir.run(&["run", path.to_str().unwrap(), "--detach"]);
    let id = out.ok().run_id();
    let follow = dir.run(&["runs", "logs", &id, "--follow"]);
    let text = follow.ok().stdout.clone();
    for want in ["[talk] line 1", "[talk] line 3", "[after] bye"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert_eq!(dir.show(&id)["status"], "succeeded");
}

#[test]
fn output_symlink_escaping_the_output_is_rejected() {
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        "name: x\nsteps:\n  sneaky:\n    run: [sh, -c, \"mkdir {{ outputs.d }} && ln -s /etc/passwd {{ outputs.d }}/leak\"]\n    outputs: {artifacts: {d: Artifact}}\n",
    );
    let out = dir.run(&["run", path.to_str().unwrap(), "-q"]);
    assert_eq!(out.code, Some(1));
    let run = dir.show(&out.run_id());
    let msg = task(&run, "sneaky")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("symlink") || msg.contains("outside"), "{msg}");
}
