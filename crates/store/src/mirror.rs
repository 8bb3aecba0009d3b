//! The tracking view of pipeline runs: a pipeline run *is* a tracking run (an MLflow run in the
//! experiment named after the pipeline), and each attempt of a task is a run nested in it
//! (`mlflow.parentRunId`).
//!
//! The rows are written by the same transactions that record the pipeline transitions
//! (`create_run`, `set_run_status`, `task_started`, `task_pending`, `task_finished`), so the two
//! views never disagree, whatever point a crash stops at. This module decides what the rows say;
//! `store_impl!` writes them.

use std::collections::BTreeMap;

use crate::tracking::Arg;
use crate::{NewRun, RunStatus, TaskStatus, Value};

/// MLflow's limit on a param value; longer values are cut (the pipeline run keeps them whole).
const MAX_PARAM_LENGTH: usize = 6000;

/// Rows written per statement for tags and params.
pub(crate) const PAIRS_PER_STATEMENT: usize = 100;

/// The artifact root of a tracking run: `<location>/<run>/artifacts`, where the location is the
/// experiment's own or `mlflow-artifacts:/<experiment>`, which the artifact proxy serves.
pub fn run_artifact_uri(
    artifact_location: Option<&str>,
    experiment_id: i64,
    run_id: &str,
) -> String {
    match artifact_location {
        Some(location) => format!("{location}/{run_id}/artifacts"),
        None => format!("mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"),
    }
}

/// The tracking status of a pipeline run.
pub(crate) fn run_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending => "SCHEDULED",
        RunStatus::Running => "RUNNING",
        RunStatus::Succeeded => "FINISHED",
        RunStatus::Failed => "FAILED",
        RunStatus::Cancelled => "KILLED",
    }
}

/// The tracking status of a task attempt. Cached and skipped tasks ended without error; the
/// `capstan.status` tag tells them apart.
pub(crate) fn task_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Pending => "SCHEDULED",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Succeeded | TaskStatus::Cached | TaskStatus::Skipped => "FINISHED",
        TaskStatus::Failed => "FAILED",
        TaskStatus::Cancelled => "KILLED",
    }
}

/// A parameter value as a tracking param: strings as they are, anything else as JSON.
pub(crate) fn param_text(value: &Value) -> String {
    let mut text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > MAX_PARAM_LENGTH {
        let mut cut = MAX_PARAM_LENGTH - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

pub(crate) type Pairs = BTreeMap<String, String>;

/// The display name of a pipeline run: the pipeline and the start of the run id.
pub(crate) fn pipeline_run_name(run: &NewRun) -> String {
    format!("{}-{}", run.pipeline_name, &run.id[..run.id.len().min(8)])
}

/// Tags and params of a pipeline run's tracking run.
pub(crate) fn pipeline_run_pairs(run: &NewRun) -> (Pairs, Pairs) {
    let mut tags = Pairs::new();
    tags.insert("mlflow.runName".into(), pipeline_run_name(run));
    tags.insert(
        "mlflow.source.name".into(),
        run.source
            .clone()
            .unwrap_or_else(|| run.pipeline_name.clone()),
    );
    tags.insert("mlflow.source.type".into(), "JOB".into());
    tags.insert("capstan.run_id".into(), run.id.clone());
    tags.insert("capstan.pipeline".into(), run.pipeline_name.clone());
    tags.insert(
        "capstan.pipeline_digest".into(),
        run.pipeline_digest.clone(),
    );
    let params = match &run.params {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), param_text(v)))
            .collect(),
        _ => Pairs::new(),
    };
    (tags, params)
}

/// What identifies a task attempt's tracking run.
pub(crate) struct TaskIdentity<'a> {
    pub run_id: &'a str,
    pub task_id: &'a str,
    pub name: &'a str,
    pub step: &'a str,
    pub iteration: Option<i64>,
    pub attempt: u32,
    pub status: TaskStatus,
}

/// Tags of a task attempt's tracking run.
pub(crate) fn task_tags(task: &TaskIdentity<'_>) -> Pairs {
    let mut tags = Pairs::new();
    tags.insert("mlflow.parentRunId".into(), task.run_id.to_owned());
    tags.insert("mlflow.runName".into(), task.name.to_owned());
    tags.insert("capstan.run_id".into(), task.run_id.to_owned());
    tags.insert("capstan.task".into(), task.name.to_owned());
    tags.insert("capstan.task_id".into(), task.task_id.to_owned());
    tags.insert("capstan.step".into(), task.step.to_owned());
    tags.insert("capstan.attempt".into(), task.attempt.to_string());
    tags.insert("capstan.status".into(), task.status.as_str().to_owned());
    if let Some(i) = task.iteration {
        tags.insert("capstan.iteration".into(), i.to_string());
    }
    tags
}

/// Input parameters as tracking params, keyed by the reference they were bound from.
pub(crate) fn input_params(inputs: &BTreeMap<String, Value>) -> Pairs {
    inputs
        .iter()
        .map(|(k, v)| (k.clone(), param_text(v)))
        .collect()
}

/// Output parameters as tracking params, under `outputs.<name>`.
pub(crate) fn output_params(outputs: &BTreeMap<String, Value>) -> Pairs {
    outputs
        .iter()
        .map(|(k, v)| (format!("outputs.{k}"), param_text(v)))
        .collect()
}

/// Where a [`Batch`] template takes its next argument.
const ARG: char = '\u{1}';

