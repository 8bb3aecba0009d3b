//! The `capstan` command: argument parsing, dispatch and output formatting. The logic lives in
//! the library crates.

mod progress;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use capstan_engine::lineage::{Direction, lineage};
use capstan_engine::{CancelResult, Engine, RunOptions, Workspace, WorkspaceConfig};
use capstan_store::{RunFilter, RunStatus};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    about = "Machine-learning pipelines, tracking and lineage in one binary"
)]
struct Cli {
    /// Workspace directory (holds capstan.db, artifacts/ and work/).
    #[arg(long, global = true, env = "CAPSTAN_HOME", default_value = ".capstan")]
    home: PathBuf,
    /// Store URI: a SQLite path, or postgresql://... (default: <home>/capstan.db).
    #[arg(long, global = true, env = "CAPSTAN_BACKEND_STORE_URI")]
    backend_store_uri: Option<String>,
    /// Artifact store URL: a path, file://, s3://, gs://, az:// or memory:// (default: <home>/artifacts).
    #[arg(long, global = true, env = "CAPSTAN_ARTIFACTS_DESTINATION")]
    artifacts_destination: Option<String>,
    /// Configuration file (store, artifacts, executor settings) (default: <home>/config.yaml).
    #[arg(long, global = true, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline and wait for it (prints the run id first).
    Run(RunArgs),
    /// Finish a run that stopped (crash, kill -9), or retry the failed steps of a failed run.
    Resume { run_id: String },
    /// Check a pipeline file without running it.
    Validate { pipeline: PathBuf },
    /// Inspect and control runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Inspect artifacts.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Serve the MLflow-compatible tracking API, /health, /version and /metrics.
    Server {
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        #[arg(long, default_value_t = 5000)]
        port: u16,
    },
    /// Show where an artifact came from and what used it.
    Lineage {
        artifact_id: String,
        #[arg(long, value_enum, default_value = "both")]
        direction: DirectionArg,
        /// Maximum number of task hops.
        #[arg(long, default_value_t = 50)]
        depth: usize,
        #[arg(long, short, value_enum, default_value = "text")]
        output: GraphFormat,
    },
    /// Runs one step where a remote executor placed it (a Ray worker, a pod): downloads its
    /// inputs, runs it, uploads its outputs and writes its result document.
    #[command(name = "step-exec", hide = true)]
    StepExec {
        /// The step, as the executor encoded it.
        #[arg(long, env = "CAPSTAN_ENVELOPE")]
        envelope: String,
        /// Where the step's scratch directory is made (default: the system's temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    pipeline: PathBuf,
    /// Set a parameter: -p name=value (checked against its declared type).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Maximum number of steps running at once (default: the number of cores).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Run every step, ignoring cached results.
    #[arg(long)]
    no_cache: bool,
    /// Executor for steps that name none: local, container, ray or kubernetes (default: the
    /// pipeline's `executor`, else local).
    #[arg(long, env = "CAPSTAN_EXECUTOR", value_parser = clap::builder::PossibleValuesParser::new(capstan_spec::EXECUTORS))]
    executor: Option<String>,
    /// Start the run in the background and return at once.
    #[arg(long)]
    detach: bool,
    /// Do not stream step output.
    #[arg(long, short)]
    quiet: bool,
    /// KFP pipelines: run container commands exactly as written, each component's
    /// `pip install` preamble included, instead of in a cached Python environment.
    #[arg(long)]
    kfp_verbatim: bool,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, short, value_enum, default_value = "text")]
        output: Format,
    },
    /// Show a run and its tasks.
    Show {
        run_id: String,
        #[arg(long, short, value_enum, default_value = "text")]
        output: Format,
    },
    /// Print the logs of a run's tasks.
    Logs {
        run_id: String,
        task: Option<String>,
        /// Keep printing new output until the run ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a run.
    Cancel { run_id: String },
}

