//! The run state machine.
//!
//! A run is a set of *nodes*, one per step, and *tasks*, the concrete units of work. A plain step
//! has one task named after it; a `for_each` step expands, when it becomes ready, into one task
//! per item, named `step[i]`. Nodes move `waiting -> active -> done`; tasks move
//! `queued -> running -> succeeded|cached|failed|cancelled` (with `retry-wait` between failed
//! attempts), or straight to `skipped`/`cancelled`/`failed` when they never launch.
//!
//! Rules:
//! - A main node becomes ready when every upstream node is done. If an upstream node failed or
//!   was cancelled, it does not run (it is recorded `skipped` with the reason). If a node whose
//!   *outputs* it uses was skipped, it is skipped too; an `after`-only dependency on a skipped
//!   node does not block it. A `one_of(...)` reference waits for all of its steps and blocks
//!   only when none of them succeeded; a `this_iteration(...)` iteration is skipped when the
//!   same iteration of its producer did not succeed.
//! - `when` is evaluated per task (so it may use `item`); false means `skipped`.
//! - At most `parallelism` tasks run at once, and at most `for_each.parallelism` per node.
//! - When every main node is done, the exit handlers (`finally`) run, seeing `run.status`.
//! - Cancel kills running tasks, cancels queued and waiting ones, then runs the exit handlers; a
//!   second cancel cancels the exit handlers too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use capstan_spec::template::Ref;
use capstan_spec::{ForEachItems, Pipeline, Step, Value};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub type TaskId = usize;

/// A stored artifact as the planner sees it: enough to hand it downstream and to key caches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactHandle {
    pub id: String,
    pub uri: String,
    pub digest: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOutputs {
    pub parameters: BTreeMap<String, Value>,
    pub artifacts: BTreeMap<String, ArtifactHandle>,
}

/// What the engine reports when a launched task ends.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskResult {
    Succeeded {
        outputs: TaskOutputs,
        cached: bool,
    },
    Failed {
        message: String,
    },
    /// Killed on request (cancel).
    Cancelled,
}

/// A task's recorded status, for [`Machine::restore`].
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    Succeeded(TaskOutputs),
    Cached(TaskOutputs),
    Failed(String),
    Skipped,
    /// Pending, running or cancelled when the orchestrator stopped: it runs again.
    Unfinished,
}

/// The value a reference resolves to for one task.
#[derive(Clone, Debug, PartialEq)]
pub enum Binding {
    Value(Value),
    Artifact(ArtifactHandle),
    /// Fan-in of an artifact output of a `for_each` step, in iteration order.
    Artifacts(Vec<ArtifactHandle>),
    /// The path of one of the task's own outputs; the engine allocates it.
    OutputPath(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Cached,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TaskState::Queued | TaskState::Running | TaskState::RetryWait
        )
    }
}

/// What the engine must do. Actions come out in the order they must be carried out; each one is
/// made durable before the next is acted on.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start an attempt (after a cache lookup). Record it as running first.
    Launch { task: TaskId, attempt: u32 },
    /// Record the task as pending; call [`Machine::on_retry_due`] after `delay`.
    ScheduleRetry { task: TaskId, delay: Duration },
    /// Record the task as skipped (never run).
    Skip { task: TaskId, reason: String },
    /// Record the task as failed without running it (a bad `for_each` list, a condition that
    /// cannot be evaluated).
    Fail { task: TaskId, message: String },
    /// Record the task as cancelled (never run).
    CancelTask { task: TaskId, reason: String },
    /// Kill a running task; it reports back with [`TaskResult::Cancelled`].
    Kill { task: TaskId },
    /// The run is over.
    Finish { outcome: Outcome },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Waiting,
    Active,
    Done(NodeDone),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeDone {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Main,
    Finally,
    Done,
}

