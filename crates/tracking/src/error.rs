//! MLflow's error body (`{"error_code", "message"}`) and its HTTP status map.
//!
//! The mlflow client retries every 5xx (POST included), so a client mistake must never come
//! back as one: only a failing database or artifact store does.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use capstan_artifacts::ArtifactError;
use capstan_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            code: "INVALID_PARAMETER_VALUE",
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            code: "RESOURCE_DOES_NOT_EXIST",
            message: message.into(),
        }
    }

    pub fn exists(message: impl Into<String>) -> ApiError {
        ApiError {
            code: "RESOURCE_ALREADY_EXISTS",
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: "INTERNAL_ERROR",
            message: message.into(),
        }
    }

    pub fn missing(field: &str) -> ApiError {
        ApiError::invalid(format!("missing value for required parameter '{field}'"))
    }

    /// The HTTP status MLflow gives this error code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "RESOURCE_DOES_NOT_EXIST" | "ENDPOINT_NOT_FOUND" => StatusCode::NOT_FOUND,
            "INTERNAL_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
            "TEMPORARILY_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
            "PERMISSION_DENIED" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::exists(message),
            StoreError::Invalid(message) => ApiError::invalid(message),
            StoreError::Backend(message) => ApiError::internal(message),
        }
    }
}

impl From<ArtifactError> for ApiError {
    fn from(err: ArtifactError) -> ApiError {
        match err {
            ArtifactError::UnsafePath { .. } | ArtifactError::BadName { .. } => {
                ApiError::invalid(err.to_string())
            }
            ArtifactError::NotFound { .. } => ApiError::not_found(err.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "tracking request failed");
        }
        let body = serde_json::json!({"error_code": self.code, "message": self.message});
        (self.status(), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
