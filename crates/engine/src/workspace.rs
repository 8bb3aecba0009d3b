//! The workspace: where a user's runs live.
//!
//! A workspace is a directory (`--home`, `$CAPSTAN_HOME`, or `./.capstan`) holding `capstan.db`
//! (the SQLite store), `artifacts/` (the local artifact store), `work/` (scratch space of running
//! tasks) and `cache/` (remote artifacts materialised for local steps). An optional
//! `config.yaml` there points the store at PostgreSQL and the artifacts at an object store:
//!
//! ```yaml
//! backend_store_uri: postgresql://user:pass@db:5432/capstan
//! artifacts_destination: s3://bucket/capstan
//! executors:                      # see capstan_exec::config
//!   container: {image: localhost/capstan-python:latest}
//!   kubernetes: {namespace: ml}
//! ```
//!
//! `--config FILE` (or `$CAPSTAN_CONFIG`) reads another file instead. Command-line flags and
//! environment variables override the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use capstan_artifacts::ArtifactStore;
use capstan_exec::ExecutorsConfig;
use capstan_store::DynStore;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    #[serde(default)]
    pub backend_store_uri: Option<String>,
    #[serde(default)]
    pub artifacts_destination: Option<String>,
    /// Executor settings, before the environment is applied.
    #[serde(default)]
    pub executors: ExecutorsConfig,
}

impl WorkspaceConfig {
    /// Reads `file`, or else `config.yaml` in `home` if there is one. A `file` that was named
    /// explicitly must exist.
    pub fn load(home: &Path, file: Option<&Path>) -> Result<WorkspaceConfig> {
        let path = file.map_or_else(|| home.join("config.yaml"), Path::to_path_buf);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
                return Ok(Self::default());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Values from `other` win where they are set.
    pub fn overridden_by(self, other: WorkspaceConfig) -> WorkspaceConfig {
        WorkspaceConfig {
            backend_store_uri: other.backend_store_uri.or(self.backend_store_uri),
            artifacts_destination: other.artifacts_destination.or(self.artifacts_destination),
            executors: self.executors,
        }
    }
}

#[derive(Clone)]
pub struct Workspace {
    pub home: PathBuf,
    pub store: DynStore,
    pub artifacts: ArtifactStore,
    /// Executor settings: the config file's, overlaid with the environment.
    pub executors: ExecutorsConfig,
}

impl Workspace {
    /// Opens (creating it if needed) the workspace at `home`, configured by `config_file` (else
    /// `<home>/config.yaml`), the environment, and `overrides` (from flags), in rising precedence.
    pub async fn open(
        home: &Path,
        config_file: Option<&Path>,
        overrides: WorkspaceConfig,
    ) -> Result<Workspace> {
        std::fs::create_dir_all(home)
            .with_context(|| format!("cannot create workspace {}", home.display()))?;
        let home = home
            .canonicalize()
            .with_context(|| format!("cannot open workspace {}", home.display()))?;
        let config = WorkspaceConfig::load(&home, config_file)?.overridden_by(overrides);
        let store_uri = match &config.backend_store_uri {
            Some(uri) => uri.clone(),
            None => home.join("capstan.db").display().to_string(),
        };
        let store = capstan_store::open(&store_uri)
            .await
            .with_context(|| format!("cannot open store {}", redact(&store_uri)))?;
        let artifacts = ArtifactStore::open(config.artifacts_destination.as_deref(), &home)
            .context("cannot open artifact store")?;
        Ok(Workspace {
            home,
            store,
            artifacts,
            executors: config.executors.with_process_env(),
        })
    }

    /// Scratch directory of one task attempt.
    pub fn work_dir(&self, run_id: &str, task: &str, attempt: u32) -> PathBuf {
        self.home
            .join("work")
            .join(run_id)
            .join(sanitize(task))
            .join(attempt.to_string())
    }
}

/// A task name as a single path component: `train[3]` stays readable, `a/b` (KFP sub-DAG
/// tasks) does not create directories.
pub fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never `.` or `..`: a name must not climb out of the work directory.
    if clean.starts_with('.') {
        format!("_{clean}")
    } else {
        clean
    }
}

/// Hides the password of a database URL in messages.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &uri[..scheme + 3],
                    &creds[..colon],
                    &uri[at..]
                ),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgresql://u:secret@h:5432/db"),
            "postgresql://u:***@h:5432/db"
        );
        assert_eq!(redact("/tmp/capstan.db"), "/tmp/capstan.db");
    }

    #[test]
    fn executor_settings_come_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            "executors:\n  ray: {address: http://head:8265}\n  kubernetes:\n    namespace: ml\n",
        )
        .unwrap();
        let config = WorkspaceConfig::load(dir.path(), None).unwrap();
        assert_eq!(
            config.executors.ray.address.as_deref(),
            Some("http://head:8265")
        );
        assert_eq!(config.executors.kubernetes.namespace.as_deref(), Some("ml"));

        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "executors:\n  kubernetes:\n    namespce: ml\n").unwrap();
        let err = WorkspaceConfig::load(dir.path(), Some(&other)).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("other.yaml") && err.contains("namespce"),
            "{err}"
        );
        let missing = WorkspaceConfig::load(dir.path(), Some(&dir.path().join("nope.yaml")));
        assert!(format!("{:#}", missing.unwrap_err()).contains("nope.yaml"));
    }

    #[test]
    fn sanitizes_task_names() {
        assert_eq!(sanitize("train[3]"), "train[3]");
        assert_eq!(sanitize("outer/inner"), "outer_inner");
        assert_eq!(sanitize(".."), "_..");
    }
}