#[derive(Debug)]
struct Node {
    name: String,
    finally: bool,
    /// Upstream nodes that gate readiness (for exit handlers: other exit handlers only).
    upstream: Vec<usize>,
    /// Nodes whose outputs this one uses.
    data_upstream: Vec<usize>,
    /// Groups of nodes of which one must have succeeded (`one_of` references).
    one_of_upstream: Vec<Vec<usize>>,
    downstream: Vec<usize>,
    remaining: usize,
    state: NodeState,
    tasks: Vec<TaskId>,
    fan_out: bool,
    open: usize,
    running: usize,
    limit: Option<usize>,
    blocked: VecDeque<TaskId>,
}

#[derive(Debug)]
struct Task {
    name: String,
    node: usize,
    index: Option<usize>,
    item: Option<Value>,
    state: TaskState,
    attempts: u32,
    failures: u32,
    outputs: TaskOutputs,
    message: Option<String>,
}

/// A read-only view of a task, for the engine.
#[derive(Debug)]
pub struct TaskView<'a> {
    pub id: TaskId,
    pub name: &'a str,
    pub step: &'a Step,
    pub index: Option<usize>,
    pub item: Option<&'a Value>,
    pub state: TaskState,
    pub attempts: u32,
    pub finally: bool,
    pub message: Option<&'a str>,
}

pub struct Machine {
    pipeline: Arc<Pipeline>,
    params: IndexMap<String, Value>,
    run_id: String,
    parallelism: usize,
    nodes: Vec<Node>,
    node_index: HashMap<String, usize>,
    tasks: Vec<Task>,
    task_index: HashMap<String, TaskId>,
    queue: VecDeque<TaskId>,
    /// Nodes whose upstream is done, waiting to be activated. A work list rather than
    /// recursion, so a long chain of skipped steps cannot overflow the stack.
    ready_nodes: VecDeque<usize>,
    running: usize,
    phase: Phase,
    started: bool,
    main_open: usize,
    finally_open: usize,
    main_cancelled: bool,
    finally_cancelled: bool,
    main_outcome: Option<Outcome>,
    outcome: Option<Outcome>,
    actions: Vec<Action>,
    recorded: HashMap<String, (Recorded, u32)>,
}

impl Machine {
    /// A machine for a fresh run. `pipeline` must have passed validation (no cycles, no unknown
    /// references).
    pub fn new(
        pipeline: Arc<Pipeline>,
        params: IndexMap<String, Value>,
        run_id: &str,
        parallelism: usize,
    ) -> Machine {
        let mut nodes = Vec::new();
        let mut node_index = HashMap::new();
        for step in pipeline.all_steps() {
            node_index.insert(step.name.clone(), nodes.len());
            nodes.push(Node {
                name: step.name.clone(),
                finally: pipeline.is_finally(&step.name),
                upstream: Vec::new(),
                data_upstream: Vec::new(),
                one_of_upstream: Vec::new(),
                downstream: Vec::new(),
                remaining: 0,
                state: NodeState::Waiting,
                tasks: Vec::new(),
                fan_out: step.for_each.is_some(),
                open: 0,
                running: 0,
                limit: step
                    .for_each
                    .as_ref()
                    .and_then(|f| f.parallelism)
                    .map(|p| p.max(1) as usize),
                blocked: VecDeque::new(),
            });
        }
        for (i, step) in pipeline.all_steps().enumerate() {
            let finally = nodes[i].finally;
            for up in step.upstream() {
                let Some(&u) = node_index.get(up) else {
                    continue;
                };
                // Exit handlers wait only for other exit handlers: the main phase is over
                // before any of them starts.
                if finally && !nodes[u].finally {
                    continue;
                }
                nodes[i].upstream.push(u);
                nodes[u].downstream.push(i);
            }
            nodes[i].data_upstream = step
                .data_upstream()
                .iter()
                .filter_map(|s| node_index.get(*s).copied())
                .collect();
            nodes[i].one_of_upstream = step
                .one_of_upstream()
                .iter()
                .map(|group| {
                    group
                        .iter()
                        .filter_map(|s| node_index.get(*s).copied())
                        .collect()
                })
                .collect();
            nodes[i].remaining = nodes[i].upstream.len();
        }
        let main_open = nodes.iter().filter(|n| !n.finally).count();
        let finally_open = nodes.len() - main_open;
        Machine {
            pipeline,
            params,
            run_id: run_id.to_string(),
            parallelism: parallelism.max(1),
            nodes,
            node_index,
            tasks: Vec::new(),
            task_index: HashMap::new(),
            queue: VecDeque::new(),
            ready_nodes: VecDeque::new(),
            running: 0,
            phase: Phase::Main,
            started: false,
            main_open,
            finally_open,
            main_cancelled: false,
            finally_cancelled: false,
            main_outcome: None,
            outcome: None,
            actions: Vec::new(),
            recorded: HashMap::new(),
        }
    }

