//! The step wrapper contract: how one task attempt runs on a machine that cannot see the
//! engine's disk (a Ray worker, a Kubernetes pod, a container on another host).
//!
//! # The contract
//!
//! 1. The engine fills [`TaskSpec::handoff`] for executors whose [`Executor::handoff`] is true.
//!    Every path that the step's command, environment or working directory names for an input
//!    or output lies under [`Handoff::scratch`], a directory on the engine's machine that the
//!    worker never sees.
//! 2. The executor turns the spec into an [`Envelope`] with [`Envelope::from_spec`] and runs
//!    [`worker_argv`] on the worker: `capstan step-exec --envelope <base64url JSON>`. The worker
//!    also needs the object store's credentials, which [`store_env`] collects from the engine's
//!    environment.
//! 3. On the worker, `capstan step-exec` ([`run_envelope`]) picks its own scratch directory,
//!    rewrites the engine's scratch prefix in argv, env and workdir to it, downloads every input
//!    from the artifact store (any object_store URL), runs the command with the local process
//!    executor (its output goes to the worker's stdout and stderr, where the executor collects
//!    it), uploads every output artifact (streamed and hashed with blake3 exactly as the engine
//!    stores local outputs, so digests and URIs are the same), reads every output parameter, and
//!    writes a [`StepResult`] document to [`Handoff::result_uri`]. Its exit code is the step's
//!    (0 when the step succeeded), or 2 when the wrapper itself failed.
//! 4. The engine reads the document back with [`settle`], which reconciles it with what the
//!    executor saw (a cancel or timeout seen by the executor wins) and yields the attempt's
//!    [`Outcome`] and, on success, the outputs to record. Output artifacts are recorded exactly as
//!    for local steps, so caching and lineage do not depend on where a step ran.
//!
//! The envelope and the result carry a version number; a worker refuses an envelope of another
//! version, naming both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use capstan_artifacts::{ArtifactError, ArtifactStore, StoredArtifact};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Executor, LocalExecutor, LogSink, Outcome, TaskSpec};

/// The version of [`Envelope`] and [`StepResult`] this build writes and accepts.
pub const ENVELOPE_VERSION: u32 = 1;

/// The name of the hidden subcommand that runs an envelope.
pub const STEP_EXEC: &str = "step-exec";

/// Set in the environment of every step that `capstan step-exec` runs, so that an orchestrator
/// on the same machine (a one-machine Ray cluster) can tell the processes of remote jobs, which
/// outlive it and are re-attached to, from its own leftover steps, which it kills on resume.
pub const WORKER_ENV: &str = "CAPSTAN_REMOTE_WORKER";

/// Output parameters larger than this fail the attempt instead of travelling in the result
/// document.
pub const MAX_PARAMETER_BYTES: u64 = 4 * 1024 * 1024;

/// Files a step exchanges with the artifact store, for executors whose steps cannot see the
/// engine's disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The attempt's scratch directory on the engine's machine. Every input and output path is
    /// under it, and the command names them through it.
    pub scratch: PathBuf,
    /// The artifact store's root URL (`s3://bucket/prefix`, `file:///dir`, ...); outputs are
    /// stored under it.
    pub artifact_root: String,
    pub inputs: Vec<HandoffInput>,
    pub outputs: Vec<HandoffOutput>,
    /// Where the worker writes its [`StepResult`], a URI in the artifact store.
    pub result_uri: String,
}

/// An input artifact the step reads at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffInput {
    /// `<artifact_root>/blobs/<hex>`.
    pub uri: String,
    /// `blake3:<hex>`; the download is checked against it.
    pub digest: String,
    /// Where the step expects it: an absolute path under [`Handoff::scratch`].
    pub path: PathBuf,
}

/// An output the step writes at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffOutput {
    pub name: String,
    pub kind: OutputKind,
    /// An absolute path under [`Handoff::scratch`].
    pub path: PathBuf,
}

/// What becomes of an output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A file or directory stored in the artifact store.
    Artifact,
    /// A small text file whose content travels back in the result document (an output
    /// parameter, or a results file).
    Parameter,
}

/// Everything a worker needs to run one attempt, serialised into the worker's command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub run_id: String,
    pub task: String,
    pub attempt: u32,
    pub argv: Vec<String>,
    /// Added to the worker's environment.
    pub env: Vec<(String, String)>,
    /// The working directory; a path under the scratch directory is rewritten, any other path
    /// must exist on the worker (the pipeline's directory on a shared file system, or in the
    /// image).
    pub workdir: PathBuf,
    /// The worker stops the command after this long (the executor also enforces it).
    pub timeout_ms: Option<u64>,
    pub handoff: Handoff,
}

