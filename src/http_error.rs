//! The one place where errors become HTTP statuses: JSON `{code, message}` bodies.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::object::SubmitError;
use crate::storage::StorageError;

/// Names the invocation a request created or found (answers of ingress and admin).
pub const INVOCATION_ID_HEADER: &str = "x-kiln-invocation-id";
/// The same id under Restate's name, so Restate clients find it.
pub const RESTATE_ID_HEADER: &str = "x-restate-id";
/// Set on a 503 that means "the partition is moving; route again".
pub const MOVING_HEADER: &str = "x-kiln-moving";

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
    /// The partition moved away mid-request: nothing was done, route it again.
    pub moving: bool,
    /// Close the connection after answering (the request was not read whole).
    pub close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            moving: false,
            close: false,
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
    /// The owner of `partition` is down; nothing was done.
    pub fn owner_down(partition: u16, node_id: &str) -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("partition {partition} is owned by node {node_id}, which is unreachable; retry later"),
            )
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// The JSON error body used everywhere: `{"code": <number>, "message": "..."}`.
pub fn error_body(status: StatusCode, code: u16, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "code": code, "message": message }))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = error_body(self.status, self.status.as_u16(), &self.message);
        // Every "try again later" says when: 1 s unless the error knows better.
        let retry_after = match self.status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Some(self.retry_after.unwrap_or(1)),
            _ => self.retry_after,
        };
        if self.close {
            r.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        }
        if let Some(secs) = retry_after {
            r.headers_mut()
                .insert(actix_web::http::header::RETRY_AFTER, secs.into());
        }
        if self.moving {
            r.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(MOVING_HEADER),
                actix_web::http::header::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if let StorageError::NotOwner(_) = e {
            return Self {
                moving: true,
                ..Self::unavailable(e.to_string())
            };
        }
        let status = match e {
            StorageError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            StorageError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::ids::MalformedId> for ApiError {
    fn from(e: crate::ids::MalformedId) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let status = match &e {
            SubmitError::InboxFull(_)
            | SubmitError::InboxBytesFull(_)
            | SubmitError::MailboxFull(_)
            | SubmitError::TooManyInvocations => StatusCode::TOO_MANY_REQUESTS,
            SubmitError::Storage(s) => return s.clone().into(),
            SubmitError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, format!("{e}; retry later"))
    }
}

/// JSON error for extractor failures (bad JSON, bad paths), so no error is ever plain text.
/// Query strings, path segments and JSON bodies that do not decode answer `{code, message}`, not
/// actix's plain text: every HTTP layer of Kiln speaks one error shape.
pub fn extractor_errors(cfg: &mut actix_web::web::ServiceConfig, json_limit: usize) {
    use actix_web::web;
    cfg.app_data(
        web::JsonConfig::default()
            .limit(json_limit)
            .error_handler(json_config_error),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, _req| ApiError::bad_request(format!("malformed query string: {err}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _req| ApiError::bad_request(format!("malformed path: {err}")).into()),
    );
}

pub fn json_config_error(err: actix_web::error::JsonPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("malformed JSON body: {err}")).into()
}
