//! The browser suite (`tests/ui/`): Playwright from the venv of `scripts/python-env.sh` drives
//! Debian's headless Chromium against a live `capstan server` and real runs.
//!
//! Without the venv, Playwright or Chromium the suite skips, unless `CAPSTAN_REQUIRE_CHROMIUM=1`
//! (as in CI), which makes it fail instead. Screenshots of each page go to
//! `$CARGO_TARGET_DIR/ui-screenshots` (printed by the suite).

use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_python() -> Option<String> {
    let venv = std::env::var("CAPSTAN_VENV").unwrap_or_else(|_| "/var/tmp/capstan-venv".into());
    let python = format!("{venv}/bin/python");
    if Path::new(&python).exists() {
        return Some(python);
    }
    if std::env::var("CAPSTAN_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!("CAPSTAN_REQUIRE_CHROMIUM=1 but {python} is missing; run scripts/python-env.sh");
    }
    eprintln!("skipping the browser suite: {python} is missing");
    None
}

fn screenshots() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("ui-screenshots")
}

#[test]
fn browser_suite_passes() {
    let Some(python) = venv_python() else {
        return;
    };
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"])
        .arg(&suite)
        .current_dir(&suite)
        .env("CAPSTAN_BIN", crate::util::bin())
        .env("CAPSTAN_UI_SCREENSHOTS", screenshots())
        .status()
        .expect("run pytest");
    assert!(status.success(), "the browser suite failed: {status}");
}