impl Envelope {
    /// The envelope of one attempt. Fails when the engine did not fill [`TaskSpec::handoff`].
    pub fn from_spec(spec: &TaskSpec) -> Result<Envelope, String> {
        let handoff = spec.handoff.clone().ok_or_else(|| {
            format!(
                "task `{}` has no artifact hand-off; remote executors need one",
                spec.task
            )
        })?;
        Ok(Envelope {
            version: ENVELOPE_VERSION,
            run_id: spec.run_id.clone(),
            task: spec.task.clone(),
            attempt: spec.attempt,
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            handoff,
        })
    }

    /// The envelope as one shell-safe word: base64url (no padding) of its JSON.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("an envelope serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads what [`encode`](Self::encode) wrote, checking the version.
    pub fn decode(word: &str) -> Result<Envelope, String> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(word.trim())
            .map_err(|e| format!("the envelope is not base64url: {e}"))?;
        let envelope: Envelope = serde_json::from_slice(&json)
            .map_err(|e| format!("the envelope is not a valid step description: {e}"))?;
        if envelope.version != ENVELOPE_VERSION {
            return Err(format!(
                "the envelope has version {}, this capstan reads version {ENVELOPE_VERSION}; run the same capstan version on the workers",
                envelope.version
            ));
        }
        Ok(envelope)
    }
}

/// The command a worker runs for `envelope`: `<capstan> step-exec --envelope <word>`. `capstan`
/// is the binary as the worker finds it (a path, or `capstan` on its `PATH`).
pub fn worker_argv(capstan: &str, envelope: &Envelope) -> Vec<String> {
    vec![
        capstan.to_string(),
        STEP_EXEC.to_string(),
        "--envelope".to_string(),
        envelope.encode(),
    ]
}

/// The variables of the engine's environment that configure object store clients (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`), for executors to pass to workers so that they reach the same store.
pub fn store_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .collect()
}

/// How the command ended, as written in the result document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResultOutcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    TimedOut {
        after_ms: u64,
    },
    Cancelled,
    /// The command, or the wrapper around it, failed before or after it ran; `reason` says why.
    Failed {
        reason: String,
    },
}

impl ResultOutcome {
    fn from_outcome(o: &Outcome) -> ResultOutcome {
        match o {
            Outcome::Exited(code) => ResultOutcome::Exited { code: *code },
            Outcome::Signaled(signal) => ResultOutcome::Signaled { signal: *signal },
            Outcome::TimedOut(after) => ResultOutcome::TimedOut {
                after_ms: after.as_millis() as u64,
            },
            Outcome::Cancelled => ResultOutcome::Cancelled,
            Outcome::SpawnFailed(reason) => ResultOutcome::Failed {
                reason: reason.clone(),
            },
        }
    }

    pub fn to_outcome(&self) -> Outcome {
        match self {
            ResultOutcome::Exited { code } => Outcome::Exited(*code),
            ResultOutcome::Signaled { signal } => Outcome::Signaled(*signal),
            ResultOutcome::TimedOut { after_ms } => {
                Outcome::TimedOut(Duration::from_millis(*after_ms))
            }
            ResultOutcome::Cancelled => Outcome::Cancelled,
            ResultOutcome::Failed { reason } => Outcome::SpawnFailed(reason.clone()),
        }
    }
}

/// One output as the worker found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputResult {
    /// Stored in the artifact store.
    Artifact {
        uri: String,
        digest: String,
        size: u64,
        is_dir: bool,
    },
    /// The text of a parameter file.
    Parameter { value: String },
    /// The step did not write it.
    Missing,
}

/// The result document a worker writes at [`Handoff::result_uri`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub version: u32,
    pub outcome: ResultOutcome,
    /// Filled only when the command succeeded, keyed by output name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputResult>,
}

impl StepResult {
    /// The stored artifact an output names, when it is one.
    pub fn artifact(&self, name: &str) -> Option<StoredArtifact> {
        match self.outputs.get(name)? {
            OutputResult::Artifact {
                uri,
                digest,
                size,
                is_dir,
            } => Some(StoredArtifact {
                uri: uri.clone(),
                digest: digest.clone(),
                size: *size,
                is_dir: *is_dir,
            }),
            _ => None,
        }
    }