    /// A machine for a run that stopped part way (kill -9, power loss). `history` is every task
    /// the store knows, with its recorded status and attempt count. Finished tasks are replayed
    /// without actions; unfinished ones launch again with the next attempt number. Replay is
    /// deterministic because every decision depends only on params and recorded outputs.
    pub fn restore(
        pipeline: Arc<Pipeline>,
        params: IndexMap<String, Value>,
        run_id: &str,
        parallelism: usize,
        history: Vec<(String, Recorded, u32)>,
    ) -> Machine {
        let mut m = Machine::new(pipeline, params, run_id, parallelism);
        m.recorded = history.into_iter().map(|(n, r, a)| (n, (r, a))).collect();
        m
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn params(&self) -> &IndexMap<String, Value> {
        &self.params
    }

    /// The run's outcome once it is over.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The outcome of the main steps, once they are all done (what `run.status` shows).
    pub fn main_outcome(&self) -> Option<Outcome> {
        self.main_outcome
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn task_id(&self, name: &str) -> Option<TaskId> {
        self.task_index.get(name).copied()
    }

    pub fn task(&self, id: TaskId) -> TaskView<'_> {
        let t = &self.tasks[id];
        let node = &self.nodes[t.node];
        TaskView {
            id,
            name: &t.name,
            step: self.step_of(t.node),
            index: t.index,
            item: t.item.as_ref(),
            state: t.state,
            attempts: t.attempts,
            finally: node.finally,
            message: t.message.as_deref(),
        }
    }

    pub fn tasks(&self) -> impl Iterator<Item = TaskView<'_>> {
        (0..self.tasks.len()).map(|i| self.task(i))
    }

    fn step_of(&self, node: usize) -> &Step {
        let name = &self.nodes[node].name;
        self.pipeline
            .step(name)
            .expect("every node is a step of the pipeline")
    }

    /// Advances the run as far as it can go and returns what the engine must do.
    pub fn poll(&mut self) -> Vec<Action> {
        if !self.started {
            self.started = true;
            let roots = (0..self.nodes.len())
                .filter(|&i| !self.nodes[i].finally && self.nodes[i].remaining == 0);
            self.ready_nodes.extend(roots);
            if self.main_open == 0 {
                self.enter_finally();
            }
        }
        loop {
            while let Some(n) = self.ready_nodes.pop_front() {
                self.activate(n);
            }
            self.dispatch();
            if self.ready_nodes.is_empty() {
                break;
            }
        }
        std::mem::take(&mut self.actions)
    }

    /// Retries left for a task that just failed: the delay before its next attempt, or `None`
    /// when this failure is final. The engine asks before recording the failure.
    pub fn retry_delay(&self, task: TaskId) -> Option<Duration> {
        let t = &self.tasks[task];
        let policy = &self.step_of(t.node).retries;
        if self.cancelling(t.node) || t.failures >= policy.limit {
            return None;
        }
        Some(policy.delay_after(t.failures + 1))
    }

