//! The engine: drives a run by feeding the planner's state machine and carrying out its actions
//! against the store, the artifact store and the executors.
//!
//! Architecture invariant: durable before visible. Every transition (a task started, finished,
//! was skipped; the run ended) is committed to the store before anything that depends on it
//! happens: a process is spawned only after its task is recorded as running, and a downstream
//! step starts only after its upstream's outputs are recorded. A run can therefore be killed at
//! any moment and resumed from the store alone ([`Engine::drive`] on an existing run).

pub mod lineage;
mod ops;
mod run;
mod task;
mod tracking;
pub mod workspace;

pub use ops::{CancelResult, cancel_run, owner_alive, read_logs};
pub use run::{Engine, NullObserver, Observer, RunOptions, pipeline_digest};
pub use tracking::TRACKING_URI_ENV;
pub use workspace::{Workspace, WorkspaceConfig};