    /// The text of an output parameter, when the step wrote it.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        match self.outputs.get(name)? {
            OutputResult::Parameter { value } => Some(value),
            _ => None,
        }
    }
}

/// Reads the result document at `uri`: `Ok(None)` when the worker wrote none (it never ran, or
/// died before the end).
pub async fn read_result(store: &ArtifactStore, uri: &str) -> Result<Option<StepResult>, String> {
    let bytes = match store.read_document(uri).await {
        Ok(b) => b,
        Err(ArtifactError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("cannot read the step's result document: {e}")),
    };
    let result: StepResult = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the step's result document at {uri} is not valid: {e}"))?;
    if result.version != ENVELOPE_VERSION {
        return Err(format!(
            "the step's result document has version {}, expected {ENVELOPE_VERSION}",
            result.version
        ));
    }
    Ok(Some(result))
}

/// What the engine does after a remote executor returned `seen` for the attempt whose hand-off
/// is `handoff`: the attempt's final outcome and, when it succeeded, the worker's result with
/// its outputs. A cancel or timeout that the executor saw stands; otherwise the worker's
/// document decides, and a missing document fails the attempt with the executor's reason.
pub async fn settle(
    store: &ArtifactStore,
    handoff: &Handoff,
    seen: Outcome,
) -> (Outcome, Option<StepResult>) {
    if matches!(seen, Outcome::Cancelled | Outcome::TimedOut(_)) {
        return (seen, None);
    }
    match read_result(store, &handoff.result_uri).await {
        Err(reason) => (Outcome::SpawnFailed(reason), None),
        Ok(None) if seen.success() => (
            Outcome::SpawnFailed(
                "the worker ended without writing its result document".to_string(),
            ),
            None,
        ),
        Ok(None) => (seen, None),
        Ok(Some(result)) => {
            let outcome = match result.outcome.to_outcome() {
                // capstan did not cancel this attempt (that case returned above), so the worker
                // was stopped from outside: a failure, which the step's retries may cover.
                Outcome::Cancelled => Outcome::SpawnFailed(
                    "the worker was stopped from outside capstan (its job was stopped or deleted)"
                        .to_string(),
                ),
                outcome => outcome,
            };
            if outcome.success() {
                (outcome, Some(result))
            } else {
                (outcome, None)
            }
        }
    }
}

/// Runs an envelope on this machine, as `capstan step-exec` does: downloads the inputs from
/// `store` (opened at [`Handoff::artifact_root`]), runs the command in a fresh scratch directory
/// under `scratch_parent`, uploads the outputs, writes the result document and returns it. The
/// command's output goes to `sink`. Cancelling `cancel` stops the command.
pub async fn run_envelope(
    envelope: &Envelope,
    store: &ArtifactStore,
    scratch_parent: &Path,
    cancel: CancellationToken,
    sink: Option<LogSink>,
) -> Result<StepResult, String> {
    let scratch = tempdir_in(scratch_parent)?;
    let result = run_in(envelope, store, &scratch, cancel, sink).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let result = match result {
        Ok(r) => r,
        Err(reason) => StepResult {
            version: ENVELOPE_VERSION,
            outcome: ResultOutcome::Failed { reason },
            outputs: BTreeMap::new(),
        },
    };
    let body = serde_json::to_vec_pretty(&result).expect("a result serialises");
    store
        .put_document(&envelope.handoff.result_uri, body)
        .await
        .map_err(|e| format!("cannot write the result document: {e}"))?;
    Ok(result)
}

