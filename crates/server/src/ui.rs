//! The web UI: the files of `ui/` at the repository root, embedded in the binary at build
//! time, so `capstan server` needs nothing else on disk and no Node.js build exists.
//!
//! `/assets/<file>` serves a file. Every other path that is not an API path answers
//! `index.html`: the UI routes on the client with the History API, so a deep link such as
//! `/runs/<id>` or a reload on any page works.

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "../../ui/"]
struct Assets;

/// Paths that belong to an API and never to the UI.
const API_PREFIXES: &[&str] = &["/api/", "/ajax-api/", "/health", "/version", "/metrics"];

pub async fn serve(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if API_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return crate::not_found(&request);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return crate::not_found(&request);
    }
    if let Some(name) = path.strip_prefix("/assets/") {
        return match Assets::get(name) {
            Some(file) => asset(name, file.data.into_owned(), "public, max-age=300"),
            None => (StatusCode::NOT_FOUND, format!("no asset {name}")).into_response(),
        };
    }
    match Assets::get("index.html") {
        Some(file) => asset("index.html", file.data.into_owned(), "no-cache"),
        None => (
            StatusCode::NOT_FOUND,
            "the UI is not built into this binary",
        )
            .into_response(),
    }
}

fn asset(name: &str, data: Vec<u8>, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, crate::api::content_type(name)),
            (header::CACHE_CONTROL, cache),
        ],
        data,
    )
        .into_response()
}
