//! The checks every pipeline passes before it runs, whatever front end produced it.
//!
//! These are checks on the model alone: names, references, dependencies and declared types. They
//! find the mistakes that would otherwise surface halfway through a run (a misspelt output, a
//! cycle, a `for_each` over a float), and they report all of them at once.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::diag::Diagnostic;
use crate::expr::{CmpOp, Node};
use crate::model::{ForEachItems, ParamType, Pipeline, Pos, Step, Value};
use crate::params::coerce_value;
use crate::template::{Ref, Template, is_ident};

/// Checks a pipeline. Returns every problem found, sorted by position; empty means valid.
pub fn validate(p: &Pipeline) -> Vec<Diagnostic> {
    let mut v = Validator {
        p,
        file: p.source.clone().unwrap_or_else(|| p.name.clone()),
        diags: Vec::new(),
    };
    v.params();
    for step in p.steps.values() {
        v.step(step, false);
    }
    for step in p.finally.values() {
        if let Some(main) = p.steps.get(&step.name) {
            let first = if main.pos.line > 0 {
                format!(" (line {})", main.pos.line)
            } else {
                String::new()
            };
            v.error(
                step.pos,
                Some(step),
                format!("step name is declared in both `steps`{first} and `finally`"),
            );
        }
        v.step(step, true);
    }
    v.cycles();
    let mut diags = v.diags;
    sort_diagnostics(&mut diags);
    diags
}

/// Sorts by position (unknown positions last) and drops exact repeats, which arise when
/// templates carry no position of their own and the same mistake recurs within a step.
pub(crate) fn sort_diagnostics(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_key(|d| (d.pos.line == 0, d.pos.line, d.pos.column));
    let mut seen = BTreeSet::new();
    diags.retain(|d| seen.insert(d.to_string()));
}

/// Whether a step name is valid: letters, digits, `_` and `-`, not starting with `-`. `/`
/// separates the parts of a name that an importer gives to the steps of a flattened sub-DAG.
pub(crate) fn valid_step_name(name: &str) -> bool {
    name.split('/').all(is_ident)
}

/// Where a reference appears, which decides what it may refer to.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// A command, env, workdir or input template.
    Template,
    /// The `for_each` items template.
    Items,
    /// The `when` condition.
    When,
}

struct Validator<'a> {
    p: &'a Pipeline,
    file: String,
    diags: Vec<Diagnostic>,
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| n.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn pos_or(own: Pos, fallback: Pos) -> Pos {
    if own.line > 0 { own } else { fallback }
}