    /// A launched task ended.
    pub fn on_finished(&mut self, task: TaskId, result: TaskResult) {
        let t = &self.tasks[task];
        if t.state != TaskState::Running {
            return;
        }
        let node = t.node;
        self.running -= 1;
        self.nodes[node].running -= 1;
        if let Some(next) = self.nodes[node].blocked.pop_front() {
            self.queue.push_front(next);
        }
        match result {
            TaskResult::Succeeded { outputs, cached } => {
                let state = if cached {
                    TaskState::Cached
                } else {
                    TaskState::Succeeded
                };
                self.tasks[task].outputs = outputs;
                self.settle(task, state, None);
            }
            TaskResult::Failed { message } => {
                let delay = self.retry_delay(task);
                let t = &mut self.tasks[task];
                t.failures += 1;
                match delay {
                    Some(delay) => {
                        t.state = TaskState::RetryWait;
                        t.message = Some(message);
                        self.actions.push(Action::ScheduleRetry { task, delay });
                    }
                    None => self.settle(task, TaskState::Failed, Some(message)),
                }
            }
            TaskResult::Cancelled => {
                self.settle(task, TaskState::Cancelled, Some("cancelled".to_string()))
            }
        }
    }

    /// The backoff of a scheduled retry has passed.
    pub fn on_retry_due(&mut self, task: TaskId) {
        if self.tasks[task].state == TaskState::RetryWait {
            self.tasks[task].state = TaskState::Queued;
            self.queue.push_back(task);
        }
    }

    /// Cancels the run: the first call cancels the main steps (exit handlers still run), a call
    /// while exit handlers run cancels them too.
    pub fn cancel(&mut self) {
        match self.phase {
            Phase::Done => {}
            Phase::Main => {
                if !self.main_cancelled {
                    self.main_cancelled = true;
                    self.cancel_nodes(false);
                }
            }
            Phase::Finally => {
                if !self.finally_cancelled {
                    self.finally_cancelled = true;
                    self.cancel_nodes(true);
                }
            }
        }
    }

    fn cancelling(&self, node: usize) -> bool {
        if self.nodes[node].finally {
            self.finally_cancelled
        } else {
            self.main_cancelled
        }
    }

    fn cancel_nodes(&mut self, finally: bool) {
        for id in 0..self.tasks.len() {
            if self.nodes[self.tasks[id].node].finally != finally {
                continue;
            }
            match self.tasks[id].state {
                TaskState::Running => self.actions.push(Action::Kill { task: id }),
                TaskState::Queued | TaskState::RetryWait => {
                    self.queue.retain(|&q| q != id);
                    let node = self.tasks[id].node;
                    self.nodes[node].blocked.retain(|&q| q != id);
                    self.actions.push(Action::CancelTask {
                        task: id,
                        reason: "cancelled before it started".to_string(),
                    });
                    self.settle(id, TaskState::Cancelled, Some("cancelled".to_string()));
                }
                _ => {}
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].finally == finally && self.nodes[n].state == NodeState::Waiting {
                // `activate` sees the cancel flag and records the node as cancelled.
                self.activate(n);
            }
        }
    }

