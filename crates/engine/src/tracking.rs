//! The tracking endpoint that steps log to.
//!
//! A pipeline run is a tracking run and each task attempt a run nested in it (the store writes
//! both views in one transaction, see `capstan_store`). Steps find theirs through
//! `MLFLOW_TRACKING_URI`, `MLFLOW_RUN_ID` and `MLFLOW_EXPERIMENT_ID`, so `mlflow.log_metric`
//! inside a step lands on the step's run without any code that knows about capstan.
//!
//! Unless `CAPSTAN_TRACKING_URI` names a server that reaches the same store (a `capstan server`
//! that container or remote steps can reach), the orchestrator serves the tracking API itself,
//! in process, on an ephemeral loopback port, for as long as it drives the run.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::workspace::Workspace;

/// Names a tracking server for the steps instead of the in-process one.
pub const TRACKING_URI_ENV: &str = "CAPSTAN_TRACKING_URI";

/// The tracking server the steps of a run log to; the in-process one stops when this is dropped.
pub(crate) struct Endpoint {
    pub uri: Arc<str>,
    stop: Option<CancellationToken>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.cancel();
        }
    }
}

impl Endpoint {
    /// The configured server, or a new one on `127.0.0.1:0` over the workspace's store.
    pub async fn start(ws: &Workspace, configured: Option<&str>) -> Result<Endpoint> {
        if let Some(uri) = configured {
            return Ok(Endpoint {
                uri: uri.trim_end_matches('/').into(),
                stop: None,
            });
        }
        // The MLflow API alone: steps log through it; the UI and capstan's own API are
        // `capstan server`'s.
        let app = capstan_tracking::router(capstan_tracking::Tracking {
            store: ws.store.tracking(),
            files: ws
                .artifacts
                .tracking_files()
                .context("cannot open the tracking artifact files")?,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot open a loopback port for the steps' tracking server")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the steps' tracking server stopped");
            }
        });
        Ok(Endpoint {
            uri: format!("http://{addr}").into(),
            stop: Some(stop),
        })
    }
}