#[derive(Subcommand)]
enum ArtifactsCommand {
    /// List the artifacts a run produced.
    List {
        run_id: String,
        #[arg(long, short, value_enum, default_value = "text")]
        output: Format,
    },
    /// Copy an artifact (file or directory) to a local path.
    Get {
        artifact: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Json,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Up,
    Down,
    Both,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPSTAN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The orchestrator of a run mostly waits: on processes, and on the store's database thread.
    // One worker thread hands work to and from those with fewer context switches than two,
    // which on 2 cores took 8% off a 1,000-step chain and 13% off a 3,000-step fan-out.
    // Hashing and copying run on the blocking pool either way. TOKIO_WORKER_THREADS overrides.
    if matches!(cli.command, Command::Run(_) | Command::Resume { .. })
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    async fn workspace(&self) -> Result<Workspace> {
        let overrides = WorkspaceConfig {
            backend_store_uri: self.backend_store_uri.clone(),
            artifacts_destination: self.artifacts_destination.clone(),
            executors: Default::default(),
        };
        Workspace::open(&self.home, self.config.as_deref(), overrides).await
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run(args) => run(&cli, args).await,
        Command::Resume { run_id } => {
            let ws = cli.workspace().await?;
            let id = ws.store.resolve_run_id(run_id).await?;
            println!("{id}");
            drive(ws, &id, false).await
        }
        Command::Validate { pipeline } => {
            load_pipeline(pipeline, &[], false)?;
            println!("{}: ok", pipeline.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(cmd) => runs(&cli, cmd).await,
        Command::Artifacts(cmd) => artifacts(&cli, cmd).await,
        Command::Server { host, port } => {
            let ws = cli.workspace().await?;
            let state = capstan_server::ServerState {
                store: ws.store.clone(),
                artifacts: ws.artifacts.clone(),
                files: ws.artifacts.tracking_files()?,
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let bound = |addr| eprintln!("capstan server listening on http://{addr}");
            capstan_server::serve((*host, *port).into(), state, bound, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage {
            artifact_id,
            direction,
            depth,
            output,
        } => {
            let ws = cli.workspace().await?;
            let dir = match direction {
                DirectionArg::Up => Direction::Upstream,
                DirectionArg::Down => Direction::Downstream,
                DirectionArg::Both => Direction::Both,
            };
            let graph = lineage(&ws.store, artifact_id, dir, *depth).await?;
            match output {
                GraphFormat::Text => print!("{}", graph.to_text()),
                GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&graph)?),
                GraphFormat::Dot => print!("{}", graph.to_dot()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::StepExec { envelope, scratch } => {
            let scratch = scratch.clone().unwrap_or_else(std::env::temp_dir);
            let code = capstan_exec::remote::worker_main(envelope, &scratch).await;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

/// A pipeline ready to bind, and the Python environments a KFP pipeline's components need.
type Loaded = (
    capstan_spec::Pipeline,
    indexmap::IndexMap<String, serde_json::Value>,
    Vec<capstan_kfp::PipEnv>,
);

/// Loads, validates and binds a pipeline file: native YAML, or a KFP pipeline IR (detected by
/// its top-level keys). Diagnostics come back as one error with every problem, each naming the
/// file, line and column.
fn load_pipeline(path: &Path, params: &[String], kfp_verbatim: bool) -> Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.display().to_string();
    let (pipeline, envs) = if capstan_kfp::is_kfp_ir(&text) {
        let options = capstan_kfp::ImportOptions {
            verbatim: kfp_verbatim,
        };
        let import = capstan_kfp::import(&text, &file, options).map_err(|d| anyhow!("{d}"))?;
        (import.pipeline, import.environments)
    } else {
        let pipeline = capstan_spec::parse_native(&text, &file).map_err(|d| anyhow!("{d}"))?;
        (pipeline, Vec::new())
    };
    let mut overrides = Vec::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("-p {p}: expected NAME=VALUE"))?;
        overrides.push((k.trim().to_string(), v.to_string()));
    }
    let bound = capstan_spec::bind_params(&pipeline, &overrides).map_err(|d| anyhow!("{d}"))?;
    Ok((pipeline, bound, envs))
}

async fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let (mut pipeline, params, envs) =
        match load_pipeline(&args.pipeline, &args.params, args.kfp_verbatim) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::from(2));
            }
        };
    let env_root = capstan_kfp::env::default_root(&cli.home.join("kfp-envs"));
    if let Err(e) =
        capstan_kfp::env::provision(&mut pipeline, &envs, &env_root, |line| eprintln!("{line}"))
    {
        eprintln!("{e}");
        return Ok(ExitCode::FAILURE);
    }
    if args.executor.is_none() {
        for note in capstan_kfp::host_notes(&pipeline) {
            eprintln!("{note}");
        }
    }
    let base_dir = args
        .pipeline
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let options = RunOptions {
        parallelism: args.parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        no_cache: args.no_cache,
        executor: args.executor.clone(),
        base_dir,
    };
    let ws = cli.workspace().await?;
    let engine = Engine::new(ws.clone(), Arc::new(capstan_engine::NullObserver));
    let run = engine.submit(&pipeline, params, &options).await?;
    println!("{}", run.id);
    if args.detach {
        detach(cli, &run.id)?;
        return Ok(ExitCode::SUCCESS);
    }
    drive(ws, &run.id, args.quiet).await
}

/// Starts `capstan resume RUN_ID` as a background process in its own session.
fn detach(cli: &Cli, run_id: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the capstan executable")?;
    let log_dir = cli.home.join("work").join(run_id);
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::File::create(log_dir.join("orchestrator.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home").arg(&cli.home);
    if let Some(uri) = &cli.backend_store_uri {
        cmd.arg("--backend-store-uri").arg(uri);
    }
    if let Some(uri) = &cli.artifacts_destination {
        cmd.arg("--artifacts-destination").arg(uri);
    }
    cmd.args(["resume", run_id])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    cmd.spawn()
        .context("cannot start the background orchestrator")?;
    Ok(())
}

/// Drives a run in the foreground with a progress display, Ctrl-C cancelling it.
async fn drive(ws: Workspace, run_id: &str, quiet: bool) -> Result<ExitCode> {
    let display = Arc::new(progress::Display::new(quiet));
    let engine = Engine::new(ws.clone(), display.clone());
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let n = *tx.borrow() + 1;
            eprintln!(
                "{}",
                if n == 1 {
                    "cancelling: stopping steps (press Ctrl-C again to skip exit handlers)"
                } else {
                    "cancelling exit handlers"
                }
            );
            if tx.send(n).is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let result = engine.drive(run_id, rx).await;
    signals.abort();
    display.finish();
    let status = result?;
    let tasks = ws.store.list_tasks(run_id).await?;
    eprintln!(
        "{}",
        render::summary(run_id, status, &tasks, started.elapsed())
    );
    if let Some(run) = ws.store.get_run(run_id).await?
        && let Some(msg) = run.message.filter(|_| status == RunStatus::Failed)
    {
        eprintln!("{msg}");
    }
    Ok(match status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    })
}

async fn runs(cli: &Cli, cmd: &RunsCommand) -> Result<ExitCode> {
    let ws = cli.workspace().await?;
    match cmd {
        RunsCommand::List {
            pipeline,
            status,
            limit,
            output,
        } => {
            let status = status.as_deref().map(str::parse::<RunStatus>).transpose()?;
            let filter = RunFilter {
                pipeline: pipeline.clone(),
                status,
                limit: Some(*limit),
                ..Default::default()
            };
            let runs = ws.store.list_runs(&filter).await?;
            match output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&render::runs_json(&runs))?
                ),
                Format::Text => print!("{}", render::runs_table(&runs)),
            }
        }
        RunsCommand::Show { run_id, output } => {
            let id = ws.store.resolve_run_id(run_id).await?;
            let run = ws
                .store
                .get_run(&id)
                .await?
                .ok_or_else(|| anyhow!("run {id} not found"))?;
            let tasks = ws.store.list_tasks(&id).await?;
            match output {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&render::run_json(&run, &tasks))?
                ),
                Format::Text => print!("{}", render::run_text(&run, &tasks)),
            }
        }
        RunsCommand::Logs {
            run_id,
            task,
            follow,
        } => {
            let id = ws.store.resolve_run_id(run_id).await?;
            if *follow {
                follow_logs(&ws, &id, task.as_deref()).await?;
            } else {
                let logs = capstan_engine::read_logs(&ws, &id, task.as_deref()).await?;
                let many = logs.len() > 1;
                for (name, attempt, bytes) in logs {
                    if many {
                        println!("==> {name} (attempt {attempt}) <==");
                    }
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                }
            }
        }
        RunsCommand::Cancel { run_id } => {
            let id = ws.store.resolve_run_id(run_id).await?;
            match capstan_engine::cancel_run(&ws, &id, Duration::from_secs(30)).await? {
                CancelResult::Requested => println!("{id}: cancel requested"),
                CancelResult::Cancelled => println!("{id}: cancelled"),
                CancelResult::AlreadyEnded(s) => {
                    println!("{id}: already {s}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints new log output of a run's tasks as it is written, until the run ends.
async fn follow_logs(ws: &Workspace, run_id: &str, task: Option<&str>) -> Result<()> {
    use std::collections::HashMap;
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut offsets: HashMap<PathBuf, u64> = HashMap::new();
    loop {
        let run = ws
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| anyhow!("run {run_id} not found"))?;
        let tasks = ws.store.list_tasks(run_id).await?;
        if let Some(name) = task
            && run.status.is_terminal()
            && !tasks.iter().any(|t| t.name == name)
        {
            bail!("run {run_id} has no task `{name}`");
        }
        for t in tasks.iter().filter(|t| task.is_none_or(|n| n == t.name)) {
            for attempt in 1..=t.attempts {
                let (path, _) = ws.artifacts.log_path(run_id, &t.name, attempt)?;
                let Ok(mut f) = std::fs::File::open(&path) else {
                    continue;
                };
                let offset = offsets.entry(path.clone()).or_insert(0);
                f.seek(SeekFrom::Start(*offset))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                if !buf.is_empty() {
                    *offset += buf.len() as u64;
                    let mut out = std::io::stdout().lock();
                    for line in buf.split_inclusive(|b| *b == b'\n') {
                        if task.is_none() {
                            write!(out, "[{}] ", t.name)?;
                        }
                        out.write_all(line)?;
                    }
                    out.flush()?;
                }
            }
        }
        if run.status.is_terminal() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn artifacts(cli: &Cli, cmd: &ArtifactsCommand) -> Result<ExitCode> {
    let ws = cli.workspace().await?;
    match cmd {
        ArtifactsCommand::List { run_id, output } => {
            let id = ws.store.resolve_run_id(run_id).await?;
            let list = ws.store.list_artifacts(&id).await?;
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Text => print!("{}", render::artifacts_table(&list)),
            }
        }
        ArtifactsCommand::Get { artifact, output } => {
            let uri = if artifact.contains("://") {
                artifact.clone()
            } else {
                ws.store
                    .get_artifact(artifact)
                    .await?
                    .ok_or_else(|| anyhow!("artifact {artifact} not found"))?
                    .uri
            };
            ws.artifacts.get_to(&uri, output).await?;
            eprintln!("{} -> {}", uri, output.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
