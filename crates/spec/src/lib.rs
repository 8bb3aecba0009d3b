//! The pipeline model and its front ends.
//!
//! This crate turns pipeline text into a validated [`Pipeline`]. It does no IO: callers read the
//! file and pass its text and name.
//!
//! - [`model`]: the pipeline model shared by every front end.
//! - [`template`]: `{{ ref }}` placeholders.
//! - [`expr`]: `when:` conditions.
//! - [`parse_native`]: the native YAML format.
//! - [`validate()`]: the checks every pipeline passes before it runs, whatever its front end.
//! - [`bind_params`]: `-p name=value` overrides, checked against the declared types.

pub mod diag;
pub mod expr;
pub mod model;
mod native;
mod params;
pub mod template;
mod validate;

pub use diag::{Diagnostic, Diagnostics};
pub use model::*;
pub use native::{EXECUTORS, parse_native};
pub use params::{bind_params, coerce_value};
pub use validate::validate;
