//! Immutable, content-addressed artifacts for capstan.
//!
//! A step's output file or directory is hashed with blake3 and stored once under
//! `<root>/blobs/<hex>`, on local disk (the default, `<workspace>/artifacts`) or on any object store
//! URL (`s3://`, `gs://`, `az://`, `file://`, `memory://`). The same content always gets the same
//! URI, so caching and lineage can compare artifacts by URI alone. This crate also owns the rules
//! for turning user-supplied relative paths and artifact URIs into filesystem paths safely
//! ([`safe_join`]), and where task logs live.

mod error;
mod files;
mod fsio;
mod paths;
mod store;
mod tree;

pub use error::ArtifactError;
pub use files::{FileEntry, TrackingFiles};
pub use paths::safe_join;
pub use store::{ArtifactStore, StoredArtifact};
pub use tree::hash_path;