    /// Resolves a reference for a task.
    pub fn binding(&self, task: TaskId, r: &Ref) -> Result<Binding, String> {
        let t = &self.tasks[task];
        match r {
            Ref::Param(name) => self
                .params
                .get(name)
                .cloned()
                .map(Binding::Value)
                .ok_or_else(|| format!("unknown param `{name}`")),
            Ref::StepOutput { step, output } => self.step_output(step, output),
            Ref::ThisIteration { step, output } => {
                let up = self.iteration_of(task, step)?;
                let missing = || format!("step `{}` did not record output `{output}`", up.name);
                match (
                    up.outputs.parameters.get(output),
                    up.outputs.artifacts.get(output),
                ) {
                    (Some(v), _) => Ok(Binding::Value(v.clone())),
                    (None, Some(a)) => Ok(Binding::Artifact(a.clone())),
                    (None, None) => Err(missing()),
                }
            }
            Ref::OneOf(alts) => {
                let chosen = alts.iter().find(|a| match a {
                    Ref::StepOutput { step, .. } => self.node_index.get(step).is_some_and(|&n| {
                        self.nodes[n].state == NodeState::Done(NodeDone::Succeeded)
                    }),
                    _ => false,
                });
                match chosen {
                    Some(r) => self.binding(task, r),
                    None => Err(format!("none of the steps of `{r}` succeeded")),
                }
            }
            Ref::Output(name) => Ok(Binding::OutputPath(name.clone())),
            Ref::Input(name) => {
                let step = self.step_of(t.node);
                let template = step
                    .inputs
                    .parameters
                    .get(name)
                    .or_else(|| step.inputs.artifacts.get(name))
                    .ok_or_else(|| format!("unknown input `{name}`"))?;
                match template.single_ref() {
                    Some(inner) if !matches!(inner, Ref::Input(_)) => self.binding(task, inner),
                    _ => template
                        .render(|r| self.value(task, r))
                        .map(|s| Binding::Value(Value::String(s))),
                }
            }
            Ref::Item(path) => {
                let mut v = t
                    .item
                    .as_ref()
                    .ok_or("`item` is only defined in a for_each step")?;
                for key in path {
                    v = match v {
                        Value::Object(m) => m.get(key),
                        Value::Array(xs) => key.parse::<usize>().ok().and_then(|i| xs.get(i)),
                        _ => None,
                    }
                    .ok_or_else(|| format!("item has no field `{key}`"))?;
                }
                Ok(Binding::Value(v.clone()))
            }
            Ref::Run(field) => match field.as_str() {
                "id" => Ok(Binding::Value(Value::String(self.run_id.clone()))),
                "pipeline" => Ok(Binding::Value(Value::String(self.pipeline.name.clone()))),
                "status" => self
                    .main_outcome
                    .map(|o| Binding::Value(Value::String(o.as_str().to_string())))
                    .ok_or_else(|| "`run.status` is only defined in finally steps".to_string()),
                other => Err(format!("unknown run field `{other}`")),
            },
            Ref::Task(field) => match field.as_str() {
                "name" => Ok(Binding::Value(Value::String(t.name.clone()))),
                "attempt" => Ok(Binding::Value(Value::from(t.attempts))),
                "index" => Ok(Binding::Value(Value::from(t.index.unwrap_or(0)))),
                other => Err(format!("unknown task field `{other}`")),
            },
        }
    }

    /// A reference as a plain value: artifacts become their URIs. Used for conditions and
    /// `for_each` lists, which the planner evaluates itself.
    pub fn value(&self, task: TaskId, r: &Ref) -> Result<Value, String> {
        Ok(match self.binding(task, r)? {
            Binding::Value(v) => v,
            Binding::Artifact(a) => Value::String(a.uri),
            Binding::Artifacts(xs) => {
                Value::Array(xs.into_iter().map(|a| Value::String(a.uri)).collect())
            }
            Binding::OutputPath(name) => {
                return Err(format!("`outputs.{name}` cannot be used in a condition"));
            }
        })
    }

    /// The iteration of `step` with the same index as `task`, when it succeeded.
    fn iteration_of(&self, task: TaskId, step: &str) -> Result<&Task, String> {
        let index = self.tasks[task]
            .index
            .ok_or("`this_iteration` is only defined in a for_each step")?;
        let name = format!("{step}[{index}]");
        let up = self
            .task_index
            .get(&name)
            .map(|&id| &self.tasks[id])
            .ok_or_else(|| format!("step `{step}` has no iteration {index}"))?;
        if matches!(up.state, TaskState::Succeeded | TaskState::Cached) {
            Ok(up)
        } else {
            Err(format!("`{name}` did not succeed"))
        }
    }

