//! The native format's features, end to end through real processes: typed params (map, bool,
//! list of maps), shell strings, env, workdir, resources, `for_each` over maps with a
//! parallelism limit, fan-in, conditions over outputs, `after`, and `--parallelism`.

use crate::util::{Dir, task};

const FEATURES: &str = r#"
name: features
params:
  cfg: {type: map, default: {a: 1, b: x}}
  flag: {type: bool, default: true}
  items: {type: list, default: [{name: a, n: 1}, {name: b, n: 2}, {name: c, n: 3}]}
steps:
  shell:
    run: "echo $GREETING from $(basename $(pwd)) > {{ outputs.out }}"
    env: {GREETING: "hello {{ params.cfg }}"}
    workdir: sub
    outputs: {parameters: {out: string}}
    resources: {cpu: 500m, memory: 256Mi, gpu: 1}
  each:
    for_each: {items: "{{ params.items }}", parallelism: 1}
    run: [sh, -c, "echo {{ item.name }}-{{ item.n }} > {{ outputs.v }}; sleep 0.2"]
    outputs: {parameters: {v: string}}
  gate:
    when: "{{ params.flag }} and 'b-2' in {{ steps.each.outputs.v }}"
    run: [sh, -c, "echo '{{ steps.each.outputs.v }}' > {{ outputs.all }}"]
    outputs: {parameters: {all: list}}
  closed:
    when: "not {{ params.flag }}"
    run: [echo, never]
  last:
    run: [echo, "{{ task.name }} {{ run.pipeline }}"]
    after: [gate, closed, shell]
"#;

#[test]
fn native_features_end_to_end() {
    let dir = Dir::new();
    let path = dir.write("features.yaml", FEATURES);
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    let out = dir.run(&["run", path.to_str().unwrap(), "-q", "--parallelism", "4"]);
    let run = dir.show(&out.ok().run_id());

    let shell = task(&run, "shell");
    assert_eq!(
        shell["outputs"]["parameters"]["out"],
        r#"hello {"a":1,"b":"x"} from sub"#
    );
    assert_eq!(shell["resources"]["cpu"], 0.5);
    assert_eq!(shell["resources"]["memory"], 256 * 1024 * 1024);
    assert_eq!(shell["resources"]["gpu"], 1);

    // parallelism: 1 on the fan-out: iterations never overlap.
    let window = |name: &str| {
        let t = task(&run, name);
        (
            t["started_at"].as_i64().unwrap(),
            t["ended_at"].as_i64().unwrap(),
        )
    };
    let (s0, e0) = window("each[0]");
    let (s1, e1) = window("each[1]");
    let (s2, _) = window("each[2]");
    assert!(
        s1 >= e0 && s2 >= e1,
        "iterations overlapped: {s0}-{e0}, {s1}-{e1}, {s2}"
    );

    assert_eq!(task(&run, "gate")["status"], "succeeded");
    assert_eq!(
        task(&run, "gate")["outputs"]["parameters"]["all"],
        serde_json::json!(["a-1", "b-2", "c-3"])
    );
    assert_eq!(task(&run, "closed")["status"], "skipped");
    assert_eq!(
        task(&run, "last")["status"],
        "succeeded",
        "an after-only dependency on a skipped step does not block"
    );
    let logs = dir
        .run(&["runs", "logs", run["id"].as_str().unwrap(), "last"])
        .ok()
        .stdout
        .clone();
    assert!(logs.contains("last features"), "{logs}");

    // Overriding a bool param flips the conditions.
    let out = dir.run(&["run", path.to_str().unwrap(), "-q", "-p", "flag=false"]);
    let run = dir.show(&out.ok().run_id());
    assert_eq!(task(&run, "gate")["status"], "skipped");
    assert_eq!(task(&run, "closed")["status"], "succeeded");
}

#[test]
fn global_parallelism_limits_running_steps() {
    let dir = Dir::new();
    let mut yaml = String::from("name: wide\nsteps:\n");
    for i in 0..4 {
        yaml += &format!("  s{i}: {{run: [sh, -c, \"sleep 0.3\"], cache: false}}\n");
    }
    let path = dir.write("wide.yaml", &yaml);
    let out = dir.run(&["run", path.to_str().unwrap(), "-q", "--parallelism", "1"]);
    let run = dir.show(&out.ok().run_id());
    let mut windows: Vec<(i64, i64)> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["started_at"].as_i64().unwrap(),
                t["ended_at"].as_i64().unwrap(),
            )
        })
        .collect();
    windows.sort();
    for pair in windows.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "steps overlapped with --parallelism 1: {windows:?}"
        );
    }
}
