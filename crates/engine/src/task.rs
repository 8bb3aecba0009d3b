//! One attempt of one task: materialise inputs, render the command, look up the cache, record
//! the start, run the executor, collect and store the outputs, record the end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use capstan_exec::remote::{Handoff, HandoffInput, HandoffOutput, OutputKind, StepResult};
use capstan_exec::{Executor, LogSink, Outcome, TaskSpec};
use capstan_plan::{ArtifactHandle, Binding, CacheInput, TaskId, TaskOutputs, cache_key};
use capstan_spec::template::{Ref, Template};
use capstan_spec::{Command, Step, Value};
use capstan_store::{ArtifactRef, NewArtifact, TaskFinish, TaskStart, TaskStatus, now_millis};
use tokio_util::sync::CancellationToken;

use crate::run::Observer;
use crate::workspace::Workspace;

/// Shared services of the attempts of a run.
pub(crate) struct Env {
    pub ws: Workspace,
    pub executors: HashMap<String, Arc<dyn Executor>>,
    pub observer: Arc<dyn Observer>,
}

pub(crate) struct Attempt {
    pub run_id: String,
    pub task: TaskId,
    pub name: String,
    pub iteration: Option<i64>,
    pub attempt: u32,
    pub step: Step,
    pub bindings: Vec<(Ref, Binding)>,
    pub executor: String,
    pub cache: bool,
    pub base_dir: PathBuf,
    pub cancel: CancellationToken,
    pub tracking: StepTracking,
    /// The remote job an interrupted run left running for this very attempt: follow it instead
    /// of submitting the attempt again.
    pub reattach: Option<String>,
}

/// Where a run's steps log experiment data: the tracking server and the run's experiment.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepTracking {
    pub uri: Arc<str>,
    pub experiment_id: i64,
}

impl StepTracking {
    /// The proxy path of an output artifact of the attempt recorded by tracking run `run`.
    fn artifact_path(&self, run: &str, output: &str) -> String {
        format!("{}/{run}/artifacts/{output}", self.experiment_id)
    }
}

pub(crate) enum AttemptResult {
    /// Already recorded in the store.
    Succeeded {
        outputs: TaskOutputs,
        cached: bool,
    },
    /// Not recorded yet: the run loop decides between a retry and a final failure.
    Failed {
        message: String,
        exit_code: Option<i32>,
    },
    Cancelled,
}

/// A binding made concrete for this attempt: artifacts have local paths.
enum Resolved {
    Value(Value),
    Artifact(Local),
    Artifacts(Vec<Local>),
    Output(String),
}

/// An input artifact on local disk. Its metadata is read only for references that ask for the
/// artifact description (`| artifacts`); it is `{}` otherwise.
struct Local {
    path: String,
    digest: String,
    metadata: Value,
}

impl Local {
    /// The description that the `artifacts` filter writes; `uri` is the path, or the digest
    /// for the cache key.
    fn describe(&self, uri: &str) -> Value {
        serde_json::json!({"uri": uri, "metadata": self.metadata})
    }
}

/// The references whose artifact metadata the step's templates use.
fn described_refs(step: &Step) -> std::collections::HashSet<&Ref> {
    let templates: Vec<&Template> = match &step.run {
        Command::Argv(args) => args.iter().collect(),
        Command::Shell(t) => vec![t],
    };
    templates
        .into_iter()
        .chain(step.env.values())
        .chain(step.workdir.iter())
        .flat_map(Template::described_refs)
        .collect()
}

