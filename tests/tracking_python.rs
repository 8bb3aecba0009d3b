//! The mlflow client-compatibility suite (`tests/python/`): the unmodified `mlflow` client,
//! from the venv that `scripts/python-env.sh` creates, against a live `capstan server`.
//!
//! Without the venv the test is skipped, unless `CAPSTAN_REQUIRE_PYTHON=1` (as in CI), which
//! makes it fail instead.

use std::path::Path;
use std::process::Command;

pub(crate) fn venv_python() -> Option<String> {
    let venv = std::env::var("CAPSTAN_VENV").unwrap_or_else(|_| "/var/tmp/capstan-venv".into());
    let python = format!("{venv}/bin/python");
    if Path::new(&python).exists() {
        return Some(python);
    }
    if std::env::var("CAPSTAN_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("CAPSTAN_REQUIRE_PYTHON=1 but {python} is missing; run scripts/python-env.sh");
    }
    eprintln!("skipping the mlflow client suite: {python} is missing");
    None
}

#[test]
fn mlflow_client_suite_passes() {
    let Some(python) = venv_python() else {
        return;
    };
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .current_dir(&suite)
        .env("CAPSTAN_BIN", crate::util::bin())
        .status()
        .expect("run pytest");
    assert!(status.success(), "the mlflow client suite failed: {status}");
}
