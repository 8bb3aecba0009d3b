//! A small harness for driving the `capstan` binary: a temporary workspace and pipeline files,
//! and commands whose output and exit code the tests inspect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Dir {
    tmp: tempfile::TempDir,
    pub home: PathBuf,
    /// Extra global flags (for example a PostgreSQL store).
    pub global: Vec<String>,
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The run id: the first line `capstan run` prints.
    pub fn run_id(&self) -> String {
        self.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_capstan")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("ws");
        Dir {
            tmp,
            home,
            global: vec![],
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes a file under the test directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--home").arg(&self.home);
        cmd.args(&self.global);
        cmd.args(args);
        cmd.current_dir(self.tmp.path());
        cmd.env_remove("CAPSTAN_HOME");
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("spawn capstan"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn capstan")
    }

    /// The log of a task of a run, as `capstan runs logs` prints it.
    pub fn task_log(&self, run_id: &str, task: &str) -> String {
        self.run(&["runs", "logs", run_id, task])
            .ok()
            .stdout
            .clone()
    }

    pub fn show(&self, run_id: &str) -> Value {
        self.run(&["runs", "show", run_id, "--output", "json"])
            .ok()
            .json()
    }
}

/// The task named `name` in a `runs show --output json` document.
pub fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {run:#}"))
}

/// Task name -> status.
pub fn statuses(run: &Value) -> Vec<(String, String)> {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits for a child with a deadline, so that a hang fails the test instead of blocking CI.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` (started with piped stdout and stderr) as [`wait_with_timeout`] does, and
/// collects what it printed.
pub fn wait_output(mut child: Child, limit: Duration) -> Run {
    let code = wait_with_timeout(&mut child, limit);
    let read = |pipe: Option<&mut dyn std::io::Read>| {
        let mut text = String::new();
        if let Some(p) = pipe {
            p.read_to_string(&mut text).unwrap();
        }
        text
    };
    Run {
        code,
        stdout: read(child.stdout.as_mut().map(|p| p as &mut dyn std::io::Read)),
        stderr: read(child.stderr.as_mut().map(|p| p as &mut dyn std::io::Read)),
    }
}

/// Cancels run `id` with `capstan runs cancel`, waits for its `capstan run` process `child` to
/// exit non-zero, and checks that the run and its task `task` ended cancelled; returns the run's
/// document.
pub fn cancel_run(dir: &Dir, child: &mut Child, id: &str, task_name: &str) -> Value {
    dir.run(&["runs", "cancel", id]).ok();
    let code = wait_with_timeout(child, Duration::from_secs(60));
    assert_ne!(code, Some(0));
    let shown = dir.show(id);
    assert_eq!(shown["status"], "cancelled", "{shown:#}");
    assert_eq!(task(&shown, task_name)["status"], "cancelled", "{shown:#}");
    shown
}

/// Checks that a `capstan run` succeeded with every task on `executor`, each in one attempt;
/// returns the run id and the run's document.
pub fn succeeded_on(dir: &Dir, run: &Run, executor: &str) -> (String, Value) {
    run.ok();
    let id = run.run_id();
    let shown = dir.show(&id);
    assert_eq!(shown["status"], "succeeded", "{shown:#}");
    for t in shown["tasks"].as_array().unwrap() {
        assert_eq!(t["executor"], executor, "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    (id, shown)
}

/// Polls until `f` returns true or the deadline passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); check /proc for its state as well.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

/// A fresh PostgreSQL database for one test, from `CAPSTAN_TEST_POSTGRES_URL` (an admin URL).
/// Without it the test is skipped, unless `CAPSTAN_REQUIRE_POSTGRES=1` (as in CI).
pub fn postgres_database(tag: &str) -> Option<String> {
    let Ok(admin) = std::env::var("CAPSTAN_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CAPSTAN_REQUIRE_POSTGRES").is_err(),
            "CAPSTAN_REQUIRE_POSTGRES is set but CAPSTAN_TEST_POSTGRES_URL is not"
        );
        eprintln!("skipping: CAPSTAN_TEST_POSTGRES_URL is not set");
        return None;
    };
    let name = format!("capstan_cli_{tag}_{}", std::process::id());
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .arg(&admin)
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!("DROP DATABASE IF EXISTS {name}"));
    psql(&format!("CREATE DATABASE {name}"));
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}

/// A `capstan server` on an ephemeral loopback port over a test workspace; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(dir: &Dir) -> Server {
        let log = dir
            .path()
            .join(format!("server-{}.log", std::process::id()));
        let mut child = dir
            .command(&["server", "--port", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn capstan server");
        let mut url = None;
        let found = eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            url = text.lines().find_map(|l| {
                l.split_once("listening on ")
                    .map(|(_, u)| u.trim().to_string())
            });
            url.is_some() || child.try_wait().unwrap().is_some()
        });
        let Some(url) = url.filter(|_| found) else {
            let _ = child.kill();
            panic!(
                "capstan server did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the MLflow REST API of a server: JSON in, status and JSON out.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// `GET <base><path_and_query>`.
    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        Self::read(response).await
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }

    /// `POST <base>/api/2.0/mlflow/<endpoint>` with a JSON body.
    pub async fn post(&self, endpoint: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/2.0/mlflow/{endpoint}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        Self::read(response).await
    }

    async fn read(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Every point of a metric of a run, following page tokens.
    pub async fn history(&self, run_id: &str, key: &str) -> Vec<Value> {
        let mut points = Vec::new();
        let mut token = String::new();
        loop {
            let (status, page) = self
                .get(&format!(
                    "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}&max_results=5000&page_token={token}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            points.extend(page["metrics"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_string(),
                _ => return points,
            }
        }
    }
}

/// Every task's outputs, by task name: parameter values and artifact digests.
pub fn outputs_by_task(run: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let artifacts: serde_json::Map<String, serde_json::Value> = t["outputs"]["artifacts"]
                .as_object()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.clone(), v["digest"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            (
                t["name"].as_str().unwrap().to_string(),
                serde_json::json!({
                    "parameters": t["outputs"]["parameters"],
                    "artifacts": artifacts,
                }),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A bare HTTP/1.1 request without a body over `conn` (TCP or a unix socket); returns the status
/// and the body, de-chunked. The tests need no HTTP client of their own.
pub fn http_request(
    conn: &mut (impl std::io::Read + std::io::Write),
    host: &str,
    method: &str,
    path: &str,
) -> (u16, String) {
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
