//! The local process executor: the default, used by `capstan run` on a laptop.
//!
//! Each attempt runs in its own process group so that capstan can stop the whole tree a step
//! started (shell pipelines, `&` background jobs, worker pools), not only the process it spawned.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Executor, LogSink, Outcome, TaskSpec};

/// How long a stopped attempt gets between SIGTERM and SIGKILL unless configured otherwise.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(3);

/// After the step's process exits, how long its output readers may keep draining the pipes. The
/// group is killed first, so this only matters when something outside the group (a process that
/// called `setsid`) still holds a pipe open.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A line longer than this is passed on in pieces, so that output without newlines still reaches
/// the log and the sink as it arrives instead of piling up in memory.
const MAX_PENDING_LINE: usize = 64 * 1024;

/// Runs steps as child processes of capstan on this machine.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    grace: Duration,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalExecutor {
    /// An executor with the default grace period of 3 seconds.
    pub fn new() -> Self {
        Self::with_grace_period(DEFAULT_GRACE_PERIOD)
    }

    /// An executor that waits `grace` after SIGTERM before it sends SIGKILL.
    pub fn with_grace_period(grace: Duration) -> Self {
        Self { grace }
    }

    pub fn grace_period(&self) -> Duration {
        self.grace
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn run(
        &self,
        spec: TaskSpec,
        cancel: CancellationToken,
        sink: Option<LogSink>,
    ) -> Outcome {
        if cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        let Some(program) = spec.argv.first() else {
            return Outcome::SpawnFailed("empty command".to_string());
        };
        if let Err(reason) = check_workdir(&spec.workdir) {
            return Outcome::SpawnFailed(reason);
        }
        let log = Arc::new(Mutex::new(LazyLog::new(&spec.log_path)));

        let mut command = Command::new(program);
        command
            .args(&spec.argv[1..])
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => return Outcome::SpawnFailed(spawn_error(program, &err)),
        };
        let Some(pid) = child.id() else {
            return Outcome::SpawnFailed(format!("{program} exited before it could be watched"));
        };
        // From here on the group is killed whatever happens, even if this future is dropped.
        let mut group = GroupGuard {
            pgid: Pid::from_raw(pid as i32),
            armed: true,
        };
        debug!(run_id = %spec.run_id, task = %spec.task, attempt = spec.attempt, pid, "started step");

        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(spawn_reader(stdout, &spec.task, log.clone(), sink.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(spawn_reader(stderr, &spec.task, log.clone(), sink.clone()));
        }

        let outcome = self.supervise(&mut child, &group, &spec, &cancel).await;
        // The leader is gone; anything it left behind in its group goes too, so that no orphan keeps
        // running and every pipe closes.
        group.kill(Signal::SIGKILL);
        // The group id may be reused once its last member is reaped; signal it no more.
        group.armed = false;
        drain(readers).await;
        outcome
    }
}

impl LocalExecutor {
    async fn supervise(
        &self,
        child: &mut Child,
        group: &GroupGuard,
        spec: &TaskSpec,
        cancel: &CancellationToken,
    ) -> Outcome {
        let deadline = async {
            match spec.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            status = child.wait() => return exit_outcome(status, &spec.task),
            _ = deadline => Outcome::TimedOut(spec.timeout.unwrap_or_default()),
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        debug!(task = %spec.task, reason = %stopped.describe(), "stopping step");
        group.kill(Signal::SIGTERM);
        if tokio::time::timeout(self.grace, child.wait())
            .await
            .is_err()
        {
            group.kill(Signal::SIGKILL);
            if let Err(err) = child.wait().await {
                warn!(task = %spec.task, error = %err, "could not reap stopped step");
            }
        }
        stopped
    }
}

fn exit_outcome(status: std::io::Result<ExitStatus>, task: &str) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(signal)) => Outcome::Signaled(signal),
            (None, None) => Outcome::SpawnFailed(format!("{task} ended with status {status}")),
        },
        Err(err) => Outcome::SpawnFailed(format!("lost track of step {task}: {err}")),
    }
}

pub(crate) fn check_workdir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "working directory is not a directory: {}",
            dir.display()
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "working directory does not exist: {}",
            dir.display()
        )),
        Err(err) => Err(format!(
            "cannot use working directory {}: {err}",
            dir.display()
        )),
    }
}

/// A step's log file, created when the step first writes output: a silent step costs no file,
/// which matters on fan-outs of thousands of small steps. Readers treat a missing log as empty.
pub(crate) struct LazyLog {
    path: std::path::PathBuf,
    file: Option<File>,
}