impl<'a> Validator<'a> {
    fn error(&mut self, pos: Pos, step: Option<&Step>, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            pos,
            step: step.map(|s| s.name.clone()),
            message,
        });
    }

    fn params(&mut self) {
        for (name, spec) in &self.p.params {
            if !is_ident(name) {
                self.error(
                    spec.pos,
                    None,
                    format!("invalid param name `{name}`: use letters, digits, `_` and `-`, not starting with `-`"),
                );
            }
            if let Some(default) = &spec.default
                && let Err(e) = coerce_value(spec.ty, default)
            {
                self.error(spec.pos, None, format!("param `{name}` {e} (its default)"));
            }
        }
    }

    fn step(&mut self, step: &'a Step, in_finally: bool) {
        if !valid_step_name(&step.name) {
            self.error(
                step.pos,
                Some(step),
                format!("invalid step name `{}`: use letters, digits, `_` and `-`, not starting with `-`", step.name),
            );
        }
        let declared = step
            .inputs
            .parameters
            .keys()
            .chain(step.inputs.artifacts.keys())
            .map(|n| ("input", n))
            .chain(
                step.outputs
                    .parameters
                    .keys()
                    .chain(step.outputs.artifacts.keys())
                    .map(|n| ("output", n)),
            );
        for (kind, name) in declared {
            if !is_ident(name) {
                self.error(
                    step.pos,
                    Some(step),
                    format!("invalid {kind} name `{name}`: use letters, digits, `_` and `-`, not starting with `-`"),
                );
            }
        }
        if let Some(results) = &step.outputs.results
            && (step.outputs.parameters.contains_key(&results.name)
                || step.outputs.artifacts.contains_key(&results.name))
        {
            self.error(
                step.pos,
                Some(step),
                format!("results file `{}` has the name of an output", results.name),
            );
        }
        for name in step.outputs.parameters.keys() {
            if step.outputs.artifacts.contains_key(name) {
                self.error(
                    step.pos,
                    Some(step),
                    format!("output `{name}` is declared both as a parameter and as an artifact"),
                );
            }
        }

        let (items, levels) = match &step.for_each {
            Some(fe) => match &fe.items {
                ForEachItems::Ref(t) => (Some(t), Vec::new()),
                ForEachItems::Literal(_) => (None, Vec::new()),
                ForEachItems::Product(_) => (None, fe.sources()),
            },
            None => (None, Vec::new()),
        };
        if let Some(ForEachItems::Product(levels)) = step.for_each.as_ref().map(|f| &f.items)
            && levels
                .iter()
                .any(|l| matches!(l.items, ForEachItems::Product(_)))
        {
            self.error(
                step.pos,
                Some(step),
                "a level of nested `for_each` loops cannot itself be nested".to_string(),
            );
        }
        // `Step::templates` includes the items templates; they are checked below with their own
        // rules. A nested loop's levels may use the fields of outer levels' items.
        for t in step.templates() {
            if items.is_some_and(|i| std::ptr::eq(i, t))
                || levels.iter().any(|l| std::ptr::eq(*l, t))
            {
                continue;
            }
            self.template_refs(step, in_finally, t, Place::Template);
        }
        if let Some(t) = items {
            self.template_refs(step, in_finally, t, Place::Items);
            self.for_each_source(step, t);
        }
        for t in levels {
            self.template_refs(step, in_finally, t, Place::Template);
            self.for_each_source(step, t);
        }
        if let Some(when) = &step.when {
            let pos = pos_or(when.pos(), step.pos);
            for r in when.refs() {
                self.reference(step, in_finally, r, pos, Place::When);
            }
            self.condition_types(step, when.root(), pos);
        }
        for (name, t) in &step.inputs.artifacts {
            if let Some(Ref::StepOutput { step: up, output }) = t.single_ref()
                && let Some(upstream) = self.p.step(up)
                && upstream.outputs.parameters.contains_key(output)
                && !upstream.outputs.artifacts.contains_key(output)
            {
                self.error(
                    pos_or(t.pos(), step.pos),
                    Some(step),
                    format!("input artifact `{name}` refers to `{}`, which is a parameter, not an artifact", t.source()),
                );
            }
        }
        for name in &step.after {
            let message = if name == &step.name {
                Some("`after` names the step itself".to_string())
            } else if self.p.step(name).is_none() {
                Some(format!(
                    "`after` names unknown step `{name}`: {}",
                    self.known_steps()
                ))
            } else if !in_finally && self.p.is_finally(name) {
                Some(format!(
                    "`after` names exit handler `{name}`: exit handlers run after every step in `steps`"
                ))
            } else {
                None
            };
            if let Some(message) = message {
                self.error(step.pos, Some(step), message);
            }
        }
    }

    fn known_steps(&self) -> String {
        format!(
            "steps are {}",
            list(self.p.all_steps().map(|s| s.name.as_str()))
        )
    }

    fn template_refs(&mut self, step: &Step, in_finally: bool, t: &Template, place: Place) {
        let pos = pos_or(t.pos(), step.pos);
        for r in t.refs() {
            self.reference(step, in_finally, r, pos, place);
        }
    }

    fn reference(&mut self, step: &Step, in_finally: bool, r: &Ref, pos: Pos, place: Place) {
        let message = match r {
            Ref::OneOf(alts) => {
                for alt in alts {
                    self.reference(step, in_finally, alt, pos, place);
                }
                None
            }
            Ref::ThisIteration { step: up, output } => {
                let plain = Ref::StepOutput {
                    step: up.clone(),
                    output: output.clone(),
                };
                self.reference(step, in_finally, &plain, pos, place);
                match self.p.step(up) {
                    Some(upstream)
                        if step.for_each.is_none() || upstream.for_each != step.for_each =>
                    {
                        Some(format!(
                            "`{r}` needs this step and step `{up}` to loop over the same items"
                        ))
                    }
                    _ => None,
                }
            }
            Ref::Param(name) if !self.p.params.contains_key(name) => {
                Some(if self.p.params.is_empty() {
                    format!("unknown param `{name}` in `{r}`: the pipeline declares no params")
                } else {
                    format!(
                        "unknown param `{name}` in `{r}`: known params are {}",
                        list(self.p.params.keys())
                    )
                })
            }
            Ref::Param(_) => None,
            Ref::StepOutput { step: up, output } => {
                if up == &step.name {
                    Some(format!(
                        "a step cannot refer to its own outputs as `{r}`: use `{{{{ outputs.{output} }}}}`"
                    ))
                } else if let Some(upstream) = self.p.step(up) {
                    if !in_finally && self.p.is_finally(up) {
                        Some(format!(
                            "`{r}` refers to exit handler `{up}`, which runs after every step in `steps`"
                        ))
                    } else if !upstream.outputs.parameters.contains_key(output)
                        && !upstream.outputs.artifacts.contains_key(output)
                    {
                        let outputs: Vec<&String> = upstream
                            .outputs
                            .parameters
                            .keys()
                            .chain(upstream.outputs.artifacts.keys())
                            .collect();
                        Some(if outputs.is_empty() {
                            format!("step `{up}` has no output `{output}`: it declares no outputs")
                        } else {
                            format!(
                                "step `{up}` has no output `{output}`: its outputs are {}",
                                list(outputs)
                            )
                        })
                    } else {
                        None
                    }
                } else {
                    Some(format!(
                        "unknown step `{up}` in `{r}`: {}",
                        self.known_steps()
                    ))
                }
            }
            Ref::Output(name) if place != Place::Template => Some(format!(
                "`{r}` cannot be used in {}: the step's outputs do not exist before it runs",
                if place == Place::When {
                    "`when`"
                } else {
                    "`for_each`"
                }
            )),
            Ref::Output(name)
                if !step.outputs.parameters.contains_key(name)
                    && !step.outputs.artifacts.contains_key(name)
                    && step
                        .outputs
                        .results
                        .as_ref()
                        .is_none_or(|f| &f.name != name) =>
            {
                Some(format!(
                    "output `{name}` is not declared: declare it under `outputs.parameters` or `outputs.artifacts`"
                ))
            }
            Ref::Output(_) => None,
            Ref::Input(name)
                if !step.inputs.parameters.contains_key(name)
                    && !step.inputs.artifacts.contains_key(name) =>
            {
                let inputs: Vec<&String> = step
                    .inputs
                    .parameters
                    .keys()
                    .chain(step.inputs.artifacts.keys())
                    .collect();
                Some(if inputs.is_empty() {
                    format!("input `{name}` is not declared: the step declares no inputs")
                } else {
                    format!(
                        "input `{name}` is not declared: its inputs are {}",
                        list(inputs)
                    )
                })
            }
            Ref::Input(_) => None,
            Ref::Item(_) if step.for_each.is_none() => {
                Some(format!("`{r}` is only defined in a `for_each` step"))
            }
            Ref::Item(_) if place == Place::Items => Some(format!(
                "`{r}` cannot be used in the `for_each` items themselves"
            )),
            Ref::Item(_) => None,
            Ref::Run(field) if field == "status" && !in_finally => {
                Some("`run.status` is only defined in `finally` steps".to_string())
            }
            Ref::Run(_) | Ref::Task(_) => None,
        };
        if let Some(message) = message {
            self.error(pos, Some(step), message);
        }
    }

    /// The declared type of what a reference stands for, when the model says it.
    fn ref_type(&self, r: &Ref) -> Option<ParamType> {
        match r {
            Ref::Param(name) => self.p.params.get(name).map(|s| s.ty),
            Ref::StepOutput { step, output } => {
                let upstream = self.p.step(step)?;
                if upstream.for_each.is_some() {
                    // Fan-in: the outputs of a for_each step are the list of its iterations' values.
                    return Some(ParamType::List);
                }
                if let Some(ty) = upstream.outputs.parameters.get(output) {
                    return Some(*ty);
                }
                // An artifact reference renders to its path.
                upstream
                    .outputs
                    .artifacts
                    .get(output)
                    .map(|_| ParamType::String)
            }
            Ref::Task(field) if field == "attempt" || field == "index" => Some(ParamType::Int),
            Ref::Run(_) | Ref::Task(_) | Ref::Output(_) => Some(ParamType::String),
            Ref::Input(_) | Ref::Item(_) => None,
            Ref::ThisIteration { step, output } => {
                let upstream = self.p.step(step)?;
                match upstream.outputs.parameters.get(output) {
                    Some(ty) => Some(*ty),
                    None => upstream
                        .outputs
                        .artifacts
                        .get(output)
                        .map(|_| ParamType::String),
                }
            }
            Ref::OneOf(alts) => {
                let first = self.ref_type(alts.first()?)?;
                alts.iter()
                    .all(|a| self.ref_type(a) == Some(first))
                    .then_some(first)
            }
        }
    }

    fn for_each_source(&mut self, step: &Step, t: &Template) {
        let pos = pos_or(t.pos(), step.pos);
        let Some(r) = t.single_ref() else {
            self.error(
                pos,
                Some(step),
                format!(
                    "`for_each` needs a list or a single reference to one, such as `{{{{ params.xs }}}}`, got `{}`",
                    t.source()
                ),
            );
            return;
        };
        let Some(ty) = self.ref_type(r) else { return };
        if ty == ParamType::List {
            return;
        }
        let message = match r {
            Ref::Param(name) => format!("`for_each` needs a list, but param `{name}` is {ty}"),
            Ref::StepOutput { step: up, output } => {
                let is_artifact = self
                    .p
                    .step(up)
                    .is_some_and(|s| s.outputs.artifacts.contains_key(output));
                if is_artifact {
                    format!("`for_each` needs a list, but `{r}` is an artifact path")
                } else {
                    format!("`for_each` needs a list, but output `{output}` of step `{up}` is {ty}")
                }
            }
            _ => format!("`for_each` needs a list, but `{r}` is {ty}"),
        };
        self.error(pos, Some(step), message);
    }

    fn condition_types(&mut self, step: &Step, n: &Node, pos: Pos) {
        match n {
            Node::Lit(_) | Node::Ref(_) | Node::List(_) => {}
            Node::Not(x) => self.condition_types(step, x, pos),
            Node::And(a, b) | Node::Or(a, b) => {
                self.condition_types(step, a, pos);
                self.condition_types(step, b, pos);
            }
            Node::Cmp(op, a, b) => {
                if let Some(message) = self.comparison(*op, a, b) {
                    self.error(pos, Some(step), message);
                }
            }
        }
    }

    /// Checks a comparison between a reference of declared type and a literal.
    fn comparison(&self, op: CmpOp, a: &Node, b: &Node) -> Option<String> {
        match (op, a, b) {
            (CmpOp::In, _, Node::Ref(r)) => {
                let ty = self.ref_type(r)?;
                (!matches!(ty, ParamType::List | ParamType::String | ParamType::Map)).then(|| {
                    format!("`in` needs a list, a string or a map on its right, but `{r}` is {ty}")
                })
            }
            (CmpOp::In, Node::Ref(r), Node::List(items)) => {
                let ty = self.ref_type(r)?;
                items.iter().find_map(|item| match item {
                    Node::Lit(v) if !comparable(ty, CmpOp::Eq, v) => {
                        Some(mismatch(r, ty, op, item))
                    }
                    _ => None,
                })
            }
            (_, Node::Ref(r), lit @ (Node::Lit(_) | Node::List(_)))
            | (_, lit @ (Node::Lit(_) | Node::List(_)), Node::Ref(r))
                if op != CmpOp::In =>
            {
                let ty = self.ref_type(r)?;
                let value = match lit {
                    Node::Lit(v) => v.clone(),
                    _ => Value::Array(Vec::new()),
                };
                (!comparable(ty, op, &value)).then(|| mismatch(r, ty, op, lit))
            }
            _ => None,
        }
    }
}