/// Statements that are sent to the database together.
///
/// Every statement is a round trip to the database (on SQLite, a hand-off to its worker thread
/// and back), and the statements of a task's transitions run for every step. SQLite runs a
/// batch as one multi-statement query, with its arguments numbered across the statements;
/// Postgres cannot prepare several statements at once, so there each is sent on its own.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    statements: Vec<(String, Vec<Arg>)>,
}

impl Batch {
    /// Adds a statement whose template marks each argument's place with [`ARG`].
    fn push(&mut self, template: String, args: Vec<Arg>) {
        debug_assert_eq!(template.matches(ARG).count(), args.len());
        self.statements.push((template, args));
    }

    /// Adds a plain statement: `sql` with `$1`, `$2`, ... for `args` (a number may recur).
    pub(crate) fn statement(&mut self, sql: &str, args: Vec<Arg>) {
        let mut template = String::with_capacity(sql.len());
        let mut ordered = Vec::with_capacity(args.len());
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            template.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .expect("batch statements number their arguments `$1`, `$2`, ...");
            template.push(ARG);
            ordered.push(args[n - 1].clone());
            rest = &rest[at + 1 + digits..];
        }
        template.push_str(rest);
        self.push(template, ordered);
    }

    /// Tags (`overwrite`) or params (the first value wins) of a tracking run, a multi-row
    /// insert per [`PAIRS_PER_STATEMENT`] pairs.
    pub(crate) fn pairs(&mut self, table: &str, run_id: &str, pairs: &Pairs, overwrite: bool) {
        let pairs: Vec<(&String, &String)> = pairs.iter().collect();
        for chunk in pairs.chunks(PAIRS_PER_STATEMENT) {
            let mut sql = format!("INSERT INTO {table} (run_id, key, value) VALUES ");
            let mut args = Vec::with_capacity(3 * chunk.len());
            for (i, (key, value)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("({ARG}, {ARG}, {ARG})"));
                args.extend([
                    Arg::Text(run_id.to_owned()),
                    Arg::Text((*key).clone()),
                    Arg::Text((*value).clone()),
                ]);
            }
            sql.push_str(if overwrite {
                " ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value"
            } else {
                " ON CONFLICT (run_id, key) DO NOTHING"
            });
            self.push(sql, args);
        }
    }

    /// The queries to send: one per statement, or all in one when `joined`. Arguments are
    /// numbered `$1`, `$2`, ... within each query.
    pub(crate) fn queries(self, joined: bool) -> Vec<(String, Vec<Arg>)> {
        let number = |template: &str, first: usize| {
            let mut sql = String::with_capacity(template.len() + 16);
            let mut n = first;
            for c in template.chars() {
                if c == ARG {
                    n += 1;
                    sql.push_str(&format!("${n}"));
                } else {
                    sql.push(c);
                }
            }
            (sql, n)
        };
        if !joined {
            return self
                .statements
                .into_iter()
                .map(|(template, args)| (number(&template, 0).0, args))
                .collect();
        }
        let mut sql = String::new();
        let mut all = Vec::new();
        for (template, args) in self.statements {
            let (statement, _) = number(&template, all.len());
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str(&statement);
            all.extend(args);
        }
        if sql.is_empty() {
            return Vec::new();
        }
        vec![(sql, all)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_params_are_cut_on_a_char_boundary() {
        let text = param_text(&Value::String("é".repeat(4000)));
        assert!(text.len() <= MAX_PARAM_LENGTH);
        assert!(text.ends_with("..."));
        assert_eq!(param_text(&serde_json::json!([1, 2])), "[1,2]");
        assert_eq!(param_text(&serde_json::json!("x")), "x");
    }

    #[test]
    fn batches_number_their_arguments_per_query() {
        let mut batch = Batch::default();
        batch.statement(
            "UPDATE t SET a = $2 WHERE id = $1",
            vec![Arg::Text("r".into()), Arg::Int(1)],
        );
        batch.pairs(
            "tracking_tags",
            "r",
            &Pairs::from([("k".into(), "v".into()), ("l".into(), "w".into())]),
            true,
        );
        let separate = batch.clone().queries(false);
        assert_eq!(separate[0].0, "UPDATE t SET a = $1 WHERE id = $2");
        assert_eq!(separate[0].1, vec![Arg::Int(1), Arg::Text("r".into())]);
        assert_eq!(
            separate[1].0,
            "INSERT INTO tracking_tags (run_id, key, value) VALUES ($1, $2, $3), ($4, $5, $6) \
             ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value"
        );
        let joined = batch.queries(true);
        assert_eq!(joined.len(), 1);
        assert!(
            joined[0]
                .0
                .starts_with("UPDATE t SET a = $1 WHERE id = $2; INSERT INTO")
        );
        assert!(joined[0].0.contains("($3, $4, $5), ($6, $7, $8)"));
        assert_eq!(joined[0].1.len(), 8);
        assert!(Batch::default().queries(true).is_empty());
    }

    #[test]
    fn attempt_runs_are_the_task_then_derived_ids() {
        let task = "0123456789abcdef0123456789abcdef";
        assert_eq!(crate::attempt_run_id(task, 1), task);
        let second = crate::attempt_run_id(task, 2);
        assert_eq!(second.len(), 32);
        assert_ne!(second, task);
        assert_eq!(second, crate::attempt_run_id(task, 2));
    }
}
