//! Planning: the run state machine and cache keys.
//!
//! Architecture invariant: this crate does no IO. No filesystem, no clock, no processes, no
//! store. The engine feeds the [`Machine`] events (a task finished, a retry is due, cancel) and
//! carries out the [`Action`]s it returns. That keeps every scheduling rule testable without
//! processes, and makes resume a replay of recorded results ([`Machine::restore`]).

mod cache;
mod machine;

pub use cache::{CacheInput, cache_key};
pub use machine::{
    Action, ArtifactHandle, Binding, Machine, Outcome, Recorded, TaskId, TaskOutputs, TaskResult,
    TaskState, TaskView,
};