async fn run_in(
    envelope: &Envelope,
    store: &ArtifactStore,
    scratch: &Path,
    cancel: CancellationToken,
    sink: Option<LogSink>,
) -> Result<StepResult, String> {
    let h = &envelope.handoff;
    let rewrite = Rewrite {
        from: h.scratch.display().to_string(),
        to: scratch.display().to_string(),
    };
    for input in &h.inputs {
        let local = rewrite.path(&input.path);
        store
            .get_to(&input.uri, &local)
            .await
            .map_err(|e| format!("cannot download input {}: {e}", input.uri))?;
        let (digest, _, _) = capstan_artifacts::hash_path(&local)
            .map_err(|e| format!("cannot hash input {}: {e}", input.uri))?;
        if digest != input.digest {
            return Err(format!(
                "input {} has digest {digest}, expected {}",
                input.uri, input.digest
            ));
        }
    }
    for output in &h.outputs {
        if let Some(parent) = rewrite.path(&output.path).parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
    }
    let spec = TaskSpec {
        run_id: envelope.run_id.clone(),
        task: envelope.task.clone(),
        attempt: envelope.attempt,
        argv: envelope.argv.iter().map(|a| rewrite.text(a)).collect(),
        env: envelope
            .env
            .iter()
            .map(|(k, v)| (k.clone(), rewrite.text(v)))
            .chain([(WORKER_ENV.to_string(), "1".to_string())])
            .collect(),
        workdir: rewrite.path(&envelope.workdir),
        timeout: envelope.timeout_ms.map(Duration::from_millis),
        log_path: scratch.join("step.log"),
        image: None,
        resources: serde_json::Value::Null,
        mounts: vec![],
        handoff: None,
    };
    let outcome = LocalExecutor::new().run(spec, cancel, sink).await;
    let mut result = StepResult {
        version: ENVELOPE_VERSION,
        outcome: ResultOutcome::from_outcome(&outcome),
        outputs: BTreeMap::new(),
    };
    if !outcome.success() {
        return Ok(result);
    }
    for output in &h.outputs {
        let local = rewrite.path(&output.path);
        if std::fs::symlink_metadata(&local).is_err() {
            result
                .outputs
                .insert(output.name.clone(), OutputResult::Missing);
            continue;
        }
        let found = match output.kind {
            OutputKind::Artifact => {
                let stored = store
                    .put(&local)
                    .await
                    .map_err(|e| format!("cannot store output artifact `{}`: {e}", output.name))?;
                OutputResult::Artifact {
                    uri: stored.uri,
                    digest: stored.digest,
                    size: stored.size,
                    is_dir: stored.is_dir,
                }
            }
            OutputKind::Parameter => OutputResult::Parameter {
                value: read_parameter(&local, &output.name)?,
            },
        };
        result.outputs.insert(output.name.clone(), found);
    }
    Ok(result)
}

