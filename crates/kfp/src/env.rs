//! Python environments for lightweight components.
//!
//! The kfp compiler puts a preamble in front of every Python function component: it runs
//! `pip install kfp==VERSION ...` before the component, every time. capstan satisfies it once per
//! distinct requirement set instead: a virtual environment keyed by the hash of the base
//! interpreter and the requirements, kept in a cache directory and reused across steps and runs.
//! The steps then run their component without re-running pip, with the environment's `bin`
//! first on their `PATH`.
//!
//! The environment is built on top of the `python3` that capstan finds on its `PATH`: the base
//! interpreter's installed packages are visible in it (through a `.pth` file), so requirements
//! that the base already satisfies cost nothing, and the rest are installed from the package
//! index. It is created under a temporary name and renamed into place, so concurrent runs never
//! see a half-built environment.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use capstan_spec::template::Template;
use capstan_spec::{Command, Pipeline};

use crate::import::PipEnv;

/// The cache directory: `$CAPSTAN_KFP_ENV_DIR`, else `$XDG_CACHE_HOME/capstan/kfp-envs`, else
/// `~/.cache/capstan/kfp-envs`, else `fallback`.
pub fn default_root(fallback: &Path) -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CAPSTAN_KFP_ENV_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("capstan/kfp-envs");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache/capstan/kfp-envs");
    }
    fallback.to_path_buf()
}

/// Prepares every environment in `envs` (from [`Import::environments`](crate::Import)) under
/// `root`, and points their steps at them. `note` receives one line per environment that had to
/// be built.
pub fn provision(
    pipeline: &mut Pipeline,
    envs: &[PipEnv],
    root: &Path,
    mut note: impl FnMut(&str),
) -> Result<(), String> {
    if envs.is_empty() {
        return Ok(());
    }
    let base = base_python()?;
    for env in envs {
        let dir = ensure(root, &base, &env.pip_args, &mut note).map_err(|e| {
            format!(
                "cannot prepare the Python environment for `pip install {}` (steps {}): {e}",
                env.pip_args,
                env.steps.join(", ")
            )
        })?;
        for step in &env.steps {
            use_env(pipeline, step, &dir);
        }
    }
    Ok(())
}

/// The base interpreter: its prefix (which keys the cache) and its site-packages.
struct Base {
    prefix: String,
    purelib: String,
}

fn base_python() -> Result<Base, String> {
    let out = Process::new("python3")
        .args([
            "-c",
            "import sys, sysconfig; print(sys.prefix); print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("the pipeline's Python components need python3 on the PATH: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(prefix), Some(purelib)) => Ok(Base {
            prefix: prefix.to_string(),
            purelib: purelib.to_string(),
        }),
        _ => Err(format!(
            "python3 printed `{}` for its prefix and site-packages",
            text.trim()
        )),
    }
}

fn run(cmd: &mut Process, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(format!(
        "{what} failed: {}",
        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

/// The environment for `pip_args` on `base`, built if it does not exist yet.
fn ensure(
    root: &Path,
    base: &Base,
    pip_args: &str,
    note: &mut impl FnMut(&str),
) -> Result<PathBuf, String> {
    let key = blake3::hash(format!("{}\n{pip_args}", base.prefix).as_bytes()).to_hex();
    let dir = root.join(&key.as_str()[..16]);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let tmp = root.join(format!(
        "{}.tmp-{}",
        &key.as_str()[..16],
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    note(&format!(
        "preparing a Python environment for pip install {pip_args}"
    ));
    let built = build(&tmp, base, pip_args);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run built it at the same time: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(".complete").exists() {
            return Err(format!(
                "cannot move the environment into {}",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

fn build(tmp: &Path, base: &Base, pip_args: &str) -> Result<(), String> {
    run(
        Process::new("python3").args(["-m", "venv"]).arg(tmp),
        "python3 -m venv",
    )?;
    let python = tmp.join("bin/python3");
    let out = Process::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let purelib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::write(
        Path::new(&purelib).join("capstan-base.pth"),
        format!("{}\n", base.purelib),
    )
    .map_err(|e| format!("cannot write into {purelib}: {e}"))?;
    // `--no-deps` is meant for images that already hold kfp's dependencies; on a host, pip
    // installs whatever the base interpreter lacks.
    let args = pip_args.replace("'--no-deps'", "").replace("--no-deps", "");
    let script = format!(
        "PIP_DISABLE_PIP_VERSION_CHECK=1 \"$0\" -m pip install --quiet --no-warn-script-location {args}"
    );
    run(
        Process::new("sh").args(["-c", &script]).arg(&python),
        &format!("pip install {args}"),
    )?;
    std::fs::write(tmp.join(".complete"), pip_args)
        .map_err(|e| format!("cannot mark the environment complete: {e}"))
}

/// Runs `step` with `dir/bin` first on its `PATH`.
fn use_env(p: &mut Pipeline, step: &str, dir: &Path) {
    let Some(s) = p.steps.get_mut(step).or_else(|| p.finally.get_mut(step)) else {
        return;
    };
    let Command::Argv(argv) = &mut s.run else {
        return;
    };
    let bin = dir.join("bin").display().to_string().replace('\'', "'\\''");
    let wrapper = format!("PATH='{bin}':\"$PATH\"; export PATH; exec \"$0\" \"$@\"");
    let mut run = vec![
        Template::literal("sh"),
        Template::literal("-c"),
        Template::literal(&wrapper),
    ];
    run.append(argv);
    *argv = run;
}