pub(crate) fn plan_outputs(o: &capstan_store::TaskOutputs) -> TaskOutputs {
    TaskOutputs {
        parameters: o.parameters.clone(),
        artifacts: o
            .artifacts
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    ArtifactHandle {
                        id: a.id.clone(),
                        uri: a.uri.clone(),
                        digest: a.digest.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn store_ref(a: &ArtifactHandle) -> ArtifactRef {
    ArtifactRef {
        id: a.id.clone(),
        uri: a.uri.clone(),
        digest: a.digest.clone(),
    }
}

/// Runs one attempt. An `Err` means the store or the artifact store failed and the run cannot
/// go on; a failing step is an `Ok(Failed)`.
pub(crate) async fn execute(env: &Env, a: Attempt) -> Result<AttemptResult> {
    let ws = &env.ws;
    let executor = env
        .executors
        .get(&a.executor)
        .with_context(|| format!("unknown executor `{}`", a.executor))?
        .clone();
    // Steps of a remote executor cannot see this machine: their inputs and outputs pass through
    // the artifact store, and their paths are only names under the scratch directory.
    let remote = executor.handoff();
    let work = ws.work_dir(&a.run_id, &a.name, a.attempt);
    if work.exists() {
        // Left over from an attempt that was interrupted: start clean.
        let _ = std::fs::remove_dir_all(&work);
    }
    let out_dir = work.join("out");
    let param_dir = work.join("params");
    // Scratch space only where outputs go: creating and deleting directories for every task
    // is a measurable share of the per-step cost on large fan-outs.
    for (dir, needed) in [
        (&out_dir, !a.step.outputs.artifacts.is_empty()),
        (
            &param_dir,
            !a.step.outputs.parameters.is_empty() || a.step.outputs.results.is_some(),
        ),
    ] {
        if needed && !remote {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }

    // Materialise input artifacts as local paths.
    let mut resolved: HashMap<&Ref, Resolved> = HashMap::new();
    let mut input_parameters = BTreeMap::new();
    let mut input_artifacts = BTreeMap::new();
    let described = described_refs(&a.step);
    let metadata = |h: &ArtifactHandle, wanted: bool| {
        let store = ws.store.clone();
        let id = h.id.clone();
        async move {
            if !wanted {
                return Ok::<Value, anyhow::Error>(Value::Object(Default::default()));
            }
            Ok(store
                .get_artifact(&id)
                .await?
                .map(|a| a.metadata)
                .filter(|m| !m.is_null())
                .unwrap_or_else(|| Value::Object(Default::default())))
        }
    };
    let mut handoff_inputs = Vec::new();
    let mut input_path = async |key: &str, h: &ArtifactHandle| {
        if !remote {
            return ws.artifacts.local_path(&h.uri).await;
        }
        let path = work
            .join("in")
            .join(format!("{}-{}", handoff_inputs.len(), path_safe(key)));
        handoff_inputs.push(HandoffInput {
            uri: h.uri.clone(),
            digest: h.digest.clone(),
            path: path.clone(),
        });
        Ok(path)
    };
    for (r, b) in &a.bindings {
        let wanted = described.contains(r);
        let key = match r {
            Ref::Input(name) => name.clone(),
            other => other.to_string(),
        };
        let value = match b {
            Binding::Value(v) => {
                input_parameters.insert(key, v.clone());
                Resolved::Value(v.clone())
            }
            Binding::Artifact(h) => {
                let path = match input_path(&key, h).await {
                    Ok(p) => p,
                    Err(e) => {
                        return Ok(failed(format!(
                            "input artifact `{key}` is not available: {e}"
                        )));
                    }
                };
                input_artifacts.insert(key, store_ref(h));
                Resolved::Artifact(Local {
                    path: path.display().to_string(),
                    digest: h.digest.clone(),
                    metadata: metadata(h, wanted).await?,
                })
            }
            Binding::Artifacts(hs) => {
                let mut paths = Vec::with_capacity(hs.len());
                for (i, h) in hs.iter().enumerate() {
                    let path = match input_path(&format!("{key}[{i}]"), h).await {
                        Ok(p) => p,
                        Err(e) => {
                            return Ok(failed(format!(
                                "input artifact `{key}[{i}]` is not available: {e}"
                            )));
                        }
                    };
                    input_artifacts.insert(format!("{key}[{i}]"), store_ref(h));
                    paths.push(Local {
                        path: path.display().to_string(),
                        digest: h.digest.clone(),
                        metadata: metadata(h, wanted).await?,
                    });
                }
                Resolved::Artifacts(paths)
            }
            Binding::OutputPath(name) => Resolved::Output(name.clone()),
        };
        resolved.insert(r, value);
    }

    let step = &a.step;
    let output_path = |name: &str| -> PathBuf {
        if step.outputs.artifacts.contains_key(name) {
            out_dir.join(name)
        } else {
            param_dir.join(name)
        }
    };
    // The real rendering, and the symbolic one that keys the cache: input artifacts by digest,
    // outputs by name, so that fresh paths do not defeat the cache.
    let lookup = |r: &Ref, described: bool, symbolic: bool| -> Result<Value, String> {
        let uri = |l: &Local| {
            if symbolic {
                format!("artifact:{}", l.digest)
            } else {
                l.path.clone()
            }
        };
        let one = |l: &Local| {
            if described {
                l.describe(&uri(l))
            } else {
                Value::String(uri(l))
            }
        };
        let value = resolved
            .get(r)
            .ok_or_else(|| format!("unresolved reference `{r}`"))?;
        Ok(match value {
            Resolved::Artifact(l) if described => Value::Array(vec![one(l)]),
            Resolved::Artifact(l) => one(l),
            Resolved::Artifacts(xs) => Value::Array(xs.iter().map(one).collect()),
            _ if described => {
                return Err(format!(
                    "`{r}` is not an input artifact: only artifacts take the `artifacts` filter"
                ));
            }
            Resolved::Value(v) => v.clone(),
            Resolved::Output(name) if symbolic => Value::String(format!("output:{name}")),
            Resolved::Output(name) => Value::String(output_path(name).display().to_string()),
        })
    };
    let real = |r: &Ref, d: bool| lookup(r, d, false);
    let symbolic = |r: &Ref, d: bool| lookup(r, d, true);
    let render_all =
        |lookup: &dyn Fn(&Ref, bool) -> Result<Value, String>| -> Result<Rendered, String> {
            let render = |t: &Template| t.render_with(lookup);
            let (argv, shell) = match &step.run {
                Command::Argv(args) => (
                    args.iter().map(render).collect::<Result<Vec<_>, _>>()?,
                    false,
                ),
                Command::Shell(t) => (vec![render(t)?], true),
            };
            let env = step
                .env
                .iter()
                .map(|(k, t)| Ok((k.clone(), render(t)?)))
                .collect::<Result<Vec<_>, String>>()?;
            let workdir = step.workdir.as_ref().map(render).transpose()?;
            Ok(Rendered {
                argv,
                shell,
                env,
                workdir,
            })
        };
    let concrete = match render_all(&real) {
        Ok(r) => r,
        Err(e) => return Ok(failed(format!("cannot render the command: {e}"))),
    };
    let keyed = match render_all(&symbolic) {
        Ok(r) => r,
        Err(e) => return Ok(failed(format!("cannot render the command: {e}"))),
    };
    let digests: BTreeMap<String, String> = input_artifacts
        .iter()
        .map(|(k, v)| (k.clone(), v.digest.clone()))
        .collect();
    let declared: BTreeMap<String, String> = step
        .outputs
        .parameters
        .iter()
        .map(|(k, t)| (k.clone(), t.name().to_string()))
        .chain(
            step.outputs
                .artifacts
                .iter()
                .map(|(k, t)| (k.clone(), t.clone())),
        )
        .collect();
    let key = match &step.cache_key {
        // The author's key stands for the inputs, command and environment; the step's name and
        // image keep keys of different steps apart.
        Some(custom) => cache_key(&CacheInput {
            command: &[format!("cache-key:{}:{custom}", step.name)],
            shell: false,
            env: &[],
            workdir: None,
            image: step.image.as_deref(),
            input_artifacts: &BTreeMap::new(),
            outputs: &declared,
        }),
        None => cache_key(&CacheInput {
            command: &keyed.argv,
            shell: keyed.shell,
            env: &keyed.env,
            workdir: keyed.workdir.as_deref(),
            image: step.image.as_deref(),
            input_artifacts: &digests,
            outputs: &declared,
        }),
    };

    if a.cache
        && let Some(hit) = lookup_cache(ws, &key).await?
    {
        let finish = TaskFinish {
            name: a.name.clone(),
            step: step.name.clone(),
            iteration: a.iteration,
            status: TaskStatus::Cached,
            exit_code: None,
            message: Some(format!("cached from run {} task {}", hit.run_id, hit.name)),
            input_parameters: input_parameters.clone(),
            output_parameters: hit.outputs.parameters.clone(),
            new_artifacts: vec![],
            reused_artifacts: hit.outputs.artifacts.clone(),
            cached_from: Some(hit.id.clone()),
            cache_key: Some(key),
            ended_at: now_millis(),
        };
        let record = ws.store.task_finished(&a.run_id, finish).await?;
        // The cached task's run shows the outputs it reuses. Published after the record, since
        // the task's id is known only then; publishing is idempotent, so a crash in between
        // only leaves the listing short.
        for (name, artifact) in &hit.outputs.artifacts {
            let path = a.tracking.artifact_path(
                &capstan_store::attempt_run_id(&record.id, record.attempts),
                name,
            );
            if let Err(e) = ws.artifacts.publish(&artifact.uri, &path).await {
                tracing::warn!(task = %a.name, output = %name, error = %e, "cannot publish a cached output to its tracking run");
            }
        }
        let _ = std::fs::remove_dir_all(&work);
        return Ok(AttemptResult::Succeeded {
            outputs: plan_outputs(&hit.outputs),
            cached: true,
        });
    }

    let (log_path, log_uri) = ws.artifacts.log_path(&a.run_id, &a.name, a.attempt)?;
    let workdir = match &concrete.workdir {
        Some(w) if Path::new(w).is_absolute() => PathBuf::from(w),
        Some(w) => a.base_dir.join(w),
        None => a.base_dir.clone(),
    };
    let argv = if concrete.shell {
        vec!["sh".to_string(), "-c".to_string(), concrete.argv[0].clone()]
    } else {
        concrete.argv
    };
    let mut task_env = concrete.env;
    task_env.extend([
        ("CAPSTAN_RUN_ID".to_string(), a.run_id.clone()),
        ("CAPSTAN_TASK".to_string(), a.name.clone()),
        ("CAPSTAN_ATTEMPT".to_string(), a.attempt.to_string()),
        (
            "MLFLOW_TRACKING_URI".to_string(),
            a.tracking.uri.to_string(),
        ),
        (
            "MLFLOW_EXPERIMENT_ID".to_string(),
            a.tracking.experiment_id.to_string(),
        ),
    ]);
    let handoff = if remote {
        Some(Handoff {
            scratch: work.clone(),
            artifact_root: ws.artifacts.root_url().to_string(),
            inputs: handoff_inputs,
            outputs: handoff_outputs(step, &out_dir, &param_dir),
            result_uri: ws.artifacts.result_uri(&a.run_id, &a.name, a.attempt)?,
        })
    } else {
        None
    };
    let mut spec = TaskSpec {
        run_id: a.run_id.clone(),
        task: a.name.clone(),
        attempt: a.attempt,
        argv,
        env: task_env,
        workdir,
        timeout: step.timeout,
        log_path: log_path.clone(),
        image: step.image.clone(),
        resources: serde_json::to_value(&step.resources)?,
        mounts: mounts(&ws.home, &a.base_dir, resolved.values()),
        handoff: handoff.clone(),
    };
    // Durable before submitted: the remote job's name is in the store before the job exists, so
    // a resume after a crash finds it instead of submitting the attempt twice.
    let remote_handle = executor.remote_handle(&spec);
    let task_id = ws
        .store
        .task_started(
            &a.run_id,
            TaskStart {
                name: a.name.clone(),
                step: step.name.clone(),
                iteration: a.iteration,
                attempt: a.attempt,
                executor: a.executor.clone(),
                resources: serde_json::to_value(&step.resources)?,
                cache_key: Some(key),
                log_uri: Some(log_uri.clone()),
                input_parameters,
                input_artifacts,
                started_at: now_millis(),
                remote_handle: remote_handle.clone(),
            },
        )
        .await?;
    env.observer
        .task_changed(&a.name, TaskStatus::Running, None);
    // The attempt's tracking run exists from here on; the step logs to it.
    let tracking_run = capstan_store::attempt_run_id(&task_id, a.attempt);
    spec.env
        .push(("MLFLOW_RUN_ID".to_string(), tracking_run.clone()));

    let observer = env.observer.clone();
    let sink: LogSink = Arc::new(move |task: &str, chunk: &[u8]| observer.log(task, chunk));
    let reattached = match (&a.reattach, &remote_handle) {
        (Some(handle), Some(current)) if handle == current => {
            // The job's log is fetched again from its start.
            let _ = std::fs::remove_file(&log_path);
            executor
                .reattach(spec.clone(), handle, a.cancel.clone(), Some(sink.clone()))
                .await
        }
        _ => None,
    };
    let outcome = match reattached {
        Some(outcome) => outcome,
        None => executor.run(spec, a.cancel.clone(), Some(sink)).await,
    };
    // A step that printed nothing has no log file (see the local executor).
    if log_path.exists()
        && let Err(e) = ws.artifacts.finish_log(&log_path, &log_uri).await
    {
        tracing::warn!(task = %a.name, error = %e, "cannot store task log");
    }
    let (outcome, worker) = match &handoff {
        Some(h) => capstan_exec::remote::settle(&ws.artifacts, h, outcome).await,
        None => (outcome, None),
    };

    match outcome {
        Outcome::Cancelled => return Ok(AttemptResult::Cancelled),
        o if !o.success() => {
            let mut message = o.describe();
            // The local executor runs no images: a step written for one may lack its tools here.
            if executor.name() == "local"
                && let Some(image) = &step.image
            {
                message.push_str(&format!(
                    " (the step names image `{image}`, which the local executor does not use: its command ran on this host)"
                ));
            }
            return Ok(AttemptResult::Failed {
                message,
                exit_code: o.exit_code(),
            });
        }
        _ => {}
    }

    // A remote worker sent its parameter files' text back; laid out here, they are read exactly
    // as a local step's.
    if let Some(worker) = &worker
        && let Err(e) = write_worker_parameters(worker, &handoff, &param_dir)
    {
        return Ok(failed(e));
    }
    // Collect outputs. Parameters first: they are cheap, and a missing one fails fast. A results
    // document, when the step declares one and wrote it, wins over the per-parameter files.
    let results = match read_results(step, &param_dir) {
        Ok(doc) => doc,
        Err(message) => return Ok(failed(message)),
    };
    let mut output_parameters = BTreeMap::new();
    for (name, ty) in &step.outputs.parameters {
        if let Some((file, doc)) = &results
            && let Some(v) = file.parameter(doc, name)
        {
            match capstan_spec::coerce_value(*ty, v) {
                Ok(v) => output_parameters.insert(name.clone(), v),
                Err(e) => {
                    return Ok(failed(format!(
                        "output parameter `{name}` (in results file `{}`): {e}",
                        file.name
                    )));
                }
            };
            continue;
        }
        let path = param_dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(failed(format!(
                    "exited 0 but did not write output parameter `{name}` (expected a file at {})",
                    path.display()
                )));
            }
            Err(e) => {
                return Ok(failed(format!(
                    "cannot read output parameter `{name}`: {e}"
                )));
            }
        };
        match capstan_spec::coerce_value(*ty, &Value::String(text)) {
            Ok(v) => output_parameters.insert(name.clone(), v),
            Err(e) => return Ok(failed(format!("output parameter `{name}`: {e}"))),
        };
    }
    let mut new_artifacts = Vec::new();
    let mut outputs = TaskOutputs {
        parameters: output_parameters.clone(),
        artifacts: BTreeMap::new(),
    };
    for (name, type_name) in &step.outputs.artifacts {
        let path = out_dir.join(name);
        let stored = match &worker {
            Some(worker) => stored_by_worker(ws, worker, name, &path).await,
            None => store_output(ws, name, &path).await,
        };
        let stored = match stored {
            Ok(s) => s,
            Err(message) => return Ok(failed(message)),
        };
        // Visible through the artifact proxy on the attempt's run before the record says so.
        let published = a.tracking.artifact_path(&tracking_run, name);
        if let Err(e) = ws.artifacts.publish(&stored.uri, &published).await {
            return Ok(failed(format!(
                "cannot publish output artifact `{name}` to its tracking run: {e}"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        outputs.artifacts.insert(
            name.clone(),
            ArtifactHandle {
                id: id.clone(),
                uri: stored.uri.clone(),
                digest: stored.digest.clone(),
            },
        );
        new_artifacts.push(NewArtifact {
            id,
            name: name.clone(),
            uri: stored.uri,
            digest: stored.digest,
            size: stored.size,
            type_name: type_name.clone(),
            is_dir: stored.is_dir,
            metadata: results
                .as_ref()
                .and_then(|(file, doc)| file.metadata(doc, name))
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
        });
    }
    let finish = TaskFinish {
        name: a.name.clone(),
        step: step.name.clone(),
        iteration: a.iteration,
        status: TaskStatus::Succeeded,
        exit_code: Some(0),
        message: None,
        input_parameters: BTreeMap::new(),
        output_parameters,
        new_artifacts,
        reused_artifacts: BTreeMap::new(),
        cached_from: None,
        cache_key: None,
        ended_at: now_millis(),
    };
    ws.store.task_finished(&a.run_id, finish).await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(AttemptResult::Succeeded {
        outputs,
        cached: false,
    })
}

/// Stores a local step's output artifact.
async fn store_output(
    ws: &Workspace,
    name: &str,
    path: &Path,
) -> Result<capstan_artifacts::StoredArtifact, String> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(missing_artifact(name, path));
    }
    ws.artifacts
        .put(path)
        .await
        .map_err(|e| format!("cannot store output artifact `{name}`: {e}"))
}

/// An output artifact a remote worker stored, checked to be in this run's artifact store.
async fn stored_by_worker(
    ws: &Workspace,
    worker: &StepResult,
    name: &str,
    path: &Path,
) -> Result<capstan_artifacts::StoredArtifact, String> {
    let Some(stored) = worker.artifact(name) else {
        return Err(missing_artifact(name, path));
    };
    match ws.artifacts.exists(&stored.uri).await {
        Ok(true) => Ok(stored),
        Ok(false) => Err(format!(
            "the worker reported output artifact `{name}` at {}, but it is not there",
            stored.uri
        )),
        Err(e) => Err(format!("output artifact `{name}`: {e}")),
    }
}

fn missing_artifact(name: &str, path: &Path) -> String {
    format!(
        "exited 0 but did not write output artifact `{name}` (expected a file or directory at {})",
        path.display()
    )
}

/// Where a remote step writes its outputs: artifacts under `out/`, parameters and the results
/// file under `params/`, as for local steps.
fn handoff_outputs(step: &Step, out_dir: &Path, param_dir: &Path) -> Vec<HandoffOutput> {
    let artifacts = step.outputs.artifacts.keys().map(|name| HandoffOutput {
        name: name.clone(),
        kind: OutputKind::Artifact,
        path: out_dir.join(name),
    });
    let parameters = step
        .outputs
        .parameters
        .keys()
        .chain(step.outputs.results.as_ref().map(|f| &f.name))
        .map(|name| HandoffOutput {
            name: name.clone(),
            kind: OutputKind::Parameter,
            path: param_dir.join(name),
        });
    artifacts.chain(parameters).collect()
}

/// Writes the parameter files a remote worker sent back where a local step would have left them.
fn write_worker_parameters(
    worker: &StepResult,
    handoff: &Option<Handoff>,
    param_dir: &Path,
) -> Result<(), String> {
    let Some(handoff) = handoff else {
        return Ok(());
    };
    for output in &handoff.outputs {
        let Some(text) = worker.parameter(&output.name) else {
            continue;
        };
        std::fs::create_dir_all(param_dir)
            .and_then(|()| std::fs::write(param_dir.join(&output.name), text))
            .map_err(|e| format!("cannot write output parameter `{}`: {e}", output.name))?;
    }
    Ok(())
}

/// A file name made of the safe characters of an input's name.
fn path_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The step's results document, if it declares one and wrote it. A document that is not JSON
/// fails the attempt, naming the file.
fn read_results<'s>(
    step: &'s Step,
    param_dir: &Path,
) -> Result<Option<(&'s capstan_spec::ResultsFile, Value)>, String> {
    let Some(file) = &step.outputs.results else {
        return Ok(None);
    };
    let path = param_dir.join(&file.name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read results file `{}`: {e}", file.name)),
    };
    serde_json::from_str(&text)
        .map(|doc| Some((file, doc)))
        .map_err(|e| format!("results file `{}` is not JSON: {e}", file.name))
}

struct Rendered {
    argv: Vec<String>,
    shell: bool,
    env: Vec<(String, String)>,
    workdir: Option<String>,
}

/// What an isolating executor must make visible for the engine's paths to work: the workspace
/// (scratch, outputs, local artifacts), the pipeline's directory, and any input artifact that
/// lives elsewhere (a local artifact store outside the workspace).
fn mounts<'a>(
    home: &Path,
    base_dir: &Path,
    resolved: impl Iterator<Item = &'a Resolved>,
) -> Vec<PathBuf> {
    let mut out = vec![home.to_path_buf(), base_dir.to_path_buf()];
    for r in resolved {
        let paths: Vec<&String> = match r {
            Resolved::Artifact(l) => vec![&l.path],
            Resolved::Artifacts(xs) => xs.iter().map(|l| &l.path).collect(),
            _ => continue,
        };
        for p in paths {
            let p = PathBuf::from(p);
            if !out.iter().any(|m| p.starts_with(m)) {
                out.push(p);
            }
        }
    }
    out
}

fn failed(message: String) -> AttemptResult {
    AttemptResult::Failed {
        message,
        exit_code: None,
    }
}

/// A usable cache hit: the recorded task, if every output artifact it points to still exists.
async fn lookup_cache(ws: &Workspace, key: &str) -> Result<Option<capstan_store::TaskRecord>> {
    let Some(hit) = ws.store.cache_lookup(key).await? else {
        return Ok(None);
    };
    for a in hit.outputs.artifacts.values() {
        if ws.artifacts.local_path(&a.uri).await.is_err() {
            return Ok(None);
        }
    }
    Ok(Some(hit))
}
