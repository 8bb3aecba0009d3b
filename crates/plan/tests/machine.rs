//! The run state machine, driven by a simulated executor: no processes, no store, no clock.
//!
//! Each test runs a pipeline to completion and compares the trace of actions with the expected
//! one. Simulated tasks finish in launch order (FIFO), which makes traces deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use capstan_plan::{Action, Machine, Outcome, Recorded, TaskId, TaskOutputs, TaskResult};
use capstan_spec::{Pipeline, Value};
use indexmap::IndexMap;
use serde_json::json;

fn pipeline(yaml: &str) -> Arc<Pipeline> {
    match capstan_spec::parse_native(yaml, "test.yaml") {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("{e}"),
    }
}

fn params(p: &Pipeline) -> IndexMap<String, Value> {
    capstan_spec::bind_params(p, &[]).unwrap()
}

fn outputs(params: &[(&str, Value)]) -> TaskOutputs {
    TaskOutputs {
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        artifacts: BTreeMap::new(),
    }
}

fn ok() -> TaskResult {
    TaskResult::Succeeded {
        outputs: TaskOutputs::default(),
        cached: false,
    }
}

fn fail(msg: &str) -> TaskResult {
    TaskResult::Failed {
        message: msg.to_string(),
    }
}

/// Drives a machine until it finishes. `behave(name, attempt)` decides each task's result.
/// `cancel_after` cancels the run once that many tasks have launched.
struct Sim {
    machine: Machine,
    trace: Vec<String>,
    running: VecDeque<TaskId>,
    max_running: usize,
    launches: usize,
    cancel_after: Option<usize>,
}

impl Sim {
    fn new(machine: Machine) -> Sim {
        Sim {
            machine,
            trace: vec![],
            running: VecDeque::new(),
            max_running: 0,
            launches: 0,
            cancel_after: None,
        }
    }

    fn apply(&mut self, actions: Vec<Action>) -> Option<Outcome> {
        let mut finished = None;
        for a in actions {
            let name = |m: &Machine, t: TaskId| m.task(t).name.to_string();
            match a {
                Action::Launch { task, attempt } => {
                    self.trace
                        .push(format!("launch {}#{attempt}", name(&self.machine, task)));
                    self.running.push_back(task);
                    self.launches += 1;
                }
                Action::ScheduleRetry { task, delay } => {
                    self.trace.push(format!(
                        "retry {} in {}ms",
                        name(&self.machine, task),
                        delay.as_millis()
                    ));
                    self.machine.on_retry_due(task);
                }
                Action::Skip { task, reason } => self
                    .trace
                    .push(format!("skip {}: {reason}", name(&self.machine, task))),
                Action::Fail { task, message } => self
                    .trace
                    .push(format!("fail {}: {message}", name(&self.machine, task))),
                Action::CancelTask { task, .. } => self
                    .trace
                    .push(format!("cancel {}", name(&self.machine, task))),
                Action::Kill { task } => self
                    .trace
                    .push(format!("kill {}", name(&self.machine, task))),
                Action::Finish { outcome } => {
                    self.trace.push(format!("finish {}", outcome.as_str()));
                    finished = Some(outcome);
                }
            }
        }
        finished
    }

    fn run(&mut self, behave: impl Fn(&str, u32) -> TaskResult) -> Outcome {
        let mut idle = 0;
        for _ in 0..100_000 {
            let actions = self.machine.poll();
            if let Some(o) = self.apply(actions) {
                return o;
            }
            self.max_running = self.max_running.max(self.running.len());
            if self.cancel_after.is_some_and(|n| self.launches >= n) {
                self.cancel_after = None;
                self.machine.cancel();
                let actions = self.machine.poll();
                if let Some(o) = self.apply(actions) {
                    return o;
                }
                // Killed tasks report back as cancelled.
                while let Some(t) = self.running.pop_front() {
                    self.machine.on_finished(t, TaskResult::Cancelled);
                }
                continue;
            }
            let Some(t) = self.running.pop_front() else {
                // A retry that came due needs one more poll to launch.
                idle += 1;
                assert!(idle < 2, "stuck: {:#?}", self.trace);
                continue;
            };
            idle = 0;
            let view = self.machine.task(t);
            let result = behave(view.name, view.attempts);
            self.machine.on_finished(t, result);
        }
        panic!("did not finish")
    }
}

