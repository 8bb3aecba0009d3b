//! capstan's integration tests: one binary (it links once) driving the real `capstan` command
//! against temporary workspaces, real processes, SQLite and, when configured, PostgreSQL and a Podman engine.

mod util;

mod containers;
mod faults;
mod features;
mod inspect;
mod kfp;
mod kfp_executors;
mod kubernetes;
mod quickstart;
mod ray;
mod resume;
mod s3;
mod tracking_link;
mod tracking_load;
mod tracking_python;
mod ui;
mod validation;
