//! Pipelines whose artifacts live in S3 (a moto server on an ephemeral port): a 1 GiB artifact
//! that streams through the engine in bounded memory (named `large_artifact_`: `scripts/test.sh` runs it
//! alone, after the other tests), and a Ray pipeline whose steps hand their
//! artifacts off through S3 with `capstan step-exec`.
//!
//! Skipped when `moto_server` is missing, unless `CAPSTAN_REQUIRE_S3=1` (as in CI); the Ray test
//! also needs a Ray head (see `tests/ray.rs`).

#[path = "../crates/artifacts/tests/support/moto.rs"]
mod moto;

use std::process::Command;

use crate::util::{Dir, Run, task};

fn with_s3(mut cmd: Command, moto: &moto::Moto, bucket: &str) -> Command {
    cmd.envs(moto.env()).env(
        "CAPSTAN_ARTIFACTS_DESTINATION",
        format!("s3://{bucket}/capstan"),
    );
    cmd
}

/// The largest resident set of any child this test process has waited for, in KiB.
fn children_max_rss_kib() -> i64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    usage.max_rss()
}

#[test]
fn large_artifact_of_1_gib_streams_through_s3_in_bounded_memory() {
    let Some(moto) = moto::start() else { return };
    moto.create_bucket("big");
    let dir = Dir::new();
    // A sparse 1 GiB file costs no disk or time to write, and hashes and uploads like any other.
    let path = dir.write(
        "big.yaml",
        "name: big\nsteps:\n  make:\n    run: [sh, -c, \"head -c 1000 /dev/urandom > {{ outputs.blob }} && truncate -s 1G {{ outputs.blob }}\"]\n    outputs: {artifacts: {blob: Model}}\n",
    );
    let run = Run::from(
        with_s3(dir.command(&["run", path.to_str().unwrap()]), &moto, "big")
            .output()
            .unwrap(),
    );
    run.ok();
    let shown = dir.show(&run.run_id());
    let blob = &task(&shown, "make")["outputs"]["artifacts"]["blob"];
    let uri = blob["uri"].as_str().unwrap();
    assert!(uri.starts_with("s3://big/capstan/blobs/"), "{uri}");
    assert_eq!(blob["digest"].as_str().unwrap().len(), "blake3:".len() + 64);

    // Download it through the CLI, streamed, and check it. (The only full copy on disk: the
    // machines that run this are shared.)
    let copy = dir.path().join("copy.bin");
    let got = Run::from(
        with_s3(
            dir.command(&["artifacts", "get", uri, "-o", copy.to_str().unwrap()]),
            &moto,
            "big",
        )
        .output()
        .unwrap(),
    );
    got.ok();
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 1 << 30);
    std::fs::remove_file(&copy).unwrap();
    // Neither the run (hash, then upload) nor `artifacts get` held the file:
    // every capstan process stayed far below 1 GiB.
    let max_rss_mib = children_max_rss_kib() / 1024;
    eprintln!("largest capstan resident set while moving 1 GiB: {max_rss_mib} MiB");
    assert!(
        max_rss_mib < 400,
        "a capstan process grew to {max_rss_mib} MiB while moving a 1 GiB artifact"
    );
}

#[test]
fn a_ray_pipeline_hands_artifacts_off_through_s3() {
    let Some(address) = crate::ray::ray_address() else {
        return;
    };
    let Some(moto) = moto::start() else { return };
    moto.create_bucket("handoff");
    let dir = Dir::new();
    let path = dir.write(
        "p.yaml",
        r#"name: s3-handoff
steps:
  produce:
    run: [sh, -c, "mkdir {{ outputs.data }} && seq 1 100 > {{ outputs.data }}/numbers && echo produced"]
    outputs: {artifacts: {data: Dataset}}
  total:
    run: [sh, -c, "awk '{s+=$1} END {print s}' {{ steps.produce.outputs.data }}/numbers > {{ outputs.sum }}"]
    outputs: {parameters: {sum: int}}
"#,
    );
    let mut cmd = with_s3(
        crate::ray::on_ray(
            &dir,
            &address,
            &["run", path.to_str().unwrap(), "--executor", "ray"],
        ),
        &moto,
        "handoff",
    );
    let run = Run::from(cmd.output().unwrap());
    run.ok();
    let shown = dir.show(&run.run_id());
    assert_eq!(task(&shown, "total")["outputs"]["parameters"]["sum"], 5050);
    let data = &task(&shown, "produce")["outputs"]["artifacts"]["data"];
    assert!(
        data["uri"]
            .as_str()
            .unwrap()
            .starts_with("s3://handoff/capstan/blobs/"),
        "{data:#}"
    );
    // The engine never downloaded the step's input: only workers did.
    assert!(
        !dir.home.join("cache").exists()
            || std::fs::read_dir(dir.home.join("cache"))
                .unwrap()
                .all(|e| e.unwrap().file_name() == "logs")
    );
}