/// Argument `i` of task `task`'s command, rendered with what the machine resolves.
fn argument(m: &Machine, task: &str, i: usize) -> String {
    let id = m.task_id(task).unwrap();
    let capstan_spec::Command::Argv(argv) = &m.task(id).step.run else {
        panic!("{task} has no argv")
    };
    argv[i].render(|r| m.value(id, r)).unwrap()
}

fn sim(yaml: &str, parallelism: usize) -> Sim {
    let p = pipeline(yaml);
    let params = params(&p);
    Sim::new(Machine::new(p, params, "run1", parallelism))
}

const DIAMOND: &str = r#"
name: diamond
steps:
  a: {run: [a], outputs: {parameters: {x: int}}}
  b: {run: [b, "{{ steps.a.outputs.x }}"]}
  c: {run: [c, "{{ steps.a.outputs.x }}"]}
  d: {run: [d], after: [b, c]}
"#;

#[test]
fn diamond_runs_in_dependency_order() {
    let mut s = sim(DIAMOND, 4);
    let outcome = s.run(|name, _| match name {
        "a" => TaskResult::Succeeded {
            outputs: outputs(&[("x", json!(1))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        s.trace,
        [
            "launch a#1",
            "launch b#1",
            "launch c#1",
            "launch d#1",
            "finish succeeded"
        ]
    );
    assert_eq!(s.max_running, 2);
}

#[test]
fn parallelism_limits_running_tasks() {
    let yaml = "name: wide\nsteps:\n".to_string()
        + &(0..10)
            .map(|i| format!("  s{i}: {{run: [x]}}\n"))
            .collect::<String>();
    let mut s = sim(&yaml, 3);
    assert_eq!(s.run(|_, _| ok()), Outcome::Succeeded);
    assert_eq!(s.max_running, 3);
    assert_eq!(s.launches, 10);
}

const FAN: &str = r#"
name: fan
params:
  lrs: {type: list, default: [0.1, 0.2, 0.3, 0.4]}
steps:
  train:
    for_each: {items: "{{ params.lrs }}", parallelism: 2}
    run: [train, "{{ item }}", "{{ outputs.acc }}"]
    outputs: {parameters: {acc: float}}
  pick:
    run: [pick, "{{ steps.train.outputs.acc }}"]
    outputs: {parameters: {best: float}}
"#;

#[test]
fn fan_out_expands_and_fans_in_in_order() {
    let mut s = sim(FAN, 8);
    let outcome = s.run(|name, _| {
        let acc = match name {
            "train[0]" => 0.5,
            "train[1]" => 0.9,
            "train[2]" => 0.7,
            _ => 0.6,
        };
        TaskResult::Succeeded {
            outputs: outputs(&[("acc", json!(acc))]),
            cached: false,
        }
    });
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(s.max_running, 2, "for_each parallelism is honoured");
    assert_eq!(argument(&s.machine, "pick", 1), "[0.5,0.9,0.7,0.6]");
    let t1 = s.machine.task_id("train[1]").unwrap();
    assert_eq!(s.machine.task(t1).item, Some(&json!(0.2)));
}

#[test]
fn fan_out_over_an_upstream_list_output_and_empty_lists() {
    let yaml = r#"
name: dyn
steps:
  list: {run: [l], outputs: {parameters: {xs: list}}}
  each: {for_each: "{{ steps.list.outputs.xs }}", run: [e, "{{ item.k }}"]}
  after_each: {run: [z, "{{ steps.list.outputs.xs }}"], after: [each]}
"#;
    let mut s = sim(yaml, 4);
    s.run(|name, _| match name {
        "list" => TaskResult::Succeeded {
            outputs: outputs(&[("xs", json!([{"k": "a"}, {"k": "b"}]))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(
        s.trace,
        [
            "launch list#1",
            "launch each[0]#1",
            "launch each[1]#1",
            "launch after_each#1",
            "finish succeeded"
        ]
    );

    let mut s = sim(yaml, 4);
    s.run(|name, _| match name {
        "list" => TaskResult::Succeeded {
            outputs: outputs(&[("xs", json!([]))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(
        s.trace,
        ["launch list#1", "launch after_each#1", "finish succeeded"]
    );
}

const COND: &str = r#"
name: cond
params:
  threshold: {type: float, default: 0.8}
steps:
  pick: {run: [p], outputs: {parameters: {best: float}}}
  register:
    when: "{{ steps.pick.outputs.best }} > {{ params.threshold }}"
    run: [r]
    outputs: {parameters: {version: int}}
  announce: {run: [a, "{{ steps.register.outputs.version }}"]}
  report: {run: [rep], after: [register]}
"#;

#[test]
fn false_condition_skips_the_step_and_its_data_dependents_only() {
    let mut s = sim(COND, 4);
    let outcome = s.run(|name, _| match name {
        "pick" => TaskResult::Succeeded {
            outputs: outputs(&[("best", json!("0.5"))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        s.trace,
        [
            "launch pick#1",
            "skip register: condition `{{ steps.pick.outputs.best }} > {{ params.threshold }}` is false",
            "skip announce: not run: it uses outputs of step `register`, which did not succeed",
            "launch report#1",
            "finish succeeded"
        ]
    );
}

#[test]
fn true_condition_runs_the_step() {
    let mut s = sim(COND, 4);
    s.run(|name, _| match name {
        "pick" => TaskResult::Succeeded {
            outputs: outputs(&[("best", json!(0.93))]),
            cached: false,
        },
        "register" => TaskResult::Succeeded {
            outputs: outputs(&[("version", json!(3))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(
        s.trace,
        [
            "launch pick#1",
            "launch register#1",
            "launch announce#1",
            "launch report#1",
            "finish succeeded"
        ]
    );
}

const ONE_OF: &str = r#"
name: one-of
params:
  heads: {type: bool, default: true}
steps:
  yes: {when: "{{ params.heads }}", run: [y], outputs: {parameters: {msg: string}}}
  no: {when: "!{{ params.heads }}", run: [n], outputs: {parameters: {said: string}}}
  say: {run: [s, "{{ one_of(steps.yes.outputs.msg, steps.no.outputs.said) }}"]}
"#;

/// `one_of` takes the output of whichever branch ran; it is skipped only when none did.
#[test]
fn one_of_takes_the_output_of_the_branch_that_ran() {
    for (heads, ran, skipped, want) in [(true, "yes", "no", "won"), (false, "no", "yes", "lost")] {
        let p = pipeline(ONE_OF);
        let params = capstan_spec::bind_params(&p, &[("heads".into(), heads.to_string())]).unwrap();
        let mut s = Sim::new(Machine::new(p, params, "run1", 4));
        let outcome = s.run(|name, _| match name {
            "yes" => TaskResult::Succeeded {
                outputs: outputs(&[("msg", json!("won"))]),
                cached: false,
            },
            "no" => TaskResult::Succeeded {
                outputs: outputs(&[("said", json!("lost"))]),
                cached: false,
            },
            _ => ok(),
        });
        assert_eq!(outcome, Outcome::Succeeded);
        assert!(
            s.trace.contains(&format!("launch {ran}#1")),
            "{:?}",
            s.trace
        );
        assert!(
            s.trace
                .iter()
                .any(|t| t.starts_with(&format!("skip {skipped}:"))),
            "{:?}",
            s.trace
        );
        assert_eq!(argument(&s.machine, "say", 1), want);
    }

    // Neither branch succeeded: the consumer is skipped, naming the steps.
    let yaml = ONE_OF.replace("!{{ params.heads }}", "{{ params.heads }} && false");
    let p = pipeline(&yaml);
    let params = capstan_spec::bind_params(&p, &[("heads".into(), "false".into())]).unwrap();
    let mut s = Sim::new(Machine::new(p, params, "run1", 4));
    assert_eq!(s.run(|_, _| ok()), Outcome::Succeeded);
    assert_eq!(s.trace.last().map(String::as_str), Some("finish succeeded"));
    assert!(
        s.trace.contains(
            &"skip say: not run: it uses the output of one of the steps `yes`, `no`, and none succeeded"
                .to_string()
        ),
        "{:?}",
        s.trace
    );
}

const BODY: &str = r#"
name: body
steps:
  a:
    for_each: [1, 2, 3]
    when: "{{ item }} != 2"
    run: [a, "{{ item }}"]
    outputs: {parameters: {x: int}}
  b:
    for_each: [1, 2, 3]
    run: [b, "{{ this_iteration(steps.a.outputs.x) }}"]
"#;

/// A loop body's steps pass data iteration by iteration; an iteration whose producer was
/// skipped is skipped too.
#[test]
fn this_iteration_takes_the_output_of_the_same_iteration() {
    let mut s = sim(BODY, 4);
    let outcome = s.run(|name, _| match name {
        "a[0]" => TaskResult::Succeeded {
            outputs: outputs(&[("x", json!(10))]),
            cached: false,
        },
        "a[2]" => TaskResult::Succeeded {
            outputs: outputs(&[("x", json!(30))]),
            cached: false,
        },
        _ => ok(),
    });
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(
        s.trace
            .contains(&"skip b[1]: not run: `a[1]` did not succeed".to_string()),
        "{:?}",
        s.trace
    );
    for (task, want) in [("b[0]", "10"), ("b[2]", "30")] {
        assert_eq!(argument(&s.machine, task, 1), want);
    }
}

const FAILING: &str = r#"
name: failing
steps:
  a: {run: [a], retries: {limit: 2, backoff: 1s, factor: 3}}
  b: {run: [b], after: [a]}
  c: {run: [c]}
finally:
  notify: {run: [n, "{{ run.status }}"]}
"#;

#[test]
fn retries_back_off_then_failure_blocks_dependents_and_runs_finally() {
    let mut s = sim(FAILING, 1);
    let outcome = s.run(|name, _| {
        if name == "a" {
            fail("exited with code 1")
        } else {
            ok()
        }
    });
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(
        s.trace,
        [
            "launch a#1",
            "retry a in 1000ms",
            "launch c#1",
            "launch a#2",
            "retry a in 3000ms",
            "launch a#3",
            "skip b: not run: upstream step `a` failed",
            "launch notify#1",
            "finish failed"
        ]
    );
    let notify = s.machine.task_id("notify").unwrap();
    let status = s
        .machine
        .value(notify, &capstan_spec::template::Ref::Run("status".into()))
        .unwrap();
    assert_eq!(status, json!("failed"));
}

#[test]
fn retry_succeeds_on_second_attempt() {
    let mut s = sim(FAILING, 1);
    let outcome = s.run(|name, attempt| {
        if name == "a" && attempt == 1 {
            fail("flaky")
        } else {
            ok()
        }
    });
    assert_eq!(outcome, Outcome::Succeeded);
    let a = s.machine.task_id("a").unwrap();
    assert_eq!(s.machine.task(a).attempts, 2);
}

#[test]
fn failing_exit_handler_fails_a_successful_run() {
    let mut s = sim(FAILING, 2);
    let outcome = s.run(|name, _| if name == "notify" { fail("boom") } else { ok() });
    assert_eq!(outcome, Outcome::Failed);
}

#[test]
fn cancel_kills_running_cancels_waiting_and_runs_finally() {
    let yaml = r#"
name: cancel
steps:
  a: {run: [a]}
  b: {run: [b]}
  c: {run: [c], after: [a]}
finally:
  cleanup: {run: [x, "{{ run.status }}"]}
"#;
    let mut s = sim(yaml, 1);
    s.cancel_after = Some(1);
    let outcome = s.run(|_, _| ok());
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(
        s.trace,
        [
            "launch a#1",
            "kill a",
            "cancel b",
            "cancel c",
            "launch cleanup#1",
            "finish cancelled"
        ]
    );
}

#[test]
fn bad_for_each_list_fails_the_step() {
    let yaml = r#"
name: bad
steps:
  a: {run: [a], outputs: {parameters: {xs: list}}}
  b: {for_each: "{{ steps.a.outputs.xs }}", run: [b]}
"#;
    let mut s = sim(yaml, 2);
    let outcome = s.run(|_, _| TaskResult::Succeeded {
        outputs: outputs(&[("xs", json!(42))]),
        cached: false,
    });
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(s.trace[1], "fail b: for_each expects a list, got `42`");
}

#[test]
fn restore_replays_finished_tasks_and_relaunches_unfinished_ones() {
    // Crash while train[2] and train[3] were running, train[0..2] done, pick not started.
    let p = pipeline(FAN);
    let acc = |v: f64| Recorded::Succeeded(outputs(&[("acc", json!(v))]));
    let history = vec![
        ("train[0]".to_string(), acc(0.5), 1),
        (
            "train[1]".to_string(),
            Recorded::Cached(outputs(&[("acc", json!(0.9))])),
            0,
        ),
        ("train[2]".to_string(), Recorded::Unfinished, 1),
        ("train[3]".to_string(), Recorded::Unfinished, 2),
    ];
    let params = params(&p);
    let mut s = Sim::new(Machine::restore(p, params, "run1", 8, history));
    let outcome = s.run(|_, _| TaskResult::Succeeded {
        outputs: outputs(&[("acc", json!(0.1))]),
        cached: false,
    });
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        s.trace,
        [
            "launch train[2]#2",
            "launch train[3]#3",
            "launch pick#1",
            "finish succeeded"
        ]
    );
    let pick = s.machine.task_id("pick").unwrap();
    let v = s.machine.value(
        pick,
        &capstan_spec::template::Ref::StepOutput {
            step: "train".into(),
            output: "acc".into(),
        },
    );
    assert_eq!(v.unwrap(), json!([0.5, 0.9, 0.1, 0.1]));
}

#[test]
fn restore_of_a_finished_run_emits_only_finish() {
    let p = pipeline(COND);
    let history = vec![
        (
            "pick".to_string(),
            Recorded::Succeeded(outputs(&[("best", json!(0.1))])),
            1,
        ),
        ("register".to_string(), Recorded::Skipped, 0),
        ("announce".to_string(), Recorded::Skipped, 0),
        (
            "report".to_string(),
            Recorded::Succeeded(TaskOutputs::default()),
            1,
        ),
    ];
    let params = params(&p);
    let mut s = Sim::new(Machine::restore(p, params, "run1", 8, history));
    s.run(|_, _| unreachable!("nothing runs again"));
    assert_eq!(s.trace, ["finish succeeded"]);
}

#[test]
fn long_chain_of_skips_does_not_overflow_the_stack() {
    let mut yaml = String::from(
        "name: chain\nsteps:\n  s0: {run: [x], when: \"1 > 2\", outputs: {parameters: {o: int}}}\n",
    );
    for i in 1..20_000 {
        yaml += &format!(
            "  s{i}: {{run: [x, \"{{{{ steps.s{}.outputs.o }}}}\"], outputs: {{parameters: {{o: int}}}}}}\n",
            i - 1
        );
    }
    // Parsing and validation happen on the main thread; the machine runs on a small stack.
    let mut s = sim(&yaml, 2);
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || s.run(|_, _| ok()))
        .unwrap();
    assert_eq!(handle.join().unwrap(), Outcome::Succeeded);
}
