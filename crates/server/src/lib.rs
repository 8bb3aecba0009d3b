//! `capstan server`: one HTTP server that composes capstan's routers.
//!
//! - the MLflow-compatible tracking API and artifact proxy (`capstan-tracking`);
//! - `GET /health` (the store answers) and `GET /version`;
//! - `GET /metrics`, Prometheus text: request counts and latencies by route and status;
//! - capstan's own JSON API under `/api/v1` ([`api`]), documented at `/api/v1/openapi.json`;
//! - the web UI ([`ui`]): static files embedded in the binary, `index.html` for every other
//!   path so that deep links into the UI work.
//!
//! Unknown `/api` paths answer MLflow's `404 ENDPOINT_NOT_FOUND` body, so a client that calls
//! an endpoint capstan does not serve gets a clear error instead of an HTML page.

pub mod api;
#[cfg(test)]
mod api_tests;
pub mod ui;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use capstan_store::DynStore;
use capstan_tracking::Tracking;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

/// What the server reads from: the store, the artifact store (artifacts and task logs) and the
/// tracking artifact files.
#[derive(Clone)]
pub struct ServerState {
    pub store: DynStore,
    pub artifacts: capstan_artifacts::ArtifactStore,
    pub files: capstan_artifacts::TrackingFiles,
}

/// The process-wide Prometheus recorder; installed on first use.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's); then this
        // server's metrics go there and /metrics renders an empty page rather than failing.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The whole application: every route the server serves.
pub fn app(state: ServerState) -> Router {
    prometheus();
    let tracking = capstan_tracking::router(Tracking {
        store: state.store.tracking(),
        files: state.files.clone(),
    });
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(render_metrics))
        .merge(api::routes())
        .with_state(state)
        .merge(tracking)
        .fallback(ui::serve)
        .layer(middleware::from_fn(record_request))
}

async fn health(State(state): State<ServerState>) -> Response {
    match state.store.tracking().get_experiment(0).await {
        Ok(_) => (StatusCode::OK, "OK").into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store does not answer: {err}"),
        )
            .into_response(),
    }
}

async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

async fn render_metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        prometheus().render(),
    )
        .into_response()
}

/// MLflow's answer to an unknown API path.
pub(crate) fn not_found(request: &Request) -> Response {
    let body = json!({
        "error_code": "ENDPOINT_NOT_FOUND",
        "message": format!("no endpoint {} {}", request.method(), request.uri().path()),
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("capstan_http_requests_total", &labels).increment(1);
    metrics::histogram!("capstan_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves `app` on `addr` until `shutdown` completes. Prints nothing; returns the bound address
/// through `on_bound` (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    state: ServerState,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    serve_listener(listener, state, shutdown).await
}

/// Serves `app` on a listener the caller bound (the engine binds `127.0.0.1:0` for the steps of
/// a run) until `shutdown` completes.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Answers go out at once: without TCP_NODELAY a response written in two parts can wait
    // for the client's delayed acknowledgement.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
