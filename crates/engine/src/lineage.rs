//! Lineage: the graph of artifacts and the executions (tasks) that produced and consumed them,
//! walked from one artifact upstream (where it came from) and downstream (what used it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use anyhow::{Result, anyhow};
use capstan_store::{ArtifactRecord, DynStore, EventKind};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Upstream,
    Downstream,
    Both,
}

#[derive(Debug, Serialize)]
pub struct LineageTask {
    pub id: String,
    pub run_id: String,
    pub name: String,
    pub status: String,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// `artifact:<id>` or `task:<id>`.
    pub from: String,
    pub to: String,
    /// The input or output name on the task.
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct LineageGraph {
    pub root: String,
    pub artifacts: Vec<ArtifactRecord>,
    pub tasks: Vec<LineageTask>,
    pub edges: Vec<Edge>,
}

/// Walks the lineage of `artifact_id` up to `max_depth` task hops in the given direction.
pub async fn lineage(
    store: &DynStore,
    artifact_id: &str,
    direction: Direction,
    max_depth: usize,
) -> Result<LineageGraph> {
    let root = store
        .get_artifact(artifact_id)
        .await?
        .ok_or_else(|| anyhow!("artifact {artifact_id} not found"))?;
    let mut artifacts = BTreeMap::from([(root.id.clone(), root)]);
    let mut tasks = BTreeMap::new();
    let mut edges = BTreeSet::new();
    let walks: &[bool] = match direction {
        Direction::Upstream => &[true],
        Direction::Downstream => &[false],
        Direction::Both => &[true, false],
    };
    for &up in walks {
        let mut queue = VecDeque::from([(artifact_id.to_string(), 0usize)]);
        let mut seen = BTreeSet::new();
        while let Some((aid, depth)) = queue.pop_front() {
            if depth >= max_depth || !seen.insert(aid.clone()) {
                continue;
            }
            // Upstream: the tasks that output this artifact; downstream: the tasks that read it.
            let want = if up {
                EventKind::Output
            } else {
                EventKind::Input
            };
            for ev in store
                .artifact_events(&aid)
                .await?
                .into_iter()
                .filter(|e| e.kind == want)
            {
                let Some(task) = store.get_task(&ev.task_id).await? else {
                    continue;
                };
                tasks.entry(task.id.clone()).or_insert_with(|| LineageTask {
                    id: task.id.clone(),
                    run_id: task.run_id.clone(),
                    name: task.name.clone(),
                    status: task.status.to_string(),
                });
                for tev in store.task_events(&task.id).await? {
                    // Upstream: follow the task's inputs; downstream: its outputs.
                    let follow = if up {
                        EventKind::Input
                    } else {
                        EventKind::Output
                    };
                    let edge = match tev.kind {
                        EventKind::Input => Edge {
                            from: format!("artifact:{}", tev.artifact_id),
                            to: format!("task:{}", task.id),
                            name: tev.name.clone(),
                        },
                        EventKind::Output => Edge {
                            from: format!("task:{}", task.id),
                            to: format!("artifact:{}", tev.artifact_id),
                            name: tev.name.clone(),
                        },
                    };
                    if tev.kind != follow && tev.artifact_id != aid {
                        continue;
                    }
                    edges.insert(edge);
                    if !artifacts.contains_key(&tev.artifact_id)
                        && let Some(a) = store.get_artifact(&tev.artifact_id).await?
                    {
                        artifacts.insert(a.id.clone(), a);
                    }
                    if tev.kind == follow {
                        queue.push_back((tev.artifact_id.clone(), depth + 1));
                    }
                }
            }
        }
    }
    Ok(LineageGraph {
        root: artifact_id.to_string(),
        artifacts: artifacts.into_values().collect(),
        tasks: tasks.into_values().collect(),
        edges: edges.into_iter().collect(),
    })
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

impl LineageGraph {
    fn artifact_label(&self, id: &str) -> String {
        match self.artifacts.iter().find(|a| a.id == id) {
            Some(a) => format!("{} ({}, {})", a.name, a.type_name, short(&a.digest)),
            None => id.to_string(),
        }
    }

    fn task_label(&self, id: &str) -> String {
        match self.tasks.iter().find(|t| t.id == id) {
            Some(t) => format!(
                "{} [run {}, {}]",
                t.name,
                &t.run_id[..t.run_id.len().min(8)],
                t.status
            ),
            None => id.to_string(),
        }
    }

    fn label(&self, node: &str) -> String {
        match node.split_once(':') {
            Some(("artifact", id)) => format!("artifact {}", self.artifact_label(id)),
            Some(("task", id)) => format!("task {}", self.task_label(id)),
            _ => node.to_string(),
        }
    }

    /// One line per edge, `from --name--> to`.
    pub fn to_text(&self) -> String {
        let mut out = format!("lineage of artifact {}\n", self.artifact_label(&self.root));
        if self.edges.is_empty() {
            out.push_str("  (no recorded producers or consumers)\n");
        }
        for e in &self.edges {
            let _ = writeln!(
                out,
                "  {} --{}--> {}",
                self.label(&e.from),
                e.name,
                self.label(&e.to)
            );
        }
        out
    }

    /// Graphviz DOT: artifacts are boxes, tasks ellipses, the root is bold.
    pub fn to_dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from("digraph lineage {\n  rankdir=LR;\n");
        for a in &self.artifacts {
            let style = if a.id == self.root {
                ", style=bold"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  \"artifact:{}\" [shape=box, label=\"{}\\n{}\"{style}];",
                a.id,
                esc(&a.name),
                esc(short(&a.digest))
            );
        }
        for t in &self.tasks {
            let _ = writeln!(
                out,
                "  \"task:{}\" [shape=ellipse, label=\"{}\\n{}\"];",
                t.id,
                esc(&t.name),
                esc(&t.status)
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                e.from,
                e.to,
                esc(&e.name)
            );
        }
        out.push_str("}\n");
        out
    }
}