    fn step_output(&self, step: &str, output: &str) -> Result<Binding, String> {
        let &n = self
            .node_index
            .get(step)
            .ok_or_else(|| format!("unknown step `{step}`"))?;
        let node = &self.nodes[n];
        if !matches!(node.state, NodeState::Done(NodeDone::Succeeded)) {
            return Err(format!("step `{step}` has no outputs: it did not succeed"));
        }
        let is_artifact = self.step_of(n).outputs.artifacts.contains_key(output);
        let done = node
            .tasks
            .iter()
            .map(|&id| &self.tasks[id])
            .filter(|t| matches!(t.state, TaskState::Succeeded | TaskState::Cached));
        let missing = || format!("step `{step}` did not record output `{output}`");
        if !node.fan_out {
            let t = done.into_iter().next().ok_or_else(missing)?;
            return if is_artifact {
                t.outputs
                    .artifacts
                    .get(output)
                    .cloned()
                    .map(Binding::Artifact)
                    .ok_or_else(missing)
            } else {
                t.outputs
                    .parameters
                    .get(output)
                    .cloned()
                    .map(Binding::Value)
                    .ok_or_else(missing)
            };
        }
        if is_artifact {
            done.map(|t| t.outputs.artifacts.get(output).cloned().ok_or_else(missing))
                .collect::<Result<Vec<_>, _>>()
                .map(Binding::Artifacts)
        } else {
            done.map(|t| {
                t.outputs
                    .parameters
                    .get(output)
                    .cloned()
                    .ok_or_else(missing)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|xs| Binding::Value(Value::Array(xs)))
        }
    }

    fn add_task(&mut self, node: usize, index: Option<usize>, item: Option<Value>) -> TaskId {
        let name = match index {
            Some(i) => format!("{}[{i}]", self.nodes[node].name),
            None => self.nodes[node].name.clone(),
        };
        let id = self.tasks.len();
        let attempts = self.recorded.get(&name).map(|(_, a)| *a).unwrap_or(0);
        self.task_index.insert(name.clone(), id);
        self.tasks.push(Task {
            name,
            node,
            index,
            item,
            state: TaskState::Queued,
            attempts,
            failures: 0,
            outputs: TaskOutputs::default(),
            message: None,
        });
        self.nodes[node].tasks.push(id);
        self.nodes[node].open += 1;
        id
    }

    /// A node's upstream is done: expand it into tasks and decide each one's fate.
    fn activate(&mut self, n: usize) {
        if self.nodes[n].state != NodeState::Waiting {
            return;
        }
        self.nodes[n].state = NodeState::Active;
        if self.cancelling(n) {
            let id = self.add_task(n, None, None);
            self.push_never_run(
                id,
                Action::CancelTask {
                    task: id,
                    reason: "cancelled before it started".into(),
                },
            );
            return;
        }
        if let Some(reason) = self.blocked_reason(n) {
            let id = self.add_task(n, None, None);
            self.push_never_run(id, Action::Skip { task: id, reason });
            return;
        }
        let step = self.step_of(n).clone();
        let Some(for_each) = &step.for_each else {
            let id = self.add_task(n, None, None);
            self.decide(id, &step);
            return;
        };
        match self.items(n, &for_each.items, None) {
            Err(message) => {
                let id = self.add_task(n, None, None);
                self.push_never_run(id, Action::Fail { task: id, message });
            }
            Ok(items) if items.is_empty() => self.finish_node(n),
            Ok(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let id = self.add_task(n, Some(i), Some(item));
                    self.decide(id, &step);
                }
            }
        }
    }

    /// The items of a `for_each`. A template is evaluated before any iteration exists, so
    /// `item` is what `outer` says: nothing for a plain loop, the combination of the outer
    /// levels' items for a level of nested loops.
    fn items(
        &mut self,
        n: usize,
        items: &ForEachItems,
        outer: Option<Value>,
    ) -> Result<Vec<Value>, String> {
        match items {
            ForEachItems::Literal(xs) => Ok(xs.clone()),
            ForEachItems::Ref(t) => {
                let probe = self.add_task(n, None, outer);
                let v = t.evaluate(|r| self.value(probe, r));
                self.discard_probe(probe);
                match v? {
                    Value::Array(xs) => Ok(xs),
                    Value::String(s) => match serde_json::from_str::<Value>(&s) {
                        Ok(Value::Array(xs)) => Ok(xs),
                        _ => Err(format!("for_each expects a list, got `{s}`")),
                    },
                    other => Err(format!("for_each expects a list, got `{other}`")),
                }
            }
            ForEachItems::Product(levels) => {
                let mut combos = vec![Value::Object(Default::default())];
                for level in levels {
                    let mut next = Vec::new();
                    for combo in combos {
                        let xs = self
                            .items(n, &level.items, Some(combo.clone()))
                            .map_err(|e| format!("loop `{}`: {e}", level.key))?;
                        for x in xs {
                            let mut c = combo.clone();
                            if let Value::Object(m) = &mut c {
                                m.insert(level.key.clone(), x);
                            }
                            next.push(c);
                        }
                    }
                    combos = next;
                }
                Ok(combos)
            }
        }
    }

