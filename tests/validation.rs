//! Bad pipeline files and parameters are rejected before anything runs, with every error named
//! by file, line and column, and exit code 2. Nothing is recorded.

use crate::util::Dir;

fn rejected(dir: &Dir, yaml: &str, params: &[&str]) -> String {
    let path = dir.write("bad.yaml", yaml);
    let mut args = vec!["run", path.to_str().unwrap()];
    for p in params {
        args.extend(["-p", p]);
    }
    let out = dir.run(&args);
    assert_eq!(
        out.code,
        Some(2),
        "expected rejection\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "no run id for a rejected pipeline: {}",
        out.stdout
    );
    out.stderr
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    let dir = Dir::new();
    let err = rejected(&dir, "name: x\nsteps:\n  a: {run: [echo, hi]\n", &[]);
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(
        err.contains(":3:") || err.contains(":4:"),
        "line of the error: {err}"
    );
}

#[test]
fn unknown_field_is_rejected() {
    let dir = Dir::new();
    let err = rejected(
        &dir,
        "name: x\nsteps:\n  a:\n    run: [echo]\n    retires: 3\n",
        &[],
    );
    assert!(err.contains("bad.yaml:5:"), "{err}");
    assert!(err.contains("retires"), "{err}");
}

#[test]
fn cycle_is_named() {
    let dir = Dir::new();
    let err = rejected(
        &dir,
        "name: x\nsteps:\n  a: {run: [a], after: [c]}\n  b: {run: [b], after: [a]}\n  c: {run: [c], after: [b]}\n",
        &[],
    );
    assert!(err.contains("cycle"), "{err}");
    // `a` runs after `c`, which runs after `b`, which runs after `a`.
    assert!(err.contains("dependency cycle: a -> c -> b -> a"), "{err}");
}

#[test]
fn unknown_reference_names_the_step() {
    let dir = Dir::new();
    let err = rejected(
        &dir,
        "name: x\nsteps:\n  a: {run: [echo, \"{{ steps.nope.outputs.x }}\"]}\n",
        &[],
    );
    assert!(err.contains("bad.yaml:3:"), "{err}");
    assert!(err.contains("step `a`"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn every_error_is_reported() {
    let dir = Dir::new();
    let yaml = "name: x\nsteps:\n  a: {run: [echo, \"{{ params.missing }}\"]}\n  b: {run: [echo], after: [ghost]}\n  c: {run: [echo, \"{{ steps.a.outputs.nothing }}\"]}\n";
    let err = rejected(&dir, yaml, &[]);
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn wrong_param_type_and_unknown_param() {
    let dir = Dir::new();
    let yaml = "name: x\nparams:\n  rows: {type: int, default: 3}\nsteps:\n  a: {run: [echo, \"{{ params.rows }}\"]}\n";
    let err = rejected(&dir, yaml, &["rows=abc"]);
    assert!(err.contains("rows") && err.contains("int"), "{err}");
    let err = rejected(&dir, yaml, &["colums=3"]);
    assert!(err.contains("colums"), "{err}");
}

#[test]
fn missing_required_param() {
    let dir = Dir::new();
    let yaml = "name: x\nparams:\n  lr: float\nsteps:\n  a: {run: [echo, \"{{ params.lr }}\"]}\n";
    let err = rejected(&dir, yaml, &[]);
    assert!(err.contains("lr"), "{err}");
    let ok = dir.write("ok.yaml", yaml);
    dir.run(&["run", ok.to_str().unwrap(), "-p", "lr=0.1", "-q"])
        .ok();
}

#[test]
fn validate_command_checks_without_running() {
    let dir = Dir::new();
    let good = dir.write("good.yaml", "name: x\nsteps:\n  a: {run: [echo]}\n");
    dir.run(&["validate", good.to_str().unwrap()]).ok();
    let bad = dir.write(
        "bad2.yaml",
        "name: x\nsteps:\n  a: {run: [echo], after: [zz]}\n",
    );
    let out = dir.run(&["validate", bad.to_str().unwrap()]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("zz"), "{}", out.stderr);
}