impl LazyLog {
    pub(crate) fn new(path: &Path) -> LazyLog {
        LazyLog {
            path: path.to_path_buf(),
            file: None,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(open_log(&self.path)?),
        };
        file.write_all(bytes)
            .map_err(|err| format!("cannot write log file {}: {err}", self.path.display()))
    }
}

fn open_log(path: &Path) -> Result<File, String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|err| format!("cannot create log directory {}: {err}", parent.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| format!("cannot open log file {}: {err}", path.display()))
}

fn spawn_error(program: &str, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => format!("command not found: {program}"),
        std::io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ => format!("cannot start {program}: {err}"),
    }
}

/// Signals a whole process group; kills it outright when dropped, so that an attempt whose
/// supervising future is abandoned leaves nothing running.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    fn kill(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => {
                warn!(pgid = self.pgid.as_raw(), %signal, error = %err, "could not signal step")
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill(Signal::SIGKILL);
        }
    }
}

fn spawn_reader<R>(
    mut stream: R,
    task: &str,
    log: Arc<Mutex<LazyLog>>,
    sink: Option<LogSink>,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let task = task.to_string();
    tokio::spawn(async move {
        let mut out = LineWriter {
            task,
            log,
            sink,
            pending: Vec::new(),
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.push(&buf[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    warn!(task = %out.task, error = %err, "could not read step output");
                    break;
                }
            }
        }
        out.finish();
    })
}

/// Cuts one output stream into lines, so that stdout and stderr, which share one log file, only
/// ever interleave at line boundaries.
pub(crate) struct LineWriter {
    task: String,
    log: Arc<Mutex<LazyLog>>,
    sink: Option<LogSink>,
    pending: Vec<u8>,
}

impl LineWriter {
    pub(crate) fn new(task: &str, log: Arc<Mutex<LazyLog>>, sink: Option<LogSink>) -> LineWriter {
        LineWriter {
            task: task.to_string(),
            log,
            sink,
            pending: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, mut data: &[u8]) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(pos + 1);
            if self.pending.is_empty() {
                self.emit(line);
            } else {
                self.pending.extend_from_slice(line);
                let whole = std::mem::take(&mut self.pending);
                self.emit(&whole);
            }
            data = rest;
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= MAX_PENDING_LINE {
            let chunk = std::mem::take(&mut self.pending);
            self.emit(&chunk);
        }
    }

    pub(crate) fn finish(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }

    fn emit(&self, bytes: &[u8]) {
        {
            let mut file = self.log.lock().unwrap_or_else(|poison| poison.into_inner());
            if let Err(err) = file.write_all(bytes) {
                warn!(task = %self.task, error = %err, "could not write step log");
            }
        }
        if let Some(sink) = &self.sink {
            sink(&self.task, bytes);
        }
    }
}

async fn drain(readers: Vec<JoinHandle<()>>) {
    for mut reader in readers {
        if tokio::time::timeout(DRAIN_LIMIT, &mut reader)
            .await
            .is_err()
        {
            // Something outside the step's group inherited the pipe; stop reading rather than hang.
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect() -> (LogSink, Arc<Mutex<Vec<Vec<u8>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: LogSink = Arc::new(move |_task: &str, bytes: &[u8]| {
            sink_seen.lock().unwrap().push(bytes.to_vec());
        });
        (sink, seen)
    }

    #[test]
    fn line_writer_joins_split_lines_and_flushes_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, seen) = collect();
        let mut out = LineWriter {
            task: "t".into(),
            log: Arc::new(Mutex::new(LazyLog::new(&dir.path().join("log")))),
            sink: Some(sink),
            pending: Vec::new(),
        };
        out.push(b"hel");
        out.push(b"lo\nwor");
        out.push(b"ld\nx\ny");
        out.finish();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                b"hello\n".to_vec(),
                b"world\n".to_vec(),
                b"x\n".to_vec(),
                b"y".to_vec()
            ]
        );
        let log = std::fs::read(dir.path().join("log")).unwrap();
        assert_eq!(log, b"hello\nworld\nx\ny");
    }

    #[test]
    fn line_writer_passes_on_long_lines_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, seen) = collect();
        let mut out = LineWriter {
            task: "t".into(),
            log: Arc::new(Mutex::new(LazyLog::new(&dir.path().join("log")))),
            sink: Some(sink),
            pending: Vec::new(),
        };
        out.push(&vec![b'a'; MAX_PENDING_LINE + 10]);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(out.pending.is_empty());
    }

    #[test]
    fn grace_period_defaults_to_three_seconds() {
        assert_eq!(LocalExecutor::new().grace_period(), Duration::from_secs(3));
        assert_eq!(LocalExecutor::default().name(), "local");
        assert_eq!(
            LocalExecutor::with_grace_period(Duration::from_millis(5)).grace_period(),
            Duration::from_millis(5)
        );
    }
}
