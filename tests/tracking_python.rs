//! The mlflow client-compatibility suite (`tests/python/`): the unmodified `mlflow` client,
//! from the venv that `scripts/python-env.sh` creates, against a live `capstan server`, once on
//! the workspace's SQLite and once on a fresh PostgreSQL database.
//!
//! Without the venv the tests are skipped, unless `CAPSTAN_REQUIRE_PYTHON=1` (as in CI), which
//! makes them fail instead. The Postgres run follows the rules of [`crate::util::postgres_database`]
//! (`CAPSTAN_TEST_POSTGRES_URL`, and `CAPSTAN_REQUIRE_POSTGRES=1` in CI).

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

/// Runs the suite against a server on `backend_store_uri` (the workspace's SQLite when `None`).
fn run_suite(python: &str, backend_store_uri: Option<&str>) {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let mut pytest = Command::new(python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .current_dir(&suite)
        .env("CAPSTAN_BIN", crate::util::bin())
        .env_remove("CAPSTAN_TEST_BACKEND_STORE_URI");
    if let Some(uri) = backend_store_uri {
        pytest.env("CAPSTAN_TEST_BACKEND_STORE_URI", uri);
    }
    let status = pytest.status().expect("run pytest");
    let backend = backend_store_uri.map_or("SQLite", |_| "PostgreSQL");
    assert!(
        status.success(),
        "the mlflow client suite failed on {backend}: {status}"
    );
}

#[test]
fn mlflow_client_suite_passes_on_sqlite() {
    let Some(python) = venv_python() else {
        return;
    };
    run_suite(&python, None);
}

#[test]
fn mlflow_client_suite_passes_on_postgres() {
    let Some(python) = venv_python() else {
        return;
    };
    let Some(url) = crate::util::postgres_database("mlflow_suite") else {
        return;
    };
    run_suite(&python, Some(&url));
}