    fn discard_probe(&mut self, probe: TaskId) {
        let t = self.tasks.pop().expect("probe is the last task");
        debug_assert_eq!(probe, self.tasks.len());
        self.task_index.remove(&t.name);
        let node = &mut self.nodes[t.node];
        node.tasks.pop();
        node.open -= 1;
    }

    /// Why a node cannot run because of its upstream, if it cannot.
    fn blocked_reason(&self, n: usize) -> Option<String> {
        let node = &self.nodes[n];
        for &u in &node.upstream {
            let up = &self.nodes[u];
            match up.state {
                NodeState::Done(NodeDone::Failed) if !node.finally => {
                    return Some(format!("not run: upstream step `{}` failed", up.name));
                }
                NodeState::Done(NodeDone::Cancelled) if !node.finally => {
                    return Some(format!(
                        "not run: upstream step `{}` was cancelled",
                        up.name
                    ));
                }
                _ => {}
            }
        }
        for &u in &node.data_upstream {
            let up = &self.nodes[u];
            if !matches!(up.state, NodeState::Done(NodeDone::Succeeded)) {
                return Some(format!(
                    "not run: it uses outputs of step `{}`, which did not succeed",
                    up.name
                ));
            }
        }
        for group in &node.one_of_upstream {
            let succeeded = group
                .iter()
                .any(|&u| self.nodes[u].state == NodeState::Done(NodeDone::Succeeded));
            if !succeeded {
                let names: Vec<String> = group
                    .iter()
                    .map(|&u| format!("`{}`", self.nodes[u].name))
                    .collect();
                return Some(format!(
                    "not run: it uses the output of one of the steps {}, and none succeeded",
                    names.join(", ")
                ));
            }
        }
        None
    }

    /// Evaluates a new task's condition and queues it, or skips it.
    fn decide(&mut self, id: TaskId, step: &Step) {
        // An iteration that uses the same iteration of another loop step runs only if that one
        // succeeded (it may have been skipped by its own condition).
        for r in step.refs() {
            if let Ref::ThisIteration { step: up, .. } = r
                && let Err(e) = self.iteration_of(id, up)
            {
                let reason = format!("not run: {e}");
                self.push_never_run(id, Action::Skip { task: id, reason });
                return;
            }
        }
        if let Some(when) = &step.when {
            match when.eval(|r| self.value(id, r)) {
                Ok(true) => {}
                Ok(false) => {
                    let reason = format!("condition `{}` is false", when.source());
                    self.push_never_run(id, Action::Skip { task: id, reason });
                    return;
                }
                Err(e) => {
                    let message = format!("cannot evaluate condition `{}`: {e}", when.source());
                    self.push_never_run(id, Action::Fail { task: id, message });
                    return;
                }
            }
        }
        self.queue.push_back(id);
    }

    /// Records a task that ends without launching, unless a restore already recorded it.
    fn push_never_run(&mut self, id: TaskId, action: Action) {
        let (state, message) = match &action {
            Action::Skip { reason, .. } => (TaskState::Skipped, reason.clone()),
            Action::Fail { message, .. } => (TaskState::Failed, message.clone()),
            _ => (TaskState::Cancelled, "cancelled".to_string()),
        };
        let already = match self.recorded.get(&self.tasks[id].name) {
            Some((Recorded::Skipped, _)) => state == TaskState::Skipped,
            Some((Recorded::Failed(_), _)) => state == TaskState::Failed,
            _ => false,
        };
        if !already {
            self.actions.push(action);
        }
        self.settle(id, state, Some(message));
    }