fn read_parameter(path: &Path, name: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read output parameter `{name}`: {e}"))?;
    if meta.len() > MAX_PARAMETER_BYTES {
        return Err(format!(
            "output parameter `{name}` is {} bytes, more than the {MAX_PARAMETER_BYTES} an output parameter may hold; make it an artifact",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read output parameter `{name}`: {e}"))
}

/// Replaces the engine's scratch directory with the worker's in paths and strings: where it is
/// the whole string or followed by `/`.
struct Rewrite {
    from: String,
    to: String,
}

impl Rewrite {
    fn text(&self, s: &str) -> String {
        if s == self.from {
            return self.to.clone();
        }
        s.replace(&format!("{}/", self.from), &format!("{}/", self.to))
    }

    fn path(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(&self.from) {
            Ok(rest) if rest.as_os_str().is_empty() => PathBuf::from(&self.to),
            Ok(rest) => Path::new(&self.to).join(rest),
            Err(_) => p.to_path_buf(),
        }
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    for n in 0u32.. {
        let dir = parent.join(format!("capstan-step-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    unreachable!("some scratch directory name is free")
}

/// `capstan step-exec`: runs the envelope `word` (as [`Envelope::encode`] wrote it) with a
/// scratch directory under `scratch_parent`, and returns the process exit code: the step's own
/// (0 when it succeeded, 128 + the signal when a signal killed it), or 2 when the wrapper failed
/// (the reason is on stderr and, when the store could be reached, in the result document).
/// SIGTERM and SIGINT stop the step, as a job system stopping the worker expects.
pub async fn worker_main(word: &str, scratch_parent: &Path) -> i32 {
    let fail = |message: String| {
        eprintln!("capstan step-exec: {message}");
        2
    };
    let envelope = match Envelope::decode(word) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let store = match ArtifactStore::open(Some(&envelope.handoff.artifact_root), scratch_parent) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the artifact store: {e}")),
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal.cancel();
    });
    let result = run_envelope(
        &envelope,
        &store,
        scratch_parent,
        cancel,
        Some(stdout_sink()),
    )
    .await;
    signals.abort();
    match result {
        Err(e) => fail(e),
        Ok(r) => match r.outcome {
            ResultOutcome::Exited { code } => code,
            ResultOutcome::Signaled { signal } => 128 + signal,
            ResultOutcome::TimedOut { .. } | ResultOutcome::Cancelled => 1,
            ResultOutcome::Failed { reason } => fail(reason),
        },
    }
}

/// A sink that copies the step's output to this process's stdout, for `capstan step-exec`.
pub fn stdout_sink() -> LogSink {
    Arc::new(|_task: &str, chunk: &[u8]| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(chunk);
        let _ = out.flush();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scratch: &Path, store: &ArtifactStore, input: &StoredArtifact) -> TaskSpec {
        let input_path = scratch.join("in/data");
        let model = scratch.join("out/model");
        let score = scratch.join("params/score");
        TaskSpec {
            run_id: "r1".into(),
            task: "train".into(),
            attempt: 1,
            argv: vec![
                "sh".into(),
                "-c".into(),
                r#"cat "$1" > "$2" && echo model >> "$2" && printf 0.9 > "$3" && echo trained"#
                    .into(),
                "sh".into(),
                input_path.display().to_string(),
                model.display().to_string(),
                score.display().to_string(),
            ],
            env: vec![("OUT".into(), model.display().to_string())],
            workdir: std::env::temp_dir(),
            timeout: None,
            log_path: scratch.join("log"),
            image: None,
            resources: serde_json::Value::Null,
            mounts: vec![],
            handoff: Some(Handoff {
                scratch: scratch.to_path_buf(),
                artifact_root: store.root_url().to_string(),
                inputs: vec![HandoffInput {
                    uri: input.uri.clone(),
                    digest: input.digest.clone(),
                    path: input_path,
                }],
                outputs: vec![
                    HandoffOutput {
                        name: "model".into(),
                        kind: OutputKind::Artifact,
                        path: model,
                    },
                    HandoffOutput {
                        name: "score".into(),
                        kind: OutputKind::Parameter,
                        path: score,
                    },
                    HandoffOutput {
                        name: "extra".into(),
                        kind: OutputKind::Parameter,
                        path: scratch.join("params/extra"),
                    },
                ],
                result_uri: store.result_uri("r1", "train", 1).unwrap(),
            }),
        }
    }

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let ws = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(Some("memory:///"), ws.path()).unwrap();
        let input = StoredArtifact {
            uri: format!("memory:///blobs/{}", "a".repeat(64)),
            digest: format!("blake3:{}", "a".repeat(64)),
            size: 1,
            is_dir: false,
        };
        let envelope =
            Envelope::from_spec(&spec(Path::new("/engine/work"), &store, &input)).unwrap();
        let argv = worker_argv("/usr/bin/capstan", &envelope);
        assert_eq!(argv[..3], ["/usr/bin/capstan", "step-exec", "--envelope"]);
        assert!(
            argv[3]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(Envelope::decode(&argv[3]).unwrap(), envelope);

        let mut old = envelope.clone();
        old.version = 99;
        let err = Envelope::decode(&old.encode()).unwrap_err();
        assert!(err.contains("version 99"), "{err}");
        assert!(
            Envelope::decode("not base64!")
                .unwrap_err()
                .contains("base64url")
        );

        let mut local = spec(Path::new("/engine/work"), &store, &input);
        local.handoff = None;
        assert!(Envelope::from_spec(&local).unwrap_err().contains("`train`"));
    }

    #[test]
    fn rewrite_replaces_whole_path_prefixes_only() {
        let r = Rewrite {
            from: "/e/w/1".into(),
            to: "/tmp/s".into(),
        };
        assert_eq!(r.text("/e/w/1"), "/tmp/s");
        assert_eq!(r.text("--out=/e/w/1/out/m"), "--out=/tmp/s/out/m");
        assert_eq!(r.text("/e/w/10/out"), "/e/w/10/out");
        assert_eq!(r.path(Path::new("/e/w/1/in/x")), Path::new("/tmp/s/in/x"));
        assert_eq!(r.path(Path::new("/e/w/10")), Path::new("/e/w/10"));
    }

    #[tokio::test]
    async fn a_worker_downloads_runs_uploads_and_reports() {
        let ws = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(Some("memory:///team"), ws.path()).unwrap();
        let data = ws.path().join("data.txt");
        std::fs::write(&data, "rows\n").unwrap();
        let input = store.put(&data).await.unwrap();
        // The engine's scratch directory never exists on the worker.
        let spec = spec(&ws.path().join("engine-side/work"), &store, &input);
        let envelope = Envelope::from_spec(&spec).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: LogSink =
            Arc::new(move |_t: &str, c: &[u8]| sink_seen.lock().unwrap().extend_from_slice(c));
        let result = run_envelope(
            &envelope,
            &store,
            &ws.path().join("worker"),
            CancellationToken::new(),
            Some(sink),
        )
        .await
        .unwrap();
        assert_eq!(result.outcome, ResultOutcome::Exited { code: 0 });
        assert_eq!(seen.lock().unwrap().as_slice(), b"trained\n");
        assert_eq!(result.parameter("score"), Some("0.9"));
        assert_eq!(result.outputs["extra"], OutputResult::Missing);
        let model = result.artifact("model").unwrap();
        let expected = blake3::hash(b"rows\nmodel\n").to_hex().to_string();
        assert_eq!(model.digest, format!("blake3:{expected}"));
        assert_eq!(model.uri, format!("memory:///team/blobs/{expected}"));
        // The worker's scratch directory is gone.
        assert_eq!(
            std::fs::read_dir(ws.path().join("worker")).unwrap().count(),
            0
        );

        let handoff = spec.handoff.unwrap();
        let (outcome, back) = settle(&store, &handoff, Outcome::Exited(0)).await;
        assert_eq!(outcome, Outcome::Exited(0));
        assert_eq!(back.unwrap(), result);
        let (outcome, back) = settle(&store, &handoff, Outcome::Cancelled).await;
        assert_eq!((outcome, back), (Outcome::Cancelled, None));
    }

    #[tokio::test]
    async fn failures_reach_the_engine_with_their_reason() {
        let ws = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(Some("memory:///"), ws.path()).unwrap();
        let input = StoredArtifact {
            uri: format!("memory:///blobs/{}", "b".repeat(64)),
            digest: format!("blake3:{}", "b".repeat(64)),
            size: 1,
            is_dir: false,
        };
        let mut spec = spec(&ws.path().join("e"), &store, &input);
        let handoff = spec.handoff.clone().unwrap();
        // No document yet: the executor's view stands, and a success without one is a failure.
        let (outcome, _) = settle(&store, &handoff, Outcome::Exited(3)).await;
        assert_eq!(outcome, Outcome::Exited(3));
        let (outcome, _) = settle(&store, &handoff, Outcome::Exited(0)).await;
        assert!(
            outcome.describe().contains("result document"),
            "{outcome:?}"
        );

        // A missing input fails the wrapper, and the document says which.
        let envelope = Envelope::from_spec(&spec).unwrap();
        let result = run_envelope(&envelope, &store, ws.path(), CancellationToken::new(), None)
            .await
            .unwrap();
        let ResultOutcome::Failed { reason } = &result.outcome else {
            panic!("{result:?}");
        };
        assert!(reason.contains("cannot download input"), "{reason}");
        let (outcome, _) = settle(&store, &handoff, Outcome::Exited(2)).await;
        assert!(outcome.describe().contains("cannot download input"));

        // A failing command reports its exit code and no outputs.
        spec.handoff.as_mut().unwrap().inputs.clear();
        spec.argv = vec!["sh".into(), "-c".into(), "exit 7".into()];
        let envelope = Envelope::from_spec(&spec).unwrap();
        let result = run_envelope(&envelope, &store, ws.path(), CancellationToken::new(), None)
            .await
            .unwrap();
        assert_eq!(result.outcome, ResultOutcome::Exited { code: 7 });
        assert!(result.outputs.is_empty());
        let (outcome, back) = settle(&store, &handoff, Outcome::Exited(7)).await;
        assert_eq!((outcome, back), (Outcome::Exited(7), None));

        // A worker stopped from outside (its job stopped, its pod deleted) reports a cancel that
        // capstan never asked for: the attempt fails, so its retries apply.
        let cancel = CancellationToken::new();
        spec.argv = vec!["sleep".into(), "30".into()];
        let envelope = Envelope::from_spec(&spec).unwrap();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.cancel();
        });
        let result = run_envelope(&envelope, &store, ws.path(), cancel, None)
            .await
            .unwrap();
        assert_eq!(result.outcome, ResultOutcome::Cancelled);
        let (outcome, back) = settle(&store, &handoff, Outcome::Exited(143)).await;
        assert!(back.is_none());
        assert!(
            outcome.describe().contains("stopped from outside capstan"),
            "{outcome:?}"
        );
    }
}
