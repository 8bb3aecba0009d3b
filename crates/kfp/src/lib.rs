//! Kubeflow Pipelines compatibility: the pipeline IR YAML that the `kfp` SDK compiles
//! (`schemaVersion` 2.1.0) becomes a capstan [`Pipeline`](capstan_spec::Pipeline).
//!
//! This crate is an edge translator. Everything KFP-specific is expressed through capstan's
//! generic model, so the planner and the engine never learn that a pipeline came from KFP:
//!
//! - every IR task that runs an executor becomes a step named after the task; the tasks of a
//!   sub-DAG (a condition, a loop body, a nested pipeline) are flattened into steps named
//!   `PARENT/NAME`, with the sub-DAG's condition, dependencies and loop carried over;
//! - KFP placeholders become template references; `{{$}}` (the executor input) becomes a JSON
//!   template whose values are written with the `json` filter;
//! - the executor output file that kfp's Python executor writes is a step's results file
//!   ([`capstan_spec::ResultsFile`]);
//! - `ParallelFor` is `for_each`, `dsl.If`/`Elif`/`Else` are `when` conditions, exit handlers
//!   are `finally` steps, retry and caching options map to their capstan counterparts.
//!
//! [`import`] is pure. [`env`] prepares the Python environments that satisfy the `pip install`
//! preamble of lightweight Python components, once per distinct requirement set.

mod cel;
pub mod env;
mod import;

pub use import::{Import, ImportOptions, PipEnv, host_notes, import, is_kfp_ir};