    /// Launches queued tasks while there are free slots.
    fn dispatch(&mut self) {
        while self.running < self.parallelism {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let node = self.tasks[id].node;
            if self.tasks[id].state != TaskState::Queued {
                continue;
            }
            if let Some((recorded, _)) = self.recorded.remove(&self.tasks[id].name) {
                match recorded {
                    Recorded::Succeeded(outputs) => {
                        self.tasks[id].outputs = outputs;
                        self.settle(id, TaskState::Succeeded, None);
                        continue;
                    }
                    Recorded::Cached(outputs) => {
                        self.tasks[id].outputs = outputs;
                        self.settle(id, TaskState::Cached, None);
                        continue;
                    }
                    Recorded::Failed(message) => {
                        self.settle(id, TaskState::Failed, Some(message));
                        continue;
                    }
                    Recorded::Skipped | Recorded::Unfinished => {}
                }
            }
            if self.nodes[node]
                .limit
                .is_some_and(|limit| self.nodes[node].running >= limit)
            {
                self.nodes[node].blocked.push_back(id);
                continue;
            }
            let t = &mut self.tasks[id];
            t.state = TaskState::Running;
            t.attempts += 1;
            self.running += 1;
            self.nodes[node].running += 1;
            self.actions.push(Action::Launch {
                task: id,
                attempt: t.attempts,
            });
        }
    }

    /// A task reached a terminal state: close its node when it was the last one open.
    fn settle(&mut self, id: TaskId, state: TaskState, message: Option<String>) {
        let t = &mut self.tasks[id];
        debug_assert!(!t.state.is_terminal(), "task {} settled twice", t.name);
        t.state = state;
        if message.is_some() {
            t.message = message;
        }
        let n = t.node;
        self.nodes[n].open -= 1;
        if self.nodes[n].open == 0 && self.nodes[n].state == NodeState::Active {
            self.finish_node(n);
        }
    }

    fn finish_node(&mut self, n: usize) {
        let states: Vec<TaskState> = self.nodes[n]
            .tasks
            .iter()
            .map(|&t| self.tasks[t].state)
            .collect();
        let done = if states.contains(&TaskState::Failed) {
            NodeDone::Failed
        } else if states.contains(&TaskState::Cancelled) {
            NodeDone::Cancelled
        } else if !states.is_empty() && states.iter().all(|s| *s == TaskState::Skipped) {
            NodeDone::Skipped
        } else {
            NodeDone::Succeeded
        };
        self.nodes[n].state = NodeState::Done(done);
        let finally = self.nodes[n].finally;
        for i in 0..self.nodes[n].downstream.len() {
            let d = self.nodes[n].downstream[i];
            self.nodes[d].remaining -= 1;
            if self.nodes[d].remaining == 0 {
                self.ready_nodes.push_back(d);
            }
        }
        if finally {
            self.finally_open -= 1;
            if self.finally_open == 0 && self.phase == Phase::Finally {
                self.finish_run();
            }
        } else {
            self.main_open -= 1;
            if self.main_open == 0 {
                self.enter_finally();
            }
        }
    }

    fn enter_finally(&mut self) {
        let failed = self
            .nodes
            .iter()
            .any(|n| !n.finally && n.state == NodeState::Done(NodeDone::Failed));
        let outcome = if self.main_cancelled {
            Outcome::Cancelled
        } else if failed {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        self.main_outcome = Some(outcome);
        self.phase = Phase::Finally;
        if self.finally_open == 0 {
            self.finish_run();
            return;
        }
        let roots = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].finally && self.nodes[i].remaining == 0);
        self.ready_nodes.extend(roots);
    }

    fn finish_run(&mut self) {
        let main = self.main_outcome.unwrap_or(Outcome::Succeeded);
        let handler_failed = self
            .nodes
            .iter()
            .any(|n| n.finally && n.state == NodeState::Done(NodeDone::Failed));
        let outcome = match main {
            Outcome::Succeeded if self.finally_cancelled => Outcome::Cancelled,
            Outcome::Succeeded if handler_failed => Outcome::Failed,
            other => other,
        };
        self.phase = Phase::Done;
        self.outcome = Some(outcome);
        self.actions.push(Action::Finish { outcome });
    }
}