fn mismatch(r: &Ref, ty: ParamType, op: CmpOp, lit: &Node) -> String {
    format!("cannot compare `{r}` ({ty}) with {lit} using `{op}`")
}

fn numeric_text(s: &str) -> bool {
    s.trim().parse::<f64>().is_ok_and(f64::is_finite)
}

/// Whether a value of type `ty` can be compared with the literal `v` using `op` without a type
/// error at run time, and with a result that can be both true and false.
fn comparable(ty: ParamType, op: CmpOp, v: &Value) -> bool {
    let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
    match ty {
        ParamType::Int | ParamType::Float => match v {
            Value::Number(_) => true,
            Value::String(s) => numeric_text(s),
            Value::Null => !ordering,
            _ => false,
        },
        ParamType::String => match v {
            Value::String(_) | Value::Number(_) => true,
            Value::Bool(_) | Value::Null => !ordering,
            _ => false,
        },
        ParamType::Bool => match v {
            Value::Bool(_) => true,
            Value::String(s) => {
                !ordering && matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "false")
            }
            Value::Null => !ordering,
            _ => false,
        },
        ParamType::List => !ordering && matches!(v, Value::Array(_) | Value::Null),
        ParamType::Map => !ordering && matches!(v, Value::Object(_) | Value::Null),
    }
}

impl Validator<'_> {
    /// Reports each dependency cycle once, naming its steps in order.
    fn cycles(&mut self) {
        let steps: Vec<&Step> = self.p.all_steps().collect();
        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.upstream()
                    .into_iter()
                    .filter_map(|u| index.get(u).copied())
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        for component in strongly_connected(&edges) {
            if component.len() < 2 {
                continue;
            }
            let start = *component.iter().min().unwrap_or(&0);
            let members: BTreeSet<usize> = component.into_iter().collect();
            let path = shortest_cycle(&edges, &members, start);
            let names: Vec<&str> = path.iter().map(|&i| steps[i].name.as_str()).collect();
            let step = steps[start];
            self.error(
                step.pos,
                Some(step),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
    }
}

/// Tarjan's algorithm, iterative so that a long chain of steps cannot overflow the stack.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, position in its edge list)
        let mut work = vec![(root, 0)];
        while let Some(&mut (v, ref mut at)) = work.last_mut() {
            if *at == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*at) {
                *at += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

/// The shortest path from `start` back to itself within `members`, both ends included.
fn shortest_cycle(edges: &[Vec<usize>], members: &BTreeSet<usize>, start: usize) -> Vec<usize> {
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &edges[v] {
            if !members.contains(&w) {
                continue;
            }
            if w == start {
                let mut back = Vec::new();
                let mut at = v;
                while at != start {
                    back.push(at);
                    at = came_from[&at];
                }
                back.reverse();
                let mut path = vec![start];
                path.extend(back);
                path.push(start);
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start, start]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A pipeline as the engine stores it (JSON): templates carry no position, so diagnostics
    /// fall back to the step's position, as they do for front ends without line numbers.
    fn pipeline(params: Value, steps: Value, finally: Value) -> Pipeline {
        serde_json::from_value(json!({
            "name": "p", "source": "p.json", "params": params, "steps": steps, "finally": finally,
        }))
        .unwrap()
    }

    fn step(line: u32, extra: Value) -> Value {
        let mut s = json!({"run": {"argv": ["echo"]}, "pos": {"line": line, "column": 3}});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    }

    fn check(p: &Pipeline, want: &[&str]) {
        let got: Vec<String> = validate(p).iter().map(|d| d.to_string()).collect();
        assert_eq!(got, want, "\ngot:\n{}", got.join("\n"));
    }

    fn named(mut steps: Value) -> Value {
        for (name, s) in steps.as_object_mut().unwrap() {
            s["name"] = json!(name);
        }
        steps
    }

    #[test]
    fn a_valid_pipeline_has_no_diagnostics() {
        let p = pipeline(
            json!({"xs": {"type": "list", "default": [1, 2]}}),
            named(json!({
                "a": step(1, json!({"for_each": {"items": {"ref": "{{ params.xs }}"}}, "outputs": {"parameters": {"v": "float"}}})),
                "b": step(2, json!({"for_each": {"items": {"ref": "{{ steps.a.outputs.v }}"}},
                                    "run": {"argv": ["echo", "{{ item }}", "{{ task.index }}"]}})),
            })),
            named(
                json!({"f": step(3, json!({"run": {"shell": "echo {{ run.status }} {{ steps.a.outputs.v }}"}, "after": ["b"]}))}),
            ),
        );
        check(&p, &[]);
    }

    #[test]
    fn main_steps_cannot_depend_on_exit_handlers() {
        let p = pipeline(
            json!({}),
            named(
                json!({"a": step(1, json!({"after": ["f"], "run": {"argv": ["echo", "{{ steps.f.outputs.o }}"]}}))}),
            ),
            named(json!({"f": step(2, json!({"outputs": {"parameters": {"o": "int"}}}))})),
        );
        check(
            &p,
            &[
                "p.json:1:3: step `a`: `steps.f.outputs.o` refers to exit handler `f`, which runs after every step in `steps`",
                "p.json:1:3: step `a`: `after` names exit handler `f`: exit handlers run after every step in `steps`",
            ],
        );
    }

    #[test]
    fn for_each_needs_a_list_unless_it_fans_in() {
        let p = pipeline(
            json!({"n": {"type": "int", "default": 1}}),
            named(json!({
                "a": step(1, json!({"outputs": {"parameters": {"score": "float", "xs": "list"}, "artifacts": {"m": "Model"}}})),
                "b": step(2, json!({"for_each": {"items": {"ref": "{{ steps.a.outputs.score }}"}}})),
                "c": step(3, json!({"for_each": {"items": {"ref": "{{ steps.a.outputs.m }}"}}})),
                "d": step(4, json!({"for_each": {"items": {"ref": "x{{ params.n }}"}}})),
                "e": step(5, json!({"for_each": {"items": {"ref": "{{ steps.a.outputs.xs }}"}}})),
                "g": step(6, json!({"for_each": {"items": {"ref": "{{ steps.e.outputs.y }}"}}})),
                "h": step(7, json!({"for_each": {"items": {"ref": "{{ run.id }}"}}})),
            })),
            json!({}),
        );
        check(
            &p,
            &[
                "p.json:2:3: step `b`: `for_each` needs a list, but output `score` of step `a` is float",
                "p.json:3:3: step `c`: `for_each` needs a list, but `steps.a.outputs.m` is an artifact path",
                "p.json:4:3: step `d`: `for_each` needs a list or a single reference to one, such as \
                 `{{ params.xs }}`, got `x{{ params.n }}`",
                "p.json:6:3: step `g`: step `e` has no output `y`: it declares no outputs",
                "p.json:7:3: step `h`: `for_each` needs a list, but `run.id` is string",
            ],
        );
    }

    #[test]
    fn references_to_the_step_itself_are_explained() {
        let p = pipeline(
            json!({}),
            named(json!({"a": step(1, json!({
                "after": ["a"],
                "outputs": {"parameters": {"o": "int"}},
                "run": {"argv": ["echo", "{{ steps.a.outputs.o }}"]},
                "inputs": {"artifacts": {"in": "{{ steps.b.outputs.p }}"}},
            })), "b": step(2, json!({"outputs": {"parameters": {"p": "int", "both": "int"}, "artifacts": {"both": "Model"}}}))})),
            json!({}),
        );
        check(
            &p,
            &[
                "p.json:1:3: step `a`: a step cannot refer to its own outputs as `steps.a.outputs.o`: use `{{ outputs.o }}`",
                "p.json:1:3: step `a`: input artifact `in` refers to `{{ steps.b.outputs.p }}`, which is a parameter, not an artifact",
                "p.json:1:3: step `a`: `after` names the step itself",
                "p.json:2:3: step `b`: output `both` is declared both as a parameter and as an artifact",
            ],
        );
    }

    #[test]
    fn conditions_compare_compatible_types() {
        let p = pipeline(
            json!({
                "n": {"type": "int", "default": 1},
                "s": {"type": "string", "default": "a"},
                "b": {"type": "bool", "default": true},
                "xs": {"type": "list", "default": []},
            }),
            named(json!({
                "ok": step(1, json!({"when": "params.n > '2' and params.s < 3 and params.b == 'true' and 1 in params.xs and params.n in [1, 2.5]"})),
                "w1": step(2, json!({"when": "params.n == 'abc'"})),
                "w2": step(3, json!({"when": "1 in params.n"})),
                "w3": step(4, json!({"when": "params.n in [1, true]"})),
                "w4": step(5, json!({"when": "params.xs < [1]"})),
                "w5": step(6, json!({"when": "not (params.b >= 3)"})),
            })),
            json!({}),
        );
        check(
            &p,
            &[
                "p.json:2:3: step `w1`: cannot compare `params.n` (int) with 'abc' using `==`",
                "p.json:3:3: step `w2`: `in` needs a list, a string or a map on its right, but `params.n` is int",
                "p.json:4:3: step `w3`: cannot compare `params.n` (int) with true using `in`",
                "p.json:5:3: step `w4`: cannot compare `params.xs` (list) with [1] using `<`",
                "p.json:6:3: step `w5`: cannot compare `params.b` (bool) with 3 using `>=`",
            ],
        );
    }

    #[test]
    fn unknown_positions_sort_last_and_repeats_are_dropped() {
        let mut p = pipeline(
            json!({"1x": {"type": "int", "default": "x"}}),
            named(json!({
                "flat/child": step(0, json!({"run": {"argv": ["{{ params.q }}", "{{ params.q }}"]}})),
                "b": step(4, json!({"outputs": {"parameters": {"bad name": "int"}}})),
            })),
            json!({}),
        );
        p.params.get_mut("1x").unwrap().pos = Pos { line: 2, column: 3 };
        check(
            &p,
            &[
                "p.json:2:3: param `1x` expects int, got `x` (its default)",
                "p.json:4:3: step `b`: invalid output name `bad name`: use letters, digits, `_` and `-`, not starting with `-`",
                "p.json: step `flat/child`: unknown param `q` in `params.q`: known params are 1x",
            ],
        );
    }

    #[test]
    fn a_results_file_is_an_output_path_with_a_name_of_its_own() {
        let results = json!({"name": "results", "parameter": "/values/{name}"});
        let ok = pipeline(
            json!({}),
            named(json!({"a": step(2, json!({
                "run": {"argv": ["tool", "{{ outputs.results }}", "{{ outputs.best }}"]},
                "outputs": {"parameters": {"best": "float"}, "results": results},
            }))})),
            json!({}),
        );
        check(&ok, &[]);
        let clash = pipeline(
            json!({}),
            named(json!({"a": step(2, json!({
                "outputs": {"parameters": {"results": "float"}, "results": results},
            }))})),
            json!({}),
        );
        check(
            &clash,
            &["p.json:2:3: step `a`: results file `results` has the name of an output"],
        );
    }

    #[test]
    fn step_names_allow_slash_separated_parts_only() {
        assert!(valid_step_name("train"));
        assert!(valid_step_name("outer/inner-1"));
        assert!(!valid_step_name("a[0]"));
        assert!(!valid_step_name("-a"));
        assert!(!valid_step_name("a//b"));
        assert!(!valid_step_name(""));
    }

    #[test]
    fn long_dependency_chains_do_not_overflow() {
        let mut steps = serde_json::Map::new();
        for i in 0..5000 {
            let after = if i == 0 {
                json!(["s4999"])
            } else {
                json!([format!("s{}", i - 1)])
            };
            steps.insert(format!("s{i}"), step(i + 1, json!({"after": after})));
        }
        let p = pipeline(json!({}), named(Value::Object(steps)), json!({}));
        let diags = validate(&p);
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0]
                .message
                .starts_with("dependency cycle: s0 -> s4999 -> s4998"),
            "{}",
            diags[0].message
        );
    }
}
